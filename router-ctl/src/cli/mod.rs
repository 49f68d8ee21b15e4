//! `router-ctl` client commands: a Neutron v2.0 API client with tables, JSON and completions.
//!
//! The CLI is a thin shell over the API: every command is one or a few HTTP requests built by
//! [`body`], names are turned into ids by [`resolve`], and results are printed by [`output`].
//! The only local work is the sandbox helper `port create --netns` ([`plug`]), which wires a
//! namespace to a network's bridge the way Nova's VIF plugging would.

pub mod body;
pub mod client;
pub mod floatingip;
pub mod output;
pub mod plug;
pub mod resolve;
pub mod top;

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::Value;

use self::{
    body::{AllocationPool, FixedIpSpec, RouteArg},
    client::{Client, Connection},
    output::{Format, Kind},
    resolve::Resource,
};

/// Connection and output options shared by every client command.
#[derive(Clone, Debug, clap::Args)]
pub struct GlobalArgs {
    /// API endpoint (default: http://127.0.0.1:9696, the daemon's default listen address).
    #[arg(long, env = "ROUTER_CTL_URL", global = true)]
    pub url: Option<String>,
    /// API token (default: the local admin token when run as root on the daemon's host).
    #[arg(long, env = "ROUTER_CTL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The local daemon's state directory, where it writes `admin-token`
    /// (default: /var/lib/router-ctl). Put it before the command.
    #[arg(long = "state-dir", env = "ROUTER_CTL_STATE_DIR", value_name = "DIR")]
    pub client_state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

/// Client commands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Networks (`/v2.0/networks`).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Subnets (`/v2.0/subnets`).
    #[command(subcommand)]
    Subnet(SubnetCmd),
    /// Routers (`/v2.0/routers`) and their interfaces.
    #[command(subcommand)]
    Router(RouterCmd),
    /// A router's external gateway (`external_gateway_info`).
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// Ports (`/v2.0/ports`), and plugging a namespace into a network as a sandbox "VM".
    #[command(subcommand)]
    Port(PortCmd),
    /// Floating IPs (`/v2.0/floatingips`) and their port forwardings.
    #[command(subcommand, name = "floatingip")]
    FloatingIp(floatingip::FloatingIpCmd),
    /// A router's NAT sessions, as the datapath holds them.
    Sessions {
        /// Router name or id.
        router: String,
    },
    /// A router's datapath counters.
    Stats {
        /// Router name or id.
        router: String,
    },
    /// A live view of the node's routers by packets per second, with sessions and drops
    /// (reads the daemon's metrics endpoint; q quits).
    Top(top::TopArgs),
    /// Prints a shell completion script (e.g. `router-ctl completion bash > /etc/bash_completion.d/router-ctl`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `router-ctl network ...`
#[derive(Clone, Debug, Subcommand)]
pub enum NetworkCmd {
    /// Creates a network (its bridge `brq<id[:11]>` appears on the daemon's host).
    Create {
        name: String,
        /// Marks it `router:external`: routers can use it as their gateway network.
        #[arg(long)]
        external: bool,
        /// `provider:physical_network`: a name the daemon's config maps to a host interface.
        #[arg(long, value_name = "NAME")]
        physical_network: Option<String>,
    },
    /// Lists networks.
    List {
        /// Only `router:external` networks.
        #[arg(long)]
        external: bool,
    },
    /// Shows a network.
    Show { network: String },
    /// Deletes networks.
    Delete {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// `router-ctl subnet ...`
#[derive(Clone, Debug, Subcommand)]
pub enum SubnetCmd {
    /// Creates an IPv4 subnet on a network.
    Create {
        name: String,
        /// Network name or id.
        #[arg(long)]
        network: String,
        #[arg(long)]
        cidr: ipnet::Ipv4Net,
        /// Gateway address (default: the first address of the CIDR, as Neutron).
        #[arg(long, conflicts_with = "no_gateway")]
        gateway: Option<Ipv4Addr>,
        /// No gateway (`gateway_ip: null`).
        #[arg(long)]
        no_gateway: bool,
        /// `start=IP,end=IP`; repeatable.
        #[arg(long = "allocation-pool", value_name = "start=IP,end=IP")]
        allocation_pools: Vec<AllocationPool>,
    },
    /// Lists subnets.
    List {
        /// Only subnets of this network (name or id).
        #[arg(long)]
        network: Option<String>,
    },
    /// Shows a subnet.
    Show { subnet: String },
    /// Deletes subnets.
    Delete {
        #[arg(required = true)]
        subnets: Vec<String>,
    },
}

/// `router-ctl router ...`
#[derive(Clone, Debug, Subcommand)]
pub enum RouterCmd {
    /// Creates a router (its namespace `qrouter-<id>` appears on the daemon's host).
    Create { name: String },
    /// Lists routers.
    List,
    /// Shows a router.
    Show { router: String },
    /// Deletes routers.
    Delete {
        #[arg(required = true)]
        routers: Vec<String>,
    },
    /// Adds or removes a router interface on a subnet.
    #[command(subcommand)]
    Interface(InterfaceCmd),
    /// Changes the router's extra routes, as `openstack router set` does: `--route` adds
    /// (`add_extraroutes`), `--no-route` clears first (with `--route`: replaces the list).
    Set {
        router: String,
        /// `destination=CIDR,gateway=IP`; repeatable.
        #[arg(long = "route", value_name = "destination=CIDR,gateway=IP")]
        routes: Vec<RouteArg>,
        /// Clears the routes.
        #[arg(long)]
        no_route: bool,
    },
}

/// `router-ctl router interface ...`
#[derive(Clone, Debug, Subcommand)]
pub enum InterfaceCmd {
    /// Attaches a subnet: the router takes its gateway IP (`add_router_interface`).
    Add { router: String, subnet: String },
    /// Detaches a subnet (`remove_router_interface`).
    Remove { router: String, subnet: String },
}

/// `router-ctl gateway ...`
#[derive(Clone, Debug, Subcommand)]
pub enum GatewayCmd {
    /// Sets the router's external gateway: `PUT /v2.0/routers/{id}` with
    /// `external_gateway_info`, exactly as `neutron router-gateway-set` does.
    Set {
        router: String,
        /// External network name or id.
        external_network: String,
        /// No SNAT for the router's internal networks (`enable_snat: false`, admin only).
        #[arg(long)]
        disable_snat: bool,
        /// `subnet=SUBNET,ip=ADDR` (either key may be omitted); repeatable (admin only).
        #[arg(long = "fixed-ip", value_name = "subnet=SUBNET,ip=ADDR")]
        fixed_ips: Vec<FixedIpSpec>,
    },
    /// Clears the router's external gateway (`external_gateway_info: {}`).
    Clear { router: String },
}

/// `router-ctl port ...`
#[derive(Clone, Debug, Subcommand)]
pub enum PortCmd {
    /// Creates a port; with `--netns`, also plugs that namespace into the network (root, on the
    /// daemon's host and in its network namespace).
    Create {
        /// Network name or id.
        #[arg(long)]
        network: String,
        /// Fixed IP to request (default: the next free address of the network's subnet).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Namespace to plug (created if missing): gets the port's MAC, IP and a default
        /// route via the subnet's gateway.
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists ports.
    List {
        /// Only ports of this network (name or id).
        #[arg(long)]
        network: Option<String>,
    },
    /// Shows a port.
    Show { port: String },
    /// Deletes ports (and the sandbox veth that `port create --netns` made for them).
    Delete {
        #[arg(required = true)]
        ports: Vec<String>,
    },
}

/// Shells `completion` supports (re-exported so callers need not depend on clap_complete).
pub use clap_complete::Shell;

/// Runs a client command (`completion` is handled by [`completion`], which needs the whole
/// command tree).
pub fn run(global: &GlobalArgs, cmd: Command) -> Result<()> {
    if let Command::Completion { .. } = cmd {
        bail!("`completion` must be dispatched with the full command tree");
    }
    if let Command::Top(args) = &cmd {
        // The API only names the routers: top works without a token.
        let api = Connection::from_args(global)
            .and_then(|c| Client::new(&c))
            .ok();
        return top::run(args, api.as_ref());
    }
    let conn = Connection::from_args(global)?;
    let client = Client::new(&conn)?;
    let fmt = global.format;
    match cmd {
        Command::Network(c) => network(&client, fmt, c),
        Command::Subnet(c) => subnet(&client, fmt, c),
        Command::Router(c) => router(&client, fmt, c),
        Command::Gateway(c) => gateway(&client, fmt, c),
        Command::Port(c) => port(&client, fmt, c),
        Command::FloatingIp(c) => floatingip::run(&client, fmt, c),
        Command::Sessions { router } => {
            let id = resolve::find(&client, Resource::Router, &router)?;
            let v = client.get(&format!("/routers/{id}/sessions"))?;
            output::print_sessions(fmt, field(&v, "sessions")?)
        }
        Command::Stats { router } => {
            let id = resolve::find(&client, Resource::Router, &router)?;
            let v = client.get(&format!("/routers/{id}/stats"))?;
            output::print_stats(fmt, field(&v, "stats")?)
        }
        Command::Completion { .. } | Command::Top(_) => Ok(()),
    }
}

/// Writes the completion script for `shell` for the command tree `cmd` to stdout.
pub fn completion(shell: Shell, mut cmd: clap::Command) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// `body[key]`, or an error naming what the daemon left out.
fn field<'a>(body: &'a Value, key: &str) -> Result<&'a Value> {
    body.get(key)
        .with_context(|| format!("the API answer has no `{key}` member: {body}"))
}

fn network(client: &Client, fmt: Format, cmd: NetworkCmd) -> Result<()> {
    let r = Resource::Network;
    match cmd {
        NetworkCmd::Create {
            name,
            external,
            physical_network,
        } => {
            let b = body::network_create(&name, external, physical_network.as_deref());
            create(client, fmt, r, Kind::Network, &b)
        }
        NetworkCmd::List { external } => {
            let q: &[(&str, &str)] = if external {
                &[("router:external", "true")]
            } else {
                &[]
            };
            let v = client.list(r, q)?;
            let v = if external {
                Value::Array(
                    v.into_iter()
                        .filter(|n| n.get("router:external") == Some(&Value::Bool(true)))
                        .collect(),
                )
            } else {
                Value::Array(v)
            };
            output::print_list(fmt, Kind::Network, &v)
        }
        NetworkCmd::Show { network } => show(client, fmt, r, Kind::Network, &network),
        NetworkCmd::Delete { networks } => delete_all(client, r, &networks),
    }
}

fn subnet(client: &Client, fmt: Format, cmd: SubnetCmd) -> Result<()> {
    let r = Resource::Subnet;
    match cmd {
        SubnetCmd::Create {
            name,
            network,
            cidr,
            gateway,
            no_gateway,
            allocation_pools,
        } => {
            let net = resolve::find(client, Resource::Network, &network)?;
            let gw = match (gateway, no_gateway) {
                (_, true) => body::Gateway::None,
                (Some(ip), false) => body::Gateway::Ip(ip),
                (None, false) => body::Gateway::Default,
            };
            let b = body::subnet_create(&name, &net, cidr, gw, &allocation_pools);
            create(client, fmt, r, Kind::Subnet, &b)
        }
        SubnetCmd::List { network } => list_on_network(client, fmt, r, Kind::Subnet, network),
        SubnetCmd::Show { subnet } => show(client, fmt, r, Kind::Subnet, &subnet),
        SubnetCmd::Delete { subnets } => delete_all(client, r, &subnets),
    }
}

fn router(client: &Client, fmt: Format, cmd: RouterCmd) -> Result<()> {
    let r = Resource::Router;
    match cmd {
        RouterCmd::Create { name } => {
            create(client, fmt, r, Kind::Router, &body::router_create(&name))
        }
        RouterCmd::List => {
            let v = client.list(r, &[])?;
            output::print_list(fmt, Kind::Router, &Value::Array(v))
        }
        RouterCmd::Show { router } => show(client, fmt, r, Kind::Router, &router),
        RouterCmd::Delete { routers } => delete_all(client, r, &routers),
        RouterCmd::Set {
            router,
            routes,
            no_route,
        } => {
            if routes.is_empty() && !no_route {
                bail!("nothing to set: give --route or --no-route");
            }
            let id = resolve::find(client, r, &router)?;
            let path = if no_route {
                r.item(&id)
            } else {
                format!("/routers/{id}/add_extraroutes")
            };
            let v = client.put(&path, &body::router_routes(&routes))?;
            output::print_one(fmt, Kind::Router, field(&v, r.singular())?)
        }
        RouterCmd::Interface(c) => {
            let (router, subnet, action) = match c {
                InterfaceCmd::Add { router, subnet } => (router, subnet, "add_router_interface"),
                InterfaceCmd::Remove { router, subnet } => {
                    (router, subnet, "remove_router_interface")
                }
            };
            let rid = resolve::find(client, r, &router)?;
            let sid = resolve::find(client, Resource::Subnet, &subnet)?;
            let v = client.put(
                &format!("/routers/{rid}/{action}"),
                &body::router_interface(&sid),
            )?;
            output::print_one(fmt, Kind::Interface, &v)
        }
    }
}

fn gateway(client: &Client, fmt: Format, cmd: GatewayCmd) -> Result<()> {
    let r = Resource::Router;
    let (router, b) = match cmd {
        GatewayCmd::Set {
            router,
            external_network,
            disable_snat,
            fixed_ips,
        } => {
            let net = resolve::find(client, Resource::Network, &external_network)?;
            let mut ips = Vec::with_capacity(fixed_ips.len());
            for spec in fixed_ips {
                let subnet = spec
                    .subnet
                    .as_deref()
                    .map(|s| resolve::find(client, Resource::Subnet, s))
                    .transpose()?;
                ips.push(FixedIpSpec {
                    subnet,
                    ip: spec.ip,
                });
            }
            (router, body::gateway_set(&net, disable_snat, &ips))
        }
        GatewayCmd::Clear { router } => (router, body::gateway_clear()),
    };
    let id = resolve::find(client, r, &router)?;
    let v = client.put(&r.item(&id), &b)?;
    output::print_one(fmt, Kind::Router, field(&v, r.singular())?)
}

fn port(client: &Client, fmt: Format, cmd: PortCmd) -> Result<()> {
    let r = Resource::Port;
    match cmd {
        PortCmd::Create {
            network,
            ip,
            netns,
            name,
        } => {
            let net = resolve::find(client, Resource::Network, &network)?;
            if netns.is_some() {
                plug::preflight(&net)?;
            }
            let b = body::port_create(&net, name.as_deref(), ip, netns.as_deref());
            let v = client.post(r.collection(), &b)?;
            let port = field(&v, r.singular())?.clone();
            if let Some(ns) = netns
                && let Err(e) = plug_port(client, &port, &ns)
            {
                // No half-made sandbox: the port goes away with the plugging that failed.
                if let Some(id) = port.get("id").and_then(Value::as_str) {
                    let _ = client.delete(&r.item(id));
                }
                return Err(e);
            }
            output::print_one(fmt, Kind::Port, &port)
        }
        PortCmd::List { network } => list_on_network(client, fmt, r, Kind::Port, network),
        PortCmd::Show { port } => show(client, fmt, r, Kind::Port, &port),
        PortCmd::Delete { ports } => {
            for p in &ports {
                let id = resolve::find(client, r, p)?;
                client.delete(&r.item(&id))?;
                plug::unplug(&id)
                    .with_context(|| format!("port {id} deleted, but not its sandbox veth"))?;
            }
            Ok(())
        }
    }
}

/// Plugs `ns` with the just-created `port`, reading its subnet for prefix and gateway.
fn plug_port(client: &Client, port: &Value, ns: &str) -> Result<()> {
    let sandbox = plug::SandboxPort::from_port(port)?;
    let subnet = client.get(&Resource::Subnet.item(&sandbox.subnet_id))?;
    let subnet = field(&subnet, Resource::Subnet.singular())?;
    let (prefix, gateway) = plug::subnet_prefix_and_gateway(subnet)?;
    plug::plug(&sandbox, ns, prefix, gateway)
}

/// Lists `r` (subnets or ports), only those on `network` (a name or id) when given.
fn list_on_network(
    client: &Client,
    fmt: Format,
    r: Resource,
    kind: Kind,
    network: Option<String>,
) -> Result<()> {
    let network = network
        .map(|n| resolve::find(client, Resource::Network, &n))
        .transpose()?;
    let network = network.as_deref();
    let q: Vec<(&str, &str)> = network.map(|n| ("network_id", n)).into_iter().collect();
    let v = client.list(r, &q)?;
    // Filter here too, so a daemon ignoring the query still gives the right answer.
    let v = Value::Array(
        v.into_iter()
            .filter(|x| {
                network.is_none_or(|n| x.get("network_id").and_then(Value::as_str) == Some(n))
            })
            .collect(),
    );
    output::print_list(fmt, kind, &v)
}

/// Creates one `r` from `body` and prints it.
fn create(client: &Client, fmt: Format, r: Resource, kind: Kind, body: &Value) -> Result<()> {
    let v = client.post(r.collection(), body)?;
    output::print_one(fmt, kind, field(&v, r.singular())?)
}

fn show(client: &Client, fmt: Format, r: Resource, kind: Kind, name_or_id: &str) -> Result<()> {
    let id = resolve::find(client, r, name_or_id)?;
    let v = client.get(&r.item(&id))?;
    output::print_one(fmt, kind, field(&v, r.singular())?)
}

/// Deletes each named resource, stopping at the first error (earlier ones stay deleted, as with
/// the OpenStack client).
fn delete_all(client: &Client, r: Resource, names: &[String]) -> Result<()> {
    for n in names {
        let id = resolve::find(client, r, n)?;
        client.delete(&r.item(&id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "router-ctl")]
    struct TestCli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        cmd: Command,
    }

    /// Parses `line`: the arguments after `router-ctl`, split at white space.
    fn try_parse(line: &str) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("router-ctl").chain(line.split_whitespace()))
    }

    fn parse(line: &str) -> TestCli {
        try_parse(line).unwrap_or_else(|e| panic!("parsing {line:?}: {e}"))
    }

    /// The error of parsing `line`, which must not parse.
    fn parse_err(line: &str) -> clap::Error {
        match try_parse(line) {
            Ok(c) => panic!("{line:?} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn gateway_set_with_options() {
        let c = parse(
            "gateway set r1 public --disable-snat \
             --fixed-ip subnet=pub-sub,ip=203.0.113.10 --fixed-ip ip_address=203.0.113.11",
        );
        let Command::Gateway(GatewayCmd::Set {
            router,
            external_network,
            disable_snat,
            fixed_ips,
        }) = c.cmd
        else {
            panic!("wrong command {:?}", c.cmd)
        };
        assert_eq!(router, "r1");
        assert_eq!(external_network, "public");
        assert!(disable_snat);
        assert_eq!(
            fixed_ips,
            vec![
                FixedIpSpec {
                    subnet: Some("pub-sub".into()),
                    ip: Some("203.0.113.10".parse().unwrap())
                },
                FixedIpSpec {
                    subnet: None,
                    ip: Some("203.0.113.11".parse().unwrap())
                },
            ]
        );
    }

    #[test]
    fn global_options_anywhere_and_json_format() {
        let c = parse("router list -f json --url http://h:1");
        assert_eq!(c.global.format, Format::Json);
        assert_eq!(c.global.url.as_deref(), Some("http://h:1"));
        let c = parse("--format json stats r");
        assert_eq!(c.global.format, Format::Json);
        let c = parse("--state-dir /tmp/x sessions r");
        assert_eq!(c.global.client_state_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.global.format, Format::Table);
    }

    #[test]
    fn router_set_routes_like_openstack() {
        let c = parse(
            "router set r1 --route destination=172.31.0.0/24,gateway=10.0.0.5 --route nexthop=10.0.0.6,destination=172.30.0.0/16",
        );
        let Command::Router(RouterCmd::Set {
            router,
            routes,
            no_route,
        }) = c.cmd
        else {
            panic!("wrong command {:?}", c.cmd)
        };
        assert_eq!(router, "r1");
        assert!(!no_route);
        assert_eq!(
            body::router_routes(&routes),
            serde_json::json!({"router": {"routes": [
                {"destination": "172.31.0.0/24", "nexthop": "10.0.0.5"},
                {"destination": "172.30.0.0/16", "nexthop": "10.0.0.6"},
            ]}})
        );
        parse_err("router set r1 --route destination=172.31.0.0/24");
        parse_err("router set r1 --route gateway=x,destination=1.0.0.0/8");
    }

    #[test]
    fn port_create_with_netns() {
        let c = parse("port create --network n1 --ip 10.0.0.5 --netns vm1");
        let Command::Port(PortCmd::Create {
            network, ip, netns, ..
        }) = c.cmd
        else {
            panic!("wrong command")
        };
        assert_eq!(network, "n1");
        assert_eq!(ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(netns.as_deref(), Some("vm1"));
    }

    #[test]
    fn subnet_create_pools_and_gateway() {
        let c = parse(
            "subnet create s1 --network n1 --cidr 10.0.0.0/24 --gateway 10.0.0.254 \
             --allocation-pool start=10.0.0.10,end=10.0.0.20",
        );
        let Command::Subnet(SubnetCmd::Create {
            gateway,
            allocation_pools,
            cidr,
            ..
        }) = c.cmd
        else {
            panic!("wrong command")
        };
        assert_eq!(cidr, "10.0.0.0/24".parse().unwrap());
        assert_eq!(gateway, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(
            allocation_pools,
            vec![AllocationPool {
                start: Ipv4Addr::new(10, 0, 0, 10),
                end: Ipv4Addr::new(10, 0, 0, 20)
            }]
        );
    }

    #[test]
    fn bad_arguments_are_rejected() {
        for args in [
            "gateway set r1",
            "gateway set r1 n --fixed-ip subnet=x,bogus=1",
            "gateway set r1 n --fixed-ip ip=300.1.1.1",
            "subnet create s --network n --cidr 10.0.0.0/33",
            "subnet create s --network n --cidr 10.0.0.0/24 --gateway 10.0.0.1 --no-gateway",
            "subnet create s --network n --cidr 10.0.0.0/24 --allocation-pool start=10.0.0.1",
            "network delete",
            "router list -f xml",
            "completion tcsh",
        ] {
            parse_err(args);
        }
    }

    #[test]
    fn interface_and_completion() {
        let c = parse("router interface add r s");
        assert!(matches!(
            c.cmd,
            Command::Router(RouterCmd::Interface(InterfaceCmd::Add { .. }))
        ));
        let c = parse("completion bash");
        assert!(matches!(c.cmd, Command::Completion { shell: Shell::Bash }));
    }
}
