//! Extractors whose rejections are [`ApiError`]s, so a malformed request gets
//! the same JSON error shape as everything else.
//!
//! They are also the one place where request text is checked for what the
//! store cannot hold (`text.rs`): every JSON string and key, query parameter
//! and path segment passes through `ApiJson`, `ApiQuery` or `ApiPath` before
//! a handler sees it, so no handler has to remember, and both engines answer
//! alike.

use crate::error::ApiError;
use crate::state::AppState;
use crate::text;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use shared::auth::TokenError;
use shared::{SessionId, UserId};

/// `axum::Json` with our rejection, that also refuses text the store cannot
/// hold (NUL, unpaired surrogates) in any string or key: 422
/// `validation_failed` naming the field (see `text.rs`).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidBody(rejection.body_text())
            }
        })?;
        if let Some((found, escapes)) = text::find_in_json(&bytes) {
            // A body that is not JSON anyway is answered as such; check its
            // syntax with the offending escapes made harmless.
            let mut repaired = bytes.to_vec();
            for at in escapes {
                repaired[at..at + 6].copy_from_slice(b"\\ufffd");
            }
            if let Err(e) = serde_json::from_slice::<IgnoredAny>(&repaired) {
                return Err(ApiError::InvalidJson(e.to_string()));
            }
            return Err(ApiError::unstorable(found.field));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| ApiJson(value))
            .map_err(ApiError::from)
    }
}

/// The same test as `axum::Json`'s: `application/json` or `application/*+json`.
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
}

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
/// names nothing, so it is a 404; but a segment that decodes to NUL or to
/// bytes that are not UTF-8 is refused like any other such text (422
/// `validation_failed` naming the parameter, see `text.rs`).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let parsed = axum::extract::Path::<T>::from_request_parts(parts, state).await;
        if let Err(PathRejection::FailedToDeserializePathParams(e)) = &parsed
            && let ErrorKind::InvalidUtf8InPathParam { key } = e.kind()
        {
            return Err(ApiError::unstorable(Some(key.clone())));
        }
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await
            && let Some((key, _)) = raw.iter().find(|(_, value)| value.contains('\0'))
        {
            return Err(ApiError::unstorable(Some(key.to_owned())));
        }
        parsed
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(ApiError::from)
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound
    }
}

/// `axum::extract::Query` with our rejection, that also refuses parameters
/// that decode to NUL or to bytes that are not UTF-8: 422
/// `validation_failed` naming the parameter (see `text.rs`).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(found) = text::find_in_query(parts.uri.query().unwrap_or_default()) {
            return Err(ApiError::unstorable(found.field));
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(ApiError::from)
    }
}

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
    /// When the access token expires (seconds since the Unix epoch).
    pub token_expires_at: u64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A bearer token, or else a cookie session's cookie (docs/api.md,
        // "Browser sessions").
        let cookie;
        let (token, via_cookie) = match parts.headers.get(AUTHORIZATION) {
            Some(header) => (
                header
                    .to_str()
                    .ok()
                    .and_then(|h| {
                        h.strip_prefix("Bearer ")
                            .or_else(|| h.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .ok_or(ApiError::MissingToken)?,
                false,
            ),
            None => {
                cookie = crate::auth::cookies::cookie_value(
                    &parts.headers,
                    crate::auth::cookies::SESSION_COOKIE,
                )
                .ok_or(ApiError::MissingToken)?;
                (cookie.as_str(), true)
            }
        };
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
        // The browser attaches the cookie to any request to this site: one
        // that changes something must prove the page read the CSRF token.
        if via_cookie && !parts.method.is_safe() {
            let echoed = parts
                .headers
                .get(crate::auth::cookies::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !crate::auth::cookies::csrf_valid(
                &state.tokens.csrf_key,
                identity.session_id,
                echoed,
            ) {
                tracing::warn!(target: "security", user_id = %identity.user_id, session_id = %identity.session_id,
                    method = %parts.method, "cookie-authenticated request without its CSRF token");
                return Err(ApiError::CsrfFailed);
            }
        }
        Ok(AuthUser {
            user_id: identity.user_id,
            session_id: identity.session_id,
            token_expires_at: identity.expires_at,
        })
    }
}
