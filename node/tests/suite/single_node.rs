//! The single-node binary: the README's quick start, restarts and crashes.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::model::{EventKind, RoomEvent};
use shared::protocol::{Encoding, ServerFrame};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use testkit::{Mode, Options, TestApp, WsClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `parley` process started the way the README says, on a port of its own.
struct Running {
    child: Child,
    base: String,
    ws: String,
}

async fn start(data_dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
        .env("PARLEY_DATA_DIR", data_dir)
        .env("PARLEY_LISTEN", "127.0.0.1:0")
        .env("PARLEY_LOG", "warn")
        .env("PARLEY_RATE_MESSAGES_PER_SECOND", "100000")
        .env("PARLEY_RATE_MESSAGES_BURST", "100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting parley");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("reading the banner") {
            if let Some(rest) = line.trim().strip_prefix("REST api:") {
                let url = rest.split_whitespace().next().expect("a url");
                return url.trim_end_matches("/v1").to_owned();
            }
        }
        panic!("parley exited before printing where it listens");
    })
    .await
    .expect("the banner in time");
    // Keep reading, as a terminal would.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let ws = format!("{}/ws", base.replacen("http://", "ws://", 1));
    Running { child, base, ws }
}

impl Running {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    async fn login(&self, name: &str) -> (String, i64) {
        let (status, body) = self
            .post(
                "/v1/auth/login",
                None,
                json!({"login": name, "password": "quick start pw"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["access_token"].as_str().expect("token").to_owned(),
            body["user"]["id"].as_i64().expect("id"),
        )
    }

    async fn signup_and_login(&self, name: &str) -> (String, i64) {
        let (status, body) = self
            .post("/v1/auth/signup", None, json!({"username": name, "email": format!("{name}@example.com"), "password": "quick start pw"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(name).await
    }

    /// SIGTERM, as Ctrl-C or `docker stop` would, and a clean exit.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("exit status");
        assert!(exit.success(), "parley exited with {exit}");
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("parley-{tag}-{}", uuid::Uuid::new_v4().simple()))
}

/// The README's quick start, end to end: start the binary with no
/// configuration but a data directory, chat between two WebSocket clients,
/// stop it, start it again and find everything still there.
#[tokio::test]
async fn the_quick_start_works_and_survives_a_restart() {
    let dir = temp_dir("quickstart");
    let node = start(&dir).await;
    let (alice, _) = node.signup_and_login("alice").await;
    let (bob, bob_id) = node.signup_and_login("bob").await;
    let (status, room) = node
        .post("/v1/rooms", Some(&alice), json!({"name": "general"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let room_id = room["id"].as_i64().expect("room id");
    let (status, _) = node
        .post(
            &format!("/v1/rooms/{room_id}/members"),
            Some(&alice),
            json!({"user_id": bob_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut alice_ws = WsClient::authenticated(&node.ws, &alice, Encoding::Json).await;
    let mut bob_ws = WsClient::authenticated(&node.ws, &bob, Encoding::MsgPack).await;
    alice_ws.join(shared::RoomId(room_id)).await.expect("join");
    bob_ws.join(shared::RoomId(room_id)).await.expect("join");
    let (status, sent) = node
        .post(
            &format!("/v1/rooms/{room_id}/messages"),
            Some(&alice),
            json!({"body": "hi bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let sent: RoomEvent = serde_json::from_value(sent).expect("event");
    assert_eq!(bob_ws.frame().await, ServerFrame::Event(sent.clone()));
    assert_eq!(alice_ws.frame().await, ServerFrame::Event(sent.clone()));
    node.stop().await;

    let node = start(&dir).await;
    let (alice, _) = node.login("alice").await;
    let history = node
        .get(&format!("/v1/rooms/{room_id}/messages"), &alice)
        .await;
    let bodies: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["hi bob"]);
    let (status, next) = node
        .post(
            &format!("/v1/rooms/{room_id}/messages"),
            Some(&alice),
            json!({"body": "still here"}),
        )
        .await;
    assert_eq!(
        (status, next["seq"].as_i64()),
        (StatusCode::CREATED, Some(sent.seq + 1)),
        "numbering continues"
    );
    node.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Kill -9 in the middle of a storm of posts: after a restart, every post
/// that was acknowledged is there, whole, and the numbering has no hole.
#[tokio::test]
async fn a_crash_mid_post_leaves_no_half_message_and_no_hole() {
    let dir = temp_dir("crash");
    let mut node = start(&dir).await;
    let (alice, _) = node.signup_and_login("alice").await;
    let (_, room) = node
        .post("/v1/rooms", Some(&alice), json!({"name": "general"}))
        .await;
    let room_id = room["id"].as_i64().expect("room id");

    let acknowledged = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let crash_after = 150;
    let writers = (0..8).map(|w| {
        let (base, token, acknowledged, count) = (
            node.base.clone(),
            alice.clone(),
            acknowledged.clone(),
            count.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..1_000 {
                let body = format!("writer {w} message {n} {}", "payload ".repeat(50));
                let sent = http
                    .post(format!("{base}/v1/rooms/{room_id}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"body": body}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acknowledged.lock().expect("lock").insert(body);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return, // the server is gone
                }
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    while count.load(Ordering::SeqCst) < crash_after {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    node.child.start_kill().expect("SIGKILL");
    node.child.wait().await.expect("dead");
    join_all(writers).await;

    let node = start(&dir).await;
    let (alice, _) = node.login("alice").await;
    let mut events: Vec<RoomEvent> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let query = match before {
            Some(b) => format!("/v1/rooms/{room_id}/messages?limit=100&before_seq={b}"),
            None => format!("/v1/rooms/{room_id}/messages?limit=100"),
        };
        let page = node.get(&query, &alice).await;
        events.extend(
            serde_json::from_value::<Vec<RoomEvent>>(page["events"].clone()).expect("events"),
        );
        match page["next_before_seq"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let seqs: Vec<i64> = events.iter().rev().map(|e| e.seq).collect();
    let last = *seqs.last().expect("events");
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "no hole in the numbering"
    );
    let stored: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MessageCreated { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect();
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.len() >= crash_after);
    assert!(
        acknowledged.is_subset(&stored),
        "every acknowledged post survived the crash"
    );
    for body in &stored {
        assert!(
            body.starts_with("writer ") && body.ends_with("payload "),
            "a whole message: {body:.40}"
        );
    }
    node.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The same through the harness: a single node stopped and started on the
/// same data directory keeps users, rooms, members and history.
#[tokio::test]
async fn a_single_node_keeps_its_data_across_restarts() {
    let dir = temp_dir("restart");
    let options = Options {
        data_dir: Some(dir.clone()),
        ..Options::default()
    };
    let app = TestApp::spawn_with(Mode::Single, options.clone()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let sent = app.send_message(&bob, room, "persisted").await;
    app.stop().await;

    let app = TestApp::spawn_with(Mode::Single, options).await;
    let bob = app.login("bob", "bob-correct-horse").await;
    let (_, rooms) = app.get("/v1/rooms", Some(&bob.token)).await;
    assert_eq!(rooms["rooms"][0]["id"], room.0);
    let (_, history) = app
        .get(&format!("/v1/rooms/{room}/messages"), Some(&bob.token))
        .await;
    assert_eq!(history["events"][0]["body"], "persisted");
    assert_eq!(history["events"][0]["seq"], sent.seq);
    app.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Colours are for terminals: logs read by a program (a pipe, a file, a log
/// collector) carry no escape codes.
#[tokio::test]
async fn logs_written_to_a_pipe_have_no_colour_codes() {
    let dir = temp_dir("colours");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
        .env("PARLEY_DATA_DIR", &dir)
        .env("PARLEY_LISTEN", "127.0.0.1:0")
        .env("PARLEY_LOG", "info")
        .env_remove("PARLEY_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting parley");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("reading the logs") {
            if line.contains("INFO") {
                return line;
            }
        }
        panic!("parley exited without logging");
    })
    .await
    .expect("a log line in time");
    assert!(
        !line.contains('\u{1b}'),
        "a log line written to a pipe has escape codes: {line:?}"
    );
    child.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}
