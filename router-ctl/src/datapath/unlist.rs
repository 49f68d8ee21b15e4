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
//! block, binding and unbinding it once more on the namespace's `lo` drops the entry, and the
//! list holds only the blocks of the routers being made at that moment. The router's devices
//! stay bound and run `fast_fwd` as before. What the entry is for, offloading the filters of
//! blocks bound before an offload driver registered, does not apply to a router's veths: the
//! drivers that register for it offload blocks of tunnel, VLAN and bond devices over their own
//! hardware.
//!
//! Why `lo`: every namespace has it, and it costs nothing. Grafting a qdisc onto an up device
//! deactivates it for a moment (`qdisc_graft` → `dev_deactivate`), so what the namespace sends
//! to itself in those microseconds is dropped; a router namespace sends itself nothing (its
//! traffic and the metadata proxy's arrive on and leave by its ports). A spare `ifb` kept down
//! avoids the moment but costs ≈ 40 KiB of kernel memory a router (measured: 8 % of what a
//! router costs), for 54 µs a bounce against 81 µs on `lo`.

use std::io;

use super::{TcSocket, filter::ROUTER_BLOCK};

/// Drops the calling thread's namespace's (a router's) `ROUTER_BLOCK` from the kernel's list.
pub fn unlist_router_block(tc: &mut TcSocket) -> io::Result<()> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
    if !tc.add_qdisc_on_blocks(lo, ROUTER_BLOCK, None)? {
        // `lo` has a qdisc: ours only if a run stopped between the two steps (then its removal
        // unbinds all the same); anyone else's stays, and the block stays listed.
        if tc.ingress_block(lo)? != Some(ROUTER_BLOCK) {
            return Err(io::Error::other(
                "lo has an ingress qdisc this daemon did not add",
            ));
        }
    }
    tc.remove_ingress_qdisc(lo)
}
