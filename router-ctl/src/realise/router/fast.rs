//! The fast path of a router's devices (`datapath::fast`): which devices run `fast_fwd`, kept
//! in the memo so a steady router costs nothing, checked against the kernel by reconcile.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;

use super::inside::InsideMode;
use crate::{
    datapath::Datapath,
    model::spec::{RouterSpec, names},
    net::{LinkState, neigh},
    realise::{Realiser, lock},
};

impl Realiser {
    /// The fast path of one router, on the thread of `process_inside` (router namespace, `h`):
    /// every device of `ready` runs `fast_fwd` with its `FAST_IFS` entry, and devices that
    /// left it lose theirs. The memo makes it free when in place; `verify` (reconcile) asks
    /// the kernel whether each filter is still there, puts back one removed from outside, and
    /// refreshes the namespace's stale neighbours (see `net::neigh`). With the fast path off,
    /// the router's first converge removes any filter an earlier run left. A device the fast
    /// path cannot take stays on the slow path with a warning: the router works either way.
    pub(super) async fn process_fast_path(
        &self,
        h: &rtnetlink::Handle,
        spec: &RouterSpec,
        ready: &[(String, u32, [u8; 6], bool)],
        present: &HashMap<String, LinkState>,
        mode: InsideMode,
    ) -> Result<Vec<String>> {
        let verify = mode.verify;
        let (known, fast_off, unlisted) = lock(&self.memo)
            .get(&spec.id)
            .map(|m| (m.fast.clone(), m.fast_off, m.unlisted))
            .unwrap_or_default();
        let mut changes = Vec::new();
        if !self.fast_path() {
            if !fast_off {
                for name in present
                    .keys()
                    .filter(|n| names::parse_router_dev(n).is_some())
                {
                    self.datapath.detach_fast(name)?;
                }
                let mut memo = lock(&self.memo);
                let m = memo.entry(spec.id.clone()).or_default();
                m.fast.clear();
                m.fast_off = true;
            }
            return Ok(changes);
        }
        let mut now = BTreeMap::new();
        for (name, ifindex, mac, gateway) in ready {
            let prev = known.get(name);
            if let Some((idx, old_mac)) = prev
                && idx != ifindex
            {
                // The device was made again: its old entry names an ifindex it no longer has.
                self.datapath.forget_fast(*idx, *old_mac)?;
            }
            let remembered = prev == Some(&(*ifindex, *mac))
                && self
                    .datapath
                    .fast_entry_ok(*ifindex, *mac, spec.dp_id, *gateway);
            if remembered && (!verify || Datapath::fast_in_place(h, *ifindex).await?) {
                now.insert(name.clone(), (*ifindex, *mac));
                continue;
            }
            match self.datapath.attach_fast(name, spec.dp_id, *gateway) {
                Ok(true) => {
                    now.insert(name.clone(), (*ifindex, *mac));
                    if remembered {
                        changes.push(format!("fast path {name}"));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("router {}: {name} stays on the slow path: {e:#}", spec.id)
                }
            }
        }
        for (name, (idx, mac)) in &known {
            if now.contains_key(name) {
                continue;
            }
            if present.get(name).is_some_and(|l| l.index == *idx) {
                self.datapath.detach_fast(name)?;
            } else {
                self.datapath.forget_fast(*idx, *mac)?;
            }
        }
        let unlist = mode.unlist && !unlisted && !now.is_empty();
        if unlist {
            // Once a run, at the router's first full check after the start-up resync: a
            // namespace an earlier version made still has its block in the kernel's list
            // (`datapath::unlist`).
            self.datapath.unlist_router_block();
        }
        if verify && !now.is_empty() {
            let ifindexes: HashSet<u32> = now.values().map(|(idx, _)| *idx).collect();
            if let Err(e) = neigh::refresh_stale(h, &ifindexes).await {
                tracing::warn!("router {}: {e:#}", spec.id);
            }
        }
        let mut memo = lock(&self.memo);
        let m = memo.entry(spec.id.clone()).or_default();
        m.fast = now;
        m.fast_off = false;
        m.unlisted |= unlist;
        Ok(changes)
    }
}
