//! Router numbers (`dp_id`) on this node, kept in `<state_dir>/agent-routers` so that an agent
//! killed and restarted gives every router the number it had: the datapath's NAT sessions are
//! keyed by it, and survive only if it does not change. The daemon keeps the same numbers in
//! its database; the agent has no database, so one line `<router_id> <dp_id>` per router.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The file in the state directory.
pub const FILE: &str = "agent-routers";

/// Router id → number, persisted on every change.
#[derive(Debug)]
pub struct Numbers {
    path: PathBuf,
    by_router: BTreeMap<String, u32>,
}

impl Numbers {
    /// Reads the file (none yet: no routers).
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(FILE);
        let mut by_router = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let mut it = line.split_whitespace();
                    match (
                        it.next(),
                        it.next().and_then(|d| d.parse::<u32>().ok()),
                        it.next(),
                    ) {
                        (Some(id), Some(dp), None) => {
                            by_router.insert(id.to_string(), dp);
                        }
                        (None, ..) => {}
                        _ => bail!("{}:{}: not `<router_id> <dp_id>`", path.display(), n + 1),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(Self { path, by_router })
    }

    /// The router's number, allocating (and persisting) the lowest free one.
    pub fn get_or_allocate(&mut self, router_id: &str) -> Result<u32> {
        if let Some(n) = self.by_router.get(router_id) {
            return Ok(*n);
        }
        let mut used: Vec<u32> = self.by_router.values().copied().collect();
        used.sort_unstable();
        let mut n = 1;
        for u in used {
            if u == n {
                n += 1;
            } else if u > n {
                break;
            }
        }
        if n > router_common::MAX_ROUTERS {
            bail!(
                "no router number left (at most {} routers per node)",
                router_common::MAX_ROUTERS
            );
        }
        self.by_router.insert(router_id.to_string(), n);
        self.save()?;
        Ok(n)
    }

    /// The router's number, if it has one.
    pub fn get(&self, router_id: &str) -> Option<u32> {
        self.by_router.get(router_id).copied()
    }

    /// Every router with a number.
    pub fn routers(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_router.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Frees the router's number (after its teardown).
    pub fn release(&mut self, router_id: &str) -> Result<()> {
        if self.by_router.remove(router_id).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        for (id, n) in &self.by_router {
            writeln!(f, "{id} {n}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_survive_a_restart_and_are_reused_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Numbers::open(dir.path()).unwrap();
        assert_eq!(n.get_or_allocate("a").unwrap(), 1);
        assert_eq!(n.get_or_allocate("b").unwrap(), 2);
        assert_eq!(n.get_or_allocate("a").unwrap(), 1, "stable");
        drop(n);
        let mut n = Numbers::open(dir.path()).unwrap();
        assert_eq!(n.get("b"), Some(2), "read back after a restart");
        n.release("a").unwrap();
        assert_eq!(n.get_or_allocate("c").unwrap(), 1, "lowest free");
        assert_eq!(n.get_or_allocate("d").unwrap(), 3);
        std::fs::write(dir.path().join(FILE), "x y z\n").unwrap();
        assert!(
            Numbers::open(dir.path()).is_err(),
            "a corrupt file is an error, not a reset"
        );
    }
}
