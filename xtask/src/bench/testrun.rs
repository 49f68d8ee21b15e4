//! Cost of the NAT program itself, through BPF_PROG_TEST_RUN on `snat_out` of the freshly built
//! object (no device, no namespace: the kernel runs it on loopback, ifindex 1, so the router is
//! configured on ifindex 1 in this private copy of the maps), and kernel memory per session:
//! the SESSIONS map's memlock per entry times the entries new flows really left in it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, Map, MapData, PerCpuHashMap, PerCpuValues, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use router_common::{
    CidrKey, ROUTER_F_SNAT, RouterConfig, RouterStats, SessionKey, SessionValue, ip_to_wire, maps,
    programs,
};

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
    let n = super::traffic::udp_packet(&mut ip, src, REMOTE, sport, 53);
    f.extend_from_slice(&ip[..n]);
    f
}

fn load(obj: &Path) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load_file(obj).with_context(|| format!("loading {}", obj.display()))?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(programs::SNAT_OUT)
        .with_context(|| format!("{} not in the object", programs::SNAT_OUT))?
        .try_into()?;
    prog.load().context("verifier rejected snat_out")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(programs::SNAT_IN)
        .with_context(|| format!("{} not in the object", programs::SNAT_IN))?
        .try_into()?;
    prog.load().context("verifier rejected snat_in")?;
    Ok(ebpf)
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
    // Objects before LAYOUT_VERSION 5 (A/B runs) kept the counters in a per-CPU hash that
    // needs the router's entry; since then it is an array with every slot in place.
    if let Some(m) = ebpf.map_mut(maps::ROUTER_STATS)
        && let Ok(mut stats) = PerCpuHashMap::<_, u32, RouterStats>::try_from(m)
    {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        stats.insert(
            DP_ID,
            PerCpuValues::try_from(vec![RouterStats::default(); cpus])?,
            0,
        )?;
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
pub fn measure(obj: &Path, repeat: u32) -> TestRunResult {
    match measure_inner(obj, repeat) {
        Ok(r) => r,
        Err(e) => TestRunResult {
            note: format!("not run: {e:#}"),
            ..Default::default()
        },
    }
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
            let n = super::traffic::udp_packet(&mut ip, REMOTE, GATEWAY, 53, nat_port);
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
    })
}

/// The verifier's instruction count of `snat_out` and `snat_in` as loaded (its cost grows
/// with the paths it has to explore; the limit is 1M).
fn verified_insns(ebpf: &Ebpf) -> String {
    [programs::SNAT_OUT, programs::SNAT_IN]
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
