//! Two-factor login with TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one
//! step of clock skew either way) and single-use recovery codes.
//!
//! Enrolment takes the password and answers a secret (base32, otpauth URI,
//! QR code); it guards logins only after a code confirms it, which also
//! answers ten recovery codes (shown once, stored as SHA-256). A login of
//! such an account answers a challenge instead of tokens; the tokens come
//! from `POST /v1/auth/login/totp` with the challenge and a code.
//!
//! Guessing is bounded three ways: a challenge takes at most
//! [`CHALLENGE_ATTEMPTS`] codes and lives [`CHALLENGE_TTL`]; every code
//! attempt also counts against the account's login budget shared by all
//! api nodes (the lockout that guards passwords), so fresh challenges buy
//! no more guesses; and an accepted step is never accepted again (a code
//! seen over a shoulder is spent).

use super::{confirm_password, start_session};
use crate::audit::{self, ClientMeta};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::limits::LoginKey;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use rand::{Rng, RngCore};
use serde_json::json;
use shared::UserId;
use shared::model::now_millis;
use shared::rest::{
    ErrorBody, LoginResponse, RecoveryCodes, SecurityEventKind, TotpChangeRequest,
    TotpConfirmRequest, TotpEnrolRequest, TotpEnrolment, TotpStatus, TwoFactorChallenge,
    TwoFactorLoginRequest,
};
use std::time::Duration;
use totp_rs::{Algorithm, Secret, Totp};

/// How long a login challenge waits for its code.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// Codes one challenge takes before it is spent.
pub const CHALLENGE_ATTEMPTS: i64 = 5;
/// Recovery codes per account.
pub const RECOVERY_CODES: usize = 10;
/// Name shown in authenticator apps.
const ISSUER: &str = "Parley";
/// Bytes of a TOTP secret: 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// An authenticator for `secret` of `account`.
fn authenticator(secret: &str, account: &str) -> ApiResult<Totp> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored TOTP secret: {e:?}")))?;
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("building a TOTP: {e:?}")))
}

fn now_secs() -> u64 {
    u64::try_from(now_millis() / 1000).unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    super::hash_secret(s)
}

/// A recovery code as the user may type it: case, spaces and dashes do
/// not matter.
fn normalized_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Ten fresh recovery codes (`xxxxx-xxxxx`, 50 bits each from a base32
/// alphabet without look-alikes' ambiguity) and their hashes.
fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rngs::OsRng;
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let raw: String = (0..10)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect();
            format!("{}-{}", &raw[..5], &raw[5..])
        })
        .collect();
    let hashes = codes
        .iter()
        .map(|c| sha256_hex(&normalized_recovery_code(c)))
        .collect();
    (codes, hashes)
}

/// Which second factor a code was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Factor {
    Totp,
    RecoveryCode,
}

impl Factor {
    fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::RecoveryCode => "recovery_code",
        }
    }
}

/// Checks `code` against `user`'s confirmed authenticator (spending its
/// step) or recovery codes (spending the code). None when it is neither.
async fn spend_code(state: &AppState, user: UserId, code: &str) -> ApiResult<Option<Factor>> {
    let Some(record) = state.store.totp(user).await? else {
        return Ok(None);
    };
    if !record.confirmed {
        return Ok(None);
    }
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let totp = authenticator(&record.secret, "")?;
        let Some(step) = totp.check(&digits, now_secs()) else {
            return Ok(None);
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // A replayed code (its step accepted already) is a wrong code.
        return Ok(state
            .store
            .use_totp_step(user, step)
            .await?
            .then_some(Factor::Totp));
    }
    let normalized = normalized_recovery_code(code);
    if normalized.len() != 10 {
        return Ok(None);
    }
    let spent = state
        .store
        .use_recovery_code(user, &sha256_hex(&normalized), now_millis())
        .await?;
    Ok(spent.then_some(Factor::RecoveryCode))
}

/// Whether the caller's logins need a second factor.
#[utoipa::path(get, path = "/totp", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "Two-factor state", body = TotpStatus)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn status(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<TotpStatus>> {
    let record = state.store.totp(caller.user_id).await?;
    Ok(Json(TotpStatus {
        enabled: record.as_ref().is_some_and(|r| r.confirmed),
        pending: record.as_ref().is_some_and(|r| !r.confirmed),
        recovery_codes_left: state.store.recovery_codes_left(caller.user_id).await?,
    }))
}

/// Starts two-factor enrolment: a new secret for an authenticator app
/// (replacing an unconfirmed one). Logins need codes only once
/// `POST /v1/auth/totp/confirm` proved the app has it.
#[utoipa::path(post, path = "/totp/enrol", tag = "auth", security(("bearer" = [])),
    request_body = TotpEnrolRequest,
    responses(
        (status = 200, description = "The secret, as text, URI and QR code", body = TotpEnrolment),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 409, description = "`totp_already_enabled`: disable it first", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the account's login budget is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn enrol(
    State(state): State<AppState>,
    caller: AuthUser,
    meta: ClientMeta,
    ApiJson(req): ApiJson<TotpEnrolRequest>,
) -> ApiResult<Json<TotpEnrolment>> {
    confirm_password(&state, &meta, caller.user_id, req.password, "totp_enrol").await?;
    let account = state
        .store
        .user(caller.user_id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = Secret::new(Box::new(bytes)).to_base32();
    if !state
        .store
        .begin_totp(caller.user_id, &secret, now_millis())
        .await?
    {
        return Err(ApiError::TotpAlreadyEnabled);
    }
    let totp = authenticator(&secret, &account.username)?;
    let otpauth_uri = totp
        .to_url()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("otpauth URI: {e:?}")))?;
    let qr_png_base64 = totp
        .to_qr_base64()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("QR code: {e:?}")))?;
    Ok(Json(TotpEnrolment {
        secret,
        otpauth_uri,
        qr_png_base64,
    }))
}

/// Confirms enrolment with the authenticator's current code: from now on
/// logins need a code. Answers the ten recovery codes, shown only now.
#[utoipa::path(post, path = "/totp/confirm", tag = "auth", security(("bearer" = [])),
    request_body = TotpConfirmRequest,
    responses(
        (status = 200, description = "Enabled: the recovery codes", body = RecoveryCodes),
        (status = 409, description = "`totp_not_pending`: enrol first (or it is enabled already)", body = ErrorBody),
        (status = 422, description = "`invalid_two_factor_code`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn confirm(
    State(state): State<AppState>,
    caller: AuthUser,
    meta: ClientMeta,
    ApiJson(req): ApiJson<TotpConfirmRequest>,
) -> ApiResult<Json<RecoveryCodes>> {
    let record = state
        .store
        .totp(caller.user_id)
        .await?
        .filter(|r| !r.confirmed)
        .ok_or(ApiError::TotpNotPending)?;
    let step = authenticator(&record.secret, "")?
        .check(req.code.trim(), now_secs())
        .ok_or(ApiError::InvalidTwoFactorCode)?;
    let (codes, hashes) = new_recovery_codes();
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    if !state
        .store
        .confirm_totp(caller.user_id, step, &hashes, now_millis())
        .await?
    {
        return Err(ApiError::TotpNotPending);
    }
    tracing::info!(target: "security", user_id = %caller.user_id, "two-factor login enabled");
    audit::record(
        &state,
        SecurityEventKind::TotpEnabled,
        Some(caller.user_id),
        &meta,
        json!({}),
    )
    .await;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// Turns two-factor login off: the password and a current code (or an
/// unused recovery code) are needed.
#[utoipa::path(post, path = "/totp/disable", tag = "auth", security(("bearer" = [])),
    request_body = TotpChangeRequest,
    responses(
        (status = 204, description = "Disabled"),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 409, description = "`totp_not_enabled`", body = ErrorBody),
        (status = 422, description = "`invalid_two_factor_code`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the account's login budget is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn disable(
    State(state): State<AppState>,
    caller: AuthUser,
    meta: ClientMeta,
    ApiJson(req): ApiJson<TotpChangeRequest>,
) -> ApiResult<StatusCode> {
    password_and_code(&state, &meta, caller.user_id, req).await?;
    state.store.disable_totp(caller.user_id).await?;
    tracing::info!(target: "security", user_id = %caller.user_id, "two-factor login disabled");
    audit::record(
        &state,
        SecurityEventKind::TotpDisabled,
        Some(caller.user_id),
        &meta,
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the recovery codes with ten new ones (password and a code).
#[utoipa::path(post, path = "/totp/recovery-codes", tag = "auth", security(("bearer" = [])),
    request_body = TotpChangeRequest,
    responses(
        (status = 200, description = "The new codes; the old ones no longer work", body = RecoveryCodes),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 409, description = "`totp_not_enabled`", body = ErrorBody),
        (status = 422, description = "`invalid_two_factor_code`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the account's login budget is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub(super) async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    caller: AuthUser,
    meta: ClientMeta,
    ApiJson(req): ApiJson<TotpChangeRequest>,
) -> ApiResult<Json<RecoveryCodes>> {
    password_and_code(&state, &meta, caller.user_id, req).await?;
    let (codes, hashes) = new_recovery_codes();
    state
        .store
        .replace_recovery_codes(caller.user_id, &hashes)
        .await?;
    audit::record(
        &state,
        SecurityEventKind::RecoveryCodesRegenerated,
        Some(caller.user_id),
        &meta,
        json!({}),
    )
    .await;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// The password and a second factor of an account with two-factor login.
async fn password_and_code(
    state: &AppState,
    meta: &ClientMeta,
    user: UserId,
    req: TotpChangeRequest,
) -> ApiResult<()> {
    if !state.store.totp(user).await?.is_some_and(|r| r.confirmed) {
        return Err(ApiError::TotpNotEnabled);
    }
    confirm_identity(
        state,
        meta,
        user,
        req.password,
        Some(&req.code),
        "totp_change",
    )
    .await
}

/// Proves the caller is the account's owner before something drastic: the
/// password, and when two-factor login is on, a current code or an unused
/// recovery code as well (`code`; missing counts as wrong).
pub(crate) async fn confirm_identity(
    state: &AppState,
    meta: &ClientMeta,
    user: UserId,
    password: String,
    code: Option<&str>,
    action: &'static str,
) -> ApiResult<()> {
    confirm_password(state, meta, user, password, action).await?;
    if !state.store.totp(user).await?.is_some_and(|r| r.confirmed) {
        return Ok(());
    }
    let spent = match code {
        Some(code) => spend_code(state, user, code).await?,
        None => None,
    };
    match spent {
        Some(factor) => {
            if factor == Factor::RecoveryCode {
                recovery_code_used(state, meta, user).await?;
            }
            Ok(())
        }
        None => {
            audit::record(
                state,
                SecurityEventKind::TwoFactorFailed,
                Some(user),
                meta,
                json!({"reason": if code.is_some() { "wrong_code" } else { "missing_code" }, "action": action}),
            )
            .await;
            Err(ApiError::InvalidTwoFactorCode)
        }
    }
}

async fn recovery_code_used(state: &AppState, meta: &ClientMeta, user: UserId) -> ApiResult<()> {
    let left = state.store.recovery_codes_left(user).await?;
    tracing::warn!(target: "security", user_id = %user, left, "a recovery code was used");
    audit::record(
        state,
        SecurityEventKind::RecoveryCodeUsed,
        Some(user),
        meta,
        json!({"left": left}),
    )
    .await;
    Ok(())
}

/// Starts the second step of a login whose password was right: stores a
/// challenge and answers it (no tokens).
pub(super) async fn challenge(
    state: &AppState,
    user: UserId,
    user_agent: Option<&str>,
) -> ApiResult<TwoFactorChallenge> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let challenge = URL_SAFE_NO_PAD.encode(bytes);
    let now = now_millis();
    let expires_at = now + i64::try_from(CHALLENGE_TTL.as_millis()).unwrap_or(i64::MAX / 2);
    state
        .store
        .create_login_challenge(&sha256_hex(&challenge), user, user_agent, now, expires_at)
        .await?;
    Ok(TwoFactorChallenge {
        two_factor_required: true,
        challenge,
        expires_at: DateTime::from_timestamp_millis(expires_at).unwrap_or_default(),
    })
}

/// Finishes a two-factor login: the challenge from `POST /v1/auth/login`
/// and the authenticator's current code (or an unused recovery code).
/// Answers the tokens.
#[utoipa::path(post, path = "/login/totp", tag = "auth", request_body = TwoFactorLoginRequest,
    responses(
        (status = 200, description = "Logged in: the tokens, or a cookie session", body = LoginResponse),
        (status = 401, description = "`invalid_challenge` (unknown, expired, used, or out of attempts) or `invalid_two_factor_code`", body = ErrorBody),
        (status = 403, description = "`account_suspended`: the credentials are right but an admin suspended the account", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the account's login budget is spent, or too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
pub(super) async fn login_with_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    meta: ClientMeta,
    ApiJson(req): ApiJson<TwoFactorLoginRequest>,
) -> ApiResult<(HeaderMap, Json<LoginResponse>)> {
    super::ip_budget(&state, &meta, crate::limits::IpBudget::Login).await?;
    let hash = sha256_hex(&req.challenge);
    let Some(challenge) = state
        .store
        .attempt_login_challenge(&hash, now_millis())
        .await?
    else {
        return Err(ApiError::InvalidChallenge);
    };
    let user = challenge.user_id;
    if challenge.attempts > CHALLENGE_ATTEMPTS {
        state.store.end_login_challenge(&hash).await?;
        return Err(ApiError::InvalidChallenge);
    }
    let key = LoginKey::Account(user);
    let guard = super::begin_attempt(&state, &meta, &key).await?;
    let Some(factor) = spend_code(&state, user, &req.code).await? else {
        tracing::warn!(target: "security", user_id = %user, attempts = challenge.attempts, "wrong second factor");
        audit::record(
            &state,
            SecurityEventKind::TwoFactorFailed,
            Some(user),
            &meta,
            json!({"reason": "wrong_code", "attempt": challenge.attempts}),
        )
        .await;
        return Err(ApiError::TwoFactorLoginFailed);
    };
    // The challenge is used once: of two racing right answers one wins.
    if !state.store.end_login_challenge(&hash).await? {
        return Err(ApiError::InvalidChallenge);
    }
    state.limits.login_succeeded(&guard, &key).await;
    if factor == Factor::RecoveryCode {
        recovery_code_used(&state, &meta, user).await?;
    }
    let account = state
        .store
        .user(user)
        .await?
        .ok_or(ApiError::InvalidChallenge)?;
    let tokens = start_session(&state, &headers, &meta, account, factor.as_str()).await?;
    Ok(super::deliver(&state, &headers, req.session, tokens))
}
