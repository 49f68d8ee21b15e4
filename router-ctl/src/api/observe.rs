//! Read-only views of the datapath behind `router-ctl sessions` and `router-ctl stats`:
//! `GET /v2.0/routers/{id}/sessions` (NAT, floating-IP and port-forwarding sessions, with
//! their kind) and `GET /v2.0/routers/{id}/stats` (the router's counters). Not part of
//! Neutron's API; a router is visible to its project and to admins, as for `GET /routers/{id}`.

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{ApiState, Ctx};
use crate::{model::Fault, store};

/// Adds the routes to the API router.
pub fn routes(r: Router<ApiState>) -> Router<ApiState> {
    r.route("/v2.0/routers/{id}/sessions", get(sessions))
        .route("/v2.0/routers/{id}/stats", get(stats))
}

/// The router's datapath slot, if the caller may see the router.
async fn dp_id(s: &ApiState, ctx: Ctx, id: String) -> Result<u32, Fault> {
    s.read(move |c| match store::get_router(c, &id)? {
        Some(r) if ctx.owns(&r.project_id) => Ok(r.dp_id),
        _ => Err(Fault::not_found("router", &id)),
    })
    .await
}

fn datapath(s: &ApiState) -> Result<std::sync::Arc<crate::datapath::Datapath>, Fault> {
    s.inner.datapath.get().cloned().ok_or_else(|| {
        Fault::new(
            503,
            "ServiceUnavailable",
            "This API server has no datapath attached.",
        )
    })
}

async fn sessions(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Fault> {
    let dp = dp_id(&s, ctx, id).await?;
    let datapath = datapath(&s)?;
    let list = tokio::task::spawn_blocking(move || datapath.sessions(dp))
        .await
        .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
        .map_err(|e| Fault::internal(format!("reading sessions: {e:#}")))?;
    Ok(Json(json!({ "sessions": list })).into_response())
}

async fn stats(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Fault> {
    let dp = dp_id(&s, ctx, id).await?;
    let datapath = datapath(&s)?;
    let stats = tokio::task::spawn_blocking(move || datapath.stats(dp))
        .await
        .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
        .map_err(|e| Fault::internal(format!("reading counters: {e:#}")))?;
    Ok(Json(json!({ "stats": stats })).into_response())
}
