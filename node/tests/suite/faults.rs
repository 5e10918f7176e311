//! Dependency faults during steady traffic: PostgreSQL stopped and
//! restarted, its backends terminated, Redis stopped and restarted.
//!
//! What clients may see meanwhile: `503 unavailable` with `Retry-After`
//! from the api, a `503` before the upgrade or a close with 1013 (try again
//! later) from a gateway; never a 500 or a 1011. Every post answered 201 is
//! in history and reaches a connected member; `/readyz` turns 503 within a
//! second of the outage; and once the dependency is back, the very first
//! request succeeds. Cluster mode only: the single node's SQLite file and
//! in-process broker cannot go away on their own.
//!
//! Each test runs its own PostgreSQL or Redis (testkit's `PrivatePostgres`,
//! `PrivateRedis`) so it can stop it without disturbing the others, except
//! the backend-termination test, which only touches its own database.

use reqwest::StatusCode;
use serde_json::json;
use shared::RoomId;
use shared::model::EventKind;
use shared::protocol::{ClientFrame, Encoding, ServerFrame, close};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{
    Mode, Options, PrivatePostgres, PrivateRedis, StopMode, TestApp, TestUser, WsClient, eventually,
};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

/// Pace of the steady traffic: a post and a WebSocket connect this often.
/// Slow enough for a 2-core machine, fast enough that every phase of an
/// outage sees requests.
const TRAFFIC_PACE: Duration = Duration::from_millis(50);

/// Longest a readiness probe may take to say "not ready" after an outage began.
const NOT_READY_WITHIN: Duration = Duration::from_secs(1);

/// How long a test waits for something that should follow soon (a first
/// success, a delivery). Generous for a loaded machine; the measured times
/// are printed.
const SETTLE: Duration = Duration::from_secs(20);

/// What one post got (no status: no answer within [`SETTLE`]).
#[derive(Debug)]
struct Post {
    /// Its `client_msg_id` (the body is `steady {n}` for key `steady-{n}`).
    n: u64,
    status: Option<StatusCode>,
    retry_after: bool,
    seq: Option<i64>,
}

/// What one WebSocket connection attempt got.
#[derive(Debug, PartialEq)]
enum Connect {
    /// Authenticated: `ready` came back.
    Ready,
    /// Refused before the upgrade.
    Refused { status: u16, retry_after: bool },
    /// Upgraded, then closed with this code (None: without a close frame).
    Closed(Option<u16>),
    /// No answer within [`SETTLE`].
    TimedOut,
}

/// Posting and connecting in the background, recording every outcome.
struct Traffic {
    stop: CancellationToken,
    posts: Arc<Mutex<Vec<Post>>>,
    connects: Arc<Mutex<Vec<Connect>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `poster` posts to `room`; `connector` connects round-robin to every gateway.
    fn start(app: &Arc<TestApp>, poster: &TestUser, connector: &TestUser, room: RoomId) -> Self {
        let stop = CancellationToken::new();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let connects = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        {
            let (app, stop, posts, token) = (
                app.clone(),
                stop.clone(),
                posts.clone(),
                poster.token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut pace = tokio::time::interval(TRAFFIC_PACE);
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    pace.tick().await;
                    n += 1;
                    let answer = tokio::time::timeout(
                        SETTLE,
                        app.request_with_headers(
                            reqwest::Method::POST,
                            &format!("/v1/rooms/{room}/messages"),
                            Some(&token),
                            Some(json!({"body": format!("steady {n}"), "client_msg_id": format!("steady-{n}")})),
                        ),
                    )
                    .await;
                    let post = match answer {
                        Ok((status, headers, body)) => Post {
                            n,
                            status: Some(status),
                            retry_after: headers.contains_key(reqwest::header::RETRY_AFTER),
                            seq: body["seq"].as_i64(),
                        },
                        Err(_) => Post {
                            n,
                            status: None,
                            retry_after: false,
                            seq: None,
                        },
                    };
                    posts.lock().expect("posts").push(post);
                }
            }));
        }
        {
            let (app, stop, connects, token) = (
                app.clone(),
                stop.clone(),
                connects.clone(),
                connector.token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut pace = tokio::time::interval(TRAFFIC_PACE);
                let mut i = 0;
                while !stop.is_cancelled() {
                    pace.tick().await;
                    let outcome = connect(app.ws_url(i), &token).await;
                    connects.lock().expect("connects").push(outcome);
                    i += 1;
                }
            }));
        }
        Traffic {
            stop,
            posts,
            connects,
            tasks,
        }
    }

    fn created(&self) -> usize {
        let posts = self.posts.lock().expect("posts");
        posts
            .iter()
            .filter(|p| p.status == Some(StatusCode::CREATED))
            .count()
    }

    fn unavailable(&self) -> usize {
        let posts = self.posts.lock().expect("posts");
        posts
            .iter()
            .filter(|p| p.status == Some(StatusCode::SERVICE_UNAVAILABLE))
            .count()
    }

    fn ready(&self) -> usize {
        let connects = self.connects.lock().expect("connects");
        connects.iter().filter(|c| **c == Connect::Ready).count()
    }

    /// Waits until both kinds of traffic have succeeded a few more times.
    async fn wait_for_successes(&self, more: usize) {
        let (posts, connects) = (self.created(), self.ready());
        assert!(
            eventually(SETTLE, || async {
                self.created() >= posts + more && self.ready() >= connects + more
            })
            .await,
            "steady traffic did not succeed: {:?} {:?}",
            self.posts.lock().expect("posts").last(),
            self.connects.lock().expect("connects").last()
        );
    }

    /// Stops the traffic, lets the requests in flight finish, and returns
    /// every outcome.
    async fn finish(self) -> (Vec<Post>, Vec<Connect>) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("a traffic task");
        }
        let posts = std::mem::take(&mut *self.posts.lock().expect("posts"));
        let connects = std::mem::take(&mut *self.connects.lock().expect("connects"));
        (posts, connects)
    }
}

/// One WebSocket connection attempt: upgrade, authenticate, close.
async fn connect(url: &str, token: &str) -> Connect {
    let attempt = async {
        let mut ws = match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(response)) => {
                return Connect::Refused {
                    status: response.status().as_u16(),
                    retry_after: response.headers().contains_key("retry-after"),
                };
            }
            Err(e) => panic!("connecting to {url}: {e}"),
        };
        use futures::{SinkExt, StreamExt};
        let auth = Encoding::Json.encode(&ClientFrame::Auth {
            id: Some(0),
            token: token.into(),
        });
        let auth = String::from_utf8(auth.to_vec()).expect("JSON is UTF-8");
        if ws.send(tungstenite::Message::text(auth)).await.is_err() {
            return Connect::Closed(None);
        }
        loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let frame: ServerFrame = Encoding::Json
                        .decode(text.as_bytes(), &[])
                        .expect("a server frame");
                    if matches!(frame, ServerFrame::Ready { .. }) {
                        let _ = ws.close(None).await;
                        return Connect::Ready;
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return Connect::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Connect::Closed(None),
            }
        }
    };
    tokio::time::timeout(SETTLE, attempt)
        .await
        .unwrap_or(Connect::TimedOut)
}

/// What the traffic saw that it should not have: posts other than 201 or
/// 503 (with `Retry-After`), connections other than ready, refused with 503
/// (with `Retry-After`) or closed with 1013. Also returns the seqs of the
/// posts answered 201.
fn check_outcomes(posts: &[Post], connects: &[Connect]) -> (Vec<String>, BTreeSet<i64>) {
    let mut problems = Vec::new();
    for post in posts {
        match post.status {
            Some(StatusCode::CREATED) if post.seq.is_some() => {}
            Some(StatusCode::SERVICE_UNAVAILABLE) if post.retry_after => {}
            _ => problems.push(format!(
                "a post got {post:?}: only 201, or 503 with Retry-After, are acceptable"
            )),
        }
    }
    for outcome in connects {
        match outcome {
            Connect::Ready | Connect::Closed(Some(close::TRY_AGAIN_LATER)) => {}
            Connect::Refused {
                status: 503,
                retry_after: true,
            } => {}
            other => problems.push(format!(
                "a WebSocket connection got {other:?}: only ready, 503 with Retry-After, or 1013 are acceptable"
            )),
        }
    }
    problems.dedup();
    (problems, posts.iter().filter_map(|p| p.seq).collect())
}

/// Problems with the api's and every gateway's `/readyz` (asked at once):
/// each must answer 503 within [`NOT_READY_WITHIN`] of `outage`.
async fn not_ready_soon(app: &TestApp, outage: Instant) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut probes = vec![app.url("/readyz")];
    probes.extend((0..app.gateway_count()).map(|i| format!("{}/readyz", app.gateway_http(i))));
    let answers = futures::future::join_all(probes.iter().map(|url| {
        let http = http.clone();
        async move {
            let answer = tokio::time::timeout(SETTLE, http.get(url).send()).await;
            (
                answer.ok().and_then(Result::ok).map(|a| a.status()),
                outage.elapsed(),
            )
        }
    }))
    .await;
    let mut problems = Vec::new();
    for (url, (status, took)) in probes.iter().zip(answers) {
        if status != Some(StatusCode::SERVICE_UNAVAILABLE) || took > NOT_READY_WITHIN {
            problems.push(format!(
                "{url} answered {status:?} {took:?} after the outage began; wanted 503 within {NOT_READY_WITHIN:?}"
            ));
        }
    }
    problems
}

async fn all_ready(app: &TestApp) -> bool {
    let http = reqwest::Client::new();
    let mut probes = vec![app.url("/readyz")];
    probes.extend((0..app.gateway_count()).map(|i| format!("{}/readyz", app.gateway_http(i))));
    for url in probes {
        match http.get(&url).send().await {
            Ok(answer) if answer.status() == StatusCode::OK => {}
            _ => return false,
        }
    }
    true
}

/// Every message in `room`'s history: seq and body.
async fn history(app: &TestApp, user: &TestUser, room: RoomId) -> BTreeMap<i64, String> {
    let path = format!("/v1/rooms/{room}/messages");
    let mut messages = BTreeMap::new();
    let mut before: Option<i64> = None;
    loop {
        let query = match before {
            Some(b) => format!("{path}?limit=100&before_seq={b}"),
            None => format!("{path}?limit=100"),
        };
        let (status, page) = app.get(&query, Some(&user.token)).await;
        assert_eq!(status, StatusCode::OK, "history: {page}");
        for event in page["events"].as_array().expect("events") {
            if event["kind"] == "message.created" {
                let seq = event["seq"].as_i64().expect("a seq");
                let body = event["body"].as_str().expect("a body");
                messages.insert(seq, body.to_owned());
            }
        }
        match page["next_before_seq"].as_i64() {
            Some(b) => before = Some(b),
            None => return messages,
        }
    }
}

/// Retries every post answered 503, with its `client_msg_id`, as a client
/// would once the outage is over: each gets its original (200) if the
/// failed attempt was stored after all, else is stored now (201). Adds
/// their seqs to `committed`.
async fn retry_unavailable(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    posts: &[Post],
    committed: &mut BTreeSet<i64>,
) {
    for post in posts {
        if post.status != Some(StatusCode::SERVICE_UNAVAILABLE) {
            continue;
        }
        let (status, event) = app
            .post(
                &format!("/v1/rooms/{room}/messages"),
                Some(&user.token),
                json!({"body": format!("steady {}", post.n), "client_msg_id": format!("steady-{}", post.n)}),
            )
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "retrying post {} after the outage: {status} {event}",
            post.n
        );
        committed.insert(event["seq"].as_i64().expect("a seq"));
    }
}

/// Reads `ws` until `got` holds every message seq in `expected`.
async fn receive_all(ws: &mut WsClient, got: &mut BTreeSet<i64>, expected: &BTreeSet<i64>) {
    while !expected.is_subset(got) {
        if let ServerFrame::Event(event) = ws.frame().await
            && matches!(event.kind, EventKind::MessageCreated { .. })
        {
            got.insert(event.seq);
        }
    }
}

/// A deployment with two gateways on `options`, a room of alice and bob,
/// and bob connected (to gateway 0) and joined.
async fn deployment(
    options: Options,
) -> (Arc<TestApp>, TestUser, TestUser, TestUser, RoomId, WsClient) {
    let app = TestApp::spawn_with(
        Mode::Cluster,
        Options {
            gateways: 2,
            ..options
        },
    )
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "faults").await;
    app.add_member(&alice, room, &bob).await;
    let mut ws = app.ws(0, &bob).await;
    ws.join(room).await.expect("bob joins");
    (Arc::new(app), alice, bob, carol, room, ws)
}

/// Posts once; the status and the body.
async fn post_once(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    app.post(
        &format!("/v1/rooms/{room}/messages"),
        Some(&user.token),
        json!({"body": body}),
    )
    .await
}

async fn stop_app(app: Arc<TestApp>) {
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("the traffic still holds the app"),
    }
}

/// Fails the test with every problem found, if any.
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Checks that every post answered 201 is in history once (no message
/// stored twice, retries included) and reaches `ws`.
async fn assert_committed_and_delivered(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    committed: &BTreeSet<i64>,
    ws: &mut WsClient,
) {
    let stored = history(app, user, room).await;
    let seqs: BTreeSet<i64> = stored.keys().copied().collect();
    assert!(
        committed.is_subset(&seqs),
        "posts answered 201 are missing from history: {:?}",
        committed.difference(&seqs).collect::<Vec<_>>()
    );
    let bodies: BTreeSet<&String> = stored.values().collect();
    assert_eq!(bodies.len(), stored.len(), "a message was stored twice");
    receive_all(ws, &mut BTreeSet::new(), committed).await;
}

/// The first request after recovery: a read through the api. Returns a
/// problem if it failed, and prints how long after `recovered` it succeeded.
async fn first_read(
    app: &TestApp,
    user: &TestUser,
    room: RoomId,
    recovered: Instant,
    what: &str,
) -> Option<String> {
    let path = format!("/v1/rooms/{room}/messages?limit=1");
    let (status, page) = app.get(&path, Some(&user.token)).await;
    if status != StatusCode::OK {
        return Some(format!(
            "the first request after {what} got {status}: {page}"
        ));
    }
    eprintln!(
        "{what}: the first request succeeded {:?} after recovery",
        recovered.elapsed()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopping_and_starting_under_traffic_gives_503s_and_1013s_and_the_first_request_after_succeeds()
 {
    postgres_outage(StopMode::Fast).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_and_starting_under_traffic_gives_503s_and_1013s_and_the_first_request_after_succeeds()
 {
    postgres_outage(StopMode::Immediate).await
}

/// PostgreSQL goes away (`mode`) during steady traffic and comes back.
async fn postgres_outage(mode: StopMode) {
    let pg = PrivatePostgres::start()
        .await
        .expect("a private PostgreSQL");
    let (app, alice, bob, carol, room, mut bob_ws) = deployment(Options {
        database_admin_url: Some(pg.admin_url()),
        ..Options::default()
    })
    .await;
    let traffic = Traffic::start(&app, &alice, &carol, room);
    traffic.wait_for_successes(3).await;

    pg.stop_server(mode).await.expect("stopping PostgreSQL");
    let outage = Instant::now();
    let mut problems = not_ready_soon(&app, outage).await;
    // Clients hear of it: posts answered 503 rather than hanging or 500.
    if !eventually(SETTLE, || async { traffic.unavailable() >= 2 }).await {
        problems.push("no post was answered 503 while PostgreSQL was down".into());
    }
    let (posts, connects) = traffic.finish().await;
    let (seen, mut committed) = check_outcomes(&posts, &connects);
    problems.extend(seen);

    pg.start_server().await.expect("starting PostgreSQL");
    let recovered = Instant::now();
    // The very first request after recovery, a read, then a post and a
    // connection: each succeeds at the first attempt.
    let what = format!("PostgreSQL back (stopped {mode:?})");
    problems.extend(first_read(&app, &bob, room, recovered, &what).await);
    let (status, after) = post_once(&app, &alice, room, "after the restart").await;
    if status != StatusCode::CREATED {
        problems.push(format!(
            "the first post after recovery got {status}: {after}"
        ));
    }
    let first_connect = connect(app.ws_url(1), &carol.token).await;
    if first_connect != Connect::Ready {
        problems.push(format!(
            "the first connection after recovery got {first_connect:?}"
        ));
    }
    if !eventually(SETTLE, || all_ready(&app)).await {
        problems.push("readiness did not come back".into());
    }
    assert_no_problems(&problems);

    committed.extend(after["seq"].as_i64());
    retry_unavailable(&app, &alice, room, &posts, &mut committed).await;
    assert_committed_and_delivered(&app, &alice, room, &committed, &mut bob_ws).await;
    bob_ws.close().await;
    stop_app(app).await;
}

/// Kills every connection of the deployment's database (as
/// `pg_terminate_backend` does for an operator or a failover); how many.
async fn terminate_backends(app: &TestApp) -> i64 {
    use sqlx::{Connection, PgConnection};
    let url = app.database_url();
    let database = url.rsplit('/').next().expect("a database name").to_owned();
    let mut admin = PgConnection::connect(&testkit::admin_url())
        .await
        .expect("connecting as admin");
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .expect("terminating backends");
    let _ = admin.close().await;
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_cost_at_most_a_503_and_the_next_read_succeeds() {
    let (app, alice, bob, carol, room, mut bob_ws) = deployment(Options::default()).await;
    let traffic = Traffic::start(&app, &alice, &carol, room);
    traffic.wait_for_successes(3).await;
    for _ in 0..3 {
        assert!(
            terminate_backends(&app).await > 0,
            "the services had connections"
        );
        // Service goes on by itself.
        traffic.wait_for_successes(3).await;
    }
    let (posts, connects) = traffic.finish().await;
    let (mut problems, mut committed) = check_outcomes(&posts, &connects);

    // Every pooled connection dies while idle; the next requests are the
    // very first after recovery and must not fail.
    assert!(terminate_backends(&app).await > 0);
    let recovered = Instant::now();
    problems.extend(first_read(&app, &bob, room, recovered, "backends terminated").await);
    let first_connect = connect(app.ws_url(1), &carol.token).await;
    if first_connect != Connect::Ready {
        problems.push(format!(
            "the first connection after the kill got {first_connect:?}"
        ));
    }
    // A post may meet a connection that died (its outcome unknown): 503.
    let (status, after) = post_once(&app, &alice, room, "after the kill").await;
    match status {
        StatusCode::CREATED => committed.extend(after["seq"].as_i64()),
        StatusCode::SERVICE_UNAVAILABLE => {}
        _ => problems.push(format!("a post after the kill got {status}: {after}")),
    }
    let (status, after) = post_once(&app, &alice, room, "after the kill, again").await;
    if status != StatusCode::CREATED {
        problems.push(format!(
            "service did not resume: a post got {status}: {after}"
        ));
    }
    assert_no_problems(&problems);

    committed.extend(after["seq"].as_i64());
    retry_unavailable(&app, &alice, room, &posts, &mut committed).await;
    assert_committed_and_delivered(&app, &alice, room, &committed, &mut bob_ws).await;
    bob_ws.close().await;
    stop_app(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_and_starting_under_traffic_loses_no_post_and_delivery_resumes() {
    let mut redis = PrivateRedis::start().await.expect("a private Redis");
    let (app, alice, _bob, carol, room, mut bob_ws) = deployment(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let traffic = Traffic::start(&app, &alice, &carol, room);
    traffic.wait_for_successes(3).await;

    redis.stop_server().await.expect("stopping Redis");
    let outage = Instant::now();
    let mut problems = not_ready_soon(&app, outage).await;
    // Posts go on: publishing is best-effort, the events are committed.
    let created = traffic.created();
    if !eventually(SETTLE, || async { traffic.created() >= created + 5 }).await {
        problems.push("posts stopped succeeding while Redis was down".into());
    }
    let (posts, connects) = traffic.finish().await;
    let (seen, committed) = check_outcomes(&posts, &connects);
    problems.extend(seen);
    if let Some(post) = posts.iter().find(|p| p.status != Some(StatusCode::CREATED)) {
        problems.push(format!("a post failed because Redis was down: {post:?}"));
    }

    redis.start_server().await.expect("starting Redis");
    let recovered = Instant::now();
    let first_connect = connect(app.ws_url(0), &carol.token).await;
    if first_connect == Connect::Ready {
        eprintln!(
            "Redis back: the first connection succeeded {:?} after recovery",
            recovered.elapsed()
        );
    } else {
        problems.push(format!(
            "the first connection after recovery got {first_connect:?}"
        ));
    }
    if !eventually(SETTLE, || all_ready(&app)).await {
        problems.push("readiness did not come back".into());
    }
    assert_no_problems(&problems);

    // Live delivery resumes by itself: what was posted during the outage
    // reaches bob (recovered from the store), and so do new posts. A post
    // made before the gateway has re-subscribed is only recovered when a
    // later one arrives, so post until one is delivered.
    let mut expected = committed.clone();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + SETTLE;
    let mut n = 0;
    loop {
        n += 1;
        let (status, event) = post_once(&app, &alice, room, &format!("after {n}")).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "a post after recovery: {event}"
        );
        expected.insert(event["seq"].as_i64().expect("a seq"));
        let delivered = tokio::time::timeout(
            Duration::from_millis(500),
            receive_all(&mut bob_ws, &mut got, &expected),
        )
        .await;
        if delivered.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivery did not resume after Redis came back"
        );
    }
    eprintln!(
        "Redis back: live delivery resumed {:?} after recovery",
        recovered.elapsed()
    );
    bob_ws.close().await;
    stop_app(app).await;
}
