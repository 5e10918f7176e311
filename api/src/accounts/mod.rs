//! Proving and recovering an account through its mailbox: email
//! verification, address changes, password reset.
//!
//! Tokens are 32 random bytes (base64url), mailed once and stored as a
//! SHA-256 (store/src/account_tokens.rs); each works once, for its purpose
//! only, until it expires. The mails themselves leave through the queue in
//! `crate::mail`.
//!
//! Enumeration: a reset request answers the same (202, the same body) for
//! any well-formed address and does the same work (one queued job) whether
//! or not an account has it; whether a mail goes out is decided later by
//! the mail sender.
//!
//! What an unverified account may do is policy (`PARLEY_UNVERIFIED_MAY_POST`):
//! [`require_verified`] guards posting, reacting and creating rooms. The
//! answer "verified" is cached per node for [`VERIFIED_CACHE_TTL`] (it is
//! asked on every post); only a change of address takes it back, and that
//! reaches the other nodes within the TTL.

mod deletion;
mod password;

pub use deletion::finish_deletions;

use crate::audit::{self, ClientMeta};
use crate::auth::end_session;
use crate::domain::{Email, Password};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, AuthUser};
use crate::mail::{self, JobPayload};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::UserId;
use shared::model::{User, now_millis};
use shared::rest::{
    ChangeEmailRequest, ErrorBody, PasswordResetAccepted, PasswordResetConfirm,
    PasswordResetRequest, SecurityEventKind, VerifyEmailRequest,
};
use std::time::{Duration, Instant};
use store::{ChangeEmailError, EmailChange, EmailVerification, NewMailJob, TokenPurpose};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes that take a mailed token or ask for a mail without a session:
/// under the per-IP limit of the credential routes.
pub fn credential_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_email_link, verify_email))
        .routes(routes!(request_password_reset))
        .routes(routes!(confirm_password_reset))
}

/// Routes of the caller's own address.
pub fn user_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(resend_verification))
        .routes(routes!(change_email))
        .routes(routes!(deletion::delete_account))
        .routes(routes!(password::change_password))
}

/// Bytes of randomness in a mailed token.
const TOKEN_BYTES: usize = 32;

/// A new mailed token and its stored hash.
pub fn new_token() -> (String, String) {
    let mut secret = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_token(&token);
    (token, hash)
}

/// The stored hash of a presented token; None if it cannot be one of ours
/// (so it costs no database round trip).
fn presented_hash(token: &str) -> Option<String> {
    let decoded = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    (decoded.len() == TOKEN_BYTES).then(|| hash_token(token.trim()))
}

fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long a node trusts "this account is verified" without asking the
/// database again.
pub const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(10);

/// Accounts recently found verified (unverified ones are not cached: they
/// are refused, rarely, and verify at any moment).
#[derive(Default)]
pub struct VerifiedCache {
    entries: DashMap<UserId, Instant>,
}

impl VerifiedCache {
    fn fresh(&self, user: UserId) -> bool {
        self.entries
            .get(&user)
            .is_some_and(|at| at.elapsed() < VERIFIED_CACHE_TTL)
    }

    fn verified(&self, user: UserId) {
        self.entries.insert(user, Instant::now());
    }

    fn unverified(&self, user: UserId) {
        self.entries.remove(&user);
    }

    /// Drops stale entries (called periodically).
    pub fn evict_stale(&self) {
        self.entries
            .retain(|_, at| at.elapsed() < VERIFIED_CACHE_TTL);
    }
}

/// Refuses (403 `email_unverified`) what the policy keeps from accounts
/// whose address is not verified.
pub async fn require_verified(state: &AppState, user: UserId) -> ApiResult<()> {
    if state.mail.unverified_may_post || state.verified.fresh(user) {
        return Ok(());
    }
    match state.store.email_verified(user).await? {
        Some(true) => {
            state.verified.verified(user);
            Ok(())
        }
        Some(false) => Err(ApiError::EmailUnverified),
        None => Err(ApiError::UserNotFound),
    }
}

/// Verifies the caller's address: the link in the verification mail.
#[utoipa::path(get, path = "/verify-email", tag = "auth", params(VerifyEmailRequest),
    responses(
        (status = 200, description = "The address is verified (also when it was already)", body = User),
        (status = 400, description = "`invalid_verification_token`: unknown, used, expired, or the account's address changed since", body = ErrorBody),
        (status = 409, description = "`email_taken`: another account verified the address after the mail left", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn verify_email_link(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiQuery(req): ApiQuery<VerifyEmailRequest>,
) -> ApiResult<Json<User>> {
    verify(&state, &meta, &req.token).await.map(Json)
}

/// Verifies an address with the token from its verification mail (for
/// apps that open the link themselves).
#[utoipa::path(post, path = "/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "The address is verified", body = User),
        (status = 400, description = "`invalid_verification_token`: unknown, used, expired, or the account's address changed since", body = ErrorBody),
        (status = 409, description = "`email_taken`: another account verified the address after the mail left", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn verify_email(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(req): ApiJson<VerifyEmailRequest>,
) -> ApiResult<Json<User>> {
    verify(&state, &meta, &req.token).await.map(Json)
}

async fn verify(state: &AppState, meta: &ClientMeta, token: &str) -> ApiResult<User> {
    let hash = presented_hash(token).ok_or(ApiError::InvalidVerificationToken)?;
    let user = match state.store.verify_email(&hash, now_millis()).await? {
        EmailVerification::Verified(user) => user,
        EmailVerification::Invalid => return Err(ApiError::InvalidVerificationToken),
        // Only whoever reads the address's mail gets here, so this tells
        // no stranger anything.
        EmailVerification::AddressTaken => return Err(ApiError::EmailTaken),
    };
    state.verified.verified(user.id);
    tracing::info!(target: "security", user_id = %user.id, "email address verified");
    metrics::counter!("api_email_verifications_total").increment(1);
    audit::record(
        state,
        SecurityEventKind::EmailVerified,
        Some(user.id),
        meta,
        json!({"email": user.email}),
    )
    .await;
    Ok(user)
}

/// Sends the caller another verification mail (the last one was lost or
/// expired). At most `PARLEY_ACCOUNT_MAILS_PER_HOUR` an hour; a request
/// while one is still waiting to leave sends no second one.
#[utoipa::path(post, path = "/users/me/email/verification", tag = "users", security(("bearer" = [])),
    responses(
        (status = 202, description = "A verification mail is on its way"),
        (status = 409, description = "`email_already_verified`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the hourly number of verification mails is reached", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn resend_verification(
    State(state): State<AppState>,
    meta: ClientMeta,
    caller: AuthUser,
) -> ApiResult<StatusCode> {
    let user = state
        .store
        .user(caller.user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    if user.email_verified {
        return Err(ApiError::EmailAlreadyVerified);
    }
    if state
        .store
        .pending_mail_jobs(mail::VERIFY_EMAIL, user.id, &user.email)
        .await?
        > 0
    {
        state.mail.wake();
        return Ok(StatusCode::ACCEPTED);
    }
    let since = now_millis() - 3600 * 1000;
    let sent = state
        .store
        .account_tokens_since(user.id, TokenPurpose::VerifyEmail, since)
        .await?;
    if sent >= i64::from(state.mail.mails_per_hour) {
        tracing::warn!(target: "security", user_id = %user.id, "verification mail refused: hourly limit");
        return Err(ApiError::RateLimited {
            retry_after_secs: 3600 / u64::from(state.mail.mails_per_hour.max(1)),
        });
    }
    mail::enqueue(
        &state,
        NewMailJob {
            kind: mail::VERIFY_EMAIL,
            recipient: &user.email,
            user_id: Some(user.id),
            payload: JobPayload::from_meta(&meta).to_json(),
        },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Changes the caller's address, confirmed with the password. The new
/// address is unverified until the link mailed to it is followed; the old
/// one is told of the change. Wrong passwords count against the account's
/// login budget, as failed logins do.
#[utoipa::path(put, path = "/users/me/email", tag = "users", security(("bearer" = [])), request_body = ChangeEmailRequest,
    responses(
        (status = 200, description = "The address is changed (and unverified)", body = User),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many wrong passwords for this account", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn change_email(
    State(state): State<AppState>,
    meta: ClientMeta,
    caller: AuthUser,
    ApiJson(req): ApiJson<ChangeEmailRequest>,
) -> ApiResult<Json<User>> {
    let email = Email::parse(&req.email)?;
    let current = state
        .store
        .user(caller.user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    if current.email == email.as_str() {
        return Err(ApiError::validation(
            "email",
            "this is the account's address already",
        ));
    }
    crate::auth::confirm_password(&state, &meta, caller.user_id, req.password, "change_email")
        .await?;
    let payload = JobPayload::from_meta(&meta);
    let notice = JobPayload {
        username: Some(current.username.clone()),
        ..payload.clone()
    };
    let user = state
        .store
        .change_email(EmailChange {
            user_id: caller.user_id,
            email: email.as_str(),
            verification: NewMailJob {
                kind: mail::VERIFY_EMAIL,
                recipient: email.as_str(),
                user_id: Some(caller.user_id),
                payload: payload.to_json(),
            },
            notice: Some(NewMailJob {
                kind: mail::EMAIL_CHANGED,
                recipient: &current.email,
                user_id: Some(caller.user_id),
                payload: notice.to_json(),
            }),
            now: now_millis(),
        })
        .await
        .map_err(|e| match e {
            ChangeEmailError::NoUser => ApiError::UserNotFound,
            ChangeEmailError::Store(e) => e.into(),
        })?;
    state.verified.unverified(user.id);
    state.mail.wake();
    tracing::info!(target: "security", user_id = %user.id, "email address changed");
    audit::record(
        &state,
        SecurityEventKind::EmailChanged,
        Some(user.id),
        &meta,
        json!({"old_email": current.email, "new_email": user.email}),
    )
    .await;
    Ok(Json(user))
}

/// What every reset request is told.
const RESET_ACCEPTED: &str =
    "If an account has this address, a link to reset its password is on its way.";

/// Mails a password reset link to the account with this address. The
/// answer is the same whether or not there is one (see the module doc),
/// and a locked-out account can be reset.
#[utoipa::path(post, path = "/password-reset", tag = "auth", request_body = PasswordResetRequest,
    responses(
        (status = 202, description = "Accepted (whether or not an account has the address)", body = PasswordResetAccepted),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn request_password_reset(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(req): ApiJson<PasswordResetRequest>,
) -> ApiResult<(StatusCode, Json<PasswordResetAccepted>)> {
    let email = Email::parse(&req.email)?;
    mail::enqueue(
        &state,
        NewMailJob {
            kind: mail::PASSWORD_RESET,
            recipient: email.as_str(),
            // Resolved when sent: which account the address reaches then.
            user_id: None,
            payload: JobPayload::from_meta(&meta).to_json(),
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PasswordResetAccepted {
            message: RESET_ACCEPTED.to_owned(),
        }),
    ))
}

/// Sets a new password with the token from a reset mail. Every session of
/// the account is revoked (its sockets close on every gateway), other
/// reset links stop working, and a login lockout is lifted.
#[utoipa::path(post, path = "/password-reset/confirm", tag = "auth", request_body = PasswordResetConfirm,
    responses(
        (status = 204, description = "The password is changed; log in with it"),
        (status = 400, description = "`invalid_reset_token`: unknown, used or expired", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn confirm_password_reset(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(req): ApiJson<PasswordResetConfirm>,
) -> ApiResult<StatusCode> {
    let hash = presented_hash(&req.token).ok_or(ApiError::InvalidResetToken)?;
    let password = Password::parse(&req.password)?;
    let password_hash = state.passwords.hash(password).await?;
    let reset = state
        .store
        .reset_password(&hash, &password_hash, now_millis())
        .await?
        .ok_or(ApiError::InvalidResetToken)?;
    let user_id = reset.user_id;
    for session_id in &reset.revoked_sessions {
        end_session(&state, user_id, *session_id).await;
    }
    state
        .limits
        .login_cleared(&state.broker.login_guard(), user_id)
        .await;
    tracing::info!(target: "security", %user_id, sessions = reset.revoked_sessions.len(),
        "password reset through a mailed link; every session revoked");
    metrics::counter!("api_password_resets_total").increment(1);
    audit::record(
        &state,
        SecurityEventKind::PasswordResetCompleted,
        Some(user_id),
        &meta,
        json!({"sessions_revoked": reset.revoked_sessions.len()}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_token_of_our_shape_is_looked_up() {
        let (token, hash) = new_token();
        assert_eq!(presented_hash(&token), Some(hash));
        assert_eq!(presented_hash("short"), None);
        assert_eq!(presented_hash(&format!("{token}AA")), None);
        assert_eq!(presented_hash("!!!"), None);
    }
}
