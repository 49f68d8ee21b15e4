//! Gratuitous ARP: announces a router port's address so neighbours (the upstream gateway, the
//! instances) update their caches at once, as Neutron's L3 agent does with `arping`.
//!
//! Frames are ARP requests with sender IP = target IP = the address (RFC 5227 announcement),
//! from the port MAC to broadcast, sent through an AF_PACKET socket opened inside the router
//! namespace by one background thread (`Announcer`), so the caller never waits for the spacing.
//!
//! One socket per namespace serves every announcement pending there, from the first frame of
//! the first to the last frame of the last: closing an AF_PACKET socket waits for an RCU grace
//! period (`packet_release` → `synchronize_net`), milliseconds on a busy host, and with a
//! socket per frame that wait bounded the thread to a few dozen routers a second, so during a
//! burst of new routers their announcements fell behind by seconds.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

use super::ns::NetnsHandle;

const ETH_P_ARP: u16 = 0x0806;

/// How many announcements and how far apart (Neutron sends three, one second apart).
pub const COUNT: usize = 3;
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

/// The ifindex of `dev` in the calling thread's namespace.
fn ifindex_of(dev: &str) -> Result<i32> {
    let cname = std::ffi::CString::new(dev).context("device name")?;
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev}");
    }
    Ok(ifindex as i32)
}

/// An AF_PACKET socket of the calling thread's namespace (it stays in that namespace whatever
/// the thread does next).
fn packet_socket() -> Result<OwnedFd> {
    // Protocol 0: a send-only socket (each frame names its protocol in `sockaddr_ll`). With
    // ETH_P_ARP the socket would also take a copy of every ARP frame its namespace receives
    // while it is open, the floods of every other router's announcements on the external
    // network among them, only to throw them away at close.
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

/// The sockets of the namespaces with announcements pending, by namespace inode, each with
/// the number of announcements using it; a socket closes with the last of them.
#[derive(Default)]
struct Sockets(HashMap<u64, (OwnedFd, usize)>);

impl Sockets {
    /// Enters the named namespace and returns its inode, with a socket of it counted for one
    /// more announcement.
    fn enter_and_hold(&mut self, ns: &str) -> Result<u64> {
        let h = NetnsHandle::open_named(ns)?
            .ok_or_else(|| anyhow::anyhow!("namespace {ns} is gone"))?;
        setns(&h.file, CloneFlags::CLONE_NEWNET).context("setns")?;
        let ino = h.file.metadata().context("namespace inode")?.ino();
        match self.0.get_mut(&ino) {
            Some((_, users)) => *users += 1,
            None => {
                self.0.insert(ino, (packet_socket()?, 1));
            }
        }
        Ok(ino)
    }

    fn get(&self, ino: u64) -> Option<&OwnedFd> {
        self.0.get(&ino).map(|(s, _)| s)
    }

    /// One announcement that held `ino`'s socket is done.
    fn release(&mut self, ino: u64) {
        if let Some((_, users)) = self.0.get_mut(&ino) {
            *users -= 1;
            if *users == 0 {
                self.0.remove(&ino);
            }
        }
    }
}

/// One pending announcement.
struct Job {
    /// Named namespace, opened at the first frame: a queued job holds no descriptor. From its
    /// first frame to its last (`INTERVAL × (COUNT − 1)`) it holds its namespace's socket,
    /// which keeps a namespace deleted meanwhile alive that long, emptied: a router's removal
    /// deletes its devices before its namespace.
    ns: String,
    dev: String,
    frame: [u8; 42],
    left: usize,
    due: Instant,
    /// After the first frame: the namespace's inode (its socket in `Sockets`) and the
    /// device's ifindex there.
    via: Option<(u64, i32)>,
}

/// Sends gratuitous ARPs from one background thread, whatever the number of routers: each
/// announcement is `COUNT` frames `INTERVAL` apart, the thread entering the router namespace
/// (setns) before each frame. Callers never wait.
pub struct Announcer {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Announcer {
    /// Starts the worker thread; it ends once the Announcer is dropped and its queue is empty.
    /// Between jobs the thread returns to `home` (the daemon's namespace) so that it never
    /// keeps a deleted router namespace, and the devices in it, alive.
    pub fn start(home: NetnsHandle) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("garp".into())
            .spawn(move || worker(rx, home))
            .context("spawning the gratuitous ARP thread")?;
        Ok(Self { tx: Mutex::new(tx) })
    }

    /// Queues the announcement of `ip` from `mac` on `dev` inside the named namespace `ns`
    /// (`/run/netns/<ns>`); the first frame leaves at once.
    pub fn announce(&self, ns: String, dev: String, mac: [u8; 6], ip: Ipv4Addr) {
        let job = Job {
            ns,
            dev,
            frame: frame(mac, ip),
            left: COUNT,
            due: Instant::now(),
            via: None,
        };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send(job).is_err() {
            tracing::warn!("gratuitous ARP thread is gone; {ip} not announced");
        }
    }
}

fn worker(rx: mpsc::Receiver<Job>, home: NetnsHandle) {
    lower_priority();
    let mut jobs: Vec<Job> = Vec::new();
    let mut sockets = Sockets::default();
    let mut open = true;
    let mut away = false;
    while open || !jobs.is_empty() {
        if jobs.is_empty() && away {
            if let Err(e) = setns(&home.file, CloneFlags::CLONE_NEWNET) {
                tracing::warn!("gratuitous ARP thread: returning to the daemon namespace: {e}");
            }
            away = false;
        }
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
        let mut i = 0;
        while i < jobs.len() {
            if jobs[i].due > now {
                i += 1;
                continue;
            }
            let j = &mut jobs[i];
            let (ino, idx) = match j.via {
                Some(via) => via,
                None => {
                    away = true;
                    match first_frame(&mut sockets, &j.ns, &j.dev) {
                        Ok(via) => *j.via.insert(via),
                        Err(e) => {
                            // The device or namespace went away: nothing to announce.
                            tracing::debug!("gratuitous ARP on {}: {e:#}", j.dev);
                            jobs.swap_remove(i);
                            continue;
                        }
                    }
                }
            };
            let sent = match sockets.get(ino) {
                Some(sock) => send_on(sock, idx, &j.frame),
                None => Err(anyhow::anyhow!("no socket for the namespace")),
            };
            j.left -= 1;
            match sent {
                Ok(()) if j.left > 0 => {
                    j.due = now + INTERVAL;
                    i += 1;
                }
                Ok(()) => {
                    sockets.release(ino);
                    jobs.swap_remove(i);
                }
                Err(e) => {
                    // The device or namespace went away: nothing left to announce.
                    tracing::debug!("gratuitous ARP on {}: {e:#}", j.dev);
                    sockets.release(ino);
                    jobs.swap_remove(i);
                }
            }
        }
    }
}

/// Puts the calling thread at the lowest priority (nice 19). Sending a frame costs its
/// flood: the external bridge copies it to every gateway tap there (up to 1000), each copy
/// through the tap's program and the router's ARP input, in the sender's context — at 1000
/// routers as much CPU as making a router. At nice 19 that work takes the CPU the API's calls
/// leave idle instead of competing with them; on an idle core the frames still leave on time.
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

/// Before an announcement's first frame: enters its namespace, holds the namespace's socket
/// for it and finds its device. Returns the namespace inode and the device's ifindex.
fn first_frame(sockets: &mut Sockets, ns: &str, dev: &str) -> Result<(u64, i32)> {
    let ino = sockets.enter_and_hold(ns)?;
    match ifindex_of(dev) {
        Ok(idx) => Ok((ino, idx)),
        Err(e) => {
            sockets.release(ino);
            Err(e)
        }
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
