//! Network segments on the node: a VXLAN network's bridge carries `vxlan-<vni>` on the
//! configured tunnel endpoint, and traffic crosses to another endpoint over it; a VLAN network
//! is refused with a clear error where the kernel has no 802.1Q, leaving nothing behind.

use router_ctl::{
    config::VxlanConfig,
    model::spec::{NetworkSpec, Segment, names},
};
use tests::{Netns, RealiserHost, ip_json, unique, veth};

#[test]
fn vxlan_network_carries_traffic_to_another_endpoint() {
    let vni = 4000 + (std::process::id() % 1000);
    let h = RealiserHost::with_vxlan(
        &[],
        Some(VxlanConfig {
            local_ip: "10.77.0.1".parse().unwrap(),
            group: None,
            peers: vec!["10.77.0.2".parse().unwrap()],
            dstport: 4789,
        }),
    );
    // The underlay: the node's endpoint and a far one, over a veth.
    let far = Netns::new("vxf");
    veth(&h.host, "und0", &far, "und1");
    h.host.ip(&["addr", "add", "10.77.0.1/24", "dev", "und0"]);
    far.ip(&["addr", "add", "10.77.0.2/24", "dev", "und1"]);
    let vx = names::vxlan_dev(vni);
    let vni_s = vni.to_string();
    far.ip(&[
        "link",
        "add",
        &vx,
        "type",
        "vxlan",
        "id",
        &vni_s,
        "local",
        "10.77.0.2",
        "remote",
        "10.77.0.1",
        "dstport",
        "4789",
    ]);
    far.ip(&["addr", "add", "10.50.0.2/24", "dev", &vx]);
    far.ip(&["link", "set", &vx, "up"]);

    let net = NetworkSpec {
        id: unique("nvx"),
        segment: Segment::Vxlan { vni },
        external: false,
    };
    h.call(|r| r.apply_network(&net))
        .expect("apply the VXLAN network");
    let br = names::bridge(&net.id);
    let dev = ip_json(&h.host.name, &["-d", "link", "show", "dev", &vx]);
    assert_eq!(dev[0]["master"], br.as_str(), "{dev}");
    let info = &dev[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], vni, "{dev}");
    assert_eq!(info["local"], "10.77.0.1", "{dev}");
    assert_eq!(info["port"], 4789, "{dev}");
    let fdb = String::from_utf8_lossy(&h.host.run("bridge", &["fdb", "show", "dev", &vx]).stdout)
        .to_string();
    assert!(
        fdb.contains("00:00:00:00:00:00 dst 10.77.0.2"),
        "flooding to the peer: {fdb}"
    );
    assert!(
        h.owned("link").contains(&vx),
        "recorded: {:?}",
        h.owned("link")
    );

    // A VM on the bridge reaches the far endpoint's address across the tunnel.
    let vm = Netns::new("vxv");
    h.plug(&vm, &br, "10.50.0.1/24");
    let ping = vm.try_run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.50.0.2"]);
    assert!(
        ping.status.success(),
        "ping over VXLAN: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let rx = far.rx_packets(&vx).unwrap();
    assert!(rx >= 3, "the far end received {rx} packets on {vx}");

    // Idempotent, then removed with its network.
    h.call(|r| r.apply_network(&net)).expect("apply again");
    h.call(|r| r.remove_network_spec(&net)).expect("remove");
    assert!(!h.host.has_link(&vx) && !h.host.has_link(&br));
    assert!(!h.owned("link").contains(&vx));
}

#[test]
fn vlan_network_is_made_or_refused_clearly() {
    let parent = unique("ten");
    let h = RealiserHost::new(&[("tenant", parent.as_str())]);
    // No dummy module on the test kernel: a veth end is the parent interface.
    h.host.veth_pair(&parent, &unique("tenp"));
    let net = NetworkSpec {
        id: unique("nvl"),
        segment: Segment::Vlan {
            physical_network: "tenant".into(),
            vlan_id: 101,
        },
        external: false,
    };
    let sub = names::vlan_dev(&parent, 101).expect("short enough");
    match h.call(|r| r.apply_network(&net)) {
        // A kernel with 802.1Q: the subinterface in the bridge.
        Ok(()) => {
            let dev = ip_json(&h.host.name, &["-d", "link", "show", "dev", &sub]);
            assert_eq!(dev[0]["linkinfo"]["info_data"]["id"], 101, "{dev}");
            assert_eq!(dev[0]["master"], names::bridge(&net.id).as_str(), "{dev}");
            h.call(|r| r.remove_network_spec(&net)).expect("remove");
            assert!(!h.host.has_link(&sub));
        }
        // This test kernel: refused, saying why, nothing left behind.
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("802.1Q") && e.contains(&net.id), "{e}");
            assert!(!h.host.has_link(&sub), "no half-made subinterface");
            assert!(!h.host.has_link(&names::bridge(&net.id)), "no bridge left");
            assert!(h.owned("link").is_empty(), "{:?}", h.owned("link"));
        }
    }
    // An unmapped physical network cannot carry a VLAN.
    let lost = NetworkSpec {
        id: unique("nvl"),
        segment: Segment::Vlan {
            physical_network: "elsewhere".into(),
            vlan_id: 7,
        },
        external: false,
    };
    let e = format!("{:#}", h.call(|r| r.apply_network(&lost)).unwrap_err());
    assert!(e.contains("elsewhere"), "{e}");
}
