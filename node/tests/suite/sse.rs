//! Server-Sent Events: `GET /sse` on a gateway (or the single node) with a
//! single-use ticket or an access token gets the same frames as a
//! WebSocket, and a stream cut at any point resumes with `Last-Event-ID`
//! without a gap or a duplicate.

use reqwest::StatusCode;
use shared::RoomId;
use shared::model::RoomEvent;
use shared::protocol::{ErrorCode, ResumeOutcome, ServerFrame, close};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::{Mode, Options, SseAuth, SseClient, SseNext, TestApp, both_modes};

both_modes!(
    a_ticket_opens_one_stream_with_the_rooms_events,
    streams_cut_at_random_points_resume_with_last_event_id_exactly,
    a_stream_does_not_join_rooms_of_others,
    revoking_the_session_ends_the_stream,
    a_stream_ends_with_4002_when_its_token_expires,
    bad_requests_get_clear_errors,
    a_draining_gateway_tells_streams_when_to_retry_and_ends_them,
);

/// The next `event` frame, skipping others (joined, typing, ...).
async fn next_event(sse: &mut SseClient) -> RoomEvent {
    loop {
        match sse.next().await {
            SseNext::Frame(ServerFrame::Event(event)) => return event,
            SseNext::Frame(_) => continue,
            other => panic!("the stream ended before the next event: {other:?}"),
        }
    }
}

async fn a_ticket_opens_one_stream_with_the_rooms_events(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "news").await;
    let start = app.last_seq(&alice, room).await;
    let ticket = app.sse_ticket(&alice).await;
    let base = app.gateway_http(1);
    let query = format!("rooms={}", room.0);
    let mut sse = SseClient::open(&base, &query, SseAuth::Ticket(&ticket), None)
        .await
        .expect("the ticket opens a stream");

    // `ready` first, with the stream's first `retry:`; then `joined`, whose
    // id is the stream's position.
    let first = sse.message().await.expect("a first message");
    let retry = first.retry.expect("the first message says when to retry");
    assert!((1000..=3000).contains(&retry), "retry {retry}");
    let ready: ServerFrame = serde_json::from_str(&first.data).expect("ready");
    assert!(
        matches!(ready, ServerFrame::Ready { user_id, .. } if user_id == alice.id),
        "{ready:?}"
    );
    let joined = sse.message().await.expect("joined");
    assert_eq!(joined.id, Some(format!("{}:{start}", room.0)));

    for i in 0..3 {
        app.send_message(&alice, room, &format!("m{i}")).await;
    }
    for i in 1..=3 {
        let event = next_event(&mut sse).await;
        assert_eq!((event.room_id, event.seq), (room, start + i));
        assert_eq!(sse.last_event_id, Some(format!("{}:{}", room.0, start + i)));
    }

    // The ticket was used up.
    let again = SseClient::open(&base, &query, SseAuth::Ticket(&ticket), None).await;
    let (status, body) = again.err().expect("a used ticket is refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_ticket");
    app.stop().await;
}

/// Messages posted into two rooms while a reader's stream is cut and
/// reopened (on another gateway in a cluster, alternately with a new
/// ticket and `last_event_id=`, and with an access token and the
/// `Last-Event-ID` header, as an `EventSource` reconnects).
const MESSAGES: i64 = 80;

async fn streams_cut_at_random_points_resume_with_last_event_id_exactly(mode: Mode) {
    let app = Arc::new(TestApp::spawn(mode).await);
    let poster = app.user("poster").await;
    let reader = app.user("reader").await;
    let rooms = [
        app.create_room(&poster, "one").await,
        app.create_room(&poster, "two").await,
    ];
    let mut start = BTreeMap::new();
    for room in rooms {
        app.add_member(&poster, room, &reader).await;
        start.insert(room, app.last_seq(&poster, room).await);
    }
    let query = format!("rooms={},{}", rooms[0].0, rooms[1].0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(1);
    let mut dice = seed;
    let mut roll = |below: u64| {
        dice ^= dice << 13;
        dice ^= dice >> 7;
        dice ^= dice << 17;
        dice % below
    };

    // The first stream starts at the rooms' positions before the posting,
    // as a client that had read that far would.
    let first = format!(
        "{}:{},{}:{}",
        rooms[0].0, start[&rooms[0]], rooms[1].0, start[&rooms[1]]
    );
    let mut sse = SseClient::open(
        &app.gateway_http(0),
        &query,
        SseAuth::Bearer(&reader.token),
        Some(&first),
    )
    .await
    .unwrap_or_else(|(status, body)| panic!("open refused: {status} {body}"));
    let posting = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                let room = rooms[(i % 2) as usize];
                app.send_message(&poster, room, &format!("m{i}")).await;
            }
        })
    };

    let mut seen: BTreeMap<RoomId, Vec<i64>> = BTreeMap::new();
    let mut received = 0;
    let mut reopens = 0;
    while received < MESSAGES {
        let mut budget = roll(10) + 1;
        while budget > 0 && received < MESSAGES {
            let Ok(next) = tokio::time::timeout(Duration::from_secs(8), sse.next()).await else {
                let ends = [
                    app.last_seq(&reader, rooms[0]).await,
                    app.last_seq(&reader, rooms[1]).await,
                ];
                panic!(
                    "seed {seed}: no event after {seen:?} ({reopens} reopens, last id {:?}); the rooms are at {ends:?}",
                    sse.last_event_id
                );
            };
            match next {
                SseNext::Frame(ServerFrame::Event(event)) => {
                    seen.entry(event.room_id).or_default().push(event.seq);
                    received += 1;
                    budget -= 1;
                }
                // After a reopen, each room resumes completely from the
                // position in the id (its backlog may come before the
                // other room's `joined`).
                SseNext::Frame(ServerFrame::Joined { resume, .. }) => {
                    assert_eq!(
                        resume,
                        Some(ResumeOutcome {
                            complete: true,
                            history_from_seq: None
                        }),
                        "seed {seed}"
                    );
                }
                SseNext::Frame(_) => {}
                other => panic!("seed {seed}: the stream ended: {other:?}"),
            }
        }
        // Cut without a goodbye, and come back where the stream was.
        let last = sse.last_event_id.clone().expect("an id so far");
        drop(sse);
        reopens += 1;
        let base = app.gateway_http(reopens);
        sse = if reopens % 2 == 0 {
            let ticket = app.sse_ticket(&reader).await;
            let query = format!("{query}&last_event_id={last}");
            SseClient::open(&base, &query, SseAuth::Ticket(&ticket), None).await
        } else {
            SseClient::open(&base, &query, SseAuth::Bearer(&reader.token), Some(&last)).await
        }
        .unwrap_or_else(|(status, body)| panic!("reopen refused: {status} {body}"));
    }
    posting.await.expect("posting");
    for room in rooms {
        let from = start[&room];
        assert_eq!(
            seen.remove(&room).unwrap_or_default(),
            (from + 1..=from + MESSAGES / 2).collect::<Vec<_>>(),
            "room {room} after {reopens} reopens (seed {seed}): every event once, in order"
        );
    }
    assert!(reopens > 5, "only {reopens} reopens");
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

async fn a_stream_does_not_join_rooms_of_others(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let secret = app.create_room(&alice, "secret").await;
    let own = app.create_room(&mallory, "own").await;
    let mut sse = app
        .sse(0, &mallory, &format!("rooms={},{}", secret.0, own.0))
        .await;
    let mut refused = false;
    let mut joined_own = false;
    while !(refused && joined_own) {
        match sse.frame().await {
            ServerFrame::Error { code, room_id, .. } => {
                assert_eq!((code, room_id), (ErrorCode::RoomNotFound, Some(secret)));
                refused = true;
            }
            ServerFrame::Joined { room_id, .. } => {
                assert_eq!(room_id, own);
                joined_own = true;
            }
            _ => {}
        }
    }
    // A message in the secret room, then one in her own: only the second arrives.
    app.send_message(&alice, secret, "not for mallory").await;
    app.send_message(&mallory, own, "mine").await;
    let event = next_event(&mut sse).await;
    assert_eq!(event.room_id, own);
    app.stop().await;
}

async fn revoking_the_session_ends_the_stream(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "room").await;
    let mut sse = app.sse(0, &alice, &format!("rooms={}", room.0)).await;
    while !matches!(sse.frame().await, ServerFrame::Joined { .. }) {}
    let (status, _) = app
        .post("/v1/auth/logout", Some(&alice.token), serde_json::json!({}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(sse.closed().await, Some(close::SESSION_REVOKED));
    assert!(matches!(sse.next().await, SseNext::End));
    // A ticket of the revoked session opens nothing (the api refuses to
    // issue one: the token's session is gone).
    let (status, _) = app
        .post("/v1/sse/tickets", Some(&alice.token), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn a_stream_ends_with_4002_when_its_token_expires(mode: Mode) {
    let mut options = Options::default();
    options.ws.token_expiry_grace = Duration::from_millis(500);
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let (token, _) = app.token_expiring_in(&alice, Duration::from_secs(1));
    let mut sse = SseClient::open(
        &app.gateway_http(0),
        "rooms=",
        SseAuth::Bearer(&token),
        None,
    )
    .await
    .expect("opened");
    assert_eq!(sse.closed().await, Some(close::TOKEN_EXPIRED));
    assert!(matches!(sse.next().await, SseNext::End));
    app.stop().await;
}

async fn bad_requests_get_clear_errors(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let base = app.gateway_http(0);
    let refused = |r: Result<SseClient, (StatusCode, serde_json::Value)>| {
        let (status, body) = r.err().expect("refused");
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let cases = [
        ("rooms=1", SseAuth::None, None, 401, "missing_token"),
        (
            "rooms=1",
            SseAuth::Ticket("st_nope"),
            None,
            401,
            "invalid_ticket",
        ),
        (
            "rooms=1",
            SseAuth::Bearer("not.a.jwt"),
            None,
            401,
            "invalid_token",
        ),
        (
            "rooms=abc",
            SseAuth::Bearer(&alice.token),
            None,
            400,
            "invalid_query",
        ),
        (
            "rooms=1&rooms=2",
            SseAuth::Bearer(&alice.token),
            None,
            400,
            "invalid_query",
        ),
        (
            "rooms=1",
            SseAuth::Bearer(&alice.token),
            Some("1:x"),
            400,
            "invalid_last_event_id",
        ),
    ];
    for (query, auth, last, status, code) in cases {
        let got = refused(SseClient::open(&base, query, auth, last).await);
        assert_eq!(
            got,
            (StatusCode::from_u16(status).unwrap(), code.to_owned()),
            "{query} {last:?}"
        );
    }
    let expired = app.expired_token(&alice, Duration::from_secs(60));
    let got = refused(SseClient::open(&base, "", SseAuth::Bearer(&expired), None).await);
    assert_eq!(got, (StatusCode::UNAUTHORIZED, "token_expired".to_owned()));
    let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let query = format!("rooms={}", many.join(","));
    let got = refused(SseClient::open(&base, &query, SseAuth::Bearer(&alice.token), None).await);
    assert_eq!(got, (StatusCode::BAD_REQUEST, "too_many_rooms".to_owned()));
    // A position past a room's end is refused for that room only.
    let room = app.create_room(&alice, "r").await;
    let mut sse = SseClient::open(
        &base,
        &format!("rooms={}", room.0),
        SseAuth::Bearer(&alice.token),
        Some(&format!("{}:999999", room.0)),
    )
    .await
    .expect("opened");
    loop {
        if let ServerFrame::Error { code, room_id, .. } = sse.frame().await {
            assert_eq!((code, room_id), (ErrorCode::InvalidSeq, Some(room)));
            break;
        }
    }
    app.stop().await;
}

async fn a_draining_gateway_tells_streams_when_to_retry_and_ends_them(mode: Mode) {
    let mut options = Options::default();
    options.ws.drain_delay = Duration::ZERO;
    options.ws.drain_period = Duration::from_millis(200);
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "room").await;
    let mut sse = app.sse(1, &alice, &format!("rooms={}", room.0)).await;
    while !matches!(sse.frame().await, ServerFrame::Joined { .. }) {}
    let gateway = app.gateway(1).clone();
    let draining = tokio::spawn(async move { gateway.shutdown().await });
    // The `reconnect` message sets `retry:` to its delay; then the close.
    let reconnect = loop {
        let message = sse.message().await.expect("the reconnect message");
        if message.data.contains("\"reconnect\"") {
            break message;
        }
    };
    let frame: ServerFrame = serde_json::from_str(&reconnect.data).expect("a frame");
    let ServerFrame::Reconnect { after_ms } = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(reconnect.retry, Some(after_ms));
    assert_eq!(sse.closed().await, Some(close::GOING_AWAY));
    assert!(matches!(sse.next().await, SseNext::End));
    draining.await.expect("drained");
    app.stop().await;
}
