//! The sandbox helper behind `router-ctl port create --netns NS`: plugs a network namespace into
//! a Neutron network the way Nova plugs a VM's tap — so the router can be tried without a cloud.
//!
//! A veth joins the namespace to the network's bridge `brq<network[:11]>`: the inner end (`eth0`,
//! or the next free `ethN`) takes the port's MAC and fixed IP with a default route via the
//! subnet's gateway; the outer end `tap<port[:11]>` is enslaved to the bridge in the calling
//! namespace, which must be the daemon's. The tap carries an alias naming the port, so `port
//! delete` removes only the veths this helper made. Everything goes through rtnetlink.

use std::{
    fs::{File, OpenOptions},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder, new_connection,
};
use serde_json::Value;

use crate::model::spec::names;

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

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

/// Runs `f` with a fresh rtnetlink connection on a current-thread runtime, in the calling
/// thread's network namespace.
fn with_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a netlink runtime")?;
    rt.block_on(async {
        let (conn, handle, _) = new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        f(handle).await
    })
}

/// Runs `f` on a thread that entered the named namespace (setns is per thread; the caller's
/// namespace is untouched).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = netns_path(ns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering namespace {ns}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread configuring namespace {ns} panicked"))?
    })
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
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
    let found = with_netlink(|h| async move { link_by_name(&h, &bridge).await })?;
    if found.is_none() {
        bail!(
            "bridge {} of network {network_id} is not in this network namespace: run `port create --netns` on the daemon's host, in the daemon's namespace (e.g. `nsenter --net=/run/netns/HOST router-ctl ...`)",
            names::bridge(network_id)
        );
    }
    Ok(())
}

/// Creates `/run/netns/<ns>` as `ip netns add` does (a shared `/run/netns` mount holding a
/// bind mount of a new namespace), with `lo` up. Returns false when it already existed.
pub fn ensure_netns(ns: &str) -> Result<bool> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        bail!("invalid namespace name `{ns}`");
    }
    let path = netns_path(ns);
    if path.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    make_netns_dir_shared()?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting the new namespace on {}", path.display()))?;
            // Still inside the new namespace: bring lo up.
            with_netlink(|h| async move {
                let lo = link_by_name(&h, "lo")
                    .await?
                    .context("no lo in the new namespace")?;
                h.link()
                    .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                    .execute()
                    .await
                    .context("setting lo up")
            })
        })
        .join()
        .map_err(|_| anyhow!("the thread creating namespace {ns} panicked"))?
    });
    if let Err(e) = made {
        let _ = delete_netns(ns);
        return Err(e);
    }
    Ok(true)
}

/// As iproute2: `/run/netns` is made a shared mount (bind-mounted onto itself first if it is
/// not a mount point) so namespaces created later show in every mount namespace.
fn make_netns_dir_shared() -> Result<()> {
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {NETNS_DIR} onto itself"))?;
            shared().with_context(|| format!("making {NETNS_DIR} a shared mount"))
        }
        Err(e) => Err(anyhow!("making {NETNS_DIR} a shared mount: {e}")),
    }
}

/// Removes `/run/netns/<ns>` (as `ip netns del`); the namespace dies with its last user.
pub fn delete_netns(ns: &str) -> Result<()> {
    let path = netns_path(ns);
    let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Plugs `ns` (created when missing) into the port's network; see the module doc. On error,
/// whatever this call created is removed again.
pub fn plug(port: &SandboxPort, ns: &str, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<()> {
    require_root()?;
    let tap = names::tap_dev(&port.id);
    let probe = tap.clone();
    if with_netlink(|h| async move { link_by_name(&h, &probe).await })?.is_some() {
        bail!("{tap} already exists: port {} is plugged already", port.id);
    }
    let created_ns = ensure_netns(ns)?;
    let result = plug_inner(port, ns, &tap, prefix, gateway);
    if result.is_err() {
        let _ = with_netlink(|h| async move { delete_link(&h, &tap).await });
        if created_ns {
            let _ = delete_netns(ns);
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
    let inner = in_netns(ns, || {
        with_netlink(|h| async move {
            for i in 0..100 {
                let name = format!("eth{i}");
                if link_by_name(&h, &name).await?.is_none() {
                    return Ok(name);
                }
            }
            bail!("namespace {ns} has eth0..eth99 already")
        })
    })?;
    let bridge = names::bridge(&port.network_id);
    let ns_file = File::open(netns_path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    let alias = port.alias();
    {
        use std::os::fd::AsRawFd as _;
        let fd = ns_file.as_raw_fd();
        let (tap, inner, mac) = (tap.to_string(), inner.clone(), port.mac);
        with_netlink(|h| async move {
            let br = link_by_name(&h, &bridge)
                .await?
                .with_context(|| format!("bridge {bridge} not found in this namespace"))?;
            // The peer is created directly in the target namespace, with the port's MAC.
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(inner.clone())
                .address(mac.to_vec())
                .setns_by_fd(fd)
                .build();
            let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(tap.clone())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            h.link()
                .add(veth)
                .execute()
                .await
                .with_context(|| format!("creating veth {tap} (peer {inner} in {ns})"))?;
            let t = link_by_name(&h, &tap)
                .await?
                .with_context(|| format!("veth {tap} vanished"))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(t.header.index)
                        .controller(br.header.index)
                        .alias(alias)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("enslaving {tap} to {bridge}"))
        })?;
    }
    let ip = port.ip;
    in_netns(ns, || {
        with_netlink(|h| async move {
            let l = link_by_name(&h, &inner)
                .await?
                .with_context(|| format!("{inner} did not arrive in {ns}"))?;
            let idx = l.header.index;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .with_context(|| format!("setting {inner} up"))?;
            h.address()
                .add(idx, IpAddr::V4(ip), prefix)
                .execute()
                .await
                .with_context(|| format!("adding {ip}/{prefix} to {inner}"))?;
            if let Some(gw) = gateway {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(idx)
                    .build();
                match h.route().add(route).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                        eprintln!(
                            "note: {ns} already has a default route; leaving it (not via {gw})"
                        );
                    }
                    Err(e) => return Err(anyhow!("adding default route via {gw}: {e}")),
                }
            }
            Ok(())
        })
    })
}

async fn delete_link(h: &Handle, name: &str) -> Result<()> {
    if let Some(l) = link_by_name(h, name).await? {
        h.link()
            .del(l.header.index)
            .execute()
            .await
            .with_context(|| format!("deleting {name}"))?;
    }
    Ok(())
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
    with_netlink(|h| async move {
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
