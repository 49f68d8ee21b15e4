//! The usual topologies of the end-to-end tests, built through a daemon's CLI as an operator
//! would: "an external network with an internet namespace behind it" and "a VM on a tenant
//! network". The addresses are the documentation ranges the README and the demo use.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    Netns,
    daemon::{Daemon, DaemonOptions, expect},
    unique,
};

/// The internet's address on the external network (also the subnet's gateway).
pub const INTERNET_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 1);
/// The port of the internet's TCP server in a [`RouterSite`].
pub const INTERNET_PORT: u16 = 8080;

/// The `id` of an API object, panicking when there is none.
#[track_caller]
pub fn id(v: &Value) -> String {
    str_at(v, "/id")
}

/// The string at JSON `pointer` of `v`, panicking when there is none.
#[track_caller]
pub fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {v}"))
        .to_string()
}

/// The external network `public` (subnet `public-v4`, 203.0.113.0/24, gateway 203.0.113.1,
/// router gateways and floating IPs from 203.0.113.20 to `.pool_end`) with an "internet"
/// namespace (`ns_prefix`) holding 203.0.113.1/24 plugged into the network's bridge.
pub struct Internet {
    pub ns: Netns,
    /// The external network's id.
    pub network_id: String,
}

impl Internet {
    pub fn new(host: &Netns, d: &Daemon, ns_prefix: &str, pool_end: u8) -> Self {
        Self::with_mtu(host, d, ns_prefix, pool_end, None)
    }

    /// `new` with the external network's `mtu` (None: the deployment's default). The CLI
    /// has no MTU option, so such a network is made through the API.
    pub fn with_mtu(
        host: &Netns,
        d: &Daemon,
        ns_prefix: &str,
        pool_end: u8,
        mtu: Option<u32>,
    ) -> Self {
        let network_id = match mtu {
            None => id(&d.cli_json(&["network", "create", "public", "--external"])),
            Some(mtu) => {
                let body =
                    json!({"network": {"name": "public", "router:external": true, "mtu": mtu}});
                str_at(&expect(d.post("/v2.0/networks", &body), 201), "/network/id")
            }
        };
        d.cli_ok(&[
            "subnet",
            "create",
            "public-v4",
            "--network",
            "public",
            "--cidr",
            "203.0.113.0/24",
            "--gateway",
            "203.0.113.1",
            "--allocation-pool",
            &format!("start=203.0.113.20,end=203.0.113.{pool_end}"),
        ]);
        let ns = Netns::new(ns_prefix);
        crate::plug_into_bridge(host, &ns, &bridge(&network_id), "203.0.113.1/24");
        Self { ns, network_id }
    }
}

/// The bridge of network `id` in the daemon's namespace.
fn bridge(id: &str) -> String {
    router_ctl::model::spec::names::bridge(id)
}

/// A tenant network `name` with subnet `<name>-v4` on `cidr`; returns the subnet's name.
pub fn tenant_network(d: &Daemon, name: &str, cidr: &str) -> String {
    d.cli_ok(&["network", "create", name]);
    let subnet = format!("{name}-v4");
    d.cli_ok(&[
        "subnet",
        "create",
        &subnet,
        "--network",
        name,
        "--cidr",
        cidr,
    ]);
    subnet
}

/// A VM: a namespace (`ns_prefix`) plugged into network `net` by `router-ctl port create
/// --netns` with `extra` arguments; returns it with the port and the port's address.
pub fn vm(d: &Daemon, net: &str, ns_prefix: &str, extra: &[&str]) -> (Netns, Value, String) {
    // Made by the CLI.
    let vm = Netns::adopt(&unique(ns_prefix));
    let port = d.cli_json(
        &[
            &["port", "create", "--network", net, "--netns", &vm.name][..],
            extra,
        ]
        .concat(),
    );
    let ip = str_at(&port, "/fixed_ips/0/ip_address");
    (vm, port, ip)
}

/// `gateway set <router> public`; returns the router and its gateway address.
pub fn set_gateway(d: &Daemon, router: &str) -> (Value, String) {
    let r = d.cli_json(&["gateway", "set", router, "public"]);
    let ip = str_at(&r, "/external_gateway_info/external_fixed_ips/0/ip_address");
    (r, ip)
}

/// The demo's topology, made through the CLI of a daemon in a throwaway host namespace: the
/// external network with the internet behind it, a TCP server there on
/// [`INTERNET_IP`]:[`INTERNET_PORT`] (non-blocking), tenant network `tenant` with router
/// `r1`'s interface on it, and a VM on it plugged by `port create --netns`. No gateway yet:
/// the test sets it.
pub struct RouterSite {
    // Field order is drop order: namespaces first, then the daemon (whose drop purges), the
    // host namespace last.
    pub vm: Netns,
    /// The VM's port as the CLI made it, and its address.
    pub vm_port: Value,
    pub vm_ip: String,
    pub listener: TcpListener,
    /// Router `r1` as the CLI made it.
    pub router: Value,
    pub inet: Internet,
    pub d: Daemon,
    pub host: Netns,
}

impl RouterSite {
    /// The site over a daemon started with `opts` in `host`, the tenant network on `cidr`;
    /// the other namespaces' names start with `ns_prefix`.
    pub fn start(host: Netns, opts: DaemonOptions, ns_prefix: &str, cidr: &str) -> Self {
        let d = Daemon::start_with(&host, opts);
        let inet = Internet::new(&host, &d, &format!("{ns_prefix}i"), 40);
        let listener = inet.ns.enter(|| {
            TcpListener::bind((INTERNET_IP, INTERNET_PORT)).expect("bind the internet's server")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        tenant_network(&d, "tenant", cidr);
        let router = d.cli_json(&["router", "create", "r1"]);
        let iface = d.cli_json(&["router", "interface", "add", "r1", "tenant-v4"]);
        assert_eq!(iface["id"], router["id"], "{iface}");
        let (vm, vm_port, vm_ip) = vm(&d, "tenant", &format!("{ns_prefix}v"), &["--name", "vm"]);
        Self {
            vm,
            vm_port,
            vm_ip,
            listener,
            router,
            inet,
            d,
            host,
        }
    }

    /// Router `r1`'s id.
    pub fn router_id(&self) -> String {
        id(&self.router)
    }

    /// A TCP connection from the VM to the internet's server, within `limit`.
    pub fn connect(&self, limit: Duration) -> std::io::Result<TcpStream> {
        let server = SocketAddr::from((INTERNET_IP, INTERNET_PORT));
        self.vm.enter(|| TcpStream::connect_timeout(&server, limit))
    }

    /// The next connection the internet's server accepted, with its source address (none
    /// pending: None).
    pub fn accepted(&self) -> Option<(TcpStream, SocketAddr)> {
        match self.listener.accept() {
            Ok(c) => Some(c),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}
