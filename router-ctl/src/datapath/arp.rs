//! What the gratuitous-ARP announcer (`net::arp`) asks of the datapath before it sends: whether
//! any router here sent ARP for the address (the note `snat_out` keeps for any router in
//! `ARP_PEERS`, see `router_ebpf::arp`), and which of a bridge's ports are gateway taps, whose
//! `snat_in` drops an announcement its router never asked for.

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{HashMap, MapData, MapError};
use router_common::{ArpPeerKey, ip_to_wire};

use super::Datapath;

/// A handle on the pinned `ARP_PEERS` of its own, outside the datapath's lock: the announcer's
/// look-ups never wait behind an API call's datapath work.
pub(super) type ArpPeers = HashMap<MapData, ArpPeerKey, u32>;

impl Datapath {
    /// Whether some router of this datapath sent ARP for `addr` recently enough that its note
    /// is still there (so it may hold a neighbour entry an announcement would update).
    pub fn asked_for(&self, addr: Ipv4Addr) -> Result<bool> {
        let key = ArpPeerKey::any_router(ip_to_wire(addr.octets()));
        match self.arp_peers.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps, of the daemon-namespace `ifindexes`, those that are not a router's gateway tap
    /// (from the userspace copy of `ROUTER_CONFIG`: one hash look-up each, under the lock).
    pub fn retain_non_gateway(&self, ifindexes: &mut Vec<u32>) {
        let inner = self.lock();
        ifindexes.retain(|i| !inner.config.contains(i));
    }
}
