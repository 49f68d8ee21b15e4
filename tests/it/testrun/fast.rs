//! BPF_PROG_TEST_RUN of the fast path (`fast_fwd`): packet in → verdict and exact bytes out.
//!
//! `fast_fwd` looks routes and neighbours up in the namespace of the device the packet is on,
//! so each test builds a stand-in router namespace of its own: a `qr` device (10.9.0.1/24, a
//! VM at 10.9.0.5) and a `qg` device (203.0.113.10/24, default route via 203.0.113.1, a server
//! on-link at 203.0.113.9), permanent neighbours, and both devices in `FAST_IFS` as router
//! `DP_ID`'s. The test runs in that namespace on the device's ifindex (`Datapath::test_run_on`).
//! A forwarded packet must come out with exactly what a router changes — both MACs, TTL − 1
//! and the header checksum (computed here from scratch) — and the verdict `TC_ACT_REDIRECT`;
//! every case the router must handle itself must come out `TC_ACT_OK` and byte-for-byte
//! unchanged.
use std::{path::Path, sync::Arc};

use aya::maps::{Array, Map, MapData};
use router_common::{FAST_IF_GATEWAY, FAST_IF_USED, FastIf, maps, stats::Counter};
use router_ctl::{
    config::NatConfig,
    datapath::{Datapath, bpffs},
};
use tests::{
    Bpffs, Netns,
    packet::{ICMP, Ipv4, TCP, UDP, echo, tcp, udp},
    testrun::{OK, REDIRECT, hex},
};

const DP_ID: u32 = 11;

const QR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const QG_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x05];
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const SRV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x09];

const VM: [u8; 4] = [10, 9, 0, 5];
const QR_IP: [u8; 4] = [10, 9, 0, 1];
const NO_NEIGH: [u8; 4] = [10, 9, 0, 77];
const SRV: [u8; 4] = [203, 0, 113, 9];
const REMOTE: [u8; 4] = [198, 51, 100, 7];

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An Ethernet frame `src` → `dst` carrying `ip`.
fn eth(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// `h` with `l4` as it arrives in a frame to `arrives.0` from `arrives.1`, and as a router
/// forwards it: to `leaves.0` from `leaves.1`, TTL − 1 (header checksum computed afresh).
fn hop(
    mut h: Ipv4,
    l4: &[u8],
    arrives: ([u8; 6], [u8; 6]),
    leaves: ([u8; 6], [u8; 6]),
) -> (Vec<u8>, Vec<u8>) {
    let input = eth(arrives.0, arrives.1, &h.packet(l4));
    h.ttl -= 1;
    (input, eth(leaves.0, leaves.1, &h.packet(l4)))
}

fn udp_ip(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut h = Ipv4::new(src, dst, UDP);
    h.ttl = ttl;
    h.packet(&udp(src, dst, 40000, 53, b"query", false))
}

struct Fixture {
    ns: Netns,
    dp: Arc<Datapath>,
    bpffs: Bpffs,
    qr: u32,
    qg: u32,
}

impl Fixture {
    fn new() -> Self {
        let ns = Netns::new("tfast");
        for (dev, m) in [("qr", QR_MAC), ("qg", QG_MAC)] {
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["link", "set", dev, "address", &mac(m)]);
            ns.ip(&["link", "set", &peer, "up"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // A router forwards; the FIB lookup answers "forwarding disabled" otherwise.
        ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"]);
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "qr"]);
        ns.ip(&["addr", "add", "203.0.113.10/24", "dev", "qg"]);
        ns.ip(&["route", "add", "default", "via", "203.0.113.1", "dev", "qg"]);
        for (ip, m, dev) in [
            ("203.0.113.1", HOP_MAC, "qg"),
            ("203.0.113.9", SRV_MAC, "qg"),
            ("10.9.0.5", VM_MAC, "qr"),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        let bpffs = Bpffs::new();
        let dp = Datapath::open(bpffs.path(), &NatConfig::default())
            .unwrap_or_else(|e| panic!("open datapath: {e:#}"));
        let qr = ns.ifindex("qr");
        let qg = ns.ifindex("qg");
        let f = Self {
            ns,
            dp,
            bpffs,
            qr,
            qg,
        };
        f.set(qr, DP_ID, 0, QR_MAC);
        f.set(qg, DP_ID, FAST_IF_GATEWAY, QG_MAC);
        f
    }

    fn fast_ifs(&self) -> Array<MapData, FastIf> {
        let pin = bpffs::version_dir(self.bpffs.path()).join(maps::FAST_IFS);
        open_array(&pin)
    }

    fn set(&self, ifindex: u32, router_id: u32, flags: u32, mac: [u8; 6]) {
        let v = FastIf {
            router_id,
            flags: flags | FAST_IF_USED,
            mac,
            _pad: [0; 2],
        };
        self.fast_ifs().set(ifindex, v, 0).expect("FAST_IFS set");
    }

    fn remove(&self, ifindex: u32) {
        self.fast_ifs()
            .set(ifindex, FastIf::default(), 0)
            .expect("FAST_IFS clear");
    }

    fn run(&self, ifindex: u32, input: &[u8]) -> (u32, Vec<u8>) {
        self.ns.enter(|| {
            self.dp
                .test_run_on(router_common::programs::FAST_FWD, input, ifindex)
                .unwrap_or_else(|e| panic!("test run of fast_fwd: {e:#}"))
        })
    }

    fn fast_count(&self) -> u64 {
        self.dp.stats(DP_ID).expect("stats")["fast_forwarded"]
    }

    /// Runs `input` on `ifindex` and asserts the router's own path: `TC_ACT_OK`, unchanged,
    /// not counted.
    fn slow(&self, ifindex: u32, input: &[u8], why: &str) {
        let before = self.fast_count();
        let (rc, out) = self.run(ifindex, input);
        assert_eq!(rc, OK, "{why}: expected the router's path (TC_ACT_OK)");
        assert_eq!(out, input, "{why}: the frame must be unchanged");
        assert_eq!(self.fast_count(), before, "{why}: must not count as fast");
    }

    /// Runs `input` on `ifindex` and asserts a redirect to `egress`'s peer with exactly `want`.
    fn fast(&self, ifindex: u32, input: &[u8], want: &[u8], why: &str) {
        let before = self.fast_count();
        let (rc, out) = self.run(ifindex, input);
        assert_eq!(rc, REDIRECT, "{why}: expected TC_ACT_REDIRECT");
        assert_eq!(hex(&out), hex(want), "{why}: forwarded frame");
        tests::packet::assert_checksums(&out);
        assert_eq!(self.fast_count(), before + 1, "{why}: fast_forwarded");
    }
}

fn open_array(pin: &Path) -> Array<MapData, FastIf> {
    let data = MapData::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let map = Map::from_map_data(data).expect("map from pin");
    Array::try_from(map).expect("FAST_IFS is an array of FastIf")
}

#[test]
fn outbound_to_the_default_route_is_forwarded_with_next_hop_macs_and_ttl_minus_one() {
    let f = Fixture::new();
    let input = eth(QR_MAC, VM_MAC, &udp_ip(VM, REMOTE, 64));
    let want = eth(HOP_MAC, QG_MAC, &udp_ip(VM, REMOTE, 63));
    f.fast(f.qr, &input, &want, "UDP to the internet");

    // TCP, on-link destination on the external network: its own MAC, not the gateway's.
    let seg = tcp(VM, SRV, 40001, 80, 0x10, &[], b"data");
    let (input, want) = hop(
        Ipv4::new(VM, SRV, TCP),
        &seg,
        (QR_MAC, VM_MAC),
        (SRV_MAC, QG_MAC),
    );
    f.fast(f.qr, &input, &want, "TCP to an on-link external host");
}

#[test]
fn inbound_to_a_vm_is_forwarded_with_the_vms_mac() {
    let f = Fixture::new();
    // What snat_in leaves: the reply already addressed to the VM.
    let icmp = echo(0, 0x1234, 1, b"pingdata");
    let mut h = Ipv4::new(REMOTE, VM, ICMP);
    h.ttl = 2;
    let (input, want) = hop(h, &icmp, (QG_MAC, HOP_MAC), (VM_MAC, QR_MAC));
    f.fast(f.qg, &input, &want, "echo reply to the VM, TTL 2");
}

#[test]
fn checksum_carry_matches_the_kernels_ttl_decrement() {
    let f = Fixture::new();
    // Sweep TTLs and ids so the header checksum crosses every carry case of the incremental
    // update; each expected header checksum is computed from scratch.
    for ttl in [2u8, 3, 17, 64, 128, 255] {
        for id in [0u16, 0x00ff, 0x7fff, 0xfeff, 0xffff] {
            let payload = udp(VM, REMOTE, 40000, 53, b"q", false);
            let mut h = Ipv4::new(VM, REMOTE, UDP);
            h.ttl = ttl;
            h.id = id;
            let (input, want) = hop(h, &payload, (QR_MAC, VM_MAC), (HOP_MAC, QG_MAC));
            f.fast(f.qr, &input, &want, &format!("ttl {ttl} id {id:#x}"));
        }
    }
}

#[test]
fn what_the_router_must_handle_takes_its_own_path_unchanged() {
    let f = Fixture::new();
    let good = eth(QR_MAC, VM_MAC, &udp_ip(VM, REMOTE, 64));

    f.slow(
        f.qr,
        &eth(QR_MAC, VM_MAC, &udp_ip(VM, REMOTE, 1)),
        "TTL 1 (Time Exceeded)",
    );
    f.slow(f.qr, &eth(QR_MAC, VM_MAC, &udp_ip(VM, REMOTE, 0)), "TTL 0");

    let mut opts = Ipv4::new(VM, REMOTE, UDP);
    opts.options = vec![0x94, 0x04, 0, 0]; // router alert
    f.slow(
        f.qr,
        &eth(
            QR_MAC,
            VM_MAC,
            &opts.packet(&udp(VM, REMOTE, 1, 2, b"x", false)),
        ),
        "IP options",
    );

    let mut bad = good.clone();
    bad[14 + 10] ^= 0x5a;
    f.slow(f.qr, &bad, "bad header checksum");

    let mut long = good.clone();
    long[14 + 2] = 0x05; // total length 0x05xx > frame, checksum left as is
    f.slow(f.qr, &long, "total length beyond the frame");

    // (A frame cut inside the IPv4 header is refused by BPF_PROG_TEST_RUN itself; the program's
    // bounds check before reading the header covers it.)
    let mut short = udp_ip(VM, REMOTE, 64);
    short[2..4].copy_from_slice(&19u16.to_be_bytes());
    short[10..12].copy_from_slice(&[0, 0]);
    let c = router_common::csum::checksum_be(&short[..20]);
    short[10..12].copy_from_slice(&c.to_be_bytes());
    f.slow(
        f.qr,
        &eth(QR_MAC, VM_MAC, &short),
        "total length shorter than the header",
    );

    let mut bcast = good.clone();
    bcast[..6].copy_from_slice(&[0xff; 6]);
    f.slow(f.qr, &bcast, "frame not for the device's MAC");

    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f.slow(f.qr, &arp, "not IPv4");

    // Addresses the router must handle itself, from the VM's side.
    for (src, dst, why) in [
        (VM, QR_IP, "to the router itself (local)"),
        (
            VM,
            [169, 254, 169, 254],
            "to the metadata address (on lo, as in a router namespace)",
        ),
        ([127, 0, 0, 1], REMOTE, "martian source 127/8"),
        ([0, 0, 0, 0], REMOTE, "martian source 0/8"),
        ([224, 0, 0, 1], REMOTE, "multicast source"),
        (VM, [10, 9, 0, 255], "subnet broadcast"),
        (
            VM,
            [203, 0, 113, 200],
            "on-link external host without a neighbour entry",
        ),
    ] {
        f.slow(f.qr, &eth(QR_MAC, VM_MAC, &udp_ip(src, dst, 64)), why);
    }
    f.slow(
        f.qg,
        &eth(QG_MAC, HOP_MAC, &udp_ip(REMOTE, NO_NEIGH, 64)),
        "neighbour not resolved (the router sends ARP)",
    );
    // Back out the way it came: the router answers with an ICMP redirect.
    f.slow(
        f.qg,
        &eth(QG_MAC, HOP_MAC, &udp_ip(REMOTE, SRV, 64)),
        "egress = ingress",
    );

    // Still forwarded after all that (the cases above left nothing behind).
    let want = eth(HOP_MAC, QG_MAC, &udp_ip(VM, REMOTE, 63));
    f.fast(f.qr, &good, &want, "a normal packet afterwards");
}

#[test]
fn only_this_routers_own_devices_are_fast_pathed() {
    let f = Fixture::new();
    let input = eth(QR_MAC, VM_MAC, &udp_ip(VM, REMOTE, 64));

    // Another namespace's device with the same ifindex (its MAC differs): not ours.
    f.set(f.qr, DP_ID, 0, [0x02, 0, 0, 0, 0xee, 0x01]);
    f.slow(
        f.qr,
        &input,
        "ingress ifindex of another device (MAC mismatch)",
    );
    f.set(f.qr, DP_ID, 0, QR_MAC);

    // Egress device is another router's (a collision that matched the MAC would still not
    // cross routers).
    f.set(f.qg, DP_ID + 1, FAST_IF_GATEWAY, QG_MAC);
    f.slow(f.qr, &input, "egress device of another router");
    // Egress entry with another device's MAC.
    f.set(f.qg, DP_ID, FAST_IF_GATEWAY, [0x02, 0, 0, 0, 0xee, 0x02]);
    f.slow(
        f.qr,
        &input,
        "egress ifindex of another device (MAC mismatch)",
    );
    // Egress device without the fast path.
    f.remove(f.qg);
    f.slow(f.qr, &input, "egress device not in FAST_IFS");
    f.set(f.qg, DP_ID, FAST_IF_GATEWAY, QG_MAC);
    // Ingress device without the fast path.
    f.remove(f.qr);
    f.slow(f.qr, &input, "ingress device not in FAST_IFS");
    // An empty slot is all zero: a frame to MAC 00:00:00:00:00:00 must not match it.
    let mut zero = input.clone();
    zero[..6].copy_from_slice(&[0; 6]);
    f.slow(f.qr, &zero, "empty slot, frame to the all-zero MAC");
    // A slot with the device's MAC but without FAST_IF_USED is empty too.
    f.fast_ifs()
        .set(
            f.qr,
            FastIf {
                router_id: DP_ID,
                flags: 0,
                mac: QR_MAC,
                _pad: [0; 2],
            },
            0,
        )
        .expect("FAST_IFS set");
    f.slow(f.qr, &input, "slot not marked used");
    f.set(f.qr, DP_ID, 0, QR_MAC);

    let want = eth(HOP_MAC, QG_MAC, &udp_ip(VM, REMOTE, 63));
    f.fast(f.qr, &input, &want, "both entries back");
}

#[test]
fn larger_than_the_egress_mtu_takes_the_routers_path() {
    let f = Fixture::new();
    f.ns.ip(&["link", "set", "qg", "mtu", "1280"]);
    let big = |len: usize, ttl: u8| {
        let mut h = Ipv4::new(VM, REMOTE, UDP);
        h.ttl = ttl;
        h.packet(&udp(VM, REMOTE, 40000, 53, &vec![0x61; len - 28], false))
    };
    // 1281 bytes of IP: the router fragments it or sends Fragmentation Needed (DF is set).
    f.slow(
        f.qr,
        &eth(QR_MAC, VM_MAC, &big(1281, 64)),
        "one byte over the MTU",
    );
    // Exactly the MTU fits.
    f.fast(
        f.qr,
        &eth(QR_MAC, VM_MAC, &big(1280, 64)),
        &eth(HOP_MAC, QG_MAC, &big(1280, 63)),
        "exactly the MTU",
    );
    // Counters land in the router's slot.
    assert_eq!(
        f.dp.stats(DP_ID).expect("stats")[Counter::FastForwarded.name()],
        1
    );
}
