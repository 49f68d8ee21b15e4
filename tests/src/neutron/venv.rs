//! The Python side of the stack: one venv under the target dir holding neutron-server 29, the
//! `openstack` CLI, gunicorn and PyMySQL, installed with `pip install -r` from the pinned
//! requirements file committed in the repo (a `pip freeze` of a working install), and reused
//! while that file is unchanged. A file lock keeps two test processes from installing at once.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::netns::try_sh;

/// The pinned requirements (see tests/neutron/requirements-neutron29.txt).
pub const REQUIREMENTS: &str = include_str!("../../neutron/requirements-neutron29.txt");

/// The cargo target dir the venv lives in.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// `target/neutron-venv`, installed or brought up to date with the pinned requirements.
pub fn ensure() -> Result<PathBuf> {
    let target = target_dir();
    fs::create_dir_all(&target).with_context(|| format!("mkdir {}", target.display()))?;
    let lock = fs::File::create(target.join("neutron-venv.lock"))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the neutron venv")?;
    let venv = target.join("neutron-venv");
    let marker = venv.join("requirements-installed.txt");
    let tools = [
        "neutron-db-manage",
        "neutron-rpc-server",
        "gunicorn",
        "openstack",
    ];
    let ready = fs::read_to_string(&marker).is_ok_and(|m| m == REQUIREMENTS)
        && tools.iter().all(|t| venv.join("bin").join(t).is_file());
    if ready {
        return Ok(venv);
    }
    eprintln!(
        "neutron stack: installing neutron 29 and the openstack CLI into {} (pinned requirements, a few minutes the first time)",
        venv.display()
    );
    if !venv.join("bin/python").is_file() {
        try_sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating the venv (Debian: apt-get install python3-venv)")?;
    }
    let wanted = venv.join("requirements-wanted.txt");
    fs::write(&wanted, REQUIREMENTS)?;
    try_sh(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&wanted),
    )
    .context("pip install of the pinned neutron requirements")?;
    fs::write(&marker, REQUIREMENTS)?;
    Ok(venv)
}
