//! Which browser pages may call the api (CORS).
//!
//! Bearer clients authenticate with the `Authorization` header, which
//! nothing ambient supplies: for them CORS only decides which pages may
//! *read* answers. Cookie sessions (`auth::cookies`) are ambient, so
//! credentials mode is granted only to origins listed by name in
//! `PARLEY_CORS_ALLOW_ORIGINS`: never for `*`, never for the loopback
//! default. (A listed origin still needs the CSRF token to change anything.)
//!
//! The policy, decided once at start-up:
//! - `PARLEY_CORS_ALLOW_ORIGINS` set: exactly those origins (or any, for `*`);
//! - unset, on a loopback listener (the single node's default
//!   `127.0.0.1:8080`): pages served from a loopback origin
//!   (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`, and
//!   their `https` forms). Only programs on this machine can reach such a
//!   listener anyway, and a page on a local dev server is the first thing a
//!   new user tries;
//! - unset, on any other listener: no CORS (same-origin only), so exposing a
//!   node never silently opens it to other sites.
//!
//! Whenever CORS is on, preflights are answered (2xx) with the methods and
//! request headers the api uses, and `x-request-id` is exposed so a page can
//! quote it in a bug report. An answer to a refused (or no) origin carries
//! no CORS header at all ([`drop_ungranted`]).

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::IpAddr;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight answer. Chromium caps this at
/// two hours; ten minutes keeps a changed policy visible soon after a restart.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Which origins the api accepts, decided from the configuration and the
/// listener's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsPolicy {
    /// No CORS headers: only same-origin pages can read answers.
    SameOrigin,
    /// Pages served from this machine (see [`is_loopback_origin`]).
    Loopback,
    /// Any origin (`*`).
    Any,
    /// Exactly these origins.
    List(Vec<HeaderValue>),
}

impl CorsPolicy {
    /// The policy for `configured` origins (`PARLEY_CORS_ALLOW_ORIGINS`,
    /// already checked by [`parse_origin`]) on a listener bound to `listen`.
    pub fn new(configured: &[String], listen: IpAddr) -> CorsPolicy {
        if configured.iter().any(|o| o == "*") {
            CorsPolicy::Any
        } else if !configured.is_empty() {
            CorsPolicy::List(
                configured
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        } else if listen.is_loopback() {
            CorsPolicy::Loopback
        } else {
            CorsPolicy::SameOrigin
        }
    }

    /// The layer that applies the policy, or `None` for same-origin only.
    pub fn layer(&self) -> Option<CorsLayer> {
        // Cookies only for origins an operator named.
        let credentials = matches!(self, CorsPolicy::List(_));
        let allow = match self {
            CorsPolicy::SameOrigin => return None,
            CorsPolicy::Loopback => {
                AllowOrigin::predicate(|origin: &HeaderValue, _| is_loopback_origin(origin))
            }
            CorsPolicy::Any => AllowOrigin::any(),
            CorsPolicy::List(origins) => AllowOrigin::list(origins.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-request-id"),
                    HeaderName::from_static(crate::auth::cookies::CSRF_HEADER),
                ])
                .allow_credentials(credentials)
                .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// Removes the CORS headers from an answer that grants no origin.
/// `tower_http`'s layer lists its methods, headers and exposed headers in
/// every answer, granted or not; without `access-control-allow-origin` they
/// allow nothing, and dropping them gives a refused page (and a client that
/// sent no `Origin`) the same answer as a server without CORS.
pub async fn drop_ungranted(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}

/// Whether a request's `Origin` is a page served from this machine: an
/// `http`/`https` origin whose host is `localhost`, a `127.0.0.0/8` address
/// or `[::1]`. The opaque origin `null` (`file:`, `data:`, sandboxed pages)
/// is not: any page can produce it.
pub fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(uri) = origin.to_str().unwrap_or("").parse::<Uri>() else {
        return false;
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return false;
    }
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks one configured origin at start-up: `*`, or `scheme://host[:port]`
/// exactly as browsers send it in `Origin` (no path, no trailing slash),
/// since anything else would never match and fail silently.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(s.to_owned());
    }
    let hint =
        "expected `*` or an origin like `https://app.example.com` or `http://localhost:3000`";
    let uri = s
        .parse::<Uri>()
        .map_err(|e| format!("`{s}` is not an origin ({e}); {hint}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("`{s}` is not an origin; {hint}"));
    }
    if s.ends_with('/') || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "`{s}` has a path; browsers send the origin without one (no trailing slash); {hint}"
        ));
    }
    HeaderValue::from_str(s).map_err(|_| format!("`{s}` is not a valid header value; {hint}"))?;
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(origin: &str) -> bool {
        is_loopback_origin(&HeaderValue::from_str(origin).unwrap())
    }

    #[test]
    fn pages_served_from_this_machine_are_loopback_origins() {
        for origin in [
            "http://localhost:8000",
            "http://LOCALHOST:3000",
            "http://localhost",
            "https://localhost:8443",
            "http://127.0.0.1:8000",
            "http://127.1.2.3:80",
            "http://[::1]:8000",
        ] {
            assert!(loopback(origin), "{origin}");
        }
    }

    #[test]
    fn other_and_opaque_origins_are_not_loopback_origins() {
        for origin in [
            "null",
            "http://example.com",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
            "http://10.0.0.1:8000",
            "http://[::2]:8000",
            "file://localhost",
            "chrome-extension://abc",
            "",
        ] {
            assert!(!loopback(origin), "{origin}");
        }
    }

    #[test]
    fn the_default_depends_on_the_listener_and_configuration_wins() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(CorsPolicy::new(&[], lo), CorsPolicy::Loopback);
        assert_eq!(CorsPolicy::new(&[], lo6), CorsPolicy::Loopback);
        assert_eq!(CorsPolicy::new(&[], any), CorsPolicy::SameOrigin);
        assert!(CorsPolicy::new(&[], any).layer().is_none());
        assert_eq!(CorsPolicy::new(&["*".into()], any), CorsPolicy::Any);
        assert_eq!(
            CorsPolicy::new(&["https://app.example.com".into()], lo),
            CorsPolicy::List(vec![HeaderValue::from_static("https://app.example.com")])
        );
    }

    #[test]
    fn configured_origins_are_checked_at_start_up() {
        assert_eq!(parse_origin("*").unwrap(), "*");
        assert_eq!(
            parse_origin(" https://app.example.com ").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            parse_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/chat",
            "app.example.com",
            "ftp://app.example.com",
            "",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
