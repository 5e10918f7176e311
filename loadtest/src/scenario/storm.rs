//! `storm`: a reconnect storm. C clients (one user and one connection
//! each) join R rooms and receive messages posted at a steady rate; then,
//! at one moment (`--before` after posting began), every client drops its
//! socket (no close frame: what a lost network or a dead gateway looks
//! like to the client), stays away for `--offline`, reconnects (spread over
//! `--reconnect-spread`, to the same or the next gateway) and resumes its
//! room with `join {since_seq}` = the last seq it received, while posting
//! goes on. See "Resume after a reconnect" in docs/protocol.md.
//!
//! What it measures:
//! - **time to resume**, from the drop until the client has its `joined`
//!   and either the first event after its `since_seq` or nothing to catch
//!   up on (it already had everything the api had acknowledged when the
//!   `joined` arrived); resumes that were complete, incomplete
//!   (`resume.complete=false`: the client is told to page
//!   `history_from_seq..=seq` from the history, which this tool counts and
//!   does not page) and failed (no `joined` after `--reconnect-attempts`);
//! - **correctness**: every client must end with every event of its room
//!   exactly once and in order across the drop; events skipped over
//!   (gaps) and events received again or backwards (duplicates) are
//!   counted, and must be 0;
//! - **what the resumes cost**: the gateways' `gateway_backlog_reads_total`
//!   by source and `gateway_resumes_total` by outcome (`--metrics-url`),
//!   PostgreSQL commits (`--database-url`) and Redis commands
//!   (`--redis-url`) per resumed client.
//!
//! Posting does not stop during the storm, so the PostgreSQL and Redis
//! figures contain the posts' own work. They are sampled three times:
//! once after the first second of posting, at the drop, and once every
//! client has resumed (PostgreSQL [`crate::db_stats`]'s settle later, with
//! posting still going). The first window, without reconnects, is the
//! baseline: its rate times the storm window's length is subtracted, and
//! what remains is divided by the resumed clients. PostgreSQL's
//! statistics reach `pg_stat_database` up to a second late from busy
//! backends, so its figure is an estimate; the gateways' database-read
//! counter is exact.
//!
//! Each client is one task with one unsplit socket (fastwebsockets answers
//! pings itself while the task reads). Everything runs in this process
//! (no agents).

use super::{provision_run, timeouts, token_ttl};
use crate::cli::{ReconnectTo, StormArgs};
use crate::client::{self, GatewayTarget, Timeouts, Ws};
use crate::db_stats::{self, DbCounters, DbProbe, DbWindow};
use crate::metrics::{Hist, LatencySummary, Reasons};
use crate::provision::ProvisionPlan;
use crate::redis_stats::{self, CommandStats, RedisReport, RedisTarget};
use crate::report::Report;
use fastwebsockets::OpCode;
use serde::{Deserialize, Serialize};
use shared::RoomId;
use shared::protocol::{ClientFrame, Encoding, ResumeOutcome};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first join's request id, and the resuming join's.
const JOIN_ID: u64 = 1;
const RESUME_ID: u64 = 2;

/// Wait before the n-th retry of a failed reconnect is n times this (a
/// client backs off instead of hammering a struggling gateway).
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// The baseline window starts this long after posting begins (at most
/// half of `--before`), once the first posts' connection setup is over.
const BASELINE_START: Duration = Duration::from_secs(1);

/// How often the coordinator checks every client's newest seq while
/// waiting for the last messages.
const DELIVERY_POLL: Duration = Duration::from_millis(20);

/// Extra time, beyond the close handshake's own timeout, that closing
/// every connection may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How the resumes went, per outcome, and what they cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    pub connections: u64,
    /// Joined before the drop (the clients of the storm).
    pub connected: u64,
    pub failures: Reasons,
    pub rooms: u64,
    pub room_size: u64,
    pub target_rate: f64,
    pub posts_acked: u64,
    pub posts_per_s: f64,
    pub post_failures: Reasons,
    /// Posts sent more than a tenth of a second behind the schedule.
    pub posts_late: u64,
    /// From the start of posting to the drop.
    pub before_s: f64,
    pub offline_s: f64,
    pub reconnect_spread_s: f64,
    pub reconnect_to: String,
    /// Resumed with every missed event streamed (`resume.complete`).
    pub resumed_complete: u64,
    /// Resumed with `resume.complete=false`: told to page the history.
    pub resumed_incomplete: u64,
    /// No `joined` after every attempt, by the last attempt's reason.
    pub resume_failed: u64,
    pub resume_failures: Reasons,
    /// Failed attempts that a later attempt made good, by reason.
    pub retried: Reasons,
    /// `joined` without a `resume` outcome, or complete with a `seq` other
    /// than the `since_seq` sent (a protocol mistake of the gateway).
    pub resume_anomalies: u64,
    /// Drop to the `joined` of the resume.
    pub joined_latency: Hist,
    /// Drop to resumed (see the module docs), complete and incomplete.
    pub resume_latency: Hist,
    pub joined_summary: LatencySummary,
    pub resume_summary: LatencySummary,
    /// The events each client had missed at its reconnect (the room's
    /// newest acknowledged seq minus its since_seq, when the joined came).
    pub backlog_events: u64,
    /// Drop until the last client resumed (or gave up).
    pub storm_s: f64,
    /// Every resumed client received its room's last acknowledged message.
    pub delivered: bool,
    /// Over the resumed clients, across the drop: events skipped over
    /// (never received and not handed to the history by an incomplete
    /// resume), received twice or backwards, and handed to the history.
    pub gaps: u64,
    pub duplicates: u64,
    pub left_to_history: u64,
    pub clients_with_gaps: u64,
    pub clients_with_duplicates: u64,
    /// Connections that ended unexpectedly (before the drop or after the
    /// resume), by reason.
    pub drops: Reasons,
    /// From `--metrics-url`, between the drop and the last resume.
    pub gateways: Vec<GatewayResumes>,
    pub metrics_errors: Vec<String>,
    pub backlog_reads: BacklogReads,
    /// Backlog reads the database served, per resumed client.
    pub database_reads_per_client: Option<f64>,
    /// With `--database-url`: commits without reconnects (the baseline)
    /// and over the storm, and the storm's extra commits per resumed client.
    pub database_baseline: Option<DbWindow>,
    pub database_storm: Option<DbWindow>,
    pub database_commits_per_client: Option<f64>,
    /// With `--redis-url`: the same for Redis commands.
    pub redis_baseline: Option<RedisReport>,
    pub redis_storm: Option<RedisReport>,
    pub redis_commands_per_client: Option<f64>,
}

/// One gateway's counters between the drop and the last resume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayResumes {
    pub url: String,
    pub reads: BacklogReads,
}

/// `gateway_backlog_reads_total` by source and `gateway_resumes_total` by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogReads {
    pub window: u64,
    pub database: u64,
    pub shared: u64,
    pub complete: u64,
    pub over_limit: u64,
    pub unavailable: u64,
}

impl BacklogReads {
    fn minus(self, before: Self) -> Self {
        Self {
            window: self.window.saturating_sub(before.window),
            database: self.database.saturating_sub(before.database),
            shared: self.shared.saturating_sub(before.shared),
            complete: self.complete.saturating_sub(before.complete),
            over_limit: self.over_limit.saturating_sub(before.over_limit),
            unavailable: self.unavailable.saturating_sub(before.unavailable),
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            window: self.window + other.window,
            database: self.database + other.database,
            shared: self.shared + other.shared,
            complete: self.complete + other.complete,
            over_limit: self.over_limit + other.over_limit,
            unavailable: self.unavailable + other.unavailable,
        }
    }
}

impl StormReport {
    /// Clients that resumed, completely or not.
    pub fn resumed(&self) -> u64 {
        self.resumed_complete + self.resumed_incomplete
    }

    /// The human summary.
    pub fn write_text(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nstorm: {} of {} clients joined {} rooms ({} clients and a poster each); {:.1} msg/s posted ({} acknowledged, {} late by >100 ms); drop after {:.1} s, {:.1} s offline, reconnects spread over {:.1} s to the {} gateway",
            self.connected,
            self.connections,
            self.rooms,
            self.room_size,
            self.posts_per_s,
            self.posts_acked,
            self.posts_late,
            self.before_s,
            self.offline_s,
            self.reconnect_spread_s,
            self.reconnect_to
        );
        for (reason, n) in self.failures.iter().chain(&self.post_failures) {
            let _ = writeln!(o, "  failed: {n} {reason}");
        }
        let _ = writeln!(
            o,
            "  resumed: {} complete, {} INCOMPLETE (told to page the history), {} FAILED; {} anomalous joined; all within {:.2} s of the drop; {} events missed at the reconnects",
            self.resumed_complete,
            self.resumed_incomplete,
            self.resume_failed,
            self.resume_anomalies,
            self.storm_s,
            self.backlog_events
        );
        for (reason, n) in &self.resume_failures {
            let _ = writeln!(o, "    failed: {n} {reason}");
        }
        for (reason, n) in &self.retried {
            let _ = writeln!(o, "    retried after: {n} {reason}");
        }
        let _ = writeln!(
            o,
            "  {:<24}{:>9}{:>9}{:>9}{:>9}{:>10}",
            "from the drop (ms)", "p50", "p90", "p99", "max", "count"
        );
        for (name, s) in [
            ("to joined", &self.joined_summary),
            ("to resumed", &self.resume_summary),
        ] {
            let _ = writeln!(
                o,
                "  {name:<24}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>10}",
                s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.count
            );
        }
        let _ = writeln!(
            o,
            "  correctness over the resumed clients: every last message delivered: {}; GAPS {} ({} clients), DUPLICATES {} ({} clients); {} events left to the history by incomplete resumes",
            if self.delivered { "yes" } else { "NO" },
            self.gaps,
            self.clients_with_gaps,
            self.duplicates,
            self.clients_with_duplicates,
            self.left_to_history
        );
        for (reason, n) in &self.drops {
            let _ = writeln!(o, "  dropped unexpectedly: {n} {reason}");
        }
        if !self.gateways.is_empty() {
            let b = &self.backlog_reads;
            let _ = writeln!(
                o,
                "  backlog reads (gateways' /metrics, drop to last resume): window {}, database {}, shared {}; resumes complete {}, over_limit {}, unavailable {}; database reads per resumed client: {}",
                b.window,
                b.database,
                b.shared,
                b.complete,
                b.over_limit,
                b.unavailable,
                per_client(self.database_reads_per_client)
            );
            for g in &self.gateways {
                let r = &g.reads;
                let _ = writeln!(
                    o,
                    "    {}: window {}, database {}, shared {}",
                    g.url, r.window, r.database, r.shared
                );
            }
        }
        for e in &self.metrics_errors {
            let _ = writeln!(o, "  unavailable: {e}");
        }
        if let (Some(base), Some(storm)) = (&self.database_baseline, &self.database_storm) {
            let _ = writeln!(
                o,
                "  PostgreSQL commits: {:.1}/s without reconnects (baseline, {:.1} s); {} in the {:.1} s from the drop; beyond the baseline per resumed client: {}",
                base.commits_per_s,
                base.per_s,
                storm.delta.xact_commit,
                storm.per_s,
                per_client(self.database_commits_per_client)
            );
        }
        if let (Some(base), Some(storm)) = (&self.redis_baseline, &self.redis_storm) {
            let top: Vec<String> = storm.top.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(
                o,
                "  Redis commands: {:.1}/s without reconnects (baseline); {} in the {:.2} s from the drop ({}); beyond the baseline per resumed client: {}",
                base.commands_per_s,
                storm.commands,
                storm.window_s,
                top.join(", "),
                per_client(self.redis_commands_per_client)
            );
        }
    }
}

fn per_client(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

/// What a client tells the coordinator while the run goes on.
enum Note {
    /// Its first join: done, or why not.
    Joined(usize, Result<(), String>),
    /// Its resume after the drop.
    Resumed(Resumed),
}

/// How one client's resume went.
struct Resumed {
    outcome: Result<bool, String>,
    /// From the drop.
    joined: Option<Duration>,
    resumed: Option<Duration>,
    /// Events it had missed when its joined came.
    behind: u64,
}

/// What one client counted over the run.
#[derive(Default)]
struct Tally {
    joined: bool,
    resumed: bool,
    last: i64,
    gaps: u64,
    duplicates: u64,
    left_to_history: u64,
    anomalies: u64,
    retried: Reasons,
    drops: Reasons,
}

impl Tally {
    /// An event of the client's room arrived.
    fn event(&mut self, seq: i64, newest: &AtomicI64) {
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last + 1 {
            self.gaps += (seq - self.last - 1) as u64;
            self.last = seq;
        } else {
            self.duplicates += 1;
        }
        newest.store(self.last, Ordering::Relaxed);
    }

    /// An incomplete resume: `from..=seq` are for the history to give.
    fn handed_to_history(&mut self, from: i64, seq: i64, newest: &AtomicI64) {
        let from = from.max(1);
        if from > self.last + 1 {
            self.gaps += (from - self.last - 1) as u64;
        }
        let first = from.max(self.last + 1);
        if seq >= first {
            self.left_to_history += (seq - first + 1) as u64;
        }
        self.last = self.last.max(seq);
        newest.store(self.last, Ordering::Relaxed);
    }
}

/// What the run shares between the coordinator, the poster and the clients.
struct Shared {
    /// Per room: the newest seq the api acknowledged.
    acked: Vec<AtomicI64>,
    /// Per client: the newest seq it has in order.
    newest: Vec<AtomicI64>,
}

/// The moment of the drop, once it happens.
type DropAt = Option<Instant>;

pub async fn run(args: &StormArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let target = &args.target;
    anyhow::ensure!(
        target.agents.is_empty(),
        "storm runs in this process only: drop --agents"
    );
    let size = super::room_size(args.connections, args.rooms)?;
    let users = size * args.rooms;
    let planned = Duration::from_secs_f64(f64::from(users) / args.connect_rate)
        + args.before
        + args.offline
        + args.reconnect_spread
        + args.resume_timeout
        + args.after
        + args.stats_settle
        + args.delivery_timeout;
    let redis = args
        .redis_url
        .as_deref()
        .map(RedisTarget::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut db = match &args.database_url {
        Some(url) => Some(DbProbe::connect(url).await.map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (mut report, roster) = provision_run(
        "storm",
        serde_json::to_value(args)?,
        target,
        &ProvisionPlan {
            // One more member per room, who posts and has no connection:
            // every client only receives.
            users: (size + 1) * args.rooms,
            rooms: args.rooms,
            room_size: size + 1,
            token_ttl_secs: token_ttl(planned),
        },
    )
    .await?;
    let mut sr = StormReport {
        connections: u64::from(users),
        rooms: u64::from(args.rooms),
        room_size: u64::from(size),
        target_rate: args.rate,
        offline_s: args.offline.as_secs_f64(),
        reconnect_spread_s: args.reconnect_spread.as_secs_f64(),
        reconnect_to: match args.reconnect_to {
            ReconnectTo::Same => "same".into(),
            ReconnectTo::Next => "next".into(),
        },
        ..StormReport::default()
    };
    let mut targets = Vec::with_capacity(target.gateways.len());
    for url in &target.gateways {
        targets.push(GatewayTarget::resolve(url).await?);
    }
    let targets = Arc::new(targets);
    let shared = Arc::new(Shared {
        acked: roster
            .rooms
            .iter()
            .map(|r| AtomicI64::new(r.last_seq))
            .collect(),
        newest: (0..users).map(|_| AtomicI64::new(0)).collect(),
    });
    let limits = timeouts(target);
    let encoding = target.encoding.protocol();
    let (drop_tx, drop_rx) = watch::channel::<DropAt>(None);
    let (notes_tx, mut notes_rx) = mpsc::channel::<Note>(1024);
    let stop = CancellationToken::new();
    let mut clients = JoinSet::new();
    let mut rooms_of = Vec::with_capacity(users as usize);
    let start = Instant::now();
    for (r, room) in roster.rooms.iter().enumerate() {
        for &u in room.members.iter().take(size as usize) {
            let i = rooms_of.len();
            rooms_of.push(r);
            let first = i % targets.len();
            let second = match args.reconnect_to {
                ReconnectTo::Same => first,
                ReconnectTo::Next => (first + 1) % targets.len(),
            };
            let source = (!target.source_addrs.0.is_empty())
                .then(|| target.source_addrs.0[i % target.source_addrs.0.len()]);
            let spread = args
                .reconnect_spread
                .mul_f64(i as f64 / f64::from(users.max(1)));
            clients.spawn(client(Client {
                index: i,
                room: r,
                room_id: room.id,
                token: roster.users[u as usize].token.clone(),
                targets: targets.clone(),
                gateways: (first, second),
                source,
                encoding,
                limits,
                at: start + Duration::from_secs_f64(i as f64 / args.connect_rate),
                away: args.offline + spread,
                attempts: args.reconnect_attempts,
                shared: shared.clone(),
                drop_at: drop_rx.clone(),
                notes: notes_tx.clone(),
                stop: stop.clone(),
            }));
        }
    }
    drop(notes_tx);
    let probes = Probes {
        http: reqwest::Client::builder().no_proxy().build()?,
        metrics: &args.metrics_urls,
        redis: redis.as_ref(),
    };
    let outcome = storm(
        args,
        &roster,
        &shared,
        &rooms_of,
        &mut notes_rx,
        &drop_tx,
        &probes,
        &mut db,
        &mut sr,
        &cancel,
    )
    .await;
    if let Err(e) = outcome {
        report.errors.push(format!("{e:#}"));
    }
    // Late notes now fail at once instead of waiting for a reader.
    drop(notes_rx);
    stop.cancel();
    let mut tallies = Vec::new();
    let _ = tokio::time::timeout(limits.close + CLOSE_GRACE, async {
        while let Some(t) = clients.join_next().await {
            if let Ok(t) = t {
                tallies.push(t);
            }
        }
    })
    .await;
    clients.abort_all();
    for (i, t) in &tallies {
        crate::metrics::merge_reasons(&mut sr.drops, &t.drops);
        crate::metrics::merge_reasons(&mut sr.retried, &t.retried);
        sr.resume_anomalies += t.anomalies;
        if !(t.joined && t.resumed) {
            continue;
        }
        // The end of the run: what the client still lacks is a gap too.
        let last = shared.acked[rooms_of[*i]].load(Ordering::Relaxed);
        let missing = (last - t.last).max(0) as u64;
        let gaps = t.gaps + missing;
        sr.gaps += gaps;
        sr.duplicates += t.duplicates;
        sr.left_to_history += t.left_to_history;
        sr.clients_with_gaps += u64::from(gaps > 0);
        sr.clients_with_duplicates += u64::from(t.duplicates > 0);
    }
    if tallies.len() < rooms_of.len() {
        report.errors.push(format!(
            "{} clients did not end in time: their counts are missing",
            rooms_of.len() - tallies.len()
        ));
    }
    sr.joined_summary = sr.joined_latency.summary();
    sr.resume_summary = sr.resume_latency.summary();
    if cancel.is_cancelled() {
        report.interrupted = true;
    }
    report.storm = Some(sr);
    report.finish(&[]);
    Ok(report)
}

/// Where the counters of a window are read.
struct Probes<'a> {
    http: reqwest::Client,
    metrics: &'a [String],
    redis: Option<&'a RedisTarget>,
}

/// One reading of every probe.
struct Sample {
    at: Instant,
    metrics: Vec<Result<BacklogReads, String>>,
    redis: Option<Result<CommandStats, String>>,
}

impl Probes<'_> {
    async fn sample(&self) -> Sample {
        let mut metrics = Vec::with_capacity(self.metrics.len());
        for url in self.metrics {
            metrics.push(scrape(&self.http, url).await);
        }
        let redis = match self.redis {
            Some(target) => Some(redis_stats::sample(target).await),
            None => None,
        };
        Sample {
            at: Instant::now(),
            metrics,
            redis,
        }
    }
}

async fn db_sample(db: &mut Option<DbProbe>) -> anyhow::Result<Option<(Instant, DbCounters)>> {
    Ok(match db.as_mut() {
        Some(db) => Some((
            Instant::now(),
            db.sample().await.map_err(anyhow::Error::msg)?,
        )),
        None => None,
    })
}

/// Connect, post, baseline, drop, resumes, samples, last messages.
#[allow(clippy::too_many_arguments)]
async fn storm(
    args: &StormArgs,
    roster: &crate::provision::Roster,
    shared: &Arc<Shared>,
    rooms_of: &[usize],
    notes: &mut mpsc::Receiver<Note>,
    drop_tx: &watch::Sender<DropAt>,
    probes: &Probes<'_>,
    db: &mut Option<DbProbe>,
    sr: &mut StormReport,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // 1. Every client answers once: joined or failed.
    let mut joined = vec![false; rooms_of.len()];
    let mut answered = 0;
    while answered < rooms_of.len() {
        let next = tokio::select! {
            n = notes.recv() => n,
            _ = cancel.cancelled() => anyhow::bail!("interrupted while connecting"),
        };
        match next {
            Some(Note::Joined(i, Ok(()))) => joined[i] = true,
            Some(Note::Joined(_, Err(reason))) => *sr.failures.entry(reason).or_default() += 1,
            Some(Note::Resumed(_)) => continue,
            None => anyhow::bail!("every client ended while connecting"),
        }
        answered += 1;
    }
    sr.connected = joined.iter().filter(|j| **j).count() as u64;
    anyhow::ensure!(sr.connected > 0, "no client could join its room");

    // 2. Posting, from now until the last sample.
    let stop_posting = CancellationToken::new();
    let api = args.target.api.trim_end_matches('/').to_owned();
    let poster = tokio::spawn(post(
        Poster {
            http: reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .build()?,
            urls: roster
                .rooms
                .iter()
                .map(|room| format!("{api}/v1/rooms/{}/messages", room.id))
                .collect(),
            tokens: roster
                .rooms
                .iter()
                // The poster is the last member (see `run`).
                .map(|room| {
                    room.members
                        .last()
                        .map(|&m| roster.users[m as usize].token.clone())
                        .unwrap_or_default()
                })
                .collect(),
            rate: args.rate,
            concurrency: usize::from(args.post_concurrency),
            timeout: args.target.timeout,
            shared: shared.clone(),
        },
        stop_posting.clone(),
    ));
    let posting = Instant::now();
    let result = storm_window(
        args, &joined, notes, drop_tx, probes, db, sr, cancel, posting,
    )
    .await;
    stop_posting.cancel();
    let posted = poster.await?;
    sr.posts_acked = posted.acked;
    sr.posts_late = posted.late;
    sr.post_failures = posted.failures;
    sr.posts_per_s = posted.acked as f64 / posting.elapsed().as_secs_f64();
    result?;

    // 3. Until every resumed client has its room's last acknowledged message.
    let deadline = Instant::now() + args.delivery_timeout;
    sr.delivered = loop {
        let all = rooms_of.iter().enumerate().all(|(i, &r)| {
            !joined[i]
                || shared.newest[i].load(Ordering::Relaxed)
                    >= shared.acked[r].load(Ordering::Relaxed)
        });
        if all {
            break true;
        }
        if Instant::now() >= deadline || cancel.is_cancelled() {
            break false;
        }
        tokio::time::sleep(DELIVERY_POLL).await;
    };
    Ok(())
}

/// From the baseline to the last sample after the storm.
#[allow(clippy::too_many_arguments)]
async fn storm_window(
    args: &StormArgs,
    joined: &[bool],
    notes: &mut mpsc::Receiver<Note>,
    drop_tx: &watch::Sender<DropAt>,
    probes: &Probes<'_>,
    db: &mut Option<DbProbe>,
    sr: &mut StormReport,
    cancel: &CancellationToken,
    posting: Instant,
) -> anyhow::Result<()> {
    let sleep_until = |at: Instant| async move {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => Ok(()),
            _ = cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
        }
    };
    sleep_until(posting + BASELINE_START.min(args.before / 2)).await?;
    let base = probes.sample().await;
    let db_base = db_sample(db).await?;
    sleep_until(posting + args.before).await?;
    let at_drop = probes.sample().await;
    let db_drop = db_sample(db).await?;

    // The drop: every client's socket at once.
    let dropped = Instant::now();
    sr.before_s = dropped.duration_since(posting).as_secs_f64();
    let _ = drop_tx.send(Some(dropped));
    let deadline = dropped + args.resume_timeout;
    let mut waiting = joined.iter().filter(|j| **j).count();
    while waiting > 0 {
        let note = tokio::select! {
            n = notes.recv() => n,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = cancel.cancelled() => anyhow::bail!("interrupted while the clients resumed"),
        };
        let r = match note {
            Some(Note::Resumed(r)) => r,
            Some(Note::Joined(..)) => continue,
            None => break,
        };
        waiting -= 1;
        match r.outcome {
            Ok(true) => sr.resumed_complete += 1,
            Ok(false) => sr.resumed_incomplete += 1,
            Err(reason) => {
                sr.resume_failed += 1;
                *sr.resume_failures.entry(reason).or_default() += 1;
            }
        }
        if let Some(d) = r.joined {
            sr.joined_latency.record_us(d.as_micros() as u64);
        }
        if let Some(d) = r.resumed {
            sr.resume_latency.record_us(d.as_micros() as u64);
        }
        sr.backlog_events += r.behind;
    }
    if waiting > 0 {
        sr.resume_failed += waiting as u64;
        *sr.resume_failures
            .entry(format!("not resumed within {:?}", args.resume_timeout))
            .or_default() += waiting as u64;
    }
    let after = probes.sample().await;
    sr.storm_s = after.at.duration_since(dropped).as_secs_f64();
    let resumed = sr.resumed();
    let per = |n: f64| (resumed > 0).then(|| n / resumed as f64);

    // The gateways' counters: exact, nothing but the storm moves them.
    for (i, url) in probes.metrics.iter().enumerate() {
        match (&at_drop.metrics[i], &after.metrics[i]) {
            (Ok(b), Ok(a)) => {
                let reads = a.minus(*b);
                sr.backlog_reads = sr.backlog_reads.plus(reads);
                sr.gateways.push(GatewayResumes {
                    url: url.clone(),
                    reads,
                });
            }
            (Err(e), _) | (_, Err(e)) => sr.metrics_errors.push(e.clone()),
        }
    }
    if !sr.gateways.is_empty() {
        sr.database_reads_per_client = per(sr.backlog_reads.database as f64);
    }

    // Redis: the storm window minus the baseline's rate over it.
    if let (Some(target), Some(b), Some(d), Some(a)) =
        (probes.redis, base.redis, at_drop.redis, after.redis)
    {
        match (b, d, a) {
            (Ok(b), Ok(d), Ok(a)) => {
                let gateways = args.target.gateways.len();
                let baseline =
                    redis_stats::window_report(target, &b, &d, at_drop.at - base.at, gateways);
                let window =
                    redis_stats::window_report(target, &d, &a, after.at - at_drop.at, gateways);
                let extra = window.commands as f64 - baseline.commands_per_s * window.window_s;
                sr.redis_commands_per_client = per(extra.max(0.0));
                sr.redis_baseline = Some(baseline);
                sr.redis_storm = Some(window);
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => sr.metrics_errors.push(e),
        }
    }

    // PostgreSQL: once its statistics caught up, posting still going.
    if let (Some((b_at, b)), Some((d_at, d))) = (db_base, db_drop) {
        sleep_until(Instant::now() + args.stats_settle).await?;
        if let Some((a_at, a)) = db_sample(db).await? {
            let baseline = db_stats::window(&b, &d, d_at - b_at, args.stats_settle);
            let window = db_stats::window(&d, &a, a_at - d_at, args.stats_settle);
            let extra = window.delta.xact_commit as f64 - baseline.commits_per_s * window.per_s;
            sr.database_commits_per_client = per(extra.max(0.0));
            sr.database_baseline = Some(baseline);
            sr.database_storm = Some(window);
        }
    }
    // Live traffic after the seam, for the correctness count.
    sleep_until(after.at + args.after).await?;
    Ok(())
}

/// The posting stream: one post every 1/rate seconds, rooms in turn.
struct Poster {
    http: reqwest::Client,
    urls: Vec<String>,
    tokens: Vec<String>,
    rate: f64,
    concurrency: usize,
    timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Posted {
    acked: u64,
    late: u64,
    failures: Reasons,
}

/// A post this late after its due time counts as late.
const LATE_POST: Duration = Duration::from_millis(100);

async fn post(p: Poster, stop: CancellationToken) -> Posted {
    let slots = Arc::new(Semaphore::new(p.concurrency));
    let acked = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Reasons::new()));
    let mut tasks = JoinSet::new();
    let mut late = 0;
    let start = Instant::now();
    let p = Arc::new(p);
    for k in 0u64.. {
        let due = start + Duration::from_secs_f64(k as f64 / p.rate);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            s = slots.clone().acquire_owned() => s,
        };
        let Ok(slot) = slot else { break };
        if Instant::now().saturating_duration_since(due) > LATE_POST {
            late += 1;
        }
        let room = (k % p.urls.len() as u64) as usize;
        let (p, acked, failures) = (p.clone(), acked.clone(), failures.clone());
        tasks.spawn(async move {
            let _slot = slot;
            match post_one(&p, room, k).await {
                Ok(seq) => {
                    p.shared.acked[room].fetch_max(seq, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    if let Ok(mut f) = failures.lock() {
                        *f.entry(reason).or_default() += 1;
                    }
                }
            }
        });
        // Reap finished posts as we go: the set stays bounded by the slots.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    Posted {
        acked: acked.load(Ordering::Relaxed),
        late,
        failures,
    }
}

/// The part of a 201 answer to a post that we need.
#[derive(Deserialize)]
struct PostAnswer {
    seq: i64,
}

async fn post_one(p: &Poster, room: usize, k: u64) -> Result<i64, String> {
    let response = p
        .http
        .post(&p.urls[room])
        .bearer_auth(&p.tokens[room])
        .json(&serde_json::json!({ "body": format!("storm scenario message {k}") }))
        .timeout(p.timeout)
        .send()
        .await
        .map_err(|e| format!("post: {e}"))?;
    let status = response.status();
    if status.as_u16() != 201 {
        return Err(format!("post: HTTP {status}"));
    }
    response
        .json::<PostAnswer>()
        .await
        .map(|a| a.seq)
        .map_err(|e| format!("post: {e}"))
}

/// Reads one gateway's backlog and resume counters.
async fn scrape(http: &reqwest::Client, url: &str) -> Result<BacklogReads, String> {
    let text = crate::memory::scrape_text(http, url).await?;
    let get = |name: &str, label: &str| {
        labelled(&text, name, label)
            .ok_or_else(|| format!("{url}: no {name}{{{label}}} in the metrics"))
    };
    const READS: &str = "gateway_backlog_reads_total";
    const RESUMES: &str = "gateway_resumes_total";
    Ok(BacklogReads {
        window: get(READS, "source=\"window\"")?,
        database: get(READS, "source=\"database\"")?,
        shared: get(READS, "source=\"shared\"")?,
        complete: get(RESUMES, "outcome=\"complete\"")?,
        over_limit: get(RESUMES, "outcome=\"over_limit\"")?,
        unavailable: get(RESUMES, "outcome=\"unavailable\"")?,
    })
}

/// The value of `name{...label...}` in a Prometheus text exposition
/// (summed, should it appear with other labels too).
fn labelled(text: &str, name: &str, label: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        if !labels.split(',').any(|l| l.trim() == label) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}

/// Everything one client task needs.
struct Client {
    index: usize,
    room: usize,
    room_id: i64,
    token: String,
    targets: Arc<Vec<GatewayTarget>>,
    /// Before the drop, and after.
    gateways: (usize, usize),
    source: Option<IpAddr>,
    encoding: Encoding,
    limits: Timeouts,
    at: Instant,
    /// After the drop, until the reconnect.
    away: Duration,
    attempts: u32,
    shared: Arc<Shared>,
    drop_at: watch::Receiver<DropAt>,
    notes: mpsc::Sender<Note>,
    stop: CancellationToken,
}

/// The parts of a `joined` a resume needs.
#[derive(Deserialize)]
struct JoinedView {
    seq: i64,
    #[serde(default)]
    resume: Option<ResumeOutcome>,
}

/// One client's life: connect and join, receive, drop at the signal,
/// reconnect and resume, receive until the run stops.
async fn client(mut c: Client) -> (usize, Tally) {
    let mut t = Tally::default();
    tokio::select! {
        _ = tokio::time::sleep_until(c.at) => {}
        _ = c.stop.cancelled() => return (c.index, t),
    }
    let newest = &c.shared.newest[c.index];
    let target = &c.targets[c.gateways.0];
    let first = async {
        let (mut ws, _) = client::open(target, c.source, &c.token, c.encoding, &c.limits).await?;
        let seq = client::join(&mut ws, c.encoding, c.room_id, JOIN_ID, c.limits.join).await?;
        Ok::<_, client::ConnError>((ws, seq))
    };
    let mut ws = match first.await {
        Ok((ws, seq)) => {
            t.last = seq;
            newest.store(seq, Ordering::Relaxed);
            t.joined = true;
            let _ = c.notes.send(Note::Joined(c.index, Ok(()))).await;
            Some(ws)
        }
        Err(e) => {
            let _ = c.notes.send(Note::Joined(c.index, Err(e.reason()))).await;
            return (c.index, t);
        }
    };
    // Until the drop: receive. A connection that ends early is counted
    // and the client still takes part in the storm.
    let (encoding, room_id) = (c.encoding, c.room_id);
    let dropped = loop {
        let Some(socket) = ws.as_mut() else {
            tokio::select! {
                d = wait_drop(&mut c.drop_at) => break d,
                _ = c.stop.cancelled() => return (c.index, t),
            }
        };
        let read = tokio::select! {
            biased;
            d = wait_drop(&mut c.drop_at) => break d,
            _ = c.stop.cancelled() => return (c.index, t),
            frame = socket.read_frame() => on_frame(frame, encoding, room_id, &mut t, newest),
        };
        if let Err(reason) = read {
            *t.drops.entry(reason).or_default() += 1;
            ws = None;
        }
    };
    // The drop: the socket goes without a close frame.
    drop(ws.take());
    let Some(dropped) = dropped else {
        return (c.index, t);
    };
    tokio::select! {
        _ = tokio::time::sleep_until(dropped + c.away) => {}
        _ = c.stop.cancelled() => return (c.index, t),
    }
    let since = t.last;
    let mut last_error = String::new();
    let mut resumed: Option<(Ws, JoinedView, Duration)> = None;
    for attempt in 0..c.attempts {
        if attempt > 0 {
            *t.retried.entry(last_error.clone()).or_default() += 1;
            tokio::select! {
                _ = tokio::time::sleep(RETRY_BACKOFF * attempt) => {}
                _ = c.stop.cancelled() => return (c.index, t),
            }
        }
        let attempt = async {
            let target = &c.targets[c.gateways.1];
            let (mut ws, _) =
                client::open(target, c.source, &c.token, c.encoding, &c.limits).await?;
            let joined = resume(&mut ws, &c, since, &mut t, newest).await?;
            Ok::<_, client::ConnError>((ws, joined))
        };
        let outcome = tokio::select! {
            o = attempt => o,
            _ = c.stop.cancelled() => return (c.index, t),
        };
        match outcome {
            Ok((ws, joined)) => {
                resumed = Some((ws, joined, dropped.elapsed()));
                break;
            }
            Err(e) => last_error = e.reason(),
        }
    }
    let Some((mut ws, joined, joined_after)) = resumed else {
        let _ = c
            .notes
            .send(Note::Resumed(Resumed {
                outcome: Err(last_error),
                joined: None,
                resumed: None,
                behind: 0,
            }))
            .await;
        return (c.index, t);
    };
    t.resumed = true;
    let acked = c.shared.acked[c.room].load(Ordering::Relaxed);
    let behind = (acked - since).max(0) as u64;
    let complete = match &joined.resume {
        Some(r) if r.complete => {
            if joined.seq != since {
                t.anomalies += 1;
            }
            true
        }
        Some(r) => {
            let from = r.history_from_seq.unwrap_or(since + 1);
            t.handed_to_history(from, joined.seq, newest);
            false
        }
        None => {
            // The gateway ignored since_seq: what it skipped is a gap.
            t.anomalies += 1;
            if joined.seq > t.last {
                t.gaps += (joined.seq - t.last) as u64;
                t.last = joined.seq;
                newest.store(t.last, Ordering::Relaxed);
            }
            false
        }
    };
    // Resumed now if there is nothing to wait for (incomplete: live from
    // here; complete: already level with what the api acknowledged, or an
    // event after since_seq came before the joined was read), else at the
    // first event after since_seq.
    let mut done = (!complete || acked <= since || t.last > since).then_some(joined_after);
    let note = |resumed_after: Option<Duration>| {
        Note::Resumed(Resumed {
            outcome: Ok(complete),
            joined: Some(joined_after),
            resumed: resumed_after,
            behind,
        })
    };
    if done.is_some() {
        let _ = c.notes.send(note(done)).await;
    }
    loop {
        let read = tokio::select! {
            _ = c.stop.cancelled() => break,
            frame = ws.read_frame() => on_frame(frame, encoding, room_id, &mut t, newest),
        };
        if let Err(reason) = read {
            *t.drops.entry(reason).or_default() += 1;
            if done.is_none() {
                let _ = c.notes.send(note(None)).await;
            }
            return (c.index, t);
        }
        if done.is_none() && t.last > since {
            done = Some(dropped.elapsed());
            let _ = c.notes.send(note(done)).await;
        }
    }
    if done.is_none() {
        let _ = c.notes.send(note(None)).await;
    }
    client::close_gracefully(&mut ws, c.limits.close).await;
    (c.index, t)
}

/// The moment of the drop (None: the run ended without one).
async fn wait_drop(rx: &mut watch::Receiver<DropAt>) -> DropAt {
    loop {
        if let Some(at) = *rx.borrow_and_update() {
            return Some(at);
        }
        if rx.changed().await.is_err() {
            // The coordinator is gone: wait for the stop instead.
            return std::future::pending().await;
        }
    }
}

/// Handles one frame read from a client's socket; Err(reason) when the
/// connection ended.
fn on_frame(
    frame: Result<fastwebsockets::Frame<'_>, fastwebsockets::WebSocketError>,
    encoding: Encoding,
    room_id: i64,
    t: &mut Tally,
    newest: &AtomicI64,
) -> Result<(), String> {
    let frame = frame.map_err(|e| client::read_error(e).reason())?;
    match frame.opcode {
        OpCode::Close => Err(client::closed(&frame.payload).reason()),
        OpCode::Text | OpCode::Binary => {
            if let Some(view) = client::parse_frame(encoding, &frame.payload)
                && &*view.kind == "event"
                && view.room_id == Some(room_id)
                && let Some(seq) = view.seq
            {
                t.event(seq, newest);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Sends the resuming join and reads until its answer (events that come
/// first are counted).
async fn resume(
    ws: &mut Ws,
    c: &Client,
    since: i64,
    t: &mut Tally,
    newest: &AtomicI64,
) -> Result<JoinedView, client::ConnError> {
    let frame = ClientFrame::Join {
        id: Some(RESUME_ID),
        room_id: RoomId(c.room_id),
        since_seq: Some(since),
        presence: false,
    };
    client::send(ws, c.encoding, &frame).await?;
    tokio::time::timeout(c.limits.join, async {
        loop {
            let frame = ws.read_frame().await.map_err(client::read_error)?;
            match frame.opcode {
                OpCode::Close => return Err(client::closed(&frame.payload)),
                OpCode::Text | OpCode::Binary => {}
                _ => continue,
            }
            let Some(view) = client::parse_frame(c.encoding, &frame.payload) else {
                return Err(client::ConnError::Protocol("undecodable frame".into()));
            };
            match (&*view.kind, view.id) {
                ("joined", Some(RESUME_ID)) => {
                    return client::decode::<JoinedView>(c.encoding, &frame.payload)
                        .ok_or_else(|| client::ConnError::Protocol("joined without seq".into()));
                }
                ("error", Some(RESUME_ID)) => {
                    return Err(client::ConnError::JoinRefused(
                        view.code.as_deref().unwrap_or("?").to_owned(),
                    ));
                }
                ("event", _) if view.room_id == Some(c.room_id) => {
                    if let Some(seq) = view.seq {
                        t.event(seq, newest);
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| client::ConnError::Timeout("waiting for joined"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_gaps_and_duplicates_across_a_seam() {
        let newest = AtomicI64::new(0);
        let mut t = Tally::default();
        for seq in [1, 2, 3, 3, 5, 4, 6] {
            t.event(seq, &newest);
        }
        assert_eq!((t.last, t.gaps, t.duplicates), (6, 1, 2));
        assert_eq!(newest.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn an_incomplete_resume_hands_its_range_to_the_history() {
        let newest = AtomicI64::new(0);
        let mut t = Tally {
            last: 10,
            ..Tally::default()
        };
        t.handed_to_history(11, 1500, &newest);
        assert_eq!((t.last, t.gaps, t.left_to_history), (1500, 0, 1490));
        // A history that starts after what the client had is a gap.
        t.handed_to_history(1503, 1600, &newest);
        assert_eq!((t.gaps, t.left_to_history), (2, 1588));
    }

    #[test]
    fn labelled_counters_are_read_by_label() {
        let text = "# TYPE gateway_backlog_reads_total counter\n\
            gateway_backlog_reads_total{source=\"window\"} 12\n\
            gateway_backlog_reads_total{source=\"database\"} 3\n\
            gateway_backlog_reads_total_other{source=\"database\"} 99\n\
            gateway_resumes_total{outcome=\"complete\",node=\"a\"} 7\n";
        let reads = "gateway_backlog_reads_total";
        assert_eq!(labelled(text, reads, "source=\"database\""), Some(3));
        assert_eq!(labelled(text, reads, "source=\"window\""), Some(12));
        assert_eq!(labelled(text, reads, "source=\"shared\""), None);
        assert_eq!(
            labelled(text, "gateway_resumes_total", "outcome=\"complete\""),
            Some(7)
        );
    }
}
