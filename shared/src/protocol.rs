//! The WebSocket protocol spoken between clients and gateways.
//!
//! Every frame is an object tagged by `type`. A connection's encoding is
//! chosen by its first frame: a text frame means JSON for the whole
//! connection, a binary frame means MessagePack (maps with named fields, the
//! same shape as the JSON). docs/protocol.md is the reference for clients;
//! keep the two in step.

use crate::ids::{RoomId, SessionId, UserId};
use crate::model::{Invitation, Profile, Role, RoomEvent};
use bytes::Bytes;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Largest client frame (after reassembly of fragments) a gateway accepts.
/// Client frames are small commands; 16 KiB leaves room for long tokens
/// while keeping a hostile client from parking megabytes in a gateway.
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;

/// Rooms up to this many members get `receipt` events: beyond it, a read
/// would fan out to too many connections to be worth it ("seen by" in a big
/// room is read from the receipts resource instead).
pub const DEFAULT_RECEIPT_ROOM_LIMIT: i64 = 100;

/// The payloads that announce a member's read marker move: a notice for
/// the reader's own connections (their user topic), and, for rooms of at
/// most `receipt_room_limit` members, a `receipt` frame for the room topic.
pub fn read_marker_payloads(
    room_id: RoomId,
    user_id: UserId,
    read_seq: i64,
    delivered_seq: i64,
    members: i64,
    receipt_room_limit: i64,
) -> (Bytes, Option<Bytes>) {
    let notice = Encoding::Json.encode(&UserNotice::ReadMarker { room_id, read_seq });
    let receipt = (members <= receipt_room_limit).then(|| {
        Encoding::Json.encode(&ServerFrame::Receipt {
            room_id,
            user_id,
            read_seq,
            delivered_seq,
        })
    });
    (notice, receipt)
}

/// Rooms a profile change is announced in at most (`profile` frames), the
/// user's most recently joined first: a user in thousands of rooms costs one
/// publish per room, so the fan-out of one change is capped; members of the
/// other rooms see the change when they next read the member list.
pub const PROFILE_FANOUT_ROOMS: i64 = 500;

/// Time a new connection has to send its `auth` frame.
pub const AUTH_TIMEOUT_SECS: u64 = 10;

/// Rooms one connection may have joined at once; a client in more rooms
/// opens another connection or relies on user events.
pub const MAX_ROOMS_PER_CONNECTION: usize = 512;

/// WebSocket close codes the gateway uses. 1xxx are RFC 6455's; 4xxx are ours.
pub mod close {
    /// Normal closure (the client's own close, echoed).
    pub const NORMAL: u16 = 1000;
    /// The gateway is shutting down; reconnect (to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (bad fragments, reserved bits...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded [`super::MAX_CLIENT_FRAME_BYTES`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected failure inside the gateway (a bug, never an outage).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// A dependency (the database, Redis) is unavailable, so the connection
    /// could not be set up: reconnect after a short backoff (RFC 6455's
    /// "try again later").
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The first frame was not a valid `auth`, or its token was invalid.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The access token has expired: refresh it and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No `auth` frame arrived within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4003;
    /// The session behind this connection was revoked (logout elsewhere).
    pub const SESSION_REVOKED: u16 = 4004;
    /// The client sent frames faster than the per-connection limit allows.
    pub const RATE_LIMITED: u16 = 4008;
    /// The client read too slowly and its outbound queue overflowed; it
    /// should reconnect and fetch what it missed from history.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// No frame (not even a pong) arrived within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;

    /// Every close code above (metrics register a series for each).
    pub const ALL: &[u16] = &[
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        INVALID_PAYLOAD,
        MESSAGE_TOO_BIG,
        INTERNAL_ERROR,
        TRY_AGAIN_LATER,
        UNAUTHORIZED,
        TOKEN_EXPIRED,
        AUTH_TIMEOUT,
        SESSION_REVOKED,
        RATE_LIMITED,
        SLOW_CONSUMER,
        HEARTBEAT_TIMEOUT,
    ];

    /// A stable, label-friendly name for a close code (metrics, logs).
    pub fn name(code: u16) -> &'static str {
        match code {
            NORMAL => "normal",
            GOING_AWAY => "going_away",
            PROTOCOL_ERROR => "protocol_error",
            INVALID_PAYLOAD => "invalid_payload",
            MESSAGE_TOO_BIG => "message_too_big",
            INTERNAL_ERROR => "internal_error",
            TRY_AGAIN_LATER => "try_again_later",
            UNAUTHORIZED => "unauthorized",
            TOKEN_EXPIRED => "token_expired",
            AUTH_TIMEOUT => "auth_timeout",
            SESSION_REVOKED => "session_revoked",
            RATE_LIMITED => "rate_limited",
            SLOW_CONSUMER => "slow_consumer",
            HEARTBEAT_TIMEOUT => "heartbeat_timeout",
            _ => "other",
        }
    }
}

/// Frames a client sends. `id`, when present, is echoed in the reply so a
/// client can match answers to requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame: authenticates the connection.
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
    /// A newer access token of the same user and session: extends the
    /// connection past its current token's expiry (answered `refreshed`).
    Refresh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
    /// Start receiving a room's events (members only). With `since_seq`,
    /// every event after it comes first (resume); with `presence`, the
    /// `joined` reply carries who is in the room now.
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_seq: Option<i64>,
        #[serde(default, skip_serializing_if = "is_false")]
        presence: bool,
    },
    /// Stop receiving a room's events.
    Leave {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
    },
    /// Application-level keepalive for clients that cannot send WebSocket pings.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The user is typing in a room this connection has joined
    /// (`active: false` says they stopped). Never answered unless refused:
    /// frames beyond the typing interval are dropped silently.
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
        #[serde(default = "active_by_default")]
        active: bool,
    },
    /// The user has read `room_id` up to `seq` (an event this connection
    /// received). Unanswered unless refused; writes are coalesced.
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
        seq: i64,
    },
}

fn active_by_default() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Rooms with at most this many users present get the list in a `joined`
/// reply's presence snapshot; bigger ones get the count (the list is at
/// `GET /v1/rooms/{id}/presence`).
pub const DEFAULT_PRESENCE_SNAPSHOT_LIMIT: usize = 100;

/// Rooms whose backlog is longer than this are not resumed: the `joined`
/// reply points at the history endpoint instead.
pub const DEFAULT_RESUME_LIMIT: i64 = 1_000;

/// How a `join` with `since_seq` went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// Every event after `since_seq` follows the `joined` (its `seq` is then
    /// `since_seq`). When false, the events in `history_from_seq..=seq` are
    /// not sent: page them from the history; live delivery starts after `seq`.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_from_seq: Option<i64>,
}

/// Who was in a room when a connection joined it (`join` with `presence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSnapshot {
    /// Presence events with a version at most this are already reflected.
    pub version: i64,
    /// Users in the room (the joining user included, when another of their
    /// connections is in it).
    pub count: usize,
    /// The users, ascending; absent when more than the snapshot limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<Vec<UserId>>,
}

impl ClientFrame {
    pub const TYPES: &'static [&'static str] =
        &["auth", "refresh", "join", "leave", "ping", "typing", "read"];

    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Auth { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Typing { id, .. }
            | ClientFrame::Read { id, .. } => *id,
        }
    }
}

/// Why the gateway stopped sending a room's events to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// The client sent `leave`.
    Requested,
    /// The user is no longer a member of the room.
    Removed,
    /// The room was deleted (after its `room.deleted` event).
    RoomDeleted,
}

/// Frames a gateway sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to a valid `auth`.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        user_id: UserId,
        session_id: SessionId,
        /// The gateway pings at this interval; a client that hears nothing
        /// for twice as long should reconnect.
        heartbeat_ms: u64,
        max_frame_bytes: usize,
        /// When the access token expires (its `exp`, milliseconds since the
        /// Unix epoch). Send `refresh` with a newer token before this plus
        /// the gateway's grace, or the connection is closed with 4002.
        expires_at_ms: u64,
    },
    /// The answer to a valid `refresh`: the connection now lasts until
    /// this (the later of the old and the new token's expiry).
    Refreshed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        expires_at_ms: u64,
    },
    /// The gateway is shutting down: it closes this connection (1001) right
    /// after this frame. Reconnect after `after_ms` (a random part of a
    /// spread, so a node's clients do not all come back at once); the load
    /// balancer sends the new connection to another node.
    Reconnect { after_ms: u64 },
    /// The connection now receives every event of `room_id` with a `seq`
    /// greater than `seq`; older ones are in the history endpoint.
    Joined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
        seq: i64,
        /// Only when the `join` asked for it (and presence could be read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<PresenceSnapshot>,
        /// Only for a `join` with `since_seq`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeOutcome>,
    },
    /// The connection no longer receives `room_id`'s events.
    Left {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room_id: RoomId,
        reason: LeftReason,
    },
    /// A room event, in `seq` order, at most once per connection.
    Event(RoomEvent),
    /// Someone else in a joined room is typing (`active`), or stopped.
    /// Ephemeral: never stored, never numbered, not in history. Show the
    /// indicator for `ttl_ms` unless a newer `typing` for the same user
    /// replaces it; a stop (`active: false`, `ttl_ms` 0) or a message from
    /// that user ends it at once.
    Typing {
        room_id: RoomId,
        user_id: UserId,
        active: bool,
        ttl_ms: u64,
    },
    /// Another user entered (`online`) or left a joined room: their first
    /// connection joined it, or their last one left (after a short grace
    /// when it disconnected). Ephemeral. `version` increases with every
    /// change in the room: ignore an event whose version is at most the
    /// last one applied for that user, or the `joined` snapshot's.
    Presence {
        room_id: RoomId,
        user_id: UserId,
        online: bool,
        version: i64,
    },
    /// A member of a joined room read further (rooms up to the receipt
    /// size limit only). Ephemeral, like `typing`.
    Receipt {
        room_id: RoomId,
        user_id: UserId,
        read_seq: i64,
        delivered_seq: i64,
    },
    /// A member of a joined room changed their profile (display name,
    /// status text or avatar): `profile` is the whole new profile. Ephemeral
    /// like `typing`; a client that was not there reads it from the member
    /// list. Published on at most [`PROFILE_FANOUT_ROOMS`] of the user's rooms.
    Profile {
        room_id: RoomId,
        user_id: UserId,
        profile: Profile,
    },
    /// The user's own read marker in a room moved (on another device, or
    /// this one): on every connection of the user, joined or not.
    ReadMarker { room_id: RoomId, read_seq: i64 },
    /// An application's ephemeral event, published by a backend with an
    /// API key: to every connection that joined `room_id` (a room signal),
    /// or to every connection of `user_id`, joined or not (a user signal).
    /// Exactly one of the two is present. Never stored, never numbered, not
    /// in history; at most once, and lost if the connection was not there.
    Signal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_id: Option<RoomId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<UserId>,
        name: String,
        payload: serde_json::Value,
    },
    /// The user was added to a room (join it to receive its events).
    RoomAdded { room_id: RoomId, role: Role },
    /// The user is no longer a member of a room.
    RoomRemoved { room_id: RoomId },
    /// The user was invited to a room: accept or decline it with
    /// `POST /v1/invitations/{room_id}/accept` or `/decline`.
    RoomInvited { invitation: Invitation },
    /// The user's pending invitation to a room ended without them (it was
    /// revoked, or the room deleted).
    InvitationEnded { room_id: RoomId },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A request failed; the connection stays open.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_id: Option<RoomId>,
    },
}

/// Stable error codes of `error` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded (malformed JSON or MessagePack, a
    /// missing or mistyped field).
    InvalidFrame,
    /// The frame's `type` is not one this gateway knows.
    UnknownType,
    /// `auth` sent on a connection that is already authenticated.
    AlreadyAuthenticated,
    /// The room does not exist or the user is not a member (the two are
    /// deliberately indistinguishable).
    RoomNotFound,
    /// `leave` or `typing` for a room the connection has not joined.
    NotJoined,
    /// `read` with a `seq` beyond the newest event this connection's
    /// gateway has delivered in the room (or below 1).
    InvalidSeq,
    /// The connection has joined [`MAX_ROOMS_PER_CONNECTION`] rooms.
    TooManyRooms,
    /// The gateway could not reach its database or broker; retry later.
    Unavailable,
    /// `refresh` with a token that is malformed, badly signed or already
    /// expired. The connection stays, until its current token's grace ends.
    InvalidToken,
}

/// The JSON text frame that delivers `event`: exactly what
/// `Encoding::Json.encode(&ServerFrame::Event(event))` produces, without
/// cloning the event. The api publishes these bytes; gateways forward them
/// to JSON clients untouched.
pub fn event_frame_json(event: &RoomEvent) -> Bytes {
    #[derive(Serialize)]
    struct EventFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        event: &'a RoomEvent,
    }
    Encoding::Json.encode(&EventFrame {
        kind: "event",
        event,
    })
}

/// Events the api sends to one user's connections (on the user's channel).
/// Gateways turn the first two into frames and act on the last one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserNotice {
    RoomAdded {
        room_id: RoomId,
        role: Role,
    },
    RoomRemoved {
        room_id: RoomId,
    },
    RoomInvited {
        invitation: Invitation,
    },
    InvitationEnded {
        room_id: RoomId,
    },
    SessionRevoked {
        session_id: SessionId,
    },
    /// The user's read marker in a room moved.
    ReadMarker {
        room_id: RoomId,
        read_seq: i64,
    },
    /// A backend's signal to the user: a `signal` frame on each connection.
    Signal {
        name: String,
        payload: serde_json::Value,
    },
}

/// How a connection's frames are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Text frames of JSON.
    Json,
    /// Binary frames of MessagePack with named fields.
    MsgPack,
}

/// Why a client frame could not be used. `id` is the frame's request id
/// whenever the frame was an object carrying an unsigned integer `id`, so
/// the `error` answering it can echo that id even though the rest of the
/// frame was unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a document of the encoding, not an object, or an object of a
    /// known type with the wrong fields; the message says which.
    #[error("{message}")]
    Invalid { id: Option<u64>, message: String },
    /// A well-formed object whose `type` is not one of the known types.
    #[error("unknown frame type {kind:?}")]
    UnknownType { id: Option<u64>, kind: String },
}

impl DecodeError {
    /// The request id to echo, if the frame carried one.
    pub fn id(&self) -> Option<u64> {
        match self {
            DecodeError::Invalid { id, .. } | DecodeError::UnknownType { id, .. } => *id,
        }
    }

    /// The `error` frame code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Invalid { .. } => ErrorCode::InvalidFrame,
            DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
        }
    }
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "JSON",
            Encoding::MsgPack => "MessagePack",
        }
    }

    /// Encodes any frame (server or client) in this encoding.
    pub fn encode<T: Serialize>(self, frame: &T) -> Bytes {
        let bytes = match self {
            // Serialising our own types to JSON cannot fail: every map key is a string.
            Encoding::Json => serde_json::to_vec(frame).unwrap_or_default(),
            Encoding::MsgPack => rmp_serde::to_vec_named(frame).unwrap_or_default(),
        };
        Bytes::from(bytes)
    }

    /// Decodes a client frame, telling an unknown `type` apart from a malformed frame.
    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        self.decode(bytes, ClientFrame::TYPES)
    }

    /// Decodes a frame of type `T` whose variants are named in `known_types`.
    pub fn decode<T: for<'de> Deserialize<'de>>(
        self,
        bytes: &[u8],
        known_types: &[&str],
    ) -> Result<T, DecodeError> {
        let full = match self {
            Encoding::Json => serde_json::from_slice::<T>(bytes).map_err(JsonReason::from),
            Encoding::MsgPack => rmp_serde::from_slice::<T>(bytes).map_err(JsonReason::plain),
        };
        full.map_err(|reason| self.explain(bytes, known_types, reason))
    }

    /// Why a frame that did not decode is unusable. It is read again, as
    /// any object, for its `type` and `id` (so the error can echo the id)
    /// and to tell a wrong shape (`join: missing field `room_id``) from
    /// bytes that are no object at all. Only failing frames pay for this.
    fn explain(self, bytes: &[u8], known_types: &[&str], reason: JsonReason) -> DecodeError {
        let (envelope, is_document) = match self {
            Encoding::Json => (
                serde_json::from_slice::<Envelope>(bytes).ok(),
                serde_json::from_slice::<IgnoredAny>(bytes).is_ok(),
            ),
            Encoding::MsgPack => (
                rmp_serde::from_slice::<Envelope>(bytes).ok(),
                rmp_serde::from_slice::<IgnoredAny>(bytes).is_ok(),
            ),
        };
        let Some(Envelope { kind, id }) = envelope else {
            let message = if is_document {
                "a frame must be an object with a `type` field".to_owned()
            } else {
                format!("frame is not valid {}: {}", self.name(), reason.full)
            };
            return DecodeError::Invalid { id: None, message };
        };
        match kind {
            None => DecodeError::Invalid {
                id,
                message: "missing field `type`".into(),
            },
            Some(None) => DecodeError::Invalid {
                id,
                message: "field `type` must be a string".into(),
            },
            Some(Some(kind)) if known_types.contains(&kind.as_str()) => DecodeError::Invalid {
                id,
                message: format!("{kind}: {}", reason.short),
            },
            Some(Some(kind)) => DecodeError::UnknownType { id, kind },
        }
    }
}

/// A decoding error's message, with and without serde_json's position
/// (which says nothing useful about a one-line frame of the wrong shape).
struct JsonReason {
    full: String,
    short: String,
}

impl JsonReason {
    fn plain(e: impl std::fmt::Display) -> Self {
        let full = e.to_string();
        Self {
            short: full.clone(),
            full,
        }
    }
}

impl From<serde_json::Error> for JsonReason {
    fn from(e: serde_json::Error) -> Self {
        let full = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let short = full.strip_suffix(&position).unwrap_or(&full).to_owned();
        Self { full, short }
    }
}

/// What any object frame says about itself, whatever else is wrong with it:
/// `kind` is None without a `type` field and Some(None) if it is not a
/// string; `id` is None unless it is an unsigned integer.
struct Envelope {
    kind: Option<Option<String>>,
    id: Option<u64>,
}

/// A value of type `T`, or anything else (then `Other`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Is(T),
    Other(IgnoredAny),
}

impl<T> Loose<T> {
    fn ok(self) -> Option<T> {
        match self {
            Loose::Is(value) => Some(value),
            Loose::Other(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Envelope;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut envelope = Envelope {
                    kind: None,
                    id: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => envelope.kind = Some(map.next_value::<Loose<String>>()?.ok()),
                        "id" => envelope.id = map.next_value::<Loose<u64>>()?.ok(),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(envelope)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, time_from_millis};

    fn event() -> ServerFrame {
        ServerFrame::Event(RoomEvent {
            room_id: RoomId(2),
            seq: 9,
            sender_id: UserId(4),
            created_at: time_from_millis(1_700_000_000_000),
            kind: EventKind::MessageCreated {
                body: "hi".into(),
                client_msg_id: None,
                reply_to_seq: None,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        })
    }

    #[test]
    fn every_named_close_code_is_listed_in_all() {
        // A code missing from `ALL` gets no zero series in the metrics.
        for code in 1000..5000 {
            if close::name(code) != "other" {
                assert!(close::ALL.contains(&code), "close::ALL lacks {code}");
            }
        }
        assert!(close::ALL.iter().all(|c| close::name(*c) != "other"));
    }

    #[test]
    fn server_frames_round_trip_in_both_encodings() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            for frame in [
                event(),
                ServerFrame::Event(RoomEvent {
                    room_id: RoomId(2),
                    seq: 10,
                    sender_id: UserId(5),
                    created_at: time_from_millis(1_700_000_000_000),
                    kind: EventKind::Custom {
                        name: "acme.order_shipped".into(),
                        payload: serde_json::json!({"order": 42, "tags": ["x"], "nested": {"ok": true}}),
                    },
                }),
                ServerFrame::Joined {
                    id: Some(3),
                    room_id: RoomId(1),
                    seq: 0,
                    presence: None,
                    resume: None,
                },
                ServerFrame::Joined {
                    id: None,
                    room_id: RoomId(1),
                    seq: 4,
                    presence: Some(PresenceSnapshot {
                        version: 1_764_000_000_000_001,
                        count: 2,
                        user_ids: Some(vec![UserId(4), UserId(5)]),
                    }),
                    resume: Some(ResumeOutcome {
                        complete: false,
                        history_from_seq: Some(2),
                    }),
                },
                ServerFrame::Presence {
                    room_id: RoomId(1),
                    user_id: UserId(4),
                    online: false,
                    version: 1_764_000_000_000_002,
                },
                // A uuid is bytes in MessagePack.
                ServerFrame::Ready {
                    id: None,
                    user_id: UserId(4),
                    session_id: SessionId::new(),
                    heartbeat_ms: 25_000,
                    max_frame_bytes: MAX_CLIENT_FRAME_BYTES,
                    expires_at_ms: 1_764_489_601_000,
                },
                ServerFrame::Refreshed {
                    id: Some(2),
                    expires_at_ms: 1_764_489_901_000,
                },
                ServerFrame::Reconnect { after_ms: 734 },
                ServerFrame::Signal {
                    room_id: Some(RoomId(3)),
                    user_id: None,
                    name: "acme.cart_updated".into(),
                    payload: serde_json::json!({"items": [1, 2], "total": 9.5, "note": null}),
                },
                ServerFrame::Signal {
                    room_id: None,
                    user_id: Some(UserId(4)),
                    name: "acme.ping".into(),
                    payload: serde_json::json!("just a string"),
                },
                ServerFrame::Error {
                    id: None,
                    code: ErrorCode::RoomNotFound,
                    message: "no".into(),
                    room_id: Some(RoomId(5)),
                },
            ] {
                let bytes = enc.encode(&frame);
                let back: ServerFrame = enc.decode(&bytes, &[]).unwrap();
                assert_eq!(back, frame, "{enc:?}");
            }
        }
    }

    #[test]
    fn an_event_frame_is_flat_json() {
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.encode(&event())).unwrap();
        assert_eq!(json["type"], "event");
        assert_eq!(json["kind"], "message.created");
        assert_eq!(json["seq"], 9);
    }

    #[test]
    fn the_published_event_bytes_are_the_event_frame() {
        let ServerFrame::Event(inner) = event() else {
            unreachable!()
        };
        assert_eq!(event_frame_json(&inner), Encoding::Json.encode(&event()));
    }

    #[test]
    fn client_frames_decode_from_json_and_msgpack() {
        let join = ClientFrame::Join {
            id: Some(1),
            room_id: RoomId(8),
            since_seq: None,
            presence: false,
        };
        assert_eq!(
            Encoding::Json.decode_client(br#"{"type":"join","id":1,"room_id":8}"#),
            Ok(join.clone())
        );
        let packed = Encoding::MsgPack.encode(&join);
        assert_eq!(Encoding::MsgPack.decode_client(&packed), Ok(join));
    }

    #[test]
    fn a_typing_frame_is_active_unless_it_says_stop() {
        assert_eq!(
            Encoding::Json.decode_client(br#"{"type":"typing","room_id":3}"#),
            Ok(ClientFrame::Typing {
                id: None,
                room_id: RoomId(3),
                active: true
            })
        );
        assert_eq!(
            Encoding::Json.decode_client(br#"{"type":"typing","id":4,"room_id":3,"active":false}"#),
            Ok(ClientFrame::Typing {
                id: Some(4),
                room_id: RoomId(3),
                active: false
            })
        );
        assert!(matches!(
            Encoding::Json.decode_client(br#"{"type":"typing","room_id":3,"ttl_ms":1}"#),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_fields_in_client_frames_are_rejected() {
        assert!(matches!(
            Encoding::Json.decode_client(br#"{"type":"ping","extra":1}"#),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            Encoding::Json.decode_client(br#"{"type":"join","room_id":1,"room":2}"#),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn an_unknown_type_is_told_apart_from_a_malformed_frame() {
        assert_eq!(
            Encoding::Json.decode_client(br#"{"type":"teleport"}"#),
            Err(DecodeError::UnknownType {
                id: None,
                kind: "teleport".into()
            })
        );
        assert!(matches!(
            Encoding::Json.decode_client(br#"{"type":"join","room_id":"x"}"#),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            Encoding::Json.decode_client(b"{not json"),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            Encoding::MsgPack.decode_client(&[0xc1, 0xff, 0x00]),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn the_id_of_an_unusable_object_frame_is_kept_for_the_error() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let frames = [
                serde_json::json!({"type": "teleport", "id": 7}),
                serde_json::json!({"type": "join", "id": 7}),
                serde_json::json!({"type": "join", "id": 7, "room_id": "seven"}),
                serde_json::json!({"type": "ping", "id": 7, "extra": true}),
                serde_json::json!({"id": 7}),
                serde_json::json!({"type": true, "id": 7}),
            ];
            for frame in frames {
                let err = enc.decode_client(&enc.encode(&frame)).unwrap_err();
                assert_eq!(err.id(), Some(7), "{enc:?} {frame}");
            }
        }
        // An id that is not an unsigned integer cannot be echoed.
        let err = Encoding::Json
            .decode_client(br#"{"type":"join","id":"x","room_id":1}"#)
            .unwrap_err();
        assert_eq!(err.id(), None);
    }

    #[test]
    fn a_well_formed_object_of_the_wrong_shape_is_told_what_is_wrong() {
        let message = |bytes: &[u8]| Encoding::Json.decode_client(bytes).unwrap_err().to_string();
        assert_eq!(
            message(br#"{"type":"join","id":1}"#),
            "join: missing field `room_id`"
        );
        assert!(
            message(br#"{"type":"ping","extra":1}"#).starts_with("ping: unknown field `extra`"),
            "{}",
            message(br#"{"type":"ping","extra":1}"#)
        );
        assert_eq!(message(br#"{"id":1}"#), "missing field `type`");
        assert_eq!(
            message(b"[1]"),
            "a frame must be an object with a `type` field"
        );
        assert!(message(b"{not json").starts_with("frame is not valid JSON"));
        let packed = Encoding::MsgPack
            .decode_client(&[0xc1])
            .unwrap_err()
            .to_string();
        assert!(
            packed.starts_with("frame is not valid MessagePack"),
            "{packed}"
        );
    }
}
