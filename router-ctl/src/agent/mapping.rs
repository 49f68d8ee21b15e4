//! A router dict from `sync_routers` → the `RouterSpec` the API would build for the same
//! router, and the `NetworkSpec`s of the networks its ports are on (their segments from
//! `get_network_details`). Nothing here touches the kernel: a dict that cannot be served is an
//! error naming the router and the reason, and the caller keeps the router as it was.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use serde_json::Value;

use crate::model::{
    Ipv6Mode, parse_mac,
    spec::{
        FloatingIpSpec, GatewaySpec, NetworkSpec, PortSpec, RaPrefix, RouteSpec, RouterSpec,
        Segment,
    },
};

/// Why a router dict is not realised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A kind of router this agent does not serve (`distributed`, `ha`): never built at all.
    #[error("router {router}: {kind} routers are not served by this agent (legacy only)")]
    Unsupported { router: String, kind: &'static str },
    /// The dict is not one the agent can build.
    #[error("router {router}: {reason}")]
    Invalid { router: String, reason: String },
}

/// A floating IP of the router, for the status report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub address: Ipv4Addr,
    /// Associated with a fixed IP (else it can only be DOWN).
    pub associated: bool,
    /// The status neutron-server holds.
    pub status: String,
}

/// A router dict, mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub spec: RouterSpec,
    pub networks: Vec<NetworkSpec>,
    pub floating_ips: Vec<FloatingIp>,
}

/// The router's id, if the dict has one.
pub fn router_id(dict: &Value) -> Option<&str> {
    dict.get("id").and_then(Value::as_str)
}

/// The networks of the router's ports (whose segments `map_router` needs).
pub fn network_ids(dict: &Value) -> Vec<String> {
    let mut out: Vec<String> = ports(dict)
        .filter_map(|p| p.get("network_id").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn ports(dict: &Value) -> impl Iterator<Item = &Value> {
    dict.get("gw_port")
        .filter(|g| g.is_object())
        .into_iter()
        .chain(items(dict, "_interfaces"))
}

/// The items of the list attribute `key` (none when it is missing or not a list: the server
/// leaves out what a router does not have).
fn items<'a>(dict: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    dict.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A network's segment from `get_network_details` (the provider attributes, or the first
/// segment of a multi-segment network).
pub fn segment_of(details: &Value) -> Result<Segment, String> {
    let seg = match details.get("segments").and_then(Value::as_array) {
        Some(s) if !s.is_empty() => &s[0],
        _ => details,
    };
    let s = |k: &str| seg.get(format!("provider:{k}")).and_then(Value::as_str);
    let physnet = s("physical_network").map(str::to_string);
    let seg_id = seg.get("provider:segmentation_id").and_then(Value::as_u64);
    let need_physnet = |t: &str| {
        physnet
            .clone()
            .ok_or_else(|| format!("{t} network without a physical network"))
    };
    match s("network_type") {
        Some("flat") => Ok(Segment::Flat {
            physical_network: need_physnet("flat")?,
        }),
        Some("vlan") => Ok(Segment::Vlan {
            physical_network: need_physnet("vlan")?,
            vlan_id: seg_id
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| (1..=4094).contains(v))
                .ok_or_else(|| format!("vlan network with segmentation id {seg_id:?}"))?,
        }),
        Some("vxlan") => Ok(Segment::Vxlan {
            vni: seg_id
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| (1..1 << 24).contains(v))
                .ok_or_else(|| format!("vxlan network with segmentation id {seg_id:?}"))?,
        }),
        Some("local") => Ok(Segment::Local),
        Some(other) => Err(format!(
            "network type {other:?} is not served by this agent (flat, vlan, vxlan, local)"
        )),
        None => Err("network without provider:network_type".into()),
    }
}

/// Maps a router dict. `segments`: network id → segment, for every network of
/// `network_ids(dict)`; `dp_id`: the router's number on this node.
pub fn map_router(
    dict: &Value,
    dp_id: u32,
    segments: &HashMap<String, Segment>,
) -> Result<Mapped, MapError> {
    let id = router_id(dict)
        .ok_or_else(|| MapError::Invalid {
            router: "?".into(),
            reason: "no id".into(),
        })?
        .to_string();
    let bad = |reason: String| MapError::Invalid {
        router: id.clone(),
        reason,
    };
    for kind in ["distributed", "ha"] {
        if dict.get(kind).and_then(Value::as_bool) == Some(true) {
            return Err(MapError::Unsupported {
                router: id.clone(),
                kind: if kind == "ha" { "HA" } else { "distributed" },
            });
        }
    }
    let mut networks: Vec<NetworkSpec> = Vec::new();
    let mut network = |port: &PortSpec, external: bool| -> Result<(), MapError> {
        let segment = segments
            .get(&port.network_id)
            .cloned()
            .ok_or_else(|| bad(format!("no segment known for network {}", port.network_id)))?;
        match networks.iter_mut().find(|n| n.id == port.network_id) {
            Some(n) => n.external |= external,
            None => networks.push(NetworkSpec {
                id: port.network_id.clone(),
                segment,
                external,
            }),
        }
        Ok(())
    };
    let gateway = match dict.get("gw_port").filter(|g| g.is_object()) {
        None => None,
        Some(g) => {
            let (port, next_hops) = port_spec(g).map_err(&bad)?;
            network(&port, true)?;
            let enable_snat = dict
                .get("enable_snat")
                .or_else(|| dict.pointer("/external_gateway_info/enable_snat"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Some(GatewaySpec {
                port,
                next_hops,
                enable_snat,
            })
        }
    };
    let mut interfaces = Vec::new();
    for i in items(dict, "_interfaces") {
        let (port, _) = port_spec(i).map_err(&bad)?;
        network(&port, false)?;
        interfaces.push(port);
    }
    check_overlaps(&interfaces, gateway.as_ref()).map_err(&bad)?;
    let routes = routes(dict).map_err(&bad)?;
    let floating = floating_ips(dict).map_err(&bad)?;
    let spec = RouterSpec {
        id: id.clone(),
        dp_id,
        admin_state_up: dict
            .get("admin_state_up")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        interfaces,
        gateway,
        floating_ips: floating
            .iter()
            .map(|(f, fixed)| FloatingIpSpec {
                floating_ip: f.address,
                fixed_ip: *fixed,
            })
            .collect(),
        port_forwardings: Vec::new(),
        routes,
    };
    Ok(Mapped {
        spec,
        networks,
        floating_ips: floating.into_iter().map(|(f, _)| f).collect(),
    })
}

/// A port dict → its spec and the `gateway_ip`s of its subnets (one per family, in order).
fn port_spec(p: &Value) -> Result<(PortSpec, Vec<IpAddr>), String> {
    let s = |k: &str| p.get(k).and_then(Value::as_str);
    let port_id = s("id").ok_or("a port without id")?.to_string();
    let network_id = s("network_id")
        .ok_or_else(|| format!("port {port_id} without network_id"))?
        .to_string();
    let mac = s("mac_address")
        .and_then(parse_mac)
        .ok_or_else(|| format!("port {port_id}: no valid mac_address"))?;
    let subnets: Vec<&Value> = p
        .get("subnets")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let mut addresses = Vec::new();
    let mut ra_prefixes = Vec::new();
    let mut next_hops: Vec<IpAddr> = Vec::new();
    for f in items(p, "fixed_ips") {
        let ip: IpAddr = f
            .get("ip_address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("port {port_id}: a fixed IP without a valid ip_address"))?;
        let subnet_id = f.get("subnet_id").and_then(Value::as_str);
        let subnet = subnets
            .iter()
            .find(|s| s.get("id").and_then(Value::as_str) == subnet_id)
            .ok_or_else(|| {
                format!(
                    "port {port_id}: subnet {} of {ip} is missing from the port's subnets",
                    subnet_id.unwrap_or("?")
                )
            })?;
        let cidr: IpNet = subnet
            .get("cidr")
            .and_then(Value::as_str)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("port {port_id}: subnet of {ip} has no valid cidr"))?;
        let prefix = f
            .get("prefixlen")
            .and_then(Value::as_u64)
            .and_then(|l| u8::try_from(l).ok())
            .unwrap_or(cidr.prefix_len());
        if !cidr.contains(&ip) {
            return Err(format!("port {port_id}: {ip} is outside its subnet {cidr}"));
        }
        // An IPv6 subnet with `ipv6_ra_mode` is advertised on the port (as the API's builder
        // does; the realiser advertises on internal ports only).
        if let (IpNet::V6(prefix), Some(mode)) = (
            cidr,
            subnet
                .get("ipv6_ra_mode")
                .and_then(Value::as_str)
                .and_then(Ipv6Mode::parse),
        ) && !ra_prefixes
            .iter()
            .any(|r: &RaPrefix| r.prefix == prefix.trunc())
        {
            ra_prefixes.push(RaPrefix {
                prefix: prefix.trunc(),
                mode,
            });
        }
        addresses.push(
            IpNet::new(ip, prefix).map_err(|e| format!("port {port_id}: {ip}/{prefix}: {e}"))?,
        );
        if let Some(gw) = subnet
            .get("gateway_ip")
            .and_then(Value::as_str)
            .and_then(|g| g.parse::<IpAddr>().ok())
            && !next_hops.iter().any(|h| h.is_ipv4() == gw.is_ipv4())
        {
            next_hops.push(gw);
        }
    }
    if addresses.is_empty() {
        return Err(format!("port {port_id} has no fixed IP"));
    }
    let mtu = p
        .get("mtu")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(1500);
    Ok((
        PortSpec {
            port_id,
            network_id,
            mac,
            addresses,
            mtu,
            ra_prefixes,
        },
        next_hops,
    ))
}

/// Two ports of one router on overlapping subnets would make its routing ambiguous.
fn check_overlaps(interfaces: &[PortSpec], gateway: Option<&GatewaySpec>) -> Result<(), String> {
    let all: Vec<(&str, IpNet)> = interfaces
        .iter()
        .chain(gateway.map(|g| &g.port))
        .flat_map(|p| {
            p.addresses
                .iter()
                .map(move |a| (p.port_id.as_str(), a.trunc()))
        })
        .collect();
    for (i, (pa, a)) in all.iter().enumerate() {
        for (pb, b) in &all[i + 1..] {
            if pa != pb && (a.contains(&b.network()) || b.contains(&a.network())) {
                return Err(format!(
                    "overlapping addresses: {a} (port {pa}) and {b} (port {pb})"
                ));
            }
        }
    }
    Ok(())
}

fn routes(dict: &Value) -> Result<Vec<RouteSpec>, String> {
    items(dict, "routes")
        .map(|r| {
            let d = r
                .get("destination")
                .and_then(Value::as_str)
                .and_then(|d| d.parse().ok());
            let n = r
                .get("nexthop")
                .and_then(Value::as_str)
                .and_then(|n| n.parse().ok());
            match (d, n) {
                (Some(destination), Some(nexthop)) => Ok(RouteSpec {
                    destination,
                    nexthop,
                }),
                _ => Err(format!(
                    "route {r} is not a destination CIDR and a nexthop address"
                )),
            }
        })
        .collect()
}

/// The router's IPv4 floating IPs with their fixed IPs (None: not associated).
fn floating_ips(dict: &Value) -> Result<Vec<(FloatingIp, Option<Ipv4Addr>)>, String> {
    let mut out = Vec::new();
    for f in items(dict, "_floatingips") {
        let id = f
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a floating IP without id")?;
        let address: Ipv4Addr = f
            .get("floating_ip_address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                format!("floating IP {id}: floating_ip_address is not an IPv4 address")
            })?;
        let fixed = match f.get("fixed_ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    .ok_or_else(|| format!("floating IP {id}: fixed_ip_address {v} is not IPv4"))?,
            ),
        };
        out.push((
            FloatingIp {
                id: id.to_string(),
                address,
                associated: fixed.is_some(),
                status: f
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
            fixed,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SAMPLE: &str = include_str!("testdata/sync_routers-sample.json");
    const EXT: &str = "3e025bba-07bc-4f6f-9919-aa6e4ffe1973";
    const TENANT: &str = "2c4d84de-adeb-4ab6-8c25-91d26b7261b9";

    fn sample() -> Value {
        serde_json::from_str(SAMPLE).unwrap()
    }

    fn segments() -> HashMap<String, Segment> {
        HashMap::from([
            (
                EXT.to_string(),
                Segment::Flat {
                    physical_network: "public".into(),
                },
            ),
            (TENANT.to_string(), Segment::Vxlan { vni: 42 }),
        ])
    }

    #[test]
    fn the_real_sample_maps_to_the_spec_the_api_would_build() {
        let d = sample();
        assert_eq!(network_ids(&d), vec![TENANT.to_string(), EXT.to_string()]);
        let m = map_router(&d, 7, &segments()).unwrap();
        let s = &m.spec;
        assert_eq!(s.id, "00db23ae-093c-4349-86c4-9e2317c3915a");
        assert_eq!(s.dp_id, 7);
        assert!(s.admin_state_up);
        let gw = s.gateway.as_ref().unwrap();
        assert_eq!(gw.port.port_id, "6bb20111-2ece-4457-bdd0-1018ac95779c");
        assert_eq!(gw.port.network_id, EXT);
        assert_eq!(gw.port.mac, [0xfa, 0x16, 0x3e, 0x41, 0x89, 0xa5]);
        assert_eq!(
            gw.port.addresses,
            vec!["203.0.113.120/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(gw.port.mtu, 1500);
        assert_eq!(gw.next_hops, vec!["203.0.113.1".parse::<IpAddr>().unwrap()]);
        assert!(gw.enable_snat);
        assert_eq!(s.interfaces.len(), 1);
        let qr = &s.interfaces[0];
        assert_eq!(qr.port_id, "aa07ee6a-8704-4674-8c23-d97eeed5b3f9");
        assert_eq!(qr.addresses, vec!["10.10.0.1/24".parse::<IpNet>().unwrap()]);
        assert_eq!(qr.mtu, 1450);
        assert_eq!(
            s.floating_ips,
            vec![FloatingIpSpec {
                floating_ip: "203.0.113.13".parse().unwrap(),
                fixed_ip: Some("10.10.0.249".parse().unwrap()),
            }]
        );
        assert_eq!(
            s.routes,
            vec![RouteSpec {
                destination: "192.0.2.0/24".parse().unwrap(),
                nexthop: "10.10.0.50".parse().unwrap(),
            }]
        );
        assert_eq!(
            m.floating_ips,
            vec![FloatingIp {
                id: "635c7310-f5ab-45a7-b55b-8102d52c475e".into(),
                address: "203.0.113.13".parse().unwrap(),
                associated: true,
                status: "ACTIVE".into(),
            }]
        );
        let ext = m.networks.iter().find(|n| n.id == EXT).unwrap();
        assert!(ext.external);
        let ten = m.networks.iter().find(|n| n.id == TENANT).unwrap();
        assert_eq!(ten.segment, Segment::Vxlan { vni: 42 });
        assert!(!ten.external);
    }

    #[test]
    fn an_ipv6_slaac_interface_is_advertised() {
        let mut d = sample();
        let qr = &mut d["_interfaces"][0];
        qr["subnets"] = json!([{
            "id": "v6-subnet", "cidr": "fd00:10::/64", "gateway_ip": "fd00:10::1",
            "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"
        }]);
        qr["fixed_ips"] = json!([{
            "subnet_id": "v6-subnet", "ip_address": "fd00:10::1", "prefixlen": 64
        }]);
        let m = map_router(&d, 7, &segments()).unwrap();
        let port = &m.spec.interfaces[0];
        assert_eq!(
            port.addresses,
            vec!["fd00:10::1/64".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            port.ra_prefixes,
            vec![RaPrefix {
                prefix: "fd00:10::/64".parse().unwrap(),
                mode: Ipv6Mode::Slaac,
            }]
        );
        // The sample's own IPv4 gateway port advertises nothing.
        assert!(m.spec.gateway.unwrap().port.ra_prefixes.is_empty());
    }

    #[test]
    fn a_router_with_nothing_and_snat_off() {
        let d = json!({"id": "r0", "admin_state_up": false, "enable_snat": false, "gw_port": null});
        let m = map_router(&d, 1, &HashMap::new()).unwrap();
        assert!(!m.spec.admin_state_up);
        assert!(m.spec.gateway.is_none() && m.spec.interfaces.is_empty() && m.networks.is_empty());
    }

    #[test]
    fn distributed_and_ha_routers_are_refused_whole() {
        for kind in ["distributed", "ha"] {
            let mut d = sample();
            d[kind] = json!(true);
            let e = map_router(&d, 1, &segments()).unwrap_err();
            assert!(matches!(e, MapError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("00db23ae"), "{e}");
        }
    }

    #[test]
    fn bad_dicts_name_the_router_and_the_reason() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "missing from the port's subnets",
                Box::new(|d| d["_interfaces"][0]["subnets"] = json!([])),
            ),
            (
                "overlapping",
                Box::new(|d| {
                    let mut second = d["_interfaces"][0].clone();
                    second["id"] = json!("bb07ee6a-0000");
                    second["fixed_ips"][0]["ip_address"] = json!("10.10.0.2");
                    d["_interfaces"].as_array_mut().unwrap().push(second);
                }),
            ),
            (
                "no segment known",
                Box::new(|d| d["_interfaces"][0]["network_id"] = json!("other")),
            ),
            (
                "mac_address",
                Box::new(|d| d["gw_port"]["mac_address"] = json!("nope")),
            ),
            (
                "route",
                Box::new(|d| d["routes"] = json!([{"destination": "x"}])),
            ),
            (
                "no fixed IP",
                Box::new(|d| d["gw_port"]["fixed_ips"] = json!([])),
            ),
        ];
        for (want, change) in cases {
            let mut d = sample();
            change(&mut d);
            let e = map_router(&d, 1, &segments()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("00db23ae"), "{want}: {e}");
        }
    }

    #[test]
    fn segments_from_network_details() {
        let flat = json!({"provider:network_type": "flat", "provider:physical_network": "public", "provider:segmentation_id": null});
        assert_eq!(
            segment_of(&flat),
            Ok(Segment::Flat {
                physical_network: "public".into()
            })
        );
        let vlan = json!({"provider:network_type": "vlan", "provider:physical_network": "tenant", "provider:segmentation_id": 101});
        assert_eq!(
            segment_of(&vlan),
            Ok(Segment::Vlan {
                physical_network: "tenant".into(),
                vlan_id: 101
            })
        );
        let vx = json!({"segments": [{"provider:network_type": "vxlan", "provider:physical_network": null, "provider:segmentation_id": 7}]});
        assert_eq!(segment_of(&vx), Ok(Segment::Vxlan { vni: 7 }));
        assert_eq!(
            segment_of(&json!({"provider:network_type": "local"})),
            Ok(Segment::Local)
        );
        let gre =
            segment_of(&json!({"provider:network_type": "gre", "provider:segmentation_id": 3}))
                .unwrap_err();
        assert!(gre.contains("gre"), "{gre}");
        assert!(segment_of(&json!({"provider:network_type": "vlan", "provider:physical_network": "t", "provider:segmentation_id": 5000})).is_err());
        assert!(segment_of(&json!({"provider:network_type": "flat"})).is_err());
    }
}
