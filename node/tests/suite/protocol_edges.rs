//! The WebSocket protocol at its limits: the frame size, the room cap, the
//! frame rate, and frames the gateway cannot use.

use crate::realtime::raw::RawPeer;
use reqwest::StatusCode;
use serde_json::json;
use shared::protocol::{
    ClientFrame, Encoding, ErrorCode, MAX_CLIENT_FRAME_BYTES, MAX_ROOMS_PER_CONNECTION,
    ServerFrame, close,
};
use shared::rest::ProvisionResponse;
use std::time::Duration;
use testkit::{Mode, Options, TestApp, WsClient, both_modes, eventually};
use tokio_tungstenite::tungstenite::Message;

both_modes!(
    a_frame_of_exactly_the_advertised_size_is_accepted_and_one_byte_more_is_not,
    a_room_already_joined_can_be_joined_again_at_the_room_cap,
    a_flooding_client_always_receives_the_rate_limit_close_frame,
    an_unusable_frame_gets_an_error_with_its_id_that_says_what_is_wrong,
);

/// A JSON `ping` with request id `id`, padded with whitespace to exactly `len` bytes.
fn padded_ping(id: u64, len: usize) -> String {
    let mut text = format!(r#"{{"type":"ping","id":{id}}}"#);
    assert!(text.len() <= len);
    text.push_str(&" ".repeat(len - text.len()));
    text
}

async fn a_frame_of_exactly_the_advertised_size_is_accepted_and_one_byte_more_is_not(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let mut ws = WsClient::connect(app.ws_url(0), Encoding::Json).await;
    ws.send(&ClientFrame::Auth {
        id: None,
        token: alice.token.clone(),
    })
    .await;
    let advertised = match ws.frame().await {
        ServerFrame::Ready {
            max_frame_bytes, ..
        } => max_frame_bytes,
        other => panic!("expected ready, got {other:?}"),
    };
    assert_eq!(advertised, MAX_CLIENT_FRAME_BYTES);

    ws.send_raw(Message::text(padded_ping(7, advertised))).await;
    match ws.recv().await {
        testkit::Received::Frame(ServerFrame::Pong { id }) => assert_eq!(id, Some(7)),
        other => panic!("a frame of exactly {advertised} bytes must be answered, got {other:?}"),
    }
    ws.send_raw(Message::text(padded_ping(8, advertised + 1)))
        .await;
    assert_eq!(ws.closed().await, Some(close::MESSAGE_TOO_BIG));
    app.stop().await;
}

async fn a_room_already_joined_can_be_joined_again_at_the_room_cap(mode: Mode) {
    const ADMIN: &str = "an-admin-token-that-is-long-enough-0123456789";
    let mut options = Options::default();
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    // Over five hundred joins in a row: far above the default frame burst.
    options.ws.client_frame_burst = 10_000;
    options.ws.client_frames_per_second = 10_000;
    let app = TestApp::spawn_with(mode, options).await;
    // One user in one more room than a connection may join.
    let rooms = MAX_ROOMS_PER_CONNECTION + 1;
    let (status, body) = app
        .post(
            "/v1/admin/provision",
            Some(ADMIN),
            json!({"prefix": "cap", "users": 1, "rooms": rooms, "room_size": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let done: ProvisionResponse = serde_json::from_value(body).expect("a provision response");
    let mut ws =
        WsClient::authenticated(app.ws_url(0), &done.users[0].access_token, Encoding::Json).await;
    for room in &done.rooms[..MAX_ROOMS_PER_CONNECTION] {
        ws.join(room.id).await.expect("below the cap");
    }

    assert_eq!(
        ws.join(done.rooms[MAX_ROOMS_PER_CONNECTION].id).await,
        Err(ErrorCode::TooManyRooms),
        "a new room at the cap"
    );
    for room in [&done.rooms[0], &done.rooms[MAX_ROOMS_PER_CONNECTION - 1]] {
        assert!(
            ws.join(room.id).await.is_ok(),
            "re-joining room {} at the cap answers joined",
            room.id
        );
    }
    // Still at the cap: the re-joins did not count twice, nor free a place.
    assert_eq!(
        ws.join(done.rooms[MAX_ROOMS_PER_CONNECTION].id).await,
        Err(ErrorCode::TooManyRooms)
    );
    app.stop().await;
}

async fn a_flooding_client_always_receives_the_rate_limit_close_frame(mode: Mode) {
    /// Connections that flood, one after the other: the old behaviour lost
    /// the close frame often, not always.
    const CONNECTIONS: usize = 4;
    /// Far beyond the burst (100 by default). Each gets a large `error`
    /// answer, so the answers fill the client's small receive window and
    /// the close frame waits in the gateway's send buffer behind them.
    const FRAMES: usize = 300;
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let gateway = app.gateway(0);
    let unknown = format!(r#"{{"type":"{}"}}"#, "t".repeat(300));
    for i in 0..CONNECTIONS {
        let mut peer = RawPeer::connect_with_window(app.ws_url(0), Some(4096)).await;
        peer.send_text(&format!(r#"{{"type":"auth","token":"{}"}}"#, alice.token))
            .await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                gateway.connection_count() == 1
            })
            .await,
            "connection {i} authenticated"
        );
        for _ in 0..FRAMES {
            peer.send_text(&unknown).await;
        }
        // The gateway has given up on the connection before the client
        // reads anything: its answers and the close frame are queued.
        assert!(
            eventually(Duration::from_secs(10), || async {
                gateway.connection_count() == 0
            })
            .await,
            "connection {i} closed for flooding"
        );
        let (_, code) = peer.read_until_close().await;
        assert_eq!(
            code,
            Some(close::RATE_LIMITED),
            "connection {i} got the 4008 close frame (None: the socket was reset)"
        );
    }
    app.stop().await;
}

async fn an_unusable_frame_gets_an_error_with_its_id_that_says_what_is_wrong(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let mut ws = app.ws(0, &alice).await;
    let msgpack = |value: serde_json::Value| {
        Message::binary(rmp_serde::to_vec_named(&value).expect("MessagePack"))
    };
    let cases: Vec<(Message, u64, ErrorCode, &str)> = vec![
        (
            Message::text(r#"{"type":"teleport","id":41}"#),
            41,
            ErrorCode::UnknownType,
            r#"unknown frame type "teleport""#,
        ),
        (
            Message::text(r#"{"type":"join","id":42}"#),
            42,
            ErrorCode::InvalidFrame,
            "join: missing field `room_id`",
        ),
        (
            Message::text(r#"{"type":"join","id":43,"room_id":"seven"}"#),
            43,
            ErrorCode::InvalidFrame,
            "join: invalid type: string \"seven\"",
        ),
        (
            Message::text(r#"{"type":"ping","id":44,"extra":true}"#),
            44,
            ErrorCode::InvalidFrame,
            "ping: unknown field `extra`",
        ),
        (
            Message::text(r#"{"id":45}"#),
            45,
            ErrorCode::InvalidFrame,
            "missing field `type`",
        ),
        (
            msgpack(json!({"type": "teleport", "id": 46})),
            46,
            ErrorCode::UnknownType,
            r#"unknown frame type "teleport""#,
        ),
        (
            msgpack(json!({"type": "leave", "id": 47})),
            47,
            ErrorCode::InvalidFrame,
            "leave: missing field `room_id`",
        ),
    ];
    for (message, want_id, want_code, want_message) in cases {
        let shown = format!("{message:?}");
        ws.send_raw(message).await;
        match ws.frame().await {
            ServerFrame::Error {
                id, code, message, ..
            } => {
                assert_eq!((id, code), (Some(want_id), want_code), "{shown}");
                assert!(
                    message.starts_with(want_message),
                    "{shown}: {message:?} should start with {want_message:?}"
                );
            }
            other => panic!("expected an error for {shown}, got {other:?}"),
        }
    }
    // Frames that are not objects have no id to echo, and say so.
    ws.send_raw(Message::text("[1,2]")).await;
    match ws.frame().await {
        ServerFrame::Error {
            id, code, message, ..
        } => assert_eq!(
            (id, code, message.as_str()),
            (
                None,
                ErrorCode::InvalidFrame,
                "a frame must be an object with a `type` field"
            )
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    app.stop().await;
}
