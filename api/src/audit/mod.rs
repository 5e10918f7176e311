//! The audit log: security events stored with when, who and from where.
//!
//! Every handler that does something a security review asks about records
//! it here, next to its `target: "security"` log line. Recording is best
//! effort: the action already happened (the session exists, the key was
//! revoked), so a failed write does not fail the request; it is logged and
//! counted (`api_audit_failures_total`), and the log line carries the event
//! anyway.
//!
//! Users read their own events (`GET /v1/users/me/security-events`),
//! admins everyone's (`GET /v1/admin/security-events`); rows older than
//! `PARLEY_AUDIT_RETENTION` are deleted by the api's maintenance task.

use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, State};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use shared::UserId;
use shared::model::{now_millis, time_from_millis};
use shared::rest::{
    AdminSecurityEventsQuery, ErrorBody, SecurityEvent, SecurityEventKind, SecurityEventPage,
    SecurityEventsQuery,
};
use std::convert::Infallible;
use std::net::SocketAddr;
use store::NewSecurityEvent;
use tower_governor::key_extractor::{KeyExtractor, SmartIpKeyExtractor};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest User-Agent kept (the rest is cut at a character boundary).
const MAX_USER_AGENT: usize = 256;
/// Longest detail string kept (a failed login's name).
const MAX_DETAIL_TEXT: usize = 64;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

/// Where a request came from: the client's address (the forwarded one when
/// the api trusts proxy headers, as for its per-IP limits) and User-Agent.
#[derive(Clone, Debug, Default)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = if state.trust_proxy_headers {
            // The same rules as the per-IP rate limits (tower_governor's
            // X-Forwarded-For, X-Real-IP, Forwarded), on the headers only.
            let mut probe = axum::http::Request::new(());
            *probe.headers_mut() = parts.headers.clone();
            SmartIpKeyExtractor.extract(&probe).ok()
        } else {
            None
        };
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| truncate(ua, MAX_USER_AGENT).to_owned());
        Ok(ClientMeta {
            ip: forwarded.or(peer).map(|ip| ip.to_string()),
            user_agent,
        })
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut cut = s.len().min(max);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Records a security event (best effort, see the module doc).
pub async fn record(
    state: &AppState,
    kind: SecurityEventKind,
    user_id: Option<UserId>,
    meta: &ClientMeta,
    detail: serde_json::Value,
) {
    let detail = (!detail.is_null()).then(|| detail.to_string());
    let outcome = state
        .store
        .record_security_event(NewSecurityEvent {
            user_id,
            kind: kind.as_str(),
            ip: meta.ip.as_deref(),
            user_agent: meta.user_agent.as_deref(),
            detail: detail.as_deref(),
            created_at: now_millis(),
        })
        .await;
    if let Err(e) = outcome {
        metrics::counter!("api_audit_failures_total").increment(1);
        tracing::warn!(error = %e, kind = kind.as_str(), "recording a security event failed");
    }
}

/// A name a client sent, bounded for the log (a failed login's).
pub fn detail_text(s: &str) -> &str {
    truncate(s, MAX_DETAIL_TEXT)
}

pub fn user_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(own_events))
}

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(all_events))
}

/// The caller's own security events (logins, failed logins, sessions
/// ended, ...), newest first.
#[utoipa::path(get, path = "/users/me/security-events", tag = "users", security(("bearer" = [])),
    params(SecurityEventsQuery),
    responses((status = 200, description = "A page of the caller's security events, newest first", body = SecurityEventPage),
        (status = 422, description = "`validation_failed`: `limit` or `before_id` out of range", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn own_events(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<SecurityEventsQuery>,
) -> ApiResult<Json<SecurityEventPage>> {
    page(&state, Some(caller.user_id), query.before_id, query.limit).await
}

/// Every account's security events (or one account's), newest first.
#[utoipa::path(get, path = "/admin/security-events", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(AdminSecurityEventsQuery),
    responses((status = 200, description = "A page of security events, newest first", body = SecurityEventPage),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit`, `before_id` or `user_id` out of range", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn all_events(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AdminSecurityEventsQuery>,
) -> ApiResult<Json<SecurityEventPage>> {
    let user = match query.user_id {
        Some(id) if id < 1 => {
            return Err(ApiError::validation(
                "user_id",
                "user_id must be at least 1",
            ));
        }
        other => other.map(UserId),
    };
    page(&state, user, query.before_id, query.limit).await
}

async fn page(
    state: &AppState,
    user: Option<UserId>,
    before_id: Option<i64>,
    limit: Option<u32>,
) -> ApiResult<Json<SecurityEventPage>> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 100"));
    }
    if before_id.is_some_and(|id| id < 1) {
        return Err(ApiError::validation(
            "before_id",
            "before_id must be at least 1",
        ));
    }
    let rows = state
        .store
        .security_events(user, before_id, i64::from(limit))
        .await?;
    let next_before_id = match rows.last() {
        Some(oldest) if rows.len() == limit as usize => Some(oldest.id),
        _ => None,
    };
    let events = rows
        .into_iter()
        .map(|r| SecurityEvent {
            id: r.id,
            user_id: r.user_id,
            kind: r.kind,
            created_at: time_from_millis(r.created_at),
            ip: r.ip,
            user_agent: r.user_agent,
            detail: r
                .detail
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_else(|| serde_json::json!({})),
        })
        .collect();
    Ok(Json(SecurityEventPage {
        events,
        next_before_id,
    }))
}
