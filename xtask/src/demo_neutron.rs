//! `cargo xtask demo --neutron`: the demo's story with a real control plane. neutron-server 29,
//! MariaDB and RabbitMQ run in a namespace of their own (the test kit's `Stack`); a network
//! node namespace runs `router-ctl agent` as Neutron's L3 agent; a compute node namespace wires
//! two VMs to a flat and a VXLAN tenant network; an "internet" namespace holds 203.0.113.1 and
//! the demo's HTTP server. Everything Neutron-shaped goes through the stock `openstack` CLI.
//! The harness reports an "Open vSwitch agent" for the network node on its behalf (ML2/OVS
//! binds router ports only where an L2 agent is alive; a real node runs its own). Everything
//! is torn down at the end, on failure and on Ctrl-C.

use std::{
    panic::AssertUnwindSafe,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use kit::{
    netns::{Netns, netns_exists},
    neutron::{
        Cloud, Stack, id_of,
        networks::{
            Provider, external_network_args, external_subnet_args, network_args, subnet_args,
        },
        node::{AgentNode, Compute, Fabric, RouterNamespaces},
    },
};

use crate::{
    TEST_COMMANDS,
    demo::{Demo, INTERNET_IP, build, check_interrupted},
    ensure_commands,
};

const HOST: &str = "netnode-1";

/// Entry point of `cargo xtask demo --neutron`.
pub fn run() -> Result<()> {
    ensure_commands(TEST_COMMANDS)?;
    let router_ctl = build()?;
    println!("\n== neutron-server 29, MariaDB and RabbitMQ in a namespace of their own ==");
    crate::ensure_neutron()?;
    let t0 = Instant::now();
    let stack = Stack::start()?;
    println!(
        "(namespace {}, everything on its loopback; files in {}; up in {:.0?})",
        stack.netns,
        stack.dir.display(),
        t0.elapsed()
    );
    check_interrupted()?;
    let fabric = Fabric::new()?;
    let inet = fabric.upstream(&format!("{INTERNET_IP}/24"))?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let _http = inet.spawn(
        &exe.display().to_string(),
        &["demo", "--serve-http", "0.0.0.0:80"],
    )?;
    let compute = Compute::new(&fabric, "10.99.0.100")?;
    println!("\n== The network node: router-ctl agent as the L3 agent ==");
    let mut node = AgentNode::start(
        &stack,
        &fabric,
        &router_ctl,
        HOST,
        "10.99.0.11",
        &["10.99.0.100"],
    )?;
    println!(
        "router-ctl agent --config {}   (in namespace {}; RabbitMQ reached at 127.0.0.1:5672 through a relay)\n{}",
        node.config().display(),
        node.ns.name,
        std::fs::read_to_string(node.config())
            .unwrap_or_default()
            .trim_end()
    );
    node.wait_registered(&stack, Duration::from_secs(60))?;
    let mut checks = Demo::new(stack.dir.clone(), router_ctl);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let cloud = Cloud::new(&stack);
        let mut qrouters = RouterNamespaces::default();
        let r = script(&cloud, &compute, &node, &mut checks, &mut qrouters);
        println!("\n== Cleaning up: Neutron objects, the agent, the stack ==");
        r
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(anyhow::anyhow!("{msg}"))
    });
    if result.is_err() {
        eprintln!("agent log:\n{}", node.log());
    }
    node.kill9();
    drop(node);
    drop(stack);
    println!("sandbox removed");
    result?;
    checks.verdict()
}

/// `$ openstack ARGS`, echoed, run with `-f json`, summarised on one line.
fn create(cloud: &Cloud, kind: &str, args: &[impl AsRef<str>]) -> Result<Value> {
    check_interrupted()?;
    let echo: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    println!("$ openstack {kind} create {}", echo.join(" "));
    let v = cloud.create(kind, args);
    let mut extra = String::new();
    if let Some(c) = v["cidr"].as_str() {
        extra += &format!(", {c}");
    }
    if let Some(t) = v["provider:network_type"].as_str() {
        extra += &format!(", {t} {}", v["provider:segmentation_id"]);
    }
    if let Some(ip) = v["fixed_ips"][0]["ip_address"].as_str() {
        extra += &format!(", IP {ip}");
    }
    println!("  -> id {}{extra}", id_of(&v));
    Ok(v)
}

/// `$ openstack ARGS`, echoed, its table printed.
fn show(cloud: &Cloud, args: &[&str]) -> Result<()> {
    check_interrupted()?;
    println!("\n$ openstack {}", args.join(" "));
    let out = cloud.stack.try_openstack(args)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "openstack {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Polls `f` every 500 ms for up to `limit`.
fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + limit;
    while !f() {
        check_interrupted()?;
        if Instant::now() > end {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The demo proper: topology through the `openstack` CLI, then traffic.
fn script(
    cloud: &Cloud,
    compute: &Compute,
    node: &AgentNode,
    checks: &mut Demo,
    qrouters: &mut RouterNamespaces,
) -> Result<()> {
    show(
        cloud,
        &[
            "network",
            "agent",
            "list",
            "-c",
            "Agent Type",
            "-c",
            "Host",
            "-c",
            "Alive",
        ],
    )?;
    let Topology {
        router_id: rid,
        gateway_ip: gw_ip,
        nets,
    } = topology(cloud, qrouters)?;
    show(
        cloud,
        &[
            "network",
            "agent",
            "list",
            "--router",
            "demo-router",
            "-c",
            "Host",
            "-c",
            "Alive",
        ],
    )?;
    let vms = wire_vms(cloud, compute, node, &nets)?;
    let qrouter = format!("qrouter-{rid}");
    wait(
        "the agent builds the router",
        Duration::from_secs(90),
        || netns_exists(&qrouter),
    )?;
    println!(
        "\n[network node]$ ip -n {qrouter} -4 -br addr   # built by router-ctl agent from sync_routers"
    );
    let out = Command::new("ip")
        .args(["-n", &qrouter, "-4", "-br", "addr"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("\n== Traffic from the VMs to the internet ({INTERNET_IP}) ==");
    for (ns, port) in &vms {
        // The first packets may race the router's last steps.
        let _ = wait("", Duration::from_secs(30), || {
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name))
                .args(["ping", "-c1", "-W1", INTERNET_IP])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        checks.ping(&ns.name, &ip_of(port), true)?;
        checks.http(
            &ns.name,
            &ip_of(port),
            Some((&gw_ip, "the router's gateway IP: SNAT")),
        )?;
    }

    floating_ip(cloud, checks, &vms)?;
    unset_gateway(cloud, checks, &rid, &vms)
}

/// What the demo's topology made and its later acts use.
struct Topology {
    router_id: String,
    gateway_ip: String,
    /// The tenant networks and their subnets, as the CLI returned them.
    nets: Vec<(Value, Value)>,
}

/// The external network with the "internet" behind it, a flat and a VXLAN tenant network, a
/// router with both and its gateway.
fn topology(cloud: &Cloud, qrouters: &mut RouterNamespaces) -> Result<Topology> {
    println!("\n== An external network with the \"internet\" behind it ==");
    let public = create(cloud, "network", &external_network_args("public"))?;
    create(
        cloud,
        "subnet",
        &external_subnet_args(
            "public-subnet",
            "public",
            INTERNET_IP,
            ("203.0.113.10", "203.0.113.99"),
        ),
    )?;
    println!("\n== Two tenant networks (flat and VXLAN), a router with both and a gateway ==");
    let mut nets = Vec::new();
    for (name, cidr, provider) in [
        ("tenant1", "10.10.0.0/24", Provider::Flat("tenant")),
        ("tenant2", "10.20.0.0/24", Provider::Vxlan(1020)),
    ] {
        let net = create(cloud, "network", &network_args(name, provider, false))?;
        let sub = create(
            cloud,
            "subnet",
            &subnet_args(&format!("{name}-subnet"), name, cidr, None, None),
        )?;
        nets.push((net, sub));
    }
    let router = create(cloud, "router", &["demo-router"])?;
    let rid = id_of(&router);
    qrouters.0.push(rid.clone());
    for (_, sub) in &nets {
        println!(
            "$ openstack router add subnet demo-router {}",
            sub["name"].as_str().unwrap_or("")
        );
        cloud.add_router_subnet(&rid, &id_of(sub));
    }
    println!("$ openstack router set --external-gateway public demo-router");
    let r = cloud.set_gateway(&rid, &id_of(&public));
    let gw_ip = r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .context("no gateway address")?
        .to_string();
    Ok(Topology {
        router_id: rid,
        gateway_ip: gw_ip,
        nets,
    })
}

/// A VM on each tenant network, wired on the compute node: its namespace and Neutron port.
fn wire_vms(
    cloud: &Cloud,
    compute: &Compute,
    node: &AgentNode,
    nets: &[(Value, Value)],
) -> Result<Vec<(Netns, Value)>> {
    println!("\n== A VM on each tenant network, wired on the compute node ==");
    let mut vms: Vec<(Netns, Value)> = Vec::new();
    for (i, (net, sub)) in nets.iter().enumerate() {
        let port = create(
            cloud,
            "port",
            &["--network", &id_of(net), &format!("vm{}", i + 1)],
        )?;
        let br = match net["provider:network_type"].as_str() {
            Some("vxlan") => compute.vxlan_bridge(
                net["provider:segmentation_id"].as_u64().unwrap_or(0),
                &[&node.tunnel_ip],
            )?,
            _ => "br-flat".to_string(),
        };
        let ip = port["fixed_ips"][0]["ip_address"]
            .as_str()
            .unwrap_or_default();
        let prefix = sub["cidr"]
            .as_str()
            .and_then(|c| c.split('/').nth(1))
            .unwrap_or("24");
        let ns = compute.vm(
            &br,
            port["mac_address"].as_str().unwrap_or_default(),
            &format!("{ip}/{prefix}"),
            sub["gateway_ip"].as_str().unwrap_or_default(),
            net["mtu"].as_u64().unwrap_or(1500),
        )?;
        vms.push((ns, port));
    }
    Ok(vms)
}

fn ip_of(p: &Value) -> String {
    p["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// A floating IP for vm1: reached from the VM through it, then deleted.
fn floating_ip(cloud: &Cloud, checks: &mut Demo, vms: &[(Netns, Value)]) -> Result<()> {
    println!("\n== A floating IP for vm1 ==");
    let fip = create(
        cloud,
        "floating ip",
        &["--port", &id_of(&vms[0].1), "public"],
    )?;
    let fip_id = id_of(&fip);
    let fip_ip = fip["floating_ip_address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait("the floating IP ACTIVE", Duration::from_secs(60), || {
        cloud.json(&["floating", "ip", "show", &fip_id])["status"] == "ACTIVE"
    })?;
    show(
        cloud,
        &[
            "floating",
            "ip",
            "show",
            &fip_id,
            "-c",
            "floating_ip_address",
            "-c",
            "fixed_ip_address",
            "-c",
            "status",
        ],
    )?;
    checks.http(
        &vms[0].0.name,
        &ip_of(&vms[0].1),
        Some((&fip_ip, "its floating IP")),
    )?;
    println!("$ openstack floating ip delete {fip_ip}");
    cloud.os(&["floating", "ip", "delete", &fip_id]);
    cloud.deleted(&fip_id);

    Ok(())
}

/// Unsetting the gateway removes `qg-` and cuts the VMs' access.
fn unset_gateway(
    cloud: &Cloud,
    checks: &mut Demo,
    rid: &str,
    vms: &[(Netns, Value)],
) -> Result<()> {
    let qrouter = format!("qrouter-{rid}");
    println!("\n== Unsetting the gateway cuts access ==");
    println!("$ openstack router unset --external-gateway demo-router");
    cloud.os(&["router", "unset", "--external-gateway", rid]);
    wait(
        "the gateway device removed",
        Duration::from_secs(60),
        || {
            !String::from_utf8_lossy(
                &Command::new("ip")
                    .args(["-n", &qrouter, "-br", "link"])
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default(),
            )
            .contains("qg-")
        },
    )?;
    for (ns, port) in vms {
        checks.ping(&ns.name, &ip_of(port), false)?;
    }
    checks.http(&vms[0].0.name, &ip_of(&vms[0].1), None)?;
    Ok(())
}
