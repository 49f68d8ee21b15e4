//! Crash safety: a seeded stream of API changes (networks, subnets, routers, interfaces,
//! gateways, floating IPs) runs while the daemon is killed with SIGKILL at random points and
//! restarted over the same state dir and bpffs. After the last restart the kernel must match
//! the database exactly (namespaces, devices, addresses, default routes, NAT filters, nothing
//! this daemon owns left over, no address handed out twice) and a new router carries traffic.
//!
//! The seed is printed at the start and in every failure; `CRASH_SEED=<n>` replays its stream
//! of choices (the kill points depend on timing as well, so a replay is close, not exact).
//!
//! Also here: eight clients changing things in parallel against one daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use router_common::programs;
use router_ctl::model::spec::names;
use serde_json::{Value, json};
use tests::{
    Netns,
    daemon::{ApiClient, Daemon, DaemonOptions},
    ip_json, netns_exists, tc_filters,
    topo::{self, INTERNET_IP, Internet},
};

/// Kills per run, and the time the whole stream may take.
const KILLS: usize = 6;
const STREAM_LIMIT: Duration = Duration::from_secs(60);
/// Upper bounds that keep the stream's objects (and the comparison) small.
const MAX_NETWORKS: usize = 8;
const MAX_ROUTERS: usize = 6;
const MAX_FIPS: usize = 6;
const MAX_VM_PORTS: usize = 8;

/// The seed: `CRASH_SEED`, else a random one.
/// The run's seed (`CRASH_SEED`, else random), announced as `what` with how to replay it; returns
/// it and the context every assertion message starts with.
fn seed(what: &str) -> (u64, String) {
    let seed = match std::env::var("CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CRASH_SEED={s}: {e}")),
        Err(_) => rand::random(),
    };
    eprintln!("{what} seed: {seed} (replay with CRASH_SEED={seed})");
    (seed, format!("seed {seed}"))
}

fn config() -> DaemonOptions {
    DaemonOptions {
        config: Some("reconcile_interval = 1\n".into()),
        admin_token: None,
    }
}

/// Sets the flag on drop, so a panicking test stops its mutation thread too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the mutation stream saw: answers of 500 or above, and every router id it learnt.
#[derive(Debug, Default)]
struct Seen {
    server_errors: Vec<String>,
    routers: BTreeSet<String>,
    steps: usize,
    answered: usize,
}

/// One client's stream of random changes. A request that gets no answer (the daemon is down or
/// was killed under it) is simply lost; the stream reads the truth back from the API before
/// every choice, so a lost answer never leaves it with a wrong picture.
struct Stream {
    client: ApiClient,
    rng: StdRng,
    ext: String,
    /// Prefix of the names and second octet of the CIDRs this stream makes.
    tag: u8,
    next_net: u8,
    seen: Seen,
}

impl Stream {
    fn new(client: ApiClient, seed: u64, ext: &str, tag: u8) -> Self {
        Self {
            client,
            rng: StdRng::seed_from_u64(seed),
            ext: ext.to_string(),
            tag,
            next_net: 0,
            seen: Seen::default(),
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let body = body.map(|b| b.to_string());
        match self.client.try_raw(method, path, body.as_deref()) {
            Ok((status, v)) => {
                self.seen.answered += 1;
                if status >= 500 {
                    self.seen
                        .server_errors
                        .push(format!("{method} {path} {body:?}: {status} {v}"));
                }
                for r in v["routers"].as_array().into_iter().flatten() {
                    if let Some(id) = r["id"].as_str() {
                        self.seen.routers.insert(id.to_string());
                    }
                }
                if let Some(id) = v["router"]["id"].as_str() {
                    self.seen.routers.insert(id.to_string());
                }
                Some((status, v))
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        }
    }

    /// `GET /v2.0/<kind>s?<query>` as a list (empty when unanswered).
    fn list(&mut self, kind: &str, query: &str) -> Vec<Value> {
        match self.call("GET", &format!("/v2.0/{kind}s?{query}"), None) {
            Some((200, v)) => v[format!("{kind}s")]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn pick(&mut self, items: &[Value]) -> Option<Value> {
        (!items.is_empty()).then(|| items[self.rng.random_range(0..items.len())].clone())
    }

    /// The objects of `kind` this client made: named with the kind's initial and the tag.
    fn own(&mut self, kind: &str) -> Vec<Value> {
        let prefix = format!("{}{}-", &kind[..1], self.tag);
        self.list(kind, "")
            .into_iter()
            .filter(|o| o["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect()
    }

    fn own_subnets(&mut self) -> Vec<Value> {
        self.own("subnet")
    }

    fn own_routers(&mut self) -> Vec<Value> {
        self.own("router")
    }

    fn create_network(&mut self) {
        let prefix = format!("n{}-", self.tag);
        let count = self
            .list("network", "")
            .iter()
            .filter(|n| n["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .count();
        if count >= MAX_NETWORKS || self.next_net == u8::MAX {
            return;
        }
        let n = self.next_net;
        self.next_net += 1;
        let Some((201, v)) = self.call(
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": format!("n{}-{n}", self.tag)}})),
        ) else {
            return;
        };
        let net = topo::id(&v["network"]);
        self.call(
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "ip_version": 4,
                "name": format!("s{}-{n}", self.tag),
                "cidr": format!("10.{}.{n}.0/24", self.tag)}})),
        );
    }

    fn create_router(&mut self) {
        if self.own_routers().len() >= MAX_ROUTERS {
            return;
        }
        let name = format!("r{}-{}", self.tag, self.rng.random::<u16>());
        self.call(
            "POST",
            "/v2.0/routers",
            Some(json!({"router": {"name": name}})),
        );
    }

    fn add_interface(&mut self) {
        let (routers, subnets) = (self.own_routers(), self.own_subnets());
        let (Some(r), Some(s)) = (self.pick(&routers), self.pick(&subnets)) else {
            return;
        };
        self.call(
            "PUT",
            &format!("/v2.0/routers/{}/add_router_interface", topo::id(&r)),
            Some(json!({"subnet_id": topo::id(&s)})),
        );
    }

    fn interfaces(&mut self, router: &str) -> Vec<Value> {
        self.list(
            "port",
            &format!("device_id={router}&device_owner=network:router_interface"),
        )
    }

    fn remove_interface(&mut self) {
        let routers = self.own_routers();
        let Some(r) = self.pick(&routers) else { return };
        let r = topo::id(&r);
        let ports = self.interfaces(&r);
        let Some(p) = self.pick(&ports) else { return };
        self.call(
            "PUT",
            &format!("/v2.0/routers/{r}/remove_router_interface"),
            Some(json!({"port_id": topo::id(&p)})),
        );
    }

    fn set_gateway(&mut self, on: bool) {
        let routers = self.own_routers();
        let Some(r) = self.pick(&routers) else { return };
        let info = if on {
            json!({"network_id": self.ext})
        } else {
            json!({})
        };
        self.call(
            "PUT",
            &format!("/v2.0/routers/{}", topo::id(&r)),
            Some(json!({"router": {"external_gateway_info": info}})),
        );
    }

    fn fips(&mut self) -> Vec<Value> {
        let tag = format!("fip{}", self.tag);
        self.list("floatingip", "")
            .into_iter()
            .filter(|f| f["description"] == tag.as_str())
            .collect()
    }

    fn create_fip(&mut self) {
        if self.fips().len() >= MAX_FIPS {
            return;
        }
        let tag = format!("fip{}", self.tag);
        self.call(
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": self.ext, "description": tag}})),
        );
    }

    /// Associates a floating IP with a VM port on one of the stream's networks (made when
    /// there are few); refused unless that network reaches the external one, which is fine.
    fn associate_fip(&mut self) {
        let fips = self.fips();
        let Some(f) = self.pick(&fips) else { return };
        let name = format!("vm{}", self.tag);
        let vms = self.list("port", &format!("name={name}"));
        let port = if vms.len() >= MAX_VM_PORTS || (self.rng.random_bool(0.5) && !vms.is_empty()) {
            self.pick(&vms).map(|p| topo::id(&p))
        } else {
            let subnets = self.own_subnets();
            let Some(s) = self.pick(&subnets) else { return };
            match self.call(
                "POST",
                "/v2.0/ports",
                Some(json!({"port": {"network_id": s["network_id"], "name": name}})),
            ) {
                Some((201, v)) => Some(topo::id(&v["port"])),
                _ => None,
            }
        };
        let Some(port) = port else { return };
        self.call(
            "PUT",
            &format!("/v2.0/floatingips/{}", topo::id(&f)),
            Some(json!({"floatingip": {"port_id": port}})),
        );
    }

    fn delete_fip(&mut self) {
        let fips = self.fips();
        let Some(f) = self.pick(&fips) else { return };
        self.call(
            "DELETE",
            &format!("/v2.0/floatingips/{}", topo::id(&f)),
            None,
        );
    }

    /// Detaches every interface, then deletes the router (a floating IP that still uses it
    /// makes that refuse, which is fine).
    fn delete_router(&mut self) {
        let routers = self.own_routers();
        let Some(r) = self.pick(&routers) else { return };
        let r = topo::id(&r);
        for p in self.interfaces(&r) {
            self.call(
                "PUT",
                &format!("/v2.0/routers/{r}/remove_router_interface"),
                Some(json!({"port_id": topo::id(&p)})),
            );
        }
        self.call("DELETE", &format!("/v2.0/routers/{r}"), None);
    }

    fn step(&mut self) {
        self.seen.steps += 1;
        match self.rng.random_range(0..12) {
            0 | 1 => self.create_network(),
            2 => self.create_router(),
            3 | 4 => self.add_interface(),
            5 => self.remove_interface(),
            6 | 7 => self.set_gateway(true),
            8 => self.set_gateway(false),
            9 => self.create_fip(),
            10 => {
                if self.rng.random_bool(0.6) {
                    self.associate_fip()
                } else {
                    self.delete_fip()
                }
            }
            _ => self.delete_router(),
        }
    }

    /// Runs steps until `stop` is set; returns what it saw.
    fn run(mut self, stop: Arc<AtomicBool>) -> Seen {
        while !stop.load(Ordering::Relaxed) {
            self.step();
        }
        self.seen
    }
}

/// A namespace's devices as name → IPv4 addresses in CIDR notation.
fn addresses(ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    ip_json(ns, &["addr", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or_default().to_string();
            let addrs = l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                .collect();
            (name, addrs)
        })
        .collect()
}

fn list(d: &Daemon, kind: &str) -> Vec<Value> {
    let (status, v) = d.get(&format!("/v2.0/{kind}s"));
    assert_eq!(status, 200, "GET {kind}s: {v}");
    v[format!("{kind}s")]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every fixed IP (and floating IP) is held once.
fn assert_unique_addresses(d: &Daemon, ctx: &str) {
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in list(d, "port") {
        // A floating IP's own port holds the floating address; counted once, below.
        if p["device_owner"] == "network:floatingip" {
            continue;
        }
        for ip in p["fixed_ips"].as_array().into_iter().flatten() {
            held.entry(topo::str_at(ip, "/ip_address"))
                .or_default()
                .push(format!("port {}", topo::id(&p)));
        }
    }
    for f in list(d, "floatingip") {
        held.entry(topo::str_at(&f, "/floating_ip_address"))
            .or_default()
            .push(format!("floating IP {}", topo::id(&f)));
    }
    let twice: Vec<_> = held.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "{ctx}: addresses held twice: {twice:?}");
}

/// What the database holds, read through the API.
struct Db {
    routers: Vec<Value>,
    ports: Vec<Value>,
    subnets: BTreeMap<String, Value>,
    networks: BTreeSet<String>,
}

impl Db {
    fn read(d: &Daemon) -> Self {
        Self {
            routers: list(d, "router"),
            ports: list(d, "port"),
            subnets: list(d, "subnet")
                .into_iter()
                .map(|s| (topo::id(&s), s))
                .collect(),
            networks: list(d, "network").iter().map(topo::id).collect(),
        }
    }

    fn router_ids(&self) -> BTreeSet<String> {
        self.routers.iter().map(topo::id).collect()
    }

    /// The taps of router `rid`'s ports.
    fn taps(&self, rid: &str) -> BTreeSet<String> {
        self.ports
            .iter()
            .filter(|p| p["device_id"] == rid)
            .filter(|p| {
                matches!(
                    p["device_owner"].as_str(),
                    Some("network:router_interface" | "network:router_gateway")
                )
            })
            .map(|p| names::tap_dev(&topo::id(p)))
            .collect()
    }
}

/// Router `r` is complete in the kernel: its namespace holds exactly its `qr-`/`qg-` devices
/// with their addresses, the default route via the internet when it has a gateway (none
/// otherwise), and its gateway tap carries the SNAT programs.
fn assert_router_complete(host: &Netns, db: &Db, r: &Value, ctx: &str) {
    let rid = topo::id(r);
    let ns = names::router_netns(&rid);
    assert!(netns_exists(&ns), "{ctx}: router {rid} has no {ns}");
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut gw_tap = None;
    for p in db.ports.iter().filter(|p| p["device_id"] == rid.as_str()) {
        let pid = topo::id(p);
        let dev = match p["device_owner"].as_str() {
            Some("network:router_interface") => names::internal_dev(&pid),
            Some("network:router_gateway") => {
                gw_tap = Some(names::tap_dev(&pid));
                names::gateway_dev(&pid)
            }
            _ => continue,
        };
        let addrs = want.entry(dev).or_default();
        for ip in p["fixed_ips"].as_array().into_iter().flatten() {
            let subnet = &db.subnets[&topo::str_at(ip, "/subnet_id")];
            let cidr = topo::str_at(subnet, "/cidr");
            let prefix = cidr.split('/').nth(1).unwrap_or("32");
            addrs.insert(format!("{}/{prefix}", topo::str_at(ip, "/ip_address")));
        }
    }
    let have = addresses(&ns);
    let have_devs: BTreeSet<&String> = have
        .keys()
        .filter(|n| names::parse_router_dev(n).is_some())
        .collect();
    let want_devs: BTreeSet<&String> = want.keys().collect();
    assert_eq!(
        have_devs, want_devs,
        "{ctx}: devices of router {rid} (kernel left, database right)"
    );
    for (dev, addrs) in &want {
        let missing: Vec<_> = addrs.difference(&have[dev]).collect();
        assert!(
            missing.is_empty(),
            "{ctx}: {dev} of router {rid} lacks {missing:?} (has {:?})",
            have[dev]
        );
    }
    let gateway = &r["external_gateway_info"];
    let routes = ip_json(&ns, &["route", "show", "default"]);
    match &gw_tap {
        Some(tap) if gateway.is_object() => {
            assert_eq!(
                routes[0]["gateway"],
                INTERNET_IP.to_string(),
                "{ctx}: default route of router {rid}: {routes}"
            );
            if gateway["enable_snat"] != false {
                for (hook, prog) in [
                    ("ingress", programs::SNAT_OUT),
                    ("egress", programs::SNAT_IN),
                ] {
                    let f = tc_filters(host, tap, hook);
                    assert!(
                        f.iter().any(|f| f.prog == prog),
                        "{ctx}: router {rid}: no {prog} on {tap} {hook}: {f:?}"
                    );
                }
            }
        }
        None => {
            assert!(
                gateway.is_null() || gateway.as_object().is_some_and(|o| o.is_empty()),
                "{ctx}: router {rid} has gateway info {gateway} but no gateway port"
            );
            assert_eq!(
                routes,
                json!([]),
                "{ctx}: router {rid} without a gateway has a default route"
            );
        }
        Some(tap) => panic!("{ctx}: router {rid} has a gateway port ({tap}) but no gateway"),
    }
}

/// The names the daemon has recorded as its own, of `kind`.
fn owned(d: &Daemon, kind: &str) -> BTreeSet<String> {
    tests::owned_names(d.state_dir(), kind)
        .into_iter()
        .collect()
}

/// The taps in the daemon's namespace.
fn host_taps(host: &Netns) -> BTreeSet<String> {
    addresses(&host.name)
        .into_keys()
        .filter(|n| names::is_tap(n))
        .collect()
}

/// The kernel of `host` (and the router namespaces) against the database, in full.
/// `ever` holds every router id the test learnt, so a namespace left behind by a router the
/// database no longer has is found by name.
fn assert_kernel_matches(host: &Netns, d: &Daemon, ever: &BTreeSet<String>, ctx: &str) {
    let db = Db::read(d);
    let db_routers = db.router_ids();
    let owner = |o: &str| db.ports.iter().filter(|p| p["device_owner"] == o).count();
    eprintln!(
        "{ctx}: comparing {} routers, {} interfaces, {} gateways, {} networks",
        db.routers.len(),
        owner("network:router_interface"),
        owner("network:router_gateway"),
        db.networks.len()
    );
    let mut want_taps = BTreeSet::new();
    for r in &db.routers {
        assert_router_complete(host, &db, r, ctx);
        want_taps.extend(db.taps(&topo::id(r)));
    }

    // Nothing of this daemon's that the database does not own.
    for rid in ever.difference(&db_routers) {
        let ns = names::router_netns(rid);
        assert!(
            !netns_exists(&ns),
            "{ctx}: {ns} left behind by deleted router"
        );
    }
    let want_ns: BTreeSet<String> = db_routers.iter().map(|r| names::router_netns(r)).collect();
    assert_eq!(
        owned(d, "netns"),
        want_ns,
        "{ctx}: namespace records (left) against the database's routers (right)"
    );
    assert_eq!(
        host_taps(host),
        want_taps,
        "{ctx}: taps (kernel left, database right)"
    );
    let bridges: BTreeSet<String> = db.networks.iter().map(|n| names::bridge(n)).collect();
    let stray: Vec<_> = addresses(&host.name)
        .into_keys()
        .filter(|n| n.starts_with("brq") && !bridges.contains(n))
        .collect();
    assert!(stray.is_empty(), "{ctx}: bridges of no network: {stray:?}");
    let stray: Vec<_> = owned(d, "link")
        .into_iter()
        .filter(|n| !bridges.contains(n) && !want_taps.contains(n))
        .collect();
    assert!(
        stray.is_empty(),
        "{ctx}: device records nothing desires: {stray:?}"
    );
}

/// A new router with a VM behind it reaches the internet namespace.
fn assert_new_router_works(d: &Daemon, ctx: &str) {
    topo::tenant_network(d, "crashnew", "10.251.0.0/24");
    d.cli_ok(&["router", "create", "crashnew"]);
    d.cli_ok(&["router", "interface", "add", "crashnew", "crashnew-v4"]);
    topo::set_gateway(d, "crashnew");
    let (vm, _, _) = topo::vm(d, "crashnew", "crv", &[]);
    let ok = (0..5).any(|_| {
        vm.try_run("ping", &["-c", "1", "-W", "1", &INTERNET_IP.to_string()])
            .status
            .success()
    });
    assert!(
        ok,
        "{ctx}: a VM behind a new router cannot reach {INTERNET_IP}\n{}",
        d.log()
    );
}

#[test]
fn kill9_during_changes_leaves_kernel_matching_database() {
    let (seed, ctx) = seed("crash test");
    let host = Netns::new("crh");
    let mut d = Daemon::start_with(&host, config());
    let inet = Internet::new(&host, &d, "cri", 200);

    let stop = Arc::new(AtomicBool::new(false));
    let stream = Stream::new(d.client(), seed, &inet.network_id, 77);
    let worker: JoinHandle<Seen> = {
        let stop = stop.clone();
        std::thread::spawn(move || stream.run(stop))
    };
    let stopper = StopOnDrop(stop);

    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let per_kill = STREAM_LIMIT / (KILLS as u32 + 1);
    for k in 0..KILLS {
        if start.elapsed() + per_kill > STREAM_LIMIT {
            break;
        }
        let ms = rng.random_range(100..per_kill.as_millis() as u64 / 2);
        std::thread::sleep(Duration::from_millis(ms));
        d.kill9();
        eprintln!("{ctx}: kill {} after {:?}", k + 1, start.elapsed());
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        d.restart();
    }
    std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
    drop(stopper);
    let seen = worker.join().expect("mutation thread");
    eprintln!(
        "{ctx}: {} steps, {} answers, {} routers seen",
        seen.steps,
        seen.answered,
        seen.routers.len()
    );
    assert!(
        seen.server_errors.is_empty(),
        "{ctx}: server errors: {:#?}\n{}",
        seen.server_errors,
        d.log()
    );

    // The kit waited for the start-up resync of the last restart; one periodic
    // pass more (every second here) covers changes made since.
    std::thread::sleep(Duration::from_millis(2500));
    assert_kernel_matches(&host, &d, &seen.routers, &ctx);
    assert_unique_addresses(&d, &ctx);
    assert_new_router_works(&d, &ctx);
    assert_kernel_matches(
        &host,
        &d,
        &seen.routers,
        &format!("{ctx}, after the new router"),
    );
    drop(inet);
}

#[test]
fn eight_clients_in_parallel() {
    let (seed, ctx) = seed("parallel clients");
    let host = Netns::new("cph");
    let d = Daemon::start_with(&host, config());
    let inet = Internet::new(&host, &d, "cpi", 250);

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<JoinHandle<Seen>> = (0..8u8)
        .map(|i| {
            let stream = Stream::new(
                d.client(),
                seed.wrapping_add(i.into()),
                &inet.network_id,
                80 + i,
            );
            let stop = stop.clone();
            std::thread::spawn(move || stream.run(stop))
        })
        .collect();
    let stopper = StopOnDrop(stop);
    std::thread::sleep(Duration::from_secs(15));
    drop(stopper);
    let mut ever = BTreeSet::new();
    let mut steps = 0;
    for w in workers {
        let seen = w.join().expect("client thread");
        assert!(
            seen.server_errors.is_empty(),
            "{ctx}: server errors: {:#?}\n{}",
            seen.server_errors,
            d.log()
        );
        steps += seen.steps;
        ever.extend(seen.routers);
    }
    eprintln!(
        "{ctx}: {steps} steps by 8 clients, {} routers seen",
        ever.len()
    );
    assert_unique_addresses(&d, &ctx);
    assert_kernel_matches(&host, &d, &ever, &ctx);
    drop(inet);
}

/// SIGTERM while the start-up resync rebuilds routers: the daemon exits cleanly and every
/// router namespace it left is complete (a router it had not reached yet is simply absent);
/// the next start builds the rest.
#[test]
fn sigterm_during_resync_leaves_no_half_made_router() {
    const ROUTERS: usize = 16;
    let host = Netns::new("csh");
    let mut d = Daemon::start_with(&host, config());
    let inet = Internet::new(&host, &d, "csi", 100);
    for i in 0..ROUTERS {
        let name = format!("st{i}");
        topo::tenant_network(&d, &name, &format!("10.252.{i}.0/24"));
        d.cli_ok(&["router", "create", &name]);
        d.cli_ok(&["router", "interface", "add", &name, &format!("{name}-v4")]);
        topo::set_gateway(&d, &name);
    }
    let db = Db::read(&d);
    let ids = db.router_ids();
    assert_eq!(ids.len(), ROUTERS);

    // Down, every router's namespace (and with it its devices and taps) deleted from outside:
    // the next start-up resync rebuilds them all, one by one.
    d.kill9();
    for id in &ids {
        tests::netns::remove_netns(&names::router_netns(id));
    }
    d.restart_unready();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids.iter().any(|id| netns_exists(&names::router_netns(id))) {
        assert!(
            Instant::now() < deadline,
            "the resync rebuilt nothing in 30 s\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = d.stop();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        d.log()
    );

    let mut rebuilt = 0;
    for r in &db.routers {
        let rid = topo::id(r);
        if netns_exists(&names::router_netns(&rid)) {
            assert_router_complete(&host, &db, r, "after SIGTERM");
            rebuilt += 1;
        } else {
            let left: Vec<_> = db
                .taps(&rid)
                .intersection(&host_taps(&host))
                .cloned()
                .collect();
            assert!(
                left.is_empty(),
                "router {rid} not rebuilt, yet its taps {left:?} exist"
            );
        }
    }
    eprintln!("{rebuilt} of {ROUTERS} routers rebuilt before the shutdown");

    d.restart();
    assert_kernel_matches(&host, &d, &ids, "after the next start");
    drop(inet);
}
