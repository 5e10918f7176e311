//! Looking up accounts.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use shared::model::User;
use shared::rest::{ErrorBody, UserLookup, UserLookupResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(lookup))
}

/// The caller's own account.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller's account", body = User)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn me(State(state): State<AppState>, caller: AuthUser) -> ApiResult<Json<User>> {
    let user = state
        .store
        .user(caller.user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(Json(user))
}

/// Finds a user by exact username (to add them to a room, or to start a
/// direct conversation). `display_name` and `avatar_url` are there only
/// when the caller shares a room with the user.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(UserLookup),
    responses((status = 200, description = "The user's public profile", body = UserLookupResponse), (status = 404, description = "`user_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn lookup(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<UserLookup>,
) -> ApiResult<Json<UserLookupResponse>> {
    let mut user = state
        .store
        .user_by_username(&query.username.to_lowercase())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    // This is how a chat with a stranger starts: their profile is shown
    // only to those who share a room with them (`crate::profiles`).
    if let Some(visible) = state.store.visible_profile(caller.user_id, user.id).await? {
        user.display_name = visible.profile.display_name;
        user.avatar_url = visible.profile.avatar_url;
    }
    Ok(Json(UserLookupResponse { user }))
}
