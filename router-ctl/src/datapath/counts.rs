//! `ROUTER_SESSIONS` (entries of the session table each router holds, one `u64` per router
//! number) through a shared mapping of the array (`BPF_F_MMAPABLE`): the datapath adds to a
//! router's count atomically as it inserts and removes entries on the new-flow path, and
//! refuses a router's new flow once its count reaches the cap. The daemon adjusts counts with
//! atomic adds on the same words, never a plain store, so no datapath update is lost: the GC
//! moves each router's count to what its walk of the table found (which also repairs counts
//! left wrong by a crash, an upgrade from a datapath that did not count, or deletes nobody
//! counted), and removing a router zeroes its count.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use aya::maps::Map;
use router_common::MAX_ROUTERS;

use super::mapped::MappedArray;

/// The mapped `ROUTER_SESSIONS` array.
pub struct RouterSessions(MappedArray);

impl RouterSessions {
    /// Maps the `ROUTER_SESSIONS` array taken from the loaded object.
    pub fn new(map: Map) -> Result<Self> {
        MappedArray::new(map, "ROUTER_SESSIONS", MAX_ROUTERS as usize).map(Self)
    }

    fn slots(&self) -> &[AtomicU64] {
        self.0.slots()
    }

    /// The count of router `dp_id` (0 for a number out of range).
    pub fn get(&self, dp_id: u32) -> u64 {
        self.slots()
            .get(dp_id as usize)
            .map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Every count, by router number.
    pub fn all(&self) -> Vec<u64> {
        self.slots()
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .collect()
    }

    /// Adds `delta` to router `dp_id`'s count (atomically, wrapping like the datapath's adds).
    pub fn add(&self, dp_id: u32, delta: i64) {
        if let Some(s) = self.slots().get(dp_id as usize) {
            s.fetch_add(delta as u64, Ordering::SeqCst);
        }
    }

    /// Moves router `dp_id`'s count by what it takes to read zero now (entries the datapath
    /// counts concurrently still count).
    pub fn clear(&self, dp_id: u32) {
        if let Some(s) = self.slots().get(dp_id as usize) {
            let v = s.load(Ordering::SeqCst);
            s.fetch_sub(v, Ordering::SeqCst);
        }
    }
}

/// How much to add to a router's count after a GC pass, from the count read before the walk
/// (`before`), the entries the walk found (`found`) and how many of those the pass deleted
/// (`deleted`): the count then says what the table holds, plus whatever the datapath created
/// after the first read (counted by it; if the walk saw some of those too they are counted
/// twice until the next pass corrects them).
pub fn correction(before: u64, found: u64, deleted: u64) -> i64 {
    let want = found.saturating_sub(deleted);
    (want as i64).wrapping_sub(before as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_bring_a_count_to_the_table() {
        assert_eq!(correction(10, 10, 0), 0, "in step");
        assert_eq!(correction(10, 10, 4), -4, "the pass deleted four");
        assert_eq!(
            correction(0, 7, 0),
            7,
            "entries nobody counted (an older datapath)"
        );
        assert_eq!(
            correction(9, 0, 0),
            -9,
            "deletes nobody counted (a crash, a flush)"
        );
        let mut c: u64 = 3;
        c = c.wrapping_add(correction(3, 1, 1) as u64);
        assert_eq!(c, 0);
    }
}
