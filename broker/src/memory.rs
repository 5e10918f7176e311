//! The in-process broker of a single node.

use crate::presence::{DynPresence, MemoryPresence, memory::SharedState};
use crate::{
    Broker, BrokerError, DELIVERY_QUEUE, Delivery, Subscription, SubscriptionControl, Topic,
    WindowSettings, count_dropped,
};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashSet;
use shared::RoomId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;

/// Delivers each publish to every subscription that holds its topic,
/// without blocking the publisher.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    subscribers: Arc<RwLock<Vec<Arc<MemorySubscriber>>>>,
    presence: SharedState,
    windows: Arc<Mutex<Windows>>,
    guard: Arc<crate::guard::MemoryGuard>,
}

/// Each room's recent events, in process (the single node's window).
#[derive(Default)]
struct Windows {
    settings: WindowSettings,
    rooms: HashMap<RoomId, RoomWindow>,
    /// Rooms quiet for longer than the age are dropped at most this often.
    last_sweep: Option<Instant>,
}

struct RoomWindow {
    /// (seq, payload), ascending.
    events: VecDeque<(i64, Bytes)>,
    touched: Instant,
}

impl Windows {
    fn append(&mut self, room: RoomId, seq: i64, payload: Bytes) {
        let now = Instant::now();
        let age = self.settings.age;
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= age / 4)
        {
            self.rooms
                .retain(|_, w| now.duration_since(w.touched) < age);
            self.last_sweep = Some(now);
        }
        let window = self.rooms.entry(room).or_insert_with(|| RoomWindow {
            events: VecDeque::new(),
            touched: now,
        });
        window.touched = now;
        // Events normally come in order; one that is late goes in its place.
        let at = window.events.partition_point(|(s, _)| *s < seq);
        if window.events.get(at).is_some_and(|(s, _)| *s == seq) {
            return;
        }
        window.events.insert(at, (seq, payload));
        while window.events.len() > self.settings.events {
            window.events.pop_front();
        }
    }

    fn range(&self, room: RoomId, after: i64, to: i64) -> Option<Vec<Bytes>> {
        let window = self.rooms.get(&room)?;
        if window.touched.elapsed() >= self.settings.age {
            return None;
        }
        let start = window.events.partition_point(|(s, _)| *s <= after);
        let mut payloads = Vec::new();
        for (expected, (seq, payload)) in (after + 1..=to).zip(window.events.range(start..)) {
            if *seq != expected {
                return None;
            }
            payloads.push(payload.clone());
        }
        (payloads.len() as i64 == to - after).then_some(payloads)
    }
}

struct MemorySubscriber {
    topics: DashSet<Topic>,
    /// Taken on close, which ends the delivery stream.
    tx: Mutex<Option<mpsc::Sender<Delivery>>>,
}

impl MemorySubscriber {
    fn deliver(&self, delivery: Delivery) {
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().is_some_and(|tx| tx.try_send(delivery).is_ok()),
            Err(_) => false,
        };
        if !sent {
            count_dropped(1);
        }
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker whose rooms keep windows of `window`.
    pub fn with_window(window: WindowSettings) -> Self {
        let broker = Self::default();
        if let Ok(mut windows) = broker.windows.lock() {
            windows.settings = window;
        }
        broker
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<(), BrokerError> {
        let subscribers = self
            .subscribers
            .read()
            .map_err(|_| BrokerError::Unavailable("poisoned".into()))?;
        for sub in subscribers.iter().filter(|s| s.topics.contains(&topic)) {
            sub.deliver(Delivery::Message {
                topic,
                payload: payload.clone(),
            });
        }
        Ok(())
    }

    async fn publish_event(
        &self,
        room: RoomId,
        seq: i64,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        {
            let mut windows = self
                .windows
                .lock()
                .map_err(|_| BrokerError::Unavailable("poisoned".into()))?;
            if windows.settings.events > 0 {
                windows.append(room, seq, payload.clone());
            }
        }
        self.publish(Topic::Room(room), payload).await
    }

    async fn window_range(
        &self,
        room: RoomId,
        after: i64,
        to: i64,
    ) -> Result<Option<Vec<Bytes>>, BrokerError> {
        if to <= after {
            return Ok(Some(Vec::new()));
        }
        let windows = self
            .windows
            .lock()
            .map_err(|_| BrokerError::Unavailable("poisoned".into()))?;
        Ok(windows.range(room, after, to))
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let (tx, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        let sub = Arc::new(MemorySubscriber {
            topics: DashSet::new(),
            tx: Mutex::new(Some(tx)),
        });
        self.subscribers
            .write()
            .map_err(|_| BrokerError::Unavailable("poisoned".into()))?
            .push(sub.clone());
        Ok(Subscription {
            control: Arc::new(MemoryControl {
                broker: self.clone(),
                sub,
            }),
            deliveries,
        })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn presence(&self) -> DynPresence {
        Arc::new(MemoryPresence::new(self.clone(), self.presence.clone()))
    }

    fn login_guard(&self) -> crate::guard::DynLoginGuard {
        self.guard.clone()
    }

    async fn close(&self) {
        if let Ok(mut subs) = self.subscribers.write() {
            for sub in subs.drain(..) {
                if let Ok(mut tx) = sub.tx.lock() {
                    tx.take();
                }
            }
        }
    }
}

struct MemoryControl {
    broker: MemoryBroker,
    sub: Arc<MemorySubscriber>,
}

#[async_trait]
impl SubscriptionControl for MemoryControl {
    async fn add(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        for t in topics {
            self.sub.topics.insert(*t);
        }
        Ok(())
    }

    async fn remove(&self, topics: &[Topic]) -> Result<(), BrokerError> {
        for t in topics {
            self.sub.topics.remove(t);
        }
        Ok(())
    }

    async fn close(&self) {
        if let Ok(mut subs) = self.broker.subscribers.write() {
            subs.retain(|s| !Arc::ptr_eq(s, &self.sub));
        }
        if let Ok(mut tx) = self.sub.tx.lock() {
            tx.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::UserId;

    #[tokio::test]
    async fn the_window_serves_only_whole_ranges() {
        let broker = MemoryBroker::with_window(WindowSettings {
            events: 3,
            age: std::time::Duration::from_secs(60),
        });
        let room = RoomId(1);
        for seq in [1, 2, 4, 3, 5] {
            broker
                .publish_event(room, seq, Bytes::from(seq.to_string()))
                .await
                .unwrap();
        }
        // 1 and 2 were trimmed (three kept); 3 came late and went in its place.
        let got = broker.window_range(room, 2, 5).await.unwrap();
        assert_eq!(
            got,
            Some(vec![Bytes::from("3"), Bytes::from("4"), Bytes::from("5")])
        );
        assert_eq!(
            broker.window_range(room, 1, 5).await.unwrap(),
            None,
            "trimmed"
        );
        assert_eq!(
            broker.window_range(room, 4, 6).await.unwrap(),
            None,
            "not yet"
        );
        assert_eq!(broker.window_range(RoomId(2), 0, 1).await.unwrap(), None);
        assert_eq!(broker.window_range(room, 5, 5).await.unwrap(), Some(vec![]));
    }

    #[tokio::test]
    async fn only_subscribed_topics_are_delivered() {
        let broker = MemoryBroker::new();
        let mut sub = broker.subscribe().await.unwrap();
        sub.control.add(&[Topic::Room(RoomId(1))]).await.unwrap();
        broker
            .publish(Topic::Room(RoomId(2)), Bytes::from_static(b"no"))
            .await
            .unwrap();
        broker
            .publish(Topic::Room(RoomId(1)), Bytes::from_static(b"yes"))
            .await
            .unwrap();
        sub.control.remove(&[Topic::Room(RoomId(1))]).await.unwrap();
        broker
            .publish(Topic::Room(RoomId(1)), Bytes::from_static(b"late"))
            .await
            .unwrap();
        broker
            .publish(Topic::User(UserId(1)), Bytes::from_static(b"no"))
            .await
            .unwrap();
        sub.control.close().await;
        let mut got = vec![];
        while let Some(d) = sub.deliveries.recv().await {
            got.push(d);
        }
        assert_eq!(
            got,
            vec![Delivery::Message {
                topic: Topic::Room(RoomId(1)),
                payload: Bytes::from_static(b"yes")
            }]
        );
    }
}
