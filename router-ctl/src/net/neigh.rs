//! Neighbour liveness for devices whose forwarding bypasses the IP stack.
//!
//! The fast path reads the router namespace's neighbour entries through `bpf_fib_lookup`,
//! which does not mark them used: an entry goes STALE and stays so, and a neighbour whose MAC
//! changed without a gratuitous ARP would never be probed again. As switchdev drivers do for
//! offloaded neighbours, the daemon tells the kernel such an entry is in use: RTM_NEWNEIGH with
//! `NTF_USE` makes `neigh_add` call `neigh_event_send`, which moves a STALE entry to DELAY and
//! then PROBE, so it is confirmed again (or fails and is resolved afresh on the next packet).

use std::{collections::HashSet, net::IpAddr};

use anyhow::{Result, anyhow};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
};

/// Marks every STALE IPv4 neighbour on a device in `ifindexes` as used (namespace of `h`);
/// returns how many. An entry gone meanwhile is skipped.
pub async fn refresh_stale(h: &rtnetlink::Handle, ifindexes: &HashSet<u32>) -> Result<usize> {
    let stale: Vec<(u32, IpAddr)> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_filter_map(|m| async move {
            if m.header.state != NeighbourState::Stale || !ifindexes.contains(&m.header.ifindex) {
                return Ok(None);
            }
            Ok(m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    Some((m.header.ifindex, IpAddr::V4(*ip)))
                }
                _ => None,
            }))
        })
        .try_collect()
        .await
        .map_err(|e| anyhow!("listing the neighbours: {e}"))?;
    let mut n = 0;
    for (ifindex, dst) in stale {
        // NTF_USE takes neigh_add past the state update to neigh_event_send; NLM_F_REPLACE
        // instead of rtnetlink's default NLM_F_EXCL, which fails on an existing entry. The
        // state sent is ignored on that path.
        let res = h
            .neighbours()
            .add(ifindex, dst)
            .state(NeighbourState::Stale)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await;
        match res {
            Ok(()) => n += 1,
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(e.raw_code().abs(), libc::ENOENT | libc::ENODEV) => {}
            Err(e) => {
                return Err(anyhow!(
                    "refreshing the neighbour {dst} (ifindex {ifindex}): {e}"
                ));
            }
        }
    }
    Ok(n)
}
