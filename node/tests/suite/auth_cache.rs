//! What a gateway knows of sessions and room members instead of asking the
//! store: it is used (counted per node), and it never outlives the events
//! that change it. Every gateway is warmed first, so a stale answer would
//! show as an admitted connect or join.

use reqwest::StatusCode;
use shared::RoomId;
use shared::model::EventKind;
use shared::protocol::{ClientFrame, Encoding, ErrorCode, LeftReason, ServerFrame, close};
use std::sync::atomic::Ordering::Relaxed;
use testkit::{Mode, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    a_second_connect_of_a_session_and_a_second_join_of_a_room_need_no_check_in_the_store,
    a_revoked_session_is_refused_at_once_on_every_gateway_that_knew_it,
    a_removed_member_is_refused_at_once_on_every_gateway_and_may_be_added_back,
    a_deleted_room_refuses_joins_on_every_gateway_that_knew_its_members,
    a_member_added_by_an_event_the_gateway_never_saw_may_join,
);

/// Gateway `i`'s counts: (session hits, session misses, membership hits,
/// membership misses, member lists read).
fn counts(app: &TestApp, i: usize) -> (u64, u64, u64, u64, u64) {
    let s = app.gateway(i).auth_cache_stats();
    (
        s.session_hits.load(Relaxed),
        s.session_misses.load(Relaxed),
        s.membership_hits.load(Relaxed),
        s.membership_misses.load(Relaxed),
        s.member_lists.load(Relaxed),
    )
}

/// Opens a socket to gateway `i`, authenticates with `user`'s token and
/// returns how it was closed: refused, or closed right after `ready` (a
/// connect racing the revocation notice on its way to this node is admitted
/// and closed when the notice lands). A connection that stays open fails
/// the test when no close comes in time.
async fn refused_or_closed(app: &TestApp, i: usize, user: &TestUser) -> Option<u16> {
    let mut ws = WsClient::connect(app.ws_url(i), Encoding::Json).await;
    ws.send(&ClientFrame::Auth {
        id: Some(0),
        token: user.token.clone(),
    })
    .await;
    ws.closed().await
}

/// Reads frames until `left` for `room`; returns its reason.
async fn left(ws: &mut WsClient, room: RoomId) -> LeftReason {
    loop {
        if let ServerFrame::Left {
            room_id, reason, ..
        } = ws.frame().await
            && room_id == room
        {
            return reason;
        }
    }
}

/// Reads frames until the event that adds `user` to `room`.
async fn member_added(ws: &mut WsClient, room: RoomId, user: &TestUser) {
    loop {
        if let ServerFrame::Event(event) = ws.frame().await
            && event.room_id == room
            && matches!(event.kind, EventKind::MemberAdded { user_id, .. } if user_id == user.id)
        {
            return;
        }
    }
}

/// A join of `room` on `ws`: Err(code) if refused, else the reason of the
/// `left` that must follow (a removal still on its way to this node when
/// the join came admits it, then ends it). A join that is kept fails the
/// test when no `left` comes in time.
async fn refused_or_ended(ws: &mut WsClient, room: RoomId) -> Result<LeftReason, ErrorCode> {
    ws.join(room).await?;
    Ok(left(ws, room).await)
}

async fn a_second_connect_of_a_session_and_a_second_join_of_a_room_need_no_check_in_the_store(
    mode: Mode,
) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "cached").await;
    app.add_member(&alice, room, &bob).await;

    let start = counts(&app, 0);
    let mut first = app.ws(0, &alice).await;
    let after_first = counts(&app, 0);
    assert_eq!(
        (after_first.0 - start.0, after_first.1 - start.1),
        (0, 1),
        "the first connect of a session asks the store"
    );
    let mut second = app.ws(0, &alice).await;
    let after_second = counts(&app, 0);
    assert_eq!(
        (
            after_second.0 - after_first.0,
            after_second.1 - after_first.1
        ),
        (1, 0),
        "a second connect of the same session is answered by the first one"
    );

    // The first join reads the room's member list; the next ones, of any
    // member, are answered from it.
    first.join(room).await.expect("alice joins");
    let after_join = counts(&app, 0);
    assert_eq!(after_join.4 - after_second.4, 1, "one member list read");
    assert_eq!(after_join.3, after_second.3, "no membership row read");
    second.join(room).await.expect("alice joins again");
    let mut bobs = app.ws(0, &bob).await;
    bobs.join(room).await.expect("bob joins");
    let after_joins = counts(&app, 0);
    assert_eq!(
        (
            after_joins.2 - after_join.2,
            after_joins.3 - after_join.3,
            after_joins.4 - after_join.4
        ),
        (2, 0, 0),
        "later joins need no membership read"
    );

    // A stranger is refused (by the store), and a room that is not live
    // here costs no subscription.
    let mallory = app.user("mallory").await;
    let mut stranger = app.ws(0, &mallory).await;
    assert_eq!(stranger.join(room).await, Err(ErrorCode::RoomNotFound));
    let other = app.create_room(&alice, "elsewhere").await;
    assert_eq!(stranger.join(other).await, Err(ErrorCode::RoomNotFound));
    assert!(!app.gateway(0).is_subscribed_to_room(other));
    app.stop().await;
}

async fn a_revoked_session_is_refused_at_once_on_every_gateway_that_knew_it(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let laptop = app.user("alice").await;
    let phone = app.login("alice", "alice-correct-horse").await;
    let n = app.gateway_count();

    // Every gateway knows both sessions: a connection of each is open, and
    // a second phone connect is answered from what the node knows.
    let mut laptops = Vec::new();
    let mut phones = Vec::new();
    for i in 0..n {
        laptops.push(app.ws(i, &laptop).await);
        phones.push(app.ws(i, &phone).await);
        let before = counts(&app, i).0;
        app.ws(i, &phone).await.close().await;
        assert_eq!(counts(&app, i).0, before + 1, "gateway {i} knows the phone");
    }

    let (status, _) = app
        .delete(
            &format!("/v1/auth/sessions/{}", phone.session_id),
            Some(&laptop.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // At once, without waiting for anything: the phone's token gets 4004
    // on every gateway, before `ready` or (still racing its notice) right
    // after it, never a connection that stays.
    for i in 0..n {
        assert_eq!(
            refused_or_closed(&app, i, &phone).await,
            Some(close::SESSION_REVOKED),
            "gateway {i}"
        );
    }
    // The open phone connections are closed by the notice, and once it has
    // reached a gateway a connect is refused outright, from the store.
    for (i, ws) in phones.iter_mut().enumerate() {
        assert_eq!(
            ws.closed().await,
            Some(close::SESSION_REVOKED),
            "gateway {i}"
        );
        let misses = counts(&app, i).1;
        let mut refused = WsClient::connect(app.ws_url(i), Encoding::Json).await;
        refused
            .send(&ClientFrame::Auth {
                id: Some(0),
                token: phone.token.clone(),
            })
            .await;
        assert_eq!(refused.closed().await, Some(close::SESSION_REVOKED));
        assert_eq!(counts(&app, i).1, misses + 1, "gateway {i} asked the store");
    }
    // The laptop's session is untouched, and still known.
    for (i, ws) in laptops.iter_mut().enumerate() {
        assert!(ws.until_pong().await.is_empty(), "gateway {i}");
        let hits = counts(&app, i).0;
        app.ws(i, &laptop).await.close().await;
        assert_eq!(counts(&app, i).0, hits + 1, "gateway {i}");
    }
    app.stop().await;
}

async fn a_removed_member_is_refused_at_once_on_every_gateway_and_may_be_added_back(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "members").await;
    app.add_member(&alice, room, &bob).await;
    let n = app.gateway_count();

    // Every gateway knows the room's members: alice's join read them, and
    // bob's join was answered from them.
    let mut alices = Vec::new();
    let mut bobs_in = Vec::new();
    let mut bobs_out = Vec::new();
    for i in 0..n {
        let mut a = app.ws(i, &alice).await;
        a.join(room).await.expect("alice joins");
        alices.push(a);
        let mut b = app.ws(i, &bob).await;
        let before = counts(&app, i);
        b.join(room).await.expect("bob joins");
        let after = counts(&app, i);
        assert_eq!(
            (after.2 - before.2, after.3 - before.3),
            (1, 0),
            "gateway {i}"
        );
        bobs_in.push(b);
        bobs_out.push(app.ws(i, &bob).await);
    }

    let (status, _) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // At once: a join of bob's is refused, or (still racing the removal on
    // its way to this node) admitted and ended by it; never kept.
    for (i, ws) in bobs_out.iter_mut().enumerate() {
        match refused_or_ended(ws, room).await {
            Err(code) => assert_eq!(code, ErrorCode::RoomNotFound, "gateway {i}"),
            Ok(reason) => assert_eq!(reason, LeftReason::Removed, "gateway {i}"),
        }
    }
    // Once the removal reached a gateway, bob is refused there. (Whom its
    // list does not hold, a gateway refuses only on the store's word: an
    // addition it has not seen yet must never turn a member away.)
    for (i, ws) in bobs_in.iter_mut().enumerate() {
        assert_eq!(left(ws, room).await, LeftReason::Removed, "gateway {i}");
        assert_eq!(
            ws.join(room).await,
            Err(ErrorCode::RoomNotFound),
            "gateway {i}"
        );
    }

    // Added back: once a gateway delivered it, bob joins there again.
    app.add_member(&alice, room, &bob).await;
    for i in 0..n {
        member_added(&mut alices[i], room, &bob).await;
        let before = counts(&app, i);
        bobs_in[i].join(room).await.expect("bob joins again");
        let after = counts(&app, i);
        assert_eq!(
            (after.2 - before.2, after.3 - before.3),
            (1, 0),
            "gateway {i}"
        );
    }
    app.stop().await;
}

async fn a_deleted_room_refuses_joins_on_every_gateway_that_knew_its_members(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "doomed").await;
    app.add_member(&alice, room, &bob).await;
    let n = app.gateway_count();

    let mut alices = Vec::new();
    let mut bobs = Vec::new();
    for i in 0..n {
        let mut a = app.ws(i, &alice).await;
        a.join(room).await.expect("alice joins");
        alices.push(a);
        bobs.push(app.ws(i, &bob).await);
    }
    let (status, _) = app
        .delete(&format!("/v1/rooms/{room}"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    for (i, ws) in bobs.iter_mut().enumerate() {
        match refused_or_ended(ws, room).await {
            Err(code) => assert_eq!(code, ErrorCode::RoomNotFound, "gateway {i}"),
            Ok(reason) => assert_eq!(reason, LeftReason::RoomDeleted, "gateway {i}"),
        }
    }
    for (i, ws) in alices.iter_mut().enumerate() {
        assert_eq!(left(ws, room).await, LeftReason::RoomDeleted, "gateway {i}");
        assert_eq!(
            ws.join(room).await,
            Err(ErrorCode::RoomNotFound),
            "gateway {i}"
        );
        assert_eq!(
            bobs[i].join(room).await,
            Err(ErrorCode::RoomNotFound),
            "gateway {i}"
        );
    }
    app.stop().await;
}

async fn a_member_added_by_an_event_the_gateway_never_saw_may_join(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "quiet").await;
    let mut watcher = app.ws(0, &alice).await;
    watcher.join(room).await.expect("alice joins");

    // Added in the store only (its publish lost): the gateway's list of
    // the room's members does not have carol.
    let store = store::Store::connect(&app.database_url(), 1)
        .await
        .expect("connecting to the test's database");
    store
        .add_member(
            room,
            alice.id,
            carol.id,
            shared::model::Role::Member,
            shared::model::now_millis(),
        )
        .await
        .expect("adding carol");
    store.close().await;

    let mut ws = app.ws(0, &carol).await;
    ws.join(room)
        .await
        .expect("a member the gateway did not know of joins");
    member_added(&mut watcher, room, &carol).await;
    app.stop().await;
}
