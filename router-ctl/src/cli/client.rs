//! The HTTP side of the CLI: where the API is, which token to send, and turning Neutron error
//! bodies into readable errors.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use reqwest::{Method, StatusCode, Url, blocking};
use serde_json::Value;

use super::{GlobalArgs, resolve::Resource};

/// The daemon's default listen address (`config::Config::listen`), as a URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9696";
/// The daemon's default state directory (`config::Config::state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/router-ctl";
/// File in the state directory where a daemon without configured tokens writes its admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Where to send requests and with which token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The endpoint without `/v2.0`, e.g. `http://127.0.0.1:9696`.
    pub url: String,
    pub token: String,
}

impl Connection {
    /// `--url`/`--token` when given; with no token, the local daemon's admin token — but only
    /// when no `--url` points elsewhere or `--state-dir` names the daemon explicitly, so an
    /// admin token is never sent to an endpoint the user did not tie to it.
    pub fn from_args(args: &GlobalArgs) -> Result<Self> {
        let url = normalise_url(args.url.as_deref().unwrap_or(DEFAULT_URL))?;
        let token = match (&args.token, &args.url, &args.client_state_dir) {
            (Some(t), _, _) => t.clone(),
            (None, None, dir) | (None, _, dir @ Some(_)) => {
                let dir = dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
                read_admin_token(&dir)?
            }
            (None, Some(_), None) => bail!(
                "no API token: pass --token or set ROUTER_CTL_TOKEN (or --state-dir to use a local daemon's admin token)"
            ),
        };
        Ok(Self { url, token })
    }
}

/// Reads `<dir>/admin-token`, explaining the usual reasons it cannot be read.
pub fn read_admin_token(dir: &Path) -> Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no API token given and the local admin token {} is unreadable (pass --token or set ROUTER_CTL_TOKEN; \
             the local token is only readable by root on the daemon's host)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token.to_string())
}

/// Accepts `http://host:port`, with or without a trailing `/` or `/v2.0` (what users paste
/// from a Keystone catalog), and returns it without either.
pub fn normalise_url(url: &str) -> Result<String> {
    let parsed = Url::parse(url).with_context(|| format!("invalid API URL `{url}`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("invalid API URL `{url}`: expected http:// or https://");
    }
    let mut s = url.trim_end_matches('/').to_string();
    for suffix in ["/v2.0", "/v2"] {
        if let Some(stripped) = s.strip_suffix(suffix) {
            s = stripped.trim_end_matches('/').to_string();
            break;
        }
    }
    Ok(s)
}

/// A blocking Neutron API client.
pub struct Client {
    http: blocking::Client,
    conn: Connection,
}

impl Client {
    pub fn new(conn: &Connection) -> Result<Self> {
        let http = blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Realising a router (namespaces, veths, eBPF attach) takes a moment; be generous.
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            conn: conn.clone(),
        })
    }

    /// `GET /v2.0{path}`.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.request(Method::GET, path, &[], None)
    }

    /// `GET /v2.0/<collection>?<query>` and the array inside the answer.
    pub fn list(&self, r: Resource, query: &[(&str, &str)]) -> Result<Vec<Value>> {
        let v = self.request(Method::GET, r.collection(), query, None)?;
        match v.get(r.plural()) {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => bail!("the API answer has no `{}` list: {v}", r.plural()),
        }
    }

    /// `POST /v2.0{path}` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.request(Method::POST, path, &[], Some(body))
    }

    /// `PUT /v2.0{path}` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.request(Method::PUT, path, &[], Some(body))
    }

    /// `DELETE /v2.0{path}`.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.request(Method::DELETE, path, &[], None).map(|_| ())
    }

    /// The URL of `/v2.0{path}?{query}`.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url> {
        let mut url = Url::parse(&format!("{}/v2.0{path}", self.conn.url))
            .with_context(|| format!("building a URL for {path}"))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = self.url(path, query)?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .header("X-Auth-Token", &self.conn.token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the router-ctl API at {}: is the daemon running (and are you in its network namespace)? ({e})",
                    self.conn.url
                )
            } else {
                anyhow::anyhow!("{method} {url}: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        if !status.is_success() {
            bail!("{}", error_message(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: the answer is not JSON: {text}"))
    }
}

/// The message of a `{"NeutronError": {"type", "message", "detail"}}` body, or the raw body.
pub fn error_message(status: StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("NeutronError"));
    match err {
        Some(e) => {
            let ty = e.get("type").and_then(Value::as_str).unwrap_or("");
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            let detail = e.get("detail").and_then(Value::as_str).unwrap_or("");
            let mut s = if ty.is_empty() {
                msg.to_string()
            } else {
                format!("{msg} ({ty}, HTTP {})", status.as_u16())
            };
            if !detail.is_empty() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => format!("HTTP {status}: {}", body.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::Format;

    fn args(url: Option<&str>, token: Option<&str>, dir: Option<&Path>) -> GlobalArgs {
        GlobalArgs {
            url: url.map(str::to_string),
            token: token.map(str::to_string),
            client_state_dir: dir.map(Path::to_path_buf),
            format: Format::Table,
        }
    }

    #[test]
    fn urls_are_normalised() {
        for u in [
            "http://127.0.0.1:9696",
            "http://127.0.0.1:9696/",
            "http://127.0.0.1:9696/v2.0",
            "http://127.0.0.1:9696/v2.0/",
        ] {
            assert_eq!(normalise_url(u).unwrap(), "http://127.0.0.1:9696", "{u}");
        }
        assert!(normalise_url("127.0.0.1:9696").is_err());
        assert!(normalise_url("ftp://h/").is_err());
    }

    #[test]
    fn token_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "tok-local\n").unwrap();
        // Explicit token wins.
        let c = Connection::from_args(&args(None, Some("t"), Some(dir.path()))).unwrap();
        assert_eq!(c.token, "t");
        assert_eq!(c.url, DEFAULT_URL);
        // Explicit state dir: its admin token, trimmed, even with a URL.
        let c = Connection::from_args(&args(Some("http://10.0.0.1:9696/"), None, Some(dir.path())))
            .unwrap();
        assert_eq!(c.token, "tok-local");
        assert_eq!(c.url, "http://10.0.0.1:9696");
        // A remote URL and no token: never guess.
        let e = Connection::from_args(&args(Some("http://10.0.0.1:9696"), None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token"), "{e}");
        // Missing file: says where it looked and what to do.
        let empty = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            Connection::from_args(&args(None, None, Some(empty.path()))).unwrap_err()
        );
        assert!(
            e.contains("admin-token") && e.contains("ROUTER_CTL_TOKEN"),
            "{e}"
        );
    }

    #[test]
    fn neutron_errors_are_readable() {
        let body = r#"{"NeutronError": {"type": "RouterInUse", "message": "Router r still has ports", "detail": ""}}"#;
        assert_eq!(
            error_message(StatusCode::CONFLICT, body),
            "Router r still has ports (RouterInUse, HTTP 409)"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, "oops\n"),
            "HTTP 502 Bad Gateway: oops"
        );
    }

    #[test]
    fn urls_carry_version_and_escaped_query() {
        let c = Client::new(&Connection {
            url: "http://h:9696".into(),
            token: "t".into(),
        })
        .unwrap();
        assert_eq!(
            c.url("/networks", &[("name", "a b&c")]).unwrap().as_str(),
            "http://h:9696/v2.0/networks?name=a+b%26c"
        );
    }
}
