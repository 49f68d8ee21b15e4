//! Network namespaces without forking: a namespace worker (`worker`) unshares its network
//! namespace and bind-mounts `/proc/thread-self/ns/net` onto `/run/netns/<name>`, as `ip netns
//! add` does, so the namespace outlives the worker's stay in it and `ip netns` sees it.

use std::{
    fs::{self, File, OpenOptions},
    future::Future,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, fstatfs, statfs},
};

/// Where named namespaces are mounted (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace: a file whose descriptor can be passed to `setns` or used as
/// `IFLA_NET_NS_FD`.
#[derive(Debug)]
pub struct NetnsHandle {
    pub file: File,
}

impl NetnsHandle {
    /// The namespace of the calling thread (not the process: `/proc/self` is the main thread).
    pub fn current() -> Result<Self> {
        let file =
            File::open("/proc/thread-self/ns/net").context("opening /proc/thread-self/ns/net")?;
        Ok(Self { file })
    }

    /// The namespace's identity: device and inode of its nsfs file.
    pub fn id(&self) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = self.file.metadata().context("stat of a namespace handle")?;
        Ok((m.dev(), m.ino()))
    }

    /// Whether the calling thread is in this namespace.
    pub fn is_current(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let here =
            fs::metadata("/proc/thread-self/ns/net").context("stat /proc/thread-self/ns/net")?;
        Ok((here.dev(), here.ino()) == self.id()?)
    }

    /// The named namespace `/run/netns/<name>`; `Ok(None)` when it does not exist (or the path
    /// is a stale file with no namespace mounted on it).
    pub fn open_named(name: &str) -> Result<Option<Self>> {
        let path = named_path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let st = fstatfs(&file).with_context(|| format!("statfs {}", path.display()))?;
        if st.filesystem_type() != NSFS_MAGIC {
            return Ok(None);
        }
        Ok(Some(Self { file }))
    }
}

/// `/run/netns/<name>`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether `/run/netns/<name>` is a mounted namespace. One `statfs` of the path, no open: a
/// reconcile pass asks it of every router it finds converged from outside (10 000 every
/// 5 s), and the open, `fstatfs` and close it took were a tenth of the idle daemon's CPU.
pub fn exists(name: &str) -> Result<bool> {
    let path = named_path(name);
    match statfs(&path) {
        Ok(st) => Ok(st.filesystem_type() == NSFS_MAGIC),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("statfs {}", path.display())),
    }
}

/// Makes /run/netns a shared mount point so namespaces mounted there propagate to other mount
/// namespaces (what iproute2 does on first use), once per process: `MS_SHARED | MS_REC`
/// visits every mount under it (`change_mnt_propagation`, `invent_group_ids`), one per
/// namespace, so redone for each new router (as iproute2's `netns add` does) it cost ≈ 1.5 %
/// of all CPU late in a 10 000-router batch. Namespaces mounted there later are shared as
/// they are attached under a shared mount.
fn prepare_run_dir() -> Result<()> {
    static PREPARED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = PREPARED.lock().unwrap_or_else(|p| p.into_inner());
    if *done && Path::new(NETNS_RUN_DIR).is_dir() {
        return Ok(());
    }
    share_run_dir()?;
    *done = true;
    Ok(())
}

fn share_run_dir() -> Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).context("creating /run/netns")?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .context("bind-mounting /run/netns onto itself")?;
            shared().context("making /run/netns a shared mount")
        }
        Err(e) => Err(e).context("making /run/netns a shared mount"),
    }
}

/// Creates the named namespace; `Ok(false)` when it already existed. Never forks: a namespace
/// worker unshares and mounts it, then goes back to the process's namespace.
pub fn create(name: &str) -> Result<bool> {
    if exists(name)? {
        return Ok(false);
    }
    prepare_run_dir()?;
    let path = named_path(name);
    // A stale file (no namespace mounted) from an interrupted run is replaced.
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o0)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    // On a worker, which returns to the process's namespace once the new one is mounted.
    let made = super::worker::run(|| -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new namespace on {}", path.display()))
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

/// Deletes the named namespace (unmount + unlink); missing is success. The kernel destroys it,
/// and every device inside, once nothing holds it any more.
pub fn delete(name: &str) -> Result<()> {
    let path = named_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Gives namespace `peer` the id `nsid` in the calling thread's namespace (`ip netns set`).
/// `Ok(false)`: it has an id already, or `nsid` is taken (the kernel then picks one itself
/// when it first needs it).
pub fn assign_nsid(peer: &NetnsHandle, nsid: i32) -> Result<bool> {
    use netlink_packet_route::{
        RouteNetlinkMessage,
        nsid::{NsidAttribute, NsidMessage},
    };
    let mut m = NsidMessage::default();
    m.attributes.push(NsidAttribute::Fd(
        std::os::fd::AsRawFd::as_raw_fd(&peer.file) as u32,
    ));
    m.attributes.push(NsidAttribute::Id(nsid));
    let res = super::rtnl::Rtnl::open().and_then(|mut r| {
        r.request(
            RouteNetlinkMessage::NewNsId(m),
            netlink_packet_core::NLM_F_CREATE,
        )
    });
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e).context("assigning a namespace id"),
    }
}

/// Runs `f` in `ns` and waits for it: on the calling thread when it is in `ns` and may run
/// namespace work itself (`worker::inline`), else on a namespace worker that entered `ns`.
pub fn in_netns<T: Send>(ns: &NetnsHandle, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if super::worker::may_run_here() && ns.is_current()? {
        return f();
    }
    on_worker(ns, f)
}

/// Runs `f` on a namespace worker that entered `ns` and waits for it.
fn on_worker<T: Send>(ns: &NetnsHandle, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    super::worker::run(|| {
        setns(&ns.file, CloneFlags::CLONE_NEWNET).context("setns into network namespace")?;
        f()
    })
}

/// Runs the async `f` with an rtnetlink handle whose socket lives in `ns`, and waits for it.
///
/// On the calling thread when it is in `ns` and may run namespace work itself
/// (`worker::inline`): through a socket the thread keeps (`kept_handle`), as opening one costs
/// ≈ 60 µs and the daemon's own namespace is never deleted under it. Else on a namespace
/// worker that entered `ns`, driven by the worker's current-thread runtime, with a socket
/// closed before this returns: an open socket would keep a deleted namespace alive.
pub fn with_netlink<T, F, Fut>(ns: &NetnsHandle, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    if super::worker::may_drive_here() && ns.is_current()? {
        let id = ns.id()?;
        return super::worker::block_on(async { f(kept_handle(id)?).await })?;
    }
    on_worker(ns, || {
        super::worker::block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().context("opening a netlink socket")?;
            let task = tokio::spawn(conn);
            let out = f(handle).await;
            task.abort();
            // Awaited so the connection, and its socket, are dropped now, not at the next job.
            let _ = task.await;
            out
        })?
    })
}

/// A thread's own rtnetlink connection, opened in the namespace `ns` names and driven by the
/// thread's runtime whenever it runs (`worker::block_on`).
struct Kept {
    ns: (u64, u64),
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

thread_local! {
    static KEPT: std::cell::RefCell<Option<Kept>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's kept handle for namespace `ns` (the thread's own, checked by the
/// caller), opened again when the thread last used one elsewhere or its connection ended. Must
/// be called inside the thread's `worker::block_on`, whose runtime drives the connection.
fn kept_handle(ns: (u64, u64)) -> Result<rtnetlink::Handle> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some(k) = kept
            .as_ref()
            .filter(|k| k.ns == ns && !k.task.is_finished())
        {
            return Ok(k.handle.clone());
        }
        if let Some(old) = kept.take() {
            old.task.abort();
        }
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        let task = tokio::spawn(conn);
        *kept = Some(Kept {
            ns,
            handle: handle.clone(),
            task,
        });
        Ok(handle)
    })
}

#[cfg(test)]
mod tests {
    use std::thread::{self, ThreadId};

    use super::*;
    use crate::net::{link, worker};

    fn me() -> ThreadId {
        thread::current().id()
    }

    #[test]
    fn work_for_the_callers_namespace_runs_on_the_caller_only_inside_inline() {
        let here = NetnsHandle::current().unwrap();
        let caller = me();
        assert_ne!(in_netns(&here, || Ok(me())).unwrap(), caller);
        let ran = with_netlink(&here, |_| async { Ok(me()) }).unwrap();
        assert_ne!(ran, caller, "outside `inline`: on a worker");
        worker::inline(|| {
            assert_eq!(in_netns(&here, || Ok(me())).unwrap(), caller);
            for _ in 0..3 {
                // The thread's kept socket answers, call after call.
                let (ran, lo) = with_netlink(&here, |h| async move {
                    let links = link::dump_links(&h).await?;
                    Ok((me(), links.iter().any(|l| l.name == "lo")))
                })
                .unwrap();
                assert_eq!((ran, lo), (caller, true));
            }
            // Inside the thread's own `block_on`: a nested call cannot drive it again.
            let nested = with_netlink(&here, |_| async {
                with_netlink(&here, |_| async { Ok(me()) })
            })
            .unwrap();
            assert_ne!(nested, caller);
        });
        assert_ne!(in_netns(&here, || Ok(me())).unwrap(), caller);
    }
}
