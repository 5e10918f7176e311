//! Applies the node's subscription decisions to the broker, in order.

use super::SUBSCRIBE_TIMEOUT;
use super::shard::ShardCmd;
use broker::{SubscriptionControl, Topic};
use dashmap::DashSet;
use shared::RoomId;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Commands applied in one round at most; consecutive adds (or removes)
/// among them go to the broker as one command.
const BATCH: usize = 512;

/// Who learns that a subscription is in place.
pub(crate) enum Reply {
    Once(oneshot::Sender<bool>),
    Shard(mpsc::Sender<ShardCmd>, RoomId),
}

impl Reply {
    async fn send(self, ok: bool) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(ok);
            }
            Reply::Shard(tx, room) => {
                let _ = tx.send(ShardCmd::Subscribed { room, ok }).await;
            }
        }
    }
}

pub(crate) enum SubCmd {
    Add(Topic, Reply),
    Remove(Topic),
}

pub(crate) async fn run(
    control: Arc<dyn SubscriptionControl>,
    mut rx: mpsc::UnboundedReceiver<SubCmd>,
    subscribed: Arc<DashSet<Topic>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = stop.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        let mut commands = batch.drain(..).peekable();
        while let Some(first) = commands.next() {
            match first {
                SubCmd::Add(topic, reply) => {
                    let mut run = vec![(topic, reply)];
                    while let Some(SubCmd::Add(..)) = commands.peek() {
                        if let Some(SubCmd::Add(t, r)) = commands.next() {
                            run.push((t, r));
                        }
                    }
                    let topics: Vec<Topic> = run.iter().map(|(t, _)| *t).collect();
                    let ok = matches!(
                        tokio::time::timeout(SUBSCRIBE_TIMEOUT, control.add(&topics)).await,
                        Ok(Ok(()))
                    );
                    if ok {
                        for t in &topics {
                            subscribed.insert(*t);
                        }
                    } else {
                        tracing::warn!(count = topics.len(), "subscribing failed");
                        metrics::counter!("gateway_subscribe_failures_total").increment(1);
                    }
                    for (_, reply) in run {
                        reply.send(ok).await;
                    }
                }
                SubCmd::Remove(topic) => {
                    let mut topics = vec![topic];
                    while let Some(SubCmd::Remove(_)) = commands.peek() {
                        if let Some(SubCmd::Remove(t)) = commands.next() {
                            topics.push(t);
                        }
                    }
                    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, control.remove(&topics)).await {
                        Ok(Ok(())) => {}
                        _ => tracing::warn!(
                            count = topics.len(),
                            "unsubscribing failed; stray deliveries are dropped"
                        ),
                    }
                    for t in &topics {
                        subscribed.remove(t);
                    }
                }
            }
        }
    }
}
