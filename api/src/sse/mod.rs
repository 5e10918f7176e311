//! Tickets for Server-Sent Events streams (`GET /sse` on the gateways).
//!
//! A browser's `EventSource` cannot send an `Authorization` header, and an
//! access token put in the stream's URL would sit in proxy and access logs
//! for as long as it is valid. So the page asks for a ticket here, with
//! its token, and puts the ticket in the URL: a random value that opens
//! one stream, within seconds, and is worthless afterwards. The gateway
//! takes it from the store (deleting it) and checks the session as it does
//! for a WebSocket `auth`.

use crate::error::ApiResult;
use crate::extract::AuthUser;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::auth::sse_ticket;
use shared::model::{now_millis, time_from_millis};
use shared::rest::{ErrorBody, SseTicket};
use std::time::Duration;
use store::NewTicket;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long a ticket stays good: long enough for a page to open its
/// stream on a slow network, short enough that a leaked URL is stale.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_ticket))
}

/// Issues a single-use ticket that opens one Server-Sent Events stream
/// (`GET /sse?ticket=...` on a gateway) as the caller's session.
#[utoipa::path(post, path = "/sse/tickets", tag = "sse", security(("bearer" = [])),
    responses(
        (status = 201, description = "A ticket, good once within 30 seconds", body = SseTicket),
        (status = 401, description = "`missing_token`, `invalid_token`, `token_expired` or `session_revoked`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: more than 60 tickets a minute (burst 10)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn create_ticket(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<(StatusCode, Json<SseTicket>)> {
    state.limits.check_ticket(caller.user_id)?;
    let (ticket, hash) = sse_ticket::generate();
    let now = now_millis();
    let ttl = i64::try_from(TICKET_TTL.as_millis()).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl);
    state
        .store
        .create_sse_ticket(NewTicket {
            ticket_hash: &hash,
            user_id: caller.user_id,
            session_id: caller.session_id,
            token_expires_at: i64::try_from(caller.token_expires_at)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            expires_at,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SseTicket {
            ticket,
            expires_at: time_from_millis(expires_at),
        }),
    ))
}
