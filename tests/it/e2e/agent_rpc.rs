//! `router-ctl agent` against a real neutron-server 29 and RabbitMQ (the kit's `Stack`): it
//! registers as an L3 agent, builds the router Neutron schedules to it exactly as the
//! `sync_routers` dict says (qrouter- namespace, qr-/qg- ports with their addresses, the
//! VXLAN tenant network's `vxlan-<vni>` in its bridge), reports its floating IP ACTIVE, and
//! tears everything down when the router is deleted.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Bpffs, TempDir,
    daemon::router_ctl_bin,
    netns::{
        ChildGuard, Netns, ip_json, netns_cmd, netns_exists, remove_netns, try_ip_json, unique,
    },
    neutron::{Stack, relay::Relay},
};

/// The agent in its host namespace, killed on drop; the router namespaces it made for the
/// routers named in `routers` are removed too (after a failure Neutron never told it to).
struct Agent {
    child: Option<ChildGuard>,
    ns: String,
    cfg: std::path::PathBuf,
    log: std::path::PathBuf,
    routers: Vec<String>,
    _bpffs: Bpffs,
    _dir: TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.child.take());
        if std::thread::panicking() {
            // A failed step that panicked elsewhere than in `wait` still shows what the agent did.
            eprintln!("agent log:\n{}", self.log());
        }
        for r in &self.routers {
            remove_netns(&format!("qrouter-{r}"));
        }
    }
}

impl Agent {
    fn start(host_ns: &Netns, host: &str, extra: &str) -> Self {
        let dir = TempDir::new("agent");
        let bpffs = Bpffs::new();
        let cfg = dir.path.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = {:?}\nbpffs = {:?}\n[neutron]\ntransport_url = \"rabbit://guest:guest@127.0.0.1:5672/\"\nhost = \"{host}\"\nreport_interval = 5\nresync_interval = 20\nrpc_timeout = 30\n[metrics]\nlisten = \"\"\n{extra}",
                dir.path.join("state"),
                bpffs.path()
            ),
        )
        .unwrap();
        let mut a = Self {
            child: None,
            ns: host_ns.name.clone(),
            cfg,
            log: dir.path.join("agent.log"),
            routers: Vec::new(),
            _bpffs: bpffs,
            _dir: dir,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = netns_cmd(&self.ns, router_ctl_bin())
            .args(["agent", "--config"])
            .arg(&self.cfg)
            .env("RUST_LOG", "info,router_ctl=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting router-ctl agent");
        self.child = Some(ChildGuard(child));
    }

    /// kill -9 (ChildGuard kills with SIGKILL), then the same agent again.
    fn kill9_and_restart(&mut self) {
        drop(self.child.take());
        self.spawn();
    }

    fn state_file(&self, name: &str) -> String {
        std::fs::read_to_string(self._dir.path.join("state").join(name)).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `f` every 500 ms for up to `limit`; panics with `what` and the agent's log.
fn wait(agent: &Agent, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: not within {limit:?}\nagent log:\n{}", agent.log());
}

/// The IPv4 addresses of `dev` in `ns`; none while the device is not made yet (the agent
/// makes a router's `qr-` and `qg-` from separate notifications), so a wait polls on.
fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let Ok(shown) = try_ip_json(ns, &["addr", "show", "dev", dev]) else {
        return Vec::new();
    };
    shown
        .as_array()
        .and_then(|a| a.first().cloned())
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// Publishes, on the agent's host queue, a body that is not JSON and a cast of a method no L3
/// agent has (kombu, from neutron's venv, inside the stack's namespace).
const GARBAGE: &str = r#"
import json, sys, kombu
key = sys.argv[1]
with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as c:
    ex = kombu.Exchange("neutron", type="topic", durable=False)
    p = c.Producer()
    p.publish(b"not json at all", exchange=ex, routing_key=key, content_type="application/json", content_encoding="utf-8")
    msg = {"method": "no_such_method", "args": {}, "version": "1.0", "_unique_id": "0" * 32}
    p.publish({"oslo.version": "2.0", "oslo.message": json.dumps(msg)}, exchange=ex, routing_key=key, serializer="json")
"#;

#[test]
fn agent_builds_what_neutron_schedules_and_removes_it() {
    tests::require_root();
    let stack = Stack::for_test();
    let host_ns = Netns::new("agh");
    let host = unique("netnode");
    let mut relay = Some(Relay::start(&host_ns.name, 5672, &stack.netns, 5672).expect("relay"));
    // The node's uplink for the external network and its VXLAN endpoint.
    // (veth ends: the test kernel has no dummy devices)
    host_ns.veth_pair("eth-pub", "eth-pub-p");
    host_ns.veth_pair("eth-tun", "eth-tun-p");
    host_ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth-tun"]);
    host_ns.ip(&["link", "set", "eth-tun", "up"]);
    let mut agent = Agent::start(
        &host_ns,
        &host,
        "[physical_networks]\npublic = \"eth-pub\"\n[vxlan]\nlocal_ip = \"192.0.2.10\"\npeers = [\"192.0.2.11\"]\n",
    );

    // Registered as an alive L3 agent on its host.
    wait(
        &agent,
        "the agent registers",
        Duration::from_secs(60),
        || {
            stack
                .os(&["network", "agent", "list", "--host", &host, "-f", "json"])
                .is_ok_and(|v| {
                    v.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x["Agent Type"] == "L3 agent" && x["Alive"] == true)
                    })
                })
        },
    );

    let tag = unique("ag");
    let public = format!("{tag}-pub");
    let tenant = format!("{tag}-ten");
    stack.os_ok(&[
        "network",
        "create",
        "--external",
        "--provider-network-type",
        "flat",
        "--provider-physical-network",
        "public",
        &public,
        "-f",
        "json",
    ]);
    stack.os_ok(&[
        "subnet",
        "create",
        "--network",
        &public,
        "--subnet-range",
        "203.0.113.0/24",
        "--gateway",
        "203.0.113.1",
        "--no-dhcp",
        &format!("{public}-v4"),
        "-f",
        "json",
    ]);
    let ten = stack.os_ok(&[
        "network",
        "create",
        "--provider-network-type",
        "vxlan",
        &tenant,
        "-f",
        "json",
    ]);
    let vni = ten["provider:segmentation_id"].as_u64().expect("a VNI");
    stack.os_ok(&[
        "subnet",
        "create",
        "--network",
        &tenant,
        "--subnet-range",
        "10.10.0.0/24",
        "--no-dhcp",
        &format!("{tenant}-v4"),
        "-f",
        "json",
    ]);
    let router = stack.os_ok(&["router", "create", &tag, "-f", "json"]);
    let rid = router["id"].as_str().unwrap().to_string();
    agent.routers.push(rid.clone());
    stack.os_ok(&["router", "add", "subnet", &tag, &format!("{tenant}-v4")]);
    stack.os_ok(&["router", "set", "--external-gateway", &public, &tag]);

    // Scheduled here and built: the namespace, the interface with the subnet's gateway IP.
    let ns = format!("qrouter-{rid}");
    wait(
        &agent,
        "the router namespace",
        Duration::from_secs(90),
        || netns_exists(&ns),
    );
    let ports = stack.os_ok(&["port", "list", "--router", &tag, "-f", "json", "--long"]);
    let ports = ports.as_array().unwrap();
    let port_of = |owner: &str| -> Value {
        ports
            .iter()
            .find(|p| p["Device Owner"] == owner)
            .cloned()
            .unwrap_or_else(|| panic!("no {owner} port in {ports:?}"))
    };
    let qr = format!(
        "qr-{}",
        &port_of("network:router_interface")["ID"].as_str().unwrap()[..11]
    );
    let qg = format!(
        "qg-{}",
        &port_of("network:router_gateway")["ID"].as_str().unwrap()[..11]
    );
    wait(
        &agent,
        "qr- and qg- addressed",
        Duration::from_secs(60),
        || {
            addresses(&ns, &qr) == vec!["10.10.0.1/24".to_string()]
                && addresses(&ns, &qg)
                    .iter()
                    .any(|a| a.starts_with("203.0.113.") && a.ends_with("/24"))
        },
    );
    // The tenant network's bridge carries its VXLAN device.
    let vx = format!("vxlan-{vni}");
    let net_id = ten["id"].as_str().unwrap();
    let br = format!("brq{}", &net_id[..11]);
    let links = ip_json(&host_ns.name, &["-d", "link", "show", "dev", &vx]);
    assert_eq!(links[0]["master"], br.as_str(), "{links}");
    assert_eq!(links[0]["linkinfo"]["info_data"]["id"], vni, "{links}");

    // A floating IP goes ACTIVE once the agent realised it.
    let port = stack.os_ok(&[
        "port",
        "create",
        "--network",
        &tenant,
        "--fixed-ip",
        "ip-address=10.10.0.249",
        &format!("{tag}-vm"),
        "-f",
        "json",
    ]);
    let fip = stack.os_ok(&[
        "floating",
        "ip",
        "create",
        "--port",
        port["id"].as_str().unwrap(),
        &public,
        "-f",
        "json",
    ]);
    let fip_id = fip["id"].as_str().unwrap().to_string();
    wait(
        &agent,
        "the floating IP ACTIVE",
        Duration::from_secs(60),
        || {
            stack
                .os(&["floating", "ip", "show", &fip_id, "-f", "json"])
                .is_ok_and(|f| f["status"] == "ACTIVE")
        },
    );
    let fip_ip = fip["floating_ip_address"].as_str().unwrap();
    assert!(
        addresses(&ns, &qg)
            .iter()
            .any(|a| a.starts_with(&format!("{fip_ip}/"))),
        "the floating IP {fip_ip} sits on the gateway device: {:?}",
        addresses(&ns, &qg)
    );

    // Garbage and unknown methods on the agent's queue: logged, acknowledged, no harm.
    let sent = stack
        .venv_cmd("python")
        .args(["-c", GARBAGE, &format!("l3_agent.{host}")])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    wait(&agent, "garbage logged", Duration::from_secs(30), || {
        let l = agent.log();
        l.contains("dropped a malformed message") && l.contains("no_such_method")
    });

    // The periodic sweep (every 20 s here) runs beside the notifications: it ends, counted
    // apart from the start-up sync, and leaves the router as it was.
    let sweeps = |a: &Agent| a.log().matches("periodic sweep done").count();
    wait(&agent, "a periodic sweep", Duration::from_secs(90), || {
        sweeps(&agent) >= 1
    });
    assert_eq!(
        agent.log().matches("full sync done").count(),
        1,
        "only the start-up sync is a full sync awaited before the notifications"
    );
    assert_eq!(addresses(&ns, &qr), vec!["10.10.0.1/24".to_string()]);
    // A change no notification announces (a route written into neutron's database behind
    // neutron-server's back, as a lost `routers_updated` would leave it): the sweep revisits
    // the router, with no full sync, and serves it.
    let swept = sweeps(&agent);
    stack.sql(&format!(
        "INSERT INTO routerroutes (destination, nexthop, router_id) VALUES ('192.0.2.128/25', '10.10.0.60', '{rid}')"
    ));
    let route_of = |dst: &str| {
        String::from_utf8_lossy(
            &tests::netns::sh(
                std::process::Command::new("ip").args(["-n", &ns, "route", "show", dst]),
            )
            .stdout,
        )
        .to_string()
    };
    wait(
        &agent,
        "the unannounced route served by a sweep",
        Duration::from_secs(90),
        || route_of("192.0.2.128/25").contains("via 10.10.0.60"),
    );
    wait(
        &agent,
        "the sweep's log line",
        Duration::from_secs(10),
        || sweeps(&agent) > swept,
    );
    assert_eq!(agent.log().matches("full sync done").count(), 1);
    stack.sql(&format!(
        "DELETE FROM routerroutes WHERE router_id = '{rid}' AND destination = '192.0.2.128/25'"
    ));
    wait(
        &agent,
        "the unannounced route removal served by a sweep",
        Duration::from_secs(90),
        || !route_of("192.0.2.128/25").contains("via"),
    );

    // kill -9 and restart: same router number, the namespace kept, the router still served.
    let numbers = agent.state_file("agent-routers");
    assert!(numbers.contains(&rid), "{numbers}");
    let ns_inode = std::fs::metadata(format!("/run/netns/{ns}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    agent.kill9_and_restart();
    wait(
        &agent,
        "the restarted agent's full sync",
        Duration::from_secs(60),
        || agent.log().matches("full sync done").count() >= 2,
    );
    assert_eq!(
        agent.state_file("agent-routers"),
        numbers,
        "router numbers kept"
    );
    let after = std::fs::metadata(format!("/run/netns/{ns}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(after, ns_inode, "the namespace was kept, not rebuilt");
    assert_eq!(addresses(&ns, &qr), vec!["10.10.0.1/24".to_string()]);

    // RabbitMQ goes away (every connection cut, nothing listening): the router stays as it
    // is; when it is back, the agent reconnects and serves changes again.
    let connected = |a: &Agent| a.log().matches("connected to RabbitMQ").count();
    let before = connected(&agent);
    drop(relay.take());
    wait(&agent, "the loss noticed", Duration::from_secs(60), || {
        agent.log().contains("lost RabbitMQ")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(netns_exists(&ns) && addresses(&ns, &qr) == vec!["10.10.0.1/24".to_string()]);
    relay = Some(Relay::start(&host_ns.name, 5672, &stack.netns, 5672).expect("relay again"));
    wait(&agent, "reconnected", Duration::from_secs(60), || {
        connected(&agent) > before
    });
    stack.os_ok(&[
        "router",
        "set",
        "--route",
        "destination=198.51.100.0/24,gateway=10.10.0.50",
        &tag,
    ]);
    wait(
        &agent,
        "the new route served",
        Duration::from_secs(60),
        || {
            String::from_utf8_lossy(
                &tests::netns::sh(std::process::Command::new("ip").args([
                    "-n",
                    &ns,
                    "route",
                    "show",
                    "198.51.100.0/24",
                ]))
                .stdout,
            )
            .contains("via 10.10.0.50")
        },
    );
    stack.os_ok(&[
        "router",
        "unset",
        "--route",
        "destination=198.51.100.0/24,gateway=10.10.0.50",
        &tag,
    ]);

    // Deleted in Neutron: torn down on the node, the VXLAN device with its bridge.
    stack.os_ok(&["floating", "ip", "delete", &fip_id]);
    stack.os_ok(&["port", "delete", &format!("{tag}-vm")]);
    stack.os_ok(&["router", "unset", "--external-gateway", &tag]);
    stack.os_ok(&["router", "remove", "subnet", &tag, &format!("{tenant}-v4")]);
    stack.os_ok(&["router", "delete", &tag]);
    wait(
        &agent,
        "the router namespace removed",
        Duration::from_secs(60),
        || !netns_exists(&ns),
    );
    wait(
        &agent,
        "the VXLAN device removed",
        Duration::from_secs(30),
        || !host_ns.has_link(&vx),
    );
    for n in [&tenant, &public] {
        let _ = stack.os(&["network", "delete", n]);
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(relay);
}

/// No broker at the URL: a clear error naming it (password masked), retries, no panic.
#[test]
fn agent_without_rabbitmq_says_so_and_retries() {
    tests::require_root();
    let host_ns = Netns::new("agn");
    let agent = Agent::start(&host_ns, "lonely", "");
    wait(
        &agent,
        "two failed attempts",
        Duration::from_secs(30),
        || {
            agent
                .log()
                .matches("cannot reach RabbitMQ at rabbit://guest:***@127.0.0.1:5672/")
                .count()
                >= 2
        },
    );
    let log = agent.log();
    assert!(log.contains("retrying in"), "{log}");
    assert!(!log.contains("guest:guest"), "password in the log: {log}");
    assert!(!log.contains("panicked"), "{log}");
}
