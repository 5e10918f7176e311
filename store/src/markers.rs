//! Read and delivery markers: each member's `read_seq` and `delivered_seq`.
//!
//! Markers only move forward and never past the room's `last_seq`; both
//! rules are applied here, in one place, whatever the caller sends. Clients
//! move `read_seq` (a `read` frame or the REST call) and gateways move
//! `delivered_seq` as they write events, so markers change far more often
//! than anything else a member has. Two decisions keep that cheap:
//!
//! * [`Store::advance_markers`] writes a whole batch of members' markers in
//!   one transaction of two statements (read the rows, locked in key order
//!   on PostgreSQL so two nodes' batches cannot deadlock; write the new
//!   values from one JSON parameter).
//! * [`MarkerWriter`] coalesces: updates for one (room, user) merge in
//!   memory (the largest wins) and are flushed together once per
//!   [`FLUSH_INTERVAL`], so a burst of read frames is one row of one batch.
//!   Its map is bounded by the distinct (room, user) pairs touched in one
//!   interval; its queue by [`QUEUE_CAPACITY`] (beyond it updates are
//!   dropped and counted: a later marker covers an earlier one).

use crate::{Backend, Result, Store};
use shared::model::Receipt;
use shared::{RoomId, UserId};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long marker updates gather before they are written. At 1,000 read
/// frames per second this is five batches per second, whatever the number
/// of users; a reader waits this long at most for others to see the change.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Most rows in one batch: one statement of a few tens of KB.
pub const MAX_MARKER_BATCH: usize = 500;

/// Updates waiting for the writer task at most.
pub const QUEUE_CAPACITY: usize = 65_536;

/// A requested move of one member's markers; 0 leaves a marker as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerUpdate {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub read_seq: i64,
    pub delivered_seq: i64,
}

/// A member's markers after a write that moved at least one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerChange {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub read_seq: i64,
    pub delivered_seq: i64,
    /// Whether `read_seq` moved (not only `delivered_seq`).
    pub read_moved: bool,
    /// The room's member count, for the receipt size limit.
    pub members: i64,
}

const SELECT_POSTGRES: &str = "\
SELECT m.room_id, m.user_id, m.read_seq, m.delivered_seq, r.last_seq,
    (SELECT count(*) FROM room_members c WHERE c.room_id = m.room_id) AS members
FROM json_array_elements($1::json) j(v)
JOIN room_members m ON m.room_id = (j.v->>0)::bigint AND m.user_id = (j.v->>1)::bigint
JOIN rooms r ON r.id = m.room_id
ORDER BY m.room_id, m.user_id
FOR NO KEY UPDATE OF m";

const UPDATE_POSTGRES: &str = "\
UPDATE room_members m SET read_seq = (j.v->>2)::bigint, delivered_seq = (j.v->>3)::bigint
FROM json_array_elements($1::json) j(v)
WHERE m.room_id = (j.v->>0)::bigint AND m.user_id = (j.v->>1)::bigint";

const SELECT_SQLITE: &str = "\
SELECT m.room_id, m.user_id, m.read_seq, m.delivered_seq, r.last_seq,
    (SELECT count(*) FROM room_members c WHERE c.room_id = m.room_id) AS members
FROM json_each($1) j
JOIN room_members m ON m.room_id = json_extract(j.value, '$[0]')
    AND m.user_id = json_extract(j.value, '$[1]')
JOIN rooms r ON r.id = m.room_id";

const UPDATE_SQLITE: &str = "\
UPDATE room_members SET read_seq = json_extract(j.value, '$[2]'),
    delivered_seq = json_extract(j.value, '$[3]')
FROM json_each($1) j
WHERE room_members.room_id = json_extract(j.value, '$[0]')
    AND room_members.user_id = json_extract(j.value, '$[1]')";

/// The markers a stored pair should have after `update`.
fn advanced(old_read: i64, old_delivered: i64, last_seq: i64, update: &MarkerUpdate) -> (i64, i64) {
    let read = old_read.max(update.read_seq.min(last_seq));
    // What was read was delivered.
    let delivered = old_delivered
        .max(update.delivered_seq.min(last_seq))
        .max(read);
    (read, delivered)
}

impl Store {
    /// Moves a batch of members' markers forward (each at most to its
    /// room's `last_seq`) in one transaction; returns the members whose
    /// markers moved. Pairs that are not members are ignored. At most one
    /// update per (room, user) is expected (the last one wins otherwise).
    #[tracing::instrument(skip_all, fields(updates = updates.len()))]
    pub async fn advance_markers(&self, updates: &[MarkerUpdate]) -> Result<Vec<MarkerChange>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: HashMap<(RoomId, UserId), &MarkerUpdate> = updates
            .iter()
            .map(|u| ((u.room_id, u.user_id), u))
            .collect();
        let keys = serde_json::to_string(
            &updates
                .iter()
                .map(|u| [u.room_id.0, u.user_id.0])
                .collect::<Vec<_>>(),
        )
        .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let (select, update) = match self.backend {
            Backend::Postgres => (SELECT_POSTGRES, UPDATE_POSTGRES),
            Backend::Sqlite => (SELECT_SQLITE, UPDATE_SQLITE),
        };
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(select).bind(&keys).fetch_all(&mut *tx).await?;
        let mut changes = Vec::new();
        let mut values = Vec::new();
        for row in &rows {
            let key = (
                RoomId(row.try_get("room_id")?),
                UserId(row.try_get("user_id")?),
            );
            let Some(update) = wanted.get(&key) else {
                continue;
            };
            let (old_read, old_delivered): (i64, i64) =
                (row.try_get("read_seq")?, row.try_get("delivered_seq")?);
            let (read, delivered) =
                advanced(old_read, old_delivered, row.try_get("last_seq")?, update);
            if (read, delivered) == (old_read, old_delivered) {
                continue;
            }
            values.push([key.0.0, key.1.0, read, delivered]);
            changes.push(MarkerChange {
                room_id: key.0,
                user_id: key.1,
                read_seq: read,
                delivered_seq: delivered,
                read_moved: read > old_read,
                members: row.try_get("members")?,
            });
        }
        if !values.is_empty() {
            let values = serde_json::to_string(&values)
                .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
            sqlx::query(update).bind(values).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        metrics::counter!("store_marker_batches_total").increment(1);
        metrics::counter!("store_marker_rows_written_total").increment(changes.len() as u64);
        Ok(changes)
    }

    /// Every member's markers in a room, by user id.
    #[tracing::instrument(skip(self))]
    pub async fn receipts(&self, room: RoomId) -> Result<Vec<Receipt>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(
                    "SELECT user_id, read_seq, delivered_seq FROM room_members WHERE room_id = $1 ORDER BY user_id",
                )
                .bind(room.0)
                .fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Receipt {
                    user_id: UserId(row.try_get("user_id")?),
                    read_seq: row.try_get("read_seq")?,
                    delivered_seq: row.try_get("delivered_seq")?,
                })
            })
            .collect()
    }
}

/// Describes and registers the marker writer's metrics at zero.
pub(crate) fn register_metrics() {
    metrics::describe_counter!(
        "store_marker_batches_total",
        "Batches of read/delivered markers written (one transaction each)"
    );
    metrics::describe_counter!(
        "store_marker_rows_written_total",
        "Member rows whose markers a batch moved"
    );
    metrics::describe_counter!(
        "store_marker_updates_dropped_total",
        "Marker updates dropped because the writer's queue was full"
    );
    metrics::describe_counter!(
        "store_marker_changes_dropped_total",
        "Marker changes written but not announced (the announcer fell behind)"
    );
    metrics::describe_counter!(
        "store_marker_batch_failures_total",
        "Marker batches that failed to commit"
    );
    for name in [
        "store_marker_batches_total",
        "store_marker_rows_written_total",
        "store_marker_updates_dropped_total",
        "store_marker_changes_dropped_total",
        "store_marker_batch_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Coalesces marker updates and writes them in batches (see module docs).
/// Cheap to clone; [`MarkerWriter::close`] flushes what is pending.
#[derive(Clone)]
pub struct MarkerWriter {
    queue: mpsc::Sender<MarkerUpdate>,
    stats: Arc<MarkerStats>,
    stop: CancellationToken,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// What the writer has done, for metrics and tests.
#[derive(Default)]
pub struct MarkerStats {
    /// Updates accepted (before coalescing).
    pub updates: AtomicU64,
    /// Batches written: each is one transaction of two statements.
    pub batches: AtomicU64,
    /// Rows whose markers moved.
    pub rows: AtomicU64,
}

impl MarkerWriter {
    /// Starts the writer task. Every batch's changes are sent on the
    /// returned receiver (for publishing); a full receiver loses them.
    pub fn start(store: Store) -> (MarkerWriter, mpsc::Receiver<Vec<MarkerChange>>) {
        let (queue, updates) = mpsc::channel(QUEUE_CAPACITY);
        let (changes_tx, changes) = mpsc::channel(1024);
        let stats = Arc::new(MarkerStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store, updates, changes_tx, stats.clone(), stop.clone()));
        let writer = MarkerWriter {
            queue,
            stats,
            stop,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        };
        (writer, changes)
    }

    /// The user has read the room up to `seq`.
    pub fn read(&self, room_id: RoomId, user_id: UserId, seq: i64) {
        self.submit(MarkerUpdate {
            room_id,
            user_id,
            read_seq: seq,
            delivered_seq: 0,
        });
    }

    /// A gateway wrote the room's events up to `seq` to one of the user's sockets.
    pub fn delivered(&self, room_id: RoomId, user_id: UserId, seq: i64) {
        self.submit(MarkerUpdate {
            room_id,
            user_id,
            read_seq: 0,
            delivered_seq: seq,
        });
    }

    fn submit(&self, update: MarkerUpdate) {
        if self.queue.try_send(update).is_ok() {
            self.stats.updates.fetch_add(1, Ordering::Relaxed);
        } else {
            metrics::counter!("store_marker_updates_dropped_total").increment(1);
        }
    }

    pub fn stats(&self) -> &MarkerStats {
        &self.stats
    }

    /// Writes what is pending and stops the task.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the marker writer failed");
        }
    }
}

/// Merges an update into the pending map: the largest of each marker wins.
fn merge(pending: &mut HashMap<(RoomId, UserId), (i64, i64)>, u: MarkerUpdate) {
    let entry = pending.entry((u.room_id, u.user_id)).or_insert((0, 0));
    entry.0 = entry.0.max(u.read_seq);
    entry.1 = entry.1.max(u.delivered_seq);
}

async fn run(
    store: Store,
    mut updates: mpsc::Receiver<MarkerUpdate>,
    changes: mpsc::Sender<Vec<MarkerChange>>,
    stats: Arc<MarkerStats>,
    stop: CancellationToken,
) {
    let mut pending: HashMap<(RoomId, UserId), (i64, i64)> = HashMap::new();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            next = updates.recv() => match next {
                Some(update) => {
                    merge(&mut pending, update);
                    due.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_INTERVAL);
                    continue;
                }
                None => break,
            },
            () = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {}
            () = stop.cancelled() => break,
        }
        due = None;
        flush(&store, &mut pending, &changes, &stats).await;
        if !pending.is_empty() {
            // A failed batch stays pending and is retried next interval.
            due = Some(tokio::time::Instant::now() + FLUSH_INTERVAL);
        }
    }
    while let Ok(update) = updates.try_recv() {
        merge(&mut pending, update);
    }
    flush(&store, &mut pending, &changes, &stats).await;
}

async fn flush(
    store: &Store,
    pending: &mut HashMap<(RoomId, UserId), (i64, i64)>,
    changes: &mpsc::Sender<Vec<MarkerChange>>,
    stats: &MarkerStats,
) {
    let all: Vec<MarkerUpdate> = pending
        .drain()
        .map(
            |((room_id, user_id), (read_seq, delivered_seq))| MarkerUpdate {
                room_id,
                user_id,
                read_seq,
                delivered_seq,
            },
        )
        .collect();
    for batch in all.chunks(MAX_MARKER_BATCH) {
        match store.advance_markers(batch).await {
            Ok(moved) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.rows.fetch_add(moved.len() as u64, Ordering::Relaxed);
                if !moved.is_empty() && changes.try_send(moved).is_err() {
                    metrics::counter!("store_marker_changes_dropped_total").increment(1);
                }
            }
            Err(e) => {
                metrics::counter!("store_marker_batch_failures_total").increment(1);
                tracing::warn!(error = %e, rows = batch.len(), "writing read markers failed; retrying");
                for update in batch {
                    merge(pending, *update);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(read_seq: i64, delivered_seq: i64) -> MarkerUpdate {
        MarkerUpdate {
            room_id: RoomId(1),
            user_id: UserId(2),
            read_seq,
            delivered_seq,
        }
    }

    #[test]
    fn markers_only_move_forward_and_stop_at_the_room_end() {
        assert_eq!(
            advanced(5, 7, 10, &update(3, 0)),
            (5, 7),
            "backwards is ignored"
        );
        assert_eq!(advanced(5, 7, 10, &update(8, 0)), (8, 8));
        assert_eq!(
            advanced(5, 7, 10, &update(99, 99)),
            (10, 10),
            "clamped to last_seq"
        );
        assert_eq!(advanced(0, 0, 10, &update(0, 4)), (0, 4));
    }

    #[test]
    fn a_burst_for_one_member_merges_into_one_row() {
        let mut pending = HashMap::new();
        for (r, d) in [(3, 0), (9, 0), (4, 0), (0, 12), (0, 2)] {
            merge(&mut pending, update(r, d));
        }
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[&(RoomId(1), UserId(2))], (9, 12));
    }
}
