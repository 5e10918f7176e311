//! Redis pub/sub: the fan-out between nodes of a cluster.
//!
//! Channels are `{prefix}room:{id}` and `{prefix}user:{id}` (names in
//! [`crate::keys`]). Publishing goes through a small pool of multiplexed
//! connections; each subscription has its own connection, which fred
//! re-subscribes after a reconnect.
//!
//! On a Redis Cluster (a `redis-cluster://` URL) the same broker uses
//! sharded pub/sub: SPUBLISH reaches only the shard that owns the topic's
//! slot, and a subscription SSUBSCRIBEs on the masters owning its topics
//! ([`crate::cluster`] keeps it there while the cluster changes).
//!
//! While Redis is down, publishes and pings fail at once rather than
//! queueing until it is back (a post still commits; live delivery is
//! best-effort and recovered from the store), subscriptions wait for the
//! reconnection (bounded by the gateway), and every client keeps
//! reconnecting at least once a second, so service resumes by itself.

use crate::keys::Keys;
use crate::presence::{DynPresence, RedisPresence};
use crate::{
    Broker, BrokerError, DELIVERY_QUEUE, Delivery, Subscription, SubscriptionControl, Topic,
    WindowSettings, count_dropped,
};
use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Message;
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use shared::RoomId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Publishing connections. Commands are pipelined on each, so a few carry
/// tens of thousands of publishes a second.
const PUBLISH_POOL_SIZE: usize = 4;

/// fred's in-process queues (received pub/sub messages, and its event
/// channels, which share the setting), per client. The default (32)
/// overflows at once under fan-out load; the forwarder drains it into the
/// node's own queue within microseconds, so a few thousand is plenty, and
/// each slot of every channel is allocated up front.
const MESSAGE_BUFFER: usize = 4_096;

/// How long a command may go unanswered before fred treats the connection
/// as dead and reconnects.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);

/// Longest wait between two reconnection attempts to a Redis that is down.
/// An attempt costs a refused TCP connect, so once a second is nothing, and
/// a node is back in service within a second of Redis.
const RECONNECT_MAX_DELAY_MS: u32 = 1_000;

/// How long a publish may take before it is given up. A publish is
/// best-effort (the event is already committed, and gateways recover gaps
/// from the store), so a request must not wait on a Redis that is down:
/// while disconnected, publishes fail at once (fail-fast); this bounds one
/// sent to a connection that stopped answering.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisBroker {
    config: Config,
    keys: Keys,
    publisher: Pool,
    presence: Arc<RedisPresence>,
    guard: Arc<crate::guard::RedisGuard>,
    window: WindowSettings,
    /// event.lua: a room event's publish and window append in one round trip.
    publish_event: Script,
}

impl RedisBroker {
    /// Connects the publishing pool; fails if Redis does not answer.
    ///
    /// `url` is `redis://host:port` for one server, or
    /// `redis-cluster://host:port?node=host:port&node=...` (one or more
    /// seed nodes) for a Redis Cluster.
    pub async fn connect(
        url: &str,
        prefix: &str,
        window: WindowSettings,
    ) -> Result<Self, BrokerError> {
        let config = Config::from_url(url).map_err(|e| BrokerError::Config(e.to_string()))?;
        let clustered = config.server.is_clustered();
        if clustered && (prefix.contains('{') || prefix.contains('}')) {
            // The prefix is inside every name's hash tag: a brace would end
            // the tag early and put a room's keys in different slots.
            return Err(BrokerError::Config(format!(
                "PARLEY_REDIS_PREFIX {prefix:?} must not contain '{{' or '}}' on a Redis Cluster"
            )));
        }
        let publisher = builder(&config)
            .build_pool(PUBLISH_POOL_SIZE)
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        publisher.init().await.map_err(unavailable)?;
        let keys = Keys::new(prefix, clustered);
        Ok(Self {
            presence: Arc::new(RedisPresence::new(publisher.clone(), keys.clone())),
            guard: Arc::new(crate::guard::RedisGuard::new(
                publisher.clone(),
                keys.clone(),
            )),
            config,
            keys,
            publisher,
            window,
            publish_event: Script::from_lua(include_str!("event.lua")),
        })
    }

    /// The stream holding `room`'s recent window.
    pub fn window_key(&self, room: RoomId) -> String {
        self.keys.window(room)
    }

    /// The channel name of a topic.
    pub fn channel(&self, topic: Topic) -> String {
        self.keys.channel(topic)
    }

    /// Whether this broker runs on a Redis Cluster (sharded pub/sub).
    pub fn clustered(&self) -> bool {
        self.keys.clustered()
    }
}

pub(crate) fn builder(config: &Config) -> Builder {
    let mut builder = Builder::from_config(config.clone());
    builder
        .with_performance_config(|p| p.broadcast_channel_capacity = MESSAGE_BUFFER)
        .with_connection_config(|c| {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: Duration::from_secs(1),
            };
        })
        // Keep trying forever with capped backoff: a node without Redis
        // serves nothing live, and should come back by itself.
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            100,
            RECONNECT_MAX_DELAY_MS,
            2,
        ));
    builder
}

/// Options for a command that must not wait for a reconnection: it fails
/// at once while the client is disconnected (instead of being queued until
/// Redis is back), and after `timeout` otherwise.
pub(crate) fn fail_fast(timeout: Duration) -> Options {
    Options {
        fail_fast: true,
        timeout: Some(timeout),
        ..Options::default()
    }
}

/// Runs a script by its hash, sending the whole script (EVAL, which also
/// caches it) when Redis does not know it (a restarted or flushed Redis, or
/// a cluster node that never ran it).
///
/// Sent as a plain command, not with fred's `evalsha`: fred never pipelines
/// EVALSHA (it waits for each reply before the connection sends anything
/// else), which would cap a publishing connection at one event per round
/// trip. Our scripts are sent whole on NOSCRIPT, so pipelining them is safe.
///
/// On a cluster the command goes to the node owning the first key's slot
/// (every key of a script shares it; see [`crate::keys`]).
pub(crate) async fn evalsha<C: ClientLike, R: FromValue>(
    client: &C,
    script: &Script,
    keys: Vec<Value>,
    args: Vec<Value>,
) -> Result<R, Error> {
    let command = |head: Value| {
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(head);
        all.push(Value::from(keys.len() as i64));
        all.extend(keys.iter().cloned());
        all.extend(args.iter().cloned());
        all
    };
    let hash = match keys.first().and_then(|k| k.as_bytes()) {
        Some(key) => ClusterHash::Custom(fred::util::redis_keyslot(key)),
        None => ClusterHash::Random,
    };
    let evalsha = CustomCommand::new_static("EVALSHA", hash.clone(), false);
    match client
        .custom::<R, Value>(evalsha, command(Value::from(script.sha1().clone())))
        .await
    {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            let lua = script.lua().cloned().unwrap_or_default();
            let eval = CustomCommand::new_static("EVAL", hash, false);
            client.custom(eval, command(Value::from(lua))).await
        }
        other => other,
    }
}

pub(crate) fn unavailable(e: Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<(), BrokerError> {
        let client = self
            .publisher
            .next()
            .with_options(&fail_fast(PUBLISH_TIMEOUT));
        let _: i64 = if self.keys.clustered() {
            client.spublish(self.channel(topic), payload).await
        } else {
            client.publish(self.channel(topic), payload).await
        }
        .map_err(unavailable)?;
        Ok(())
    }

    async fn publish_event(
        &self,
        room: RoomId,
        seq: i64,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let client = self
            .publisher
            .next()
            .with_options(&fail_fast(PUBLISH_TIMEOUT));
        let _: i64 = evalsha(
            &client,
            &self.publish_event,
            vec![self.window_key(room).into()],
            vec![
                self.channel(Topic::Room(room)).into(),
                seq.into(),
                payload.into(),
                (self.window.events as i64).into(),
                (self.window.age.as_millis() as i64).into(),
                if self.keys.clustered() {
                    "SPUBLISH"
                } else {
                    "PUBLISH"
                }
                .into(),
            ],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn window_range(
        &self,
        room: RoomId,
        after: i64,
        to: i64,
    ) -> Result<Option<Vec<Bytes>>, BrokerError> {
        if self.window.events == 0 || to <= after {
            return Ok((to <= after).then(Vec::new));
        }
        let entries: Vec<(String, std::collections::HashMap<String, Bytes>)> = self
            .publisher
            .next()
            .with_options(&fail_fast(PUBLISH_TIMEOUT))
            .xrange_values(self.window_key(room), after + 1, to, None)
            .await
            .map_err(unavailable)?;
        // Every seq of the range, each once, in order: anything else (a
        // trimmed start, a hole, an expired key) is not the window's to serve.
        let mut payloads = Vec::with_capacity(entries.len());
        for (expected, (id, mut fields)) in (after + 1..).zip(entries) {
            let seq = id.split('-').next().and_then(|s| s.parse::<i64>().ok());
            match (seq, fields.remove("e")) {
                (Some(seq), Some(payload)) if seq == expected => payloads.push(payload),
                _ => return Ok(None),
            }
        }
        Ok((payloads.len() as i64 == to - after).then_some(payloads))
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        if self.keys.clustered() {
            return crate::cluster::subscribe(
                &self.config,
                self.keys.clone(),
                self.publisher.clone(),
            )
            .await;
        }
        let client = builder(&self.config)
            .build_subscriber_client()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        client.init().await.map_err(unavailable)?;
        let (tx, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        let resubscriber = client.manage_subscriptions();
        let forwarder = tokio::spawn(forward(
            client.message_rx(),
            client.reconnect_rx(),
            self.keys.clone(),
            tx,
        ));
        Ok(Subscription {
            control: Arc::new(RedisControl {
                client,
                keys: self.keys.clone(),
                tasks: std::sync::Mutex::new(vec![resubscriber, forwarder]),
            }),
            deliveries,
        })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let _: String = self
            .publisher
            .next()
            .with_options(&fail_fast(shared::health::PROBE_TIMEOUT))
            .ping(None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn presence(&self) -> DynPresence {
        self.presence.clone()
    }

    fn login_guard(&self) -> crate::guard::DynLoginGuard {
        self.guard.clone()
    }

    async fn close(&self) {
        let _ = self.publisher.quit().await;
    }
}

/// Moves messages from fred's broadcast queue into the node's delivery queue,
/// and reports reconnections.
pub(crate) async fn forward(
    mut messages: broadcast::Receiver<Message>,
    mut reconnects: broadcast::Receiver<Server>,
    keys: Keys,
    tx: mpsc::Sender<Delivery>,
) {
    loop {
        tokio::select! {
            biased;
            message = messages.recv() => match message {
                Ok(message) => {
                    let Some(topic) = keys.parse_channel(&message.channel) else {
                        continue;
                    };
                    let payload = match message.value.convert::<Bytes>() {
                        Ok(p) => p,
                        Err(_) => continue,
                    };
                    if tx.send(Delivery::Message { topic, payload }).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "the node fell behind Redis; lost deliveries will be recovered from the store");
                    count_dropped(n);
                    // A revocation notice may be among them: the gateway
                    // stops trusting what it learnt from notices.
                    if tx.send(Delivery::Lost).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            server = reconnects.recv() => match server {
                Ok(server) => {
                    tracing::info!(%server, "reconnected to Redis");
                    if tx.send(Delivery::Reconnected).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

struct RedisControl {
    client: SubscriberClient,
    keys: Keys,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisControl {
    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics.iter().map(|t| self.keys.channel(*t)).collect()
    }
}

#[async_trait]
impl SubscriptionControl for RedisControl {
    async fn add(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.client
            .subscribe(self.channels(topics))
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        self.client
            .unsubscribe(self.channels(topics))
            .await
            .map_err(unavailable)
    }

    async fn close(&self) {
        let _ = self.client.unsubscribe_all().await;
        let _ = self.client.quit().await;
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}
