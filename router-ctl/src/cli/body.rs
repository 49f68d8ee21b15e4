//! Request bodies, built exactly as python-neutronclient builds them, so that the daemon sees
//! the same requests from `router-ctl` as from the OpenStack tools.

use std::{net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

/// Splits `k1=v1,k2=v2` (neutronclient's `str2dict`), rejecting empty keys and pairs without `=`.
fn key_values(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim())),
            _ => Err(format!("`{kv}` is not KEY=VALUE")),
        })
        .collect()
}

fn ipv4(key: &str, v: &str) -> Result<Ipv4Addr, String> {
    v.parse()
        .map_err(|_| format!("{key}: `{v}` is not an IPv4 address"))
}

/// One `--allocation-pool start=IP,end=IP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationPool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl FromStr for AllocationPool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut start, mut end) = (None, None);
        for (k, v) in key_values(s)? {
            match k {
                "start" => start = Some(ipv4(k, v)?),
                "end" => end = Some(ipv4(k, v)?),
                _ => return Err(format!("unknown key `{k}` (expected start=IP,end=IP)")),
            }
        }
        match (start, end) {
            (Some(start), Some(end)) => Ok(Self { start, end }),
            _ => Err("both start= and end= are required".into()),
        }
    }
}

/// One `--fixed-ip subnet=SUBNET,ip=ADDR` of `gateway set`; `subnet_id=`/`ip_address=` (the
/// neutronclient spelling) are accepted too. The subnet is a name or id until resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIpSpec {
    pub subnet: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

impl FromStr for FixedIpSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = Self {
            subnet: None,
            ip: None,
        };
        for (k, v) in key_values(s)? {
            match k {
                "subnet" | "subnet_id" if !v.is_empty() => spec.subnet = Some(v.to_string()),
                "ip" | "ip_address" => spec.ip = Some(ipv4(k, v)?),
                _ => {
                    return Err(format!(
                        "unknown or empty key `{k}` (expected subnet=SUBNET,ip=ADDR)"
                    ));
                }
            }
        }
        if spec.subnet.is_none() && spec.ip.is_none() {
            return Err("give subnet=, ip= or both".into());
        }
        Ok(spec)
    }
}

/// `--route destination=CIDR,gateway=IP` (`nexthop=` too), as the `openstack` CLI spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteArg {
    pub destination: String,
    pub nexthop: Ipv4Addr,
}

impl FromStr for RouteArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut destination, mut nexthop) = (None, None);
        for (k, v) in key_values(s)? {
            match k {
                "destination" if !v.is_empty() => destination = Some(v.to_string()),
                "gateway" | "nexthop" => nexthop = Some(ipv4(k, v)?),
                _ => {
                    return Err(format!(
                        "unknown or empty key `{k}` (expected destination=CIDR,gateway=IP)"
                    ));
                }
            }
        }
        match (destination, nexthop) {
            (Some(destination), Some(nexthop)) => Ok(Self {
                destination,
                nexthop,
            }),
            _ => Err("give destination= and gateway=".into()),
        }
    }
}

/// `{"router": {"routes": [...]}}`: the body of `PUT /v2.0/routers/{id}` (replacing the list)
/// and of `add_extraroutes`.
pub fn router_routes(routes: &[RouteArg]) -> Value {
    let list: Vec<Value> = routes
        .iter()
        .map(|r| json!({"destination": r.destination, "nexthop": r.nexthop.to_string()}))
        .collect();
    json!({"router": {"routes": list}})
}

/// The `gateway_ip` of a new subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// Left out: Neutron picks the first address of the CIDR.
    Default,
    /// `null`: no gateway.
    None,
    Ip(Ipv4Addr),
}

/// `POST /v2.0/networks`.
pub fn network_create(name: &str, external: bool, physical_network: Option<&str>) -> Value {
    let mut n = Map::new();
    n.insert("name".into(), json!(name));
    n.insert("admin_state_up".into(), json!(true));
    if external {
        n.insert("router:external".into(), json!(true));
    }
    if let Some(p) = physical_network {
        n.insert("provider:physical_network".into(), json!(p));
    }
    json!({ "network": n })
}

/// `POST /v2.0/subnets` (IPv4 only: the datapath is IPv4).
pub fn subnet_create(
    name: &str,
    network_id: &str,
    cidr: Ipv4Net,
    gateway: Gateway,
    pools: &[AllocationPool],
) -> Value {
    let mut s = Map::new();
    s.insert("name".into(), json!(name));
    s.insert("network_id".into(), json!(network_id));
    s.insert("ip_version".into(), json!(4));
    s.insert("cidr".into(), json!(cidr.to_string()));
    match gateway {
        Gateway::Default => {}
        Gateway::None => {
            s.insert("gateway_ip".into(), Value::Null);
        }
        Gateway::Ip(ip) => {
            s.insert("gateway_ip".into(), json!(ip.to_string()));
        }
    }
    if !pools.is_empty() {
        let pools: Vec<Value> = pools
            .iter()
            .map(|p| json!({"start": p.start.to_string(), "end": p.end.to_string()}))
            .collect();
        s.insert("allocation_pools".into(), Value::Array(pools));
    }
    json!({ "subnet": s })
}

/// `POST /v2.0/routers`.
pub fn router_create(name: &str) -> Value {
    json!({"router": {"name": name, "admin_state_up": true}})
}

/// `PUT /v2.0/routers/{id}/add_router_interface` (and `remove_router_interface`).
pub fn router_interface(subnet_id: &str) -> Value {
    json!({ "subnet_id": subnet_id })
}

/// `PUT /v2.0/routers/{id}` for `router-gateway-set`: `network_id`, then `enable_snat: false`
/// only when SNAT is disabled, then `external_fixed_ips` only when given — neutronclient's body.
/// `fixed_ips` carry resolved subnet ids.
pub fn gateway_set(network_id: &str, disable_snat: bool, fixed_ips: &[FixedIpSpec]) -> Value {
    let mut g = Map::new();
    g.insert("network_id".into(), json!(network_id));
    if disable_snat {
        g.insert("enable_snat".into(), json!(false));
    }
    if !fixed_ips.is_empty() {
        let ips: Vec<Value> = fixed_ips
            .iter()
            .map(|f| {
                let mut m = Map::new();
                if let Some(s) = &f.subnet {
                    m.insert("subnet_id".into(), json!(s));
                }
                if let Some(ip) = f.ip {
                    m.insert("ip_address".into(), json!(ip.to_string()));
                }
                Value::Object(m)
            })
            .collect();
        g.insert("external_fixed_ips".into(), Value::Array(ips));
    }
    json!({"router": {"external_gateway_info": g}})
}

/// `PUT /v2.0/routers/{id}` for `router-gateway-clear`: neutronclient sends an empty object.
pub fn gateway_clear() -> Value {
    json!({"router": {"external_gateway_info": {}}})
}

/// Owner of ports plugged into a namespace by `port create --netns`, like Nova's `compute:nova`.
pub const SANDBOX_OWNER: &str = "compute:sandbox";

/// `POST /v2.0/ports`; a requested address goes in `fixed_ips` with no subnet (Neutron finds
/// the subnet that holds it). A sandbox port records its namespace as `device_id`.
pub fn port_create(
    network_id: &str,
    name: Option<&str>,
    ip: Option<Ipv4Addr>,
    sandbox_netns: Option<&str>,
) -> Value {
    let mut p = Map::new();
    p.insert("network_id".into(), json!(network_id));
    p.insert("admin_state_up".into(), json!(true));
    if let Some(n) = name {
        p.insert("name".into(), json!(n));
    }
    if let Some(ns) = sandbox_netns {
        p.insert("device_owner".into(), json!(SANDBOX_OWNER));
        p.insert("device_id".into(), json!(ns));
    }
    if let Some(ip) = ip {
        p.insert(
            "fixed_ips".into(),
            json!([{ "ip_address": ip.to_string() }]),
        );
    }
    json!({ "port": p })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that each of `bad` fails to parse as a `T`.
    fn assert_rejected<T: std::str::FromStr>(bad: &[&str]) {
        for b in bad {
            assert!(b.parse::<T>().is_err(), "{b:?} accepted");
        }
    }

    #[test]
    fn gateway_set_matches_neutronclient() {
        // neutronclient: router_dict = {'network_id': id}; add_gateway_router wraps it in
        // {'router': {'external_gateway_info': router_dict}}.
        assert_eq!(
            gateway_set("ext-id", false, &[]),
            json!({"router": {"external_gateway_info": {"network_id": "ext-id"}}})
        );
        // --disable-snat adds enable_snat: False (and nothing when not given).
        assert_eq!(
            gateway_set("ext-id", true, &[]),
            json!({"router": {"external_gateway_info":
                {"network_id": "ext-id", "enable_snat": false}}})
        );
        // --fixed-ip subnet_id=...,ip_address=... becomes external_fixed_ips.
        let ips = [
            FixedIpSpec {
                subnet: Some("sub-id".into()),
                ip: Some(Ipv4Addr::new(203, 0, 113, 10)),
            },
            FixedIpSpec {
                subnet: Some("sub-id".into()),
                ip: None,
            },
        ];
        assert_eq!(
            gateway_set("ext-id", false, &ips),
            json!({"router": {"external_gateway_info": {
            "network_id": "ext-id",
            "external_fixed_ips": [
                {"subnet_id": "sub-id", "ip_address": "203.0.113.10"},
                {"subnet_id": "sub-id"}
            ]}}})
        );
    }

    #[test]
    fn gateway_clear_is_an_empty_object() {
        assert_eq!(
            gateway_clear().to_string(),
            r#"{"router":{"external_gateway_info":{}}}"#
        );
    }

    #[test]
    fn fixed_ip_spec_parsing() {
        let f: FixedIpSpec = "subnet_id=abc,ip_address=203.0.113.5".parse().unwrap();
        assert_eq!(f.subnet.as_deref(), Some("abc"));
        assert_eq!(f.ip, Some(Ipv4Addr::new(203, 0, 113, 5)));
        let f: FixedIpSpec = "ip=203.0.113.5".parse().unwrap();
        assert_eq!(f.subnet, None);
        assert_rejected::<FixedIpSpec>(&[
            "",
            "subnet=",
            "ip=1.2.3",
            "ip=::1",
            "net=x",
            "subnet",
            "=x",
            "subnet=a,,ip=1.1.1.1",
        ]);
    }

    #[test]
    fn allocation_pool_parsing() {
        let p: AllocationPool = "start=10.0.0.2, end=10.0.0.9".parse().unwrap();
        assert_eq!(p.start, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.end, Ipv4Addr::new(10, 0, 0, 9));
        assert_rejected::<AllocationPool>(&[
            "start=10.0.0.2",
            "end=10.0.0.2",
            "start=x,end=10.0.0.1",
            "a=b",
        ]);
    }

    #[test]
    fn subnet_bodies() {
        let cidr: Ipv4Net = "10.10.0.0/24".parse().unwrap();
        assert_eq!(
            subnet_create("s", "n", cidr, Gateway::Default, &[]),
            json!({"subnet": {"name": "s", "network_id": "n", "ip_version": 4,
                              "cidr": "10.10.0.0/24"}})
        );
        let pool = AllocationPool {
            start: Ipv4Addr::new(10, 10, 0, 10),
            end: Ipv4Addr::new(10, 10, 0, 20),
        };
        assert_eq!(
            subnet_create("s", "n", cidr, Gateway::None, &[pool]),
            json!({"subnet": {"name": "s", "network_id": "n", "ip_version": 4,
                              "cidr": "10.10.0.0/24", "gateway_ip": null,
                              "allocation_pools": [{"start": "10.10.0.10", "end": "10.10.0.20"}]}})
        );
        assert_eq!(
            subnet_create(
                "s",
                "n",
                cidr,
                Gateway::Ip(Ipv4Addr::new(10, 10, 0, 254)),
                &[]
            )["subnet"]["gateway_ip"],
            json!("10.10.0.254")
        );
    }

    #[test]
    fn network_port_router_bodies() {
        assert_eq!(
            network_create("pub", true, Some("physnet1")),
            json!({"network": {"name": "pub", "admin_state_up": true, "router:external": true,
                               "provider:physical_network": "physnet1"}})
        );
        assert_eq!(
            network_create("priv", false, None),
            json!({"network": {"name": "priv", "admin_state_up": true}})
        );
        assert_eq!(
            port_create(
                "n",
                Some("vm1"),
                Some(Ipv4Addr::new(10, 0, 0, 5)),
                Some("ns1")
            ),
            json!({"port": {"network_id": "n", "admin_state_up": true, "name": "vm1",
                            "fixed_ips": [{"ip_address": "10.0.0.5"}],
                            "device_owner": "compute:sandbox", "device_id": "ns1"}})
        );
        assert_eq!(
            port_create("n", None, None, None),
            json!({"port": {"network_id": "n", "admin_state_up": true}})
        );
        assert_eq!(
            router_create("r"),
            json!({"router": {"name": "r", "admin_state_up": true}})
        );
        assert_eq!(router_interface("s"), json!({"subnet_id": "s"}));
    }
}
