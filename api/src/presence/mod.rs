//! Who is online and who is in a room, read from the presence the gateways
//! keep ([`broker::presence`]). Members only, and never an oracle: a user's
//! presence is visible only to users who share a room with them.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, AuthUser};
use crate::rooms::membership_of;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use broker::BrokerError;
use shared::rest::{ErrorBody, PresenceList, PresenceQuery, RoomPresenceResponse, UserPresence};
use shared::{RoomId, UserId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most users one `GET /v1/presence` may ask about.
pub const MAX_PRESENCE_QUERY: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(room_presence))
        .routes(routes!(users_presence))
}

fn unavailable(e: BrokerError) -> ApiError {
    ApiError::Unavailable(e.into())
}

/// Who is in a room now: users with a connection that joined it, on any
/// gateway (members only).
#[utoipa::path(get, path = "/rooms/{room_id}/presence", tag = "presence", security(("bearer" = [])),
    params(("room_id" = i64, Path)),
    responses((status = 200, description = "Users in the room now", body = RoomPresenceResponse),
        (status = 404, description = "`room_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn room_presence(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<RoomPresenceResponse>> {
    membership_of(&state, room_id, caller.user_id).await?;
    let presence = state.presence.room(room_id).await.map_err(unavailable)?;
    Ok(Json(RoomPresenceResponse {
        room_id,
        version: presence.version,
        user_ids: presence.users,
    }))
}

/// Whether users are online (connected to some gateway). Only users who
/// share a room with the caller, and the caller, are answered; others are
/// left out, exactly as ids that do not exist.
#[utoipa::path(get, path = "/presence", tag = "presence", security(("bearer" = [])), params(PresenceQuery),
    responses((status = 200, description = "The visible users' presence, in the order asked", body = PresenceList),
        (status = 422, description = "`validation_failed` (`user_ids` empty, not ids, or more than 100)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn users_presence(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> ApiResult<Json<PresenceList>> {
    let asked = parse_ids(&query.user_ids)?;
    let mut visible = state.store.sharing_a_room(caller.user_id, &asked).await?;
    if asked.contains(&caller.user_id) && !visible.contains(&caller.user_id) {
        visible.push(caller.user_id);
    }
    let online = state.presence.online(&visible).await.map_err(unavailable)?;
    let users = asked
        .iter()
        .filter(|u| visible.contains(u))
        .map(|u| UserPresence {
            user_id: *u,
            online: online.contains(u),
        })
        .collect();
    Ok(Json(PresenceList { users }))
}

/// `1,2,3` → distinct ids, in the order given.
fn parse_ids(list: &str) -> ApiResult<Vec<UserId>> {
    let mut ids: Vec<UserId> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id = part
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::validation("user_ids", "must be user ids separated by commas")
            })?;
        if !ids.contains(&UserId(id)) {
            ids.push(UserId(id));
        }
    }
    if ids.is_empty() {
        return Err(ApiError::validation(
            "user_ids",
            "give at least one user id",
        ));
    }
    if ids.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::validation(
            "user_ids",
            format!("at most {MAX_PRESENCE_QUERY} user ids per request"),
        ));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_deduplicated_and_bounded() {
        assert_eq!(parse_ids("3, 1,3,").unwrap(), vec![UserId(3), UserId(1)]);
        assert!(parse_ids("").is_err());
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("0").is_err());
        let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        assert!(parse_ids(&many.join(",")).is_err());
        assert_eq!(parse_ids(&many[..100].join(",")).unwrap().len(), 100);
    }
}
