//! Typing indicators: ephemeral, throttled, members only.

use shared::model::{EventKind, RoomEvent};
use shared::protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use shared::{RoomId, UserId};
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    a_typing_flood_forwards_one_event_per_interval_and_stores_nothing,
    a_message_ends_its_senders_typing_for_the_others,
    typing_for_a_room_not_joined_is_refused_and_goes_nowhere,
);

/// An interval no test run can outlast, so "one per interval" is exact.
const LONG_INTERVAL: Duration = Duration::from_secs(60);

async fn spawn(mode: Mode) -> TestApp {
    let mut options = Options::default();
    options.ws.typing_interval = LONG_INTERVAL;
    TestApp::spawn_with(mode, options).await
}

fn typing(room: RoomId, active: bool) -> ClientFrame {
    ClientFrame::Typing {
        id: None,
        room_id: room,
        active,
    }
}

/// `(user, active, ttl_ms)` of every typing frame among `frames`.
fn typings(frames: &[ServerFrame]) -> Vec<(UserId, bool, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Typing {
                user_id,
                active,
                ttl_ms,
                ..
            } => Some((*user_id, *active, *ttl_ms)),
            _ => None,
        })
        .collect()
}

/// Reads frames until `done` holds for one; returns all of them.
async fn read_until(
    client: &mut WsClient,
    done: impl Fn(&ServerFrame) -> bool,
) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    loop {
        let frame = client.frame().await;
        let last = done(&frame);
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

fn is_message_from(user: &TestUser) -> impl Fn(&ServerFrame) -> bool + '_ {
    move |f| matches!(f, ServerFrame::Event(RoomEvent { sender_id, kind: EventKind::MessageCreated { .. }, .. }) if *sender_id == user.id)
}

fn is_typing_stop(user: &TestUser) -> impl Fn(&ServerFrame) -> bool + '_ {
    move |f| matches!(f, ServerFrame::Typing { user_id, active: false, .. } if *user_id == user.id)
}

pub(crate) async fn a_typing_flood_forwards_one_event_per_interval_and_stores_nothing(mode: Mode) {
    let app = spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    // Alice types on gateway 0 and also reads on gateway 1; Bob is on gateway 2.
    let mut typist = app.ws(0, &alice).await;
    let mut alice_elsewhere = app.ws(1, &alice).await;
    let mut bob_ws = app.ws(2, &bob).await;
    for ws in [&mut typist, &mut alice_elsewhere, &mut bob_ws] {
        ws.join(room).await.expect("a member may join");
    }
    let before = app.last_seq(&alice, room).await;

    for _ in 0..40 {
        typist.send(&typing(room, true)).await;
    }
    typist.send(&typing(room, false)).await;
    assert_eq!(
        typist.until_pong().await,
        vec![],
        "excess typing frames are dropped silently, not answered"
    );

    // The stop is the last forwarded frame, so everything forwarded is in front of it.
    let seen = read_until(&mut bob_ws, is_typing_stop(&alice)).await;
    let ttl_ms = u64::try_from((LONG_INTERVAL * 2).as_millis()).unwrap();
    assert_eq!(
        typings(&seen),
        vec![(alice.id, true, ttl_ms), (alice.id, false, 0)],
        "one start per interval, then the stop"
    );
    assert_eq!(
        app.last_seq(&alice, room).await,
        before,
        "typing is never numbered nor stored"
    );
    let (_, history) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&alice.token))
        .await;
    assert!(
        history["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["seq"].as_i64() <= Some(before)),
        "nothing new in history: {history}"
    );

    // A message published after the typing events reaches Alice's own
    // connections behind anything they would have received.
    app.send_message(&bob, room, "hello").await;
    for ws in [&mut typist, &mut alice_elsewhere] {
        let frames = read_until(ws, is_message_from(&bob)).await;
        assert_eq!(typings(&frames), vec![], "nobody sees their own typing");
    }
    app.stop().await;
}

pub(crate) async fn a_message_ends_its_senders_typing_for_the_others(mode: Mode) {
    let app = spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut alice_ws = app.ws(0, &alice).await;
    // MessagePack on the receiving side: ephemeral frames are transcoded too.
    let mut bob_ws = WsClient::authenticated(app.ws_url(1), &bob.token, Encoding::MsgPack).await;
    alice_ws.join(room).await.expect("join");
    bob_ws.join(room).await.expect("join");

    alice_ws.send(&typing(room, true)).await;
    assert_eq!(
        alice_ws.until_pong().await,
        vec![],
        "typing is not answered"
    );
    let seen = read_until(&mut bob_ws, |f| matches!(f, ServerFrame::Typing { .. })).await;
    assert_eq!(typings(&seen).len(), 1);

    app.send_message(&alice, room, "done typing").await;
    let frames = read_until(&mut bob_ws, is_typing_stop(&alice)).await;
    assert!(
        is_message_from(&alice)(&frames[frames.len() - 2]),
        "the stop follows the message: {frames:?}"
    );

    // Posting also reset the throttle: typing right after a message shows
    // at once, well within the interval of the first frame.
    read_until(&mut alice_ws, is_message_from(&alice)).await;
    alice_ws.send(&typing(room, true)).await;
    let again = read_until(&mut bob_ws, |f| matches!(f, ServerFrame::Typing { .. })).await;
    assert_eq!(
        typings(&again).last().map(|t| (t.0, t.1)),
        Some((alice.id, true))
    );
    app.stop().await;
}

async fn typing_for_a_room_not_joined_is_refused_and_goes_nowhere(mode: Mode) {
    let app = spawn(mode).await;
    let (alice, bob, mallory) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("mallory").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut bob_ws = app.ws(1, &bob).await;
    bob_ws.join(room).await.expect("join");

    // A member who has not joined on this connection, a stranger, and a room
    // that does not exist: the same documented error, with the request id.
    let mut clients = [app.ws(0, &alice).await, app.ws(0, &mallory).await];
    assert_eq!(clients[1].join(room).await, Err(ErrorCode::RoomNotFound));
    for (who, target) in [(0, room), (1, room), (0, RoomId(9_999_999))] {
        let ws = &mut clients[who];
        ws.send(&ClientFrame::Typing {
            id: Some(77),
            room_id: target,
            active: true,
        })
        .await;
        match ws.frame().await {
            ServerFrame::Error {
                id: Some(77),
                code: ErrorCode::NotJoined,
                room_id: Some(r),
                ..
            } if r == target => {}
            other => panic!("expected not_joined, got {other:?}"),
        }
    }

    // Bob heard nothing: a message sent afterwards arrives with no typing before it.
    app.send_message(&alice, room, "hi").await;
    let frames = read_until(&mut bob_ws, is_message_from(&alice)).await;
    assert_eq!(typings(&frames), vec![]);
    app.stop().await;
}
