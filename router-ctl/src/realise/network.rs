//! Networks: the bridge `brq…` of each network in the daemon's namespace, with the host
//! interface of its physical network enslaved; and the daemon-namespace link helpers the other
//! passes share.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Realiser, lock, segment, validate::validate_id};
use crate::{
    model::spec::{NetworkSpec, names},
    net::{
        LinkState,
        link::{self, LinkKind},
        linkwatch::LinkTable,
        ns::{NetnsHandle, with_netlink},
        owned::{Kind, Record},
        sysctl,
    },
};

impl Realiser {
    /// Bridge for the network (and uplink enslaved); idempotent.
    pub fn apply_network(&self, net: &NetworkSpec) -> Result<()> {
        validate_id("network", &net.id)?;
        let _g = self.lock_op();
        self.converge_network(net, None).map(|_| ())
    }

    /// Returns whether anything was created or changed.
    pub(super) fn converge_network(
        &self,
        net: &NetworkSpec,
        known: Option<&HashMap<String, LinkState>>,
    ) -> Result<bool> {
        // A physical network with no mapping gets a bridge without uplink (single-host setups,
        // tests); a mapping to a missing interface is an error below.
        let uplink = self.uplink(net, known.is_some())?;
        lock(&self.uplinks).insert(
            net.id.clone(),
            uplink.as_ref().map(|u| u.name().to_string()),
        );
        let br = names::bridge(&net.id);
        // Steady state seen in a reconcile dump: nothing to do, no thread.
        if let Some(k) = known
            && let Some(b) = k.get(&br)
            && b.up
            && b.kind == LinkKind::Bridge
        {
            let uplink_ok = match &uplink {
                None => true,
                Some(u) => k
                    .get(u.name())
                    .is_some_and(|l| l.controller == Some(b.index) && l.up),
            };
            if uplink_ok {
                return Ok(false);
            }
        }
        let owned = &self.owned;
        with_netlink(&self.daemon_ns, |h| async move {
            let mut changed = false;
            let mut created = false;
            let bridge = match link::get_link(&h, &br).await? {
                Some(l) => {
                    if l.kind != LinkKind::Bridge {
                        bail!("network {}: device {br} exists and is not a bridge", net.id);
                    }
                    l
                }
                None => {
                    owned.record(
                        &br,
                        &Record::Bridge {
                            network_id: net.id.clone(),
                        },
                    )?;
                    match link::create_bridge(&h, &br).await {
                        Ok(_) => {}
                        Err(e) => {
                            let _ = owned.forget(Kind::Link, &br);
                            return Err(e);
                        }
                    }
                    created = true;
                    changed = true;
                    sysctl::disable_ipv6(&br);
                    link::get_link(&h, &br)
                        .await?
                        .ok_or_else(|| anyhow!("bridge {br} vanished after creation"))?
                }
            };
            let rest = async {
                if !bridge.up {
                    link::set_up(&h, bridge.index, true).await?;
                    changed = true;
                }
                if let Some(u) = &uplink {
                    let (up, made) = segment::ensure_uplink(&h, owned, &net.id, u)
                        .await
                        .with_context(|| {
                            format!(
                                "network {} (physical network {:?})",
                                net.id,
                                net.segment.physical_network().unwrap_or_default()
                            )
                        })?;
                    changed |= made;
                    if up.controller != Some(bridge.index) {
                        link::set_controller(&h, up.index, bridge.index).await?;
                        changed = true;
                    }
                    if !up.up {
                        link::set_up(&h, up.index, true).await?;
                        changed = true;
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = rest.await {
                if created {
                    let _ = link::delete_link(&h, &br).await;
                    let _ = owned.forget(Kind::Link, &br);
                }
                return Err(e);
            }
            Ok(changed)
        })
    }

    /// Removes the network's bridge; missing is success.
    pub fn remove_network(&self, network_id: &str) -> Result<()> {
        validate_id("network", network_id)?;
        let _g = self.lock_op();
        let br = names::bridge(network_id);
        if !self.owned.contains(Kind::Link, &br) {
            return Ok(());
        }
        self.retire_bridge(network_id, &br)
    }

    /// Deletes the bridge `br` of `network_id` without waiting for the kernel: unregistering a
    /// bridge holds its name for 20–40 ms (its teardown runs before it is unlisted, unlike a
    /// veth's), most of a network delete. So the bridge goes down (nothing crosses it any more)
    /// and is renamed to its retired name, recorded as ours first, its ports (an uplink)
    /// released; the reaper deletes it and then its record when the realiser is quiet (see
    /// `reaper`). A daemon that stops before that finds the record, and its reconcile hands the
    /// device to its reaper again (purge deletes it). When the retired name is taken (the same
    /// network retired twice in a row), the bridge is deleted in place.
    fn retire_bridge(&self, network_id: &str, br: &str) -> Result<()> {
        let retired = names::retired_bridge(network_id);
        let record = Record::Bridge {
            network_id: network_id.to_string(),
        };
        self.owned.record(&retired, &record)?;
        let uplink = lock(&self.uplinks).remove(network_id);
        let renamed = with_netlink(&self.daemon_ns, |h| {
            let retired = &retired;
            async move {
                let Some(l) = link::get_link(&h, br).await? else {
                    return Ok(false);
                };
                if link::get_link(&h, retired).await?.is_some() {
                    return Ok(false);
                }
                // Its uplink (a host interface, not ours) is free at once, as with a delete.
                // Known when this run converged the network; else the kernel's list of the
                // bridge's ports, which it makes by looking at every device of the namespace
                // (≈ 2 ms at 10 000 routers, most of a network delete).
                let ports = match uplink {
                    Some(None) => Vec::new(),
                    Some(Some(dev)) => link::get_link(&h, &dev)
                        .await?
                        .filter(|u| u.controller == Some(l.index))
                        .into_iter()
                        .collect(),
                    None => link::ports_of(&h, l.index).await?,
                };
                for port in ports {
                    link::release(&h, port.index).await?;
                }
                link::set_up(&h, l.index, false).await?;
                link::rename(&h, l.index, retired).await?;
                Ok(true)
            }
        });
        match renamed {
            Ok(true) => {}
            Ok(false) => {
                self.owned.forget(Kind::Link, &retired)?;
                return self.delete_daemon_links(&[br.to_string()]);
            }
            Err(e) => {
                let _ = self.owned.forget(Kind::Link, &retired);
                return Err(e);
            }
        }
        self.owned.forget(Kind::Link, br)?;
        self.reaper.retire(retired);
        Ok(())
    }

    /// Removes the network's bridge and the segment device this node made for it.
    pub fn remove_network_spec(&self, net: &NetworkSpec) -> Result<()> {
        self.remove_network(&net.id)?;
        let _g = self.lock_op();
        match self.made_uplink(net) {
            Some(dev) if self.owned.contains(Kind::Link, &dev) => self.delete_daemon_links(&[dev]),
            _ => Ok(()),
        }
    }

    /// Deletes recorded devices of the daemon namespace, then their records.
    pub(super) fn delete_daemon_links(&self, devs: &[String]) -> Result<()> {
        if devs.is_empty() {
            return Ok(());
        }
        with_netlink(&self.daemon_ns, |h| async move {
            for d in devs {
                link::delete_detached(&self.daemon_ns, &h, d).await?;
            }
            Ok(())
        })?;
        for d in devs {
            self.owned.forget(Kind::Link, d)?;
        }
        Ok(())
    }

    /// Those of `names` that exist in the daemon namespace, from the link table when there is
    /// one (it has every change made so far, see `net::linkwatch`; the kernel walks every
    /// router namespace's id for each tap it is asked about).
    pub(super) fn lookup_daemon_links(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, LinkState>> {
        if let Some(t) = &self.link_table {
            return t.lookup(names);
        }
        with_netlink(&self.daemon_ns, |h| async move {
            let mut out = HashMap::new();
            for n in names {
                if let Some(l) = link::get_link(&h, n).await? {
                    out.insert(n.clone(), l);
                }
            }
            Ok(out)
        })
    }

    /// Every link of the daemon namespace by name, as a reconcile pass sees it: a copy of the
    /// link table, or a dump when no link watch could be started.
    pub(super) fn daemon_links(&self) -> Result<HashMap<String, LinkState>> {
        match &self.link_table {
            Some(t) => t.snapshot(),
            None => self.dump_daemon_links(),
        }
    }

    /// Every link of the daemon namespace by name.
    fn dump_daemon_links(&self) -> Result<HashMap<String, LinkState>> {
        with_netlink(&self.daemon_ns, |h| async move {
            Ok(link::dump_links(&h)
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect())
        })
    }
}

/// Starts keeping the links of `daemon_ns` from its notifications; None (every pass dumps,
/// every look-up asks the kernel) when it cannot be started.
pub(super) fn watch_links(daemon_ns: &NetnsHandle) -> Option<LinkTable> {
    LinkTable::start(daemon_ns)
        .inspect_err(|e| {
            tracing::warn!("no link watch ({e:#}): every reconcile pass dumps every link")
        })
        .ok()
}
