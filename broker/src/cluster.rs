//! A node's subscription on a Redis Cluster: sharded pub/sub that follows
//! the cluster as it changes.
//!
//! Each topic is a shard channel (`{<prefix>room:<id>}`, see
//! [`crate::keys`]) SSUBSCRIBEd on the master that owns its slot; SSUBSCRIBE
//! takes channels of one slot at a time, so a batch is split by slot.
//!
//! A cluster moves slots under a subscription: a failover makes a replica
//! the master, resharding hands slots to another master, a restarted node
//! comes back empty. Redis then drops the shard channels of the slots a node
//! lost (it sends a `sunsubscribe` notice, which fred does not pass on), and
//! publishes go to the new owner, where nobody listens. So a **watcher**
//! probes the slot map as every master sees it (CLUSTER SLOTS on each,
//! through the publishing pool) every [`PROBE_INTERVAL`]; when it changed,
//! it replaces the subscriber client
//! with a fresh one (connected to the masters as they are now), SSUBSCRIBEs
//! every topic again, and reports [`Delivery::Reconnected`], so gateways
//! recover what was published meanwhile from the store by seq, as after
//! any reconnection. The old client is closed first: a topic is never
//! subscribed twice (no duplicate deliveries), and what falls between is
//! recovered by seq.
//!
//! A connection that drops without the slot map changing (a node restarted
//! in place) is restored by the client: fred reconnects, and a
//! **resubscriber** then SSUBSCRIBEs every shard channel the client tracks,
//! slot by slot, and reports [`Delivery::Reconnected`] once they are
//! subscribed, so the gap fill that follows misses nothing published
//! before. fred's own `manage_subscriptions` is not used: in fred 10.1 it
//! sends `SUBSCRIBE` first even with no classic channel, Redis refuses a
//! SUBSCRIBE without arguments, and fred stops there, before the shard
//! channels, so after a reconnection the node heard nothing more.
//!
//! How long delivery may stall: Redis's failure detection (for a dead
//! master: `cluster-node-timeout` plus the replica's election; nothing for
//! a manual failover or a slot move), then at most one [`PROBE_INTERVAL`],
//! then a client's connect and one SSUBSCRIBE per slot of the node's topics,
//! then the gateway's gap fill from the store.
//!
//! State: the subscriber client and the set of topics live behind one async
//! mutex, taken by `add`/`remove` (called by the gateway's one subscriptions
//! task, in order) and by the watcher's rebuild, so a rebuild never misses
//! a topic added meanwhile; nothing else waits on it.

use crate::keys::{Keys, slot};
use crate::redis::{builder, forward, unavailable};
use crate::{BrokerError, DELIVERY_QUEUE, Delivery, Subscription, SubscriptionControl, Topic};
use async_trait::async_trait;
use fred::clients::{Pool, SubscriberClient};
use fred::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// How often a subscription checks the cluster's slot map. One CLUSTER
/// SLOTS per gateway node each time (a few hundred bytes for a cluster of
/// a few masters); it bounds how long a moved slot goes unnoticed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe may take before it is skipped (the next one retries).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a node's subscription on a cluster.
pub(crate) async fn subscribe(
    config: &Config,
    keys: Keys,
    probe: Pool,
) -> Result<Subscription, BrokerError> {
    let (tx, deliveries) = mpsc::channel(DELIVERY_QUEUE);
    let first = Connected::open(config, &keys, tx.clone()).await?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        keys,
        tx: std::sync::Mutex::new(Some(tx)),
        state: Mutex::new(State {
            connected: Some(first),
            topics: BTreeSet::new(),
        }),
    });
    let map = slot_map(&probe).await.ok();
    let watcher = tokio::spawn(watch(shared.clone(), probe, map));
    Ok(Subscription {
        control: Arc::new(ClusterControl {
            shared,
            watcher: std::sync::Mutex::new(Some(watcher)),
        }),
        deliveries,
    })
}

struct Shared {
    config: Config,
    keys: Keys,
    /// The node's delivery queue, shared by every client's forwarder;
    /// dropped on close, so the delivery stream ends.
    tx: std::sync::Mutex<Option<mpsc::Sender<Delivery>>>,
    state: Mutex<State>,
}

impl Shared {
    fn sender(&self) -> Option<mpsc::Sender<Delivery>> {
        self.tx.lock().ok().and_then(|tx| tx.clone())
    }
}

struct State {
    /// `None` once closed.
    connected: Option<Connected>,
    /// Every topic the node asked for.
    topics: BTreeSet<Topic>,
}

/// A subscriber client with its resubscriber and forwarder tasks.
struct Connected {
    client: SubscriberClient,
    tasks: Vec<JoinHandle<()>>,
}

impl Connected {
    async fn open(
        config: &Config,
        keys: &Keys,
        tx: mpsc::Sender<Delivery>,
    ) -> Result<Self, BrokerError> {
        let client = builder(config)
            .build_subscriber_client()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        client.init().await.map_err(unavailable)?;
        let resubscriber = tokio::spawn(resubscribe(
            client.clone(),
            client.reconnect_rx(),
            tx.clone(),
        ));
        let forwarder = tokio::spawn(forward(
            client.message_rx(),
            client.reconnect_rx(),
            keys.clone(),
            tx,
        ));
        Ok(Self {
            client,
            tasks: vec![resubscriber, forwarder],
        })
    }

    async fn close(self) {
        let _ = self.client.quit().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// After each reconnection of `client`, SSUBSCRIBEs every shard channel it
/// tracks (one SSUBSCRIBE per slot), then reports a reconnection: the
/// gateway's gap fill then starts after the channels are live again. (The
/// forwarder reports the reconnection at once too; that earlier fill may
/// run before the channels are back, this one closes the gap.)
async fn resubscribe(
    client: SubscriberClient,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
    tx: mpsc::Sender<Delivery>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match reconnects.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        // Until it succeeds: a reconnection during a failover can reach a
        // node that no longer owns a slot. (If the slot map changed, the
        // probe replaces this client meanwhile, which ends this task.)
        loop {
            match resubscribe_all(&client).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing again after a reconnection failed; retrying");
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
            }
        }
        if tx.send(Delivery::Reconnected).await.is_err() {
            return;
        }
    }
}

async fn resubscribe_all(client: &SubscriberClient) -> Result<(), Error> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in client.tracked_shard_channels() {
        groups
            .entry(slot(&channel))
            .or_default()
            .push(channel.to_string());
    }
    for (_, channels) in groups {
        client.ssubscribe(channels).await?;
    }
    Ok(())
}

/// Channels grouped by hash slot: what one SSUBSCRIBE may take.
fn by_slot(keys: &Keys, topics: &[Topic]) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for topic in topics {
        let channel = keys.channel(*topic);
        groups.entry(slot(&channel)).or_default().push(channel);
    }
    groups
}

async fn ssubscribe(
    client: &SubscriberClient,
    keys: &Keys,
    topics: &[Topic],
) -> Result<(), BrokerError> {
    for (_, channels) in by_slot(keys, topics) {
        client.ssubscribe(channels).await.map_err(unavailable)?;
    }
    Ok(())
}

/// The cluster's slot map as every master sees it, as comparable data.
///
/// Every master is asked, not one: while a slot moves the masters learn of
/// it one after the other (the new owner first, the old one last, when it
/// drops the slot's shard channels), and a rebuild made on the first
/// change could still subscribe on the old owner. Each master's change of
/// view is a change of the map, so the last rebuild comes after the last
/// master learned.
async fn slot_map(probe: &Pool) -> Result<Vec<String>, BrokerError> {
    let client = probe.next();
    let mut masters = client
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default();
    masters.sort();
    let mut map = Vec::new();
    for master in masters {
        let slots: Value = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.with_cluster_node(master.clone()).cluster_slots(),
        )
        .await
        .map_err(|_| BrokerError::Unavailable("CLUSTER SLOTS timed out".into()))?
        .map_err(unavailable)?;
        map.push(format!("as {master}:"));
        map.extend(parse_slots(slots));
    }
    Ok(map)
}

/// CLUSTER SLOTS as sorted lines: each range with its master.
fn parse_slots(slots: Value) -> Vec<String> {
    let mut map = Vec::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            // [start, end, [host, port, id, ...], replicas...]
            let start = fields.first().and_then(|v| v.as_i64()).unwrap_or(-1);
            let end = fields.get(1).and_then(|v| v.as_i64()).unwrap_or(-1);
            let master = match fields.get(2) {
                Some(Value::Array(m)) => m
                    .iter()
                    .map(|v| v.as_string().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            map.push(format!("{start}-{end} {master}"));
        }
    }
    map.sort();
    map
}

/// Probes the slot map; rebuilds the subscription when it changed.
async fn watch(shared: Arc<Shared>, probe: Pool, mut known: Option<Vec<String>>) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let map = match slot_map(&probe).await {
            Ok(map) => map,
            Err(e) => {
                tracing::debug!(error = %e, "probing the cluster's slot map failed");
                continue;
            }
        };
        if known.as_ref() == Some(&map) {
            continue;
        }
        if known.is_some() {
            tracing::info!("the Redis Cluster's slot map changed; subscribing again");
        }
        match rebuild(&shared).await {
            Ok(true) => known = Some(map),
            // Closed.
            Ok(false) => return,
            Err(e) => {
                // Tried again at the next probe.
                tracing::warn!(error = %e, "subscribing again after a cluster change failed");
                known = None;
            }
        }
    }
}

/// Replaces the subscriber client and subscribes every topic on the new
/// one. `Ok(false)` when the subscription is closed.
async fn rebuild(shared: &Shared) -> Result<bool, BrokerError> {
    let Some(tx) = shared.sender() else {
        return Ok(false);
    };
    let fresh = Connected::open(&shared.config, &shared.keys, tx.clone()).await?;
    let mut state = shared.state.lock().await;
    let Some(old) = state.connected.take() else {
        drop(state);
        fresh.close().await;
        return Ok(false);
    };
    old.close().await;
    let topics: Vec<Topic> = state.topics.iter().copied().collect();
    let result = ssubscribe(&fresh.client, &shared.keys, &topics).await;
    state.connected = Some(fresh);
    drop(state);
    // Whatever was published while no client listened is recovered by seq.
    if tx.send(Delivery::Reconnected).await.is_err() {
        return Ok(false);
    }
    result.map(|()| true)
}

struct ClusterControl {
    shared: Arc<Shared>,
    watcher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

#[async_trait]
impl SubscriptionControl for ClusterControl {
    async fn add(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let mut state = self.shared.state.lock().await;
        let Some(connected) = &state.connected else {
            return Err(BrokerError::Unavailable(
                "the subscription is closed".into(),
            ));
        };
        // Recorded once in place: the gateway retries a failed add itself.
        let result = ssubscribe(&connected.client, &self.shared.keys, topics).await;
        if result.is_ok() {
            state.topics.extend(topics.iter().copied());
        }
        result
    }

    async fn remove(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        let mut state = self.shared.state.lock().await;
        for topic in topics {
            state.topics.remove(topic);
        }
        let Some(connected) = &state.connected else {
            return Ok(());
        };
        for (_, channels) in by_slot(&self.shared.keys, topics) {
            connected
                .client
                .sunsubscribe(channels)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn close(&self) {
        if let Some(watcher) = self.watcher.lock().ok().and_then(|mut w| w.take()) {
            watcher.abort();
        }
        if let Ok(mut tx) = self.shared.tx.lock() {
            tx.take();
        }
        let connected = self.shared.state.lock().await.connected.take();
        if let Some(connected) = connected {
            let _ = connected.client.unsubscribe_all().await;
            connected.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::RoomId;

    #[test]
    fn a_batch_is_split_by_slot() {
        let keys = Keys::new("p:", true);
        let topics: Vec<Topic> = (0..50).map(|r| Topic::Room(RoomId(r))).collect();
        let groups = by_slot(&keys, &topics);
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 50);
        for (slot_of, channels) in groups {
            assert!(channels.iter().all(|c| slot(c) == slot_of));
        }
    }
}
