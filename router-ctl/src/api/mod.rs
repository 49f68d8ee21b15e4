//! Neutron v2.0-compatible REST API (axum): networks, subnets, ports, routers, extensions.
//!
//! Handlers are thin: they authenticate (`X-Auth-Token` → `Ctx`), parse the body, and run the
//! resource logic (`resources`) on a blocking thread that holds the store's only writer. A
//! mutation runs in one transaction; the kernel is changed through the realiser while that
//! transaction is open, and a realiser failure rolls the transaction back and re-applies the
//! previous specs, so a failed request changes neither the database nor the kernel.

pub mod discovery;
pub mod floatingips;
pub mod input;
pub mod observe;
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
    body::Bytes,
    extract::{FromRequestParts, Path, Query, Request, State},
    http::{StatusCode, Uri, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::{
    config::TokenConfig,
    model::{
        Fault,
        spec::{NetworkSpec, RouterSpec},
    },
    realise::Realiser,
    store::{self, Store},
};
use resources::Kind;

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

/// Who is calling: the project a token maps to, and whether it is an admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// The project resources are created in and visible to.
    pub project_id: String,
    /// Admins see and change every project's resources and pass admin-only policy rules.
    pub admin: bool,
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
    ApplyRouter(RouterSpec),
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
    /// The datapath, for the sessions and stats views (`observe`); set once by the daemon.
    datapath: std::sync::OnceLock<Arc<crate::datapath::Datapath>>,
}

/// Shared state of the API server.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

impl ApiState {
    /// API state over `store`, realising through `realiser`, with `tokens` for auth.
    pub fn new(
        store: Store,
        realiser: Arc<dyn Realise>,
        tokens: BTreeMap<String, TokenConfig>,
    ) -> Self {
        Self::with_physical_networks(store, realiser, tokens, Default::default())
    }

    /// `new`, accepting `provider:physical_network` values among `physical_networks` (the
    /// config's mapping); any other value is refused with 400, as Neutron refuses a physical
    /// network it has no bridge mapping for.
    pub fn with_physical_networks(
        store: Store,
        realiser: Arc<dyn Realise>,
        tokens: BTreeMap<String, TokenConfig>,
        physical_networks: std::collections::BTreeSet<String>,
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
                datapath: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Attaches the datapath the sessions and stats views read (once; later calls are
    /// ignored).
    pub fn set_datapath(&self, datapath: Arc<crate::datapath::Datapath>) {
        let _ = self.inner.datapath.set(datapath);
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
        tokio::task::spawn_blocking(move || match &st.inner.reader {
            Some(r) => {
                let conn = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // One snapshot for every query of the request.
                let tx = conn.unchecked_transaction()?;
                f(&tx)
            }
            None => st.with_store(|s| f(s.conn())),
        })
        .await
        .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
    }

    async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Effects) -> Result<T, Fault> + Send + 'static,
    ) -> Result<T, Fault> {
        let st = self.clone();
        tokio::task::spawn_blocking(move || st.mutate_blocking(f))
            .await
            .map_err(|e| Fault::internal(format!("request task failed: {e}")))?
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
            (Some(n), Some(o)) => middle.push((Step::ApplyRouter(n), Step::ApplyRouter(o.clone()))),
            (Some(n), None) => {
                let dp = n.dp_id;
                middle.push((Step::ApplyRouter(n), Step::RemoveRouter(id.clone(), dp)));
            }
            (None, Some(o)) => middle.push((
                Step::RemoveRouter(id.clone(), o.dp_id),
                Step::ApplyRouter(o.clone()),
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
        })
    }
}

/// The router with every route; see `service` for the `.json` suffix handling.
pub fn router(state: ApiState) -> Router {
    fn coll(kind: Kind) -> axum::routing::MethodRouter<ApiState> {
        get(
            move |State(s): State<ApiState>, ctx: Ctx, uri: Uri, h: axum::http::HeaderMap| {
                list(s, ctx, uri, h, kind)
            },
        )
        .post(move |State(s): State<ApiState>, ctx: Ctx, body: Bytes| create(s, ctx, kind, body))
    }
    fn item(kind: Kind) -> axum::routing::MethodRouter<ApiState> {
        get(
            move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, uri: Uri| {
                show(s, ctx, kind, id, uri)
            },
        )
        .put(
            move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| {
                update(s, ctx, kind, id, body)
            },
        )
        .delete(
            move |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>| {
                delete(s, ctx, kind, id)
            },
        )
    }
    let mut r = Router::new()
        .route("/", get(discovery::versions))
        .route("/v2.0", get(discovery::index))
        .route("/v2.0/", get(discovery::index))
        .route("/v2.0/extensions", get(discovery::extensions))
        .route("/v2.0/extensions/{alias}", get(discovery::extension));
    for kind in [Kind::Network, Kind::Subnet, Kind::Port, Kind::Router] {
        r = r
            .route(&format!("/v2.0/{}", kind.collection()), coll(kind))
            .route(&format!("/v2.0/{}/{{id}}", kind.collection()), item(kind));
    }
    r = floatingips::routes(r);
    r = observe::routes(r);
    r.route(
        "/v2.0/routers/{id}/add_router_interface",
        put(
            |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| {
                interface(s, ctx, id, body, true)
            },
        ),
    )
    .route(
        "/v2.0/routers/{id}/remove_router_interface",
        put(
            |State(s): State<ApiState>, ctx: Ctx, Path(id): Path<String>, body: Bytes| {
                interface(s, ctx, id, body, false)
            },
        ),
    )
    .fallback(|| async { Fault::new(404, "HTTPNotFound", "The resource could not be found.") })
    .method_not_allowed_fallback(|| async {
        Fault::new(
            405,
            "HTTPMethodNotAllowed",
            "The method is not allowed for this resource.",
        )
    })
    .layer(axum::middleware::map_response(neutron_errors))
    .with_state(state)
}

/// Turns any error response that is not already a NeutronError (axum's own rejections: path
/// decoding, body too large) into one, so clients always get the documented shape.
async fn neutron_errors(resp: Response) -> Response {
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

// ------------------------------------------------------------------ handlers

/// Query parameters: `fields` (repeatable), equality filters, sorting and pagination.
#[derive(Default)]
struct ListQuery {
    fields: Vec<String>,
    filters: BTreeMap<String, Vec<String>>,
    sort_key: Option<String>,
    descending: bool,
    limit: Option<usize>,
    marker: Option<String>,
}

const NON_FILTERS: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "page_reverse",
    "verbose",
];

fn parse_query(uri: &Uri) -> Result<ListQuery, Fault> {
    let Query(pairs): Query<Vec<(String, String)>> = Query::try_from_uri(uri)
        .map_err(|e| Fault::bad_request(format!("Malformed query string: {e}")))?;
    let mut q = ListQuery::default();
    for (k, v) in pairs {
        match k.as_str() {
            "fields" => q
                .fields
                .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
            "sort_key" => q.sort_key = q.sort_key.or(Some(v)),
            "sort_dir" => match v.as_str() {
                "asc" => q.descending = false,
                "desc" => q.descending = true,
                _ => {
                    return Err(Fault::bad_request(format!(
                        "Invalid sort_dir '{v}': must be asc or desc"
                    )));
                }
            },
            "limit" => match v.parse::<usize>() {
                Ok(0) => q.limit = None,
                Ok(n) => q.limit = Some(n),
                Err(_) => {
                    return Err(Fault::bad_request(format!(
                        "Invalid limit '{v}': must be a non-negative integer"
                    )));
                }
            },
            "marker" => q.marker = Some(v),
            _ if NON_FILTERS.contains(&k.as_str()) => {}
            _ => q.filters.entry(k).or_default().push(v),
        }
    }
    Ok(q)
}

fn value_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => input::parse_bool(want) == Some(*b),
        Value::Number(n) => n.to_string() == want,
        Value::Null => want.is_empty() || want == "None",
        Value::Array(items) => items.iter().any(|i| value_matches(i, want)),
        Value::Object(o) => {
            // `fixed_ips=ip_address=10.0.0.5` / `fixed_ips=subnet_id=...`
            let Some((k, w)) = want.split_once('=') else {
                return false;
            };
            o.get(k).is_some_and(|x| value_matches(x, w))
        }
    }
}

fn matches(item: &Value, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(k, wants)| match item.get(k) {
        // Filters on attributes this resource does not have are ignored, as Neutron did.
        None => true,
        Some(v) => wants.iter().any(|w| value_matches(v, w)),
    })
}

fn project(item: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return item;
    }
    match item {
        Value::Object(o) => {
            Value::Object(o.into_iter().filter(|(k, _)| fields.contains(k)).collect())
        }
        other => other,
    }
}

fn sort_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn list(
    s: ApiState,
    ctx: Ctx,
    uri: Uri,
    headers: axum::http::HeaderMap,
    kind: Kind,
) -> Result<Response, Fault> {
    let q = parse_query(&uri)?;
    let items = s.read(move |c| resources::list(c, &ctx, kind)).await?;
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|i| matches(i, &q.filters))
        .collect();
    if let Some(key) = &q.sort_key {
        items.sort_by_key(|i| sort_text(&i[key.as_str()]));
    }
    if q.descending {
        items.reverse();
    }
    if let Some(m) = &q.marker {
        let pos = items
            .iter()
            .position(|i| i["id"].as_str() == Some(m.as_str()))
            .ok_or_else(|| Fault::not_found(kind.singular(), m))?;
        items.drain(..=pos);
    }
    let mut body = serde_json::Map::new();
    if let Some(limit) = q.limit
        && items.len() > limit
    {
        items.truncate(limit);
        // The next page: the same query with the marker moved to the last item shown.
        let last = items
            .last()
            .and_then(|i| i["id"].as_str())
            .unwrap_or_default();
        let mut query: Vec<&str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("marker="))
            .collect();
        let marker = format!("marker={last}");
        query.push(&marker);
        let href = format!(
            "{}/v2.0/{}?{}",
            discovery::base(&headers),
            kind.collection(),
            query.join("&")
        );
        body.insert(
            format!("{}_links", kind.collection()),
            json!([{"rel": "next", "href": href}]),
        );
    }
    let items: Vec<Value> = items.into_iter().map(|i| project(i, &q.fields)).collect();
    body.insert(kind.collection().to_string(), Value::Array(items));
    Ok(Json(Value::Object(body)).into_response())
}

async fn show(s: ApiState, ctx: Ctx, kind: Kind, id: String, uri: Uri) -> Result<Response, Fault> {
    let q = parse_query(&uri)?;
    let item = s.read(move |c| resources::show(c, &ctx, kind, &id)).await?;
    Ok(Json(json!({ kind.singular(): project(item, &q.fields) })).into_response())
}

async fn create(s: ApiState, ctx: Ctx, kind: Kind, body: Bytes) -> Result<Response, Fault> {
    let o = input::resource_body(&body, kind.singular())?;
    // Non-admins get 403 for any provider attribute (resources::create).
    if kind == Kind::Network
        && ctx.admin
        && let Some(Value::String(p)) = o.get("provider:physical_network")
        && !s.inner.physical_networks.contains(p)
    {
        return Err(Fault::invalid(format!(
            "physical_network '{p}' unknown for flat provider network"
        )));
    }
    let item = s
        .mutate(move |c, fx| resources::create(c, fx, &ctx, kind, o))
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ kind.singular(): item }))).into_response())
}

async fn update(
    s: ApiState,
    ctx: Ctx,
    kind: Kind,
    id: String,
    body: Bytes,
) -> Result<Response, Fault> {
    let o = input::resource_body(&body, kind.singular())?;
    let item = s
        .mutate(move |c, fx| resources::update(c, fx, &ctx, kind, &id, o))
        .await?;
    Ok(Json(json!({ kind.singular(): item })).into_response())
}

async fn delete(s: ApiState, ctx: Ctx, kind: Kind, id: String) -> Result<Response, Fault> {
    s.mutate(move |c, fx| resources::delete(c, fx, &ctx, kind, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn interface(
    s: ApiState,
    ctx: Ctx,
    id: String,
    body: Bytes,
    add: bool,
) -> Result<Response, Fault> {
    let o = input::any_object(&body)?;
    let info = s
        .mutate(move |c, fx| {
            if add {
                resources::add_interface(c, fx, &ctx, &id, &o)
            } else {
                resources::remove_interface(c, fx, &ctx, &id, &o)
            }
        })
        .await?;
    Ok(Json(info).into_response())
}
