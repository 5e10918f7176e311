//! Admin-only endpoints: for accounts with the `admin` role, and for the
//! operator token `PARLEY_ADMIN_TOKEN` when it is set.

mod api_keys;
pub mod cli;
mod mail_jobs;
mod users;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use shared::SessionId;
use shared::model::{AccountRole, now_millis};
use shared::rest::{
    ErrorBody, ProvisionRequest, ProvisionResponse, ProvisionedRoom, ProvisionedUser,
};
use std::time::Duration;
use store::{ProvisionError, ProvisionSpec};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provision))
        .routes(routes!(api_keys::create_api_key, api_keys::list_api_keys))
        .routes(routes!(api_keys::revoke_api_key))
        .routes(routes!(mail_jobs::list_mail_jobs))
        .routes(routes!(mail_jobs::retry_mail_job))
        .routes(routes!(mail_jobs::retry_parked_mail_jobs))
        .routes(routes!(mail_jobs::delete_mail_job))
        .routes(routes!(users::list_users))
        .routes(routes!(users::get_user))
        .routes(routes!(users::suspend_user))
        .routes(routes!(users::unsuspend_user))
        .routes(routes!(users::set_role))
}

/// Bounds of one provisioning request (a bigger test makes several).
const MAX_USERS: u32 = 100_000;
const MAX_ROOMS: u32 = 10_000;
const MAX_MEMBERSHIPS: u64 = 2_000_000;
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A caller allowed to use the admin endpoints: an account with the
/// `admin` role (bearer token or cookie session, like any request), or an
/// operator's tool holding `PARLEY_ADMIN_TOKEN` (when one is configured).
pub struct Admin {
    /// The admin account; None for the operator token.
    pub user: Option<shared::UserId>,
}

impl Admin {
    /// Who acted, for the audit log's `detail`.
    pub fn actor(&self) -> serde_json::Value {
        match self.user {
            Some(user) => serde_json::json!({"admin_id": user}),
            None => serde_json::json!({"admin_id": null, "by": "admin_token"}),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if let (Some(expected), Some(presented)) = (state.admin_token.as_ref(), presented) {
            // Compare digests: equal length, and no early exit on the secret's bytes.
            let a = Sha256::digest(presented.as_bytes());
            let b = Sha256::digest(expected.expose_secret().as_bytes());
            if a.iter()
                .zip(b.iter())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
            {
                return Ok(Admin { user: None });
            }
        }
        let caller = match AuthUser::from_request_parts(parts, state).await {
            Ok(caller) => caller,
            // Neither the operator token nor an access token of ours.
            Err(ApiError::InvalidToken) => {
                tracing::warn!(target: "security", "admin endpoint called with a wrong token");
                return Err(ApiError::Forbidden("admin only"));
            }
            Err(e) => return Err(e),
        };
        // Read on every request: a revoked role takes effect at once.
        match state.store.account_state(caller.user_id).await? {
            Some(account)
                if account.role == AccountRole::Admin && !account.suspended && !account.deleted =>
            {
                Ok(Admin {
                    user: Some(caller.user_id),
                })
            }
            _ => {
                tracing::warn!(target: "security", user_id = %caller.user_id, "admin endpoint called by a non-admin account");
                Err(ApiError::Forbidden("admin only"))
            }
        }
    }
}

/// Creates users (each with a live session and an access token) and rooms
/// with members, for load tests. Accounts cannot log in with a password.
#[utoipa::path(post, path = "/admin/provision", tag = "admin", security(("bearer" = []), ("admin" = [])), request_body = ProvisionRequest,
    responses(
        (status = 201, description = "Provisioned: every user with an access token, every room", body = ProvisionResponse),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 409, description = "`prefix_taken`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `field`) or `invalid_body`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn provision(
    State(state): State<AppState>,
    _admin: Admin,
    meta: crate::audit::ClientMeta,
    ApiJson(req): ApiJson<ProvisionRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<ProvisionResponse>)> {
    let prefix_ok = (1..=16).contains(&req.prefix.len())
        && req
            .prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !prefix_ok {
        return Err(ApiError::validation(
            "prefix",
            "prefix must be 1 to 16 of a-z, 0-9 and _",
        ));
    }
    if !(1..=MAX_USERS).contains(&req.users) {
        return Err(ApiError::validation(
            "users",
            format!("users must be 1 to {MAX_USERS}"),
        ));
    }
    if req.rooms > MAX_ROOMS || u64::from(req.rooms) * u64::from(req.room_size) > MAX_MEMBERSHIPS {
        return Err(ApiError::validation(
            "rooms",
            "too many rooms or memberships for one request",
        ));
    }
    if req.rooms > 0 && !(1..=req.users).contains(&req.room_size) {
        return Err(ApiError::validation(
            "room_size",
            "room_size must be 1 to users",
        ));
    }
    let ttl = match req.token_ttl_secs {
        Some(secs) if Duration::from_secs(secs) > MAX_TOKEN_TTL || secs == 0 => {
            return Err(ApiError::validation(
                "token_ttl_secs",
                "token_ttl_secs must be 1 to 86400",
            ));
        }
        Some(secs) => Duration::from_secs(secs),
        None => state.tokens.signer.ttl(),
    };
    let sessions: Vec<(SessionId, String)> = (0..req.users)
        .map(|_| {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let hash: String = Sha256::digest(secret)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (SessionId::new(), hash)
        })
        .collect();
    let now = now_millis();
    let spec = ProvisionSpec {
        prefix: &req.prefix,
        users: req.users,
        rooms: req.rooms,
        room_size: req.room_size,
        sessions: &sessions,
        session_expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
        now,
    };
    let done = state.store.provision(&spec).await.map_err(|e| match e {
        ProvisionError::PrefixTaken => ApiError::PrefixTaken,
        ProvisionError::Store(e) => e.into(),
    })?;
    let mut users = Vec::with_capacity(done.users.len());
    for ((id, username), (session_id, _)) in done.users.into_iter().zip(sessions) {
        let (access_token, _) = state
            .tokens
            .signer
            .issue_for(id, session_id, ttl)
            .map_err(ApiError::Internal)?;
        users.push(ProvisionedUser {
            id,
            username,
            access_token,
            session_id,
        });
    }
    let rooms = done
        .rooms
        .into_iter()
        .map(|(id, name, last_seq)| ProvisionedRoom { id, name, last_seq })
        .collect();
    tracing::info!(target: "security", prefix = %req.prefix, users = req.users, rooms = req.rooms, "load-test data provisioned");
    crate::audit::record(
        &state,
        shared::rest::SecurityEventKind::Provisioned,
        None,
        &meta,
        serde_json::json!({"prefix": req.prefix, "users": req.users, "rooms": req.rooms}),
    )
    .await;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(ProvisionResponse {
            users,
            rooms,
            expires_in: ttl.as_secs(),
        }),
    ))
}
