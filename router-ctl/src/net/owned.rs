//! The record of kernel objects this daemon created, under `<state-dir>/owned/`: one file per
//! object (`netns/<name>`, `link/<name>`), written before the object is created and removed
//! after it is deleted. Reconcile and purge delete only what is recorded here, so daemons that
//! share a machine never touch each other's objects. A record says what the object is for
//! (`Record`); its text form is made and read here only.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Kind of recorded object: decides the subdirectory.
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
    fn dir(self) -> &'static str {
        match self {
            Kind::Netns => "netns",
            Kind::Link => "link",
        }
    }
}

/// The ownership records of one daemon.
#[derive(Clone, Debug)]
pub struct Owned {
    root: PathBuf,
}

impl Owned {
    /// Opens (creating) `<state_dir>/owned`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let root = state_dir.join("owned");
        for k in [Kind::Netns, Kind::Link] {
            let d = root.join(k.dir());
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Self { root })
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        self.root.join(kind.dir()).join(name)
    }

    /// Records `name`, before the object is created. Written whole (a temporary file renamed
    /// into place) but not fsync'd: what a record describes, a namespace or a device, does not
    /// outlive a reboot, and a crash of the daemon leaves the page cache and so the record intact.
    pub fn record(&self, name: &str, record: &Record) -> Result<()> {
        let content = record.to_text();
        let p = self.path(record.kind(), name);
        let tmp = p.with_extension("tmp");
        {
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(content.as_bytes())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
    }

    /// Forgets `name`; missing is success.
    pub fn forget(&self, kind: Kind, name: &str) -> Result<()> {
        let p = self.path(kind, name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }

    /// The record of `name`, if recorded (`Some(None)`: recorded but unreadable).
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Option<Record>>> {
        let p = self.path(kind, name);
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(Record::parse(kind, &s))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Whether `name` is recorded.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.path(kind, name).exists()
    }

    /// Every record of `kind` as (name, record; None when unreadable).
    pub fn list(&self, kind: Kind) -> Result<Vec<(String, Option<Record>)>> {
        Ok(self
            .names(kind)?
            .into_iter()
            .map(|name| {
                let content = fs::read_to_string(self.path(kind, &name)).unwrap_or_default();
                let record = Record::parse(kind, &content);
                (name, record)
            })
            .collect())
    }

    /// The names of every record of `kind` (the kernel objects themselves, whatever the
    /// record says).
    /// Reads the directory only: a reconcile pass lists every record each time and reads the
    /// few it acts on.
    pub fn names(&self, kind: Kind) -> Result<Vec<String>> {
        let d = self.root.join(kind.dir());
        let mut out = Vec::new();
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.ends_with(".tmp")
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
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
            Some(Some(router))
        );
        let text = fs::read_to_string(dir.path().join("owned/netns/qrouter-r-1")).unwrap();
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
        fs::write(dir.path().join("owned/netns/qrouter-x"), "garbage").unwrap();
        assert_eq!(owned.get(Kind::Netns, "qrouter-x").unwrap(), Some(None));
    }
}
