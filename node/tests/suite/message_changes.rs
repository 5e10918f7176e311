//! Edits, deletes, replies, reactions and mentions: each a timeline event,
//! delivered live on other gateways and shown in history, and never across
//! rooms.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::RoomId;
use shared::model::RoomEvent;
use shared::protocol::ServerFrame;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    an_edit_keeps_the_seq_reaches_members_live_and_shows_in_history,
    only_the_author_edits_and_only_live_messages,
    a_delete_leaves_a_tombstone_whose_body_no_read_returns,
    a_member_may_delete_only_their_own_messages_and_admins_any,
    a_delete_reaches_a_resuming_client_through_the_recent_window,
    a_reply_references_an_earlier_message_of_the_same_room,
    reactions_are_counted_per_emoji_with_the_callers_own_marked,
    a_message_has_a_bounded_set_of_valid_emoji,
    mentions_of_members_count_in_the_rooms_list_until_read,
    nobody_changes_messages_of_a_room_they_are_not_in,
    changes_share_the_posting_rate_limit,
);

/// 👍, percent-encoded for a path.
const THUMBS_UP: &str = "%F0%9F%91%8D";

fn message_path(room: RoomId, seq: i64) -> String {
    format!("/v1/rooms/{room}/messages/{seq}")
}

fn reaction_path(room: RoomId, seq: i64, emoji: &str) -> String {
    format!("/v1/rooms/{room}/messages/{seq}/reactions/{emoji}")
}

/// Reads frames until an event of `kind` arrives; returns it as JSON.
async fn next_of_kind(ws: &mut WsClient, kind: &str) -> Value {
    loop {
        if let ServerFrame::Event(event) = ws.frame().await {
            let json = serde_json::to_value(&event).expect("an event is JSON");
            if json["kind"] == kind {
                return json;
            }
        }
    }
}

/// A connection of `user` on gateway 1 (another than the api's first)
/// joined to `room`.
async fn watching(app: &TestApp, user: &TestUser, room: RoomId) -> WsClient {
    let mut ws = app.ws(1, user).await;
    ws.join(room).await.expect("joined");
    ws
}

/// The events of `room`'s history as `user` sees them, by seq.
async fn history(app: &TestApp, user: &TestUser, room: RoomId) -> Vec<Value> {
    let (status, page) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut events = page["events"].as_array().expect("events").clone();
    events.reverse();
    events
}

fn at(events: &[Value], seq: i64) -> &Value {
    events
        .iter()
        .find(|e| e["seq"] == seq)
        .unwrap_or_else(|| panic!("no seq {seq} in {events:?}"))
}

async fn a_room_of_two(app: &TestApp) -> (TestUser, TestUser, RoomId) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    (alice, bob, room)
}

async fn an_edit_keeps_the_seq_reaches_members_live_and_shows_in_history(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let posted = app.send_message(&bob, room, "helo").await;
    let mut ws = watching(&app, &alice, room).await;

    let (status, edited) = app
        .request(
            Method::PATCH,
            &message_path(room, posted.seq),
            Some(&bob.token),
            Some(json!({"body": "hello"})),
        )
        .await;

    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["kind"], "message.edited");
    assert_eq!(edited["target_seq"], posted.seq);
    assert_eq!(edited["body"], "hello");
    assert_eq!(edited["seq"], posted.seq + 1, "the edit is numbered itself");
    assert!(edited["edited_at"].is_string());
    assert_eq!(next_of_kind(&mut ws, "message.edited").await, edited);
    let events = history(&app, &alice, room).await;
    let message = at(&events, posted.seq);
    assert_eq!(message["kind"], "message.created");
    assert_eq!(message["body"], "hello", "history shows the current body");
    assert_eq!(message["edited_at"], edited["edited_at"]);
    assert_eq!(at(&events, posted.seq + 1), &edited);
    app.stop().await;
}

async fn only_the_author_edits_and_only_live_messages(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let posted = app.send_message(&bob, room, "mine").await;
    let edit = |token: String, seq: i64, body: Value| {
        let app = &app;
        async move {
            app.request(
                Method::PATCH,
                &message_path(room, seq),
                Some(&token),
                Some(body),
            )
            .await
        }
    };

    let (status, answer) = edit(alice.token.clone(), posted.seq, json!({"body": "x"})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_author")),
        "not even the owner edits another's message"
    );
    for body in [json!({"body": ""}), json!({"body": "x".repeat(4001)})] {
        let (status, answer) = edit(bob.token.clone(), posted.seq, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    }
    for seq in [1, 999] {
        let (status, answer) = edit(bob.token.clone(), seq, json!({"body": "x"})).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("message_not_found")),
            "seq {seq}: room.created and a seq to come are not messages"
        );
    }
    let last = app.last_seq(&bob, room).await;
    assert_eq!(last, posted.seq, "refused edits take no number");
    let (status, _) = app
        .delete(&message_path(room, posted.seq), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = edit(bob.token.clone(), posted.seq, json!({"body": "back"})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found")),
        "a deleted message cannot be edited back"
    );
    app.stop().await;
}

async fn a_delete_leaves_a_tombstone_whose_body_no_read_returns(mode: Mode) {
    // No recent window: a resume reads the store, which must not return the body.
    let options = Options {
        window_events: 0,
        ..Options::default()
    };
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let start = app.last_seq(&alice, room).await;
    let posted = app.send_message(&bob, room, "secret @alice").await;
    let (status, _) = app
        .request(
            Method::PATCH,
            &message_path(room, posted.seq),
            Some(&bob.token),
            Some(json!({"body": "still secret @alice"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .request(
            Method::PUT,
            &reaction_path(room, posted.seq, THUMBS_UP),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut ws = watching(&app, &alice, room).await;

    let (status, deleted) = app
        .delete(&message_path(room, posted.seq), Some(&bob.token))
        .await;

    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["kind"], "message.deleted");
    assert_eq!(deleted["target_seq"], posted.seq);
    assert_eq!(next_of_kind(&mut ws, "message.deleted").await, deleted);
    let events = history(&app, &alice, room).await;
    let tombstone = at(&events, posted.seq);
    assert_eq!(tombstone["kind"], "message.created", "the seq stays");
    assert_eq!(tombstone["body"], "");
    assert!(tombstone["deleted_at"].is_string());
    assert!(tombstone.get("reactions").is_none(), "{tombstone}");
    let text = serde_json::to_string(&events).expect("json");
    assert!(!text.contains("secret"), "no body in history: {text}");

    let mut resumed = app.ws(2, &alice).await;
    resumed.join_since(room, start).await.expect("resumed");
    let replayed = next_of_kind(&mut resumed, "message.created").await;
    assert_eq!(replayed["seq"], posted.seq);
    assert_eq!(replayed["body"], "");
    assert!(replayed["deleted_at"].is_string());
    let edit = next_of_kind(&mut resumed, "message.edited").await;
    assert_eq!(edit["body"], "", "nor in its edits");

    let (status, rooms) = app.get("/v1/rooms", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rooms["rooms"][0]["mentions"], 0,
        "a deleted message mentions nobody"
    );
    let (status, again) = app
        .delete(&message_path(room, posted.seq), Some(&bob.token))
        .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
    app.stop().await;
}

async fn a_member_may_delete_only_their_own_messages_and_admins_any(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let carol = app.user("carol").await;
    app.add_member(&alice, room, &carol).await;
    let by_bob = app.send_message(&bob, room, "bob's").await;

    let (status, answer) = app
        .delete(&message_path(room, by_bob.seq), Some(&carol.token))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("delete_not_allowed"))
    );
    let (status, deleted) = app
        .delete(&message_path(room, by_bob.seq), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK, "the owner deletes any message");
    assert_eq!(
        deleted["sender_id"], alice.id.0,
        "the event names who deleted"
    );
    app.stop().await;
}

async fn a_delete_reaches_a_resuming_client_through_the_recent_window(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let start = app.last_seq(&alice, room).await;
    let posted = app.send_message(&bob, room, "soon gone").await;
    let (status, _) = app
        .delete(&message_path(room, posted.seq), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut resumed = app.ws(1, &alice).await;
    resumed.join_since(room, start).await.expect("resumed");

    // The window holds frames as published; the delete follows the post,
    // so a client that applies it ends without the body (docs/protocol.md).
    let _ = next_of_kind(&mut resumed, "message.created").await;
    let deleted = next_of_kind(&mut resumed, "message.deleted").await;
    assert_eq!(deleted["target_seq"], posted.seq);
    app.stop().await;
}

async fn a_reply_references_an_earlier_message_of_the_same_room(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let first = app.send_message(&alice, room, "question").await;
    let mut ws = watching(&app, &alice, room).await;
    let path = format!("/v1/rooms/{room}/messages");

    let (status, reply) = app
        .post(
            &path,
            Some(&bob.token),
            json!({"body": "answer", "reply_to_seq": first.seq}),
        )
        .await;

    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["reply_to_seq"], first.seq);
    assert_eq!(next_of_kind(&mut ws, "message.created").await, reply);
    let reply_seq = reply["seq"].as_i64().expect("seq");
    assert_eq!(
        at(&history(&app, &alice, room).await, reply_seq)["reply_to_seq"],
        first.seq
    );
    for target in [0, 1, reply_seq + 1, 999] {
        let (status, answer) = app
            .post(
                &path,
                Some(&bob.token),
                json!({"body": "x", "reply_to_seq": target}),
            )
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_reply_to")),
            "reply_to_seq {target}"
        );
    }
    app.stop().await;
}

async fn reactions_are_counted_per_emoji_with_the_callers_own_marked(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let posted = app.send_message(&alice, room, "react to me").await;
    let mut ws = watching(&app, &alice, room).await;
    let put = |user: &TestUser| {
        let (app, token) = (&app, user.token.clone());
        async move {
            app.request(
                Method::PUT,
                &reaction_path(room, posted.seq, THUMBS_UP),
                Some(&token),
                None,
            )
            .await
        }
    };

    let (status, added) = put(&bob).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(
        (&added["kind"], &added["target_seq"], &added["emoji"]),
        (&json!("reaction.added"), &json!(posted.seq), &json!("👍"))
    );
    assert_eq!(added["sender_id"], bob.id.0);
    assert_eq!(next_of_kind(&mut ws, "reaction.added").await, added);
    let (status, _) = put(&bob).await;
    assert_eq!(status, StatusCode::OK, "a repeat changes nothing");
    let (status, _) = put(&alice).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        app.last_seq(&alice, room).await,
        posted.seq + 2,
        "no event for the repeat"
    );

    let mine = at(&history(&app, &alice, room).await, posted.seq)["reactions"].clone();
    assert_eq!(mine, json!([{"emoji": "👍", "count": 2, "me": true}]));
    let (status, removed) = app
        .delete(
            &reaction_path(room, posted.seq, THUMBS_UP),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(removed["kind"], "reaction.removed");
    assert_eq!(next_of_kind(&mut ws, "reaction.removed").await, removed);
    let (status, _) = app
        .delete(
            &reaction_path(room, posted.seq, THUMBS_UP),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "nothing left to remove");
    let theirs = at(&history(&app, &alice, room).await, posted.seq)["reactions"].clone();
    assert_eq!(theirs, json!([{"emoji": "👍", "count": 1, "me": false}]));
    app.stop().await;
}

async fn a_message_has_a_bounded_set_of_valid_emoji(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    let posted = app.send_message(&alice, room, "many").await;
    let react = |emoji: String| {
        let app = &app;
        let token = alice.token.clone();
        async move {
            app.request(
                Method::PUT,
                &reaction_path(room, posted.seq, &emoji),
                Some(&token),
                None,
            )
            .await
        }
    };
    for bad in ["a%20b", "%0A", &"x".repeat(33)] {
        let (status, answer) = react(bad.to_owned()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }
    for i in 0..store::MAX_DISTINCT_REACTIONS {
        let (status, _) = react(format!("e{i}")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, answer) = react("one-more".to_owned()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("too_many_reactions"))
    );
    let (status, _) = react("e0".to_owned()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an emoji already there is no new one"
    );
    app.stop().await;
}

async fn mentions_of_members_count_in_the_rooms_list_until_read(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let carol = app.user("carol").await;
    app.add_member(&alice, room, &carol).await;
    let _dave = app.user("dave").await;
    let mentions = |user: &TestUser| {
        let (app, token) = (&app, user.token.clone());
        async move {
            let (status, rooms) = app.get("/v1/rooms", Some(&token)).await;
            assert_eq!(status, StatusCode::OK);
            (
                rooms["rooms"][0]["mentions"].clone(),
                rooms["rooms"][0]["unread"].clone(),
            )
        }
    };

    let posted = app
        .send_message(&alice, room, "@bob @Bob look, @dave and @alice")
        .await;

    assert_eq!(mentions(&bob).await, (json!(1), json!(1)));
    assert_eq!(mentions(&carol).await, (json!(0), json!(1)));
    let (status, _) = app
        .request(
            Method::PATCH,
            &message_path(room, posted.seq),
            Some(&alice.token),
            Some(json!({"body": "actually @carol"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mentions(&bob).await.0, json!(0), "the edit dropped bob");
    assert_eq!(mentions(&carol).await.0, json!(1));
    let last = app.last_seq(&carol, room).await;
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/read"),
            Some(&carol.token),
            json!({"seq": last}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mentions(&carol).await, (json!(0), json!(0)));
    app.stop().await;
}

async fn nobody_changes_messages_of_a_room_they_are_not_in(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room_a) = a_room_of_two(&app).await;
    let carol = app.user("carol").await;
    let room_b = app.create_room(&carol, "private").await;
    for i in 0..3 {
        app.send_message(&carol, room_b, &format!("b{i}")).await;
    }
    let in_b: RoomEvent = app.send_message(&carol, room_b, "carol's").await;
    let in_a = app.send_message(&alice, room_a, "alice's").await;
    assert!(in_b.seq > in_a.seq, "a seq of B that A does not have");
    let before_b = app.last_seq(&carol, room_b).await;

    let attempts = [
        (
            Method::PATCH,
            message_path(room_b, in_b.seq),
            Some(json!({"body": "x"})),
        ),
        (Method::DELETE, message_path(room_b, in_b.seq), None),
        (
            Method::PUT,
            reaction_path(room_b, in_b.seq, THUMBS_UP),
            None,
        ),
        (
            Method::DELETE,
            reaction_path(room_b, in_b.seq, THUMBS_UP),
            None,
        ),
        (
            Method::POST,
            format!("/v1/rooms/{room_b}/messages"),
            Some(json!({"body": "x", "reply_to_seq": in_b.seq})),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = app
            .request(method.clone(), &path, Some(&bob.token), body)
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("room_not_found")),
            "{method} {path} by a stranger"
        );
    }
    // B's seq through A's path resolves in A, where it is no message.
    let (status, answer) = app
        .request(
            Method::PATCH,
            &message_path(room_a, in_b.seq),
            Some(&bob.token),
            Some(json!({"body": "x"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
    let (status, answer) = app
        .post(
            &format!("/v1/rooms/{room_a}/messages"),
            Some(&bob.token),
            json!({"body": "x", "reply_to_seq": in_b.seq}),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_reply_to"))
    );
    assert_eq!(app.last_seq(&carol, room_b).await, before_b, "B unchanged");
    let events = history(&app, &carol, room_b).await;
    assert_eq!(at(&events, in_b.seq)["body"], "carol's");
    app.stop().await;
}

async fn changes_share_the_posting_rate_limit(mode: Mode) {
    let mut options = Options::default();
    options.policy.messages_per_second = 1;
    options.policy.messages_burst = 5;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let posted = app.send_message(&alice, room, "one").await;
    let token = Some(alice.token.as_str());
    let (message, reaction) = (
        message_path(room, posted.seq),
        reaction_path(room, posted.seq, THUMBS_UP),
    );
    let edit = || app.request(Method::PATCH, &message, token, Some(json!({"body": "two"})));
    let react = |method: Method| app.request(method, &reaction, token, None);

    let mut statuses = vec![
        edit().await.0,
        react(Method::PUT).await.0,
        react(Method::DELETE).await.0,
        react(Method::PUT).await.0,
    ];
    statuses.push(edit().await.0);
    statuses.push(react(Method::DELETE).await.0);
    statuses.push(app.delete(&message_path(room, posted.seq), token).await.0);

    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ],
        "the post and four changes spend the burst of five"
    );
    app.stop().await;
}
