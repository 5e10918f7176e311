//! Extractors whose rejections are [`ApiError`]s, so a malformed request gets
//! the same JSON error shape as everything else.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use shared::auth::TokenError;
use shared::{SessionId, UserId};

/// `axum::Json` with our rejection.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::InvalidBody(other.body_text()),
        }
    }
}

/// `axum::extract::Path` with our rejection: a path that does not parse
/// names nothing, so it is a 404.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound
    }
}

/// `axum::extract::Query` with our rejection.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
}

/// The caller, proven by a valid access token of a session that has not
/// been revoked.
#[derive(Clone, Copy, Debug)]
pub struct AuthUser {
    pub user_id: UserId,
    pub session_id: SessionId,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::MissingToken)?;
        let identity = state.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => ApiError::TokenExpired,
            TokenError::Invalid => {
                tracing::warn!(target: "security", "request with an invalid access token");
                ApiError::InvalidToken
            }
        })?;
        if !state
            .sessions
            .is_active(&state.store, identity.session_id)
            .await?
        {
            tracing::warn!(target: "security", user_id = %identity.user_id, session_id = %identity.session_id,
                "request with a token of a revoked session");
            return Err(ApiError::SessionRevoked);
        }
        Ok(AuthUser {
            user_id: identity.user_id,
            session_id: identity.session_id,
        })
    }
}
