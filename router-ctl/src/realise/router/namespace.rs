//! The router's namespace `qrouter-<id>`: made (and recorded) when missing, adopted only when
//! this daemon's record says it made it; its own settings (sysctls, `lo` and the metadata
//! address on it).
//!
//! 169.254.169.254/32 sits on the namespace's `lo`: the daemon's metadata proxy listens there on
//! port 80 (`crate::metadata`); plain routing takes instances' requests to it.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::Handle;

use super::{Created, floating, ipv6};
use crate::{
    model::spec::{RouterSpec, names},
    net::{
        LinkState, link,
        ns::{self, NetnsHandle, in_netns},
        owned::{Kind, Record},
        sysctl,
    },
    realise::Realiser,
};

/// The metadata address, as it sits on the router namespace's `lo`.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(
    router_common::METADATA_IP[0],
    router_common::METADATA_IP[1],
    router_common::METADATA_IP[2],
    router_common::METADATA_IP[3],
);

/// The id in the daemon's namespace of router number 0's namespace; router `n`'s is `n` below
/// it (see `ensure_namespace`), far above the ids the kernel picks itself (from 0 up).
const NSID_TOP: i32 = 0x1000_0000;

/// Sysctls of every router namespace: forwarding, ARP answered only for the receiving
/// interface's addresses and from them; the floating-IP hairpin's and IPv6's (`ipv6`) follow.
const SYSCTLS: [(&str, &str); 3] = [
    ("ipv4/ip_forward", "1"),
    ("ipv4/conf/all/arp_ignore", "1"),
    ("ipv4/conf/all/arp_announce", "2"),
];

/// The namespace a router pass works in.
pub(super) struct Namespace {
    pub handle: NetnsHandle,
    /// Made by this pass.
    pub created: bool,
}

impl Realiser {
    /// Opens the router's namespace, making it (recorded first) when missing. One that exists
    /// without this daemon's record is refused; the record's `dp_id` is kept current (reconcile
    /// and purge find the NAT state by it).
    pub(super) fn ensure_namespace(
        &self,
        spec: &RouterSpec,
        created: &mut Vec<Created>,
        log: &mut Vec<String>,
    ) -> Result<Namespace> {
        let name = names::router_netns(&spec.id);
        let record = Record::Router {
            router_id: spec.id.clone(),
            dp_id: spec.dp_id,
        };
        if let Some(handle) = NetnsHandle::open_named(&name)? {
            match self.owned.get(Kind::Netns, &name)? {
                None => bail!(
                    "router {}: namespace {name} exists but was not created by this daemon",
                    spec.id
                ),
                Some(r) if r.as_ref() != Some(&record) => self.owned.record(&name, &record)?,
                Some(_) => {}
            }
            return Ok(Namespace {
                handle,
                created: false,
            });
        }
        self.owned.record(&name, &record)?;
        if let Err(e) = ns::create(&name) {
            let _ = self.owned.forget(Kind::Netns, &name);
            return Err(e);
        }
        created.push(Created::Netns(name.clone()));
        log.push(format!("netns {name}"));
        let handle = NetnsHandle::open_named(&name)?
            .ok_or_else(|| anyhow!("namespace {name} vanished after creation"))?;
        // Its id in the daemon's namespace, before a veth peer makes the kernel pick one. The
        // kernel finds a peer namespace's id by walking the namespace's ids in increasing
        // order (`__peernet2id` → `idr_for_each`), for every notification and `RTM_GETLINK`
        // answer about a tap (its peer is in the router's namespace). The ids it picks
        // itself increase, so the router being made, the subject of nearly all of those
        // messages, was the last one found: ≈ 2.8 % of all CPU late in a 10 000-router batch.
        // Ids that fall as router numbers rise put it first.
        let nsid = NSID_TOP - spec.dp_id as i32;
        if let Err(e) = in_netns(&self.daemon_ns, || ns::assign_nsid(&handle, nsid)) {
            tracing::debug!("router {}: {e:#}", spec.id);
        }
        Ok(Namespace {
            handle,
            created: true,
        })
    }
}

/// The namespace's own settings, on the thread of the inside pass: sysctls (when asked: each
/// `/proc/sys` look-up is O(namespaces) on the kernel side), `lo` up with the metadata address.
pub(super) async fn converge_settings(
    h: &Handle,
    links: &[LinkState],
    sysctls: bool,
    log: &mut Vec<String>,
) -> Result<()> {
    if sysctls {
        for (k, v) in SYSCTLS.into_iter().chain(floating::SYSCTLS) {
            sysctl::write(k, v)?;
        }
        if ipv6::available() {
            for (k, v) in ipv6::SYSCTLS {
                sysctl::write(k, v)?;
            }
        }
    }
    let Some(lo) = links.iter().find(|l| l.name == "lo") else {
        return Ok(());
    };
    if !lo.up {
        link::set_up(h, lo.index, true).await?;
        log.push("lo up".into());
    }
    if converge_metadata_addr(h, lo.index).await? {
        log.push("metadata address".into());
    }
    Ok(())
}

/// Puts the metadata address on `lo` (index `lo`), leaving its other addresses alone; returns
/// whether it was added.
async fn converge_metadata_addr(h: &Handle, lo: u32) -> Result<bool> {
    let metadata = IpNet::V4(Ipv4Net::from(METADATA_ADDR));
    let current = link::addresses(h, lo).await?;
    if current.iter().any(|a| a.net == metadata) {
        return Ok(false);
    }
    match h
        .address()
        .add(lo, metadata.addr(), metadata.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if link::errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("adding address {metadata}")),
    }
}
