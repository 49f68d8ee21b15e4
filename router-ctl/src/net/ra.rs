//! IPv6 router advertisements sent by the daemon itself (RFC 4861 §6.2), as Neutron's L3 agent
//! has radvd send them: one advertiser per `qr-` port whose subnets have `ipv6_ra_mode`, with
//! the prefix (A flag for SLAAC and DHCPv6-stateless), the M/O flags of the modes, the
//! network's MTU and a router lifetime; unsolicited every 30–100 s (Neutron's
//! `min_rtr_adv_interval`/`max_rtr_adv_interval` defaults) after three quick initial ones, and
//! in answer to router solicitations.
//!
//! Cost per router: one raw ICMPv6 socket per advertising port (made inside the router
//! namespace by the caller, bound to its device, filtered to router solicitations) and no
//! thread: one `ra` thread per daemon polls every socket and keeps every timer. A socket holds
//! its namespace alive, so removing a port or router closes its socket at once (and wakes the
//! thread, whose `poll` holds the file until it returns).
//!
//! The packet is built here (60-odd bytes of RFC 4861 layout, tested below): the dependency
//! tree has no NDP builder, and pnet_packet would add a procedural-macro build for it. The
//! kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.

use std::{
    collections::HashMap,
    io::ErrorKind,
    mem::MaybeUninit,
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ipnet::Ipv6Net;
use socket2::{Domain, Protocol, Socket, Type};

use crate::model::{Ipv6Mode, spec::RaPrefix};

/// ICMPv6 types (RFC 4861 §4.1, §4.2).
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// RA option types (§4.6).
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
/// RA header flags.
const FLAG_MANAGED: u8 = 0x80;
const FLAG_OTHER: u8 = 0x40;
/// Prefix option flags.
const PREFIX_ON_LINK: u8 = 0x80;
const PREFIX_AUTONOMOUS: u8 = 0x40;

/// Neutron's defaults (`min_rtr_adv_interval`, `max_rtr_adv_interval`); radvd's router
/// lifetime is three times the maximum, its prefix lifetimes one day / four hours.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
pub const MAX_INTERVAL: Duration = Duration::from_secs(100);
pub const ROUTER_LIFETIME: u16 = 300;
const VALID_LIFETIME: u32 = 86_400;
const PREFERRED_LIFETIME: u32 = 14_400;
/// RFC 4861 §10: the first advertisements come faster, and never two within 3 s.
const INITIAL_COUNT: u8 = 3;
const INITIAL_INTERVAL: Duration = Duration::from_secs(16);
const MIN_DELAY_BETWEEN: Duration = Duration::from_secs(3);
/// The smallest MTU IPv6 allows: a smaller network MTU is not advertised (as Neutron's template).
const IPV6_MIN_MTU: u32 = 1280;

/// What one port advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaPort {
    /// The `qr-` device (inside the router namespace) and its index there.
    pub dev: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub prefixes: Vec<RaPrefix>,
}

/// The router advertisement of `port` (ICMPv6 message, checksum left to the kernel);
/// `lifetime` 0 says "no longer a default router" (sent when the port goes).
pub fn advertisement(port: &RaPort, lifetime: u16) -> Vec<u8> {
    let has = |m: Ipv6Mode| port.prefixes.iter().any(|p| p.mode == m);
    let mut flags = 0;
    if has(Ipv6Mode::Dhcpv6Stateful) {
        flags |= FLAG_MANAGED;
    }
    if has(Ipv6Mode::Dhcpv6Stateless) {
        flags |= FLAG_OTHER;
    }
    let mut m = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 64, flags];
    m.extend_from_slice(&lifetime.to_be_bytes());
    m.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
    m.extend_from_slice(&[OPT_SOURCE_LLADDR, 1]);
    m.extend_from_slice(&port.mac);
    if port.mtu >= IPV6_MIN_MTU {
        m.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        m.extend_from_slice(&port.mtu.to_be_bytes());
    }
    for p in &port.prefixes {
        m.extend_from_slice(&prefix_option(&p.prefix, p.mode));
    }
    m
}

/// A prefix information option: on-link always; autonomous unless the addresses come from
/// DHCPv6-stateful (Neutron's radvd template: `AdvAutonomous off` for stateful prefixes).
fn prefix_option(prefix: &Ipv6Net, mode: Ipv6Mode) -> [u8; 32] {
    let mut o = [0u8; 32];
    o[0] = OPT_PREFIX_INFO;
    o[1] = 4;
    o[2] = prefix.prefix_len();
    o[3] = PREFIX_ON_LINK;
    if mode != Ipv6Mode::Dhcpv6Stateful {
        o[3] |= PREFIX_AUTONOMOUS;
    }
    o[4..8].copy_from_slice(&VALID_LIFETIME.to_be_bytes());
    o[8..12].copy_from_slice(&PREFERRED_LIFETIME.to_be_bytes());
    o[16..32].copy_from_slice(&prefix.trunc().addr().octets());
    o
}

/// One advertising port.
struct Sender {
    port: RaPort,
    socket: Socket,
    /// The namespace the socket was made in (a namespace made again has new devices).
    netns: u64,
    next: Instant,
    last: Option<Instant>,
    initial_left: u8,
}

impl Sender {
    fn send(&mut self, lifetime: u16, now: Instant) {
        let dst = SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            self.port.ifindex,
        );
        let msg = advertisement(&self.port, lifetime);
        if let Err(e) = self.socket.send_to(&msg, &dst.into()) {
            tracing::debug!("router advertisement on {}: {e}", self.port.dev);
        }
        self.last = Some(now);
        self.initial_left = self.initial_left.saturating_sub(1);
        let wait = if self.initial_left > 0 {
            INITIAL_INTERVAL.min(random_interval())
        } else {
            random_interval()
        };
        self.next = now + wait;
    }

    /// A solicitation asks for an advertisement now, or as soon as the 3 s spacing allows.
    fn solicited(&mut self, now: Instant) {
        let soonest = self.last.map_or(now, |l| l + MIN_DELAY_BETWEEN).max(now);
        self.next = self.next.min(soonest);
    }
}

/// Uniform in [MIN_INTERVAL, MAX_INTERVAL] (RFC 4861 §6.2.4).
fn random_interval() -> Duration {
    let span = (MAX_INTERVAL - MIN_INTERVAL).as_millis() as u64;
    MIN_INTERVAL + Duration::from_millis(rand::random_range(0..=span))
}

#[derive(Default)]
struct State {
    /// (router id, device) → its sender.
    senders: HashMap<(String, String), Sender>,
}

/// The daemon's router advertisements: `converge` (called on a thread inside the router's
/// namespace) sets what a router advertises; one thread does the sending.
pub struct Advertiser {
    state: Arc<Mutex<State>>,
    /// Write end of the pipe that wakes the thread out of `poll`.
    wake: OwnedFd,
}

impl Advertiser {
    /// Starts the `ra` thread (idle, polling only its wake pipe, until a port advertises).
    pub fn start() -> Result<Self> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("wake pipe of the router advertisement thread")?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::Builder::new()
            .name("ra".into())
            .spawn(move || worker(&st, &read))
            .context("spawning the router advertisement thread")?;
        Ok(Self { state, wake: write })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // A full pipe already wakes the thread.
        let _ = nix::unistd::write(&self.wake, &[1]);
    }

    /// Stops the advertisements of `router` on every device but `keep`: each sends a last one
    /// with router lifetime 0 (hosts drop the default route at once) and closes its socket.
    /// Call it while the devices that go are still there. Returns what changed, for the log.
    pub fn retire(&self, router: &str, netns: u64, keep: &[&str]) -> Vec<String> {
        let now = Instant::now();
        let mut st = self.lock();
        let gone: Vec<(String, String)> = st
            .senders
            .iter()
            .filter(|((r, dev), s)| {
                r == router && (s.netns != netns || !keep.contains(&dev.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut log = Vec::new();
        for k in gone {
            if let Some(mut s) = st.senders.remove(&k) {
                if s.netns == netns {
                    s.send(0, now);
                }
                log.push(format!("ra off {}", k.1));
            }
        }
        drop(st);
        if !log.is_empty() {
            self.wake();
        }
        log
    }

    /// Makes `router`'s advertisements those of `want`: new ports get a socket (made in the
    /// calling thread's namespace, `netns` its inode) and advertise at once, changed ones
    /// advertise the change at once, others stop (`retire`). Returns what changed, for the log.
    pub fn converge(&self, router: &str, netns: u64, want: &[RaPort]) -> Result<Vec<String>> {
        let keep: Vec<&str> = want.iter().map(|w| w.dev.as_str()).collect();
        let mut log = self.retire(router, netns, &keep);
        let now = Instant::now();
        let mut st = self.lock();
        for p in want {
            let key = (router.to_string(), p.dev.clone());
            match st.senders.get_mut(&key) {
                Some(s) if s.port == *p => {}
                Some(s) => {
                    s.port = p.clone();
                    s.next = now;
                    log.push(format!("ra {}", p.dev));
                }
                None => {
                    let socket = solicitation_socket(&p.dev)
                        .with_context(|| format!("router advertisements on {}", p.dev))?;
                    st.senders.insert(
                        key,
                        Sender {
                            port: p.clone(),
                            socket,
                            netns,
                            next: now,
                            last: None,
                            initial_left: INITIAL_COUNT,
                        },
                    );
                    log.push(format!("ra on {}", p.dev));
                }
            }
        }
        drop(st);
        if !log.is_empty() {
            self.wake();
        }
        Ok(log)
    }

    /// Stops every advertisement of `router` (deleted, or its namespace): sockets closed now,
    /// so the namespace is not kept alive. No last advertisement: the devices go with it.
    pub fn forget_router(&self, router: &str) {
        let mut st = self.lock();
        let before = st.senders.len();
        st.senders.retain(|(r, _), _| r != router);
        let changed = st.senders.len() != before;
        drop(st);
        if changed {
            self.wake();
        }
    }

    /// The devices `router` advertises on (tests, status).
    pub fn ports(&self, router: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .senders
            .keys()
            .filter(|(r, _)| r == router)
            .map(|(_, d)| d.clone())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        self.lock().senders.clear();
        self.wake();
    }
}

/// A raw ICMPv6 socket on `dev` of the calling thread's namespace: receives only router
/// solicitations, sends with hop limit 255 (receivers drop advertisements with any other).
fn solicitation_socket(dev: &str) -> Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW.cloexec(), Some(Protocol::ICMPV6))?;
    s.set_nonblocking(true)?;
    s.bind_device(Some(dev.as_bytes()))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_loop_v6(false)?;
    // ICMP6_FILTER: block every type but router solicitations (a bit set blocks its type).
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ROUTER_SOLICITATION >> 5)] &= !(1u32 << (ROUTER_SOLICITATION & 31));
    // SAFETY: setsockopt with a valid 32-byte buffer on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            1, // ICMP6_FILTER
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("ICMP6_FILTER");
    }
    Ok(s)
}

/// The `ra` thread: sends what is due, answers solicitations, sleeps in `poll` until the next
/// deadline, a solicitation or a wake-up.
fn worker(state: &Mutex<State>, wake: &OwnedFd) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        let (keys, mut fds, next) = {
            let mut st = lock();
            for s in st.senders.values_mut() {
                if s.next <= now {
                    s.send(ROUTER_LIFETIME, now);
                }
            }
            let keys: Vec<(String, String)> = st.senders.keys().cloned().collect();
            let mut fds = vec![libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            fds.extend(keys.iter().map(|k| libc::pollfd {
                fd: st.senders[k].socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            (keys, fds, st.senders.values().map(|s| s.next).min())
        };
        let timeout = next.map_or(-1, |n| {
            i32::try_from(n.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX)
        });
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!("router advertisement thread: poll: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(wake, &mut buf), Ok(n) if n > 0) {}
        }
        let now = Instant::now();
        let mut st = lock();
        for (k, fd) in keys.iter().zip(&fds[1..]) {
            if fd.revents == 0 {
                continue;
            }
            // The sender may have gone (or been replaced) while the lock was free.
            let Some(s) = st
                .senders
                .get_mut(k)
                .filter(|s| s.socket.as_raw_fd() == fd.fd)
            else {
                continue;
            };
            if drain_solicitations(&s.socket) {
                s.solicited(now);
            }
        }
    }
}

/// Reads every queued message; whether one was a well-formed router solicitation (code 0).
fn drain_solicitations(socket: &Socket) -> bool {
    let mut any = false;
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                // SAFETY: recv initialised the first n bytes.
                let (t, code) = unsafe { (buf[0].assume_init(), buf[1].assume_init()) };
                any |= t == ROUTER_SOLICITATION && code == 0;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return any,
            Err(_) => return any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(modes: &[(&str, Ipv6Mode)], mtu: u32) -> RaPort {
        RaPort {
            dev: "qr-x".into(),
            ifindex: 7,
            mac: [0xfa, 0x16, 0x3e, 1, 2, 3],
            mtu,
            prefixes: modes
                .iter()
                .map(|(p, m)| RaPrefix {
                    prefix: p.parse().unwrap(),
                    mode: *m,
                })
                .collect(),
        }
    }

    #[test]
    fn slaac_advertisement_layout() {
        let m = advertisement(
            &port(&[("fd00:1::/64", Ipv6Mode::Slaac)], 1500),
            ROUTER_LIFETIME,
        );
        assert_eq!(m.len(), 16 + 8 + 8 + 32);
        assert_eq!(&m[..8], &[134, 0, 0, 0, 64, 0, 0x01, 0x2c]);
        assert_eq!(&m[16..24], &[1, 1, 0xfa, 0x16, 0x3e, 1, 2, 3]);
        assert_eq!(&m[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xdc]);
        let p = &m[32..];
        assert_eq!(&p[..4], &[3, 4, 64, 0xc0]);
        assert_eq!(&p[4..8], &86_400u32.to_be_bytes());
        assert_eq!(&p[8..12], &14_400u32.to_be_bytes());
        assert_eq!(&p[12..16], &[0; 4]);
        assert_eq!(&p[16..], &"fd00:1::".parse::<Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn modes_set_the_flags_as_neutrons_radvd_template() {
        let stateless = advertisement(
            &port(&[("fd00:1::/64", Ipv6Mode::Dhcpv6Stateless)], 1500),
            300,
        );
        assert_eq!(stateless[5], FLAG_OTHER);
        assert_eq!(stateless[32 + 3], PREFIX_ON_LINK | PREFIX_AUTONOMOUS);
        let stateful = advertisement(
            &port(&[("fd00:2::/80", Ipv6Mode::Dhcpv6Stateful)], 1500),
            300,
        );
        assert_eq!(stateful[5], FLAG_MANAGED);
        assert_eq!(stateful[32 + 2], 80);
        assert_eq!(stateful[32 + 3], PREFIX_ON_LINK, "no A flag for stateful");
        // Below the IPv6 minimum MTU no MTU option; a goodbye has lifetime 0.
        let small = advertisement(&port(&[("fd00:1::/64", Ipv6Mode::Slaac)], 1000), 0);
        assert_eq!(small.len(), 16 + 8 + 32);
        assert_eq!(&small[6..8], &[0, 0]);
    }

    #[test]
    fn solicitations_are_answered_at_most_every_three_seconds() {
        let now = Instant::now();
        let mut s = Sender {
            port: port(&[], 1500),
            socket: Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap(),
            netns: 0,
            next: now + MAX_INTERVAL,
            last: Some(now),
            initial_left: 0,
        };
        s.solicited(now);
        assert_eq!(s.next, now + MIN_DELAY_BETWEEN);
        s.last = Some(now - MIN_DELAY_BETWEEN * 2);
        s.solicited(now);
        assert_eq!(s.next, now);
        let i = random_interval();
        assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&i));
    }
}
