//! Read-only views of the datapath behind `router-ctl sessions` and `router-ctl stats`:
//! `GET /v2.0/routers/{id}/sessions` (NAT, floating-IP and port-forwarding sessions, with
//! their kind) and `GET /v2.0/routers/{id}/stats` (the router's counters). Not part of
//! Neutron's API; a router is visible to its project and to admins, as for `GET /routers/{id}`.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;

use super::{ApiState, Ctx, scope::visible};
use crate::{
    datapath::Datapath,
    model::{Fault, Router as RouterRow, SessionInfo},
};

/// The kernel side as the sessions and stats views need it, by datapath slot.
///
/// `datapath::Datapath` implements it; the daemon hands one to `ApiState` at start. An API
/// without one (unit tests) answers these views with 503.
pub trait Observe: Send + Sync + 'static {
    /// See `Datapath::sessions`.
    fn sessions(&self, dp_id: u32) -> anyhow::Result<Vec<SessionInfo>>;
    /// See `Datapath::stats`.
    fn stats(&self, dp_id: u32) -> anyhow::Result<BTreeMap<String, u64>>;
}

impl Observe for Datapath {
    fn sessions(&self, dp_id: u32) -> anyhow::Result<Vec<SessionInfo>> {
        Datapath::sessions(self, dp_id)
    }
    fn stats(&self, dp_id: u32) -> anyhow::Result<BTreeMap<String, u64>> {
        Datapath::stats(self, dp_id)
    }
}

/// Adds the routes to the API router.
pub fn routes(r: Router<ApiState>) -> Router<ApiState> {
    r.route("/v2.0/routers/{id}/sessions", get(sessions))
        .route("/v2.0/routers/{id}/stats", get(stats))
}

/// Reads one view of the datapath for router `id`, if the caller may see the router, off the
/// async runtime; answers `{key: view}`. `what` names the view in an error.
async fn read_view<T: Serialize + Send + 'static>(
    s: &ApiState,
    ctx: Ctx,
    id: String,
    (key, what): (&str, &str),
    read: impl FnOnce(&dyn Observe, u32) -> anyhow::Result<T> + Send + 'static,
) -> Result<Response, Fault> {
    let dp = s
        .read(move |c| Ok(visible::<RouterRow>(c, &ctx, &id)?.dp_id))
        .await?;
    let observer: Arc<dyn Observe> = s.inner.observer.clone().ok_or_else(|| {
        Fault::new(
            503,
            "ServiceUnavailable",
            "This API server has no datapath attached.",
        )
    })?;
    let view = tokio::task::spawn_blocking(move || read(observer.as_ref(), dp))
        .await
        .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
        .map_err(|e| Fault::internal(format!("reading {what}: {e:#}")))?;
    Ok(Json(json!({ key: view })).into_response())
}

async fn sessions(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Fault> {
    read_view(&s, ctx, id, ("sessions", "sessions"), |o, dp| {
        o.sessions(dp)
    })
    .await
}

async fn stats(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Fault> {
    read_view(&s, ctx, id, ("stats", "counters"), |o, dp| o.stats(dp)).await
}
