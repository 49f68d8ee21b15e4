//! The realiser against the real kernel: networks become bridges, routers become namespaces with
//! veth ports, addresses, a default route, sysctls and gratuitous ARP; re-applying changes
//! nothing; reconcile repairs and removes only what its own daemon created; a failed apply
//! leaves nothing behind.
//!
//! Each test runs its Realiser from a thread inside a throwaway host namespace (`RealiserHost`)
//! with its own state dir and bpffs; every router namespace it makes is purged on drop.

use std::{
    net::Ipv4Addr,
    sync::mpsc,
    time::{Duration, Instant},
};

use router_common::programs;
use router_ctl::model::spec::{
    DesiredState, FloatingIpSpec, NetworkSpec, PortSpec, RouterSpec, Segment, names,
};
use serde_json::Value;
use tests::{
    RealiserHost, capture, enter_named, ip_json, netns_exists, network_spec,
    spec::{gateway, port, router},
    tc_filters, unique,
};

fn mac(last: u8) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0x12, 0x34, last]
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn v4(p: &PortSpec) -> Ipv4Addr {
    p.ipv4().expect("IPv4 address").addr()
}

/// The link `dev` in namespace `ns` as `ip -j -d link show` reports it, or None.
fn link(ns: &str, dev: &str) -> Option<Value> {
    let all = ip_json(ns, &["-d", "link", "show"]);
    all.as_array()
        .expect("array")
        .iter()
        .find(|l| l["ifname"] == dev)
        .cloned()
}

/// Asserts that `dev` in namespace `ns` has no IPv6 address, not even a link-local one.
fn assert_no_ipv6(ns: &str, dev: &str) {
    let v6 = ip_json(ns, &["-6", "addr", "show", "dev", dev]);
    assert!(
        v6.as_array()
            .expect("array")
            .iter()
            .all(|l| l["addr_info"].as_array().is_none_or(|a| a.is_empty())),
        "{dev} has an IPv6 address: {v6}"
    );
}

fn is_up(l: &Value) -> bool {
    l["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "UP")
}

/// IPv4 addresses of `dev` in `ns` as "a.b.c.d/len".
fn ipv4(ns: &str, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["-4", "addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for l in v.as_array().expect("array") {
        for a in l["addr_info"].as_array().expect("addr_info") {
            out.push(format!(
                "{}/{}",
                a["local"].as_str().expect("local"),
                a["prefixlen"]
            ));
        }
    }
    out
}

/// Names of the ports of bridge `br` in `ns`.
fn bridge_ports(ns: &str, br: &str) -> Vec<String> {
    let v = ip_json(ns, &["link", "show", "master", br]);
    v.as_array()
        .expect("array")
        .iter()
        .map(|l| l["ifname"].as_str().expect("ifname").to_string())
        .collect()
}

fn default_routes(ns: &str) -> Vec<Value> {
    ip_json(ns, &["-4", "route", "show", "default"])
        .as_array()
        .expect("array")
        .clone()
}

/// Links as (name, index, MAC, up).
type Links = Vec<(String, u64, String, bool)>;

/// A comparable picture of a router namespace: links, IPv4 addresses and IPv4 routes.
fn snapshot(ns: &str) -> (Links, Value, Value) {
    let links: Links = ip_json(ns, &["link", "show"])
        .as_array()
        .expect("array")
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().expect("ifname").to_string(),
                l["ifindex"].as_u64().expect("ifindex"),
                l["address"].as_str().unwrap_or_default().to_string(),
                is_up(l),
            )
        })
        .collect();
    (
        links,
        ip_json(ns, &["-4", "addr", "show"]),
        ip_json(ns, &["-4", "route", "show", "table", "all"]),
    )
}

fn read_sysctl_in(ns: &str, key: &str) -> String {
    enter_named(ns, || {
        std::fs::read_to_string(format!("/proc/sys/net/{key}"))
            .unwrap_or_else(|e| panic!("reading {key}: {e}"))
            .trim()
            .to_string()
    })
}

#[test]
fn router_with_interface_and_gateway_is_realised_and_idempotent() {
    let h = RealiserHost::new(&[]);
    let ext = network_spec(true);
    let int = network_spec(false);
    h.call(|r| r.apply_network(&ext))
        .expect("apply external network");
    h.call(|r| r.apply_network(&int))
        .expect("apply internal network");
    // Twice: idempotent.
    h.call(|r| r.apply_network(&ext))
        .expect("re-apply external network");

    let host = h.host.name.clone();
    for n in [&ext, &int] {
        let br = names::bridge(&n.id);
        let l = link(&host, &br).unwrap_or_else(|| panic!("bridge {br} missing"));
        assert_eq!(l["linkinfo"]["info_kind"], "bridge", "{l}");
        assert!(is_up(&l), "{br} is down");
        assert!(ipv4(&host, &br).is_empty(), "{br} has an address");
        assert_no_ipv6(&host, &br);
        // No snooping, and no forward delay: with a delay the kernel arms a timer on every
        // port that comes up and announces the port again when it fires (`net::link`).
        let info = &l["linkinfo"]["info_data"];
        assert_eq!(
            (&info["mcast_snooping"], &info["forward_delay"]),
            (&0.into(), &0.into()),
            "{br}: {info}"
        );
    }

    let qr_port = port(&int.id, mac(1), "10.0.1.1/24");
    let gw_port = port(&ext.id, mac(2), "203.0.113.10/24");
    let spec = router(
        1,
        vec![qr_port.clone()],
        Some(gateway(gw_port.clone(), "203.0.113.1")),
    );
    let ns = names::router_netns(&spec.id);
    let ext_br = names::bridge(&ext.id);

    // An uplink on the external bridge (a veth whose far end stands for the wire), not made
    // by the realiser. Gratuitous ARPs are captured there and on the bridge device itself while
    // the router is applied: with no other router asking for the address, they go out on the
    // uplink alone, and the bridge floods none (`net::arp`).
    for args in [
        &[
            "link", "add", "upl0", "type", "veth", "peer", "name", "upl1",
        ][..],
        &["link", "set", "upl0", "master", &ext_br, "up"],
        &["link", "set", "upl1", "up"],
    ] {
        h.host.ip(args);
    }
    let (tx, rx) = mpsc::channel();
    let (tx_br, rx_br) = mpsc::channel();
    let (frames, flooded, applied_at) = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            h.host.enter(|| {
                capture::announcements("upl1", v4(&gw_port), 3, Duration::from_secs(15), tx)
            })
        });
        let cap_br = s.spawn(|| {
            h.host.enter(|| {
                capture::announcements(&ext_br, v4(&gw_port), 1, Duration::from_secs(4), tx_br)
            })
        });
        rx.recv().expect("capture ready");
        rx_br.recv().expect("capture ready");
        h.call(|r| r.apply_router(&spec)).expect("apply router");
        let applied_at = Instant::now();
        (
            cap.join().expect("capture thread"),
            cap_br.join().expect("capture thread"),
            applied_at,
        )
    });
    assert!(
        flooded.is_empty(),
        "the bridge flooded an announcement nobody here asked for"
    );
    // What the metrics report of it: the gateway's three frames, each sent to the ports.
    let (_, to_ports) = h.call(|r| r.announcements_sent().get());
    assert_eq!(to_ports, 3, "frames sent to the ports only");

    // Namespace and sysctls.
    assert!(netns_exists(&ns), "{ns} missing");
    // Its id in the daemon's namespace falls as router numbers rise (see `ensure_namespace`).
    let ids = tests::netns::netns_cmd(&host, "ip")
        .args(["-j", "netns", "list-id"])
        .output()
        .expect("ip netns list-id");
    let ids: Value = serde_json::from_slice(&ids.stdout).expect("ip -j netns list-id");
    assert!(
        ids.as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == ns.as_str() && e["nsid"] == 0x1000_0000 - spec.dp_id as i64),
        "{ids}"
    );
    assert_eq!(read_sysctl_in(&ns, "ipv4/ip_forward"), "1");
    assert_eq!(read_sysctl_in(&ns, "ipv4/conf/all/arp_ignore"), "1");
    assert_eq!(read_sysctl_in(&ns, "ipv4/conf/all/arp_announce"), "2");
    assert!(is_up(&link(&ns, "lo").expect("lo")), "lo down in {ns}");

    // Ports inside the router namespace.
    let qr = names::internal_dev(&qr_port.port_id);
    let qg = names::gateway_dev(&gw_port.port_id);
    for (dev, p) in [(&qr, &qr_port), (&qg, &gw_port)] {
        let l = link(&ns, dev).unwrap_or_else(|| panic!("{dev} missing in {ns}"));
        assert_eq!(l["linkinfo"]["info_kind"], "veth");
        // One queue each way (see `net::link::create_veth`), not one per possible CPU.
        assert_eq!(
            (&l["num_tx_queues"], &l["num_rx_queues"]),
            (&1.into(), &1.into()),
            "{l}"
        );
        assert_eq!(l["address"], mac_str(p.mac), "{dev} MAC");
        assert!(is_up(&l), "{dev} down");
        assert_eq!(ipv4(&ns, dev), vec![p.addresses[0].to_string()]);
    }

    // Default route via the next hop on qg-.
    let defaults = default_routes(&ns);
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0]["gateway"], "203.0.113.1");
    assert_eq!(defaults[0]["dev"], qg.as_str());

    // Taps in the right bridges of the host namespace, up.
    let qr_tap = names::tap_dev(&qr_port.port_id);
    let qg_tap = names::tap_dev(&gw_port.port_id);
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![qr_tap.clone()]
    );
    let mut ext_ports = bridge_ports(&host, &ext_br);
    ext_ports.sort();
    assert_eq!(ext_ports, vec![qg_tap.clone(), "upl0".to_string()]);
    for t in [&qr_tap, &qg_tap] {
        let l = link(&host, t).expect("tap");
        assert!(is_up(&l), "{t} down");
        // Forwarding from the start, with no forward-delay timer to come.
        assert_eq!(
            l["linkinfo"]["info_slave_data"]["state"], "forwarding",
            "{t}: {l}"
        );
        assert_eq!(
            (&l["num_tx_queues"], &l["num_rx_queues"]),
            (&1.into(), &1.into()),
            "{l}"
        );
    }
    // No IPv6 on the host-side devices (bridges and taps carry tenant frames only), even now
    // that they have carrier.
    for dev in [&ext_br, &names::bridge(&int.id), &qr_tap, &qg_tap] {
        assert_no_ipv6(&host, dev);
        let off = h.host.enter(|| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"))
                .expect("disable_ipv6")
        });
        assert_eq!(off.trim(), "1", "IPv6 on {dev}");
    }
    // Nothing leaked into the router namespace from the host or vice versa.
    assert!(link(&host, &qg).is_none() && link(&ns, &qg_tap).is_none());

    // Three gratuitous ARPs: sender = target = the gateway address, from the port MAC, to
    // broadcast; the last one arrived after apply_router had returned (sent in the background).
    assert_eq!(frames.len(), 3, "gratuitous ARPs seen: {}", frames.len());
    for (f, _) in &frames {
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast destination");
        assert_eq!(&f[6..12], &gw_port.mac, "source MAC");
        assert_eq!(&f[22..28], &gw_port.mac, "sender hardware address");
    }
    assert!(
        frames[2].1 > applied_at,
        "apply_router waited for the announcements"
    );

    // Ownership records.
    assert_eq!(h.owned("netns"), vec![ns.clone()]);
    let mut want_links = vec![
        names::bridge(&ext.id),
        names::bridge(&int.id),
        qr_tap.clone(),
        qg_tap.clone(),
    ];
    want_links.sort();
    assert_eq!(h.owned("link"), want_links);

    // Applying the same spec again changes nothing (same devices, same indexes, same routes).
    let before = snapshot(&ns);
    let host_before = (
        link(&host, &qr_tap).expect("tap")["ifindex"].clone(),
        link(&host, &qg_tap).expect("tap")["ifindex"].clone(),
    );
    h.call(|r| r.apply_router(&spec)).expect("re-apply router");
    assert_eq!(snapshot(&ns), before);
    assert_eq!(
        (
            link(&host, &qr_tap).expect("tap")["ifindex"].clone(),
            link(&host, &qg_tap).expect("tap")["ifindex"].clone(),
        ),
        host_before
    );

    // remove_router: namespace, taps and records gone; again is success.
    h.call(|r| r.remove_router(&spec.id, spec.dp_id))
        .expect("remove router");
    assert!(!netns_exists(&ns), "{ns} still there");
    assert!(link(&host, &qr_tap).is_none() && link(&host, &qg_tap).is_none());
    assert!(h.owned("netns").is_empty());
    h.call(|r| r.remove_router(&spec.id, spec.dp_id))
        .expect("remove router twice");
    h.call(|r| r.remove_network(&int.id))
        .expect("remove network");
    assert!(link(&host, &names::bridge(&int.id)).is_none());
    // The bridge is taken down in the background under its retired name, record and all, but
    // only once the realiser has been quiet for a while: kernel changes every 20 ms (each
    // takes the op lock) keep it waiting.
    let retired = names::retired_bridge(&int.id);
    for _ in 0..30 {
        h.call(|r| r.remove_network(&int.id))
            .expect("remove network again");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        link(&host, &retired).is_some() && h.owned("link").contains(&retired),
        "{retired} deleted while kernel changes went on"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while link(&host, &retired).is_some() || h.owned("link").contains(&retired) {
        assert!(
            std::time::Instant::now() < deadline,
            "{retired} still there after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    h.call(|r| r.remove_network(&int.id))
        .expect("remove network twice");
}

#[test]
fn apply_router_converges_interfaces_gateway_and_onlink_next_hop() {
    let h = RealiserHost::new(&[]);
    let [ext, int] = h.networks([true, false]);
    let host = h.host.name.clone();

    let a = port(&int.id, mac(1), "10.0.1.1/24");
    let b = port(&int.id, mac(3), "10.0.2.1/24");
    // Next hop outside the gateway's /28: an on-link /32 route comes first.
    let gw_port = port(&ext.id, mac(2), "198.51.100.10/28");
    let mut spec = router(
        7,
        vec![a.clone(), b.clone()],
        Some(gateway(gw_port.clone(), "198.51.100.100")),
    );
    let ns = names::router_netns(&spec.id);
    h.call(|r| r.apply_router(&spec)).expect("apply");
    let qg = names::gateway_dev(&gw_port.port_id);
    let routes = ip_json(&ns, &["-4", "route", "show", "198.51.100.100"]);
    let r0 = &routes.as_array().expect("array")[0];
    assert_eq!(r0["dev"], qg.as_str(), "{routes}");
    assert_eq!(r0["scope"], "link", "{routes}");
    let defaults = default_routes(&ns);
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["gateway"], "198.51.100.100");
    assert_eq!(defaults[0]["dev"], qg.as_str());

    // Interface b removed, a's MAC and address changed: converged in place.
    let qr_a = names::internal_dev(&a.port_id);
    let idx_a = link(&ns, &qr_a).expect("qr a")["ifindex"].clone();
    let mut a2 = a.clone();
    a2.mac = mac(9);
    a2.addresses = vec!["10.0.1.254/24".parse().expect("address")];
    spec.interfaces = vec![a2.clone()];
    h.call(|r| r.apply_router(&spec)).expect("apply changed");
    let la = link(&ns, &qr_a).expect("qr a");
    assert_eq!(la["ifindex"], idx_a, "device recreated instead of changed");
    assert_eq!(la["address"], mac_str(a2.mac));
    assert_eq!(ipv4(&ns, &qr_a), vec!["10.0.1.254/24".to_string()]);
    assert!(link(&ns, &names::internal_dev(&b.port_id)).is_none());
    assert!(link(&host, &names::tap_dev(&b.port_id)).is_none());
    assert!(!h.owned("link").contains(&names::tap_dev(&b.port_id)));

    // Gateway cleared: default route, on-link route, qg- and its tap gone.
    spec.gateway = None;
    h.call(|r| r.apply_router(&spec)).expect("clear gateway");
    assert!(default_routes(&ns).is_empty());
    assert!(
        ip_json(&ns, &["-4", "route", "show", "198.51.100.100"])
            .as_array()
            .expect("array")
            .is_empty()
    );
    assert!(link(&ns, &qg).is_none());
    let gw_tap = names::tap_dev(&gw_port.port_id);
    assert!(link(&host, &gw_tap).is_none());
    assert!(!h.owned("link").contains(&gw_tap));
    assert!(
        link(&ns, &qr_a).is_some(),
        "interface lost with the gateway"
    );

    // Gateway set again, inside the subnet this time: no on-link route needed.
    let gw2 = port(&ext.id, mac(4), "203.0.113.20/24");
    spec.gateway = Some(gateway(gw2.clone(), "203.0.113.1"));
    h.call(|r| r.apply_router(&spec)).expect("set gateway");
    let defaults = default_routes(&ns);
    assert_eq!(defaults[0]["gateway"], "203.0.113.1");
    assert_eq!(
        defaults[0]["dev"],
        names::gateway_dev(&gw2.port_id).as_str()
    );
    // admin_state_up false: ports down, no default route; back up: restored.
    spec.admin_state_up = false;
    h.call(|r| r.apply_router(&spec)).expect("admin down");
    assert!(!is_up(&link(&ns, &qr_a).expect("qr a")));
    assert!(default_routes(&ns).is_empty());
    spec.admin_state_up = true;
    h.call(|r| r.apply_router(&spec)).expect("admin up");
    assert!(is_up(&link(&ns, &qr_a).expect("qr a")));
    assert_eq!(default_routes(&ns)[0]["gateway"], "203.0.113.1");

    // enable_snat off: reconfigured, devices untouched.
    let before = snapshot(&ns);
    if let Some(g) = spec.gateway.as_mut() {
        g.enable_snat = false;
    }
    h.call(|r| r.apply_router(&spec)).expect("snat off");
    assert_eq!(snapshot(&ns), before);
}

#[test]
fn physical_network_uplink_is_enslaved_and_missing_uplink_is_refused() {
    let uplink = unique("up");
    let h = RealiserHost::new(&[("physnet1", uplink.as_str())]);
    let uplink_peer = unique("upp");
    h.host.veth_pair(&uplink, &uplink_peer);
    let host = h.host.name.clone();
    let mut ext = network_spec(true);
    ext.segment = Segment::Flat {
        physical_network: "physnet1".into(),
    };
    h.call(|r| r.apply_network(&ext)).expect("apply");
    let br = names::bridge(&ext.id);
    assert_eq!(bridge_ports(&host, &br), vec![uplink.clone()]);
    assert!(is_up(&link(&host, &uplink).expect("uplink")));

    // Removing the network releases the uplink (not ours: it stays).
    h.call(|r| r.remove_network(&ext.id)).expect("remove");
    let l = link(&host, &uplink).expect("uplink survives");
    assert!(l.get("master").is_none(), "{l}");

    // An unmapped physical network: a bridge without uplink.
    let mut lone = network_spec(true);
    lone.segment = Segment::Flat {
        physical_network: "nowhere".into(),
    };
    h.call(|r| r.apply_network(&lone))
        .expect("unmapped physical network");
    let lone_br = names::bridge(&lone.id);
    assert!(link(&host, &lone_br).is_some());
    assert!(bridge_ports(&host, &lone_br).is_empty());

    // Mapped to an interface that does not exist: refused, no bridge left behind.
    let h2 = RealiserHost::new(&[("physnet1", "nosuchdev0")]);
    let mut ext2 = network_spec(true);
    ext2.segment = Segment::Flat {
        physical_network: "physnet1".into(),
    };
    let err = h2
        .call(|r| r.apply_network(&ext2))
        .expect_err("missing uplink");
    assert!(format!("{err:#}").contains("nosuchdev0"), "{err:#}");
    assert!(link(&h2.host.name, &names::bridge(&ext2.id)).is_none());
    assert!(h2.owned("link").is_empty());
}

fn desired(nets: &[&NetworkSpec], routers: &[&RouterSpec]) -> DesiredState {
    DesiredState {
        networks: nets.iter().map(|n| (*n).clone()).collect(),
        routers: routers.iter().map(|r| (*r).clone()).collect(),
    }
}

/// Taps left behind (a crash between making a device and the store forgetting its port): a
/// reconcile pass removes each one whose record's router, as the store holds it then, does not
/// want it (the router gone, or there and without that port), and leaves the router's own.
#[test]
fn reconcile_removes_recorded_taps_their_router_no_longer_wants() {
    let h = RealiserHost::new(&[]);
    let [ext, int] = h.networks([true, false]);
    let qr_port = port(&int.id, mac(1), "10.0.1.1/24");
    let gw_port = port(&ext.id, mac(2), "203.0.113.10/24");
    let spec = router(
        4,
        vec![qr_port.clone()],
        Some(gateway(gw_port.clone(), "203.0.113.1")),
    );
    h.call(|r| r.apply_router(&spec)).expect("apply");
    let want = desired(&[&ext, &int], &[&spec]);

    // One leftover recorded for the router (still desired, without that port), one for a
    // router the store does not hold.
    let leftovers = [
        ("tapleftover01", spec.id.clone()),
        ("tapleftover02", "gone-router".to_string()),
    ];
    for (tap, router_id) in &leftovers {
        h.host.veth_pair(tap, &format!("x{}", &tap[3..]));
        router_ctl::net::owned::Owned::open(&h.state.path)
            .and_then(|o| {
                o.record(
                    tap,
                    &router_ctl::net::owned::Record::Tap {
                        router_id: router_id.clone(),
                    },
                )
            })
            .expect("record");
    }
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile");
    assert!(rep.failed.is_empty(), "{rep:?}");
    for (tap, _) in &leftovers {
        assert!(
            rep.removed.iter().any(|r| r == tap),
            "{tap} not removed: {rep:?}"
        );
        assert!(link(&h.host.name, tap).is_none(), "{tap} still there");
    }
    let owned = h.owned("link");
    assert!(
        !owned.iter().any(|n| n.starts_with("tapleftover")),
        "{owned:?}"
    );
    // The router's own taps and bridges stay, and a second pass has nothing to do.
    for dev in [
        names::tap_dev(&qr_port.port_id),
        names::tap_dev(&gw_port.port_id),
    ] {
        assert!(link(&h.host.name, &dev).is_some(), "{dev} removed");
        assert!(owned.contains(&dev), "{dev} record gone: {owned:?}");
    }
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile again");
    assert!(rep.removed.is_empty() && rep.failed.is_empty(), "{rep:?}");
}

#[test]
fn reconcile_repairs_a_router_namespace_deleted_from_outside() {
    let h = RealiserHost::new(&[]);
    let ext = network_spec(true);
    let int = network_spec(false);
    let qr_port = port(&int.id, mac(1), "10.0.1.1/24");
    let gw_port = port(&ext.id, mac(2), "203.0.113.10/24");
    let spec = router(
        3,
        vec![qr_port.clone()],
        Some(gateway(gw_port.clone(), "203.0.113.1")),
    );
    let want = desired(&[&ext, &int], &[&spec]);
    // Reconcile from nothing builds everything.
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile");
    assert!(rep.failed.is_empty(), "{rep:?}");
    let ns = names::router_netns(&spec.id);
    assert!(netns_exists(&ns));
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile again");
    assert!(rep.repaired.is_empty() && rep.removed.is_empty(), "{rep:?}");

    tests::ip(&["netns", "del", &ns]);
    assert!(!netns_exists(&ns));
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile repair");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert!(!rep.repaired.is_empty(), "{rep:?}");
    assert!(netns_exists(&ns), "{ns} not recreated");
    let qg = names::gateway_dev(&gw_port.port_id);
    let qr = names::internal_dev(&qr_port.port_id);
    assert_eq!(ipv4(&ns, &qg), vec!["203.0.113.10/24".to_string()]);
    assert_eq!(ipv4(&ns, &qr), vec!["10.0.1.1/24".to_string()]);
    assert_eq!(default_routes(&ns)[0]["gateway"], "203.0.113.1");
    assert_eq!(read_sysctl_in(&ns, "ipv4/ip_forward"), "1");
    let host = h.host.name.clone();
    assert_eq!(
        bridge_ports(&host, &names::bridge(&ext.id)),
        vec![names::tap_dev(&gw_port.port_id)]
    );
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![names::tap_dev(&qr_port.port_id)]
    );

    // A bridge deleted from outside comes back with its taps enslaved again.
    h.host.ip(&["link", "del", &names::bridge(&int.id)]);
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile bridge");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![names::tap_dev(&qr_port.port_id)]
    );
    assert!(is_up(
        &link(&host, &names::bridge(&int.id)).expect("bridge")
    ));

    // A device deleted from outside inside the namespace is repaired as well.
    tests::ip(&["-n", &ns, "link", "del", &qr]);
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile device");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(ipv4(&ns, &qr), vec!["10.0.1.1/24".to_string()]);
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![names::tap_dev(&qr_port.port_id)]
    );

    // A device of the right name that is not our veth (its tap is gone) is replaced.
    tests::ip(&["-n", &ns, "link", "del", &qr]);
    tests::ip(&[
        "-n", &ns, "link", "add", &qr, "type", "veth", "peer", "name", "junk0",
    ]);
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile orphan");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(ipv4(&ns, &qr), vec!["10.0.1.1/24".to_string()]);
    assert!(link(&ns, "junk0").is_none(), "foreign peer kept");
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![names::tap_dev(&qr_port.port_id)]
    );
    let rep = h.call(|r| r.reconcile(&want)).expect("steady");
    assert!(rep.repaired.is_empty(), "{rep:?}");

    // A tap's MTU changed from outside is put back by the next pass (the port's network MTU).
    let qr_tap = names::tap_dev(&qr_port.port_id);
    h.host.ip(&["link", "set", "dev", &qr_tap, "mtu", "1280"]);
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile mtu");
    assert!(rep.failed.is_empty() && !rep.repaired.is_empty(), "{rep:?}");
    assert_eq!(link(&host, &qr_tap).expect("tap")["mtu"], qr_port.mtu);
    assert_eq!(link(&ns, &qr).expect("qr")["mtu"], qr_port.mtu);

    // A tap renamed from outside. A pass looks up only the links the kernel announced as
    // changed since the last one (it dumps once): the old name, found by its ifindex, is gone,
    // so the port is built again and the renamed pair goes with its inner end.
    h.host.ip(&["link", "set", "dev", &qr_tap, "down"]);
    h.host
        .ip(&["link", "set", "dev", &qr_tap, "name", "junktap0"]);
    let rep = h.call(|r| r.reconcile(&want)).expect("reconcile rename");
    assert!(rep.failed.is_empty() && !rep.repaired.is_empty(), "{rep:?}");
    assert!(link(&host, "junktap0").is_none(), "renamed tap kept");
    assert!(is_up(&link(&host, &qr_tap).expect("tap")));
    assert_eq!(
        bridge_ports(&host, &names::bridge(&int.id)),
        vec![qr_tap.clone()]
    );
    assert_eq!(ipv4(&ns, &qr), vec!["10.0.1.1/24".to_string()]);
    let rep = h.call(|r| r.reconcile(&want)).expect("steady after rename");
    assert!(rep.repaired.is_empty(), "{rep:?}");

    // Changes made inside the namespace (invisible from the host) are repaired by the next
    // full pass, at most FULL_CHECK_EVERY passes away.
    tests::ip(&["-n", &ns, "route", "del", "default"]);
    tests::ip(&["-n", &ns, "addr", "flush", "dev", &qg]);
    tests::netns::netns_cmd(&ns, "sysctl")
        .args(["-qw", "net.ipv4.ip_forward=0"])
        .status()
        .expect("sysctl");
    let mut passes = 0;
    while default_routes(&ns).is_empty() {
        assert!(
            passes <= router_ctl::realise::FULL_CHECK_EVERY,
            "not repaired after {passes} passes"
        );
        let rep = h.call(|r| r.reconcile(&want)).expect("reconcile inside");
        assert!(rep.failed.is_empty(), "{rep:?}");
        passes += 1;
    }
    assert_eq!(ipv4(&ns, &qg), vec!["203.0.113.10/24".to_string()]);
    assert_eq!(default_routes(&ns)[0]["gateway"], "203.0.113.1");
    // The same pass wrote the sysctls again (any pass but the start-up resync does).
    assert_eq!(read_sysctl_in(&ns, "ipv4/ip_forward"), "1");

    // The programs' filters removed from outside (clsact qdisc deleted on both taps) are put
    // back by the next full pass. With a floating IP, the interface tap carries the hairpin
    // hook too.
    let gw_tap = names::tap_dev(&gw_port.port_id);
    let qr_tap = names::tap_dev(&qr_port.port_id);
    let progs = |dev: &str, hook: &str| -> Vec<String> {
        tc_filters(&h.host, dev, hook)
            .into_iter()
            .map(|f| f.prog)
            .collect()
    };
    assert!(
        progs(&qr_tap, "egress").is_empty(),
        "no FIP, no hairpin hook"
    );
    let mut with_fip = spec.clone();
    with_fip.floating_ips = vec![FloatingIpSpec {
        floating_ip: "203.0.113.50".parse().expect("ip"),
        fixed_ip: Some("10.0.1.5".parse().expect("ip")),
    }];
    let want = desired(&[&ext, &int], &[&with_fip]);
    h.call(|r| r.apply_router(&with_fip))
        .expect("apply with a FIP");
    let want_filters = || {
        progs(&gw_tap, "ingress") == [programs::SNAT_OUT]
            && progs(&gw_tap, "egress") == [programs::SNAT_IN]
            && progs(&qr_tap, "egress") == [programs::INTERNAL_IN]
            && progs(&qr_tap, "ingress").is_empty()
    };
    assert!(want_filters());
    h.host
        .run("tc", &["qdisc", "del", "dev", &gw_tap, "clsact"]);
    h.host
        .run("tc", &["qdisc", "del", "dev", &qr_tap, "clsact"]);
    assert!(progs(&gw_tap, "ingress").is_empty());
    let mut passes = 0;
    let mut reported = Vec::new();
    while !want_filters() {
        assert!(
            passes <= router_ctl::realise::FULL_CHECK_EVERY,
            "filters not restored after {passes} passes"
        );
        let rep = h.call(|r| r.reconcile(&want)).expect("reconcile filters");
        assert!(rep.failed.is_empty(), "{rep:?}");
        reported.extend(rep.repaired);
        passes += 1;
    }
    for tap in [&gw_tap, &qr_tap] {
        assert!(
            reported
                .iter()
                .any(|r| r.ends_with(&format!("filters on {tap}"))),
            "{reported:?}"
        );
    }
}

/// The shared filter blocks a device's ingress and egress hooks are bound to
/// (`tc -j qdisc show`), in namespace `ns`.
fn qdisc_blocks(ns: &str, dev: &str) -> (Option<u64>, Option<u64>) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["tc", "-j", "qdisc", "show", "dev", dev])
        .output()
        .expect("nsenter tc");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let q = v
        .as_array()
        .and_then(|a| a.iter().find(|q| q["parent"] == "ffff:fff1"))
        .cloned()
        .unwrap_or(Value::Null);
    (q["ingress_block"].as_u64(), q["egress_block"].as_u64())
}

/// The names of the programs of the filters of shared block `block` in namespace `ns`.
fn block_progs(ns: &str, block: u32) -> Vec<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["tc", "-j", "filter", "show", "block", &block.to_string()])
        .output()
        .expect("nsenter tc");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["options"]["prog"]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn gateway_taps_share_filter_blocks_and_a_router_its_own() {
    use router_ctl::datapath::filter::{ROUTER_BLOCK, tap_blocks};
    let h = RealiserHost::new(&[]);
    let [ext, int1, int2] = h.networks([true, false, false]);
    let r1 = router(
        5,
        vec![port(&int1.id, mac(1), "10.0.1.1/24")],
        Some(gateway(
            port(&ext.id, mac(2), "203.0.113.10/24"),
            "203.0.113.1",
        )),
    );
    let r2 = router(
        6,
        vec![port(&int2.id, mac(3), "10.0.2.1/24")],
        Some(gateway(
            port(&ext.id, mac(4), "203.0.113.11/24"),
            "203.0.113.1",
        )),
    );
    h.call(|r| r.apply_router(&r1)).expect("apply router 1");
    h.call(|r| r.apply_router(&r2)).expect("apply router 2");
    let host = h.host.name.clone();
    let gw_tap =
        |r: &RouterSpec| names::tap_dev(&r.gateway.as_ref().expect("gateway").port.port_id);
    let (tap1, tap2) = (gw_tap(&r1), gw_tap(&r2));
    let blocks = |tap: &str| {
        let idx = link(&host, tap).unwrap_or_else(|| panic!("{tap} missing"))["ifindex"]
            .as_u64()
            .expect("ifindex") as u32;
        tap_blocks(idx)
    };
    let (b1, b2) = (blocks(&tap1), blocks(&tap2));
    for (tap, (ingress, egress)) in [(&tap1, b1), (&tap2, b2)] {
        assert_eq!(
            qdisc_blocks(&host, tap),
            (Some(u64::from(ingress)), Some(u64::from(egress))),
            "{tap}"
        );
        // One filter per block, whatever the taps bound to it, shown through each tap too.
        assert_eq!(block_progs(&host, ingress), [programs::SNAT_OUT]);
        assert_eq!(block_progs(&host, egress), [programs::SNAT_IN]);
        let progs: Vec<String> = tc_filters(&h.host, tap, "ingress")
            .into_iter()
            .map(|f| f.prog)
            .collect();
        assert_eq!(progs, [programs::SNAT_OUT], "{tap}");
    }
    // Inside each router, its two devices share the router's block (the fast path).
    for r in [&r1, &r2] {
        let ns = names::router_netns(&r.id);
        let qg = names::gateway_dev(&r.gateway.as_ref().expect("gateway").port.port_id);
        let qr = names::internal_dev(&r.interfaces[0].port_id);
        for dev in [&qg, &qr] {
            assert_eq!(
                qdisc_blocks(&ns, dev),
                (Some(u64::from(ROUTER_BLOCK)), None),
                "{dev} in {ns}"
            );
        }
        assert_eq!(block_progs(&ns, ROUTER_BLOCK), [programs::FAST_FWD], "{ns}");
        // After each bind, the namespace's `lo` bound and unbound the block again, to drop it
        // from the kernel's host-wide list (`datapath::unlist`): `lo` has no qdisc left, and
        // the router's devices stay bound (above).
        assert_eq!(qdisc_blocks(&ns, "lo"), (None, None), "{ns}");
    }

    // Router 1 loses its gateway: its tap leaves the blocks, router 2's keeps its programs.
    let mut r1_off = r1.clone();
    r1_off.gateway = None;
    h.call(|r| r.apply_router(&r1_off))
        .expect("clear gateway 1");
    assert_eq!(
        qdisc_blocks(&host, &tap1),
        (None, None),
        "{tap1} is gone or unbound"
    );
    assert_eq!(
        qdisc_blocks(&host, &tap2),
        (Some(u64::from(b2.0)), Some(u64::from(b2.1)))
    );
    assert_eq!(block_progs(&host, b2.0), [programs::SNAT_OUT]);
    assert_eq!(block_progs(&host, b2.1), [programs::SNAT_IN]);
}

#[test]
fn each_bind_of_a_router_block_is_followed_by_an_unlisting_on_lo() {
    use router_ctl::datapath::filter::ROUTER_BLOCK;
    let h = RealiserHost::new(&[]);
    let [ext, int1, int2] = h.networks([true, false, false]);
    let gw = gateway(port(&ext.id, mac(2), "203.0.113.12/24"), "203.0.113.1");
    let mut spec = router(7, vec![port(&int1.id, mac(1), "10.0.1.1/24")], Some(gw));
    h.call(|r| r.apply_router(&spec)).expect("apply");
    let ns = names::router_netns(&spec.id);

    // A second interface binds its device to the block; the kernel's notifications in the
    // router namespace show `lo` bound to the same block and unbound right after
    // (`datapath::unlist`), which is what drops the block from the kernel's list.
    let mut monitor = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["stdbuf", "-oL", "tc", "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tc monitor");
    std::thread::sleep(Duration::from_millis(300));
    let qr2 = port(&int2.id, mac(3), "10.0.2.1/24");
    spec.interfaces.push(qr2.clone());
    h.call(|r| r.apply_router(&spec))
        .expect("apply with a second interface");
    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().expect("tc monitor output");
    let events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qdisc"))
        .map(str::to_string)
        .collect();
    let qr2_dev = names::internal_dev(&qr2.port_id);
    let block = format!("ingress_block {ROUTER_BLOCK}");
    let at = |pred: &dyn Fn(&str) -> bool| events.iter().position(|l| pred(l));
    let bound = at(&|l| l.contains(&format!("dev {qr2_dev} ")) && l.contains(&block));
    let lo_bound =
        at(&|l| !l.starts_with("deleted") && l.contains("dev lo ") && l.contains(&block));
    let lo_unbound = at(&|l| l.starts_with("deleted") && l.contains("dev lo "));
    assert!(
        matches!((bound, lo_bound, lo_unbound), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "expected {qr2_dev} bound, then lo bound and unbound: {events:#?}"
    );
    assert_eq!(qdisc_blocks(&ns, "lo"), (None, None), "{ns}");
    assert_eq!(
        qdisc_blocks(&ns, &qr2_dev),
        (Some(u64::from(ROUTER_BLOCK)), None)
    );
    assert_eq!(block_progs(&ns, ROUTER_BLOCK), [programs::FAST_FWD], "{ns}");
}

#[test]
fn hairpin_hook_is_attached_only_while_the_router_has_floating_ips() {
    let mut h = RealiserHost::new(&[]);
    let [ext, int1, int2] = h.networks([true, false, false]);
    let qr1 = port(&int1.id, mac(1), "10.0.1.1/24");
    let qr2 = port(&int2.id, mac(3), "10.0.2.1/24");
    let gw = gateway(port(&ext.id, mac(2), "203.0.113.10/24"), "203.0.113.1");
    let (tap1, tap2) = (names::tap_dev(&qr1.port_id), names::tap_dev(&qr2.port_id));
    let progs = |h: &RealiserHost, dev: &str| -> (Vec<String>, Vec<String>) {
        let names = |hook: &str| -> Vec<String> {
            tc_filters(&h.host, dev, hook)
                .into_iter()
                .map(|f| f.prog)
                .collect()
        };
        (names("egress"), names("ingress"))
    };
    let none = (Vec::<String>::new(), Vec::<String>::new());
    let hairpin = (
        vec![programs::INTERNAL_IN.to_string()],
        Vec::<String>::new(),
    );

    // No floating IP: the interface tap runs nothing.
    let mut spec = router(4, vec![qr1.clone()], Some(gw.clone()));
    h.call(|r| r.apply_router(&spec)).expect("apply");
    assert_eq!(progs(&h, &tap1), none, "router without FIPs");

    // A port forwarding (its FIP not associated) is enough for the hook.
    spec.floating_ips = vec![FloatingIpSpec {
        floating_ip: "203.0.113.51".parse().expect("ip"),
        fixed_ip: None,
    }];
    spec.port_forwardings = vec![router_ctl::model::spec::PortForwardingSpec {
        protocol: 6,
        floating_ip: "203.0.113.51".parse().expect("ip"),
        external_port: 2222,
        internal_ip: "10.0.1.5".parse().expect("ip"),
        internal_port: 22,
    }];
    h.call(|r| r.apply_router(&spec))
        .expect("apply with a port forwarding");
    assert_eq!(progs(&h, &tap1), hairpin, "port forwarding");

    // An interface added to such a router gets the hook too; a FIP as well as the forwarding.
    spec.interfaces.push(qr2.clone());
    spec.floating_ips.push(FloatingIpSpec {
        floating_ip: "203.0.113.50".parse().expect("ip"),
        fixed_ip: Some("10.0.2.5".parse().expect("ip")),
    });
    h.call(|r| r.apply_router(&spec))
        .expect("apply with a second interface");
    assert_eq!(progs(&h, &tap1), hairpin);
    assert_eq!(progs(&h, &tap2), hairpin, "the new interface's tap");

    // A restart keeps the hook on both (the new run's program in place of the old one).
    h.restart(&[]);
    let want = desired(&[&ext, &int1, &int2], &[&spec]);
    let rep = h
        .call(|r| r.reconcile(&want))
        .expect("reconcile after restart");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(progs(&h, &tap1), hairpin, "after a restart");
    assert_eq!(progs(&h, &tap2), hairpin, "after a restart");

    // The forwarding gone, the FIP keeps the hook; the last one gone, it is off every tap.
    spec.port_forwardings.clear();
    spec.floating_ips.retain(|f| f.fixed_ip.is_some());
    h.call(|r| r.apply_router(&spec))
        .expect("apply with the FIP only");
    assert_eq!(progs(&h, &tap1), hairpin);
    spec.floating_ips.clear();
    h.call(|r| r.apply_router(&spec))
        .expect("apply without FIPs");
    assert_eq!(progs(&h, &tap1), none, "last FIP gone");
    assert_eq!(progs(&h, &tap2), none, "last FIP gone");

    // A restart of a router without FIPs leaves its taps without hooks, and a reconcile pass
    // (full: the first after a start) does not put them back.
    h.restart(&[]);
    let want = desired(&[&ext, &int1, &int2], &[&spec]);
    for _ in 0..2 {
        let rep = h.call(|r| r.reconcile(&want)).expect("reconcile");
        assert!(rep.failed.is_empty(), "{rep:?}");
    }
    assert_eq!(progs(&h, &tap1), none, "after a restart without FIPs");
    assert_eq!(progs(&h, &tap2), none, "after a restart without FIPs");

    // A filter a previous run left on a tap of a router without FIPs goes at the first
    // converge of the next run.
    spec.floating_ips = vec![FloatingIpSpec {
        floating_ip: "203.0.113.50".parse().expect("ip"),
        fixed_ip: Some("10.0.2.5".parse().expect("ip")),
    }];
    h.call(|r| r.apply_router(&spec))
        .expect("apply with a FIP again");
    assert_eq!(progs(&h, &tap2), hairpin);
    h.restart(&[]);
    spec.floating_ips.clear();
    h.call(|r| r.apply_router(&spec))
        .expect("apply without FIPs after restart");
    assert_eq!(
        progs(&h, &tap1),
        none,
        "stale filter removed after a restart"
    );
    assert_eq!(
        progs(&h, &tap2),
        none,
        "stale filter removed after a restart"
    );
}

#[test]
fn reconcile_removes_own_stale_routers_and_leaves_another_daemons_alone() {
    let h1 = RealiserHost::new(&[]);
    let h2 = RealiserHost::new(&[]);
    let mut specs = Vec::new();
    for h in [&h1, &h2] {
        let [ext, int] = h.networks([true, false]);
        let spec = router(
            1,
            vec![port(&int.id, mac(1), "10.0.1.1/24")],
            Some(gateway(
                port(&ext.id, mac(2), "203.0.113.10/24"),
                "203.0.113.1",
            )),
        );
        h.call(|r| r.apply_router(&spec)).expect("apply");
        specs.push((ext, int, spec));
    }
    let ns1 = names::router_netns(&specs[0].2.id);
    let ns2 = names::router_netns(&specs[1].2.id);

    // While its database still holds them, reconcile leaves daemon 1's objects alone: nothing
    // to remove, nothing to repair.
    let rep = h1
        .call(|r| r.reconcile(&desired(&[&specs[0].0, &specs[0].1], &[&specs[0].2])))
        .expect("steady reconcile");
    assert!(
        rep.removed.is_empty() && rep.repaired.is_empty() && rep.failed.is_empty(),
        "{rep:?}"
    );
    assert!(netns_exists(&ns1));

    // Daemon 1's database lost its router and networks: its objects go, daemon 2's stay.
    let rep = h1
        .call(|r| r.reconcile(&DesiredState::default()))
        .expect("reconcile");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert!(rep.removed.contains(&ns1), "{rep:?}");
    assert!(!netns_exists(&ns1), "{ns1} survived");
    assert!(h1.owned("netns").is_empty() && h1.owned("link").is_empty());
    let host1 = h1.host.name.clone();
    assert!(link(&host1, &names::bridge(&specs[0].0.id)).is_none());
    assert!(link(&host1, &names::tap_dev(&specs[0].2.interfaces[0].port_id)).is_none());

    assert!(netns_exists(&ns2), "another daemon's router was touched");
    let host2 = h2.host.name.clone();
    assert_eq!(
        bridge_ports(&host2, &names::bridge(&specs[1].1.id)),
        vec![names::tap_dev(&specs[1].2.interfaces[0].port_id)]
    );
    assert_eq!(default_routes(&ns2).len(), 1);

    // A foreign qrouter namespace with a desired id is not adopted by daemon 1.
    let rep = h1
        .call(|r| r.reconcile(&desired(&[&specs[1].0, &specs[1].1], &[&specs[1].2])))
        .expect("reconcile foreign");
    assert!(
        rep.failed
            .iter()
            .any(|f| f.contains("not created by this daemon")),
        "{rep:?}"
    );
    assert!(netns_exists(&ns2));
    assert_eq!(default_routes(&ns2).len(), 1);
    let rep = h1
        .call(|r| r.reconcile(&DesiredState::default()))
        .expect("cleanup");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert!(netns_exists(&ns2), "another daemon's router removed");
}

#[test]
fn failed_apply_leaves_no_objects_behind() {
    let h = RealiserHost::new(&[]);
    let host = h.host.name.clone();
    let [ext, int] = h.networks([true, false]);
    let bridges_only = {
        let mut v = vec![names::bridge(&ext.id), names::bridge(&int.id)];
        v.sort();
        v
    };
    let host_links = || {
        let mut v: Vec<String> = ip_json(&host, &["link", "show"])
            .as_array()
            .expect("array")
            .iter()
            .map(|l| l["ifname"].as_str().expect("name").to_string())
            .collect();
        v.sort();
        v
    };
    let links_before = host_links();

    // A port on a network whose bridge does not exist.
    let ghost = network_spec(false);
    let spec = router(1, vec![port(&ghost.id, mac(1), "10.0.1.1/24")], None);
    let err = h
        .call(|r| r.apply_router(&spec))
        .expect_err("missing bridge");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    assert!(!netns_exists(&names::router_netns(&spec.id)));

    // An invalid (multicast) MAC.
    let mut p = port(&int.id, mac(1), "10.0.1.1/24");
    p.mac = [0x01, 0, 0x5e, 0, 0, 1];
    let spec = router(2, vec![p], None);
    let err = h.call(|r| r.apply_router(&spec)).expect_err("bad MAC");
    assert!(format!("{err:#}").contains("unicast"), "{err:#}");
    assert!(!netns_exists(&names::router_netns(&spec.id)));

    // Midway: the namespace and the first port are made, then the second port's device name is
    // taken by a device this daemon did not create. Everything made by the call is removed.
    let a = port(&int.id, mac(1), "10.0.1.1/24");
    let b = port(&ext.id, mac(2), "203.0.113.10/24");
    let squatter = names::tap_dev(&b.port_id);
    let squatter_peer = unique("sq");
    h.host.veth_pair(&squatter, &squatter_peer);
    let links_before = {
        let mut v = links_before;
        v.push(squatter.clone());
        v.push(squatter_peer.clone());
        v.sort();
        v
    };
    let spec = router(3, vec![a.clone()], Some(gateway(b, "203.0.113.1")));
    let err = h
        .call(|r| r.apply_router(&spec))
        .expect_err("taken device name");
    assert!(
        format!("{err:#}").contains("not created by this daemon"),
        "{err:#}"
    );
    assert!(
        !netns_exists(&names::router_netns(&spec.id)),
        "namespace left"
    );
    assert_eq!(host_links(), links_before, "devices left in the host");
    assert!(link(&host, &squatter).is_some(), "foreign device touched");
    assert!(h.owned("netns").is_empty());
    assert_eq!(h.owned("link"), bridges_only);

    // The same router without the conflict works afterwards.
    let spec = router(3, vec![a], None);
    h.call(|r| r.apply_router(&spec))
        .expect("apply after failure");
    assert!(netns_exists(&names::router_netns(&spec.id)));
}
