//! Cookie sessions for browser apps served from the api's site.
//!
//! A login with `"session": "cookie"` gets its access token and refresh
//! token as HttpOnly cookies (page scripts cannot read them, so an XSS
//! cannot steal them), and a CSRF token in the body (and a readable
//! `parley_csrf` cookie, for a page that reloads). The browser then sends
//! the cookies by itself, which is what makes cross-site request forgery
//! possible: every request that authenticates with the cookie and changes
//! something must echo the CSRF token in an `X-CSRF-Token` header. The
//! token is an HMAC of the session id under a key derived from the JWT
//! signing key, so every api node checks it without storing anything, and
//! it is worthless for any other session. `SameSite=Lax` keeps the cookies
//! off cross-site subrequests as a second line; CORS grants credentials
//! only to the configured origins (`crate::cors`).
//!
//! Bearer requests (an `Authorization` header) never need the CSRF token:
//! nothing ambient authenticates them.

use axum::http::header::{COOKIE, HOST, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::SessionId;

/// The access token (`Path=/v1`: the api, not the gateways).
pub const SESSION_COOKIE: &str = "parley_session";
/// The refresh token, only ever sent to the auth endpoints.
pub const REFRESH_COOKIE: &str = "parley_refresh";
/// The CSRF token, readable by the page.
pub const CSRF_COOKIE: &str = "parley_csrf";
/// Where a cookie-authenticated request echoes the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

type HmacSha256 = Hmac<Sha256>;

/// The key CSRF tokens are made with: derived from the JWT signing key,
/// which every api node has, so they all agree without sharing more.
pub fn csrf_key(private_pem: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = Sha256::new();
    hasher.update(b"parley csrf v1\n");
    hasher.update(private_pem.as_bytes());
    hasher.finalize().into()
}

fn mac(key: &[u8; 32], session: SessionId) -> HmacSha256 {
    // An HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(session.to_string().as_bytes());
    mac
}

/// The CSRF token of `session`.
pub fn csrf_token(key: &[u8; 32], session: SessionId) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, session).finalize().into_bytes())
}

/// Whether `presented` is `session`'s CSRF token (constant time).
pub fn csrf_valid(key: &[u8; 32], session: SessionId, presented: &str) -> bool {
    match URL_SAFE_NO_PAD.decode(presented.trim()) {
        Ok(bytes) => mac(key, session).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// Whether the request came to a loopback host (`localhost`, `127.x`,
/// `[::1]`): cookies without `Secure` there, so plain-HTTP development
/// works; with it everywhere else.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn set(response: &mut HeaderMap, cookie: cookie::Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.append(SET_COOKIE, value);
    }
}

fn build<'a>(
    name: &'a str,
    value: String,
    path: &'a str,
    http_only: bool,
    same_site: cookie::SameSite,
    max_age_secs: i64,
    secure: bool,
) -> cookie::Cookie<'a> {
    cookie::Cookie::build((name, value))
        .path(path)
        .http_only(http_only)
        .same_site(same_site)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
}

/// The cookies of a session, for the response to a login or refresh.
pub struct SessionCookies<'a> {
    pub access_token: &'a str,
    pub access_ttl_secs: u64,
    pub refresh_token: &'a str,
    pub refresh_ttl_secs: u64,
    pub csrf_token: &'a str,
}

/// Sets a session's cookies on `response`.
pub fn set_session(request: &HeaderMap, response: &mut HeaderMap, c: &SessionCookies<'_>) {
    let secure = !loopback_host(request);
    let access = i64::try_from(c.access_ttl_secs).unwrap_or(i64::MAX);
    let refresh = i64::try_from(c.refresh_ttl_secs).unwrap_or(i64::MAX);
    use cookie::SameSite::{Lax, Strict};
    set(
        response,
        build(
            SESSION_COOKIE,
            c.access_token.into(),
            "/v1",
            true,
            Lax,
            access,
            secure,
        ),
    );
    set(
        response,
        build(
            REFRESH_COOKIE,
            c.refresh_token.into(),
            "/v1/auth",
            true,
            Strict,
            refresh,
            secure,
        ),
    );
    set(
        response,
        build(
            CSRF_COOKIE,
            c.csrf_token.into(),
            "/",
            false,
            Lax,
            refresh,
            secure,
        ),
    );
}

/// Expires a session's cookies (logout).
pub fn clear_session(request: &HeaderMap, response: &mut HeaderMap) {
    let secure = !loopback_host(request);
    use cookie::SameSite::{Lax, Strict};
    set(
        response,
        build(SESSION_COOKIE, String::new(), "/v1", true, Lax, 0, secure),
    );
    set(
        response,
        build(
            REFRESH_COOKIE,
            String::new(),
            "/v1/auth",
            true,
            Strict,
            0,
            secure,
        ),
    );
    set(
        response,
        build(CSRF_COOKIE, String::new(), "/", false, Lax, 0, secure),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_its_sessions_only() {
        let key = csrf_key("a key");
        let (a, b) = (SessionId::new(), SessionId::new());
        let token = csrf_token(&key, a);
        assert!(csrf_valid(&key, a, &token));
        assert!(!csrf_valid(&key, b, &token), "another session's");
        assert!(
            !csrf_valid(&csrf_key("another key"), a, &token),
            "another deployment's"
        );
        assert!(!csrf_valid(&key, a, ""));
        assert!(!csrf_valid(&key, a, "not base64 !"));
    }

    #[test]
    fn loopback_hosts_get_cookies_without_secure() {
        let host = |h: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&headers)
        };
        assert!(host("localhost:8080") && host("127.0.0.1:8080") && host("[::1]:8080"));
        assert!(host("LOCALHOST"));
        assert!(!host("chat.example.com") && !host("10.0.0.5:8080") && !host("[2001:db8::1]:443"));
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn the_cookie_header_is_parsed_for_one_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; parley_session=tok; b=2"),
        );
        assert_eq!(
            cookie_value(&headers, SESSION_COOKIE).as_deref(),
            Some("tok")
        );
        assert_eq!(cookie_value(&headers, REFRESH_COOKIE), None);
    }
}
