//! `ALIAS_HINTS` (one `u64` per remote-endpoint slot, `router_common::nat::alias_hint_slot`)
//! through a shared mapping of the array (`BPF_F_MMAPABLE`), so the GC can clear a slot with a
//! compare-and-swap: the datapath adds to a slot before and after it writes a forward alias,
//! and a slot is cleared only if it still holds the count the GC read *before* it took the
//! session snapshot in which no alias hashed to it. An alias written after that read moved
//! the count (the swap fails) or is followed by an add after the swap (the slot is set again).
//! A plain map update could not do this: it would overwrite an add that raced with it.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use router_common::nat::ALIAS_HINT_SLOTS;

/// The mapped `ALIAS_HINTS` array.
pub struct AliasHints {
    slots: NonNull<AtomicU64>,
    /// Keeps the map (and its fd) alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives until drop.
unsafe impl Send for AliasHints {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for AliasHints {}

const LEN: usize = ALIAS_HINT_SLOTS as usize * std::mem::size_of::<u64>();

impl AliasHints {
    /// Maps the `ALIAS_HINTS` array taken from the loaded object.
    pub fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("ALIAS_HINTS is not an array map");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mapping the whole value area of an mmapable array map, shared, read-write;
        // the kernel checks the size and the map's flags.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping ALIAS_HINTS (a BPF_F_MMAPABLE array)");
        }
        let slots = NonNull::new(p.cast::<AtomicU64>()).context("mmap returned null")?;
        Ok(Self { slots, _map: data })
    }

    fn slots(&self) -> &[AtomicU64] {
        // SAFETY: LEN bytes of page-aligned shared memory, mapped until drop; AtomicU64 has
        // u64's layout, the array's element stride.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), ALIAS_HINT_SLOTS as usize) }
    }

    /// The set slots and their counts, read before the GC's snapshot of the session table.
    pub fn set_slots(&self) -> Vec<(u32, u64)> {
        self.slots()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let v = s.load(Ordering::SeqCst);
                (v != 0).then_some((i as u32, v))
            })
            .collect()
    }

    /// Clears each slot of `seen` (read by [`AliasHints::set_slots`] before the snapshot) that
    /// no alias of the snapshot hashes to (`live`), if it still holds the count seen then.
    /// Returns how many were cleared.
    pub fn clear_unused(&self, seen: &[(u32, u64)], live: &HashSet<u32>) -> usize {
        let slots = self.slots();
        seen.iter()
            .filter(|(i, _)| !live.contains(i))
            .filter(|(i, v)| {
                slots[*i as usize]
                    .compare_exchange(*v, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .count()
    }

    /// The count in `slot` (diagnostics and tests).
    pub fn get(&self, slot: u32) -> u64 {
        self.slots()[(slot & (ALIAS_HINT_SLOTS - 1)) as usize].load(Ordering::SeqCst)
    }
}

impl Drop for AliasHints {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference outlives `self`.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), LEN) };
    }
}
