//! The record of kernel objects this daemon created, in `<state-dir>/owned.db`: one row per
//! object (a namespace or a device, by name), written before the object is created and removed
//! after it is deleted. Reconcile and purge delete only what is recorded here, so daemons that
//! share a machine never touch each other's objects. A record says what the object is for
//! (`Record`); its text form is made and read here only. The records are apart from the
//! desired state (`router.db`) so that purge can clean up without it.
//!
//! Earlier versions kept one file per object under `<state-dir>/owned/`; `Owned::open` moves
//! such records into the table. Files cost an inode each: four a router, and where the state
//! directory is on ext4 without a journal (as on the bench's VM) each new inode passes over
//! every inode freed in the last 12 hours, a millisecond or more a router after a day of
//! creating and deleting routers.

use std::{
    fs,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OptionalExtension as _, params};

/// Kind of recorded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A router namespace `qrouter-<id>`.
    Netns,
    /// A device in the daemon's namespace.
    Link,
}

/// What a recorded object is for: enough for reconcile and purge to remove it and what goes
/// with it (a router's NAT state by its `dp_id`) without the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A router's namespace; text `<router_id> <dp_id>`.
    Router { router_id: String, dp_id: u32 },
    /// A network's bridge; text `bridge <network_id>`.
    Bridge { network_id: String },
    /// The tap of a router's port; text `tap <router_id>`.
    Tap { router_id: String },
    /// A device made to carry a network's segment (`vxlan-<vni>`, `<iface>.<vid>`); text
    /// `uplink <network_id>`.
    Uplink { network_id: String },
}

impl Record {
    /// The subdirectory the record goes to.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Router { .. } => Kind::Netns,
            Record::Bridge { .. } | Record::Tap { .. } | Record::Uplink { .. } => Kind::Link,
        }
    }

    fn to_text(&self) -> String {
        match self {
            Record::Router { router_id, dp_id } => format!("{router_id} {dp_id}\n"),
            Record::Bridge { network_id } => format!("bridge {network_id}"),
            Record::Tap { router_id } => format!("tap {router_id}\n"),
            Record::Uplink { network_id } => format!("uplink {network_id}\n"),
        }
    }

    /// Reads the text of a record of `kind`; None when it is not one.
    fn parse(kind: Kind, text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let rec = match (kind, it.next()?, it.next()) {
            (Kind::Netns, id, Some(dp)) => Record::Router {
                router_id: id.to_string(),
                dp_id: dp.parse().ok()?,
            },
            (Kind::Link, "bridge", Some(id)) => Record::Bridge {
                network_id: id.to_string(),
            },
            (Kind::Link, "tap", Some(id)) => Record::Tap {
                router_id: id.to_string(),
            },
            (Kind::Link, "uplink", Some(id)) => Record::Uplink {
                network_id: id.to_string(),
            },
            _ => return None,
        };
        it.next().is_none().then_some(rec)
    }
}

impl Kind {
    /// Its name in the table (and the subdirectory of the old file records).
    fn as_str(self) -> &'static str {
        match self {
            Kind::Netns => "netns",
            Kind::Link => "link",
        }
    }
}

/// The ownership records of one daemon (clones share the connection).
#[derive(Clone, Debug)]
pub struct Owned {
    db: Arc<Mutex<Connection>>,
    /// Records written or forgotten so far (a reconcile pass compares it with the last clean
    /// pass's, see `realise::reconcile`).
    writes: Arc<AtomicU64>,
}

impl Owned {
    /// Opens (creating) `<state_dir>/owned.db`, moving in the file records of earlier versions.
    ///
    /// WAL with `synchronous = NORMAL`: a commit is a write to the log, with no flush to disk.
    /// What a record describes, a namespace or a device, does not outlive a reboot, and a
    /// crash of the daemon leaves the log intact; a power loss may lose the last records but
    /// not corrupt the file.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("owned.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS owned (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (kind, name)
            ) WITHOUT ROWID;",
        )
        .with_context(|| format!("creating the table of {}", path.display()))?;
        let owned = Self {
            db: Arc::new(Mutex::new(conn)),
            writes: Arc::new(AtomicU64::new(0)),
        };
        owned.adopt_files(&state_dir.join("owned"))?;
        Ok(owned)
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding it leaves the connection as usable as before.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the one-file-per-object records of earlier versions (`<dir>/<kind>/<name>`) into
    /// the table, then removes the files: first all rows in one transaction, then the files,
    /// so a crash in between only moves them again.
    fn adopt_files(&self, dir: &Path) -> Result<()> {
        if !dir.is_dir() {
            return Ok(());
        }
        let mut files = Vec::new();
        for kind in [Kind::Netns, Kind::Link] {
            let d = dir.join(kind.as_str());
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for entry in entries {
                let path = entry
                    .with_context(|| format!("reading {}", d.display()))?
                    .path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string);
                match name {
                    // A record being written when an earlier version stopped: its object was
                    // never created.
                    Some(n) if n.ends_with(".tmp") => files.push((kind, None, path)),
                    Some(n) => {
                        let text = fs::read_to_string(&path).unwrap_or_default();
                        files.push((kind, Some((n, text)), path));
                    }
                    None => {}
                }
            }
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        for (kind, rec, _) in &files {
            if let Some((name, text)) = rec {
                tx.execute(
                    "INSERT OR REPLACE INTO owned (kind, name, record) VALUES (?1, ?2, ?3)",
                    params![kind.as_str(), name, text],
                )?;
            }
        }
        tx.commit()
            .with_context(|| format!("moving the records of {}", dir.display()))?;
        drop(db);
        for (_, _, path) in &files {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        for kind in [Kind::Netns, Kind::Link] {
            let _ = fs::remove_dir(dir.join(kind.as_str()));
        }
        let _ = fs::remove_dir(dir);
        Ok(())
    }

    /// Records `name` (replacing its record), before the object is created.
    pub fn record(&self, name: &str, record: &Record) -> Result<()> {
        let kind = record.kind();
        self.db()
            .prepare_cached(
                "INSERT OR REPLACE INTO owned (kind, name, record) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![kind.as_str(), name, record.to_text()])
            .with_context(|| format!("recording {} {name}", kind.as_str()))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets `name`; missing is success.
    pub fn forget(&self, kind: Kind, name: &str) -> Result<()> {
        self.db()
            .prepare_cached("DELETE FROM owned WHERE kind = ?1 AND name = ?2")?
            .execute(params![kind.as_str(), name])
            .with_context(|| format!("forgetting {} {name}", kind.as_str()))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records written or forgotten by this process so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The record of `name`, if recorded (`Some(None)`: recorded but unreadable).
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Option<Record>>> {
        let text: Option<String> = self
            .db()
            .prepare_cached("SELECT record FROM owned WHERE kind = ?1 AND name = ?2")?
            .query_row(params![kind.as_str(), name], |r| r.get(0))
            .optional()
            .with_context(|| format!("reading the record of {} {name}", kind.as_str()))?;
        Ok(text.map(|t| Record::parse(kind, &t)))
    }

    /// Whether `name` is recorded.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        matches!(self.get(kind, name), Ok(Some(_)))
    }

    /// Every record of `kind` as (name, record; None when unreadable).
    pub fn list(&self, kind: Kind) -> Result<Vec<(String, Option<Record>)>> {
        let db = self.db();
        let mut st = db.prepare_cached("SELECT name, record FROM owned WHERE kind = ?1")?;
        let rows = st.query_map([kind.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (name, text) = row?;
            Ok((name, Record::parse(kind, &text)))
        })
        .collect()
    }

    /// The names of every record of `kind` (the kernel objects themselves, whatever the
    /// record says): a reconcile pass lists every record each time and reads the few it acts
    /// on.
    pub fn names(&self, kind: Kind) -> Result<Vec<String>> {
        let db = self.db();
        let mut st = db.prepare_cached("SELECT name FROM owned WHERE kind = ?1")?;
        let names = st.query_map([kind.as_str()], |r| r.get(0))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_keep_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let owned = Owned::open(dir.path()).unwrap();
        let router = Record::Router {
            router_id: "r-1".into(),
            dp_id: 7,
        };
        let tap = Record::Tap {
            router_id: "r-1".into(),
        };
        let bridge = Record::Bridge {
            network_id: "n-1".into(),
        };
        owned.record("qrouter-r-1", &router).unwrap();
        owned.record("tapabc", &tap).unwrap();
        owned.record("brqn-1", &bridge).unwrap();
        assert_eq!(
            owned.get(Kind::Netns, "qrouter-r-1").unwrap(),
            Some(Some(router.clone()))
        );
        assert!(owned.contains(Kind::Link, "tapabc"));
        assert!(!owned.contains(Kind::Netns, "tapabc"), "kinds are apart");
        let text: String = owned
            .db()
            .query_row(
                "SELECT record FROM owned WHERE name = 'qrouter-r-1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(text, "r-1 7\n");
        let mut links = owned.list(Kind::Link).unwrap();
        links.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            links,
            vec![
                ("brqn-1".into(), Some(bridge)),
                ("tapabc".into(), Some(tap))
            ]
        );
        owned
            .db()
            .execute(
                "INSERT INTO owned VALUES ('netns', 'qrouter-x', 'garbage')",
                [],
            )
            .unwrap();
        assert_eq!(owned.get(Kind::Netns, "qrouter-x").unwrap(), Some(None));
        owned.forget(Kind::Link, "tapabc").unwrap();
        owned.forget(Kind::Link, "tapabc").unwrap();
        assert_eq!(owned.get(Kind::Link, "tapabc").unwrap(), None);
        // Another opening (a restart, purge) sees the same records.
        drop(owned);
        let again = Owned::open(dir.path()).unwrap();
        let mut names = again.names(Kind::Netns).unwrap();
        names.sort();
        assert_eq!(names, ["qrouter-r-1", "qrouter-x"]);
        assert_eq!(
            again.get(Kind::Netns, "qrouter-r-1").unwrap(),
            Some(Some(router))
        );
    }

    #[test]
    fn the_file_records_of_earlier_versions_are_moved_in_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("owned");
        fs::create_dir_all(old.join("netns")).unwrap();
        fs::create_dir_all(old.join("link")).unwrap();
        fs::write(old.join("netns/qrouter-r-1"), "r-1 7\n").unwrap();
        fs::write(old.join("link/brqn-1"), "bridge n-1").unwrap();
        fs::write(old.join("link/tapabc"), "tap r-1\n").unwrap();
        // Written when the old daemon stopped: its device was never created.
        fs::write(old.join("link/tapdef.tmp"), "tap r-2\n").unwrap();
        let owned = Owned::open(dir.path()).unwrap();
        assert_eq!(
            owned.get(Kind::Netns, "qrouter-r-1").unwrap(),
            Some(Some(Record::Router {
                router_id: "r-1".into(),
                dp_id: 7
            }))
        );
        let mut links = owned.names(Kind::Link).unwrap();
        links.sort();
        assert_eq!(links, ["brqn-1", "tapabc"]);
        assert!(!old.exists(), "the old directory is gone");
    }
}
