//! Neutron v2.0-compatible REST API (axum): networks, subnets, ports, routers, floating IPs,
//! port forwardings, extensions.
//!
//! Handlers (`handlers`) are thin: they authenticate (`X-Auth-Token` → `Ctx`), parse the body,
//! and run the resource logic (`resources`) on a blocking thread that holds the store's only
//! writer. The kernel side is reached only through two traits handed over at start: `Realise`
//! (changes) and `observe::Observe` (sessions and counters). A
//! mutation runs in one transaction; the kernel is changed through the realiser while that
//! transaction is open, and a realiser failure rolls the transaction back and re-applies the
//! previous specs, so a failed request changes neither the database nor the kernel.

pub mod discovery;
mod handlers;
pub mod input;
pub mod observe;
mod query;
pub mod resources;
mod scope;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{FromRequestParts, Request},
    http::{StatusCode, Uri, request::Parts},
    response::{IntoResponse, Response},
};
use rusqlite::Connection;
use serde_json::json;

use crate::{
    config::TokenConfig,
    model::{
        Fault,
        spec::{NetworkSpec, RouterSpec},
    },
    realise::Realiser,
    store::{self, Store},
};
pub use handlers::router;
pub use observe::Observe;

/// The kernel side as the API needs it: the four realiser calls a mutation can make.
///
/// `realise::Realiser` implements it; unit tests substitute a recorder that can be told to
/// fail, to check that a failed realisation leaves the database untouched.
pub trait Realise: Send + Sync + 'static {
    /// See `Realiser::apply_network`.
    fn apply_network(&self, net: &NetworkSpec) -> anyhow::Result<()>;
    /// See `Realiser::remove_network`.
    fn remove_network(&self, network_id: &str) -> anyhow::Result<()>;
    /// See `Realiser::apply_router`.
    fn apply_router(&self, spec: &RouterSpec) -> anyhow::Result<()>;
    /// See `Realiser::remove_router`.
    fn remove_router(&self, router_id: &str, dp_id: u32) -> anyhow::Result<()>;
}

impl Realise for Realiser {
    fn apply_network(&self, net: &NetworkSpec) -> anyhow::Result<()> {
        Realiser::apply_network(self, net)
    }
    fn remove_network(&self, network_id: &str) -> anyhow::Result<()> {
        Realiser::remove_network(self, network_id)
    }
    fn apply_router(&self, spec: &RouterSpec) -> anyhow::Result<()> {
        Realiser::apply_router(self, spec)
    }
    fn remove_router(&self, router_id: &str, dp_id: u32) -> anyhow::Result<()> {
        Realiser::remove_router(self, router_id, dp_id)
    }
}

/// Who is calling: the project a token maps to, and whether it is an admin; with the
/// deployment's L3 settings the resource logic applies to the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// The project resources are created in and visible to.
    pub project_id: String,
    /// Admins see and change every project's resources and pass admin-only policy rules.
    pub admin: bool,
    pub l3: L3Settings,
}

/// Neutron's L3 options that shape API answers (from `[nat]` and `[quotas]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Settings {
    /// `enable_snat` of a gateway set without naming it.
    pub enable_snat_by_default: bool,
    /// Extra routes a router may have.
    pub max_routes: usize,
}

impl Default for L3Settings {
    fn default() -> Self {
        Self {
            enable_snat_by_default: true,
            max_routes: 30,
        }
    }
}

impl Ctx {
    /// Admins own everything; others their project's resources.
    pub fn owns(&self, project_id: &str) -> bool {
        self.admin || self.project_id == project_id
    }
}

/// Networks and routers a mutation may change, with their specs before it (captured at the
/// first `touch`, i.e. before the mutation changed them).
#[derive(Debug, Default)]
pub struct Effects {
    networks: BTreeMap<String, Option<NetworkSpec>>,
    routers: BTreeMap<String, Option<RouterSpec>>,
}

impl Effects {
    /// Records the network (and its spec now) as possibly changed by this mutation.
    pub fn touch_network(&mut self, c: &Connection, id: &str) -> Result<(), Fault> {
        if !self.networks.contains_key(id) {
            self.networks
                .insert(id.to_string(), store::network_spec(c, id)?);
        }
        Ok(())
    }
    /// Records the router (and its spec now) as possibly changed by this mutation.
    pub fn touch_router(&mut self, c: &Connection, id: &str) -> Result<(), Fault> {
        if !self.routers.contains_key(id) {
            self.routers
                .insert(id.to_string(), store::router_spec(c, id)?);
        }
        Ok(())
    }
}

/// One kernel change and how to undo it.
enum Step {
    ApplyNetwork(NetworkSpec),
    RemoveNetwork(String),
    /// Boxed: a router spec is several times the size of the other steps.
    ApplyRouter(Box<RouterSpec>),
    RemoveRouter(String, u32),
}

struct Inner {
    store: Mutex<Store>,
    /// Read-only connection for GETs, so reads never wait behind a realisation.
    reader: Option<Mutex<Connection>>,
    realiser: Arc<dyn Realise>,
    tokens: BTreeMap<String, TokenConfig>,
    /// `provider:physical_network` names the config maps to a host interface.
    physical_networks: std::collections::BTreeSet<String>,
    /// The sessions and stats views' source (None: those views answer 503).
    observer: Option<Arc<dyn Observe>>,
}

/// A value read from the store and the store's version it was read at (see
/// `ApiState::read_if_changed`).
pub struct Versioned<T> {
    version: Option<i64>,
    pub value: Arc<T>,
}

impl<T> Versioned<T> {
    /// The store's version the value was read at (None: the store has no read connection).
    pub fn version(&self) -> Option<i64> {
        self.version
    }
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Self {
            version: self.version,
            value: self.value.clone(),
        }
    }
}

/// Shared state of the API server.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
    l3: L3Settings,
}

impl ApiState {
    /// API state over `store`, realising through `realiser`, with `tokens` for auth.
    pub fn new(
        store: Store,
        realiser: Arc<dyn Realise>,
        tokens: BTreeMap<String, TokenConfig>,
    ) -> Self {
        Self::with_physical_networks(store, realiser, tokens, Default::default(), None)
    }

    /// `new`, accepting `provider:physical_network` values among `physical_networks` (the
    /// config's mapping; any other value is refused with 400, as Neutron refuses a physical
    /// network it has no bridge mapping for), and reading sessions and counters from
    /// `observer`.
    pub fn with_physical_networks(
        store: Store,
        realiser: Arc<dyn Realise>,
        tokens: BTreeMap<String, TokenConfig>,
        physical_networks: std::collections::BTreeSet<String>,
        observer: Option<Arc<dyn Observe>>,
    ) -> Self {
        let reader = match store.reader() {
            Ok(r) => r.map(Mutex::new),
            Err(e) => {
                tracing::warn!("no separate read connection, reads share the writer: {e:#}");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                reader,
                store: Mutex::new(store),
                realiser,
                tokens,
                physical_networks,
                observer,
            }),
            l3: L3Settings::default(),
        }
    }

    /// The same state answering with `l3` instead of Neutron's defaults.
    pub fn with_l3(mut self, l3: L3Settings) -> Self {
        self.l3 = l3;
        self
    }

    /// Runs `f` with the store locked (blocking; the reconcile loop uses it so it never sees a
    /// half-applied mutation).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut guard = self
            .inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Fault> + Send + 'static,
    ) -> Result<T, Fault> {
        let st = self.clone();
        off_runtime(move || st.read_blocking(f)).await
    }

    /// `f` over one snapshot of the last committed state, through the read-only connection
    /// when there is one: mutations are not held up (the reconcile pass plans from such a
    /// snapshot).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        match &self.inner.reader {
            Some(r) => {
                let conn = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // One snapshot for every query of the request.
                let tx = conn.unchecked_transaction()?;
                f(&tx)
            }
            None => self.with_store(|s| f(s.conn())),
        }
    }

    /// The store's commit counter as the read-only connection sees it (SQLite's
    /// `data_version`, which moves with every commit of the writer); None without a read-only
    /// connection or when it cannot be read.
    pub fn store_version(&self) -> Option<i64> {
        let r = self.inner.reader.as_ref()?;
        let conn = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.pragma_query_value(None, "data_version", |r| r.get(0))
            .ok()
    }

    /// `f` over a snapshot (as `read_blocking`), or `last` again when nothing was committed
    /// since it was read. A snapshot's version is SQLite's `data_version` of the read-only
    /// connection, which moves with every commit of another connection (the writer); without
    /// a read-only connection there is no version and every call reads.
    pub fn read_if_changed<T>(
        &self,
        last: Option<Versioned<T>>,
        f: impl FnOnce(&Connection) -> Result<T, Fault>,
    ) -> Result<Versioned<T>, Fault> {
        let Some(r) = &self.inner.reader else {
            let value = self.with_store(|s| f(s.conn()))?;
            return Ok(Versioned {
                version: None,
                value: Arc::new(value),
            });
        };
        let conn = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read before the snapshot is taken: a commit in between makes the snapshot newer
        // than its version, and the next call reads again (never the other way round).
        let version: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
        if let Some(last) = last.filter(|l| l.version == Some(version)) {
            return Ok(last);
        }
        let tx = conn.unchecked_transaction()?;
        Ok(Versioned {
            version: Some(version),
            value: Arc::new(f(&tx)?),
        })
    }

    async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> Result<T, Fault> + Send + 'static,
    ) -> Result<T, Fault> {
        let st = self.clone();
        off_runtime(move || st.mutate_blocking(f)).await
    }

    /// One mutation: transaction, change, realise, commit — or roll back both sides.
    pub fn mutate_blocking<T>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        self.with_store(|store| {
            let tx = store.transaction()?;
            let mut fx = Effects::default();
            let out = f(&tx, &mut fx)?;
            store::settle_revisions(&tx)?;
            let steps = plan(&tx, &fx)?;
            let mut undo: Vec<Step> = Vec::new();
            let realiser = &self.inner.realiser;
            for (step, back) in steps {
                undo.push(back);
                if let Err(e) = run_step(realiser.as_ref(), &step) {
                    drop(tx);
                    rollback(realiser.as_ref(), undo);
                    tracing::error!("realisation failed, request rolled back: {e:#}");
                    return Err(Fault::internal(format!(
                        "Request Failed: kernel realisation failed: {e:#}"
                    )));
                }
            }
            if let Err(e) = tx.commit() {
                rollback(realiser.as_ref(), undo);
                return Err(e.into());
            }
            Ok(out)
        })
    }
}

/// `f` on the blocking pool: store calls (SQLite, and the realiser behind a mutation) must not
/// hold up the runtime's workers. The realiser's work in the daemon's own namespace runs on
/// that thread itself (`net::worker::inline`).
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Fault> + Send + 'static,
) -> Result<T, Fault> {
    tokio::task::spawn_blocking(|| crate::net::worker::inline(f))
        .await
        .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
}

/// The kernel changes a mutation needs, in order (networks before the routers that plug into
/// them, routers removed before their networks), each with its undo.
fn plan(c: &Connection, fx: &Effects) -> Result<Vec<(Step, Step)>, Fault> {
    let mut first = Vec::new();
    let mut middle = Vec::new();
    let mut last = Vec::new();
    for (id, old) in &fx.networks {
        let new = store::network_spec(c, id)?;
        if &new == old {
            continue;
        }
        let undo = match old {
            Some(o) => Step::ApplyNetwork(o.clone()),
            None => Step::RemoveNetwork(id.clone()),
        };
        match new {
            Some(n) => first.push((Step::ApplyNetwork(n), undo)),
            None => last.push((Step::RemoveNetwork(id.clone()), undo)),
        }
    }
    for (id, old) in &fx.routers {
        let new = store::router_spec(c, id)?;
        if &new == old {
            continue;
        }
        match (new, old) {
            (Some(n), Some(o)) => middle.push((
                Step::ApplyRouter(Box::new(n)),
                Step::ApplyRouter(Box::new(o.clone())),
            )),
            (Some(n), None) => {
                let dp = n.dp_id;
                middle.push((
                    Step::ApplyRouter(Box::new(n)),
                    Step::RemoveRouter(id.clone(), dp),
                ));
            }
            (None, Some(o)) => middle.push((
                Step::RemoveRouter(id.clone(), o.dp_id),
                Step::ApplyRouter(Box::new(o.clone())),
            )),
            (None, None) => {}
        }
    }
    first.extend(middle);
    first.extend(last);
    Ok(first)
}

fn run_step(r: &dyn Realise, s: &Step) -> anyhow::Result<()> {
    match s {
        Step::ApplyNetwork(n) => r.apply_network(n),
        Step::RemoveNetwork(id) => r.remove_network(id),
        Step::ApplyRouter(spec) => r.apply_router(spec),
        Step::RemoveRouter(id, dp) => r.remove_router(id, *dp),
    }
}

fn rollback(r: &dyn Realise, undo: Vec<Step>) {
    for s in undo.into_iter().rev() {
        if let Err(e) = run_step(r, &s) {
            tracing::error!("re-applying the previous state failed (reconcile will retry): {e:#}");
        }
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"NeutronError": {"type": self.kind, "message": self.message, "detail": ""}});
        (status, Json(body)).into_response()
    }
}

impl FromRequestParts<ApiState> for Ctx {
    type Rejection = Fault;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Fault> {
        let unauthorised = || {
            Fault::new(
                401,
                "HTTPUnauthorized",
                "Authentication required: a valid X-Auth-Token header is needed",
            )
        };
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorised)?;
        let t = state.inner.tokens.get(token).ok_or_else(unauthorised)?;
        Ok(Ctx {
            project_id: t.project_id.clone(),
            admin: t.admin,
            l3: state.l3,
        })
    }
}

/// Turns any error response that is not already a NeutronError (axum's own rejections: path
/// decoding, body too large) into one, so clients always get the documented shape.
pub(super) async fn neutron_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let kind = match status.as_u16() {
        400 => "HTTPBadRequest",
        404 => "HTTPNotFound",
        405 => "HTTPMethodNotAllowed",
        413 => "HTTPRequestEntityTooLarge",
        415 => "HTTPUnsupportedMediaType",
        422 => "HTTPUnprocessableEntity",
        s if s >= 500 => "HTTPInternalServerError",
        _ => "HTTPClientError",
    };
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    Fault::new(status.as_u16(), kind, message).into_response()
}

/// Drops a trailing `.json` from the path (Neutron clients append it), before routing.
pub fn strip_json(mut req: Request) -> Request {
    let uri = req.uri();
    if let Some(stripped) = uri.path().strip_suffix(".json") {
        let mut pq = stripped.to_string();
        if let Some(q) = uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = uri.clone().into_parts();
        if let Ok(p) = pq.parse() {
            parts.path_and_query = Some(p);
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    req
}

/// The whole API as one tower service (the router behind the `.json` rewrite).
pub fn service(state: ApiState) -> tower::util::MapRequest<Router, fn(Request) -> Request> {
    tower::ServiceExt::map_request(router(state), strip_json as fn(Request) -> Request)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let svc = service(state);
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(svc),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
