//! The event seam.
//!
//! The api publishes each event on a [`Topic`] (a room, or a user); each
//! gateway node holds one [`Subscription`] and subscribes to the topics its
//! local connections need, so events only travel to nodes with someone to
//! deliver them to. Two implementations:
//!
//! - [`RedisBroker`]: Redis pub/sub, for a cluster of api and gateway nodes,
//!   on one Redis server or on a Redis Cluster (sharded pub/sub; key and
//!   channel names in [`keys`]).
//! - [`MemoryBroker`]: in-process channels, for a single node.
//!
//! Both are lossy under overload in the same way (a node that falls too far
//! behind loses deliveries, counted in `broker_deliveries_dropped_total`);
//! gateways recover room events from the store by sequence number, so a lost
//! delivery costs latency, not data.

mod cluster;
pub mod guard;
pub mod keys;
mod memory;
pub mod presence;
mod redis;

pub use cluster::PROBE_INTERVAL as CLUSTER_PROBE_INTERVAL;
pub use memory::MemoryBroker;
pub use redis::RedisBroker;

use async_trait::async_trait;
use bytes::Bytes;
use shared::{RoomId, UserId};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Deliveries a node can have queued before the broker starts dropping
/// (and counting) them. About a second of a busy node's traffic.
pub const DELIVERY_QUEUE: usize = 65_536;

/// Where an event is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Every event of a room's timeline.
    Room(RoomId),
    /// Notices for every connection of one user.
    User(UserId),
}

/// What a node's subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Message {
        topic: Topic,
        payload: Bytes,
    },
    /// The connection to the broker was lost and is back, subscriptions
    /// restored; anything published meanwhile was not delivered.
    Reconnected,
    /// The node fell behind its subscription and some deliveries were
    /// dropped (room events come back by seq; user notices do not).
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker configuration: {0}")]
    Config(String),
}

/// Publishes events and opens subscriptions.
/// The recent window of each room's events (see [`Broker::window_range`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSettings {
    /// Most events kept per room; 0: no window.
    pub events: usize,
    /// A room's window is dropped after this long without an event.
    pub age: std::time::Duration,
}

impl WindowSettings {
    pub fn from_args(args: &shared::config::RedisArgs) -> Self {
        Self {
            events: args.window_events,
            age: args.window_age,
        }
    }
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self::from_args(&shared::config::RedisArgs::in_process())
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<(), BrokerError>;
    /// Publishes room event `seq` on the room's topic and keeps it in the
    /// room's recent window, in one round trip.
    async fn publish_event(
        &self,
        room: RoomId,
        seq: i64,
        payload: Bytes,
    ) -> Result<(), BrokerError>;
    /// The payloads of `room`'s events `after < seq <= to`, in order, when
    /// the window holds every one of them; `None` when it does not (never
    /// held, trimmed, expired, lost with a Redis restart, or a hole). The
    /// window is a cache: the database has everything.
    async fn window_range(
        &self,
        room: RoomId,
        after: i64,
        to: i64,
    ) -> Result<Option<Vec<Bytes>>, BrokerError>;
    /// Opens a node's subscription (its own connection, for Redis).
    async fn subscribe(&self) -> Result<Subscription, BrokerError>;
    /// Answers when the broker does (readiness probes).
    async fn ping(&self) -> Result<(), BrokerError>;
    /// A short name for logs: "redis" or "memory".
    fn kind(&self) -> &'static str;
    /// Presence kept where this broker keeps its state (see [`presence`]).
    fn presence(&self) -> presence::DynPresence;
    /// Login budgets kept where this broker keeps its state (see [`guard`]).
    fn login_guard(&self) -> guard::DynLoginGuard;
    async fn close(&self);
}

pub type DynBroker = Arc<dyn Broker>;

/// Changes what a subscription receives.
#[async_trait]
pub trait SubscriptionControl: Send + Sync + 'static {
    async fn add(&self, topics: &[Topic]) -> Result<(), BrokerError>;
    async fn remove(&self, topics: &[Topic]) -> Result<(), BrokerError>;
    /// Ends the subscription: the delivery stream ends.
    async fn close(&self);
}

/// A node's subscription: control on one side, deliveries on the other.
pub struct Subscription {
    pub control: Arc<dyn SubscriptionControl>,
    pub deliveries: mpsc::Receiver<Delivery>,
}

/// Redis when a URL is given, else the in-process broker.
pub async fn connect(args: &shared::config::RedisArgs) -> Result<DynBroker, BrokerError> {
    let window = WindowSettings::from_args(args);
    let prefix = args.redis_prefix.as_str();
    Ok(match args.redis_url.as_deref() {
        Some(url) => Arc::new(RedisBroker::connect(url, prefix, window).await.map_err(
            |e| match e {
                BrokerError::Unavailable(why) => BrokerError::Unavailable(format!(
                    "Redis at {}: {why}",
                    shared::config::redact_url(url)
                )),
                other => other,
            },
        )?),
        None => Arc::new(MemoryBroker::with_window(window)),
    })
}

/// Describes the broker's metrics and registers them at zero, so they are
/// exported (and dashboards show 0, not "no data") before their first event.
/// Called by each service that subscribes, at start-up.
pub fn register_metrics() {
    metrics::describe_counter!(
        "broker_deliveries_dropped_total",
        "Broker messages dropped because a subscriber fell behind (recovered from the store by seq)"
    );
    metrics::counter!("broker_deliveries_dropped_total").increment(0);
}

fn count_dropped(n: u64) {
    metrics::counter!("broker_deliveries_dropped_total").increment(n);
}
