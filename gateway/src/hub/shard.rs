//! A shard: the single owner of a set of rooms on this node.
//!
//! Events arrive as the api published them. A sampled one has its trace
//! context in front of the frame ([`shared::trace_context`]): the shard
//! strips it without copying and wraps the event's fan-out in a `deliver`
//! span, a child of the api's `publish` span. The span covers queueing the
//! frame for every local member; the socket writes follow at the end of the
//! shard's pass, shared by every event of the pass, so they are not in it.
//!
//! Besides the rooms' members and sequencers, a shard owns their typing
//! state: the per-(user, room) throttle of `typing` frames from this node's
//! connections, and who is shown as typing (so a message from that user can
//! end it). Both live in the room's state, so they are bounded by the room's
//! typists within one indicator lifetime and die with the room.
//!
//! A shard also knows who may join its live rooms: the member list read
//! when a room is first joined here, kept current by the room's own
//! `member.added` / `member.removed` / `room.deleted` events as they are
//! delivered (in seq order, after the list's seq), so a member's join to a
//! live room needs no membership query (a join the list does not admit is
//! decided by the store; an admitted one is followed by a coalesced read of
//! the room's newest seq, see `check_tail`). A room becomes live on this
//! node only for a joiner the list admits: a stranger's join costs a probe
//! and never a subscription. Lists are bounded per room
//! ([`MEMBER_LIST_LIMIT`]) and for the node ([`KNOWN_MEMBERS_BUDGET`]); a
//! room past either is simply not known and its joins ask the store, as
//! every join did before.

use super::subscriptions::{Reply, SubCmd};
use super::{Conn, ConnId};
use crate::backlog::BacklogReader;
use crate::outbox::Flushed;
use crate::presence::PresenceHandle;
use crate::sequencer::{MAX_PENDING, Offer, Sequencer};
use broker::Topic;
use broker::presence::{DynPresence, RoomPresence};
use bytes::Bytes;
use serde::Deserialize;
use shared::protocol::{
    Encoding, LeftReason, MAX_ROOMS_PER_CONNECTION, PresenceSnapshot, ResumeOutcome, ServerFrame,
};
use shared::trace_context::{self, RemoteParent};
use shared::{RoomId, UserId};
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::{mpsc, oneshot};

/// How long a room waits for a missing event before reading it from the
/// store. Out-of-order publishes land microseconds apart; a real loss
/// (a publish that failed, a Redis reconnect) costs this much latency.
pub const GAP_WAIT: Duration = Duration::from_millis(50);

/// Most commands a shard handles before it writes what they queued: the
/// bound on how long the first of them waits for its write.
const MAX_COMMANDS_PER_PASS: usize = 256;

/// Most members of a room whose list a node keeps: a larger room's joins
/// ask the store one by one (each an indexed row), which costs less than
/// reading and holding tens of thousands of ids for a few local joiners.
pub const MEMBER_LIST_LIMIT: usize = 10_000;

/// Most member ids a node keeps over all its live rooms: 8 bytes each plus
/// the set's overhead, about 32 MB at this bound. Past it a newly live
/// room is not known (its joins ask the store) until other rooms go quiet.
pub const KNOWN_MEMBERS_BUDGET: usize = 1_000_000;

/// `member.removed` seqs remembered per room so a join racing with a
/// removal can be refused; older ones are forgotten past this many.
const REMEMBERED_REMOVALS: usize = 1_024;

/// What becomes of a client's `read` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Record it (the marker writer keeps the largest).
    Accept,
    /// The connection has not joined the room.
    NotJoined,
    /// Beyond the newest event this node delivered in the room: the client
    /// cannot have seen it. Carries that newest `seq`.
    Beyond(i64),
}

/// What becomes of a client's `typing` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypingVerdict {
    /// Publish these bytes (a `typing` frame) on the room's topic.
    Forward(Bytes),
    /// Within the interval (or a stop with nothing to stop): dropped silently.
    Throttled,
    /// The connection has not joined the room.
    NotJoined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The broker or the store did not answer.
    #[error("unavailable")]
    Unavailable,
    /// The user's membership ended before the join took effect.
    #[error("not a member")]
    NotMember,
    /// The connection is in [`MAX_ROOMS_PER_CONNECTION`] other rooms.
    #[error("too many rooms")]
    TooManyRooms,
    /// A join without a membership check: the node does not know the
    /// room's members (or the `since` asked for is past what it knows), so
    /// the caller must ask the store and join again with what it read.
    #[error("membership not known here")]
    Unchecked,
}

/// What a shard needs for presence.
#[derive(Clone)]
pub(crate) struct PresenceDeps {
    /// Where admissions and removals are reported.
    pub handle: PresenceHandle,
    /// Where `joined` snapshots are read.
    pub store: DynPresence,
    /// Most users listed in a snapshot.
    pub snapshot_limit: usize,
}

pub(crate) enum ShardCmd {
    Join {
        room: RoomId,
        conn: Arc<Conn>,
        /// The room's seq when the store confirmed membership; None to
        /// have the shard check it against the room's member list.
        snapshot: Option<i64>,
        id: Option<u64>,
        since: Option<i64>,
        presence: bool,
        reply: oneshot::Sender<Result<i64, JoinError>>,
    },
    /// What a deferred join waited for was read (or could not be): its
    /// backlog up to the seq given, and its presence snapshot.
    Deferred {
        room: RoomId,
        join: PendingJoin,
        reply: JoinedReply,
        events: Option<(i64, Result<Vec<Bytes>, ()>)>,
        presence: Option<Result<RoomPresence, ()>>,
    },
    Leave {
        room: RoomId,
        conn: ConnId,
        reply: oneshot::Sender<bool>,
    },
    DropConn {
        conn: ConnId,
    },
    Deliver {
        room: RoomId,
        payload: Bytes,
    },
    Subscribed {
        room: RoomId,
        ok: bool,
    },
    /// A room's member list was read: None if the read failed, Some(None)
    /// if there is no such room or its reader is not in it.
    Members {
        room: RoomId,
        listed: Option<Option<store::MemberIds>>,
    },
    GapTimer {
        room: RoomId,
    },
    Filled {
        room: RoomId,
        from: i64,
        events: Result<Vec<Bytes>, ()>,
    },
    Tail {
        room: RoomId,
        last_seq: Option<i64>,
    },
    Resync,
    Rooms {
        reply: oneshot::Sender<Vec<RoomId>>,
    },
    Typing {
        room: RoomId,
        conn: ConnId,
        user: UserId,
        active: bool,
        reply: oneshot::Sender<TypingVerdict>,
    },
    Read {
        room: RoomId,
        conn: ConnId,
        seq: i64,
        reply: oneshot::Sender<ReadVerdict>,
    },
}

/// What a shard needs to know of a delivered payload to route it: a room
/// event (`type` "event", numbered) or an ephemeral frame (`typing`,
/// `receipt`, `presence`, `signal`).
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(rename = "type", borrow)]
    frame: std::borrow::Cow<'a, str>,
    #[serde(default)]
    seq: i64,
    #[serde(borrow, default)]
    created_at: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    user_id: Option<UserId>,
    #[serde(default)]
    sender_id: Option<UserId>,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    version: i64,
}

/// A delivered payload, parsed.
enum Payload {
    Event(i64, Incoming),
    /// Ephemeral: bypasses the sequencer, goes to local members only.
    Typing {
        user: UserId,
        active: bool,
        json: Bytes,
    },
    /// A member read further: ephemeral, to the other local members.
    Receipt {
        user: UserId,
        json: Bytes,
    },
    /// A user entered or left the room: ephemeral, to the others.
    Presence {
        user: UserId,
        version: i64,
        json: Bytes,
    },
    /// A backend's signal: ephemeral, to every local member.
    Signal(Bytes),
}

impl Payload {
    /// Reads a published payload: the frame's header and, in front of the
    /// frame of a sampled room event only, its trace context. The frame
    /// stays in the buffer it arrived in either way.
    fn parse(payload: Bytes) -> Option<Payload> {
        let (json, trace) = trace_context::split(payload);
        let header: Header<'_> = serde_json::from_slice(&json).ok()?;
        if header.frame == "typing" {
            let (user, active) = (header.user_id?, header.active);
            return Some(Payload::Typing { user, active, json });
        }
        if header.frame == "receipt" {
            let user = header.user_id?;
            return Some(Payload::Receipt { user, json });
        }
        // A profile change: for every local member, like a signal (the
        // user's own other connections too).
        if header.frame == "signal" || header.frame == "profile" {
            return Some(Payload::Signal(json));
        }
        if header.frame == "presence" {
            let (user, version) = (header.user_id?, header.version);
            return Some(Payload::Presence {
                user,
                version,
                json,
            });
        }
        let (seq, effect, created_ms) = Incoming::from_header(&header)?;
        Some(Payload::Event(
            seq,
            Incoming {
                json,
                effect,
                created_ms,
                trace,
            },
        ))
    }
}

/// An event ready for delivery.
struct Incoming {
    /// The event frame as clients get it (without any trace context).
    json: Bytes,
    effect: Effect,
    /// When the api committed the event (milliseconds since the epoch).
    created_ms: i64,
    /// The api's `publish` span, when it was sampled: the fan-out becomes
    /// a `deliver` span in the same trace.
    trace: Option<RemoteParent>,
}

enum Effect {
    None,
    Added(UserId),
    Removed(UserId),
    /// The room is gone: every connection leaves it.
    Deleted,
    /// A message: its sender is no longer typing.
    Posted(UserId),
}

impl Incoming {
    fn parse(json: Bytes) -> Option<(i64, Incoming)> {
        match Payload::parse(json)? {
            Payload::Event(seq, incoming) => Some((seq, incoming)),
            Payload::Typing { .. }
            | Payload::Receipt { .. }
            | Payload::Presence { .. }
            | Payload::Signal(_) => None,
        }
    }

    /// The seq, effect and commit time of a room event's header.
    fn from_header(header: &Header<'_>) -> Option<(i64, Effect, i64)> {
        if header.frame != "event" {
            return None;
        }
        let effect = match (header.kind.as_ref(), header.user_id, header.sender_id) {
            ("member.added", Some(u), _) => Effect::Added(u),
            ("member.removed", Some(u), _) => Effect::Removed(u),
            ("room.deleted", _, _) => Effect::Deleted,
            ("message.created", _, Some(u)) => Effect::Posted(u),
            _ => Effect::None,
        };
        let created_ms = chrono::DateTime::parse_from_rfc3339(&header.created_at)
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        Some((header.seq, effect, created_ms))
    }
}

/// Who may join a live room, as this node knows it (see the module docs).
enum Known {
    /// Not known (not read, too many, over the budget, or events missed):
    /// joins ask the store.
    No,
    /// Every member as of `as_of`, plus the membership events this node
    /// delivered after it.
    Members {
        as_of: i64,
        users: HashSet<UserId>,
        held: Held,
    },
}

/// What the known members say of a join.
enum Verdict {
    /// A member; the seq the node's knowledge is as of.
    Member(i64),
    Stranger,
    /// Ask the store.
    Unknown,
}

impl Known {
    /// Judges `user`'s join (resuming after `since`), `delivered` being
    /// the newest event this node delivered in the room.
    fn judge(&self, user: UserId, since: Option<i64>, delivered: i64) -> Verdict {
        let Known::Members { as_of, users, .. } = self else {
            return Verdict::Unknown;
        };
        if !users.contains(&user) {
            return Verdict::Stranger;
        }
        let known = (*as_of).max(delivered);
        // A client may have seen events this node has not yet: only the
        // store can say whether such a `since` is real.
        match since {
            Some(since) if since > known => Verdict::Unknown,
            _ => Verdict::Member(known),
        }
    }

    /// Applies a delivered event's membership effect; the list already
    /// has every change up to `as_of`.
    fn apply(&mut self, seq: i64, effect: &Effect) {
        let Known::Members { as_of, users, held } = self else {
            return;
        };
        if seq <= *as_of {
            return;
        }
        match effect {
            Effect::Added(user) => {
                if users.insert(*user) && !held.grow() {
                    *self = Known::No;
                }
            }
            Effect::Removed(user) => {
                if users.remove(user) {
                    held.shrink();
                }
            }
            Effect::Deleted => *self = Known::No,
            Effect::None | Effect::Posted(_) => {}
        }
    }
}

/// A room's share of [`KNOWN_MEMBERS_BUDGET`], given back when dropped
/// (with the room's state, or when its list is abandoned).
struct Held {
    budget: Arc<AtomicUsize>,
    n: usize,
}

impl Held {
    fn take(budget: &Arc<AtomicUsize>, n: usize) -> Option<Held> {
        let before = budget.fetch_add(n, Ordering::AcqRel);
        if before + n > KNOWN_MEMBERS_BUDGET {
            budget.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("gateway_known_members").increment(n as f64);
        Some(Held {
            budget: budget.clone(),
            n,
        })
    }

    /// One more member; false if the budget has no room for it.
    fn grow(&mut self) -> bool {
        if self.budget.fetch_add(1, Ordering::AcqRel) >= KNOWN_MEMBERS_BUDGET {
            self.budget.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        metrics::gauge!("gateway_known_members").increment(1.0);
        self.n += 1;
        true
    }
}

impl Held {
    /// One member fewer.
    fn shrink(&mut self) {
        if self.n > 0 {
            self.n -= 1;
            self.budget.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!("gateway_known_members").decrement(1.0);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.n, Ordering::AcqRel);
        metrics::gauge!("gateway_known_members").decrement(self.n as f64);
    }
}

/// This node's last forwarded `typing` of one user in one room.
struct TypingSent {
    at: Instant,
    /// A start was forwarded and no stop since: a stop has something to end.
    active: bool,
}

pub(crate) struct PendingJoin {
    conn: Arc<Conn>,
    /// None until membership is confirmed (see [`ShardCmd::Join`]).
    snapshot: Option<i64>,
    id: Option<u64>,
    /// Resume: every event after this seq first.
    since: Option<i64>,
    /// The `joined` reply carries who is in the room.
    presence: bool,
    reply: oneshot::Sender<Result<i64, JoinError>>,
}

/// What a `joined` reply says.
pub(crate) struct JoinedReply {
    seq: i64,
    presence: Option<PresenceSnapshot>,
    resume: Option<ResumeOutcome>,
}

impl JoinedReply {
    /// Events after `seq` follow.
    fn at(seq: i64) -> Self {
        Self {
            seq,
            presence: None,
            resume: None,
        }
    }

    /// A resume: every event after `since` follows.
    fn resumed(since: i64) -> Self {
        Self {
            resume: Some(ResumeOutcome {
                complete: true,
                history_from_seq: None,
            }),
            ..Self::at(since)
        }
    }

    /// A resume that is not streamed: events after `delivered` follow, the
    /// client pages `since + 1 ..= delivered` from the history.
    fn too_far(delivered: i64, since: i64) -> Self {
        Self {
            resume: Some(ResumeOutcome {
                complete: false,
                history_from_seq: Some(since + 1),
            }),
            ..Self::at(delivered)
        }
    }
}

enum Phase {
    /// The room's member list is being read for the joins waiting here; the
    /// room is not subscribed until a member among them is found.
    Reading {
        joins: Vec<PendingJoin>,
        /// The list is read as this joiner (see [`Store::member_ids`]).
        reader: UserId,
    },
    /// SUBSCRIBE sent, not yet confirmed. Joins wait here; events that
    /// arrive meanwhile are kept for the sequencer.
    Subscribing {
        joins: Vec<PendingJoin>,
        early: Vec<Bytes>,
    },
    Active {
        seq: Sequencer<Incoming>,
    },
}

struct RoomState {
    members: Vec<Arc<Conn>>,
    phase: Phase,
    /// Who may join (see the module docs).
    known: Known,
    /// A read of the room's newest seq is under way (see `check_tail`),
    /// and another was asked for meanwhile.
    tail_reading: bool,
    tail_again: bool,
    /// user → seq of their latest processed `member.removed`.
    removed: HashMap<UserId, i64>,
    gap_timer_armed: bool,
    filling: bool,
    /// The newest seq a joiner's membership check saw committed. Should
    /// this node still be short of it a moment later (its publish was lost,
    /// and no later event shows the gap), the gap timer reads the rest.
    expected: i64,
    /// Throttle of this node's users' `typing` frames (see module docs).
    typing_sent: HashMap<UserId, TypingSent>,
    /// Users shown as typing to this node's members, until when.
    typists: HashMap<UserId, Instant>,
    /// Presence snapshots being read for joining connections. While any
    /// is, the room stays (even without members) and keeps its presence
    /// events in `recent_presence`, so what changed after the snapshot was
    /// read reaches the joiner, however the two raced.
    snapshot_reads: usize,
    recent_presence: Vec<(i64, UserId, Bytes)>,
    /// Resuming joins being read. While any is, the room stays and keeps
    /// the events it delivers in `recent_events` for them.
    backlog_reads: usize,
    recent_events: Vec<(i64, Bytes)>,
    /// Members that resumed ahead of this node: events up to this seq are
    /// not sent to them (they have them).
    skip_until: HashMap<ConnId, i64>,
}

pub(crate) struct Shard {
    index: usize,
    store: Store,
    subscriptions: mpsc::UnboundedSender<SubCmd>,
    me: mpsc::Sender<ShardCmd>,
    rooms: HashMap<RoomId, RoomState>,
    /// conn → rooms it is in, so a disconnect does not scan every room.
    conn_rooms: HashMap<ConnId, Vec<RoomId>>,
    /// Connections with events queued in this pass, written at its end.
    dirty: Vec<Arc<Conn>>,
    /// Connections inside their coalescing window, and when to write them.
    deferred: Vec<(Instant, Arc<Conn>)>,
    write_coalesce: Duration,
    typing_interval: Duration,
    /// Where delivery markers go (coalesced, written in batches).
    markers: store::MarkerWriter,
    presence: PresenceDeps,
    /// Past events, for resuming joins and gap fills.
    backlog: Arc<BacklogReader>,
    /// Longest backlog streamed to a resuming join.
    resume_limit: i64,
    /// Member ids kept by every shard of the node (see [`Held`]).
    known_budget: Arc<AtomicUsize>,
    auth_stats: Arc<super::AuthCacheStats>,
}

/// What every shard of a node shares.
#[derive(Clone)]
pub(crate) struct ShardDeps {
    pub store: Store,
    pub write_coalesce: Duration,
    pub typing_interval: Duration,
    pub markers: store::MarkerWriter,
    pub presence: PresenceDeps,
    pub backlog: Arc<BacklogReader>,
    pub resume_limit: i64,
    /// Member ids kept over all shards (see [`KNOWN_MEMBERS_BUDGET`]).
    pub known_budget: Arc<AtomicUsize>,
    pub auth_stats: Arc<super::AuthCacheStats>,
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        subscriptions: mpsc::UnboundedSender<SubCmd>,
        me: mpsc::Sender<ShardCmd>,
        deps: ShardDeps,
    ) -> Self {
        Self {
            index,
            store: deps.store,
            subscriptions,
            me,
            rooms: HashMap::new(),
            conn_rooms: HashMap::new(),
            dirty: Vec::new(),
            deferred: Vec::new(),
            write_coalesce: deps.write_coalesce,
            typing_interval: deps.typing_interval,
            markers: deps.markers,
            presence: deps.presence,
            backlog: deps.backlog,
            resume_limit: deps.resume_limit,
            known_budget: deps.known_budget,
            auth_stats: deps.auth_stats,
        }
    }

    /// Handles commands in passes: everything already queued (up to
    /// [`MAX_COMMANDS_PER_PASS`]), then one write per touched connection.
    /// Under load a pass holds several events for the same connections, so
    /// the node makes fewer, larger writes exactly when it is busiest.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ShardCmd>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let next_deferred = self.deferred.iter().map(|(due, _)| *due).min();
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                _ = sleep_until(next_deferred) => {
                    self.write_deferred();
                    continue;
                }
                _ = stop.cancelled() => break,
            };
            self.handle(cmd);
            for _ in 1..MAX_COMMANDS_PER_PASS {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            self.write_dirty();
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// Writes every connection this pass queued events for, or defers it
    /// to the end of its coalescing window.
    fn write_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        for conn in self.dirty.drain(..) {
            if let Flushed::Later(due) = conn.out.flush_after(self.write_coalesce, now) {
                self.deferred.push((due, conn));
            }
        }
    }

    fn write_deferred(&mut self) {
        let now = Instant::now();
        for (_, conn) in self.deferred.extract_if(.., |(due, _)| *due <= now) {
            conn.out.flush();
        }
    }

    fn handle(&mut self, cmd: ShardCmd) {
        match cmd {
            ShardCmd::Join {
                room,
                conn,
                snapshot,
                id,
                since,
                presence,
                reply,
            } => self.join(
                room,
                PendingJoin {
                    conn,
                    snapshot,
                    id,
                    since,
                    presence,
                    reply,
                },
            ),
            ShardCmd::Deferred {
                room,
                join,
                reply,
                events,
                presence,
            } => self.deferred_read(room, join, reply, events, presence),
            ShardCmd::Leave { room, conn, reply } => {
                // An explicit leave: presence lets go at once.
                let _ = reply.send(self.remove_member(room, conn, None, true));
            }
            ShardCmd::DropConn { conn } => {
                // A disconnect: presence lingers for the grace.
                for room in self.conn_rooms.remove(&conn).unwrap_or_default() {
                    self.remove_member(room, conn, None, false);
                }
            }
            ShardCmd::Deliver { room, payload } => self.deliver(room, payload),
            ShardCmd::Subscribed { room, ok } => self.subscribed(room, ok),
            ShardCmd::Members { room, listed } => self.members_read(room, listed),
            ShardCmd::GapTimer { room } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.gap_timer_armed = false;
                }
                self.fill_gap(room);
            }
            ShardCmd::Filled { room, from, events } => self.filled(room, from, events),
            ShardCmd::Tail { room, last_seq } => self.tail(room, last_seq),
            ShardCmd::Resync => self.resync(),
            ShardCmd::Rooms { reply } => {
                let mut rooms: Vec<RoomId> = self
                    .rooms
                    .iter()
                    .filter(|(_, s)| !s.members.is_empty())
                    .map(|(r, _)| *r)
                    .collect();
                rooms.sort();
                let _ = reply.send(rooms);
            }
            ShardCmd::Typing {
                room,
                conn,
                user,
                active,
                reply,
            } => {
                let _ = reply.send(self.typing(room, conn, user, active));
            }
            ShardCmd::Read {
                room,
                conn,
                seq,
                reply,
            } => {
                let verdict = match self.rooms.get(&room) {
                    Some(state) if state.members.iter().any(|c| c.id == conn) => {
                        match &state.phase {
                            Phase::Active { seq: s } if seq <= s.delivered() => ReadVerdict::Accept,
                            Phase::Active { seq: s } => ReadVerdict::Beyond(s.delivered()),
                            Phase::Subscribing { .. } | Phase::Reading { .. } => {
                                ReadVerdict::Beyond(0)
                            }
                        }
                    }
                    _ => ReadVerdict::NotJoined,
                };
                let _ = reply.send(verdict);
            }
        }
    }

    /// How long clients show a typing indicator: two intervals, so a typist
    /// whose frames are forwarded once per interval stays shown throughout.
    fn typing_ttl(&self) -> Duration {
        self.typing_interval * 2
    }

    /// The throttle: at most one start per interval per (user, room) from
    /// this node, and a stop only when a start is showing. Anything else is
    /// dropped and counted, never answered.
    fn typing(&mut self, room: RoomId, conn: ConnId, user: UserId, active: bool) -> TypingVerdict {
        let ttl = self.typing_ttl();
        let interval = self.typing_interval;
        let Some(state) = self.rooms.get_mut(&room) else {
            return TypingVerdict::NotJoined;
        };
        if !state.members.iter().any(|c| c.id == conn) {
            return TypingVerdict::NotJoined;
        }
        let now = Instant::now();
        let forward = match (active, state.typing_sent.get_mut(&user)) {
            (true, Some(sent)) if now.duration_since(sent.at) < interval => false,
            (true, _) => {
                // Entries older than an indicator's lifetime say nothing any more.
                state
                    .typing_sent
                    .retain(|_, sent| now.duration_since(sent.at) < ttl);
                state.typing_sent.insert(
                    user,
                    TypingSent {
                        at: now,
                        active: true,
                    },
                );
                true
            }
            (false, Some(sent)) if sent.active => {
                sent.active = false;
                true
            }
            (false, _) => false,
        };
        if !forward {
            metrics::counter!("gateway_typing_frames_total", "outcome" => "throttled").increment(1);
            return TypingVerdict::Throttled;
        }
        metrics::counter!("gateway_typing_frames_total", "outcome" => "forwarded").increment(1);
        let ttl_ms = if active {
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        };
        TypingVerdict::Forward(Encoding::Json.encode(&ServerFrame::Typing {
            room_id: room,
            user_id: user,
            active,
            ttl_ms,
        }))
    }

    /// Writes a delivered `typing` frame to the room's local members other
    /// than the typist's own connections, and remembers who is shown typing.
    fn typing_delivered(&mut self, room: RoomId, user: UserId, active: bool, json: Bytes) {
        let ttl = self.typing_ttl();
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let now = Instant::now();
        if active {
            state.typists.retain(|_, until| *until > now);
            state.typists.insert(user, now + ttl);
        } else {
            state.typists.remove(&user);
        }
        self.ephemeral(room, user, json);
    }

    /// Writes an ephemeral frame (no `seq`) to the room's local members
    /// other than `user`'s own connections.
    fn ephemeral(&mut self, room: RoomId, user: UserId, json: Bytes) {
        self.ephemeral_to(room, Some(user), json);
    }

    /// Writes a backend's signal to every local member of the room: it has
    /// no sender among them.
    fn signal(&mut self, room: RoomId, json: Bytes) {
        self.ephemeral_to(room, None, json);
    }

    fn ephemeral_to(&mut self, room: RoomId, except: Option<UserId>, json: Bytes) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let mut msgpack: Option<Option<Bytes>> = None;
        for conn in state.members.iter().filter(|c| Some(c.user_id) != except) {
            let bytes = match conn.encoding {
                Encoding::Json => &json,
                Encoding::MsgPack => match msgpack.get_or_insert_with(|| to_msgpack(&json)) {
                    Some(bytes) => &*bytes,
                    None => continue,
                },
            };
            if conn.queue(bytes) == Some(true) {
                self.dirty.push(conn.clone());
            }
        }
    }

    fn join(&mut self, room: RoomId, join: PendingJoin) {
        // The cap is checked here, by the owner of the room's members, so a
        // re-join of a room the connection is already in is answered
        // `joined` even at the cap. A connection's joins are answered one at
        // a time (its reader awaits each), so its count cannot grow between
        // this check and the admission.
        let already_in = self
            .conn_rooms
            .get(&join.conn.id)
            .is_some_and(|rooms| rooms.contains(&room));
        if !already_in && join.conn.joined.load(Ordering::Relaxed) >= MAX_ROOMS_PER_CONNECTION {
            let _ = join.reply.send(Err(JoinError::TooManyRooms));
            return;
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            return self.first_join(room, join);
        };
        let delivered = match &mut state.phase {
            Phase::Reading { joins, .. } => {
                // Decided with the others once the member list is read.
                joins.push(join);
                return;
            }
            // Not delivering yet: what is known is as of the list.
            Phase::Subscribing { .. } => match &state.known {
                Known::Members { as_of, .. } => *as_of,
                Known::No => 0,
            },
            Phase::Active { seq } => seq.delivered(),
        };
        let unchecked = join.snapshot.is_none();
        let Some(join) = check(&state.known, delivered, join, &self.auth_stats) else {
            return;
        };
        match &mut state.phase {
            // The tail read after the subscription covers it.
            Phase::Subscribing { joins, .. } => joins.push(join),
            _ => {
                self.join_active(room, join);
                if unchecked {
                    // What the store would have shown this join: events
                    // committed before it whose publish was lost.
                    self.check_tail(room);
                }
            }
        }
    }

    /// The first join of a room not live on this node. One whose
    /// membership the store confirmed subscribes at once; one without reads
    /// the room's member list first (later joins wait with it), and the room
    /// is subscribed only if a waiting joiner is on it.
    fn first_join(&mut self, room: RoomId, join: PendingJoin) {
        let phase = if join.snapshot.is_some() {
            let _ = self.subscriptions.send(SubCmd::Add(
                Topic::Room(room),
                Reply::Shard(self.me.clone(), room),
            ));
            Phase::Subscribing {
                joins: vec![join],
                early: Vec::new(),
            }
        } else {
            let store = self.store.clone();
            let me = self.me.clone();
            let reader = join.conn.user_id;
            tokio::spawn(async move {
                let listed = match store.member_ids(room, reader, MEMBER_LIST_LIMIT).await {
                    Ok(listed) => Some(listed),
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "reading a room's members failed");
                        None
                    }
                };
                let _ = me.send(ShardCmd::Members { room, listed }).await;
            });
            Phase::Reading {
                joins: vec![join],
                reader,
            }
        };
        self.rooms.insert(
            room,
            RoomState {
                members: Vec::new(),
                phase,
                known: Known::No,
                tail_reading: false,
                tail_again: false,
                removed: HashMap::new(),
                gap_timer_armed: false,
                filling: false,
                expected: 0,
                typing_sent: HashMap::new(),
                typists: HashMap::new(),
                snapshot_reads: 0,
                recent_presence: Vec::new(),
                backlog_reads: 0,
                recent_events: Vec::new(),
                skip_until: HashMap::new(),
            },
        );
    }

    /// The member list of a room in [`Phase::Reading`] arrived (or could
    /// not be read): the waiting joins are decided by it, and the room is
    /// subscribed for those admitted, or forgotten if there are none.
    fn members_read(&mut self, room: RoomId, listed: Option<Option<store::MemberIds>>) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let Phase::Reading { joins, reader } = &mut state.phase else {
            return;
        };
        let (joins, reader) = (std::mem::take(joins), *reader);
        self.auth_stats
            .member_lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = match listed {
            Some(Some(store::MemberIds::Listed { last_seq, users })) => {
                metrics::counter!("gateway_member_lists_total", "outcome" => "listed").increment(1);
                Some(Some((last_seq, users.into_iter().collect::<HashSet<_>>())))
            }
            Some(None) => Some(None),
            Some(Some(store::MemberIds::TooMany)) => {
                metrics::counter!("gateway_member_lists_total", "outcome" => "too_many")
                    .increment(1);
                None
            }
            None => {
                metrics::counter!("gateway_member_lists_total", "outcome" => "failed").increment(1);
                None
            }
        };
        let mut admitted = Vec::new();
        for mut join in joins {
            if join.snapshot.is_some() {
                // Confirmed by the store while the list was read.
                admitted.push(join);
                continue;
            }
            let verdict = match &outcome {
                // No such room, or the reader is not in it; of the others
                // that says nothing.
                Some(None) if join.conn.user_id == reader => Err(JoinError::NotMember),
                Some(None) => Err(JoinError::Unchecked),
                Some(Some((_, users))) if !users.contains(&join.conn.user_id) => {
                    Err(JoinError::NotMember)
                }
                Some(Some((last_seq, _))) if join.since.is_some_and(|s| s > *last_seq) => {
                    Err(JoinError::Unchecked)
                }
                Some(Some((last_seq, _))) => Ok(*last_seq),
                None => Err(JoinError::Unchecked),
            };
            self.auth_stats
                .count("membership", verdict != Err(JoinError::Unchecked));
            match verdict {
                Ok(seq) => {
                    join.snapshot = Some(seq);
                    admitted.push(join);
                }
                Err(e) => {
                    let _ = join.reply.send(Err(e));
                }
            }
        }
        if admitted.is_empty() {
            self.rooms.remove(&room);
            return;
        }
        // Delivery starts at the lowest snapshot (see `subscribed`): the
        // list is kept only if every event after it will pass through this
        // shard, which a joiner confirmed by the store with a newer
        // snapshot than the list's would not guarantee.
        let start = admitted.iter().filter_map(|j| j.snapshot).min();
        if let Some(Some((as_of, users))) = outcome
            && start.is_some_and(|start| start <= as_of)
        {
            state.known = match Held::take(&self.known_budget, users.len()) {
                Some(held) => Known::Members { as_of, users, held },
                None => Known::No,
            };
        }
        state.phase = Phase::Subscribing {
            joins: admitted,
            early: Vec::new(),
        };
        let _ = self.subscriptions.send(SubCmd::Add(
            Topic::Room(room),
            Reply::Shard(self.me.clone(), room),
        ));
    }

    /// Admits a join to an active room: at once, or once what it asked for
    /// is read (a backlog to resume from, a presence snapshot) in
    /// [`Self::deferred_read`]. The room is subscribed by now, so whatever
    /// happens in it during the read reaches this shard and is kept for the
    /// joiner (`recent_events`, `recent_presence`): nothing is lost or
    /// doubled at the seam between what was read and what is live.
    fn join_active(&mut self, room: RoomId, mut join: PendingJoin) {
        let limit = self.resume_limit;
        let Some(state) = self.rooms.get_mut(&room) else {
            let _ = join.reply.send(Err(JoinError::Unavailable));
            return;
        };
        let Phase::Active { seq } = &state.phase else {
            let _ = join.reply.send(Err(JoinError::Unavailable));
            return;
        };
        let delivered = seq.delivered();
        let snapshot = join.snapshot.unwrap_or(0);
        if snapshot > delivered {
            // Usually events on their way here; if not, the gap timer
            // fetches them (see `expected`).
            state.expected = state.expected.max(snapshot);
            self.arm_gap_timer(room);
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            let _ = join.reply.send(Err(JoinError::Unavailable));
            return;
        };
        let (read, reply) = match join.since {
            None => (None, JoinedReply::at(delivered)),
            // Level with this node, or ahead of it by events still on their
            // way here: nothing to read, and those events are not sent twice.
            Some(since) if since >= delivered => (None, JoinedReply::resumed(since)),
            Some(since) if delivered - since > limit => {
                metrics::counter!("gateway_resumes_total", "outcome" => "over_limit").increment(1);
                (None, JoinedReply::too_far(delivered, since))
            }
            Some(since) => (Some((since, delivered)), JoinedReply::resumed(since)),
        };
        if read.is_none() && reply.resume.as_ref().is_some_and(|r| !r.complete) {
            // Decided: from here on it is a plain join with that answer.
            join.since = None;
        }
        if join.since.is_none() && !join.presence {
            let mut reply = reply;
            reply.seq = delivered;
            admit(
                state,
                &mut self.conn_rooms,
                &self.presence.handle,
                room,
                join,
                reply,
            );
            return;
        }
        if join.since.is_some() {
            state.backlog_reads += 1;
        }
        if join.presence {
            state.snapshot_reads += 1;
        }
        let reader = self.backlog.clone();
        let presence_store = self.presence.store.clone();
        let me = self.me.clone();
        let want_presence = join.presence;
        tokio::spawn(async move {
            let events = match read {
                Some((after, to)) => Some((to, reader.read(room, after, to).await)),
                None => None,
            };
            let presence = match want_presence {
                true => Some(presence_store.room(room).await.map_err(|e| {
                    tracing::warn!(%room, error = %e, "reading a presence snapshot failed");
                })),
                false => None,
            };
            let _ = me
                .send(ShardCmd::Deferred {
                    room,
                    join,
                    reply,
                    events,
                    presence,
                })
                .await;
        });
    }

    /// Admits a deferred join: `joined`, then its backlog, then what the
    /// room delivered while it was read, then the presence changes newer
    /// than its snapshot.
    fn deferred_read(
        &mut self,
        room: RoomId,
        join: PendingJoin,
        mut reply: JoinedReply,
        events: Option<(i64, Result<Vec<Bytes>, ()>)>,
        presence: Option<Result<RoomPresence, ()>>,
    ) {
        let limit = self.presence.snapshot_limit;
        let Some(state) = self.rooms.get_mut(&room) else {
            let _ = join.reply.send(Err(JoinError::Unavailable));
            return;
        };
        if join.since.is_some() {
            state.backlog_reads = state.backlog_reads.saturating_sub(1);
        }
        if presence.is_some() {
            state.snapshot_reads = state.snapshot_reads.saturating_sub(1);
        }
        let Phase::Active { seq } = &state.phase else {
            let _ = join.reply.send(Err(JoinError::Unavailable));
            return;
        };
        let delivered = seq.delivered();
        // Without a snapshot (presence unreadable) the join still succeeds;
        // the reply simply has none.
        reply.presence = presence.and_then(Result::ok).map(|p| PresenceSnapshot {
            version: p.version,
            count: p.users.len(),
            user_ids: (p.users.len() <= limit).then_some(p.users),
        });
        let mut backlog = Vec::new();
        let mut floor = join.since;
        match (join.since, events) {
            (Some(since), Some((to, Ok(payloads)))) => {
                metrics::counter!("gateway_resumes_total", "outcome" => "complete").increment(1);
                backlog = payloads;
                floor = Some(since.max(to));
            }
            (Some(since), Some((_, Err(())))) => {
                // Neither the window nor the database answered: live from
                // here, and the client pages the rest.
                metrics::counter!("gateway_resumes_total", "outcome" => "unavailable").increment(1);
                reply = JoinedReply {
                    presence: reply.presence,
                    ..JoinedReply::too_far(delivered, since)
                };
                floor = None;
            }
            (Some(_), None) => {
                metrics::counter!("gateway_resumes_total", "outcome" => "complete").increment(1);
            }
            (None, _) => reply.seq = delivered,
        }
        let version = reply.presence.as_ref().map(|s| s.version);
        let conn = join.conn.clone();
        let admitted = admit(
            state,
            &mut self.conn_rooms,
            &self.presence.handle,
            room,
            join,
            reply,
        );
        if admitted {
            let mut queued = false;
            for payload in backlog {
                if let Some((_, incoming)) = Incoming::parse(payload) {
                    queued |= queue_json(&conn, &incoming.json);
                }
            }
            if let Some(floor) = floor {
                for (_, json) in state.recent_events.iter().filter(|(s, _)| *s > floor) {
                    queued |= queue_json(&conn, json);
                }
                if floor > delivered {
                    state.skip_until.insert(conn.id, floor);
                }
            }
            if let Some(version) = version {
                for (_, _, json) in state
                    .recent_presence
                    .iter()
                    .filter(|(v, user, _)| *v > version && *user != conn.user_id)
                {
                    queued |= queue_json(&conn, json);
                }
            }
            if queued {
                self.dirty.push(conn);
            }
        }
        if state.backlog_reads == 0 {
            state.recent_events.clear();
        }
        if state.snapshot_reads == 0 {
            state.recent_presence.clear();
        }
        self.release_if_empty(room);
    }

    fn subscribed(&mut self, room: RoomId, ok: bool) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let Phase::Subscribing { joins, early } = &mut state.phase else {
            return;
        };
        let joins = std::mem::take(joins);
        let early = std::mem::take(early);
        if !ok {
            for join in joins {
                let _ = join.reply.send(Err(JoinError::Unavailable));
            }
            if state.members.is_empty() {
                self.rooms.remove(&room);
                let _ = self.subscriptions.send(SubCmd::Remove(Topic::Room(room)));
            }
            return;
        }
        // The first joiner's snapshot is where the node's delivery starts;
        // anything later that it missed is read from the store as a gap.
        let start = joins.iter().filter_map(|j| j.snapshot).min().unwrap_or(0);
        state.phase = Phase::Active {
            seq: Sequencer::new(start),
        };
        for join in joins {
            self.join_active(room, join);
        }
        for payload in early {
            self.deliver(room, payload);
        }
        // An event committed after the joiners' snapshots and published
        // before the subscription took effect reached neither: it would
        // wait for the room's next event to be noticed as a gap. In a room
        // that goes quiet there may be none, so the store is asked now.
        self.check_tail(room);
        self.release_if_empty(room);
    }

    fn deliver(&mut self, room: RoomId, payload: Bytes) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Phase::Subscribing { early, .. } = &mut state.phase {
            early.push(payload);
            return;
        }
        let (n, incoming) = match Payload::parse(payload) {
            Some(Payload::Event(n, incoming)) => (n, incoming),
            Some(Payload::Typing { user, active, json }) => {
                return self.typing_delivered(room, user, active, json);
            }
            Some(Payload::Receipt { user, json }) => return self.ephemeral(room, user, json),
            Some(Payload::Signal(json)) => return self.signal(room, json),
            Some(Payload::Presence {
                user,
                version,
                json,
            }) => {
                if let Some(state) = self.rooms.get_mut(&room)
                    && state.snapshot_reads > 0
                {
                    state.recent_presence.push((version, user, json.clone()));
                }
                return self.ephemeral(room, user, json);
            }
            None => {
                tracing::warn!(%room, "undecodable room event dropped");
                return;
            }
        };
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let Phase::Active { seq } = &mut state.phase else {
            return;
        };
        match seq.offer(n, incoming) {
            Offer::Deliver(ready) => self.fan_out(room, ready),
            Offer::Held => self.arm_gap_timer(room),
            Offer::Duplicate => metrics::counter!("gateway_duplicate_events_total").increment(1),
        }
    }

    /// Writes each event to every member, then applies its membership effect.
    fn fan_out(&mut self, room: RoomId, ready: Vec<(i64, Incoming)>) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let last_delivered = ready.last().map(|(seq, _)| *seq);
        for (seq, event) in ready {
            state.known.apply(seq, &event.effect);
            // Only sampled events carry a trace; the rest cost no span.
            // Counts are recorded as i64: OpenTelemetry has no unsigned
            // integers, and tracing-opentelemetry turns a u64 into a string.
            let span = event.trace.map(|parent| {
                let span = tracing::info_span!("deliver", otel.kind = "consumer", room_id = %room,
                    seq, members = state.members.len() as i64, delivered = tracing::field::Empty);
                parent.adopt(&span);
                span
            });
            let entered = span.as_ref().map(|span| span.enter());
            let mut msgpack: Option<Option<Bytes>> = None;
            let mut delivered = 0u64;
            for conn in &state.members {
                if !state.skip_until.is_empty()
                    && state.skip_until.get(&conn.id).is_some_and(|s| seq <= *s)
                {
                    continue;
                }
                let bytes = match conn.encoding {
                    Encoding::Json => &event.json,
                    Encoding::MsgPack => {
                        match msgpack.get_or_insert_with(|| to_msgpack(&event.json)) {
                            Some(bytes) => &*bytes,
                            None => continue,
                        }
                    }
                };
                if let Some(flush) = conn.queue(bytes) {
                    delivered += 1;
                    if flush {
                        self.dirty.push(conn.clone());
                    }
                }
            }
            metrics::counter!("gateway_deliveries_total").increment(delivered);
            if state.backlog_reads > 0 {
                state.recent_events.push((seq, event.json.clone()));
            }
            if let Some(span) = &span {
                span.record("delivered", delivered as i64);
            }
            drop(entered);
            if event.created_ms > 0 {
                // Commit to fan-out on this node; clocks of different hosts
                // may disagree by a little, so it is a health signal, not a benchmark.
                let lag_ms = (shared::model::now_millis() - event.created_ms).max(0);
                metrics::histogram!("gateway_event_lag_seconds").record(lag_ms as f64 / 1000.0);
            }
            match event.effect {
                Effect::Removed(user) => {
                    if state.removed.len() >= REMEMBERED_REMOVALS
                        && let Some(oldest) = state
                            .removed
                            .iter()
                            .min_by_key(|(_, s)| **s)
                            .map(|(u, _)| *u)
                    {
                        state.removed.remove(&oldest);
                    }
                    state.removed.insert(user, seq);
                    let gone: Vec<ConnId> = state
                        .members
                        .iter()
                        .filter(|c| c.user_id == user)
                        .map(|c| c.id)
                        .collect();
                    for conn in gone {
                        remove_from(
                            state,
                            &mut self.conn_rooms,
                            &self.presence.handle,
                            room,
                            conn,
                            Some(LeftReason::Removed),
                            true,
                        );
                    }
                }
                Effect::Deleted => {
                    let gone: Vec<ConnId> = state.members.iter().map(|c| c.id).collect();
                    for conn in gone {
                        remove_from(
                            state,
                            &mut self.conn_rooms,
                            &self.presence.handle,
                            room,
                            conn,
                            Some(LeftReason::RoomDeleted),
                            true,
                        );
                    }
                }
                Effect::Added(user) => {
                    state.removed.remove(&user);
                }
                Effect::Posted(user) => {
                    // A message ends its sender's typing: the next frame is
                    // forwarded at once, and whoever was shown them typing
                    // is told it stopped.
                    state.typing_sent.remove(&user);
                    if state
                        .typists
                        .remove(&user)
                        .is_some_and(|until| until > Instant::now())
                    {
                        let stop = ServerFrame::Typing {
                            room_id: room,
                            user_id: user,
                            active: false,
                            ttl_ms: 0,
                        };
                        for conn in state.members.iter().filter(|c| c.user_id != user) {
                            if conn.queue(&conn.encoding.encode(&stop)) == Some(true) {
                                self.dirty.push(conn.clone());
                            }
                        }
                    }
                }
                Effect::None => {}
            }
        }
        if let Some(last) = last_delivered
            && !state.skip_until.is_empty()
        {
            state.skip_until.retain(|_, until| *until > last);
        }
        if let Some(last) = last_delivered {
            // Delivery markers: one update per member per pass, coalesced
            // again by the writer before anything reaches the database.
            let mut users: Vec<UserId> = state
                .members
                .iter()
                .filter(|c| !c.out.is_closed())
                .map(|c| c.user_id)
                .collect();
            users.sort_unstable();
            users.dedup();
            for user in users {
                self.markers.delivered(room, user, last);
            }
        }
        // Members whose queue overflowed were closed by `push`; stop feeding them.
        let closed: Vec<ConnId> = state
            .members
            .iter()
            .filter(|c| c.out.is_closed())
            .map(|c| c.id)
            .collect();
        for conn in closed {
            remove_from(
                state,
                &mut self.conn_rooms,
                &self.presence.handle,
                room,
                conn,
                None,
                false,
            );
        }
        self.release_if_empty(room);
    }

    fn arm_gap_timer(&mut self, room: RoomId) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Phase::Active { seq } = &state.phase
            && seq.pending_len() > MAX_PENDING
        {
            // Far behind: read the gap now instead of waiting.
            self.fill_gap(room);
            return;
        }
        if state.gap_timer_armed || state.filling {
            return;
        }
        state.gap_timer_armed = true;
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            let _ = me.send(ShardCmd::GapTimer { room }).await;
        });
    }

    fn fill_gap(&mut self, room: RoomId) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let Phase::Active { seq } = &state.phase else {
            return;
        };
        // A hole before held events, or else the events up to what a
        // joiner saw committed that never arrived.
        let tail =
            (state.expected > seq.delivered()).then(|| (seq.delivered() + 1, state.expected));
        let Some((from, to)) = seq.gap().or(tail) else {
            return;
        };
        if state.filling {
            return;
        }
        state.filling = true;
        metrics::counter!("gateway_gap_fills_total").increment(1);
        tracing::debug!(%room, from, to, "reading missed events from the store");
        let backlog = self.backlog.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let events = backlog.read(room, from - 1, to).await;
            let _ = me.send(ShardCmd::Filled { room, from, events }).await;
        });
    }

    fn filled(&mut self, room: RoomId, from: i64, events: Result<Vec<Bytes>, ()>) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        state.filling = false;
        let Phase::Active { seq } = &mut state.phase else {
            return;
        };
        let mut ready = Vec::new();
        let got_any = events.as_ref().is_ok_and(|e| !e.is_empty());
        for payload in events.unwrap_or_default() {
            if let Some((n, incoming)) = Incoming::parse(payload)
                && let Offer::Deliver(mut r) = seq.offer(n, incoming)
            {
                ready.append(&mut r);
            }
        }
        if !got_any && seq.gap().is_some_and(|(start, _)| start == from) {
            // The store has nothing for the gap (or could not be read):
            // move on rather than stall the room.
            tracing::error!(%room, from, "events missing from the store; skipping the gap");
            metrics::counter!("gateway_gaps_skipped_total").increment(1);
            // A membership change may be among what is skipped.
            state.known = Known::No;
            ready.extend(seq.skip_gap());
        }
        let more = seq.gap().is_some();
        self.fan_out(room, ready);
        if more {
            self.fill_gap(room);
        }
    }

    /// After a broker reconnect: ask the store how far each room got.
    fn resync(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        for room in rooms {
            self.check_tail(room);
        }
    }

    /// Asks the store how far `room` got; what this node has not delivered
    /// of it is then read like a gap (see [`Self::tail`]).
    ///
    /// One read per room at a time: asked for while one is under way, it
    /// reads again once that one is back (a read that began before the
    /// asker's reason might not show what the asker needs), so a burst of
    /// joins costs a read per read-time, not a read per join.
    fn check_tail(&mut self, room: RoomId) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if state.tail_reading {
            state.tail_again = true;
            return;
        }
        state.tail_reading = true;
        self.auth_stats
            .tail_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = self.store.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let last_seq = store.last_seq(room).await.ok().flatten();
            let _ = me.send(ShardCmd::Tail { room, last_seq }).await;
        });
    }

    fn tail(&mut self, room: RoomId, last_seq: Option<i64>) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        state.tail_reading = false;
        if std::mem::take(&mut state.tail_again) {
            self.check_tail(room);
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let Phase::Active { seq } = &mut state.phase else {
            return;
        };
        let Some(last) = last_seq else {
            return;
        };
        if last > seq.delivered() && seq.gap().is_none() {
            // Events published while disconnected: fetch them like a gap.
            let backlog = self.backlog.clone();
            let me = self.me.clone();
            let from = seq.delivered() + 1;
            state.filling = true;
            tokio::spawn(async move {
                let events = backlog.read(room, from - 1, last).await;
                let _ = me.send(ShardCmd::Filled { room, from, events }).await;
            });
        }
    }

    /// Removes a member; true if it was one. `at_once`: its presence in
    /// the room ends now, not after the grace.
    fn remove_member(
        &mut self,
        room: RoomId,
        conn: ConnId,
        reason: Option<LeftReason>,
        at_once: bool,
    ) -> bool {
        let Some(state) = self.rooms.get_mut(&room) else {
            return false;
        };
        let was = remove_from(
            state,
            &mut self.conn_rooms,
            &self.presence.handle,
            room,
            conn,
            reason,
            at_once,
        );
        self.release_if_empty(room);
        was
    }

    /// Forgets a room nobody on this node is in, and unsubscribes from it.
    fn release_if_empty(&mut self, room: RoomId) {
        let empty = self.rooms.get(&room).is_some_and(|s| {
            s.members.is_empty()
                && s.snapshot_reads == 0
                && s.backlog_reads == 0
                && matches!(s.phase, Phase::Active { .. })
        });
        if empty {
            self.rooms.remove(&room);
            let _ = self.subscriptions.send(SubCmd::Remove(Topic::Room(room)));
        }
    }
}

/// Decides a join without a membership check by what the room's shard
/// knows (`delivered`: how far it is); a join checked by the store passes.
/// Returns the join to go on with, or None once it was answered.
/// Counted here, before any answer reaches the client.
fn check(
    known: &Known,
    delivered: i64,
    mut join: PendingJoin,
    stats: &super::AuthCacheStats,
) -> Option<PendingJoin> {
    if join.snapshot.is_some() {
        return Some(join);
    }
    let refused = match known.judge(join.conn.user_id, join.since, delivered) {
        Verdict::Member(seq) => {
            stats.count("membership", true);
            join.snapshot = Some(seq);
            return Some(join);
        }
        // Refused only by the store: a member added by an event this node
        // has not seen (its publish lost, the room quiet) must not be
        // turned away, and strangers are rare.
        Verdict::Stranger | Verdict::Unknown => JoinError::Unchecked,
    };
    stats.count("membership", false);
    let _ = join.reply.send(Err(refused));
    None
}

/// Sleeps until `due`, or forever when there is nothing to wait for.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Makes a joining connection a member of an active room, unless its
/// membership ended after its snapshot (a removal this node already
/// applied), and queues its `joined` frame before any event can follow.
/// True if it is a member now.
fn admit(
    state: &mut RoomState,
    conn_rooms: &mut HashMap<ConnId, Vec<RoomId>>,
    presence: &PresenceHandle,
    room: RoomId,
    join: PendingJoin,
    joined: JoinedReply,
) -> bool {
    let PendingJoin {
        conn,
        snapshot,
        id,
        reply,
        ..
    } = join;
    let result = if state
        .removed
        .get(&conn.user_id)
        .is_some_and(|&removed_at| removed_at > snapshot.unwrap_or(0))
    {
        Err(JoinError::NotMember)
    } else if conn.out.is_closed() {
        Err(JoinError::Unavailable)
    } else {
        if !state.members.iter().any(|c| c.id == conn.id) {
            conn.joined.fetch_add(1, Ordering::Relaxed);
            conn_rooms.entry(conn.id).or_default().push(room);
            state.members.push(conn.clone());
            presence.joined(room, conn.user_id);
        }
        conn.send(&ServerFrame::Joined {
            id,
            room_id: room,
            seq: joined.seq,
            presence: joined.presence,
            resume: joined.resume,
        });
        Ok(joined.seq)
    };
    let admitted = result.is_ok();
    let _ = reply.send(result);
    admitted
}

/// Removes a member. Its presence in the room ends now when `at_once`
/// (a leave, a removal) or its session was revoked, else after the grace.
fn remove_from(
    state: &mut RoomState,
    conn_rooms: &mut HashMap<ConnId, Vec<RoomId>>,
    presence: &PresenceHandle,
    room: RoomId,
    conn: ConnId,
    reason: Option<LeftReason>,
    at_once: bool,
) -> bool {
    let Some(index) = state.members.iter().position(|c| c.id == conn) else {
        return false;
    };
    let member = state.members.swap_remove(index);
    member.joined.fetch_sub(1, Ordering::Relaxed);
    presence.left(
        room,
        member.user_id,
        at_once || member.logged_out.load(Ordering::Relaxed),
    );
    if let Some(rooms) = conn_rooms.get_mut(&conn) {
        rooms.retain(|r| *r != room);
        if rooms.is_empty() {
            conn_rooms.remove(&conn);
        }
    }
    if let Some(reason) = reason {
        member.send(&ServerFrame::Left {
            id: None,
            room_id: room,
            reason,
        });
    }
    true
}

/// Queues an ephemeral JSON frame for one connection in its encoding;
/// true if the caller must flush it.
fn queue_json(conn: &Arc<Conn>, json: &Bytes) -> bool {
    let bytes = match conn.encoding {
        Encoding::Json => json.clone(),
        Encoding::MsgPack => match to_msgpack(json) {
            Some(bytes) => bytes,
            None => return false,
        },
    };
    conn.queue(&bytes) == Some(true)
}

/// The MessagePack form of an event frame (decoded from its JSON once per
/// event per node, only when a member uses MessagePack).
fn to_msgpack(json: &Bytes) -> Option<Bytes> {
    match serde_json::from_slice::<ServerFrame>(json) {
        Ok(frame) => Some(Encoding::MsgPack.encode(&frame)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot transcode an event to MessagePack");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: &[u8] = br#"{"type":"event","room_id":2,"seq":9,"sender_id":4,"created_at":"2023-11-14T22:13:20Z","kind":"message.created","body":"hi"}"#;

    fn known(as_of: i64, users: &[i64], budget: &Arc<AtomicUsize>) -> Known {
        Known::Members {
            as_of,
            users: users.iter().map(|u| UserId(*u)).collect(),
            held: Held::take(budget, users.len()).expect("within the budget"),
        }
    }

    fn is_member(known: &Known, user: i64) -> bool {
        matches!(known.judge(UserId(user), None, 0), Verdict::Member(_))
    }

    #[test]
    fn the_member_list_follows_the_events_after_its_seq_only() {
        let budget = Arc::new(AtomicUsize::new(0));
        let mut k = known(10, &[1, 2], &budget);
        // Already in the list's seq: a removal at or before it changes nothing.
        k.apply(10, &Effect::Removed(UserId(2)));
        assert!(is_member(&k, 2));
        k.apply(11, &Effect::Removed(UserId(2)));
        assert!(!is_member(&k, 2));
        assert!(matches!(k.judge(UserId(2), None, 11), Verdict::Stranger));
        k.apply(12, &Effect::Added(UserId(2)));
        assert!(is_member(&k, 2));
        assert_eq!(budget.load(Ordering::Relaxed), 2);
        k.apply(13, &Effect::Deleted);
        assert!(matches!(k, Known::No));
        assert_eq!(budget.load(Ordering::Relaxed), 0, "given back");
    }

    #[test]
    fn a_member_resuming_past_what_the_node_knows_is_asked_of_the_store() {
        let budget = Arc::new(AtomicUsize::new(0));
        let k = known(10, &[1], &budget);
        assert!(matches!(k.judge(UserId(1), Some(12), 11), Verdict::Unknown));
        assert!(matches!(
            k.judge(UserId(1), Some(11), 11),
            Verdict::Member(11)
        ));
        // The list's seq counts when the node has delivered less.
        assert!(matches!(
            k.judge(UserId(1), Some(10), 3),
            Verdict::Member(10)
        ));
        assert!(matches!(
            Known::No.judge(UserId(1), None, 0),
            Verdict::Unknown
        ));
    }

    #[test]
    fn member_lists_stop_at_the_nodes_budget() {
        let budget = Arc::new(AtomicUsize::new(KNOWN_MEMBERS_BUDGET - 1));
        assert!(Held::take(&budget, 2).is_none());
        assert_eq!(budget.load(Ordering::Relaxed), KNOWN_MEMBERS_BUDGET - 1);
        let mut k = known(1, &[1], &budget);
        assert_eq!(budget.load(Ordering::Relaxed), KNOWN_MEMBERS_BUDGET);
        // One more member does not fit: the room is no longer known.
        k.apply(2, &Effect::Added(UserId(2)));
        assert!(matches!(k, Known::No));
        assert_eq!(budget.load(Ordering::Relaxed), KNOWN_MEMBERS_BUDGET - 1);
    }

    #[test]
    fn an_untraced_event_is_delivered_from_the_buffer_it_arrived_in() {
        let payload = Bytes::from_static(FRAME);
        let (seq, incoming) = Incoming::parse(payload.clone()).expect("an event");
        assert_eq!(seq, 9);
        assert!(incoming.trace.is_none());
        assert_eq!(incoming.json.as_ptr(), payload.as_ptr());
        assert_eq!(incoming.json, payload);
    }

    #[test]
    fn a_traced_event_is_delivered_without_its_trace_context() {
        let payload = Bytes::from(
            [
                b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n\n"
                    .as_slice(),
                FRAME,
            ]
            .concat(),
        );
        let (seq, incoming) = Incoming::parse(payload).expect("an event");
        assert_eq!(seq, 9);
        assert!(incoming.trace.is_some());
        assert_eq!(incoming.json, FRAME);
    }
}
