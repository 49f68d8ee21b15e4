//! Nothing from an internal source may leave through the gateway untranslated, not even in the
//! moment the gateway is set or an interface is added: the datapath must be attached and
//! configured before the router can route out of `qg-` (found by the benchmark: packets with
//! the VM's private source reached the external host ~40 ms after `gateway set`).

use std::{
    collections::BTreeMap,
    net::{SocketAddrV4, UdpSocket},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use router_ctl::model::spec::names;
use tests::{
    Netns, RealiserHost,
    spec::{gateway, port, router},
};

fn mac(last: u8) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0x10, 0x20, last]
}

/// Sends a datagram every millisecond from each VM while `change` runs, and returns the sources
/// upstream saw with counts. Probing goes on after the change until upstream has received
/// `TRANSLATED_ENOUGH` datagrams from the gateway address (the router may first need an ARP
/// retry, one second apart) — bounded by `MAX_PROBES` datagrams and `MAX_WAIT` per VM.
fn probe_during(vms: &[&Netns], upstream: &Netns, change: impl FnOnce()) -> BTreeMap<String, u32> {
    const MAX_PROBES: u32 = 8000;
    const MAX_WAIT: Duration = Duration::from_secs(8);
    const TRANSLATED_ENOUGH: u32 = 20;
    let listener = upstream.enter(|| {
        let s = UdpSocket::bind("203.0.113.1:40010").expect("bind upstream");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        s
    });
    let senders: Vec<UdpSocket> = vms
        .iter()
        .map(|vm| vm.enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind vm")))
        .collect();
    let done = AtomicBool::new(false);
    let translated = AtomicU32::new(0);
    let seen = Mutex::new(BTreeMap::new());
    let dst: SocketAddrV4 = "203.0.113.1:40010".parse().expect("dst");
    std::thread::scope(|s| {
        // Receive concurrently so the socket buffer never overflows.
        s.spawn(|| {
            let mut buf = [0u8; 16];
            loop {
                match listener.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        let src = from.ip().to_string();
                        if src == GATEWAY_IP {
                            translated.fetch_add(1, Ordering::Relaxed);
                        }
                        *seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(src)
                            .or_insert(0) += 1;
                    }
                    Err(_) if done.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
        });
        for sock in &senders {
            let done = &done;
            s.spawn(move || {
                for _ in 0..MAX_PROBES {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    // Errors (no route yet, ARP pending) are expected before the gateway exists.
                    let _ = sock.send_to(b"probe", dst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        change();
        let start = Instant::now();
        while translated.load(Ordering::Relaxed) < TRANSLATED_ENOUGH && start.elapsed() < MAX_WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A little more after the first translated ones, then stop everything.
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, Ordering::Relaxed);
    });
    seen.into_inner().unwrap_or_else(|p| p.into_inner())
}

const GATEWAY_IP: &str = "203.0.113.10";

/// Asserts that upstream saw only `gw` as source in `seen` (from [`probe_during`]), and saw
/// it at least once: some traffic made it, none of it untranslated.
fn assert_all_translated(seen: &BTreeMap<String, u32>, gw: &str, when: &str) {
    assert!(
        seen.keys().all(|src| src == gw),
        "untranslated sources reached upstream {when}: {seen:?}"
    );
    assert!(
        seen.get(gw).copied().unwrap_or(0) > 0,
        "nothing translated arrived {when}: {seen:?}"
    );
}

#[test]
fn setting_the_gateway_or_adding_an_interface_never_leaks_private_sources() {
    let h = RealiserHost::new(&[]);
    let [ext, int, int2] = h.networks([true, false, false]);
    let upstream = Netns::new("up");
    let vm = Netns::new("vm");
    let vm2 = Netns::new("vm");
    h.plug(&upstream, &names::bridge(&ext.id), "203.0.113.1/24");
    h.plug(&vm, &names::bridge(&int.id), "10.0.1.10/24");
    h.plug(&vm2, &names::bridge(&int2.id), "10.0.2.10/24");
    vm.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    vm2.ip(&["route", "add", "default", "via", "10.0.2.1"]);

    let mut spec = router(21, vec![port(&int.id, mac(1), "10.0.1.1/24")], None);
    h.call(|r| r.apply_router(&spec))
        .expect("router without gateway");

    // 1. Gateway set while the VM is sending.
    spec.gateway = Some(gateway(
        port(&ext.id, mac(9), "203.0.113.10/24"),
        "203.0.113.1",
    ));
    let seen = probe_during(&[&vm], &upstream, || {
        h.call(|r| r.apply_router(&spec)).expect("set gateway");
    });
    assert_all_translated(&seen, "203.0.113.10", "while the gateway was set");

    // 2. A second interface added while its VM is already sending.
    spec.interfaces.push(port(&int2.id, mac(2), "10.0.2.1/24"));
    let seen = probe_during(&[&vm2], &upstream, || {
        h.call(|r| r.apply_router(&spec)).expect("add interface");
    });
    assert_all_translated(&seen, "203.0.113.10", "while an interface was added");
}
