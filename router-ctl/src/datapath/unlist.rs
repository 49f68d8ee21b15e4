//! Keeping the router namespaces' fast-path blocks out of the kernel's host-wide list of bound
//! tc blocks, so that making a router costs the same at the ten-thousandth as at the first.
//!
//! Binding a tc block to a device without `ndo_setup_tc` (a veth) goes through
//! `flow_indr_dev_setup_offload`, which looks the block up in one host-wide list
//! (`flow_indir_dev_list`, kept so that an offload driver registered later can be told of the
//! blocks bound before it) and adds it there when missing. The look-up walks the list. Each
//! router namespace's `filter::ROUTER_BLOCK` was one entry, so the bind that made a router's
//! first device walked one entry per router, a cache miss each: ≈ 1.7 ms of CPU a router late
//! in a 10 000 batch, the one cost of a create that grew with the routers (docs/BENCH.md,
//! fourteenth round), and the same walk again at each device's unbind on delete.
//!
//! The kernel keys the entry by block and drops it at *any* unbind of that block, even while
//! other devices stay bound to it (`indir_dev_remove`). So after a router device binds the
//! block, binding and unbinding it once more on a spare device of the namespace
//! (`names::UNLIST_DEV`, an `ifb` kept down, so the qdisc graft never deactivates a device
//! that carries traffic) drops the entry, and the list holds only the blocks of the routers
//! being made at that moment. The router's devices stay bound and run `fast_fwd` as before.
//! What the entry is for, offloading filters of blocks bound before the driver loaded, does
//! not apply to a router's veths: the drivers that register for it offload the blocks of
//! tunnel, VLAN and bond devices on top of their own hardware.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{RouteNetlinkMessage, link::InfoKind};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::{TcSocket, filter::ROUTER_BLOCK};
use crate::{model::spec::names::UNLIST_DEV, net::rtnl::Rtnl};

/// Why an unlisting failed: the kernel has no `ifb` device type (nothing to unlist with,
/// for the life of the daemon), or anything else (tried again at the next bind).
pub enum UnlistError {
    NoIfb(io::Error),
    Other(io::Error),
}

/// Drops the calling thread's namespace (a router's) `ROUTER_BLOCK` from the kernel's list,
/// making `UNLIST_DEV` first if the namespace has none.
pub fn unlist_router_block(tc: &mut TcSocket) -> Result<(), UnlistError> {
    let ifindex = match nix::net::if_::if_nametoindex(UNLIST_DEV) {
        Ok(i) => i,
        Err(_) => {
            add_ifb(tc.rtnl()).map_err(|e| match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => UnlistError::NoIfb(e),
                _ => UnlistError::Other(e),
            })?;
            nix::net::if_::if_nametoindex(UNLIST_DEV)
                .map_err(|e| UnlistError::Other(io::Error::from(e)))?
        }
    };
    // `Ok(false)`: a qdisc left bound by a run that stopped between the two steps; the
    // removal unbinds it all the same.
    tc.add_qdisc_on_blocks(ifindex, ROUTER_BLOCK, None)
        .map_err(UnlistError::Other)?;
    tc.remove_ingress_qdisc(ifindex).map_err(UnlistError::Other)
}

/// Makes `UNLIST_DEV` (down; one made meanwhile is success).
fn add_ifb(rtnl: &mut Rtnl) -> io::Result<()> {
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
        .name(UNLIST_DEV.to_string())
        .build();
    match rtnl.request(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}
