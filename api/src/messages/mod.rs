//! Posting messages and reading a room's history; editing, deleting and
//! reacting to them.
//!
//! Every change is a timeline event of its own (see `store::MessageChange`),
//! published like a post. The message is always looked up inside the room
//! of the path, and the caller's membership of that room is checked first:
//! a non-member gets the same 404 as for a room that does not exist.

use crate::domain::{ClientMsgId, Emoji, MessageBody, attachment_ids, mentioned_usernames};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser};
use crate::rooms::membership_of;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::model::{EventKind, RoomEvent, now_millis};
use shared::rest::{EditMessageRequest, ErrorBody, HistoryPage, HistoryQuery, PostMessageRequest};
use shared::{RoomId, UserId};
use store::{AttachedPostOutcome, ChangeOutcome, MessageChange, NewMessage, PostOutcome};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_message, history))
        .routes(routes!(edit_message, delete_message))
        .routes(routes!(add_reaction, remove_reaction))
}

/// History page size when the client does not say.
const DEFAULT_PAGE: u32 = 50;

/// Posts a message (members only). It gets the room's next `seq` and is
/// delivered live to every member connected to any gateway. A retry with
/// the same `client_msg_id` returns the original with 200 instead of 201.
/// `@username`s of members in the body are recorded as mentions. With
/// `attachment_ids` it carries the caller's uploads into this room (the
/// body may then be empty); images among them get an
/// `attachment.thumbnail_ready` event when their thumbnail is made.
#[utoipa::path(post, path = "/rooms/{room_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = PostMessageRequest,
    responses(
        (status = 201, description = "Posted", body = RoomEvent),
        (status = 200, description = "Already posted with this client_msg_id: the original", body = RoomEvent),
        (status = 403, description = "`email_unverified`: the caller's address is not verified and the server lets only verified accounts post", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the client_msg_id was used for another body", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `field`), `invalid_body`, `invalid_reply_to`: `reply_to_seq` is not an earlier message of this room, or `invalid_attachment`: an id of `attachment_ids` is not the caller's complete, unposted upload into this room", body = ErrorBody),
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
    crate::accounts::require_verified(&state, caller.user_id).await?;
    let attachment_ids = attachment_ids(req.attachment_ids)?;
    let body = if attachment_ids.is_empty() {
        MessageBody::parse(req.body)?
    } else {
        MessageBody::parse_caption(req.body)?
    };
    let client_msg_id = req.client_msg_id.map(ClientMsgId::parse).transpose()?;
    if let Some(reply_to) = req.reply_to_seq {
        // Membership first, so a stranger learns nothing about the room's seqs.
        membership_of(&state, room_id, caller.user_id).await?;
        if reply_to < 1 || !state.store.is_message(room_id, reply_to).await? {
            return Err(ApiError::InvalidReplyTarget);
        }
    }
    let message = NewMessage {
        room_id,
        sender_id: caller.user_id,
        body: body.as_str(),
        client_msg_id: client_msg_id.as_ref().map(ClientMsgId::as_str),
        reply_to_seq: req.reply_to_seq,
        created_at: now_millis(),
    };
    let outcome = if attachment_ids.is_empty() {
        state.appender.post(message).await?
    } else {
        match state
            .store
            .post_message_with_attachments(message, &attachment_ids)
            .await?
        {
            AttachedPostOutcome::Created(event) => PostOutcome::Created(event),
            AttachedPostOutcome::Existing(event) => PostOutcome::Existing(event),
            AttachedPostOutcome::NotFound => PostOutcome::NotFound,
            AttachedPostOutcome::InvalidAttachment(id) => {
                return Err(ApiError::InvalidAttachment(id));
            }
        }
    };
    match outcome {
        PostOutcome::Created(event) => {
            metrics::counter!("api_messages_posted_total").increment(1);
            if let EventKind::MessageCreated { attachments, .. } = &event.kind {
                crate::attachments::posted(&state, attachments);
            }
            let mentions = mentioned_usernames(body.as_str());
            // After the post's own commit (posts are group-committed): a
            // failure here loses the mention marks, never the message, so
            // it is logged rather than failing a post that is stored.
            if let Err(e) = state
                .store
                .record_mentions(room_id, event.seq, caller.user_id, &mentions)
                .await
            {
                tracing::warn!(error = %e, seq = event.seq, "mentions of a post not recorded");
            }
            state.events.room_event(&event).await;
            Ok((StatusCode::CREATED, Json(event)))
        }
        PostOutcome::Existing(event) => match &event.kind {
            EventKind::MessageCreated {
                body: original,
                reply_to_seq,
                attachments,
                ..
            } if original == body.as_str()
                && *reply_to_seq == req.reply_to_seq
                && attachments.iter().map(|a| &a.id).eq(attachment_ids.iter()) =>
            {
                Ok((StatusCode::OK, Json(event)))
            }
            _ => Err(ApiError::IdempotencyConflict),
        },
        PostOutcome::NotFound => Err(ApiError::RoomNotFound),
    }
}

/// A page of the room's timeline (messages, their changes and membership
/// changes), newest first (members only): from the newest (default), older
/// than `before_seq`, newer than `after_seq`, or around `around_seq`. Each
/// message shows its current body, `edited_at`, `reply_to_seq`, and its
/// reactions with whether the caller is among them; a deleted message is a
/// tombstone (`deleted_at`, empty body).
#[utoipa::path(get, path = "/rooms/{room_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), HistoryQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = HistoryPage),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: limit, before_seq, after_seq or around_seq out of range, more than one of them, or text the store cannot hold (`field` names it)", body = ErrorBody),
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
    let anchors = [
        query.before_seq.is_some(),
        query.after_seq.is_some(),
        query.around_seq.is_some(),
    ];
    if anchors.iter().filter(|given| **given).count() > 1 {
        return Err(ApiError::validation(
            "before_seq",
            "give at most one of before_seq, after_seq and around_seq",
        ));
    }
    if query.before_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::validation(
            "before_seq",
            "before_seq must be at least 1",
        ));
    }
    if query.after_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::validation(
            "after_seq",
            "after_seq must be at least 0",
        ));
    }
    if query.around_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::validation(
            "around_seq",
            "around_seq must be at least 1",
        ));
    }
    let membership = membership_of(&state, room_id, caller.user_id).await?;
    let mut events = match (query.after_seq, query.around_seq) {
        (Some(after), _) => state.store.history_after(room_id, after, limit).await?,
        (_, Some(around)) => {
            // The anchor and what precedes it get the larger half.
            let older = limit.div_ceil(2);
            let mut page = match limit - older {
                0 => Vec::new(),
                newer => state.store.history_after(room_id, around, newer).await?,
            };
            page.extend(
                state
                    .store
                    .history(room_id, Some(around.saturating_add(1)), older)
                    .await?,
            );
            page
        }
        _ => {
            state
                .store
                .history(room_id, query.before_seq, limit)
                .await?
        }
    };
    with_reactions(&state, room_id, caller.user_id, &mut events).await?;
    let next_before_seq = events.last().map(|e| e.seq).filter(|&oldest| oldest > 1);
    let next_after_seq = events
        .first()
        .map(|e| e.seq)
        .filter(|&newest| newest < membership.last_seq);
    Ok(Json(HistoryPage {
        events,
        next_before_seq,
        next_after_seq,
    }))
}

/// Fills in the reactions of the messages among `events` as `caller` sees them.
async fn with_reactions(
    state: &AppState,
    room_id: RoomId,
    caller: UserId,
    events: &mut [RoomEvent],
) -> ApiResult<()> {
    let seqs = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::MessageCreated { .. }))
        .map(|e| e.seq);
    let (Some(from), Some(to)) = (seqs.clone().min(), seqs.max()) else {
        return Ok(());
    };
    let mut by_seq = state.store.reactions(room_id, from, to, caller).await?;
    for event in events {
        if let EventKind::MessageCreated { reactions, .. } = &mut event.kind
            && let Some(counted) = by_seq.remove(&event.seq)
        {
            *reactions = counted;
        }
    }
    Ok(())
}

/// The event of a change, or the error its outcome means.
fn changed(outcome: ChangeOutcome, not_allowed: ApiError) -> ApiResult<Option<RoomEvent>> {
    match outcome {
        ChangeOutcome::Changed(event) => Ok(Some(event)),
        ChangeOutcome::Unchanged => Ok(None),
        ChangeOutcome::RoomNotFound => Err(ApiError::RoomNotFound),
        ChangeOutcome::MessageNotFound => Err(ApiError::MessageNotFound),
        ChangeOutcome::NotAllowed => Err(not_allowed),
        ChangeOutcome::TooManyReactions => Err(ApiError::TooManyReactions {
            max: store::MAX_DISTINCT_REACTIONS,
        }),
    }
}

/// Edits a message (its author only). The message keeps its seq; a
/// `message.edited` event (with its own new seq) carries `target_seq`, the
/// new `body` and `edited_at`. Mentions are recorded anew from the new body.
#[utoipa::path(patch, path = "/rooms/{room_id}/messages/{seq}", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("seq" = i64, Path, description = "The message's seq")),
    request_body = EditMessageRequest,
    responses(
        (status = 200, description = "Edited: the `message.edited` event", body = RoomEvent),
        (status = 403, description = "`not_author`: only the author may edit", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members) or `message_not_found` (no message at this seq of this room, or it was deleted)", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `field`) or `invalid_body`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's message allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, seq))]
async fn edit_message(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, seq)): ApiPath<(RoomId, i64)>,
    ApiJson(req): ApiJson<EditMessageRequest>,
) -> ApiResult<Json<RoomEvent>> {
    state.limits.check_message(caller.user_id)?;
    crate::accounts::require_verified(&state, caller.user_id).await?;
    let body = MessageBody::parse(req.body)?;
    let mentions = mentioned_usernames(body.as_str());
    let outcome = state
        .store
        .change_message(
            room_id,
            caller.user_id,
            seq,
            MessageChange::Edit {
                body: body.as_str(),
                mentions: &mentions,
            },
            now_millis(),
        )
        .await?;
    let event = changed(outcome, ApiError::NotAuthor)?.ok_or(ApiError::MessageNotFound)?;
    state.events.room_event(&event).await;
    Ok(Json(event))
}

/// Deletes a message (its author, or a room owner or admin). Its seq stays
/// in history as a tombstone (`message.created` with `deleted_at` and an
/// empty body); its body, earlier edits, reactions, mentions and
/// attachments are gone from every read of the store (the attachments'
/// files and thumbnails are removed from the attachment store). A `message.deleted` event (`target_seq`)
/// tells clients to drop it. Deleting it again is 404 `message_not_found`.
#[utoipa::path(delete, path = "/rooms/{room_id}/messages/{seq}", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("seq" = i64, Path, description = "The message's seq")),
    responses(
        (status = 200, description = "Deleted: the `message.deleted` event", body = RoomEvent),
        (status = 403, description = "`delete_not_allowed`: not the author, nor an owner or admin of the room", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members) or `message_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, seq))]
async fn delete_message(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, seq)): ApiPath<(RoomId, i64)>,
) -> ApiResult<Json<RoomEvent>> {
    state.limits.check_message(caller.user_id)?;
    let outcome = state
        .store
        .change_message(
            room_id,
            caller.user_id,
            seq,
            MessageChange::Delete,
            now_millis(),
        )
        .await?;
    let event = changed(outcome, ApiError::DeleteNotAllowed)?.ok_or(ApiError::MessageNotFound)?;
    state.events.room_event(&event).await;
    // The delete made its files unreadable; now their bytes go.
    crate::attachments::message_deleted(&state, room_id, seq).await;
    Ok(Json(event))
}

/// Reacts to a message with an emoji (members only; percent-encoded in the
/// path). One reaction per (user, message, emoji): a repeat changes nothing
/// (200, no event); a new one is 201 with its `reaction.added` event.
#[utoipa::path(put, path = "/rooms/{room_id}/messages/{seq}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("seq" = i64, Path, description = "The message's seq"),
        ("emoji" = String, Path, min_length = 1, max_length = 32, description = "1 to 32 bytes without whitespace or control characters, percent-encoded")),
    responses(
        (status = 201, description = "Added: the `reaction.added` event", body = RoomEvent),
        (status = 200, description = "The caller had already reacted so: nothing changed"),
        (status = 403, description = "`email_unverified`: the caller's address is not verified and the server lets only verified accounts react", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members) or `message_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`emoji`) or `too_many_reactions`: the message has 20 other emoji", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, seq))]
async fn add_reaction(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, seq, emoji)): ApiPath<(RoomId, i64, String)>,
) -> ApiResult<Response> {
    state.limits.check_message(caller.user_id)?;
    crate::accounts::require_verified(&state, caller.user_id).await?;
    let emoji = Emoji::parse(emoji)?;
    let outcome = state
        .store
        .change_message(
            room_id,
            caller.user_id,
            seq,
            MessageChange::React {
                emoji: emoji.as_str(),
            },
            now_millis(),
        )
        .await?;
    match changed(outcome, ApiError::MessageNotFound)? {
        Some(event) => {
            state.events.room_event(&event).await;
            Ok((StatusCode::CREATED, Json(event)).into_response())
        }
        None => Ok(StatusCode::OK.into_response()),
    }
}

/// Takes back the caller's reaction. 200 with the `reaction.removed` event,
/// or 204 when the caller had no such reaction (nothing changed, no event).
#[utoipa::path(delete, path = "/rooms/{room_id}/messages/{seq}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("seq" = i64, Path, description = "The message's seq"),
        ("emoji" = String, Path, min_length = 1, max_length = 32, description = "1 to 32 bytes without whitespace or control characters, percent-encoded")),
    responses(
        (status = 200, description = "Removed: the `reaction.removed` event", body = RoomEvent),
        (status = 204, description = "The caller had no such reaction: nothing changed"),
        (status = 404, description = "`room_not_found` (also for non-members) or `message_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`emoji`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, seq))]
async fn remove_reaction(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, seq, emoji)): ApiPath<(RoomId, i64, String)>,
) -> ApiResult<Response> {
    state.limits.check_message(caller.user_id)?;
    let emoji = Emoji::parse(emoji)?;
    let outcome = state
        .store
        .change_message(
            room_id,
            caller.user_id,
            seq,
            MessageChange::Unreact {
                emoji: emoji.as_str(),
            },
            now_millis(),
        )
        .await?;
    match changed(outcome, ApiError::MessageNotFound)? {
        Some(event) => {
            state.events.room_event(&event).await;
            Ok(Json(event).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
