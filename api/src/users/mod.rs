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
/// direct conversation).
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(UserLookup),
    responses((status = 200, description = "The user's public profile", body = UserLookupResponse), (status = 404, description = "`user_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn lookup(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<UserLookup>,
) -> ApiResult<Json<UserLookupResponse>> {
    let user = state
        .store
        .user_by_username(&query.username.to_lowercase())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(Json(UserLookupResponse { user }))
}
