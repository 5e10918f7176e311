//! Admin accounts (made with the command line), the user list, suspension,
//! and an owner deleting their account: what each must cut off, at once,
//! on every node.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::protocol::{ServerFrame, close};
use std::process::Output;
use testkit::{Mode, TestApp, TestUser, both_modes};

both_modes!(
    the_first_admin_is_made_on_the_command_line,
    admins_list_and_search_accounts,
    a_suspended_account_is_cut_off_at_once_and_can_come_back,
    a_deleted_account_is_gone_from_every_read_path,
    deleting_needs_the_password_and_the_second_factor,
    changing_the_password_ends_the_other_sessions_only,
);

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

fn password(user: &TestUser) -> String {
    format!("{}-correct-horse", user.username)
}

/// Runs the real `parley admin ...` against the test's database.
async fn parley_admin(app: &TestApp, args: &[&str]) -> Output {
    let data_dir = std::env::temp_dir().join(format!("parley-cli-{}", uuid::Uuid::new_v4()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("admin")
        .args(args)
        .env("PARLEY_DATABASE_URL", app.database_url())
        .env("PARLEY_DATA_DIR", &data_dir)
        .env("PARLEY_LOG", "warn")
        .output()
        .await
        .expect("running parley admin");
    let _ = std::fs::remove_dir_all(&data_dir);
    output
}

/// `name` signed up and made an admin with the command line.
async fn admin(app: &TestApp, name: &str) -> TestUser {
    let user = app.user(name).await;
    let out = parley_admin(app, &["grant", name]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    user
}

async fn audit_kinds(app: &TestApp, admin: &TestUser, user: &TestUser) -> Vec<String> {
    let (status, body) = app
        .get(
            &format!("/v1/admin/security-events?user_id={}", user.id),
            Some(&admin.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

async fn the_first_admin_is_made_on_the_command_line(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let (status, body) = app.get("/v1/admin/users", Some(&alice.token)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "no account is an admin by default"
    );
    let (_, me) = app.get("/v1/users/me", Some(&alice.token)).await;
    assert_eq!(me["role"], "user");

    let out = parley_admin(&app, &["grant", "nobody"]).await;
    assert!(!out.status.success(), "an unknown account is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account named"));

    let out = parley_admin(&app, &["grant", "alice"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
    // The role is read on every admin request: the same token now works.
    let (status, body) = app.get("/v1/admin/users", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["users"][0]["role"], "admin");
    let (_, me) = app.get("/v1/users/me", Some(&alice.token)).await;
    assert_eq!(me["role"], "admin");
    let out = parley_admin(&app, &["list"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
    let kinds = audit_kinds(&app, &alice, &alice).await;
    assert!(
        kinds.contains(&"account_role_changed".to_owned()),
        "{kinds:?}"
    );

    // An admin names other admins, but cannot change their own role.
    let bob = app.user("bob").await;
    let role = |user: &TestUser| format!("/v1/admin/users/{}/role", user.id);
    let (status, body) = app
        .request(
            Method::PUT,
            &role(&bob),
            Some(&alice.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        (status, body["role"].as_str()),
        (StatusCode::OK, Some("admin")),
        "{body}"
    );
    let (status, body) = app
        .request(
            Method::PUT,
            &role(&alice),
            Some(&alice.token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("own_account"))
    );
    let (status, _) = app
        .request(
            Method::PUT,
            &role(&alice),
            Some(&bob.token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.get("/v1/admin/users", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a revoked role ends at once");
    let out = parley_admin(&app, &["revoke", "bob"]).await;
    assert!(out.status.success());
    let (status, _) = app.get("/v1/admin/users", Some(&bob.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

async fn admins_list_and_search_accounts(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let root = admin(&app, "root").await;
    for name in ["anna", "annabel", "bert", "a_b"] {
        app.user(name).await;
    }
    let names = |body: &Value| -> Vec<String> {
        body["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|u| u["username"].as_str().expect("username").to_owned())
            .collect()
    };
    let (status, body) = app.get("/v1/admin/users?q=ANN", Some(&root.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        names(&body),
        ["anna", "annabel"],
        "a case-insensitive prefix"
    );
    assert_eq!(body["users"][0]["email"], "anna@example.com");
    let (_, body) = app
        .get("/v1/admin/users?q=bert%40example", Some(&root.token))
        .await;
    assert_eq!(names(&body), ["bert"], "by email too");
    let (_, body) = app.get("/v1/admin/users?q=a_", Some(&root.token)).await;
    assert_eq!(names(&body), ["a_b"], "`_` is a character, not a wildcard");
    let (_, body) = app.get("/v1/admin/users?q=%25", Some(&root.token)).await;
    assert_eq!(names(&body), Vec::<String>::new(), "`%` is a character too");

    // Pages in id order, each naming where the next starts.
    let (_, first) = app.get("/v1/admin/users?limit=2", Some(&root.token)).await;
    assert_eq!(names(&first), ["root", "anna"]);
    let after = first["next_after_id"].as_i64().expect("a next page");
    let (_, rest) = app
        .get(
            &format!("/v1/admin/users?limit=10&after_id={after}"),
            Some(&root.token),
        )
        .await;
    assert_eq!(names(&rest), ["annabel", "bert", "a_b"]);
    assert!(rest["next_after_id"].is_null());
    let (_, admins) = app
        .get("/v1/admin/users?role=admin", Some(&root.token))
        .await;
    assert_eq!(names(&admins), ["root"]);

    for bad in ["limit=0", "limit=101", "after_id=-1", "status=gone"] {
        let (status, body) = app
            .get(&format!("/v1/admin/users?{bad}"), Some(&root.token))
            .await;
        assert!(
            matches!(code(&body), Some("validation_failed" | "invalid_query")),
            "{bad}: {status} {body}"
        );
    }
    let (status, body) = app.get("/v1/admin/users/999999", Some(&root.token)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    let (status, _) = app.get("/v1/admin/users", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn a_suspended_account_is_cut_off_at_once_and_can_come_back(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let root = admin(&app, "root").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&bob, "bobs").await;
    // On another gateway than the api's first (in a cluster).
    let mut socket = app.ws(1, &bob).await;
    socket.join(room).await.expect("joined");

    let suspend = format!("/v1/admin/users/{}/suspend", bob.id);
    let (status, body) = app
        .post(&suspend, Some(&root.token), json!({"reason": "spam"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let suspended_at = body["suspended_at"].clone();
    assert!(suspended_at.is_string(), "{body}");
    assert_eq!(socket.closed().await, Some(close::SESSION_REVOKED));
    app.assert_session_ended(&bob).await;
    // Only the owner of the password learns of the suspension.
    let login = |password: String| {
        app.post(
            "/v1/auth/login",
            None,
            json!({"login": "bob", "password": password}),
        )
    };
    let (status, body) = login(password(&bob)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("account_suspended"))
    );
    let (status, body) = login("not-bobs-password".into()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let (status, again) = app.post(&suspend, Some(&root.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "suspending twice changes nothing");
    assert_eq!(
        again["suspended_at"], suspended_at,
        "the first suspension stands"
    );

    let (status, body) = app
        .post(
            &format!("/v1/admin/users/{}/suspend", root.id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("own_account"))
    );
    let (status, _) = app
        .post(
            &format!("/v1/admin/users/{}/suspend", root.id),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "bob's token is dead");

    let (status, body) = app
        .post(
            &format!("/v1/admin/users/{}/unsuspend", bob.id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["suspended_at"].is_null());
    let back = app.login("bob", &password(&bob)).await;
    let mut socket = app.ws(2, &back).await;
    socket.join(room).await.expect("joined again");
    let kinds = audit_kinds(&app, &root, &bob).await;
    for kind in [
        "account_suspended",
        "login_refused_suspended",
        "account_unsuspended",
    ] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} in {kinds:?}");
    }
    app.stop().await;
}

async fn a_deleted_account_is_gone_from_every_read_path(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let root = admin(&app, "root").await;
    let (carol, dave) = (app.user("carol").await, app.user("dave").await);
    let group = app.create_room(&carol, "carols").await;
    app.add_member(&carol, group, &dave).await;
    let solo = app.create_room(&carol, "alone").await;
    let (status, direct) = app
        .post(
            "/v1/rooms/direct",
            Some(&dave.token),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{direct}");
    let direct = shared::RoomId(direct["id"].as_i64().expect("id"));
    let said = app.send_message(&carol, group, "remember me").await;
    let (status, body) =
        crate::profiles::patch_profile(&app, &carol, json!({"display_name": "Carol C."})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        crate::profiles::put_avatar(&app, &carol, crate::profiles::png(64, 64, false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.stored_keys("avatars").await.len(), 1);
    let (status, _) = app
        .get(
            &format!("/v1/users/{}/profile", carol.id),
            Some(&dave.token),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "dave sees her profile while they share a room"
    );
    let mut carols_socket = app.ws(1, &carol).await;
    carols_socket.join(group).await.expect("joined");
    let mut daves_socket = app.ws(2, &dave).await;
    daves_socket.join(group).await.expect("joined");

    let delete = |body: Value| {
        app.request(
            Method::DELETE,
            "/v1/users/me",
            Some(&carol.token),
            Some(body),
        )
    };
    let (status, body) = delete(json!({"password": "wrong-password-1"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("wrong_password"))
    );
    let (status, body) = delete(json!({"password": password(&carol)})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    assert_eq!(carols_socket.closed().await, Some(close::SESSION_REVOKED));
    // Dave sees the group pass to him, then carol leave it.
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        if let ServerFrame::Event(event) = daves_socket.frame().await {
            let json = serde_json::to_value(&event).expect("json");
            kinds.push((
                json["kind"].as_str().unwrap_or("").to_owned(),
                json["user_id"].clone(),
            ));
        }
    }
    assert_eq!(
        kinds,
        [
            ("room.owner_changed".to_owned(), json!(dave.id)),
            ("member.removed".to_owned(), json!(carol.id)),
        ]
    );

    app.assert_session_ended(&carol).await;
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "carol", "password": password(&carol)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "carol@example.com", "password": password(&carol)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.get("/v1/users?username=carol", Some(&dave.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the name finds nobody");
    for what in ["profile", "avatar"] {
        let (status, body) = app
            .get(&format!("/v1/users/{}/{what}", carol.id), Some(&dave.token))
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, Some("user_not_found")),
            "her {what}"
        );
    }
    assert_eq!(
        app.stored_keys("avatars").await,
        Vec::<String>::new(),
        "the avatar's file is gone"
    );
    let (status, _) = app
        .get(
            &format!("/v1/users?username=deleted_{}", carol.id),
            Some(&dave.token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor does the anonymous one");
    for room in [group, direct] {
        let (status, body) = app
            .get(&format!("/v1/rooms/{room}/members"), Some(&dave.token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<i64> = body["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["user_id"].as_i64())
            .collect();
        assert_eq!(ids, [dave.id.0], "room {room}: {body}");
    }
    let (_, body) = app
        .get(&format!("/v1/rooms/{group}/members"), Some(&dave.token))
        .await;
    assert_eq!(body["members"][0]["role"], "owner", "{body}");
    // Her messages stay, from her id, which resolves to nobody.
    let (_, history) = app
        .get(&format!("/v1/rooms/{group}/messages"), Some(&dave.token))
        .await;
    let kept = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["seq"] == said.seq)
        .expect("the message is kept");
    assert_eq!(
        (kept["sender_id"].clone(), kept["body"].clone()),
        (json!(carol.id), json!("remember me"))
    );

    // The admin sees a tombstone: no name, no address, no audit trail
    // but the deletion itself.
    let (_, view) = app
        .get(&format!("/v1/admin/users/{}", carol.id), Some(&root.token))
        .await;
    assert_eq!(view["username"], format!("deleted_{}", carol.id));
    assert!(
        view["email"].is_null() && view["deleted_at"].is_string(),
        "{view}"
    );
    let (_, trail) = app
        .get(
            &format!("/v1/admin/security-events?user_id={}", carol.id),
            Some(&root.token),
        )
        .await;
    assert_eq!(trail["events"].as_array().map(Vec::len), Some(1), "{trail}");
    let deletion = &trail["events"][0];
    assert_eq!(deletion["kind"], "account_deleted");
    assert!(deletion["ip"].is_null() && deletion["user_agent"].is_null());
    // The group passed on, the room only she was in went with her, and
    // she left the direct room.
    assert_eq!(deletion["detail"]["rooms_left"], 3, "{deletion}");
    let (status, _) = app
        .get(&format!("/v1/rooms/{solo}"), Some(&dave.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/v1/admin/users?q=carol", Some(&root.token)).await;
    assert_eq!(
        list["users"],
        json!([]),
        "a search finds no deleted account"
    );
    let (_, list) = app
        .get("/v1/admin/users?status=deleted", Some(&root.token))
        .await;
    assert_eq!(list["users"][0]["id"], json!(carol.id));

    // The name is held; the address is free at once.
    let (status, body) = app
        .post("/v1/auth/signup", None, json!({"username": "carol", "email": "new@example.com", "password": "a-long-new-password"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("username_taken"))
    );
    let (status, body) = app
        .post("/v1/auth/signup", None, json!({"username": "carol2", "email": "carol@example.com", "password": "a-long-new-password"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post("/v1/auth/signup", None, json!({"username": "deleted_1", "email": "x@example.com", "password": "a-long-new-password"}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
    app.stop().await;
}

async fn deleting_needs_the_password_and_the_second_factor(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let erin = app.user("erin").await;
    let (secret, _) = crate::totp::enable(&app, &erin).await;
    let delete = |body: Value| {
        app.request(
            Method::DELETE,
            "/v1/users/me",
            Some(&erin.token),
            Some(body),
        )
    };
    let (status, body) = delete(json!({"password": password(&erin)})).await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_two_factor_code")
        ),
        "the password alone is not enough"
    );
    let valid: Vec<String> = [-30, 0, 30]
        .iter()
        .map(|offset| crate::totp::app_code(&secret, *offset))
        .collect();
    let wrong = ["000000", "111111", "222222", "333333"]
        .into_iter()
        .find(|c| !valid.iter().any(|v| v == c))
        .expect("a code outside the window");
    let (status, body) = delete(json!({"password": password(&erin), "code": wrong})).await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_two_factor_code")
        )
    );
    let (status, body) =
        delete(json!({"password": password(&erin), "code": crate::totp::app_code(&secret, 30)}))
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = app.get("/v1/users/me", Some(&erin.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn changing_the_password_ends_the_other_sessions_only(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let fay = app.user("fay").await;
    let phone = app.login("fay", &password(&fay)).await;
    let mut phones_socket = app.ws(1, &phone).await;
    let mut own_socket = app.ws(2, &fay).await;
    let room = app.create_room(&fay, "notes").await;
    own_socket.join(room).await.expect("joined");
    let change = |current: &str, new: &str| {
        app.request(
            Method::PUT,
            "/v1/users/me/password",
            Some(&fay.token),
            Some(json!({"current_password": current, "new_password": new})),
        )
    };
    let (status, body) = change("not-the-password", "a-new-long-password").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("wrong_password"))
    );
    let (status, body) = change(&password(&fay), "short").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("new_password")),
        "{body}"
    );
    let (status, body) = change(&password(&fay), &password(&fay)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = change(&password(&fay), "a-new-long-password").await;
    assert_eq!(
        (status, body["sessions_revoked"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    // The other device is signed out everywhere; this one carries on.
    assert_eq!(phones_socket.closed().await, Some(close::SESSION_REVOKED));
    app.assert_session_ended(&phone).await;
    let (status, _) = app.get("/v1/users/me", Some(&fay.token)).await;
    assert_eq!(status, StatusCode::OK);
    let posted = app.send_message(&fay, room, "still here").await;
    loop {
        if let ServerFrame::Event(event) = own_socket.frame().await
            && event.seq == posted.seq
        {
            break;
        }
    }
    let (status, _) = app
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "fay", "password": password(&fay)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password is gone");
    app.login("fay", "a-new-long-password").await;
    let (_, events) = app
        .get("/v1/users/me/security-events", Some(&fay.token))
        .await;
    assert!(events.to_string().contains("password_changed"), "{events}");
    app.stop().await;
}
