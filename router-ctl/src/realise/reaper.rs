//! Deletes retired bridges (see `Realiser::retire_bridge`) one at a time, once the realiser has
//! made no kernel change for `QUIET`. Unregistering a bridge holds RTNL for 20–40 ms
//! (`br_multicast_dev_del` waits for an RCU barrier): deleted at once, each network delete of a
//! burst made the next router's kernel changes wait that long (at 3000 routers, 37 ms of the
//! 50 ms an operator's teardown of one router took). Until it is deleted a retired bridge is
//! down, has no ports and is recorded as ours, so a restart (which hands the leftovers to the
//! reaper again) or `--purge` still finds it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::net::{
    NetnsHandle, link,
    ns::with_netlink,
    owned::{Kind, Owned},
};

/// How long the realiser must have made no kernel change before a retired bridge is deleted.
const QUIET: Duration = Duration::from_millis(250);

/// When the realiser last made a kernel change.
pub(super) struct Activity {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last change.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A kernel change starts or ends now.
    pub(super) fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The reaper's end of the realiser: retired bridges go in, the thread deletes them.
pub(super) struct Reaper {
    retired: mpsc::Sender<String>,
    pub(super) activity: Arc<Activity>,
}

impl Reaper {
    /// Starts the reaping thread, which deletes in `ns` and forgets the records in `owned`.
    pub(super) fn start(ns: &NetnsHandle, owned: Owned) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let activity = Arc::new(Activity::new());
        let ns = NetnsHandle {
            file: ns
                .file
                .try_clone()
                .context("duplicating the namespace handle")?,
        };
        let seen = activity.clone();
        std::thread::Builder::new()
            .name("bridge-reaper".into())
            .spawn(move || reap(&rx, &seen, &ns, &owned))
            .context("starting the bridge reaper")?;
        Ok(Self {
            retired: tx,
            activity,
        })
    }

    /// Deletes the retired bridge `name` (recorded as ours) once the realiser is quiet; a name
    /// handed in twice is deleted once.
    pub(super) fn retire(&self, name: String) {
        // Refused only if the thread is gone, which it is not while this sender lives.
        let _ = self.retired.send(name);
    }
}

/// The reaping loop: gathers names, waits until the realiser has been quiet for `QUIET`, then
/// deletes one; ends when the realiser is dropped. Its own deletes do not count as activity,
/// so once quiet it deletes back to back until the next kernel change of the realiser.
fn reap(rx: &mpsc::Receiver<String>, activity: &Activity, ns: &NetnsHandle, owned: &Owned) {
    let mut queue = BTreeSet::new();
    loop {
        if queue.is_empty() {
            let Ok(name) = rx.recv() else { return };
            queue.insert(name);
        }
        queue.extend(rx.try_iter());
        let quiet = activity.quiet_for();
        if quiet < QUIET {
            match rx.recv_timeout(QUIET - quiet) {
                Ok(name) => {
                    queue.insert(name);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        let Some(name) = queue.pop_first() else {
            continue;
        };
        let res = with_netlink(ns, |h| {
            let name = &name;
            async move { link::delete_link(&h, name).await }
        })
        .and_then(|_| owned.forget(Kind::Link, &name));
        if let Err(e) = res {
            tracing::warn!("deleting retired bridge {name}: {e:#}");
        }
    }
}
