//! Presence: who is in a room, kept exact across gateways, changes only.

use serde_json::json;
use shared::protocol::{ClientFrame, ServerFrame};
use shared::{RoomId, UserId};
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes, eventually};

both_modes!(
    presence_changes_only_with_the_first_connection_in_and_the_last_out,
    a_reconnect_within_the_grace_changes_nothing,
    an_explicit_leave_and_a_logout_end_presence_at_once,
    presence_is_answered_to_those_who_share_a_room_only,
    a_users_own_devices_get_no_presence_of_their_own,
    the_joined_snapshot_lists_who_is_in_the_room_up_to_the_limit,
);

/// A grace no test run outlasts: a presence change seen within a test did
/// not wait for it.
const LONG_GRACE: Duration = Duration::from_secs(120);

async fn spawn(mode: Mode, grace: Duration) -> TestApp {
    let mut options = Options::default();
    options.ws.presence_grace = grace;
    TestApp::spawn_with(mode, options).await
}

/// `(user, online, version)` of a presence frame.
type Change = (UserId, bool, i64);

/// Reads until a presence frame and returns it with the presence frames
/// skipped on the way (none, unless something changed that should not
/// have; other frames are ignored).
async fn next_presence(ws: &mut WsClient) -> Change {
    loop {
        if let ServerFrame::Presence {
            user_id,
            online,
            version,
            ..
        } = ws.frame().await
        {
            return (user_id, online, version);
        }
    }
}

fn presences(frames: &[ServerFrame]) -> Vec<Change> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence {
                user_id,
                online,
                version,
                ..
            } => Some((*user_id, *online, *version)),
            _ => None,
        })
        .collect()
}

async fn watching(app: &TestApp, gateway: usize, user: &TestUser) -> WsClient {
    let mut ws = app.ws(gateway, user).await;
    ws.watch_presence();
    ws
}

/// The room's presence as the api answers it: (version, users).
async fn room_presence(app: &TestApp, user: &TestUser, room: RoomId) -> (i64, Vec<UserId>) {
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/presence"), Some(&user.token))
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["room_id"], room.0);
    let users = body["user_ids"]
        .as_array()
        .expect("user_ids")
        .iter()
        .map(|v| UserId(v.as_i64().expect("an id")))
        .collect();
    (body["version"].as_i64().expect("version"), users)
}

async fn group(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> RoomId {
    let room = app.create_room(owner, "presence").await;
    for member in members {
        app.add_member(owner, room, member).await;
    }
    room
}

async fn joined(app: &TestApp, gateway: usize, user: &TestUser, room: RoomId) -> WsClient {
    let mut ws = watching(app, gateway, user).await;
    ws.join(room).await.expect("a member may join");
    ws
}

pub(crate) async fn presence_changes_only_with_the_first_connection_in_and_the_last_out(
    mode: Mode,
) {
    let app = spawn(mode, Duration::from_millis(300)).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = group(&app, &alice, &[&bob]).await;
    let mut bob_ws = joined(&app, 2, &bob, room).await;

    let laptop = joined(&app, 0, &alice, room).await;
    let (user, online, entered) = next_presence(&mut bob_ws).await;
    assert_eq!(
        (user, online),
        (alice.id, true),
        "alice's first connection in"
    );

    // A second device (on another gateway in a cluster) joining, and then
    // closing, changes nothing anyone sees; the last one leaving does.
    let reported = app.gateway(1).presence_changes_applied();
    let phone = joined(&app, 1, &alice, room).await;
    if app.gateway_count() > 1 {
        // Its gateway reports it (alice online there, and in the room) a
        // moment after `joined`; a phone closed before that was never seen.
        assert!(
            eventually(Duration::from_secs(10), || async {
                app.gateway(1).presence_changes_applied() >= reported + 2
            })
            .await
        );
    }
    phone.close().await;
    let mut laptop = laptop;
    laptop
        .send(&ClientFrame::Leave {
            id: None,
            room_id: room,
        })
        .await;
    let (user, online, left) = next_presence(&mut bob_ws).await;
    assert_eq!(
        (user, online),
        (alice.id, false),
        "the second device came and went without an event; then alice left"
    );
    assert!(left > entered, "versions increase: {entered} then {left}");
    assert_eq!(presences(&bob_ws.until_pong().await), vec![]);
    let (version, users) = room_presence(&app, &bob, room).await;
    assert_eq!(users, vec![bob.id]);
    assert!(version >= left);
}

async fn a_reconnect_within_the_grace_changes_nothing(mode: Mode) {
    let app = spawn(mode, LONG_GRACE).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = group(&app, &alice, &[&bob, &carol]).await;
    let mut bob_ws = joined(&app, 2, &bob, room).await;
    let first = joined(&app, 0, &alice, room).await;
    assert_eq!(next_presence(&mut bob_ws).await.0, alice.id);

    // Alice's network drops; she is back, on another gateway, at once.
    drop(first);
    let _again = joined(&app, 1, &alice, room).await;

    // Carol's arrival is the room's latest change: had alice's drop moved
    // anything, bob would have seen it first (the room's presence changes
    // reach him in the order they were made) or the room's version would
    // be past carol's.
    let _carol_ws = joined(&app, 1, &carol, room).await;
    let mut seen = Vec::new();
    let carol_in = loop {
        let change = next_presence(&mut bob_ws).await;
        if change.0 == carol.id {
            break change;
        }
        seen.push(change);
    };
    assert_eq!(seen, vec![], "a reconnect within the grace is invisible");
    assert!(carol_in.1);
    let (version, users) = room_presence(&app, &bob, room).await;
    assert_eq!(version, carol_in.2, "nothing changed after carol came in");
    assert_eq!(users, {
        let mut all = vec![alice.id, bob.id, carol.id];
        all.sort();
        all
    });
}

async fn an_explicit_leave_and_a_logout_end_presence_at_once(mode: Mode) {
    // With a grace no test outlasts, any leave seen here was immediate.
    let app = spawn(mode, LONG_GRACE).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = group(&app, &alice, &[&bob]).await;
    let mut bob_ws = joined(&app, 2, &bob, room).await;

    let mut alice_ws = joined(&app, 0, &alice, room).await;
    let (user, online, _) = next_presence(&mut bob_ws).await;
    assert_eq!((user, online), (alice.id, true));
    alice_ws
        .send(&ClientFrame::Leave {
            id: None,
            room_id: room,
        })
        .await;
    let (user, online, _) = next_presence(&mut bob_ws).await;
    assert_eq!((user, online), (alice.id, false), "leave is immediate");

    alice_ws.join(room).await.expect("back in");
    let (user, online, _) = next_presence(&mut bob_ws).await;
    assert_eq!((user, online), (alice.id, true));
    let (status, body) = app
        .post("/v1/auth/logout", Some(&alice.token), json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (user, online, _) = next_presence(&mut bob_ws).await;
    assert_eq!((user, online), (alice.id, false), "logout is immediate");
    assert!(
        eventually(Duration::from_secs(10), || async {
            online_of(&app, &bob, &[alice.id]).await == vec![(alice.id, false)]
        })
        .await,
        "after logout alice is offline everywhere"
    );
}

/// `GET /v1/presence` as `caller`: (user, online) in the order answered.
async fn online_of(app: &TestApp, caller: &TestUser, users: &[UserId]) -> Vec<(UserId, bool)> {
    let list = users
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = app
        .get(
            &format!("/v1/presence?user_ids={list}"),
            Some(&caller.token),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                UserId(u["user_id"].as_i64().expect("user_id")),
                u["online"].as_bool().expect("online"),
            )
        })
        .collect()
}

pub(crate) async fn presence_is_answered_to_those_who_share_a_room_only(mode: Mode) {
    let app = spawn(mode, LONG_GRACE).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = group(&app, &alice, &[&bob]).await;
    let _alice_ws = joined(&app, 0, &alice, room).await;
    let _carol_ws = app.ws(1, &carol).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            online_of(&app, &bob, &[alice.id, carol.id, bob.id]).await
                == vec![(alice.id, true), (bob.id, false)]
        })
        .await,
        "bob sees alice (a room in common) and himself, never carol"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            room_presence(&app, &bob, room).await.1 == vec![alice.id]
        })
        .await
    );
    // Carol is online but shares no room: to her, alice does not exist.
    assert_eq!(online_of(&app, &carol, &[alice.id]).await, vec![]);
    assert_eq!(
        online_of(&app, &carol, &[carol.id]).await,
        vec![(carol.id, true)]
    );
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/presence"), Some(&carol.token))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "room_not_found");

    for bad in [
        "",
        "abc",
        "1,-2",
        &(1..=101)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ] {
        let (status, body) = app
            .get(&format!("/v1/presence?user_ids={bad}"), Some(&bob.token))
            .await;
        assert_eq!(status, 422, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    let (status, _) = app
        .get(&format!("/v1/presence?user_ids={}", alice.id), None)
        .await;
    assert_eq!(status, 401);
}

async fn a_users_own_devices_get_no_presence_of_their_own(mode: Mode) {
    let app = spawn(mode, LONG_GRACE).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = group(&app, &alice, &[&bob]).await;
    let mut laptop = joined(&app, 0, &alice, room).await;
    let _phone = joined(&app, 1, &alice, room).await;
    let _bob_ws = joined(&app, 2, &bob, room).await;
    assert_eq!(
        next_presence(&mut laptop).await.0,
        bob.id,
        "the first presence alice's laptop gets is bob's, not her own phone's"
    );
    assert_eq!(presences(&laptop.until_pong().await), vec![]);
}

async fn the_joined_snapshot_lists_who_is_in_the_room_up_to_the_limit(mode: Mode) {
    let mut options = Options::default();
    options.ws.presence_grace = LONG_GRACE;
    options.ws.presence_snapshot_limit = 1;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = group(&app, &alice, &[&bob, &carol]).await;
    let _bob_ws = joined(&app, 1, &bob, room).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            room_presence(&app, &alice, room).await.1 == vec![bob.id]
        })
        .await
    );

    let mut alice_ws = watching(&app, 0, &alice).await;
    let (_, snapshot) = alice_ws
        .join_with_presence(room)
        .await
        .expect("a member may join");
    let snapshot = snapshot.expect("asked for presence");
    assert_eq!((snapshot.count, snapshot.user_ids), (1, Some(vec![bob.id])));
    assert!(snapshot.version > 0);

    // Carol arrives after the snapshot: her event is newer than it.
    let _carol_ws = joined(&app, 2, &carol, room).await;
    let (user, online, version) = next_presence(&mut alice_ws).await;
    assert_eq!((user, online), (carol.id, true));
    assert!(version > snapshot.version);

    // Three present now (alice's own connection counts), over the limit of one:
    // the count, not the list.
    let mut again = app.ws(2, &alice).await;
    let (_, snapshot) = again.join_with_presence(room).await.expect("joined");
    let snapshot = snapshot.expect("asked for presence");
    assert_eq!((snapshot.count, snapshot.user_ids), (3, None));
    // A join that does not ask gets no snapshot.
    let mut plain = app.ws(1, &alice).await;
    plain
        .send(&ClientFrame::Join {
            id: Some(9),
            room_id: room,
            since_seq: None,
            presence: false,
        })
        .await;
    loop {
        if let ServerFrame::Joined { presence, .. } = plain.frame().await {
            assert_eq!(presence, None);
            break;
        }
    }
}
