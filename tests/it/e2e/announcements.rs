//! Gratuitous ARP on a shared external network, end to end (`router_ebpf::arp`, `net::arp`): a
//! live daemon in a throwaway host namespace, two routers with gateways on the external network
//! and the "internet" host (203.0.113.1, the routers' next hop) behind its bridge.
//!
//! What is shown: a router's announcements of its gateway address reach the host but not the
//! other router's tap, as no router here asked for the address (they are sent on the bridge's
//! other ports, not flooded); once the other router talks to that address, its next
//! announcement (the gateway set again at the same address, with a new MAC) is flooded and
//! that router takes the new MAC at once; and an announcement from the host reaches the router
//! that holds a neighbour entry for it (`r1`) and is dropped, and counted, at the one that does
//! not (`r2`).
use std::{
    net::Ipv4Addr,
    sync::mpsc,
    time::{Duration, Instant},
};

use router_ctl::model::spec::names;
use serde_json::json;
use tests::{
    Netns, capture,
    daemon::{Daemon, expect},
    netns::netns_cmd,
    sh,
    topo::{self, Internet, id},
};

const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Router `r2`'s gateway address, fixed so that it can be set again after a clear.
const R2_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
const IGNORED: &str = "arp_announcements_ignored";

/// Router namespace `ns`'s neighbour entry for `ip` on its gateway device: (MAC, state).
fn neighbour(ns: &str, ip: Ipv4Addr) -> Option<(String, String)> {
    let v = tests::ip_json(ns, &["link", "show"]);
    let qg = v
        .as_array()?
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .find(|n| n.starts_with("qg-"))?
        .to_string();
    tests::neighbour(ns, &qg, &ip.to_string())
}

/// `router`'s counter `name` (`router-ctl stats`).
fn counter(d: &Daemon, router: &str, name: &str) -> u64 {
    let stats = d.cli_json(&["stats", router]);
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Waits (bounded) until `cond` holds; whether it did.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets router `router_id`'s gateway on `network_id` at `ip` through the API.
fn set_gateway_at(d: &Daemon, router_id: &str, network_id: &str, ip: Ipv4Addr) {
    let gw =
        json!({"network_id": network_id, "external_fixed_ips": [{"ip_address": ip.to_string()}]});
    expect(
        d.put(
            &format!("/v2.0/routers/{router_id}"),
            &json!({"router": {"external_gateway_info": gw}}),
        ),
        200,
    );
}

/// Runs `act` while the internet host captures announcements of `ip` on its `eth0`, until
/// `want` arrived or `limit` passed; the frames seen.
fn announced_to_host(
    internet: &Internet,
    ip: Ipv4Addr,
    want: usize,
    limit: Duration,
    act: impl FnOnce(),
) -> Vec<(Vec<u8>, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let cap = s.spawn(|| {
            internet
                .ns
                .enter(|| capture::announcements("eth0", ip, want, limit, tx))
        });
        rx.recv().expect("capture ready");
        act();
        cap.join().expect("capture thread")
    })
}

#[test]
fn announcements_reach_the_routers_that_know_the_address() {
    let host = Netns::new("gah");
    let d = Daemon::start(&host);
    let internet = Internet::new(&host, &d, "gai", 40);
    let r1 = d.cli_json(&["router", "create", "r1"]);
    topo::set_gateway(&d, "r1");
    let r2 = id(&d.cli_json(&["router", "create", "r2"]));
    let (r1_ns, r2_ns) = (names::router_netns(&id(&r1)), names::router_netns(&r2));

    // r2's three announcements of its gateway address reach the host, one a second; r1 never
    // asked for that address, and its tap gets none of them.
    let heard = announced_to_host(&internet, R2_GATEWAY, 3, Duration::from_secs(10), || {
        set_gateway_at(&d, &r2, &internet.network_id, R2_GATEWAY)
    });
    assert_eq!(
        heard.len(),
        3,
        "the host heard {} of r2's announcements\n{}",
        heard.len(),
        d.log()
    );
    assert_eq!(
        counter(&d, "r1", IGNORED),
        0,
        "r2's announcements were flooded to r1's tap\n{}",
        d.log()
    );

    // r1 talks to the host (and so asks for its MAC); r2 does not.
    sh(netns_cmd(&r1_ns, "ping").args(["-c", "1", "-W", "2", &HOST.to_string()]));
    let (old_mac, _) = neighbour(&r1_ns, HOST).expect("r1 resolved the host");
    assert_eq!(neighbour(&r2_ns, HOST), None, "r2 never asked for the host");

    // The host changes its MAC and announces it (arp_notify: the kernel sends a gratuitous
    // ARP on the change), and the bridge floods it. r1's entry is fresh (REACHABLE for tens of
    // seconds), so only the announcement can change it within the few seconds allowed here.
    let r2_before = counter(&d, "r2", IGNORED);
    internet
        .ns
        .run("sysctl", &["-qw", "net.ipv4.conf.eth0.arp_notify=1"]);
    let new_mac = "02:00:5e:10:00:77";
    assert_ne!(old_mac, new_mac);
    internet
        .ns
        .ip(&["link", "set", "dev", "eth0", "address", new_mac]);
    assert!(
        eventually(Duration::from_secs(3), || neighbour(&r1_ns, HOST)
            .is_some_and(|(mac, _)| mac == new_mac)),
        "r1's entry for the host did not take the announced MAC: {:?}\n{}",
        neighbour(&r1_ns, HOST),
        d.log()
    );
    assert!(
        eventually(Duration::from_secs(3), || counter(&d, "r2", IGNORED)
            > r2_before),
        "r2 did not count the host's announcement as ignored\n{}",
        d.log()
    );
    assert_eq!(neighbour(&r2_ns, HOST), None);

    // r1 talks to r2's gateway address. r2's gateway is cleared and set again at the same
    // address: a new port, a new MAC, announced. r1 asked for the address, so the announcement
    // is flooded and r1's fresh entry takes the new MAC at once.
    sh(netns_cmd(&r1_ns, "ping").args(["-c", "1", "-W", "2", &R2_GATEWAY.to_string()]));
    let (r2_old_mac, _) = neighbour(&r1_ns, R2_GATEWAY).expect("r1 resolved r2's gateway");
    expect(
        d.put(
            &format!("/v2.0/routers/{r2}"),
            &json!({"router": {"external_gateway_info": {}}}),
        ),
        200,
    );
    set_gateway_at(&d, &r2, &internet.network_id, R2_GATEWAY);
    assert!(
        eventually(Duration::from_secs(3), || neighbour(&r1_ns, R2_GATEWAY)
            .is_some_and(|(mac, _)| mac != r2_old_mac)),
        "r1's entry for r2's gateway kept the old MAC {r2_old_mac}: {:?}\n{}",
        neighbour(&r1_ns, R2_GATEWAY),
        d.log()
    );
}

/// `send_arp_for_ha` (Neutron's L3 agent option) sets how many announcements a new gateway
/// address gets: with 1, the host behind the bridge hears exactly one, where the default
/// sends three a second apart.
#[test]
fn send_arp_for_ha_sets_how_many_announcements_go_out() {
    let host = Netns::new("gaj");
    let d = Daemon::start_configured(&host, "send_arp_for_ha = 1\n");
    let internet = Internet::new(&host, &d, "gak", 40);
    let r2 = id(&d.cli_json(&["router", "create", "r2"]));
    // The default's second and third frames would follow one and two seconds after the first.
    let heard = announced_to_host(
        &internet,
        R2_GATEWAY,
        2,
        Duration::from_millis(3500),
        || set_gateway_at(&d, &r2, &internet.network_id, R2_GATEWAY),
    );
    assert_eq!(
        heard.len(),
        1,
        "the gateway was announced {} times\n{}",
        heard.len(),
        d.log()
    );
}
