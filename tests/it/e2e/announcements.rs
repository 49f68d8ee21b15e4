//! Gratuitous ARP on a shared external network, end to end (`router_ebpf::arp`): a live
//! daemon in a throwaway host namespace, two routers with gateways on the external network and
//! the "internet" host (203.0.113.1, the routers' next hop) behind its bridge.
//!
//! What is shown: an announcement reaches a router that holds a neighbour entry for the
//! address (router `r1`, which has sent traffic to the host), which takes the new MAC at once;
//! a router that never asked for the address (`r2`) does not get it, and counts it; and each
//! router's own announcements, made when its gateway is set, are dropped at the other router.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use router_ctl::model::spec::names;
use tests::{
    Netns,
    daemon::Daemon,
    netns::netns_cmd,
    sh,
    topo::{self, Internet, id},
};

const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
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

#[test]
fn announcements_reach_the_routers_that_know_the_address() {
    let host = Netns::new("gah");
    let d = Daemon::start(&host);
    let internet = Internet::new(&host, &d, "gai", 40);
    let mut routers = Vec::new();
    for name in ["r1", "r2"] {
        let r = d.cli_json(&["router", "create", name]);
        topo::set_gateway(&d, name);
        routers.push(names::router_netns(&id(&r)));
    }
    let (r1_ns, r2_ns) = (&routers[0], &routers[1]);

    // r2's three announcements of its gateway address reach r1's tap, one a second from the
    // moment it was set; r1 never asked for that address.
    assert!(
        eventually(Duration::from_secs(10), || counter(&d, "r1", IGNORED) >= 3),
        "r1 ignored {} of r2's announcements\n{}",
        counter(&d, "r1", IGNORED),
        d.log()
    );

    // r1 talks to the host (and so asks for its MAC); r2 does not.
    sh(netns_cmd(r1_ns, "ping").args(["-c", "1", "-W", "2", &HOST.to_string()]));
    let (old_mac, _) = neighbour(r1_ns, HOST).expect("r1 resolved the host");
    assert_eq!(neighbour(r2_ns, HOST), None, "r2 never asked for the host");

    // The host changes its MAC and announces it (arp_notify: the kernel sends a gratuitous
    // ARP on the change). r1's entry is fresh (REACHABLE for tens of seconds), so only the
    // announcement can change it within the few seconds allowed here.
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
        eventually(Duration::from_secs(3), || neighbour(r1_ns, HOST)
            .is_some_and(|(mac, _)| mac == new_mac)),
        "r1's entry for the host did not take the announced MAC: {:?}\n{}",
        neighbour(r1_ns, HOST),
        d.log()
    );
    assert!(
        eventually(Duration::from_secs(3), || counter(&d, "r2", IGNORED)
            > r2_before),
        "r2 did not count the host's announcement as ignored\n{}",
        d.log()
    );
    assert_eq!(neighbour(r2_ns, HOST), None);
}

/// `send_arp_for_ha` (Neutron's L3 agent option) sets how many announcements a new gateway
/// address gets: with 1, the other router's tap sees exactly one, where the default sends
/// three a second apart.
#[test]
fn send_arp_for_ha_sets_how_many_announcements_go_out() {
    let host = Netns::new("gaj");
    let d = Daemon::start_configured(&host, "send_arp_for_ha = 1\n");
    let _internet = Internet::new(&host, &d, "gak", 40);
    for name in ["r1", "r2"] {
        d.cli_json(&["router", "create", name]);
        topo::set_gateway(&d, name);
    }
    assert!(
        eventually(Duration::from_secs(10), || counter(&d, "r1", IGNORED) >= 1),
        "r2's announcement never reached r1\n{}",
        d.log()
    );
    // The default's second and third frames would follow one and two seconds later.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        counter(&d, "r1", IGNORED),
        1,
        "r2's gateway was announced more than once\n{}",
        d.log()
    );
}
