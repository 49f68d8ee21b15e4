//! What neutron-server tells the agent (`L3AgentNotifyAPI`): the methods on `l3_agent`,
//! `l3_agent.<host>` and the `l3_agent_fanout` exchange, read into `Notice`s.
//!
//! Arguments are JSON as oslo.messaging serialises them; a string holding a Python literal
//! (`"['id']"`, `"{'router_id': 'id'}"`, as some capture tools print them) is read too.

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};

/// One notification, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `routers_updated{routers}`: resync these routers.
    RoutersUpdated(Vec<String>),
    /// `router_deleted{router_id}` (fanout).
    RouterDeleted(String),
    /// `router_added_to_agent{payload: [ids]}` (a call).
    AddedToAgent(Vec<String>),
    /// `router_removed_from_agent{payload: {router_id}}`.
    RemovedFromAgent(String),
    /// `agent_updated{payload: {admin_state_up}}`.
    AgentUpdated { admin_state_up: bool },
}

/// The methods this agent serves (a call to any other is answered with a failure).
pub const METHODS: &[&str] = &[
    "routers_updated",
    "router_deleted",
    "router_added_to_agent",
    "router_removed_from_agent",
    "agent_updated",
];

/// Reads `method(args)`; an unknown method or bad arguments are an error naming them.
pub fn parse(method: &str, args: &Map<String, Value>) -> Result<Notice> {
    let arg = |name: &str| -> Result<Value> {
        args.get(name)
            .map(literal)
            .ok_or_else(|| anyhow!("{method}: argument {name} missing"))
    };
    Ok(match method {
        "routers_updated" => Notice::RoutersUpdated(router_ids(method, &arg("routers")?)?),
        "router_deleted" => Notice::RouterDeleted(id(method, &arg("router_id")?)?),
        "router_added_to_agent" => Notice::AddedToAgent(router_ids(method, &arg("payload")?)?),
        "router_removed_from_agent" => {
            let p = arg("payload")?;
            Notice::RemovedFromAgent(id(method, p.get("router_id").unwrap_or(&Value::Null))?)
        }
        "agent_updated" => {
            let p = arg("payload")?;
            let up = p
                .get("admin_state_up")
                .and_then(Value::as_bool)
                .ok_or_else(|| anyhow!("{method}: payload has no admin_state_up"))?;
            Notice::AgentUpdated { admin_state_up: up }
        }
        other => bail!("unknown method {other:?}"),
    })
}

fn id(method: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        other => bail!("{method}: {other} is not a router id"),
    }
}

/// A list of router ids, or of router dicts with an `id` (older servers sent those).
fn router_ids(method: &str, v: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = v else {
        bail!("{method}: {v} is not a list of routers");
    };
    items
        .iter()
        .map(|i| match i {
            Value::Object(o) => id(method, o.get("id").unwrap_or(&Value::Null)),
            other => id(method, other),
        })
        .collect()
}

/// `v`, or what the Python literal in the string `v` stands for when it is one (a list, a
/// dict or None); any other string is itself.
pub fn literal(v: &Value) -> Value {
    let Value::String(s) = v else {
        return v.clone();
    };
    let t = s.trim();
    if t == "None" {
        return Value::Null;
    }
    if !(t.starts_with('[') || t.starts_with('{')) {
        return v.clone();
    }
    serde_json::from_str(&python_to_json(t)).unwrap_or_else(|_| v.clone())
}

/// Rewrites a Python literal of strings, numbers, None/True/False, lists and dicts as JSON:
/// single-quoted strings become double-quoted, the three constants their JSON names.
fn python_to_json(py: &str) -> String {
    let mut out = String::with_capacity(py.len());
    let mut quote: Option<char> = None;
    let mut chars = py.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "None" => "null",
            "True" => "true",
            "False" => "false",
            w => w,
        });
        word.clear();
    };
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        if n == '\'' {
                            out.push('\'');
                        } else {
                            out.push('\\');
                            out.push(n);
                        }
                    }
                }
                '"' if q == '\'' => out.push_str("\\\""),
                c if c == q => {
                    out.push('"');
                    quote = None;
                }
                c => out.push(c),
            },
            None => match c {
                '\'' | '"' => {
                    flush(&mut word, &mut out);
                    out.push('"');
                    quote = Some(c);
                }
                c if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => word.push(c),
                c => {
                    flush(&mut word, &mut out);
                    out.push(c);
                }
            },
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_wire_samples_decode() {
        // As wire-samples.txt shows them (Python literals in strings)…
        let n = parse(
            "routers_updated",
            &args(json!({"routers": "['00db23ae-093c-4349-86c4-9e2317c3915a']"})),
        )
        .unwrap();
        assert_eq!(
            n,
            Notice::RoutersUpdated(vec!["00db23ae-093c-4349-86c4-9e2317c3915a".into()])
        );
        let n = parse(
            "router_removed_from_agent",
            &args(json!({"payload": "{'router_id': '00db23ae-093c-4349-86c4-9e2317c3915a'}"})),
        )
        .unwrap();
        assert_eq!(
            n,
            Notice::RemovedFromAgent("00db23ae-093c-4349-86c4-9e2317c3915a".into())
        );
        let n = parse(
            "router_added_to_agent",
            &args(json!({"payload": "['r1', 'r2']"})),
        )
        .unwrap();
        assert_eq!(n, Notice::AddedToAgent(vec!["r1".into(), "r2".into()]));
        let n = parse("router_deleted", &args(json!({"router_id": "1c43a533"}))).unwrap();
        assert_eq!(n, Notice::RouterDeleted("1c43a533".into()));
        // …and as JSON proper.
        let n = parse(
            "routers_updated",
            &args(json!({"routers": ["a", {"id": "b"}]})),
        )
        .unwrap();
        assert_eq!(n, Notice::RoutersUpdated(vec!["a".into(), "b".into()]));
        let n = parse(
            "agent_updated",
            &args(json!({"payload": {"admin_state_up": false}})),
        )
        .unwrap();
        assert_eq!(
            n,
            Notice::AgentUpdated {
                admin_state_up: false
            }
        );
        let n = parse(
            "agent_updated",
            &args(json!({"payload": "{'admin_state_up': True}"})),
        )
        .unwrap();
        assert_eq!(
            n,
            Notice::AgentUpdated {
                admin_state_up: true
            }
        );
    }

    #[test]
    fn unknown_methods_and_bad_args_are_errors() {
        assert!(parse("fipnamespace_delete_on_ext_net", &Map::new()).is_err());
        assert!(parse("routers_updated", &Map::new()).is_err());
        assert!(parse("routers_updated", &args(json!({"routers": 5}))).is_err());
        assert!(parse("router_deleted", &args(json!({"router_id": ""}))).is_err());
        assert!(parse("agent_updated", &args(json!({"payload": {}}))).is_err());
        for m in METHODS {
            assert!(parse(m, &Map::new()).is_err(), "{m} without args");
        }
    }

    #[test]
    fn python_literals() {
        assert_eq!(literal(&json!("None")), Value::Null);
        assert_eq!(literal(&json!("netnode-1")), json!("netnode-1"));
        assert_eq!(
            literal(&json!("{'a': [1, None, True, \"it's\"], 'b': 'x\"y'}")),
            json!({"a": [1, null, true, "it's"], "b": "x\"y"})
        );
        assert_eq!(literal(&json!("[unbalanced")), json!("[unbalanced"));
    }
}
