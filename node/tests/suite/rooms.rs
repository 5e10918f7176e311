//! Rooms and membership, and what strangers can (not) learn.

use reqwest::StatusCode;
use serde_json::json;
use testkit::{Mode, TestApp, both_modes};

both_modes!(
    the_creator_owns_a_room_and_strangers_learn_nothing_about_it,
    only_owners_and_admins_manage_members,
    members_can_leave_but_the_owner_cannot,
    a_direct_room_is_shared_by_exactly_two_users,
);

async fn the_creator_owns_a_room_and_strangers_learn_nothing_about_it(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, eve) = (app.user("alice").await, app.user("eve").await);
    let room = app.create_room(&alice, "  general  ").await;
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            body["name"].as_str(),
            body["role"].as_str(),
            body["kind"].as_str()
        ),
        (Some("general"), Some("owner"), Some("group"))
    );
    let (_, list) = app.get("/v1/rooms", Some(&alice.token)).await;
    assert_eq!(list["rooms"].as_array().map(Vec::len), Some(1));

    // A stranger gets exactly what a missing room gets, everywhere.
    let missing = 987_654;
    for path in ["", "/members", "/messages"] {
        let (s1, b1) = app
            .get(&format!("/v1/rooms/{room}{path}"), Some(&eve.token))
            .await;
        let (s2, b2) = app
            .get(&format!("/v1/rooms/{missing}{path}"), Some(&eve.token))
            .await;
        assert_eq!((s1, &b1), (s2, &b2), "{path}");
        assert_eq!(s1, StatusCode::NOT_FOUND);
        assert_eq!(b1["error"]["code"], "room_not_found");
    }
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/messages"),
            Some(&eve.token),
            json!({"body": "hi"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("room_not_found"))
    );
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&eve.token),
            json!({"user_id": eve.id}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a stranger cannot add themselves"
    );
    let (_, list) = app.get("/v1/rooms", Some(&eve.token)).await;
    assert_eq!(list["rooms"], json!([]));

    for bad in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "n".repeat(101)}),
    ] {
        let (status, body) = app.post("/v1/rooms", Some(&alice.token), bad).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
        );
    }
    app.stop().await;
}

async fn only_owners_and_admins_manage_members(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol, dan) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dan").await,
    );
    let room = app.create_room(&alice, "general").await;
    let members = format!("/v1/rooms/{room}/members");

    app.add_member(&alice, room, &bob).await;
    // A plain member may not add anyone.
    let (status, body) = app
        .post(&members, Some(&bob.token), json!({"user_id": carol.id}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    // The owner makes carol an admin; an admin adds members but not admins.
    let (status, _) = app
        .post(
            &members,
            Some(&alice.token),
            json!({"user_id": carol.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            &members,
            Some(&carol.token),
            json!({"user_id": dan.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .post(&members, Some(&carol.token), json!({"user_id": dan.id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["username"].as_str(), body["role"].as_str()),
        (Some("dan"), Some("member"))
    );

    let (status, body) = app
        .post(&members, Some(&alice.token), json!({"user_id": dan.id}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_member"))
    );
    let (status, body) = app
        .post(&members, Some(&alice.token), json!({"user_id": 424242}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    let (status, _) = app
        .post(
            &members,
            Some(&alice.token),
            json!({"user_id": dan.id, "role": "owner"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .post(&members, Some(&alice.token), json!({"user_id": "dan"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Removal: an admin may remove a member, not another admin or the owner.
    let (status, _) = app
        .delete(&format!("{members}/{}", alice.id), Some(&carol.token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .delete(&format!("{members}/{}", dan.id), Some(&carol.token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .delete(&format!("{members}/{}", dan.id), Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("member_not_found"))
    );

    let (_, list) = app.get(&members, Some(&bob.token)).await;
    let names: Vec<&str> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["username"].as_str())
        .collect();
    assert_eq!(names, vec!["alice", "bob", "carol"]);
    // The timeline records every change, in order.
    let (_, history) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&alice.token))
        .await;
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "room.created",
            "member.added",
            "member.added",
            "member.added",
            "member.removed"
        ]
    );
    app.stop().await;
}

async fn members_can_leave_but_the_owner_cannot(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let (status, _) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .get(&format!("/v1/rooms/{room}"), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", alice.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("owner_cannot_leave"))
    );
    app.stop().await;
}

async fn a_direct_room_is_shared_by_exactly_two_users(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let (status, first) = app
        .post(
            "/v1/rooms/direct",
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = app
        .post(
            "/v1/rooms/direct",
            Some(&bob.token),
            json!({"user_id": alice.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the same pair gets the same room");
    assert_eq!(first["id"], again["id"]);
    let room = first["id"].as_i64().expect("id");
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&alice.token),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("direct_room"))
    );
    let (status, _) = app
        .get(&format!("/v1/rooms/{room}"), Some(&carol.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            "/v1/rooms/direct",
            Some(&alice.token),
            json!({"user_id": alice.id}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .post(
            "/v1/rooms/direct",
            Some(&alice.token),
            json!({"user_id": 424242}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
