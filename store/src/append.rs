//! Group commit of message posts.
//!
//! A post on its own costs PostgreSQL an executor start-up, a commit and a
//! round trip (about half a millisecond of CPU), and SQLite an fsync. The
//! [`MessageAppender`] lets concurrent posts share them: callers queue their
//! post and wait on a oneshot; a committer task takes the first waiting
//! post and everything queued behind it (up to [`MAX_BATCH`]), commits them
//! as one batch and answers each caller. Batching is natural, never timed:
//! an idle appender commits a lone post at once, and while a batch is in
//! flight new posts queue up and form the next one.
//!
//! Each post of a batch has exactly the outcome [`Store::post_message`]
//! would give it: numbered in the transaction (gap-free per room), the
//! original for a repeated `client_msg_id`, or not found for a missing
//! room or a non-member.
//!
//! * PostgreSQL: one statement per batch ([`APPEND_BATCH_POSTGRES`]). It locks
//!   the batch's rooms in room-id order, so batches from different api nodes
//!   cannot deadlock, and bumps each room's `last_seq` by its number of posts.
//!   A batch that loses a race for a `client_msg_id` (another writer stored
//!   the same key after the statement's snapshot) fails as a whole on the
//!   unique constraint, so nothing is numbered, and its posts are retried one
//!   by one through [`Store::post_message`].
//! * SQLite: one `BEGIN IMMEDIATE` transaction per batch. SQLite has one
//!   writer at a time, so each post's checks inside it cannot race; the gain
//!   is one commit (one fsync) per batch.

use crate::error::unique_violation;
use crate::events::{NewMessage, PostOutcome, event_from_row, post_message_in};
use crate::{Backend, Result, Store, StoreError};
use shared::{RoomId, UserId};
use sqlx::Row;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{self, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Most posts in one batch. A batch of 256 typical posts is one statement
/// of a few hundred KB and about 10 ms in PostgreSQL; larger batches would
/// only make the posts at their end wait longer for their answer.
pub const MAX_BATCH: usize = 256;

/// Posts waiting for the committer at most (four full batches). When the
/// database falls behind, callers wait here for room (back-pressure)
/// rather than the queue growing without bound.
pub const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// Batches in flight at once on PostgreSQL: one per api node. Measured on
/// the benchmark machine (docs/benchmarks.md), a commit costs PostgreSQL
/// about 0.6 ms of CPU whatever its size and a post about 40 µs more, so
/// what matters is few, large batches: while one batch commits, the next
/// one gathers everything that arrives. Concurrent batches of one node
/// would also share rooms, wait for each other's room locks and then
/// re-evaluate their plan on the updated rows (EvalPlanQual), which was a
/// fifth of PostgreSQL's time with three in flight. At most 256 posts per
/// batch in a few milliseconds still leaves room for tens of thousands of
/// posts per second.
const POSTGRES_BATCHES_IN_FLIGHT: usize = 1;

/// Batches in flight at once on SQLite: one. SQLite has a single writer; a
/// second batch would only wait in the busy handler for the first one's lock.
/// The overlap that matters (forming the next batch while one commits) needs
/// no second batch in flight.
const SQLITE_BATCHES_IN_FLIGHT: usize = 1;

/// Which constraint a batch that raced another writer for a
/// `client_msg_id` violates.
const IDEMPOTENCY_KEY: &str = "room_events_idempotency_key";

/// Appends a whole batch of messages on PostgreSQL in one statement. `$1` is
/// a JSON array of `{ord, room_id, sender_id, body, client_msg_id,
/// created_at}` (sqlx's `Any` driver cannot bind arrays), `ord` being the
/// post's index in the batch; no two posts share (room, sender,
/// client_msg_id). One row per post comes back: `created_seq` when it was
/// appended, otherwise the original event's columns when the sender already
/// posted its `client_msg_id` in the room, otherwise (no such room, or not a
/// member) nothing.
///
/// * `checked`: membership and an existing post with the same key, read in
///   the statement's snapshot. Only members' keys count, as in
///   [`Store::post_message`]. Both are LATERAL lookups with `LIMIT 1`, which
///   keeps them index probes: `json_to_recordset` is always estimated at 100
///   rows, and with plain joins the planner hashed the whole `room_members`
///   table for every batch (a sequential scan of 24,000 rows, 4 ms).
/// * `locked`: the rooms getting posts, locked in room-id order (the lock an
///   UPDATE takes, no stronger), so two batches that share rooms queue
///   instead of deadlocking.
/// * `bumped`: each room's `last_seq` raised by its number of posts. Under
///   READ COMMITTED an UPDATE whose row was changed by a transaction it
///   waited for works on the newly committed row, so `base` is the room's
///   real last number, not the snapshot's.
/// * `numbered`: posts numbered `base + 1, base + 2, ...` per room, in batch order.
/// * `own_read`: each sender's `read_seq` (and `delivered_seq`) moved to
///   their newest post of the batch: your own messages are never unread.
///   Their rows are locked first in (room, user) order (`sender_rows`), the
///   order marker batches lock them in, so the two cannot deadlock.
/// * If another writer committed one of the keys after the snapshot, the
///   insert violates `room_events_idempotency_key` and the whole statement,
///   bumps included, fails.
const APPEND_BATCH_POSTGRES: &str = "\
WITH input AS (
    SELECT t.ord, t.room_id, t.sender_id, t.body, t.client_msg_id, t.reply_to_seq, t.created_at
    FROM json_to_recordset($1::json)
        AS t(ord bigint, room_id bigint, sender_id bigint, body text, client_msg_id text,
             reply_to_seq bigint, created_at bigint)
),
checked AS MATERIALIZED (
    SELECT i.*, coalesce(m.member, false) AS member, e.existing_seq
    FROM input i
    LEFT JOIN LATERAL (
        SELECT true AS member FROM room_members m
        WHERE m.room_id = i.room_id AND m.user_id = i.sender_id LIMIT 1
    ) m ON true
    LEFT JOIN LATERAL (
        SELECT e.seq AS existing_seq FROM room_events e
        WHERE m.member AND e.room_id = i.room_id AND e.sender_id = i.sender_id
            AND e.client_msg_id = i.client_msg_id LIMIT 1
    ) e ON true
),
accepted AS (
    SELECT * FROM checked WHERE member AND existing_seq IS NULL
),
counts AS (
    SELECT room_id, count(*) AS n FROM accepted GROUP BY room_id
),
locked AS MATERIALIZED (
    SELECT id FROM rooms WHERE id IN (SELECT room_id FROM counts) ORDER BY id FOR NO KEY UPDATE
),
bumped AS (
    UPDATE rooms r SET last_seq = r.last_seq + c.n
    FROM locked l, counts c
    WHERE r.id = l.id AND c.room_id = l.id
    RETURNING r.id AS room_id, r.last_seq - c.n AS base
),
numbered AS (
    SELECT a.ord, a.room_id, a.sender_id, a.body, a.client_msg_id, a.reply_to_seq, a.created_at,
        b.base + row_number() OVER (PARTITION BY a.room_id ORDER BY a.ord) AS seq
    FROM accepted a JOIN bumped b ON b.room_id = a.room_id
),
inserted AS (
    INSERT INTO room_events (room_id, seq, kind, sender_id, body, client_msg_id, reply_to_seq, created_at)
    SELECT room_id, seq, 'message.created', sender_id, body, client_msg_id, reply_to_seq, created_at
    FROM numbered
),
senders AS (
    SELECT room_id, sender_id, max(seq) AS seq FROM numbered GROUP BY room_id, sender_id
),
sender_rows AS MATERIALIZED (
    SELECT m.room_id, m.user_id FROM room_members m
    JOIN senders s ON s.room_id = m.room_id AND s.sender_id = m.user_id
    ORDER BY m.room_id, m.user_id FOR NO KEY UPDATE OF m
),
own_read AS (
    UPDATE room_members m
    SET read_seq = greatest(m.read_seq, o.seq), delivered_seq = greatest(m.delivered_seq, o.seq)
    FROM senders o JOIN sender_rows l ON l.room_id = o.room_id AND l.user_id = o.sender_id
    WHERE m.room_id = o.room_id AND m.user_id = o.sender_id
)
SELECT c.ord, n.seq AS created_seq,
    e.room_id, e.seq, e.kind, e.sender_id, e.body, e.client_msg_id, e.target_user_id, e.role,
    e.room_name, e.event_name, e.payload, e.reply_to_seq, e.edited_at, e.deleted_at, e.target_seq,
    e.emoji, e.created_at
FROM checked c
LEFT JOIN numbered n ON n.ord = c.ord
LEFT JOIN room_events e ON e.room_id = c.room_id AND e.seq = c.existing_seq";

/// Commits concurrent message posts in shared batches. Create one per
/// process at start-up ([`MessageAppender::start`]) and [`close`] it before
/// closing the store.
///
/// [`close`]: MessageAppender::close
pub struct MessageAppender {
    /// Posts for the committer; bounded, so callers wait when it is full.
    queue: mpsc::Sender<Pending>,
    /// Tells the committer to stop taking posts and finish.
    stop: CancellationToken,
    /// The committer task, until [`MessageAppender::close`] waits for it.
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// A post waiting for its batch.
struct Pending {
    msg: OwnedMessage,
    /// Where the post's outcome goes; closed when the caller gave up.
    reply: oneshot::Sender<Result<PostOutcome>>,
    /// The caller's span, linked from the batch's span in traces.
    span: tracing::Span,
}

/// A [`NewMessage`] that can wait in the queue.
struct OwnedMessage {
    room_id: RoomId,
    sender_id: UserId,
    body: String,
    client_msg_id: Option<String>,
    reply_to_seq: Option<i64>,
    created_at: i64,
}

impl OwnedMessage {
    fn new(msg: &NewMessage<'_>) -> Self {
        Self {
            room_id: msg.room_id,
            sender_id: msg.sender_id,
            body: msg.body.to_owned(),
            client_msg_id: msg.client_msg_id.map(str::to_owned),
            reply_to_seq: msg.reply_to_seq,
            created_at: msg.created_at,
        }
    }

    fn as_new(&self) -> NewMessage<'_> {
        NewMessage {
            room_id: self.room_id,
            sender_id: self.sender_id,
            body: &self.body,
            client_msg_id: self.client_msg_id.as_deref(),
            reply_to_seq: self.reply_to_seq,
            created_at: self.created_at,
        }
    }

    fn key(&self) -> Option<Key> {
        self.client_msg_id
            .as_ref()
            .map(|id| (self.room_id, self.sender_id, id.clone()))
    }
}

impl MessageAppender {
    /// Starts the committer task (on the current Tokio runtime) for `store`.
    /// `interval` is the least time between the starts of two batches (see
    /// [`Committer::interval`]); zero starts each batch as soon as it can.
    pub fn start(store: Store, interval: Duration) -> MessageAppender {
        let (queue, posts) = mpsc::channel(QUEUE_CAPACITY);
        let stop = CancellationToken::new();
        let pool_size = store.pool.options().get_max_connections() as usize;
        let in_flight = match store.backend {
            Backend::Postgres => POSTGRES_BATCHES_IN_FLIGHT.min(pool_size.saturating_sub(1)),
            Backend::Sqlite => SQLITE_BATCHES_IN_FLIGHT,
        }
        .max(1);
        let committer = Committer {
            store,
            batches: Batcher::new(posts),
            stop: stop.clone(),
            max_in_flight: in_flight,
            interval,
            last_start: None,
        };
        MessageAppender {
            queue,
            stop,
            committer: Mutex::new(Some(tokio::spawn(committer.run()))),
        }
    }

    /// Appends a message to a room its sender is a member of, in the next
    /// batch; the same outcomes as [`Store::post_message`]. Waits while the
    /// queue is full. After [`MessageAppender::close`] it fails with
    /// [`StoreError::Closed`].
    #[tracing::instrument(skip_all, fields(room_id = %msg.room_id, sender_id = %msg.sender_id))]
    pub async fn post(&self, msg: NewMessage<'_>) -> Result<PostOutcome> {
        if self.stop.is_cancelled() {
            return Err(StoreError::Closed);
        }
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            msg: OwnedMessage::new(&msg),
            reply,
            span: tracing::Span::current(),
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Closed)?;
        // The committer drops a post unanswered only when it stops abnormally
        // (a panicking batch, a runtime shutting down).
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// How much of the queue is taken (at most [`QUEUE_CAPACITY`]): posts
    /// waiting for a batch, and callers admitted that are still handing
    /// theirs over. At the capacity, new callers wait for room.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stops taking posts (later ones fail with [`StoreError::Closed`]),
    /// lets the queued and in-flight batches finish, and waits for the
    /// committer. Call it before [`Store::close`].
    pub async fn close(&self) {
        self.stop.cancel();
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(committer) = committer
            && let Err(e) = committer.await
        {
            tracing::error!(error = %e, "the message committer failed");
        }
    }
}

/// The task that turns queued posts into batches and runs them.
struct Committer {
    store: Store,
    batches: Batcher,
    stop: CancellationToken,
    max_in_flight: usize,
    /// Least time between two batch starts. A commit costs PostgreSQL about
    /// 0.3 ms of CPU and a post 0.03 ms (docs/benchmarks.md): without it, a
    /// steady 1,000 posts/s arrives in batches of one or two and the
    /// database spends a third of a core on commits. Posts arriving within
    /// it wait and share the next batch; one after a quiet spell goes at once.
    interval: Duration,
    last_start: Option<Instant>,
}

impl Committer {
    async fn run(mut self) {
        let mut in_flight = JoinSet::new();
        let mut stopping = false;
        // The queue is closed and empty: only held posts and in-flight
        // batches remain.
        let mut drained = false;
        loop {
            if !stopping && self.stop.is_cancelled() {
                // Refuse new posts, including callers waiting for room in
                // the queue; the ones already queued are still committed.
                stopping = true;
                self.batches.close();
            }
            if in_flight.len() >= self.max_in_flight {
                // Every slot is busy: posts queue up meanwhile and form the
                // next batch.
                tokio::select! {
                    biased;
                    () = self.stop.cancelled(), if !stopping => {}
                    Some(done) = in_flight.join_next_with_id() => self.batches.finished(done),
                }
                continue;
            }
            if !stopping
                && self.batches.has_posts()
                && let Some(due) = self.last_start.map(|t| t + self.interval)
                && due > Instant::now()
            {
                // Too soon after the last batch: let more posts gather.
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => {}
                    Some(done) = in_flight.join_next_with_id() => self.batches.finished(done),
                    () = tokio::time::sleep_until(due.into()) => {}
                }
                continue;
            }
            let batch = self.batches.fill();
            if !batch.posts.is_empty() {
                self.last_start = Some(Instant::now());
                let keys = batch.keys;
                let task = in_flight.spawn(commit_batch(self.store.clone(), batch.posts));
                self.batches.started(task.id(), keys);
                continue;
            }
            if drained && in_flight.is_empty() && self.batches.held.is_empty() {
                return;
            }
            // Nothing to commit now: wait for a post, or for a batch to
            // finish (which may free held posts).
            tokio::select! {
                biased;
                () = self.stop.cancelled(), if !stopping => {}
                Some(done) = in_flight.join_next_with_id() => self.batches.finished(done),
                next = self.batches.recv(), if !drained && self.batches.may_take() => match next {
                    Some(post) => self.batches.hold(post),
                    // Closed and empty (or every appender handle dropped).
                    None => drained = true,
                },
                // Every branch is off (stopping, nothing in flight, not
                // taking posts): the held posts are free to go next round.
                else => {}
            }
        }
    }
}

/// The key of a post with a `client_msg_id`: two posts with one key are one message.
type Key = (RoomId, UserId, String);

/// Forms batches from the queue. Kept apart from the committer so its
/// rules are testable without a database:
/// * a batch is whatever is waiting, at most [`MAX_BATCH`] posts, never
///   waiting for more;
/// * no two posts of a key in one batch, nor in two batches in flight at
///   once: the second waits until the first is committed and then finds it
///   stored (rather than racing it and failing a whole batch on the
///   unique constraint);
/// * a post whose caller has gone is dropped, not committed.
struct Batcher {
    queue: mpsc::Receiver<Pending>,
    /// Posts taken from the queue that wait for a batch in flight with
    /// their key, oldest first. At most about [`MAX_BATCH`]: beyond it the
    /// committer stops taking posts and callers wait in the queue.
    held: VecDeque<Pending>,
    /// The keys of the batches in flight, by batch task.
    in_flight: HashMap<task::Id, HashSet<Key>>,
    /// The union of `in_flight`'s keys.
    in_flight_keys: HashSet<Key>,
}

/// A batch being formed.
#[derive(Default)]
struct Batch {
    posts: Vec<Pending>,
    /// The keys of `posts`.
    keys: HashSet<Key>,
}

impl Batcher {
    fn new(queue: mpsc::Receiver<Pending>) -> Self {
        Self {
            queue,
            held: VecDeque::new(),
            in_flight: HashMap::new(),
            in_flight_keys: HashSet::new(),
        }
    }

    async fn recv(&mut self) -> Option<Pending> {
        self.queue.recv().await
    }

    /// Whether any post is waiting (held or queued).
    fn has_posts(&self) -> bool {
        !self.held.is_empty() || !self.queue.is_empty()
    }

    /// Whether to take another post from the queue.
    fn may_take(&self) -> bool {
        self.held.len() < MAX_BATCH
    }

    /// Keeps a post taken from the queue for the next [`Batcher::fill`].
    fn hold(&mut self, post: Pending) {
        self.held.push_back(post);
    }

    /// Refuses further posts; those already queued are still received.
    fn close(&mut self) {
        self.queue.close();
    }

    /// The next batch: held posts first, then whatever is queued, without
    /// waiting. Empty when nothing can go now.
    fn fill(&mut self) -> Batch {
        let mut batch = Batch::default();
        let mut kept = VecDeque::new();
        while batch.posts.len() + kept.len() < MAX_BATCH {
            let post = match self.held.pop_front() {
                Some(post) => post,
                None => match self.queue.try_recv() {
                    Ok(post) => post,
                    Err(_) => break,
                },
            };
            if post.reply.is_closed() {
                continue;
            }
            match post.msg.key() {
                Some(key) if batch.keys.contains(&key) || self.in_flight_keys.contains(&key) => {
                    kept.push_back(post)
                }
                Some(key) => {
                    batch.keys.insert(key);
                    batch.posts.push(post);
                }
                None => batch.posts.push(post),
            }
        }
        // The posts kept now were taken before those not looked at.
        kept.append(&mut self.held);
        self.held = kept;
        batch
    }

    /// Records a batch handed to task `id`.
    fn started(&mut self, id: task::Id, keys: HashSet<Key>) {
        self.in_flight_keys.extend(keys.iter().cloned());
        self.in_flight.insert(id, keys);
    }

    /// Releases the keys of a finished batch task, whether it succeeded or not.
    fn finished(&mut self, done: Result<(task::Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                // A panicking batch dropped its posts' reply channels, so its
                // callers already got an error; the panic is reported here.
                tracing::error!(error = %e, "a batch of message posts panicked");
                e.id()
            }
        };
        for key in self.in_flight.remove(&id).unwrap_or_default() {
            self.in_flight_keys.remove(&key);
        }
    }
}

/// Describes the appender's metrics and registers them at zero, so they are
/// exported before the first post. Called by the api at start-up.
pub fn register_metrics() {
    use metrics::Unit;
    metrics::describe_histogram!(
        "store_append_batch_size",
        Unit::Count,
        "Message posts committed per batch"
    );
    metrics::describe_histogram!(
        "store_append_batch_seconds",
        Unit::Seconds,
        "Time to commit one batch of message posts"
    );
    metrics::describe_counter!(
        "store_append_fallbacks_total",
        "Batches retried one post at a time after racing another writer for a client_msg_id"
    );
    let _ = metrics::histogram!("store_append_batch_size");
    let _ = metrics::histogram!("store_append_batch_seconds");
    metrics::counter!("store_append_fallbacks_total").increment(0);
}

/// Commits one batch and answers each of its posts.
#[tracing::instrument(skip_all, fields(size = batch.len()))]
async fn commit_batch(store: Store, batch: Vec<Pending>) {
    let started = Instant::now();
    metrics::histogram!("store_append_batch_size").record(batch.len() as f64);
    let span = tracing::Span::current();
    for post in &batch {
        span.follows_from(&post.span);
    }
    let appended = {
        let messages: Vec<NewMessage<'_>> = batch.iter().map(|p| p.msg.as_new()).collect();
        store.append_batch(&messages).await
    };
    match appended {
        Ok(outcomes) => {
            for (post, outcome) in batch.into_iter().zip(outcomes) {
                let _ = post.reply.send(Ok(outcome));
            }
        }
        Err(StoreError::Database(e)) if unique_violation(&e) == Some(IDEMPOTENCY_KEY) => {
            // Another writer stored one of the keys after this statement's
            // snapshot. Nothing of the batch was stored; the one-message
            // path turns the conflict into the original.
            metrics::counter!("store_append_fallbacks_total").increment(1);
            tracing::debug!("a batch raced another writer for a client_msg_id; posting one by one");
            for post in batch {
                let outcome = store.post_message(post.msg.as_new()).await;
                let _ = post.reply.send(outcome);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for post in batch {
                let _ = post.reply.send(Err(StoreError::Batch(e.clone())));
            }
        }
    }
    metrics::histogram!("store_append_batch_seconds").record(started.elapsed().as_secs_f64());
}

/// One post of a batch as the PostgreSQL statement reads it.
#[derive(serde::Serialize)]
struct BatchRow<'a> {
    ord: usize,
    room_id: i64,
    sender_id: i64,
    body: &'a str,
    client_msg_id: Option<&'a str>,
    reply_to_seq: Option<i64>,
    created_at: i64,
}

impl Store {
    /// Appends `batch` in one transaction; one outcome per post, in order.
    /// No two posts may share a (room, sender, client_msg_id) key.
    async fn append_batch(&self, batch: &[NewMessage<'_>]) -> Result<Vec<PostOutcome>> {
        match self.backend {
            Backend::Postgres => self.append_batch_postgres(batch).await,
            Backend::Sqlite => self.append_batch_sqlite(batch).await,
        }
    }

    async fn append_batch_postgres(&self, batch: &[NewMessage<'_>]) -> Result<Vec<PostOutcome>> {
        let rows: Vec<BatchRow<'_>> = batch
            .iter()
            .enumerate()
            .map(|(ord, msg)| BatchRow {
                ord,
                room_id: msg.room_id.0,
                sender_id: msg.sender_id.0,
                body: msg.body,
                client_msg_id: msg.client_msg_id,
                reply_to_seq: msg.reply_to_seq,
                created_at: msg.created_at,
            })
            .collect();
        let rows = serde_json::to_string(&rows)
            .map_err(|e| StoreError::Corrupt(format!("a batch that is not JSON: {e}")))?;
        // Not retried: a batch whose connection died may have committed.
        // Its posts get a 503 and their clients retry with their
        // client_msg_id, which finds the original if it was stored.
        let rows = self.observe(
            sqlx::query(APPEND_BATCH_POSTGRES)
                .bind(rows)
                .fetch_all(&self.pool)
                .await,
        )?;
        let mut outcomes: Vec<Option<PostOutcome>> = batch.iter().map(|_| None).collect();
        for row in &rows {
            let ord: i64 = row.try_get("ord")?;
            let i = usize::try_from(ord)
                .ok()
                .filter(|&i| i < batch.len())
                .ok_or_else(|| StoreError::Corrupt(format!("a batch answer for post {ord}")))?;
            let created: Option<i64> = row.try_get("created_seq")?;
            let original: Option<String> = row.try_get("kind")?;
            outcomes[i] = Some(match (created, original) {
                (Some(seq), _) => PostOutcome::Created(batch[i].event(seq)),
                (None, Some(_)) => PostOutcome::Existing(event_from_row(row)?),
                (None, None) => PostOutcome::NotFound,
            });
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    StoreError::Corrupt("a post missing from its batch's answer".into())
                })
            })
            .collect()
    }

    async fn append_batch_sqlite(&self, batch: &[NewMessage<'_>]) -> Result<Vec<PostOutcome>> {
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for msg in batch {
            outcomes.push(post_message_in(&mut tx, msg).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(
        room: i64,
        sender: i64,
        client_msg_id: Option<&str>,
    ) -> (Pending, oneshot::Receiver<Result<PostOutcome>>) {
        let (reply, answer) = oneshot::channel();
        let msg = OwnedMessage {
            room_id: RoomId(room),
            sender_id: UserId(sender),
            body: "hi".into(),
            client_msg_id: client_msg_id.map(str::to_owned),
            reply_to_seq: None,
            created_at: 0,
        };
        let pending = Pending {
            msg,
            reply,
            span: tracing::Span::none(),
        };
        (pending, answer)
    }

    /// A batcher with `posts` queued, and their callers' ends.
    fn queued(
        posts: &[(i64, i64, Option<&str>)],
    ) -> (
        Batcher,
        mpsc::Sender<Pending>,
        Vec<oneshot::Receiver<Result<PostOutcome>>>,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let mut answers = Vec::new();
        for (room, sender, key) in posts {
            let (pending, answer) = post(*room, *sender, *key);
            answers.push(answer);
            assert!(tx.try_send(pending).is_ok(), "room in the queue");
        }
        (Batcher::new(rx), tx, answers)
    }

    fn posts(batch: &Batch) -> Vec<(i64, i64)> {
        batch
            .posts
            .iter()
            .map(|p| (p.msg.room_id.0, p.msg.sender_id.0))
            .collect()
    }

    /// An id of a real (finished) task, to mark a batch in flight.
    async fn task_id() -> task::Id {
        let task = tokio::spawn(async {});
        let id = task.id();
        task.await.expect("an empty task");
        id
    }

    #[test]
    fn a_batch_is_everything_waiting() {
        let (mut batcher, _tx, _answers) =
            queued(&[(1, 1, None), (2, 1, None), (3, 1, None), (4, 1, None)]);
        assert_eq!(posts(&batcher.fill()), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
        assert!(batcher.fill().posts.is_empty());
    }

    #[tokio::test]
    async fn a_second_post_of_a_key_waits_until_the_first_is_committed() {
        let (mut batcher, _tx, _answers) = queued(&[
            (1, 1, Some("k")),
            (1, 1, Some("k")),
            (1, 2, Some("k")),
            (2, 1, Some("k")),
            (1, 1, None),
        ]);
        let first = batcher.fill();
        assert_eq!(
            posts(&first),
            vec![(1, 1), (1, 2), (2, 1), (1, 1)],
            "the same client_msg_id from another sender or in another room is another key"
        );
        assert_eq!(batcher.held.len(), 1);
        let id = task_id().await;
        batcher.started(id, first.keys);
        assert!(
            batcher.fill().posts.is_empty(),
            "not while the first is in flight"
        );
        batcher.finished(Ok((id, ())));
        assert_eq!(posts(&batcher.fill()), vec![(1, 1)]);
        assert!(batcher.held.is_empty());
    }

    #[test]
    fn a_batch_takes_at_most_max_batch_posts_and_leaves_the_rest_queued() {
        let many: Vec<_> = (0..MAX_BATCH as i64 + 10).map(|n| (n, 1, None)).collect();
        let (mut batcher, _tx, _answers) = queued(&many);
        assert_eq!(batcher.fill().posts.len(), MAX_BATCH);
        assert_eq!(batcher.fill().posts.len(), 10);
    }

    #[tokio::test]
    async fn repeats_of_one_key_hold_at_most_a_batch_aside() {
        let storm = vec![(1, 1, Some("storm")); QUEUE_CAPACITY];
        let (mut batcher, _tx, _answers) = queued(&storm);
        let first = batcher.fill();
        assert_eq!(first.posts.len(), 1);
        batcher.started(task_id().await, first.keys);
        assert!(batcher.fill().posts.is_empty());
        assert!(batcher.held.len() <= MAX_BATCH);
        assert!(
            !batcher.may_take(),
            "the rest wait in the queue (back-pressure)"
        );
        assert_eq!(batcher.queue.len(), QUEUE_CAPACITY - batcher.held.len() - 1);
    }

    #[tokio::test]
    async fn a_panicking_batch_releases_its_keys() {
        let (mut batcher, _tx, _answers) = queued(&[(1, 1, Some("k")), (1, 1, Some("k"))]);
        let first = batcher.fill();
        let mut tasks = JoinSet::new();
        let id = tasks.spawn(async { panic!("a bug") }).id();
        batcher.started(id, first.keys);
        batcher.finished(tasks.join_next_with_id().await.expect("a task"));
        assert_eq!(posts(&batcher.fill()), vec![(1, 1)]);
    }

    #[test]
    fn posts_whose_caller_has_gone_are_not_committed() {
        let (mut batcher, _tx, mut answers) = queued(&[(1, 1, None), (2, 1, None)]);
        drop(answers.remove(0));
        assert_eq!(posts(&batcher.fill()), vec![(2, 1)]);
    }
}
