//! Printing API answers: tables for people (comfy-table), the API's own JSON for scripts.

use anyhow::Result;
use comfy_table::{Table, presets};
use serde_json::Value;

/// `-f/--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What an object is, to choose list columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Network,
    Subnet,
    Router,
    Port,
    /// The answer of `add_router_interface`/`remove_router_interface`.
    Interface,
}

/// A list column: its heading and how to read it from an object.
struct Column {
    heading: &'static str,
    cell: fn(&Value) -> String,
}

macro_rules! col {
    ($h:literal, $key:literal) => {
        Column {
            heading: $h,
            cell: |v| cell(v.get($key)),
        }
    };
    ($h:literal, $f:expr) => {
        Column {
            heading: $h,
            cell: $f,
        }
    };
}

fn columns(kind: Kind) -> Vec<Column> {
    // A resource's table leads with its ID and name, as the `openstack` CLI's lists do.
    let resource = |rest: Vec<Column>| {
        let mut cols = vec![col!("ID", "id"), col!("Name", "name")];
        cols.extend(rest);
        cols
    };
    match kind {
        Kind::Network => resource(vec![
            col!("External", "router:external"),
            col!("Subnets", "subnets"),
            col!("Status", "status"),
        ]),
        Kind::Subnet => resource(vec![
            col!("Network", "network_id"),
            col!("CIDR", "cidr"),
            col!("Gateway", "gateway_ip"),
        ]),
        Kind::Router => resource(vec![
            col!("Status", "status"),
            col!("External gateway", |v| gateway_summary(
                v.get("external_gateway_info")
            )),
            col!("Routes", |v| routes_summary(v.get("routes"))),
        ]),
        Kind::Port => resource(vec![
            col!("Network", "network_id"),
            col!("MAC", "mac_address"),
            col!("Fixed IPs", |v| fixed_ips_summary(v.get("fixed_ips"))),
            col!("Owner", "device_owner"),
            col!("Status", "status"),
        ]),
        Kind::Interface => vec![
            col!("Router", "id"),
            col!("Subnet", "subnet_id"),
            col!("Port", "port_id"),
        ],
    }
}

/// A JSON value as a table cell: strings bare, null empty, lists one item a line.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

/// `external_gateway_info` in one cell: network, addresses, SNAT.
pub fn gateway_summary(info: Option<&Value>) -> String {
    let Some(info) = info.filter(|i| i.get("network_id").is_some()) else {
        return String::new();
    };
    let mut s = cell(info.get("network_id"));
    let ips = fixed_ips_summary(info.get("external_fixed_ips"));
    if !ips.is_empty() {
        s.push_str(&format!(" ({ips})"));
    }
    if info.get("enable_snat") == Some(&Value::Bool(false)) {
        s.push_str(" no SNAT");
    }
    s
}

/// Extra routes as `dst via nexthop, …`.
pub fn routes_summary(routes: Option<&Value>) -> String {
    let Some(Value::Array(list)) = routes else {
        return String::new();
    };
    list.iter()
        .map(|r| {
            format!(
                "{} via {}",
                cell(r.get("destination")),
                cell(r.get("nexthop"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fixed_ips` as `ip, ip`.
pub fn fixed_ips_summary(ips: Option<&Value>) -> String {
    ips.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("ip_address").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t
}

/// Renders a list answer as a table with `kind`'s columns.
pub fn list_table(kind: Kind, items: &[Value]) -> Table {
    let cols = columns(kind);
    let mut t = table();
    t.set_header(cols.iter().map(|c| c.heading));
    for item in items {
        t.add_row(cols.iter().map(|c| (c.cell)(item)));
    }
    t
}

/// Renders one object as a Field/Value table (every field, sorted).
pub fn object_table(obj: &Value) -> Table {
    let mut t = table();
    t.set_header(["Field", "Value"]);
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            let value = match (k.as_str(), v) {
                ("external_gateway_info", Value::Object(_)) => gateway_summary(Some(v)),
                (_, Value::Array(a)) if a.iter().any(Value::is_object) => a
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => cell(Some(v)),
            };
            t.add_row([k.clone(), value]);
        }
    }
    t
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints a list answer.
pub fn print_list(fmt: Format, kind: Kind, items: &Value) -> Result<()> {
    match fmt {
        Format::Json => print_json(items),
        Format::Table => {
            let items = items.as_array().map(Vec::as_slice).unwrap_or_default();
            println!("{}", list_table(kind, items));
            Ok(())
        }
    }
}

/// Prints one object.
pub fn print_one(fmt: Format, kind: Kind, obj: &Value) -> Result<()> {
    match (fmt, kind) {
        (Format::Json, _) => print_json(obj),
        (Format::Table, Kind::Interface) => {
            println!("{}", list_table(kind, std::slice::from_ref(obj)));
            Ok(())
        }
        (Format::Table, _) => {
            println!("{}", object_table(obj));
            Ok(())
        }
    }
}

/// The NAT table (`SessionInfo` objects) as a table.
pub fn sessions_table(sessions: &[Value]) -> Table {
    let mut t = table();
    t.set_header([
        "Proto",
        "Internal",
        "Translated",
        "Remote",
        "Kind",
        "State",
        "Idle (s)",
    ]);
    for s in sessions {
        t.add_row(
            [
                "protocol",
                "internal",
                "translated",
                "remote",
                "kind",
                "state",
                "idle_secs",
            ]
            .map(|k| cell(s.get(k))),
        );
    }
    t
}

/// Prints `{"sessions": [...]}`'s list.
pub fn print_sessions(fmt: Format, sessions: &Value) -> Result<()> {
    match fmt {
        Format::Json => print_json(sessions),
        Format::Table => {
            let list = sessions.as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() {
                println!("(no NAT sessions)");
            } else {
                println!("{}", sessions_table(list));
            }
            Ok(())
        }
    }
}

/// Prints `{"stats": {name: count}}`'s map.
pub fn print_stats(fmt: Format, stats: &Value) -> Result<()> {
    match fmt {
        Format::Json => print_json(stats),
        Format::Table => {
            let mut t = table();
            t.set_header(["Counter", "Value"]);
            if let Some(m) = stats.as_object() {
                for (k, v) in m {
                    t.add_row([k.clone(), cell(Some(v))]);
                }
            }
            println!("{t}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn router_list_shows_gateway() {
        let routers = [
            json!({"id": "r1", "name": "edge", "status": "ACTIVE", "external_gateway_info": {
                "network_id": "ext", "enable_snat": true,
                "external_fixed_ips": [{"subnet_id": "s", "ip_address": "203.0.113.5"}]}}),
            json!({"id": "r2", "name": "bare", "status": "ACTIVE", "external_gateway_info": null}),
        ];
        let out = list_table(Kind::Router, &routers).to_string();
        assert!(out.contains("ext (203.0.113.5)"), "{out}");
        assert!(out.contains("bare"), "{out}");
        assert_eq!(
            gateway_summary(Some(&json!({"network_id": "e", "enable_snat": false}))),
            "e no SNAT"
        );
        assert_eq!(gateway_summary(Some(&json!({}))), "");
    }

    #[test]
    fn cells() {
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&json!(null))), "");
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(Some(&json!(true))), "true");
        assert_eq!(cell(Some(&json!(["a", "b"]))), "a\nb");
        assert_eq!(
            fixed_ips_summary(Some(
                &json!([{"ip_address": "10.0.0.3"}, {"ip_address": "10.0.0.4"}])
            )),
            "10.0.0.3, 10.0.0.4"
        );
    }

    #[test]
    fn sessions_and_objects() {
        let s = [json!({"protocol": "tcp", "internal": "10.10.0.5:40000",
            "translated": "203.0.113.5:40000", "remote": "203.0.113.1:80", "kind": "snat",
            "state": "ESTABLISHED", "idle_secs": 3})];
        let out = sessions_table(&s).to_string();
        for needle in [
            "tcp",
            "10.10.0.5:40000",
            "203.0.113.5:40000",
            "ESTABLISHED",
            "3",
        ] {
            assert!(out.contains(needle), "{needle} missing in {out}");
        }
        let out = object_table(&json!({"name": "n", "subnets": ["a"]})).to_string();
        assert!(out.contains("subnets") && out.contains("name"), "{out}");
    }
}
