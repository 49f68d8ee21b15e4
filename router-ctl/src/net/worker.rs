//! Threads that do namespace work: a job runs on a thread of its own, which may `setns` or
//! `unshare` (per-thread) and is moved back to the process's namespace once the job is done.
//!
//! Why a pool and not a thread per job: a router's creation enters namespaces a dozen times,
//! and a fresh thread each time (stack mapped and unmapped, a tokio runtime built and torn
//! down) cost more than the netlink work itself. Idle workers wait in the process's own
//! namespace, so none keeps a deleted router namespace, or the devices in it, alive.
//!
//! A job may itself submit jobs (nested namespace work): the worker running it is busy, so the
//! nested job takes another worker (spawned when none is idle). Each worker keeps one
//! current-thread runtime (`block_on`) that only its own jobs use.
//!
//! Work for the namespace the caller is already in needs no worker: a thread inside `inline`
//! (the API's blocking tasks, the reconcile thread, the agent's blocking tasks: none changes
//! namespace) runs it itself (`ns::in_netns`, `ns::with_netlink`). About half of a router's
//! namespace work is in the daemon's own namespace, and each hand-off to a worker is two
//! wake-ups, each of which waits for a CPU when the machine is busy (docs/BENCH.md,
//! "Sixteenth round", "Seventeenth round").

use std::{
    cell::{Cell, OnceCell},
    fs::File,
    os::unix::fs::MetadataExt as _,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Mutex, OnceLock, mpsc},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Idle workers kept; a burst that needed more lets the extra ones end.
const IDLE_MAX: usize = 8;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How a job ended, as its worker reports it.
enum Ended {
    Done,
    Panicked,
    /// The job ran, but the worker could not go back to the process's namespace: it takes no
    /// further job and ends.
    Stranded,
}

struct Worker {
    jobs: mpsc::Sender<Job>,
    ended: mpsc::Receiver<Ended>,
}

static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// The process's namespace (the main thread's): where workers start and return to.
fn home() -> Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let f = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    Ok(HOME.get_or_init(|| f))
}

thread_local! {
    /// The thread's runtime for `block_on` (built on the first call that needs one).
    static RUNTIME: OnceCell<tokio::runtime::Runtime> = const { OnceCell::new() };
    /// Inside `inline`: namespace work for the thread's own namespace may run here.
    static INLINE: Cell<bool> = const { Cell::new(false) };
    /// Inside `block_on`: the thread's runtime is running, and cannot be entered again.
    static DRIVING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `fut` to completion on the calling thread's own current-thread runtime: a worker's,
/// for its jobs (see `run`), or an `inline` thread's, for work it runs itself. Never on an
/// async runtime's worker thread, and never inside another `block_on` (see `may_drive_here`).
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T> {
    RUNTIME.with(|rt| {
        if rt.get().is_none() {
            let built = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a namespace worker's runtime")?;
            let _ = rt.set(built);
        }
        let rt = rt.get().ok_or_else(|| anyhow!("no runtime"))?;
        let _driving = Restore::set(&DRIVING, true);
        Ok(rt.block_on(fut))
    })
}

/// Runs `f` with namespace work for the calling thread's own namespace done on this thread
/// (see the module comment). Only for threads that never change namespace themselves and are
/// not an async runtime's workers (`block_on` would refuse to start there): tokio's blocking
/// pool, plain threads.
pub fn inline<T>(f: impl FnOnce() -> T) -> T {
    let _inline = Restore::set(&INLINE, true);
    f()
}

/// Whether blocking namespace work for the calling thread's namespace may run here.
pub fn may_run_here() -> bool {
    INLINE.get()
}

/// Whether async namespace work (`block_on`) for the calling thread's namespace may run here:
/// not from inside a `block_on` of this thread (its runtime is busy driving the caller).
pub fn may_drive_here() -> bool {
    INLINE.get() && !DRIVING.get()
}

/// Puts a thread-local flag back as it was when dropped (also on unwind).
struct Restore {
    key: &'static std::thread::LocalKey<Cell<bool>>,
    before: bool,
}

impl Restore {
    fn set(key: &'static std::thread::LocalKey<Cell<bool>>, now: bool) -> Self {
        Self {
            key,
            before: key.replace(now),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.key.set(self.before);
    }
}

/// Moves the calling thread to `home`; whether it is there now. Without the privilege to
/// `setns` (unit tests as a user) a thread that never left is still home.
fn go_home(home: &File) -> bool {
    if setns(home, CloneFlags::CLONE_NEWNET).is_ok() {
        return true;
    }
    let ino = |m: std::io::Result<std::fs::Metadata>| m.map(|m| (m.dev(), m.ino())).ok();
    let here = ino(std::fs::metadata("/proc/thread-self/ns/net"));
    here.is_some() && here == ino(home.metadata())
}

fn spawn() -> Result<Worker> {
    let home = home()?;
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (ended_tx, ended_rx) = mpsc::channel::<Ended>();
    std::thread::Builder::new()
        .name("netns-worker".into())
        .spawn(move || {
            // A thread starts in its creator's namespace, which may be a router's.
            if !go_home(home) {
                return;
            }
            for job in jobs_rx {
                let ran = catch_unwind(AssertUnwindSafe(job));
                let back = go_home(home);
                let ended = match (ran, back) {
                    (Err(_), _) => Ended::Panicked,
                    (Ok(()), true) => Ended::Done,
                    (Ok(()), false) => Ended::Stranded,
                };
                // Not home: never take another job (a panicked job's worker is dropped too).
                if ended_tx.send(ended).is_err() || !back {
                    return;
                }
            }
        })
        .context("starting a namespace worker")?;
    Ok(Worker {
        jobs: jobs_tx,
        ended: ended_rx,
    })
}

/// Runs `f` on a worker and waits for it; the worker is back in the process's namespace
/// whatever `f` did to its own (setns, unshare) before it takes another job.
pub fn run<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let mut out: Option<Result<T>> = None;
    let slot = &mut out;
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || *slot = Some(f()));
    // SAFETY: the job borrows `out` and whatever `f` borrows, so it must be gone before this
    // function returns. It is: either it comes back in the send error and is dropped here, or
    // the worker took it and this function returns only after `ended.recv()`, which the worker
    // answers after the job ran (or unwound), or which fails once the worker thread is gone,
    // having dropped the job with its stack. Nothing else keeps a job.
    let mut job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    let worker = loop {
        let idle = IDLE.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let fresh = idle.is_none();
        let w = match idle {
            Some(w) => w,
            None => spawn()?,
        };
        match w.jobs.send(job) {
            Ok(()) => break w,
            Err(_) if fresh => {
                bail!("a new namespace worker could not enter the process's namespace")
            }
            // That worker ended (stranded): the job comes back, try another.
            Err(mpsc::SendError(back)) => job = back,
        }
    };
    let ended = worker.ended.recv();
    match ended {
        Ok(Ended::Done) => {
            let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_MAX {
                idle.push(worker);
            }
        }
        Ok(Ended::Stranded) => {}
        Ok(Ended::Panicked) => return Err(anyhow!("namespace worker: the job panicked")),
        Err(_) => return Err(anyhow!("namespace worker ended during the job")),
    }
    out.ok_or_else(|| anyhow!("namespace worker: the job left no result"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_borrow_from_the_caller_and_nest() {
        let mut seen = Vec::new();
        let n = run(|| {
            seen.push(1);
            let inner = run(|| Ok(std::thread::current().id()))?;
            assert_ne!(
                inner,
                std::thread::current().id(),
                "a nested job takes another worker"
            );
            Ok(2)
        })
        .unwrap();
        assert_eq!((n, seen), (2, vec![1]));
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_pool_goes_on() {
        let e = run(|| -> Result<()> { panic!("boom") }).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(run(|| Ok(7)).unwrap(), 7);
    }

    #[test]
    fn workers_keep_their_runtime_between_jobs() {
        for i in 0..3 {
            let got = run(|| block_on(async move { i * 2 })).unwrap();
            assert_eq!(got, i * 2);
        }
    }
}
