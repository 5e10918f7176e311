//! This node's part of presence: what it holds, reported to the shared
//! presence store ([`broker::presence`]) as it changes.
//!
//! One task per node owns the node's view: how many of its connections each
//! user has, and how many are in each room. Only a change of "this node
//! holds something of user U (in room R)" is reported, so a second device
//! on the same node costs nothing, and changes that pile up while a report
//! is in flight go out together in the next (one round trip each).
//!
//! A connection that goes away without leaving (a dropped network, a
//! restart) does not let go at once: its entries linger for the grace
//! period, so a client that reconnects (here or on another node) within it
//! changes nothing anyone sees. An explicit `leave`, a removal from the
//! room and a revoked session (logout) let go at once.
//!
//! The same task keeps the node's lease (one heartbeat per interval, the
//! only periodic Redis command of a node, whatever its connections) and
//! reaps the entries of nodes whose leases expired. When a report fails or
//! the lease is lost, the node takes a new id and reports everything it
//! holds under it; the old id is then retired and reaped like a dead node's,
//! so what the store shows converges on what the nodes hold.

use broker::presence::{Change, DynPresence, Entry, Lease, PresenceError};
use shared::{RoomId, UserId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most queued changes handled before they are reported.
const BATCH: usize = 4_096;

/// The timing of presence (see docs/operations.md for the bounds).
#[derive(Clone, Copy, Debug)]
pub struct PresenceTiming {
    /// How often the node renews its lease (and looks for expired ones).
    pub heartbeat: Duration,
    /// How long a lease lasts unrenewed.
    pub lease: Duration,
    /// How long a disconnected connection's entries linger.
    pub grace: Duration,
}

/// Reports what this node's connections do to presence. Cheap to clone.
///
/// The channel is unbounded on purpose: a connection or a shard must never
/// wait on Redis to open, join or close. What it holds is small (an entry
/// and a flag per change) and drained in batches of [`BATCH`], one round
/// trip each, by a task that does nothing else that waits long (reaps run
/// beside it).
#[derive(Clone)]
pub(crate) struct PresenceHandle {
    tx: mpsc::UnboundedSender<Op>,
    /// Changes the store has applied (for tests and introspection).
    applied: Arc<AtomicU64>,
}

enum Op {
    Hold(Entry),
    /// Let go of one hold; `at_once` skips the grace.
    Release(Entry, bool),
    /// Stop reporting, then end the lease `after` from now.
    Stop {
        retire_after: Duration,
        done: oneshot::Sender<()>,
    },
}

impl PresenceHandle {
    /// Changes this node has reported and the store applied.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub(crate) fn hold(&self, entry: Entry) {
        let _ = self.tx.send(Op::Hold(entry));
    }

    pub(crate) fn release(&self, entry: Entry, at_once: bool) {
        let _ = self.tx.send(Op::Release(entry, at_once));
    }

    pub(crate) fn user_connected(&self, user: UserId) {
        self.hold(Entry::User(user));
    }

    pub(crate) fn user_disconnected(&self, user: UserId, at_once: bool) {
        self.release(Entry::User(user), at_once);
    }

    pub(crate) fn joined(&self, room: RoomId, user: UserId) {
        self.hold(Entry::Room(room, user));
    }

    pub(crate) fn left(&self, room: RoomId, user: UserId, at_once: bool) {
        self.release(Entry::Room(room, user), at_once);
    }

    /// Stops reporting (shutdown). What the node holds stays in the store
    /// for `retire_after`, then is reaped by the other nodes: clients that
    /// reconnect elsewhere within it change nothing anyone sees.
    pub(crate) async fn stop(&self, retire_after: Duration) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Op::Stop { retire_after, done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// How many holds this node has on an entry.
#[derive(Default)]
struct Held {
    count: u32,
    /// Released by a disconnect: reported gone at this time unless held again.
    lingering_until: Option<Instant>,
}

struct Tracker {
    store: DynPresence,
    timing: PresenceTiming,
    /// This node's current id in the store (a new one after a lost lease).
    node: String,
    /// Registered under `node` (false until the store first answers).
    registered: bool,
    /// A report failed: re-report everything under a new id.
    resync: bool,
    /// Ids this node used before, still to retire and reap.
    retired: Vec<String>,
    held: HashMap<Entry, Held>,
    lingering: BinaryHeap<Reverse<(Instant, Entry)>>,
    pending: Vec<Change>,
    applied: Arc<AtomicU64>,
}

/// Starts the node's presence task.
pub(crate) fn start(
    store: DynPresence,
    timing: PresenceTiming,
    tracker: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> PresenceHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let applied = Arc::new(AtomicU64::new(0));
    let task = Tracker {
        applied: applied.clone(),
        store,
        timing,
        node: new_node_id(),
        registered: false,
        resync: false,
        retired: Vec::new(),
        held: HashMap::new(),
        lingering: BinaryHeap::new(),
        pending: Vec::new(),
    };
    tracker.spawn(task.run(rx, stop));
    PresenceHandle { tx, applied }
}

fn new_node_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Tracker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>, stop: CancellationToken) {
        self.register().await;
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + self.timing.heartbeat,
            self.timing.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_linger = self.lingering.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                op = rx.recv() => {
                    let Some(op) = op else { break };
                    if let Some((retire_after, done)) = self.handle(op) {
                        self.goodbye(retire_after).await;
                        let _ = done.send(());
                        return;
                    }
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(op) => if let Some((retire_after, done)) = self.handle(op) {
                                self.goodbye(retire_after).await;
                                let _ = done.send(());
                                return;
                            },
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(next_linger) => self.expire_lingering(),
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = stop.cancelled() => break,
            }
            self.report().await;
        }
    }

    /// Applies one op to the node's view; returns the stop request, if any.
    fn handle(&mut self, op: Op) -> Option<(Duration, oneshot::Sender<()>)> {
        match op {
            Op::Hold(entry) => {
                let held = self.held.entry(entry).or_default();
                held.count += 1;
                if held.count == 1 && held.lingering_until.take().is_none() {
                    self.pending.push(Change::Add(entry));
                }
            }
            Op::Release(entry, at_once) => {
                let held = self.held.get_mut(&entry)?;
                held.count = held.count.saturating_sub(1);
                if held.count == 0 {
                    if at_once {
                        self.held.remove(&entry);
                        self.pending.push(Change::Remove(entry));
                    } else if held.lingering_until.is_none() {
                        let until = Instant::now() + self.timing.grace;
                        held.lingering_until = Some(until);
                        self.lingering.push(Reverse((until, entry)));
                    }
                }
            }
            Op::Stop { retire_after, done } => return Some((retire_after, done)),
        }
        None
    }

    /// Reports entries whose grace ran out while still unheld.
    fn expire_lingering(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, entry))) = self.lingering.peek().copied() {
            if at > now {
                break;
            }
            self.lingering.pop();
            // Held again, or re-lingering with a later deadline: not this one.
            if let Some(held) = self.held.get(&entry)
                && held.count == 0
                && held.lingering_until == Some(at)
            {
                self.held.remove(&entry);
                self.pending.push(Change::Remove(entry));
            }
        }
    }

    async fn register(&mut self) {
        match self.store.register(&self.node, self.timing.lease).await {
            Ok(()) => {
                self.registered = true;
                tracing::info!(node = %self.node, "presence lease taken");
            }
            Err(e) => {
                self.resync = true;
                tracing::warn!(error = %e, "presence unavailable: cannot take the node's lease");
            }
        }
    }

    /// Sends what changed; on failure, schedules a full re-report.
    async fn report(&mut self) {
        if self.pending.is_empty() || self.resync || !self.registered {
            self.pending.clear();
            return;
        }
        let changes = std::mem::take(&mut self.pending);
        match self.store.apply(&self.node, &changes).await {
            Ok(()) => {
                self.applied
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
                metrics::counter!("gateway_presence_changes_total").increment(changes.len() as u64);
            }
            Err(PresenceError::LeaseLost) => {
                // At once: the other nodes may be reaping the old id already.
                tracing::warn!(node = %self.node, "presence lease lost; reporting again under a new id");
                self.start_resync();
                self.resync_now().await;
            }
            Err(PresenceError::Broker(e)) => {
                tracing::warn!(error = %e, "presence report failed; reporting again when the store answers");
                self.start_resync();
            }
        }
    }

    fn start_resync(&mut self) {
        metrics::counter!("gateway_presence_resyncs_total").increment(1);
        self.resync = true;
        self.pending.clear();
    }

    /// Renews the lease, reaps expired nodes, and finishes a re-report.
    async fn heartbeat(&mut self) {
        if self.resync || !self.registered {
            self.resync_now().await;
            return;
        }
        match self.store.renew(&self.node, self.timing.lease).await {
            Ok(Lease::Held { expired }) => {
                // Reaped beside this task, so a big dead node does not hold
                // up this node's own reports; the lock keeps two reapers
                // (another node's, or this one's next heartbeat) apart.
                for dead in expired {
                    let (store, me) = (self.store.clone(), self.node.clone());
                    tokio::spawn(async move { reap(&*store, &dead, &me).await });
                }
                self.retire_old().await;
            }
            Ok(Lease::Lost) => {
                tracing::warn!(node = %self.node, "presence lease lost; reporting again under a new id");
                self.start_resync();
                self.resync_now().await;
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }

    /// Reports everything held under a new id; the old one is retired
    /// once the new one is in, so nobody sees the node's users leave.
    async fn resync_now(&mut self) {
        let node = new_node_id();
        if let Err(e) = self.store.register(&node, self.timing.lease).await {
            tracing::warn!(error = %e, "presence unavailable: cannot take a lease");
            return;
        }
        let changes: Vec<Change> = self.held.keys().map(|e| Change::Add(*e)).collect();
        if let Err(e) = self.store.apply(&node, &changes).await {
            tracing::warn!(error = %e, "presence re-report failed");
            return;
        }
        if self.registered {
            self.retired.push(std::mem::replace(&mut self.node, node));
        } else {
            self.node = node;
        }
        self.registered = true;
        self.resync = false;
        tracing::info!(node = %self.node, entries = changes.len(), "presence reported under a new id");
        self.retire_old().await;
    }

    /// Ends the leases of ids this node no longer uses and reaps them.
    async fn retire_old(&mut self) {
        let old = std::mem::take(&mut self.retired);
        for node in old {
            let done =
                self.store.retire(&node, Duration::ZERO).await.is_ok() && self.reap(&node).await;
            if !done {
                self.retired.push(node);
            }
        }
    }

    async fn reap(&self, dead: &str) -> bool {
        reap(&*self.store, dead, &self.node).await
    }

    /// Shutdown: nothing more is reported; the lease ends after the grace.
    async fn goodbye(&mut self, retire_after: Duration) {
        if self.registered
            && let Err(e) = self.store.retire(&self.node, retire_after).await
        {
            tracing::warn!(error = %e, "presence goodbye failed; the lease will expire");
        }
    }
}

/// Removes a dead node's entries; true if done (or another node is on it).
async fn reap(store: &dyn broker::presence::Presence, dead: &str, reaper: &str) -> bool {
    match store.reap(dead, reaper).await {
        Ok(removed) => {
            if removed > 0 {
                metrics::counter!("gateway_presence_reaped_total").increment(removed as u64);
                tracing::info!(node = %dead, removed, "reaped the presence of an expired node");
            }
            true
        }
        Err(e) => {
            tracing::warn!(node = %dead, error = %e, "reaping an expired node failed");
            false
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
