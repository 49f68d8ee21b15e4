//! The measured path, client ns (10.1.0.0/24) → router → server ns (203.0.113.0/24), in each
//! configuration. (a)–(c) build the router namespace by hand with stock kernel NAT; (d) and (e)
//! come from a daemon each (see `daemon.rs`) and reuse the same `Topology` shape.

use std::{any::Any, net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::ns::{ChildGuard, Netns, sh};

/// The configurations compared, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// (a) plain forwarding, no NAT: the upper bound.
    Plain,
    /// (b) iptables SNAT with the Neutron L3 agent's rules.
    Iptables,
    /// (c) nftables masquerade with a flowtable (`flow add @ft`).
    Nftables,
    /// (d) this project's eBPF SNAT, configured through the daemon's API.
    Ebpf,
    /// (e) (d) with the datapath's fast path on (`fast_fwd`, the daemon's default), through a
    /// daemon of its own.
    Fast,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Plain,
        Kind::Iptables,
        Kind::Nftables,
        Kind::Ebpf,
        Kind::Fast,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "(a) plain forwarding",
            Kind::Iptables => "(b) iptables SNAT (Neutron rules)",
            Kind::Nftables => "(c) nftables masquerade (+ flowtable if supported)",
            Kind::Ebpf => "(d) eBPF SNAT via daemon API",
            Kind::Fast => "(e) eBPF fast path",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
            Kind::Ebpf => "ebpf",
            Kind::Fast => "fast",
        }
    }
}

/// Client subnet and addresses (the client's own and the router's inside gateway).
pub const CLIENT_CIDR: &str = "10.1.0.0/24";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// Client-side device name in the client namespace.
pub const CLIENT_DEV: &str = "eth0";
/// Server-side device name in the server namespace (its rx counter measures delivery).
pub const SERVER_DEV: &str = "eth0";
/// Gateway device of the hand-built router, named like Neutron's.
const QG: &str = "qg-bench";
const QR: &str = "qr-bench";
/// TCP port of the iperf3 server and of the connect-request-close server.
pub const IPERF_PORT: u16 = 5201;
pub const CRR_PORT: u16 = 8080;

/// One ready path: traffic goes from `client` to `server_ip` in `server`.
pub struct Topology {
    pub kind: Kind,
    pub client: Netns,
    pub server: Netns,
    pub server_ip: Ipv4Addr,
    /// Address the server sees as the source after NAT (None for plain forwarding).
    pub nat_ip: Option<Ipv4Addr>,
    /// iperf3 server (killed first on drop).
    pub iperf: Option<ChildGuard>,
    /// The bpffs directory whose pinned maps this configuration's programs use (`--profile`).
    pub prog_pins: Option<std::path::PathBuf>,
    /// Something the report should say about how this configuration was built.
    pub note: Option<String>,
    /// Whatever else must live as long as the path (router namespace, daemon...).
    pub _keep: Vec<Box<dyn Any>>,
}

impl Topology {
    /// Starts the iperf3 server in the server namespace and waits until it listens.
    pub fn start_iperf(&mut self) -> Result<()> {
        let port = IPERF_PORT.to_string();
        self.iperf = Some(self.server.spawn("iperf3", &["-s", "-p", &port])?);
        for _ in 0..50 {
            let ss = Command::new("nsenter")
                .arg(format!("--net={}", self.server.path()))
                .args(["--", "ss", "-Htln", &format!("sport = :{port}")])
                .output()
                .context("ss")?;
            if !ss.stdout.is_empty() {
                return Ok(());
            }
            super::ns::sleep(Duration::from_millis(50))?;
        }
        bail!("iperf3 server did not start in {}", self.server.name)
    }

    /// Checks that the path carries traffic (ping client → server), with a clear error.
    pub fn check(&self) -> Result<()> {
        let ip = self.server_ip.to_string();
        self.client
            .run_for(
                Duration::from_secs(10),
                "ping",
                &["-c", "2", "-i", "0.2", "-W", "2", &ip],
            )
            .with_context(|| format!("{}: no connectivity to {ip}", self.kind.label()))?;
        Ok(())
    }
}

/// The rules the Neutron L3 agent installs in `qrouter-` for a router gateway with SNAT
/// (chain layout of `neutron/agent/l3/router_info.py`, restricted to one internal subnet).
fn neutron_iptables_rules() -> String {
    format!(
        "*nat
:neutron-l3-agent-POSTROUTING - [0:0]
:neutron-l3-agent-snat - [0:0]
:neutron-postrouting-bottom - [0:0]
-A POSTROUTING -j neutron-l3-agent-POSTROUTING
-A POSTROUTING -j neutron-postrouting-bottom
-A neutron-l3-agent-POSTROUTING ! -o {QG} -m conntrack ! --ctstate DNAT -j ACCEPT
-A neutron-postrouting-bottom -m comment --comment \"Perform source NAT on outgoing traffic.\" -j neutron-l3-agent-snat
-A neutron-l3-agent-snat -o {QG} -s {CLIENT_CIDR} -j SNAT --to-source {gw}
COMMIT
",
        gw = ROUTER_EXT_IP
    )
}

/// nftables masquerade with a software flowtable: established flows skip the forward path.
fn nft_rules(flowtable: bool) -> String {
    let ft = if flowtable {
        format!(
            "  flowtable ft {{ hook ingress priority 0; devices = {{ {QR}, {QG} }}; }}
  chain forward {{ type filter hook forward priority 0; policy accept;
    ip protocol {{ tcp, udp }} flow add @ft
  }}
"
        )
    } else {
        String::new()
    };
    format!(
        "table ip bench {{
{ft}  chain postrouting {{ type nat hook postrouting priority 100; policy accept;
    oifname \"{QG}\" ip saddr {CLIENT_CIDR} masquerade
  }}
}}
"
    )
}

const ROUTER_INT_IP: &str = "10.1.0.1";
const ROUTER_EXT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// A fresh client namespace (addresses are added by the caller).
pub fn client_ns(tag: &str) -> Result<Netns> {
    super::ns::new(&format!("c{tag}"))
}

/// Builds configuration (a), (b) or (c) in fresh namespaces. The wiring mirrors what the
/// daemon builds for (d) — client and server each behind a bridge in a "host" namespace, the
/// router namespace plugged into both bridges by veth — so every configuration crosses the same
/// number of devices and only the NAT differs.
pub fn build_kernel(kind: Kind, tag: &str) -> Result<Topology> {
    let client = client_ns(tag)?;
    let host = super::ns::new(&format!("h{tag}"))?;
    let router = super::ns::new(&format!("r{tag}"))?;
    let server = super::ns::new(&format!("s{tag}"))?;
    for br in ["brint", "brext"] {
        host.try_ip(&["link", "add", br, "type", "bridge"])?;
        host.try_ip(&["link", "set", br, "up"])?;
    }
    super::ns::veth(&client, CLIENT_DEV, &host, "tapc")?;
    super::ns::veth(&host, "tapr", &router, QR)?;
    super::ns::veth(&router, QG, &host, "tapg")?;
    super::ns::veth(&host, "taps", &server, SERVER_DEV)?;
    for (dev, br) in [
        ("tapc", "brint"),
        ("tapr", "brint"),
        ("tapg", "brext"),
        ("taps", "brext"),
    ] {
        host.try_ip(&["link", "set", dev, "master", br])?;
    }
    client.try_ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", CLIENT_DEV])?;
    client.try_ip(&["route", "add", "default", "via", ROUTER_INT_IP])?;
    router.try_ip(&["addr", "add", &format!("{ROUTER_INT_IP}/24"), "dev", QR])?;
    router.try_ip(&["addr", "add", &format!("{ROUTER_EXT_IP}/24"), "dev", QG])?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    server.try_ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", SERVER_DEV])?;
    let mut note = None;
    let nat_ip = match kind {
        Kind::Plain => {
            // Without NAT the server needs a route back to the client subnet.
            server.try_ip(&[
                "route",
                "add",
                CLIENT_CIDR,
                "via",
                &ROUTER_EXT_IP.to_string(),
            ])?;
            None
        }
        Kind::Iptables => {
            router.run_with_input("iptables-restore", &[], &neutron_iptables_rules())?;
            Some(ROUTER_EXT_IP)
        }
        Kind::Nftables => {
            if let Err(e) = router.run_with_input("nft", &["-f", "-"], &nft_rules(true)) {
                // Kernels built without CONFIG_NF_FLOW_TABLE reject the flowtable: measure
                // plain masquerade and say so rather than dropping the baseline.
                let msg = format!("{e:#}");
                let first = msg
                    .find("Error:")
                    .map(|i| msg[i..].lines().next().unwrap_or("").trim().to_string())
                    .unwrap_or_else(|| msg.lines().next().unwrap_or("").to_string());
                router.run_with_input("nft", &["-f", "-"], &nft_rules(false))?;
                note = Some(format!(
                    "(c) ran WITHOUT its flowtable: this kernel rejects the flowtable (`{first}`; CONFIG_NF_FLOW_TABLE is probably not set), so (c) is nftables masquerade with conntrack only."
                ));
            }
            Some(ROUTER_EXT_IP)
        }
        Kind::Ebpf | Kind::Fast => bail!("{} is built through the daemon", kind.label()),
    };
    let mut topo = Topology {
        kind,
        client,
        server,
        server_ip: SERVER_IP,
        nat_ip,
        iperf: None,
        prog_pins: None,
        note,
        _keep: vec![Box::new(router), Box::new(host)],
    };
    topo.check()?;
    let seen = super::traffic::observed_source(&topo)?;
    let expect = topo.nat_ip.unwrap_or(CLIENT_IP);
    if seen != expect {
        bail!(
            "{}: the server sees the client as {seen}, expected {expect}",
            kind.label()
        );
    }
    topo.start_iperf()?;
    Ok(topo)
}

/// The iptables flavour in use (`iptables v1.8.x (nf_tables)` or `(legacy)`), for the report.
pub fn iptables_version() -> String {
    sh(Command::new("iptables").arg("-V"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
