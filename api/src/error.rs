//! The api's one error type, and the one place it becomes a response.
//!
//! Clients get a stable `code` and a readable `message`; causes (database
//! errors and the like) are logged here and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::rest::{ErrorBody, ErrorDetail};
use std::borrow::Cow;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field failed validation (422 `validation_failed`); `field` names
    /// it unless it cannot be named (a bad key at the top of a body).
    #[error("{message}")]
    Validation {
        field: Option<Cow<'static, str>>,
        message: String,
    },
    /// The body is not JSON (400 `invalid_json`).
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// JSON of the wrong shape: a missing field, a wrong type (422 `invalid_body`).
    #[error("{0}")]
    InvalidBody(String),
    /// Malformed query string (400 `invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("this endpoint needs an `Authorization: Bearer <access token>` header")]
    MissingToken,
    #[error("the access token is not valid")]
    InvalidToken,
    #[error("the access token has expired; refresh it")]
    TokenExpired,
    #[error("the session of this token was revoked")]
    SessionRevoked,
    #[error("wrong username, email or password")]
    InvalidCredentials,
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such room")]
    RoomNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("no such session")]
    SessionNotFound,
    #[error("the user is not a member of this room")]
    MemberNotFound,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("this username is taken")]
    UsernameTaken,
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("the user is already a member of this room")]
    AlreadyMember,
    #[error("this client_msg_id was already used for a different message")]
    IdempotencyConflict,
    #[error("the owner cannot leave the room")]
    OwnerCannotLeave,
    #[error("direct rooms have exactly their two members")]
    DirectRoom,
    #[error("the password is not right")]
    WrongPassword,
    #[error("a request with the session cookie must echo its CSRF token in `X-CSRF-Token`")]
    CsrfFailed,
    #[error("two-factor login is enabled already; disable it first")]
    TotpAlreadyEnabled,
    #[error("no two-factor enrolment waits for a code; enrol first")]
    TotpNotPending,
    #[error("two-factor login is not enabled")]
    TotpNotEnabled,
    #[error("the code is not a current authenticator code or an unused recovery code")]
    InvalidTwoFactorCode,
    #[error("the code is not a current authenticator code or an unused recovery code")]
    TwoFactorLoginFailed,
    #[error("the login challenge is unknown, expired, used, or out of attempts; log in again")]
    InvalidChallenge,
    #[error("the user already has a pending invitation to this room")]
    AlreadyInvited,
    #[error("no pending invitation to this room")]
    InvitationNotFound,
    #[error("this room takes new members by invitation only")]
    InvitationRequired,
    #[error("users with this prefix exist already")]
    PrefixTaken,
    #[error("this endpoint needs an `Authorization: Bearer pk_...` header with an API key")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the API key was revoked")]
    ApiKeyRevoked,
    #[error("the API key lacks the `{0}` scope")]
    MissingScope(&'static str),
    #[error("the API key may not publish into this room")]
    RoomNotAllowed,
    #[error("no such API key")]
    ApiKeyNotFound,
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("the payload is over {max_bytes} bytes of compact JSON")]
    EventPayloadTooLarge { max_bytes: usize },
    #[error("no such message in this room (or it was deleted)")]
    MessageNotFound,
    #[error("only the author may edit a message")]
    NotAuthor,
    #[error("only the author or a room owner or admin may delete a message")]
    DeleteNotAllowed,
    #[error("reply_to_seq must be the seq of an earlier message of this room")]
    InvalidReplyTarget,
    #[error("a message has at most {max} distinct reactions")]
    TooManyReactions { max: i64 },
    #[error("the attachment is over the limit of {max_bytes} bytes")]
    AttachmentTooLarge { max_bytes: u64 },
    #[error(
        "the file is not one of the allowed types (decided from its bytes, not its name or Content-Type)"
    )]
    AttachmentTypeNotAllowed,
    #[error("no such attachment")]
    AttachmentNotFound,
    #[error("the avatar is over the limit of {max_bytes} bytes")]
    AvatarTooLarge { max_bytes: u64 },
    #[error("an avatar must be a PNG, JPEG, WebP or GIF image (decided from its bytes)")]
    AvatarTypeNotAllowed,
    #[error("the avatar image cannot be decoded within the limits (damaged, or too many pixels)")]
    AvatarUnreadable,
    #[error("this user has no avatar")]
    AvatarNotFound,
    #[error(
        "this attachment has no thumbnail (not an image, not made yet, or it could not be made)"
    )]
    ThumbnailNotFound,
    #[error(
        "attachment {0} is not an upload of yours into this room that is complete and not posted yet"
    )]
    InvalidAttachment(String),
    #[error("the upload ended before its body was complete")]
    UploadIncomplete,
    #[error("the range is outside the {size} bytes of the file")]
    RangeNotSatisfiable { size: u64 },
    #[error(
        "verify your email address first (the link in the mail we sent; POST /v1/users/me/email/verification sends another)"
    )]
    EmailUnverified,
    #[error("the email address is verified already")]
    EmailAlreadyVerified,
    #[error(
        "the verification link is not valid: it was used, it expired, or the address changed since; ask for a new one"
    )]
    InvalidVerificationToken,
    #[error("the password reset link is not valid: it was used or it expired; ask for a new one")]
    InvalidResetToken,
    #[error("no parked mail job with this id")]
    MailJobNotFound,
    #[error("this account is suspended; ask an administrator")]
    AccountSuspended,
    #[error("an admin cannot {0} their own account")]
    OwnAccount(&'static str),
    /// A search ran past its time limit (`store::SEARCH_TIMEOUT_MS`).
    #[error(
        "the search took too long; add words, or narrow it to a room, a sender or a time range"
    )]
    SearchTooBroad,
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("a backing service is unavailable; retry shortly")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: Some(Cow::Borrowed(field)),
            message: message.into(),
        }
    }

    /// Text the store cannot hold (see `text.rs`), in `field` if it can be named.
    pub fn unstorable(field: Option<String>) -> Self {
        let message = match &field {
            Some(f) => format!("{f} must be UTF-8 text without NUL or unpaired surrogates"),
            None => "names must be UTF-8 text without NUL or unpaired surrogates".to_owned(),
        };
        ApiError::Validation {
            field: field.map(Cow::Owned),
            message,
        }
    }

    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidJson(_) | InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Validation { .. } | InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge | EventPayloadTooLarge { .. } | AttachmentTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AttachmentTypeNotAllowed => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AvatarTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AvatarTypeNotAllowed => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AvatarUnreadable => StatusCode::UNPROCESSABLE_ENTITY,
            AvatarNotFound => StatusCode::NOT_FOUND,
            AttachmentNotFound | ThumbnailNotFound => StatusCode::NOT_FOUND,
            InvalidAttachment(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UploadIncomplete => StatusCode::BAD_REQUEST,
            RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            MissingToken | InvalidToken | TokenExpired | SessionRevoked | InvalidCredentials
            | InvalidRefreshToken | MissingApiKey | InvalidApiKey | ApiKeyRevoked
            | TwoFactorLoginFailed | InvalidChallenge => StatusCode::UNAUTHORIZED,
            Forbidden(_) | MissingScope(_) | RoomNotAllowed | NotAuthor | DeleteNotAllowed
            | WrongPassword | CsrfFailed => StatusCode::FORBIDDEN,
            InvalidTwoFactorCode => StatusCode::UNPROCESSABLE_ENTITY,
            EmailUnverified | AccountSuspended => StatusCode::FORBIDDEN,
            OwnAccount(_) => StatusCode::CONFLICT,
            InvalidVerificationToken | InvalidResetToken => StatusCode::BAD_REQUEST,
            EmailAlreadyVerified => StatusCode::CONFLICT,
            MailJobNotFound => StatusCode::NOT_FOUND,
            MessageNotFound => StatusCode::NOT_FOUND,
            InvalidReplyTarget | TooManyReactions { .. } | SearchTooBroad => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RoomNotFound | UserNotFound | SessionNotFound | MemberNotFound | InvitationNotFound
            | NotFound | ApiKeyNotFound => StatusCode::NOT_FOUND,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UsernameTaken | EmailTaken | AlreadyMember | IdempotencyConflict | OwnerCannotLeave
            | DirectRoom | PrefixTaken | AlreadyInvited | InvitationRequired
            | TotpAlreadyEnabled | TotpNotPending | TotpNotEnabled => StatusCode::CONFLICT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every value [`ApiError::code`] returns (metrics start a series for each).
    pub const CODES: &'static [&'static str] = &[
        "validation_failed",
        "invalid_json",
        "invalid_body",
        "invalid_query",
        "unsupported_media_type",
        "payload_too_large",
        "missing_token",
        "invalid_token",
        "token_expired",
        "session_revoked",
        "invalid_credentials",
        "invalid_refresh_token",
        "forbidden",
        "room_not_found",
        "user_not_found",
        "session_not_found",
        "member_not_found",
        "not_found",
        "method_not_allowed",
        "username_taken",
        "email_taken",
        "already_member",
        "idempotency_conflict",
        "owner_cannot_leave",
        "direct_room",
        "already_invited",
        "invitation_not_found",
        "invitation_required",
        "wrong_password",
        "csrf_failed",
        "totp_already_enabled",
        "totp_not_pending",
        "totp_not_enabled",
        "invalid_two_factor_code",
        "invalid_two_factor_code",
        "invalid_challenge",
        "prefix_taken",
        "missing_api_key",
        "invalid_api_key",
        "api_key_revoked",
        "missing_scope",
        "room_not_allowed",
        "api_key_not_found",
        "idempotency_key_reused",
        "event_payload_too_large",
        "account_suspended",
        "own_account",
        "message_not_found",
        "not_author",
        "delete_not_allowed",
        "invalid_reply_to",
        "too_many_reactions",
        "attachment_too_large",
        "attachment_type_not_allowed",
        "attachment_not_found",
        "avatar_too_large",
        "avatar_type_not_allowed",
        "avatar_unreadable",
        "avatar_not_found",
        "thumbnail_not_found",
        "invalid_attachment",
        "upload_incomplete",
        "range_not_satisfiable",
        "email_unverified",
        "email_already_verified",
        "invalid_verification_token",
        "invalid_reset_token",
        "mail_job_not_found",
        "search_too_broad",
        "rate_limited",
        "unavailable",
        "internal",
    ];

    /// The stable code clients match on (listed in docs/api.md).
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Validation { .. } => "validation_failed",
            InvalidJson(_) => "invalid_json",
            InvalidBody(_) => "invalid_body",
            InvalidQuery(_) => "invalid_query",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            MissingToken => "missing_token",
            InvalidToken => "invalid_token",
            TokenExpired => "token_expired",
            SessionRevoked => "session_revoked",
            InvalidCredentials => "invalid_credentials",
            InvalidRefreshToken => "invalid_refresh_token",
            Forbidden(_) => "forbidden",
            RoomNotFound => "room_not_found",
            UserNotFound => "user_not_found",
            SessionNotFound => "session_not_found",
            MemberNotFound => "member_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UsernameTaken => "username_taken",
            EmailTaken => "email_taken",
            AlreadyMember => "already_member",
            IdempotencyConflict => "idempotency_conflict",
            OwnerCannotLeave => "owner_cannot_leave",
            DirectRoom => "direct_room",
            AlreadyInvited => "already_invited",
            WrongPassword => "wrong_password",
            AccountSuspended => "account_suspended",
            OwnAccount(_) => "own_account",
            CsrfFailed => "csrf_failed",
            TotpAlreadyEnabled => "totp_already_enabled",
            TotpNotPending => "totp_not_pending",
            TotpNotEnabled => "totp_not_enabled",
            InvalidTwoFactorCode | TwoFactorLoginFailed => "invalid_two_factor_code",
            InvalidChallenge => "invalid_challenge",
            InvitationNotFound => "invitation_not_found",
            InvitationRequired => "invitation_required",
            PrefixTaken => "prefix_taken",
            MissingApiKey => "missing_api_key",
            InvalidApiKey => "invalid_api_key",
            ApiKeyRevoked => "api_key_revoked",
            MissingScope(_) => "missing_scope",
            RoomNotAllowed => "room_not_allowed",
            ApiKeyNotFound => "api_key_not_found",
            IdempotencyKeyReused => "idempotency_key_reused",
            EventPayloadTooLarge { .. } => "event_payload_too_large",
            MessageNotFound => "message_not_found",
            NotAuthor => "not_author",
            DeleteNotAllowed => "delete_not_allowed",
            InvalidReplyTarget => "invalid_reply_to",
            TooManyReactions { .. } => "too_many_reactions",
            AttachmentTooLarge { .. } => "attachment_too_large",
            AttachmentTypeNotAllowed => "attachment_type_not_allowed",
            AttachmentNotFound => "attachment_not_found",
            AvatarTooLarge { .. } => "avatar_too_large",
            AvatarTypeNotAllowed => "avatar_type_not_allowed",
            AvatarUnreadable => "avatar_unreadable",
            AvatarNotFound => "avatar_not_found",
            ThumbnailNotFound => "thumbnail_not_found",
            InvalidAttachment(_) => "invalid_attachment",
            UploadIncomplete => "upload_incomplete",
            RangeNotSatisfiable { .. } => "range_not_satisfiable",
            EmailUnverified => "email_unverified",
            EmailAlreadyVerified => "email_already_verified",
            InvalidVerificationToken => "invalid_verification_token",
            InvalidResetToken => "invalid_reset_token",
            MailJobNotFound => "mail_job_not_found",
            SearchTooBroad => "search_too_broad",
            RateLimited { .. } => "rate_limited",
            Unavailable(_) => "unavailable",
            Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "backing service unavailable")
            }
            _ => {}
        }
        metrics::counter!("api_errors_total", "code" => self.code()).increment(1);
        let field = match &self {
            ApiError::Validation { field, .. } => field.as_deref().map(str::to_owned),
            ApiError::InvalidReplyTarget => Some("reply_to_seq".to_owned()),
            ApiError::InvalidAttachment(_) => Some("attachment_ids".to_owned()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after = match self {
            ApiError::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
            ApiError::Unavailable(_) => Some(shared::health::UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(range) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, range);
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.into())
        } else if matches!(e, StoreError::TimedOut) {
            ApiError::SearchTooBroad
        } else {
            ApiError::Internal(e.into())
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// No wildcard: a new variant stops this compiling until it is added
    /// below and to `every_variant`.
    #[allow(dead_code)]
    fn exhaustive(e: &ApiError) {
        use ApiError::*;
        match e {
            Validation { .. } | InvalidJson(_) | InvalidBody(_) | InvalidQuery(_) => {}
            UnsupportedMediaType | PayloadTooLarge | MissingToken | InvalidToken => {}
            TokenExpired | SessionRevoked | InvalidCredentials | InvalidRefreshToken => {}
            Forbidden(_) | RoomNotFound | UserNotFound | SessionNotFound | MemberNotFound => {}
            NotFound | MethodNotAllowed | UsernameTaken | EmailTaken | AlreadyMember => {}
            IdempotencyConflict | OwnerCannotLeave | DirectRoom | PrefixTaken => {}
            AlreadyInvited | InvitationNotFound | InvitationRequired => {}
            WrongPassword | TotpAlreadyEnabled | TotpNotPending | TotpNotEnabled => {}
            CsrfFailed => {}
            InvalidTwoFactorCode | TwoFactorLoginFailed | InvalidChallenge => {}
            MissingApiKey | InvalidApiKey | ApiKeyRevoked | MissingScope(_) => {}
            RoomNotAllowed | ApiKeyNotFound | IdempotencyKeyReused => {}
            EventPayloadTooLarge { .. } => {}
            MessageNotFound | NotAuthor | DeleteNotAllowed | InvalidReplyTarget => {}
            TooManyReactions { .. } => {}
            AttachmentTooLarge { .. } | AttachmentTypeNotAllowed | AttachmentNotFound => {}
            AvatarTooLarge { .. } | AvatarTypeNotAllowed | AvatarUnreadable | AvatarNotFound => {}
            ThumbnailNotFound | InvalidAttachment(_) | UploadIncomplete => {}
            RangeNotSatisfiable { .. } => {}
            EmailUnverified | EmailAlreadyVerified | InvalidVerificationToken => {}
            InvalidResetToken | MailJobNotFound => {}
            AccountSuspended | OwnAccount(_) => {}
            SearchTooBroad => {}
            RateLimited { .. } | Unavailable(_) | Internal(_) => {}
        }
    }

    #[test]
    fn codes_lists_the_code_of_every_variant() {
        use ApiError::*;
        let every_variant = [
            ApiError::validation("f", "m"),
            InvalidJson(String::new()),
            InvalidBody(String::new()),
            InvalidQuery(String::new()),
            UnsupportedMediaType,
            PayloadTooLarge,
            MissingToken,
            InvalidToken,
            TokenExpired,
            SessionRevoked,
            InvalidCredentials,
            InvalidRefreshToken,
            Forbidden("x"),
            RoomNotFound,
            UserNotFound,
            SessionNotFound,
            MemberNotFound,
            NotFound,
            MethodNotAllowed,
            UsernameTaken,
            EmailTaken,
            AlreadyMember,
            IdempotencyConflict,
            OwnerCannotLeave,
            DirectRoom,
            AlreadyInvited,
            InvitationNotFound,
            InvitationRequired,
            WrongPassword,
            CsrfFailed,
            TotpAlreadyEnabled,
            TotpNotPending,
            TotpNotEnabled,
            InvalidTwoFactorCode,
            TwoFactorLoginFailed,
            InvalidChallenge,
            PrefixTaken,
            MissingApiKey,
            InvalidApiKey,
            ApiKeyRevoked,
            MissingScope("x"),
            RoomNotAllowed,
            ApiKeyNotFound,
            IdempotencyKeyReused,
            EventPayloadTooLarge { max_bytes: 1 },
            AccountSuspended,
            OwnAccount("x"),
            MessageNotFound,
            NotAuthor,
            DeleteNotAllowed,
            InvalidReplyTarget,
            TooManyReactions { max: 1 },
            AttachmentTooLarge { max_bytes: 1 },
            AttachmentTypeNotAllowed,
            AttachmentNotFound,
            AvatarTooLarge { max_bytes: 1 },
            AvatarTypeNotAllowed,
            AvatarUnreadable,
            AvatarNotFound,
            ThumbnailNotFound,
            InvalidAttachment(String::new()),
            UploadIncomplete,
            RangeNotSatisfiable { size: 1 },
            EmailUnverified,
            EmailAlreadyVerified,
            InvalidVerificationToken,
            InvalidResetToken,
            MailJobNotFound,
            SearchTooBroad,
            RateLimited {
                retry_after_secs: 1,
            },
            Unavailable(anyhow::anyhow!("x")),
            Internal(anyhow::anyhow!("x")),
        ];
        let codes: Vec<&str> = every_variant.iter().map(ApiError::code).collect();
        assert_eq!(codes, ApiError::CODES);
    }
}
