//! Resume: `join` with `since_seq` sends every event after it, then the
//! live ones, with nothing lost or doubled at the seam.

use futures::future::join_all;
use shared::model::RoomEvent;
use shared::protocol::{ClientFrame, ErrorCode, ResumeOutcome, ServerFrame};
use std::sync::Arc;
use testkit::{Mode, Options, TestApp, WsClient, both_modes};

both_modes!(
    clients_that_drop_and_resume_get_every_event_once_in_order,
    a_backlog_over_the_limit_points_at_the_history,
    since_seq_outside_the_room_is_refused,
    resumes_are_served_from_the_window,
    an_event_whose_publish_was_lost_reaches_members_once_a_join_shows_it,
    a_backlog_longer_than_a_page_of_history_is_read_whole_from_the_database,
);

/// Messages posted while the readers drop and resume.
const MESSAGES: i64 = 120;

/// How long a reader waits for its next event before it reports what it has
/// (within the test client's own frame timeout).
const WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// The next event frame's seq.
async fn next_event(ws: &mut WsClient) -> i64 {
    loop {
        if let ServerFrame::Event(RoomEvent { seq, .. }) = ws.frame().await {
            return seq;
        }
    }
}

/// A small deterministic generator (xorshift), seeded per run and printed
/// on failure, for "random" disconnect points.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

const COMPLETE: Option<ResumeOutcome> = Some(ResumeOutcome {
    complete: true,
    history_from_seq: None,
});

pub(crate) async fn clients_that_drop_and_resume_get_every_event_once_in_order(mode: Mode) {
    let app = Arc::new(TestApp::spawn(mode).await);
    let poster = app.user("poster").await;
    let room = app.create_room(&poster, "busy").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let reader = app.user(&format!("reader{i}")).await;
        app.add_member(&poster, room, &reader).await;
        readers.push(reader);
    }
    let start = app.last_seq(&poster, room).await;
    let end = start + MESSAGES;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(1);

    let posting = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                app.send_message(&poster, room, &format!("m{i}")).await;
            }
        })
    };
    let reading = readers.iter().enumerate().map(|(i, reader)| {
        let app = app.clone();
        async move {
            let mut dice = Dice(seed.wrapping_mul(i as u64 + 7));
            let mut ws = app.ws(i, reader).await;
            let mut last = ws.join_since(room, start).await.expect("joined").0;
            assert_eq!(last, start);
            let mut seen = Vec::new();
            let mut resumes = 0;
            while last < end {
                // A few events, then the connection drops without a goodbye
                // and comes back, on another gateway in a cluster.
                for _ in 0..=dice.roll(12) {
                    if last == end {
                        break;
                    }
                    last = match tokio::time::timeout(WAIT, next_event(&mut ws)).await {
                        Ok(seq) => seq,
                        Err(_) => panic!(
                            "reader {i} (seed {seed}) waited {WAIT:?} after seq {last} of {end}; \
                             the room is at {}, seen {:?}",
                            app.last_seq(reader, room).await,
                            seen
                        ),
                    };
                    seen.push(last);
                }
                drop(ws);
                resumes += 1;
                ws = app.ws(i + resumes, reader).await;
                let (seq, resume) = ws.join_since(room, last).await.expect("resumed");
                assert_eq!((seq, resume), (last, COMPLETE), "seed {seed}");
            }
            (seen, resumes)
        }
    });
    // A failed post would leave the readers waiting for events that never
    // come: it is reported as itself.
    let mut posting = posting;
    let readers = join_all(reading);
    tokio::pin!(readers);
    let results = tokio::select! {
        results = &mut readers => {
            posting.await.expect("posting");
            results
        }
        posted = &mut posting => {
            posted.expect("posting");
            readers.await
        }
    };
    for (i, (seen, resumes)) in results.into_iter().enumerate() {
        assert_eq!(
            seen,
            (start + 1..=end).collect::<Vec<_>>(),
            "reader {i} after {resumes} resumes (seed {seed}): every event once, in order"
        );
        assert!(resumes > 5, "reader {i} resumed only {resumes} times");
    }
}

async fn a_backlog_over_the_limit_points_at_the_history(mode: Mode) {
    let mut options = Options::default();
    options.ws.resume_limit = 3;
    let app = TestApp::spawn_with(mode, options).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "long").await;
    let start = app.last_seq(&alice, room).await;
    for i in 0..6 {
        app.send_message(&alice, room, &format!("m{i}")).await;
    }
    let mut ws = app.ws(1, &alice).await;
    let (seq, resume) = ws.join_since(room, start).await.expect("joined");
    assert_eq!(
        (seq, resume),
        (
            start + 6,
            Some(ResumeOutcome {
                complete: false,
                history_from_seq: Some(start + 1),
            })
        ),
        "six events behind with a limit of three: page the history, live from the end"
    );
    let posted = app.send_message(&alice, room, "live").await;
    assert_eq!(next_event(&mut ws).await, posted.seq);

    // Within the limit, the same room resumes.
    let mut again = app.ws(2, &alice).await;
    let (seq, resume) = again.join_since(room, start + 4).await.expect("joined");
    assert_eq!((seq, resume), (start + 4, COMPLETE));
    for expected in start + 5..=posted.seq {
        assert_eq!(next_event(&mut again).await, expected);
    }
}

/// Without a window every backlog comes from the database, which answers a
/// page (`store::MAX_HISTORY_PAGE`) at a time: a longer one is read page by
/// page, not cut at the first page (which made a gateway skip the rest as
/// missing, losing it).
async fn a_backlog_longer_than_a_page_of_history_is_read_whole_from_the_database(mode: Mode) {
    let app = TestApp::spawn_with(
        mode,
        Options {
            window_events: 0,
            ..Options::default()
        },
    )
    .await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "long").await;
    let start = app.last_seq(&alice, room).await;
    let behind = i64::from(store::MAX_HISTORY_PAGE) * 2 + 10;
    for i in 0..behind {
        app.send_message(&alice, room, &format!("m{i}")).await;
    }
    let mut ws = app.ws(0, &alice).await;
    assert_eq!(ws.join_since(room, start).await, Ok((start, COMPLETE)));
    for expected in start + 1..=start + behind {
        assert_eq!(next_event(&mut ws).await, expected);
    }
    let posted = app.send_message(&alice, room, "live").await;
    assert_eq!(next_event(&mut ws).await, posted.seq);
}

async fn since_seq_outside_the_room_is_refused(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "r").await;
    let last = app.last_seq(&alice, room).await;
    let mut ws = app.ws(0, &alice).await;
    for since in [last + 1, -1] {
        assert_eq!(
            ws.join_since(room, since).await,
            Err(ErrorCode::InvalidSeq),
            "since_seq {since}"
        );
    }
    // Resuming at the very end is fine: nothing to send, live from there.
    assert_eq!(ws.join_since(room, last).await, Ok((last, COMPLETE)));
    // A stranger's resume is refused like any join.
    let bob = app.user("bob").await;
    let mut stranger = app.ws(1, &bob).await;
    stranger
        .send(&ClientFrame::Join {
            id: Some(5),
            room_id: room,
            since_seq: Some(0),
            presence: false,
        })
        .await;
    assert!(matches!(
        stranger.frame().await,
        ServerFrame::Error {
            code: ErrorCode::RoomNotFound,
            ..
        }
    ));
}

pub(crate) async fn resumes_are_served_from_the_window(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "w").await;
    let start = app.last_seq(&alice, room).await;
    for i in 0..5 {
        app.send_message(&alice, room, &format!("m{i}")).await;
    }
    let gateway = app.gateway(1);
    let before = gateway.backlog_reads();
    let mut ws = app.ws(1, &alice).await;
    assert_eq!(ws.join_since(room, start).await, Ok((start, COMPLETE)));
    for expected in start + 1..=start + 5 {
        assert_eq!(next_event(&mut ws).await, expected);
    }
    let after = gateway.backlog_reads();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "one read, from the window, none from the database"
    );
}

/// Cluster: the window is a cache. Without it (the stream deleted, or the
/// window turned off) resumes read the database, and nothing is lost; a
/// storm of resumes of one room on one node shares its reads.
mod cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_window_falls_back_to_the_database() {
        let app = TestApp::spawn(Mode::Cluster).await;
        let alice = app.user("alice").await;
        let room = app.create_room(&alice, "lost").await;
        let start = app.last_seq(&alice, room).await;
        for i in 0..5 {
            app.send_message(&alice, room, &format!("m{i}")).await;
        }
        app.delete_redis_key(&format!("{}window:{room}", app.redis_prefix))
            .await;
        let before = app.gateway(2).backlog_reads();
        let mut ws = app.ws(2, &alice).await;
        assert_eq!(ws.join_since(room, start).await, Ok((start, COMPLETE)));
        for expected in start + 1..=start + 5 {
            assert_eq!(next_event(&mut ws).await, expected);
        }
        let after = app.gateway(2).backlog_reads();
        assert_eq!(after.1 - before.1, 1, "read from the database");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storm_of_resumes_shares_its_reads() {
        let options = Options {
            window_events: 0,
            ..Options::default()
        };
        let app = TestApp::spawn_with(Mode::Cluster, options).await;
        let alice = app.user("alice").await;
        let room = app.create_room(&alice, "storm").await;
        let start = app.last_seq(&alice, room).await;
        for i in 0..20 {
            app.send_message(&alice, room, &format!("m{i}")).await;
        }
        // Someone keeps the room active on the node, as after a crash of
        // another gateway: the resumes all read the same recent range.
        let _anchor = {
            let mut ws = app.ws(0, &alice).await;
            ws.join(room).await.expect("joined");
            ws
        };
        let mut clients = Vec::new();
        for _ in 0..30 {
            clients.push(app.ws(0, &alice).await);
        }
        let before = app.gateway(0).backlog_reads();
        let resumed = join_all(clients.iter_mut().map(|ws| async {
            let joined = ws.join_since(room, start).await;
            let mut seqs = Vec::new();
            for _ in 0..20 {
                seqs.push(next_event(ws).await);
            }
            (joined, seqs)
        }))
        .await;
        for (joined, seqs) in resumed {
            assert_eq!(joined, Ok((start, COMPLETE)));
            assert_eq!(seqs, (start + 1..=start + 20).collect::<Vec<_>>());
        }
        let after = app.gateway(0).backlog_reads();
        let database = after.1 - before.1;
        assert!(
            database < 30,
            "30 resumes of one room cost {database} database reads (shared: {})",
            after.2 - before.2
        );
    }
}

/// A committed event whose publish never happened (Redis failed the api's
/// publish) is normally noticed when the room's next event arrives. In a
/// room that goes quiet there is none, but the next joiner's membership
/// check sees the room's newest seq: the node fetches what it lacks.
async fn an_event_whose_publish_was_lost_reaches_members_once_a_join_shows_it(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "quiet").await;
    app.add_member(&alice, room, &bob).await;
    let mut watcher = app.ws(0, &alice).await;
    let at = watcher.join(room).await.expect("joined");

    // Committed straight into the store: no publish at all.
    let store = store::Store::connect(&app.database_url(), 1)
        .await
        .expect("connecting to the test's database");
    let added = store
        .add_member(
            room,
            alice.id,
            carol.id,
            shared::model::Role::Member,
            shared::model::now_millis(),
        )
        .await
        .expect("adding carol");
    assert_eq!(added.seq, at + 1);

    // Bob joins on the same gateway: his check sees seq at + 1.
    let mut joiner = app.ws(0, &bob).await;
    joiner.join(room).await.expect("joined");
    assert_eq!(
        next_event(&mut watcher).await,
        added.seq,
        "the member already in"
    );
    assert_eq!(next_event(&mut joiner).await, added.seq, "the joiner");
    app.stop().await;
}
