//! API unit tests through the axum service (no network, no root): validation, defaults,
//! policy, and rollback when the realiser fails (a recording realiser stands in for the kernel
//! side here; the daemon contract tests in `tests/` exercise the real one).

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::body::Body;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use serde_json::{Value, json};

use super::*;

mod basics;
mod floatingips;
mod ipv6;
mod properties;
mod routers;
mod scans;
mod standard_attrs;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    /// Every router spec applied, in order.
    applied: Mutex<Vec<RouterSpec>>,
    fail_routers: AtomicBool,
}

impl Realise for Recorder {
    fn apply_network(&self, n: &NetworkSpec) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("apply_network {}", n.id));
        Ok(())
    }
    fn remove_network(&self, id: &str) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove_network {id}"));
        Ok(())
    }
    fn apply_router(&self, s: &RouterSpec) -> anyhow::Result<()> {
        self.calls.lock().unwrap().push(format!(
            "apply_router {} if={} gw={}",
            s.id,
            s.interfaces.len(),
            s.gateway.is_some()
        ));
        self.applied.lock().unwrap().push(s.clone());
        if self.fail_routers.load(Ordering::SeqCst) {
            anyhow::bail!("injected failure");
        }
        Ok(())
    }
    fn remove_router(&self, id: &str, dp: u32) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove_router {id} {dp}"));
        Ok(())
    }
}

struct T {
    _dir: tempfile::TempDir,
    state: ApiState,
    rec: Arc<Recorder>,
}

impl T {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("router.db")).unwrap();
        let rec = Arc::new(Recorder::default());
        let tokens = BTreeMap::from([
            (
                "adm".to_string(),
                TokenConfig {
                    project_id: "admin".into(),
                    admin: true,
                },
            ),
            (
                "ta".to_string(),
                TokenConfig {
                    project_id: "pa".into(),
                    admin: false,
                },
            ),
            (
                "tb".to_string(),
                TokenConfig {
                    project_id: "pb".into(),
                    admin: false,
                },
            ),
        ]);
        let state = ApiState::new(store, rec.clone(), tokens);
        Self {
            _dir: dir,
            state,
            rec,
        }
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        self.raw_with(method, path, token, body, &[]).await
    }

    /// `raw` with extra request headers.
    async fn raw_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let resp = service(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, v)
    }

    async fn req(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.raw(method, path, Some(token), &b).await
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value, want: u16) -> Value {
        let (s, v) = self.req(method, path, token, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    /// A request that must fail with `want` (status, NeutronError type); returns the body.
    async fn refused(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
        want: (u16, &str),
    ) -> Value {
        let (s, v) = self.req(method, path, token, body).await;
        assert_eq!((s, err_type(&v)), want, "{method} {path}: {v}");
        v
    }

    /// `POST /v2.0/{coll}` as `token`: the status and the body.
    async fn post(&self, token: &str, coll: &str, body: Value) -> (u16, Value) {
        self.req("POST", &format!("/v2.0/{coll}"), token, body)
            .await
    }

    /// `POST /v2.0/{coll}` as `token`, asserting 201; returns the body.
    async fn create(&self, token: &str, coll: &str, body: Value) -> Value {
        self.ok("POST", &format!("/v2.0/{coll}"), token, body, 201)
            .await
    }

    /// `GET path` as `token`, asserting 200; returns the body.
    async fn get(&self, path: &str, token: &str) -> Value {
        self.ok("GET", path, token, Value::Null, 200).await
    }

    /// The page a list's `{coll}_links` "next" link points to, as `token`.
    async fn next_page(&self, list: &Value, coll: &str, token: &str) -> Value {
        let next = list[format!("{coll}_links")][0]["href"]
            .as_str()
            .expect("a next link");
        self.get(&next[next.find("/v2.0").unwrap()..], token).await
    }

    /// `PUT /v2.0/routers/{router}/{action}_router_interface` (`action`: add or remove) of
    /// `subnet` as `ta`, asserting `want`; returns the body.
    async fn router_interface(&self, router: &str, action: &str, subnet: &str, want: u16) -> Value {
        let path = format!("/v2.0/routers/{router}/{action}_router_interface");
        self.ok("PUT", &path, "ta", json!({"subnet_id": subnet}), want)
            .await
    }

    /// A network with the attributes of `body` (`{}`: defaults) made by `token`; its id.
    async fn network(&self, token: &str, body: Value) -> String {
        let n = self
            .create(token, "networks", json!({ "network": body }))
            .await;
        id(&n, "network")
    }

    /// An IPv4 subnet `cidr` of `network` made by `token`; returns the body.
    async fn subnet(&self, token: &str, network: &str, cidr: &str) -> Value {
        let body = json!({"subnet": {"network_id": network, "ip_version": 4, "cidr": cidr}});
        self.create(token, "subnets", body).await
    }

    /// An external network (made by the admin) with the subnet 192.0.2.0/24; its id.
    async fn external_network(&self) -> String {
        let ext = self.network("adm", json!({"router:external": true})).await;
        self.subnet("adm", &ext, "192.0.2.0/24").await;
        ext
    }
}

/// The id of the `kind` resource in a response body.
fn id(v: &Value, kind: &str) -> String {
    v[kind]["id"].as_str().unwrap().to_string()
}

fn err_type(v: &Value) -> &str {
    v["NeutronError"]["type"]
        .as_str()
        .unwrap_or("<no NeutronError>")
}

/// The names (`key`) of a list's items, in order.
fn names<'a>(v: &'a Value, coll: &str, key: &str) -> Vec<&'a str> {
    v[coll]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap())
        .collect()
}
