//! Sysctls of the calling thread's network namespace (`key` relative to /proc/sys/net, e.g.
//! `ipv4/ip_forward`; /proc/sys/net resolves to the namespace of the thread that opens it).
//!
//! Keys are opened relative to a handle on their family's directory (`sys/net/ipv4`,
//! `…/ipv6`) of the namespace, and that handle is opened through a procfs instance of its own
//! (a detached mount: `fsopen("proc")`, `fsmount`), not through /proc. The dcache keeps one
//! `sys/net` dentry per namespace and procfs instance, all on the same hash chain within an
//! instance (same parent, same name): on the host's /proc, which every router namespace's
//! sysctls went through, a new namespace's first look-up compared against each of them
//! (`proc_sys_compare`, under a global spinlock) three times: 8 ms at 3000 namespaces, the
//! largest cost that grew with the routers. A fresh instance's chain holds this namespace's
//! entry only, and its dentries go with it once its handles are closed. Where the new mount
//! API is refused (an unprivileged unit test), /proc serves as before.
//!
//! The handles are shared by every thread and kept for the most recent namespaces, by inode:
//! any namespace worker (`ns::in_netns`) may run the next job in a namespace, so a per-thread
//! cache would open them again on every switch, the daemon's own namespace included. A handle
//! stays bound to the namespace it was opened in, whichever thread uses it.
//!
//! The instance's own descriptor, and handles pushed out of the cache, are closed on the
//! closing thread (`closer`): closing the instance's descriptor makes the kernel wait for an
//! RCU grace period, which the router being set up would otherwise wait out.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::{ErrorKind, Read as _, Seek as _, SeekFrom, Write as _},
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    sync::{Arc, LazyLock, Mutex},
};

use anyhow::{Context as _, Result};
use nix::{errno::Errno, fcntl::OFlag, sys::stat::Mode};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use super::closer;

/// Where the keys live (in messages, and the fallback when no procfs instance can be made).
const ROOT: &str = "/proc/sys/net";

/// The families opened together on a miss (a router namespace's settings touch both).
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// Family directories kept open (one descriptor each): the namespaces a burst of router
/// changes touches, far below the daemon's descriptor limit.
const CACHED_DIRS: usize = 128;

/// A family directory of one namespace: its handle, None when this kernel lacks the family.
type Dir = Option<Arc<OwnedFd>>;

/// Handles by (namespace inode, family), oldest first in `order`.
#[derive(Default)]
struct DirCache {
    dirs: HashMap<(u64, String), Dir>,
    order: VecDeque<(u64, String)>,
}

static DIRS: LazyLock<Mutex<DirCache>> = LazyLock::new(Mutex::default);

impl DirCache {
    fn get(&self, k: &(u64, String)) -> Option<Dir> {
        self.dirs.get(k).cloned()
    }

    /// Keeps `d`; returns what that pushed out (handles for the caller to close outside the
    /// cache's lock).
    fn put(&mut self, k: (u64, String), d: Dir) -> Vec<Dir> {
        let mut evicted = Vec::new();
        match self.dirs.insert(k.clone(), d) {
            None => self.order.push_back(k),
            Some(replaced) => evicted.push(replaced),
        }
        while self.order.len() > CACHED_DIRS {
            if let Some(old) = self.order.pop_front() {
                evicted.extend(self.dirs.remove(&old));
            }
        }
        evicted
    }

    /// Drops `k`; returns its handle for the caller to close outside the cache's lock.
    fn forget(&mut self, k: &(u64, String)) -> Option<Dir> {
        self.order.retain(|o| o != k);
        self.dirs.remove(k)
    }
}

fn cache() -> std::sync::MutexGuard<'static, DirCache> {
    DIRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The calling thread's network namespace, by inode.
fn netns_ino() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net")?
        .ino())
}

/// The family directory of the calling thread's namespace (`ino`), from the cache or opened
/// (with the other usual family, through one private procfs instance).
fn family_dir(ino: u64, family: &str) -> Result<Dir> {
    let k = (ino, family.to_string());
    if let Some(d) = cache().get(&k) {
        return Ok(d);
    }
    let proc = private_proc();
    let opened = (|| {
        let mut wanted = vec![family];
        wanted.extend(FAMILIES.iter().filter(|f| **f != family));
        let mut found = None;
        for f in wanted {
            let d = open_family(proc.as_ref(), f)?;
            if f == family {
                found = Some(d.clone());
            }
            let evicted = cache().put((ino, f.to_string()), d);
            evicted.into_iter().flatten().for_each(close_dir_later);
        }
        Ok(found.flatten())
    })();
    // The family directories keep the instance alive; its own descriptor is not needed.
    if let Some(p) = proc {
        closer::close_later(p);
    }
    opened
}

/// Hands an evicted directory handle to the closer when this was its last holder.
fn close_dir_later(d: Arc<OwnedFd>) {
    if let Ok(fd) = Arc::try_unwrap(d) {
        closer::close_later(fd);
    }
}

/// A procfs instance of its own, detached (mounted nowhere; gone with its last descriptor), or
/// None when the kernel or the caller's privileges refuse one.
fn private_proc() -> Option<OwnedFd> {
    let made = rustix::mount::fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC).and_then(|fs| {
        rustix::mount::fsconfig_create(&fs)?;
        rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
    });
    match made {
        Ok(m) => Some(m),
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::debug!("no private procfs instance ({e}): sysctls through {ROOT}")
            });
            None
        }
    }
}

/// `sys/net/<family>` of the calling thread's namespace through `proc` (or /proc), None when
/// this kernel lacks the family.
fn open_family(proc: Option<&OwnedFd>, family: &str) -> Result<Dir> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let opened = match proc {
        Some(m) => nix::fcntl::openat(
            m,
            format!("sys/net/{family}").as_str(),
            flags,
            Mode::empty(),
        ),
        None => nix::fcntl::open(format!("{ROOT}/{family}").as_str(), flags, Mode::empty()),
    };
    match opened {
        Ok(fd) => Ok(Some(Arc::new(fd))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening {ROOT}/{family}")),
    }
}

/// Opens `key` with `flags` relative to its family's directory; `Ok(None)` when the key (or
/// the family) does not exist on this kernel.
fn open(key: &str, flags: OFlag) -> Result<Option<File>> {
    let (family, rest) = key
        .split_once('/')
        .with_context(|| format!("sysctl key {key} has no family directory"))?;
    let ino = netns_ino()?;
    for fresh in [false, true] {
        if fresh {
            // A namespace's inode is reused once it is gone, and a handle of the gone one
            // finds nothing (its tables are unregistered): look again with a new handle.
            let forgotten = cache().forget(&(ino, family.to_string()));
            forgotten.flatten().into_iter().for_each(close_dir_later);
        }
        let Some(dir) = family_dir(ino, family)? else {
            return Ok(None);
        };
        match nix::fcntl::openat(&*dir, rest, flags | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => return Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) if !fresh => continue,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {ROOT}/{key}")),
        }
    }
    Ok(None)
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
