//! A real `router-ctl daemon` for integration tests, in a throwaway host namespace.
//!
//! Each daemon gets its own temporary state directory and a private bpffs mounted (in the root
//! mount namespace, so the daemon sees it through `nsenter --net=`) for its pins. The API
//! listens on 127.0.0.1 *inside* the host namespace, so every HTTP request here is made by a
//! client whose sockets live in that namespace; callers never need to care. On drop the daemon
//! is killed, `router-ctl daemon --purge` removes what it created, the bpffs is unmounted and
//! the directory removed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Netns, unique};

/// Extra start options.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// TOML written to the daemon's `--config` file.
    pub config: Option<String>,
    /// The admin token when `config` defines `[tokens]` (no `admin-token` file is written then).
    pub admin_token: Option<String>,
}

impl DaemonOptions {
    /// A daemon configured by `toml`, with the usual admin token.
    pub fn config(toml: impl Into<String>) -> Self {
        Self {
            config: Some(toml.into()),
            admin_token: None,
        }
    }
}

/// Where and how the daemon runs, for callers other than the tests (the bench).
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The `router-ctl` binary (default: [`router_ctl_bin`]).
    pub bin: Option<PathBuf>,
    /// The daemon's directory (state, bpffs, log), removed on drop (default: a unique one
    /// under the temp dir).
    pub dir: Option<PathBuf>,
    /// On drop, SIGTERM and up to 5 s for a clean exit before SIGKILL (default: SIGKILL).
    pub term_on_drop: bool,
}

/// The `router-ctl` binary: `$ROUTER_CTL_BIN`, else `target/debug/router-ctl` next to the test
/// executable's directory.
pub fn router_ctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROUTER_CTL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug/router-ctl
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("router-ctl"))
        .expect("test executable has a target directory");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p router-ctl --bins` first (or set ROUTER_CTL_BIN)",
        bin.display()
    );
    bin
}

/// A blocking HTTP client whose connections are made from inside a network namespace.
///
/// reqwest's blocking client runs its I/O on a thread it spawns when built; building it on a
/// thread that entered the namespace puts that thread (and so every socket) in the namespace.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:9696`) from inside `ns`.
    pub fn new(ns: &Netns, base: &str, token: Option<&str>) -> Self {
        Self::try_new(ns, base, token).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `new` that reports a failure as an error.
    pub fn try_new(ns: &Netns, base: &str, token: Option<&str>) -> Result<Self> {
        let http = ns
            .try_enter(|| {
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .no_proxy()
                    .build()
            })?
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.to_string(),
            token: token.map(str::to_string),
        })
    }

    /// The same client with another token (None: no `X-Auth-Token` header).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends a raw body; returns the status and the JSON body (Null when empty, the text as a
    /// JSON string when it is not JSON). Panics when the request cannot be sent.
    pub fn raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_raw(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `raw` that reports a transport failure instead of panicking.
    pub fn try_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let text = resp.text()?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.raw("GET", path, None)
    }
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.raw("POST", path, Some(&body.to_string()))
    }
    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.raw("PUT", path, Some(&body.to_string()))
    }
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.raw("DELETE", path, None)
    }
}

/// What the daemon logs once its start-up resync ended (`router_ctl::daemon`).
pub const RESYNC_DONE: &str = "start-up resync";

/// A running daemon (see the module doc). Declare it after the `Netns` it runs in, so it is
/// dropped (killed and purged) while that namespace still exists.
pub struct Daemon {
    ns_name: String,
    bin: PathBuf,
    term_on_drop: bool,
    dir: PathBuf,
    state_dir: PathBuf,
    bpffs: PathBuf,
    config: Option<PathBuf>,
    port: u16,
    child: Option<Child>,
    admin_token: Option<String>,
    client: ApiClient,
}

impl Daemon {
    /// Starts a daemon with the default configuration (generated admin token) in `host`.
    pub fn start(host: &Netns) -> Self {
        Self::start_with(host, DaemonOptions::default())
    }

    /// Starts a daemon in `host` with config file `toml`.
    pub fn start_configured(host: &Netns, toml: impl Into<String>) -> Self {
        Self::start_with(host, DaemonOptions::config(toml))
    }

    /// Starts a daemon with `opts` in `host`.
    pub fn start_with(host: &Netns, opts: DaemonOptions) -> Self {
        crate::require_root();
        Self::try_start_with(host, opts, Launch::default()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `start_with` run as `launch` says, reporting a failure (the daemon's log included) as
    /// an error.
    pub fn try_start_with(host: &Netns, opts: DaemonOptions, launch: Launch) -> Result<Self> {
        let dir = launch.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("router-ctl-test-{}", unique("d")))
        });
        let state_dir = dir.join("state");
        let bpffs = dir.join("bpffs");
        fs::create_dir_all(&bpffs).context("creating the daemon's directory")?;
        nix::mount::mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount -t bpf bpf {}", bpffs.display()))?;
        let config = match &opts.config {
            Some(text) => {
                let p = dir.join("router-ctl.toml");
                fs::write(&p, text).context("writing the daemon config")?;
                Some(p)
            }
            None => None,
        };
        // A free port inside the namespace (its loopback is private to this daemon's users).
        let port = host.try_enter(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })??;
        let base = format!("http://127.0.0.1:{port}");
        let client = ApiClient::try_new(host, &base, None)?;
        let bin = match launch.bin {
            Some(b) => b,
            None => router_ctl_bin(),
        };
        // From here on, Drop purges, unmounts and removes whatever was made.
        let mut d = Self {
            ns_name: host.name.clone(),
            bin,
            term_on_drop: launch.term_on_drop,
            dir,
            state_dir,
            bpffs,
            config,
            port,
            child: None,
            admin_token: opts.admin_token,
            client,
        };
        d.try_spawn()?;
        if d.admin_token.is_none() {
            let t = fs::read_to_string(d.state_dir.join("admin-token"))
                .context("reading the generated admin token")?;
            d.admin_token = Some(t.trim().to_string());
        }
        d.client = d.client.with_token(d.admin_token.as_deref());
        Ok(d)
    }

    fn base_args(&self) -> Vec<String> {
        let mut a = vec![
            "daemon".to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
        ];
        if let Some(c) = &self.config {
            a.push("--config".into());
            a.push(c.display().to_string());
        }
        a
    }

    /// `router-ctl <args>` inside the host namespace (for the CLI and `--purge`).
    pub fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns_name))
            .arg("--")
            .arg(&self.bin);
        c
    }

    /// A CLI command preset with this daemon's URL and admin token.
    pub fn cli(&self) -> Command {
        let mut c = self.command();
        c.env("ROUTER_CTL_URL", self.url());
        if let Some(t) = &self.admin_token {
            c.env("ROUTER_CTL_TOKEN", t);
        }
        c
    }

    /// `router-ctl ARGS` against this daemon, run to completion.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        self.cli()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning router-ctl {args:?}: {e}"))
    }

    /// `router-ctl ARGS`, panicking with stderr and the daemon's log on failure; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "router-ctl {} failed ({}): {}\ndaemon log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `router-ctl -f json ARGS`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let text = self.cli_ok(&[&["-f", "json"], args].concat());
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }

    /// `router-ctl ARGS` that must fail; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            !out.status.success(),
            "router-ctl {} unexpectedly succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Starts the process without waiting for it to answer.
    fn try_launch(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .context("daemon log")?;
        let mut cmd = self.command();
        cmd.args(self.base_args())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn try_spawn(&mut self) -> Result<()> {
        let resyncs = self.resyncs();
        self.try_launch()?;
        self.wait_ready()?;
        self.wait_resynced(resyncs)
    }

    /// Start-up resyncs the log shows so far (finished or abandoned).
    pub fn resyncs(&self) -> usize {
        self.log().matches(RESYNC_DONE).count()
    }

    /// Waits until the log shows more than `before` start-up resyncs: the daemon answers its
    /// API at once and resyncs in the background, and tests that look at the kernel right after
    /// a (re)start want the routers converged.
    pub fn wait_resynced(&self, before: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.resyncs() <= before {
            if Instant::now() >= deadline {
                bail!(
                    "router-ctl daemon did not finish its start-up resync within 120 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = self.client.with_token(None);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "router-ctl daemon exited ({status}) before answering:\n{}",
                    self.log()
                );
            }
            let ok = probe.try_raw("GET", "/", None).is_ok_and(|(s, _)| s == 200);
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "router-ctl daemon did not answer within 60 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT` (reachable only from inside the host namespace).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The admin token (generated, or given in the options).
    pub fn admin_token(&self) -> String {
        self.admin_token
            .clone()
            .expect("no admin token: pass DaemonOptions::admin_token with a [tokens] config")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The daemon's directory (state dir, bpffs, config and log live in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's pid (it is exec'd by nsenter, so this is the daemon itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// A client with the admin token.
    pub fn client(&self) -> ApiClient {
        self.client.clone()
    }

    /// A client with `token` (None: no token header).
    pub fn client_as(&self, token: Option<&str>) -> ApiClient {
        self.client.with_token(token)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.client.get(path)
    }
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.client.post(path, body)
    }
    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.client.put(path, body)
    }
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.client.delete(path)
    }

    /// `kill -9` (no clean shutdown); state dir and bpffs stay.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; panics if it does not exit within 30 s.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon not running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "daemon did not exit within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again on the same state dir, bpffs and port (after `kill9`/`stop`, or
    /// kills it first).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `restart` that returns as soon as the process runs, before it answers or resyncs: for
    /// tests that act during that resync and for the bench's restart timings.
    pub fn restart_unready(&mut self) {
        self.kill9();
        self.try_launch().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.term_on_drop
            && let Some(c) = self.child.as_mut()
        {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill9();
        match self
            .command()
            .args(self.base_args())
            .arg("--purge")
            .output()
        {
            Ok(o) if !o.status.success() => eprintln!(
                "router-ctl daemon --purge failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("router-ctl daemon --purge: {e}"),
            Ok(_) => {}
        }
        if let Err(e) = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.bpffs.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Tokens of an admin (`admin-secret`) and of two projects (`alice-secret`, `bob-secret`),
/// for tests of project isolation and policy.
pub const PROJECT_TOKENS: &str = r#"
[tokens]
admin-secret = { project_id = "admin", admin = true }
alice-secret = { project_id = "alice" }
bob-secret = { project_id = "bob" }
"#;

impl Daemon {
    /// Starts a daemon in `host` that knows `PROJECT_TOKENS`; its own client is the admin.
    pub fn start_with_projects(host: &Netns) -> Self {
        Self::start_with(
            host,
            DaemonOptions {
                config: Some(PROJECT_TOKENS.to_string()),
                admin_token: Some("admin-secret".into()),
            },
        )
    }
}

/// Asserts a response's status and returns its body.
#[track_caller]
pub fn expect(got: (u16, Value), want: u16) -> Value {
    assert_eq!(got.0, want, "body: {}", got.1);
    got.1
}

/// Asserts a NeutronError body with status `want` and type `kind`, carrying a message and
/// the empty detail Neutron sends.
#[track_caller]
pub fn expect_err(got: (u16, Value), want: u16, kind: &str) {
    expect_err_of("", got, want, kind);
}

/// `expect_err` naming the request (`what`) in its failure messages.
#[track_caller]
pub fn expect_err_of(what: &str, got: (u16, Value), want: u16, kind: &str) {
    let (status, v) = got;
    assert_eq!(status, want, "{what} body: {v}");
    let ty = v["NeutronError"]["type"].as_str();
    assert_eq!(ty, Some(kind), "{what} body: {v}");
    assert!(v["NeutronError"]["message"].is_string(), "{what} {v}");
    assert_eq!(v["NeutronError"]["detail"], "", "{what} {v}");
}
