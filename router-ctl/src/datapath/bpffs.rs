//! The bpffs side of the datapath: making sure a bpffs is mounted where the daemon pins,
//! the versioned pin layout, and removing pins.
//!
//! Layout under the configured directory:
//! `v<LAYOUT_VERSION>/<MAP_NAME>` for every map, and
//! `v<LAYOUT_VERSION>/links/<dev>@<ifindex>@<ingress|egress>` for every TCX link. The ifindex in
//! the link name tells a link on the current device from one left on a deleted device of the
//! same name. bpffs refuses `.` in names, so a `.` in a device name is stored as `:` (which no
//! device name can contain).

use std::{
    fs,
    path::{Path, PathBuf},
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

/// The directory of pinned links.
pub fn links_dir(bpffs: &Path) -> PathBuf {
    version_dir(bpffs).join("links")
}

/// Pin name of the link of `dev` (ifindex `ifindex`) on hook `hook`.
pub fn link_pin_name(dev: &str, ifindex: u32, hook: &str) -> String {
    format!("{}@{ifindex}@{hook}", dev.replace('.', ":"))
}

/// Parses a link pin name back into `(dev, ifindex, hook)`.
pub fn parse_link_pin_name(name: &str) -> Option<(String, u32, &str)> {
    let (rest, hook) = name.rsplit_once('@')?;
    let (dev, idx) = rest.rsplit_once('@')?;
    Some((dev.replace(':', "."), idx.parse().ok()?, hook))
}

/// Link pins of `dev` (any ifindex) on `hook`, or on every hook when `hook` is None.
pub fn link_pins_of(bpffs: &Path, dev: &str, hook: Option<&str>) -> Result<Vec<(PathBuf, u32)>> {
    let dir = links_dir(bpffs);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some((d, idx, h)) = parse_link_pin_name(&name)
            && d == dev
            && hook.is_none_or(|want| want == h)
        {
            out.push((entry.path(), idx));
        }
    }
    Ok(out)
}

/// Removes every pin (maps and links) of this layout version and their directories.
/// Removing a link pin detaches the link once no process holds it.
pub fn purge(bpffs: &Path) -> Result<()> {
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
        let n = link_pin_name("tap1234-56.ab", 42, "ingress");
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
        assert!(links_dir(Path::new("/b")).ends_with("links"));
    }
}
