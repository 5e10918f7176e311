//! The audit log: security events are recorded with when, who and from
//! where; users read only their own, admins everyone's.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(
    a_users_security_events_are_theirs_newest_first_with_where_from,
    admins_read_every_event_and_page_through_them,
);

const ADMIN: &str = "an-admin-token-that-is-long-enough-0123456789";

fn kinds(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn a_users_security_events_are_theirs_newest_first_with_where_from(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    // A failed login, then one from a browser that says who it is.
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "wrong-password-here"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = reqwest::Client::new()
        .post(app.url("/v1/auth/login"))
        .header("user-agent", "AuditTest/1.0")
        .json(&json!({"login": "alice", "password": "alice-correct-horse"}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.expect("tokens");
    let second_token = second["access_token"].as_str().expect("a token").to_owned();
    let second_session = second["session_id"].as_str().expect("a session").to_owned();
    let (status, _) = app
        .delete(
            &format!("/v1/auth/sessions/{second_session}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, page) = app
        .get("/v1/users/me/security-events", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        kinds(&page),
        [
            "session_revoked",
            "login",
            "login_failed",
            "login",
            "signup"
        ],
        "{page}"
    );
    let events = page["events"].as_array().expect("events");
    assert_eq!(events[0]["detail"]["session_id"], second_session.as_str());
    assert_eq!(events[1]["detail"]["session_id"], second_session.as_str());
    assert_eq!(events[1]["user_agent"], "AuditTest/1.0");
    for event in events {
        assert_eq!(event["user_id"], alice.id.0, "{event}");
        assert_eq!(event["ip"], "127.0.0.1", "{event}");
    }
    // The revoked session's token no longer reads anything.
    let (status, _) = app
        .get("/v1/users/me/security-events", Some(&second_token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Bob sees only his own.
    let (_, page) = app
        .get("/v1/users/me/security-events", Some(&bob.token))
        .await;
    assert_eq!(kinds(&page), ["login", "signup"]);
    // Users have no admin view, and bad pages are refused.
    let (status, _) = app
        .get("/v1/admin/security-events", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "alice is no admin");
    for bad in ["limit=0", "limit=101", "before_id=0", "limit=x"] {
        let (status, body) = app
            .get(
                &format!("/v1/users/me/security-events?{bad}"),
                Some(&alice.token),
            )
            .await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{bad}: {status} {body}"
        );
    }
    app.stop().await;
}

async fn admins_read_every_event_and_page_through_them(mode: Mode) {
    let mut options = Options::default();
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    // A login naming no account: recorded without a user, with the name.
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "Nobody-Here", "password": "whatever-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, key) = app
        .post(
            "/v1/admin/api-keys",
            Some(ADMIN),
            json!({"name": "backend", "scopes": ["rooms:publish"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");

    let (status, _) = app
        .get("/v1/admin/security-events", Some(&alice.token))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a user's token is not the admin's"
    );
    let (status, page) = app.get("/v1/admin/security-events", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        kinds(&page),
        ["api_key_created", "login_failed", "login", "signup"],
        "{page}"
    );
    let events = page["events"].as_array().expect("events");
    assert_eq!(events[0]["detail"]["api_key_id"], key["id"]);
    assert_eq!(events[1]["user_id"], Value::Null);
    assert_eq!(events[1]["detail"]["login"], "nobody-here");

    // One account's, a page at a time.
    let (_, first) = app
        .get(
            &format!("/v1/admin/security-events?user_id={}&limit=1", alice.id.0),
            Some(ADMIN),
        )
        .await;
    assert_eq!(kinds(&first), ["login"]);
    let next = first["next_before_id"].as_i64().expect("another page");
    let (_, second) = app
        .get(
            &format!(
                "/v1/admin/security-events?user_id={}&limit=1&before_id={next}",
                alice.id.0
            ),
            Some(ADMIN),
        )
        .await;
    assert_eq!(kinds(&second), ["signup"]);
    let (_, last) = app
        .get(
            &format!(
                "/v1/admin/security-events?user_id={}&limit=1&before_id={}",
                alice.id.0,
                second["next_before_id"].as_i64().expect("a cursor")
            ),
            Some(ADMIN),
        )
        .await;
    assert_eq!(kinds(&last), Vec::<String>::new());
    assert_eq!(last["next_before_id"], Value::Null);
    app.stop().await;
}
