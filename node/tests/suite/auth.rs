//! Accounts and sessions.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(
    signup_validates_every_field_and_never_returns_the_hash,
    a_taken_username_is_a_conflict_and_a_taken_address_is_not_revealed,
    login_accepts_username_or_email_and_fails_the_same_way_for_unknown_users,
    refresh_rotates_and_a_replayed_refresh_token_revokes_the_session,
    logout_and_revocation_end_a_session_everywhere,
    repeated_failed_logins_lock_the_account,
    failures_through_username_and_email_share_one_budget,
    failures_on_an_unknown_identifier_are_counted_for_that_identifier,
    the_auth_endpoints_are_rate_limited_per_ip,
    lockouts_grow_with_each_repeat,
    an_ips_login_budget_holds_in_either_mode,
);

/// A login on api node `node`: its status, `Retry-After` and body.
async fn login_on(
    app: &TestApp,
    node: usize,
    login: &str,
    password: &str,
) -> (StatusCode, Option<u64>, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", app.api_urls[node]))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .expect("login");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (
        status,
        retry_after,
        response.json().await.unwrap_or_default(),
    )
}

/// Guessing on several api nodes does not multiply the budget: failures
/// are counted in Redis, for the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_on_two_api_nodes_share_one_budget() {
    let mut options = Options {
        api_nodes: 2,
        ..Options::default()
    };
    options.policy.login_failures_per_15min = 4;
    let app = TestApp::spawn_with(Mode::Cluster, options).await;
    let alice = app.user("alice").await;
    for i in 0..4 {
        let (status, _, body) = login_on(&app, i % 2, "alice", "guess guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // The fifth attempt, right password or not, on either node: locked out
    // for the first lockout (15 minutes).
    let (status, retry_after, body) = login_on(&app, 1, "alice", "alice-correct-horse").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert_eq!(retry_after, Some(900));
    let (status, _, _) = login_on(&app, 0, "alice", "alice-correct-horse").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The owner sees why in the audit log.
    let (_, page) = app
        .get("/v1/users/me/security-events?limit=3", Some(&alice.token))
        .await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["login_throttled", "login_locked_out", "login_failed"]
    );
    app.stop().await;
}

async fn signup_validates_every_field_and_never_returns_the_hash(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let good =
        json!({"username": "alice_01", "email": "Alice@Example.com", "password": "long enough pw"});
    let (status, body) = app.post("/v1/auth/signup", None, good).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["email"], "alice@example.com",
        "emails are stored lowercase"
    );
    assert!(body.get("password_hash").is_none() && !body.to_string().contains("argon2"));

    let cases = [
        (
            json!({"username": "al", "email": "a@example.com", "password": "long enough pw"}),
            "username",
        ),
        (
            json!({"username": "Alice", "email": "a@example.com", "password": "long enough pw"}),
            "username",
        ),
        (
            json!({"username": "a".repeat(33), "email": "a@example.com", "password": "long enough pw"}),
            "username",
        ),
        (
            json!({"username": "bob", "email": "not-an-email", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"username": "bob", "email": "bob@", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"username": "bob", "email": "bob@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"username": "bob", "email": "bob@example.com", "password": "x".repeat(1025)}),
            "password",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/v1/auth/signup", None, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer["error"]["code"], "validation_failed");
        assert_eq!(answer["error"]["field"], field, "{body}");
    }
    let (status, answer) = app
        .post("/v1/auth/signup", None, json!({"username": "bob"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["error"]["code"], "invalid_body");
    app.stop().await;
}

async fn a_taken_username_is_a_conflict_and_a_taken_address_is_not_revealed(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    app.verify_email(&alice).await;
    let signup = |username: &str, email: &str| {
        app.post(
            "/v1/auth/signup",
            None,
            json!({"username": username, "email": email, "password": "long enough pw"}),
        )
    };
    let (status, body) = signup("alice", "other@example.com").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("username_taken"))
    );
    let (status, body) = signup("alice", "alice@example.com").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("username_taken")),
        "with both taken, the username is reported"
    );

    // Alice's (verified) address and an address nobody has answer alike.
    let (taken_status, taken) = signup("mallory", "ALICE@example.com").await;
    let (fresh_status, fresh) = signup("trent", "trent@example.com").await;
    assert_eq!(taken_status, StatusCode::CREATED, "{taken}");
    assert_eq!(fresh_status, StatusCode::CREATED, "{fresh}");
    let keys = |v: &Value| {
        v.as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&taken), keys(&fresh));
    assert_eq!(taken["email"], "alice@example.com");
    assert_eq!(taken["email_verified"], false);
    assert_eq!(fresh["email_verified"], false);

    // The address still logs in alice only; mallory exists, by her name.
    let by_address = app.login("alice@example.com", "alice-correct-horse").await;
    assert_eq!(by_address.id, alice.id);
    let (status, body) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice@example.com", "password": "long enough pw"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let mallory = app.login("mallory", "long enough pw").await;
    let (status, me) = app.get("/v1/users/me", Some(&mallory.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["email_verified"], false);
    // An unverified address logs nobody in, taken or not: otherwise a
    // login would tell whether someone else had verified it.
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "trent@example.com", "password": "long enough pw"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn login_accepts_username_or_email_and_fails_the_same_way_for_unknown_users(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    app.verify_email(&alice).await;
    let by_email = app.login("ALICE@example.com", "alice-correct-horse").await;
    assert_eq!(by_email.id, alice.id);
    assert_ne!(
        by_email.session_id, alice.session_id,
        "each login is a session"
    );

    let (wrong_status, wrong) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "wrong password"}),
        )
        .await;
    let (unknown_status, unknown) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "nobody", "password": "wrong password"}),
        )
        .await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong, unknown,
        "an unknown account and a wrong password look the same"
    );
    assert_eq!(unknown_status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong["error"]["code"], "invalid_credentials");

    let (status, me) = app.get("/v1/users/me", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "alice");
    app.stop().await;
}

async fn refresh_rotates_and_a_replayed_refresh_token_revokes_the_session(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (status, first) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_ne!(
        first["refresh_token"],
        alice.refresh_token.as_str(),
        "a new refresh token each time"
    );
    assert_eq!(first["session_id"], alice.session_id.to_string());
    let (status, _) = app
        .get("/v1/users/me", first["access_token"].as_str())
        .await;
    assert_eq!(status, StatusCode::OK);

    // The first token again: a replay. The session dies, with every token of it.
    let (status, body) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_refresh_token"))
    );
    let (status, _) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the rotated token died with the session"
    );
    let (status, body) = app
        .get("/v1/users/me", first["access_token"].as_str())
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_revoked"))
    );

    for garbage in ["", "x.y", "00000000-0000-0000-0000-000000000000.AAAA"] {
        let (status, _) = app
            .post("/v1/auth/refresh", None, json!({"refresh_token": garbage}))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{garbage:?}");
    }
    app.stop().await;
}

async fn logout_and_revocation_end_a_session_everywhere(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let phone = app.login("alice", "alice-correct-horse").await;
    let (status, list) = app.get("/v1/auth/sessions", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    // Someone else cannot revoke alice's session.
    let mallory = app.user("mallory").await;
    let (status, body) = app
        .delete(
            &format!("/v1/auth/sessions/{}", phone.session_id),
            Some(&mallory.token),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("session_not_found"))
    );

    let (status, _) = app
        .delete(
            &format!("/v1/auth/sessions/{}", phone.session_id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get("/v1/users/me", Some(&phone.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": phone.refresh_token}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = app
        .post("/v1/auth/logout", Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get("/v1/rooms", Some(&alice.token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_revoked"))
    );
    app.stop().await;
}

async fn repeated_failed_logins_lock_the_account(mode: Mode) {
    let mut options = Options::default();
    options.policy.login_failures_per_15min = 3;
    let app = TestApp::spawn_with(mode, options).await;
    app.user("alice").await;
    for _ in 0..3 {
        let (status, _) = app
            .post(
                "/v1/auth/login",
                None,
                json!({"login": "alice", "password": "guess guess"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "alice", "password": "alice-correct-horse"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    app.stop().await;
}

async fn failures_through_username_and_email_share_one_budget(mode: Mode) {
    let mut options = Options::default();
    options.policy.login_failures_per_15min = 4;
    let app = TestApp::spawn_with(mode, options).await;
    for name in ["alice", "bob"] {
        let user = app.user(name).await;
        app.verify_email(&user).await;
    }
    let login = |login: &'static str, password: &'static str| {
        app.post(
            "/v1/auth/login",
            None,
            json!({"login": login, "password": password}),
        )
    };
    for name in ["alice", "ALICE@EXAMPLE.COM", " Alice ", "alice@example.com"] {
        let (status, body) = login(name, "guess guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
    }
    for name in ["alice", "ALICE@example.com"] {
        let (status, body) = login(name, "alice-correct-horse").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
            "four failures under any of its names spend the account's budget ({name})"
        );
        assert!(body.get("access_token").is_none());
    }
    let (status, _) = login("BOB@example.com", "bob-correct-horse").await;
    assert_eq!(status, StatusCode::OK, "another account is not affected");
    app.stop().await;
}

async fn failures_on_an_unknown_identifier_are_counted_for_that_identifier(mode: Mode) {
    let mut options = Options::default();
    options.policy.login_failures_per_15min = 2;
    let app = TestApp::spawn_with(mode, options).await;
    app.user("alice").await;
    let login = |login: &'static str, password: &'static str| {
        app.post(
            "/v1/auth/login",
            None,
            json!({"login": login, "password": password}),
        )
    };
    for name in ["nobody", "NOBODY"] {
        let (status, _) = login(name, "guess guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    let (status, body) = login("nobody", "guess guess").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "an unknown identifier is limited like an account"
    );
    let (status, _) = login("nobody2", "guess guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its own budget");
    let (status, _) = login("alice", "alice-correct-horse").await;
    assert_eq!(status, StatusCode::OK, "accounts are not affected");
    app.stop().await;
}

async fn the_auth_endpoints_are_rate_limited_per_ip(mode: Mode) {
    let mut options = Options::default();
    options.policy.auth_per_minute = 5;
    let app = TestApp::spawn_with(mode, options).await;
    let mut statuses = Vec::new();
    for n in 0..8 {
        let (status, body) = app
            .post(
                "/v1/auth/login",
                None,
                json!({"login": format!("nobody{n}"), "password": "whatever pw"}),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses[..5],
        [StatusCode::UNAUTHORIZED; 5],
        "a burst of five is allowed"
    );
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 3]);
    // Other endpoints are not affected.
    let (status, _) = app.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

/// Each lockout lasts twice as long as the one before, up to the longest.
async fn lockouts_grow_with_each_repeat(mode: Mode) {
    let mut options = Options::default();
    options.policy.login_failures_per_15min = 2;
    options.policy.login_lockout = std::time::Duration::from_secs(1);
    options.policy.login_lockout_max = std::time::Duration::from_secs(60);
    let app = TestApp::spawn_with(mode, options).await;
    app.user("alice").await;
    for expected in [1, 2, 4] {
        for _ in 0..2 {
            let (status, _, body) = login_on(&app, 0, "alice", "guess guess").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        }
        let (status, retry_after, _) = login_on(&app, 0, "alice", "guess guess").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after, Some(expected), "lockout {expected} s");
        // Waiting the lockout out is the behaviour under test.
        tokio::time::sleep(std::time::Duration::from_millis(expected * 1000 + 100)).await;
    }
    let (status, _, body) = login_on(&app, 0, "alice", "alice-correct-horse").await;
    assert_eq!(status, StatusCode::OK, "after the lockout: {body}");
    app.stop().await;
}

/// A signup on api node `node`: its status and body.
async fn signup_on(app: &TestApp, node: usize, name: &str) -> (StatusCode, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/auth/signup", app.api_urls[node]))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "long enough pw"}))
        .send()
        .await
        .expect("signup");
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

/// One client IP's logins and signups are counted on all api nodes
/// together (Redis), whichever accounts it tries: a valid account does not
/// refill the budget, and neither does spreading requests over nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ips_logins_and_signups_are_counted_on_every_api_node_together() {
    let mut options = Options {
        api_nodes: 2,
        ..Options::default()
    };
    options.policy.logins_per_ip_per_15min = 6;
    options.policy.signups_per_ip_per_hour = 3;
    let app = TestApp::spawn_with(Mode::Cluster, options).await;

    for (i, name) in ["ip_a", "ip_b", "ip_c"].iter().enumerate() {
        let (status, body) = signup_on(&app, i % 2, name).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = signup_on(&app, 1, "ip_d").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "the fourth signup from this IP, on the other node"
    );

    // Six login attempts, right and wrong, on three accounts and two nodes.
    for i in 0..6 {
        let name = ["ip_a", "ip_b", "ip_c"][i % 3];
        let password = if i % 2 == 0 {
            "long enough pw"
        } else {
            "wrong guess"
        };
        let (status, _, body) = login_on(&app, i % 2, name, password).await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "attempt {i}: {body}");
    }
    let (status, retry_after, _) = login_on(&app, 0, "ip_a", "long enough pw").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password"
    );
    assert!(retry_after.is_some_and(|s| s > 0 && s <= 900));
    let (status, _, _) = login_on(&app, 1, "ip_c", "long enough pw").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

/// An IP's login budget: in Redis in a cluster, in process on a single node.
async fn an_ips_login_budget_holds_in_either_mode(mode: Mode) {
    let mut options = Options::default();
    options.policy.logins_per_ip_per_15min = 3;
    let app = TestApp::spawn_with(mode, options).await;
    app.user("alice").await;
    // app.user logged in once already.
    for _ in 0..2 {
        let (status, _, _) = login_on(&app, 0, "alice", "alice-correct-horse").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, body) = login_on(&app, 0, "alice", "alice-correct-horse").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    app.stop().await;
}
