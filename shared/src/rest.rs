//! Request and response bodies of the REST api (`/v1/...`).
//!
//! They live here rather than in the api crate so that clients written in
//! Rust (the load tester, the test harness) use exactly the types the server
//! parses and produces.

use crate::ids::{ApiKeyId, RoomId, SessionId, UserId};
use crate::model::{
    AccountRole, Invitation, JoinPolicy, Member, Profile, PublicUser, Role, Room, RoomEvent, User,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/auth/signup`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// 3 to 32 characters of `a-z`, `0-9` and `_`.
    #[schema(pattern = "^[a-z0-9_]{3,32}$", min_length = 3, max_length = 32)]
    pub username: String,
    /// A valid address (no display name); stored lowercase.
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    /// At least 10 characters, at most 1024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
}

/// `POST /v1/auth/login`: `login` is a username or an email address
/// (`username` and `email` are accepted as the field's name too).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[serde(alias = "username", alias = "email")]
    pub login: String,
    pub password: String,
    /// `bearer` (default): tokens in the body. `cookie`: for a browser app
    /// served from the api's site: HttpOnly cookies and a CSRF token.
    #[serde(default)]
    pub session: SessionMode,
}

/// How a session's credentials travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    #[default]
    Bearer,
    Cookie,
}

/// `POST /v1/auth/refresh` and `POST /v1/auth/logout`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// Absent for a cookie session: the refresh cookie is used (with the
    /// `X-CSRF-Token` header).
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// A cookie session's answer to a login or refresh: the tokens are in
/// HttpOnly cookies, not here.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CookieSession {
    /// Always `Cookie`.
    pub token_type: String,
    /// Seconds until the session cookie's access token expires (refresh before).
    pub expires_in: u64,
    pub refresh_expires_in: u64,
    pub session_id: SessionId,
    pub user: User,
    /// Echo in an `X-CSRF-Token` header on every request that changes
    /// something (also readable from the `parley_csrf` cookie).
    pub csrf_token: String,
}

/// The answer to `POST /v1/auth/refresh`: tokens, or for a cookie session
/// new cookies.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RefreshResponse {
    Tokens(TokenResponse),
    Cookie(CookieSession),
}

/// The answer to a login or a refresh.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (EdDSA) to send as `Authorization: Bearer ...` and in the gateway's `auth` frame.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use: each refresh returns a new one and retires this one.
    pub refresh_token: String,
    /// Seconds until the session expires unless refreshed.
    pub refresh_expires_in: u64,
    pub session_id: SessionId,
    pub user: User,
}

/// The answer to a correct password at `POST /v1/auth/login`: the tokens,
/// or, for an account with two-factor login, a challenge to answer with a
/// code at `POST /v1/auth/login/totp` (no tokens until then).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Tokens(TokenResponse),
    Cookie(CookieSession),
    TwoFactor(TwoFactorChallenge),
}

/// A login waiting for its second factor.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TwoFactorChallenge {
    /// Always true: tell this answer from the tokens.
    pub two_factor_required: bool,
    /// Send back with the code; good for a few attempts until `expires_at`.
    pub challenge: String,
    pub expires_at: DateTime<Utc>,
}

/// `POST /v1/auth/login/totp`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TwoFactorLoginRequest {
    pub challenge: String,
    /// The authenticator's current 6-digit code, or an unused recovery code.
    pub code: String,
    /// As for the login.
    #[serde(default)]
    pub session: SessionMode,
}

/// `POST /v1/auth/totp/enrol`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnrolRequest {
    /// The account's password.
    pub password: String,
}

/// A new authenticator secret, to scan into an app; it guards the login
/// only once confirmed with a code.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrolment {
    /// base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/Parley:alice?secret=...&issuer=Parley` (SHA-1, 6 digits, 30 s).
    pub otpauth_uri: String,
    /// The URI as a QR code: a PNG, base64.
    pub qr_png_base64: String,
}

/// `POST /v1/auth/totp/confirm`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirmRequest {
    /// The authenticator's current code.
    pub code: String,
}

/// `POST /v1/auth/totp/disable` and `POST /v1/auth/totp/recovery-codes`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpChangeRequest {
    pub password: String,
    /// The authenticator's current code, or an unused recovery code.
    pub code: String,
}

/// Single-use recovery codes: shown this once, stored only hashed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// `GET /v1/auth/totp`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpStatus {
    /// Whether logins need a code.
    pub enabled: bool,
    /// An enrolment waits for its confirming code.
    pub pending: bool,
    pub recovery_codes_left: i64,
}

/// `POST /v1/sse/tickets`: a single-use ticket for `GET /sse?ticket=`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SseTicket {
    /// Good for one stream, until `expires_at`; the stream it opens ends
    /// when the access token that asked for it expires (plus the gateway's
    /// grace), like a WebSocket connection that is not refreshed.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// One of the caller's sessions.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: SessionId,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// True for the session of the token that made this request.
    pub current: bool,
    pub user_agent: Option<String>,
}

/// `POST /v1/rooms`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// 1 to 100 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Up to 500 characters (default empty).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub topic: Option<String>,
    /// How members join (default `add`).
    #[serde(default)]
    pub join_policy: Option<JoinPolicy>,
}

/// `PATCH /v1/rooms/{id}`: what to change; absent fields stay as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomRequest {
    /// 1 to 100 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Up to 500 characters after trimming; empty clears it.
    #[schema(max_length = 500)]
    pub topic: Option<String>,
    pub join_policy: Option<JoinPolicy>,
    /// An image (PNG, JPEG, WebP or GIF, at most 5 MiB) the caller uploaded
    /// into this room and did not post: the room's avatar from now on (the
    /// previous one is deleted). `""` removes the avatar.
    pub avatar_attachment_id: Option<String>,
}

/// `POST /v1/rooms/{id}/owner`: hand the room to another member.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferOwnershipRequest {
    pub user_id: UserId,
}

/// `POST /v1/rooms/{id}/invitations`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub user_id: UserId,
    /// `member` (default) or `admin` (owners only).
    #[serde(default)]
    pub role: Option<Role>,
}

/// `GET /v1/invitations` and `GET /v1/rooms/{id}/invitations`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationList {
    pub invitations: Vec<Invitation>,
}

/// Query of `GET /v1/rooms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomListQuery {
    /// `next_cursor` of the previous page (default: from the most recently active room).
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// `POST /v1/rooms/direct`: the direct room between the caller and `user_id`,
/// created the first time it is asked for.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectRoomRequest {
    pub user_id: UserId,
}

/// `POST /v1/rooms/{id}/members`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub user_id: UserId,
    /// `member` (default) or `admin`; only the owner may add admins.
    #[serde(default)]
    pub role: Option<Role>,
}

/// `POST /v1/rooms/{id}/messages`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessageRequest {
    /// 1 to 4000 characters, not blank; may be empty (`""`) when the
    /// message carries attachments.
    #[schema(max_length = 4000)]
    pub body: String,
    /// The client's own id for this message (1 to 64 of `A-Z a-z 0-9 - _ . :`).
    /// Retrying a post with the same id returns the first result instead of a duplicate.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub client_msg_id: Option<String>,
    /// The seq of an earlier message (`message.created`) of the same room
    /// this one replies to; anything else is 422 `invalid_reply_to`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub reply_to_seq: Option<i64>,
    /// Ids of the caller's uploads into this room (`POST
    /// /v1/rooms/{room_id}/attachments`) to post with the message, in
    /// order, at most 10, each once and never already posted; anything else
    /// is 422 `invalid_attachment`, and nothing is posted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 10)]
    pub attachment_ids: Vec<String>,
}

/// `PATCH /v1/rooms/{id}/messages/{seq}`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    /// The new body: 1 to 4000 characters, not blank.
    #[schema(min_length = 1, max_length = 4000)]
    pub body: String,
}

/// Query of `GET /v1/rooms/{id}/messages`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events with a smaller `seq` (default: from the newest).
    #[param(minimum = 1)]
    pub before_seq: Option<i64>,
    /// Only events with a larger `seq`: the `limit` events just after it
    /// (paging towards the newest). At most one of `before_seq`,
    /// `after_seq` and `around_seq`.
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// The events around this `seq` (it included): half the page before,
    /// half after (a search hit in its context).
    #[param(minimum = 1)]
    pub around_seq: Option<i64>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A page of a room's timeline, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first, whichever way the page was asked for.
    pub events: Vec<RoomEvent>,
    /// Pass as `before_seq` for the next older page; absent when the page
    /// reaches the room's first event.
    pub next_before_seq: Option<i64>,
    /// Pass as `after_seq` for the next newer page; absent when the page
    /// reaches the room's newest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_seq: Option<i64>,
}

/// Query of `GET /v1/search/messages`. The syntax of `q` is in docs/api.md.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What to find: words (all must occur), `"quoted phrases"`, `OR`
    /// between alternatives, `-word` or `-"phrase"` to exclude. 1 to 256
    /// characters, at most 16 words.
    #[param(required = true, min_length = 1, max_length = 256)]
    pub q: Option<String>,
    /// Only in this room (the caller must be a member: 404 otherwise).
    #[param(value_type = Option<i64>, minimum = 1)]
    pub room_id: Option<RoomId>,
    /// Only messages of this user.
    #[param(value_type = Option<i64>, minimum = 1)]
    pub sender_id: Option<UserId>,
    /// Only messages posted before this time (RFC 3339).
    #[param(format = DateTime)]
    pub before: Option<String>,
    /// Only messages posted at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub after: Option<String>,
    /// Page size, 1 to 50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page of the same search.
    #[param(max_length = 200)]
    pub cursor: Option<String>,
}

/// A message that matched a search.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub room_id: RoomId,
    pub seq: i64,
    pub sender_id: UserId,
    pub created_at: DateTime<Utc>,
    /// When its body was last edited (the hit is on the current body).
    pub edited_at: Option<DateTime<Utc>>,
    /// An excerpt of the body around the matches, as HTML: the text is
    /// escaped (`&amp;`, `&lt;`, `&gt;`, `&quot;`, `&#39;`) and the matched
    /// words are wrapped in `<mark>`...`</mark>`, the only tags it holds;
    /// `…` marks text left out at either end.
    pub snippet: String,
    /// Relevance, higher first; comparable only among the hits of one
    /// search (the scale differs between the cluster and a single node).
    pub rank: f64,
}

/// A page of search hits, best first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Pass as `cursor`, with the same other parameters, for the next page;
    /// absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/rooms`: a page of the caller's rooms, the most recently
/// active first (`last_activity_at`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<Room>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/rooms/{id}/read`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The newest `seq` the caller has read; at most the room's `last_seq`.
    /// A `seq` below the current marker changes nothing.
    pub seq: i64,
}

/// `GET /v1/rooms/{id}/receipts`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceiptList {
    pub receipts: Vec<crate::model::Receipt>,
}

/// `GET /v1/rooms/{id}/members`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// `GET /v1/auth/sessions`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// Query of `GET /v1/users`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserLookup {
    /// Exact username to look up.
    pub username: String,
}

/// `GET /v1/users?username=`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserLookupResponse {
    pub user: PublicUser,
}

/// `PATCH /v1/users/me/profile`: what to change. An absent field stays as
/// it is; `null` (or text that is empty once trimmed) clears it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// At most 64 characters after trimming, no control characters.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, max_length = 64)]
    pub display_name: Option<Option<String>>,
    /// At most 140 characters after trimming, no control characters.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, max_length = 140)]
    pub status_text: Option<Option<String>>,
}

/// A field that is present in a body, whatever its value (`null` too):
/// with `#[serde(default)]`, an absent field stays `None` and a `null` one
/// becomes `Some(None)`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `GET /v1/users/{user_id}/profile`: a user's profile, for the user and
/// the users who share a room with them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserProfile {
    pub user_id: UserId,
    pub username: String,
    pub profile: Profile,
}

/// Every error the REST api returns has this shape.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (see docs/api.md).
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /v1/admin/provision` (admin token only): users, sessions and rooms
/// for a load test, in one request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// Usernames are `{prefix}_{index}`: 1 to 16 of `a-z`, `0-9`, `_`, unused so far.
    #[schema(pattern = "^[a-z0-9_]{1,16}$", min_length = 1, max_length = 16)]
    pub prefix: String,
    /// 1 to 100000.
    #[schema(minimum = 1, maximum = 100000)]
    pub users: u32,
    /// Rooms to create (0 to 10000).
    #[serde(default)]
    #[schema(maximum = 10000)]
    pub rooms: u32,
    /// Members per room; member `i` of room `r` is user [`member_of`]`(r, i, ...)`.
    #[serde(default)]
    pub room_size: u32,
    /// Lifetime of the access tokens returned (default: the configured one; at most 24 h).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub token_ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProvisionedUser {
    pub id: UserId,
    pub username: String,
    pub access_token: String,
    pub session_id: SessionId,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProvisionedRoom {
    pub id: RoomId,
    pub name: String,
    pub last_seq: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProvisionResponse {
    /// In index order.
    pub users: Vec<ProvisionedUser>,
    /// In index order.
    pub rooms: Vec<ProvisionedRoom>,
    /// Seconds the access tokens are valid.
    pub expires_in: u64,
}

/// The user index of member `i` of room `r` in a provisioned load test:
/// rooms take consecutive users, wrapping around. The first is the owner.
pub fn member_of(r: u32, i: u32, room_size: u32, users: u32) -> u32 {
    ((u64::from(r) * u64::from(room_size) + u64::from(i)) % u64::from(users.max(1))) as u32
}

/// `GET /v1/rooms/{id}/presence`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomPresenceResponse {
    pub room_id: RoomId,
    /// Presence events with a version at most this are already reflected
    /// here (0 when nobody has been in the room since it was last empty).
    pub version: i64,
    /// Users with a connection in the room now, ascending.
    pub user_ids: Vec<UserId>,
}

/// Query of `GET /v1/presence`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// Comma-separated user ids, at most 100.
    pub user_ids: String,
}

/// One user's presence.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct UserPresence {
    pub user_id: UserId,
    /// Has at least one open connection on some gateway.
    pub online: bool,
}

/// `GET /v1/presence?user_ids=`: only users who share a room with the
/// caller (and the caller); others are left out, whether they exist or not.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceList {
    pub users: Vec<UserPresence>,
}

/// What an API key may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum ApiScope {
    /// Publish custom events and signals into rooms (`/v1/server/rooms/...`).
    #[serde(rename = "rooms:publish")]
    RoomsPublish,
    /// Publish signals to users (`/v1/server/users/...`).
    #[serde(rename = "users:publish")]
    UsersPublish,
}

impl ApiScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::RoomsPublish => "rooms:publish",
            ApiScope::UsersPublish => "users:publish",
        }
    }

    pub fn parse(s: &str) -> Option<ApiScope> {
        match s {
            "rooms:publish" => Some(ApiScope::RoomsPublish),
            "users:publish" => Some(ApiScope::UsersPublish),
            _ => None,
        }
    }
}

/// `POST /v1/admin/api-keys` (admin token only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for (1 to 100 characters), for people reading the list.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// At least one.
    #[schema(min_items = 1)]
    pub scopes: Vec<ApiScope>,
    /// When given, the key may publish into these rooms only (1 to 1000
    /// existing rooms). Absent: any room.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 1000)]
    pub room_ids: Option<Vec<RoomId>>,
}

/// An API key as admins see it (never the key itself).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub name: String,
    pub scopes: Vec<ApiScope>,
    /// The rooms the key is restricted to; absent: any room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_ids: Option<Vec<RoomId>>,
    /// The key's own account: the `sender_id` of the custom events it publishes.
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    /// When the key was last used (to the minute); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the key was revoked; absent: it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The answer to `POST /v1/admin/api-keys`: the only time the key is shown.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// `pk_` and 43 characters (32 random bytes, base64url): send it as
    /// `Authorization: Bearer pk_...`. Only its hash is kept; it cannot be shown again.
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyInfo,
}

/// `GET /v1/admin/api-keys`: every key, revoked ones too, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

/// `POST /v1/server/rooms/{room_id}/events`, `.../signals` and
/// `POST /v1/server/users/{user_id}/signals`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The application's event name: two or more dot-separated parts of
    /// `a-z`, `0-9` and `_`, each starting with a letter, at most 64
    /// characters (`acme.order_shipped`). Parley's own prefixes (`room.`,
    /// `message.`, `member.`, `parley.` ...) are refused.
    #[schema(
        pattern = "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$",
        min_length = 3,
        max_length = 64
    )]
    pub name: String,
    /// Any JSON value, at most 16 KiB as compact JSON (default `null`).
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// What happened, in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventKind {
    /// An account was created.
    Signup,
    /// A login succeeded (`detail.session_id`).
    Login,
    /// A login failed: wrong password, or (no `user_id`) no such account
    /// (`detail.login`: the name tried).
    LoginFailed,
    /// Too many failed logins: the account (or the name) is locked out
    /// (`detail.lockout_secs`), longer with each repeat.
    LoginLockedOut,
    /// A login was refused before the password was checked: the account
    /// (or the name) is locked out.
    LoginThrottled,
    /// The session of the request ended (`detail.session_id`).
    Logout,
    /// One of the user's sessions was revoked by the user (`detail.session_id`).
    SessionRevoked,
    /// A refresh token was presented a second time: it leaked, and its
    /// session was revoked (`detail.session_id`).
    RefreshTokenReused,
    /// An admin created an API key (`detail.api_key_id`, `detail.name`).
    ApiKeyCreated,
    /// An admin revoked an API key (`detail.api_key_id`).
    ApiKeyRevoked,
    /// An admin provisioned load-test accounts and rooms (`detail.prefix`).
    Provisioned,
    /// Two-factor login was turned on (a code confirmed the authenticator).
    TotpEnabled,
    /// Two-factor login was turned off (password and code given).
    TotpDisabled,
    /// A login's second factor was wrong (`detail.reason`).
    TwoFactorFailed,
    /// A recovery code was spent (`detail.left`: how many remain).
    RecoveryCodeUsed,
    /// New recovery codes replaced the old ones.
    RecoveryCodesRegenerated,
    /// A client IP spent its login or signup budget on all api nodes
    /// together (`detail.budget`, `detail.retry_after_secs`; admins only).
    IpRateLimited,
    /// The account's address was verified through a mailed link (`detail.email`).
    EmailVerified,
    /// The account's address was changed (`detail.old_email`, `detail.new_email`);
    /// it is unverified until the link mailed to the new one is followed.
    EmailChanged,
    /// A password reset link was mailed to the account (the requester's
    /// ip and User-Agent are the event's).
    PasswordResetRequested,
    /// The password was reset through a mailed link; every session of the
    /// account was revoked (`detail.sessions_revoked`).
    PasswordResetCompleted,
    /// An admin put a parked mail job back in the queue (`detail.mail_job_id`,
    /// or `detail.retried`: how many, for all parked jobs at once).
    MailJobRetried,
    /// An admin deleted a parked mail job (`detail.mail_job_id`).
    MailJobDeleted,
    /// The owner changed the password (`detail.sessions_revoked`: the
    /// account's other sessions, ended).
    PasswordChanged,
    /// The owner deleted the account (`detail.rooms_left`); its other
    /// events were erased with its personal data, and this one carries no
    /// address or User-Agent.
    AccountDeleted,
    /// An admin suspended the account (`detail.admin_id`, `detail.reason`,
    /// `detail.sessions_revoked`).
    AccountSuspended,
    /// An admin lifted the suspension (`detail.admin_id`).
    AccountUnsuspended,
    /// The account's role changed (`detail.role`; `detail.admin_id`, or
    /// `detail.by: "cli"` for the command line).
    AccountRoleChanged,
    /// A suspended account proved its password (and second factor) but got
    /// no session.
    LoginRefusedSuspended,
}

impl SecurityEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::Login => "login",
            Self::LoginFailed => "login_failed",
            Self::LoginLockedOut => "login_locked_out",
            Self::LoginThrottled => "login_throttled",
            Self::Logout => "logout",
            Self::SessionRevoked => "session_revoked",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::ApiKeyCreated => "api_key_created",
            Self::ApiKeyRevoked => "api_key_revoked",
            Self::Provisioned => "provisioned",
            Self::TotpEnabled => "totp_enabled",
            Self::TotpDisabled => "totp_disabled",
            Self::TwoFactorFailed => "two_factor_failed",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Self::IpRateLimited => "ip_rate_limited",
            Self::EmailVerified => "email_verified",
            Self::EmailChanged => "email_changed",
            Self::PasswordResetRequested => "password_reset_requested",
            Self::PasswordResetCompleted => "password_reset_completed",
            Self::MailJobRetried => "mail_job_retried",
            Self::MailJobDeleted => "mail_job_deleted",
            Self::AccountDeleted => "account_deleted",
            Self::PasswordChanged => "password_changed",
            Self::AccountSuspended => "account_suspended",
            Self::AccountUnsuspended => "account_unsuspended",
            Self::AccountRoleChanged => "account_role_changed",
            Self::LoginRefusedSuspended => "login_refused_suspended",
        }
    }
}

/// One entry of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SecurityEvent {
    pub id: i64,
    /// The account concerned (absent for a failed login naming no account
    /// and for admin actions).
    pub user_id: Option<UserId>,
    /// A `SecurityEventKind` (unknown values may appear in later versions).
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// The client's address as the api saw it (the forwarded one behind a
    /// trusted proxy).
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// What else identifies the event (see the kinds).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SecurityEventPage {
    pub events: Vec<SecurityEvent>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

/// Query of `GET /v1/users/me/security-events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SecurityEventsQuery {
    /// Only events with a smaller `id` (default: from the newest).
    #[param(minimum = 1)]
    pub before_id: Option<i64>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Query of `GET /v1/admin/security-events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminSecurityEventsQuery {
    /// Only the events of this account (default: everyone's).
    #[param(minimum = 1)]
    pub user_id: Option<i64>,
    /// Only events with a smaller `id` (default: from the newest).
    #[param(minimum = 1)]
    pub before_id: Option<i64>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// `POST /v1/auth/verify-email`: the token from a verification mail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyEmailRequest {
    /// The `token` of the link in the verification mail.
    #[schema(min_length = 1, max_length = 128)]
    #[param(min_length = 1, max_length = 128)]
    pub token: String,
}

/// `POST /v1/auth/password-reset`: mail a reset link to this address.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
}

/// The answer to a password reset request: the same whether or not an
/// account has the address, so it cannot be used to find accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasswordResetAccepted {
    pub message: String,
}

/// `POST /v1/auth/password-reset/confirm`: the token from the reset mail
/// and the new password.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    #[schema(min_length = 1, max_length = 128)]
    pub token: String,
    /// At least 10 characters, at most 1024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
}

/// `PUT /v1/users/me/password`: a new password, confirmed with the current one.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The account's current password.
    #[schema(max_length = 1024)]
    pub current_password: String,
    /// 8 to 1024 characters, as at signup.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

/// `PUT /v1/users/me/password`: the password is changed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PasswordChanged {
    /// The account's other sessions, revoked (this one stays).
    pub sessions_revoked: usize,
}

/// `PUT /v1/users/me/email`: a new address, confirmed with the password.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    /// The account's current password.
    #[schema(max_length = 1024)]
    pub password: String,
}

/// Where a mail job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MailJobState {
    /// Waiting for its next attempt (or being sent).
    Pending,
    /// Failed every attempt; waits for an admin to retry it.
    Parked,
}

impl MailJobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Parked => "parked",
        }
    }
}

/// A mail waiting to leave, as an admin sees it (never its content: that
/// is made, with any token, when it is sent).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MailJob {
    pub id: i64,
    /// `verify_email`, `password_reset` or `email_changed`.
    pub kind: String,
    pub recipient: String,
    pub state: MailJobState,
    /// Attempts made so far.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Pending: when the next attempt may start.
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of mail jobs, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MailJobPage {
    pub jobs: Vec<MailJob>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

/// The answer to `POST /v1/admin/mail-jobs/retry`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MailJobsRetried {
    /// Parked jobs put back in the queue.
    pub retried: u64,
}

/// Query of `GET /v1/admin/mail-jobs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MailJobsQuery {
    /// `parked` (the default) or `pending`.
    pub state: Option<MailJobState>,
    /// Only jobs with a smaller `id` (default: from the newest).
    #[param(minimum = 1)]
    pub before_id: Option<i64>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// `DELETE /v1/users/me`: the account's password, and with two-factor
/// login on, a current code or an unused recovery code.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    pub password: String,
    pub code: Option<String>,
}

/// An account as an admin sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminUser {
    pub id: UserId,
    /// `deleted_<id>` once deleted.
    pub username: String,
    /// Absent once deleted.
    pub email: Option<String>,
    pub email_verified: bool,
    pub role: AccountRole,
    pub two_factor: bool,
    pub created_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Which accounts `GET /v1/admin/users` lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Neither suspended nor deleted.
    Active,
    Suspended,
    Deleted,
    /// Every account (the default).
    #[default]
    Any,
}

/// Query of `GET /v1/admin/users`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminUsersQuery {
    /// Accounts whose username or email starts with this (case-insensitive).
    pub q: Option<String>,
    #[param(inline)]
    pub status: Option<AccountStatus>,
    #[param(inline)]
    pub role: Option<AccountRole>,
    /// Only accounts with a larger `id` (from `next_after_id`).
    #[param(minimum = 0)]
    pub after_id: Option<i64>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A page of accounts, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminUserPage {
    pub users: Vec<AdminUser>,
    /// Pass as `after_id` for the next page; absent on the last page.
    pub next_after_id: Option<i64>,
}

/// `POST /v1/admin/users/{user_id}/suspend`
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    /// Why (kept in the audit log; at most 500 characters).
    pub reason: Option<String>,
}

/// `PUT /v1/admin/users/{user_id}/role`
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    pub role: AccountRole,
}
