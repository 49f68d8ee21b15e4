//! Request body validation with Neutron's messages: every field is checked for type and range
//! before anything is read from or written to the store, and unknown fields are refused.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::model::Fault;

/// A JSON object from a request body.
pub type Obj = Map<String, Value>;

/// Longest `name`/`description` Neutron accepts.
pub const NAME_MAX: usize = 255;

/// Parses `{"<resource>": {...}}` and returns the inner object.
pub fn resource_body(bytes: &[u8], resource: &str) -> Result<Obj, Fault> {
    let mut top = any_object(bytes)?;
    let Some(inner) = top.remove(resource) else {
        return Err(Fault::bad_request(format!(
            "Unable to find '{resource}' in request body"
        )));
    };
    if !top.is_empty() {
        return Err(unrecognised(top.keys()));
    }
    match inner {
        Value::Object(o) => Ok(o),
        other => Err(Fault::bad_request(format!(
            "Invalid input for {resource}. Reason: '{other}' is not a dictionary."
        ))),
    }
}

/// Parses a body that must be one JSON object (router interface bodies are not wrapped).
pub fn any_object(bytes: &[u8]) -> Result<Obj, Fault> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Fault::bad_request(
            "Malformed request body: not a JSON object",
        )),
        Err(e) => Err(Fault::bad_request(format!("Malformed request body: {e}"))),
    }
}

fn unrecognised<'a>(keys: impl Iterator<Item = &'a String>) -> Fault {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    Fault::bad_request(format!("Unrecognized attribute(s) '{}'", list.join(", ")))
}

/// Refuses any key not in `allowed`.
pub fn only(o: &Obj, allowed: &[&str]) -> Result<(), Fault> {
    let mut extra = o
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .peekable();
    if extra.peek().is_some() {
        return Err(unrecognised(extra));
    }
    Ok(())
}

/// Neutron's attribute validation error.
pub fn bad_attr(key: &str, reason: impl std::fmt::Display) -> Fault {
    Fault::bad_request(format!("Invalid input for {key}. Reason: {reason}."))
}

/// An optional string of at most `max` characters (null is refused).
pub fn opt_string(o: &Obj, key: &str, max: usize) -> Result<Option<String>, Fault> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(bad_attr(
            key,
            format!("'{s}' exceeds maximum length of {max}"),
        )),
        Some(v) => Err(bad_attr(key, format!("'{v}' is not a valid string"))),
    }
}

/// Overwrites `field` with the string at `key` (at most `NAME_MAX` characters) when the body
/// has one: how an update applies `name` and `description`.
pub fn set_string(o: &Obj, key: &str, field: &mut String) -> Result<(), Fault> {
    if let Some(v) = opt_string(o, key, NAME_MAX)? {
        *field = v;
    }
    Ok(())
}

/// A create body's `name` and `description`, empty when absent.
pub fn name_and_description(o: &Obj) -> Result<(String, String), Fault> {
    Ok((
        opt_string(o, "name", NAME_MAX)?.unwrap_or_default(),
        opt_string(o, "description", NAME_MAX)?.unwrap_or_default(),
    ))
}

/// An optional boolean; Neutron also converts "true"/"false" strings and 0/1.
pub fn opt_bool(o: &Obj, key: &str) -> Result<Option<bool>, Fault> {
    match o.get(key) {
        None => Ok(None),
        Some(v) => to_bool(v)
            .map(Some)
            .ok_or_else(|| bad_attr(key, format!("'{v}' cannot be converted to boolean"))),
    }
}

/// Neutron's `convert_to_boolean`.
pub fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_i64() == Some(0) => Some(false),
        Value::Number(n) if n.as_i64() == Some(1) => Some(true),
        Value::String(s) => parse_bool(s),
        _ => None,
    }
}

/// "true"/"false" in any case, "1"/"0".
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `s` is a UUID (Neutron ids).
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// An optional UUID-valued field.
pub fn opt_uuid(o: &Obj, key: &str) -> Result<Option<String>, Fault> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if is_uuid(s) => Ok(Some(s.clone())),
        Some(v) => Err(bad_attr(key, format!("'{v}' is not a valid UUID"))),
    }
}

/// A required UUID-valued field.
pub fn req_uuid(o: &Obj, key: &str) -> Result<String, Fault> {
    opt_uuid(o, key)?.ok_or_else(|| bad_attr(key, "this attribute is required"))
}

/// An address string of either family.
pub fn ip_value(key: &str, v: &Value) -> Result<IpAddr, Fault> {
    match v {
        Value::String(s) => s
            .parse::<IpAddr>()
            .map_err(|_| bad_attr(key, format!("'{s}' is not a valid IP address"))),
        other => Err(bad_attr(
            key,
            format!("'{other}' is not a valid IP address"),
        )),
    }
}

/// An address where only IPv4 makes sense (floating IPs, port forwardings, extra routes: no
/// NAT66, as in Neutron): an IPv6 one is Neutron's 400 `BadRequest` for `resource`.
pub fn ipv4_value(resource: &str, key: &str, v: &Value) -> Result<IpAddr, Fault> {
    match ip_value(key, v)? {
        ip @ IpAddr::V4(_) => Ok(ip),
        IpAddr::V6(a) => Err(Fault::new(
            400,
            "BadRequest",
            format!(
                "Bad {resource} request: {key} {a} is not an IPv4 address; only IPv4 can be used."
            ),
        )),
    }
}

/// An optional list.
pub fn opt_list<'a>(o: &'a Obj, key: &str) -> Result<Option<&'a Vec<Value>>, Fault> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(bad_attr(key, format!("'{v}' is not a list"))),
    }
}

/// One `{"subnet_id": .., "ip_address": ..}` request, as in `fixed_ips` and
/// `external_fixed_ips`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIpRequest {
    /// The subnet to allocate from (else the one containing `ip`).
    pub subnet_id: Option<String>,
    /// The address wanted (else the first free one).
    pub ip: Option<IpAddr>,
}

/// Parses a `fixed_ips`-shaped list.
pub fn fixed_ip_requests(key: &str, list: &[Value]) -> Result<Vec<FixedIpRequest>, Fault> {
    let mut out = Vec::new();
    for item in list {
        let Value::Object(o) = item else {
            return Err(bad_attr(key, format!("'{item}' is not a dictionary")));
        };
        only(o, &["subnet_id", "ip_address"]).map_err(|e| bad_attr(key, e.message))?;
        let subnet_id = opt_uuid(o, "subnet_id")?;
        let ip = o
            .get("ip_address")
            .map(|v| ip_value("ip_address", v))
            .transpose()?;
        if subnet_id.is_none() && ip.is_none() {
            return Err(bad_attr(
                key,
                "each entry needs a subnet_id or an ip_address",
            ));
        }
        out.push(FixedIpRequest { subnet_id, ip });
    }
    Ok(out)
}

/// The project a new resource belongs to: `project_id`/`tenant_id` when given (they must
/// agree; another project's only for admins), else the caller's.
pub fn owner(o: &Obj, ctx: &super::Ctx, action: &str) -> Result<String, Fault> {
    let p = opt_string(o, "project_id", NAME_MAX)?;
    let t = opt_string(o, "tenant_id", NAME_MAX)?;
    let id = match (p, t) {
        (Some(p), Some(t)) if p != t => {
            return Err(Fault::bad_request(
                "'project_id' and 'tenant_id' do not match",
            ));
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => return Ok(ctx.project_id.clone()),
    };
    if id.is_empty() {
        return Err(bad_attr("project_id", "'' is not a valid project id"));
    }
    if id != ctx.project_id && !ctx.admin {
        return Err(Fault::policy(action));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_strict() {
        assert_eq!(resource_body(b"{", "network").unwrap_err().status, 400);
        assert_eq!(resource_body(b"[]", "network").unwrap_err().status, 400);
        assert_eq!(resource_body(b"{}", "network").unwrap_err().status, 400);
        assert_eq!(
            resource_body(br#"{"network": 1}"#, "network")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            resource_body(br#"{"network": {}, "x": 1}"#, "network")
                .unwrap_err()
                .status,
            400
        );
        let o = resource_body(br#"{"network": {"name": "a"}}"#, "network").unwrap();
        assert!(only(&o, &["name"]).is_ok());
        let e = only(&o, &["admin_state_up"]).unwrap_err();
        assert!(
            e.message.contains("Unrecognized attribute(s) 'name'"),
            "{e:?}"
        );
    }

    #[test]
    fn values_are_typed() {
        let o: Obj = serde_json::from_str(
            r#"{"a": "True", "b": 0, "c": "maybe", "n": null, "u": "not-a-uuid",
                "f": [{"ip_address": "10.0.0.300"}]}"#,
        )
        .unwrap();
        assert_eq!(opt_bool(&o, "a").unwrap(), Some(true));
        assert_eq!(opt_bool(&o, "b").unwrap(), Some(false));
        assert!(opt_bool(&o, "c").is_err());
        assert!(opt_string(&o, "n", 10).is_err());
        assert!(opt_uuid(&o, "u").is_err());
        let f = opt_list(&o, "f").unwrap().unwrap();
        assert!(fixed_ip_requests("fixed_ips", f).is_err());
    }
}
