//! [`Stack`]: MariaDB, RabbitMQ and neutron-server 29 in a network namespace of their own,
//! every listener on that namespace's loopback, every file under a temp dir (two stacks can
//! coexist; the machine's own services and config are never touched). Dropping an owned stack
//! stops everything, even after a failure: the server processes' groups, epmd, the namespace
//! (killing whatever is left in it) and the temp dir.
//!
//! `cargo xtask test` starts one stack for the whole run and hands its coordinates to the tests
//! in [`STACK_ENV`]; a test run without it starts a stack of its own ([`Stack::for_test`]).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{mariadb, proc::Proc, rabbitmq, server, venv};
use crate::{
    TempDir,
    netns::{Netns, netns_cmd, try_enter_named, unique},
};

/// Environment variable carrying a running stack's coordinates (JSON: netns, venv, dir).
pub const STACK_ENV: &str = "ROUTER_NEUTRON_STACK";

/// A running neutron stack: owned (stopped on drop) or attached to one started by xtask.
pub struct Stack {
    /// The namespace whose loopback carries MariaDB, RabbitMQ and the API.
    pub netns: String,
    /// The venv holding neutron and the `openstack` CLI.
    pub venv: PathBuf,
    /// Configuration and logs.
    pub dir: PathBuf,
    owned: Option<Owned>,
}

/// What an owned stack stops on drop. Field order is drop order: the namespace (and whatever
/// still runs in it) before the temp dir.
struct Owned {
    procs: Vec<Proc>,
    ns: Netns,
    dir: TempDir,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Last started, first stopped: neutron, then RabbitMQ, then MariaDB.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        rabbitmq::stop_epmd(&self.ns.name, &self.dir.path.join("rabbitmq"));
    }
}

impl Stack {
    /// Starts a stack of its own (venv installed first if needed); ≈ 1.5 min warm.
    pub fn start() -> Result<Self> {
        crate::require_root();
        let venv = venv::ensure()?;
        let dir = TempDir::new("neutron-stack");
        let ns = Netns::try_named(&unique("nstk"))?;
        let mut owned = Owned {
            procs: Vec::new(),
            ns,
            dir,
        };
        let ns_name = owned.ns.name.clone();
        let root = owned.dir.path.clone();
        eprintln!(
            "neutron stack: starting in namespace {ns_name}, files in {}",
            root.display()
        );
        let sub = |name: &str| -> Result<PathBuf> {
            let p = root.join(name);
            std::fs::create_dir_all(&p)?;
            Ok(p)
        };
        let t0 = std::time::Instant::now();
        owned
            .procs
            .push(mariadb::start(&ns_name, &sub("mariadb")?)?);
        eprintln!("neutron stack: MariaDB up after {:?}", t0.elapsed());
        owned
            .procs
            .push(rabbitmq::start(&ns_name, &sub("rabbitmq")?)?);
        eprintln!("neutron stack: RabbitMQ up after {:?}", t0.elapsed());
        let neutron_dir = sub("neutron")?;
        owned
            .procs
            .extend(server::start(&ns_name, &neutron_dir, &venv)?);
        eprintln!(
            "neutron stack: database migrated, neutron starting after {:?}",
            t0.elapsed()
        );
        let mut stack = Self {
            netns: ns_name,
            venv,
            dir: root,
            owned: None,
        };
        // The API is the last process started: stop waiting as soon as it dies.
        let api = owned.procs.last_mut();
        let ready = stack.wait_ready(Duration::from_secs(180), api);
        stack.owned = Some(owned);
        ready?;
        eprintln!(
            "neutron stack: ready in namespace {} after {:?}",
            stack.netns,
            t0.elapsed()
        );
        Ok(stack)
    }

    /// Attaches to the stack named by [`STACK_ENV`] (not stopped on drop), if it is set.
    pub fn from_env() -> Result<Option<Self>> {
        let Ok(text) = std::env::var(STACK_ENV) else {
            return Ok(None);
        };
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{STACK_ENV}={text}"))?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("{STACK_ENV} has no {k:?}: {text}"))
        };
        let stack = Self {
            netns: field("netns")?,
            venv: field("venv")?.into(),
            dir: field("dir")?.into(),
            owned: None,
        };
        stack
            .wait_ready(Duration::from_secs(10), None)
            .with_context(|| format!("the stack in {STACK_ENV} does not answer"))?;
        Ok(Some(stack))
    }

    /// The stack xtask started for this run, or one of this test's own.
    pub fn for_test() -> Self {
        match Self::from_env() {
            Ok(Some(s)) => s,
            Ok(None) => {
                Self::start().unwrap_or_else(|e| panic!("starting the neutron stack: {e:#}"))
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The coordinates other processes attach with ([`STACK_ENV`]).
    pub fn coordinates(&self) -> String {
        json!({
            "netns": self.netns,
            "venv": self.venv,
            "dir": self.dir,
        })
        .to_string()
    }

    /// The API's URL (inside the stack's namespace).
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", server::API_PORT)
    }

    /// The oslo.messaging URL of the broker (inside the stack's namespace).
    pub fn transport_url(&self) -> &'static str {
        rabbitmq::TRANSPORT_URL
    }

    /// A GET on the API from inside the stack's namespace: status and JSON body.
    pub fn api_get(&self, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.api_url());
        try_enter_named(&self.netns, || -> Result<(u16, Value)> {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .no_proxy()
                .build()?;
            let resp = client.get(&url).send()?;
            let status = resp.status().as_u16();
            Ok((status, resp.json().unwrap_or(Value::Null)))
        })?
    }

    fn wait_ready(&self, limit: Duration, api: Option<&mut Proc>) -> Result<()> {
        let mut last = String::new();
        let ready = super::proc::wait_until("the neutron API answers", limit, api, || {
            match self.api_get("/v2.0/networks") {
                Ok((200, _)) => true,
                Ok((s, v)) => {
                    last = format!("HTTP {s}: {v}");
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        });
        ready.with_context(|| {
            format!(
                "last answer: {last}\nAPI log:\n{}",
                super::proc::log_tail(&self.dir.join("neutron/api.log"), 40)
            )
        })
    }

    /// `program` from the venv inside the stack's namespace.
    pub fn venv_cmd(&self, program: &str) -> Command {
        netns_cmd(&self.netns, self.venv.join("bin").join(program))
    }

    /// The stock `openstack` CLI against this stack's API, without Keystone.
    pub fn openstack_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.venv_cmd("openstack");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OS_") {
                c.env_remove(k);
            }
        }
        c.args(["--os-auth-type", "none", "--os-endpoint"])
            .arg(self.api_url())
            .args(args);
        c
    }

    /// `openstack ARGS`, its output whatever the status.
    pub fn try_openstack(&self, args: &[&str]) -> Result<Output> {
        self.openstack_cmd(args)
            .output()
            .with_context(|| format!("running openstack {args:?}"))
    }

    /// `openstack ARGS` (add `-f json` to get an object), parsed; Null when it prints nothing.
    pub fn os(&self, args: &[&str]) -> Result<Value> {
        let out = self.try_openstack(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "openstack {} failed ({}):\n{stdout}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout)
            .with_context(|| format!("openstack {} printed no JSON: {stdout}", args.join(" ")))
    }

    /// `os`, panicking with the CLI's output on failure (for tests).
    #[track_caller]
    pub fn os_ok(&self, args: &[&str]) -> Value {
        self.os(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `sql` in neutron's database as neutron's own user, behind neutron-server's back: a
    /// change no notification announces (what a lost notification leaves an agent with).
    #[track_caller]
    pub fn sql(&self, sql: &str) {
        let out = netns_cmd(&self.netns, "mariadb")
            .args(["--no-defaults", "-h", "127.0.0.1", "-P", "3306"])
            .args(["-u", "neutron", "-pneutron", "neutron", "-e", sql])
            .output()
            .expect("running mariadb");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether this value stops the stack when dropped.
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// The last lines of a neutron log (`api`, `rpc-server`, `periodic`), for failure messages.
    pub fn log_tail(&self, which: &str, lines: usize) -> String {
        super::proc::log_tail(
            &self.dir.join("neutron").join(format!("{which}.log")),
            lines,
        )
    }

    /// The stack's files (config and logs).
    pub fn path(&self) -> &Path {
        &self.dir
    }
}
