//! The server publish api: API keys made by an admin, custom events in a
//! room's timeline, ephemeral signals to rooms and users, idempotent
//! retries, limits (docs/api.md, "Server publish api").

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use shared::model::{EventKind, RoomEvent};
use shared::protocol::{Encoding, ServerFrame};
use shared::{RoomId, UserId};
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    a_key_works_until_it_is_revoked_and_wrong_keys_are_refused,
    api_keys_are_validated_when_created,
    a_key_publishes_only_with_its_scopes_and_into_its_rooms,
    an_idempotent_retry_returns_the_original_event_and_stores_one,
    a_custom_event_is_delivered_live_with_its_seq_and_kept_in_history,
    signals_reach_joined_connections_and_users_and_are_not_in_history,
    bad_names_and_oversized_payloads_are_refused_with_their_codes,
    a_key_over_its_rate_limit_is_answered_429_with_retry_after,
);

const ADMIN: &str = "an-admin-token-that-is-long-enough-0123456789";

async fn spawn(mode: Mode) -> TestApp {
    spawn_with(mode, Options::default()).await
}

async fn spawn_with(mode: Mode, mut options: Options) -> TestApp {
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    TestApp::spawn_with(mode, options).await
}

/// A key as the admin endpoint returned it.
struct Key {
    secret: String,
    id: String,
    /// The key's own account (the sender of its custom events).
    user_id: UserId,
}

async fn create_key(app: &TestApp, scopes: &[&str], room_ids: Option<&[RoomId]>) -> Key {
    let mut request = json!({"name": "shipping backend", "scopes": scopes});
    if let Some(rooms) = room_ids {
        request["room_ids"] = json!(rooms);
    }
    let (status, body) = app.post("/v1/admin/api-keys", Some(ADMIN), request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Key {
        secret: body["key"].as_str().expect("the key").to_owned(),
        id: body["id"].as_str().expect("an id").to_owned(),
        user_id: UserId(body["user_id"].as_i64().expect("the key's account")),
    }
}

/// POSTs `body` to `path` with `Authorization: Bearer <key>` (when given)
/// and an `Idempotency-Key` (when given).
async fn publish(
    app: &TestApp,
    key: Option<&str>,
    path: &str,
    body: Value,
    idempotency_key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = reqwest::Client::new().post(app.url(path)).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let response = request.send().await.expect("a request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("an answer");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, json)
}

fn events_path(room: RoomId) -> String {
    format!("/v1/server/rooms/{room}/events")
}

fn room_signals_path(room: RoomId) -> String {
    format!("/v1/server/rooms/{room}/signals")
}

fn user_signals_path(user: UserId) -> String {
    format!("/v1/server/users/{user}/signals")
}

fn shipped(order: i64) -> Value {
    json!({"name": "acme.order_shipped", "payload": {"order": order, "carrier": "ups"}})
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// The room's timeline, oldest first, as `user` (a member) pages it.
async fn history(app: &TestApp, user: &TestUser, room: RoomId) -> Vec<RoomEvent> {
    let (status, page) = app
        .get(
            &format!("/v1/rooms/{room}/messages?limit=100"),
            Some(&user.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut events: Vec<RoomEvent> =
        serde_json::from_value(page["events"].clone()).expect("room events");
    events.reverse();
    events
}

fn customs(events: &[RoomEvent]) -> Vec<(i64, String, Value)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Custom { name, payload } => Some((e.seq, name.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

/// Reads frames until a room event arrives; returns it.
async fn next_event(ws: &mut WsClient) -> RoomEvent {
    loop {
        if let ServerFrame::Event(event) = ws.frame().await {
            return event;
        }
    }
}

/// Reads frames until a signal arrives; returns (room_id, user_id, name, payload).
async fn next_signal(ws: &mut WsClient) -> (Option<RoomId>, Option<UserId>, String, Value) {
    loop {
        if let ServerFrame::Signal {
            room_id,
            user_id,
            name,
            payload,
        } = ws.frame().await
        {
            return (room_id, user_id, name, payload);
        }
    }
}

async fn a_key_works_until_it_is_revoked_and_wrong_keys_are_refused(mode: Mode) {
    let app = spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "orders").await;
    let key = create_key(&app, &["rooms:publish"], None).await;
    assert!(key.secret.starts_with("pk_"), "{}", key.secret);

    for (presented, expected) in [
        (None, "missing_api_key"),
        (Some("pk_not-a-key-at-all"), "invalid_api_key"),
        (Some(alice.token.as_str()), "invalid_api_key"),
    ] {
        let (status, _, body) =
            publish(&app, presented, &events_path(room), shipped(1), None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, Some(expected)),
            "{presented:?}"
        );
    }
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, list) = app.get("/v1/admin/api-keys", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = &list["api_keys"][0];
    assert_eq!(listed["id"], key.id.as_str());
    assert_eq!(listed["scopes"], json!(["rooms:publish"]));
    assert!(listed.get("key").is_none(), "never the key again: {listed}");
    assert!(!list.to_string().contains(&key.secret));
    assert!(listed["revoked_at"].is_null());
    assert!(listed["last_used_at"].is_string(), "{listed}");
    let (status, _) = app.get("/v1/admin/api-keys", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "admins only");

    let (status, body) = app
        .delete(&format!("/v1/admin/api-keys/{}", key.id), Some(ADMIN))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(2),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("api_key_revoked")),
        "refused from the next request on"
    );
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &room_signals_path(room),
        shipped(2),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, Some("api_key_revoked"))
    );
    let (_, list) = app.get("/v1/admin/api-keys", Some(ADMIN)).await;
    assert!(list["api_keys"][0]["revoked_at"].is_string(), "{list}");

    let (status, body) = app
        .delete(&format!("/v1/admin/api-keys/{}", key.id), Some(ADMIN))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "revoking twice: {body}");
    let (status, body) = app
        .delete(
            &format!("/v1/admin/api-keys/{}", uuid::Uuid::new_v4()),
            Some(ADMIN),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("api_key_not_found"))
    );
    app.stop().await;
}

async fn api_keys_are_validated_when_created(mode: Mode) {
    let app = spawn(mode).await;
    for (request, status, expected) in [
        (
            json!({"name": "x", "scopes": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"name": "x", "scopes": ["rooms:delete"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"name": "  ", "scopes": ["rooms:publish"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"name": "x", "scopes": ["rooms:publish"], "room_ids": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"name": "x", "scopes": ["rooms:publish"], "room_ids": [987654]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ] {
        let (got, body) = app
            .post("/v1/admin/api-keys", Some(ADMIN), request.clone())
            .await;
        assert_eq!((got, code(&body)), (status, Some(expected)), "{request}");
    }
    let (status, body) = app
        .post(
            "/v1/admin/api-keys",
            None,
            json!({"name": "x", "scopes": ["rooms:publish"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, list) = app.get("/v1/admin/api-keys", Some(ADMIN)).await;
    assert_eq!(list["api_keys"], json!([]), "nothing was created");
    app.stop().await;
}

async fn a_key_publishes_only_with_its_scopes_and_into_its_rooms(mode: Mode) {
    let app = spawn(mode).await;
    let alice = app.user("alice").await;
    let (allowed, other) = (
        app.create_room(&alice, "allowed").await,
        app.create_room(&alice, "other").await,
    );
    let users_only = create_key(&app, &["users:publish"], None).await;
    let one_room = create_key(&app, &["rooms:publish"], Some(&[allowed])).await;
    let everything = create_key(&app, &["rooms:publish", "users:publish"], None).await;

    let (status, _, body) = publish(
        &app,
        Some(&users_only.secret),
        &events_path(allowed),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("missing_scope"))
    );
    let (status, _, body) = publish(
        &app,
        Some(&users_only.secret),
        &user_signals_path(alice.id),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    for path in [events_path(other), room_signals_path(other)] {
        let (status, _, body) =
            publish(&app, Some(&one_room.secret), &path, shipped(1), None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, Some("room_not_allowed")),
            "{path}"
        );
    }
    let (status, _, body) = publish(
        &app,
        Some(&one_room.secret),
        &events_path(allowed),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = publish(
        &app,
        Some(&one_room.secret),
        &user_signals_path(alice.id),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, Some("missing_scope"))
    );

    let missing = RoomId(987_654);
    for path in [events_path(missing), room_signals_path(missing)] {
        let (status, _, body) =
            publish(&app, Some(&everything.secret), &path, shipped(1), None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, Some("room_not_found")),
            "{path}"
        );
    }
    let (status, _, body) = publish(
        &app,
        Some(&everything.secret),
        &user_signals_path(UserId(987_654)),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    assert_eq!(
        customs(&history(&app, &alice, other).await),
        vec![],
        "nothing reached the room the key may not publish into"
    );
    app.stop().await;
}

async fn an_idempotent_retry_returns_the_original_event_and_stores_one(mode: Mode) {
    let app = spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "orders").await;
    let key = create_key(&app, &["rooms:publish"], None).await;

    let (status, headers, first) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(7),
        Some("order-7-shipped"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    // The same request again, with its payload's keys in another order.
    let (status, headers, again) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        json!({"payload": {"carrier": "ups", "order": 7}, "name": "acme.order_shipped"}),
        Some("order-7-shipped"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(again, first, "the original, same seq");

    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(8),
        Some("order-7-shipped"),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(8),
        Some("not a valid key"),
    )
    .await;
    assert_eq!(
        (status, code(&body), body["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("validation_failed"),
            Some("Idempotency-Key")
        )
    );

    // Concurrent retries of one request: one stores, all get its seq.
    let path = events_path(room);
    let retries = (0..6).map(|_| {
        publish(
            &app,
            Some(&key.secret),
            &path,
            shipped(9),
            Some("order-9-shipped"),
        )
    });
    let answers = futures::future::join_all(retries).await;
    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _, b)| s.is_success() && b["seq"] == answers[0].2["seq"]),
        "{answers:?}"
    );

    // Another key's Idempotency-Key space is its own.
    let other = create_key(&app, &["rooms:publish"], None).await;
    let (status, _, body) = publish(
        &app,
        Some(&other.secret),
        &events_path(room),
        shipped(7),
        Some("order-7-shipped"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let stored = customs(&history(&app, &alice, room).await);
    let seqs: Vec<i64> = stored.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(
        seqs,
        vec![
            first["seq"].as_i64().expect("seq"),
            answers[0].2["seq"].as_i64().expect("seq"),
            body["seq"].as_i64().expect("seq"),
        ],
        "one event per request, whatever the retries"
    );
    assert_eq!(
        app.last_seq(&alice, room).await,
        seqs[2],
        "no number was skipped by the retries that lost"
    );
    app.stop().await;
}

async fn a_custom_event_is_delivered_live_with_its_seq_and_kept_in_history(mode: Mode) {
    let app = spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "orders").await;
    app.add_member(&alice, room, &bob).await;
    let key = create_key(&app, &["rooms:publish"], Some(&[room])).await;
    let mut bob_ws = app.ws(1, &bob).await;
    let mut alice_packed =
        WsClient::authenticated(app.ws_url(2), &alice.token, Encoding::MsgPack).await;
    let joined_at = bob_ws.join(room).await.expect("bob is a member");
    alice_packed.join(room).await.expect("alice is a member");

    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &events_path(room),
        shipped(42),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let published: RoomEvent = serde_json::from_value(body.clone()).expect("a room event");
    assert_eq!(published.seq, joined_at + 1);
    assert_eq!(published.sender_id, key.user_id);
    assert_eq!(body["kind"], "custom");
    assert_eq!(body["name"], "acme.order_shipped");
    assert_eq!(body["payload"], json!({"order": 42, "carrier": "ups"}));

    let message = app.send_message(&alice, room, "thanks!").await;
    assert_eq!(
        message.seq,
        published.seq + 1,
        "one numbering with messages"
    );
    for ws in [&mut bob_ws, &mut alice_packed] {
        assert_eq!(next_event(ws).await, published, "{:?}", ws.encoding);
        assert_eq!(next_event(ws).await.seq, message.seq);
    }

    let stored = history(&app, &alice, room).await;
    assert!(stored.contains(&published), "{stored:?}");
    app.stop().await;
}

async fn signals_reach_joined_connections_and_users_and_are_not_in_history(mode: Mode) {
    let app = spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "orders").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;
    let key = create_key(&app, &["rooms:publish", "users:publish"], None).await;
    let mut alice_ws = app.ws(0, &alice).await;
    let mut bob_packed =
        WsClient::authenticated(app.ws_url(1), &bob.token, Encoding::MsgPack).await;
    // Carol is connected but has not joined the room.
    let mut carol_ws = app.ws(2, &carol).await;
    alice_ws.join(room).await.expect("alice is a member");
    bob_packed.join(room).await.expect("bob is a member");
    let before = app.last_seq(&alice, room).await;

    let cart = json!({"name": "acme.cart_updated", "payload": {"items": 3}});
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &room_signals_path(room),
        cart.clone(),
        Some("ignored-for-signals"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for ws in [&mut alice_ws, &mut bob_packed] {
        assert_eq!(
            next_signal(ws).await,
            (
                Some(room),
                None,
                "acme.cart_updated".to_owned(),
                json!({"items": 3})
            ),
            "{:?}",
            ws.encoding
        );
    }

    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &user_signals_path(carol.id),
        json!({"name": "acme.invoice_ready", "payload": "INV-9"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        next_signal(&mut carol_ws).await,
        (
            None,
            Some(carol.id),
            "acme.invoice_ready".to_owned(),
            json!("INV-9")
        ),
        "a user signal reaches the user's connections, joined or not"
    );

    // Everything for a connection is in front of its pong: carol got no
    // room signal, and alice and bob no user signal of carol's.
    for ws in [&mut carol_ws, &mut alice_ws, &mut bob_packed] {
        let extra = ws.until_pong().await;
        assert!(
            !extra
                .iter()
                .any(|f| matches!(f, ServerFrame::Signal { .. })),
            "{extra:?}"
        );
    }
    assert_eq!(
        app.last_seq(&alice, room).await,
        before,
        "signals are never numbered"
    );
    assert_eq!(customs(&history(&app, &alice, room).await), vec![]);
    app.stop().await;
}

async fn bad_names_and_oversized_payloads_are_refused_with_their_codes(mode: Mode) {
    let app = spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "orders").await;
    let key = create_key(&app, &["rooms:publish", "users:publish"], None).await;
    let paths = [
        events_path(room),
        room_signals_path(room),
        user_signals_path(alice.id),
    ];
    for path in &paths {
        for name in [
            "room.created",
            "message.created",
            "member.added",
            "parley.x",
            "nodots",
            "Acme.Order",
            "acme.order-shipped",
            "",
        ] {
            let (status, _, body) = publish(
                &app,
                Some(&key.secret),
                path,
                json!({"name": name, "payload": 1}),
                None,
            )
            .await;
            assert_eq!(
                (status, code(&body), body["error"]["field"].as_str()),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some("validation_failed"),
                    Some("name")
                ),
                "{path} {name:?}"
            );
        }
        let big = json!({"name": "acme.big", "payload": {"blob": "x".repeat(17 * 1024)}});
        let (status, _, body) = publish(&app, Some(&key.secret), path, big, None).await;
        assert_eq!(
            (status, code(&body)),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("event_payload_too_large")
            ),
            "{path}"
        );
        let (status, _, body) = publish(
            &app,
            Some(&key.secret),
            path,
            json!({"name": "acme.x", "payload": 1, "extra": true}),
            None,
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")),
            "{path}"
        );
    }
    let (status, _, body) = publish(
        &app,
        Some(&key.secret),
        &format!("/v1/server/rooms/{room}x/events"),
        shipped(1),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(customs(&history(&app, &alice, room).await), vec![]);
    app.stop().await;
}

async fn a_key_over_its_rate_limit_is_answered_429_with_retry_after(mode: Mode) {
    let mut options = Options::default();
    // A burst of three, then one a second.
    options.policy.server_publish_per_second = 1;
    options.policy.server_publish_burst = 3;
    let app = spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "orders").await;
    let busy = create_key(&app, &["rooms:publish"], None).await;
    let calm = create_key(&app, &["rooms:publish"], None).await;
    let signal = json!({"name": "acme.tick", "payload": null});
    for i in 0..3 {
        let (status, _, body) = publish(
            &app,
            Some(&busy.secret),
            &room_signals_path(room),
            signal.clone(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish {i}: {body}");
    }
    // Past the burst: of a few at once, at most the one refilled meanwhile
    // goes through (a token a second), the others are refused.
    let path = events_path(room);
    let more = (0..4).map(|_| publish(&app, Some(&busy.secret), &path, shipped(1), None));
    let answers = futures::future::join_all(more).await;
    let (_, headers, body) = answers
        .iter()
        .find(|(status, _, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap_or_else(|| panic!("none limited: {answers:?}"));
    assert_eq!(code(body), Some("rate_limited"));
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    let (status, _, body) = publish(
        &app,
        Some(&calm.secret),
        &room_signals_path(room),
        signal,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "the limit is per key: {body}");
    app.stop().await;
}
