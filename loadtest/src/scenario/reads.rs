//! `reads`: what read receipts cost the database. C connections join R
//! rooms, receive M messages in each (posted by one more member of each
//! room who has no connection: posting moves the poster's own read
//! marker), then send `read` frames at a total
//! rate for a while, each for the next seq the connection has received
//! (increasing, so every frame moves a marker: a repeated or lower seq is
//! ignored by the gateway, and a seq it has not delivered is refused with
//! `invalid_seq`, which the report counts).
//!
//! What reached the database is read from the gateways' own counters
//! (`--metrics-url`: `store_marker_batches_total`, `store_marker_rows_written_total`)
//! and, with `--database-url`, from `pg_stat_database` (commits and rows
//! updated; see [`crate::db_stats`] for the quiet periods that needs).
//!
//! How statements are counted: the gateway's marker writer
//! (`store/src/markers.rs`) coalesces read markers for 200 ms and writes
//! each batch with `advance_markers`: one transaction of two statements,
//! a `SELECT ... FOR NO KEY UPDATE` of the batch's rows and one `UPDATE`
//! from a JSON parameter (left out when nothing moved), between `BEGIN`
//! and `COMMIT`. So statements/s = 2 × batches/s (4 × with BEGIN and
//! COMMIT as round trips), whatever the number of read frames.
//!
//! Each connection is split: one future reads (and answers pings through
//! the writer), the other sends its reads on an open-loop schedule (read
//! `j` of connection `i` is due at `start + (i + j·C) / rate`). Everything
//! runs in this process (no agents).

use super::{provision_run, timeouts, token_ttl};
use crate::cli::ReadsArgs;
use crate::client::{self, GatewayTarget, Timeouts, WsRead, WsWrite};
use crate::db_stats::{self, DbProbe, DbWindow};
use crate::memory::metric;
use crate::metrics::Reasons;
use crate::provision::ProvisionPlan;
use crate::report::Report;
use fastwebsockets::{Frame, OpCode};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use shared::RoomId;
use shared::protocol::{ClientFrame, Encoding};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The marker writer flushes every 200 ms (`store::markers::FLUSH_INTERVAL`):
/// this long after the last update, its batch is written (one interval
/// and a slow commit's worth of margin).
const MARKER_FLUSH_TAIL: Duration = Duration::from_millis(500);

/// Most scrapes while waiting for the marker counters to stop moving.
const SETTLE_SCRAPES: usize = 10;

/// How often the delivery wait checks every connection's newest seq.
const DELIVERY_POLL: Duration = Duration::from_millis(20);

/// Time between announcing the read window and its start, so every
/// connection's writer is waiting when it begins.
const WINDOW_LEAD: Duration = Duration::from_millis(100);

/// A read sent this late after its scheduled time counts as late.
const LATE_SEND: Duration = Duration::from_millis(10);

/// Pings (and close echoes) owed by a reader, waiting for its writer.
const OWED_FRAMES: usize = 16;

/// Extra time, beyond the close handshake's own timeout, that closing
/// every connection may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One gateway's marker counters over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayMarkers {
    pub url: String,
    pub batches: u64,
    pub rows: u64,
    pub updates_dropped: u64,
    pub batch_failures: u64,
}

/// What the run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadsReport {
    pub connections: u64,
    pub connected: u64,
    pub failures: Reasons,
    pub rooms: u64,
    pub room_size: u64,
    pub messages_per_room: u64,
    pub posts_acked: u64,
    pub post_failures: Reasons,
    /// Every connection received every acknowledged message.
    pub delivered: bool,
    pub delivery_s: f64,
    pub target_rate: f64,
    pub duration_s: f64,
    pub reads_sent: u64,
    pub reads_per_s: f64,
    /// Sent more than 10 ms after their scheduled time, and the most late
    /// (a connection's reads are C/rate apart: one later than that can
    /// share a batch with the next and move its marker once for both).
    pub reads_late: u64,
    pub max_lag_ms: f64,
    /// Sent for the newest seq received because the next one had not
    /// arrived (the gateway ignores them: the marker is already there).
    pub reads_repeated: u64,
    /// `error` frames the connections received, by code (`invalid_seq`...).
    pub error_frames: Reasons,
    /// `receipt` frames (other members' reads) and `read_marker` frames
    /// (the user's own marker moved) received during the run.
    pub receipts_received: u64,
    pub read_markers_received: u64,
    /// Connections that ended before the close, by reason.
    pub drops: Reasons,
    /// From the gateways' /metrics, between the samples around the window
    /// (the last batch's flush included).
    pub gateways: Vec<GatewayMarkers>,
    pub metrics_errors: Vec<String>,
    pub marker_batches: u64,
    pub marker_rows: u64,
    pub batches_per_s: f64,
    /// SELECT + UPDATE per batch (see the module docs).
    pub statements_per_s: f64,
    /// With BEGIN and COMMIT: round trips to PostgreSQL per second.
    pub round_trips_per_s: f64,
    /// From pg_stat_database, with `--database-url`.
    pub database: Option<DbWindow>,
}

impl ReadsReport {
    /// The human summary.
    pub fn write_text(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nreads: {} of {} connections joined {} rooms ({} connections and a poster each); {} messages per room ({} acknowledged), delivered to every connection: {} in {:.1} s",
            self.connected,
            self.connections,
            self.rooms,
            self.room_size,
            self.messages_per_room,
            self.posts_acked,
            if self.delivered { "yes" } else { "NO" },
            self.delivery_s
        );
        for (reason, n) in self.failures.iter().chain(&self.post_failures) {
            let _ = writeln!(o, "  failed: {n} {reason}");
        }
        let _ = writeln!(
            o,
            "  read frames: {} sent in {:.1} s = {:.1}/s (target {:.1}/s); {} late by >10 ms (max {:.0} ms), {} repeated a seq (next not yet received)",
            self.reads_sent,
            self.duration_s,
            self.reads_per_s,
            self.target_rate,
            self.reads_late,
            self.max_lag_ms,
            self.reads_repeated
        );
        let _ = writeln!(
            o,
            "  answers: error frames {:?}; {} receipt frames, {} read_marker frames (one per marker moved) received",
            self.error_frames, self.receipts_received, self.read_markers_received
        );
        for (reason, n) in &self.drops {
            let _ = writeln!(o, "  dropped: {n} {reason}");
        }
        if !self.gateways.is_empty() {
            let _ = writeln!(
                o,
                "  marker batches (gateways' /metrics): {} batches, {} rows written = {:.1} batches/s -> {:.1} statements/s (SELECT + UPDATE per batch), {:.1} round trips/s with BEGIN/COMMIT",
                self.marker_batches,
                self.marker_rows,
                self.batches_per_s,
                self.statements_per_s,
                self.round_trips_per_s
            );
            for g in &self.gateways {
                let _ = writeln!(
                    o,
                    "    {}: {} batches, {} rows, {} updates dropped, {} failed batches",
                    g.url, g.batches, g.rows, g.updates_dropped, g.batch_failures
                );
            }
        }
        for e in &self.metrics_errors {
            let _ = writeln!(o, "  unavailable: {e}");
        }
        if let Some(d) = &self.database {
            let _ = writeln!(
                o,
                "  PostgreSQL (pg_stat_database, {:.0} s quiet on each side): {} commits ({:.1}/s over {:.1} s), {} rollbacks, {} rows updated ({:.1}/s), {} rows inserted",
                d.settle_s,
                d.delta.xact_commit,
                d.commits_per_s,
                d.per_s,
                d.delta.xact_rollback,
                d.delta.tup_updated,
                d.rows_updated_per_s,
                d.delta.tup_inserted
            );
        }
    }
}

/// Counters every connection adds to.
#[derive(Default)]
struct Counters {
    reads_sent: AtomicU64,
    reads_late: AtomicU64,
    max_lag_us: AtomicU64,
    reads_repeated: AtomicU64,
    receipts: AtomicU64,
    read_markers: AtomicU64,
    errors: Mutex<Reasons>,
    drops: Mutex<Reasons>,
}

impl Counters {
    fn count(map: &Mutex<Reasons>, reason: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

/// One connection as the coordinator sees it.
struct Conn {
    room: usize,
    /// The newest seq it received (its reader writes it).
    newest: Arc<AtomicI64>,
    joined: bool,
}

/// The read window, once announced.
type Window = Option<(Instant, Instant)>;

pub async fn run(args: &ReadsArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let target = &args.target;
    anyhow::ensure!(
        target.agents.is_empty(),
        "reads runs in this process only: drop --agents"
    );
    let size = super::room_size(args.connections, args.rooms)?;
    let users = size * args.rooms;
    let per_conn = (args.rate * args.duration.as_secs_f64() / f64::from(users)).ceil() as u64;
    let messages = args.messages.map_or(per_conn + 1, u64::from);
    let planned = Duration::from_secs_f64(f64::from(users) / args.connect_rate)
        + args.delivery_timeout
        + args.duration
        + args.stats_settle * 2;
    let mut db = match &args.database_url {
        Some(url) => Some(DbProbe::connect(url).await.map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (mut report, roster) = provision_run(
        "reads",
        serde_json::to_value(args)?,
        target,
        &ProvisionPlan {
            // One more member per room: the poster, who has no connection
            // (posting moves the poster's own read marker, which would
            // make a connected poster's reads change nothing).
            users: (size + 1) * args.rooms,
            rooms: args.rooms,
            room_size: size + 1,
            token_ttl_secs: token_ttl(planned),
        },
    )
    .await?;
    let mut rr = ReadsReport {
        connections: u64::from(users),
        rooms: u64::from(args.rooms),
        room_size: u64::from(size),
        messages_per_room: messages,
        target_rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        ..ReadsReport::default()
    };
    if args.rate / f64::from(users) > 20.0 {
        report.errors.push(format!(
            "{:.1} reads/s per connection is above the gateway's default client frame limit (20/s): add connections",
            args.rate / f64::from(users)
        ));
    }
    let mut targets = Vec::with_capacity(target.gateways.len());
    for url in &target.gateways {
        targets.push(GatewayTarget::resolve(url).await?);
    }
    let targets = Arc::new(targets);
    let counters = Arc::new(Counters::default());
    let (window_tx, window_rx) = watch::channel::<Window>(None);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let limits = timeouts(target);
    let encoding = target.encoding.protocol();
    let (joined_tx, mut joined_rx) = mpsc::channel::<(usize, Result<(), String>)>(1024);
    let mut conns = Vec::with_capacity(users as usize);
    let start = Instant::now();
    for (r, room) in roster.rooms.iter().enumerate() {
        for &u in room.members.iter().take(size as usize) {
            let i = conns.len();
            let newest = Arc::new(AtomicI64::new(0));
            conns.push(Conn {
                room: r,
                newest: newest.clone(),
                joined: false,
            });
            let source = (!target.source_addrs.0.is_empty())
                .then(|| target.source_addrs.0[i % target.source_addrs.0.len()]);
            tasks.spawn(connection(ConnSetup {
                index: i,
                total: u64::from(users),
                rate: args.rate,
                room_id: room.id,
                token: roster.users[u as usize].token.clone(),
                target: targets.clone(),
                gateway: i % targets.len(),
                source,
                encoding,
                limits,
                at: start + Duration::from_secs_f64(i as f64 / args.connect_rate),
                newest,
                counters: counters.clone(),
                window: window_rx.clone(),
                joined: joined_tx.clone(),
                stop: stop.clone(),
            }));
        }
    }
    drop(joined_tx);

    let outcome = measure(
        args,
        &roster,
        &mut conns,
        &mut joined_rx,
        &window_tx,
        &mut db,
        &mut rr,
        &cancel,
    )
    .await;
    if let Err(e) = outcome {
        report.errors.push(format!("{e:#}"));
    }
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(limits.close + CLOSE_GRACE, tasks.wait()).await;
    rr.reads_sent = counters.reads_sent.load(Ordering::Relaxed);
    rr.reads_per_s = rr.reads_sent as f64 / args.duration.as_secs_f64();
    rr.reads_late = counters.reads_late.load(Ordering::Relaxed);
    rr.max_lag_ms = counters.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0;
    rr.reads_repeated = counters.reads_repeated.load(Ordering::Relaxed);
    rr.receipts_received = counters.receipts.load(Ordering::Relaxed);
    rr.read_markers_received = counters.read_markers.load(Ordering::Relaxed);
    rr.error_frames = counters
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    rr.drops = counters.drops.lock().map(|d| d.clone()).unwrap_or_default();
    if cancel.is_cancelled() {
        report.interrupted = true;
    }
    report.reads = Some(rr);
    report.finish(&[]);
    Ok(report)
}

/// Connect, post, wait for delivery, quiet, read window, samples.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &ReadsArgs,
    roster: &crate::provision::Roster,
    conns: &mut [Conn],
    joined_rx: &mut mpsc::Receiver<(usize, Result<(), String>)>,
    window_tx: &watch::Sender<Window>,
    db: &mut Option<DbProbe>,
    rr: &mut ReadsReport,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // 1. Every connection answers once: joined or failed.
    let mut answered = 0;
    while answered < conns.len() {
        let next = tokio::select! {
            n = joined_rx.recv() => n,
            _ = cancel.cancelled() => anyhow::bail!("interrupted while connecting"),
        };
        let Some((i, result)) = next else {
            anyhow::bail!("every connection task ended while connecting")
        };
        answered += 1;
        match result {
            Ok(()) => conns[i].joined = true,
            Err(reason) => *rr.failures.entry(reason).or_default() += 1,
        }
    }
    rr.connected = conns.iter().filter(|c| c.joined).count() as u64;

    // 2. M messages into every room, from its members in turn.
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()?;
    let api = args.target.api.trim_end_matches('/').to_owned();
    let posts: Vec<_> = roster
        .rooms
        .iter()
        .map(|room| {
            post_room(
                http.clone(),
                format!("{api}/v1/rooms/{}/messages", room.id),
                // The poster is the last member (see `run`).
                room.members
                    .last()
                    .map(|&m| vec![roster.users[m as usize].token.clone()])
                    .unwrap_or_default(),
                rr.messages_per_room,
                args.target.timeout,
            )
        })
        .collect();
    let posted = futures::stream::iter(posts)
        .buffered(usize::from(args.post_concurrency))
        .collect::<Vec<_>>();
    let posted = tokio::select! {
        p = posted => p,
        _ = cancel.cancelled() => anyhow::bail!("interrupted while posting"),
    };
    let mut last_seq = Vec::with_capacity(posted.len());
    for (last, acked, failures) in posted {
        last_seq.push(last);
        rr.posts_acked += acked;
        crate::metrics::merge_reasons(&mut rr.post_failures, &failures);
    }

    // 3. Until every joined connection has received its room's last message.
    let delivery_start = Instant::now();
    let deadline = delivery_start + args.delivery_timeout;
    rr.delivered = loop {
        let all = conns
            .iter()
            .filter(|c| c.joined)
            .all(|c| c.newest.load(Ordering::Relaxed) >= last_seq[c.room]);
        if all {
            break true;
        }
        if Instant::now() >= deadline || cancel.is_cancelled() {
            break false;
        }
        tokio::time::sleep(DELIVERY_POLL).await;
    };
    rr.delivery_s = delivery_start.elapsed().as_secs_f64();
    anyhow::ensure!(
        rr.delivered,
        "not every connection received its room's messages within {:?}",
        args.delivery_timeout
    );

    // 4. Quiet: the delivery markers of the posting phase are written, and
    //    (with a database) its statistics flushed, before the first sample.
    let quiet = if db.is_some() {
        args.stats_settle.max(MARKER_FLUSH_TAIL)
    } else {
        MARKER_FLUSH_TAIL
    };
    tokio::select! {
        _ = tokio::time::sleep(quiet) => {}
        _ = cancel.cancelled() => anyhow::bail!("interrupted before the read window"),
    }
    let scrape = reqwest::Client::builder().no_proxy().build()?;
    let metrics_before = scrape_all(&scrape, &args.metrics_urls).await;
    let db_before = match db.as_mut() {
        Some(db) => Some(db.sample().await.map_err(anyhow::Error::msg)?),
        None => None,
    };

    // 5. The read window.
    let start = Instant::now() + WINDOW_LEAD;
    let end = start + args.duration;
    let _ = window_tx.send(Some((start, end)));
    tokio::select! {
        _ = tokio::time::sleep_until(end + MARKER_FLUSH_TAIL) => {}
        _ = cancel.cancelled() => {}
    }
    let metrics_after = settled_scrape(&scrape, &args.metrics_urls).await;
    marker_window(args, &metrics_before, &metrics_after, rr);
    if let (Some(db), Some(before)) = (db.as_mut(), db_before) {
        tokio::select! {
            _ = tokio::time::sleep(args.stats_settle) => {}
            _ = cancel.cancelled() => anyhow::bail!("interrupted while PostgreSQL's statistics flush"),
        }
        let after = db.sample().await.map_err(anyhow::Error::msg)?;
        rr.database = Some(db_stats::window(
            &before,
            &after,
            args.duration,
            args.stats_settle,
        ));
    }
    Ok(())
}

/// The gateways' marker counters: (batches, rows, dropped, failed) per URL.
type MarkerSample = Result<[u64; 4], String>;

/// Scrapes until two scrapes [`MARKER_FLUSH_TAIL`] apart agree (the last
/// batch of the window is written), at most [`SETTLE_SCRAPES`] times.
async fn settled_scrape(http: &reqwest::Client, urls: &[String]) -> Vec<MarkerSample> {
    let mut last = scrape_all(http, urls).await;
    for _ in 1..SETTLE_SCRAPES {
        tokio::time::sleep(MARKER_FLUSH_TAIL).await;
        let next = scrape_all(http, urls).await;
        if next == last {
            break;
        }
        last = next;
    }
    last
}

async fn scrape_all(http: &reqwest::Client, urls: &[String]) -> Vec<MarkerSample> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        out.push(scrape(http, url).await);
    }
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> MarkerSample {
    let text = crate::memory::scrape_text(http, url).await?;
    let get = |name: &str| {
        metric(&text, name)
            .map(|v| v as u64)
            .ok_or_else(|| format!("{url}: no {name} in the metrics"))
    };
    Ok([
        get("store_marker_batches_total")?,
        get("store_marker_rows_written_total")?,
        get("store_marker_updates_dropped_total")?,
        get("store_marker_batch_failures_total")?,
    ])
}

fn marker_window(
    args: &ReadsArgs,
    before: &[MarkerSample],
    after: &[MarkerSample],
    rr: &mut ReadsReport,
) {
    for (i, url) in args.metrics_urls.iter().enumerate() {
        match (&before[i], &after[i]) {
            (Ok(b), Ok(a)) => rr.gateways.push(GatewayMarkers {
                url: url.clone(),
                batches: a[0].saturating_sub(b[0]),
                rows: a[1].saturating_sub(b[1]),
                updates_dropped: a[2].saturating_sub(b[2]),
                batch_failures: a[3].saturating_sub(b[3]),
            }),
            (Err(e), _) | (_, Err(e)) => rr.metrics_errors.push(e.clone()),
        }
    }
    rr.marker_batches = rr.gateways.iter().map(|g| g.batches).sum();
    rr.marker_rows = rr.gateways.iter().map(|g| g.rows).sum();
    let secs = args.duration.as_secs_f64();
    rr.batches_per_s = rr.marker_batches as f64 / secs;
    rr.statements_per_s = 2.0 * rr.batches_per_s;
    rr.round_trips_per_s = 4.0 * rr.batches_per_s;
}

/// Posts `messages` into one room, in order, as its poster(s) in turn;
/// returns the newest acknowledged seq, the count, and the failures.
async fn post_room(
    http: reqwest::Client,
    url: String,
    tokens: Vec<String>,
    messages: u64,
    timeout: Duration,
) -> (i64, u64, Reasons) {
    let mut last = 0i64;
    let mut acked = 0u64;
    let mut failures = Reasons::new();
    if tokens.is_empty() {
        *failures.entry("no poster in the room".into()).or_default() += messages;
        return (last, acked, failures);
    }
    for k in 0..messages {
        let token = &tokens[k as usize % tokens.len()];
        match post(&http, &url, token, k, timeout).await {
            Ok(seq) => {
                last = last.max(seq);
                acked += 1;
            }
            Err(reason) => *failures.entry(reason).or_default() += 1,
        }
    }
    (last, acked, failures)
}

/// The part of a 201 answer to a post that we need.
#[derive(Deserialize)]
struct Posted {
    seq: i64,
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    k: u64,
    timeout: Duration,
) -> Result<i64, String> {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "body": format!("reads scenario message {k}") }))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("post: {e}"))?;
    let status = response.status();
    if status.as_u16() != 201 {
        return Err(format!("post: HTTP {status}"));
    }
    response
        .json::<Posted>()
        .await
        .map(|p| p.seq)
        .map_err(|e| format!("post: {e}"))
}

/// Everything one connection task needs.
struct ConnSetup {
    index: usize,
    total: u64,
    rate: f64,
    room_id: i64,
    token: String,
    target: Arc<Vec<GatewayTarget>>,
    gateway: usize,
    source: Option<IpAddr>,
    encoding: Encoding,
    limits: Timeouts,
    at: Instant,
    newest: Arc<AtomicI64>,
    counters: Arc<Counters>,
    window: watch::Receiver<Window>,
    joined: mpsc::Sender<(usize, Result<(), String>)>,
    stop: CancellationToken,
}

async fn connection(s: ConnSetup) {
    tokio::select! {
        _ = tokio::time::sleep_until(s.at) => {}
        _ = s.stop.cancelled() => return,
    }
    let target = &s.target[s.gateway];
    let (mut read, mut write) =
        match client::open_split(target, s.source, &s.token, s.encoding, &s.limits).await {
            Ok((read, write, _)) => (read, write),
            Err(e) => {
                let _ = s.joined.send((s.index, Err(e.reason()))).await;
                return;
            }
        };
    let base = match client::join_split(
        &mut read,
        &mut write,
        s.encoding,
        s.room_id,
        1,
        s.limits.join,
    )
    .await
    {
        Ok(joined) => joined.seq,
        Err(e) => {
            let _ = s.joined.send((s.index, Err(e.reason()))).await;
            return;
        }
    };
    s.newest.store(base, Ordering::Relaxed);
    if s.joined.send((s.index, Ok(()))).await.is_err() {
        return;
    }
    let (owed_tx, owed_rx) = mpsc::channel(OWED_FRAMES);
    let reader = reader(&mut read, owed_tx, &s);
    let writer = writer(&mut write, owed_rx, base, &s);
    tokio::pin!(reader);
    tokio::pin!(writer);
    let reader_ended = tokio::select! {
        _ = &mut reader => true,
        _ = &mut writer => false,
    };
    if !reader_ended {
        // The writer sent its close: the gateway's answer ends the reader.
        let _ = tokio::time::timeout(s.limits.close, &mut reader).await;
    }
}

/// Reads until the socket ends: newest seq, answers, owed pongs.
async fn reader(read: &mut WsRead, owed: mpsc::Sender<Frame<'static>>, s: &ConnSetup) {
    loop {
        let frame = read
            .read_frame(&mut |f: Frame<'_>| {
                // A full queue only happens if the writer is stuck; the
                // gateway then closes the connection, which is counted.
                let _ = owed.try_send(client::owned_frame(&f));
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            })
            .await;
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                if !s.stop.is_cancelled() {
                    Counters::count(&s.counters.drops, client::read_error(e).reason());
                }
                return;
            }
        };
        match frame.opcode {
            OpCode::Close => {
                if !s.stop.is_cancelled() {
                    Counters::count(&s.counters.drops, client::closed(&frame.payload).reason());
                }
                return;
            }
            OpCode::Text | OpCode::Binary => {
                let Some(view) = client::parse_frame(s.encoding, &frame.payload) else {
                    continue;
                };
                match &*view.kind {
                    "event" => {
                        if let Some(seq) = view.seq {
                            s.newest.fetch_max(seq, Ordering::Relaxed);
                        }
                    }
                    "error" => Counters::count(
                        &s.counters.errors,
                        view.code.as_deref().unwrap_or("?").to_owned(),
                    ),
                    "receipt" => {
                        s.counters.receipts.fetch_add(1, Ordering::Relaxed);
                    }
                    "read_marker" => {
                        s.counters.read_markers.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Answers what the reader owes, sends the reads on schedule, closes.
async fn writer(
    write: &mut WsWrite,
    mut owed: mpsc::Receiver<Frame<'static>>,
    base: i64,
    s: &ConnSetup,
) {
    let mut window = s.window.clone();
    let mut reader_gone = false;
    // Until the window is announced (or the run stops).
    let (start, end) = loop {
        if let Some(w) = *window.borrow_and_update() {
            break w;
        }
        tokio::select! {
            _ = s.stop.cancelled() => return close(write).await,
            f = owed.recv(), if !reader_gone => match f {
                Some(f) => if write.write_frame(f).await.is_err() { return },
                None => reader_gone = true,
            },
            changed = window.changed() => if changed.is_err() { return close(write).await },
        }
    };
    let mut j: u64 = 0;
    loop {
        let offset = (s.index as u64 + j * s.total) as f64 / s.rate;
        let at = start + Duration::from_secs_f64(offset);
        if at >= end {
            break;
        }
        tokio::select! {
            biased;
            _ = s.stop.cancelled() => return close(write).await,
            f = owed.recv(), if !reader_gone => {
                match f {
                    Some(f) => if write.write_frame(f).await.is_err() { return },
                    None => reader_gone = true,
                }
                continue;
            }
            _ = tokio::time::sleep_until(at) => {}
        }
        let lag = Instant::now().saturating_duration_since(at);
        if lag > LATE_SEND {
            s.counters.reads_late.fetch_add(1, Ordering::Relaxed);
        }
        s.counters
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        let want = base + 1 + j as i64;
        let newest = s.newest.load(Ordering::Relaxed);
        if newest <= base {
            // Nothing received: no seq this connection may read.
            j += 1;
            continue;
        }
        if newest < want {
            s.counters.reads_repeated.fetch_add(1, Ordering::Relaxed);
        }
        let frame = ClientFrame::Read {
            id: None,
            room_id: RoomId(s.room_id),
            seq: want.min(newest),
        };
        if client::send_split(write, s.encoding, &frame).await.is_err() {
            return;
        }
        s.counters.reads_sent.fetch_add(1, Ordering::Relaxed);
        j += 1;
    }
    // The window is over: keep answering pings until the run stops.
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => return close(write).await,
            f = owed.recv(), if !reader_gone => match f {
                Some(f) => if write.write_frame(f).await.is_err() { return },
                None => reader_gone = true,
            },
        }
        if reader_gone {
            s.stop.cancelled().await;
            return close(write).await;
        }
    }
}

async fn close(write: &mut WsWrite) {
    let _ = write
        .write_frame(Frame::close(shared::protocol::close::NORMAL, b""))
        .await;
}
