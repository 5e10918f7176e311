//! Accounts and sessions: signup, login, refresh-token rotation, logout and
//! session management.

pub mod cookies;
pub mod password;
mod totp;

pub(crate) use totp::confirm_identity;

use crate::audit::{self, ClientMeta};
use crate::domain::{Email, MAX_PASSWORD_BYTES, Password, Username};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, AuthUser};
use crate::limits::{IpBudget, LoginGate, LoginKey};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::USER_AGENT};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::model::{User, now_millis};
use shared::protocol::UserNotice;
use shared::rest::{
    CookieSession, ErrorBody, LoginRequest, LoginResponse, RefreshRequest, RefreshResponse,
    SecurityEventKind, Session, SessionList, SessionMode, SignupRequest, TokenResponse,
};
use shared::{SessionId, UserId};
use store::{CreateUserError, NewMailJob, NewSession, NewUser, RefreshOutcome};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes that create credentials; the per-IP rate limit applies to these.
pub fn credential_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(totp::login_with_code))
        .routes(routes!(refresh))
}

/// Routes of an authenticated caller's sessions.
pub fn session_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(logout))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(totp::status))
        .routes(routes!(totp::enrol))
        .routes(routes!(totp::confirm))
        .routes(routes!(totp::disable))
        .routes(routes!(totp::regenerate_recovery_codes))
}

/// Longest User-Agent kept with a session.
const MAX_USER_AGENT: usize = 256;

/// Creates an account.
#[utoipa::path(post, path = "/signup", tag = "auth", request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created, its address unverified; the address gets a verification link (or, when another account verified it already, its owner a notice)", body = User),
        (status = 409, description = "`username_taken`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (with `field`) or `invalid_body`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn signup(
    State(state): State<AppState>,
    meta: ClientMeta,
    ApiJson(req): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let username = Username::parse(&req.username)?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(&req.password)?;
    ip_budget(&state, &meta, IpBudget::Signup).await?;
    let password_hash = state.passwords.hash(password).await?;
    let user = state
        .store
        .create_user(NewUser {
            username: username.as_str(),
            email: email.as_str(),
            password_hash: &password_hash,
            created_at: now_millis(),
            mail: Some(NewMailJob {
                kind: crate::mail::VERIFY_EMAIL,
                recipient: email.as_str(),
                // The store names the account it inserts.
                user_id: None,
                payload: crate::mail::JobPayload::from_meta(&meta).to_json(),
            }),
        })
        .await
        .map_err(|e| match e {
            CreateUserError::UsernameTaken => ApiError::UsernameTaken,
            CreateUserError::Store(e) => e.into(),
        })?;
    state.mail.wake();
    tracing::info!(target: "security", user_id = %user.id, username = %user.username, "account created");
    audit::record(
        &state,
        SecurityEventKind::Signup,
        Some(user.id),
        &meta,
        json!({"username": user.username}),
    )
    .await;
    metrics::counter!("api_signups_total").increment(1);
    Ok((StatusCode::CREATED, Json(user)))
}

/// Logs in with a username or email and a password; starts a session. An
/// account with two-factor login answers a challenge instead of tokens:
/// finish with `POST /v1/auth/login/totp`.
#[utoipa::path(post, path = "/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in (the tokens), or a two-factor challenge (`two_factor_required`)", body = LoginResponse),
        (status = 401, description = "`invalid_credentials` (unknown account and wrong password alike)", body = ErrorBody),
        (status = 403, description = "`account_suspended`: the credentials are right but an admin suspended the account", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this IP or on this account", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    meta: ClientMeta,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<(HeaderMap, Json<LoginResponse>)> {
    let mode = req.session;
    let login = req.login.trim().to_lowercase();
    if login.is_empty() {
        return Err(ApiError::InvalidCredentials);
    }
    ip_budget(&state, &meta, IpBudget::Login).await?;
    let credentials = state.store.user_credentials(&login).await?;
    // One budget per account, however it is named (docs/api.md, "login").
    let key = match &credentials {
        Some(c) => LoginKey::Account(c.user.id),
        None => LoginKey::Unknown(login.clone()),
    };
    let guard = begin_attempt(&state, &meta, &key).await?;
    let (user, hash) = match credentials {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    // A password over the cap can never be right; it still costs the same
    // work and counts as a failure.
    let (password, hash) = if req.password.len() > MAX_PASSWORD_BYTES {
        (String::new(), None)
    } else {
        (req.password, hash)
    };
    let valid = state.passwords.verify(password, hash).await?;
    let Some(user) = user.filter(|_| valid) else {
        metrics::counter!("api_logins_total", "outcome" => "failed").increment(1);
        tracing::warn!(target: "security", login = %login, "failed login");
        let (user, detail) = audit_subject(&key);
        audit::record(&state, SecurityEventKind::LoginFailed, user, &meta, detail).await;
        return Err(ApiError::InvalidCredentials);
    };
    if state
        .store
        .totp(user.id)
        .await?
        .is_some_and(|t| t.confirmed)
    {
        // The password was right; the attempt stays counted until the
        // second factor is (totp::login_with_code).
        tracing::info!(target: "security", user_id = %user.id, "password accepted; waiting for the second factor");
        let challenge = totp::challenge(&state, user.id, user_agent(&headers)).await?;
        return Ok((HeaderMap::new(), Json(LoginResponse::TwoFactor(challenge))));
    }
    state.limits.login_succeeded(&guard, &key).await;
    let tokens = start_session(&state, &headers, &meta, user, "password").await?;
    Ok(deliver(&state, &headers, mode, tokens))
}

/// A new session's tokens as the client asked for them: in the body
/// (bearer), or as cookies with a CSRF token in the body (cookie).
fn deliver(
    state: &AppState,
    request: &HeaderMap,
    mode: SessionMode,
    tokens: TokenResponse,
) -> (HeaderMap, Json<LoginResponse>) {
    match mode {
        SessionMode::Bearer => (HeaderMap::new(), Json(LoginResponse::Tokens(tokens))),
        SessionMode::Cookie => {
            let (headers, session) = cookie_session(state, request, tokens);
            (headers, Json(LoginResponse::Cookie(session)))
        }
    }
}

/// Sets `tokens` as a cookie session's cookies; the body that goes with them.
fn cookie_session(
    state: &AppState,
    request: &HeaderMap,
    tokens: TokenResponse,
) -> (HeaderMap, CookieSession) {
    let csrf_token = cookies::csrf_token(&state.tokens.csrf_key, tokens.session_id);
    let mut headers = HeaderMap::new();
    cookies::set_session(
        request,
        &mut headers,
        &cookies::SessionCookies {
            access_token: &tokens.access_token,
            access_ttl_secs: tokens.expires_in,
            refresh_token: &tokens.refresh_token,
            refresh_ttl_secs: tokens.refresh_expires_in,
            csrf_token: &csrf_token,
        },
    );
    let session = CookieSession {
        token_type: "Cookie".into(),
        expires_in: tokens.expires_in,
        refresh_expires_in: tokens.refresh_expires_in,
        session_id: tokens.session_id,
        user: tokens.user,
        csrf_token,
    };
    (headers, session)
}

/// Opens a session for `user`, who just proved who they are (`method`:
/// `password`, `totp` or `recovery_code`), and answers its tokens.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    meta: &ClientMeta,
    user: User,
    method: &'static str,
) -> ApiResult<TokenResponse> {
    let session_id = SessionId::new();
    let (refresh_token, refresh_hash) = new_refresh_token(session_id);
    let now = now_millis();
    let started = state
        .store
        .create_session(NewSession {
            id: session_id,
            user_id: user.id,
            refresh_hash: &refresh_hash,
            created_at: now,
            expires_at: now + refresh_ttl_millis(state),
            user_agent: user_agent(headers),
        })
        .await?;
    if !started {
        // Told only to whoever proved the password (and second factor):
        // a stranger cannot learn that an account is suspended.
        metrics::counter!("api_logins_total", "outcome" => "suspended").increment(1);
        tracing::warn!(target: "security", user_id = %user.id, method, "login of a suspended account refused");
        audit::record(
            state,
            SecurityEventKind::LoginRefusedSuspended,
            Some(user.id),
            meta,
            json!({"method": method}),
        )
        .await;
        return Err(ApiError::AccountSuspended);
    }
    metrics::counter!("api_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(target: "security", user_id = %user.id, %session_id, method, "login");
    audit::record(
        state,
        SecurityEventKind::Login,
        Some(user.id),
        meta,
        json!({"session_id": session_id, "method": method}),
    )
    .await;
    token_response(state, user, session_id, refresh_token)
}

/// Trades a refresh token for a new access token and a new refresh token.
/// Each refresh token works once; presenting a used one revokes its session.
#[utoipa::path(post, path = "/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens (or, for a cookie session, new cookies)", body = RefreshResponse),
        (status = 401, description = "`invalid_refresh_token`", body = ErrorBody),
        (status = 403, description = "`csrf_failed`: a cookie refresh without its `X-CSRF-Token`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this IP", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    meta: ClientMeta,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<(HeaderMap, Json<RefreshResponse>)> {
    // A cookie session refreshes with its cookie, and (the browser sends
    // the cookie by itself) only with its CSRF token.
    let (presented, mode) = match req.refresh_token {
        Some(token) => (token, SessionMode::Bearer),
        None => (
            cookies::cookie_value(&headers, cookies::REFRESH_COOKIE)
                .ok_or(ApiError::InvalidRefreshToken)?,
            SessionMode::Cookie,
        ),
    };
    let (session_id, presented_hash) =
        parse_refresh_token(&presented).ok_or(ApiError::InvalidRefreshToken)?;
    if mode == SessionMode::Cookie {
        let echoed = headers
            .get(cookies::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !cookies::csrf_valid(&state.tokens.csrf_key, session_id, echoed) {
            tracing::warn!(target: "security", %session_id, "cookie refresh without its CSRF token");
            return Err(ApiError::CsrfFailed);
        }
    }
    let (refresh_token, replacement_hash) = new_refresh_token(session_id);
    let now = now_millis();
    let outcome = state
        .store
        .rotate_refresh(
            session_id,
            &presented_hash,
            &replacement_hash,
            now,
            now + refresh_ttl_millis(&state),
        )
        .await?;
    let user_id = match outcome {
        RefreshOutcome::Rotated { user_id } => user_id,
        RefreshOutcome::Reused { user_id } => {
            tracing::warn!(target: "security", %user_id, %session_id,
                "a used refresh token was presented again; the session is revoked");
            metrics::counter!("api_refresh_reuse_total").increment(1);
            end_session(&state, user_id, session_id).await;
            audit::record(
                &state,
                SecurityEventKind::RefreshTokenReused,
                Some(user_id),
                &meta,
                json!({"session_id": session_id}),
            )
            .await;
            return Err(ApiError::InvalidRefreshToken);
        }
        RefreshOutcome::Invalid => return Err(ApiError::InvalidRefreshToken),
    };
    let user = state
        .store
        .user(user_id)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    let tokens = token_response(&state, user, session_id, refresh_token)?;
    Ok(match mode {
        SessionMode::Bearer => (HeaderMap::new(), Json(RefreshResponse::Tokens(tokens))),
        SessionMode::Cookie => {
            let (cookies, session) = cookie_session(&state, &headers, tokens);
            (cookies, Json(RefreshResponse::Cookie(session)))
        }
    })
}

/// Ends the caller's current session: its refresh token stops working and
/// its WebSocket connections are closed.
#[utoipa::path(post, path = "/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Logged out")))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    meta: ClientMeta,
    caller: AuthUser,
) -> ApiResult<(StatusCode, HeaderMap)> {
    state
        .store
        .revoke_session(caller.session_id, caller.user_id, now_millis())
        .await?;
    tracing::info!(target: "security", user_id = %caller.user_id, session_id = %caller.session_id, "logout");
    end_session(&state, caller.user_id, caller.session_id).await;
    audit::record(
        &state,
        SecurityEventKind::Logout,
        Some(caller.user_id),
        &meta,
        json!({"session_id": caller.session_id}),
    )
    .await;
    // A cookie session's cookies go with it (nothing for a bearer client).
    let mut cleared = HeaderMap::new();
    if cookies::cookie_value(&headers, cookies::SESSION_COOKIE).is_some() {
        cookies::clear_session(&headers, &mut cleared);
    }
    Ok((StatusCode::NO_CONTENT, cleared))
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "The caller's live sessions", body = SessionList)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn list_sessions(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<SessionList>> {
    let sessions = state.store.sessions(caller.user_id, now_millis()).await?;
    Ok(Json(SessionList {
        sessions: sessions
            .into_iter()
            .map(|s| Session {
                current: s.id == caller.session_id,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                user_agent: s.user_agent,
            })
            .collect(),
    }))
}

/// Revokes one of the caller's sessions (a lost phone, say).
#[utoipa::path(delete, path = "/sessions/{session_id}", tag = "auth", security(("bearer" = [])),
    params(("session_id" = uuid::Uuid, Path, description = "Session id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "`session_not_found`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn revoke_session(
    State(state): State<AppState>,
    meta: ClientMeta,
    caller: AuthUser,
    ApiPath(session_id): ApiPath<SessionId>,
) -> ApiResult<StatusCode> {
    if !state
        .store
        .revoke_session(session_id, caller.user_id, now_millis())
        .await?
    {
        return Err(ApiError::SessionNotFound);
    }
    tracing::info!(target: "security", user_id = %caller.user_id, %session_id, "session revoked");
    end_session(&state, caller.user_id, session_id).await;
    audit::record(
        &state,
        SecurityEventKind::SessionRevoked,
        Some(caller.user_id),
        &meta,
        json!({"session_id": session_id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// After a revocation: this node stops honouring the session's access
/// tokens at once, and gateways close its connections.
pub(crate) async fn end_session(state: &AppState, user_id: UserId, session_id: SessionId) {
    state.sessions.revoked(session_id);
    state
        .events
        .user_notice(user_id, &UserNotice::SessionRevoked { session_id })
        .await;
}

fn token_response(
    state: &AppState,
    user: User,
    session_id: SessionId,
    refresh_token: String,
) -> ApiResult<TokenResponse> {
    let (access_token, _) = state
        .tokens
        .signer
        .issue(user.id, session_id)
        .map_err(ApiError::Internal)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: state.tokens.signer.ttl().as_secs(),
        refresh_token,
        refresh_expires_in: state.tokens.refresh_ttl.as_secs(),
        session_id,
        user,
    })
}

fn refresh_ttl_millis(state: &AppState) -> i64 {
    i64::try_from(state.tokens.refresh_ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The User-Agent to keep with a session. `to_str` only accepts visible
/// ASCII (and tab), so what is stored never holds NUL or anything else the
/// store cannot hold; any other header is not kept.
fn user_agent(headers: &HeaderMap) -> Option<&str> {
    let ua = headers.get(USER_AGENT)?.to_str().ok()?;
    Some(match ua.char_indices().nth(MAX_USER_AGENT) {
        Some((cut, _)) => &ua[..cut],
        None => ua,
    })
}

/// Counts one login attempt (a password or a second-factor code) against
/// `key`'s cluster-wide budget, or answers 429 while it is locked out (with
/// the security event); the guard to report a success to.
async fn begin_attempt(
    state: &AppState,
    meta: &ClientMeta,
    key: &LoginKey,
) -> ApiResult<broker::guard::DynLoginGuard> {
    let guard = state.broker.login_guard();
    if let LoginGate::Locked {
        retry_after_secs,
        just_locked,
    } = state.limits.begin_login(&guard, key).await
    {
        let (user, mut detail) = audit_subject(key);
        let kind = if just_locked {
            detail["lockout_secs"] = json!(retry_after_secs);
            SecurityEventKind::LoginLockedOut
        } else {
            SecurityEventKind::LoginThrottled
        };
        audit::record(state, kind, user, meta, detail).await;
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    Ok(guard)
}

/// Checks a signed-in caller's password before a sensitive change
/// (`action`: what for, in the audit log). Each try counts against the
/// account's login budget like a login, so a stolen access token does not
/// open a way to guess the password.
pub(crate) async fn confirm_password(
    state: &AppState,
    meta: &ClientMeta,
    user: UserId,
    password: String,
    action: &'static str,
) -> ApiResult<()> {
    let key = LoginKey::Account(user);
    let guard = state.broker.login_guard();
    if let LoginGate::Locked {
        retry_after_secs, ..
    } = state.limits.begin_login(&guard, &key).await
    {
        audit::record(
            state,
            SecurityEventKind::LoginThrottled,
            Some(user),
            meta,
            json!({"action": action}),
        )
        .await;
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let hash = state.store.password_hash(user).await?;
    let password = if password.len() > MAX_PASSWORD_BYTES {
        String::new()
    } else {
        password
    };
    if !state.passwords.verify(password, hash).await? {
        tracing::warn!(target: "security", user_id = %user, action, "wrong password for a sensitive change");
        audit::record(
            state,
            SecurityEventKind::LoginFailed,
            Some(user),
            meta,
            json!({"action": action}),
        )
        .await;
        return Err(ApiError::WrongPassword);
    }
    state.limits.login_succeeded(&guard, &key).await;
    Ok(())
}

/// Spends one of the client IP's cluster-wide `budget`, or answers 429
/// (with one `ip_rate_limited` security event when this request spent it).
async fn ip_budget(state: &AppState, meta: &ClientMeta, budget: IpBudget) -> ApiResult<()> {
    let guard = state.broker.login_guard();
    match state
        .limits
        .begin_ip(&guard, budget, meta.ip.as_deref())
        .await
    {
        Ok(()) => Ok(()),
        Err(refused) => {
            if refused.just_spent {
                let what = match budget {
                    IpBudget::Login => "login",
                    IpBudget::Signup => "signup",
                };
                audit::record(
                    state,
                    SecurityEventKind::IpRateLimited,
                    None,
                    meta,
                    json!({"budget": what, "retry_after_secs": refused.retry_after_secs}),
                )
                .await;
            }
            Err(ApiError::RateLimited {
                retry_after_secs: refused.retry_after_secs,
            })
        }
    }
}

/// Who a login attempt's security event is about: the account, or (naming
/// none) no account and the name tried, bounded.
fn audit_subject(key: &LoginKey) -> (Option<UserId>, serde_json::Value) {
    match key {
        LoginKey::Account(id) => (Some(*id), json!({})),
        LoginKey::Unknown(name) => (None, json!({"login": audit::detail_text(name)})),
    }
}

/// Bytes of randomness in a refresh token's secret.
const REFRESH_SECRET_BYTES: usize = 32;

/// A refresh token `<session id>.<secret>` and the hash of its secret (what is stored).
fn new_refresh_token(session_id: SessionId) -> (String, String) {
    let mut secret = [0u8; REFRESH_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(&secret);
    (format!("{session_id}.{secret}"), hash)
}

fn parse_refresh_token(token: &str) -> Option<(SessionId, String)> {
    let (session, secret) = token.split_once('.')?;
    let session_id = session.parse().ok()?;
    let decoded = URL_SAFE_NO_PAD.decode(secret).ok()?;
    (decoded.len() == REFRESH_SECRET_BYTES).then(|| (session_id, hash_secret(secret)))
}

fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_ascii_user_agent_is_kept_and_it_is_capped() {
        let with = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                USER_AGENT,
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
            user_agent(&headers).map(str::to_owned)
        };
        assert_eq!(with(b"curl/8.0").as_deref(), Some("curl/8.0"));
        assert_eq!(with("caf\u{e9}/1".as_bytes()), None);
        assert_eq!(with(b"\xff\xfe"), None);
        assert_eq!(with(&[b'a'; 300]).map(|s| s.len()), Some(MAX_USER_AGENT));
        assert!(
            axum::http::HeaderValue::from_bytes(b"a\0b").is_err(),
            "a header cannot carry NUL at all"
        );
    }

    #[test]
    fn a_refresh_token_parses_back_to_its_session_and_hash() {
        let sid = SessionId::new();
        let (token, hash) = new_refresh_token(sid);
        assert_eq!(parse_refresh_token(&token), Some((sid, hash)));
        assert_eq!(parse_refresh_token("garbage"), None);
        assert_eq!(parse_refresh_token(&format!("{sid}.short")), None);
        assert_eq!(parse_refresh_token(&token.replace('.', "")), None);
    }
}
