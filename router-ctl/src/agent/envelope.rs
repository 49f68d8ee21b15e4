//! oslo.messaging's wire format over AMQP (the rabbit driver, envelope version 2.0): the body is
//! `{"oslo.version": "2.0", "oslo.message": "<the message as a JSON string>"}`; a message is
//! `method`, `args`, `version`, the `_context_*` keys of the caller's request context, a
//! `_unique_id`, and for a call `_msg_id` and `_reply_q`. Replies go to the default exchange,
//! routed by the reply queue's name: `{"result", "failure", "ending", "_msg_id"}`.

use std::time::SystemTime;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value, json};

/// The envelope version this agent speaks.
pub const ENVELOPE_VERSION: &str = "2.0";
/// Content type of every body.
pub const CONTENT_TYPE: &str = "application/json";

/// A fresh 32-hex-digit id (`_unique_id`, `_msg_id`, queue suffixes), as oslo makes them.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Wraps `msg` in the 2.0 envelope.
pub fn encode(msg: &Map<String, Value>) -> Vec<u8> {
    let inner = Value::Object(msg.clone()).to_string();
    json!({"oslo.version": ENVELOPE_VERSION, "oslo.message": inner})
        .to_string()
        .into_bytes()
}

/// Unwraps a body: the 2.0 envelope, or a bare message (oslo accepts both).
pub fn decode(body: &[u8]) -> Result<Map<String, Value>> {
    let outer: Value = serde_json::from_slice(body).context("body is not JSON")?;
    let Value::Object(mut outer) = outer else {
        bail!("body is not a JSON object");
    };
    match (outer.remove("oslo.version"), outer.remove("oslo.message")) {
        (None, None) => Ok(outer),
        (Some(Value::String(v)), Some(Value::String(m))) => {
            if v.split('.').next() != Some("2") {
                bail!("envelope version {v} is not served (2.x)");
            }
            match serde_json::from_str(&m).context("oslo.message is not JSON")? {
                Value::Object(o) => Ok(o),
                _ => bail!("oslo.message is not a JSON object"),
            }
        }
        _ => bail!("malformed envelope (oslo.version and oslo.message must both be strings)"),
    }
}

/// A request context: what neutron-server reads from the `_context_*` keys. The agent acts as
/// an admin with no project, as the stock agent's `get_admin_context_without_session`.
pub fn admin_context(request_id: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let ctx = json!({
        "is_admin": true,
        "roles": ["admin"],
        "request_id": request_id,
        "global_request_id": null,
        "timestamp": timestamp(SystemTime::now(), ' '),
        "user_id": null,
        "project_id": null,
        "project_name": null,
        "user_identity": "- - - - -",
        "read_only": false,
        "show_deleted": false,
        "auth_token": null,
    });
    if let Value::Object(o) = ctx {
        for (k, v) in o {
            m.insert(format!("_context_{k}"), v);
        }
    }
    m
}

/// A request to neutron-server: a cast, or a call when `reply` is (msg_id, reply queue).
pub fn request(
    method: &str,
    version: &str,
    args: Value,
    request_id: &str,
    reply: Option<(&str, &str)>,
) -> Map<String, Value> {
    let mut m = admin_context(request_id);
    m.insert("method".into(), method.into());
    m.insert("args".into(), args);
    m.insert("version".into(), version.into());
    m.insert("_unique_id".into(), new_id().into());
    if let Some((msg_id, reply_q)) = reply {
        m.insert("_msg_id".into(), msg_id.into());
        m.insert("_reply_q".into(), reply_q.into());
        m.insert("_timeout".into(), Value::Null);
    }
    m
}

/// The answer to a call the agent received.
pub fn reply(msg_id: &str, result: Result<Value, Failure>) -> Map<String, Value> {
    let (result, failure) = match result {
        Ok(v) => (v, Value::Null),
        Err(f) => (Value::Null, Value::String(f.to_json())),
    };
    let mut m = Map::new();
    m.insert("result".into(), result);
    m.insert("failure".into(), failure);
    m.insert("ending".into(), true.into());
    m.insert("_msg_id".into(), msg_id.into());
    m.insert("_unique_id".into(), new_id().into());
    m
}

/// A remote exception as oslo serialises it (`failure` of a reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: String,
    pub module: String,
    pub message: String,
}

impl Failure {
    fn to_json(&self) -> String {
        json!({"class": self.class, "module": self.module, "message": self.message,
               "tb": [], "args": [], "kwargs": {}})
        .to_string()
    }

    fn from_json(text: &str) -> Self {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let message = match v.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => text.to_string(),
        };
        Self {
            class: s("class"),
            module: s("module"),
            message,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}: {}", self.module, self.class, self.message)
    }
}

/// One message on the agent's reply queue.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyPart {
    pub msg_id: String,
    /// `result` (None when null or absent).
    pub result: Option<Value>,
    pub failure: Option<Failure>,
    /// The last message of the reply; `ending: false` with no result is a heartbeat (the
    /// server is still working on the call).
    pub ending: bool,
}

/// The string `key` of a message (None: missing or not a string).
fn text(msg: &Map<String, Value>, key: &str) -> Option<String> {
    msg.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Reads a message of the reply queue.
pub fn decode_reply(msg: &Map<String, Value>) -> Result<ReplyPart> {
    let msg_id = text(msg, "_msg_id").ok_or_else(|| anyhow!("reply without _msg_id"))?;
    let failure = match msg.get("failure") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Failure::from_json(s)),
        Some(other) => Some(Failure::from_json(&other.to_string())),
    };
    Ok(ReplyPart {
        msg_id,
        result: msg.get("result").filter(|v| !v.is_null()).cloned(),
        failure,
        ending: msg.get("ending").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A request neutron-server sent the agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    pub method: String,
    pub args: Map<String, Value>,
    /// Present for a call: where to answer.
    pub reply: Option<(String, String)>,
}

/// Reads a request off one of the agent's queues.
pub fn decode_incoming(msg: &Map<String, Value>) -> Result<Incoming> {
    let method = text(msg, "method").ok_or_else(|| anyhow!("message without a method"))?;
    let args = match msg.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => bail!("{method}: args is not an object"),
    };
    let reply = match (msg.get("_msg_id"), msg.get("_reply_q")) {
        (Some(Value::String(id)), Some(Value::String(q))) => Some((id.clone(), q.clone())),
        _ => None,
    };
    Ok(Incoming {
        method,
        args,
        reply,
    })
}

/// UTC time as oslo writes it: `2026-12-04T17:58:29.649286` (`sep` 'T'), or with a space
/// between date and time (`_context_timestamp`).
pub fn timestamp(t: SystemTime, sep: char) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report_state request of wire-samples.txt (a real neutron-l3-agent's), trimmed.
    const REPORT_STATE: &str = r#"{"oslo.version": "2.0", "oslo.message": "{\"_context_is_admin\": true, \"_context_request_id\": \"req-2446541c\", \"_msg_id\": \"081a4ca0f575463b8d95b3fe84eae3dd\", \"_reply_q\": \"reply_3d8cb1f8a0114fc5a06d8f10ce971ff8\", \"_unique_id\": \"8a19dbf6922c4dac97ecb4c2c841cbe9\", \"args\": {\"agent_state\": {\"agent_state\": {\"agent_type\": \"L3 agent\"}}, \"time\": \"2026-12-04T17:58:29.649286\"}, \"method\": \"report_state\", \"version\": \"1.4\"}"}"#;

    #[test]
    fn a_real_call_decodes_with_its_reply_address() {
        let m = decode(REPORT_STATE.as_bytes()).unwrap();
        let inc = decode_incoming(&m).unwrap();
        assert_eq!(inc.method, "report_state");
        assert_eq!(
            inc.reply,
            Some((
                "081a4ca0f575463b8d95b3fe84eae3dd".into(),
                "reply_3d8cb1f8a0114fc5a06d8f10ce971ff8".into()
            ))
        );
        assert_eq!(
            inc.args["agent_state"]["agent_state"]["agent_type"],
            "L3 agent"
        );
    }

    #[test]
    fn requests_round_trip_through_the_envelope() {
        let req = request(
            "get_router_ids",
            "1.9",
            json!({"host": "netnode-1"}),
            "req-1",
            Some(("abc", "reply_x")),
        );
        let body = encode(&req);
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        assert!(
            outer["oslo.message"].is_string(),
            "the message is a JSON string"
        );
        let back = decode(&body).unwrap();
        assert_eq!(back, req);
        assert_eq!(back["_context_is_admin"], true);
        assert_eq!(back["_context_request_id"], "req-1");
        assert_eq!(back["version"], "1.9");
        assert_eq!(back["_reply_q"], "reply_x");
        let cast = request("m", "1.0", json!({}), "req-2", None);
        assert!(!cast.contains_key("_msg_id") && !cast.contains_key("_reply_q"));
    }

    #[test]
    fn replies_results_failures_and_heartbeats() {
        let ok = decode(br#"{"oslo.version": "2.0", "oslo.message": "{\"_msg_id\": \"9416\", \"_unique_id\": \"5250\", \"ending\": true, \"failure\": null, \"result\": [\"1c43a533\"]}"}"#).unwrap();
        let r = decode_reply(&ok).unwrap();
        assert_eq!(r.msg_id, "9416");
        assert_eq!(r.result, Some(json!(["1c43a533"])));
        assert!(r.ending && r.failure.is_none());
        let hb = decode_reply(
            &json!({"_msg_id": "1", "result": null, "failure": null, "ending": false})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert!(!hb.ending && hb.result.is_none(), "a heartbeat");
        let f = json!({"_msg_id": "2", "result": null, "ending": true,
            "failure": "{\"class\": \"RemoteError\", \"module\": \"oslo_messaging.rpc.client\", \"message\": \"boom\", \"tb\": []}"});
        let r = decode_reply(f.as_object().unwrap()).unwrap();
        assert_eq!(
            r.failure.unwrap().to_string(),
            "oslo_messaging.rpc.client.RemoteError: boom"
        );
        // Our own answers read back.
        let ours = reply("7", Ok(Value::Null));
        let r = decode_reply(&ours).unwrap();
        assert!(r.ending && r.result.is_none() && r.failure.is_none());
        let ours = reply(
            "8",
            Err(Failure {
                class: "NoSuchMethod".into(),
                module: "m".into(),
                message: "x".into(),
            }),
        );
        assert_eq!(
            decode_reply(&ours).unwrap().failure.unwrap().class,
            "NoSuchMethod"
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"oslo.version": "2.0"}"#,
            br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#,
            br#"{"oslo.version": "2.0", "oslo.message": "[]"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(decode_incoming(&Map::new()).is_err());
        assert!(decode_reply(&Map::new()).is_err());
    }

    #[test]
    fn timestamps_look_like_oslos() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_796_407_109_649_286);
        assert_eq!(timestamp(t, 'T'), "2026-12-04T17:58:29.649286");
        assert_eq!(timestamp(t, ' '), "2026-12-04 17:58:29.649286");
    }
}
