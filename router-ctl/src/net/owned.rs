//! The record of kernel objects this daemon created, under `<state-dir>/owned/`: one file per
//! object (`netns/<name>`, `link/<name>`), written before the object is created and removed
//! after it is deleted. Reconcile and purge delete only what is recorded here, so daemons that
//! share a machine never touch each other's objects.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Kind of recorded object: decides the subdirectory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A router namespace `qrouter-<id>`; content: `<router_id> <dp_id>`.
    Netns,
    /// A device in the daemon's namespace: `bridge <network_id>` or `tap <router_id>`.
    Link,
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

    /// Records `name` (durably: fsync'd before the object is created).
    pub fn record(&self, kind: Kind, name: &str, content: &str) -> Result<()> {
        let p = self.path(kind, name);
        let tmp = p.with_extension("tmp");
        {
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(content.as_bytes())
                .and_then(|()| f.sync_all())
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

    /// The content of the record of `name`, if recorded.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<String>> {
        let p = self.path(kind, name);
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Whether `name` is recorded.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.path(kind, name).exists()
    }

    /// Every record of `kind` as (name, content).
    pub fn list(&self, kind: Kind) -> Result<Vec<(String, String)>> {
        let d = self.root.join(kind.dir());
        let mut out = Vec::new();
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.ends_with(".tmp") {
                continue;
            }
            let content = fs::read_to_string(entry.path()).unwrap_or_default();
            out.push((name, content));
        }
        Ok(out)
    }
}
