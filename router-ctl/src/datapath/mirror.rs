//! Userspace copies of the configuration maps, so per-router changes never walk a whole map.
//!
//! `ROUTER_CONFIG`, `INTERNAL_CIDRS`, `INTERNAL_IFS`, `FLOATING_IPS`, `PORT_FORWARDINGS` and
//! `FAST_IFS` are written only by this daemon (the programs only read them). Finding one router's
//! entries in a map costs two syscalls per entry of every router (next key, lookup): with 1000
//! routers, each gateway set or interface add walked several thousand entries, and router creation
//! slowed down as routers accumulated. Each map is read once when the datapath opens (the pins
//! carry the previous run's entries) and every write goes to the map and then the copy, so the copy
//! is the map's content as long as the write succeeded.

use std::{collections::HashMap as StdHashMap, collections::HashSet, hash::Hash};

use anyhow::{Result, bail};
use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
};
use router_common::{CidrKey, FAST_IF_USED, FastIf};

use super::remove_missing_ok;

/// The keys of `copy` whose entries `pick` picks (collected, so the map can then be changed).
fn picked<K: Copy, V>(copy: &StdHashMap<K, V>, pick: impl Fn(&K, &V) -> bool) -> Vec<K> {
    copy.iter()
        .filter(|(k, v)| pick(k, v))
        .map(|(k, _)| *k)
        .collect()
}

/// A BPF hash map and its userspace copy.
pub(super) struct Mirrored<K, V> {
    map: HashMap<MapData, K, V>,
    copy: StdHashMap<K, V>,
}

impl<K: Pod + Hash + Eq, V: Pod> Mirrored<K, V> {
    /// Reads the whole map once.
    pub(super) fn new(map: HashMap<MapData, K, V>) -> Result<Self> {
        let mut copy = StdHashMap::new();
        for item in map.iter() {
            let (k, v) = item?;
            copy.insert(k, v);
        }
        Ok(Self { map, copy })
    }

    /// Entries, from the copy.
    pub(super) fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.copy.iter().map(|(k, v)| (*k, *v))
    }

    /// Whether the copy holds `k`.
    pub(super) fn contains(&self, k: &K) -> bool {
        self.copy.contains_key(k)
    }

    pub(super) fn insert(&mut self, k: K, v: V) -> Result<()> {
        self.map.insert(k, v, 0)?;
        self.copy.insert(k, v);
        Ok(())
    }

    /// Removes `k`; already gone is success.
    pub(super) fn remove(&mut self, k: &K) -> Result<()> {
        remove_missing_ok(self.map.remove(k))?;
        self.copy.remove(k);
        Ok(())
    }

    /// Removes the entries `pick` picks, found in the copy; returns how many went.
    pub(super) fn remove_where(&mut self, pick: impl Fn(&K, &V) -> bool) -> Result<usize> {
        let keys = picked(&self.copy, pick);
        for k in &keys {
            self.remove(k)?;
        }
        Ok(keys.len())
    }

    /// Replaces each entry `pick` picks, found in the copy, with `change` of it.
    pub(super) fn update_where(
        &mut self,
        pick: impl Fn(&K, &V) -> bool,
        change: impl Fn(V) -> V,
    ) -> Result<()> {
        for k in picked(&self.copy, pick) {
            if let Some(v) = self.copy.get(&k).copied() {
                self.insert(k, change(v))?;
            }
        }
        Ok(())
    }
}

/// `(prefix_len, router_id_be, addr)`: a CIDR key as the copy holds it.
type CidrEntry = (u32, u32, u32);

/// The `INTERNAL_CIDRS` trie and its userspace copy (keys only; every value is 1).
pub(super) struct Cidrs {
    map: LpmTrie<MapData, CidrKey, u32>,
    copy: HashSet<CidrEntry>,
}

fn entry(k: &Key<CidrKey>) -> CidrEntry {
    (k.prefix_len(), k.data().router_id_be, k.data().addr)
}

impl Cidrs {
    /// Reads the whole trie once.
    pub(super) fn new(map: LpmTrie<MapData, CidrKey, u32>) -> Result<Self> {
        let mut copy = HashSet::new();
        for k in map.keys() {
            copy.insert(entry(&k?));
        }
        Ok(Self { map, copy })
    }

    /// Keys of router `dp_id`, from the copy.
    pub(super) fn of_router(&self, dp_id: u32) -> Vec<Key<CidrKey>> {
        self.copy
            .iter()
            .filter(|(_, r, _)| *r == dp_id.to_be())
            .map(|(len, r, addr)| {
                Key::new(
                    *len,
                    CidrKey {
                        router_id_be: *r,
                        addr: *addr,
                    },
                )
            })
            .collect()
    }

    /// Whether `k` is present, from the copy.
    pub(super) fn contains(&self, k: &Key<CidrKey>) -> bool {
        self.copy.contains(&entry(k))
    }

    pub(super) fn insert(&mut self, k: &Key<CidrKey>) -> Result<()> {
        self.map.insert(k, 1, 0)?;
        self.copy.insert(entry(k));
        Ok(())
    }

    /// Removes `k`; already gone is success.
    pub(super) fn remove(&mut self, k: &Key<CidrKey>) -> Result<()> {
        remove_missing_ok(self.map.remove(k))?;
        self.copy.remove(&entry(k));
        Ok(())
    }
}

/// The `FAST_IFS` array (ifindex → device) and its userspace copy of the used slots, with the
/// same interface as `Mirrored`: an empty slot is all zero (no `FAST_IF_USED`).
pub(super) struct FastIfs {
    map: Array<MapData, FastIf>,
    copy: StdHashMap<u32, FastIf>,
}

impl FastIfs {
    /// Reads every slot once (one syscall each, at open).
    pub(super) fn new(map: Array<MapData, FastIf>) -> Result<Self> {
        let mut copy = StdHashMap::new();
        for k in 0..map.len() {
            let v = map.get(&k, 0)?;
            if v.flags & FAST_IF_USED != 0 {
                copy.insert(k, v);
            }
        }
        Ok(Self { map, copy })
    }

    /// Used slots, from the copy.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, FastIf)> + '_ {
        self.copy.iter().map(|(k, v)| (*k, *v))
    }

    /// The device in slot `k`, from the copy.
    pub(super) fn get(&self, k: &u32) -> Option<FastIf> {
        self.copy.get(k).copied()
    }

    /// Whether `k` has a slot (ifindexes from `router_common::MAX_FAST_IFS` on have none).
    pub(super) fn fits(&self, k: u32) -> bool {
        k < self.map.len()
    }

    /// Fills slot `k` (marking it used).
    pub(super) fn insert(&mut self, k: u32, v: FastIf) -> Result<()> {
        if !self.fits(k) {
            bail!(
                "ifindex {k} has no fast-path slot (the table holds {})",
                self.map.len()
            );
        }
        let v = FastIf {
            flags: v.flags | FAST_IF_USED,
            ..v
        };
        self.map.set(k, v, 0)?;
        self.copy.insert(k, v);
        Ok(())
    }

    /// Empties slot `k`; already empty (or out of range) is success.
    pub(super) fn remove(&mut self, k: &u32) -> Result<()> {
        if self.fits(*k) && self.copy.contains_key(k) {
            self.map.set(*k, FastIf::default(), 0)?;
        }
        self.copy.remove(k);
        Ok(())
    }

    /// Empties the slots `pick` picks, found in the copy.
    pub(super) fn remove_where(&mut self, pick: impl Fn(&u32, &FastIf) -> bool) -> Result<()> {
        for k in picked(&self.copy, pick) {
            self.remove(&k)?;
        }
        Ok(())
    }
}
