//! The real OpenStack clients for compatibility tests: `python-neutronclient` and
//! `python-openstackclient` installed with pip into a venv under `target/` (once, reused), run
//! inside a daemon's host namespace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Netns, daemon::Daemon, sh};

/// The venv holding both clients, created on first use.
pub fn venv() -> PathBuf {
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
pub fn openstack(host: &Netns, d: &Daemon, venv: &Path, args: &[&str]) -> serde_json::Value {
    let out = host
        .cmd(venv.join("bin/openstack"))
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

/// A daemon in a throwaway host namespace with the clients' venv ready, for `openstack`
/// commands against it.
pub struct Cloud {
    // Field order is drop order: the daemon (killed and purged) before its namespace.
    pub d: Daemon,
    pub host: Netns,
    pub venv: PathBuf,
}

impl Cloud {
    pub fn start(ns_prefix: &str) -> Self {
        let host = Netns::new(ns_prefix);
        let d = Daemon::start(&host);
        Self {
            d,
            host,
            venv: venv(),
        }
    }

    /// `openstack ARGS` against the daemon (see [`openstack`]).
    pub fn os(&self, args: &[&str]) -> serde_json::Value {
        openstack(&self.host, &self.d, &self.venv, args)
    }

    /// The venv's `python ARGS URL TOKEN` inside the host namespace: a neutronclient script
    /// takes the daemon's endpoint and admin token last.
    pub fn python(&self, args: &[&str]) -> std::process::Output {
        self.host
            .cmd(self.venv.join("bin/python"))
            .args(args)
            .arg(self.d.url())
            .arg(self.d.admin_token())
            .output()
            .expect("running python")
    }
}

/// The networks of the client tests, made with `openstack` (`os`): external `pub` with subnet
/// `pubsub` (198.51.100.0/24, pool .10–.20), tenant `priv` with subnet `privsub` on
/// `priv_cidr`. Returns the external network and its subnet.
pub fn networks(
    os: impl Fn(&[&str]) -> serde_json::Value,
    priv_cidr: &str,
) -> (serde_json::Value, serde_json::Value) {
    let ext = os(&["network", "create", "--external", "pub", "-f", "json"]);
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
        priv_cidr,
        "privsub",
        "-f",
        "json",
    ]);
    (ext, ext_sub)
}
