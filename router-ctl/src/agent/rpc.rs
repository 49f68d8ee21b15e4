//! One AMQP connection to RabbitMQ as oslo.messaging's rabbit driver lays it out: the agent's
//! consumers on `l3_agent`, `l3_agent.<host>` (topic exchange `neutron`) and an exclusive
//! `l3_agent_fanout_<hex>` (fanout exchange `l3_agent_fanout`); a reply queue `reply_<hex>`
//! for the calls it makes; publishing on a channel of its own.
//!
//! Exchanges and queues are declared with oslo's defaults (non-durable, the fanout exchange
//! auto-deleted), since RabbitMQ refuses a declaration that differs from an existing one.
//! Every delivery is acknowledged once read, malformed or not; a call the agent receives is
//! answered at once (its work is queued), so neutron-server never waits on a router being
//! built. When the connection dies, `closed` resolves and the session is dropped: the caller
//! reconnects with a new one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use super::{
    envelope::{self, Failure, Incoming, ReplyPart},
    notify,
    transport::Endpoint,
};

/// oslo.messaging's control exchange for Neutron.
pub const CONTROL_EXCHANGE: &str = "neutron";
/// The topic the L3 agents listen on.
pub const L3_AGENT_TOPIC: &str = "l3_agent";
/// How long connecting (TCP and AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight per consumer channel.
const PREFETCH: u16 = 64;

/// Why a call got no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{method}: no reply within {} s", timeout.as_secs())]
    Timeout { method: String, timeout: Duration },
    #[error("{method}: neutron-server answered with {failure}")]
    Remote { method: String, failure: Failure },
    #[error("{method}: {source:#}")]
    Transport {
        method: String,
        source: anyhow::Error,
    },
}

type Waiters = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ReplyPart>>>>;

/// A live connection with its consumers.
pub struct Session {
    conn: Connection,
    publish: Channel,
    reply_q: String,
    waiters: Waiters,
    dead: watch::Receiver<Option<String>>,
    /// The broker, password masked.
    pub broker: String,
}

impl Session {
    /// Connects to `ep`, declares the agent's queues and starts consuming: what
    /// neutron-server sends goes to `inbound`.
    pub async fn open(
        ep: &Endpoint,
        host: &str,
        inbound: mpsc::UnboundedSender<Incoming>,
    ) -> Result<Self> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("router-ctl-agent:{host}").into());
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&ep.uri, props))
            .await
            .map_err(|_| anyhow!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("{e}"))?;
        let publish = conn.create_channel().await.context("opening a channel")?;
        let consume = conn.create_channel().await.context("opening a channel")?;
        consume
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
        declare_exchange(&consume, CONTROL_EXCHANGE, ExchangeKind::Topic, false).await?;
        let fanout = format!("{L3_AGENT_TOPIC}_fanout");
        declare_exchange(&consume, &fanout, ExchangeKind::Fanout, true).await?;
        let (dead_tx, dead) = watch::channel(None);
        let dead_tx = Arc::new(dead_tx);
        let host_topic = format!("{L3_AGENT_TOPIC}.{host}");
        for topic in [L3_AGENT_TOPIC, host_topic.as_str()] {
            declare_queue(&consume, topic, false).await?;
            bind(&consume, topic, CONTROL_EXCHANGE, topic).await?;
        }
        let fanout_q = format!("{fanout}_{}", envelope::new_id());
        declare_queue(&consume, &fanout_q, true).await?;
        bind(&consume, &fanout_q, &fanout, L3_AGENT_TOPIC).await?;
        let reply_q = format!("reply_{}", envelope::new_id());
        declare_queue(&consume, &reply_q, true).await?;

        let waiters: Waiters = Arc::default();
        for q in [L3_AGENT_TOPIC, host_topic.as_str(), fanout_q.as_str()] {
            let consumer = consume
                .basic_consume(
                    q.into(),
                    format!("router-ctl-{q}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {q}"))?;
            tokio::spawn(serve_queue(
                consumer,
                q.to_string(),
                publish.clone(),
                inbound.clone(),
                dead_tx.clone(),
            ));
        }
        let replies = consume
            .basic_consume(
                reply_q.as_str().into(),
                "router-ctl-replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consuming the reply queue")?;
        tokio::spawn(serve_replies(replies, waiters.clone(), dead_tx));
        Ok(Self {
            conn,
            publish,
            reply_q,
            waiters,
            dead,
            broker: ep.masked.clone(),
        })
    }

    /// Resolves once the connection is gone (with why).
    pub async fn closed(&self) -> String {
        let mut dead = self.dead.clone();
        match dead.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => "the consumers ended".into(),
        }
    }

    /// Calls `method` on `topic` and waits up to `timeout` for its result. Heartbeats
    /// (`ending: false` and no result) only show the server is alive.
    pub async fn call(
        &self,
        topic: &str,
        method: &str,
        version: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let msg_id = envelope::new_id();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock_waiters().insert(msg_id.clone(), tx);
        let req = envelope::request(
            method,
            version,
            args,
            &format!("req-{}", uuid::Uuid::new_v4()),
            Some((&msg_id, &self.reply_q)),
        );
        let ttl = Some(timeout.as_millis().to_string());
        let sent = self.publish_to(CONTROL_EXCHANGE, topic, &req, ttl).await;
        let res = match sent {
            Err(e) => Err(CallError::Transport {
                method: method.into(),
                source: e,
            }),
            Ok(()) => match tokio::time::timeout(timeout, collect_reply(&mut rx)).await {
                Err(_) => Err(CallError::Timeout {
                    method: method.into(),
                    timeout,
                }),
                Ok(Err(e)) => Err(CallError::Transport {
                    method: method.into(),
                    source: e,
                }),
                Ok(Ok(Err(failure))) => Err(CallError::Remote {
                    method: method.into(),
                    failure,
                }),
                Ok(Ok(Ok(v))) => Ok(v),
            },
        };
        self.lock_waiters().remove(&msg_id);
        res
    }

    /// Casts `method` on `topic` (no reply).
    pub async fn cast(&self, topic: &str, method: &str, version: &str, args: Value) -> Result<()> {
        let req = envelope::request(
            method,
            version,
            args,
            &format!("req-{}", uuid::Uuid::new_v4()),
            None,
        );
        self.publish_to(CONTROL_EXCHANGE, topic, &req, None).await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        key: &str,
        msg: &Map<String, Value>,
        expiration: Option<String>,
    ) -> Result<()> {
        publish(&self.publish, exchange, key, msg, expiration).await
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<ReplyPart>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection (the exclusive queues go with it).
    pub async fn close(&self) {
        let _ = self.conn.close(200, "agent stopping".into()).await;
    }
}

/// Waits for the parts of one reply: the final result, or the failure.
async fn collect_reply(
    rx: &mut mpsc::UnboundedReceiver<ReplyPart>,
) -> Result<Result<Value, Failure>> {
    let mut result = Value::Null;
    while let Some(part) = rx.recv().await {
        if let Some(f) = part.failure {
            return Ok(Err(f));
        }
        if let Some(r) = part.result {
            result = r;
        }
        if part.ending {
            return Ok(Ok(result));
        }
    }
    Err(anyhow!("the connection closed before the reply came"))
}

async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    msg: &Map<String, Value>,
    expiration: Option<String>,
) -> Result<()> {
    let mut props = BasicProperties::default()
        .with_content_type(envelope::CONTENT_TYPE.into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2);
    if let Some(e) = expiration {
        props = props.with_expiration(e.into());
    }
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        &envelope::encode(msg),
        props,
    )
    .await
    .with_context(|| format!("publishing to {exchange:?}/{key}"))?
    .await
    .with_context(|| format!("publishing to {exchange:?}/{key}"))?;
    Ok(())
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    auto_delete: bool,
) -> Result<()> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: false,
            auto_delete,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring exchange {name}"))
}

/// A non-durable queue; `exclusive` ones (fanout, replies) go with the connection.
async fn declare_queue(ch: &Channel, name: &str, exclusive: bool) -> Result<()> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: false,
            exclusive,
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring queue {name}"))?;
    Ok(())
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<()> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("binding {queue} to {exchange}"))
}

/// Reads one of the agent's queues: acknowledges every delivery, answers calls, hands the
/// requests on. Marks the session dead when the consumer ends.
async fn serve_queue(
    mut consumer: lapin::Consumer,
    queue: String,
    publish_ch: Channel,
    inbound: mpsc::UnboundedSender<Incoming>,
    dead: Arc<watch::Sender<Option<String>>>,
) {
    let why = loop {
        let delivery = match consumer.next().await {
            None => break format!("consumer of {queue} ended"),
            Some(Err(e)) => break format!("consumer of {queue}: {e}"),
            Some(Ok(d)) => d,
        };
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            break format!("acknowledging on {queue}: {e}");
        }
        let incoming =
            match envelope::decode(&delivery.data).and_then(|m| envelope::decode_incoming(&m)) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(queue, "dropped a malformed message: {e:#}");
                    continue;
                }
            };
        if let Some((msg_id, reply_q)) = &incoming.reply {
            let answer = if notify::METHODS.contains(&incoming.method.as_str()) {
                Ok(Value::Null)
            } else {
                Err(Failure {
                    class: "NoSuchMethod".into(),
                    module: "oslo_messaging.rpc.dispatcher".into(),
                    message: format!("Endpoint does not support RPC method {}", incoming.method),
                })
            };
            let reply = envelope::reply(msg_id, answer);
            if let Err(e) = publish(&publish_ch, "", reply_q, &reply, None).await {
                tracing::warn!(queue, method = incoming.method, "answering the call: {e:#}");
            }
        }
        if inbound.send(incoming).is_err() {
            break "the agent stopped".into();
        }
    };
    dead.send_replace(Some(why));
}

/// Reads the reply queue and hands each part to the call waiting for it.
async fn serve_replies(
    mut consumer: lapin::Consumer,
    waiters: Waiters,
    dead: Arc<watch::Sender<Option<String>>>,
) {
    let why = loop {
        let delivery = match consumer.next().await {
            None => break "reply consumer ended".to_string(),
            Some(Err(e)) => break format!("reply consumer: {e}"),
            Some(Ok(d)) => d,
        };
        let part = match envelope::decode(&delivery.data).and_then(|m| envelope::decode_reply(&m)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("dropped a malformed reply: {e:#}");
                continue;
            }
        };
        let waiter = waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&part.msg_id)
            .cloned();
        match waiter {
            Some(w) => {
                let _ = w.send(part);
            }
            None => tracing::debug!(msg_id = part.msg_id, "reply to a call no longer waited for"),
        }
    };
    dead.send_replace(Some(why));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn part(result: Option<Value>, ending: bool) -> ReplyPart {
        ReplyPart {
            msg_id: "m".into(),
            result,
            failure: None,
            ending,
        }
    }

    #[tokio::test]
    async fn heartbeats_are_skipped_and_old_two_part_replies_keep_the_result() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(part(None, false)).unwrap(); // heartbeat
        tx.send(part(Some(json!(["r1"])), false)).unwrap(); // old style: result, then ending
        tx.send(part(None, true)).unwrap();
        assert_eq!(
            collect_reply(&mut rx).await.unwrap().unwrap(),
            json!(["r1"])
        );
        tx.send(part(Some(json!("alive")), true)).unwrap();
        assert_eq!(
            collect_reply(&mut rx).await.unwrap().unwrap(),
            json!("alive")
        );
        let f = Failure {
            class: "RemoteError".into(),
            module: "m".into(),
            message: "boom".into(),
        };
        tx.send(ReplyPart {
            failure: Some(f.clone()),
            ..part(None, true)
        })
        .unwrap();
        assert_eq!(collect_reply(&mut rx).await.unwrap().unwrap_err(), f);
        drop(tx);
        assert!(collect_reply(&mut rx).await.is_err(), "connection gone");
    }
}
