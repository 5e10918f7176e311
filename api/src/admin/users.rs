//! Accounts as admins manage them: the user list and search, suspension,
//! and the `admin` role.

use super::Admin;
use crate::audit::{self, ClientMeta};
use crate::auth::end_session;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::json;
use shared::UserId;
use shared::model::now_millis;
use shared::rest::{
    AdminUser, AdminUserPage, AdminUsersQuery, ErrorBody, SecurityEventKind, SetRoleRequest,
    SuspendRequest,
};
use store::AdminUserFilter;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;
const MAX_QUERY_CHARS: usize = 254;
const MAX_REASON_CHARS: usize = 500;

/// Accounts, oldest first, optionally only those whose username or email
/// starts with `q`, in one status or with one role.
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(AdminUsersQuery),
    responses((status = 200, description = "A page of accounts, oldest first", body = AdminUserPage),
        (status = 401, description = "`missing_token` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit`, `after_id` or `q` out of range", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(super) async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AdminUsersQuery>,
) -> ApiResult<Json<AdminUserPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 100"));
    }
    let after_id = query.after_id.unwrap_or(0);
    if after_id < 0 {
        return Err(ApiError::validation(
            "after_id",
            "after_id must be at least 0",
        ));
    }
    let prefix = match query.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) if q.chars().count() > MAX_QUERY_CHARS => {
            return Err(ApiError::validation("q", "q is at most 254 characters"));
        }
        Some(q) => Some(q.to_lowercase()),
    };
    let users = state
        .store
        .admin_users(&AdminUserFilter {
            prefix,
            status: query.status.unwrap_or_default(),
            role: query.role,
            after_id,
            limit: i64::from(limit),
        })
        .await?;
    let next_after_id = match users.last() {
        Some(last) if users.len() == limit as usize => Some(last.id.0),
        _ => None,
    };
    Ok(Json(AdminUserPage {
        users,
        next_after_id,
    }))
}

/// One account.
#[utoipa::path(get, path = "/admin/users/{user_id}", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("user_id" = i64, Path, description = "Account id", minimum = 1)),
    responses((status = 200, description = "The account", body = AdminUser),
        (status = 401, description = "`missing_token` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(%user_id))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<AdminUser>> {
    let user = state
        .store
        .admin_user(user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(Json(user))
}

/// Suspends an account: every session of it ends now, its sockets close
/// on every gateway, and it cannot log in (`account_suspended`) until it
/// is unsuspended. Suspending a suspended account changes nothing.
#[utoipa::path(post, path = "/admin/users/{user_id}/suspend", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("user_id" = i64, Path, description = "Account id", minimum = 1)),
    request_body = SuspendRequest,
    responses((status = 200, description = "The account, suspended", body = AdminUser),
        (status = 401, description = "`missing_token` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`user_not_found` (also for a deleted account)", body = ErrorBody),
        (status = 409, description = "`own_account`: an admin cannot suspend themselves", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `reason` too long", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(%user_id))]
pub(super) async fn suspend_user(
    State(state): State<AppState>,
    admin: Admin,
    meta: ClientMeta,
    ApiPath(user_id): ApiPath<UserId>,
    ApiJson(req): ApiJson<SuspendRequest>,
) -> ApiResult<Json<AdminUser>> {
    if admin.user == Some(user_id) {
        return Err(ApiError::OwnAccount("suspend"));
    }
    let reason = match req.reason.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            return Err(ApiError::validation(
                "reason",
                "reason is at most 500 characters",
            ));
        }
        Some(r) => Some(r.to_owned()),
    };
    let current = live_account(&state, user_id).await?;
    if current.suspended_at.is_some() {
        return Ok(Json(current));
    }
    if let Some(revoked) = state.store.suspend_account(user_id, now_millis()).await? {
        for session_id in &revoked {
            end_session(&state, user_id, *session_id).await;
        }
        tracing::warn!(target: "security", %user_id, admin = ?admin.user, sessions = revoked.len(), "account suspended");
        let mut detail = admin.actor();
        detail["reason"] = json!(reason);
        detail["sessions_revoked"] = json!(revoked.len());
        audit::record(
            &state,
            SecurityEventKind::AccountSuspended,
            Some(user_id),
            &meta,
            detail,
        )
        .await;
    }
    Ok(Json(live_account(&state, user_id).await?))
}

/// Lifts a suspension: the account may log in again (its old sessions
/// stay ended).
#[utoipa::path(post, path = "/admin/users/{user_id}/unsuspend", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("user_id" = i64, Path, description = "Account id", minimum = 1)),
    responses((status = 200, description = "The account, no longer suspended", body = AdminUser),
        (status = 401, description = "`missing_token` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`user_not_found` (also for a deleted account)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(%user_id))]
pub(super) async fn unsuspend_user(
    State(state): State<AppState>,
    admin: Admin,
    meta: ClientMeta,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<AdminUser>> {
    live_account(&state, user_id).await?;
    if state.store.unsuspend_account(user_id).await? {
        tracing::warn!(target: "security", %user_id, admin = ?admin.user, "account unsuspended");
        audit::record(
            &state,
            SecurityEventKind::AccountUnsuspended,
            Some(user_id),
            &meta,
            admin.actor(),
        )
        .await;
    }
    Ok(Json(live_account(&state, user_id).await?))
}

/// Makes an account an admin, or an admin a plain user again.
#[utoipa::path(put, path = "/admin/users/{user_id}/role", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("user_id" = i64, Path, description = "Account id", minimum = 1)),
    request_body = SetRoleRequest,
    responses((status = 200, description = "The account with its new role", body = AdminUser),
        (status = 401, description = "`missing_token` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`user_not_found` (also for a deleted account)", body = ErrorBody),
        (status = 409, description = "`own_account`: an admin cannot change their own role (another admin or the command line can)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(%user_id))]
pub(super) async fn set_role(
    State(state): State<AppState>,
    admin: Admin,
    meta: ClientMeta,
    ApiPath(user_id): ApiPath<UserId>,
    ApiJson(req): ApiJson<SetRoleRequest>,
) -> ApiResult<Json<AdminUser>> {
    if admin.user == Some(user_id) {
        // Also keeps the last admin from locking everyone out by mistake.
        return Err(ApiError::OwnAccount("change the role of"));
    }
    let current = live_account(&state, user_id).await?;
    if current.role != req.role {
        if !state.store.set_account_role(user_id, req.role).await? {
            return Err(ApiError::UserNotFound);
        }
        tracing::warn!(target: "security", %user_id, role = req.role.as_str(), admin = ?admin.user, "account role changed");
        let mut detail = admin.actor();
        detail["role"] = json!(req.role);
        audit::record(
            &state,
            SecurityEventKind::AccountRoleChanged,
            Some(user_id),
            &meta,
            detail,
        )
        .await;
    }
    Ok(Json(live_account(&state, user_id).await?))
}

/// The account unless it does not exist or is deleted.
async fn live_account(state: &AppState, user_id: UserId) -> ApiResult<AdminUser> {
    match state.store.admin_user(user_id).await? {
        Some(user) if user.deleted_at.is_none() => Ok(user),
        _ => Err(ApiError::UserNotFound),
    }
}
