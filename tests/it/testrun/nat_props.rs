//! Property tests over BPF_PROG_TEST_RUN: random flows (addresses, ports, payload lengths incl.
//! odd ones, IP options, TCP flags, zero UDP checksums) and random ICMP errors quoting them (any
//! quote length from 8 L4 bytes to the whole datagram) must come out byte-exact as the packet
//! builder makes them from scratch (2000 cases per run).
use proptest::prelude::*;
use tests::{
    Bpffs,
    packet::{ICMP, Ipv4, TCP, UDP, assert_checksums, frame, icmp, tcp, udp},
    testrun::{GW, snat_datapath},
};

#[derive(Debug, Clone)]
struct Flow {
    proto: u8,
    host: u8,
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: Vec<u8>,
    options: usize,
    flags: u8,
    zero_csum: bool,
    ttl: u8,
    id: u16,
}

fn flow() -> impl Strategy<Value = Flow> {
    (
        prop_oneof![Just(TCP), Just(UDP)],
        2u8..250,
        1u16..=65535,
        (1u8..=223, any::<u8>(), any::<u8>(), 1u8..=254),
        1u16..=65535,
        proptest::collection::vec(any::<u8>(), 0..300),
        0usize..=10,
        prop_oneof![Just(0x02u8), Just(0x10), Just(0x18), Just(0x11)],
        any::<bool>(),
        2u8..=255,
        any::<u16>(),
    )
        .prop_filter("not internal", |(_, _, _, d, ..)| d.0 != 10)
        .prop_map(
            |(proto, host, sport, d, dport, payload, options, flags, zero_csum, ttl, id)| Flow {
                proto,
                host,
                sport,
                dst: [d.0, d.1, d.2, d.3],
                dport,
                payload,
                options,
                flags,
                zero_csum,
                ttl,
                id,
            },
        )
}

impl Flow {
    fn ip(&self, src: [u8; 4], dst: [u8; 4], proto: u8) -> Ipv4 {
        let mut ip = Ipv4::new(src, dst, proto);
        ip.ttl = self.ttl;
        ip.id = self.id;
        // NOP options then EOL padding to a multiple of 4 bytes.
        ip.options = vec![1u8; self.options * 4];
        if let Some(last) = ip.options.last_mut() {
            *last = 0;
        }
        ip
    }

    fn l4(&self, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        if self.proto == TCP {
            tcp(src, dst, sport, dport, self.flags, &[], &self.payload)
        } else {
            udp(src, dst, sport, dport, &self.payload, self.zero_csum)
        }
    }

    fn packet(&self, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        self.ip(src, dst, self.proto)
            .packet(&self.l4(src, sport, dst, dport))
    }
}

fn nat_port(f: &[u8]) -> u16 {
    let hlen = ((f[14] & 0x0f) as usize) * 4;
    u16::from_be_bytes([f[14 + hlen], f[15 + hlen]])
}

#[test]
fn random_flows_and_icmp_errors_translate_exactly() {
    let bpffs = Bpffs::new();
    let dp = snat_datapath(&bpffs, 5, GW, "10.1.0.0/16");
    let run = |prog: &str, f: &[u8]| {
        let (rc, out) = dp.test_run(prog, f).expect("test run");
        assert_eq!(rc, 0, "{prog} verdict");
        out
    };
    let mut config = ProptestConfig::with_cases(2000);
    config.failure_persistence = None;
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(
            &(flow(), prop_oneof![0usize..16, 0usize..400], any::<bool>()),
            |(fl, quote_cut, hop_error)| {
                let vm = [10, 1, 3, fl.host];
                // Out: the source becomes the gateway; the port is kept or remapped into range.
                let out = run(
                    "snat_out",
                    &frame(&fl.packet(vm, fl.sport, fl.dst, fl.dport)),
                );
                let p = nat_port(&out);
                prop_assert!(p >= 1024);
                let want = frame(&fl.packet(GW, p, fl.dst, fl.dport));
                assert_checksums(&want);
                prop_assert_eq!(&out, &want);
                // In: the reply goes back to the VM.
                let back = run("snat_in", &frame(&fl.packet(fl.dst, fl.dport, GW, p)));
                prop_assert_eq!(back, frame(&fl.packet(fl.dst, fl.dport, vm, fl.sport)));
                // An ICMP error quoting the translated datagram, cut anywhere from 8 L4 bytes on.
                let quoted = |src: [u8; 4], sp: u16| {
                    let q = fl.packet(src, sp, fl.dst, fl.dport);
                    let hlen = 20 + fl.options * 4;
                    let n = (hlen + 8 + quote_cut).min(q.len());
                    q[..n].to_vec()
                };
                let (from, ty, code) = if hop_error {
                    ([198, 51, 100, 7], 11, 0)
                } else {
                    (fl.dst, 3, 3)
                };
                let err = |dst: [u8; 4], q: Vec<u8>| {
                    frame(&Ipv4::new(from, dst, ICMP).packet(&icmp(ty, code, [0; 4], &q)))
                };
                let got = run("snat_in", &err(GW, quoted(GW, p)));
                let mut want_q = quoted(vm, fl.sport);
                // A quote that ends inside the TCP checksum cannot have it updated (as in
                // Linux's nf_nat: only what is wholly present is rewritten): that byte stays.
                let hlen = 20 + fl.options * 4;
                if fl.proto == TCP && want_q.len() == hlen + 17 {
                    want_q[hlen + 16] = quoted(GW, p)[hlen + 16];
                }
                prop_assert_eq!(got, err(vm, want_q));
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    dp.purge().expect("purge");
}
