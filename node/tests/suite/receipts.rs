//! Read markers, receipts and unread counts.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::model::{EventKind, RoomEvent, UNREAD_CAP};
use shared::protocol::{ClientFrame, ErrorCode, ServerFrame};
use shared::{RoomId, UserId};
use std::time::{Duration, Instant};
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes, eventually};

both_modes!(
    a_read_reaches_the_readers_other_devices_and_the_rooms_members,
    concurrent_out_of_order_reads_never_move_a_marker_backwards,
    unread_counts_are_exact_after_messages_membership_events_and_own_posts,
    bad_reads_get_documented_errors_and_change_nothing,
    rooms_above_the_receipt_limit_only_tell_the_reader,
    a_thousand_read_frames_are_written_in_a_few_batches,
);

/// How long markers may take to reach the database and come back.
const SETTLE: Duration = Duration::from_secs(10);

fn read(room: RoomId, seq: i64) -> ClientFrame {
    ClientFrame::Read {
        id: None,
        room_id: room,
        seq,
    }
}

/// Reads frames until `n` messages have arrived.
async fn read_messages(ws: &mut WsClient, n: usize) {
    let mut seen = 0;
    while seen < n {
        if let ServerFrame::Event(RoomEvent {
            kind: EventKind::MessageCreated { .. },
            ..
        }) = ws.frame().await
        {
            seen += 1;
        }
    }
}

/// `user`'s (read_seq, delivered_seq) in `room`, as the receipts resource says.
async fn markers(app: &TestApp, asker: &TestUser, room: RoomId, user: UserId) -> (i64, i64) {
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/receipts"), Some(&asker.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["receipts"]
        .as_array()
        .expect("receipts")
        .iter()
        .find(|r| r["user_id"] == json!(user))
        .map(|r| {
            (
                r["read_seq"].as_i64().expect("read_seq"),
                r["delivered_seq"].as_i64().expect("delivered_seq"),
            )
        })
        .expect("a member has markers")
}

/// The caller's view of `room` in `GET /v1/rooms`.
async fn listed(app: &TestApp, user: &TestUser, room: RoomId) -> Value {
    let (status, body) = app.get("/v1/rooms", Some(&user.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["id"] == json!(room))
        .cloned()
        .expect("the room is listed");
    let (_, single) = app
        .get(&format!("/v1/rooms/{room}"), Some(&user.token))
        .await;
    assert_eq!(single, listed, "the room resource agrees with the list");
    listed
}

async fn a_read_reaches_the_readers_other_devices_and_the_rooms_members(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut laptop = app.ws(0, &bob).await;
    // The phone has not joined the room: the marker is a user event.
    let mut phone = app.ws(1, &bob).await;
    let mut alice_ws = app.ws(2, &alice).await;
    laptop.join(room).await.expect("join");
    alice_ws.join(room).await.expect("join");
    let mut last = 0;
    for n in 0..3 {
        last = app.send_message(&alice, room, &format!("m{n}")).await.seq;
    }
    read_messages(&mut laptop, 3).await;

    laptop.send(&read(room, last)).await;
    loop {
        match phone.frame().await {
            ServerFrame::ReadMarker { room_id, read_seq } if room_id == room => {
                assert_eq!(read_seq, last);
                break;
            }
            _ => continue,
        }
    }
    loop {
        match alice_ws.frame().await {
            ServerFrame::Receipt {
                room_id,
                user_id,
                read_seq,
                delivered_seq,
            } if room_id == room => {
                assert_eq!((user_id, read_seq, delivered_seq), (bob.id, last, last));
                break;
            }
            _ => continue,
        }
    }
    let view = listed(&app, &bob, room).await;
    assert_eq!(
        (view["read_seq"].as_i64(), view["unread"].as_i64()),
        (Some(last), Some(0))
    );
    app.stop().await;
}

async fn concurrent_out_of_order_reads_never_move_a_marker_backwards(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut devices = vec![app.ws(0, &bob).await, app.ws(1, &bob).await];
    for ws in &mut devices {
        ws.join(room).await.expect("join");
    }
    let mut last = 0;
    for n in 0..30 {
        last = app.send_message(&alice, room, &format!("m{n}")).await.seq;
    }
    for ws in &mut devices {
        read_messages(ws, 30).await;
    }
    let first = last - 29;

    // Both devices send every seq, in opposite scrambled orders, at once,
    // while the markers are watched: they may only grow.
    let orders: Vec<Vec<i64>> = vec![
        (first..=last).rev().collect(),
        (first..=last).map(|s| first + (s * 7) % 30).collect(),
    ];
    let senders = devices
        .iter_mut()
        .zip(orders)
        .map(|(ws, order)| async move {
            for seq in order {
                ws.send(&read(room, seq)).await;
            }
        });
    join_all(senders).await;
    let seen = std::sync::Mutex::new(Vec::new());
    let reached = eventually(SETTLE, || async {
        let (read, delivered) = markers(&app, &alice, room, bob.id).await;
        seen.lock().unwrap().push((read, delivered));
        read == last
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(reached, "the largest read wins: {seen:?}");
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "markers never move backwards: {seen:?}"
    );
    assert!(seen.iter().all(|(r, d)| r <= d), "read implies delivered");

    // Later backwards reads, by frame and by REST, change nothing; the next
    // real read still moves the marker.
    devices[0].send(&read(room, first)).await;
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/read"),
            Some(&bob.token),
            json!({"seq": first}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["read_seq"].as_i64(), Some(last));
    let newest = app.send_message(&alice, room, "one more").await.seq;
    read_messages(&mut devices[1], 1).await;
    devices[1].send(&read(room, newest)).await;
    assert!(
        eventually(SETTLE, || async {
            markers(&app, &alice, room, bob.id).await.0 == newest
        })
        .await
    );
    app.stop().await;
}

async fn unread_counts_are_exact_after_messages_membership_events_and_own_posts(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;
    for n in 0..3 {
        app.send_message(&alice, room, &format!("a{n}")).await;
    }
    let view = listed(&app, &bob, room).await;
    assert_eq!(
        view["unread"], 3,
        "membership events are not unread: {view}"
    );
    assert_eq!(
        view["read_seq"], 2,
        "a member has read up to the event that added them"
    );
    let alice_view = listed(&app, &alice, room).await;
    assert_eq!(
        alice_view["unread"], 0,
        "your own messages are never unread"
    );
    assert_eq!(alice_view["read_seq"], alice_view["last_seq"]);

    let dave = app.user("dave").await;
    app.add_member(&alice, room, &dave).await;
    assert_eq!(
        listed(&app, &dave, room).await["unread"],
        0,
        "what came before joining is history, not unread"
    );

    // Read up to the second message: one left.
    let second = view["last_seq"].as_i64().expect("last_seq") - 1;
    let (status, body) = app
        .post(
            &format!("/v1/rooms/{room}/read"),
            Some(&bob.token),
            json!({"seq": second}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(listed(&app, &bob, room).await["unread"], 1);

    // Bob's own post moves his marker past everything before it.
    let own = app.send_message(&bob, room, "mine").await;
    let view = listed(&app, &bob, room).await;
    assert_eq!(
        (view["read_seq"].as_i64(), view["unread"].as_i64()),
        (Some(own.seq), Some(0))
    );

    // A removal (a membership event) and one more message from Alice.
    let (status, _) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", carol.id),
            Some(&alice.token),
        )
        .await;
    assert!(status.is_success());
    app.send_message(&alice, room, "after").await;
    let view = listed(&app, &bob, room).await;
    assert_eq!(view["unread"], 1, "{view}");
    assert_eq!(view["last_seq"].as_i64(), Some(own.seq + 2));

    // Past the cap the count stops.
    let (app_ref, alice_ref) = (&app, &alice);
    join_all((0..UNREAD_CAP + 5).map(|n| async move {
        app_ref
            .send_message(alice_ref, room, &format!("flood {n}"))
            .await
    }))
    .await;
    assert_eq!(listed(&app, &bob, room).await["unread"], UNREAD_CAP);
    app.stop().await;
}

async fn bad_reads_get_documented_errors_and_change_nothing(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, mallory) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("mallory").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let joined = markers(&app, &alice, room, bob.id).await.0;
    let last = app.send_message(&alice, room, "hello").await.seq;
    let mut bob_ws = app.ws(0, &bob).await;
    let mut mallory_ws = app.ws(1, &mallory).await;

    // Frames: not joined, a stranger, an unknown room, beyond the end, below 1.
    let expect = |code: ErrorCode| {
        move |frame: ServerFrame| match frame {
            ServerFrame::Error {
                id: Some(9),
                code: got,
                ..
            } if got == code => {}
            other => panic!("expected {code:?}, got {other:?}"),
        }
    };
    let bad = |room_id, seq| ClientFrame::Read {
        id: Some(9),
        room_id,
        seq,
    };
    bob_ws.send(&bad(room, last)).await;
    expect(ErrorCode::NotJoined)(bob_ws.frame().await);
    mallory_ws.send(&bad(room, last)).await;
    expect(ErrorCode::NotJoined)(mallory_ws.frame().await);
    mallory_ws.send(&bad(RoomId(9_999_999), 1)).await;
    expect(ErrorCode::NotJoined)(mallory_ws.frame().await);
    bob_ws.join(room).await.expect("join");
    bob_ws.send(&bad(room, last + 1)).await;
    expect(ErrorCode::InvalidSeq)(bob_ws.frame().await);
    bob_ws.send(&bad(room, 0)).await;
    expect(ErrorCode::InvalidSeq)(bob_ws.frame().await);

    // REST: the same cases.
    let path = format!("/v1/rooms/{room}/read");
    for seq in [0, -5, last + 1] {
        let (status, body) = app.post(&path, Some(&bob.token), json!({"seq": seq})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["field"], "seq");
    }
    let (status, body) = app
        .post(&path, Some(&mallory.token), json!({"seq": 1}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("room_not_found"))
    );
    let (status, _) = app
        .post(
            "/v1/rooms/9999999/read",
            Some(&bob.token),
            json!({"seq": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.post(&path, Some(&bob.token), json!({"seq": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .get(&format!("/v1/rooms/{room}/receipts"), Some(&mallory.token))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "receipts are for members only"
    );

    assert_eq!(
        markers(&app, &alice, room, bob.id).await.0,
        joined,
        "nothing moved"
    );

    let (_, spec) = app.get("/openapi.json", None).await;
    for path in ["/v1/rooms/{room_id}/read", "/v1/rooms/{room_id}/receipts"] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    for field in ["read_seq", "unread"] {
        assert!(
            spec["components"]["schemas"]["Room"]["properties"][field].is_object(),
            "Room.{field} is documented"
        );
    }
    assert!(spec["components"]["schemas"]["ReceiptList"].is_object());
    assert_eq!(
        bob_ws.until_pong().await.len(),
        0,
        "the connection stays usable"
    );
    app.stop().await;
}

async fn a_thousand_read_frames_are_written_in_a_few_batches(mode: Mode) {
    const USERS: usize = 10;
    const FRAMES_EACH: usize = 100;
    let mut options = Options::default();
    options.ws.client_frames_per_second = 10_000;
    options.ws.client_frame_burst = 10_000;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let mut readers = Vec::new();
    for n in 0..USERS {
        let user = app.user(&format!("reader{n}")).await;
        app.add_member(&alice, room, &user).await;
        let mut ws = app.ws(0, &user).await;
        ws.join(room).await.expect("join");
        readers.push((user, ws));
    }
    let mut last = 0;
    for n in 0..50 {
        last = app.send_message(&alice, room, &format!("m{n}")).await.seq;
    }
    for (_, ws) in &mut readers {
        read_messages(ws, 50).await;
    }
    // Delivery markers settle first, so the count below is reads only.
    for (user, _) in &readers {
        assert!(
            eventually(SETTLE, || async {
                markers(&app, &alice, room, user.id).await.1 == last
            })
            .await
        );
    }
    let gateway = app.gateway(0);
    let before = gateway.marker_batches();
    let started = Instant::now();
    let sends = readers.iter_mut().map(|(_, ws)| async move {
        for i in 0..FRAMES_EACH {
            ws.send(&read(room, last - 49 + (i as i64 % 50))).await;
        }
    });
    join_all(sends).await;
    for (user, _) in &readers {
        assert!(
            eventually(SETTLE, || async {
                markers(&app, &alice, room, user.id).await.0 == last
            })
            .await
        );
    }
    let elapsed = started.elapsed();
    let batches = gateway.marker_batches() - before;
    println!(
        "{} read frames from {USERS} users in {elapsed:?}: {batches} marker batches (two statements each)",
        USERS * FRAMES_EACH
    );
    // One batch per flush interval at most while frames arrive.
    let bound = elapsed.as_millis() / store::FLUSH_INTERVAL.as_millis() + 2;
    assert!(
        u128::from(batches) <= bound,
        "{batches} batches for {} frames in {elapsed:?}",
        USERS * FRAMES_EACH
    );
    app.stop().await;
}

async fn rooms_above_the_receipt_limit_only_tell_the_reader(mode: Mode) {
    let mut options = Options::default();
    // Two members is above a limit of one.
    options.ws.receipt_room_limit = 1;
    options.policy.receipt_room_limit = 1;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut laptop = app.ws(0, &bob).await;
    let mut phone = app.ws(1, &bob).await;
    let mut alice_ws = app.ws(2, &alice).await;
    laptop.join(room).await.expect("join");
    alice_ws.join(room).await.expect("join");
    let first = app.send_message(&alice, room, "one").await.seq;
    let second = app.send_message(&alice, room, "two").await.seq;
    read_messages(&mut laptop, 2).await;

    // One read by frame, one by REST: the reader's devices hear of both.
    laptop.send(&read(room, first)).await;
    for expected in [first, second] {
        if expected == second {
            let (status, body) = app
                .post(
                    &format!("/v1/rooms/{room}/read"),
                    Some(&bob.token),
                    json!({"seq": second}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        loop {
            match phone.frame().await {
                ServerFrame::ReadMarker { read_seq, .. } if read_seq == expected => break,
                _ => continue,
            }
        }
    }
    // A receipt would have been published before the reader's notice, so
    // before this message: nothing but messages reaches Alice.
    app.send_message(&bob, room, "three").await;
    let mut frames = Vec::new();
    loop {
        let frame = alice_ws.frame().await;
        let done = matches!(&frame, ServerFrame::Event(RoomEvent { sender_id, .. }) if *sender_id == bob.id);
        frames.push(frame);
        if done {
            break;
        }
    }
    assert!(
        frames.iter().all(|f| matches!(f, ServerFrame::Event(_))),
        "no receipt in a room above the limit: {frames:?}"
    );
    app.stop().await;
}
