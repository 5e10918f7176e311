//! Live delivery through the gateways.

use futures::future::join_all;
use serde_json::json;
use shared::model::{EventKind, RoomEvent};
use shared::protocol::{ClientFrame, Encoding, ErrorCode, LeftReason, ServerFrame, close};
use std::time::Duration;
use testkit::{Mode, Options, TestApp, WsClient, both_modes, eventually};
use tokio_tungstenite::tungstenite::Message;

both_modes!(
    a_message_reaches_every_member_once_in_order_and_nobody_else,
    concurrent_posts_are_delivered_in_sequence_order,
    a_node_is_subscribed_to_a_room_only_while_it_has_local_members,
    bad_tokens_are_refused_with_documented_close_codes,
    a_revoked_session_loses_its_live_connections,
    malformed_frames_get_an_error_and_nobody_else_notices,
    oversized_and_invalid_frames_close_only_their_own_connection,
    a_removed_member_stops_receiving_at_the_removal,
    a_member_added_is_told_on_their_connections,
    msgpack_connections_receive_the_same_events,
    an_event_whose_publish_was_lost_is_recovered_from_the_store,
    a_silent_peer_is_found_by_the_heartbeat_and_forgotten,
    a_client_that_stops_reading_is_closed_as_slow_and_nobody_else_notices,
    events_held_by_the_write_window_still_arrive_all_and_in_order,
);

/// Message events among frames, as (seq, body).
fn messages(frames: &[ServerFrame]) -> Vec<(i64, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event(RoomEvent {
                seq,
                kind: EventKind::MessageCreated { body, .. },
                ..
            }) => Some((*seq, body.clone())),
            _ => None,
        })
        .collect()
}

/// Reads frames until `n` message events have arrived; returns them all.
async fn read_messages(client: &mut WsClient, n: usize) -> Vec<(i64, String)> {
    let mut frames = Vec::new();
    while messages(&frames).len() < n {
        frames.push(client.frame().await);
    }
    messages(&frames)
}

pub(crate) async fn a_message_reaches_every_member_once_in_order_and_nobody_else(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;

    // One member per gateway node.
    let mut members = Vec::new();
    for (i, user) in [&alice, &bob, &carol].into_iter().enumerate() {
        let mut ws = app.ws(i, user).await;
        ws.join(room).await.expect("a member may join");
        members.push(ws);
    }
    // The outsider is on every node, and is refused everywhere.
    let mut outsiders = Vec::new();
    for i in 0..app.gateway_count() {
        let mut ws = app.ws(i, &dave).await;
        assert_eq!(ws.join(room).await, Err(ErrorCode::RoomNotFound));
        outsiders.push(ws);
    }

    let sent: Vec<RoomEvent> = {
        let mut sent = Vec::new();
        for n in 0..20 {
            sent.push(
                app.send_message(&alice, room, &format!("message {n}"))
                    .await,
            );
        }
        sent
    };
    let expected: Vec<(i64, String)> = sent
        .iter()
        .map(|e| match &e.kind {
            EventKind::MessageCreated { body, .. } => (e.seq, body.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();

    for member in &mut members {
        assert_eq!(
            read_messages(member, expected.len()).await,
            expected,
            "in order, each once"
        );
        // Nothing else (no duplicate) is queued behind them.
        assert_eq!(messages(&member.until_pong().await), vec![]);
    }
    // Every member has its copy, so every node has finished fanning the
    // events out: had an outsider been a recipient, its copy would sit
    // before its pong.
    for outsider in &mut outsiders {
        assert_eq!(
            outsider.until_pong().await,
            vec![],
            "the outsider received nothing"
        );
    }
    if mode.is_cluster() {
        assert_eq!(
            app.redis_subscribers(room).await,
            Some(3),
            "each node with a member subscribes once"
        );
    }
    app.stop().await;
}

pub(crate) async fn concurrent_posts_are_delivered_in_sequence_order(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "busy").await;
    app.add_member(&alice, room, &bob).await;
    let mut watcher = app.ws(1, &bob).await;
    let joined_at = watcher.join(room).await.expect("join");

    let posts = (0..60).map(|n| {
        let (app, author) = (&app, if n % 2 == 0 { &alice } else { &bob });
        async move { app.send_message(author, room, &format!("m{n}")).await.seq }
    });
    let mut seqs: Vec<i64> = join_all(posts).await;
    seqs.sort();
    let first = joined_at + 1;
    assert_eq!(
        seqs,
        (first..first + 60).collect::<Vec<_>>(),
        "gap-free, never shared"
    );

    let received: Vec<i64> = read_messages(&mut watcher, 60)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        received, seqs,
        "delivered in sequence order whatever the publish order"
    );
    app.stop().await;
}

pub(crate) async fn a_node_is_subscribed_to_a_room_only_while_it_has_local_members(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "quiet").await;
    for i in 0..app.gateway_count() {
        assert!(
            !app.gateway(i).is_subscribed_to_room(room),
            "nobody joined yet"
        );
    }

    let mut ws = app.ws(0, &alice).await;
    ws.join(room).await.expect("join");
    assert!(app.gateway(0).is_subscribed_to_room(room));
    assert_eq!(app.gateway(0).local_rooms().await, vec![room]);
    for i in 1..app.gateway_count() {
        assert!(
            !app.gateway(i).is_subscribed_to_room(room),
            "node {i} has no member of the room"
        );
        assert_eq!(app.gateway(i).local_rooms().await, vec![]);
    }
    if mode.is_cluster() {
        assert_eq!(app.redis_subscribers(room).await, Some(1));
    }

    ws.send(&ClientFrame::Leave {
        id: Some(9),
        room_id: room,
    })
    .await;
    assert_eq!(
        ws.frame().await,
        ServerFrame::Left {
            id: Some(9),
            room_id: room,
            reason: LeftReason::Requested
        }
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !app.gateway(0).is_subscribed_to_room(room)
        })
        .await
    );
    if mode.is_cluster() {
        assert_eq!(
            app.redis_subscribers(room).await,
            Some(0),
            "Redis stops sending to the node"
        );
    }

    // A disconnect releases the subscription like a leave.
    ws.join(room).await.expect("join again");
    assert!(app.gateway(0).is_subscribed_to_room(room));
    ws.close().await;
    let gw = app.gateway(0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !gw.is_subscribed_to_room(room) && gw.connection_count() == 0
        })
        .await
    );
    assert_eq!(gw.local_rooms().await, vec![]);
    app.stop().await;
}

async fn bad_tokens_are_refused_with_documented_close_codes(mode: Mode) {
    let mut options = Options::default();
    options.ws.auth_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let url = app.ws_url(0).to_owned();

    let mut garbage = WsClient::connect(&url, Encoding::Json).await;
    garbage
        .send(&ClientFrame::Auth {
            id: None,
            token: "not-a-token".into(),
        })
        .await;
    assert_eq!(garbage.closed().await, Some(close::UNAUTHORIZED));

    let mut expired = WsClient::connect(&url, Encoding::Json).await;
    expired
        .send(&ClientFrame::Auth {
            id: None,
            token: app.expired_token(&alice, Duration::from_secs(60)),
        })
        .await;
    assert_eq!(expired.closed().await, Some(close::TOKEN_EXPIRED));

    let mut no_auth = WsClient::connect(&url, Encoding::Json).await;
    no_auth
        .send(&ClientFrame::Join {
            id: None,
            room_id: shared::RoomId(1),
            since_seq: None,
            presence: false,
        })
        .await;
    assert_eq!(
        no_auth.closed().await,
        Some(close::UNAUTHORIZED),
        "the first frame must be auth"
    );

    let mut silent = WsClient::connect(&url, Encoding::Json).await;
    assert_eq!(silent.closed().await, Some(close::AUTH_TIMEOUT));

    // A token of a session that was logged out.
    let bob = app.user("bob").await;
    let (status, _) = app
        .post("/v1/auth/logout", Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 204);
    let mut revoked = WsClient::connect(&url, Encoding::Json).await;
    revoked
        .send(&ClientFrame::Auth {
            id: None,
            token: bob.token.clone(),
        })
        .await;
    assert_eq!(revoked.closed().await, Some(close::SESSION_REVOKED));

    // None of them left anything behind.
    let gw = app.gateway(0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.connection_count() == 0
        })
        .await
    );
    // The session is checked once the user's notices reach the node (so a
    // revocation during the check is not missed): the refused socket's
    // subscription is let go after it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.subscribed_topics().is_empty()
        })
        .await,
        "{:?}",
        gw.subscribed_topics()
    );
    app.stop().await;
}

async fn a_revoked_session_loses_its_live_connections(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let other_session = app.login("alice", "alice-correct-horse").await;
    let mut doomed = app.ws(1, &alice).await;
    let mut kept = app.ws(2, &other_session).await;

    let (status, _) = app
        .delete(
            &format!("/v1/auth/sessions/{}", alice.session_id),
            Some(&other_session.token),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(doomed.closed().await, Some(close::SESSION_REVOKED));
    assert_eq!(
        kept.until_pong().await,
        vec![],
        "the other session's connection is untouched"
    );
    app.stop().await;
}

async fn malformed_frames_get_an_error_and_nobody_else_notices(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut bystander = app.ws(0, &bob).await;
    bystander.join(room).await.expect("join");
    let mut ws = app.ws(0, &alice).await;

    let cases: Vec<(Message, ErrorCode)> = vec![
        (Message::text("{not json"), ErrorCode::InvalidFrame),
        (
            Message::text(r#"{"type":"teleport"}"#),
            ErrorCode::UnknownType,
        ),
        (
            Message::text(r#"{"type":"join","room_id":"seven"}"#),
            ErrorCode::InvalidFrame,
        ),
        (Message::text(r#"{"type":"join"}"#), ErrorCode::InvalidFrame),
        (Message::text("[]"), ErrorCode::InvalidFrame),
        (
            Message::binary(vec![0xc1, 0xff, 0x00, 0x13]),
            ErrorCode::InvalidFrame,
        ),
        (
            Message::text(r#"{"type":"auth","token":"again"}"#),
            ErrorCode::AlreadyAuthenticated,
        ),
        (
            Message::text(r#"{"type":"leave","room_id":424242}"#),
            ErrorCode::NotJoined,
        ),
        (
            Message::text(r#"{"type":"join","room_id":424242}"#),
            ErrorCode::RoomNotFound,
        ),
    ];
    for (message, expected) in cases {
        let shown = format!("{message:?}");
        ws.send_raw(message).await;
        match ws.frame().await {
            ServerFrame::Error { code, .. } => assert_eq!(code, expected, "{shown}"),
            other => panic!("expected an error for {shown}, got {other:?}"),
        }
    }
    // The connection still works, and so does everyone else's.
    assert_eq!(ws.join(room).await.map(|_| ()), Ok(()));
    let sent = app.send_message(&alice, room, "still here").await;
    for client in [&mut ws, &mut bystander] {
        assert_eq!(
            read_messages(client, 1).await,
            vec![(sent.seq, "still here".to_owned())]
        );
    }
    app.stop().await;
}

async fn oversized_and_invalid_frames_close_only_their_own_connection(mode: Mode) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let mut bystander = app.ws(0, &alice).await;
    bystander.join(room).await.expect("join");

    let mut big = app.ws(0, &alice).await;
    let huge = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(shared::protocol::MAX_CLIENT_FRAME_BYTES)
    );
    big.send_raw(Message::text(huge)).await;
    assert_eq!(big.closed().await, Some(close::MESSAGE_TOO_BIG));

    let mut bad_utf8 = app.ws(0, &alice).await;
    bad_utf8
        .send_raw(Message::Frame(Frame::message(
            vec![0xff, 0xfe, 0x22],
            OpCode::Data(Data::Text),
            true,
        )))
        .await;
    assert_eq!(bad_utf8.closed().await, Some(close::INVALID_PAYLOAD));

    let sent = app.send_message(&alice, room, "unbothered").await;
    assert_eq!(
        read_messages(&mut bystander, 1).await,
        vec![(sent.seq, "unbothered".to_owned())]
    );
    app.stop().await;
}

async fn a_removed_member_stops_receiving_at_the_removal(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut owner = app.ws(0, &alice).await;
    owner.join(room).await.expect("join");
    let mut ws = app.ws(1, &bob).await;
    ws.join(room).await.expect("join");

    let before = app.send_message(&alice, room, "before").await;
    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let after = app.send_message(&alice, room, "after").await;

    // Bob's room events end with his removal, then he is told he left. The
    // user notice travels on its own channel, so it may come at any point.
    let mut frames = Vec::new();
    while !(frames.contains(&ServerFrame::RoomRemoved { room_id: room })
        && frames.iter().any(|f| matches!(f, ServerFrame::Left { .. })))
    {
        frames.push(ws.frame().await);
    }
    frames.extend(ws.until_pong().await);
    let events: Vec<&EventKind> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event(e) => Some(&e.kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            &EventKind::MessageCreated {
                body: "before".into(),
                client_msg_id: None,
                reply_to_seq: None,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
            &EventKind::MemberRemoved { user_id: bob.id }
        ],
        "everything up to the removal, nothing after: {frames:?}"
    );
    let removal = frames.iter().position(|f| {
        matches!(
            f,
            ServerFrame::Event(RoomEvent {
                kind: EventKind::MemberRemoved { .. },
                ..
            })
        )
    });
    let left = frames.iter().position(|f| {
        *f == ServerFrame::Left {
            id: None,
            room_id: room,
            reason: LeftReason::Removed,
        }
    });
    assert!(removal < left, "{frames:?}");
    assert_eq!(ws.join(room).await, Err(ErrorCode::RoomNotFound));

    // The owner, still a member, got everything.
    let all = read_messages(&mut owner, 2).await;
    assert_eq!(
        all,
        vec![
            (before.seq, "before".to_owned()),
            (after.seq, "after".to_owned())
        ]
    );
    app.stop().await;
}

async fn a_member_added_is_told_on_their_connections(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    let mut phone = app.ws(0, &bob).await;
    let mut laptop = app.ws(2, &bob).await;
    app.add_member(&alice, room, &bob).await;
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(
            ws.frame().await,
            ServerFrame::RoomAdded {
                room_id: room,
                role: shared::model::Role::Member
            }
        );
        ws.join(room).await.expect("now a member");
    }
    app.stop().await;
}

async fn msgpack_connections_receive_the_same_events(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let mut json = app.ws(0, &alice).await;
    let mut packed = WsClient::authenticated(app.ws_url(1), &alice.token, Encoding::MsgPack).await;
    json.join(room).await.expect("join");
    packed.join(room).await.expect("join");
    let sent = app.send_message(&alice, room, "héllo, wörld").await;
    let a = json.frame().await;
    let b = packed.frame().await;
    assert_eq!(a, ServerFrame::Event(sent));
    assert_eq!(a, b, "the same event in both encodings");
    app.stop().await;
}

async fn an_event_whose_publish_was_lost_is_recovered_from_the_store(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let mut ws = app.ws(1, &alice).await;
    ws.join(room).await.expect("join");

    // Written straight to the store: committed, never published.
    let store = store::Store::connect(&app.database_url(), 1)
        .await
        .expect("store");
    let lost = match store
        .post_message(store::NewMessage {
            room_id: room,
            sender_id: alice.id,
            body: "lost in transit",
            client_msg_id: None,
            reply_to_seq: None,
            created_at: shared::model::now_millis(),
        })
        .await
        .expect("post")
    {
        store::PostOutcome::Created(e) => e,
        other => panic!("{other:?}"),
    };
    store.close().await;
    let next = app.send_message(&alice, room, "next").await;
    assert_eq!(
        read_messages(&mut ws, 2).await,
        vec![
            (lost.seq, "lost in transit".to_owned()),
            (next.seq, "next".to_owned())
        ],
        "the gap is filled from the store, in order"
    );
    app.stop().await;
}

async fn a_client_that_stops_reading_is_closed_as_slow_and_nobody_else_notices(mode: Mode) {
    /// A bound on the test, far above what it needs.
    const MAX_POSTS: usize = 3_000;
    let mut options = Options::default();
    options.ws.outbound_queue = 8;
    options.policy.messages_per_second = 100_000;
    options.policy.messages_burst = 100_000;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;

    // Bob authenticates and joins, then never reads again.
    let mut slow = raw::RawPeer::connect_with_window(app.ws_url(0), Some(4096)).await;
    slow.send_text(&format!(r#"{{"type":"auth","token":"{}"}}"#, bob.token))
        .await;
    slow.send_text(&format!(r#"{{"type":"join","room_id":{room}}}"#))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.gateway(0).local_rooms().await == vec![room]
        })
        .await,
        "bob joined"
    );
    let last = app.gateway_count() - 1;
    let mut reader = app.ws(last, &alice).await;
    reader.join(room).await.expect("a member may join");
    let before = app.gateway(0).connection_count();

    // Post until the gateway gives up on Bob's connection.
    let body = "x".repeat(3_000);
    let mut posted = 0;
    while app.gateway(0).connection_count() == before {
        assert!(posted < MAX_POSTS, "the slow client was never closed");
        app.send_message(&alice, room, &body).await;
        posted += 1;
    }

    // Alice, reading, got every message in order.
    let got = read_messages(&mut reader, posted).await;
    let seqs: Vec<i64> = got.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(got.len(), posted);
    // Bob, reading at last, finds what was queued and then the close.
    let (_, code) = slow.read_until_close().await;
    assert_eq!(code, Some(close::SLOW_CONSUMER));
    app.stop().await;
}

async fn events_held_by_the_write_window_still_arrive_all_and_in_order(mode: Mode) {
    const POSTS: usize = 20;
    let mut options = Options::default();
    // Long enough that every post after the first lands inside the window.
    options.ws.write_coalesce = Duration::from_millis(300);
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let mut ws = app.ws(app.gateway_count() - 1, &bob).await;
    ws.join(room).await.expect("a member may join");

    let mut sent = Vec::new();
    for i in 0..POSTS {
        sent.push(app.send_message(&alice, room, &format!("m{i}")).await.seq);
    }
    let got = read_messages(&mut ws, POSTS).await;
    assert_eq!(got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), sent);
    assert_eq!(
        got.iter().map(|(_, body)| body.clone()).collect::<Vec<_>>(),
        (0..POSTS).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    app.stop().await;
}

async fn a_silent_peer_is_found_by_the_heartbeat_and_forgotten(mode: Mode) {
    let mut options = Options::default();
    options.ws.heartbeat_interval = Duration::from_millis(200);
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;

    // A raw client that authenticates and joins, then never answers a ping.
    let mut peer = raw::RawPeer::connect(app.ws_url(0)).await;
    peer.send_text(&format!(r#"{{"type":"auth","token":"{}"}}"#, alice.token))
        .await;
    peer.send_text(&format!(r#"{{"type":"join","room_id":{room}}}"#))
        .await;
    let (pings, code) = peer.read_until_close().await;
    assert!(pings >= 2, "the gateway pinged ({pings}) before giving up");
    assert_eq!(code, Some(close::HEARTBEAT_TIMEOUT));
    let gw = app.gateway(0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.connection_count() == 0 && !gw.is_subscribed_to_room(room)
        })
        .await
    );
    assert_eq!(gw.local_rooms().await, vec![]);
    app.stop().await;
}

/// A minimal WebSocket client over a raw socket, for behaviour a normal
/// client library hides (never answering pings, not reading at all).
pub(crate) mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    pub struct RawPeer {
        tcp: TcpStream,
    }

    impl RawPeer {
        pub async fn connect(url: &str) -> RawPeer {
            Self::connect_with_window(url, None).await
        }

        /// Like [`RawPeer::connect`], with the socket's receive buffer set
        /// to `bytes`: a client that stops reading fills it (and the
        /// server's send buffer) after little data.
        pub async fn connect_with_window(url: &str, bytes: Option<u32>) -> RawPeer {
            let rest = url.strip_prefix("ws://").expect("a ws:// url");
            let (host, path) = rest.split_once('/').expect("a path");
            let addr: std::net::SocketAddr = host.parse().expect("an ip:port");
            let socket = TcpSocket::new_v4().expect("a socket");
            if let Some(bytes) = bytes {
                socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
            }
            let mut tcp = socket.connect(addr).await.expect("connect");
            let request = format!(
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await.expect("handshake");
            let mut response = Vec::new();
            while !response.ends_with(b"\r\n\r\n") {
                response.push(tcp.read_u8().await.expect("handshake response"));
            }
            assert!(
                response.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&response)
            );
            RawPeer { tcp }
        }

        /// Sends a masked text frame (clients must mask).
        pub async fn send_text(&mut self, text: &str) {
            let mask = [0x11u8, 0x22, 0x33, 0x44];
            let payload = text.as_bytes();
            let mut frame = vec![0x81];
            if payload.len() < 126 {
                frame.push(0x80 | payload.len() as u8);
            } else {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            self.tcp.write_all(&frame).await.expect("send");
        }

        /// Reads frames, never answering, until a close; returns how many
        /// pings came first and the close code.
        pub async fn read_until_close(&mut self) -> (usize, Option<u16>) {
            let mut pings = 0;
            loop {
                let head = match self.tcp.read_u16().await {
                    Ok(h) => h,
                    Err(_) => return (pings, None),
                };
                let opcode = (head >> 8) as u8 & 0x0f;
                let len = match (head & 0x7f) as usize {
                    126 => self.tcp.read_u16().await.expect("length") as usize,
                    127 => self.tcp.read_u64().await.expect("length") as usize,
                    n => n,
                };
                let mut payload = vec![0; len];
                self.tcp.read_exact(&mut payload).await.expect("payload");
                match opcode {
                    0x9 => pings += 1,
                    0x8 => {
                        return (
                            pings,
                            payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}
