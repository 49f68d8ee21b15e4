//! Removal: one router (its namespace, taps, NAT state and sessions) and, for `--purge` and
//! test cleanup, everything this daemon recorded.

use std::collections::BTreeSet;

use anyhow::Result;

use super::{Realiser, lock, validate::validate_id};
use crate::{
    model::spec::names,
    net::{
        link,
        ns::{self, NetnsHandle, in_netns, with_netlink},
        owned::{Kind, Record},
    },
};

impl Realiser {
    /// Removes the router's namespace and everything under it, its NAT config and sessions.
    pub fn remove_router(&self, router_id: &str, dp_id: u32) -> Result<()> {
        validate_id("router", router_id)?;
        let _g = self.lock_op();
        self.remove_router_locked(router_id, dp_id)
    }

    pub(super) fn remove_router_locked(&self, router_id: &str, dp_id: u32) -> Result<()> {
        if let Some(hook) = self.router_hook.get() {
            hook.router_down(router_id);
        }
        // Router advertisement sockets hold the namespace: closed before it goes.
        self.advertiser.forget_router(router_id);
        let ns_name = names::router_netns(router_id);
        if !self.owned.contains(Kind::Netns, &ns_name) {
            // Not ours (or already gone): still drop any NAT state of the dp_id we were given.
            lock(&self.memo).remove(router_id);
            return self.datapath.remove_router(dp_id);
        }
        let memo = lock(&self.memo).remove(router_id).unwrap_or_default();
        let mut first_err: Option<anyhow::Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        keep(self.datapath.remove_router(dp_id));

        // Devices inside, hence their taps.
        let mut taps: BTreeSet<String> = memo.taps.clone();
        let mut gw_taps: BTreeSet<String> = memo.attached.iter().map(|(t, _)| t.clone()).collect();
        if let Some(h) = NetnsHandle::open_named(&ns_name)? {
            match with_netlink(&h, |h| async move {
                let links = link::dump_links(&h).await?;
                Ok(links
                    .iter()
                    .filter_map(|l| names::parse_router_dev(&l.name))
                    .collect::<Vec<_>>())
            }) {
                Ok(devs) => {
                    for d in devs {
                        if d.gateway {
                            gw_taps.insert(d.tap());
                        }
                        taps.insert(d.tap());
                    }
                }
                Err(e) => keep(Err(e)),
            }
        }
        // Every tap: the gateway's carries the NAT programs, the `qr-` ones the internal hooks.
        keep(in_netns(&self.daemon_ns, || {
            for t in gw_taps.iter().chain(taps.iter()) {
                self.datapath.detach(t)?;
            }
            Ok(())
        }));
        let taps: Vec<String> = taps
            .into_iter()
            .filter(|t| self.owned.contains(Kind::Link, t))
            .collect();
        keep(self.delete_daemon_links(&taps));
        keep(ns::delete(&ns_name).and_then(|()| self.owned.forget(Kind::Netns, &ns_name)));
        match first_err {
            Some(e) => Err(e.context(format!("removing router {router_id}"))),
            None => Ok(()),
        }
    }

    /// Removes every object this daemon created (router namespaces with their NAT state,
    /// taps, bridges) and their records. For `router-ctl daemon --purge` and test cleanup.
    pub fn purge(&self) -> Result<()> {
        let mut first_err: Option<anyhow::Error> = None;
        for (name, record) in self.owned.list(Kind::Netns)? {
            let _g = self.lock_op();
            let r = match record {
                Some(Record::Router { router_id, dp_id }) => {
                    self.remove_router_locked(&router_id, dp_id)
                }
                // Unreadable: the namespace goes, its NAT state cannot be found.
                _ => ns::delete(&name).and_then(|()| self.owned.forget(Kind::Netns, &name)),
            };
            if let Err(e) = r {
                tracing::warn!("purging {name}: {e:#}");
                first_err.get_or_insert(e);
            }
        }
        let _g = self.lock_op();
        let links = self.owned.names(Kind::Link)?;
        // Taps first, then bridges.
        let (taps, rest): (Vec<String>, Vec<String>) =
            links.into_iter().partition(|n| names::is_tap(n));
        for batch in [taps, rest] {
            if let Err(e) = self.delete_daemon_links(&batch) {
                tracing::warn!("purging devices: {e:#}");
                first_err.get_or_insert(e);
            }
        }
        lock(&self.memo).clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
