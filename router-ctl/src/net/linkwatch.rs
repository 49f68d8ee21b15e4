//! A namespace's links, kept current from the kernel's own link notifications: a netlink
//! socket subscribed to `RTNLGRP_LINK`, read continuously by a thread of its own that applies
//! every announced state, in order, to a table it dumped once.
//!
//! Why: a reconcile pass needs the daemon namespace's links, and asking the kernel for them
//! costs more than O(links). Each veth tap's entry carries its peer's namespace id
//! (`IFLA_LINK_NETNSID`), found by walking the namespace's table of peer ids one by one
//! (`peernet2id_alloc`), which holds one entry per router: a dump of 12 000 taps took 1 s at
//! 6000 routers, and even a look-up of one tap by name cost ≈ 340 µs at 10 000. A notification
//! carries the same full state (the kernel fills it as it fills a dump's entry, at the change),
//! so applying them keeps the table without asking again. Read only at each pass, the socket
//! overflowed its 32 MiB within a pass's 30 s while routers were made at ≈ 75 a second, and
//! every such pass dumped every link again (0.4–1.4 s at 10 000 routers); read continuously it
//! holds a few messages.
//!
//! Order is what makes it exact. The socket is subscribed before the first dump; the thread
//! discards what is queued, then dumps, and only then is the socket read again, so every
//! notification applied after a dump was queued after the dump began: it says the same as the
//! dump or something newer. The socket is only ever read with the table locked, by the thread
//! when it has something and by `snapshot` before it copies the table; the kernel queues a
//! notification as part of the change, so a snapshot reflects every change made before it was
//! asked for (a reconcile pass looks at the bridges its own network phase has just made). When
//! the kernel dropped notifications (`ENOBUFS`: the socket's queue was full) the table is given
//! up and the thread discards and dumps again; until then `snapshot` waits.
//!
//! Only `AF_UNSPEC` messages describe a device. A bridge also sends `AF_BRIDGE` ones about its
//! ports (a `RTM_DELLINK` of that family when a port leaves the bridge, the device still there),
//! with fewer attributes: those are skipped.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsRawFd as _,
    sync::{Arc, Condvar, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    LinkState, link,
    ns::{NetnsHandle, in_netns, with_netlink},
};

/// `RTMGRP_LINK`: the multicast group of link notifications, as a bind mask.
const RTMGRP_LINK: u32 = 1;

/// Receive buffer asked for (bytes): room for a burst of changes while the thread waits for the
/// CPU (a few kilobytes a notification, several per router).
const RCVBUF: usize = 32 << 20;

/// How long the thread waits for a notification before it looks again whether the table was
/// given up (by a `snapshot` that met a drop) or dropped.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// The largest datagram read whole (a notification is a few kilobytes).
const DATAGRAM_MAX: usize = 1 << 16;

/// How long `snapshot` waits for a dump the thread is making (the first, or after a drop).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// After a failed dump the thread tries again this much later.
const DUMP_RETRY: Duration = Duration::from_secs(1);

/// The links of one namespace, kept by a thread (see the module comment); clones share the
/// table, and the thread ends once the last is dropped.
#[derive(Clone)]
pub struct LinkTable {
    shared: Arc<Shared>,
}

struct Shared {
    /// Subscribed to the namespace's link notifications; read only with `table` locked.
    sock: Socket,
    table: Mutex<Table>,
    /// Signalled whenever the thread installs a dump or gives up on one.
    dumped: Condvar,
}

#[derive(Default)]
struct Table {
    /// None until the first dump, and from a drop of notifications until the dump after it.
    links: Option<Links>,
    /// Why the last dump failed (cleared by one that succeeds).
    error: Option<String>,
    counts: Counts,
    /// Where the socket's datagrams are read to (read only with the table locked).
    buf: Vec<u8>,
}

/// What the thread has done, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Dumps installed (the first, and one after each drop).
    pub dumps: u64,
    /// Notifications applied to the table.
    pub applied: u64,
    /// Times the table was given up (notifications dropped by the kernel, or one unreadable),
    /// each followed by a dump.
    pub drops: u64,
}

/// Links by name, the name of each index (a rename arrives as the index's new name), and the
/// ports of each bridge.
#[derive(Clone, Debug, Default, PartialEq)]
struct Links {
    by_name: HashMap<String, LinkState>,
    names: HashMap<u32, String>,
    /// Port index → the index of the bridge it is enslaved to.
    controller_of: HashMap<u32, u32>,
    /// Bridge index → its ports' indexes (the inverse of `controller_of`), so a bridge's ports
    /// are found without a walk of every link.
    ports: HashMap<u32, HashSet<u32>>,
}

impl Links {
    fn from_dump(all: Vec<LinkState>) -> Self {
        let mut l = Links::default();
        for s in all {
            l.insert(s);
        }
        l
    }

    /// Records that `index` is enslaved to `controller` (None: to no bridge, or gone).
    fn set_controller(&mut self, index: u32, controller: Option<u32>) {
        let old = match controller {
            Some(c) => self.controller_of.insert(index, c),
            None => self.controller_of.remove(&index),
        };
        if old == controller {
            return;
        }
        if let Some(o) = old
            && let Some(set) = self.ports.get_mut(&o)
        {
            set.remove(&index);
            if set.is_empty() {
                self.ports.remove(&o);
            }
        }
        if let Some(c) = controller {
            self.ports.entry(c).or_default().insert(index);
        }
    }

    fn insert(&mut self, s: LinkState) {
        self.set_controller(s.index, s.controller);
        // Renamed: the index's old name goes.
        if let Some(old) = self.names.insert(s.index, s.name.clone())
            && old != s.name
            && self.by_name.get(&old).is_some_and(|o| o.index == s.index)
        {
            self.by_name.remove(&old);
        }
        // The name was another index's (that device was renamed or deleted and its message is
        // still to come, or was lost): the newest state wins, the other index is forgotten.
        let index = s.index;
        if let Some(prev) = self.by_name.insert(s.name.clone(), s)
            && prev.index != index
            && self.names.get(&prev.index) == Some(&prev.name)
        {
            self.names.remove(&prev.index);
            self.set_controller(prev.index, None);
        }
    }

    fn remove(&mut self, index: u32) {
        self.set_controller(index, None);
        if let Some(name) = self.names.remove(&index)
            && self.by_name.get(&name).is_some_and(|s| s.index == index)
        {
            self.by_name.remove(&name);
        }
    }

    /// Applies one notification: a new or changed device is stored as announced, a deleted
    /// (or moved away) one goes. Returns whether it was about a device.
    fn apply(&mut self, msg: &RouteNetlinkMessage) -> bool {
        match msg {
            RouteNetlinkMessage::NewLink(l) if is_device(l) => match LinkState::from_message(l) {
                Some(s) => self.insert(s),
                // No name: a message this parser cannot place; the index at least is stale.
                None => self.remove(l.header.index),
            },
            RouteNetlinkMessage::DelLink(l) if is_device(l) => self.remove(l.header.index),
            _ => return false,
        }
        true
    }
}

/// Whether a link message describes a device (not a bridge's view of one of its ports).
fn is_device(l: &LinkMessage) -> bool {
    l.header.interface_family == AddressFamily::Unspec
}

impl LinkTable {
    /// Subscribes to the link notifications of `ns`, then starts the thread that dumps its
    /// links and applies every notification after.
    pub fn start(ns: &NetnsHandle) -> Result<Self> {
        Self::start_with_buffer(ns, RCVBUF)
    }

    /// `start` with a socket receive buffer of `rcvbuf` bytes (at least the kernel's minimum):
    /// tests make it small to see the kernel drop notifications and the table dumped again.
    pub fn start_with_buffer(ns: &NetnsHandle, rcvbuf: usize) -> Result<Self> {
        let sock = in_netns(ns, || subscribe(rcvbuf))?;
        let dump_ns = NetnsHandle {
            file: ns
                .file
                .try_clone()
                .context("duplicating the namespace handle")?,
        };
        let shared = Arc::new(Shared {
            sock,
            table: Mutex::new(Table {
                buf: vec![0; DATAGRAM_MAX],
                ..Table::default()
            }),
            dumped: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("linkwatch".into())
            .spawn(move || keep(dump_ns, weak))
            .context("spawning the link watch thread")?;
        Ok(Self { shared })
    }

    /// Every link of the namespace by name, with every change made before this call applied
    /// (what is queued is read first); waits for the thread's dump when there is no table
    /// (start, or notifications were dropped).
    pub fn snapshot(&self) -> Result<HashMap<String, LinkState>> {
        self.read(|l| l.by_name.clone())
    }

    /// The links among `names` that exist, as `snapshot` would have them: a look-up that costs
    /// what the names cost, where asking the kernel costs a walk of every router namespace's id
    /// per tap (see the module comment).
    pub fn lookup(&self, names: &[String]) -> Result<HashMap<String, LinkState>> {
        self.read(|l| {
            names
                .iter()
                .filter_map(|n| l.by_name.get(n).map(|s| (n.clone(), s.clone())))
                .collect()
        })
    }

    /// The indexes of bridge `bridge`'s ports, every queued notification applied first; None
    /// when there is no such bridge, or no table just now (a dump is under way): never waits
    /// for one, unlike `snapshot`.
    pub fn ports_of(&self, bridge: &str) -> Option<Vec<u32>> {
        let mut t = self.shared.lock();
        self.shared.drain(&mut t);
        let links = t.links.as_ref()?;
        let index = links.by_name.get(bridge)?.index;
        Some(
            links
                .ports
                .get(&index)
                .map(|p| p.iter().copied().collect())
                .unwrap_or_default(),
        )
    }

    /// `f` of the table once every queued notification is applied to it.
    fn read<R>(&self, f: impl FnOnce(&Links) -> R) -> Result<R> {
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        let mut t = self.shared.lock();
        loop {
            self.shared.drain(&mut t);
            if let Some(l) = &t.links {
                return Ok(f(l));
            }
            if let Some(e) = &t.error {
                return Err(anyhow!("dumping the links: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow!(
                    "no link table: the link watch dumped nothing in {SNAPSHOT_WAIT:?}"
                ));
            }
            t = self
                .shared
                .dumped
                .wait_timeout(t, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// What the thread has done so far, every queued notification applied first (so a
    /// change made before this call is counted).
    pub fn counts(&self) -> Counts {
        let mut t = self.shared.lock();
        self.shared.drain(&mut t);
        t.counts
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every notification queued now to the table `t` (the locked `table`); gives the
    /// table up when some were lost. Nothing is read while there is no table: what is queued
    /// then is for after the next dump.
    fn drain(&self, t: &mut Table) {
        let Table {
            links: Some(links),
            buf,
            counts,
            ..
        } = t
        else {
            return;
        };
        let mut lost = false;
        loop {
            // MSG_TRUNC: the datagram's real length, so a truncated one is known.
            match self
                .sock
                .recv(&mut &mut buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                // Cut short: whatever it said is unknown.
                Ok(n) if n > buf.len() => lost = true,
                Ok(n) => match apply_all(links, &buf[..n]) {
                    Some(k) => counts.applied += k,
                    None => lost = true,
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        tracing::warn!("link watch: {e}");
                    }
                    lost = true;
                }
            }
            if lost {
                break;
            }
        }
        if lost {
            t.links = None;
            t.counts.drops += 1;
        }
    }

    /// Waits up to `POLL_WAIT` for a notification; true when one is queued.
    fn wait(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, POLL_WAIT.as_millis() as libc::c_int) };
        n > 0 && fds[0].revents != 0
    }
}

/// A socket of the calling thread's namespace subscribed to its link notifications.
fn subscribe(rcvbuf: usize) -> Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to link notifications")?;
    // Forced (root), else within the system's limit.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, rcvbuf).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, rcvbuf);
    }
    Ok(sock)
}

/// The thread: dump when there is no table, else apply what arrives; ends once the table is
/// dropped.
fn keep(ns: NetnsHandle, shared: Weak<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Some(s) = shared.upgrade() else { return };
        if s.lock().links.is_none() {
            // What is queued is older than the dump about to begin (and may follow a drop).
            discard_queued(&s.sock, &mut buf);
            if !dump_into(&s, &ns) {
                drop(s);
                std::thread::sleep(DUMP_RETRY);
                continue;
            }
        }
        if s.wait() {
            let mut t = s.lock();
            s.drain(&mut t);
        }
    }
}

/// Dumps the namespace's links into the table; false when the dump failed (noted for
/// `snapshot`, tried again by the caller).
fn dump_into(s: &Shared, ns: &NetnsHandle) -> bool {
    let dumped = with_netlink(ns, |h| async move { link::dump_links(&h).await });
    let mut t = s.lock();
    let ok = match dumped {
        Ok(all) => {
            t.links = Some(Links::from_dump(all));
            t.error = None;
            t.counts.dumps += 1;
            true
        }
        Err(e) => {
            tracing::warn!("link watch: dumping the links: {e:#}");
            t.error = Some(format!("{e:#}"));
            false
        }
    };
    drop(t);
    s.dumped.notify_all();
    ok
}

/// Reads and throws away what the socket holds now (notifications from before a drop).
fn discard_queued(sock: &Socket, buf: &mut [u8]) {
    // Bounded: the queue holds at most `RCVBUF` bytes, and anything arriving meanwhile is
    // newer than the dump that follows, so stopping early only costs a redundant apply.
    for _ in 0..(RCVBUF / 16) {
        match sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Applies every link message of one datagram; None when one cannot be read (whatever it said
/// is unknown: the caller dumps again).
fn apply_all(links: &mut Links, mut data: &[u8]) -> Option<u64> {
    let mut applied = 0;
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(inner) => applied += u64::from(links.apply(&inner)),
                NetlinkPayload::Overrun(_) => return None,
                _ => {}
            },
            Err(_) => return None,
        }
        // Messages are 4-byte aligned.
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Some(applied)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    };

    use super::{Links, apply_all};

    fn link_msg(index: u32, name: &str, new: bool, family: AddressFamily) -> Vec<u8> {
        link_msg_with(index, name, new, family, LinkAttribute::Mtu(1500))
    }

    /// A link message of `index` named `name`, with `extra` besides its name.
    fn link_msg_with(
        index: u32,
        name: &str,
        new: bool,
        family: AddressFamily,
        extra: LinkAttribute,
    ) -> Vec<u8> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.interface_family = family;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l.attributes.push(extra);
        let inner = if new {
            RouteNetlinkMessage::NewLink(l)
        } else {
            RouteNetlinkMessage::DelLink(l)
        };
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(inner),
        );
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn dev(index: u32, name: &str, new: bool) -> Vec<u8> {
        link_msg(index, name, new, AddressFamily::Unspec)
    }

    /// A device enslaved to bridge `controller` (`IFLA_MASTER`).
    fn port(index: u32, name: &str, controller: u32) -> Vec<u8> {
        let extra = LinkAttribute::Controller(controller);
        link_msg_with(index, name, true, AddressFamily::Unspec, extra)
    }

    fn ports(l: &Links, bridge: u32) -> Vec<u32> {
        let mut v: Vec<u32> = l
            .ports
            .get(&bridge)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        v.sort();
        v
    }

    fn names(l: &Links) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = l
            .by_name
            .iter()
            .map(|(n, s)| (n.clone(), s.index))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn notifications_add_rename_and_remove_devices_in_order() {
        let mut l = Links::default();
        let mut data = dev(7, "tapaaaaaaaaaaa", true);
        data.extend(dev(9, "brqbbbbbbbbbbb", true));
        assert_eq!(apply_all(&mut l, &data), Some(2));
        // Renamed: the index's old name goes.
        assert_eq!(apply_all(&mut l, &dev(9, "brdbbbbbbbbbbb", true)), Some(1));
        assert_eq!(
            names(&l),
            [("brdbbbbbbbbbbb".into(), 9), ("tapaaaaaaaaaaa".into(), 7)]
        );
        assert_eq!(l.by_name["tapaaaaaaaaaaa"].mtu, Some(1500));
        assert_eq!(apply_all(&mut l, &dev(7, "tapaaaaaaaaaaa", false)), Some(1));
        assert_eq!(names(&l), [("brdbbbbbbbbbbb".into(), 9)]);
        assert_eq!(l.names.len(), 1);
    }

    #[test]
    fn a_bridge_s_view_of_its_ports_changes_nothing() {
        let mut l = Links::default();
        apply_all(&mut l, &dev(7, "tapaaaaaaaaaaa", true)).unwrap();
        // A port leaving its bridge: RTM_DELLINK of family AF_BRIDGE, the device still there.
        let left = link_msg(7, "tapaaaaaaaaaaa", false, AddressFamily::Bridge);
        assert_eq!(apply_all(&mut l, &left), Some(0));
        assert_eq!(names(&l), [("tapaaaaaaaaaaa".into(), 7)]);
    }

    #[test]
    fn a_name_taken_over_by_another_index_keeps_the_newest() {
        let mut l = Links::default();
        apply_all(&mut l, &dev(7, "tapaaaaaaaaaaa", true)).unwrap();
        // Deleted and made again before the deletion's message was read (or it was lost).
        apply_all(&mut l, &dev(8, "tapaaaaaaaaaaa", true)).unwrap();
        assert_eq!(names(&l), [("tapaaaaaaaaaaa".into(), 8)]);
        // The old index's deletion arrives late: the new device stays.
        apply_all(&mut l, &dev(7, "tapaaaaaaaaaaa", false)).unwrap();
        assert_eq!(names(&l), [("tapaaaaaaaaaaa".into(), 8)]);
        assert_eq!(l.names.len(), 1);
    }

    #[test]
    fn each_bridge_knows_its_ports_as_they_join_move_and_go() {
        let mut l = Links::default();
        let mut data = dev(9, "brqbbbbbbbbbbb", true);
        data.extend(dev(10, "brqccccccccccc", true));
        data.extend(port(7, "tapaaaaaaaaaaa", 9));
        data.extend(port(8, "tapdddddddddddd", 9));
        apply_all(&mut l, &data).unwrap();
        assert_eq!(ports(&l, 9), [7, 8]);
        // Moved to the other bridge, then released (a notification without a controller).
        apply_all(&mut l, &port(7, "tapaaaaaaaaaaa", 10)).unwrap();
        assert_eq!((ports(&l, 9), ports(&l, 10)), (vec![8], vec![7]));
        apply_all(&mut l, &dev(7, "tapaaaaaaaaaaa", true)).unwrap();
        assert_eq!(ports(&l, 10), Vec::<u32>::new());
        assert!(!l.ports.contains_key(&10), "an empty set is not kept");
        // Deleted; and a name taken over by a new index forgets the old index's bridge.
        apply_all(&mut l, &dev(8, "tapdddddddddddd", false)).unwrap();
        assert_eq!(ports(&l, 9), Vec::<u32>::new());
        apply_all(&mut l, &port(11, "tapeeeeeeeeeee", 9)).unwrap();
        apply_all(&mut l, &dev(12, "tapeeeeeeeeeee", true)).unwrap();
        assert_eq!(ports(&l, 9), Vec::<u32>::new());
        assert_eq!(l.controller_of.len(), 0);
    }

    #[test]
    fn a_truncated_message_asks_for_a_dump() {
        let mut l = Links::default();
        let data = dev(7, "tapaaaaaaaaaaa", true);
        assert_eq!(apply_all(&mut l, &data[..data.len() - 8]), None);
    }
}
