//! How full the session table is, and with whose sessions: what the metrics endpoint reports
//! at each scrape (no polling loop keeps it).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use router_common::{DIR_IN, SessionKey, SessionValue};

use super::{Datapath, read_session_map};

/// The session table at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCensus {
    /// Entries in the table: sessions and the aliases of SNAT flows that changed port.
    pub entries: usize,
    /// The table's size (`max_entries` as the kernel reports it).
    pub capacity: u32,
    /// Sessions per router number (each session once, aliases not counted).
    pub per_router: BTreeMap<u32, usize>,
}

/// Sessions per router number in `entries` (the entries keyed by the reply tuple, one per
/// session of any kind).
pub fn per_router(entries: &HashMap<SessionKey, SessionValue>) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    for k in entries.keys().filter(|k| k.dir == DIR_IN) {
        *out.entry(u32::from(k.router_id)).or_insert(0) += 1;
    }
    out
}

impl Datapath {
    /// Reads the whole session table once (through the GC's handle, so API calls do not wait
    /// for the walk; a GC pass running meanwhile makes this wait for it).
    pub fn session_census(&self) -> Result<SessionCensus> {
        let map = self.gc_sessions.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = aya::maps::IterableMap::map(&*map)
            .info()
            .context("reading the session table's size")?
            .max_entries();
        let entries = read_session_map(&map)?;
        Ok(SessionCensus {
            entries: entries.len(),
            capacity,
            per_router: per_router(&entries),
        })
    }
}

#[cfg(test)]
mod tests {
    use router_common::DIR_OUT;

    use super::*;

    fn key(router_id: u16, dir: u8, sport: u16) -> SessionKey {
        SessionKey {
            router_id,
            proto: 6,
            dir,
            src: 1,
            dst: 2,
            sport,
            dport: 80,
        }
    }

    #[test]
    fn counts_sessions_not_aliases_per_router() {
        let v = SessionValue::default();
        let entries: HashMap<SessionKey, SessionValue> = [
            (key(1, DIR_IN, 1), v),
            (key(1, DIR_IN, 2), v),
            (key(1, DIR_OUT, 2), v),
            (key(7, DIR_IN, 1), v),
        ]
        .into_iter()
        .collect();
        let got = per_router(&entries);
        assert_eq!(got, BTreeMap::from([(1, 2), (7, 1)]));
    }
}
