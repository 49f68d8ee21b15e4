//! The calls the agent makes to neutron-server, with the topics and versions neutron-l3-agent
//! uses: `report_state` (q-reports-plugin 1.4); `get_router_ids` (1.9), `sync_routers` (1.0,
//! in chunks), `update_floatingip_statuses` (1.1) on q-l3-plugin; `get_network_details`
//! (q-plugin 1.6) for a network's segment, which answers whether its ports are bound or not.

use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow};
use serde_json::{Map, Value, json};

use super::{
    envelope,
    notify::literal,
    rpc::{CallError, Session},
};

const REPORTS_TOPIC: &str = "q-reports-plugin";
const L3_PLUGIN_TOPIC: &str = "q-l3-plugin";
const PLUGIN_TOPIC: &str = "q-plugin";

/// Largest and smallest `sync_routers` chunk (the stock agent's bounds since bug 1516260: a
/// chunk that times out is halved, down to the smallest).
pub const SYNC_CHUNK_MAX: usize = 256;
pub const SYNC_CHUNK_MIN: usize = 32;

/// The server API as seen from one host.
pub struct Plugin<'a> {
    pub session: &'a Session,
    pub host: &'a str,
    pub timeout: Duration,
}

impl Plugin<'_> {
    async fn call(
        &self,
        topic: &str,
        method: &str,
        version: &str,
        args: Value,
    ) -> Result<Value, CallError> {
        self.session
            .call(topic, method, version, args, self.timeout)
            .await
    }

    /// `report_state`; the server's answer (`new`, `alive`, `revived`).
    pub async fn report_state(&self, state: Value) -> Result<String, CallError> {
        let args = json!({
            "agent_state": {"agent_state": state},
            "time": envelope::timestamp(SystemTime::now(), 'T'),
        });
        let r = self
            .call(REPORTS_TOPIC, "report_state", "1.4", args)
            .await?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }

    /// Routers neutron-server has scheduled to this host (it schedules unhosted ones to the
    /// caller on the way).
    pub async fn get_router_ids(&self) -> Result<Vec<String>> {
        let r = self
            .call(
                L3_PLUGIN_TOPIC,
                "get_router_ids",
                "1.9",
                json!({"host": self.host}),
            )
            .await?;
        strings(&literal(&r)).ok_or_else(|| anyhow!("get_router_ids: {r} is not a list of ids"))
    }

    /// Router dicts of `ids` (those still hosted here), `chunk` at a time; a chunk that times
    /// out is retried halved, down to `SYNC_CHUNK_MIN`. Returns the dicts and the chunk size
    /// to start with next time.
    pub async fn sync_routers(
        &self,
        ids: &[String],
        mut chunk: usize,
    ) -> Result<(Vec<Value>, usize)> {
        let mut out = Vec::new();
        let mut rest = ids;
        while !rest.is_empty() {
            let n = chunk.min(rest.len());
            match self
                .call(
                    L3_PLUGIN_TOPIC,
                    "sync_routers",
                    "1.0",
                    json!({"host": self.host, "router_ids": rest[..n]}),
                )
                .await
            {
                Ok(v) => {
                    out.extend(router_dicts(&v)?);
                    rest = &rest[n..];
                }
                Err(CallError::Timeout { .. }) if chunk > SYNC_CHUNK_MIN => {
                    chunk = (chunk / 2).max(SYNC_CHUNK_MIN);
                    tracing::warn!(
                        chunk,
                        "sync_routers timed out: retrying with smaller chunks"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((out, chunk))
    }

    /// Reports floating IP statuses of a router.
    pub async fn update_floatingip_statuses(
        &self,
        router_id: &str,
        statuses: &Map<String, Value>,
    ) -> Result<()> {
        self.call(
            L3_PLUGIN_TOPIC,
            "update_floatingip_statuses",
            "1.1",
            json!({"router_id": router_id, "fip_statuses": statuses}),
        )
        .await?;
        Ok(())
    }

    /// The network dict (provider attributes included).
    pub async fn get_network_details(&self, network_id: &str) -> Result<Value> {
        let args = json!({"network": network_id, "agent_id": format!("router-ctl-{}", self.host), "host": self.host});
        let r = self
            .call(PLUGIN_TOPIC, "get_network_details", "1.6", args)
            .await?;
        match r {
            Value::Object(_) => Ok(r),
            other => Err(anyhow!(
                "get_network_details {network_id}: {other} is not a network"
            )),
        }
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|i| i.as_str().map(str::to_string))
        .collect()
}

/// The list of router dicts `sync_routers` answers (a JSON string of it is read too).
fn router_dicts(v: &Value) -> Result<Vec<Value>> {
    let v = match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| anyhow!("sync_routers: a string that is not JSON: {e}"))?,
        other => other.clone(),
    };
    match v {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        other => Err(anyhow!(
            "sync_routers: {} is not a list of routers",
            other.to_string().chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_routers_answers_as_lists_or_json_strings() {
        assert_eq!(
            router_dicts(&json!([{"id": "a"}])).unwrap(),
            vec![json!({"id": "a"})]
        );
        assert_eq!(
            router_dicts(&json!("[{\"id\": \"b\"}]")).unwrap(),
            vec![json!({"id": "b"})]
        );
        assert!(router_dicts(&json!(null)).unwrap().is_empty());
        assert!(router_dicts(&json!({"id": "a"})).is_err());
        assert_eq!(
            strings(&json!(["x", "y"])),
            Some(vec!["x".to_string(), "y".to_string()])
        );
        assert_eq!(strings(&json!(["x", 1])), None);
    }
}
