//! Admin-only load-test provisioning.

use reqwest::StatusCode;
use serde_json::json;
use shared::rest::{ProvisionResponse, member_of};
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(provisioning_is_admin_only_and_creates_usable_users_and_rooms);

const ADMIN: &str = "an-admin-token-that-is-long-enough-0123456789";

async fn provisioning_is_admin_only_and_creates_usable_users_and_rooms(mode: Mode) {
    let disabled = TestApp::spawn(mode).await;
    let (status, _) = disabled
        .post(
            "/v1/admin/provision",
            Some(ADMIN),
            json!({"prefix": "lt", "users": 1}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no admin token configured: the token is nobody's, and no admin account holds it"
    );
    disabled.stop().await;

    let mut options = Options::default();
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let (status, _) = app
        .post(
            "/v1/admin/provision",
            Some(&alice.token),
            json!({"prefix": "lt", "users": 1}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a user's token is not the admin token"
    );
    let (status, _) = app
        .post(
            "/v1/admin/provision",
            None,
            json!({"prefix": "lt", "users": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"prefix": "Bad-Prefix", "users": 1}),
        json!({"prefix": "lt", "users": 0}),
        json!({"prefix": "lt", "users": 10, "rooms": 2, "room_size": 11}),
        json!({"prefix": "lt", "users": 10, "token_ttl_secs": 100000}),
    ] {
        let (status, body) = app
            .post("/v1/admin/provision", Some(ADMIN), bad.clone())
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }

    let request =
        json!({"prefix": "lt", "users": 250, "rooms": 3, "room_size": 100, "token_ttl_secs": 3600});
    let (status, body) = app
        .post("/v1/admin/provision", Some(ADMIN), request.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done: ProvisionResponse = serde_json::from_value(body).expect("a provision response");
    assert_eq!(
        (done.users.len(), done.rooms.len(), done.expires_in),
        (250, 3, 3600)
    );
    assert_eq!(
        done.rooms[0].last_seq, 100,
        "room.created and 99 member.added"
    );

    // Room 2 wraps around: users 200..249 then 0..49.
    let room = &done.rooms[2];
    let (status, members) = app
        .get(
            &format!("/v1/rooms/{}/members", room.id),
            Some(&done.users[0].access_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    let mut ids: Vec<i64> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user_id"].as_i64())
        .collect();
    ids.sort();
    let mut expected: Vec<i64> = (0..100)
        .map(|i| done.users[member_of(2, i, 100, 250) as usize].id.0)
        .collect();
    expected.sort();
    assert_eq!(ids, expected);

    // The tokens work for REST and WebSocket; the accounts have no usable password.
    let user = &done.users[120];
    let (status, me) = app.get("/v1/users/me", Some(&user.access_token)).await;
    assert_eq!(
        (status, me["username"].as_str()),
        (StatusCode::OK, Some("lt_120"))
    );
    let mut ws = testkit::WsClient::authenticated(
        app.ws_url(1),
        &user.access_token,
        shared::protocol::Encoding::Json,
    )
    .await;
    ws.join(done.rooms[1].id)
        .await
        .expect("user 120 is in room 1");
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "lt_120", "password": "!"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = app.post("/v1/admin/provision", Some(ADMIN), request).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("prefix_taken"))
    );
    app.stop().await;
}
