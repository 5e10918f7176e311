//! Cookie sessions for browser apps: HttpOnly cookies, a CSRF token on
//! every change, refresh and logout through the cookies, a socket opened
//! with a ticket.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, Encoding, ServerFrame};
use testkit::{Mode, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    a_cookie_login_sets_http_only_cookies_and_changes_need_the_csrf_token,
    cookies_are_secure_off_loopback,
    a_cookie_session_refreshes_with_its_cookie_and_csrf_token,
    logout_clears_the_cookies_and_ends_the_session,
    a_cookie_page_opens_a_socket_with_a_ticket,
);

/// A browser's view of a cookie session.
struct Browser {
    session: String,
    refresh: String,
    csrf: String,
    body: Value,
}

/// The `Set-Cookie` header of cookie `name`.
fn set_cookie<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {headers:?}"))
}

fn value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn cookie_login(app: &TestApp, user: &TestUser) -> (HeaderMap, Browser) {
    let (status, headers, body) = send(
        app,
        Method::POST,
        "/v1/auth/login",
        &[],
        Some(json!({"login": user.username, "password": format!("{}-correct-horse", user.username), "session": "cookie"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let browser = Browser {
        session: value(set_cookie(&headers, "parley_session")),
        refresh: value(set_cookie(&headers, "parley_refresh")),
        csrf: body["csrf_token"].as_str().expect("csrf_token").to_owned(),
        body,
    };
    (headers, browser)
}

impl Browser {
    fn cookies(&self) -> (&'static str, String) {
        (
            "cookie",
            format!(
                "parley_session={}; parley_refresh={}; parley_csrf={}",
                self.session, self.refresh, self.csrf
            ),
        )
    }
}

async fn a_cookie_login_sets_http_only_cookies_and_changes_need_the_csrf_token(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (headers, browser) = cookie_login(&app, &alice).await;
    assert_eq!(browser.body["token_type"], "Cookie");
    assert!(
        browser.body.get("access_token").is_none() && browser.body.get("refresh_token").is_none(),
        "no token a script could read: {}",
        browser.body
    );
    let session = attributes(set_cookie(&headers, "parley_session"));
    for a in ["httponly", "samesite=lax", "path=/v1"] {
        assert!(session.contains(&a.to_owned()), "{a} in {session:?}");
    }
    assert!(
        !session.contains(&"secure".to_owned()),
        "loopback: plain HTTP works"
    );
    let refresh = attributes(set_cookie(&headers, "parley_refresh"));
    for a in ["httponly", "samesite=strict", "path=/v1/auth"] {
        assert!(refresh.contains(&a.to_owned()), "{a} in {refresh:?}");
    }
    let csrf = attributes(set_cookie(&headers, "parley_csrf"));
    assert!(!csrf.contains(&"httponly".to_owned()), "the page reads it");
    assert_eq!(value(set_cookie(&headers, "parley_csrf")), browser.csrf);

    let (status, _, me) = send(
        &app,
        Method::GET,
        "/v1/users/me",
        &[browser.cookies()],
        None,
    )
    .await;
    assert_eq!((status, &me["username"]), (StatusCode::OK, &json!("alice")));

    // A change without the token: what a forged cross-site request is.
    let (status, _, body) = send(
        &app,
        Method::POST,
        "/v1/rooms",
        &[browser.cookies()],
        Some(json!({"name": "forged"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );
    // Another session's token (another tab's login, or an attacker's own) is no good.
    let (_, other) = cookie_login(&app, &alice).await;
    let (status, _, _) = send(
        &app,
        Method::POST,
        "/v1/rooms",
        &[browser.cookies(), ("x-csrf-token", other.csrf.clone())],
        Some(json!({"name": "forged"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, room) = send(
        &app,
        Method::POST,
        "/v1/rooms",
        &[browser.cookies(), ("x-csrf-token", browser.csrf.clone())],
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let (_, list) = app.get("/v1/rooms", Some(&alice.token)).await;
    let names: Vec<&str> = list["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["mine"], "the forged requests changed nothing");

    // A bearer request needs no CSRF token: nothing ambient sends it.
    let (status, _) = app
        .post("/v1/rooms", Some(&alice.token), json!({"name": "api"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

async fn cookies_are_secure_off_loopback(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (status, headers, body) = send(
        &app,
        Method::POST,
        "/v1/auth/login",
        &[("host", "chat.example.com".to_owned())],
        Some(json!({"login": "alice", "password": "alice-correct-horse", "session": "cookie"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for name in ["parley_session", "parley_refresh", "parley_csrf"] {
        assert!(
            attributes(set_cookie(&headers, name)).contains(&"secure".to_owned()),
            "{name}: Secure"
        );
    }
    drop(alice);
    app.stop().await;
}

async fn a_cookie_session_refreshes_with_its_cookie_and_csrf_token(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (_, browser) = cookie_login(&app, &alice).await;
    let (status, _, body) = send(
        &app,
        Method::POST,
        "/v1/auth/refresh",
        &[browser.cookies()],
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );

    let (status, headers, body) = send(
        &app,
        Method::POST,
        "/v1/auth/refresh",
        &[browser.cookies(), ("x-csrf-token", browser.csrf.clone())],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Cookie");
    assert_eq!(
        body["csrf_token"],
        json!(browser.csrf),
        "same session, same token"
    );
    let renewed = Browser {
        session: value(set_cookie(&headers, "parley_session")),
        refresh: value(set_cookie(&headers, "parley_refresh")),
        csrf: browser.csrf.clone(),
        body,
    };
    assert_ne!(renewed.refresh, browser.refresh, "rotated");
    let (status, _, _) = send(
        &app,
        Method::GET,
        "/v1/users/me",
        &[renewed.cookies()],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The old refresh cookie again: theft, the session ends.
    let (status, _, _) = send(
        &app,
        Method::POST,
        "/v1/auth/refresh",
        &[browser.cookies(), ("x-csrf-token", browser.csrf.clone())],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(
        &app,
        Method::GET,
        "/v1/users/me",
        &[renewed.cookies()],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_revoked"))
    );
    app.stop().await;
}

async fn logout_clears_the_cookies_and_ends_the_session(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (_, browser) = cookie_login(&app, &alice).await;
    let (status, _, _) = send(
        &app,
        Method::POST,
        "/v1/auth/logout",
        &[browser.cookies()],
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a forged logout is refused too"
    );
    let (status, headers, _) = send(
        &app,
        Method::POST,
        "/v1/auth/logout",
        &[browser.cookies(), ("x-csrf-token", browser.csrf.clone())],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for name in ["parley_session", "parley_refresh", "parley_csrf"] {
        let cleared = set_cookie(&headers, name);
        assert!(
            value(cleared).is_empty() && attributes(cleared).contains(&"max-age=0".to_owned()),
            "{cleared}"
        );
    }
    let (status, _, body) = send(
        &app,
        Method::GET,
        "/v1/users/me",
        &[browser.cookies()],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_revoked"))
    );
    app.stop().await;
}

async fn a_cookie_page_opens_a_socket_with_a_ticket(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let (_, browser) = cookie_login(&app, &alice).await;
    let (status, _, ticket) = send(
        &app,
        Method::POST,
        "/v1/sse/tickets",
        &[browser.cookies(), ("x-csrf-token", browser.csrf.clone())],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let ticket = ticket["ticket"].as_str().expect("ticket").to_owned();

    let mut ws = WsClient::connect(app.ws_url(1), Encoding::Json).await;
    ws.send(&ClientFrame::Auth {
        id: None,
        token: ticket.clone(),
    })
    .await;
    match ws.frame().await {
        ServerFrame::Ready { user_id, .. } => assert_eq!(user_id, alice.id),
        other => panic!("expected ready, got {other:?}"),
    }
    ws.join(room).await.expect("joined");
    app.send_message(&alice, room, "hello").await;
    loop {
        if let ServerFrame::Event(event) = ws.frame().await {
            assert_eq!(event.room_id, room);
            break;
        }
    }
    // Single use.
    let mut again = WsClient::connect(app.ws_url(0), Encoding::Json).await;
    again
        .send(&ClientFrame::Auth {
            id: None,
            token: ticket,
        })
        .await;
    assert_eq!(again.closed().await, Some(4001));
    app.stop().await;
}
