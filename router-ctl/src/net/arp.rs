//! Gratuitous ARP: announces a router port's address so neighbours (the upstream gateway, the
//! instances) update their caches at once, as Neutron's L3 agent does with `arping`.
//!
//! Frames are ARP requests with sender IP = target IP = the address (RFC 5227 announcement),
//! from the port MAC to broadcast, sent by one background thread (`Announcer`) so the caller
//! never waits for the spacing.
//!
//! They are sent in the daemon's namespace, through one AF_PACKET socket kept for the daemon's
//! life, either on the bridge of the port's network, which floods a broadcast it sends exactly
//! as one arriving from the router's tap, to every port and uplink; or, when the `Audience`
//! says none of this daemon's routers needs the address, on each of the bridge's ports that is
//! not a router's gateway tap. A gateway tap's program drops an announcement its router never
//! asked for (`router_ebpf::arp`), but only once the bridge has made the tap's copy, and the
//! bridge makes every copy inside the sender's `sendto`, on a kernel that does not preempt it:
//! at 1000 routers on one external network a frame cost a thousand copies, all dropped, and
//! an API call waiting for that CPU waited for all of them. Sent from inside the router
//! namespace instead, each router cost the thread a `setns` and an AF_PACKET socket of that
//! namespace, and closing it waits for an RCU grace period (`packet_release` →
//! `synchronize_net`): ≈ 10 ms per router, 80 % of the thread's time at 75 new routers a
//! second, and an expedited grace period, queued behind (or ahead of) the API's own
//! (`mini_qdisc_pair_swap`), whenever RTNL was held elsewhere.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::ns::{NetnsHandle, in_netns};

const ETH_P_ARP: u16 = 0x0806;

/// How many announcements by default (`send_arp_for_ha`) and how far apart (Neutron sends
/// three, one second apart).
pub const COUNT: u32 = 3;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The 42-byte Ethernet frame of one announcement.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The ifindex of `dev` in the namespace of `sock` (`SIOCGIFINDEX` on the socket itself: the
/// calling thread's namespace does not matter, and no socket is opened per look-up).
fn ifindex_on(sock: &OwnedFd, dev: &str) -> Result<i32> {
    // SAFETY: ifreq is plain old data; zero is a valid starting value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.len() >= req.ifr_name.len() {
        bail!("device name {dev} is too long");
    }
    for (d, c) in req.ifr_name.iter_mut().zip(name) {
        *d = *c as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel writes the index.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no device {dev}"));
    }
    // SAFETY: SIOCGIFINDEX filled the index member.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// An AF_PACKET socket of the calling thread's namespace.
fn packet_socket() -> Result<OwnedFd> {
    // Protocol 0: a send-only socket (each frame names its protocol in `sockaddr_ll`). With
    // ETH_P_ARP the socket would also take a copy of every ARP frame its namespace carries,
    // only to throw it away.
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one frame through `sock` on device `ifindex` of the socket's namespace.
fn send_on(sock: &OwnedFd, ifindex: i32, frame: &[u8]) -> Result<()> {
    // SAFETY: sockaddr_ll is plain old data; zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sending on ifindex {ifindex}"));
    }
    Ok(())
}

/// Who on a network hears an announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hearers {
    /// Everyone: the frame is sent on the bridge, which floods it to every port.
    Everyone,
    /// Only these ports of the bridge (daemon-namespace ifindexes), one frame each.
    Ports(Vec<u32>),
}

/// Decides, at each frame, who on a network needs an announcement.
pub trait Audience: Send + Sync {
    /// The hearers of an announcement of `addr` on bridge `bridge`.
    fn hearers(&self, bridge: &str, addr: Ipv4Addr) -> Hearers;
}

/// One pending announcement.
struct Job {
    /// The bridge of the port's network, in the daemon's namespace (looked up by name at each
    /// frame: a bridge deleted meanwhile ends the announcement).
    bridge: String,
    addr: Ipv4Addr,
    frame: [u8; 42],
    left: u32,
    due: Instant,
}

/// Frames sent so far, by how they went out: what an operator sees of the audience's choice
/// (`metrics::announcements`). Each frame of an announcement counts once, however many
/// ports it went out on.
#[derive(Debug, Default)]
pub struct Sent {
    /// Sent once on the bridge, which copies them to every port.
    pub flooded: AtomicU64,
    /// Sent on the ports the audience named, one `sendto` each.
    pub to_ports: AtomicU64,
}

impl Sent {
    /// (flooded, to ports).
    pub fn get(&self) -> (u64, u64) {
        (
            self.flooded.load(Ordering::Relaxed),
            self.to_ports.load(Ordering::Relaxed),
        )
    }
}

/// Sends gratuitous ARPs from one background thread, whatever the number of routers: each
/// announcement is `count` frames `INTERVAL` apart, on the bridge of the port's network or on
/// the ports its `Audience` names. Callers never wait.
pub struct Announcer {
    tx: Mutex<mpsc::Sender<Job>>,
    count: u32,
    sent: Arc<Sent>,
}

impl Announcer {
    /// Opens the socket in `home` (the daemon's namespace, where the bridges are) and starts the
    /// worker thread; it ends once the Announcer is dropped and its queue is empty. `count`:
    /// frames per announcement (0: none is sent); `audience`: who hears each frame.
    pub fn start(home: NetnsHandle, count: u32, audience: Box<dyn Audience>) -> Result<Self> {
        let sock = in_netns(&home, packet_socket).context("the gratuitous ARP socket")?;
        let (tx, rx) = mpsc::channel::<Job>();
        let sent = Arc::new(Sent::default());
        let counts = sent.clone();
        std::thread::Builder::new()
            .name("garp".into())
            .spawn(move || worker(rx, sock, audience.as_ref(), &counts))
            .context("spawning the gratuitous ARP thread")?;
        Ok(Self {
            tx: Mutex::new(tx),
            count,
            sent,
        })
    }

    /// The frames sent so far (the counts go on rising as the thread sends).
    pub fn sent(&self) -> Arc<Sent> {
        self.sent.clone()
    }

    /// Queues the announcement of `ip` from `mac` on `bridge` (the bridge of the network the
    /// port is on); the first frame leaves at once.
    pub fn announce(&self, bridge: String, mac: [u8; 6], ip: Ipv4Addr) {
        if self.count == 0 {
            return;
        }
        let job = Job {
            bridge,
            addr: ip,
            frame: frame(mac, ip),
            left: self.count,
            due: Instant::now(),
        };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send(job).is_err() {
            tracing::warn!("gratuitous ARP thread is gone; {ip} not announced");
        }
    }
}

/// Sends one frame of `job` to its hearers. An error means the bridge is gone (the network
/// was deleted) and ends the announcement; a port that cannot take its frame (it went, or is
/// down) only misses that one.
fn send_job(sock: &OwnedFd, audience: &dyn Audience, job: &Job, sent: &Sent) -> Result<()> {
    let bridge = ifindex_on(sock, &job.bridge)?;
    match audience.hearers(&job.bridge, job.addr) {
        Hearers::Everyone => {
            send_on(sock, bridge, &job.frame)?;
            sent.flooded.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Hearers::Ports(ports) => {
            sent.to_ports.fetch_add(1, Ordering::Relaxed);
            for port in ports {
                if let Err(e) = send_on(sock, port as i32, &job.frame) {
                    tracing::debug!("gratuitous ARP of {} on {port}: {e:#}", job.addr);
                }
            }
            Ok(())
        }
    }
}

fn worker(rx: mpsc::Receiver<Job>, sock: OwnedFd, audience: &dyn Audience, sent: &Sent) {
    lower_priority();
    let mut jobs: Vec<Job> = Vec::new();
    let mut open = true;
    while open || !jobs.is_empty() {
        let now = Instant::now();
        let next = jobs.iter().map(|j| j.due).min();
        let wait = next.map(|d| d.saturating_duration_since(now));
        if open {
            let got = match wait {
                Some(w) if w.is_zero() => rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
                }),
                Some(w) => rx.recv_timeout(w),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match got {
                Ok(j) => {
                    jobs.push(j);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        } else if let Some(w) = wait {
            std::thread::sleep(w);
        }
        let now = Instant::now();
        jobs.retain_mut(|j| {
            if j.due > now {
                return true;
            }
            let result = send_job(&sock, audience, j, sent);
            j.left -= 1;
            match result {
                Ok(()) => {
                    // Each frame `INTERVAL` after the last was due, not after it left: the
                    // announcements made in one second stay spread over the next.
                    j.due += INTERVAL;
                    j.left > 0
                }
                Err(e) => {
                    // The bridge went away (the network was deleted): nothing left to announce.
                    tracing::debug!("gratuitous ARP on {}: {e:#}", j.bridge);
                    false
                }
            }
        });
    }
}

/// Puts the calling thread at the lowest priority (nice 19). A frame that is flooded costs the
/// bridge's copy to every port, each through its program, in the sender's context. At nice 19
/// that work takes the CPU the API's calls leave idle instead of competing with them; on an
/// idle core the frames still leave on time.
fn lower_priority() {
    // SAFETY: plain setpriority(2); on Linux the nice value is per thread and `who = 0` is
    // the calling thread. The result is only logged.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        tracing::debug!(
            "gratuitous ARP thread: lowering its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_frame_layout() {
        let mac = [0xfa, 0x16, 0x3e, 1, 2, 3];
        let ip = Ipv4Addr::new(203, 0, 113, 10);
        let f = frame(mac, ip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &ip.octets());
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &ip.octets());
    }
}
