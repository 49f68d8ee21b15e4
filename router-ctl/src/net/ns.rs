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
    sys::statfs::{NSFS_MAGIC, fstatfs},
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

    /// Whether the calling thread is in this namespace.
    pub fn is_current(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let here =
            fs::metadata("/proc/thread-self/ns/net").context("stat /proc/thread-self/ns/net")?;
        let this = self.file.metadata().context("stat of a namespace handle")?;
        Ok((here.dev(), here.ino()) == (this.dev(), this.ino()))
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

/// Whether `/run/netns/<name>` is a mounted namespace.
pub fn exists(name: &str) -> Result<bool> {
    Ok(NetnsHandle::open_named(name)?.is_some())
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

/// Runs `f` on a namespace worker that entered `ns` (see `worker`) and waits for it.
pub fn in_netns<T: Send>(ns: &NetnsHandle, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    super::worker::run(|| {
        setns(&ns.file, CloneFlags::CLONE_NEWNET).context("setns into network namespace")?;
        f()
    })
}

/// Runs the async `f` with an rtnetlink handle whose socket lives in `ns`, on a namespace
/// worker that entered `ns`, driven by the worker's current-thread runtime. The socket is
/// closed before this returns: an open socket would keep a deleted namespace alive.
pub fn with_netlink<T, F, Fut>(ns: &NetnsHandle, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    in_netns(ns, || {
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
