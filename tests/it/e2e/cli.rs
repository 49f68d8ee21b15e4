//! `router-ctl` end to end: the CLI drives a live daemon in a throwaway host namespace, a VM
//! namespace plugged by `port create --netns` reaches an "internet" namespace through the
//! router, the internet sees the gateway IP (SNAT), and `gateway clear` stops it.
use std::time::Duration;

use router_ctl::model::spec::names;
use serde_json::Value;
use tests::{
    Netns,
    daemon::DaemonOptions,
    topo::{self, INTERNET_IP as INTERNET, INTERNET_PORT as PORT, RouterSite, id},
};

/// Connects from inside the site's VM to the internet server; returns whether the handshake
/// completed.
fn connect_from(site: &RouterSite) -> bool {
    site.connect(Duration::from_secs(2)).is_ok()
}

/// The demo topology through the CLI ([`RouterSite`]), its daemon with default settings.
fn topology() -> RouterSite {
    let site = RouterSite::start(
        Netns::new("ceh"),
        DaemonOptions::default(),
        "ce",
        "10.30.0.0/24",
    );
    assert_eq!(
        site.vm_port["device_owner"], "compute:sandbox",
        "{}",
        site.vm_port
    );
    site
}

/// Connects from the VM to the internet (failing with `what` and the daemon's log when it
/// cannot); returns the source address the internet saw.
fn source_seen(t: &RouterSite, what: &str) -> String {
    assert!(connect_from(t), "{what}\n{}", t.d.log());
    let (_, seen) = t
        .accepted()
        .expect("the server accepted the VM's connection");
    seen.ip().to_string()
}

/// `gateway set r1 public`; returns the gateway IP.
fn set_gateway(t: &RouterSite) -> String {
    let (r, ip) = topo::set_gateway(&t.d, "r1");
    assert_eq!(
        r["external_gateway_info"]["network_id"],
        t.inet.network_id.as_str()
    );
    ip
}

#[test]
fn cli_gateway_set_snats_real_traffic_and_clear_stops_it() {
    let t = topology();
    let (d, site) = (&t.d, &t);

    // No gateway yet: no way out.
    assert!(
        !connect_from(site),
        "reached the internet before gateway set"
    );

    // The call the seed traces: router-gateway-set.
    let gw = set_gateway(&t);
    let table = d.cli_ok(&["router", "list"]);
    assert!(table.contains(&gw) && table.contains("r1"), "{table}");

    // Real traffic: the internet sees the gateway IP, never the VM's.
    let seen = source_seen(&t, "the VM cannot reach the internet after gateway set");
    assert_eq!(seen, gw, "SNAT to the gateway IP (VM is {})", t.vm_ip);
    let ping = site
        .vm
        .try_run("ping", &["-c", "2", "-i", "0.2", "-W", "2", "203.0.113.1"]);
    assert!(ping.status.success(), "ping through the router failed");

    // Errors: the NeutronError message, a non-zero exit, nothing changed.
    let e = d.cli_err(&["gateway", "set", "r1", "tenant"]);
    assert!(e.contains("router-ctl: error:"), "{e}");
    let e = d.cli_err(&["router", "show", "nope"]);
    assert!(e.contains("no router named or with id `nope`"), "{e}");
    d.cli_ok(&["network", "create", "dup"]);
    d.cli_ok(&["network", "create", "dup"]);
    let e = d.cli_err(&["network", "show", "dup"]);
    assert!(e.contains("2 networks are named `dup`"), "{e}");
    let r = d.cli_json(&["router", "show", "r1"]);
    assert_eq!(
        r["external_gateway_info"]["network_id"],
        t.inet.network_id.as_str()
    );

    // gateway clear: the router has no way out any more.
    let r = d.cli_json(&["gateway", "clear", "r1"]);
    assert!(
        r["external_gateway_info"].is_null()
            || r["external_gateway_info"]
                .as_object()
                .is_some_and(|o| o.is_empty()),
        "{r}"
    );
    assert!(
        !connect_from(site),
        "the VM still reaches the internet after gateway clear"
    );
    assert_eq!(t.accepted().map(|(_, a)| a), None);
    let ping = site
        .vm
        .try_run("ping", &["-c", "1", "-W", "1", "203.0.113.1"]);
    assert!(
        !ping.status.success(),
        "ping still answered after gateway clear"
    );

    // --disable-snat and --fixed-ip (names resolved): the chosen address, no translation — the
    // internet (given a route back) sees the VM's own address.
    let r = d.cli_json(&[
        "gateway",
        "set",
        "r1",
        "public",
        "--disable-snat",
        "--fixed-ip",
        "subnet=public-v4,ip=203.0.113.33",
    ]);
    let info = &r["external_gateway_info"];
    assert_eq!(info["enable_snat"], false, "{r}");
    assert_eq!(
        info["external_fixed_ips"][0]["ip_address"], "203.0.113.33",
        "{r}"
    );
    t.inet
        .ns
        .ip(&["route", "add", "10.30.0.0/24", "via", "203.0.113.33"]);
    let seen = source_seen(&t, "no route through the router without SNAT");
    assert_eq!(seen, t.vm_ip, "no SNAT with --disable-snat");
    d.cli_ok(&["gateway", "clear", "r1"]);
    assert!(
        !connect_from(site),
        "the VM still reaches the internet after gateway clear"
    );

    // port delete removes the sandbox veth with the port.
    let port_id = id(&t.vm_port);
    let tap = names::tap_dev(&port_id);
    t.host.ip(&["link", "show", &tap]);
    d.cli_ok(&["port", "delete", &port_id]);
    assert!(
        !t.host.has_link(&tap),
        "{tap} still exists after port delete"
    );

    // Detach and delete the router through the CLI: its namespace goes with it.
    d.cli_ok(&["router", "interface", "remove", "r1", "tenant-v4"]);
    let e = d.cli_err(&["router", "interface", "remove", "r1", "tenant-v4"]);
    assert!(e.contains("router-ctl: error:"), "{e}");
    d.cli_ok(&["router", "delete", "r1"]);
    assert!(
        !std::path::Path::new("/run/netns")
            .join(names::router_netns(&t.router_id()))
            .exists(),
        "qrouter namespace left after router delete"
    );
    let routers = d.cli_json(&["router", "list"]);
    assert_eq!(routers, serde_json::json!([]));
}

#[test]
fn cli_sessions_and_stats_show_the_nat_table() {
    let t = topology();
    let d = &t.d;
    let gw = set_gateway(&t);
    assert!(
        connect_from(&t),
        "the VM cannot reach the internet\n{}",
        d.log()
    );
    let vm_ip = &t.vm_ip;

    let sessions = d.cli_json(&["sessions", &t.router_id()]);
    let list = sessions.as_array().expect("sessions is a list");
    assert!(
        list.iter().any(|s| s["protocol"] == "tcp"
            && s["kind"] == "snat"
            && s["translated"]
                .as_str()
                .is_some_and(|x| x.starts_with(&format!("{gw}:")))
            && s["remote"] == format!("{INTERNET}:{PORT}").as_str()
            && s["internal"]
                .as_str()
                .is_some_and(|i| i.starts_with(&format!("{vm_ip}:")))),
        "no TCP session {vm_ip} -> {gw} -> {INTERNET}:{PORT} in {sessions}"
    );
    let table = d.cli_ok(&["sessions", "r1"]);
    assert!(
        table.contains(&format!("{INTERNET}:{PORT}")) && table.contains(&gw),
        "{table}"
    );

    let stats = d.cli_json(&["stats", "r1"]);
    let m = stats.as_object().expect("stats is an object");
    assert!(m.values().all(Value::is_u64), "{stats}");
    assert!(
        m.get("sessions_created").and_then(Value::as_u64) >= Some(1),
        "{stats}"
    );
    let table = d.cli_ok(&["stats", "r1"]);
    assert!(table.contains("sessions_created"), "{table}");

    d.cli_ok(&["gateway", "clear", "r1"]);
    let sessions = d.cli_json(&["sessions", "r1"]);
    assert_eq!(
        sessions,
        serde_json::json!([]),
        "gateway clear flushes the sessions"
    );
}
