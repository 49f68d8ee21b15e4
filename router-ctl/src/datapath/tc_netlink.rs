//! The tc requests aya 0.14 cannot make, over a blocking netlink socket of the calling
//! thread's namespace (`net::rtnl`): qdiscs bound to shared filter blocks, and `cls_bpf`
//! filters placed on a block rather than on a device (`TCM_IFINDEX_MAGIC_BLOCK`). Blocking
//! because the datapath's attach calls run inside a namespace on a plain thread, where aya's
//! own calls run too.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};

use crate::net::rtnl::Rtnl;

/// `TCA_INGRESS_BLOCK` / `TCA_EGRESS_BLOCK` (linux/rtnetlink.h): the shared block a new
/// qdisc's hook binds to (netlink-packet-route has no variant for them).
const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;

/// `htons(ETH_P_ALL)` as tc wants the protocol in `tcm_info`.
const PROTO_ALL: u16 = 0x0003u16.to_be();

/// A filter slot: priority and handle (the datapath's one slot, see `filter`).
#[derive(Clone, Copy)]
pub struct Slot {
    pub priority: u16,
    pub handle: u32,
}

/// A `cls_bpf` filter as a block dump shows it.
pub struct BlockFilter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
}

/// A netlink socket in the namespace it was opened in, for tc.
pub struct TcSocket(Rtnl);

impl TcSocket {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Self> {
        Rtnl::open().map(Self)
    }

    /// Adds a qdisc to `ifindex` with its hooks bound to shared blocks: a `clsact` when both
    /// blocks are given, an `ingress` qdisc when only `ingress` is. `Ok(false)`: the device
    /// already has one (bound or not: an earlier run, or an earlier version's own block).
    pub fn add_qdisc_on_blocks(
        &mut self,
        ifindex: u32,
        ingress: u32,
        egress: Option<u32>,
    ) -> io::Result<bool> {
        match self.0.request(
            RouteNetlinkMessage::NewQueueDiscipline(qdisc_on_blocks(ifindex, ingress, egress)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the `clsact` or `ingress` qdisc of `ifindex`, with every filter of its own
    /// blocks and its binding to shared ones. None (or no device) is success.
    pub fn remove_ingress_qdisc(&mut self, ifindex: u32) -> io::Result<()> {
        let mut m = TcMessage::with_index(ifindex as i32);
        m.header.parent = TcHandle::INGRESS;
        m.header.handle = TcHandle::from(0xffff_0000);
        match self
            .0
            .request(RouteNetlinkMessage::DelQueueDiscipline(m), 0)
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Adds the direct-action `cls_bpf` filter running program `fd` (named `name`) in `slot`
    /// of shared block `block`; with `replace`, switches the filter there to `fd` in place.
    /// `EEXIST` when the slot is taken and not `replace`; `EINVAL` when no qdisc of this
    /// namespace is bound to the block (a shared block lives as long as its bindings).
    pub fn put_block_filter(
        &mut self,
        block: u32,
        slot: Slot,
        fd: &aya::programs::ProgramFd,
        name: &str,
        replace: bool,
    ) -> io::Result<()> {
        let mut m = block_message(block);
        m.header.handle = TcHandle::from(slot.handle);
        m.header.info = (u32::from(slot.priority) << 16) | u32::from(PROTO_ALL);
        m.attributes.push(TcAttribute::Kind("bpf".to_string()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(fd.as_fd().as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let flags = if replace {
            NLM_F_CREATE | NLM_F_REPLACE
        } else {
            NLM_F_CREATE | NLM_F_EXCL
        };
        self.0
            .request(RouteNetlinkMessage::NewTrafficFilter(m), flags)
            .map(drop)
    }

    /// The shared block the ingress hook of `ifindex`'s `ingress` or `clsact` qdisc is bound
    /// to; None when it has no such qdisc or its hook has a block of its own.
    pub fn ingress_block(&mut self, ifindex: u32) -> io::Result<Option<u32>> {
        use netlink_packet_core::Nla as _;
        let msgs = self.0.request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(ifindex as i32)),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => Some(q),
                _ => None,
            })
            .filter(|q| q.header.index == ifindex as i32 && q.header.parent == TcHandle::INGRESS)
            .flat_map(|q| q.attributes)
            .find_map(|a| match a {
                TcAttribute::Other(nla)
                    if nla.kind() == TCA_INGRESS_BLOCK && nla.value_len() == 4 =>
                {
                    let mut v = [0u8; 4];
                    nla.emit_value(&mut v);
                    Some(u32::from_ne_bytes(v))
                }
                _ => None,
            }))
    }

    /// The `cls_bpf` filters of shared block `block`.
    pub fn block_filters(&mut self, block: u32) -> io::Result<Vec<BlockFilter>> {
        let msgs = self.0.request(
            RouteNetlinkMessage::GetTrafficFilter(block_message(block)),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(t) => Some(t),
                _ => None,
            })
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
            })
            .map(|m| {
                let mut f = BlockFilter {
                    priority: (m.header.info >> 16) as u16,
                    handle: u32::from(m.header.handle),
                    prog_id: None,
                };
                for a in &m.attributes {
                    let TcAttribute::Options(opts) = a else {
                        continue;
                    };
                    for o in opts {
                        if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = o {
                            f.prog_id = Some(*id);
                        }
                    }
                }
                f
            })
            .collect())
    }
}

/// The message adding a qdisc to `ifindex` with its hooks bound to shared blocks: a `clsact`
/// when both blocks are given, an `ingress` qdisc when only `ingress` is.
pub fn qdisc_on_blocks(ifindex: u32, ingress: u32, egress: Option<u32>) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = TcHandle::from(0xffff_0000);
    let kind = if egress.is_some() {
        "clsact"
    } else {
        "ingress"
    };
    m.attributes.push(TcAttribute::Kind(kind.to_string()));
    m.attributes.push(block_attr(TCA_INGRESS_BLOCK, ingress));
    if let Some(e) = egress {
        m.attributes.push(block_attr(TCA_EGRESS_BLOCK, e));
    }
    m
}

/// A tc message addressed to shared block `block`.
fn block_message(block: u32) -> TcMessage {
    let mut m = TcMessage::with_index(TcHeader::TCM_IFINDEX_MAGIC_BLOCK as i32);
    m.header.parent = TcHandle::from(block);
    m
}

fn block_attr(kind: u16, block: u32) -> TcAttribute {
    TcAttribute::Other(DefaultNla::new(kind, block.to_ne_bytes().to_vec()))
}
