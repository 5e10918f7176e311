//! Group commit of message posts: `store::MessageAppender` against each
//! engine directly (the HTTP tests in `messages.rs` go through it too).
//! Mixed batches, many concurrent posts, two api nodes on one database,
//! races with another writer, shutdown.

use futures::future::join_all;
use shared::model::{EventKind, Role, RoomEvent, now_millis};
use shared::{RoomId, UserId};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use store::{
    MAX_BATCH, MessageAppender, NewMessage, NewUser, PostOutcome, QUEUE_CAPACITY, Store, StoreError,
};
use testkit::{TestDatabase, eventually};

/// The api's default: batches start at most every 2 ms, so concurrent
/// posts gather into shared batches as they do in production.
const COMMIT_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Postgres,
    Sqlite,
}

/// Runs each listed `async fn name(engine: Engine)` once per engine, in
/// the two modules named, under the given test attribute.
macro_rules! on_both_engines {
    ($postgres:ident, $sqlite:ident, #[$test:meta], $($name:ident),* $(,)?) => {
        mod $postgres {
            $(
                #[$test]
                async fn $name() {
                    super::$name(super::Engine::Postgres).await
                }
            )*
        }
        mod $sqlite {
            $(
                #[$test]
                async fn $name() {
                    super::$name(super::Engine::Sqlite).await
                }
            )*
        }
    };
}

// One thread: posts submitted together are all queued before the committer
// runs, so they form one batch (a repeated key aside).
on_both_engines!(
    postgres,
    sqlite,
    #[tokio::test],
    a_mixed_batch_gives_each_post_the_outcome_of_a_single_post,
    closing_commits_the_queued_posts_and_refuses_later_ones,
    posts_right_after_a_batch_wait_for_the_commit_interval,
    closing_answers_every_caller_of_a_crowd_larger_than_the_queue,
);

// Two threads: posts keep arriving while batches are in flight.
on_both_engines!(
    postgres_threaded,
    sqlite_threaded,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)],
    many_concurrent_posts_are_numbered_without_gaps_per_room,
    two_appenders_on_one_database_neither_deadlock_nor_store_a_key_twice,
);

/// A fresh database of either engine.
struct TestStore {
    store: Store,
    url: String,
    database: Option<TestDatabase>,
    dir: Option<PathBuf>,
}

impl TestStore {
    async fn new(engine: Engine) -> TestStore {
        let (url, database, dir) = match engine {
            Engine::Postgres => {
                let db = TestDatabase::create().await.expect("a test database");
                (db.url.clone(), Some(db), None)
            }
            Engine::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("parley-append-{}", uuid::Uuid::new_v4().simple()));
                let url = format!("sqlite://{}/append.db", dir.display());
                (url, None, Some(dir))
            }
        };
        let store = Self::connect(&url).await;
        store.migrate().await.expect("migrating");
        TestStore {
            store,
            url,
            database,
            dir,
        }
    }

    /// Another pool on the same database, as another api node has.
    async fn connect(url: &str) -> Store {
        Store::connect(url, 8).await.expect("connecting")
    }

    async fn user(&self, name: &str) -> UserId {
        self.store
            .create_user(NewUser {
                username: name,
                email: &format!("{name}@example.com"),
                password_hash: "not a hash",
                created_at: now_millis(),
                mail: None,
            })
            .await
            .expect("creating a user")
            .id
    }

    /// A room owned by `owner` with `members` added (one event each).
    async fn room(&self, owner: UserId, name: &str, members: &[UserId]) -> RoomId {
        let (room, _) = self
            .store
            .create_group_room(
                owner,
                &store::RoomProfile {
                    name: name.into(),
                    ..Default::default()
                },
                now_millis(),
            )
            .await
            .expect("creating a room");
        for member in members {
            self.store
                .add_member(room.id, owner, *member, Role::Member, now_millis())
                .await
                .expect("adding a member");
        }
        room.id
    }

    /// `room`'s whole timeline, oldest first.
    async fn timeline(&self, room: RoomId) -> Vec<RoomEvent> {
        let mut all: Vec<RoomEvent> = Vec::new();
        loop {
            let from = all.last().map_or(1, |e| e.seq + 1);
            let page = self
                .store
                .events_between(room, from, i64::MAX)
                .await
                .expect("reading the timeline");
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    /// Asserts that `room`'s timeline is numbered 1..=n without a gap and
    /// returns it.
    async fn gap_free_timeline(&self, room: RoomId) -> Vec<RoomEvent> {
        let events = self.timeline(room).await;
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "room {room}");
        assert_eq!(
            self.store.last_seq(room).await.expect("last_seq"),
            Some(n),
            "room {room}'s last_seq is its newest event"
        );
        events
    }

    async fn drop(self) {
        self.store.close().await;
        if let Some(db) = self.database {
            db.drop_database().await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A post to submit; `'static` so it can move into spawned tasks.
#[derive(Clone, Copy, Debug)]
struct Post {
    sender: UserId,
    room: RoomId,
    body: &'static str,
    key: Option<&'static str>,
}

impl Post {
    fn new(sender: UserId, room: RoomId, body: &'static str, key: Option<&'static str>) -> Post {
        Post {
            sender,
            room,
            body,
            key,
        }
    }

    fn message(&self) -> NewMessage<'static> {
        NewMessage {
            room_id: self.room,
            sender_id: self.sender,
            body: self.body,
            client_msg_id: self.key,
            reply_to_seq: None,
            created_at: now_millis(),
        }
    }
}

async fn submit(appender: &MessageAppender, posts: &[Post]) -> Vec<PostOutcome> {
    join_all(posts.iter().map(|p| appender.post(p.message())))
        .await
        .into_iter()
        .map(|o| o.expect("posting"))
        .collect()
}

fn created(outcome: &PostOutcome) -> &RoomEvent {
    match outcome {
        PostOutcome::Created(event) => event,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn existing(outcome: &PostOutcome) -> &RoomEvent {
    match outcome {
        PostOutcome::Existing(event) => event,
        other => panic!("expected Existing, got {other:?}"),
    }
}

fn body(event: &RoomEvent) -> Option<&str> {
    match &event.kind {
        EventKind::MessageCreated { body, .. } => Some(body),
        _ => None,
    }
}

async fn a_mixed_batch_gives_each_post_the_outcome_of_a_single_post(engine: Engine) {
    let t = TestStore::new(engine).await;
    let (alice, bob, carol) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );
    let general = t.room(alice, "general", &[bob]).await;
    let random = t.room(alice, "random", &[]).await;
    let appender = MessageAppender::start(t.store.clone(), COMMIT_INTERVAL);
    let first = submit(
        &appender,
        &[Post::new(alice, general, "first", Some("k-1"))],
    )
    .await;
    let first = created(&first[0]).clone();

    let posts = [
        Post::new(alice, general, "a1", None),
        Post::new(alice, random, "r1", None),
        Post::new(carol, general, "not a member", None),
        Post::new(alice, general, "a retry with another body", Some("k-1")),
        Post::new(bob, general, "twice", Some("k-2")),
        Post::new(bob, general, "twice", Some("k-2")),
        Post::new(alice, random, "k-1 in another room", Some("k-1")),
        Post::new(alice, RoomId(i64::MAX), "no such room", None),
        Post::new(carol, random, "not a member either", Some("k-3")),
        Post::new(alice, general, "a2", None),
        Post::new(alice, random, "r2", None),
    ];
    let outcomes = submit(&appender, &posts).await;

    assert!(matches!(outcomes[2], PostOutcome::NotFound));
    assert!(matches!(outcomes[7], PostOutcome::NotFound));
    assert!(matches!(outcomes[8], PostOutcome::NotFound));
    assert_eq!(
        existing(&outcomes[3]),
        &first,
        "the original, for the api to compare bodies"
    );
    let twice = match (&outcomes[4], &outcomes[5]) {
        (PostOutcome::Created(a), PostOutcome::Existing(b))
        | (PostOutcome::Existing(b), PostOutcome::Created(a)) => {
            assert_eq!(a, b, "the second of two posts with one key gets the first");
            a.clone()
        }
        other => panic!("one of two posts with one key is stored: {other:?}"),
    };
    let elsewhere = created(&outcomes[6]).clone();
    assert_eq!(elsewhere.room_id, random, "keys are per room");

    // The batch numbers each room's posts in the order they were submitted.
    let general_events = t.gap_free_timeline(general).await;
    assert_eq!(
        general_events.iter().map(body).collect::<Vec<_>>(),
        vec![
            None,
            None,
            Some("first"),
            Some("a1"),
            Some("twice"),
            Some("a2")
        ],
        "room.created, member.added, then the posts"
    );
    let random_events = t.gap_free_timeline(random).await;
    assert_eq!(
        random_events.iter().map(body).collect::<Vec<_>>(),
        vec![None, Some("r1"), Some("k-1 in another room"), Some("r2")]
    );
    for (outcome, stored) in [
        (&outcomes[0], &general_events[3]),
        (&outcomes[9], &general_events[5]),
        (&outcomes[1], &random_events[1]),
        (&outcomes[10], &random_events[3]),
    ] {
        assert_eq!(
            created(outcome),
            stored,
            "what the caller got is what was stored"
        );
    }

    // Each idempotent post retried later returns its original.
    let retries = submit(
        &appender,
        &[
            Post::new(alice, general, "first", Some("k-1")),
            Post::new(bob, general, "twice", Some("k-2")),
            Post::new(alice, random, "k-1 in another room", Some("k-1")),
        ],
    )
    .await;
    assert_eq!(existing(&retries[0]), &first);
    assert_eq!(existing(&retries[1]), &twice);
    assert_eq!(existing(&retries[2]), &elsewhere);
    assert_eq!(t.timeline(general).await.len(), 6, "retries store nothing");

    appender.close().await;
    t.drop().await;
}

async fn many_concurrent_posts_are_numbered_without_gaps_per_room(engine: Engine) {
    const SENDERS: usize = 5;
    const ROOMS: usize = 5;
    const POSTS_PER_SENDER: usize = 100;
    /// Posts a sender has outstanding at once: new posts keep arriving
    /// while batches are in flight.
    const WAVE: usize = 10;
    const KEYS: [&str; 4] = ["k-a", "k-b", "k-c", "k-d"];

    let t = TestStore::new(engine).await;
    let mut senders = Vec::new();
    for n in 0..SENDERS {
        senders.push(t.user(&format!("user{n}")).await);
    }
    let mut rooms = Vec::new();
    for n in 0..ROOMS {
        rooms.push(t.room(senders[0], &format!("room{n}"), &senders[1..]).await);
    }
    // After room.created and a member.added for each other sender.
    let first_seq = (SENDERS + 1) as i64;
    let appender = Arc::new(MessageAppender::start(t.store.clone(), COMMIT_INTERVAL));

    let tasks = senders.iter().enumerate().map(|(s, &sender)| {
        let appender = appender.clone();
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let posts: Vec<Post> = (0..POSTS_PER_SENDER)
                .map(|n| {
                    let room = rooms[(n + s) % ROOMS];
                    // A few distinct keys per sender and room: none repeats.
                    let key = KEYS.get(n / ROOMS).filter(|_| n % 3 == 0).copied();
                    Post::new(sender, room, "hello", key)
                })
                .collect();
            let mut events = Vec::new();
            for wave in posts.chunks(WAVE) {
                for outcome in submit(&appender, wave).await {
                    events.push(created(&outcome).clone());
                }
            }
            events
        })
    });
    let mut returned: BTreeMap<RoomId, Vec<RoomEvent>> = BTreeMap::new();
    for task in join_all(tasks).await {
        for event in task.expect("a sender task") {
            returned.entry(event.room_id).or_default().push(event);
        }
    }

    let per_room = (SENDERS * POSTS_PER_SENDER / ROOMS) as i64;
    for room in &rooms {
        let mut got = returned.remove(room).unwrap_or_default();
        got.sort_by_key(|e| e.seq);
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (first_seq..first_seq + per_room).collect::<Vec<_>>(),
            "room {room}: no number shared or skipped"
        );
        let stored = t.gap_free_timeline(*room).await;
        assert_eq!(
            &stored[(first_seq - 1) as usize..],
            &got[..],
            "room {room}: callers got what was stored"
        );
    }
    appender.close().await;
    t.drop().await;
}

async fn two_appenders_on_one_database_neither_deadlock_nor_store_a_key_twice(engine: Engine) {
    const ROOMS: usize = 4;
    const POSTS: usize = 200;
    const SHARED_KEYS: [&str; 10] = [
        "s-0", "s-1", "s-2", "s-3", "s-4", "s-5", "s-6", "s-7", "s-8", "s-9",
    ];

    let t = TestStore::new(engine).await;
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let mut rooms = Vec::new();
    for n in 0..ROOMS {
        rooms.push(t.room(alice, &format!("room{n}"), &[bob]).await);
    }
    // Two api nodes: their own pools and appenders on one database.
    let other_store = TestStore::connect(&t.url).await;
    let nodes = [
        Arc::new(MessageAppender::start(t.store.clone(), COMMIT_INTERVAL)),
        Arc::new(MessageAppender::start(other_store.clone(), COMMIT_INTERVAL)),
    ];

    let tasks = nodes.iter().enumerate().map(|(node, appender)| {
        let appender = appender.clone();
        let rooms = rooms.clone();
        tokio::spawn(async move {
            // One node walks the rooms upwards, the other downwards, so their
            // batches list the same rooms in opposite orders.
            let room_at = |n: usize| {
                if node == 0 {
                    rooms[n % ROOMS]
                } else {
                    rooms[ROOMS - 1 - n % ROOMS]
                }
            };
            let mut posts: Vec<Post> = (0..POSTS)
                .map(|n| Post::new(if n % 2 == 0 { alice } else { bob }, room_at(n), "hi", None))
                .collect();
            // Both nodes post every shared key, as a client retrying through
            // another node would.
            for (n, key) in SHARED_KEYS.iter().enumerate() {
                posts.insert(
                    n * 17,
                    Post::new(alice, rooms[n % ROOMS], "retried", Some(key)),
                );
            }
            let outcomes = join_all(posts.iter().map(|p| appender.post(p.message()))).await;
            posts
                .into_iter()
                .zip(outcomes)
                .map(|(p, o)| (p, o.expect("posting (a deadlock would fail a batch)")))
                .collect::<Vec<_>>()
        })
    });
    let mut by_key: BTreeMap<&str, Vec<PostOutcome>> = BTreeMap::new();
    let mut created_per_room: BTreeMap<RoomId, usize> = BTreeMap::new();
    for task in join_all(tasks).await {
        for (post, outcome) in task.expect("a node task") {
            if let PostOutcome::Created(event) = &outcome {
                *created_per_room.entry(event.room_id).or_default() += 1;
            }
            match post.key {
                Some(key) => by_key.entry(key).or_default().push(outcome),
                None => assert!(matches!(outcome, PostOutcome::Created(_)), "{outcome:?}"),
            }
        }
    }
    for (key, outcomes) in &by_key {
        match &outcomes[..] {
            [PostOutcome::Created(a), PostOutcome::Existing(b)]
            | [PostOutcome::Existing(b), PostOutcome::Created(a)] => {
                assert_eq!(a, b, "{key}: the later post gets the original");
            }
            other => panic!("{key}: stored exactly once: {other:?}"),
        }
    }
    let mut messages = 0;
    for room in &rooms {
        let stored = t.gap_free_timeline(*room).await;
        let stored_messages = stored.iter().filter(|e| body(e).is_some()).count();
        assert_eq!(
            stored_messages,
            created_per_room.get(room).copied().unwrap_or(0),
            "room {room}"
        );
        messages += stored_messages;
    }
    assert_eq!(messages, 2 * POSTS + SHARED_KEYS.len());
    for node in &nodes {
        node.close().await;
    }
    other_store.close().await;
    t.drop().await;
}

async fn posts_right_after_a_batch_wait_for_the_commit_interval(engine: Engine) {
    /// Long enough that no database round trip explains the wait.
    const INTERVAL: Duration = Duration::from_millis(400);
    let t = TestStore::new(engine).await;
    let alice = t.user("alice").await;
    let room = t.room(alice, "general", &[]).await;
    let appender = MessageAppender::start(t.store.clone(), INTERVAL);

    let started = std::time::Instant::now();
    let first = submit(&appender, &[Post::new(alice, room, "first", None)]).await;
    created(&first[0]);
    // These arrive inside the interval that the first post's batch opened:
    // they wait for it to end, then go together.
    let posts = [Post::new(alice, room, "after", None); 20];
    let outcomes = submit(&appender, &posts).await;
    assert!(
        started.elapsed() >= INTERVAL,
        "posts inside the interval waited for it ({:?})",
        started.elapsed()
    );
    let seqs: Vec<i64> = outcomes.iter().map(|o| created(o).seq).collect();
    assert_eq!(t.gap_free_timeline(room).await.len(), 1 + 1 + posts.len());
    assert_eq!(seqs.len(), posts.len());
    appender.close().await;
    t.drop().await;
}

async fn closing_commits_the_queued_posts_and_refuses_later_ones(engine: Engine) {
    let t = TestStore::new(engine).await;
    let alice = t.user("alice").await;
    let room = t.room(alice, "general", &[]).await;
    let appender = MessageAppender::start(t.store.clone(), COMMIT_INTERVAL);

    let posts = [Post::new(alice, room, "queued", None); 50];
    let queued = join_all(posts.iter().map(|p| appender.post(p.message())));
    // The posts are queued (join! polls them first) before closing begins.
    let (outcomes, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(queued, appender.close())
    })
    .await
    .expect("closing does not hang");
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(PostOutcome::Created(_))),
            "{outcome:?}"
        );
    }

    let late = tokio::time::timeout(
        Duration::from_secs(5),
        appender.post(Post::new(alice, room, "too late", None).message()),
    )
    .await
    .expect("a post after closing does not hang");
    assert!(matches!(late, Err(StoreError::Closed)), "{late:?}");
    assert_eq!(t.gap_free_timeline(room).await.len(), 1 + posts.len());
    t.drop().await;
}

async fn closing_answers_every_caller_of_a_crowd_larger_than_the_queue(engine: Engine) {
    /// More than the appender's queue holds.
    const POSTS: usize = 1_100;
    let t = TestStore::new(engine).await;
    let alice = t.user("alice").await;
    let room = t.room(alice, "general", &[]).await;
    let appender = MessageAppender::start(t.store.clone(), COMMIT_INTERVAL);

    let posts = vec![Post::new(alice, room, "crowd", None); POSTS];
    let crowd = join_all(posts.iter().map(|p| appender.post(p.message())));
    let (outcomes, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(crowd, appender.close())
    })
    .await
    .expect("every caller gets an answer");
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PostOutcome::Created(_))))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::Closed)))
        .count();
    assert_eq!(created + refused, POSTS, "nothing but stored or refused");
    assert!(created > 0, "the posts queued before closing are stored");
    assert_eq!(t.gap_free_timeline(room).await.len(), 1 + created);
    t.drop().await;
}

/// PostgreSQL only: a batch that waits for a room another transaction holds
/// numbers its posts after that transaction's, and one that then finds its
/// key stored by that transaction falls back to the original.
mod postgres_races {
    use super::*;

    struct Holder {
        conn: PgConnection,
    }

    impl Holder {
        /// Opens a transaction that appends `bodies` (with `key` on the first)
        /// to `room` as `sender`, as another api node would, and keeps the
        /// room locked until [`Holder::commit`].
        async fn lock(
            url: &str,
            room: RoomId,
            sender: UserId,
            bodies: &[&str],
            key: Option<&str>,
        ) -> Holder {
            let mut conn = PgConnection::connect(url).await.expect("connecting");
            sqlx::query("BEGIN")
                .execute(&mut conn)
                .await
                .expect("BEGIN");
            let last: i64 = sqlx::query_scalar(
                "UPDATE rooms SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
            )
            .bind(room.0)
            .bind(bodies.len() as i64)
            .fetch_one(&mut conn)
            .await
            .expect("taking numbers");
            for (n, body) in bodies.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO room_events (room_id, seq, kind, sender_id, body, client_msg_id, created_at) \
                     VALUES ($1, $2, 'message.created', $3, $4, $5, $6)",
                )
                .bind(room.0)
                .bind(last - bodies.len() as i64 + 1 + n as i64)
                .bind(sender.0)
                .bind(*body)
                .bind(if n == 0 { key } else { None })
                .bind(now_millis())
                .execute(&mut conn)
                .await
                .expect("inserting");
            }
            Holder { conn }
        }

        async fn commit(mut self) {
            sqlx::query("COMMIT")
                .execute(&mut self.conn)
                .await
                .expect("COMMIT");
            self.conn.close().await.ok();
        }
    }

    /// Waits until some session of the test database waits for a lock.
    async fn someone_waits_for_a_lock(url: &str) {
        let pool = sqlx::PgPool::connect(url).await.expect("connecting");
        let waiting = eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .expect("pg_stat_activity");
                n > 0
            }
        })
        .await;
        assert!(waiting, "the batch waits for the room's lock");
        pool.close().await;
    }

    fn post_later(
        appender: &Arc<MessageAppender>,
        posts: &[Post],
    ) -> tokio::task::JoinHandle<Vec<PostOutcome>> {
        let appender = appender.clone();
        let posts = posts.to_vec();
        tokio::spawn(async move { submit(&appender, &posts).await })
    }

    #[tokio::test]
    async fn a_batch_waiting_for_a_room_numbers_its_posts_after_the_holders() {
        let t = TestStore::new(Engine::Postgres).await;
        let alice = t.user("alice").await;
        let general = t.room(alice, "general", &[]).await;
        let random = t.room(alice, "random", &[]).await;
        let appender = Arc::new(MessageAppender::start(t.store.clone(), COMMIT_INTERVAL));

        let holder = Holder::lock(
            &t.url,
            general,
            alice,
            &["held 1", "held 2", "held 3"],
            None,
        )
        .await;
        let batch = post_later(
            &appender,
            &[
                Post::new(alice, general, "after 1", None),
                Post::new(alice, random, "elsewhere", None),
                Post::new(alice, general, "after 2", None),
            ],
        );
        someone_waits_for_a_lock(&t.url).await;
        assert!(!batch.is_finished());
        holder.commit().await;
        let outcomes = batch.await.expect("the batch task");

        // The statement's snapshot predates the holder's commit; the room's
        // number must still come from the committed row.
        assert_eq!(
            outcomes.iter().map(|o| created(o).seq).collect::<Vec<_>>(),
            vec![5, 2, 6]
        );
        assert_eq!(
            t.gap_free_timeline(general)
                .await
                .iter()
                .map(body)
                .collect::<Vec<_>>(),
            vec![
                None,
                Some("held 1"),
                Some("held 2"),
                Some("held 3"),
                Some("after 1"),
                Some("after 2")
            ]
        );
        t.gap_free_timeline(random).await;
        appender.close().await;
        t.drop().await;
    }

    #[tokio::test]
    async fn a_batch_that_loses_a_race_for_a_key_falls_back_to_the_original() {
        let t = TestStore::new(Engine::Postgres).await;
        let alice = t.user("alice").await;
        let general = t.room(alice, "general", &[]).await;
        let random = t.room(alice, "random", &[]).await;
        let appender = Arc::new(MessageAppender::start(t.store.clone(), COMMIT_INTERVAL));

        let holder = Holder::lock(
            &t.url,
            general,
            alice,
            &["from the other node"],
            Some("k-race"),
        )
        .await;
        let batch = post_later(
            &appender,
            &[
                Post::new(alice, general, "from this node", Some("k-race")),
                Post::new(alice, general, "plain", None),
                Post::new(alice, random, "elsewhere", None),
            ],
        );
        someone_waits_for_a_lock(&t.url).await;
        holder.commit().await;
        let outcomes = batch.await.expect("the batch task");

        let original = existing(&outcomes[0]);
        assert_eq!(
            (original.seq, body(original)),
            (2, Some("from the other node"))
        );
        assert_eq!(created(&outcomes[1]).seq, 3);
        assert_eq!(created(&outcomes[2]).seq, 2);
        assert_eq!(
            t.gap_free_timeline(general).await.len(),
            3,
            "no hole, no duplicate"
        );
        assert_eq!(t.gap_free_timeline(random).await.len(), 2);
        appender.close().await;
        t.drop().await;
    }

    #[tokio::test]
    async fn callers_waiting_for_room_in_a_full_queue_are_refused_by_closing() {
        /// More than a full queue and the batches in flight hold.
        const POSTS: usize = QUEUE_CAPACITY + 4 * MAX_BATCH;
        let t = TestStore::new(Engine::Postgres).await;
        let alice = t.user("alice").await;
        let room = t.room(alice, "general", &[]).await;
        let appender = Arc::new(MessageAppender::start(t.store.clone(), COMMIT_INTERVAL));
        // No batch can finish while the room is held.
        let holder = Holder::lock(&t.url, room, alice, &["held"], None).await;

        let started = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let crowd = {
            let (appender, started, refused) = (appender.clone(), started.clone(), refused.clone());
            tokio::spawn(async move {
                join_all((0..POSTS).map(|_| {
                    let (appender, started, refused) = (&appender, &started, &refused);
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        let outcome = appender
                            .post(Post::new(alice, room, "crowd", None).message())
                            .await;
                        if matches!(outcome, Err(StoreError::Closed)) {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        outcome
                    }
                }))
                .await
            })
        };
        // Every caller has posted and the queue is full: the batches in
        // flight wait for the room, and the remaining callers for room in
        // the queue.
        let full = eventually(Duration::from_secs(20), || {
            let n = started.load(Ordering::SeqCst);
            let queued = appender.queued();
            async move { n == POSTS && queued == QUEUE_CAPACITY }
        })
        .await;
        assert!(full, "{} posts queued", appender.queued());
        let closing = {
            let appender = appender.clone();
            tokio::spawn(async move { appender.close().await })
        };
        let released = eventually(Duration::from_secs(10), || {
            let n = refused.load(Ordering::SeqCst);
            async move { n > 0 }
        })
        .await;
        assert!(released, "callers waiting for room are refused at once");
        assert!(
            !closing.is_finished(),
            "closing waits for the batches in flight"
        );
        holder.commit().await;
        closing.await.expect("closing");
        let outcomes = crowd.await.expect("the crowd");

        let created = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(PostOutcome::Created(_))))
            .count();
        let refused = refused.load(Ordering::SeqCst);
        assert_eq!(created + refused, POSTS);
        assert!(
            created > 0 && refused > 0,
            "posts in flight and queued are stored, the rest refused ({created}, {refused})"
        );
        assert_eq!(t.gap_free_timeline(room).await.len(), 2 + created);
        t.drop().await;
    }
}
