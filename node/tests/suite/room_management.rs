//! Managing rooms: profile changes, ownership, deletion and invitations,
//! each a timeline event live on other gateways; the rooms list ordered by
//! activity; history paged both ways and around a seq.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::RoomId;
use shared::model::EventKind;
use shared::protocol::{LeftReason, ServerFrame};
use testkit::{Mode, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    owners_and_admins_change_the_profile_as_a_timeline_event,
    the_owner_hands_the_room_on_and_can_then_leave,
    deleting_a_room_takes_everything_and_every_member_leaves_it,
    an_invitation_is_accepted_declined_or_revoked,
    an_invite_only_room_takes_members_only_by_invitation,
    strangers_cannot_manage_a_room_or_answer_anothers_invitation,
    the_rooms_list_is_paged_by_latest_activity_with_a_preview,
    history_pages_both_ways_and_around_a_seq,
    a_room_avatar_is_an_image_uploaded_into_it_that_members_see,
);

async fn patch(app: &TestApp, room: RoomId, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.request(
        Method::PATCH,
        &format!("/v1/rooms/{room}"),
        Some(&user.token),
        Some(body),
    )
    .await
}

/// A small PDF (attachments are sniffed: it must look like one).
fn pdf() -> Vec<u8> {
    let mut bytes = b"%PDF-1.4\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 200));
    bytes.extend(b"\n%%EOF\n");
    bytes
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// Reads frames until an event of `kind` arrives; returns it as JSON.
async fn next_event(ws: &mut WsClient, kind: &str) -> Value {
    loop {
        if let ServerFrame::Event(event) = ws.frame().await {
            let json = serde_json::to_value(&event).expect("an event is JSON");
            if json["kind"] == kind {
                return json;
            }
        }
    }
}

/// `user`'s connection on gateway `i`, joined to `room`.
async fn watching(app: &TestApp, i: usize, user: &TestUser, room: RoomId) -> WsClient {
    let mut ws = app.ws(i, user).await;
    ws.join(room).await.expect("joined");
    ws
}

/// The kinds of `room`'s history, oldest first.
async fn kinds(app: &TestApp, user: &TestUser, room: RoomId) -> Vec<String> {
    let (status, page) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut kinds: Vec<String> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.reverse();
    kinds
}

async fn owners_and_admins_change_the_profile_as_a_timeline_event(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&alice.token),
            json!({"user_id": carol.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut bobs = watching(&app, 1, &bob, room).await;

    let (status, body) = patch(
        &app,
        room,
        &carol,
        json!({"name": " planning ", "topic": "Q3 roadmap\nand notes"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an admin changes the profile: {body}"
    );
    assert_eq!(
        (&body["name"], &body["topic"], &body["join_policy"]),
        (
            &json!("planning"),
            &json!("Q3 roadmap\nand notes"),
            &json!("add")
        )
    );
    let event = next_event(&mut bobs, "room.updated").await;
    assert_eq!(
        (&event["name"], &event["topic"], &event["sender_id"]),
        (
            &json!("planning"),
            &json!("Q3 roadmap\nand notes"),
            &json!(carol.id.0)
        ),
        "the whole profile, live on another gateway"
    );

    // Changing nothing appends nothing.
    let before = app.last_seq(&alice, room).await;
    let (status, _) = patch(&app, room, &alice, json!({"name": "planning"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.last_seq(&alice, room).await,
        before,
        "no event for no change"
    );

    let (status, body) = patch(&app, room, &bob, json!({"topic": "mine now"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    for (bad, field) in [
        (json!({"name": ""}), "name"),
        (json!({"topic": "t".repeat(501)}), "topic"),
        (json!({"topic": "\u{1b}[31mred"}), "topic"),
    ] {
        let (status, body) = patch(&app, room, &alice, bad).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field))
        );
    }
    let (status, body) = patch(&app, room, &alice, json!({"join_policy": "sometimes"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, _) = patch(&app, room, &alice, json!({"topic": ""})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = app
        .get(&format!("/v1/rooms/{room}"), Some(&bob.token))
        .await;
    assert_eq!(
        (&got["name"], &got["topic"]),
        (&json!("planning"), &json!(""))
    );
    let history = kinds(&app, &bob, room).await;
    assert_eq!(
        history.iter().filter(|k| *k == "room.updated").count(),
        2,
        "{history:?}"
    );

    let (status, direct) = app
        .post(
            "/v1/rooms/direct",
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert!(status.is_success());
    let direct = RoomId(direct["id"].as_i64().expect("id"));
    let (status, body) = patch(&app, direct, &alice, json!({"name": "us"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("direct_room"))
    );
    app.stop().await;
}

async fn the_owner_hands_the_room_on_and_can_then_leave(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut bobs = watching(&app, 2, &bob, room).await;
    let owner = format!("/v1/rooms/{room}/owner");

    let (status, body) = app
        .post(&owner, Some(&bob.token), json!({"user_id": alice.id}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, body) = app
        .post(&owner, Some(&alice.token), json!({"user_id": carol.id}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("member_not_found")),
        "only a member can own the room"
    );
    let (status, body) = app
        .post(&owner, Some(&alice.token), json!({"user_id": alice.id}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = app
        .post(&owner, Some(&alice.token), json!({"user_id": bob.id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "admin", "the old owner is an admin now");
    let event = next_event(&mut bobs, "room.owner_changed").await;
    assert_eq!(
        (&event["user_id"], &event["sender_id"]),
        (&json!(bob.id.0), &json!(alice.id.0))
    );
    let (_, members) = app
        .get(&format!("/v1/rooms/{room}/members"), Some(&bob.token))
        .await;
    let roles: Vec<(i64, String)> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user_id"].as_i64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![(alice.id.0, "admin".into()), (bob.id.0, "owner".into())]
    );
    // Exactly one owner: the old one cannot hand it on again.
    let (status, _) = app
        .post(&owner, Some(&alice.token), json!({"user_id": bob.id}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", alice.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "the former owner leaves: {body}"
    );
    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&bob.token),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("owner_cannot_leave"))
    );
    app.stop().await;
}

async fn deleting_a_room_takes_everything_and_every_member_leaves_it(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let room = app.create_room(&alice, "doomed").await;
    let kept = app.create_room(&alice, "kept").await;
    app.add_member(&alice, room, &bob).await;
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&alice.token),
            json!({"user_id": carol.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/invitations"),
            Some(&alice.token),
            json!({"user_id": dave.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, file) = app
        .upload(&bob, room, "notes.pdf", "application/pdf", pdf())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{file}");
    let (status, posted) = app
        .post(
            &format!("/v1/rooms/{room}/messages"),
            Some(&bob.token),
            json!({"body": "soon gone", "attachment_ids": [file["id"]]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    let posted_seq = posted["seq"].as_i64().expect("seq");
    app.send_message(&alice, kept, "stays").await;
    assert_eq!(app.stored_attachment_keys().await.len(), 1);
    let mut bobs = watching(&app, 1, &bob, room).await;
    let mut daves = app.ws(2, &dave).await;

    let (status, body) = app
        .delete(&format!("/v1/rooms/{room}"), Some(&carol.token))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "an admin does not delete the room"
    );
    let (status, body) = app
        .delete(&format!("/v1/rooms/{room}"), Some(&dave.token))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("room_not_found")),
        "an invited user is not a member"
    );
    let (status, body) = app
        .delete(&format!("/v1/rooms/{room}"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // bob's connection: the event, then it leaves the room; the notice on
    // his own channel may come before or after those.
    let (mut deleted, mut left, mut removed) = (None, false, false);
    while deleted.is_none() || !left || !removed {
        match bobs.frame().await {
            ServerFrame::Event(event) if event.room_id == room => {
                assert!(!left, "nothing after leaving: {event:?}");
                if matches!(event.kind, EventKind::RoomDeleted {}) {
                    deleted = Some(event.seq);
                }
            }
            ServerFrame::Left {
                room_id, reason, ..
            } if room_id == room => {
                assert_eq!(reason, LeftReason::RoomDeleted);
                assert!(deleted.is_some(), "the event comes first");
                left = true;
            }
            ServerFrame::RoomRemoved { room_id } if room_id == room => removed = true,
            _ => {}
        }
    }
    assert_eq!(
        deleted,
        Some(posted_seq + 1),
        "numbered after the last event"
    );
    loop {
        match daves.frame().await {
            ServerFrame::InvitationEnded { room_id } if room_id == room => break,
            _ => {}
        }
    }

    for user in [&alice, &bob, &carol] {
        for path in ["", "/messages", "/members", "/invitations"] {
            let (status, _) = app
                .get(&format!("/v1/rooms/{room}{path}"), Some(&user.token))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let (_, list) = app.get("/v1/rooms", Some(&alice.token)).await;
    let ids: Vec<i64> = list["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["id"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(ids, vec![kept.0], "only the other room is left");
    let (_, invitations) = app.get("/v1/invitations", Some(&dave.token)).await;
    assert_eq!(invitations["invitations"], json!([]));
    let (status, _) = app
        .post(
            &format!("/v1/invitations/{room}/accept"),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A reconnecting member cannot rejoin it.
    let mut again = app.ws(0, &bob).await;
    assert!(again.join(room).await.is_err());
    // Its file is unreadable at once, and its bytes and rows go with the sweep.
    let path = format!("/v1/attachments/{}", file["id"].as_str().expect("id"));
    assert_eq!(
        app.download(&bob, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    app.sweep_attachments().await;
    assert_eq!(app.stored_attachment_keys().await, Vec::<String>::new());
    assert_eq!(app.attachment_rows().await, 0);
    assert_eq!(app.send_message(&alice, kept, "still here").await.seq, 3);
    app.stop().await;
}

async fn an_invitation_is_accepted_declined_or_revoked(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let room = app.create_room(&alice, "general").await;
    let invitations = format!("/v1/rooms/{room}/invitations");
    let mut alices = watching(&app, 0, &alice, room).await;
    let mut bobs = app.ws(1, &bob).await;

    let (status, body) = app
        .post(
            &invitations,
            Some(&alice.token),
            json!({"user_id": bob.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body["role"], &body["room_name"]),
        (&json!("admin"), &json!("general"))
    );
    let invited = loop {
        if let ServerFrame::RoomInvited { invitation } = bobs.frame().await {
            break invitation;
        }
    };
    assert_eq!(
        (
            invited.room_id,
            invited.invited_by,
            invited.invited_by_username.as_str()
        ),
        (room, alice.id, "alice")
    );
    let event = next_event(&mut alices, "member.invited").await;
    assert_eq!(
        (&event["user_id"], &event["role"]),
        (&json!(bob.id.0), &json!("admin"))
    );
    let (status, body) = app
        .post(&invitations, Some(&alice.token), json!({"user_id": bob.id}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("already_invited"))
    );
    let (_, mine) = app.get("/v1/invitations", Some(&bob.token)).await;
    assert_eq!(mine["invitations"][0]["room_id"], json!(room.0));
    // Invited is not a member yet.
    let (status, _) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = app
        .post(
            &format!("/v1/invitations/{room}/accept"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "admin", "the invited role");
    let event = next_event(&mut alices, "member.added").await;
    assert_eq!(
        (&event["user_id"], &event["sender_id"]),
        (&json!(bob.id.0), &json!(bob.id.0)),
        "the invited user joined by themselves"
    );
    loop {
        if let ServerFrame::RoomAdded { room_id, .. } = bobs.frame().await {
            assert_eq!(room_id, room);
            break;
        }
    }
    let (status, body) = app
        .post(
            &format!("/v1/invitations/{room}/accept"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("invitation_not_found")),
        "an invitation is used once"
    );
    let (status, body) = app
        .post(&invitations, Some(&alice.token), json!({"user_id": bob.id}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("already_member"))
    );

    // Declined.
    let (status, _) = app
        .post(&invitations, Some(&bob.token), json!({"user_id": carol.id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "an admin invites members");
    let (status, _) = app
        .post(
            &format!("/v1/invitations/{room}/decline"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let event = next_event(&mut alices, "invitation.declined").await;
    assert_eq!(event["user_id"], json!(carol.id.0));
    let (status, _) = app
        .get(&format!("/v1/rooms/{room}"), Some(&carol.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Revoked, by whom the role allows.
    let (status, _) = app
        .post(
            &invitations,
            Some(&alice.token),
            json!({"user_id": dave.id, "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, pending) = app.get(&invitations, Some(&bob.token)).await;
    assert_eq!(pending["invitations"].as_array().map(Vec::len), Some(1));
    let mut daves = app.ws(2, &dave).await;
    let (status, body) = app
        .delete(&format!("{invitations}/{}", dave.id), Some(&bob.token))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "an admin does not revoke an admin's invitation"
    );
    let (status, _) = app
        .delete(&format!("{invitations}/{}", dave.id), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let event = next_event(&mut alices, "invitation.revoked").await;
    assert_eq!(event["user_id"], json!(dave.id.0));
    loop {
        if let ServerFrame::InvitationEnded { room_id } = daves.frame().await {
            assert_eq!(room_id, room);
            break;
        }
    }
    let (status, _) = app
        .post(
            &format!("/v1/invitations/{room}/accept"),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a revoked invitation cannot be accepted"
    );
    let (status, body) = app
        .post(
            &invitations,
            Some(&alice.token),
            json!({"user_id": 987_654}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    let (status, body) = app
        .post(
            &invitations,
            Some(&alice.token),
            json!({"user_id": dave.id, "role": "owner"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn an_invite_only_room_takes_members_only_by_invitation(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let (status, body) = app
        .post(
            "/v1/rooms",
            Some(&alice.token),
            json!({"name": "private", "topic": "by invitation", "join_policy": "invite"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body["join_policy"], &body["topic"]),
        (&json!("invite"), &json!("by invitation"))
    );
    let room = RoomId(body["id"].as_i64().expect("id"));
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, Some("invitation_required"))
    );
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/invitations"),
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            &format!("/v1/invitations/{room}/accept"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Back to adding directly.
    let (status, _) = patch(&app, room, &alice, json!({"join_policy": "add"})).await;
    assert_eq!(status, StatusCode::OK);
    app.add_member(&alice, room, &carol).await;
    let history = kinds(&app, &alice, room).await;
    assert_eq!(
        history,
        [
            "room.created",
            "member.invited",
            "member.added",
            "room.updated",
            "member.added"
        ]
    );
    app.stop().await;
}

async fn strangers_cannot_manage_a_room_or_answer_anothers_invitation(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, eve) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("eve").await,
    );
    let room = app.create_room(&alice, "general").await;
    let evesroom = app.create_room(&eve, "eve's").await;
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/invitations"),
            Some(&alice.token),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let missing = RoomId(987_654);
    for target in [room, missing] {
        let attempts = [
            patch(&app, target, &eve, json!({"name": "mine"})).await,
            app.delete(&format!("/v1/rooms/{target}"), Some(&eve.token))
                .await,
            app.post(
                &format!("/v1/rooms/{target}/owner"),
                Some(&eve.token),
                json!({"user_id": eve.id}),
            )
            .await,
            app.post(
                &format!("/v1/rooms/{target}/invitations"),
                Some(&eve.token),
                json!({"user_id": eve.id}),
            )
            .await,
            app.get(&format!("/v1/rooms/{target}/invitations"), Some(&eve.token))
                .await,
            app.delete(
                &format!("/v1/rooms/{target}/invitations/{}", bob.id),
                Some(&eve.token),
            )
            .await,
        ];
        for (i, (status, body)) in attempts.iter().enumerate() {
            assert_eq!(
                (*status, code(body)),
                (StatusCode::NOT_FOUND, Some("room_not_found")),
                "attempt {i} on {target}: a stranger learns nothing"
            );
        }
    }
    // bob's invitation is bob's: eve cannot accept or decline it.
    for verb in ["accept", "decline"] {
        let (status, body) = app
            .post(
                &format!("/v1/invitations/{room}/{verb}"),
                Some(&eve.token),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, Some("invitation_not_found"))
        );
    }
    // Nor can an invitation to one room be used in another.
    let (status, _) = app
        .post(
            &format!("/v1/invitations/{evesroom}/accept"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, eves) = app.get("/v1/invitations", Some(&eve.token)).await;
    assert_eq!(eves["invitations"], json!([]), "nobody else's invitations");
    let (_, got) = app
        .get(&format!("/v1/rooms/{room}"), Some(&alice.token))
        .await;
    assert_eq!(
        (&got["name"], &got["role"]),
        (&json!("general"), &json!("owner"))
    );
    app.stop().await;
}

async fn the_rooms_list_is_paged_by_latest_activity_with_a_preview(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut rooms = Vec::new();
    for i in 0..5 {
        let room = app.create_room(&alice, &format!("room {i}")).await;
        app.add_member(&alice, room, &bob).await;
        rooms.push(room);
    }
    // Activity, oldest to newest: 3, 0, 4, 1, 2 (2 with a long message).
    // Two posts may share a millisecond; the list then puts the newer room
    // first, so the expected order is computed from the stored times.
    let long = "é".repeat(200);
    let mut activity = Vec::new();
    for (i, body) in [
        (3, "three"),
        (0, "zero"),
        (4, "four"),
        (1, "one"),
        (2, long.as_str()),
    ] {
        let posted = app.send_message(&alice, rooms[i], body).await;
        activity.push((posted.created_at, rooms[i].0));
    }
    activity.sort_unstable_by(|a, b| b.cmp(a));
    let expected: Vec<i64> = activity.iter().map(|(_, id)| *id).collect();
    assert_ne!(
        expected,
        {
            let mut by_id: Vec<i64> = rooms.iter().map(|r| r.0).collect();
            by_id.reverse();
            by_id
        },
        "the activity order differs from the rooms' ids"
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/rooms?limit=2&cursor={c}"),
            None => "/v1/rooms?limit=2".to_owned(),
        };
        let (status, page) = app.get(&path, Some(&bob.token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for room in page["rooms"].as_array().expect("rooms") {
            seen.push(room["id"].as_i64().expect("id"));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the cursor must end");
    }
    assert_eq!(seen, expected, "newest activity first, each room once");

    let (_, all) = app.get("/v1/rooms", Some(&bob.token)).await;
    let listed = all["rooms"].as_array().expect("rooms");
    let entry = listed
        .iter()
        .find(|r| r["id"] == json!(rooms[2].0))
        .expect("room 2 listed");
    let preview = &entry["last_message"];
    assert_eq!(
        preview["body"].as_str().map(|b| b.chars().count()),
        Some(140)
    );
    assert_eq!(
        (&preview["truncated"], &preview["sender_id"]),
        (&json!(true), &json!(alice.id.0))
    );

    // A deleted newest message is a tombstone in the preview, and a new one moves the room up.
    let seq = preview["seq"].as_i64().expect("seq");
    let (status, _) = app
        .delete(
            &format!("/v1/rooms/{}/messages/{seq}", rooms[2]),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.send_message(&bob, rooms[3], "bump").await;
    let (_, list) = app.get("/v1/rooms", Some(&bob.token)).await;
    let listed = list["rooms"].as_array().expect("rooms");
    assert_eq!(listed[0]["id"], json!(rooms[3].0));
    assert_eq!(listed[0]["last_message"]["body"], "bump");
    assert_eq!(listed[0]["unread"], json!(0), "own messages are not unread");
    assert_eq!(
        (
            &listed[1]["last_message"]["deleted"],
            &listed[1]["last_message"]["body"]
        ),
        (&json!(true), &json!(""))
    );
    assert!(list.get("next_cursor").is_none());

    for bad in ["?cursor=abc", "?cursor=1.x", "?limit=0", "?limit=101"] {
        let (status, body) = app.get(&format!("/v1/rooms{bad}"), Some(&bob.token)).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }
    app.stop().await;
}

async fn history_pages_both_ways_and_around_a_seq(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    for i in 0..24 {
        app.send_message(&alice, room, &format!("m{i}")).await;
    }
    // seq 1 is room.created, 2..=25 the messages.
    let seqs = |page: &Value| -> Vec<i64> {
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["seq"].as_i64().unwrap_or(0))
            .collect()
    };
    let history = format!("/v1/rooms/{room}/messages");

    // Forwards from the start, page by page.
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = app
            .get(
                &format!("{history}?after_seq={after}&limit=10"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let mut got = seqs(&page);
        assert!(got.windows(2).all(|w| w[0] > w[1]), "newest first: {got:?}");
        got.reverse();
        forward.extend(got);
        match page["next_after_seq"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(forward, (1..=25).collect::<Vec<_>>());

    let (_, page) = app
        .get(
            &format!("{history}?around_seq=12&limit=5"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(seqs(&page), vec![14, 13, 12, 11, 10]);
    assert_eq!(
        (&page["next_before_seq"], &page["next_after_seq"]),
        (&json!(10), &json!(14))
    );
    let (_, page) = app
        .get(
            &format!("{history}?around_seq=2&limit=6"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(seqs(&page), vec![5, 4, 3, 2, 1], "clipped at the start");
    assert!(page["next_before_seq"].is_null());
    let (_, page) = app
        .get(
            &format!("{history}?around_seq=25&limit=4"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(seqs(&page), vec![25, 24]);
    assert!(
        page.get("next_after_seq").is_none(),
        "at the newest: {page}"
    );
    let (_, page) = app
        .get(
            &format!("{history}?before_seq=5&limit=10"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (seqs(&page), &page["next_after_seq"]),
        (vec![4, 3, 2, 1], &json!(4))
    );

    for bad in [
        "?before_seq=5&after_seq=2",
        "?around_seq=5&before_seq=9",
        "?after_seq=-1",
        "?around_seq=0",
    ] {
        let (status, body) = app
            .get(&format!("{history}{bad}"), Some(&alice.token))
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }
    app.stop().await;
}

/// A 1x1 PNG.
fn png() -> Vec<u8> {
    vec![
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0,
        0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 13, b'I', b'D', b'A',
        b'T', 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0, 0x05, 0x00, 0x01, 0xff, 0x89,
        0x99, 0x3d, 0x1d, 0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82,
    ]
}

async fn a_room_avatar_is_an_image_uploaded_into_it_that_members_see(mode: Mode) {
    let mut options = testkit::Options::default();
    // Unposted uploads expire at once: an avatar must not.
    options.attachments.orphan_ttl = std::time::Duration::ZERO;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob, eve) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("eve").await,
    );
    let room = app.create_room(&alice, "general").await;
    let other = app.create_room(&alice, "other").await;
    app.add_member(&alice, room, &bob).await;
    let upload = |user: &TestUser, room: RoomId, name: &'static str, bytes: Vec<u8>| {
        let app = &app;
        let user = user.clone();
        async move {
            let (status, body) = app.upload(&user, room, name, "image/png", bytes).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["id"].as_str().expect("id").to_owned()
        }
    };
    let first = upload(&alice, room, "a.png", png()).await;
    let mut bobs = watching(&app, 1, &bob, room).await;
    let (status, body) = patch(&app, room, &alice, json!({"avatar_attachment_id": first})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["avatar_attachment_id"], json!(first));
    let event = next_event(&mut bobs, "room.updated").await;
    assert_eq!(event["avatar_attachment_id"], json!(first));
    let path = format!("/v1/attachments/{first}");
    assert_eq!(
        app.download(&bob, &path, None).await.0,
        StatusCode::OK,
        "members see it"
    );
    assert_eq!(
        app.download(&eve, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    app.sweep_attachments().await;
    assert_eq!(
        app.download(&bob, &path, None).await.0,
        StatusCode::OK,
        "not an orphan"
    );

    // Not an image, someone else's, another room's: refused.
    let (status, doc) = app
        .upload(&alice, room, "doc.pdf", "application/pdf", pdf())
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let bobs_image = upload(&bob, room, "b.png", png()).await;
    let elsewhere = upload(&alice, other, "c.png", png()).await;
    for bad in [
        doc["id"].as_str().expect("id").to_owned(),
        bobs_image,
        elsewhere,
        "nope".into(),
    ] {
        let (status, body) = patch(&app, room, &alice, json!({"avatar_attachment_id": bad})).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_attachment")),
            "{bad}"
        );
    }

    // Replaced: the old one goes.
    let second = upload(&alice, room, "d.png", png()).await;
    let (status, _) = patch(&app, room, &alice, json!({"avatar_attachment_id": second})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.download(&alice, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = patch(&app, room, &alice, json!({"avatar_attachment_id": ""})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.get("avatar_attachment_id").is_none(),
        "removed: {body}"
    );
    app.stop().await;
}
