//! Managing a group room: its profile, its owner, deleting it. Each change
//! is a timeline event delivered to members like a message; the store
//! checks the caller's role again inside the change's transaction, so two
//! concurrent changes cannot both pass a check the first one invalidates
//! (two owners after two transfers).

use super::{deny, membership_of};
use crate::domain::{RoomName, RoomTopic};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::RoomId;
use shared::model::{Room, now_millis};
use shared::protocol::UserNotice;
use shared::rest::{ErrorBody, TransferOwnershipRequest, UpdateRoomRequest};
use store::{ProfileChange, RoomChangeError};

/// The answer a store refusal gets.
fn refused(e: RoomChangeError, caller: &AuthUser, room_id: RoomId, why: &'static str) -> ApiError {
    match e {
        RoomChangeError::RoomNotFound => ApiError::RoomNotFound,
        RoomChangeError::DirectRoom => ApiError::DirectRoom,
        RoomChangeError::NotAllowed => deny(caller, room_id, why),
        RoomChangeError::MemberNotFound => ApiError::MemberNotFound,
        RoomChangeError::InvalidAvatar => ApiError::InvalidAttachment(
            "avatar_attachment_id must be a PNG, JPEG, WebP or GIF of at most 5 MiB that you uploaded into this room and did not post"
                .into(),
        ),
        RoomChangeError::Store(e) => e.into(),
    }
}

/// Changes a group room's name, topic or join policy (owners and admins).
/// A change appends `room.updated` with the whole new profile; a request
/// that changes nothing appends nothing. Answers the room.
#[utoipa::path(patch, path = "/rooms/{room_id}", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = UpdateRoomRequest,
    responses(
        (status = 200, description = "The room as it is now", body = Room),
        (status = 403, description = "`forbidden`: only owners and admins change a room; `email_unverified`", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
        (status = 409, description = "`direct_room`: a direct room has no profile", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`field` names it), or `invalid_attachment` (the avatar)", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
pub(super) async fn update_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<UpdateRoomRequest>,
) -> ApiResult<Json<Room>> {
    let change = ProfileChange {
        name: req
            .name
            .as_deref()
            .map(RoomName::parse)
            .transpose()?
            .map(|n| n.as_str().to_owned()),
        topic: req
            .topic
            .as_deref()
            .map(RoomTopic::parse)
            .transpose()?
            .map(RoomTopic::into_inner),
        join_policy: req.join_policy,
        avatar_attachment_id: req
            .avatar_attachment_id
            .map(|id| Some(id).filter(|id| !id.is_empty())),
    };
    membership_of(&state, room_id, caller.user_id).await?;
    crate::accounts::require_verified(&state, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let updated = state
        .store
        .update_room(room_id, caller.user_id, change, now_millis())
        .await
        .map_err(|e| refused(e, &caller, room_id, "only owners and admins change a room"))?;
    if let Some(event) = updated {
        state.events.room_event(&event).await;
    }
    let room = state
        .store
        .room_for(room_id, caller.user_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    Ok(Json(room))
}

/// Hands a group room to another member (its owner only): they become the
/// owner, the caller an admin, and `room.owner_changed` is appended. The
/// owner leaves a room this way first.
#[utoipa::path(post, path = "/rooms/{room_id}/owner", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = TransferOwnershipRequest,
    responses(
        (status = 200, description = "Transferred: the room as the caller (now an admin) sees it", body = Room),
        (status = 403, description = "`forbidden`: only the owner hands the room on", body = ErrorBody),
        (status = 404, description = "`room_not_found`, or `member_not_found` (the new owner must be a member)", body = ErrorBody),
        (status = 409, description = "`direct_room`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the caller is the owner already", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, to = %req.user_id))]
pub(super) async fn transfer_ownership(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<TransferOwnershipRequest>,
) -> ApiResult<Json<Room>> {
    membership_of(&state, room_id, caller.user_id).await?;
    if req.user_id == caller.user_id {
        return Err(ApiError::validation(
            "user_id",
            "name another member: the caller would stay the owner",
        ));
    }
    state.limits.check_message(caller.user_id)?;
    let event = state
        .store
        .transfer_ownership(room_id, caller.user_id, req.user_id, now_millis())
        .await
        .map_err(|e| refused(e, &caller, room_id, "only the owner hands the room on"))?;
    tracing::info!(target: "security", user_id = %caller.user_id, %room_id, to = %req.user_id, "room ownership transferred");
    state.events.room_event(&event).await;
    let room = state
        .store
        .room_for(room_id, caller.user_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    Ok(Json(room))
}

/// Deletes a group room (its owner only), with its whole timeline, its
/// members, pending invitations and attachments (the files are purged in
/// the background, then the timeline). Members' connections get the
/// `room.deleted` event, then leave the room (`left`, reason
/// `room_deleted`); every member's connections get `room_removed` and
/// every invited user's `invitation_ended`.
#[utoipa::path(delete, path = "/rooms/{room_id}", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: only the owner deletes a room", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
        (status = 409, description = "`direct_room`: a direct room is not deleted", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
pub(super) async fn delete_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<StatusCode> {
    membership_of(&state, room_id, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let deleted = state
        .store
        .delete_room(room_id, caller.user_id, now_millis())
        .await
        .map_err(|e| refused(e, &caller, room_id, "only the owner deletes a room"))?;
    tracing::info!(target: "security", user_id = %caller.user_id, %room_id, members = deleted.members.len(), "room deleted");
    announce_deleted_room(&state, room_id, deleted).await;
    Ok(StatusCode::NO_CONTENT)
}

/// After a room's deletion: purges its files now (rather than at the next
/// minutely sweep, which retries whatever fails here), and tells its live
/// members (`room.deleted`), every member's connections (`room_removed`)
/// and every invited user's (`invitation_ended`).
pub(crate) async fn announce_deleted_room(
    state: &AppState,
    room_id: RoomId,
    deleted: store::DeletedRoom,
) {
    let sweeper = state.clone();
    tokio::spawn(async move { crate::attachments::sweep(&sweeper).await });
    state.events.room_event(&deleted.event).await;
    for member in deleted.members {
        state
            .events
            .user_notice(member, &UserNotice::RoomRemoved { room_id })
            .await;
    }
    for invited in deleted.invited {
        state
            .events
            .user_notice(invited, &UserNotice::InvitationEnded { room_id })
            .await;
    }
}
