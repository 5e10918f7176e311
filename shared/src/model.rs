//! Domain values that both the REST api and the WebSocket protocol carry.
//!
//! A room's history is one timeline of [`RoomEvent`]s numbered by `seq`:
//! messages and membership changes share that numbering, so a gateway that
//! delivers in `seq` order applies a member's removal exactly between the last
//! message they may see and the first they may not.

use crate::ids::{RoomId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A member's role in a room. Owners and admins manage membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Owners and admins may add and remove members.
    pub fn can_manage_members(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// Group rooms have a name and an owner; direct rooms join exactly two users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Group,
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Group => "group",
            RoomKind::Direct => "direct",
        }
    }

    pub fn parse(s: &str) -> Option<RoomKind> {
        match s {
            "group" => Some(RoomKind::Group),
            "direct" => Some(RoomKind::Direct),
            _ => None,
        }
    }
}

/// How users become members of a group room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JoinPolicy {
    /// Owners and admins add members directly (`POST /v1/rooms/{id}/members`),
    /// or invite them.
    #[default]
    Add,
    /// Only by invitation: the invited user accepts or declines.
    Invite,
}

impl JoinPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinPolicy::Add => "add",
            JoinPolicy::Invite => "invite",
        }
    }

    pub fn parse(s: &str) -> Option<JoinPolicy> {
        match s {
            "add" => Some(JoinPolicy::Add),
            "invite" => Some(JoinPolicy::Invite),
            _ => None,
        }
    }
}

/// A user as other users see them (no email, never a password hash).
/// The profile fields are there only for a caller who shares a room with
/// the user (or is the user): a stranger gets `id` and `username` alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicUser {
    pub id: UserId,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `GET` it (with the bearer token) for the avatar image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// What a user tells the users they share a room with about themselves
/// (`PATCH /v1/users/me/profile`, `PUT /v1/users/me/avatar`). Unset fields
/// are `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// Shown instead of the username where set (1 to 64 characters).
    #[schema(required = true)]
    pub display_name: Option<String>,
    /// A line of free text, at most 140 characters.
    #[schema(required = true)]
    pub status_text: Option<String>,
    /// The avatar's path, `/v1/users/{id}/avatar?v=<version>` (a new avatar
    /// is a new URL, so clients may cache one for as long as they like).
    #[schema(required = true)]
    pub avatar_url: Option<String>,
}

/// The path of user `id`'s avatar of version `avatar_id`.
pub fn avatar_url(id: UserId, avatar_id: &str) -> String {
    format!("/v1/users/{id}/avatar?v={avatar_id}")
}

/// The caller's own account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    /// Whether `email` is verified (a link mailed to it was followed).
    /// Changing the address clears it; what an unverified account may do
    /// is the server's policy (docs/api.md, "Email verification").
    pub email_verified: bool,
    /// `admin` accounts may use the `/v1/admin` endpoints.
    pub role: AccountRole,
    pub created_at: DateTime<Utc>,
    /// What the users who share a room with this one see of them.
    #[serde(default)]
    pub profile: Profile,
}

/// An account's standing on the server (not to be confused with a
/// member's [`Role`] in a room).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountRole {
    #[default]
    User,
    Admin,
}

impl AccountRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A room as one of its members sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Room {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    /// Free text set by owners and admins (empty when unset).
    pub topic: String,
    pub join_policy: JoinPolicy,
    /// The room's avatar image (`GET /v1/attachments/{id}`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_attachment_id: Option<String>,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    /// The `seq` of the newest event in the room's timeline (0 when empty).
    pub last_seq: i64,
    /// The newest message of the room (a tombstone if it was deleted);
    /// absent while the room has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessagePreview>,
    /// When the room last saw a message, or when the caller joined it if
    /// that is later: the order of `GET /v1/rooms`, newest first.
    pub last_activity_at: DateTime<Utc>,
    /// The caller's role in the room.
    pub role: Role,
    /// The newest `seq` the caller has read (0: nothing yet).
    pub read_seq: i64,
    /// Messages after `read_seq` that others posted (membership events and
    /// the caller's own messages do not count), exact up to [`UNREAD_CAP`]:
    /// the cap means "that many or more" (show "99+").
    pub unread: i64,
    /// Messages after `read_seq` whose current body mentions the caller
    /// (`@username`), exact up to [`UNREAD_CAP`] like `unread`.
    pub mentions: i64,
}

/// A pending invitation to a group room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    pub room_id: RoomId,
    pub room_name: String,
    /// The invited user.
    pub user_id: UserId,
    /// The role they get on accepting.
    pub role: Role,
    pub invited_by: UserId,
    pub invited_by_username: String,
    pub created_at: DateTime<Utc>,
}

/// The newest message of a room, for a rooms list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessagePreview {
    pub seq: i64,
    pub sender_id: UserId,
    /// The first [`PREVIEW_CHARS`] characters of the current body (empty
    /// once deleted).
    pub body: String,
    /// Whether `body` was cut short.
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
}

/// Characters of a body a [`MessagePreview`] keeps.
pub const PREVIEW_CHARS: usize = 140;

/// Largest `unread` a room reports: counting stops here, so a long-unread
/// room costs no more than a short index range.
pub const UNREAD_CAP: i64 = 100;

/// One member's markers in a room ("seen by").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    pub user_id: UserId,
    /// The newest `seq` the member has read.
    pub read_seq: i64,
    /// The newest `seq` a gateway has written to one of the member's connections.
    pub delivered_seq: i64,
}

/// One member of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `GET` it (with the bearer token) for the member's avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

/// One entry of a room's timeline, as stored, listed by the history endpoint
/// and delivered live by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoomEvent {
    pub room_id: RoomId,
    /// Gap-free, increasing position of the event in its room, from 1.
    pub seq: i64,
    /// Who caused the event: the author of a message, the admin who added a member.
    pub sender_id: UserId,
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind")]
pub enum EventKind {
    /// The room was created (always `seq` 1 of a group room).
    #[serde(rename = "room.created")]
    RoomCreated { name: String },
    /// A message was posted. In history it shows the message as it is now:
    /// the current `body` and `edited_at` after an edit; after a delete a
    /// tombstone (the `seq` stays) with an empty `body` and `deleted_at`.
    #[serde(rename = "message.created")]
    MessageCreated {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The earlier message (a `message.created` seq of this room) this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to_seq: Option<i64>,
        /// When the body was last edited (history only; live edits are `message.edited`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_at: Option<DateTime<Utc>>,
        /// When the message was deleted: `body` is then empty (history only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted_at: Option<DateTime<Utc>>,
        /// Reactions, counted per emoji, with whether the caller is among
        /// them (history pages only; live changes are `reaction.*` events).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<Reaction>,
        /// Files posted with the message, in the order the author gave
        /// (live and in history; gone once the message is deleted).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    /// The author changed the body of message `target_seq`.
    #[serde(rename = "message.edited")]
    MessageEdited {
        target_seq: i64,
        /// The new body (empty once the message is deleted).
        body: String,
        edited_at: DateTime<Utc>,
    },
    /// Message `target_seq` was deleted (by its author or a room owner or
    /// admin): clients drop its body and reactions.
    #[serde(rename = "message.deleted")]
    MessageDeleted { target_seq: i64 },
    /// `sender_id` reacted to message `target_seq` with `emoji`.
    #[serde(rename = "reaction.added")]
    ReactionAdded { target_seq: i64, emoji: String },
    /// `sender_id` took back their `emoji` reaction to message `target_seq`.
    #[serde(rename = "reaction.removed")]
    ReactionRemoved { target_seq: i64, emoji: String },
    /// The thumbnail of attachment `attachment_id` of message `target_seq`
    /// is ready to download (`GET /v1/attachments/{id}/thumbnail`). Its
    /// `sender_id` is the uploader. `attachment` is the attachment as it is
    /// now (with the thumbnail's size); absent in history once the message
    /// was deleted.
    #[serde(rename = "attachment.thumbnail_ready")]
    AttachmentThumbnailReady {
        target_seq: i64,
        attachment_id: String,
        /// Boxed: the largest kind sets the size of every event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<Box<Attachment>>,
    },
    /// A user became a member.
    #[serde(rename = "member.added")]
    MemberAdded { user_id: UserId, role: Role },
    /// A user stopped being a member (removed by an admin, or left).
    #[serde(rename = "member.removed")]
    MemberRemoved { user_id: UserId },
    /// An owner or admin changed the room's profile: the event carries it
    /// whole, as it is now.
    #[serde(rename = "room.updated")]
    RoomUpdated {
        name: String,
        topic: String,
        join_policy: JoinPolicy,
        /// The avatar image (`GET /v1/attachments/{id}`), absent when none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar_attachment_id: Option<String>,
    },
    /// The owner (`sender_id`) handed the room to member `user_id`, and is
    /// now an admin.
    #[serde(rename = "room.owner_changed")]
    OwnerChanged { user_id: UserId },
    /// The owner deleted the room: its timeline and members are gone, this
    /// is its last event. Every member's connections leave it.
    #[serde(rename = "room.deleted")]
    RoomDeleted {},
    /// `sender_id` invited `user_id` to join with `role`; they are not a
    /// member until they accept (a `member.added` whose sender is them).
    #[serde(rename = "member.invited")]
    MemberInvited { user_id: UserId, role: Role },
    /// `user_id` declined their invitation.
    #[serde(rename = "invitation.declined")]
    InvitationDeclined { user_id: UserId },
    /// An owner or admin (`sender_id`) withdrew `user_id`'s invitation.
    #[serde(rename = "invitation.revoked")]
    InvitationRevoked { user_id: UserId },
    /// An application's own event, published by a backend with an API key
    /// (`POST /v1/server/rooms/{room_id}/events`): numbered and stored like
    /// a message. `name` is the application's dotted name
    /// (`acme.order_shipped`), never one of Parley's own kinds; `payload`
    /// is any JSON value, at most [`MAX_CUSTOM_PAYLOAD_BYTES`] encoded. Its
    /// `sender_id` is the API key's own account (docs/api.md).
    #[serde(rename = "custom")]
    Custom {
        name: String,
        payload: serde_json::Value,
    },
}

/// The reactions of one emoji to a message, as the caller sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reaction {
    pub emoji: String,
    /// How many members reacted with it.
    pub count: i64,
    /// Whether the caller is one of them.
    pub me: bool,
}

/// A file posted with a message (or uploaded and not posted yet: then only
/// its uploader can see it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    /// Random, 32 hex digits: `GET /v1/attachments/{id}` downloads it.
    pub id: String,
    /// The uploader's file name, made safe (no path, no control characters).
    pub filename: String,
    /// Decided by the server from the bytes (never the client's header).
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    pub thumbnail: ThumbnailState,
    /// The image's size in pixels, once its thumbnail is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// The thumbnail's size in pixels, when `thumbnail` is `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_width: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_height: Option<i64>,
}

/// Where an attachment's thumbnail is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThumbnailState {
    /// Not an image: no thumbnail is made.
    None,
    /// Being made; an `attachment.thumbnail_ready` event follows when the
    /// attachment is in a message.
    Pending,
    Ready,
    /// The image could not be decoded within the limits (corrupt, or too
    /// large, such as a decompression bomb): the file itself is still there.
    Failed,
}

impl ThumbnailState {
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbnailState::None => "none",
            ThumbnailState::Pending => "pending",
            ThumbnailState::Ready => "ready",
            ThumbnailState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ThumbnailState> {
        match s {
            "none" => Some(ThumbnailState::None),
            "pending" => Some(ThumbnailState::Pending),
            "ready" => Some(ThumbnailState::Ready),
            "failed" => Some(ThumbnailState::Failed),
            _ => None,
        }
    }
}

/// Most attachments on one message.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 10;

/// Largest payload of a custom event or a signal, in bytes of compact JSON:
/// a notification's worth of data, small enough that a room's history pages
/// and every gateway's fan-out stay cheap (a message is at most 4000 characters).
pub const MAX_CUSTOM_PAYLOAD_BYTES: usize = 16 * 1024;

impl EventKind {
    /// The stable `kind` string of this event.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RoomCreated { .. } => "room.created",
            EventKind::MessageCreated { .. } => "message.created",
            EventKind::MessageEdited { .. } => "message.edited",
            EventKind::MessageDeleted { .. } => "message.deleted",
            EventKind::ReactionAdded { .. } => "reaction.added",
            EventKind::ReactionRemoved { .. } => "reaction.removed",
            EventKind::AttachmentThumbnailReady { .. } => "attachment.thumbnail_ready",
            EventKind::MemberAdded { .. } => "member.added",
            EventKind::MemberRemoved { .. } => "member.removed",
            EventKind::RoomUpdated { .. } => "room.updated",
            EventKind::OwnerChanged { .. } => "room.owner_changed",
            EventKind::RoomDeleted {} => "room.deleted",
            EventKind::MemberInvited { .. } => "member.invited",
            EventKind::InvitationDeclined { .. } => "invitation.declined",
            EventKind::InvitationRevoked { .. } => "invitation.revoked",
            EventKind::Custom { .. } => "custom",
        }
    }
}

/// Milliseconds since the Unix epoch, as the stores keep time, to a UTC time.
pub fn time_from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RoomEvent {
        RoomEvent {
            room_id: RoomId(7),
            seq: 3,
            sender_id: UserId(1),
            created_at: time_from_millis(1_700_000_000_123),
            kind: EventKind::MessageCreated {
                body: "hello".into(),
                client_msg_id: Some("c-1".into()),
                reply_to_seq: None,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        }
    }

    #[test]
    fn a_room_event_is_flat_json_tagged_by_kind() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["kind"], "message.created");
        assert_eq!(json["body"], "hello");
        assert_eq!(json["room_id"], 7);
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.123Z");
        let back: RoomEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn a_custom_event_carries_its_name_and_payload_beside_kind() {
        let event = RoomEvent {
            kind: EventKind::Custom {
                name: "acme.order_shipped".into(),
                payload: serde_json::json!({"order": 42, "items": ["a", "b"]}),
            },
            ..sample()
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "custom");
        assert_eq!(json["name"], "acme.order_shipped");
        assert_eq!(json["payload"]["order"], 42);
        let back: RoomEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn message_changes_name_their_message_by_target_seq() {
        let reacted = RoomEvent {
            kind: EventKind::ReactionAdded {
                target_seq: 3,
                emoji: "👍".into(),
            },
            ..sample()
        };
        let json = serde_json::to_value(&reacted).unwrap();
        assert_eq!(json["kind"], "reaction.added");
        assert_eq!(json["kind"], reacted.kind.name());
        assert_eq!(
            (&json["target_seq"], &json["emoji"]),
            (&3.into(), &"👍".into())
        );
        let back: RoomEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, reacted);
        let plain = serde_json::to_value(sample()).unwrap();
        for absent in ["reply_to_seq", "edited_at", "deleted_at", "reactions"] {
            assert!(plain.get(absent).is_none(), "{absent} only when set");
        }
    }

    #[test]
    fn role_strings_round_trip() {
        for role in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
