//! Message search: words, phrases and ranking, highlighted snippets,
//! filters, cursor pages, edits and deletes kept in step, only the
//! caller's rooms, any query string answered with a page or a 422, the
//! full-text index in the plan, and the per-user rate limit.

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use shared::RoomId;
use shared::model::RoomEvent;
use std::collections::{BTreeSet, HashSet};
use testkit::{Mode, Options, TestApp, TestUser, both_modes};

both_modes!(
    words_and_phrases_are_found_best_first,
    snippets_mark_the_matched_words_and_escape_the_rest,
    filters_narrow_by_room_sender_and_time,
    cursor_pages_cover_every_hit_exactly_once,
    an_edited_message_is_found_by_its_new_body_only,
    a_deleted_message_is_never_found,
    only_the_rooms_the_caller_is_in_now_are_searched,
    any_query_string_is_a_page_or_a_clear_422,
    searches_are_served_by_the_full_text_index,
    searches_are_rate_limited_per_user,
);

/// `/v1/search/messages?...` with `params` encoded.
fn search_path(params: &[(&str, &str)]) -> String {
    let url = Url::parse_with_params("http://x/v1/search/messages", params).expect("a url");
    format!("/v1/search/messages?{}", url.query().unwrap_or_default())
}

async fn search(app: &TestApp, user: &TestUser, params: &[(&str, &str)]) -> (StatusCode, Value) {
    app.get(&search_path(params), Some(&user.token)).await
}

/// The hits of a search that must succeed.
async fn hits(app: &TestApp, user: &TestUser, params: &[(&str, &str)]) -> Vec<Value> {
    let (status, page) = search(app, user, params).await;
    assert_eq!(status, StatusCode::OK, "{params:?}: {page}");
    page["hits"].as_array().expect("hits").clone()
}

/// (room, seq) of each hit, in order.
fn keys(hits: &[Value]) -> Vec<(i64, i64)> {
    hits.iter()
        .map(|h| {
            (
                h["room_id"].as_i64().expect("room"),
                h["seq"].as_i64().expect("seq"),
            )
        })
        .collect()
}

fn key(event: &RoomEvent) -> (i64, i64) {
    (event.room_id.0, event.seq)
}

async fn a_room_of_two(app: &TestApp) -> (TestUser, TestUser, RoomId) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    (alice, bob, room)
}

async fn words_and_phrases_are_found_best_first(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let once = app
        .send_message(
            &alice,
            room,
            "we deploy on Friday after the long weekly review of every open change",
        )
        .await;
    let twice = app.send_message(&bob, room, "deploy, deploy!").await;
    let stemmed = app.send_message(&alice, room, "Deploying went fine").await;
    let phrase = app
        .send_message(&bob, room, "the release train leaves at noon")
        .await;
    let reversed = app
        .send_message(&alice, room, "train the release team")
        .await;
    app.send_message(&bob, room, "nothing to see here").await;

    let found = hits(&app, &bob, &[("q", "deploy")]).await;
    let found_keys = keys(&found);
    assert_eq!(
        found_keys.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([key(&once), key(&twice), key(&stemmed)]),
        "every form of the word, nothing else: {found:?}"
    );
    assert_eq!(
        found_keys[0],
        key(&twice),
        "two occurrences in a short message rank first: {found:?}"
    );
    let ranks: Vec<f64> = found
        .iter()
        .map(|h| h["rank"].as_f64().expect("rank"))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] >= w[1]),
        "best first: {ranks:?}"
    );
    assert_eq!(found[0]["sender_id"], bob.id.0);
    assert_eq!(found[0]["created_at"], json!(twice.created_at));

    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "\"release train\"")]).await),
        vec![key(&phrase)],
        "a phrase needs its words in order"
    );
    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "release train")]).await)
            .into_iter()
            .collect::<HashSet<_>>(),
        HashSet::from([key(&phrase), key(&reversed)]),
        "words without quotes may come in any order"
    );
    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "friday OR noon")]).await)
            .into_iter()
            .collect::<HashSet<_>>(),
        HashSet::from([key(&once), key(&phrase)])
    );
    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "deploy -friday -fine")]).await),
        vec![key(&twice)],
        "a minus excludes"
    );
    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "THE Release")]).await)
            .into_iter()
            .collect::<HashSet<_>>(),
        HashSet::from([key(&phrase), key(&reversed)]),
        "case does not matter and no word is a stop word"
    );
    assert!(hits(&app, &alice, &[("q", "zebra")]).await.is_empty());
    app.stop().await;
}

async fn snippets_mark_the_matched_words_and_escape_the_rest(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    app.send_message(
        &alice,
        room,
        "<b>Deploying</b> & \"shipping\" it's <script>x</script>",
    )
    .await;
    let long = format!(
        "{}the needle is here {}",
        "hay ".repeat(80),
        "straw ".repeat(80)
    );
    app.send_message(&alice, room, &long).await;

    let found = hits(&app, &alice, &[("q", "deploy shipped -nothing")]).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["snippet"],
        "&lt;b&gt;<mark>Deploying</mark>&lt;/b&gt; &amp; &quot;<mark>shipping</mark>&quot; it&#39;s \
         &lt;script&gt;x&lt;/script&gt;"
    );
    let found = hits(&app, &alice, &[("q", "needle")]).await;
    let snippet = found[0]["snippet"].as_str().expect("a snippet");
    assert!(
        snippet.starts_with('…') && snippet.ends_with('…'),
        "{snippet}"
    );
    assert!(
        snippet.contains("hay the <mark>needle</mark> is here straw"),
        "{snippet}"
    );
    assert!(snippet.chars().count() < 260, "{snippet}");
    app.stop().await;
}

async fn filters_narrow_by_room_sender_and_time(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, general) = a_room_of_two(&app).await;
    let other = app.create_room(&bob, "other").await;
    app.add_member(&bob, other, &alice).await;
    let mut posted = Vec::new();
    for (i, (user, room)) in [
        (&alice, general),
        (&bob, general),
        (&alice, other),
        (&bob, other),
    ]
    .into_iter()
    .cycle()
    .take(8)
    .enumerate()
    {
        posted.push(
            app.send_message(user, room, &format!("standup note {i}"))
                .await,
        );
    }
    let all: HashSet<(i64, i64)> = posted.iter().map(key).collect();
    let matching = |keep: &dyn Fn(&RoomEvent) -> bool| -> HashSet<(i64, i64)> {
        posted.iter().filter(|e| keep(e)).map(key).collect()
    };
    let found = |params: Vec<(&'static str, String)>| {
        let (app, alice) = (&app, &alice);
        async move {
            let mut p: Vec<(&str, &str)> = vec![("q", "standup"), ("limit", "50")];
            p.extend(params.iter().map(|(k, v)| (*k, v.as_str())));
            keys(&hits(app, alice, &p).await)
                .into_iter()
                .collect::<HashSet<_>>()
        }
    };
    assert_eq!(found(vec![]).await, all);
    assert_eq!(
        found(vec![("room_id", other.to_string())]).await,
        matching(&|e| e.room_id == other)
    );
    assert_eq!(
        found(vec![("sender_id", bob.id.to_string())]).await,
        matching(&|e| e.sender_id == bob.id)
    );
    assert_eq!(
        found(vec![
            ("room_id", general.to_string()),
            ("sender_id", alice.id.to_string())
        ])
        .await,
        matching(&|e| e.room_id == general && e.sender_id == alice.id)
    );
    // Bounds at a message's own time: `after` includes it, `before` does not.
    let middle = posted[4].created_at;
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        found(vec![("after", at(middle))]).await,
        matching(&|e| e.created_at >= middle)
    );
    assert_eq!(
        found(vec![("before", at(middle))]).await,
        matching(&|e| e.created_at < middle)
    );
    let first = posted[0].created_at;
    let last = posted[7].created_at;
    assert_eq!(
        found(vec![("after", at(first)), ("before", at(last))]).await,
        matching(&|e| e.created_at >= first && e.created_at < last)
    );

    for (params, field) in [
        (vec![("q", "standup"), ("before", "yesterday")], "before"),
        (
            vec![("q", "standup"), ("after", "2026-13-01T00:00:00Z")],
            "after",
        ),
        (
            vec![
                ("q", "standup"),
                ("after", "2026-12-02T00:00:00Z"),
                ("before", "2026-12-01T00:00:00Z"),
            ],
            "after",
        ),
        (vec![("q", "standup"), ("limit", "0")], "limit"),
        (vec![("q", "standup"), ("limit", "51")], "limit"),
        (vec![("q", "standup"), ("cursor", "bm9wZQ")], "cursor"),
    ] {
        let (status, body) = search(&app, &alice, &params).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{params:?}: {body}"
        );
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["field"], field, "{params:?}");
    }
    let (status, body) = search(&app, &alice, &[("q", "standup"), ("room_id", "abc")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
    app.stop().await;
}

async fn cursor_pages_cover_every_hit_exactly_once(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let other = app.create_room(&bob, "other").await;
    app.add_member(&bob, other, &alice).await;
    let mut expected = BTreeSet::new();
    for i in 0..23 {
        // Ranks vary (one, two or three mentions) and tie (many alike),
        // across two rooms: the keyset must order ties by time, room and seq.
        let body = format!("{} sprint item {i}", "retro ".repeat(1 + i % 3));
        let (user, room) = if i % 2 == 0 {
            (&alice, room)
        } else {
            (&bob, other)
        };
        expected.insert(key(&app.send_message(user, room, &body).await));
    }
    app.send_message(&alice, room, "unrelated").await;

    let mut seen = Vec::new();
    let mut ranks = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("q", "retro"), ("limit", "4")];
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let (status, page) = search(&app, &alice, &params).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_hits = page["hits"].as_array().expect("hits").clone();
        seen.extend(keys(&page_hits));
        ranks.extend(page_hits.iter().map(|h| h["rank"].as_f64().expect("rank")));
        pages += 1;
        assert!(pages <= 7, "pages never end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 23, "no hit twice: {seen:?}");
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "every hit once"
    );
    assert!(
        ranks.windows(2).all(|w| w[0] >= w[1]),
        "best first across pages: {ranks:?}"
    );

    // A cursor belongs to its search: replayed with another query or
    // other filters it is refused, not misread.
    let (_, first) = search(&app, &alice, &[("q", "retro"), ("limit", "4")]).await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    for params in [
        vec![("q", "sprint"), ("cursor", cursor.as_str())],
        vec![
            ("q", "retro"),
            ("room_id", "1"),
            ("cursor", cursor.as_str()),
        ],
    ] {
        let (status, body) = search(&app, &alice, &params).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "cursor");
    }
    // The same search with another page size goes on from the cursor.
    let rest = hits(
        &app,
        &alice,
        &[("q", "retro"), ("limit", "50"), ("cursor", &cursor)],
    )
    .await;
    assert_eq!(rest.len(), 19);
    app.stop().await;
}

async fn an_edited_message_is_found_by_its_new_body_only(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let message = app.send_message(&alice, room, "meet at the harbour").await;
    assert_eq!(
        keys(&hits(&app, &bob, &[("q", "harbour")]).await),
        vec![key(&message)]
    );

    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/rooms/{room}/messages/{}", message.seq),
            Some(&alice.token),
            Some(json!({"body": "meet at the lighthouse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert!(
        hits(&app, &bob, &[("q", "harbour")]).await.is_empty(),
        "the old body is gone"
    );
    let found = hits(&app, &bob, &[("q", "lighthouse")]).await;
    assert_eq!(
        keys(&found),
        vec![key(&message)],
        "found by the new body, at its own seq"
    );
    assert_eq!(found[0]["snippet"], "meet at the <mark>lighthouse</mark>");
    assert!(found[0]["edited_at"].is_string(), "{found:?}");
    app.stop().await;
}

async fn a_deleted_message_is_never_found(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let doomed = app
        .send_message(&alice, room, "the secret password is swordfish")
        .await;
    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/rooms/{room}/messages/{}", doomed.seq),
            Some(&alice.token),
            Some(json!({"body": "the secret password is marlin swordfish"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kept = app.send_message(&bob, room, "swordfish for dinner").await;
    assert_eq!(hits(&app, &bob, &[("q", "swordfish")]).await.len(), 2);

    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/messages/{}", doomed.seq),
            Some(&alice.token),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");

    for q in ["swordfish", "secret password", "marlin", "\"password is\""] {
        let found = hits(&app, &bob, &[("q", q)]).await;
        assert!(
            !keys(&found).contains(&key(&doomed)),
            "{q}: a deleted message is not found: {found:?}"
        );
    }
    assert_eq!(
        keys(&hits(&app, &bob, &[("q", "swordfish")]).await),
        vec![key(&kept)]
    );
    app.stop().await;
}

async fn only_the_rooms_the_caller_is_in_now_are_searched(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, bob, room) = a_room_of_two(&app).await;
    let eve = app.user("eve").await;
    let eves_room = app.create_room(&eve, "eve's").await;
    let private = app
        .send_message(&alice, room, "quarterly numbers attached")
        .await;
    let eves = app
        .send_message(&eve, eves_room, "quarterly numbers of eve")
        .await;

    assert_eq!(
        keys(&hits(&app, &eve, &[("q", "quarterly")]).await),
        vec![key(&eves)]
    );
    assert_eq!(
        keys(&hits(&app, &alice, &[("q", "quarterly")]).await),
        vec![key(&private)]
    );
    // Naming the room or its author changes nothing for a stranger.
    let (status, body) = search(
        &app,
        &eve,
        &[("q", "quarterly"), ("room_id", &room.to_string())],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "room_not_found");
    let (status, _) = search(&app, &eve, &[("q", "quarterly"), ("room_id", "999999")]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a missing room looks the same"
    );
    assert!(
        hits(
            &app,
            &eve,
            &[("q", "quarterly"), ("sender_id", &alice.id.to_string())]
        )
        .await
        .is_empty()
    );
    let (status, body) = search(
        &app,
        &alice,
        &[("q", "quarterly"), ("room_id", &eves_room.to_string())],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A member who leaves can no longer read the room, nor search it.
    assert_eq!(
        keys(&hits(&app, &bob, &[("q", "quarterly")]).await),
        vec![key(&private)]
    );
    let (status, body) = app
        .delete(
            &format!("/v1/rooms/{room}/members/{}", bob.id),
            Some(&alice.token),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    assert!(hits(&app, &bob, &[("q", "quarterly")]).await.is_empty());
    let (status, _) = search(
        &app,
        &bob,
        &[("q", "quarterly"), ("room_id", &room.to_string())],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = app.get(&search_path(&[("q", "quarterly")]), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.stop().await;
}

async fn any_query_string_is_a_page_or_a_clear_422(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    app.send_message(
        &alice,
        room,
        "NEAR the end: a OR b, \"quoted\" (paren) x*y ^caret 日本語 café",
    )
    .await;
    let long_word = "a".repeat(256);
    let too_long = "word ".repeat(2048);
    let many_words = (0..17)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let queries: Vec<&str> = vec![
        "",
        " ",
        "-",
        "--",
        "- -",
        "\"",
        "\"\"",
        "\"\"\"",
        "\"unclosed phrase",
        "(",
        ")",
        "()",
        "(paren)",
        "*",
        "x*",
        "*x",
        "a*b",
        "NEAR",
        "NEAR(a b)",
        "NEAR(a b, 2)",
        "a NEAR b",
        ":",
        "body:x",
        "col:",
        "^",
        "^caret",
        "a^b",
        "AND",
        "OR",
        "NOT",
        "a AND",
        "a OR",
        "OR a",
        "NOT a",
        "a NOT b",
        "-a",
        "-a -b",
        "-\"a b\"",
        "a -",
        "'",
        "';--",
        "'; DROP TABLE room_events; --",
        "1 OR 1=1",
        "\" OR \"\"=\"",
        "%",
        "%%",
        "_",
        "\\",
        "\\\"",
        "a\\b",
        "{}",
        "[]",
        "<>",
        "&",
        "|",
        "!",
        "!!a",
        "a & b",
        "a | b",
        "a <-> b",
        "a:*",
        "a:A",
        "$1",
        "@",
        "#",
        "🙂",
        "🙂 café",
        "日本語",
        "ｆｕｌｌｗｉｄｔｈ",
        "e\u{301}",
        "\u{200b}",
        "\u{feff}a",
        "\t\n",
        "NEAR the end",
        "\"quoted\"",
        &long_word,
        &too_long,
        &many_words,
        "a b c d e f g h i j k l m n o p",
    ];
    for q in queries {
        let (status, body) = search(&app, &alice, &[("q", q)]).await;
        match status {
            StatusCode::OK => assert!(body["hits"].is_array(), "{q:?}: {body}"),
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["error"]["code"], "validation_failed", "{q:?}: {body}");
                assert_eq!(body["error"]["field"], "q", "{q:?}: {body}");
            }
            other => panic!("{q:?}: {other} {body}"),
        }
    }
    // Some of them find the message, the same in both modes.
    for q in [
        "NEAR the end",
        "(paren)",
        "x*y",
        "^caret",
        "\"quoted\"",
        "日本語",
        "café",
        "a OR b",
    ] {
        assert_eq!(hits(&app, &alice, &[("q", q)]).await.len(), 1, "{q:?}");
    }
    // ... and the bounds are 422s.
    for q in ["", "-spam", "*", &too_long, &many_words] {
        let (status, _) = search(&app, &alice, &[("q", q)]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q:?}");
    }
    // No q at all, and a q the store cannot hold.
    let (status, body) = app.get("/v1/search/messages", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .get("/v1/search/messages?q=a%00b", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .get("/v1/search/messages?q=%FF%FE", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn searches_are_served_by_the_full_text_index(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let (alice, _bob, room) = a_room_of_two(&app).await;
    for i in 0..20 {
        app.send_message(&alice, room, &format!("indexing check {i}"))
            .await;
    }
    let store = store::Store::connect(&app.database_url(), 1)
        .await
        .expect("store");
    let expr = store::SearchExpr {
        clauses: vec![store::SearchClause {
            negated: false,
            phrases: vec![vec!["indexing".to_owned()]],
        }],
    };
    for room in [None, Some(room)] {
        let request = store::SearchRequest {
            caller: alice.id,
            expr: &expr,
            room,
            sender: None,
            before: None,
            after: None,
            page_after: None,
            limit: 20,
        };
        let plan = store
            .explain_search(&request, store::Explain::PlanWithoutScans)
            .await
            .expect("a plan")
            .join("\n");
        match mode {
            Mode::Cluster | Mode::RedisCluster => {
                assert!(!plan.contains("Seq Scan"), "no scan of a table:\n{plan}");
                if room.is_none() {
                    assert!(
                        plan.contains("room_events_search_idx"),
                        "across rooms the GIN index finds the messages:\n{plan}"
                    );
                }
            }
            Mode::Single => {
                assert!(
                    plan.contains("SCAN message_search VIRTUAL TABLE INDEX"),
                    "{plan}"
                );
                assert!(
                    !plan
                        .lines()
                        .any(|l| l.contains("SCAN e") || l.contains("SCAN room_events")),
                    "messages are looked up by key, never scanned:\n{plan}"
                );
            }
        }
    }
    store.close().await;
    app.stop().await;
}

async fn searches_are_rate_limited_per_user(mode: Mode) {
    let mut options = Options::default();
    options.policy.searches_per_second = 1;
    options.policy.searches_burst = 3;
    let app = TestApp::spawn_with(mode, options).await;
    let (alice, bob, _room) = a_room_of_two(&app).await;
    for _ in 0..3 {
        let (status, body) = search(&app, &alice, &[("q", "anything")]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = search(&app, &alice, &[("q", "anything")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Invalid searches spend the allowance too; others are not affected.
    let (status, _) = search(&app, &alice, &[("q", "")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = search(&app, &bob, &[("q", "anything")]).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
