//! Posting and history.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use testkit::{Mode, Options, TestApp, both_modes};

both_modes!(
    a_post_is_numbered_stored_and_validated,
    a_retried_post_returns_the_first_result,
    concurrent_posts_to_one_room_never_share_or_skip_a_number,
    history_pages_newest_first_within_bounds,
    posting_is_rate_limited_per_user,
);

async fn a_post_is_numbered_stored_and_validated(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let path = format!("/v1/rooms/{room}/messages");
    let (status, event) = app
        .post(&path, Some(&alice.token), json!({"body": "hello\nworld ✓"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    assert_eq!(
        (event["seq"].as_i64(), event["kind"].as_str()),
        (Some(2), Some("message.created"))
    );
    assert_eq!(event["sender_id"], alice.id.0);

    let cases = [
        json!({"body": ""}),
        json!({"body": "   \n"}),
        json!({"body": "x".repeat(4001)}),
        json!({"body": "nul\u{0}byte"}),
        json!({"body": "ok", "client_msg_id": ""}),
        json!({"body": "ok", "client_msg_id": "has spaces"}),
        json!({"body": "ok", "client_msg_id": "x".repeat(65)}),
    ];
    for body in cases {
        let (status, answer) = app.post(&path, Some(&alice.token), body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer["error"]["code"], "validation_failed");
    }
    let (status, _) = app
        .post(&path, Some(&alice.token), json!({"body": "é".repeat(4000)}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "4000 characters is the limit, not 4000 bytes"
    );
    let (status, _) = app
        .post(&path, Some(&alice.token), json!({"body": 42}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

async fn a_retried_post_returns_the_first_result(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let path = format!("/v1/rooms/{room}/messages");
    let post = json!({"body": "once", "client_msg_id": "c-1"});
    let (first_status, first) = app.post(&path, Some(&alice.token), post.clone()).await;
    let (again_status, again) = app.post(&path, Some(&alice.token), post.clone()).await;
    assert_eq!(
        (first_status, again_status),
        (StatusCode::CREATED, StatusCode::OK)
    );
    assert_eq!(first, again, "the same event, not a duplicate");
    // The id belongs to its sender: bob may use it too.
    let (status, _) = app.post(&path, Some(&bob.token), post).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app
        .post(
            &path,
            Some(&alice.token),
            json!({"body": "different", "client_msg_id": "c-1"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_conflict"))
    );
    // Concurrent retries of one post still store it once.
    let retries = (0..10).map(|_| {
        app.post(
            &path,
            Some(&alice.token),
            json!({"body": "storm", "client_msg_id": "c-2"}),
        )
    });
    let answers = join_all(retries).await;
    let seqs: std::collections::BTreeSet<i64> = answers
        .iter()
        .filter_map(|(_, b)| b["seq"].as_i64())
        .collect();
    assert_eq!(seqs.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count(),
        1
    );

    let (_, history) = app
        .get(&format!("{path}?limit=100"), Some(&alice.token))
        .await;
    let bodies: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["storm", "once", "once"]);
    app.stop().await;
}

async fn concurrent_posts_to_one_room_never_share_or_skip_a_number(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    let other = app.create_room(&alice, "other").await;
    let posts =
        (0..80).map(|n| app.send_message(&alice, if n % 4 == 0 { other } else { room }, "x"));
    let events = join_all(posts).await;
    let mut in_room: Vec<i64> = events
        .iter()
        .filter(|e| e.room_id == room)
        .map(|e| e.seq)
        .collect();
    in_room.sort();
    assert_eq!(in_room, (2..62).collect::<Vec<_>>());
    let mut in_other: Vec<i64> = events
        .iter()
        .filter(|e| e.room_id == other)
        .map(|e| e.seq)
        .collect();
    in_other.sort();
    assert_eq!(
        in_other,
        (2..22).collect::<Vec<_>>(),
        "each room has its own numbering"
    );
    app.stop().await;
}

async fn history_pages_newest_first_within_bounds(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "general").await;
    for n in 0..120 {
        app.send_message(&alice, room, &format!("m{n}")).await;
    }
    let path = format!("/v1/rooms/{room}/messages");
    let (_, page) = app.get(&path, Some(&alice.token)).await;
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(
        seqs,
        (72..=121).rev().collect::<Vec<_>>(),
        "the default page is the newest 50"
    );
    assert_eq!(page["next_before_seq"], 72);

    let mut all = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let query = match before {
            Some(b) => format!("{path}?limit=100&before_seq={b}"),
            None => format!("{path}?limit=100"),
        };
        let (status, page) = app.get(&query, Some(&alice.token)).await;
        assert_eq!(status, StatusCode::OK);
        all.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .filter_map(|e| e["seq"].as_i64()),
        );
        match page["next_before_seq"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(
        all,
        (1..=121).rev().collect::<Vec<_>>(),
        "paging walks the whole timeline once"
    );

    for bad in ["limit=0", "limit=101", "before_seq=0"] {
        let (status, body) = app.get(&format!("{path}?{bad}"), Some(&alice.token)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }
    let (status, body) = app
        .get(&format!("{path}?limit=ten"), Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    app.stop().await;
}

async fn posting_is_rate_limited_per_user(mode: Mode) {
    let mut options = Options::default();
    options.policy.messages_per_second = 1;
    options.policy.messages_burst = 5;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    let path = format!("/v1/rooms/{room}/messages");
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            app.post(&path, Some(&alice.token), json!({"body": "spam"}))
                .await
                .0,
        );
    }
    assert_eq!(statuses[..5], [StatusCode::CREATED; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    let (status, _) = app
        .post(&path, Some(&bob.token), json!({"body": "not me"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "limits are per user");
    app.stop().await;
}
