//! The external gateway in the datapath: the NAT programs on the gateway's tap and the
//! router's NAT configuration (SNAT address, internal CIDRs); both removed with the gateway.

use anyhow::{Context as _, Result, anyhow};

use super::{Created, PortPlan, ports::PortsOutcome};
use crate::{
    datapath::RouterNat,
    model::spec::{RouterSpec, names::RouterDev},
    net::ns::in_netns,
    realise::{Realiser, RouterMemo},
};

/// What `process_external_gateway` did.
#[derive(Default)]
pub(super) struct GatewayOutcome {
    /// The router's datapath state was removed (no gateway any more): what depends on it
    /// (floating IPs) must be written again even where the memo says it is current.
    pub reset: bool,
    /// What changed, for the log.
    pub log: Vec<String>,
}

impl Realiser {
    /// Detaches the NAT programs from taps that are no longer the gateway's (`removed`: devices
    /// the inside pass deleted), attaches them to the gateway's tap (again when `ports` made
    /// it anew) and writes the NAT configuration when it differs from the memo's.
    pub(super) fn process_external_gateway(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        memo: &mut RouterMemo,
        removed: &[RouterDev],
        made: &PortsOutcome,
        created: &mut Vec<Created>,
    ) -> Result<GatewayOutcome> {
        let mut out = GatewayOutcome::default();
        let gw_plan = ports.iter().find(|p| p.gateway);
        let mut detach: Vec<String> = removed
            .iter()
            .filter(|d| d.gateway)
            .map(|d| d.tap())
            .collect();
        if let Some((t, _)) = &memo.attached
            && gw_plan.is_none_or(|g| &g.tap != t)
        {
            detach.push(t.clone());
        }
        detach.sort();
        detach.dedup();
        if gw_plan.is_none() && (memo.nat.is_some() || !detach.is_empty()) {
            self.datapath
                .remove_router(spec.dp_id)
                .with_context(|| format!("router {}: removing NAT state", spec.id))?;
            memo.nat = None;
            out.reset = true;
            out.log.push("nat removed".into());
        }
        if !detach.is_empty() {
            in_netns(&self.daemon_ns, || {
                for t in &detach {
                    self.datapath.detach(t)?;
                }
                Ok(())
            })?;
            memo.attached = None;
        }
        let (Some(g), Some(gw)) = (gw_plan, &spec.gateway) else {
            return Ok(out);
        };
        let recreated = made.taps.contains(&g.tap);
        let current = made.links.get(&g.tap).map(|t| t.index);
        let ifindex = match &memo.attached {
            Some((t, idx)) if t == &g.tap && !recreated && current.is_none_or(|c| c == *idx) => {
                *idx
            }
            _ => {
                let idx = in_netns(&self.daemon_ns, || self.datapath.attach(&g.tap)).with_context(
                    || format!("router {}: attaching the datapath to {}", spec.id, g.tap),
                )?;
                // Undo only an attachment to a tap this call made (an existing gateway keeps
                // its programs if a later step fails).
                if recreated {
                    created.push(Created::Attached(g.tap.clone()));
                }
                memo.attached = Some((g.tap.clone(), idx));
                idx
            }
        };
        let nat = RouterNat {
            dp_id: spec.dp_id,
            ifindex,
            gateway_ip: gw
                .snat_ip()
                .ok_or_else(|| anyhow!("router {}: no IPv4 gateway address", spec.id))?,
            enable_snat: gw.enable_snat,
            internal_cidrs: spec.internal_cidrs(),
        };
        if memo.nat.as_ref() != Some(&nat) {
            self.datapath
                .configure_router(&nat)
                .with_context(|| format!("router {}: configuring NAT", spec.id))?;
            // The first write after a start rewrites what the pinned maps already hold.
            if memo.nat.is_some() {
                out.log.push("nat configured".into());
            }
            memo.nat = Some(nat);
        }
        Ok(out)
    }
}
