//! A server process of the stack: started through nsenter inside the stack's namespace, in a
//! process group of its own with its output in a log file, and stopped on drop by signalling
//! the whole group (gunicorn's workers, RabbitMQ's Erlang VM and its helpers go with it).

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{sys::signal::Signal, unistd::Pid};

/// A running server, its process group stopped on drop (SIGTERM, then SIGKILL after `grace`).
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    grace: Duration,
}

impl Proc {
    /// Spawns `cmd` (already wrapped in nsenter) with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, grace: Duration) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            grace,
        })
    }

    /// Waits until `probe` answers true (see [`wait_until`]): the server is up, or an error
    /// with the end of its log when it exits first or `limit` runs out.
    pub fn wait_ready(
        &mut self,
        what: &str,
        limit: Duration,
        probe: impl FnMut() -> bool,
    ) -> Result<()> {
        wait_until(what, limit, Some(self), probe)
    }

    /// The exit status when the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal_group(&self, sig: Signal) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), sig);
    }
}

/// The last `lines` lines of the file at `path`.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal_group(Signal::SIGTERM);
        let end = Instant::now() + self.grace;
        while Instant::now() < end && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        // The group may outlive its leader (workers, helpers): SIGKILL whatever is left.
        self.signal_group(Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 250 ms until it returns true, for at most `limit`; an error naming
/// `what` (and the last lines of `log`) when time runs out or `proc` exits first.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut proc: Option<&mut Proc>,
    mut probe: impl FnMut() -> bool,
) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if probe() {
            return Ok(());
        }
        if let Some(p) = proc.as_deref_mut()
            && let Some(st) = p.exited()
        {
            anyhow::bail!(
                "{} exited ({st}) before {what}; its log ends with:\n{}",
                p.name,
                p.log_tail(40)
            );
        }
        if Instant::now() >= end {
            let tail = proc.map(|p| p.log_tail(40)).unwrap_or_default();
            anyhow::bail!("{what}: not within {limit:?}\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
