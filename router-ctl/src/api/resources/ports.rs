//! Ports: `/v2.0/ports`, their fixed IPs chosen from the network's subnets.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{Cx, floatingips, new_id};
use crate::{
    api::{
        input::{self, FixedIpRequest, NAME_MAX, Obj},
        scope::visible,
    },
    model::{Fault, FixedIp, Network, Port, mac_to_string, parse_mac},
    store,
};

pub(super) fn fixed_ips_view(ips: &[FixedIp]) -> Value {
    Value::Array(
        ips.iter()
            .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip.to_string()}))
            .collect(),
    )
}

pub(super) fn port_view(p: &Port) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "network_id": p.network_id,
        "tenant_id": p.project_id,
        "project_id": p.project_id,
        "mac_address": mac_to_string(&p.mac),
        "admin_state_up": p.admin_state_up,
        "status": p.status,
        "device_owner": p.device_owner,
        "device_id": p.device_id,
        "fixed_ips": fixed_ips_view(&p.fixed_ips),
    })
}

/// Chooses the fixed IPs of a new port on `network_id` with MAC `mac`: as requested, else as
/// Neutron's `_allocate_ips_for_port` does, in this order: one address from the first IPv4
/// subnet with a free one, one from the first IPv6 subnet with pools (stateful or no mode), and
/// the EUI-64 address on every SLAAC / DHCPv6-stateless subnet (none at all when the network has no
/// subnet and `need` is false).
pub(super) fn allocate_fixed_ips(
    c: &Connection,
    network_id: &str,
    requests: Option<&[FixedIpRequest]>,
    need: bool,
    mac: &[u8; 6],
) -> Result<Vec<FixedIp>, Fault> {
    let subnets = store::network_subnets(c, network_id)?;
    let mut out: Vec<FixedIp> = Vec::new();
    match requests {
        // An empty list for a router gateway means "pick one", as no address is no gateway.
        Some(reqs) if !(reqs.is_empty() && need) => {
            for r in reqs {
                let subnet = match (&r.subnet_id, r.ip) {
                    (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).ok_or_else(|| {
                        Fault::invalid(format!("Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}"))
                    })?,
                    (None, Some(ip)) => subnets.iter().find(|s| s.cidr.contains(&ip)).ok_or_else(|| {
                        Fault::new(400, "InvalidIpForNetwork", format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."))
                    })?,
                    (None, None) => return Err(Fault::invalid("fixed_ips entry without subnet_id or ip_address")),
                };
                if out
                    .iter()
                    .any(|f| f.subnet_id == subnet.id && r.ip.is_none())
                {
                    return Err(Fault::invalid(
                        "only one address per subnet may be requested without ip_address",
                    ));
                }
                let ip = if subnet.auto_address() {
                    if let Some(ip) = r.ip {
                        return Err(Fault::invalid(format!(
                            "IPv6 address {ip} cannot be directly assigned to a port on subnet {} since the subnet is configured for automatic addresses",
                            subnet.id
                        )));
                    }
                    store::auto_address(c, subnet, mac)?
                } else {
                    store::allocate_ip(c, subnet, r.ip, false)?
                };
                if out.iter().any(|f| f.subnet_id == subnet.id && f.ip == ip) {
                    return Err(Fault::invalid(format!("duplicate fixed IP {ip}")));
                }
                out.push(FixedIp {
                    subnet_id: subnet.id.clone(),
                    ip,
                });
            }
        }
        _ => {
            let mut last_err = None;
            for version in [4, 6] {
                let pooled = subnets
                    .iter()
                    .filter(|s| s.ip_version() == version && !s.auto_address());
                for s in pooled {
                    match store::allocate_ip(c, s, None, false) {
                        Ok(ip) => {
                            out.push(FixedIp {
                                subnet_id: s.id.clone(),
                                ip,
                            });
                            break;
                        }
                        Err(e) => last_err = Some(e),
                    }
                }
            }
            // Neutron's order: IPv4, stateful IPv6, then the automatic addresses.
            for s in subnets.iter().filter(|s| s.auto_address()) {
                let ip = store::auto_address(c, s, mac)?;
                out.push(FixedIp {
                    subnet_id: s.id.clone(),
                    ip,
                });
            }
            // No address at all: an error when one was needed or the subnets are full.
            if out.is_empty() && (need || last_err.is_some()) {
                return Err(last_err.unwrap_or_else(|| {
                    Fault::new(400, "BadRequest", format!("Bad router request: Network {network_id} has no IPv4 subnet to allocate an address from."))
                }));
            }
        }
    }
    Ok(out)
}

pub(super) fn create_port(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, ctx, .. } = cx;
    let network_id = input::req_uuid(o, "network_id")?;
    let project_id = input::owner(o, ctx, "create_port")?;
    let (name, description) = input::name_and_description(o)?;
    let admin_state_up = input::opt_bool(o, "admin_state_up")?.unwrap_or(true);
    let device_id = input::opt_string(o, "device_id", NAME_MAX)?.unwrap_or_default();
    let device_owner = input::opt_string(o, "device_owner", NAME_MAX)?.unwrap_or_default();
    let mac = match input::opt_string(o, "mac_address", 32)? {
        Some(s) => Some(
            parse_mac(&s)
                .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
                .ok_or_else(|| {
                    input::bad_attr("mac_address", format!("'{s}' is not a valid MAC address"))
                })?,
        ),
        None => None,
    };
    let requests = match input::opt_list(o, "fixed_ips")? {
        Some(l) => Some(input::fixed_ip_requests("fixed_ips", l)?),
        None => None,
    };
    let net = visible::<Network>(c, ctx, &network_id)?;
    if !ctx.owns(&net.project_id) && !net.shared {
        return Err(Fault::policy("create_port"));
    }
    let mac = match mac {
        Some(m) => {
            if store::mac_in_use(c, &m)? {
                return Err(Fault::conflict(
                    "MacAddressInUse",
                    format!(
                        "Unable to complete operation for network {network_id}. The mac address {} is in use.",
                        mac_to_string(&m)
                    ),
                ));
            }
            m
        }
        None => store::generate_mac(c)?,
    };
    let fixed_ips = allocate_fixed_ips(c, &network_id, requests.as_deref(), false, &mac)?;
    let id = new_id();
    store::insert(
        c,
        &Port {
            id: id.clone(),
            network_id,
            name,
            description,
            project_id,
            mac,
            admin_state_up,
            device_owner,
            device_id,
            status: "DOWN".into(),
            fixed_ips,
        },
    )?;
    Ok(id)
}

pub(super) fn is_router_port(c: &Connection, id: &str) -> Result<bool, Fault> {
    Ok(store::interface_router(c, id)?.is_some() || store::gateway_router(c, id)?.is_some())
}

fn l3_port_in_use(p: &Port) -> Fault {
    Fault::conflict(
        "L3PortInUse",
        format!(
            "Port {} has owner {} and therefore cannot be deleted directly via the port API.",
            p.id, p.device_owner
        ),
    )
}

pub(super) fn update_port(cx: Cx, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, ctx, .. } = cx;
    let mut p = visible::<Port>(c, ctx, id)?;
    input::set_string(o, "name", &mut p.name)?;
    input::set_string(o, "description", &mut p.description)?;
    if let Some(v) = input::opt_bool(o, "admin_state_up")? {
        p.admin_state_up = v;
    }
    let owner = input::opt_string(o, "device_owner", NAME_MAX)?;
    let device = input::opt_string(o, "device_id", NAME_MAX)?;
    if (owner.as_ref().is_some_and(|v| *v != p.device_owner)
        || device.as_ref().is_some_and(|v| *v != p.device_id))
        && is_router_port(c, id)?
    {
        return Err(Fault::conflict(
            "PortInUse",
            format!(
                "Unable to complete operation on port {id} for network {}. Port already has an attached device {}.",
                p.network_id, p.device_id
            ),
        ));
    }
    if let Some(v) = owner {
        p.device_owner = v;
    }
    if let Some(v) = device {
        p.device_id = v;
    }
    store::update(c, &p)
}

pub(super) fn delete_port(cx: Cx, id: &str) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let p = visible::<Port>(c, ctx, id)?;
    if is_router_port(c, id)? {
        return Err(l3_port_in_use(&p));
    }
    floatingips::before_port_delete(c, fx, &p)?;
    store::delete_port(c, id)
}
