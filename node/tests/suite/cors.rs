//! Which browser pages may call the api (CORS): pages from loopback origins
//! when the api listens on loopback and nothing is configured, exactly the
//! configured origins otherwise, nobody else; a refused page gets no CORS
//! header at all.

use reqwest::header::{HeaderMap, HeaderName};
use reqwest::{Method, StatusCode};
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(
    pages_from_loopback_origins_may_call_a_loopback_listener,
    other_origins_are_refused_on_a_loopback_listener,
    configured_origins_replace_the_loopback_default,
    a_listener_on_every_interface_is_same_origin_only_by_default,
);

/// Asks, as a browser does before a cross-origin POST with a token and a
/// JSON body, whether `origin` may make it.
async fn preflight(app: &TestApp, origin: &str) -> (StatusCode, HeaderMap) {
    let response = reqwest::Client::new()
        .request(Method::OPTIONS, app.url("/v1/rooms"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("sending a preflight");
    (response.status(), response.headers().clone())
}

/// The headers of a real request from a page on `origin`.
async fn get_from(app: &TestApp, origin: &str, token: &str) -> HeaderMap {
    let response = reqwest::Client::new()
        .get(app.url("/v1/rooms"))
        .header("origin", origin)
        .bearer_auth(token)
        .send()
        .await
        .expect("sending a request");
    assert_eq!(response.status(), StatusCode::OK);
    response.headers().clone()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The comma-separated, case-insensitive items of a header.
fn items(headers: &HeaderMap, name: &str) -> Vec<String> {
    header(headers, name)
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `credentials`: whether the origin may send cookies (only origins an
/// operator listed by name).
fn assert_allowed(origin: &str, (status, headers): &(StatusCode, HeaderMap), credentials: bool) {
    assert!(status.is_success(), "preflight from {origin}: {status}");
    assert_eq!(header(headers, "access-control-allow-origin"), origin);
    let methods = items(headers, "access-control-allow-methods");
    for method in ["get", "post", "delete"] {
        assert!(
            methods.iter().any(|m| m == method),
            "{method} in {methods:?}"
        );
    }
    let allowed = items(headers, "access-control-allow-headers");
    for name in ["authorization", "content-type"] {
        assert!(allowed.iter().any(|h| h == name), "{name} in {allowed:?}");
    }
    // Credentials mode lets a page act with cookies: only for named origins.
    if credentials {
        assert_eq!(header(headers, "access-control-allow-credentials"), "true");
    } else {
        assert!(headers.get("access-control-allow-credentials").is_none());
    }
}

/// No `access-control-*` header at all: what a refused page gets, the same
/// as from a server without CORS.
fn assert_no_cors(headers: &HeaderMap) {
    let cors: Vec<&HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "unexpected CORS headers: {cors:?}");
}

async fn pages_from_loopback_origins_may_call_a_loopback_listener(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;

    for origin in [
        "http://localhost:8000",
        "http://127.0.0.1:5173",
        "http://[::1]:3000",
    ] {
        assert_allowed(origin, &preflight(&app, origin).await, false);

        let headers = get_from(&app, origin, &alice.token).await;
        assert_eq!(header(&headers, "access-control-allow-origin"), origin);
        assert!(
            items(&headers, "access-control-expose-headers").contains(&"x-request-id".to_owned()),
            "x-request-id exposed to the page: {headers:?}"
        );
        assert!(!header(&headers, "x-request-id").is_empty());
    }
    app.stop().await;
}

async fn other_origins_are_refused_on_a_loopback_listener(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;

    // `null` is what file:// and data: pages send: any page can produce it.
    for origin in [
        "https://evil.example",
        "http://localhost.evil.example",
        "null",
    ] {
        let (_, headers) = preflight(&app, origin).await;
        assert_no_cors(&headers);
        assert_no_cors(&get_from(&app, origin, &alice.token).await);
    }
    // Nor does a client that is not a browser (no Origin at all).
    let response = reqwest::Client::new()
        .get(app.url("/v1/rooms"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("sending a request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_cors(response.headers());
    app.stop().await;
}

async fn configured_origins_replace_the_loopback_default(mode: Mode) {
    let mut options = Options::default();
    options.policy.cors_allow_origins = vec!["https://app.example.com".into()];
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;

    let origin = "https://app.example.com";
    assert_allowed(origin, &preflight(&app, origin).await, true);
    let headers = get_from(&app, origin, &alice.token).await;
    assert_eq!(header(&headers, "access-control-allow-origin"), origin);
    assert!(items(&headers, "access-control-expose-headers").contains(&"x-request-id".to_owned()));

    for origin in ["http://localhost:8000", "https://other.example.com"] {
        let (_, headers) = preflight(&app, origin).await;
        assert_no_cors(&headers);
        assert_no_cors(&get_from(&app, origin, &alice.token).await);
    }
    app.stop().await;
}

async fn a_listener_on_every_interface_is_same_origin_only_by_default(mode: Mode) {
    let options = Options {
        listen_ip: "0.0.0.0".parse().expect("an address"),
        ..Options::default()
    };
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;

    let (status, headers) = preflight(&app, "http://localhost:8000").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_no_cors(&headers);
    assert_no_cors(&get_from(&app, "http://localhost:8000", &alice.token).await);
    app.stop().await;
}
