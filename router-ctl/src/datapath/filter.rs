//! Attaching the programs as netlink tc filters (`cls_bpf` in direct-action mode under a
//! `clsact` qdisc, or an `ingress` one where only that hook is used), one per hook, in a fixed
//! slot.
//!
//! Why not TCX links (the default of aya on kernels ≥ 6.6): attaching or detaching a TCX
//! program waits for a full RCU grace period (`tcx_entry_sync` → `synchronize_rcu()`) while
//! holding RTNL, 5–15 ms on a busy 2-core machine and serialised across the whole host — four
//! per router made half of the time to create one. Installing a `cls_bpf` filter swaps the
//! qdisc's filter list with at most an *expedited* grace period (`mini_qdisc_pair_swap`), and
//! replacing a filter's program frees the old one after a grace period in the background.
//! See docs/ARCHITECTURE.md ("Attaching the programs").
//!
//! The slot: priority `PRIORITY`, handle `HANDLE`, protocol all, on the ingress or egress
//! hook of the device. A daemon owns the devices it attaches to, so the slot is free unless an
//! earlier run of this daemon filled it; "exactly one program per hook" is checkable with
//! `tc filter show dev <tap> ingress|egress`. A filter holds its program, so it keeps working
//! when the daemon exits (no pin needed) and goes away with its device.
//!
//! Shared blocks: the gateway taps of the daemon's namespace have their hooks bound to pairs
//! of shared filter blocks (`tap_blocks`, a pair for each few dozen taps made one after
//! another), and the devices of a router namespace to one (`ROUTER_BLOCK`), so a filter is
//! added once per block, not per device, and the host holds about one block per router
//! instead of four. Why it matters: a
//! veth has no `ndo_setup_tc`, so binding a block goes through `flow_indr_dev_setup_offload`,
//! which walks a host-wide list of every bound block (newest first) looking for this one; at
//! 10 000 routers, with four private blocks each, that walk was ≈ 3 ms a bind and the only
//! cost of making a router that still grew with their number; one block a router still grew
//! it, and `unlist` takes each router's block out of that list again. The kernel refuses filter
//! changes made through a device whose hook is on a shared block (`EOPNOTSUPP`), so they go
//! to the block (`tc_netlink`), and a device leaves its block by losing its qdisc. Devices of
//! an earlier version keep their own blocks and are served through the device as before.

use std::io::ErrorKind;

use anyhow::{Result, anyhow};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

use super::tc_netlink::{Slot, TcSocket};

/// tc priority of every filter this datapath installs (`tc filter show` prints it as `pref`).
pub const PRIORITY: u16 = 1;

/// tc handle of every filter this datapath installs (`handle 0x1`).
pub const HANDLE: TcHandle = TcHandle::new(0, 1);

/// Gateway taps whose ifindexes fall in one run of this many share a pair of shared blocks
/// (`tap_blocks`): with a router's devices taking a handful of ifindexes of the daemon's
/// namespace, a few dozen consecutive gateways. Why runs of consecutive taps and not, as
/// before, taps spread over a fixed set of pairs by ifindex modulo: binding a device to a
/// block looks the block up in the kernel's host-wide list of bound blocks, newest first
/// (`flow_indr_dev_setup_offload` → `find_indir_dev`), and a fixed set of pairs, bound when
/// the first routers were made, sat at the far end of that list, behind one entry per router
/// namespace: two walks of the whole list per gateway, ≈ 0.7 ms each at 10 000 routers. A
/// pair the taps made just before also used is near the front. Few taps per pair also keep a
/// deletion cheap: removing a qdisc from a shared block walks the block's lists of bound
/// qdiscs and head-change callbacks (`tcf_block_owner_del`,
/// `tcf_chain0_head_change_cb_del`), one entry per tap of the block.
pub const TAP_BLOCK_SPAN: u32 = 256;

/// The first of the gateway taps' shared blocks in the daemon's namespace (block indexes are
/// per namespace; these spell "rt" and a number, to stay clear of an operator's own shared
/// blocks in the host's namespace).
const TAP_BLOCK_BASE: u32 = 0x7274_1000;

/// The shared blocks of gateway tap `ifindex`'s ingress (packets leaving the router) and
/// egress (packets entering it).
pub fn tap_blocks(ifindex: u32) -> (u32, u32) {
    // At most 2 × 2^32 / 256 = 2^25 past the base: no overflow.
    let first = TAP_BLOCK_BASE + 2 * (ifindex / TAP_BLOCK_SPAN);
    (first, first + 1)
}

/// The shared block of the ingress of every device of one router namespace (the fast path).
pub const ROUTER_BLOCK: u32 = 0x7274_0003;

/// The errno inside an aya tc error, if any.
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) | ProgramError::NetlinkError(n) => {
            n.raw_os_error()
        }
        ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
        _ => None,
    }
}

/// Adds the `clsact` qdisc to `dev` unless it has one.
pub fn ensure_clsact(dev: &str) -> Result<()> {
    match tc::qdisc_add_clsact(dev) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(anyhow!("adding the clsact qdisc to {dev}: {e:#}")),
    }
}

/// Adds an `ingress` qdisc bound to the namespace's `ROUTER_BLOCK` to device `ifindex` of
/// `h`'s namespace (a router's) unless it has a qdisc there (an earlier version's own
/// `ingress` or `clsact` keeps serving: both hold filters at the ingress hook).
///
/// For devices that only need the ingress hook (the fast path's `qr-`/`qg-`): a `clsact`
/// has two blocks, an `ingress` qdisc one, and on the router's shared block the router's
/// second device needs no filter of its own. Returns whether it added the qdisc (so bound the
/// block: the caller then unlists it, `Datapath::unlist_router_block`).
pub async fn ensure_ingress(h: &rtnetlink::Handle, ifindex: u32) -> Result<bool> {
    use futures::StreamExt as _;
    use netlink_packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::RouteNetlinkMessage;

    let msg = super::tc_netlink::qdisc_on_blocks(ifindex, ROUTER_BLOCK, None);
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut answers = h
        .clone()
        .request(req)
        .map_err(|e| anyhow!("adding the ingress qdisc to ifindex {ifindex}: {e}"))?;
    let mut added = true;
    while let Some(m) = answers.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && let Some(code) = e.code
        {
            if -code.get() == libc::EEXIST {
                added = false;
                continue;
            }
            return Err(anyhow!(
                "adding the ingress qdisc to ifindex {ifindex}: {}",
                std::io::Error::from_raw_os_error(-code.get())
            ));
        }
    }
    Ok(added)
}

/// Puts `prog` in the slot of `dev`'s `attach_type` hook: creates the filter, or, if the slot
/// holds one (an earlier run of the daemon, or a resync), switches that filter to `prog` in
/// place — no moment without a program. Returns whether a filter was created. For a device
/// with its own block; see `attach_bound` for one that may be on a shared block.
pub fn attach(prog: &mut SchedClassifier, dev: &str, attach_type: TcAttachType) -> Result<bool> {
    attach_device(prog, dev, attach_type)?.ok_or_else(|| {
        anyhow!("{dev}: the hook is bound to a shared filter block (filters go to the block)")
    })
}

/// `attach`, where `None` says the hook is bound to a shared block (the kernel refuses filter
/// changes through the device then).
///
/// The filter outlives `prog`'s handle: aya detaches the links a program still holds when it
/// is dropped, so the link is taken out and forgotten (a netlink link is plain data: ifindex,
/// hook, priority, handle; forgetting it leaks no file descriptor).
fn attach_device(
    prog: &mut SchedClassifier,
    dev: &str,
    attach_type: TcAttachType,
) -> Result<Option<bool>> {
    let opts = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: PRIORITY,
            handle: HANDLE,
            ..Default::default()
        })
    };
    let (id, created) = match prog.attach_with_options(dev, attach_type, opts()) {
        Ok(id) => (id, true),
        Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => return Ok(None),
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            // Netlink without NLM_F_CREATE|NLM_F_EXCL: cls_bpf replaces the program.
            let link = SchedClassifierLink::attached(dev, attach_type, PRIORITY, HANDLE, None)
                .map_err(|e| anyhow!("{dev}: {e}"))?;
            let id = prog
                .attach_to_link(link)
                .map_err(|e| anyhow!("replacing the filter's program: {e:#}"))?;
            (id, false)
        }
        Err(e) => return Err(anyhow!("{e:#}")),
    };
    let link = prog.take_link(id)?;
    std::mem::forget(link);
    Ok(Some(created))
}

/// Puts `prog` (named `name`) in the slot of `dev`'s `attach_type` hook, wherever that hook's
/// filters live: on shared block `block` when `bound` says the hook was just bound to it or
/// the kernel says so, else on the device's own block (`attach`). Returns whether a filter
/// was created; a block's filter is created only by the first of its devices.
pub fn attach_bound(
    tc: &mut TcSocket,
    prog: &mut SchedClassifier,
    name: &str,
    dev: &str,
    attach_type: TcAttachType,
    block: u32,
    bound: bool,
) -> Result<bool> {
    if !bound && let Some(created) = attach_device(prog, dev, attach_type)? {
        return Ok(created);
    }
    put_on_block(tc, prog, name, block)
}

/// Puts `prog` in the slot of shared block `block` unless it runs there already: the filter is
/// created by the block's first device, and switched in place to `prog` by the first device
/// after a restart (a new daemon loads new programs); every other device costs a refused
/// create and, for the program's id, a dump of the block.
fn put_on_block(
    tc: &mut TcSocket,
    prog: &mut SchedClassifier,
    name: &str,
    block: u32,
) -> Result<bool> {
    let slot = Slot {
        priority: PRIORITY,
        handle: u32::from(HANDLE),
    };
    let fd = prog.fd()?;
    match tc.put_block_filter(block, slot, fd, name, false) {
        Ok(()) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(anyhow!("adding {name} to tc block {block}: {e}")),
    }
    let id = prog.info()?.id();
    let current = tc
        .block_filters(block)
        .map_err(|e| anyhow!("listing the filters of tc block {block}: {e}"))?
        .iter()
        .any(|f| f.priority == slot.priority && f.handle == slot.handle && f.prog_id == Some(id));
    if !current {
        tc.put_block_filter(block, slot, fd, name, true)
            .map_err(|e| anyhow!("switching tc block {block} to {name}: {e}"))?;
    }
    Ok(false)
}

/// Removes the filters running the program `name` from `dev`'s `attach_type` hook; none is
/// success.
pub fn detach(dev: &str, attach_type: TcAttachType, name: &str) -> Result<()> {
    match tc::qdisc_detach_program(dev, attach_type, name) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(TcError::NetlinkError(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!("detaching {name} from {dev}: {e:#}")),
    }
}

/// Whether the `attach_type` hook of device `ifindex` holds this datapath's filter: a `bpf`
/// filter in our slot running the program `name`. Asked over `h`, a netlink handle in the
/// daemon's namespace; a device without a clsact qdisc has none.
pub async fn in_place(
    h: &rtnetlink::Handle,
    ifindex: u32,
    attach_type: TcAttachType,
    name: &str,
) -> Result<bool> {
    use futures::TryStreamExt as _;
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

    let req = h.traffic_filter(ifindex as i32).get();
    let req = match attach_type {
        TcAttachType::Egress => req.egress(),
        _ => req.ingress(),
    };
    let msgs: Vec<_> = match req.execute().try_collect().await {
        Ok(m) => m,
        // No clsact qdisc (EINVAL) or no device (ENODEV): no filter.
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(e.raw_code().abs(), libc::EINVAL | libc::ENODEV) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(anyhow!("listing the filters of ifindex {ifindex}: {e}")),
    };
    Ok(msgs.iter().any(|m| {
        u32::from(m.header.handle) == u32::from(HANDLE)
            && (m.header.info >> 16) as u16 == PRIORITY
            && m.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
            && m.attributes.iter().any(|a| match a {
                TcAttribute::Options(opts) => opts.iter().any(
                    |o| matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == name),
                ),
                _ => false,
            })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_taps_share_a_pair_of_blocks() {
        let (i, e) = tap_blocks(1000);
        assert_eq!(e, i + 1);
        assert_eq!(tap_blocks(1001), (i, e), "a neighbour shares the pair");
        let next = tap_blocks(1000 + TAP_BLOCK_SPAN);
        assert_ne!(next, (i, e), "the next run takes a new pair");
        assert!(next.0 > e, "pairs never overlap");
        assert_eq!(
            tap_blocks(u32::MAX).1,
            TAP_BLOCK_BASE + 2 * (u32::MAX / TAP_BLOCK_SPAN) + 1
        );
    }
}
