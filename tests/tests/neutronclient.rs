//! Compatibility with the real OpenStack clients: the tests install `python-neutronclient` and
//! `python-openstackclient` with pip into a venv under `target/` (once; reused afterwards) and
//! drive a live daemon from inside its host namespace.
//!
//! - `tests/neutronclient_check.py` (v2_0 `Client(endpoint_url=, token=)`): an external
//!   network, subnets, a router, an interface, the gateway set with `enable_snat: False` (the
//!   seed's exact call) and cleared, with assertions on what it reads back.
//! - the `openstack` CLI (openstacksdk, `admin_token` auth with the daemon as endpoint): the
//!   same lifecycle through `router set --external-gateway` / `router unset`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tests::{Netns, daemon::Daemon, sh};

fn venv() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("..").join("target"));
    let venv = target.join("neutronclient-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import neutronclient.v2_0.client, openstackclient"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        sh(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(["python-neutronclient>=11", "python-openstackclient>=6"]));
    }
    venv
}

#[test]
fn python_neutronclient_drives_the_daemon() {
    let host = Netns::new("apinc");
    let d = Daemon::start(&host);
    let venv = venv();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("neutronclient_check.py");
    let out = host
        .cmd(&venv.join("bin/python").display().to_string())
        .arg(&script)
        .arg(d.url())
        .arg(d.admin_token())
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "neutronclient check failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// `openstack --os-auth-type admin_token ... ARGS -f json` inside the host namespace, parsed
/// (Null for commands that print nothing).
fn openstack(host: &Netns, d: &Daemon, venv: &Path, args: &[&str]) -> serde_json::Value {
    let out = host
        .cmd(&venv.join("bin/openstack").display().to_string())
        .args(["--os-auth-type", "admin_token", "--os-endpoint"])
        .arg(d.url())
        .arg("--os-token")
        .arg(d.admin_token())
        .args(args)
        .output()
        .expect("running openstack");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openstack {args:?} failed ({}):\n{stdout}\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("openstack {args:?}: {e}: {stdout}"))
    }
}

#[test]
fn openstack_cli_sets_and_clears_the_gateway() {
    let host = Netns::new("apios");
    let d = Daemon::start(&host);
    let venv = venv();
    let os = |args: &[&str]| openstack(&host, &d, &venv, args);
    let ext = os(&["network", "create", "--external", "pub", "-f", "json"]);
    assert_eq!(ext["router:external"], true, "{ext}");
    let ext_sub = os(&[
        "subnet",
        "create",
        "--network",
        "pub",
        "--subnet-range",
        "198.51.100.0/24",
        "--allocation-pool",
        "start=198.51.100.10,end=198.51.100.20",
        "pubsub",
        "-f",
        "json",
    ]);
    os(&["network", "create", "priv", "-f", "json"]);
    os(&[
        "subnet",
        "create",
        "--network",
        "priv",
        "--subnet-range",
        "10.12.0.0/24",
        "privsub",
        "-f",
        "json",
    ]);
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
