//! The sandbox helper behind `router-ctl port create --netns`: plugging namespaces into a
//! network's bridge with a port's MAC, address and default route, in a throwaway "host"
//! namespace standing in for the daemon's. Real veths, real packets across the bridge.
use std::net::Ipv4Addr;

use router_ctl::{cli::plug, model::spec::names};
use tests::{Netns, unique};

/// Removes a namespace the helper created (by name) even if the test panics.
/// A sandbox port with a fresh id on network `net`: MAC fa:16:3e:00:00:`last`, address `ip`.
fn port(net: &str, last: u8, ip: [u8; 4]) -> plug::SandboxPort {
    plug::SandboxPort {
        id: format!("{}-port-{last}", unique("p")),
        network_id: net.into(),
        mac: [0xfa, 0x16, 0x3e, 0, 0, last],
        ip: ip.into(),
        subnet_id: "subnet".into(),
    }
}

fn out(o: std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plug_two_namespaces_into_a_bridge_and_unplug() {
    let host = Netns::new("cph");
    // Ids shaped like Neutron's; unique so parallel runs never share names.
    let net_id = format!("{}-net-0000", unique("n"));
    let bridge = names::bridge(&net_id);
    host.ip(&["link", "add", &bridge, "type", "bridge"]);
    host.ip(&["link", "set", &bridge, "up"]);

    // One VM namespace exists already, the other is created by the helper.
    let vm1 = Netns::new("cpv");
    let vm2_name = unique("cpw");
    let _vm2_guard = Netns::adopt(&vm2_name);

    let p1 = port(&net_id, 1, [10, 77, 0, 11]);
    let p2 = port(&net_id, 2, [10, 77, 0, 12]);
    let gw = Some(Ipv4Addr::new(10, 77, 0, 1));
    host.enter(|| {
        plug::preflight(&net_id).expect("bridge visible in the host namespace");
        plug::plug(&p1, &vm1.name, 24, gw).expect("plug vm1");
        plug::plug(&p2, &vm2_name, 24, gw).expect("plug vm2 (namespace created)");
    });
    assert!(
        std::path::Path::new("/run/netns").join(&vm2_name).exists(),
        "the helper created /run/netns/{vm2_name}"
    );

    // Inner ends: the port's MAC and address, a default route via the gateway; lo up.
    let link = out(vm1.ip(&["-o", "link", "show", "eth0"]));
    assert!(link.contains("fa:16:3e:00:00:01"), "{link}");
    assert!(link.contains("UP"), "{link}");
    let addr = out(vm1.ip(&["-o", "-4", "addr", "show", "eth0"]));
    assert!(addr.contains("10.77.0.11/24"), "{addr}");
    let route = out(vm1.ip(&["route", "show", "default"]));
    assert!(route.contains("via 10.77.0.1 dev eth0"), "{route}");
    let vm2 = Netns {
        name: vm2_name.clone(),
    };
    let lo = out(vm2.ip(&["-o", "link", "show", "lo"]));
    assert!(lo.contains("UP"), "lo up in the created namespace: {lo}");
    std::mem::forget(vm2); // deleted by _vm2_guard

    // Outer ends: taps enslaved to the bridge, up, marked as the helper's.
    let tap1 = names::tap_dev(&p1.id);
    let tap = out(host.ip(&["-d", "-o", "link", "show", &tap1]));
    assert!(tap.contains(&format!("master {bridge}")), "{tap}");
    assert!(
        tap.contains(&format!("alias router-ctl sandbox port {}", p1.id)),
        "{tap}"
    );

    // Real packets across the bridge.
    let ping = vm1.run("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.77.0.12"]);
    assert!(out(ping).contains("2 received"));

    // Plugging the same port again fails and leaves the existing plug alone.
    host.enter(|| {
        assert!(plug::plug(&p1, &vm1.name, 24, gw).is_err());
    });
    let addr = out(vm1.ip(&["-o", "-4", "addr", "show", "eth0"]));
    assert!(addr.contains("10.77.0.11/24"), "{addr}");

    // A tap that is not the helper's (e.g. a router port's) is never removed by unplug.
    let foreign = format!("{}-port-3", unique("c"));
    let foreign_tap = names::tap_dev(&foreign);
    host.veth_pair(&foreign_tap, "peer3");
    host.enter(|| {
        plug::unplug(&p1.id).expect("unplug vm1");
        plug::unplug(&foreign).expect("unplug of a foreign tap is a no-op");
        plug::unplug("no-such-port-at-all").expect("unplug of nothing is a no-op");
    });
    assert!(!host.has_link(&tap1), "{tap1} removed");
    assert!(!vm1.has_link("eth0"), "the inner end went with the tap");
    host.ip(&["link", "show", &foreign_tap]);
}

#[test]
fn plug_without_the_bridge_changes_nothing() {
    let host = Netns::new("cpn");
    let net_id = format!("{}-missing", unique("m"));
    let vm_name = unique("cpx");
    let _guard = Netns::adopt(&vm_name);
    let p = port(&net_id, 9, [10, 78, 0, 5]);
    host.enter(|| {
        let e = plug::preflight(&net_id).unwrap_err().to_string();
        assert!(e.contains(&names::bridge(&net_id)), "{e}");
        assert!(plug::plug(&p, &vm_name, 24, None).is_err());
    });
    assert!(
        !std::path::Path::new("/run/netns").join(&vm_name).exists(),
        "a namespace created by a failed plug is removed again"
    );
    let links = out(host.ip(&["-o", "link", "show"]));
    assert!(!links.contains(&names::tap_dev(&p.id)), "{links}");
}
