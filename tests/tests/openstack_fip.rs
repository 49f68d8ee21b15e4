//! Floating IPs and port forwardings driven by the real `openstack` CLI (openstacksdk with
//! `admin_token` auth, the daemon as endpoint; installed into the venv under `target/` that
//! `neutronclient.rs` also uses), from inside the daemon's host namespace.

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
fn openstack_cli_floating_ips_and_port_forwardings() {
    let host = Netns::new("aposf");
    let d = Daemon::start(&host);
    let venv = venv();
    let os = |args: &[&str]| openstack(&host, &d, &venv, args);
    let ext = os(&["network", "create", "--external", "pub", "-f", "json"]);
    os(&[
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
        "10.13.0.0/24",
        "privsub",
        "-f",
        "json",
    ]);
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
