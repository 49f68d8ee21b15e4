//! Floating IPs and port forwardings driven by the real `openstack` CLI (openstacksdk with
//! `admin_token` auth, the daemon as endpoint; installed into the venv under `target/` that
//! `neutronclient.rs` also uses), from inside the daemon's host namespace.

use tests::openstack::{Cloud, networks};

#[test]
fn openstack_cli_floating_ips_and_port_forwardings() {
    let cloud = Cloud::start("aposf");
    let os = |args: &[&str]| cloud.os(args);
    let (ext, _) = networks(os, "10.13.0.0/24");
    let r = os(&["router", "create", "r1", "-f", "json"]);
    os(&["router", "add", "subnet", "r1", "privsub"]);
    os(&["router", "set", "--external-gateway", "pub", "r1"]);
    let port = os(&["port", "create", "--network", "priv", "vm", "-f", "json"]);

    let fip = os(&["floating", "ip", "create", "pub", "-f", "json"]);
    let addr = fip["floating_ip_address"]
        .as_str()
        .expect("address")
        .to_string();
    assert_eq!(fip["floating_network_id"], ext["id"], "{fip}");
    os(&["floating", "ip", "set", "--port", "vm", &addr]);
    let shown = os(&["floating", "ip", "show", &addr, "-f", "json"]);
    assert_eq!(shown["port_id"], port["id"], "{shown}");
    assert_eq!(shown["router_id"], r["id"], "{shown}");
    assert_eq!(shown["fixed_ip_address"], "10.13.0.2", "{shown}");
    let list = os(&["floating", "ip", "list", "-f", "json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    os(&["floating", "ip", "unset", "--port", &addr]);
    let shown = os(&["floating", "ip", "show", &addr, "-f", "json"]);
    assert!(shown["port_id"].is_null(), "{shown}");

    let pf = os(&[
        "floating",
        "ip",
        "port",
        "forwarding",
        "create",
        "--internal-ip-address",
        "10.13.0.2",
        "--port",
        "vm",
        "--internal-protocol-port",
        "22",
        "--external-protocol-port",
        "2222",
        "--protocol",
        "tcp",
        &addr,
        "-f",
        "json",
    ]);
    let pfs = os(&[
        "floating",
        "ip",
        "port",
        "forwarding",
        "list",
        &addr,
        "-f",
        "json",
    ]);
    assert_eq!(pfs.as_array().map(Vec::len), Some(1), "{pfs}");
    let pf_id = pf["id"].as_str().expect("pf id").to_string();
    os(&[
        "floating",
        "ip",
        "port",
        "forwarding",
        "delete",
        &addr,
        &pf_id,
    ]);
    os(&["floating", "ip", "delete", &addr]);
    assert_eq!(
        os(&["floating", "ip", "list", "-f", "json"]),
        serde_json::json!([])
    );
}
