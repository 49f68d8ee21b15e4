//! WAL checkpoints off the request path.
//!
//! By default SQLite checkpoints inside the commit that takes the write-ahead log past 1000
//! pages: that commit's caller waits while every page changed since the last checkpoint is
//! copied into the database file and the file is synced. The copy grows with the database
//! (the same number of changes lands on more distinct pages of a bigger B-tree): ≈ 1 ms at a
//! few routers, ≈ 2 ms at 1000, and one API call in every ≈ 15 routers paid it, a tail that
//! grew with N. Here a thread of its own copies the bulk of the log through a second
//! connection, PASSIVE (it neither waits for nor blocks the writer or a reader). Durability is
//! unchanged: a commit is durable once its log frames are synced (`synchronous = FULL`),
//! wherever the checkpoint runs.
//!
//! The log only starts over, instead of growing, when a write begins with every frame copied,
//! and commits keep coming while the thread copies. So the writer finishes the job: once the
//! thread has copied all but a short tail ([`TAIL`] of the threshold), the next commit copies
//! that tail itself (a few pages) and the write after it starts the log over.
//!
//! Backstop: should the thread fall far behind (a checkpoint cannot pass a reader's snapshot,
//! so a long read holds it back), a commit checkpoints the whole log itself once it reaches
//! [`BACKSTOP`] times the threshold, as SQLite would have, so the log cannot grow without bound.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

/// Log length (pages) past which the log is copied back: SQLite's own default.
pub const PAGES: u32 = 1000;

/// The part of the threshold (1/TAIL) the writer copies itself to finish a checkpoint.
pub const TAIL: u32 = 16;

/// Log length, in multiples of the threshold, at which a commit checkpoints the whole log
/// because the thread has not.
pub const BACKSTOP: u32 = 16;

/// Checkpoints run so far, by whom, and how far the thread got.
#[derive(Debug, Default)]
pub struct Counts {
    /// By the checkpoint thread.
    pub background: AtomicU64,
    /// By the committing connection: the tail after the thread's copy.
    pub tail: AtomicU64,
    /// By the committing connection: the whole log, past the backstop.
    pub backstop: AtomicU64,
    /// The log's generation: the writer counts each start-over (the thread's figures are
    /// frame numbers, meaningless in another generation).
    generation: AtomicU32,
    /// Generation (high half) and frames copied (low half) of the thread's last checkpoint.
    copied: AtomicU64,
}

/// The checkpoint thread of one database file; it ends once the writer's connection (which
/// holds the only sender, inside its WAL hook) is gone, and dropping this joins it.
pub struct Checkpointer {
    thread: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Checkpointer {
    /// Takes checkpoints off `writer` (whose database is the file `path`): turns its automatic
    /// checkpoints off and starts the thread that runs them once the log reaches `pages`.
    pub fn start(writer: &mut Connection, path: &Path, pages: u32) -> anyhow::Result<Self> {
        let own = Connection::open(path)?;
        // The checkpoint's sync of the database file follows its connection's setting.
        own.pragma_update(None, "synchronous", "FULL")?;
        let counts = Arc::new(Counts::default());
        // One pending request is enough: the thread copies the whole log when it wakes.
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn({
                let counts = counts.clone();
                move || run(&own, &asked, &counts)
            })?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.wal_hook(Some(hook(ask, pages.max(1), counts.clone())))?;
        Ok(Self {
            thread: Some(thread),
            counts,
        })
    }

    /// Checkpoints run so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's WAL hook: called after each commit (the write lock already released) with the
/// log's length in frames.
fn hook(
    ask: SyncSender<()>,
    pages: u32,
    counts: Arc<Counts>,
) -> impl FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()> + Send + 'static
{
    let tail = (pages / TAIL).max(1);
    let mut last = 0;
    move |wal, logged| {
        let logged = u32::try_from(logged).unwrap_or(0);
        if logged < last {
            counts.generation.fetch_add(1, Ordering::Relaxed);
        }
        last = logged;
        if logged < pages {
            return Ok(());
        }
        // A figure from another generation of the log (or none yet) says nothing: all behind.
        let mark = counts.copied.load(Ordering::Relaxed);
        let generation = counts.generation.load(Ordering::Relaxed);
        let behind = if (mark >> 32) as u32 == generation {
            logged.saturating_sub(mark as u32)
        } else {
            logged
        };
        let inline = if logged >= pages.saturating_mul(BACKSTOP) {
            Some(&counts.backstop)
        } else if behind <= tail {
            Some(&counts.tail)
        } else {
            None
        };
        match inline {
            // Busy: the thread is copying right now; the next commit looks again. Never an
            // error out of here: SQLite would report it as the commit's, though it stands.
            Some(count) => match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok(_) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, logged, "store checkpoint not run inline"),
            },
            // Full: a request is already pending. Disconnected: the thread is gone, and the
            // backstop keeps the log bounded.
            None => {
                let _ = ask.try_send(());
            }
        }
        Ok(())
    }
}

fn run(own: &Connection, asked: &Receiver<()>, counts: &Counts) {
    while asked.recv().is_ok() {
        let started = std::time::Instant::now();
        // Read before the copy: if the log starts over meanwhile, the figure is not trusted.
        let generation = counts.generation.load(Ordering::Relaxed);
        match own.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((logged, copied)) => {
                counts.background.fetch_add(1, Ordering::Relaxed);
                let copied = u64::from(u32::try_from(copied).unwrap_or(0));
                counts
                    .copied
                    .store(u64::from(generation) << 32 | copied, Ordering::Relaxed);
                tracing::debug!(
                    logged,
                    copied,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "store checkpoint"
                );
            }
            // Busy: the writer copies its tail right now.
            Err(e) => tracing::debug!(error = %e, "store checkpoint not run"),
        }
    }
}
