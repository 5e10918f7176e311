//! Announces read-marker moves that this node's marker writer committed:
//! to the reader's own connections on every node (their user topic), and as
//! a `receipt` to the room's members in rooms up to the receipt size limit.
//!
//! One task per node owns the writer's change stream; it ends when the
//! writer is closed (shutdown), after the last batch was announced.

use broker::{DynBroker, Topic};
use shared::protocol::read_marker_payloads;
use store::MarkerChange;
use tokio::sync::mpsc;

pub(crate) async fn publish(
    broker: DynBroker,
    mut changes: mpsc::Receiver<Vec<MarkerChange>>,
    receipt_room_limit: i64,
) {
    while let Some(batch) = changes.recv().await {
        // Only reads are announced: delivery markers move with every event
        // and are read from the receipts resource.
        for change in batch.iter().filter(|c| c.read_moved) {
            let (notice, receipt) = read_marker_payloads(
                change.room_id,
                change.user_id,
                change.read_seq,
                change.delivered_seq,
                change.members,
                receipt_room_limit,
            );
            // The receipt goes first: whoever sees the reader's own notice
            // knows the receipt was published before it.
            let mut published = Ok(());
            if let Some(receipt) = receipt {
                published = broker.publish(Topic::Room(change.room_id), receipt).await;
            }
            published = published.and(broker.publish(Topic::User(change.user_id), notice).await);
            if let Err(e) = published {
                metrics::counter!("gateway_publish_failures_total").increment(1);
                tracing::warn!(error = %e, room_id = %change.room_id, "announcing a read marker failed");
            }
        }
    }
}
