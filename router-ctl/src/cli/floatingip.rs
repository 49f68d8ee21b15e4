//! `router-ctl floatingip ...`: floating IPs (`/v2.0/floatingips`) and their port forwardings.
//!
//! A floating IP is named by its id or by its address (`192.0.2.50`), as the OpenStack client
//! allows; ports and networks by name or id.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use clap::Subcommand;
use comfy_table::{Table, presets};
use serde_json::{Value, json};

use super::{
    client::Client,
    output::{self, Format, Kind},
    resolve::{self, Resource},
};

/// `router-ctl floatingip ...`
#[derive(Clone, Debug, Subcommand)]
pub enum FloatingIpCmd {
    /// Creates a floating IP on an external network (optionally associated at once).
    Create {
        /// External network name or id.
        network: String,
        /// Address to take (admin only; default: the next free one of the network's pools).
        #[arg(long = "floating-ip-address")]
        address: Option<Ipv4Addr>,
        /// Port (name or id) to associate with.
        #[arg(long)]
        port: Option<String>,
        /// Fixed IP of the port to associate (default: its first).
        #[arg(long = "fixed-ip-address", requires = "port")]
        fixed_ip: Option<Ipv4Addr>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists floating IPs.
    List,
    /// Shows a floating IP (id or address).
    Show { floating_ip: String },
    /// Associates a floating IP with a port.
    Set {
        floating_ip: String,
        /// Port name or id.
        #[arg(long)]
        port: String,
        #[arg(long = "fixed-ip-address")]
        fixed_ip: Option<Ipv4Addr>,
    },
    /// Disassociates a floating IP from its port.
    Unset {
        floating_ip: String,
        /// Required, as in the OpenStack client: what is being unset.
        #[arg(long, required = true)]
        port: bool,
    },
    /// Deletes floating IPs.
    Delete {
        #[arg(required = true)]
        floating_ips: Vec<String>,
    },
    /// Port forwardings of a floating IP.
    #[command(subcommand, name = "port-forwarding")]
    PortForwarding(PortForwardingCmd),
}

/// `router-ctl floatingip port-forwarding ...`
#[derive(Clone, Debug, Subcommand)]
pub enum PortForwardingCmd {
    /// Forwards `--protocol` `--external-port` of the floating IP to `--internal-port` of a port.
    Create {
        floating_ip: String,
        #[arg(long, value_parser = ["tcp", "udp"])]
        protocol: String,
        #[arg(long = "external-port", value_parser = clap::value_parser!(u16).range(1..))]
        external_port: u16,
        /// Internal port (name or id).
        #[arg(long)]
        port: String,
        #[arg(long = "internal-ip-address")]
        internal_ip: Option<Ipv4Addr>,
        #[arg(long = "internal-port", value_parser = clap::value_parser!(u16).range(1..))]
        internal_port: u16,
    },
    /// Lists the port forwardings of a floating IP.
    List { floating_ip: String },
    /// Deletes port forwardings of a floating IP.
    Delete {
        floating_ip: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// The id of a floating IP named by id or address.
fn find(client: &Client, name: &str) -> Result<String> {
    if let Ok(addr) = name.parse::<Ipv4Addr>() {
        let v = client.get(&format!("/floatingips?floating_ip_address={addr}"))?;
        let ids: Vec<&str> = v
            .get("floatingips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|f| f["floating_ip_address"].as_str() == Some(&addr.to_string()))
                    .filter_map(|f| f["id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        return match ids.as_slice() {
            [id] => Ok(id.to_string()),
            [] => bail!("no floating IP with address {addr}"),
            _ => bail!("several floating IPs have address {addr}; use an id"),
        };
    }
    let v = client.get(&format!("/floatingips/{name}"))?;
    match v["floatingip"]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("no floating IP {name}"),
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t
}

fn print_list(fmt: Format, items: &Value, cols: &[(&str, &str)]) -> Result<()> {
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    let mut t = table();
    t.set_header(cols.iter().map(|(h, _)| *h));
    for item in items.as_array().map(Vec::as_slice).unwrap_or_default() {
        t.add_row(cols.iter().map(|(_, k)| output::cell(item.get(*k))));
    }
    println!("{t}");
    Ok(())
}

const FIP_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("Floating IP Address", "floating_ip_address"),
    ("Fixed IP Address", "fixed_ip_address"),
    ("Port", "port_id"),
    ("Router", "router_id"),
    ("Status", "status"),
];

const PF_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("Protocol", "protocol"),
    ("External Port", "external_port"),
    ("Internal IP Address", "internal_ip_address"),
    ("Internal Port", "internal_port"),
    ("Internal Port ID", "internal_port_id"),
];

/// Runs a `floatingip` command.
pub fn run(client: &Client, fmt: Format, cmd: FloatingIpCmd) -> Result<()> {
    match cmd {
        FloatingIpCmd::Create {
            network,
            address,
            port,
            fixed_ip,
            description,
        } => {
            let net = resolve::find(client, Resource::Network, &network)?;
            let mut b = json!({ "floating_network_id": net });
            if let Some(a) = address {
                b["floating_ip_address"] = json!(a.to_string());
            }
            if let Some(p) = port {
                b["port_id"] = json!(resolve::find(client, Resource::Port, &p)?);
            }
            if let Some(ip) = fixed_ip {
                b["fixed_ip_address"] = json!(ip.to_string());
            }
            if let Some(d) = description {
                b["description"] = json!(d);
            }
            let v = client.post("/floatingips", &json!({ "floatingip": b }))?;
            output::print_one(fmt, Kind::Port, &v["floatingip"])
        }
        FloatingIpCmd::List => {
            let v = client.get("/floatingips")?;
            print_list(fmt, &v["floatingips"], &FIP_COLUMNS)
        }
        FloatingIpCmd::Show { floating_ip } => {
            let id = find(client, &floating_ip)?;
            let v = client.get(&format!("/floatingips/{id}"))?;
            output::print_one(fmt, Kind::Port, &v["floatingip"])
        }
        FloatingIpCmd::Set {
            floating_ip,
            port,
            fixed_ip,
        } => {
            let id = find(client, &floating_ip)?;
            let mut b = json!({ "port_id": resolve::find(client, Resource::Port, &port)? });
            if let Some(ip) = fixed_ip {
                b["fixed_ip_address"] = json!(ip.to_string());
            }
            let v = client.put(&format!("/floatingips/{id}"), &json!({ "floatingip": b }))?;
            output::print_one(fmt, Kind::Port, &v["floatingip"])
        }
        FloatingIpCmd::Unset { floating_ip, .. } => {
            let id = find(client, &floating_ip)?;
            let v = client.put(
                &format!("/floatingips/{id}"),
                &json!({ "floatingip": { "port_id": null } }),
            )?;
            output::print_one(fmt, Kind::Port, &v["floatingip"])
        }
        FloatingIpCmd::Delete { floating_ips } => {
            for f in &floating_ips {
                let id = find(client, f)?;
                client.delete(&format!("/floatingips/{id}"))?;
            }
            Ok(())
        }
        FloatingIpCmd::PortForwarding(c) => port_forwarding(client, fmt, c),
    }
}

fn port_forwarding(client: &Client, fmt: Format, cmd: PortForwardingCmd) -> Result<()> {
    match cmd {
        PortForwardingCmd::Create {
            floating_ip,
            protocol,
            external_port,
            port,
            internal_ip,
            internal_port,
        } => {
            let id = find(client, &floating_ip)?;
            let mut b = json!({
                "protocol": protocol,
                "external_port": external_port,
                "internal_port_id": resolve::find(client, Resource::Port, &port)?,
                "internal_port": internal_port,
            });
            if let Some(ip) = internal_ip {
                b["internal_ip_address"] = json!(ip.to_string());
            }
            let v = client.post(
                &format!("/floatingips/{id}/port_forwardings"),
                &json!({ "port_forwarding": b }),
            )?;
            output::print_one(fmt, Kind::Port, &v["port_forwarding"])
        }
        PortForwardingCmd::List { floating_ip } => {
            let id = find(client, &floating_ip)?;
            let v = client.get(&format!("/floatingips/{id}/port_forwardings"))?;
            print_list(fmt, &v["port_forwardings"], &PF_COLUMNS)
        }
        PortForwardingCmd::Delete { floating_ip, ids } => {
            let id = find(client, &floating_ip)?;
            for pf in &ids {
                client.delete(&format!("/floatingips/{id}/port_forwardings/{pf}"))?;
            }
            Ok(())
        }
    }
}
