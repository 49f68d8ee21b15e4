//! A thread of its own, at a lower scheduling priority than the API's threads, for periodic
//! work whose cost grows with the routers: the reconcile pass.
//!
//! Why: on a busy node a pass over 10 000 routers takes a CPU for a few tenths of a second
//! (≈ 0.18 s to read the whole desired state again, and by the bench's at-rest figure ≈ 0.25 s
//! for the rest: an outside look at every router, the records), every `(1 + BUSY_DEFERRALS) ×
//! interval`. At the API's priority it took that CPU from the API's chain of threads: 10 000
//! routers were made in 142.4 s with the passes and in 120.3 s with none (p50 13.6 against
//! 11.6 ms), and in 126.9 s (12.2 ms) with them at nice 10 (docs/BENCH.md, "Seventeenth
//! round"). At nice `NICE` the pass runs on what the API leaves idle, and alone at
//! full speed on a quiet node. The price: the pass takes the store's and the realiser's locks
//! for one router at a time (a repair, or one of the few it looks at from inside) and for the
//! filter check of those few, and a call that wants them meanwhile may now also wait while the
//! pass is preempted. The bench's tail did not get worse for it.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::mpsc,
};

use anyhow::{Context as _, Result, anyhow};

/// The background thread's nice value (the API's threads run at the process's, normally 0):
/// a tenth of the CPU share of a thread at 0 when both want one.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The thread; jobs run one after another, in the order given.
pub struct Background {
    jobs: mpsc::Sender<Job>,
}

impl Background {
    /// Starts the thread `name` at nice `NICE` (a thread that cannot lower its own priority
    /// logs it and runs at the process's). Its namespace work for the daemon's own namespace
    /// runs on it (`net::worker::inline`): it never changes namespace and runs no async
    /// runtime's tasks.
    pub fn start(name: &str) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let label = name.to_string();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(None, NICE) {
                    tracing::warn!("{label}: staying at the process's priority: {e}");
                }
                crate::net::worker::inline(|| {
                    for job in rx {
                        // A panicking job drops its result's sender: its caller gets the error.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the thread once the jobs before it are done, and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow!("the background thread has ended"))?;
        rx.await.map_err(|_| anyhow!("the background job panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_at_a_lower_priority_and_survive_a_panic() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        let bg = Background::start("bg-test").unwrap();
        let nice = bg
            .run(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        assert_eq!(nice, NICE);
        let e = bg.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        let (a, b) = (bg.run(|| 1), bg.run(|| 2));
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (1, 2));
        // The calling thread's own priority is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), ours);
    }
}
