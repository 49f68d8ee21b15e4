//! Compatibility with the real OpenStack clients: the tests install `python-neutronclient` and
//! `python-openstackclient` with pip into a venv under `target/` (once; reused afterwards) and
//! drive a live daemon from inside its host namespace.
//!
//! - `tests/neutronclient_check.py` (v2_0 `Client(endpoint_url=, token=)`): an external
//!   network, subnets, a router, an interface, the gateway set with `enable_snat: False` (the
//!   seed's exact call) and cleared, with assertions on what it reads back.
//! - the `openstack` CLI (openstacksdk, `admin_token` auth with the daemon as endpoint): the
//!   same lifecycle through `router set --external-gateway` / `router unset`.

use std::path::Path;

use tests::openstack::{Cloud, networks};

#[test]
fn python_neutronclient_drives_the_daemon() {
    let cloud = Cloud::start("apinc");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("neutronclient_check.py");
    let out = cloud.python(&[script.to_str().expect("a UTF-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "neutronclient check failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        cloud.d.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn openstack_cli_sets_and_clears_the_gateway() {
    let cloud = Cloud::start("apios");
    let os = |args: &[&str]| cloud.os(args);
    let (ext, ext_sub) = networks(os, "10.12.0.0/24");
    assert_eq!(ext["router:external"], true, "{ext}");
    os(&["router", "create", "r1", "-f", "json"]);
    os(&["router", "add", "subnet", "r1", "privsub"]);
    os(&[
        "router",
        "set",
        "--external-gateway",
        "pub",
        "--disable-snat",
        "r1",
    ]);
    let r = os(&["router", "show", "r1", "-f", "json"]);
    let gw = &r["external_gateway_info"];
    assert_eq!(gw["enable_snat"], false, "{r}");
    assert_eq!(gw["network_id"], ext["id"], "{r}");
    assert_eq!(
        gw["external_fixed_ips"][0]["ip_address"], "198.51.100.10",
        "{r}"
    );
    assert_eq!(
        gw["external_fixed_ips"][0]["subnet_id"], ext_sub["id"],
        "{r}"
    );
    assert_eq!(r["interfaces_info"][0]["ip_address"], "10.12.0.1", "{r}");
    os(&["router", "unset", "--external-gateway", "r1"]);
    let r = os(&["router", "show", "r1", "-f", "json"]);
    assert!(r["external_gateway_info"].is_null(), "{r}");
    os(&["router", "remove", "subnet", "r1", "privsub"]);
    os(&["router", "delete", "r1"]);
    assert_eq!(os(&["router", "list", "-f", "json"]), serde_json::json!([]));
}
