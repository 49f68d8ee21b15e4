//! A network's `mtu` reaches the kernel: the router's `qr-`/`qg-` devices and their taps carry
//! their network's MTU from the start and follow an update of it (the bridge follows its
//! ports), and the router answers a too-big packet with Fragmentation Needed while one that
//! fits passes, as a router on a 1400-byte external link does.

use std::process::Output;

use router_ctl::model::spec::names;
use serde_json::{Value, json};
use tests::{
    Netns,
    daemon::{Daemon, expect},
    ip_json,
    topo::{Internet, tenant_network},
    unique,
};

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// The MTU of `dev` in namespace `ns`, as `ip -j link` shows it.
fn mtu(ns: &str, dev: &str) -> u64 {
    let v = ip_json(ns, &["link", "show", "dev", dev]);
    v[0]["mtu"]
        .as_u64()
        .unwrap_or_else(|| panic!("no mtu for {dev} in {ns}: {v}"))
}

/// One ping from `vm` to `dst` with DF set and an IP packet of `size` bytes (20 of IP header
/// and 8 of ICMP header around the payload), bounded to a couple of seconds.
fn df_ping(vm: &Netns, dst: &str, size: usize) -> Output {
    let payload = (size - 28).to_string();
    vm.try_run(
        "ping",
        &["-M", "do", "-s", &payload, "-c", "1", "-W", "2", dst],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn router_ports_carry_their_networks_mtu() {
    let host = Netns::new("mtu");
    let d = Daemon::start(&host);
    let inet = Internet::with_mtu(&host, &d, "mti", 60, Some(1400));
    let ext_id = inet.network_id.clone();
    let ext = expect(d.get(&format!("/v2.0/networks/{ext_id}")), 200);
    assert_eq!(ext["network"]["mtu"], 1400);
    tenant_network(&d, "tenant", "10.45.0.0/24");
    let router = d.cli_json(&["router", "create", "r1"]);
    let router_id = s(&router["id"]);
    d.cli_ok(&["router", "interface", "add", "r1", "tenant-v4"]);
    expect(
        d.put(
            &format!("/v2.0/routers/{router_id}"),
            &json!({"router": {"external_gateway_info": {"network_id": ext_id}}}),
        ),
        200,
    );
    let (_, ports) = d.get(&format!("/v2.0/ports?device_id={router_id}"));
    let port_of = |owner: &str| -> String {
        ports["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["device_owner"] == owner)
            .map(|p| s(&p["id"]))
            .unwrap_or_else(|| panic!("no {owner} port: {ports}"))
    };
    let (qr_port, qg_port) = (
        port_of("network:router_interface"),
        port_of("network:router_gateway"),
    );
    let rns = names::router_netns(&router_id);
    let (qr, qg) = (names::internal_dev(&qr_port), names::gateway_dev(&qg_port));
    let (qr_tap, qg_tap) = (names::tap_dev(&qr_port), names::tap_dev(&qg_port));
    let ext_bridge = names::bridge(&ext_id);
    let check = |want_qg: u64| {
        assert_eq!(mtu(&rns, &qg), want_qg, "{qg}\n{}", d.log());
        assert_eq!(mtu(&host.name, &qg_tap), want_qg, "{qg_tap}");
        assert_eq!(mtu(&rns, &qr), 1500, "{qr}: the tenant network's default");
        assert_eq!(mtu(&host.name, &qr_tap), 1500, "{qr_tap}");
        // The internet's veth is at 1500: the bridge takes its smallest port's MTU.
        assert_eq!(mtu(&host.name, &ext_bridge), want_qg, "{ext_bridge}");
    };
    check(1400);

    // A VM behind the router: a 1400-byte DF packet fits the external link, a bigger one gets
    // Fragmentation Needed from the router (or, the path MTU learnt, a local error).
    let vm = Netns {
        name: unique("mtv"),
    };
    d.cli_json(&["port", "create", "--network", "tenant", "--netns", &vm.name]);
    let fits = df_ping(&vm, "203.0.113.1", 1400);
    assert!(
        fits.status.success(),
        "1400 bytes with DF:\n{}\n{}",
        text(&fits),
        d.log()
    );
    let big = df_ping(&vm, "203.0.113.1", 1450);
    let out = text(&big);
    assert!(!big.status.success(), "1450 bytes with DF passed:\n{out}");
    assert!(
        out.contains("mtu = 1400") || out.contains("mtu=1400"),
        "1450 bytes with DF: no Fragmentation Needed for 1400:\n{out}"
    );

    // The network's MTU changes: the router's gateway follows, the interface stays.
    let v = expect(
        d.put(
            &format!("/v2.0/networks/{ext_id}"),
            &json!({"network": {"mtu": 1450}}),
        ),
        200,
    );
    assert_eq!(v["network"]["mtu"], 1450);
    check(1450);
}
