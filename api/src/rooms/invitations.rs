//! Invitations to group rooms: owners and admins invite, the invited user
//! accepts (becoming a member) or declines, owners and admins may revoke.
//! In a room whose join policy is `invite` this is the only way in; in an
//! `add` room it is the polite alternative to adding directly. Each step is
//! a timeline event of the room; the invited user, not yet a member, hears
//! of it on their own channel (`room_invited`, `invitation_ended`).

use super::{may_grant, membership_of};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::model::{Role, Room, RoomKind, now_millis};
use shared::protocol::UserNotice;
use shared::rest::{ErrorBody, InvitationList, InviteRequest};
use shared::{RoomId, UserId};
use store::InvitationError;

fn refused(e: InvitationError) -> ApiError {
    match e {
        InvitationError::RoomNotFound => ApiError::RoomNotFound,
        InvitationError::UserNotFound => ApiError::UserNotFound,
        InvitationError::AlreadyMember => ApiError::AlreadyMember,
        InvitationError::AlreadyInvited => ApiError::AlreadyInvited,
        InvitationError::NotInvited => ApiError::InvitationNotFound,
        InvitationError::Store(e) => e.into(),
    }
}

/// Invites a user to a group room (owners and admins; only the owner
/// invites admins). Appends `member.invited`; the user gets `room_invited`
/// on their connections and finds it in `GET /v1/invitations`.
#[utoipa::path(post, path = "/rooms/{room_id}/invitations", tag = "invitations", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = InviteRequest,
    responses(
        (status = 201, description = "Invited: the pending invitation", body = shared::model::Invitation),
        (status = 403, description = "`forbidden`: the caller's role may not invite (with this role); `email_unverified`", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `user_not_found`", body = ErrorBody),
        (status = 409, description = "`already_member`, `already_invited` or `direct_room`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: role `owner`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, invited = %req.user_id))]
pub(super) async fn invite(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<InviteRequest>,
) -> ApiResult<(StatusCode, Json<shared::model::Invitation>)> {
    let me = membership_of(&state, room_id, caller.user_id).await?;
    if me.kind == RoomKind::Direct {
        return Err(ApiError::DirectRoom);
    }
    let role = req.role.unwrap_or(Role::Member);
    may_grant(&caller, room_id, me.role, role)?;
    crate::accounts::require_verified(&state, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let event = state
        .store
        .invite(room_id, caller.user_id, req.user_id, role, now_millis())
        .await
        .map_err(refused)?;
    state.events.room_event(&event).await;
    let invitation = pending(&state, room_id, req.user_id).await?;
    state
        .events
        .user_notice(
            req.user_id,
            &UserNotice::RoomInvited {
                invitation: invitation.clone(),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(invitation)))
}

/// `user`'s pending invitation to `room`, as just written.
async fn pending(
    state: &AppState,
    room: RoomId,
    user: UserId,
) -> ApiResult<shared::model::Invitation> {
    state
        .store
        .invitations_of(user)
        .await?
        .into_iter()
        .find(|i| i.room_id == room)
        .ok_or(ApiError::InvitationNotFound)
}

/// The pending invitations of a room (members only).
#[utoipa::path(get, path = "/rooms/{room_id}/invitations", tag = "invitations", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses(
        (status = 200, description = "Pending invitations, oldest first", body = InvitationList),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
pub(super) async fn room_invitations(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<InvitationList>> {
    membership_of(&state, room_id, caller.user_id).await?;
    Ok(Json(InvitationList {
        invitations: state.store.room_invitations(room_id).await?,
    }))
}

/// Withdraws a pending invitation (owners and admins; an admin only
/// invitations to plain membership). Appends `invitation.revoked`; the
/// user gets `invitation_ended`.
#[utoipa::path(delete, path = "/rooms/{room_id}/invitations/{user_id}", tag = "invitations", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("user_id" = i64, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `invitation_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, invited = %user))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, user)): ApiPath<(RoomId, UserId)>,
) -> ApiResult<StatusCode> {
    let me = membership_of(&state, room_id, caller.user_id).await?;
    let invitation = state
        .store
        .room_invitations(room_id)
        .await?
        .into_iter()
        .find(|i| i.user_id == user)
        .ok_or(ApiError::InvitationNotFound)?;
    may_grant(&caller, room_id, me.role, invitation.role)?;
    state.limits.check_message(caller.user_id)?;
    let event = state
        .store
        .end_pending_invitation(room_id, caller.user_id, user, now_millis())
        .await
        .map_err(refused)?;
    state.events.room_event(&event).await;
    state
        .events
        .user_notice(user, &UserNotice::InvitationEnded { room_id })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's pending invitations, newest first.
#[utoipa::path(get, path = "/invitations", tag = "invitations", security(("bearer" = [])),
    responses((status = 200, description = "Pending invitations", body = InvitationList)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn my_invitations(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<InvitationList>> {
    Ok(Json(InvitationList {
        invitations: state.store.invitations_of(caller.user_id).await?,
    }))
}

/// Accepts the caller's invitation: they become a member with the invited
/// role (`member.added`, sent by them) and their connections get
/// `room_added`. Answers the room.
#[utoipa::path(post, path = "/invitations/{room_id}/accept", tag = "invitations", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses(
        (status = 200, description = "A member now: the room", body = Room),
        (status = 404, description = "`invitation_not_found` (none pending, or the room is gone)", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
pub(super) async fn accept(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<Room>> {
    state.limits.check_message(caller.user_id)?;
    let event = state
        .store
        .accept_invitation(room_id, caller.user_id, now_millis())
        .await
        .map_err(refused)?;
    state.events.room_event(&event).await;
    if let shared::model::EventKind::MemberAdded { role, .. } = event.kind {
        state
            .events
            .user_notice(caller.user_id, &UserNotice::RoomAdded { room_id, role })
            .await;
    }
    let room = state
        .store
        .room_for(room_id, caller.user_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    Ok(Json(room))
}

/// Declines the caller's invitation (`invitation.declined`).
#[utoipa::path(post, path = "/invitations/{room_id}/decline", tag = "invitations", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses(
        (status = 204, description = "Declined"),
        (status = 404, description = "`invitation_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
pub(super) async fn decline(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<StatusCode> {
    state.limits.check_message(caller.user_id)?;
    let event = state
        .store
        .end_pending_invitation(room_id, caller.user_id, caller.user_id, now_millis())
        .await
        .map_err(refused)?;
    state.events.room_event(&event).await;
    Ok(StatusCode::NO_CONTENT)
}
