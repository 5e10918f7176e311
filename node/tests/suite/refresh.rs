//! Token refresh on a live socket: a connection lasts as long as its token
//! plus the grace, and `refresh` with a newer token of the same user and
//! session extends it (docs/protocol.md, "Authentication").

use shared::model::now_millis;
use shared::protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame, close};
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, both_modes};

both_modes!(
    ready_says_when_the_token_expires,
    a_refresh_extends_the_connection_past_the_first_tokens_expiry,
    without_a_refresh_the_connection_closes_with_4002_after_the_grace,
    an_invalid_token_in_refresh_is_an_error_and_changes_nothing,
    a_token_of_another_user_is_refused_and_closes_the_connection,
    a_token_of_another_session_of_the_same_user_is_refused,
    a_refresh_after_the_session_was_revoked_is_refused,
);

/// Short enough for a test of a few seconds.
const GRACE: Duration = Duration::from_secs(1);

async fn app(mode: Mode) -> TestApp {
    let mut options = Options::default();
    options.ws.token_expiry_grace = GRACE;
    TestApp::spawn_with(mode, options).await
}

/// A connection authenticated with `token`; its `ready` frame's expiry.
async fn connect(app: &TestApp, token: &str) -> (WsClient, u64) {
    let mut ws = WsClient::connect(app.ws_url(0), Encoding::Json).await;
    ws.send(&ClientFrame::Auth {
        id: None,
        token: token.into(),
    })
    .await;
    match ws.frame().await {
        ServerFrame::Ready { expires_at_ms, .. } => (ws, expires_at_ms),
        other => panic!("expected ready, got {other:?}"),
    }
}

async fn refresh(ws: &mut WsClient, token: &str) {
    ws.send(&ClientFrame::Refresh {
        id: Some(7),
        token: token.into(),
    })
    .await;
}

fn now_ms() -> u64 {
    u64::try_from(now_millis()).expect("after 1970")
}

/// Pings until the clock passes `until`, asserting every ping is answered:
/// the connection stays open all along.
async fn stays_open_until(ws: &mut WsClient, until: u64) {
    while now_ms() < until {
        let frames = ws.until_pong().await;
        assert!(frames.is_empty(), "{frames:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_says_when_the_token_expires(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let (token, exp_ms) = app.token_expiring_in(&alice, Duration::from_secs(600));
    let (ws, expires_at_ms) = connect(&app, &token).await;
    assert_eq!(expires_at_ms, exp_ms);
    ws.close().await;
    app.stop().await;
}

async fn a_refresh_extends_the_connection_past_the_first_tokens_expiry(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let (short, short_exp) = app.token_expiring_in(&alice, Duration::from_secs(2));
    let (mut ws, _) = connect(&app, &short).await;

    let (long, long_exp) = app.token_expiring_in(&alice, Duration::from_secs(600));
    refresh(&mut ws, &long).await;
    assert_eq!(
        ws.frame().await,
        ServerFrame::Refreshed {
            id: Some(7),
            expires_at_ms: long_exp
        }
    );
    // Well past the first token's expiry and grace, the connection is open.
    stays_open_until(&mut ws, short_exp + GRACE.as_millis() as u64 + 1_000).await;

    // An older token sent late never shortens it.
    let (older, _) = app.token_expiring_in(&alice, Duration::from_secs(60));
    refresh(&mut ws, &older).await;
    assert_eq!(
        ws.frame().await,
        ServerFrame::Refreshed {
            id: Some(7),
            expires_at_ms: long_exp
        }
    );
    ws.close().await;
    app.stop().await;
}

async fn without_a_refresh_the_connection_closes_with_4002_after_the_grace(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let (token, exp_ms) = app.token_expiring_in(&alice, Duration::from_secs(1));
    let (mut ws, _) = connect(&app, &token).await;
    assert_eq!(ws.closed().await, Some(close::TOKEN_EXPIRED));
    let closed_at = now_ms();
    let deadline = exp_ms + GRACE.as_millis() as u64;
    // Not before the grace ran out (the runtime's timer may be a
    // millisecond early against the wall clock), nor long after.
    assert!(
        closed_at + 5 >= deadline,
        "closed {} ms before the deadline",
        deadline - closed_at
    );
    assert!(
        closed_at < deadline + 3_000,
        "closed {} ms after the deadline",
        closed_at - deadline
    );
    app.stop().await;
}

async fn an_invalid_token_in_refresh_is_an_error_and_changes_nothing(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let (mut ws, before) = connect(&app, &alice.token).await;
    for token in [
        "not-a-token".to_owned(),
        app.expired_token(&alice, Duration::from_secs(60)),
    ] {
        refresh(&mut ws, &token).await;
        match ws.frame().await {
            ServerFrame::Error { id, code, .. } => {
                assert_eq!((id, code), (Some(7), ErrorCode::InvalidToken));
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // Still open, still on its first token.
    assert!(ws.until_pong().await.is_empty());
    let (token, _) = app.token_expiring_in(&alice, Duration::from_secs(1));
    refresh(&mut ws, &token).await;
    assert_eq!(
        ws.frame().await,
        ServerFrame::Refreshed {
            id: Some(7),
            expires_at_ms: before
        }
    );
    ws.close().await;
    app.stop().await;
}

/// Sends `token` in a `refresh` on a connection of `user` and returns the close code.
async fn refused(app: &TestApp, user: &TestUser, token: &str) -> Option<u16> {
    let (mut ws, _) = connect(app, &user.token).await;
    refresh(&mut ws, token).await;
    ws.closed().await
}

async fn a_token_of_another_user_is_refused_and_closes_the_connection(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    assert_eq!(
        refused(&app, &alice, &mallory.token).await,
        Some(close::UNAUTHORIZED)
    );
    app.stop().await;
}

async fn a_token_of_another_session_of_the_same_user_is_refused(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let other_device = app.login("alice", "alice-correct-horse").await;
    assert_ne!(alice.session_id, other_device.session_id);
    assert_eq!(
        refused(&app, &alice, &other_device.token).await,
        Some(close::UNAUTHORIZED)
    );
    app.stop().await;
}

async fn a_refresh_after_the_session_was_revoked_is_refused(mode: Mode) {
    let app = app(mode).await;
    let alice = app.user("alice").await;
    let (mut ws, _) = connect(&app, &alice.token).await;
    // Revoked in the store only: the notice that would close the
    // connection at once is never published (as when Redis lost it), so
    // what closes it is the refresh's own session check.
    let store = store::Store::connect(&app.database_url(), 1)
        .await
        .expect("connecting to the store");
    assert!(
        store
            .revoke_session(alice.session_id, alice.id, now_millis())
            .await
            .expect("revoking")
    );
    store.close().await;
    assert!(ws.until_pong().await.is_empty(), "no notice was sent");
    let (token, _) = app.token_expiring_in(&alice, Duration::from_secs(600));
    refresh(&mut ws, &token).await;
    assert_eq!(ws.closed().await, Some(close::SESSION_REVOKED));
    app.stop().await;
}
