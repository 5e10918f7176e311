//! Reading a room's past events: for clients that resume (`join` with
//! `since_seq`) and for the gaps a node fills itself.
//!
//! The room's recent window (a Redis stream, or in process on a single
//! node) is asked first; when it does not hold the whole range (trimmed,
//! expired, lost with a Redis restart, a hole) the database does. Either
//! way the answer is checked to be every event of the range, in order.
//!
//! After a gateway dies, thousands of its clients resume the same rooms on
//! the others at once: concurrent reads of one room on one node are shared.
//! A read that covers another's range serves it; only reads that reach
//! further back than any in flight go to the window or the database.

use broker::DynBroker;
use bytes::Bytes;
use shared::RoomId;
use shared::protocol::event_frame_json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use store::Store;
use tokio::sync::OnceCell;

/// Event payloads of one range, in seq order (a frame, possibly behind a
/// trace-context block: see [`shared::trace_context`]).
pub type Payloads = Arc<Vec<Bytes>>;

type Shared = Arc<OnceCell<Result<Payloads, ()>>>;

struct InFlight {
    after: i64,
    to: i64,
    read: Shared,
}

pub struct BacklogReader {
    broker: DynBroker,
    store: Store,
    in_flight: Mutex<HashMap<RoomId, Vec<InFlight>>>,
    stats: BacklogStats,
}

/// Where this node's reads of past events were served from.
#[derive(Debug, Default)]
pub struct BacklogStats {
    pub window: AtomicU64,
    pub database: AtomicU64,
    /// Served by another caller's read of the same room.
    pub shared: AtomicU64,
}

impl BacklogReader {
    pub(crate) fn new(broker: DynBroker, store: Store) -> Self {
        Self {
            broker,
            store,
            in_flight: Mutex::new(HashMap::new()),
            stats: BacklogStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> &BacklogStats {
        &self.stats
    }

    /// The payloads of `room`'s events `after < seq <= to`, every one, in
    /// order; `Err` when neither the window nor the database could give them.
    pub(crate) async fn read(&self, room: RoomId, after: i64, to: i64) -> Result<Vec<Bytes>, ()> {
        if to <= after {
            return Ok(Vec::new());
        }
        let (read, base, mine) = self.join_or_start(room, after, to);
        let payloads = read
            .get_or_init(|| self.fetch(room, base.0, base.1))
            .await
            .clone();
        if mine {
            self.finished(room, &read);
        } else {
            metrics::counter!("gateway_backlog_reads_total", "source" => "shared").increment(1);
            self.stats.shared.fetch_add(1, Ordering::Relaxed);
        }
        let payloads = payloads?;
        // This caller's slice of a read that may reach further back.
        let skip = usize::try_from(after - base.0).map_err(|_| ())?;
        let take = usize::try_from(to - after).map_err(|_| ())?;
        Ok(payloads.iter().skip(skip).take(take).cloned().collect())
    }

    /// A read in flight that covers the range, or a new one; with the
    /// range that read covers and whether this caller started it.
    fn join_or_start(&self, room: RoomId, after: i64, to: i64) -> (Shared, (i64, i64), bool) {
        let Ok(mut in_flight) = self.in_flight.lock() else {
            return (Arc::new(OnceCell::new()), (after, to), false);
        };
        let reads = in_flight.entry(room).or_default();
        if let Some(read) = reads.iter().find(|r| r.after <= after && r.to >= to) {
            return (read.read.clone(), (read.after, read.to), false);
        }
        let read: Shared = Arc::new(OnceCell::new());
        reads.push(InFlight {
            after,
            to,
            read: read.clone(),
        });
        (read, (after, to), true)
    }

    fn finished(&self, room: RoomId, read: &Shared) {
        if let Ok(mut in_flight) = self.in_flight.lock()
            && let Some(reads) = in_flight.get_mut(&room)
        {
            reads.retain(|r| !Arc::ptr_eq(&r.read, read));
            if reads.is_empty() {
                in_flight.remove(&room);
            }
        }
    }

    async fn fetch(&self, room: RoomId, after: i64, to: i64) -> Result<Payloads, ()> {
        match self.broker.window_range(room, after, to).await {
            Ok(Some(payloads)) => {
                metrics::counter!("gateway_backlog_reads_total", "source" => "window").increment(1);
                self.stats.window.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::new(payloads));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%room, error = %e, "the window is unavailable; reading the database")
            }
        }
        metrics::counter!("gateway_backlog_reads_total", "source" => "database").increment(1);
        self.stats.database.fetch_add(1, Ordering::Relaxed);
        // The store answers at most a page (MAX_HISTORY_PAGE) at a time: a
        // longer range (a resume of up to PARLEY_RESUME_LIMIT events, a gap
        // left by a Redis outage) is read page by page. Reading only the
        // first page made every event past it look missing, and the gap was
        // skipped: lost for the node's members.
        let page = usize::try_from(store::MAX_HISTORY_PAGE).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let mut next = after + 1;
        while next <= to {
            let more = self
                .store
                .events_between(room, next, to)
                .await
                .map_err(|e| tracing::warn!(%room, error = %e, "reading past events failed"))?;
            let full = more.len() >= page;
            match more.last() {
                Some(last) => next = last.seq + 1,
                None => break,
            }
            events.extend(more);
            if !full {
                break;
            }
        }
        let contiguous = events.len() as i64 == to - after
            && events.iter().zip(after + 1..).all(|(e, seq)| e.seq == seq);
        if !contiguous {
            tracing::error!(%room, after, to, got = events.len(), "past events missing from the store");
            return Err(());
        }
        Ok(Arc::new(events.iter().map(event_frame_json).collect()))
    }
}
