//! Links, addresses and routes over an rtnetlink handle. Every function is idempotent in the
//! kernel's terms: EEXIST on create and ENOENT/ENODEV/ESRCH on delete count as success.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{
        AfSpecInet6, AfSpecUnspec, InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute,
        LinkFlags, LinkInfo, LinkMessage,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::ns::{NetnsHandle, with_netlink};

/// Positive errno of a netlink NACK, if that is what `e` is.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
    )
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

/// What kind of device a link is, as far as the realiser cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Other(String),
    Unknown,
}

/// The parts of a link the realiser compares with the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// ifindex of the bridge this link is enslaved to.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Its IPv6 settings as the dump reports them (None: the kernel reported none).
    pub ipv6: Option<Ipv6Conf>,
}

/// The IPv6 settings of a device a router pass decides (`ipv6/conf/<dev>/…`), read from the link
/// dump: comparing them spares the `/proc/sys` writes, each a look-up that costs O(namespaces)
/// in the kernel, when nothing differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Conf {
    pub disable_ipv6: bool,
    pub accept_ra: i32,
    pub accept_dad: i32,
}

impl LinkState {
    pub(crate) fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut kind = LinkKind::Unknown;
        let mut controller = None;
        let mut mac = None;
        let mut mtu = None;
        let mut ipv6 = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::AfSpecUnspec(specs) => {
                    for spec in specs {
                        let AfSpecUnspec::Inet6(inet6) = spec else {
                            continue;
                        };
                        for a in inet6 {
                            if let AfSpecInet6::DevConf(c) = a {
                                ipv6 = Some(Ipv6Conf {
                                    disable_ipv6: c.disable_ipv6 != 0,
                                    accept_ra: c.accept_ra,
                                    accept_dad: c.accept_dad,
                                });
                            }
                        }
                    }
                }
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Controller(c) if *c != 0 => controller = Some(*c),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    mac = Some(m);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            kind = match k {
                                InfoKind::Bridge => LinkKind::Bridge,
                                InfoKind::Veth => LinkKind::Veth,
                                other => LinkKind::Other(other.to_string()),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            index: msg.header.index,
            name: name?,
            kind,
            controller,
            up: msg.header.flags.contains(LinkFlags::Up),
            mac,
            mtu,
            ipv6,
        })
    }
}

/// The messages of a netlink dump, naming `what` was dumped on failure.
async fn dump<T>(
    req: impl futures::TryStream<Ok = T, Error = rtnetlink::Error>,
    what: &str,
) -> Result<Vec<T>> {
    req.try_collect()
        .await
        .with_context(|| format!("dumping {what}"))
}

/// Every link of the handle's namespace.
pub async fn dump_links(h: &Handle) -> Result<Vec<LinkState>> {
    let msgs = dump(h.link().get().execute(), "links").await?;
    Ok(msgs.iter().filter_map(LinkState::from_message).collect())
}

/// The ports of bridge `controller`. The kernel filters the dump, by looking at every device of
/// the namespace: O(devices), so not for a hot path.
pub async fn ports_of(h: &Handle, controller: u32) -> Result<Vec<LinkState>> {
    let mut req = h.link().get();
    req.message_mut()
        .attributes
        .push(LinkAttribute::Controller(controller));
    let msgs = dump(req.execute(), "bridge ports").await?;
    Ok(msgs
        .iter()
        .filter_map(LinkState::from_message)
        .filter(|l| l.controller == Some(controller))
        .collect())
}

/// The link named `name`, or None.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkState>> {
    let res: Result<Vec<LinkMessage>, _> = h
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_collect()
        .await;
    match res {
        Ok(msgs) => Ok(msgs.iter().find_map(LinkState::from_message)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

/// Creates bridge `name`, without multicast snooping and with no forward delay; Ok(false)
/// when it already existed.
///
/// Snooping is what makes a bridge join the multicast router discovery group (224.0.0.106) and
/// send IGMP reports for it from a device without an IPv4 address, and finding the source
/// address of each report walks every device of the namespace (`inet_select_addr`): with
/// thousands of bridges in the daemon's namespace, O(devices) of timer work per bridge
/// created, and the reports flooded to the bridge's ports. Nothing here needs snooping: the
/// router ports join no group they would report, so the bridge floods multicast either way.
///
/// The forward delay (15 s by default) does not delay anything here, as STP is off and a port
/// forwards at once, but the kernel still arms a timer for it on every port that comes up, and
/// when it fires it announces the port again (`RTM_NEWLINK`): two timers and two link
/// notifications a router, 15 s after it was made, which the daemon's link watch applies and
/// which make the next reconcile passes walk everything again. A delay of 0 arms no timer, as
/// Neutron's Linux bridge agent sets it (`setfd 0`).
pub async fn create_bridge(h: &Handle, name: &str) -> Result<bool> {
    let msg = LinkBridge::new(name)
        .append_info_data(InfoBridge::MulticastSnooping(false))
        .append_info_data(InfoBridge::ForwardDelay(0))
        .build();
    match h.link().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_exists(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating bridge {name}")),
    }
}

/// The far end of a veth pair, created directly in another namespace.
#[derive(Clone, Copy, Debug)]
pub struct VethPeer<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub ns: &'a NetnsHandle,
}

/// Creates a veth pair: `name` here (enslaved to `controller`, up) and its peer `peer` (down),
/// both ends with MTU `mtu` (None: the kernel's default). EEXIST (from either name) is an
/// error here: the caller checked that the pair is missing.
///
/// `index`: (this end's, the peer's) ifindex instead of the next free one of each namespace;
/// the fast path needs router devices whose ifindexes differ across router namespaces (see
/// `datapath::fast`). They must differ from each other: the kernel takes a device whose link
/// index is its own ifindex for one without a lower device (its operstate then misreads as
/// UNKNOWN). A taken index is `VethError::IndexTaken`.
pub async fn create_veth(
    h: &Handle,
    name: &str,
    controller: u32,
    peer: VethPeer<'_>,
    mtu: Option<u32>,
    index: Option<(u32, u32)>,
) -> Result<(), VethError> {
    // The peer is left down: veth refuses to open a device whose pair is not linked yet
    // (ENOTCONN), and the router-namespace pass brings it up.
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.name.to_string())
        .address(peer.mac.to_vec())
        .setns_by_fd(peer.ns.file.as_raw_fd())
        .build();
    // veth takes the peer's ifindex from its message only when the device itself has one.
    if let Some((_, i)) = index {
        peer_msg.header.index = i;
    }
    if let Some(m) = mtu {
        peer_msg.attributes.push(LinkAttribute::Mtu(m));
    }
    // One queue each way on both ends, asked for: without it veth allocates one per possible
    // CPU and then trims the real count to one after registering (`veth_init_queues`), and
    // trimming a registered device's queues waits for an RCU grace period under RTNL
    // (`netif_set_real_num_tx_queues` → `synchronize_net`), once per end and direction. The
    // programs run at tc, where queues make no difference.
    peer_msg.attributes.extend(single_queue());
    let mut msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .controller(controller)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    if let Some(m) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(m));
    }
    msg.attributes.extend(single_queue());
    if let Some((i, _)) = index {
        msg.header.index = i;
    }
    match h.link().add(msg).execute().await {
        Ok(()) => Ok(()),
        // A taken ifindex: EEXIST in this namespace (a device with that index is looked up
        // first), EBUSY in the peer's.
        Err(e) if index.is_some() && matches!(errno(&e), Some(libc::EEXIST | libc::EBUSY)) => {
            Err(VethError::IndexTaken)
        }
        Err(e) => Err(VethError::Other(
            anyhow::Error::from(e).context(format!("creating veth {name} (peer {})", peer.name)),
        )),
    }
}

/// The attributes of a device with one transmit and one receive queue.
fn single_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// Why `create_veth` failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// The ifindex asked for is taken in one of the two namespaces (or the name exists).
    #[error("the ifindex asked for is taken")]
    IndexTaken,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Deletes link `name`; missing is success. Returns whether it existed.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = get_link(h, name).await? else {
        return Ok(false);
    };
    delete_index(h, link.index, name).await
}

/// `delete_link` that returns once the kernel has unlisted the device (its name is free and no
/// dump shows it), leaving the rest of its teardown to a thread of its own: unregistering a
/// device waits for an RCU barrier and for its last references (tens of milliseconds each, in
/// the deleting `sendmsg`), which made a gateway clear, an interface removal or a network
/// delete ten times a create. `ns` is the namespace of `h`; the thread deletes through its own
/// socket there. Returns whether the device existed.
pub async fn delete_detached(ns: &NetnsHandle, h: &Handle, name: &str) -> Result<bool> {
    let probe = Probe::new(ns)?;
    if !probe.listed(h, name).await? {
        return Ok(false);
    }
    let file = ns
        .file
        .try_clone()
        .context("duplicating the namespace handle")?;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let dev = name.to_string();
    std::thread::Builder::new()
        .name("link-delete".into())
        .spawn(move || {
            let ns = NetnsHandle { file };
            // On a worker in `ns`: the device's index comes from the name table.
            let _ = tx.send(with_netlink(&ns, |h| async move {
                match index_here(&dev)? {
                    Some(i) => delete_index(&h, i, &dev).await,
                    None => Ok(false),
                }
            }));
        })
        .context("starting the deleting thread")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match rx.try_recv() {
            Ok(done) => return done,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                bail!("deleting link {name}: the deleting thread ended without a word")
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        if !probe.listed(h, name).await? {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            bail!("deleting link {name}: still listed after 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Deletes link `index` (named `name`, for the error); missing is success. Returns whether it
/// existed.
pub async fn delete_index(h: &Handle, index: u32, name: &str) -> Result<bool> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting link {name}")),
    }
}

/// How `delete_detached` asks whether a name is still listed.
///
/// From a thread in the namespace (every caller runs inside `with_netlink`) it asks the
/// name table by ioctl: a link request has the kernel fill the device's whole state, and for a
/// veth whose peer is in another namespace that includes the peer's namespace id, found by a
/// walk of every namespace id this namespace holds: one per router in the daemon's
/// (≈ 340 µs at 10 000 routers, see `net::linkwatch`), several times per deleted tap.
struct Probe {
    /// The calling thread is in the handle's namespace.
    here: bool,
}

impl Probe {
    fn new(ns: &NetnsHandle) -> Result<Self> {
        Ok(Self {
            here: ns.is_current()?,
        })
    }

    async fn listed(&self, h: &Handle, name: &str) -> Result<bool> {
        if self.here {
            Ok(index_here(name)?.is_some())
        } else {
            Ok(get_link(h, name).await?.is_some())
        }
    }
}

/// The index of device `name` in the calling thread's namespace (`SIOCGIFINDEX`: a look-up in
/// the kernel's name hash, nothing filled); None when there is none.
fn index_here(name: &str) -> Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up the index of {name}")),
    }
}

/// Renames link `index` to `name` (it must be down).
pub async fn rename(h: &Handle, index: u32, name: &str) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index)
        .name(name.to_string())
        .build();
    set_link(h, msg, || format!("renaming link {index} to {name}")).await
}

/// Sets link `index` administratively up or down.
pub async fn set_up(h: &Handle, index: u32, up: bool) -> Result<()> {
    let b = LinkUnspec::new_with_index(index);
    let msg = if up { b.up() } else { b.down() }.build();
    let state = if up { "up" } else { "down" };
    set_link(h, msg, || format!("setting link {index} {state}")).await
}

/// Enslaves link `index` to bridge `controller`.
pub async fn set_controller(h: &Handle, index: u32, controller: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index)
        .controller(controller)
        .build();
    set_link(h, msg, || format!("enslaving link {index} to {controller}")).await
}

/// Takes link `index` out of its bridge.
pub async fn release(h: &Handle, index: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).nocontroller().build();
    set_link(h, msg, || format!("releasing link {index} from its bridge")).await
}

/// Sets the MAC of link `index`.
pub async fn set_mac(h: &Handle, index: u32, mac: [u8; 6]) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index)
        .address(mac.to_vec())
        .build();
    set_link(h, msg, || format!("setting the MAC of link {index}")).await
}

/// Applies link change `msg`; `what` says what it was for when it fails.
async fn set_link(h: &Handle, msg: LinkMessage, what: impl FnOnce() -> String) -> Result<()> {
    h.link().set(msg).execute().await.with_context(what)
}

/// Gives `link` MTU `mtu` unless it has it already; returns whether it changed. A bridge whose
/// MTU was never set follows its ports (the kernel keeps it at their smallest), so router
/// ports set theirs and never the bridge's.
pub async fn converge_mtu(h: &Handle, link: &LinkState, mtu: u32) -> Result<bool> {
    if link.mtu == Some(mtu) {
        return Ok(false);
    }
    let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("setting the MTU of {} to {mtu}", link.name))?;
    Ok(true)
}

/// One address of a link, with the message that deletes it.
#[derive(Clone, Debug)]
pub struct Address {
    pub net: IpNet,
    pub msg: AddressMessage,
}

/// Addresses of link `index`, both families. IPv6 link-local addresses are left out: the
/// kernel makes them and no spec names them.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<Address>> {
    let req = h.address().get().set_link_index_filter(index).execute();
    let msgs = dump(req, "addresses").await?;
    let mut out = Vec::new();
    for m in msgs {
        if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
            continue;
        }
        // IPv4 names the local address `Local` (`Address` is the peer's on point-to-point
        // links); IPv6 has only `Address`.
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let Some(addr) = addr else { continue };
        if let IpAddr::V6(v6) = addr
            && v6.is_unicast_link_local()
        {
            continue;
        }
        if let Ok(net) = IpNet::new(addr, m.header.prefix_len) {
            out.push(Address { net, msg: m });
        }
    }
    Ok(out)
}

/// What `converge_addresses` changed (callers announce or log it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressChanges {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

impl AddressChanges {
    /// Nothing was added or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Makes `want` exactly the addresses of link `index` (IPv6 link-local ones aside), either
/// family.
pub async fn converge_addresses(h: &Handle, index: u32, want: &[IpNet]) -> Result<AddressChanges> {
    let current = addresses(h, index).await?;
    let mut changes = AddressChanges::default();
    for a in &current {
        if want.contains(&a.net) {
            continue;
        }
        match h.address().del(a.msg.clone()).execute().await {
            Ok(()) => changes.removed.push(a.net),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("removing address {}", a.net)),
        }
    }
    for w in want {
        if current.iter().any(|a| a.net == *w) {
            continue;
        }
        match h
            .address()
            .add(index, w.addr(), w.prefix_len())
            .execute()
            .await
        {
            Ok(()) => changes.added.push(*w),
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("adding address {w}")),
        }
    }
    Ok(changes)
}

/// Makes `addr/prefix` the only address of link `index`. Returns whether anything changed.
pub async fn converge_address(
    h: &Handle,
    index: u32,
    addr: impl Into<IpAddr>,
    prefix: u8,
) -> Result<bool> {
    let addr = addr.into();
    let net = IpNet::new(addr, prefix).with_context(|| format!("address {addr}/{prefix}"))?;
    Ok(!converge_addresses(h, index, &[net]).await?.is_empty())
}

/// One route of the main table (either family), reduced to what the realiser compares.
#[derive(Clone, Debug)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: RouteProtocol,
    pub scope: RouteScope,
    pub msg: RouteMessage,
}

impl Route {
    /// A route to a single address (/32, /128).
    pub fn is_host(&self) -> bool {
        self.dst.prefix_len() == self.dst.max_prefix_len()
    }
    /// A default route (`0.0.0.0/0`, `::/0`).
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Routes of the main table, both families (one dump).
pub async fn main_routes(h: &Handle) -> Result<Vec<Route>> {
    let filter = RouteMessageBuilder::<IpAddr>::new().build();
    let msgs = dump(h.route().get(filter).execute(), "routes").await?;
    let mut out = Vec::new();
    for m in msgs {
        let unspecified = match m.header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => continue,
        };
        if m.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut dst = unspecified;
        let mut gateway = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_addr(d).unwrap_or(dst),
                RouteAttribute::Gateway(g) => gateway = route_addr(g),
                RouteAttribute::Oif(o) => oif = Some(*o),
                _ => {}
            }
        }
        let Ok(dst) = IpNet::new(dst, m.header.destination_prefix_length) else {
            continue;
        };
        out.push(Route {
            dst,
            gateway,
            oif,
            protocol: m.header.protocol,
            scope: m.header.scope,
            msg: m,
        });
    }
    Ok(out)
}

/// Adds (or replaces) the on-link route `dst` via device `oif` with no gateway.
pub async fn replace_link_route(h: &Handle, dst: IpNet, oif: u32) -> Result<()> {
    let what = format!("on-link route {dst}");
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .context(what.clone())?
        .output_interface(oif)
        .scope(RouteScope::Link)
        .build();
    add_or_replace_route(h, msg, &what).await
}

/// Adds (or replaces) the default route of `gateway`'s family via `gateway` on device `oif`.
pub async fn replace_default_route(h: &Handle, gateway: impl Into<IpAddr>, oif: u32) -> Result<()> {
    let gateway = gateway.into();
    let any = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let what = format!("default route via {gateway}");
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(any, 0)
        .and_then(|b| b.gateway(gateway))
        .context(what.clone())?
        .output_interface(oif)
        .build();
    add_or_replace_route(h, msg, &what).await
}

/// Adds route `msg`, replacing one to the same destination (`what` names it in errors).
async fn add_or_replace_route(h: &Handle, msg: RouteMessage, what: &str) -> Result<()> {
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding {what}"))
}

/// Deletes a route found by `main_routes`; missing is success.
pub async fn delete_route(h: &Handle, route: &Route) -> Result<()> {
    match h.route().del(route.msg.clone()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting route {}", route.dst)),
    }
}
