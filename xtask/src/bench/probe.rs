//! Observers of the scale runs: a steady UDP sequence stream (every datagram numbered, so each
//! one lost is counted and the longest outage measured), the broadcast and multicast frames a
//! namespace receives (what the external bridge floods to every port), and the host's drop
//! counters (the per-CPU backlog overflows the floods cause).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::ns::Netns;

/// What a stream lost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamLoss {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers sent and never received.
    pub lost: u64,
    /// Longest run of lost datagrams, in milliseconds of sending.
    pub longest_gap_ms: f64,
    pub pps: u32,
}

/// A UDP stream of numbered datagrams from a client namespace to a server namespace, at a
/// fixed rate (paced on an absolute schedule, so a slow moment does not stretch the stream).
pub struct Stream {
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sender: JoinHandle<std::io::Result<u64>>,
    receiver: JoinHandle<Vec<u64>>,
    pps: u32,
}

impl Stream {
    /// Starts sending from `client` to `dst` (bound in `server`) at `pps` datagrams a second.
    pub fn start(client: &Netns, server: &Netns, dst: SocketAddrV4, pps: u32) -> Result<Self> {
        let sock = server.try_enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, dst.port())))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop_recv = Arc::new(AtomicBool::new(false));
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop = stop_recv.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 8 => {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&buf[..8]);
                        got.push(u64::from_be_bytes(seq));
                    }
                    Ok(_) => {}
                    Err(_) if stop.load(Ordering::SeqCst) => return got,
                    Err(_) => {}
                }
            }
        });
        let stop = stop_send.clone();
        let interval = Duration::from_secs_f64(1.0 / f64::from(pps.max(1)));
        let sender = client.spawn_thread(move || -> std::io::Result<u64> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            let to = SocketAddr::V4(dst);
            let start = Instant::now();
            let mut seq: u64 = 0;
            // Bounded: ten minutes at most, whatever happens to the caller.
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
                let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // A send that fails (no buffer, no route yet) is a datagram lost.
                let _ = s.send_to(&seq.to_be_bytes(), to);
                seq += 1;
            }
            Ok(seq)
        })?;
        Ok(Self {
            stop_send,
            stop_recv,
            sender,
            receiver,
            pps,
        })
    }

    /// Stops sending, waits for stragglers, and counts what was lost.
    pub fn finish(self) -> Result<StreamLoss> {
        self.stop_send.store(true, Ordering::SeqCst);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("stream sender panicked"))?
            .context("stream sender")?;
        std::thread::sleep(Duration::from_millis(300));
        self.stop_recv.store(true, Ordering::SeqCst);
        let got = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("stream receiver panicked"))?;
        let mut seen = vec![false; usize::try_from(sent).unwrap_or(0)];
        for s in got {
            if let Some(x) = usize::try_from(s).ok().and_then(|i| seen.get_mut(i)) {
                *x = true;
            }
        }
        let received = seen.iter().filter(|x| **x).count() as u64;
        let (mut run, mut longest) = (0u64, 0u64);
        for x in &seen {
            run = if *x { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        Ok(StreamLoss {
            sent,
            received,
            lost: sent - received,
            longest_gap_ms: longest as f64 * 1000.0 / f64::from(self.pps.max(1)),
            pps: self.pps,
        })
    }
}

/// Broadcast and multicast frames one namespace received, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flood {
    pub secs: f64,
    pub arp: u64,
    /// Of `arp`: gratuitous (sender address = target address: announcements).
    pub arp_gratuitous: u64,
    pub ipv6: u64,
    pub other: u64,
}

impl Flood {
    pub fn per_sec(&self) -> f64 {
        (self.arp + self.ipv6 + self.other) as f64 / self.secs.max(1e-9)
    }
}

/// Counts the broadcast and multicast frames arriving on any device of `ns` for `secs`
/// (a packet socket, as tcpdump would open; frames the namespace sends are not counted).
pub fn count_flood(ns: &Netns, secs: f64) -> Result<Flood> {
    ns.try_enter(|| -> Result<Flood> {
        let fd = kit::capture::packet_socket(libc::ETH_P_ALL as u16, 0, Duration::from_millis(100))
            .context("packet socket")?;
        let mut f = Flood {
            secs,
            ..Default::default()
        };
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: zeroed sockaddr_ll is a valid value to be filled by recvfrom.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffer and address point to live memory of the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut addr).cast(),
                    &mut len,
                )
            };
            if n < 14 || addr.sll_pkttype == libc::PACKET_OUTGOING || buf[0] & 1 == 0 {
                continue;
            }
            match u16::from_be_bytes([buf[12], buf[13]]) {
                0x0806 => {
                    f.arp += 1;
                    // Sender and target protocol addresses of an Ethernet/IPv4 ARP.
                    if n >= 42 && buf[28..32] == buf[38..42] {
                        f.arp_gratuitous += 1;
                    }
                }
                0x86dd => f.ipv6 += 1,
                _ => f.other += 1,
            }
        }
        Ok(f)
    })?
}

/// Packets the host's per-CPU backlogs dropped so far (`/proc/net/softnet_stat`, second
/// column, summed over CPUs). Host-wide: other tenants of the machine count too.
pub fn softnet_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .sum()
}

/// Transmit drops summed over every link of `ns` (a veth whose peer's queue is full counts
/// its drop here).
pub fn tx_drops(ns: &Netns) -> Result<u64> {
    let out = ns.cmd("ip").args(["-s", "-j", "link", "show"]).output()?;
    if !out.status.success() {
        bail!(
            "ip -s link: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| l["stats64"]["tx"]["dropped"].as_u64())
                .sum()
        })
        .unwrap_or(0))
}
