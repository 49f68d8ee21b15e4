//! A network's segment on this node: the device its bridge enslaves. A flat network takes the
//! host interface the config maps its physical network to; a VLAN network a subinterface
//! `<iface>.<vid>` of it; a VXLAN network a device `vxlan-<vni>` on the node's tunnel endpoint
//! (the linuxbridge agent's names, so a node that ran it sees the same devices). Devices made
//! here are recorded (`Record::Uplink`) and go with their network.
//!
//! Open vSwitch plugging would replace this file's role, not the bridge's users: see
//! docs/ARCHITECTURE.md, "Agent mode".

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressAttribute,
    link::{InfoKind, LinkMessage},
    neighbour::NeighbourFlags,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkVlan, LinkVxlan};

use super::Realiser;
use crate::{
    config::VxlanConfig,
    model::spec::{NetworkSpec, Segment, names},
    net::{
        LinkState,
        link::{self, LinkKind},
        owned::Record,
    },
};

/// The device a network's bridge enslaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Uplink {
    /// A host interface that exists on its own (flat).
    Host(String),
    /// An 802.1Q subinterface made here.
    Vlan {
        name: String,
        parent: String,
        vlan_id: u16,
    },
    /// A VXLAN device made here.
    Vxlan {
        name: String,
        vni: u32,
        cfg: VxlanConfig,
    },
}

impl Uplink {
    pub(super) fn name(&self) -> &str {
        match self {
            Uplink::Host(n) | Uplink::Vlan { name: n, .. } | Uplink::Vxlan { name: n, .. } => n,
        }
    }

    /// Whether this node makes (and removes) the device.
    fn made_here(&self) -> bool {
        !matches!(self, Uplink::Host(_))
    }
}

impl Realiser {
    /// The uplink of `net` (None: the bridge alone). `quiet`: no warning for an unmapped
    /// physical network (reconcile passes would repeat it).
    pub(super) fn uplink(&self, net: &NetworkSpec, quiet: bool) -> Result<Option<Uplink>> {
        let mapped = |p: &str| {
            let u = self.cfg.physical_networks.get(p);
            if u.is_none() && !quiet {
                tracing::warn!(
                    "network {}: physical network {p:?} is not mapped to a host interface in the configuration; its bridge has no uplink",
                    net.id
                );
            }
            u.cloned()
        };
        Ok(match &net.segment {
            Segment::Local => None,
            Segment::Flat { physical_network } => mapped(physical_network).map(Uplink::Host),
            Segment::Vlan {
                physical_network,
                vlan_id,
            } => {
                // A VLAN network needs its physical network's interface: without it, it
                // would silently become a local one.
                let parent = self.cfg.physical_networks.get(physical_network).ok_or_else(|| {
                    anyhow!(
                        "network {}: VLAN {vlan_id} on physical network {physical_network:?}, which the configuration does not map to a host interface",
                        net.id
                    )
                })?;
                let name = names::vlan_dev(parent, *vlan_id).ok_or_else(|| {
                    anyhow!(
                        "network {}: the VLAN device name {parent}.{vlan_id} is over 15 bytes",
                        net.id
                    )
                })?;
                Some(Uplink::Vlan {
                    name,
                    parent: parent.clone(),
                    vlan_id: *vlan_id,
                })
            }
            Segment::Vxlan { vni } => {
                let cfg = self.cfg.vxlan.clone().ok_or_else(|| {
                    anyhow!(
                        "network {}: VXLAN network (VNI {vni}) but no [vxlan] local_ip is configured",
                        net.id
                    )
                })?;
                Some(Uplink::Vxlan {
                    name: names::vxlan_dev(*vni),
                    vni: *vni,
                    cfg,
                })
            }
        })
    }

    /// The device this node makes for `net`, if any: reconcile keeps it, removal deletes it.
    pub(super) fn made_uplink(&self, net: &NetworkSpec) -> Option<String> {
        self.uplink(net, true)
            .ok()
            .flatten()
            .filter(Uplink::made_here)
            .map(|u| u.name().to_string())
    }
}

/// The uplink device, made if this node makes it and it is missing. A made device is recorded
/// before it is created; `made` says whether this call created it.
pub(super) async fn ensure_uplink(
    h: &Handle,
    owned: &crate::net::owned::Owned,
    network_id: &str,
    uplink: &Uplink,
) -> Result<(LinkState, bool)> {
    if let Some(l) = link::get_link(h, uplink.name()).await? {
        let want = match uplink {
            Uplink::Host(_) => None,
            Uplink::Vlan { .. } => Some(InfoKind::Vlan.to_string()),
            Uplink::Vxlan { .. } => Some(InfoKind::Vxlan.to_string()),
        };
        if let Some(w) = want
            && l.kind != LinkKind::Other(w.clone())
        {
            bail!(
                "network {network_id}: device {} exists and is not a {w} device",
                uplink.name()
            );
        }
        return Ok((l, false));
    }
    let msg = match uplink {
        Uplink::Host(name) => bail!("network {network_id}: host interface {name} does not exist"),
        Uplink::Vlan {
            name,
            parent,
            vlan_id,
        } => {
            let p = link::get_link(h, parent).await?.ok_or_else(|| {
                anyhow!("network {network_id}: host interface {parent} (for {name}) does not exist")
            })?;
            vlan_request(name, p.index, *vlan_id)
        }
        Uplink::Vxlan { name, vni, cfg } => {
            let dev = endpoint_device(h, cfg.local_ip).await?;
            vxlan_request(name, *vni, cfg, dev)
        }
    };
    let name = uplink.name();
    owned.record(
        name,
        &Record::Uplink {
            network_id: network_id.to_string(),
        },
    )?;
    let made = async {
        if let Err(e) = h.link().add(msg).execute().await {
            let unsupported = link::errno(&e) == Some(libc::EOPNOTSUPP);
            return Err(match uplink {
                Uplink::Vlan { vlan_id, .. } if unsupported => anyhow!(
                    "network {network_id}: this kernel has no 802.1Q VLAN devices (module 8021q): it does not know the device type \"vlan\", so VLAN {vlan_id} cannot be carried on this node"
                ),
                _ => anyhow::Error::from(e).context(format!("creating {name}")),
            });
        }
        if let Uplink::Vxlan { cfg, .. } = uplink {
            let l = link::get_link(h, name)
                .await?
                .ok_or_else(|| anyhow!("{name} vanished after creation"))?;
            for peer in &cfg.peers {
                flood_to(h, l.index, *peer)
                    .await
                    .with_context(|| format!("{name}: flooding to peer {peer}"))?;
            }
        }
        link::get_link(h, name)
            .await?
            .ok_or_else(|| anyhow!("{name} vanished after creation"))
    };
    match made.await {
        Ok(l) => Ok((l, true)),
        Err(e) => {
            let _ = link::delete_link(h, name).await;
            let _ = owned.forget(crate::net::owned::Kind::Link, name);
            Err(e)
        }
    }
}

/// RTM_NEWLINK for `<parent>.<vid>`: an 802.1Q subinterface of ifindex `parent`.
pub(super) fn vlan_request(name: &str, parent: u32, vlan_id: u16) -> LinkMessage {
    LinkVlan::new(name, parent, vlan_id).up().build()
}

/// RTM_NEWLINK for `vxlan-<vni>`: on the tunnel endpoint `cfg.local_ip` of device `dev`,
/// flooding to the group (none: to the static peers, added as FDB entries), learning on, so
/// that replies reach an endpoint directly.
pub(super) fn vxlan_request(name: &str, vni: u32, cfg: &VxlanConfig, dev: u32) -> LinkMessage {
    let mut b: LinkMessageBuilder<LinkVxlan> = LinkVxlan::new(name, vni)
        .local(cfg.local_ip)
        .port(cfg.dstport)
        .dev(dev)
        .learning(true);
    if let Some(g) = cfg.group {
        b = b.group(g);
    }
    b.up().build()
}

/// The device holding `ip` (the tunnel endpoint), as the linuxbridge agent found it.
async fn endpoint_device(h: &Handle, ip: Ipv4Addr) -> Result<u32> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_address_filter(IpAddr::V4(ip))
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("looking up [vxlan] local_ip {ip}"))?;
    msgs.iter()
        .find(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip))
        })
        .map(|m| m.header.index)
        .ok_or_else(|| anyhow!("[vxlan] local_ip {ip} is not an address of this node"))
}

/// Appends the all-zeros FDB entry towards `peer` (`bridge fdb append 00:00:00:00:00:00 dev
/// vxlan-N dst PEER`): unknown destinations are flooded to every static peer.
async fn flood_to(h: &Handle, vxlan: u32, peer: Ipv4Addr) -> Result<()> {
    let mut req = h
        .neighbours()
        .add_bridge(vxlan, &[0; 6])
        .destination(IpAddr::V4(peer))
        // The VXLAN device's own table (`self`), not a bridge's.
        .flags(NeighbourFlags::Own);
    let msg = req.message_mut().clone();
    let mut nl = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
    // rtnetlink's request asks for EXCL or REPLACE: one remote per MAC. Flooding to several
    // peers needs APPEND, as `bridge fdb append` sends.
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    let mut h = h.clone();
    let mut resp = h.request(nl)?;
    while let Some(m) = futures::StreamExt::next(&mut resp).await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            let e = rtnetlink::Error::NetlinkError(e);
            if link::errno(&e) != Some(libc::EEXIST) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{InfoData, InfoVlan, InfoVxlan, LinkAttribute, LinkInfo};

    use super::*;

    fn info_data(m: &LinkMessage) -> (InfoKind, InfoData) {
        let infos = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .expect("IFLA_LINKINFO");
        let kind = infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        });
        let data = infos.iter().find_map(|i| match i {
            LinkInfo::Data(d) => Some(d.clone()),
            _ => None,
        });
        (kind.expect("kind"), data.expect("data"))
    }

    #[test]
    fn the_vlan_request_names_the_parent_and_the_vid() {
        let m = vlan_request("eth-ten.100", 7, 100);
        assert!(
            m.attributes
                .contains(&LinkAttribute::IfName("eth-ten.100".into()))
        );
        assert!(m.attributes.contains(&LinkAttribute::Link(7)), "{m:?}");
        let (kind, data) = info_data(&m);
        assert_eq!(kind, InfoKind::Vlan);
        assert_eq!(data, InfoData::Vlan(vec![InfoVlan::Id(100)]));
    }

    #[test]
    fn the_vxlan_request_carries_endpoint_group_and_port() {
        let cfg = VxlanConfig {
            local_ip: "192.0.2.10".parse().unwrap(),
            group: Some("239.1.1.1".parse().unwrap()),
            peers: vec![],
            dstport: 4789,
        };
        let m = vxlan_request("vxlan-42", 42, &cfg, 3);
        let (kind, data) = info_data(&m);
        assert_eq!(kind, InfoKind::Vxlan);
        let InfoData::Vxlan(v) = data else {
            panic!("not vxlan: {data:?}")
        };
        for want in [
            InfoVxlan::Id(42),
            InfoVxlan::Local("192.0.2.10".parse().unwrap()),
            InfoVxlan::Group("239.1.1.1".parse().unwrap()),
            InfoVxlan::Port(4789),
            InfoVxlan::Link(3),
            InfoVxlan::Learning(true),
        ] {
            assert!(v.contains(&want), "{want:?} missing from {v:?}");
        }
    }
}
