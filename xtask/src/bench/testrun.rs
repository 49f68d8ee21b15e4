//! Cost of the NAT program itself, through BPF_PROG_TEST_RUN on `snat_out` of the freshly built
//! object (no device, no namespace: the kernel runs it on loopback, ifindex 1, so the router is
//! configured on ifindex 1 in this private copy of the maps), and kernel memory per session:
//! the SESSIONS map's memlock per entry times the entries new flows really left in it.
//!
//! The fast path's `fast_fwd` is measured too, in a namespace of its own: its FIB lookup runs
//! in the namespace of the context's device, so the bench builds a stand-in router namespace
//! (`qr`, `qg`, default route, a permanent neighbour) and test-runs the program from a thread
//! inside it with the context naming `qr`'s ifindex.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use router_common::{
    CidrKey, FAST_IF_GATEWAY, FAST_IF_USED, FastIf, ROUTER_F_SNAT, RouterConfig, SessionKey,
    SessionValue, ip_to_wire, maps, programs,
};

use kit::packet::udp_into;

use super::report::{MemoryResult, TestRunResult};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const INTERNAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// A second internal host, for flows that collide with `INTERNAL`'s on the NAT port.
const INTERNAL2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Router number used in the private maps.
const DP_ID: u32 = 1;
/// The device BPF_PROG_TEST_RUN runs an skb program on when no ifindex is given (loopback).
const TEST_RUN_IFINDEX: u32 = 1;

/// Builds the eBPF object (bootstrapping the toolchain if needed) and returns its path; or,
/// when `ROUTER_EBPF_OBJECT` is set (as for `router-ctl`'s build), that object, so two builds
/// can be compared on the same machine state (TestRun and memory only).
pub fn object_path(target_dir: &Path, _workspace: &Path) -> Result<PathBuf> {
    if let Some(obj) = std::env::var_os("ROUTER_EBPF_OBJECT") {
        return Ok(PathBuf::from(obj));
    }
    crate::ebpf::build(target_dir).context("building the eBPF object")
}

/// An Ethernet + IPv4 + UDP frame from `INTERNAL:sport` to `REMOTE:53`.
fn frame(sport: u16) -> Vec<u8> {
    frame_from(INTERNAL, sport)
}

/// An Ethernet + IPv4 + UDP frame from `src:sport` to `REMOTE:53`.
fn frame_from(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 64];
    let n = udp_into(&mut ip, src, REMOTE, sport, 53);
    f.extend_from_slice(&ip[..n]);
    f
}

/// Loads the object at `obj` and the classifiers `progs` of it into the kernel.
fn load_progs(obj: &Path, progs: &[&str]) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load_file(obj).with_context(|| format!("loading {}", obj.display()))?;
    for &name in progs {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} not in the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(ebpf)
}

fn load(obj: &Path) -> Result<Ebpf> {
    load_progs(obj, &[programs::SNAT_OUT, programs::SNAT_IN])
}

/// Configures router `DP_ID` on the test-run device in the loaded object's private maps.
fn configure(ebpf: &mut Ebpf) -> Result<()> {
    let mut cfg: HashMap<_, u32, RouterConfig> = HashMap::try_from(
        ebpf.map_mut(maps::ROUTER_CONFIG)
            .context("no ROUTER_CONFIG map")?,
    )?;
    cfg.insert(
        TEST_RUN_IFINDEX,
        RouterConfig {
            router_id: DP_ID,
            gateway_ip: ip_to_wire(GATEWAY.octets()),
            flags: ROUTER_F_SNAT,
            port_min: 1024,
            port_max: 65535,
        },
        0,
    )?;
    let mut cidrs: LpmTrie<_, CidrKey, u32> = LpmTrie::try_from(
        ebpf.map_mut(maps::INTERNAL_CIDRS)
            .context("no INTERNAL_CIDRS map")?,
    )?;
    cidrs.insert(
        &Key::new(
            32 + 24,
            CidrKey {
                router_id_be: DP_ID.to_be(),
                addr: ip_to_wire([10, 1, 0, 0]),
            },
        ),
        1,
        0,
    )?;
    // Objects before LAYOUT_VERSION 5 (A/B runs) kept the counters in a per-CPU hash of
    // 16-counter blocks that needs the router's entry; since then it is an array with every
    // slot in place.
    if let Some(m) = ebpf.map_mut(maps::ROUTER_STATS)
        && let Ok(mut stats) = PerCpuHashMap::<_, u32, [u64; 16]>::try_from(m)
    {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        stats.insert(DP_ID, PerCpuValues::try_from(vec![[0u64; 16]; cpus])?, 0)?;
    }
    Ok(())
}

/// One run of `snat_out` over `packet`, `repeat` times; returns (verdict, avg ns, output).
fn run_once(ebpf: &Ebpf, packet: &[u8], repeat: u32) -> Result<(u32, f64, Vec<u8>)> {
    run_prog(ebpf, programs::SNAT_OUT, packet, repeat)
}

/// One run of program `name` over `packet`, `repeat` times.
fn run_prog(ebpf: &Ebpf, name: &str, packet: &[u8], repeat: u32) -> Result<(u32, f64, Vec<u8>)> {
    let prog: &SchedClassifier = ebpf
        .program(name)
        .with_context(|| format!("{name} missing"))?
        .try_into()?;
    let mut out = vec![0u8; packet.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as f64, out))
}

fn source_of(frame: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// ns/packet for an established session (`repeat` runs of one packet) and for new flows (one
/// run per distinct source port, `new_flows` of them).
/// Then the fast path's cost for both of its outcomes.
pub fn measure(obj: &Path, repeat: u32) -> TestRunResult {
    let mut r = match measure_inner(obj, repeat) {
        Ok(r) => r,
        Err(e) => TestRunResult {
            note: format!("not run: {e:#}"),
            ..Default::default()
        },
    };
    match measure_fast(obj, repeat) {
        Ok(f) => {
            r.fast_forwarded_ns = Some(f.forwarded_ns);
            r.fast_to_router_ns = Some(f.to_router_ns);
            r.fast_note = f.note;
        }
        Err(e) => r.fast_note = format!("not run: {e:#}"),
    }
    r
}

fn measure_inner(obj: &Path, repeat: u32) -> Result<TestRunResult> {
    let mut ebpf = load(obj)?;
    configure(&mut ebpf)?;
    // New flows: each packet a new source port, so each run creates a session.
    let new_flows: u16 = 20_000;
    let mut total = 0.0;
    let mut translated_new = 0u32;
    for i in 0..new_flows {
        super::ns::check_interrupted()?;
        let (ret, ns, out) = run_once(&ebpf, &frame(10_000 + i), 1)?;
        if ret != 0 {
            bail!("snat_out returned {ret} for a new flow (expected TC_ACT_OK)");
        }
        total += ns;
        if source_of(&out) == Some(GATEWAY) {
            translated_new += 1;
        }
    }
    let new_flow_ns = total / f64::from(new_flows);
    // Established: the first packet's session exists now; repeat it.
    let est = frame(10_000);
    let (ret, est_ns, out) = run_once(&ebpf, &est, repeat)?;
    if ret != 0 {
        bail!("snat_out returned {ret} for an established flow");
    }
    // The same established packet run one at a time, as the new flows were: the difference
    // to the new-flow figure is the cost of creating a session, free of per-run overhead.
    let mut single = 0.0;
    for _ in 0..new_flows {
        super::ns::check_interrupted()?;
        single += run_once(&ebpf, &est, 1)?.1;
    }
    let established_single_ns = single / f64::from(new_flows);
    // The reply direction: REMOTE:53 → GATEWAY:<translated port>, through snat_in.
    let (inbound_ns, inbound_ok) = match out.get(34..36) {
        Some(p) => {
            let nat_port = u16::from_be_bytes([p[0], p[1]]);
            let mut reply = vec![0u8; 14];
            reply.copy_from_slice(&est[..14]);
            let mut ip = [0u8; 64];
            let n = udp_into(&mut ip, REMOTE, GATEWAY, 53, nat_port);
            reply.extend_from_slice(&ip[..n]);
            let (ret, ns, back) = run_prog(&ebpf, programs::SNAT_IN, &reply, repeat)?;
            let dst = back
                .get(30..34)
                .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            (Some(ns), ret == 0 && dst == Some(INTERNAL))
        }
        None => (None, false),
    };
    let translated = translated_new == u32::from(new_flows) && source_of(&out) == Some(GATEWAY);
    let verified = verified_insns(&ebpf);
    let note = format!(
        "UDP {INTERNAL} → {REMOTE}:53, gateway {GATEWAY}; established: 1 packet × {repeat} repeats (kernel average); \
         new flow: {new_flows} packets with distinct source ports, one run each (includes the kernel's per-run timing overhead); \
         {translated_new}/{new_flows} new-flow packets left with the gateway address. \
         Verified instructions (the verifier's count): {verified}."
    );
    Ok(TestRunResult {
        established_ns: Some(est_ns),
        established_single_ns: Some(established_single_ns),
        inbound_established_ns: inbound_ns,
        inbound_translated: inbound_ok,
        new_flow_ns: Some(new_flow_ns),
        translated,
        note,
        ..Default::default()
    })
}

/// The verifier's instruction count of `snat_out` and `snat_in` as loaded (its cost grows
/// with the paths it has to explore; the limit is 1M).
fn verified_insns(ebpf: &Ebpf) -> String {
    verified_insns_of(ebpf, &[programs::SNAT_OUT, programs::SNAT_IN])
}

/// The verifier's instruction count of each of `names` as loaded.
fn verified_insns_of(ebpf: &Ebpf, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            let n = ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            match n {
                Some(n) => format!("{name} {n}"),
                None => format!("{name} unknown"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fast path's stand-in router: `qr` towards the VMs, `qg` towards the gateway.
const QR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const QG_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
/// The default route's next hop on `qg`. Its neighbour entry carries `qr`'s MAC: the
/// kernel runs a repeated test on the same buffer, so a forwarded frame must again be one
/// `fast_fwd` forwards (addressed to `qr`) for every repeat to take the forwarding path.
const HOP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOP_MAC: [u8; 6] = QR_MAC;
/// Repeats per forwarding test run: each decrements the TTL, so a frame sent with TTL 255
/// is forwarded by all of them and leaves with TTL 255 − `FAST_BATCH` (> 1).
const FAST_BATCH: u32 = 250;
/// The VM on `qr` that sends.
const VM: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 5);
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x05];
/// `TC_ACT_REDIRECT`: `fast_fwd` forwarded the packet (`bpf_redirect_peer`).
const TC_ACT_REDIRECT: u32 = 7;
/// Byte offset of `ifindex` in `struct __sk_buff`: the context BPF_PROG_TEST_RUN takes is
/// the structure up to and including it, every other field zero.
const SKB_IFINDEX: usize = 40;

/// What the fast-path measurement found.
struct FastRun {
    forwarded_ns: f64,
    to_router_ns: f64,
    note: String,
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An Ethernet + IPv4 + UDP frame `VM` → `REMOTE:53` addressed to `qr`, with `ttl`.
fn fast_frame(ttl: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&QR_MAC);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 64];
    let n = udp_into(&mut ip, VM, REMOTE, 40_000, 53);
    // TTL at byte 8; the header checksum (bytes 10–11) recomputed from scratch.
    ip[8] = ttl;
    ip[10..12].fill(0);
    let c = router_common::csum::checksum_be(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip[..n]);
    f
}

/// The stand-in router namespace: `qr` (10.9.0.1/24) and `qg` (203.0.113.10/24, default route
/// via `HOP`, a permanent neighbour entry for it), veth peers inside, forwarding on.
fn fast_namespace() -> Result<(super::ns::Netns, u32, u32)> {
    let ns = super::ns::new("tfast")?;
    for (dev, m) in [("qr", QR_MAC), ("qg", QG_MAC)] {
        let peer = format!("{dev}p");
        ns.try_ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer])?;
        ns.try_ip(&["link", "set", dev, "address", &mac_str(m)])?;
        ns.try_ip(&["link", "set", &peer, "up"])?;
        ns.try_ip(&["link", "set", dev, "up"])?;
    }
    // The FIB lookup answers "forwarding disabled" otherwise.
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.try_ip(&["addr", "add", "10.9.0.1/24", "dev", "qr"])?;
    ns.try_ip(&["addr", "add", "203.0.113.10/24", "dev", "qg"])?;
    ns.try_ip(&[
        "route",
        "add",
        "default",
        "via",
        &HOP.to_string(),
        "dev",
        "qg",
    ])?;
    ns.try_ip(&[
        "neigh",
        "replace",
        &HOP.to_string(),
        "lladdr",
        &mac_str(HOP_MAC),
        "dev",
        "qg",
        "nud",
        "permanent",
    ])?;
    let ifindex = |dev: &str| -> Result<u32> {
        let out = ns.try_ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {dev} in {}", ns.name))
    };
    let (qr, qg) = (ifindex("qr")?, ifindex("qg")?);
    Ok((ns, qr, qg))
}

/// `fast_fwd` on a forwarded packet and on one it leaves to the router (TTL 1), each
/// `repeat` times; both verdicts and outputs checked before a number is reported. The
/// namespace goes when this returns (its guard drops, also on error).
fn measure_fast(obj: &Path, repeat: u32) -> Result<FastRun> {
    let (ns, qr, qg) = fast_namespace()?;
    let obj = obj.to_path_buf();
    // Loaded, configured and run on one thread inside the namespace: the test run resolves
    // the context's ifindex in the calling thread's namespace.
    ns.try_enter(move || fast_run_inside(&obj, qr, qg, repeat))?
}

fn fast_run_inside(obj: &Path, qr: u32, qg: u32, repeat: u32) -> Result<FastRun> {
    let mut ebpf = load_progs(obj, &[programs::FAST_FWD])?;
    let mut ifs: Array<_, FastIf> =
        Array::try_from(ebpf.map_mut(maps::FAST_IFS).context("no FAST_IFS map")?)?;
    for (ifindex, flags, mac) in [(qr, 0, QR_MAC), (qg, FAST_IF_GATEWAY, QG_MAC)] {
        let v = FastIf {
            router_id: DP_ID,
            flags: flags | FAST_IF_USED,
            mac,
            _pad: [0; 2],
        };
        ifs.set(ifindex, v, 0)
            .with_context(|| format!("FAST_IFS[{ifindex}]"))?;
    }
    let mut ctx = [0u8; SKB_IFINDEX + 4];
    ctx[SKB_IFINDEX..].copy_from_slice(&qr.to_ne_bytes());
    let run = |packet: &[u8], repeat: u32| -> Result<(u32, f64, Vec<u8>)> {
        let prog: &SchedClassifier = ebpf
            .program(programs::FAST_FWD)
            .context("fast_fwd missing")?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let r = prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of fast_fwd")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, r.duration.as_nanos() as f64, out))
    };
    // One forwarded packet, checked: the verdict, TTL − 1, the next hop's and qg's MACs.
    let (ret, _, out) = run(&fast_frame(64), 1)?;
    if ret != TC_ACT_REDIRECT {
        bail!("fast_fwd returned {ret} for a packet to forward (expected TC_ACT_REDIRECT)");
    }
    if out.get(14 + 8) != Some(&63)
        || out.get(..6) != Some(&HOP_MAC[..])
        || out.get(6..12) != Some(&QG_MAC[..])
    {
        bail!("fast_fwd redirected the packet without TTL 63 and the next hop's and qg's MACs");
    }
    // Timed: batches of `FAST_BATCH` repeats from TTL 255; a batch whose frame left with
    // fewer decrements had repeats that did not forward.
    let batches = repeat.div_ceil(FAST_BATCH).max(1);
    let start = fast_frame(255);
    let want_ttl = 255 - FAST_BATCH as u8;
    let mut total = 0.0;
    for _ in 0..batches {
        super::ns::check_interrupted()?;
        let (ret, ns, out) = run(&start, FAST_BATCH)?;
        if ret != TC_ACT_REDIRECT || out.get(14 + 8) != Some(&want_ttl) {
            bail!(
                "fast_fwd batch of {FAST_BATCH}: verdict {ret}, TTL {:?} (expected TC_ACT_REDIRECT, TTL {want_ttl})",
                out.get(14 + 8)
            );
        }
        total += ns;
    }
    let forwarded_ns = total / f64::from(batches);
    // Left to the router: the frame stays as it is, so every repeat sees TTL 1.
    let slow = fast_frame(1);
    let (ret, to_router_ns, out) = run(&slow, repeat)?;
    if ret != 0 || out != slow {
        bail!("fast_fwd returned {ret} for TTL 1 (expected TC_ACT_OK and the frame unchanged)");
    }
    let verified = verified_insns_of(&ebpf, &[programs::FAST_FWD]);
    let note = format!(
        "UDP {VM} → {REMOTE}:53 on qr (ifindex {qr}) of a stand-in router namespace, default route via {HOP} on qg \
         (ifindex {qg}); TTL 64 checked to come out TC_ACT_REDIRECT with TTL 63 and the next hop's and qg's MACs. \
         Forwarded: {batches} runs × {FAST_BATCH} repeats from TTL 255 (the kernel repeats on the same buffer, so each \
         repeat forwards the previous one's output; the next hop's neighbour entry carries qr's MAC to keep it addressed \
         to qr), each checked to leave with TTL {want_ttl}, kernel average. Left to the router: TTL 1 × {repeat} repeats, \
         TC_ACT_OK and unchanged (the router sends Time Exceeded). The redirect itself happens after the program and is \
         not timed. Verified instructions: {verified}."
    );
    Ok(FastRun {
        forwarded_ns,
        to_router_ns,
        note,
    })
}

/// `memlock` of a BPF map fd, from /proc/self/fdinfo (the kernel's own accounting of the map's
/// memory; for a preallocated hash it covers every entry, used or not).
pub fn memlock(data: &MapData) -> Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

/// Flows per batch of the memory measurement.
const MEMORY_FLOWS: u16 = 10_000;

/// Bytes per NAT session of the eBPF datapath, from what new flows really leave in SESSIONS:
/// `MEMORY_FLOWS` new flows through `snat_out` (distinct source ports, each keeps its port),
/// entries counted, memlock per entry × entries / sessions. Then as many flows from another
/// host with the same source ports to the same endpoint — every one displaced from its port,
/// the worst case — measured the same way for the detail column. Conntrack's object size for
/// comparison.
pub fn memory(obj: &Path) -> MemoryResult {
    let mut m = MemoryResult::default();
    match memory_inner(obj) {
        Ok(r) => {
            let per_entry = r.memlock as f64 / f64::from(r.max_entries);
            let typical = per_entry * r.entries_typical as f64 / f64::from(MEMORY_FLOWS);
            let worst = per_entry * r.entries_displaced as f64 / f64::from(MEMORY_FLOWS);
            m.ebpf_bytes_per_session = Some(typical);
            m.ebpf_worst_bytes_per_session = Some(worst);
            m.ebpf_detail = format!(
                "memlock {} B / {} entries = {per_entry:.0} B per entry (key {} B + value {} B + {:.0} B kernel element and bucket overhead); \
                 {MEMORY_FLOWS} new flows that keep their port left {} entries ({:.2} per session); \
                 worst case, {MEMORY_FLOWS} flows displaced from their port by another host's: {} entries ({:.2} per session, {worst:.0} B/session)",
                r.memlock,
                r.max_entries,
                r.key_size,
                r.value_size,
                per_entry - f64::from(r.key_size + r.value_size),
                r.entries_typical,
                r.entries_typical as f64 / f64::from(MEMORY_FLOWS),
                r.entries_displaced,
                r.entries_displaced as f64 / f64::from(MEMORY_FLOWS),
            );
        }
        Err(e) => m.ebpf_detail = format!("not measured: {e:#}"),
    }
    conntrack_memory(&mut m);
    m
}

/// What the memory measurement read from the kernel.
struct MemoryFacts {
    memlock: u64,
    max_entries: u32,
    key_size: u32,
    value_size: u32,
    /// Entries after the flows that keep their port.
    entries_typical: usize,
    /// Entries added by the displaced flows.
    entries_displaced: usize,
}

fn memory_inner(obj: &Path) -> Result<MemoryFacts> {
    let mut ebpf = load(obj)?;
    configure(&mut ebpf)?;
    let count_entries = |ebpf: &Ebpf| -> Result<usize> {
        let map = ebpf.map(maps::SESSIONS).context("no SESSIONS map")?;
        let sessions: HashMap<_, SessionKey, SessionValue> = HashMap::try_from(map)?;
        let mut n = 0;
        for k in sessions.keys() {
            k?;
            n += 1;
        }
        Ok(n)
    };
    let batch = |ebpf: &Ebpf, src: Ipv4Addr| -> Result<()> {
        for i in 0..MEMORY_FLOWS {
            super::ns::check_interrupted()?;
            let (ret, _, out) = run_once(ebpf, &frame_from(src, 10_000 + i), 1)?;
            if ret != 0 || source_of(&out) != Some(GATEWAY) {
                bail!("new flow {i} from {src} not translated (verdict {ret})");
            }
        }
        Ok(())
    };
    batch(&ebpf, INTERNAL)?;
    let entries_typical = count_entries(&ebpf)?;
    batch(&ebpf, INTERNAL2)?;
    let entries_displaced = count_entries(&ebpf)? - entries_typical;
    let map = ebpf.map(maps::SESSIONS).context("no SESSIONS map")?;
    let data = match map {
        Map::HashMap(d) | Map::LruHashMap(d) => d,
        _ => bail!("SESSIONS is not a hash map"),
    };
    let info = data.info()?;
    Ok(MemoryFacts {
        memlock: memlock(data)?,
        max_entries: info.max_entries(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        entries_typical,
        entries_displaced,
    })
}

/// nf_conntrack's slab object size (one object per connection; NAT and other extensions are
/// allocated on top of it).
pub fn conntrack_memory(m: &mut MemoryResult) {
    let slab = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    if let Some(size) = slab
        .lines()
        .find(|l| l.starts_with("nf_conntrack "))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
    {
        m.conntrack_bytes_per_session = Some(size);
        m.conntrack_detail =
            "nf_conntrack slab object size; the NAT/acct extension area is allocated separately on top"
                .into();
    } else {
        m.conntrack_detail = "nf_conntrack not in /proc/slabinfo (module not loaded yet?)".into();
    }
}
