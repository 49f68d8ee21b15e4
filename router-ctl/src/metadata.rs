//! The metadata proxy, served by the daemon itself (no helper process per router).
//!
//! Instances ask `http://169.254.169.254/`. 169.254.169.254/32 sits on the router namespace's
//! `lo` (see `realise::router::namespace`), and this module listens on 169.254.169.254:80 inside each
//! router namespace, so instances reach it through plain routing: no datapath program rewrites
//! ports (Neutron redirects port 80 to a proxy on 9697 with iptables; a listener on the
//! well-known port itself needs no redirect, and the tenant traffic of routers without
//! floating IPs runs no program on the router's internal side). The listener is created on a
//! thread that entered the namespace (a socket keeps the namespace it was created in; binding
//! port 80 needs the daemon's `CAP_NET_BIND_SERVICE`) and served from the daemon's tokio
//! runtime. Nothing from the external network reaches the address: `snat_in` drops packets to
//! it on the gateway tap.
//!
//! Each request is forwarded to `[metadata] upstream` with `X-Forwarded-For` (the instance's
//! address, the connection's peer) and `X-Neutron-Router-ID`, as Neutron's
//! `neutron-ns-metadata-proxy` does. Without an upstream the proxy answers 503 with a message
//! saying so.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    net::ns::{NetnsHandle, in_netns},
    realise::{METADATA_ADDR, RouterHook},
};

/// Largest request body forwarded upstream.
const MAX_BODY: usize = 1 << 20;

/// The proxies of every router of the daemon.
pub struct MetadataProxies {
    upstream: Option<String>,
    rt: tokio::runtime::Handle,
    client: reqwest::Client,
    servers: Mutex<HashMap<String, Server>>,
}

/// One router's proxy: its serving task and the namespace (inode) its listener lives in.
struct Server {
    task: tokio::task::JoinHandle<()>,
    ns_ino: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The listener (and with it the namespace it pins) goes with the task.
        self.task.abort();
    }
}

/// The inode of a namespace handle: tells a namespace recreated under the same name apart.
fn ns_inode(ns: &NetnsHandle) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(ns
        .file
        .metadata()
        .context("stat of a namespace handle")?
        .ino())
}

#[derive(Clone)]
struct ProxyState {
    router_id: Arc<str>,
    upstream: Option<Arc<str>>,
    client: reqwest::Client,
}

impl MetadataProxies {
    /// `upstream`: base URL of the metadata service (Nova's), None → 503. `rt`: the runtime
    /// that serves the listeners.
    pub fn new(upstream: Option<String>, rt: tokio::runtime::Handle) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the metadata HTTP client")?;
        Ok(Arc::new(Self {
            upstream: upstream.map(|u| u.trim_end_matches('/').to_string()),
            rt,
            client,
            servers: Mutex::new(HashMap::new()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Server>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RouterHook for MetadataProxies {
    fn router_up(&self, router_id: &str, ns: &NetnsHandle) -> Result<()> {
        let ns_ino = ns_inode(ns)?;
        let mut servers = self.lock();
        if servers
            .get(router_id)
            .is_some_and(|s| s.ns_ino == ns_ino && !s.task.is_finished())
        {
            return Ok(());
        }
        // Gone, or in a namespace since replaced (deleted from outside and rebuilt): anew.
        servers.remove(router_id);
        let addr = SocketAddrV4::new(METADATA_ADDR, router_common::METADATA_PORT);
        let listener = in_netns(ns, || {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the metadata proxy on {addr}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = ProxyState {
            router_id: Arc::from(router_id),
            upstream: self.upstream.as_deref().map(Arc::from),
            client: self.client.clone(),
        };
        let app = Router::new().fallback(proxy).with_state(state);
        let id = router_id.to_string();
        let task = self.rt.spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::warn!("metadata proxy of router {id} stopped: {e}");
            }
        });
        servers.insert(router_id.to_string(), Server { task, ns_ino });
        tracing::info!("metadata proxy of router {router_id} listening on {addr}");
        Ok(())
    }

    fn router_down(&self, router_id: &str) {
        // Dropping the server aborts its task, closing the listener.
        self.lock().remove(router_id);
    }
}

/// A 502 for a failed upstream exchange: the cause is logged, the client is told `what`.
fn upstream_failed(upstream: &str, e: &reqwest::Error, what: &'static str) -> Response {
    tracing::warn!("metadata upstream {upstream}: {e}");
    (StatusCode::BAD_GATEWAY, what).into_response()
}

/// Hop-by-hop headers not forwarded (RFC 9110 §7.6.1), plus the ones the proxy sets.
fn skip_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "x-forwarded-for"
            | "x-neutron-router-id"
            | "x-instance-id"
            | "x-tenant-id"
            | "x-instance-id-signature"
    )
}

async fn proxy(
    State(st): State<ProxyState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match try_proxy(&st, peer, req).await {
        Ok(r) | Err(r) => r,
    }
}

/// Forwards `req` from `peer` upstream and its answer back; `Err` is the proxy's own error
/// answer to the instance.
async fn try_proxy(st: &ProxyState, peer: SocketAddr, req: Request) -> Result<Response, Response> {
    let Some(upstream) = &st.upstream else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "Metadata proxy: no metadata upstream is configured for this router \
             (set `upstream` in the [metadata] section of the router-ctl daemon's config).\n",
        )
            .into_response());
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in req.headers() {
        if !skip_header(k.as_str()) {
            headers.append(k.clone(), v.clone());
        }
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("Metadata proxy: {e}\n")).into_response())?;
    let mut rb = st
        .client
        .request(method, format!("{upstream}{path}"))
        .headers(headers)
        .header("X-Forwarded-For", peer.ip().to_string())
        .header("X-Neutron-Router-ID", &*st.router_id);
    if !body.is_empty() {
        rb = rb.body(body);
    }
    let resp = rb.send().await.map_err(|e| {
        upstream_failed(
            upstream,
            &e,
            "Metadata proxy: the metadata upstream could not be reached.\n",
        )
    })?;
    let status = resp.status();
    let mut out_headers = Vec::new();
    for (k, v) in resp.headers() {
        if !skip_header(k.as_str()) {
            out_headers.push((k.clone(), v.clone()));
        }
    }
    let bytes = resp.bytes().await.map_err(|e| {
        upstream_failed(
            upstream,
            &e,
            "Metadata proxy: the metadata upstream's answer was cut short.\n",
        )
    })?;
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    for (k, v) in out_headers {
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_str().as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) else {
            continue;
        };
        r.headers_mut().append(k, v);
    }
    Ok(r)
}
