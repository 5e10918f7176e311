//! Publishing events for live delivery, after the change is committed.
//!
//! A failed publish never fails the request: the event is already in the
//! room's timeline, and gateways fill the gap from there when the room's next
//! event arrives (or a client fetches history). It is logged and counted.
//!
//! Each room event is published from a `publish` span. When that span is
//! sampled, its W3C trace context goes in front of the frame, so every
//! gateway's `deliver` span joins the request's trace; unsampled events are
//! published as the bare frame, untouched ([`shared::trace_context`]).

use broker::{DynBroker, Topic};
use shared::model::RoomEvent;
use shared::protocol::{Encoding, ServerFrame, UserNotice, event_frame_json};
use shared::trace_context;
use shared::{RoomId, UserId};
use std::time::Instant;

#[derive(Clone)]
pub struct Events {
    broker: DynBroker,
    /// Rooms up to this many members get `receipt` events.
    receipt_room_limit: i64,
}

impl Events {
    pub fn new(broker: DynBroker, receipt_room_limit: i64) -> Self {
        Self {
            broker,
            receipt_room_limit,
        }
    }

    /// Announces a committed move of a member's read marker: to the
    /// member's own connections, and to the room's in small rooms.
    pub async fn read_marker(&self, change: &store::MarkerChange) {
        if !change.read_moved {
            return;
        }
        let (notice, receipt) = shared::protocol::read_marker_payloads(
            change.room_id,
            change.user_id,
            change.read_seq,
            change.delivered_seq,
            change.members,
            self.receipt_room_limit,
        );
        // The receipt goes first: whoever sees the reader's own notice
        // knows the receipt was published before it.
        let mut published = Ok(());
        if let Some(receipt) = receipt {
            published = self
                .broker
                .publish(Topic::Room(change.room_id), receipt)
                .await;
        }
        published = published.and(
            self.broker
                .publish(Topic::User(change.user_id), notice)
                .await,
        );
        if let Err(e) = published {
            metrics::counter!("api_publish_failures_total").increment(1);
            tracing::error!(error = %e, room_id = %change.room_id, "publishing a read marker failed");
        }
    }

    /// Publishes a committed room event on the room's topic.
    #[tracing::instrument(name = "publish", skip_all,
        fields(otel.kind = "producer", room_id = %event.room_id, seq = event.seq))]
    pub async fn room_event(&self, event: &RoomEvent) {
        let started = Instant::now();
        let payload = trace_context::publishable(event_frame_json(event));
        match self
            .broker
            .publish_event(event.room_id, event.seq, payload.clone())
            .await
        {
            Ok(()) => {
                metrics::histogram!("api_publish_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                metrics::counter!("api_publish_failures_total").increment(1);
                tracing::error!(error = %e, room_id = %event.room_id, seq = event.seq,
                    "publishing a room event failed; retrying in the background");
                self.retry_later(event.room_id, event.seq, payload);
            }
        }
    }

    /// Publishes again, with backoff, an event whose publish failed. Without
    /// this, the last event of a room that then goes quiet would reach its
    /// live members only when someone joins (the gateways' check of the
    /// joiner's snapshot) or the next event shows the gap. Publishing twice
    /// is harmless: gateways drop an event they delivered, and the window
    /// refuses an entry it holds. Bounded: past `MAX_RETRYING` events at
    /// once (Redis down for long), the rest are left to the gateways.
    fn retry_later(&self, room: RoomId, seq: i64, payload: bytes::Bytes) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RETRYING: AtomicUsize = AtomicUsize::new(0);
        const MAX_RETRYING: usize = 10_000;
        const DELAYS_MS: [u64; 8] = [50, 100, 200, 400, 800, 1_600, 3_200, 6_400];
        if RETRYING.fetch_add(1, Ordering::Relaxed) >= MAX_RETRYING {
            RETRYING.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("api_publish_retries_total", "outcome" => "dropped").increment(1);
            return;
        }
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let mut outcome = "gave_up";
            for delay in DELAYS_MS {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                if broker
                    .publish_event(room, seq, payload.clone())
                    .await
                    .is_ok()
                {
                    outcome = "published";
                    break;
                }
            }
            RETRYING.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("api_publish_retries_total", "outcome" => outcome).increment(1);
            if outcome == "published" {
                tracing::info!(%room, seq, "a room event was published on a retry");
            } else {
                tracing::error!(%room, seq, "publishing a room event failed for good; gateways will recover it from history");
            }
        });
    }

    /// Publishes a backend's ephemeral signal to the connections that
    /// joined `room` (gateways pass the frame on untouched). Unlike a room
    /// event it is nowhere else, so a failed publish is the caller's error:
    /// the backend retries.
    pub async fn room_signal(
        &self,
        room: RoomId,
        name: &str,
        payload: &serde_json::Value,
    ) -> Result<(), broker::BrokerError> {
        let frame = ServerFrame::Signal {
            room_id: Some(room),
            user_id: None,
            name: name.to_owned(),
            payload: payload.clone(),
        };
        self.broker
            .publish(Topic::Room(room), Encoding::Json.encode(&frame))
            .await
    }

    /// Publishes a backend's ephemeral signal to every connection of
    /// `user` (a failed publish is the caller's error, as for a room signal).
    pub async fn user_signal(
        &self,
        user: UserId,
        name: &str,
        payload: &serde_json::Value,
    ) -> Result<(), broker::BrokerError> {
        let notice = UserNotice::Signal {
            name: name.to_owned(),
            payload: payload.clone(),
        };
        self.broker
            .publish(Topic::User(user), Encoding::Json.encode(&notice))
            .await
    }

    /// Publishes a notice to every connection of `user`.
    pub async fn user_notice(&self, user: UserId, notice: &UserNotice) {
        if let Err(e) = self
            .broker
            .publish(Topic::User(user), Encoding::Json.encode(notice))
            .await
        {
            metrics::counter!("api_publish_failures_total").increment(1);
            tracing::error!(error = %e, %user, "publishing a user notice failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::{Delivery, MemoryBroker};
    use shared::model::EventKind;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_unsampled_event_is_published_as_exactly_its_frame() {
        let broker: DynBroker = Arc::new(MemoryBroker::new());
        let mut subscription = broker.subscribe().await.unwrap();
        let room = RoomId(7);
        subscription
            .control
            .add(&[Topic::Room(room)])
            .await
            .unwrap();
        let event = RoomEvent {
            room_id: room,
            seq: 3,
            sender_id: UserId(1),
            created_at: chrono::Utc::now(),
            kind: EventKind::MessageCreated {
                body: "hi".into(),
                client_msg_id: None,
                reply_to_seq: None,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        };

        // No tracer is installed in unit tests: nothing is sampled.
        Events::new(broker, 100).room_event(&event).await;

        let Some(Delivery::Message { payload, .. }) = subscription.deliveries.recv().await else {
            panic!("no delivery");
        };
        assert_eq!(payload, event_frame_json(&event));
    }
}
