//! Closing descriptors whose close makes the kernel wait, on a thread of its own instead of
//! the caller's.
//!
//! The one such descriptor today is the one `fsmount` returns for a router namespace's private
//! procfs instance (`sysctl`): closing it dissolves the detached mount, and the kernel then
//! waits for an expedited RCU grace period before it lets go of it (`dissolve_on_fput` →
//! `namespace_unlock` → `synchronize_rcu_expedited`). A grace period ends only once every CPU
//! has passed a point where it may switch tasks, so on a kernel built without preemption it
//! lasts as long as the longest stretch of kernel work running elsewhere. Traced on the API's
//! threads during a 10 000-router batch, that wait was over 2 ms for about 1 router in 100, and
//! its total grew fourfold from the first tenth to the last: a share of the tail that each new
//! router paid for its own settings.

use std::{
    os::fd::OwnedFd,
    sync::{LazyLock, mpsc},
};

/// The closing thread's queue, None when the thread could not be started (then callers close
/// themselves).
static QUEUE: LazyLock<Option<mpsc::Sender<OwnedFd>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<OwnedFd>();
    let started = std::thread::Builder::new()
        .name("fd-closer".into())
        .spawn(move || rx.into_iter().for_each(drop));
    match started {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!("no closing thread ({e}): descriptors are closed by their callers");
            None
        }
    }
});

/// Closes `fd` soon, on the closing thread; at once, here, if there is none. The queue is
/// unbounded: one descriptor per new router namespace, each closed in a few milliseconds.
pub fn close_later(fd: OwnedFd) {
    if let Some(tx) = &*QUEUE
        && let Err(mpsc::SendError(fd)) = tx.send(fd)
    {
        drop(fd);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::*;

    #[test]
    fn a_descriptor_handed_over_is_closed_by_the_closing_thread() {
        let (read_end, write_end) = std::io::pipe().expect("pipe");
        close_later(OwnedFd::from(write_end));
        // The read end hangs up once the last write end is closed; waited for at most 5 s.
        let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(5000u16)).expect("poll");
        assert_eq!(ready, 1, "the write end is still open after 5 s");
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        assert!(revents.contains(PollFlags::POLLHUP), "{revents:?}");
        let threads = std::fs::read_dir("/proc/self/task")
            .expect("listing this process's threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "fd-closer")
            .count();
        assert_eq!(threads, 1, "one closing thread");
    }
}
