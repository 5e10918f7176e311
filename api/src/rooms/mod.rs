//! Rooms and membership. A non-member asking about a room gets the same 404
//! as for a room that does not exist: nobody learns which rooms exist.

mod invitations;
mod manage;

pub(crate) use manage::announce_deleted_room;

use crate::domain::{RoomName, RoomTopic};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::model::{JoinPolicy, Member, Receipt, Role, Room, RoomKind, now_millis};
use shared::protocol::UserNotice;
use shared::rest::{
    AddMemberRequest, CreateRoomRequest, DirectRoomRequest, ErrorBody, MemberList, ReadRequest,
    ReceiptList, RoomList, RoomListQuery,
};
use shared::{RoomId, UserId};
use store::{AddMemberError, MarkerUpdate, Membership, RemoveMemberError, RoomCursor, RoomProfile};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_room, list_rooms))
        .routes(routes!(direct_room))
        .routes(routes!(get_room, manage::update_room, manage::delete_room))
        .routes(routes!(manage::transfer_ownership))
        .routes(routes!(invitations::invite, invitations::room_invitations))
        .routes(routes!(invitations::revoke))
        .routes(routes!(invitations::my_invitations))
        .routes(routes!(invitations::accept))
        .routes(routes!(invitations::decline))
        .routes(routes!(list_members, add_member))
        .routes(routes!(remove_member))
        .routes(routes!(mark_read))
        .routes(routes!(list_receipts))
}

/// Moves the caller's read marker in a room forward to `seq` (clients
/// without a WebSocket; connected clients send a `read` frame). A `seq`
/// below the current marker changes nothing. Answers the caller's markers.
#[utoipa::path(post, path = "/rooms/{room_id}/read", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = ReadRequest,
    responses((status = 200, description = "The caller's markers after the move", body = Receipt),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`seq` below 1 or beyond the room's `last_seq`)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn mark_read(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<ReadRequest>,
) -> ApiResult<Json<Receipt>> {
    let membership = membership_of(&state, room_id, caller.user_id).await?;
    if req.seq < 1 || req.seq > membership.last_seq {
        return Err(ApiError::validation(
            "seq",
            format!(
                "must be between 1 and the room's last_seq ({})",
                membership.last_seq
            ),
        ));
    }
    let update = MarkerUpdate {
        room_id,
        user_id: caller.user_id,
        read_seq: req.seq,
        delivered_seq: 0,
    };
    for change in state.store.advance_markers(&[update]).await? {
        state.events.read_marker(&change).await;
    }
    let own = state
        .store
        .receipts(room_id)
        .await?
        .into_iter()
        .find(|r| r.user_id == caller.user_id)
        .ok_or(ApiError::RoomNotFound)?;
    Ok(Json(own))
}

/// Every member's read and delivery markers ("seen by"), members only.
#[utoipa::path(get, path = "/rooms/{room_id}/receipts", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses((status = 200, description = "Every member's markers, by user id", body = ReceiptList), (status = 404, description = "`room_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn list_receipts(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<ReceiptList>> {
    membership_of(&state, room_id, caller.user_id).await?;
    let receipts = state.store.receipts(room_id).await?;
    Ok(Json(ReceiptList { receipts }))
}

/// The caller's membership of `room`, or the 404 a stranger gets.
pub(crate) async fn membership_of(
    state: &AppState,
    room: RoomId,
    user: UserId,
) -> ApiResult<Membership> {
    state
        .store
        .membership(room, user)
        .await?
        .ok_or(ApiError::RoomNotFound)
}

/// Creates a group room; the caller becomes its owner.
#[utoipa::path(post, path = "/rooms", tag = "rooms", security(("bearer" = [])), request_body = CreateRoomRequest,
    responses((status = 201, description = "Created; the caller is its owner", body = Room),
        (status = 403, description = "`email_unverified`: the caller's address is not verified and the server lets only verified accounts create rooms", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`field` names it)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn create_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<CreateRoomRequest>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    crate::accounts::require_verified(&state, caller.user_id).await?;
    let profile = RoomProfile {
        name: RoomName::parse(&req.name)?.as_str().to_owned(),
        topic: RoomTopic::parse(req.topic.as_deref().unwrap_or_default())?.into_inner(),
        join_policy: req.join_policy.unwrap_or_default(),
        avatar_attachment_id: None,
    };
    let (room, event) = state
        .store
        .create_group_room(caller.user_id, &profile, now_millis())
        .await?;
    state.events.room_event(&event).await;
    Ok((StatusCode::CREATED, Json(room)))
}

/// A page of the rooms the caller is a member of, the most recently active
/// first (`last_activity_at`: the newest message, or when the caller joined
/// if later), each with a preview of its newest message.
#[utoipa::path(get, path = "/rooms", tag = "rooms", security(("bearer" = [])), params(RoomListQuery),
    responses((status = 200, description = "A page of the caller's rooms, with the caller's role", body = RoomList),
        (status = 422, description = "`validation_failed`: `limit` out of range or a `cursor` this endpoint did not give", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn list_rooms(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<RoomListQuery>,
) -> ApiResult<Json<RoomList>> {
    let limit = query.limit.unwrap_or(DEFAULT_ROOMS_PAGE);
    if !(1..=store::MAX_ROOMS_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 100"));
    }
    let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let rooms = state.store.rooms_of(caller.user_id, cursor, limit).await?;
    let next_cursor = match rooms.last() {
        Some(last) if rooms.len() == limit as usize => Some(format!(
            "{}.{}",
            last.last_activity_at.timestamp_millis(),
            last.id
        )),
        _ => None,
    };
    Ok(Json(RoomList { rooms, next_cursor }))
}

const DEFAULT_ROOMS_PAGE: u32 = 50;

/// A rooms-list cursor (`<last_activity ms>.<room id>`, as `list_rooms`
/// writes it). Opaque to clients; anything else is a 422.
fn parse_cursor(cursor: &str) -> ApiResult<RoomCursor> {
    let bad = || ApiError::validation("cursor", "not a cursor this endpoint gave");
    let (activity, id) = cursor.split_once('.').ok_or_else(bad)?;
    Ok(RoomCursor {
        last_activity: activity.parse().map_err(|_| bad())?,
        room_id: RoomId(id.parse().map_err(|_| bad())?),
    })
}

/// The direct (1:1) room between the caller and another user, created on
/// first request. 201 when created, 200 when it already existed.
#[utoipa::path(post, path = "/rooms/direct", tag = "rooms", security(("bearer" = [])), request_body = DirectRoomRequest,
    responses(
        (status = 200, description = "Existing room", body = Room),
        (status = 201, description = "Created", body = Room),
        (status = 403, description = "`email_unverified`: the caller's address is not verified and the server lets only verified accounts create rooms", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a direct room with yourself; or `invalid_body`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn direct_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<DirectRoomRequest>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    crate::accounts::require_verified(&state, caller.user_id).await?;
    if req.user_id == caller.user_id {
        return Err(ApiError::validation(
            "user_id",
            "a direct room needs another user",
        ));
    }
    let direct = state
        .store
        .direct_room(caller.user_id, req.user_id, now_millis())
        .await
        .map_err(|e| match e {
            AddMemberError::UserNotFound => ApiError::UserNotFound,
            AddMemberError::Store(e) => e.into(),
            AddMemberError::AlreadyMember | AddMemberError::RoomNotFound => {
                ApiError::Internal(e.into())
            }
        })?;
    let Some(event) = direct.created else {
        return Ok((StatusCode::OK, Json(direct.room)));
    };
    state.events.room_event(&event).await;
    state
        .events
        .user_notice(
            req.user_id,
            &UserNotice::RoomAdded {
                room_id: direct.room.id,
                role: Role::Member,
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(direct.room)))
}

/// One room, as the caller sees it.
#[utoipa::path(get, path = "/rooms/{room_id}", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses((status = 200, description = "The room", body = Room), (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn get_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<Room>> {
    let room = state
        .store
        .room_for(room_id, caller.user_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    Ok(Json(room))
}

/// The members of a room (members only).
#[utoipa::path(get, path = "/rooms/{room_id}/members", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses((status = 200, description = "The room's members", body = MemberList), (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn list_members(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<MemberList>> {
    membership_of(&state, room_id, caller.user_id).await?;
    Ok(Json(MemberList {
        members: state.store.members(room_id).await?,
    }))
}

/// Adds a user to a group room. Owners and admins may add members; only the
/// owner may add admins.
#[utoipa::path(post, path = "/rooms/{room_id}/members", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path)), request_body = AddMemberRequest,
    responses(
        (status = 201, description = "Added; the body is the new member", body = Member),
        (status = 403, description = "`forbidden`: the caller may not add (this role)", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `user_not_found`", body = ErrorBody),
        (status = 409, description = "`already_member`, `direct_room`, or `invitation_required` (the room's join policy is `invite`)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn add_member(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<AddMemberRequest>,
) -> ApiResult<(StatusCode, Json<Member>)> {
    let me = membership_of(&state, room_id, caller.user_id).await?;
    if me.kind == RoomKind::Direct {
        return Err(ApiError::DirectRoom);
    }
    let role = req.role.unwrap_or(Role::Member);
    may_grant(&caller, room_id, me.role, role)?;
    if me.join_policy == JoinPolicy::Invite {
        return Err(ApiError::InvitationRequired);
    }
    let event = state
        .store
        .add_member(room_id, caller.user_id, req.user_id, role, now_millis())
        .await
        .map_err(|e| match e {
            AddMemberError::AlreadyMember => ApiError::AlreadyMember,
            AddMemberError::UserNotFound => ApiError::UserNotFound,
            AddMemberError::RoomNotFound => ApiError::RoomNotFound,
            AddMemberError::Store(e) => e.into(),
        })?;
    state.events.room_event(&event).await;
    state
        .events
        .user_notice(req.user_id, &UserNotice::RoomAdded { room_id, role })
        .await;
    let user = state
        .store
        .user(req.user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok((
        StatusCode::CREATED,
        Json(Member {
            user_id: user.id,
            username: user.username,
            display_name: user.profile.display_name,
            avatar_url: user.profile.avatar_url,
            role,
            joined_at: event.created_at,
        }),
    ))
}

/// Removes a member from a group room, or (with the caller's own id) leaves
/// it. The owner may remove anyone else, an admin only plain members; the
/// owner cannot leave.
#[utoipa::path(delete, path = "/rooms/{room_id}/members/{user_id}", tag = "rooms", security(("bearer" = [])),
    params(("room_id" = i64, Path), ("user_id" = i64, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = ErrorBody),
        (status = 409, description = "`owner_cannot_leave` or `direct_room`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id, target = %target))]
async fn remove_member(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((room_id, target)): ApiPath<(RoomId, UserId)>,
) -> ApiResult<StatusCode> {
    let me = membership_of(&state, room_id, caller.user_id).await?;
    if me.kind == RoomKind::Direct {
        return Err(ApiError::DirectRoom);
    }
    if target == caller.user_id {
        if me.role == Role::Owner {
            return Err(ApiError::OwnerCannotLeave);
        }
    } else {
        let theirs = state
            .store
            .membership(room_id, target)
            .await?
            .ok_or(ApiError::MemberNotFound)?;
        match (me.role, theirs.role) {
            (Role::Owner, _) | (Role::Admin, Role::Member) => {}
            _ => {
                return Err(deny(
                    &caller,
                    room_id,
                    "your role may not remove this member",
                ));
            }
        }
    }
    let event = state
        .store
        .remove_member(room_id, caller.user_id, target, now_millis())
        .await
        .map_err(|e| match e {
            RemoveMemberError::NotMember => ApiError::MemberNotFound,
            RemoveMemberError::Store(e) => e.into(),
        })?;
    state.events.room_event(&event).await;
    state
        .events
        .user_notice(target, &UserNotice::RoomRemoved { room_id })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a member with role `mine` may give a new member `role` (by
/// adding or inviting them, or revoking such an invitation): owners any
/// but owner, admins plain members only.
fn may_grant(caller: &AuthUser, room_id: RoomId, mine: Role, role: Role) -> ApiResult<()> {
    match (mine, role) {
        (_, Role::Owner) => Err(ApiError::validation(
            "role",
            "a room has one owner; use admin or member",
        )),
        (Role::Owner, _) | (Role::Admin, Role::Member) => Ok(()),
        (Role::Admin, Role::Admin) => Err(deny(caller, room_id, "only the owner may add admins")),
        (Role::Member, _) => Err(deny(
            caller,
            room_id,
            "only owners and admins may add members",
        )),
    }
}

fn deny(caller: &AuthUser, room_id: RoomId, why: &'static str) -> ApiError {
    tracing::warn!(target: "security", user_id = %caller.user_id, %room_id, why, "membership change refused");
    ApiError::Forbidden(why)
}
