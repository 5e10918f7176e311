//! Presence when a gateway process dies or freezes, and what presence costs
//! Redis: real `parley-gateway` processes beside in-process ones, on
//! PostgreSQL and Redis.

use shared::protocol::{ClientFrame, Encoding, ServerFrame};
use shared::{RoomId, UserId};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::binary::Binary;
use testkit::{Mode, Options, TestApp, TestUser, WsClient, eventually};

/// Short presence timing, so a test waits seconds, not the defaults' 17.
const HEARTBEAT: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);
/// Longer than any test: every leave seen here comes from reaping.
const GRACE: Duration = Duration::from_secs(120);

/// The stated bound: a dead node's lease expires at most `LEASE` after its
/// last renewal, and another node notices at its next heartbeat. Plus
/// slack for a loaded test machine (two cores running the whole suite).
fn leave_bound() -> Duration {
    LEASE + HEARTBEAT + Duration::from_secs(3)
}

fn options() -> Options {
    let mut options = Options {
        gateways: 2,
        ..Options::default()
    };
    options.ws.presence_heartbeat = HEARTBEAT;
    options.ws.presence_lease = LEASE;
    options.ws.presence_grace = GRACE;
    options
}

/// A `parley-gateway` process in `app`'s cluster, with presence grace
/// `grace`; on SIGTERM it closes its connections spread over `drain_period`.
async fn gateway_process(app: &TestApp, grace: Duration, drain_period: Duration) -> Binary {
    Binary::start(
        Path::new(env!("CARGO_BIN_EXE_parley-gateway")),
        &[
            ("PARLEY_DATABASE_URL", app.database_url()),
            ("PARLEY_REDIS_URL", app.redis_url().to_owned()),
            ("PARLEY_REDIS_PREFIX", app.redis_prefix.clone()),
            ("PARLEY_JWT_PUBLIC_KEY", app.jwt_public_key_pem().to_owned()),
            (
                "PARLEY_PRESENCE_HEARTBEAT",
                format!("{}s", HEARTBEAT.as_secs()),
            ),
            ("PARLEY_PRESENCE_LEASE", format!("{}s", LEASE.as_secs())),
            ("PARLEY_PRESENCE_GRACE", format!("{}s", grace.as_secs())),
            (
                "PARLEY_DRAIN_PERIOD",
                format!("{}ms", drain_period.as_millis()),
            ),
        ],
        "gateway listening",
    )
    .await
}

async fn joined_at(url: &str, user: &TestUser, room: RoomId) -> WsClient {
    let mut ws = WsClient::authenticated(url, &user.token, Encoding::Json).await;
    ws.watch_presence();
    ws.join(room).await.expect("a member may join");
    ws
}

/// Presence frames until `done` holds for the set seen so far.
async fn presences_until(
    ws: &mut WsClient,
    done: impl Fn(&[(UserId, bool)]) -> bool,
) -> Vec<(UserId, bool)> {
    let mut seen = Vec::new();
    while !done(&seen) {
        if let ServerFrame::Presence {
            user_id, online, ..
        } = ws.frame().await
        {
            seen.push((user_id, online));
        }
    }
    seen
}

fn set(items: &[(UserId, bool)]) -> BTreeSet<(UserId, bool)> {
    items.iter().copied().collect()
}

/// A cluster of an api and three gateways: two in process (bob watches on
/// the first) and one process (where alice and carol are). Dave has a
/// connection on the process and on the second gateway. Returns once bob
/// has seen all three come in.
struct Scene {
    app: TestApp,
    process: Binary,
    room: RoomId,
    alice: TestUser,
    carol: TestUser,
    dave: TestUser,
    bob: TestUser,
    bob_ws: WsClient,
    on_process: Vec<WsClient>,
    _dave_here: WsClient,
}

async fn scene() -> Scene {
    scene_with(GRACE, Duration::ZERO).await
}

/// [`scene`] with the gateway process's presence grace and drain period.
async fn scene_with(grace: Duration, drain_period: Duration) -> Scene {
    let app = TestApp::spawn_with(Mode::Cluster, options()).await;
    let process = gateway_process(&app, grace, drain_period).await;
    let url = format!("ws://{}/ws", process.listen_addr);
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let room = app.create_room(&bob, "watch").await;
    for user in [&alice, &carol, &dave] {
        app.add_member(&bob, room, user).await;
    }
    let mut bob_ws = joined_at(app.ws_url(0), &bob, room).await;
    let on_process = vec![
        joined_at(&url, &alice, room).await,
        joined_at(&url, &carol, room).await,
        joined_at(&url, &dave, room).await,
    ];
    let dave_here = joined_at(app.ws_url(1), &dave, room).await;
    let expected = set(&[(alice.id, true), (carol.id, true), (dave.id, true)]);
    let seen = presences_until(&mut bob_ws, |s| s.len() >= 3).await;
    assert_eq!(set(&seen), expected, "{seen:?}");
    Scene {
        app,
        process,
        room,
        alice,
        carol,
        dave,
        bob,
        bob_ws,
        on_process,
        _dave_here: dave_here,
    }
}

async fn room_users(app: &TestApp, user: &TestUser, room: RoomId) -> Vec<UserId> {
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/presence"), Some(&user.token))
        .await;
    assert!(status.is_success(), "{status} {body}");
    body["user_ids"]
        .as_array()
        .expect("user_ids")
        .iter()
        .map(|v| UserId(v.as_i64().expect("an id")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_no_ghosts() {
    let mut s = scene().await;
    let (live_leases, _) = s.app.presence_nodes().await;
    assert_eq!(live_leases.len(), 3, "three gateways hold leases");

    let killed = Instant::now();
    s.process.kill().await;
    let seen = presences_until(&mut s.bob_ws, |seen| {
        seen.contains(&(s.alice.id, false)) && seen.contains(&(s.carol.id, false))
    })
    .await;
    let elapsed = killed.elapsed();
    assert_eq!(
        set(&seen),
        set(&[(s.alice.id, false), (s.carol.id, false)]),
        "only the users who had nothing else left; dave is still here: {seen:?}"
    );
    assert!(
        elapsed <= leave_bound(),
        "the leaves came {elapsed:?} after the kill, beyond the bound {:?}",
        leave_bound()
    );
    // The dead node's lease and entries are gone; the room shows who is left.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (leases, holders) = s.app.presence_nodes().await;
            leases.len() == 2 && holders.len() == 2 && leases == holders
        })
        .await,
        "Redis still holds the dead node: {:?}",
        s.app.presence_nodes().await
    );
    let mut expected = vec![s.bob.id, s.dave.id];
    expected.sort();
    assert_eq!(room_users(&s.app, &s.bob, s.room).await, expected);
    assert_eq!(
        s.bob_ws
            .until_pong()
            .await
            .iter()
            .filter(|f| matches!(f, ServerFrame::Presence { .. }))
            .count(),
        0
    );
    drop(s.on_process);
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_gateway_converges_without_ghosts_or_duplicates() {
    let mut s = scene().await;
    s.process.signal("STOP");
    // Frozen past its lease: the other node reaps it.
    let seen = presences_until(&mut s.bob_ws, |seen| {
        seen.contains(&(s.alice.id, false)) && seen.contains(&(s.carol.id, false))
    })
    .await;
    assert_eq!(
        set(&seen),
        set(&[(s.alice.id, false), (s.carol.id, false)]),
        "{seen:?}"
    );

    // Thawed, it finds its lease lost and reports what it holds under a new
    // id: alice and carol are back, once each.
    s.process.signal("CONT");
    let seen = presences_until(&mut s.bob_ws, |seen| seen.len() >= 2).await;
    assert_eq!(
        set(&seen),
        set(&[(s.alice.id, true), (s.carol.id, true)]),
        "{seen:?}"
    );
    // Nothing else follows: alice's explicit leave is the next change bob sees.
    s.on_process[0]
        .send(&ClientFrame::Leave {
            id: None,
            room_id: s.room,
        })
        .await;
    let seen = presences_until(&mut s.bob_ws, |seen| !seen.is_empty()).await;
    assert_eq!(seen, vec![(s.alice.id, false)], "no duplicate joins");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (leases, holders) = s.app.presence_nodes().await;
            leases.len() == 3 && leases == holders
        })
        .await,
        "the frozen node's old id is gone: {:?}",
        s.app.presence_nodes().await
    );
    let mut expected = vec![s.bob.id, s.carol.id, s.dave.id];
    expected.sort();
    assert_eq!(room_users(&s.app, &s.bob, s.room).await, expected);
    drop(s.on_process);
    s.process.stop().await;
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_is_not_seen_as_leaves_and_joins() {
    // The drain (3 s) outlasts the presence grace (2 s): the last client is
    // closed after the grace has run out for the first one.
    let mut s = scene_with(Duration::from_secs(2), Duration::from_secs(3)).await;
    s.process.signal("TERM");
    // Its clients are told to reconnect, closed (1001) one after another
    // over the drain period, and reconnect to the other gateway within the
    // stopping one's grace.
    let users = [&s.alice, &s.carol, &s.dave];
    let mut back = Vec::new();
    for (ws, user) in std::mem::take(&mut s.on_process).into_iter().zip(users) {
        let mut ws = ws;
        // (Presence frames from the scene's set-up may come first.)
        let hint = loop {
            match ws.frame().await {
                ServerFrame::Presence { .. } => continue,
                other => break other,
            }
        };
        assert!(
            matches!(hint, ServerFrame::Reconnect { .. }),
            "a reconnect hint first, not {hint:?}"
        );
        assert_eq!(ws.closed().await, Some(1001));
        back.push(joined_at(s.app.ws_url(0), user, s.room).await);
    }
    s.process.exited().await;
    // The stopped gateway's facts expire after its grace and are reaped...
    assert!(
        eventually(Duration::from_secs(20), || async {
            let (leases, holders) = s.app.presence_nodes().await;
            leases.len() == 2 && leases == holders
        })
        .await,
        "the stopped gateway is reaped: {:?}",
        s.app.presence_nodes().await
    );
    // ...and nobody saw anyone leave or come back.
    let frames = s.bob_ws.until_pong().await;
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Presence { .. })),
        "{frames:?}"
    );
    let mut expected = vec![s.alice.id, s.bob.id, s.carol.id, s.dave.id];
    expected.sort();
    assert_eq!(room_users(&s.app, &s.bob, s.room).await, expected);
    drop(back);
    s.app.stop().await;
}

/// What idle connections cost Redis: each node's lease heartbeat (one
/// script) and nothing per connection. Measured over a window on a Redis of
/// the test's own, so only this cluster's commands count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_redis_nothing_per_connection() {
    let redis = testkit::PrivateRedis::start()
        .await
        .expect("a private Redis");
    let mut options = options();
    options.gateways = 3;
    options.redis_url = Some(redis.url());
    let app = TestApp::spawn_with(Mode::Cluster, options).await;
    let owner = app.user("owner").await;
    let room = app.create_room(&owner, "idle").await;
    let mut users = Vec::new();
    for i in 0..20 {
        let user = app.user(&format!("idle{i}")).await;
        app.add_member(&owner, room, &user).await;
        users.push(user);
    }
    // 60 idle connections, 20 per gateway, every one in the room.
    let mut connections = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for device in 0..3 {
            connections.push(joined_at(app.ws_url(i + device), user, room).await);
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            room_users(&app, &owner, room).await.len() == users.len()
        })
        .await,
        "every user's presence is reported"
    );

    redis.reset_stats().await.expect("CONFIG RESETSTAT");
    let window = Duration::from_secs(5);
    // The measurement window itself: idle means nothing happens in it.
    tokio::time::sleep(window).await;
    let calls = redis.command_calls().await.expect("INFO commandstats");
    // The test's own INFO, CONFIG and connection set-up are not the cluster's.
    let cluster: Vec<(&String, &u64)> = calls
        .iter()
        .filter(|(name, _)| {
            !["info", "config", "client", "hello", "quit"]
                .iter()
                .any(|own| name.starts_with(own))
        })
        .collect();
    let total: u64 = cluster.iter().map(|(_, n)| **n).sum();
    // Per node and heartbeat: EVALSHA, TIME, ZRANGEBYSCORE, ZADD.
    let heartbeats = window.as_secs() / HEARTBEAT.as_secs() + 1;
    let bound = 3 * heartbeats * 4;
    assert!(
        total <= bound,
        "{total} commands in {window:?} with {} idle connections (bound {bound}): {cluster:?}",
        connections.len()
    );
    assert!(
        cluster.iter().all(|(_, n)| **n < connections.len() as u64),
        "a command ran once per connection or more: {cluster:?}"
    );
    println!(
        "{total} Redis commands in {window:?} with {} idle connections on 3 gateways: {cluster:?}",
        connections.len()
    );
    drop(connections);
    app.stop().await;
}
