//! An owner deleting their account.
//!
//! One transaction removes what identifies the person (name, address,
//! password, profile, second factor, sessions, pending mail, invitations,
//! their audit trail; the avatar's file goes right after) and holds the username for `PARLEY_USERNAME_HOLD`; the row
//! stays, renamed `deleted_<id>`, so the messages they wrote keep their
//! `sender_id` and read as from a deleted user. Then the account leaves
//! every room, one numbered event per room, so members see it go: a group
//! it owned passes to its longest-serving admin (else member), or is
//! deleted when nobody else is in it. Should the node stop half way, the
//! maintenance task finishes the leaving ([`finish_deletions`]).

use crate::audit::{self, ClientMeta};
use crate::auth::{confirm_identity, end_session};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use shared::UserId;
use shared::model::{Role, RoomKind, now_millis};
use shared::protocol::UserNotice;
use shared::rest::{DeleteAccountRequest, ErrorBody, SecurityEventKind};

/// Deleted accounts whose room leaving one maintenance pass finishes.
const FINISH_PER_PASS: i64 = 100;

/// Deletes the caller's account for good (password, and a second-factor
/// code when two-factor login is on). Every session ends and its sockets
/// close; personal data is erased; messages stay, from a deleted user; the
/// username is not given to anyone else for `PARLEY_USERNAME_HOLD`.
#[utoipa::path(delete, path = "/users/me", tag = "users", security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 422, description = "`invalid_two_factor_code`: two-factor login is on and `code` is missing or wrong", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the account's password budget is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn delete_account(
    State(state): State<AppState>,
    caller: AuthUser,
    meta: ClientMeta,
    ApiJson(req): ApiJson<DeleteAccountRequest>,
) -> ApiResult<StatusCode> {
    let user_id = caller.user_id;
    confirm_identity(
        &state,
        &meta,
        user_id,
        req.password,
        req.code.as_deref(),
        "delete_account",
    )
    .await?;
    let now = now_millis();
    let hold = i64::try_from(state.username_hold.as_millis()).unwrap_or(i64::MAX);
    let deleted = state
        .store
        .delete_account(user_id, now, now.saturating_add(hold))
        .await?
        .ok_or(ApiError::UserNotFound)?;
    for session_id in &deleted.revoked_sessions {
        end_session(&state, user_id, *session_id).await;
    }
    state.verified.unverified(user_id);
    if let Some(avatar_id) = &deleted.avatar_id {
        crate::profiles::delete_avatar_object(&state, user_id, avatar_id).await;
    }
    tracing::warn!(target: "security", %user_id, sessions = deleted.revoked_sessions.len(), "account deleted by its owner");
    let rooms_left = leave_every_room(&state, user_id).await;
    // Its earlier events went with the personal data; this one keeps only
    // that the account was deleted, and when.
    audit::record(
        &state,
        SecurityEventKind::AccountDeleted,
        Some(user_id),
        &ClientMeta {
            ip: None,
            user_agent: None,
        },
        json!({"rooms_left": rooms_left}),
    )
    .await;
    metrics::counter!("api_accounts_deleted_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a deleted account out of every room it is still in; how many it
/// left. A room that fails is left to the next maintenance pass.
async fn leave_every_room(state: &AppState, user: UserId) -> usize {
    let memberships = match state.store.memberships_of(user).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%user, error = %e, "listing a deleted account's rooms failed");
            return 0;
        }
    };
    let mut left = 0;
    for membership in memberships {
        match leave(state, user, membership).await {
            Ok(()) => left += 1,
            Err(e) => {
                tracing::warn!(%user, room_id = %membership.room, error = %e, "a deleted account could not leave a room yet")
            }
        }
    }
    left
}

async fn leave(state: &AppState, user: UserId, membership: store::MembershipOf) -> ApiResult<()> {
    let room_id = membership.room;
    let now = now_millis();
    if membership.kind == RoomKind::Group && membership.role == Role::Owner {
        match state.store.successor(room_id, user).await? {
            Some(heir) => {
                let event = state
                    .store
                    .transfer_ownership(room_id, user, heir, now)
                    .await
                    .map_err(room_change_error)?;
                state.events.room_event(&event).await;
            }
            None => {
                let deleted = state
                    .store
                    .delete_room(room_id, user, now)
                    .await
                    .map_err(room_change_error)?;
                crate::rooms::announce_deleted_room(state, room_id, deleted).await;
                return Ok(());
            }
        }
    }
    match state.store.remove_member(room_id, user, user, now).await {
        Ok(event) => {
            state.events.room_event(&event).await;
            state
                .events
                .user_notice(user, &UserNotice::RoomRemoved { room_id })
                .await;
            Ok(())
        }
        // Gone already (a concurrent pass): nothing left to do.
        Err(store::RemoveMemberError::NotMember) => Ok(()),
        Err(store::RemoveMemberError::Store(e)) => Err(e.into()),
    }
}

fn room_change_error(e: store::RoomChangeError) -> ApiError {
    match e {
        store::RoomChangeError::Store(e) => e.into(),
        other => ApiError::Internal(anyhow::anyhow!(
            "leaving a room of a deleted account: {other:?}"
        )),
    }
}

/// Finishes deletions that stopped before the account had left every room
/// (called by the periodic maintenance on every api node; leaving is
/// idempotent).
pub async fn finish_deletions(state: &AppState) {
    let users = match state
        .store
        .deleted_accounts_with_rooms(FINISH_PER_PASS)
        .await
    {
        Ok(users) => users,
        Err(e) => {
            tracing::warn!(error = %e, "looking for unfinished account deletions failed");
            return;
        }
    };
    for user in users {
        let left = leave_every_room(state, user).await;
        tracing::info!(%user, rooms = left, "finished a deleted account's leaving");
    }
}
