//! The node's registry and fan-out.
//!
//! - Connections live in a `DashMap` (and, per user, in a second one that
//!   routes user notices).
//! - Rooms are owned by shard tasks (a room always by the same shard). A
//!   shard alone decides who is in a room, orders the room's events with a
//!   [`Sequencer`](crate::sequencer::Sequencer) and writes them to members'
//!   queues. Joins, leaves and deliveries for one room are handled strictly
//!   in the order they reach its shard, without locks.
//! - One subscription task applies SUBSCRIBE/UNSUBSCRIBE to the broker in
//!   the order they were decided, so the broker's view ends where the node's is:
//!   subscribed to a room exactly while it has local members.
//! - The session check of a connect is answered without the store when a
//!   live connection of the same session on this node already passed it
//!   ([`Hub::vouch`]): the registry is the session cache. It needs no TTL and no bound of its own: an entry is a
//!   connection, it lives exactly while the node holds the user's topic (on
//!   which revocations arrive), and a revocation notice marks the session's
//!   connections under the same lock the lookup takes. A broker reconnect
//!   or dropped deliveries (notices possibly missed) move the notice epoch,
//!   and only checks made in the current epoch vouch. An in-band refresh
//!   always asks the store: it is what catches a revocation whose notice
//!   was lost for good, so what a lost notice leaves open (the connection
//!   and any it vouched for) ends with their tokens.

mod shard;
mod subscriptions;

use crate::outbox::{CloseReason, Outbox, Queued};
use crate::presence::PresenceHandle;
use broker::{Delivery, DynBroker, SubscriptionControl, Topic};
use dashmap::{DashMap, DashSet};
use shard::{Shard, ShardCmd};
use shared::protocol::{Encoding, ServerFrame, UserNotice, close};
use shared::{RoomId, SessionId, UserId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use store::Store;
use subscriptions::{Reply, SubCmd};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use shard::{JoinError, KNOWN_MEMBERS_BUDGET, MEMBER_LIST_LIMIT, ReadVerdict, TypingVerdict};

/// Node-local connection number.
pub type ConnId = u64;

/// Commands a shard may have queued. Producers wait when it is full, which
/// pushes back on the broker reader (whose losses are then recovered by seq).
const SHARD_QUEUE: usize = 16_384;

/// How long a join waits for the broker to confirm a subscription.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many groups the heartbeat splits connections into: each interval
/// pings one group per tick, so pings are spread over time, not sent to
/// every connection in one burst.
const HEARTBEAT_SLOTS: u64 = 16;

/// What the hub's tasks need to know.
pub struct HubSettings {
    /// Room shard tasks.
    pub shards: usize,
    /// Every connection is pinged once per interval.
    pub heartbeat_interval: Duration,
    /// See [`crate::WsSettings::write_coalesce`].
    pub write_coalesce: Duration,
    /// See [`crate::WsSettings::typing_interval`].
    pub typing_interval: Duration,
    /// Where the node reports what its connections hold.
    pub(crate) presence: PresenceHandle,
    /// Where `joined` snapshots are read.
    pub presence_store: broker::presence::DynPresence,
    /// See [`crate::WsSettings::presence_snapshot_limit`].
    pub presence_snapshot_limit: usize,
    /// Where past events are read (resumes, gap fills).
    pub(crate) backlog: Arc<crate::backlog::BacklogReader>,
    /// See [`crate::WsSettings::resume_limit`].
    pub resume_limit: i64,
}

/// A connection as the hub sees it.
pub struct Conn {
    pub id: ConnId,
    pub user_id: UserId,
    pub session_id: SessionId,
    pub encoding: Encoding,
    pub out: Arc<Outbox>,
    /// Rooms this connection is currently in (maintained by the shards).
    pub joined: AtomicUsize,
    /// The user's presence counts this connection (set by `register`).
    pub present: AtomicBool,
    /// Its session was revoked (a logout): presence lets go at once.
    pub logged_out: AtomicBool,
    /// What this connection knows of its session (see [`Hub::vouch`]).
    pub session: SessionCheck,
}

/// How often the node answered a session or membership check from what it
/// knows (a hit) or asked the store (a miss), and how many member lists it
/// read; the same counts as `gateway_auth_cache_total` and
/// `gateway_member_lists_total`, per node (tests run nodes in one process).
#[derive(Debug, Default)]
pub struct AuthCacheStats {
    pub session_hits: AtomicU64,
    pub session_misses: AtomicU64,
    pub membership_hits: AtomicU64,
    pub membership_misses: AtomicU64,
    pub member_lists: AtomicU64,
    /// Reads of a live room's newest seq (after joins answered from its
    /// member list, after subscribing, after a broker reconnect).
    pub tail_reads: AtomicU64,
}

impl AuthCacheStats {
    /// Counts a session check (`kind` "session") or a join's membership
    /// check ("membership").
    pub(crate) fn count(&self, kind: &'static str, hit: bool) {
        let counter = match (kind, hit) {
            ("session", true) => &self.session_hits,
            ("session", false) => &self.session_misses,
            (_, true) => &self.membership_hits,
            (_, false) => &self.membership_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_auth_cache_total", "kind" => kind,
            "outcome" => if hit { "hit" } else { "miss" })
        .increment(1);
    }
}

/// A connection's last session check: the notice epoch it was made in (0:
/// none yet) and when the session expires (ms since the epoch), so another
/// connection of the session can rely on it while both hold.
#[derive(Debug, Default)]
pub struct SessionCheck {
    epoch: AtomicU64,
    until_ms: AtomicI64,
}

impl SessionCheck {
    fn vouches(&self, epoch: u64, now_ms: i64) -> Option<i64> {
        let until = self.until_ms.load(Ordering::Acquire);
        (self.epoch.load(Ordering::Acquire) == epoch && until > now_ms).then_some(until)
    }

    fn set(&self, epoch: u64, until_ms: i64) {
        self.until_ms.store(until_ms, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
    }
}

impl Conn {
    fn binary(&self) -> bool {
        self.encoding == Encoding::MsgPack
    }

    /// Encodes a frame in this connection's encoding and writes it now; a
    /// full outbox closes the connection as a slow consumer.
    pub fn send(&self, frame: &ServerFrame) {
        if self
            .out
            .send(self.binary(), &self.encoding.encode(frame))
            .is_err()
        {
            self.slow_consumer();
        }
    }

    /// Queues an already-encoded event without writing it: `Some(true)` if
    /// the caller must flush this connection (see [`Queued`]), `None` if the
    /// connection is closing. A full outbox closes the connection as a slow
    /// consumer.
    pub fn queue(&self, bytes: &[u8]) -> Option<bool> {
        match self.out.queue(self.binary(), bytes) {
            Ok(Queued::FlushNeeded) => Some(true),
            Ok(Queued::Covered) => Some(false),
            Ok(Queued::Closed) => None,
            Err(_full) => {
                self.slow_consumer();
                None
            }
        }
    }

    fn slow_consumer(&self) {
        metrics::counter!("gateway_slow_consumers_total").increment(1);
        self.out.close(CloseReason {
            code: close::SLOW_CONSUMER,
            reason: "slow consumer: outbound queue full",
        });
    }
}

pub struct Hub {
    conns: DashMap<ConnId, Arc<Conn>>,
    users: DashMap<UserId, Vec<Arc<Conn>>>,
    shards: Vec<mpsc::Sender<ShardCmd>>,
    subscriptions: mpsc::UnboundedSender<SubCmd>,
    /// Topics the broker has confirmed, for introspection and tests.
    subscribed: Arc<DashSet<Topic>>,
    presence: PresenceHandle,
    backlog: Arc<crate::backlog::BacklogReader>,
    /// Moves whenever user notices may have been missed (a broker
    /// reconnect, dropped deliveries): session checks made before no
    /// longer vouch for anything. Starts at 1 (0 means "never checked").
    notice_epoch: AtomicU64,
    auth_stats: Arc<AuthCacheStats>,
}

impl Hub {
    /// Opens the node's subscription and starts the shard, router and
    /// subscription tasks on `tracker`.
    pub async fn start(
        broker: &DynBroker,
        store: Store,
        markers: store::MarkerWriter,
        settings: HubSettings,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<Hub>, broker::BrokerError> {
        let shard_count = settings.shards;
        let subscription = broker.subscribe().await?;
        let subscribed = Arc::new(DashSet::new());
        let auth_stats = Arc::new(AuthCacheStats::default());
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let mut shards = Vec::new();
        let mut shard_rxs = Vec::new();
        for _ in 0..shard_count.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            shards.push(tx);
            shard_rxs.push(rx);
        }
        let hub = Arc::new(Hub {
            conns: DashMap::new(),
            users: DashMap::new(),
            shards: shards.clone(),
            subscriptions: sub_tx.clone(),
            subscribed: subscribed.clone(),
            presence: settings.presence.clone(),
            backlog: settings.backlog.clone(),
            notice_epoch: AtomicU64::new(1),
            auth_stats: auth_stats.clone(),
        });
        let deps = shard::ShardDeps {
            store,
            write_coalesce: settings.write_coalesce,
            typing_interval: settings.typing_interval,
            markers,
            presence: shard::PresenceDeps {
                handle: settings.presence.clone(),
                store: settings.presence_store.clone(),
                snapshot_limit: settings.presence_snapshot_limit,
            },
            backlog: settings.backlog.clone(),
            resume_limit: settings.resume_limit,
            known_budget: Arc::new(AtomicUsize::new(0)),
            auth_stats,
        };
        for (index, rx) in shard_rxs.into_iter().enumerate() {
            let shard = Shard::new(index, sub_tx.clone(), shards[index].clone(), deps.clone());
            tracker.spawn(shard.run(rx, stop.clone()));
        }
        let control: Arc<dyn SubscriptionControl> = subscription.control.clone();
        tracker.spawn(subscriptions::run(
            control,
            sub_rx,
            subscribed,
            stop.clone(),
        ));
        tracker.spawn(route(
            hub.clone(),
            subscription.deliveries,
            subscription.control,
            stop.clone(),
        ));
        tracker.spawn(heartbeat(hub.clone(), settings.heartbeat_interval, stop));
        Ok(hub)
    }

    fn shard(&self, room: RoomId) -> &mpsc::Sender<ShardCmd> {
        &self.shards[room.0.unsigned_abs() as usize % self.shards.len()]
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Where this node's reads of past events were served from.
    pub fn backlog_stats(&self) -> &crate::backlog::BacklogStats {
        self.backlog.stats()
    }

    /// Session and membership checks answered without the store, and not.
    pub fn auth_cache_stats(&self) -> &AuthCacheStats {
        &self.auth_stats
    }

    /// Whether the broker has confirmed this node's subscription to `topic`.
    pub fn is_subscribed(&self, topic: Topic) -> bool {
        self.subscribed.contains(&topic)
    }

    /// Every topic this node is subscribed to.
    pub fn subscribed_topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self.subscribed.iter().map(|t| *t).collect();
        topics.sort();
        topics
    }

    /// Adds a connection whose token verified; resolves once the node
    /// receives its user's notices. Its session must be checked only after
    /// this (a revocation committed later then reaches it as a notice; one
    /// committed between an earlier check and the subscription would reach
    /// nobody), and only then is the user announced present
    /// ([`Hub::announce`]).
    pub async fn register(&self, conn: Arc<Conn>) -> Result<(), JoinError> {
        self.conns.insert(conn.id, conn.clone());
        metrics::gauge!("gateway_connections").increment(1.0);
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut entry = self.users.entry(conn.user_id).or_default();
            entry.push(conn.clone());
            // Sent while the entry is locked, so subscription commands for
            // this user reach the broker in the order the index changed.
            let first = entry.len() == 1;
            if first {
                let _ = self
                    .subscriptions
                    .send(SubCmd::Add(Topic::User(conn.user_id), Reply::Once(tx)));
            }
            first
        };
        if first {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
                Ok(Ok(true)) => {}
                _ => return Err(JoinError::Unavailable),
            }
        }
        Ok(())
    }

    /// The current notice epoch: read before a session is checked against
    /// the store, given to [`Hub::session_checked`] after.
    pub fn notice_epoch(&self) -> u64 {
        self.notice_epoch.load(Ordering::Acquire)
    }

    /// Whether `conn`'s session is known to be live without asking the
    /// store: a registered connection of the same session was checked in
    /// the current notice epoch,
    /// has not been revoked since, and the session has not expired. If so,
    /// `conn` now vouches too. `conn` must be registered: a revocation that
    /// the lookup does not see yet then reaches it as a notice.
    pub fn vouch(&self, conn: &Conn, now_ms: i64) -> bool {
        let epoch = self.notice_epoch();
        // A read guard on the user's entry: a revocation notice marks the
        // session's connections under the write guard, so it happens wholly
        // before this lookup (which then sees them revoked) or wholly after
        // (and then marks `conn`, registered before, too).
        let until = self.users.get(&conn.user_id).and_then(|conns| {
            conns
                .iter()
                .filter(|c| {
                    c.session_id == conn.session_id
                        && !c.logged_out.load(Ordering::Acquire)
                        && !c.out.is_closed()
                })
                .filter_map(|c| c.session.vouches(epoch, now_ms))
                .max()
        });
        let hit = until.is_some();
        if let Some(until) = until {
            conn.session.set(epoch, until);
        }
        self.auth_stats.count("session", hit);
        hit
    }

    /// Records that the store found `conn`'s session live until `until_ms`
    /// in a check that began in notice epoch `epoch`.
    pub fn session_checked(&self, conn: &Conn, epoch: u64, until_ms: i64) {
        conn.session.set(epoch, until_ms);
    }

    /// The registered connection's session is live: its user is online.
    pub fn announce(&self, conn: &Conn) {
        if !conn.present.swap(true, Ordering::Relaxed) {
            self.presence.user_connected(conn.user_id);
        }
    }

    /// Removes a connection from every map and every room.
    pub fn unregister(&self, conn: &Conn) {
        if self.conns.remove(&conn.id).is_some() {
            metrics::gauge!("gateway_connections").decrement(1.0);
        }
        if let dashmap::Entry::Occupied(mut entry) = self.users.entry(conn.user_id) {
            entry.get_mut().retain(|c| c.id != conn.id);
            if entry.get().is_empty() {
                entry.remove();
                let _ = self
                    .subscriptions
                    .send(SubCmd::Remove(Topic::User(conn.user_id)));
            }
        }
        if conn.present.swap(false, Ordering::Relaxed) {
            self.presence
                .user_disconnected(conn.user_id, conn.logged_out.load(Ordering::Relaxed));
        }
        if conn.joined.load(Ordering::Relaxed) > 0 {
            for shard in &self.shards {
                // try_send: a full shard must not block a disconnect; the
                // shard also drops members whose queue is closed.
                let _ = shard.try_send(ShardCmd::DropConn { conn: conn.id });
            }
        }
    }

    /// Adds `conn` to `room`'s local members. `snapshot` is the room's
    /// `seq` when the store confirmed membership; None has the room's shard
    /// check membership against what it knows of the room, or answer
    /// [`JoinError::Unchecked`] when it knows nothing. The shard queues the
    /// `joined` frame (answering request `id`, with who is in the room when
    /// `presence` asks for it) ahead of any event, then, for a resume
    /// (`since`), the events after `since`; returns the `seq` after which
    /// events will be delivered.
    pub async fn join(
        &self,
        room: RoomId,
        conn: Arc<Conn>,
        snapshot: Option<i64>,
        id: Option<u64>,
        since: Option<i64>,
        presence: bool,
    ) -> Result<i64, JoinError> {
        let (reply, rx) = oneshot::channel();
        self.shard(room)
            .send(ShardCmd::Join {
                room,
                conn,
                snapshot,
                id,
                since,
                presence,
                reply,
            })
            .await
            .map_err(|_| JoinError::Unavailable)?;
        rx.await.unwrap_or(Err(JoinError::Unavailable))
    }

    /// Removes `conn` from `room`; false if it was not in it.
    pub async fn leave(&self, room: RoomId, conn: ConnId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .shard(room)
            .send(ShardCmd::Leave { room, conn, reply })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Decides what becomes of a `typing` frame from `conn` for `room`: the
    /// room's shard owns the per-(user, room) throttle, so no lock is taken
    /// and the decision is in order with joins and leaves.
    pub async fn typing(&self, room: RoomId, conn: &Conn, active: bool) -> TypingVerdict {
        let (reply, rx) = oneshot::channel();
        if self
            .shard(room)
            .send(ShardCmd::Typing {
                room,
                conn: conn.id,
                user: conn.user_id,
                active,
                reply,
            })
            .await
            .is_err()
        {
            return TypingVerdict::Throttled;
        }
        rx.await.unwrap_or(TypingVerdict::Throttled)
    }

    /// Checks a `read` frame against the room's shard: the connection must
    /// have joined the room and `seq` must be an event this node delivered.
    pub async fn read(&self, room: RoomId, conn: &Conn, seq: i64) -> ReadVerdict {
        let (reply, rx) = oneshot::channel();
        if self
            .shard(room)
            .send(ShardCmd::Read {
                room,
                conn: conn.id,
                seq,
                reply,
            })
            .await
            .is_err()
        {
            return ReadVerdict::NotJoined;
        }
        rx.await.unwrap_or(ReadVerdict::NotJoined)
    }

    /// Rooms with local members on this node (from the shards' own state).
    pub async fn local_rooms(&self) -> Vec<RoomId> {
        let mut rooms = Vec::new();
        for shard in &self.shards {
            let (reply, rx) = oneshot::channel();
            if shard.send(ShardCmd::Rooms { reply }).await.is_ok()
                && let Ok(mut r) = rx.await
            {
                rooms.append(&mut r);
            }
        }
        rooms.sort();
        rooms
    }

    /// Every registered connection, in the order they connected (a copy:
    /// no map shard stays locked while the caller works through it).
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        let mut conns: Vec<Arc<Conn>> = self.conns.iter().map(|c| c.value().clone()).collect();
        conns.sort_by_key(|c| c.id);
        conns
    }

    fn user_notice(&self, user: UserId, payload: &[u8]) {
        let notice: UserNotice = match Encoding::Json.decode(payload, &[]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%user, error = %e, "undecodable user notice");
                return;
            }
        };
        let Some(conns) = self.users.get(&user).map(|c| c.clone()) else {
            return;
        };
        let frame = match notice {
            UserNotice::RoomAdded { room_id, role } => ServerFrame::RoomAdded { room_id, role },
            UserNotice::RoomRemoved { room_id } => ServerFrame::RoomRemoved { room_id },
            UserNotice::RoomInvited { invitation } => ServerFrame::RoomInvited { invitation },
            UserNotice::InvitationEnded { room_id } => ServerFrame::InvitationEnded { room_id },
            UserNotice::ReadMarker { room_id, read_seq } => {
                ServerFrame::ReadMarker { room_id, read_seq }
            }
            UserNotice::Signal { name, payload } => ServerFrame::Signal {
                room_id: None,
                user_id: Some(user),
                name,
                payload,
            },
            UserNotice::SessionRevoked { session_id } => {
                // Marked under the entry's write guard (see `Hub::vouch`):
                // the connections registered by now, also those whose own
                // check is still under way.
                let revoked: Vec<Arc<Conn>> = match self.users.get_mut(&user) {
                    Some(entry) => entry
                        .iter()
                        .filter(|c| c.session_id == session_id)
                        .inspect(|c| c.logged_out.store(true, Ordering::Release))
                        .cloned()
                        .collect(),
                    None => Vec::new(),
                };
                for conn in &revoked {
                    // A logout: the user's presence ends at once, not after the grace.
                    tracing::info!(target: "security", %user, %session_id, "closing a connection of a revoked session");
                    conn.out.close(CloseReason {
                        code: close::SESSION_REVOKED,
                        reason: "session revoked",
                    });
                }
                return;
            }
        };
        for conn in &conns {
            conn.send(&frame);
        }
    }
}

/// Pings every connection once per `interval`, a slot of them per tick.
/// One task for the node instead of a timer per connection: an idle
/// connection costs no task and no timer of its own.
async fn heartbeat(hub: Arc<Hub>, interval: Duration, stop: CancellationToken) {
    let tick = (interval / HEARTBEAT_SLOTS as u32).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        // Collected first: no map shard stays locked while sockets are written.
        let due: Vec<Arc<Conn>> = hub
            .conns
            .iter()
            .filter(|c| c.id % HEARTBEAT_SLOTS == slot)
            .map(|c| c.value().clone())
            .collect();
        for conn in due {
            conn.out.ping();
        }
        slot = (slot + 1) % HEARTBEAT_SLOTS;
    }
}

/// Routes the node's deliveries: room events to their shard, user notices
/// straight to the user's connections.
async fn route(
    hub: Arc<Hub>,
    mut deliveries: mpsc::Receiver<Delivery>,
    control: Arc<dyn SubscriptionControl>,
    stop: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            d = deliveries.recv() => match d {
                Some(d) => d,
                None => break,
            },
            _ = stop.cancelled() => break,
        };
        match delivery {
            Delivery::Message {
                topic: Topic::Room(room),
                payload,
            } => {
                if hub
                    .shard(room)
                    .send(ShardCmd::Deliver { room, payload })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Delivery::Message {
                topic: Topic::User(user),
                payload,
            } => hub.user_notice(user, &payload),
            Delivery::Lost => {
                hub.notice_epoch.fetch_add(1, Ordering::AcqRel);
            }
            Delivery::Reconnected => {
                hub.notice_epoch.fetch_add(1, Ordering::AcqRel);
                for shard in &hub.shards {
                    let _ = shard.send(ShardCmd::Resync).await;
                }
            }
        }
    }
    control.close().await;
}
