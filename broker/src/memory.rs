//! The in-process broker of a single node.

use crate::presence::{DynPresence, MemoryPresence, memory::SharedState};
use crate::{
    Broker, BrokerError, DELIVERY_QUEUE, Delivery, Subscription, SubscriptionControl, Topic,
    count_dropped,
};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashSet;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// Delivers each publish to every subscription that holds its topic,
/// without blocking the publisher.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    subscribers: Arc<RwLock<Vec<Arc<MemorySubscriber>>>>,
    presence: SharedState,
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
    use shared::{RoomId, UserId};

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
