//! `ALIAS_HINTS` (one `u64` per remote-endpoint slot, `router_common::nat::alias_hint_slot`)
//! through a shared mapping of the array (`BPF_F_MMAPABLE`), so the GC can clear a slot with a
//! compare-and-swap: the datapath adds to a slot before and after it writes a forward alias,
//! and a slot is cleared only if it still holds the count the GC read *before* it took the
//! session snapshot in which no alias hashed to it. An alias written after that read moved
//! the count (the swap fails) or is followed by an add after the swap (the slot is set again).
//! A plain map update could not do this: it would overwrite an add that raced with it.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Result;
use aya::maps::Map;
use router_common::nat::ALIAS_HINT_SLOTS;

use super::mapped::MappedArray;

/// The mapped `ALIAS_HINTS` array.
pub struct AliasHints(MappedArray);

impl AliasHints {
    /// Maps the `ALIAS_HINTS` array taken from the loaded object.
    pub fn new(map: Map) -> Result<Self> {
        MappedArray::new(map, "ALIAS_HINTS", ALIAS_HINT_SLOTS as usize).map(Self)
    }

    fn slots(&self) -> &[AtomicU64] {
        self.0.slots()
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
