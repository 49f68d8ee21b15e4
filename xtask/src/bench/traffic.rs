//! Traffic generators and measurements over a `Topology`: iperf3 TCP throughput, 64-byte UDP
//! packets per second, new flows per second (every packet a new 5-tuple), and TCP
//! connect-request-close rate. Every loop is bounded by a deadline and a count.
//!
//! Delivered packets are counted on the server namespace's interface (its rx counter), so the
//! figures measure what crossed the router, whatever the receiving socket does with it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kit::packet::udp_into;

use super::{
    ns::{check_interrupted, sleep},
    topo::{CLIENT_IP, CRR_PORT, IPERF_PORT, SERVER_DEV, Topology},
};

/// UDP port of the packets-per-second sink.
const PPS_PORT: u16 = 20100;
/// First of the destination ports the new-flow test cycles through.
const FLOW_PORT_BASE: u16 = 20200;
/// Destination ports in the new-flow test (each gets its own sink socket).
const FLOW_DPORTS: u16 = 16;
/// New flows per run at most: below every NAT table's capacity (the eBPF table and conntrack
/// hold 262144 each; the daemon's GC starts dropping never-replied sessions at 3/4 of it) and
/// below the SNAT port space per destination.
pub const FLOW_CAP: u32 = 60_000;
/// Packets handed to the kernel per sendmmsg call.
const BATCH: usize = 64;
/// UDP payload of the packets-per-second test (as `iperf3 -u -l 64`).
const PPS_PAYLOAD: usize = 64;

/// TCP throughput in Gbit/s with `streams` parallel iperf3 streams for `secs` seconds.
///
/// The client runs on CPU 0 and the server on CPU 1 (`-A 0,1`) where there are two: iperf3
/// (3.12) serves all its streams from one thread, and left to the scheduler, client and server
/// shared a CPU in some samples and not in others, which put most of every configuration's
/// 8-stream samples near 16 Gbit/s and the rest near 32 on a 2-core VM. Pinned, most samples
/// of every configuration are near 30; one in five or so still falls to 15–21.
pub fn tcp_gbps(t: &Topology, streams: u32, secs: u64) -> Result<f64> {
    check_interrupted()?;
    let ip = t.server_ip.to_string();
    let port = IPERF_PORT.to_string();
    let (secs_arg, streams_arg) = (secs.to_string(), streams.to_string());
    let mut args = vec![
        "-c",
        &ip,
        "-p",
        &port,
        "-t",
        &secs_arg,
        "-P",
        &streams_arg,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        args.extend(["-A", "0,1"]);
    }
    let out = t
        .client
        .run_for(Duration::from_secs(secs + 20), "iperf3", &args)?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 output has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// Sends `bufs` through `fd` with sendmmsg until `deadline` or `cap` packets; returns the
/// number sent. `names` are the per-packet destinations (None for a connected socket).
fn send_batches(
    fd: i32,
    deadline: Instant,
    cap: u64,
    mut fill: impl FnMut(u64, &mut [u8]) -> usize,
    dst: Option<libc::sockaddr_in>,
    buf_len: usize,
) -> Result<u64> {
    let mut bufs = vec![vec![0u8; buf_len]; BATCH];
    let mut dst = dst;
    let mut sent = 0u64;
    let mut failures = 0u32;
    while sent < cap && Instant::now() < deadline {
        let n = (cap - sent).min(BATCH as u64) as usize;
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            let len = fill(sent + i as u64, b);
            iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            });
        }
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is valid; the pointers set below outlive the call.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                if let Some(d) = dst.as_mut() {
                    m.msg_hdr.msg_name = (d as *mut libc::sockaddr_in).cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                }
                m
            })
            .collect();
        // SAFETY: msgs/iovs/bufs are valid for the duration of the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // A full qdisc/socket buffer is back-pressure, not failure.
            if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                failures += 1;
                if failures > 1_000_000 {
                    bail!("sendmmsg keeps failing: {e}");
                }
                continue;
            }
            bail!("sendmmsg: {e}");
        }
        sent += r as u64;
    }
    Ok(sent)
}

/// Result of one packet-rate run.
pub struct Rate {
    /// Delivered per second (server interface rx).
    pub per_sec: f64,
    pub sent: u64,
    pub delivered: u64,
    /// Delivered per CPU-second of the sending context: the sender thread's CPU time (which
    /// includes the softirq work done on its way out of `sendmmsg` — the whole path through the
    /// bridges, the router and the server's socket, since veth hands packets to the same CPU's
    /// backlog) plus the `ksoftirqd` threads' time during the run. This is the path's cost per
    /// packet, independent of how much CPU other processes on a shared machine left the sender.
    pub per_cpu_sec: f64,
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Total run time of the `ksoftirqd/N` threads, in seconds (`/proc/<pid>/schedstat`).
fn ksoftirqd_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ns = 0u64;
    for e in dir.flatten() {
        let p = e.path();
        let is_ksoftirqd = std::fs::read_to_string(p.join("comm"))
            .map(|c| c.starts_with("ksoftirqd/"))
            .unwrap_or(false);
        if !is_ksoftirqd {
            continue;
        }
        ns += std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 * 1e-9
}

/// Delivered per CPU-second, from the sender's and ksoftirqd's CPU time.
fn per_cpu(delivered: u64, sender_cpu: f64, softirq_cpu: f64) -> f64 {
    let cpu = sender_cpu + softirq_cpu;
    if cpu > 0.0 {
        delivered as f64 / cpu
    } else {
        0.0
    }
}

/// Runs `send` in the client namespace and measures what crossed: `send` returns the packets
/// it sent, how long it took and its thread's CPU seconds; delivered packets are counted at
/// the server once the last ones had time to land, `ksoftirqd` time over the whole run.
fn measure_rate(
    t: &Topology,
    send: impl FnOnce() -> Result<(u64, Duration, f64)> + Send,
) -> Result<Rate> {
    let before = t.server.rx_packets(SERVER_DEV)?;
    let soft0 = ksoftirqd_secs();
    let (sent, elapsed, cpu) = t.client.try_enter(send)??;
    sleep(Duration::from_millis(200))?;
    let delivered = t.server.rx_packets(SERVER_DEV)?.saturating_sub(before);
    let soft = ksoftirqd_secs() - soft0;
    Ok(Rate {
        per_sec: delivered as f64 / elapsed.as_secs_f64(),
        sent,
        delivered,
        per_cpu_sec: per_cpu(delivered, cpu, soft),
    })
}

/// 64-byte UDP packets per second over one flow, for `secs` seconds.
pub fn udp_pps(t: &Topology, secs: f64) -> Result<Rate> {
    check_interrupted()?;
    // An unread sink socket: the server's kernel accepts (then drops) the packets instead of
    // answering with ICMP port unreachable.
    let sink = t
        .server
        .try_enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PPS_PORT)))??;
    let dst = SocketAddr::from((t.server_ip, PPS_PORT));
    let dur = Duration::from_secs_f64(secs);
    let rate = measure_rate(t, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(dst)?;
        let cpu0 = thread_cpu_secs();
        let start = Instant::now();
        let sent = send_batches(
            s.as_raw_fd(),
            start + dur,
            u64::MAX,
            |_, b| {
                b.fill(0x5a);
                PPS_PAYLOAD
            },
            None,
            PPS_PAYLOAD,
        )?;
        Ok((sent, start.elapsed(), thread_cpu_secs() - cpu0))
    });
    drop(sink);
    rate
}

/// The `i`-th distinct (source port, destination port) of a new-flow run.
fn flow_ports(i: u64) -> (u16, u16) {
    let dport = FLOW_PORT_BASE + (i % u64::from(FLOW_DPORTS)) as u16;
    let sport = 1024 + ((i / u64::from(FLOW_DPORTS)) % 64_000) as u16;
    (sport, dport)
}

/// New flows per second: every packet carries a 5-tuple not seen before in this run (source
/// `src`, which must be inside the client subnet and fresh for the router, source port and
/// destination port cycling), at most `FLOW_CAP` flows or `secs` seconds.
pub fn new_flows(t: &Topology, secs: f64, src: Ipv4Addr) -> Result<Rate> {
    check_interrupted()?;
    let sinks = t.server.try_enter(|| -> std::io::Result<Vec<UdpSocket>> {
        (0..FLOW_DPORTS)
            .map(|p| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FLOW_PORT_BASE + p)))
            .collect()
    })??;
    let dst_ip = t.server_ip;
    let dur = Duration::from_secs_f64(secs);
    let rate = measure_rate(t, move || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: all-zero sockaddr_in is valid; fields set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst_ip.octets());
        let cpu0 = thread_cpu_secs();
        let start = Instant::now();
        let r = send_batches(
            fd,
            start + dur,
            u64::from(FLOW_CAP),
            |i, b| {
                let (sport, dport) = flow_ports(i);
                udp_into(b, src, dst_ip, sport, dport)
            },
            Some(sa),
            64,
        );
        let elapsed = start.elapsed();
        let cpu = thread_cpu_secs() - cpu0;
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        Ok((r?, elapsed, cpu))
    });
    drop(sinks);
    rate
}

/// A source address for new-flow run number `run`: inside the client subnet, never the client's
/// own, so the router has no state for it from an earlier run.
pub fn flow_source(run: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 100 + (run % 150) as u8)
}

/// Result of a connect-request-close run.
pub struct Crr {
    pub per_sec: f64,
    pub ok: u64,
    pub failed: u64,
}

/// TCP connect → 64-byte request → 64-byte response → close, per second, with `clients`
/// client threads for `secs` seconds. The server closes first, so TIME_WAIT stays on its side.
pub fn crr(t: &Topology, secs: f64, clients: usize) -> Result<Crr> {
    check_interrupted()?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = t
        .server
        .try_enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, CRR_PORT)))??;
    let stop_srv = stop.clone();
    let server = std::thread::spawn(move || {
        let mut served = 0u64;
        // Bounded: the client phase is bounded and the wake-up connection ends the loop.
        for conn in listener.incoming() {
            if stop_srv.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
            let mut req = [0u8; 64];
            if c.read_exact(&mut req).is_ok() && c.write_all(&[0x42; 64]).is_ok() {
                served += 1;
            }
        }
        served
    });
    let dst = SocketAddr::V4(SocketAddrV4::new(t.server_ip, CRR_PORT));
    let dur = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        handles.push(t.client.spawn_thread(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            let deadline = Instant::now() + dur;
            while Instant::now() < deadline && failed < 10_000 {
                let r = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    s.write_all(&[0x41; 64])?;
                    let mut resp = Vec::with_capacity(64);
                    s.read_to_end(&mut resp)?;
                    if resp.len() != 64 {
                        return Err(std::io::Error::other("short response"));
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })?);
    }
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("crr client panicked"))?;
        ok += o;
        failed += f;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    // Wake the blocking accept from inside the server namespace.
    let _ = t.server.try_enter(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], CRR_PORT)),
            Duration::from_secs(1),
        )
    });
    let _ = server.join();
    if ok == 0 {
        bail!("no connect-request-close exchange succeeded ({failed} failed)");
    }
    Ok(Crr {
        per_sec: ok as f64 / elapsed.as_secs_f64(),
        ok,
        failed,
    })
}

/// Whether the server sees traffic from the client as coming from `expect` (NAT check):
/// one TCP exchange whose peer address the server records.
pub fn observed_source(t: &Topology) -> Result<Ipv4Addr> {
    let listener = t
        .server
        .try_enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, CRR_PORT + 1)))??;
    listener.set_nonblocking(true)?;
    let dst = SocketAddr::V4(SocketAddrV4::new(t.server_ip, CRR_PORT + 1));
    let _client = t
        .client
        .try_enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3)))??;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, SocketAddr::V4(peer))) => return Ok(*peer.ip()),
            Ok((_, peer)) => bail!("unexpected peer {peer}"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("server saw no connection from {CLIENT_IP}")
}

#[cfg(test)]
mod tests {
    use router_common::csum::{checksum_be, l4_checksum_be};

    use super::*;

    #[test]
    fn udp_into_checksums_verify() {
        let mut b = [0u8; 64];
        let n = udp_into(
            &mut b,
            Ipv4Addr::new(10, 1, 0, 100),
            Ipv4Addr::new(203, 0, 113, 2),
            4321,
            20200,
        );
        assert_eq!(n, 46);
        // A header or segment summed with its checksum in place folds to 0.
        assert_eq!(checksum_be(&b[..20]), 0);
        let (src, dst) = ([10, 1, 0, 100], [203, 0, 113, 2]);
        assert_eq!(l4_checksum_be(src, dst, 17, &b[20..n]), 0);
    }

    #[test]
    fn flow_ports_are_distinct_up_to_the_cap() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..u64::from(FLOW_CAP) {
            assert!(seen.insert(flow_ports(i)));
        }
    }
}
