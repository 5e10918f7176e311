//! Posting messages and reading a room's history.

use crate::domain::{ClientMsgId, MessageBody};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser};
use crate::rooms::membership_of;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::RoomId;
use shared::model::{EventKind, RoomEvent, now_millis};
use shared::rest::{ErrorBody, HistoryPage, HistoryQuery, PostMessageRequest};
use store::{NewMessage, PostOutcome};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_message, history))
}

/// History page size when the client does not say.
const DEFAULT_PAGE: u32 = 50;

/// Posts a message (members only). It gets the room's next `seq` and is
/// delivered live to every member connected to any gateway. A retry with
/// the same `client_msg_id` returns the original with 200 instead of 201.
#[utoipa::path(post, path = "/rooms/{room_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = PostMessageRequest,
    responses(
        (status = 201, description = "Posted", body = RoomEvent),
        (status = 200, description = "Already posted with this client_msg_id: the original", body = RoomEvent),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the client_msg_id was used for another body", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `field`) or `invalid_body`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's message allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn post_message(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<PostMessageRequest>,
) -> ApiResult<(StatusCode, Json<RoomEvent>)> {
    state.limits.check_message(caller.user_id)?;
    let body = MessageBody::parse(req.body)?;
    let client_msg_id = req.client_msg_id.map(ClientMsgId::parse).transpose()?;
    let outcome = state
        .appender
        .post(NewMessage {
            room_id,
            sender_id: caller.user_id,
            body: body.as_str(),
            client_msg_id: client_msg_id.as_ref().map(ClientMsgId::as_str),
            created_at: now_millis(),
        })
        .await?;
    match outcome {
        PostOutcome::Created(event) => {
            metrics::counter!("api_messages_posted_total").increment(1);
            state.events.room_event(&event).await;
            Ok((StatusCode::CREATED, Json(event)))
        }
        PostOutcome::Existing(event) => match &event.kind {
            EventKind::MessageCreated { body: original, .. } if original == body.as_str() => {
                Ok((StatusCode::OK, Json(event)))
            }
            _ => Err(ApiError::IdempotencyConflict),
        },
        PostOutcome::NotFound => Err(ApiError::RoomNotFound),
    }
}

/// A page of the room's timeline (messages and membership changes), newest
/// first (members only).
#[utoipa::path(get, path = "/rooms/{room_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), HistoryQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = HistoryPage),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: limit or before_seq out of range, or text the store cannot hold (`field` names it)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=store::MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 100"));
    }
    if query.before_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::validation(
            "before_seq",
            "before_seq must be at least 1",
        ));
    }
    membership_of(&state, room_id, caller.user_id).await?;
    let events = state
        .store
        .history(room_id, query.before_seq, limit)
        .await?;
    let next_before_seq = match events.last() {
        Some(oldest) if events.len() == limit as usize && oldest.seq > 1 => Some(oldest.seq),
        _ => None,
    };
    Ok(Json(HistoryPage {
        events,
        next_before_seq,
    }))
}
