//! The sandbox helper behind `router-ctl port create --netns NS`: plugs a network namespace into
//! a Neutron network the way Nova plugs a VM's tap — so the router can be tried without a cloud.
//!
//! A veth joins the namespace to the network's bridge `brq<network[:11]>`: the inner end (`eth0`,
//! or the next free `ethN`) takes the port's MAC and fixed IP with a default route via the
//! subnet's gateway; the outer end `tap<port[:11]>` is enslaved to the bridge in the calling
//! namespace, which must be the daemon's. The tap carries an alias naming the port, so `port
//! delete` removes only the veths this helper made. Everything goes through rtnetlink, with the
//! realiser's `net` helpers (namespaces, veths, addresses, routes).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use serde_json::Value;

use crate::{
    model::spec::names,
    net::{self, NetnsHandle},
};

/// What the plugging needs to know about a port, read from the API's port object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPort {
    pub id: String,
    pub network_id: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub subnet_id: String,
}

impl SandboxPort {
    /// Reads id, network, MAC and the first IPv4 fixed IP of a port object.
    pub fn from_port(port: &Value) -> Result<Self> {
        let s = |k: &str| {
            port.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("the port has no `{k}`: {port}"))
        };
        let mac = parse_mac(&s("mac_address")?)?;
        let fixed = port
            .get("fixed_ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|f| {
                let ip = f.get("ip_address")?.as_str()?.parse::<Ipv4Addr>().ok()?;
                let subnet = f.get("subnet_id")?.as_str()?.to_string();
                Some((ip, subnet))
            })
            .with_context(|| {
                format!("the port has no IPv4 fixed IP (does its network have a subnet?): {port}")
            })?;
        Ok(Self {
            id: s("id")?,
            network_id: s("network_id")?,
            mac,
            ip: fixed.0,
            subnet_id: fixed.1,
        })
    }

    /// Alias written on the tap: proves to `unplug` that the veth is ours.
    fn alias(&self) -> String {
        alias_for(&self.id)
    }
}

fn alias_for(port_id: &str) -> String {
    format!("router-ctl sandbox port {port_id}")
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("invalid MAC address `{s}`");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| anyhow!("invalid MAC address `{s}`"))?;
    }
    Ok(mac)
}

/// The prefix length of a subnet object's `cidr` and its `gateway_ip` (None when null).
pub fn subnet_prefix_and_gateway(subnet: &Value) -> Result<(u8, Option<Ipv4Addr>)> {
    let cidr: ipnet::Ipv4Net = subnet
        .get("cidr")
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("the subnet has no IPv4 `cidr`: {subnet}"))?;
    let gw = match subnet.get("gateway_ip") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|g| g.parse().ok())
                .with_context(|| format!("invalid gateway_ip in {subnet}"))?,
        ),
    };
    Ok((cidr.prefix_len(), gw))
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`port create --netns` must run as root on the daemon's host (it creates a veth and configures the namespace)"
        );
    }
    Ok(())
}

/// Runs `f` with an rtnetlink handle in the calling thread's network namespace.
fn here<T: Send, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    net::with_netlink(&NetnsHandle::current()?, f)
}

/// Runs `f` with an rtnetlink handle inside the named namespace.
fn inside<T: Send, F, Fut>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    let handle = NetnsHandle::open_named(ns)?.with_context(|| format!("no namespace {ns}"))?;
    net::with_netlink(&handle, f)
}

/// Index and attributes of `name` in the current namespace, None when absent.
async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(anyhow!("looking up {name}: {e}")),
    }
}

fn link_alias(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Checks, before anything is created, that this runs as root in the namespace holding the
/// network's bridge (i.e. the daemon's).
pub fn preflight(network_id: &str) -> Result<()> {
    require_root()?;
    let bridge = names::bridge(network_id);
    let probe = bridge.clone();
    if here(|h| async move { net::link::get_link(&h, &probe).await })?.is_none() {
        bail!(
            "bridge {bridge} of network {network_id} is not in this network namespace: run `port create --netns` on the daemon's host, in the daemon's namespace (e.g. `nsenter --net=/run/netns/HOST router-ctl ...`)"
        );
    }
    Ok(())
}

/// Creates the named namespace when missing (as `ip netns add`), with `lo` up. Returns whether
/// it was created.
pub fn ensure_netns(ns: &str) -> Result<bool> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        bail!("invalid namespace name `{ns}`");
    }
    if !net::ns::create(ns)? {
        return Ok(false);
    }
    let lo_up = inside(ns, |h| async move {
        let lo = net::link::get_link(&h, "lo")
            .await?
            .context("no lo in the new namespace")?;
        net::link::set_up(&h, lo.index, true).await
    });
    if let Err(e) = lo_up {
        let _ = net::ns::delete(ns);
        return Err(e);
    }
    Ok(true)
}

/// Plugs `ns` (created when missing) into the port's network; see the module doc. On error,
/// whatever this call created is removed again.
pub fn plug(port: &SandboxPort, ns: &str, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<()> {
    require_root()?;
    let tap = names::tap_dev(&port.id);
    let probe = tap.clone();
    if here(|h| async move { net::link::get_link(&h, &probe).await })?.is_some() {
        bail!("{tap} already exists: port {} is plugged already", port.id);
    }
    let created_ns = ensure_netns(ns)?;
    let result = plug_inner(port, ns, &tap, prefix, gateway);
    if result.is_err() {
        let _ = here(|h| async move { net::link::delete_link(&h, &tap).await });
        if created_ns {
            let _ = net::ns::delete(ns);
        }
    }
    result
}

fn plug_inner(
    port: &SandboxPort,
    ns: &str,
    tap: &str,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let inner = inside(ns, |h| async move {
        for i in 0..100 {
            let name = format!("eth{i}");
            if net::link::get_link(&h, &name).await?.is_none() {
                return Ok(name);
            }
        }
        bail!("namespace {ns} has eth0..eth99 already")
    })?;
    let bridge = names::bridge(&port.network_id);
    let target = NetnsHandle::open_named(ns)?.with_context(|| format!("no namespace {ns}"))?;
    let (alias, mac, peer) = (port.alias(), port.mac, inner.clone());
    here(|h| async move {
        let br = net::link::get_link(&h, &bridge)
            .await?
            .with_context(|| format!("bridge {bridge} not found in this namespace"))?;
        // The inner end is created directly in the target namespace, with the port's MAC; the
        // tap comes up enslaved to the bridge.
        let far = net::link::VethPeer {
            name: &peer,
            mac,
            ns: &target,
        };
        net::link::create_veth(&h, tap, br.index, far, None, None)
            .await
            .map_err(anyhow::Error::from)?;
        let t = net::link::get_link(&h, tap)
            .await?
            .with_context(|| format!("veth {tap} vanished"))?;
        h.link()
            .set(LinkUnspec::new_with_index(t.index).alias(alias).build())
            .execute()
            .await
            .with_context(|| format!("marking {tap} as a sandbox port"))
    })?;
    let ip = port.ip;
    inside(ns, |h| async move {
        let l = net::link::get_link(&h, &inner)
            .await?
            .with_context(|| format!("{inner} did not arrive in {ns}"))?;
        net::link::set_up(&h, l.index, true).await?;
        net::link::converge_address(&h, l.index, ip, prefix).await?;
        if let Some(gw) = gateway {
            net::link::replace_default_route(&h, gw, l.index).await?;
        }
        Ok(())
    })
}

/// Removes the sandbox veth of `port_id` if this helper made it (tap alias names the port);
/// anything else by that name — e.g. a router port's tap — is left alone. Without root, or
/// away from the daemon's host, there is nothing to remove and this is a no-op.
pub fn unplug(port_id: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let tap = names::tap_dev(port_id);
    let alias = alias_for(port_id);
    here(|h| async move {
        let Some(l) = link_by_name(&h, &tap).await? else {
            return Ok(());
        };
        if link_alias(&l) != Some(alias.as_str()) || link_kind(&l) != Some(&InfoKind::Veth) {
            return Ok(());
        }
        h.link()
            .del(l.header.index)
            .execute()
            .await
            .with_context(|| format!("deleting {tap}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sandbox_port_from_api_object() {
        let p = json!({
            "id": "0123456789abcdef-port", "network_id": "net", "mac_address": "fa:16:3e:00:0a:0b",
            "fixed_ips": [{"subnet_id": "v6", "ip_address": "2001:db8::5"},
                          {"subnet_id": "sub", "ip_address": "10.10.0.5"}]
        });
        let s = SandboxPort::from_port(&p).unwrap();
        assert_eq!(s.mac, [0xfa, 0x16, 0x3e, 0, 0x0a, 0x0b]);
        assert_eq!(s.ip, Ipv4Addr::new(10, 10, 0, 5));
        assert_eq!(s.subnet_id, "sub");
        assert_eq!(s.alias(), "router-ctl sandbox port 0123456789abcdef-port");
        assert_eq!(names::tap_dev(&s.id), "tap0123456789a");
        let no_ip = json!({"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:0a:0b",
                           "fixed_ips": []});
        let e = SandboxPort::from_port(&no_ip).unwrap_err().to_string();
        assert!(e.contains("no IPv4 fixed IP"), "{e}");
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("00:11:22:aa:BB:ff").unwrap(),
            [0, 0x11, 0x22, 0xaa, 0xbb, 0xff]
        );
        for bad in [
            "",
            "00:11:22:aa:bb",
            "00:11:22:aa:bb:cc:dd",
            "zz:11:22:aa:bb:cc",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subnet_facts() {
        let (p, g) =
            subnet_prefix_and_gateway(&json!({"cidr": "10.20.0.0/24", "gateway_ip": "10.20.0.1"}))
                .unwrap();
        assert_eq!((p, g), (24, Some(Ipv4Addr::new(10, 20, 0, 1))));
        let (_, g) =
            subnet_prefix_and_gateway(&json!({"cidr": "10.20.0.0/16", "gateway_ip": null}))
                .unwrap();
        assert_eq!(g, None);
        assert!(subnet_prefix_and_gateway(&json!({"cidr": "fd00::/64"})).is_err());
    }

    #[test]
    fn netns_names_are_checked() {
        for bad in ["", "a/b", "..", "."] {
            assert!(ensure_netns(bad).is_err(), "{bad:?}");
        }
    }
}
