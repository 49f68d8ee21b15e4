//! A `BPF_F_MMAPABLE` array of `u64` mapped shared into the daemon and seen as atomics, so
//! the daemon's reads and changes never lose an add the datapath makes to the same word at
//! the same time (a map update would overwrite it). `counts` and `hints` build on it.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};

/// The mapped value area of one array map.
pub struct MappedArray {
    slots: NonNull<AtomicU64>,
    len: usize,
    /// Keeps the map (and its fd) alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives until drop.
unsafe impl Send for MappedArray {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps the `len` slots of the array `map` (called `name` in errors) taken from the
    /// loaded object.
    pub fn new(map: Map, name: &str, len: usize) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("{name} is not an array map");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mapping the whole value area of an mmapable array map, shared, read-write;
        // the kernel checks the size and the map's flags.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {name} (a BPF_F_MMAPABLE array)"));
        }
        let slots = NonNull::new(p.cast::<AtomicU64>()).context("mmap returned null")?;
        Ok(Self {
            slots,
            len,
            _map: data,
        })
    }

    fn bytes(len: usize) -> usize {
        len * std::mem::size_of::<u64>()
    }

    /// Every slot, by index.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: `len` u64s of page-aligned shared memory, mapped until drop; AtomicU64 has
        // u64's layout, the array's element stride.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.len) }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference outlives `self`.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), Self::bytes(self.len)) };
    }
}
