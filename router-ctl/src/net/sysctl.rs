//! Sysctls of the calling thread's network namespace (`key` relative to /proc/sys/net, e.g.
//! `ipv4/ip_forward`; /proc/sys/net resolves to the namespace of the thread that opens it).
//!
//! Keys are opened relative to a per-thread handle on their family's directory
//! (`/proc/sys/net/ipv4`, `…/ipv6`), not by their full path: the dcache keeps one
//! `net/<family>` dentry per namespace on the host, all on the same hash chain (same parent,
//! same name), so every full-path walk compares against each of them (`proc_sys_compare`):
//! O(namespaces) per write, and a router pass writes a dozen. With the directory open, only the
//! first walk per thread pays that. The handles belong to the namespace the thread was in when
//! it opened them; a thread that changes namespace (an `ns::in_netns` worker only does so at
//! its start) finds them dropped, as the cache is keyed by the namespace's inode.

use std::{
    cell::RefCell,
    collections::HashMap,
    fs::File,
    io::{ErrorKind, Read as _, Seek as _, SeekFrom, Write as _},
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
};

use anyhow::{Context as _, Result};
use nix::{errno::Errno, fcntl::OFlag, sys::stat::Mode};

/// Where the keys live.
const ROOT: &str = "/proc/sys/net";

thread_local! {
    /// (namespace inode, family directory → handle) of this thread.
    static DIRS: RefCell<(u64, HashMap<String, Option<OwnedFd>>)> = RefCell::new((0, HashMap::new()));
}

/// The calling thread's network namespace, by inode.
fn netns_ino() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net")?
        .ino())
}

/// Opens `key` with `flags` relative to its family's directory; `Ok(None)` when the key (or
/// the family) does not exist on this kernel.
fn open(key: &str, flags: OFlag) -> Result<Option<File>> {
    let (family, rest) = key
        .split_once('/')
        .with_context(|| format!("sysctl key {key} has no family directory"))?;
    let ino = netns_ino()?;
    DIRS.with(|dirs| {
        let mut dirs = dirs.borrow_mut();
        if dirs.0 != ino {
            *dirs = (ino, HashMap::new());
        }
        if !dirs.1.contains_key(family) {
            let path = format!("{ROOT}/{family}");
            let fd = match nix::fcntl::open(
                path.as_str(),
                OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(e).with_context(|| format!("opening {path}")),
            };
            dirs.1.insert(family.to_string(), fd);
        }
        let Some(Some(dir)) = dirs.1.get(family) else {
            return Ok(None);
        };
        match nix::fcntl::openat(dir, rest, flags | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {ROOT}/{key}")),
        }
    })
}

/// Whether `key` exists in the calling thread's namespace.
pub fn exists(key: &str) -> bool {
    matches!(open(key, OFlag::O_RDONLY), Ok(Some(_)))
}

/// Writes `value` to `key` unless it already holds it (writing some keys has side effects even
/// when the value is unchanged).
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = || format!("{ROOT}/{key}");
    let mut f = open(key, OFlag::O_RDWR)?
        .ok_or_else(|| std::io::Error::from(ErrorKind::NotFound))
        .with_context(|| format!("opening {}", path()))?;
    let mut cur = String::new();
    if f.read_to_string(&mut cur).is_ok() && cur.trim() == value {
        return Ok(());
    }
    // A sysctl is written from offset 0 (later offsets are ignored).
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(value.as_bytes()))
        .with_context(|| format!("writing {value} to {}", path()))
}

/// Turns IPv6 off on `dev` of the calling thread's namespace, best effort: a bridge or tap that
/// only carries tenant frames should not take a link-local address and speak (DAD, MLD, router
/// solicitations) on the tenant or external network, as Neutron's linuxbridge agent ensures.
/// A kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(dev: &str) {
    let key = format!("ipv6/conf/{dev}/disable_ipv6");
    if !exists(&key) {
        return;
    }
    if let Err(e) = write(&key, "1") {
        tracing::warn!("{e:#}");
    }
}
