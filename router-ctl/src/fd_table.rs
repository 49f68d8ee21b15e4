//! The process's descriptor table, grown once at start to what the descriptor limit allows.
//!
//! The daemon and the agent hold descriptors per router (its metadata proxy's listening socket
//! among them), so the table grows with the routers. The kernel grows it by doubling, and
//! while it does, every thread of the process that opens a descriptor waits, for a full RCU
//! grace period once the process has more than one thread (`alloc_fd` → `expand_files` →
//! `synchronize_rcu`): the API's accept, the calls' netlink sockets, the namespace workers.
//! Traced on the API's threads, that was 10–23 ms per doubling while routers were made and
//! 58–74 ms in the window of a restart that adopted 3000 routers (each restart starts from the
//! smallest table again). Grown at start, while nothing waits, it never grows under load.

use std::{fs::File, os::fd::RawFd};

use rustix::process::{Resource, getrlimit};

/// The most entries the table is grown to, whatever the limit: 8 bytes each plus bitmaps, so
/// at most about 1 MiB; a limit above it is left to grow the usual way past it.
const MAX_ENTRIES: u64 = 1 << 17;

/// Below this the kernel's growing costs nothing worth avoiding (a few small doublings).
const SMALL: u64 = 1024;

/// Grows the descriptor table to hold `min(soft RLIMIT_NOFILE, MAX_ENTRIES)` descriptors.
/// Best effort: the daemon works the same without it.
pub fn presize() {
    let limit = getrlimit(Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
        .min(MAX_ENTRIES);
    if limit <= SMALL {
        return;
    }
    let grown = File::open("/dev/null").and_then(|null| {
        // The lowest free descriptor at or above `limit - 1`: the kernel grows the table to
        // hold it, and it stays that size once the duplicate is closed.
        let at = RawFd::try_from(limit - 1).unwrap_or(RawFd::MAX);
        Ok(rustix::io::fcntl_dupfd_cloexec(&null, at)?)
    });
    if let Err(e) = grown {
        tracing::debug!("descriptor table not grown to {limit} entries: {e}");
    }
}

#[cfg(test)]
mod tests {
    use rustix::process::{Rlimit, setrlimit};

    use super::*;

    /// The table size the kernel reports for this process (`FDSize` in /proc/self/status).
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("reading status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("an FDSize line")
    }

    #[test]
    fn the_table_is_grown_to_the_soft_limit_at_once() {
        let was = getrlimit(Resource::Nofile);
        // Raise the soft limit above the small case (never lower it), within the hard limit,
        // which may only allow the small case: then the call must leave the table alone.
        let hard = was.maximum.unwrap_or(u64::MAX);
        let want = was.current.unwrap_or(u64::MAX).max(4 * SMALL).min(hard);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: was.maximum,
            },
        )
        .expect("raising the soft descriptor limit");
        let before = table_size();
        presize();
        let after = table_size();
        setrlimit(Resource::Nofile, was).expect("restoring the descriptor limit");
        if want > SMALL {
            let expected = want.min(MAX_ENTRIES);
            assert!(after >= expected, "table {before} -> {after}, limit {want}");
        } else {
            assert_eq!(after, before, "grown below the small case");
        }
    }
}
