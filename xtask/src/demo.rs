//! `cargo xtask demo [--keep | --teardown]`: the router gateway end to end on one machine.
//!
//! Builds the eBPF object and `router-ctl`, starts the daemon in a throwaway "host" namespace
//! (private bpffs and state directory under the temp dir), then drives it only through the
//! `router-ctl` CLI: an external network with an "internet" namespace behind it (holding
//! 203.0.113.1 and a tiny HTTP server that answers with the client address it saw), two tenant
//! networks with a VM namespace each, a router with both interfaces and a gateway. It shows ping
//! and HTTP from each VM with the source address the server saw, the NAT sessions and counters,
//! a floating IP taking over one VM's traffic, and `gateway clear` cutting access. Everything is torn down at the end, on failure and on
//! Ctrl-C; `--keep` leaves it running and prints how to explore and tear down.
//!
//! The demo topology uses `ip` to build the parts that are not Neutron objects (the host and
//! internet namespaces); everything Neutron-shaped goes through the API.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use kit::netns::{Netns, netns_cmd, remove_netns, try_plug_into_bridge};

use crate::{TEST_COMMANDS, ebpf, ensure_commands, require_root, run, target_dir, workspace_root};

/// `cargo xtask demo` options.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the sandbox running and print how to explore it and tear it down.
    #[arg(long, conflicts_with = "teardown")]
    keep: bool,
    /// Tear down a sandbox left by `--keep` (or by a demo that was killed).
    #[arg(long)]
    teardown: bool,
    /// Internal: serve the demo's HTTP "what is my address" page on ADDR (run inside the
    /// internet namespace by the demo itself).
    #[arg(long, hide = true, value_name = "ADDR", conflicts_with_all = ["keep", "teardown"])]
    serve_http: Option<SocketAddr>,
    /// Internal: `GET /` from ADDR and print the body (run inside a VM namespace).
    #[arg(long, hide = true, value_name = "ADDR", conflicts_with_all = ["keep", "teardown"])]
    http_get: Option<SocketAddr>,
    /// The same story driven by a real neutron-server 29 (MariaDB, RabbitMQ, the `openstack`
    /// CLI) with `router-ctl agent` as its L3 agent; everything is torn down at the end.
    #[arg(long, conflicts_with_all = ["keep", "teardown"])]
    neutron: bool,
}

/// Namespace names; fixed so that `--teardown` finds a sandbox left by `--keep`.
const HOST_NS: &str = "rcdemo-host";
const INET_NS: &str = "rcdemo-inet";
const VM_NS: [&str; 2] = ["rcdemo-vm1", "rcdemo-vm2"];
/// Bridge-side end of the internet namespace's veth (in the host namespace).
const INET_VETH: &str = "rcdemo-inet0";
const LISTEN: &str = "127.0.0.1:9696";
const EXT_CIDR: &str = "203.0.113.0/24";
pub(crate) const INTERNET_IP: &str = "203.0.113.1";
const TENANTS: [(&str, &str); 2] = [("tenant1", "10.10.0.0/24"), ("tenant2", "10.20.0.0/24")];
const ROUTER: &str = "demo-router";

/// Everything the demo owns on disk: state dir, bpffs mount point, logs, pid files.
fn demo_dir() -> PathBuf {
    std::env::temp_dir().join("router-ctl-demo")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM only set a flag: the demo stops at its next step and tears down. Children in
/// the foreground (ping...) get the terminal's SIGINT themselves; the daemon and the HTTP
/// server run in their own process groups so the teardown can still use the API.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Entry point of `cargo xtask demo`.
pub fn run_demo(args: DemoArgs) -> Result<()> {
    if let Some(addr) = args.serve_http {
        return serve_http(addr);
    }
    if let Some(addr) = args.http_get {
        // One line on failure: the demo shows it in its transcript.
        match http_get(addr) {
            Ok(body) => print!("{body}"),
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    require_root("demo")?;
    catch_signals();
    if args.neutron {
        return crate::demo_neutron::run();
    }
    if args.teardown {
        teardown(&demo_dir());
        println!("demo sandbox removed");
        return Ok(());
    }
    let dir = demo_dir();
    if dir.exists() || Path::new("/run/netns").join(HOST_NS).exists() {
        bail!(
            "a demo sandbox already exists ({} or namespace {HOST_NS}), left by `--keep` or an interrupted run; remove it with `cargo xtask demo --teardown`",
            dir.display()
        );
    }
    ensure_commands(TEST_COMMANDS)?;
    let router_ctl = build()?;
    check_interrupted()?;

    let mut demo = Demo::new(dir.clone(), router_ctl);
    let result = (|| -> Result<()> {
        demo.start()?;
        demo.script(args.keep)
    })();
    match (&result, args.keep) {
        (Ok(()), true) => {
            demo.print_keep_help();
        }
        _ => {
            println!("\n== Cleaning up ==");
            teardown(&dir);
            println!("sandbox removed");
        }
    }
    result?;
    demo.verdict()
}

/// Builds the eBPF object and `router-ctl` with it embedded; returns the binary.
pub(crate) fn build() -> Result<PathBuf> {
    let target = target_dir();
    println!("== Building the eBPF datapath and router-ctl ==");
    let obj = ebpf::build(&target)?;
    run(ebpf::clean_cargo()
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--package", "router-ctl", "--bins"])
        .env("ROUTER_EBPF_OBJECT", &obj))?;
    let bin = target.join("debug/router-ctl");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

pub(crate) struct Demo {
    pub(crate) dir: PathBuf,
    pub(crate) router_ctl: PathBuf,
    /// Checks whose outcome was not the expected one (the demo goes on, then fails).
    pub(crate) failures: Vec<String>,
}

impl Demo {
    /// A demo with its files in `dir`, driving `router_ctl`, no check failed yet.
    pub(crate) fn new(dir: PathBuf, router_ctl: PathBuf) -> Self {
        Self {
            dir,
            router_ctl,
            failures: Vec::new(),
        }
    }

    /// The demo's outcome once it ran to the end: an error listing the checks that did not
    /// give the expected result, if any.
    pub(crate) fn verdict(&self) -> Result<()> {
        if !self.failures.is_empty() {
            bail!(
                "the demo ran, but {} check(s) did not give the expected result:\n  {}",
                self.failures.len(),
                self.failures.join("\n  ")
            );
        }
        Ok(())
    }
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))
}

/// An error naming `router-ctl ARGS` and its stderr when it failed.
fn ctl_status(args: &[&str], out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "router-ctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Demo {
    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// `router-ctl ARGS` in the daemon's namespace, with the demo daemon's admin token.
    fn ctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = netns_cmd(HOST_NS, &self.router_ctl);
        c.arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .env_remove("ROUTER_CTL_URL")
            .env_remove("ROUTER_CTL_TOKEN")
            .env_remove("ROUTER_CTL_STATE_DIR");
        c
    }

    /// Echoes `$ router-ctl ARGS`, runs it and prints what it printed.
    fn ctl(&self, args: &[&str]) -> Result<()> {
        check_interrupted()?;
        println!("\n$ router-ctl {}", args.join(" "));
        let out = output(&mut self.ctl_cmd(args))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        ctl_status(args, &out)
    }

    /// `ctl` whose failure is recorded and shown, and the demo goes on (read-only commands).
    fn ctl_soft(&mut self, args: &[&str]) -> Result<()> {
        if let Err(e) = self.ctl(args) {
            check_interrupted()?;
            println!("  UNEXPECTED: {e:#}");
            self.failures.push(format!("{e:#}"));
        }
        Ok(())
    }

    /// Echoes `$ router-ctl ARGS`, runs it with `-f json` and prints a one-line summary of the
    /// object it returned (creations would otherwise fill the screen).
    fn ctl_create(&self, args: &[&str]) -> Result<Value> {
        check_interrupted()?;
        println!("$ router-ctl {}", args.join(" "));
        let v = self.ctl_json(args)?;
        let ips = v
            .get("fixed_ips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.get("ip_address").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .map(|s| format!(", IP {s}"))
            .unwrap_or_default();
        let cidr = v
            .get("cidr")
            .and_then(Value::as_str)
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        println!("  -> id {}{cidr}{ips}", str_of(&v, "id"));
        Ok(v)
    }

    /// Runs `router-ctl -f json ARGS` silently and parses the answer.
    fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let out = output(&mut self.ctl_cmd(&[&["-f", "json"], args].concat()))?;
        ctl_status(args, &out)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "router-ctl {} printed no JSON: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates the namespaces, mounts the bpffs and starts the daemon; waits for its API.
    fn start(&mut self) -> Result<()> {
        println!("\n== Sandbox: daemon in namespace {HOST_NS}, API on {LISTEN} inside it ==");
        fs::create_dir_all(self.state_dir())?;
        fs::create_dir_all(self.bpffs())?;
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(self.bpffs()))
        .context("mounting a private bpffs for the demo")?;
        Netns::try_named(HOST_NS)?.keep();
        let log = File::create(self.dir.join("daemon.log"))?;
        let mut daemon = netns_cmd(HOST_NS, &self.router_ctl);
        daemon
            .arg("daemon")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(self.bpffs())
            .args(["--listen", LISTEN])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal must not stop it before the
            // teardown has used its API.
            .process_group(0);
        let child = daemon.spawn().context("starting router-ctl daemon")?;
        let pid = child.id();
        fs::write(self.dir.join("daemon.pid"), pid.to_string())?;
        println!(
            "router-ctl daemon --state-dir {} --bpffs {} --listen {LISTEN}   (pid {pid}, log {})",
            self.state_dir().display(),
            self.bpffs().display(),
            self.dir.join("daemon.log").display()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted()?;
            if !alive(pid) {
                bail!(
                    "the daemon exited during start-up; its log:\n{}",
                    fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            if self.ctl_json(&["network", "list"]).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon's API did not answer within 60 s; its log:\n{}",
                    fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(300));
        }
        // The internet's HTTP server, in its own namespace and process group.
        Netns::try_named(INET_NS)?.keep();
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let log = File::create(self.dir.join("http.log"))?;
        let server = netns_cmd(INET_NS, exe)
            .args(["demo", "--serve-http", "0.0.0.0:80"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the demo HTTP server")?;
        fs::write(self.dir.join("http.pid"), server.id().to_string())?;
        Ok(())
    }

    /// Joins the internet namespace to the external network's bridge (outside Neutron, as an
    /// upstream router would be) with 203.0.113.1/24.
    fn plug_internet(&self, ext_net_id: &str) -> Result<()> {
        let bridge = format!("brq{}", &ext_net_id[..ext_net_id.len().min(11)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while output(Command::new("ip").args(["-n", HOST_NS, "link", "show", &bridge]))?
            .status
            .success()
            .eq(&false)
        {
            if Instant::now() > deadline {
                bail!("the daemon did not create bridge {bridge} for the external network");
            }
            thread::sleep(Duration::from_millis(200));
        }
        try_plug_into_bridge(
            HOST_NS,
            INET_NS,
            &bridge,
            INET_VETH,
            &format!("{INTERNET_IP}/24"),
        )?;
        println!(
            "(namespace {INET_NS} plugged into {bridge} with {INTERNET_IP}/24, serving HTTP on port 80)"
        );
        Ok(())
    }

    /// The demo proper: topology through the CLI, then traffic.
    fn script(&mut self, keep: bool) -> Result<()> {
        println!(
            "(each `router-ctl` below runs in {HOST_NS} with the daemon's admin token: nsenter --net=/run/netns/{HOST_NS} router-ctl --state-dir {} ...; creations are summarised)",
            self.state_dir().display()
        );
        println!("\n== An external network with the \"internet\" behind it ==");
        let ext = self.ctl_create(&["network", "create", "public", "--external"])?;
        self.ctl_create(&[
            "subnet",
            "create",
            "public-subnet",
            "--network",
            "public",
            "--cidr",
            EXT_CIDR,
            "--gateway",
            INTERNET_IP,
            "--allocation-pool",
            "start=203.0.113.10,end=203.0.113.99",
        ])?;
        self.plug_internet(&str_of(&ext, "id"))?;

        println!("\n== Two tenant networks, a router with both interfaces ==");
        let router = self.ctl_create(&["router", "create", ROUTER])?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("routers"))?;
        writeln!(f, "{}", str_of(&router, "id"))?;
        for (net, cidr) in TENANTS {
            let sub = format!("{net}-subnet");
            self.ctl_create(&["network", "create", net])?;
            self.ctl_create(&["subnet", "create", &sub, "--network", net, "--cidr", cidr])?;
            println!("$ router-ctl router interface add {ROUTER} {sub}");
            let i = self.ctl_json(&["router", "interface", "add", ROUTER, &sub])?;
            println!("  -> router port {}", str_of(&i, "port_id"));
        }

        println!(
            "\n== A VM on each tenant network (namespaces plugged by `port create --netns`) =="
        );
        let mut vms = Vec::new();
        for ((net, _), ns) in TENANTS.iter().zip(VM_NS) {
            let port = self.ctl_create(&[
                "port",
                "create",
                "--network",
                net,
                "--netns",
                ns,
                "--name",
                &ns.replace("rcdemo-", ""),
            ])?;
            vms.push((ns, port_ip(&port)));
        }

        println!("\n== The gateway: exactly `neutron router-gateway-set` ==");
        self.ctl(&["gateway", "set", ROUTER, "public"])?;
        let r = self.ctl_json(&["router", "show", ROUTER])?;
        let gw_ip = r
            .pointer("/external_gateway_info/external_fixed_ips/0/ip_address")
            .and_then(Value::as_str)
            .context("the router shows no external_fixed_ips after gateway set")?
            .to_string();
        self.ctl(&["router", "list"])?;
        let qrouter = format!("qrouter-{}", str_of(&r, "id"));
        println!("\n[host]$ ip -n {qrouter} -4 -br addr   # the router, as the L3 agent builds it");
        let out = output(Command::new("ip").args(["-n", &qrouter, "-4", "-br", "addr"]))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));

        println!("\n== Traffic from the VMs to the internet ({INTERNET_IP}) ==");
        for (ns, vm_ip) in &vms {
            self.ping(ns, vm_ip, true)?;
            self.http(ns, vm_ip, Some((&gw_ip, "the router's gateway IP: SNAT")))?;
        }

        println!("\n== The router's NAT sessions and counters ==");
        self.ctl_soft(&["sessions", ROUTER])?;
        self.ctl_soft(&["stats", ROUTER])?;

        let (vm_ns, vm_ip) = vms[0].clone();
        let vm = vm_ns.replace("rcdemo-", "");
        println!("\n== A floating IP for {vm}: 1:1 NAT ahead of the gateway's SNAT ==");
        println!("$ router-ctl floatingip create public --port {vm}");
        let fip = self.ctl_json(&["floatingip", "create", "public", "--port", &vm])?;
        let fip_ip = str_of(&fip, "floating_ip_address");
        println!("  -> {fip_ip}, associated with {vm_ip}");
        self.http(vm_ns, &vm_ip, Some((&fip_ip, "its floating IP")))?;
        self.ctl_soft(&["sessions", ROUTER])?;
        self.ctl(&["floatingip", "delete", &fip_ip])?;

        println!("\n== Clearing the gateway cuts access ==");
        self.ctl(&["gateway", "clear", ROUTER])?;
        for (ns, vm_ip) in &vms {
            self.ping(ns, vm_ip, false)?;
        }
        self.http(vms[0].0, &vms[0].1, None)?;
        self.ctl_soft(&["sessions", ROUTER])?;

        if keep {
            println!(
                "\n== --keep: setting the gateway again so the sandbox is ready to explore =="
            );
            self.ctl(&["gateway", "set", ROUTER, "public"])?;
        }
        Ok(())
    }

    /// Pings the internet from a VM; `expect_ok` says which outcome the demo expects.
    pub(crate) fn ping(&mut self, ns: &str, vm_ip: &str, expect_ok: bool) -> Result<()> {
        check_interrupted()?;
        let vm = ns.replace("rcdemo-", "");
        println!("\n[{vm} {vm_ip}]$ ping -q -c 3 -i 0.3 -W 1 {INTERNET_IP}");
        let out = output(netns_cmd(ns, "ping").args([
            "-q",
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "1",
            INTERNET_IP,
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.contains("packets transmitted")) {
            println!("  {line}");
        }
        match (out.status.success(), expect_ok) {
            (true, true) => println!("  ok: the internet answers"),
            (false, false) => println!("  ok: no answer, as expected without a gateway"),
            (true, false) => self.failures.push(format!(
                "{vm}: ping {INTERNET_IP} still answered after gateway clear"
            )),
            (false, true) => {
                println!("  UNEXPECTED: no answer");
                self.failures.push(format!(
                    "{vm}: ping {INTERNET_IP} failed with the gateway set"
                ));
            }
        }
        check_interrupted()
    }

    /// `GET http://203.0.113.1/` from a VM; with `expect_src` (address, what it is), the server
    /// must have seen that address (the gateway IP, a floating IP); without, the request must
    /// fail.
    pub(crate) fn http(
        &mut self,
        ns: &str,
        vm_ip: &str,
        expect_src: Option<(&str, &str)>,
    ) -> Result<()> {
        check_interrupted()?;
        let vm = ns.replace("rcdemo-", "");
        println!("\n[{vm} {vm_ip}]$ http GET http://{INTERNET_IP}/");
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let out =
            output(netns_cmd(ns, exe).args(["demo", "--http-get", &format!("{INTERNET_IP}:80")]))?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.success(), expect_src) {
            (true, Some((want, what))) => {
                println!("  the server saw the request come from {body}");
                let seen_ip = body.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(&body);
                if seen_ip == want {
                    println!("  ok: that is {what}, not {vm_ip}");
                } else {
                    println!("  UNEXPECTED: expected {want}");
                    self.failures
                        .push(format!("{vm}: the server saw {body}, expected {want}"));
                }
            }
            (false, None) => println!(
                "  ok: no connection ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            (true, None) => {
                println!("  UNEXPECTED: the server answered ({body})");
                self.failures
                    .push(format!("{vm}: HTTP still worked after gateway clear"));
            }
            (false, Some(_)) => {
                println!(
                    "  UNEXPECTED: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                self.failures
                    .push(format!("{vm}: HTTP failed with the gateway set"));
            }
        }
        check_interrupted()
    }

    fn print_keep_help(&self) {
        let token = fs::read_to_string(self.state_dir().join("admin-token"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let ctl = self.router_ctl.display();
        println!(
            "\n== The sandbox is still running (--keep) ==

Explore (as root):
  nsenter --net=/run/netns/{HOST_NS} bash      # the daemon's host namespace: bridges brq*, taps
    export ROUTER_CTL_URL=http://{LISTEN} ROUTER_CTL_TOKEN={token}
    {ctl} router show {ROUTER}
    {ctl} sessions {ROUTER}
    ip -br link; ls /run/netns
  nsenter --net=/run/netns/{vm1} ping {INTERNET_IP}      # a VM
  nsenter --net=/run/netns/{vm2} bash
  nsenter --net=/run/netns/{INET_NS} bash              # the internet (HTTP server on :80)
  daemon log: {log}

Tear down:
  cargo xtask demo --teardown",
            vm1 = VM_NS[0],
            vm2 = VM_NS[1],
            log = self.dir.join("daemon.log").display(),
        );
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn port_ip(port: &Value) -> String {
    port.pointer("/fixed_ips/0/ip_address")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// Whether `pid` still runs (reaping it if it is our child and has exited).
fn alive(pid: u32) -> bool {
    let pid = pid as libc::pid_t;
    // SAFETY: plain syscalls on a pid; a null status pointer is allowed.
    unsafe {
        match libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) {
            0 => true,
            r if r == pid => false,
            _ => libc::kill(pid, 0) == 0,
        }
    }
}

/// Reads a pid file, only trusting it when /proc says the process is what we started.
fn our_pid(dir: &Path, file: &str, must_contain: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(must_contain)
        .then_some(pid)
}

fn stop(pid: u32, what: &str) {
    // SAFETY: signalling a pid we verified through /proc.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            eprintln!("{what} (pid {pid}) ignored SIGTERM; killing it");
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            thread::sleep(Duration::from_millis(200));
            let _ = alive(pid);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Best-effort removal of everything the demo made, in an order that lets the daemon clean its
/// own kernel objects first: API deletions, daemon stop, namespaces, bpffs, files. Each step
/// ignores what is already gone, so it is safe to run twice or after a crash.
fn teardown(dir: &Path) {
    let ctl = target_dir().join("debug/router-ctl");
    let daemon = our_pid(dir, "daemon.pid", "daemon");
    let mut routers: Vec<String> = fs::read_to_string(dir.join("routers"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    if daemon.is_some() && ctl.is_file() {
        let demo = Demo::new(dir.to_path_buf(), ctl);
        if let Ok(list) = demo.ctl_json(&["router", "list"]) {
            for r in list.as_array().into_iter().flatten() {
                let id = str_of(r, "id");
                if !routers.contains(&id) {
                    routers.push(id);
                }
            }
        }
        api_cleanup(&demo);
    }
    if let Some(pid) = daemon {
        stop(pid, "the daemon");
    }
    // Whatever the API could not remove (or a daemon that had died left behind): the daemon's
    // own purge removes every kernel object and pin its state directory records.
    let ctl = target_dir().join("debug/router-ctl");
    if ctl.is_file() && dir.join("state").is_dir() && Path::new("/run/netns").join(HOST_NS).exists()
    {
        let purge = output(
            netns_cmd(HOST_NS, &ctl)
                .arg("daemon")
                .arg("--purge")
                .arg("--state-dir")
                .arg(dir.join("state"))
                .arg("--bpffs")
                .arg(dir.join("bpffs")),
        );
        if let Ok(out) = purge
            && !out.status.success()
        {
            eprintln!(
                "warning: router-ctl daemon --purge: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if let Some(pid) = our_pid(dir, "http.pid", "--serve-http") {
        stop(pid, "the HTTP server");
    }
    let mut namespaces: Vec<String> = VM_NS.iter().map(|s| s.to_string()).collect();
    namespaces.push(INET_NS.into());
    namespaces.extend(
        routers
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| format!("qrouter-{r}")),
    );
    namespaces.push(HOST_NS.into());
    for ns in namespaces {
        // Only the demo's own namespaces: every process left in them is killed.
        remove_netns(&ns);
    }
    let bpffs = dir.join("bpffs");
    if bpffs.exists() {
        let _ = output(Command::new("umount").arg(&bpffs));
    }
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(dir)
    {
        eprintln!("warning: removing {}: {e}", dir.display());
    }
}

/// Deletes every router, port, subnet and network through the API so the daemon removes the
/// kernel objects it made (router namespaces, bridges, taps, datapath state).
fn api_cleanup(demo: &Demo) {
    let list = |what: &str| -> Vec<Value> {
        demo.ctl_json(&[what, "list"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let quiet = |args: &[&str]| {
        let _ = output(&mut demo.ctl_cmd(args));
    };
    // Floating IPs first: they hold the routers' gateways and interfaces.
    for f in list("floatingip") {
        quiet(&["floatingip", "delete", &str_of(&f, "id")]);
    }
    let ports = list("port");
    for r in list("router") {
        let id = str_of(&r, "id");
        quiet(&["gateway", "clear", &id]);
        for p in ports.iter().filter(|p| {
            str_of(p, "device_id") == id && str_of(p, "device_owner") == "network:router_interface"
        }) {
            if let Some(subnet) = p.pointer("/fixed_ips/0/subnet_id").and_then(Value::as_str) {
                quiet(&["router", "interface", "remove", &id, subnet]);
            }
        }
        quiet(&["router", "delete", &id]);
    }
    for p in list("port") {
        quiet(&["port", "delete", &str_of(&p, "id")]);
    }
    for s in list("subnet") {
        quiet(&["subnet", "delete", &str_of(&s, "id")]);
    }
    for n in list("network") {
        quiet(&["network", "delete", &str_of(&n, "id")]);
    }
}

/// The internet's web server: answers every request with the address it came from.
fn serve_http(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        // Read the whole request head: closing with unread bytes would reset the connection.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("{peer}\n");
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        println!("request from {peer}");
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: prints the body (no curl needed in the VM namespaces).
fn http_get(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: the whole request in one segment.
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip()).as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP answer from {addr}: {resp:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr} answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}
