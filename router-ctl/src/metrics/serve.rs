//! The metrics endpoint (`GET /metrics` on its own listener, so it can be exposed to a
//! scraper without exposing the API), and the tower layer that counts API requests by status.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use super::Metrics;

/// Binds the `[metrics] listen` address; the error names the key.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("[metrics] listen = \"{addr}\": cannot listen there"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "metrics are at /metrics\n") })
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    // Reading the maps is blocking work.
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves `api` (any tower service over axum requests, e.g. `api::service`) on `listener`
/// until `shutdown`, counting each answer in `router_ctl_api_requests_total{method,code}`.
pub async fn serve_counted<S>(
    listener: tokio::net::TcpListener,
    api: S,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    let layer = axum::middleware::from_fn_with_state(metrics, count_request);
    let svc = tower::Layer::layer(&layer, api);
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service(svc),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The middleware of `serve_counted`.
async fn count_request(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    metrics.api_request(&method, resp.status());
    resp
}
