//! Compatibility with the real `python-neutronclient`: the test installs it with pip into a
//! venv under `target/` (once; reused afterwards) and runs `tests/neutronclient_check.py`
//! inside the daemon's host namespace against a live daemon. The script creates an external
//! network, subnets, a router, an interface, sets the gateway with `enable_snat: False` (the
//! seed's exact call), clears it, and asserts on what it reads back.

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
            .args(["-c", "import neutronclient.v2_0.client"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        sh(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg("python-neutronclient>=11"));
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
