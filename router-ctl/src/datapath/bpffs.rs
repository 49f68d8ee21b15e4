//! The bpffs side of the datapath: making sure a bpffs is mounted where the daemon pins,
//! the versioned pin layout, and removing pins.
//!
//! Layout under the configured directory: `v<LAYOUT_VERSION>/<MAP_NAME>` for every map.
//!
//! Daemons up to layout 3 attached with TCX links pinned as
//! `v<N>/links/<dev>@<ifindex>@<ingress|egress>` (a `.` in a device name stored as `:`, which
//! bpffs refuses). The programs are tc filters now (`datapath::filter`) and need no pin;
//! `LegacyLinks` removes those pins — detaching their links — once a filter has taken over
//! the device, so no device runs both.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context as _, Result};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use router_common::LAYOUT_VERSION;

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Creates `path` and mounts a bpffs on it unless it already is on one.
pub fn ensure_mounted(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    if is_bpffs(path) {
        return Ok(());
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpffs on {}", path.display()))?;
    Ok(())
}

/// The versioned pin directory.
pub fn version_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("v{LAYOUT_VERSION}"))
}

/// Name of the pin an older daemon gave the TCX link of `dev` (ifindex `ifindex`) on `hook`
/// (`ingress`/`egress`), under `v<N>/links/`.
pub fn legacy_link_pin_name(dev: &str, ifindex: u32, hook: &str) -> String {
    format!("{}@{ifindex}@{hook}", dev.replace('.', ":"))
}

/// Parses a legacy link pin name back into `(dev, ifindex, hook)`.
pub fn parse_link_pin_name(name: &str) -> Option<(String, u32, &str)> {
    let (rest, hook) = name.rsplit_once('@')?;
    let (dev, idx) = rest.rsplit_once('@')?;
    Some((dev.replace(':', "."), idx.parse().ok()?, hook))
}

/// The `v<N>` directories under `bpffs`, with their layout version.
fn version_dirs(bpffs: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = match fs::read_dir(bpffs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", bpffs.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let version = name
            .to_string_lossy()
            .strip_prefix('v')
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(v) = version
            && entry.file_type()?.is_dir()
        {
            out.push((v, entry.path()));
        }
    }
    Ok(out)
}

/// The `links` directories of every layout version under `bpffs`.
fn legacy_link_dirs(bpffs: &Path) -> Result<Vec<PathBuf>> {
    Ok(version_dirs(bpffs)?
        .into_iter()
        .map(|(_, dir)| dir.join("links"))
        .filter(|links| links.is_dir())
        .collect())
}

fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pin {}", path.display())),
    }
}

/// TCX link pins left by a daemon that attached with TCX, by device name.
///
/// They are this daemon's own (its bpffs). Each stays, and keeps its program running, until
/// `remove_device` is called for its device: once a filter runs there (attach), or when the
/// datapath leaves the device (detach); `purge` removes the rest. Nothing is removed by
/// looking a name up, since the namespace a caller runs in may not be the daemon's. TCX
/// programs run before the clsact filters and ours end the hook (never `TC_ACT_UNSPEC`), so
/// while both are attached packets are translated once, and at no moment by none.
#[derive(Debug, Default)]
pub struct LegacyLinks {
    pins: Mutex<HashMap<String, Vec<PathBuf>>>,
}

impl LegacyLinks {
    /// Reads the pins under `bpffs`.
    pub fn scan(bpffs: &Path) -> Result<Self> {
        let mut pins: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for dir in legacy_link_dirs(bpffs)? {
            let entries =
                fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some((dev, _, _)) = name.as_deref().and_then(parse_link_pin_name) {
                    pins.entry(dev).or_default().push(path);
                }
            }
        }
        Ok(Self {
            pins: Mutex::new(pins),
        })
    }

    /// Removes the pins of `dev`, which detaches its TCX links.
    pub fn remove_device(&self, dev: &str) -> Result<()> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(paths) = pins.remove(dev) {
            for p in &paths {
                remove_pin(p)?;
                // The last pin of an older version's `links/` takes the emptied directories.
                if let Some(version) = p.parent().and_then(Path::parent)
                    && version.file_name() != version_dir(Path::new("")).file_name()
                {
                    remove_empty_dirs(version);
                }
            }
        }
        Ok(())
    }

    /// Devices still carrying a legacy link.
    pub fn devices(&self) -> Vec<String> {
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        pins.keys().cloned().collect()
    }
}

/// Removes the map pins an earlier layout version left (each a whole preallocated session
/// table: ≈ 25 MB of kernel memory nobody reads any more). Programs still running from that
/// version keep their maps alive through their own references; its `links/` directory stays
/// for [`LegacyLinks`] to take over device by device, and the version directory goes once it
/// is empty. Returns the directories it touched.
pub fn remove_stale_maps(bpffs: &Path) -> Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = version_dirs(bpffs)?
        .into_iter()
        .filter(|(v, _)| *v != LAYOUT_VERSION)
        .map(|(_, dir)| dir)
        .collect();
    for dir in &dirs {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                remove_pin(&entry.path())?;
            }
        }
        remove_empty_dirs(dir);
    }
    Ok(dirs)
}

/// Removes `dir/links` and `dir` where they are empty (a non-empty one stays: not an error).
fn remove_empty_dirs(dir: &Path) {
    let _ = fs::remove_dir(dir.join("links"));
    let _ = fs::remove_dir(dir);
}

/// Removes every map pin of this layout version and of earlier ones and every legacy link pin
/// (detaching those links), with their directories. Programs attached as tc filters stay until
/// their device goes.
pub fn purge(bpffs: &Path) -> Result<()> {
    remove_stale_maps(bpffs)?;
    for dir in legacy_link_dirs(bpffs)? {
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    let dir = version_dir(bpffs);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        let n = legacy_link_pin_name("tap1234-56.ab", 42, "ingress");
        assert_eq!(n, "tap1234-56:ab@42@ingress");
        assert!(!n.contains('.'), "bpffs refuses dots");
        assert_eq!(
            parse_link_pin_name(&n),
            Some(("tap1234-56.ab".to_string(), 42, "ingress"))
        );
        assert_eq!(parse_link_pin_name("garbage"), None);
        assert_eq!(parse_link_pin_name("a@x@ingress"), None);
    }

    #[test]
    fn version_dir_carries_the_layout_version() {
        let d = version_dir(Path::new("/sys/fs/bpf/rc"));
        assert_eq!(
            d,
            PathBuf::from(format!("/sys/fs/bpf/rc/v{LAYOUT_VERSION}"))
        );
    }
}
