//! An owner changing their password while logged in.

use crate::audit::{self, ClientMeta};
use crate::auth::{confirm_password, end_session};
use crate::domain::Password;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::json;
use shared::model::now_millis;
use shared::rest::{ChangePasswordRequest, ErrorBody, PasswordChanged, SecurityEventKind};

/// Changes the caller's password, confirmed with the current one (wrong
/// ones count against the account's login budget, as failed logins do).
/// Every other session of the account is revoked (their sockets close on
/// every gateway); this one stays. Reset links mailed earlier stop working.
#[utoipa::path(put, path = "/users/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Changed; how many other sessions ended", body = PasswordChanged),
        (status = 403, description = "`wrong_password`: the current password is not right", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`new_password`: too short or too long, or the same as the current one)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many wrong passwords for this account", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    meta: ClientMeta,
    caller: AuthUser,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<PasswordChanged>> {
    let new_password = Password::parse(&req.new_password).map_err(|_| {
        ApiError::validation("new_password", "new_password must be 8 to 1024 characters")
    })?;
    if req.new_password == req.current_password {
        return Err(ApiError::validation(
            "new_password",
            "new_password is the current password",
        ));
    }
    confirm_password(
        &state,
        &meta,
        caller.user_id,
        req.current_password,
        "change_password",
    )
    .await?;
    let password_hash = state.passwords.hash(new_password).await?;
    let revoked = state
        .store
        .change_password(
            caller.user_id,
            &password_hash,
            caller.session_id,
            now_millis(),
        )
        .await?
        .ok_or(ApiError::UserNotFound)?;
    for session_id in &revoked {
        end_session(&state, caller.user_id, *session_id).await;
    }
    tracing::info!(target: "security", user_id = %caller.user_id, sessions = revoked.len(),
        "password changed; the account's other sessions revoked");
    audit::record(
        &state,
        SecurityEventKind::PasswordChanged,
        Some(caller.user_id),
        &meta,
        json!({"sessions_revoked": revoked.len()}),
    )
    .await;
    Ok(Json(PasswordChanged {
        sessions_revoked: revoked.len(),
    }))
}
