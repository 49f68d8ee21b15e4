//! What the scale runs do as an operator would, against either Neutron-compatible API (the
//! daemon's own, or neutron-server's in front of the agent): the same calls in the same order,
//! so the two runs' per-step figures compare.

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::scale::Laps;

/// A Neutron v2.0 API as the bench drives it; `path` is below `/v2.0`.
pub(super) trait NeutronApi {
    /// The call's JSON answer; an error unless the answer is 2xx.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value>;
}

impl NeutronApi for super::daemon::Env {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        super::daemon::Env::call(self, method, path, body)
    }
}

/// What one router of a scale batch is made of (its ids, for tearing it down).
pub(super) struct Made {
    pub network: String,
    pub subnet: String,
    pub router: String,
}

/// The calls of `build_up`, in its order.
pub(super) const BUILD_UP_STEPS: [&str; 5] = [
    "POST network",
    "POST subnet",
    "POST router",
    "PUT add_router_interface",
    "PUT router (gateway)",
];

/// Builds one router as an operator does: a tenant network `name` with subnet `cidr` (no
/// DHCP), a router with an interface there and its gateway on `external`; one lap per call.
/// `made_router` hears of the router as soon as it exists (so a failed later call leaves
/// nothing unknown behind). Returns the router's ids and its gateway address.
pub(super) fn build_up(
    api: &impl NeutronApi,
    name: &str,
    cidr: &str,
    external: &str,
    laps: &mut Laps,
    made_router: &mut dyn FnMut(&str),
) -> Result<(Made, String)> {
    let post = |what: &str, body: Value| -> Result<String> {
        let v = api.call("POST", &format!("/{what}s"), Some(&json!({ what: body })))?;
        v[what]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no {what}.id in {v}"))
    };
    let network = post("network", json!({"name": name, "admin_state_up": true}))?;
    laps.lap();
    let subnet = json!({
        "name": cidr, "network_id": network, "ip_version": 4, "cidr": cidr, "enable_dhcp": false,
    });
    let subnet = post("subnet", subnet)?;
    laps.lap();
    let router = post("router", json!({"name": name, "admin_state_up": true}))?;
    made_router(&router);
    laps.lap();
    let interface = json!({"subnet_id": subnet});
    let path = format!("/routers/{router}");
    api.call(
        "PUT",
        &format!("{path}/add_router_interface"),
        Some(&interface),
    )?;
    laps.lap();
    let gateway = json!({"router": {"external_gateway_info": {"network_id": external}}});
    let r = api.call("PUT", &path, Some(&gateway))?;
    laps.lap();
    let address = r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .with_context(|| format!("no gateway address in {r}"))?
        .to_string();
    let made = Made {
        network,
        subnet,
        router,
    };
    Ok((made, address))
}

/// The calls of `tear_down`, in its order.
pub(super) const TEAR_DOWN_STEPS: [&str; 4] = [
    "PUT router (gateway clear)",
    "PUT remove_router_interface",
    "DELETE router",
    "DELETE network",
];

/// Tears one router down as an operator does: gateway clear, interface removal, router
/// deletion, network deletion (its subnet goes with it); one lap per call.
pub(super) fn tear_down(api: &impl NeutronApi, m: &Made, laps: &mut Laps) -> Result<()> {
    let r = &m.router;
    let clear = json!({"router": {"external_gateway_info": {}}});
    api.call("PUT", &format!("/routers/{r}"), Some(&clear))?;
    laps.lap();
    let subnet = json!({"subnet_id": m.subnet});
    api.call(
        "PUT",
        &format!("/routers/{r}/remove_router_interface"),
        Some(&subnet),
    )?;
    laps.lap();
    api.call("DELETE", &format!("/routers/{r}"), None)?;
    laps.lap();
    api.call("DELETE", &format!("/networks/{}", m.network), None)?;
    laps.lap();
    Ok(())
}
