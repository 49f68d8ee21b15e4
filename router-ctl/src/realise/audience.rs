//! Who hears a gratuitous ARP the realiser sends (`net::arp::Audience`).
//!
//! Every one of this daemon's routers on an external network has its gateway tap on the
//! network's bridge, and its `snat_in` drops an announcement of an address the router never
//! sent ARP for (`router_ebpf::arp`). So when no router here asked for the address (the
//! datapath's note for any router), the announcement goes to the bridge's other ports only:
//! uplinks, instances, other hosts. When one did, when the bridge has no gateway tap, or when
//! its ports are not known just now, it is flooded as before, and each tap's program sorts it
//! out.

use std::{net::Ipv4Addr, sync::Arc};

use crate::{
    datapath::Datapath,
    net::{
        arp::{Audience, Hearers},
        linkwatch::LinkTable,
    },
};

/// The realiser's audience: the bridge's ports less the gateway taps of routers that did not
/// ask.
pub(super) struct Routers {
    pub(super) datapath: Arc<Datapath>,
    /// The daemon namespace's links (None: no link watch, and every frame is flooded).
    pub(super) links: Option<LinkTable>,
}

impl Audience for Routers {
    fn hearers(&self, bridge: &str, addr: Ipv4Addr) -> Hearers {
        let Some(links) = &self.links else {
            return Hearers::Everyone;
        };
        match self.datapath.asked_for(addr) {
            Ok(false) => {}
            Ok(true) => return Hearers::Everyone,
            Err(e) => {
                tracing::debug!("gratuitous ARP of {addr}: ARP_PEERS: {e:#}");
                return Hearers::Everyone;
            }
        }
        let Some(mut ports) = links.ports_of(bridge) else {
            return Hearers::Everyone;
        };
        let all = ports.len();
        self.datapath.retain_non_gateway(&mut ports);
        if ports.len() == all {
            // No gateway tap there (a tenant network): one flood is one `sendto`.
            return Hearers::Everyone;
        }
        Hearers::Ports(ports)
    }
}
