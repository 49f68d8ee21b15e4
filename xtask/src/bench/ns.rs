//! Network namespaces the bench creates for itself, removed on drop (also after an error or
//! Ctrl-C), plus commands and threads inside them.
//!
//! Every namespace is named `xb<pid>-<tag>` so a later run can recognise and remove leftovers of
//! a bench that was killed hard (SIGKILL), and so nothing outside the bench is ever touched.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
pub use kit::netns::{ChildGuard, Netns, try_sh as sh, try_veth as veth};
use kit::netns::{netns_exists, remove_netns};

/// Prefix of every namespace the bench creates.
const PREFIX: &str = "xb";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT/SIGTERM so that the bench unwinds through its guards (which delete the
/// namespaces and stop the daemon) instead of dying with its topology still in place.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once the user asked to stop; loops call it between steps.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, returning early with an error when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Removes namespaces left by earlier bench runs whose process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // Only `xb<digits>-<tag>`: the dash keeps names of other tools starting with "xb" out.
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("bench: removing stale namespace {name}");
        remove_netns(&name);
    }
    sweep_stale_daemon_dirs();
}

/// Leftovers of a killed bench's daemons: their `qrouter-` namespaces (listed in the temp
/// directory's `routers` file as they were created), its bpffs mount and the directory.
fn sweep_stale_daemon_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `xbench-<pid>-<tag>` (one per daemon), or `xbench-<pid>` from older runs.
        let Some(pid) = name
            .strip_prefix("xbench-")
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("bench: removing leftovers of bench run {pid}");
        let dir = e.path();
        for id in std::fs::read_to_string(dir.join(ROUTERS_FILE))
            .unwrap_or_default()
            .lines()
        {
            let ns = format!("qrouter-{}", id.trim());
            if !id.trim().is_empty() && netns_exists(&ns) {
                remove_netns(&ns);
            }
        }
        let _ = nix::mount::umount2(&dir.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// File in the daemon's temp directory listing the ids of the routers the bench created.
pub const ROUTERS_FILE: &str = "routers";

/// Creates `xb<pid>-<tag>` with `lo` up (a leftover of this very process, from an earlier
/// failed step, is removed first: `add` would fail on it).
pub fn new(tag: &str) -> Result<Netns> {
    let name = format!("{PREFIX}{}-{tag}", std::process::id());
    if netns_exists(&name) {
        remove_netns(&name);
    }
    Netns::try_named(&name)
}

/// The file system under `/run/netns` and what creating one namespace's mount file costs
/// there now (the mean of `files` created and removed, named like the bench's namespaces).
///
/// Every namespace is a file there. On this VM `/run` is not a tmpfs but ext4 without a
/// journal, whose inode allocator passes over each inode freed in the last
/// `vm.dirtytime_expire_seconds` (12 h) one by one (`recently_deleted`): the cost grows with
/// the namespaces deleted in the last 12 hours, by earlier benches and test runs too, and it
/// is part of every router created. Reported so a run can be read against its day.
pub fn mount_file_cost(files: usize) -> String {
    let fs = match nix::sys::statfs::statfs("/run/netns") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => "tmpfs".to_string(),
        Ok(s) if s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC => "ext4".to_string(),
        Ok(s) => format!("file system {:#x}", s.filesystem_type().0),
        Err(e) => return format!("? ({e})"),
    };
    let names: Vec<String> = (0..files)
        .map(|i| format!("/run/netns/{PREFIX}{}-probe{i}", std::process::id()))
        .collect();
    let start = Instant::now();
    let mut made = 0;
    for n in &names {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(n);
        if created.is_err() {
            break;
        }
        made += 1;
    }
    let took = start.elapsed();
    for n in &names[..made] {
        let _ = std::fs::remove_file(n);
    }
    if made == 0 {
        return format!("{fs}; could not create a file there");
    }
    format!(
        "{fs}; {:.0} µs to create a namespace's mount file (mean of {made})",
        took.as_secs_f64() * 1e6 / made as f64
    )
}
