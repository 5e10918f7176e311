//! The connections and publishers one process runs: the worker behind both
//! the in-process mode and each remote agent.
//!
//! One lightweight task per connection: it waits for its slot in the
//! connect schedule, opens, joins its rooms, then only reads (fastwebsockets
//! answers the gateway's pings on the way) and accounts each event until the
//! fleet closes it. Publishing streams run as one task each for the length
//! of a step (see [`crate::publish`]).

use crate::accounting::{CounterCheck, RoomLedger, RoomTrack, SeqCheck, ShardedDeliveries};
use crate::body;
use crate::client::{self, GatewayTarget, OpenTimings, Timeouts, Ws};
use crate::clock;
use crate::metrics::{Hist, Reasons, diff_reasons};
use crate::net::CpuMeter;
use crate::publish::{self, StreamState};
use crate::work::{
    CloseReport, ConnSpec, ConnectReport, HoldReport, Op, OpReport, Progress, PublishStep,
    StepReport, WorkerSetup,
};
use fastwebsockets::OpCode;
use shared::protocol::Encoding;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the drain checks whether every expected delivery arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Longest drain of a step interrupted by Ctrl-C.
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(2);

/// Extra time, beyond the close handshake's own timeout, that closing
/// every connection may take before the fleet stops waiting for them.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// State shared by the fleet and its connection and stream tasks.
pub(crate) struct Shared {
    pub encoding: Encoding,
    pub timeouts: Timeouts,
    pub targets: Vec<GatewayTarget>,
    pub source_addrs: Vec<IpAddr>,
    pub ledgers: Vec<RoomLedger>,
    pub room_ledger: HashMap<i64, u32>,
    pub deliveries: ShardedDeliveries,
    /// Delivery frames already taken into reports (progress stays monotonic).
    pub frames_taken: AtomicU64,
    pub open: AtomicU64,
    pub per_gateway_open: Vec<AtomicU64>,
    pub connect_failures: AtomicU64,
    pub drops: Mutex<Reasons>,
    pub drops_total: AtomicU64,
    pub closed_cleanly: AtomicU64,
    pub posts_sent: AtomicU64,
    pub posts_acked: AtomicU64,
    pub post_failures: AtomicU64,
    pub post_latency: Mutex<Hist>,
    pub post_failure_reasons: Mutex<Reasons>,
}

impl Shared {
    fn drops_snapshot(&self) -> Reasons {
        self.drops.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn per_gateway(&self) -> Vec<u64> {
        self.per_gateway_open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// Reads a fleet's live counters from another task.
#[derive(Clone)]
pub struct ProgressHandle(Arc<Shared>);

impl ProgressHandle {
    pub fn get(&self) -> Progress {
        let s = &self.0;
        Progress {
            open: s.open.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            drops: s.drops_total.load(Ordering::Relaxed),
            posts_sent: s.posts_sent.load(Ordering::Relaxed),
            posts_acked: s.posts_acked.load(Ordering::Relaxed),
            post_failures: s.post_failures.load(Ordering::Relaxed),
            deliveries: s.frames_taken.load(Ordering::Relaxed) + s.deliveries.frames(),
        }
    }
}

/// How one connection's opening went (sent once by each connection task).
enum Outcome {
    Connected {
        timings: OpenTimings,
        joins: Vec<Duration>,
    },
    Failed {
        reason: String,
        timings: Option<OpenTimings>,
    },
    Skipped,
}

/// A worker's connections and publishers.
pub struct Fleet {
    /// `local` or the agent's listen address: labels CPU figures.
    name: String,
    shared: Arc<Shared>,
    total_conns: u64,
    total_streams: u64,
    conns: Vec<ConnSpec>,
    streams: Vec<Arc<StreamState>>,
    http: reqwest::Client,
    post_timeout: Duration,
    tasks: TaskTracker,
    /// Cancelled to close every connection.
    stop: CancellationToken,
    life: CpuMeter,
}

impl Fleet {
    /// Resolves the gateways and prepares the ledgers; opens nothing yet.
    pub async fn new(name: &str, setup: WorkerSetup) -> anyhow::Result<Fleet> {
        let mut targets = Vec::with_capacity(setup.gateways.len());
        for url in &setup.gateways {
            targets.push(GatewayTarget::resolve(url).await?);
        }
        if targets.is_empty() {
            anyhow::bail!("no gateway URL given");
        }
        let ledgers: Vec<RoomLedger> = setup
            .rooms
            .iter()
            .map(|r| RoomLedger::new(r.id, r.last_seq, r.capacity as usize))
            .collect();
        let room_ledger = setup
            .rooms
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i as u32))
            .collect();
        let api = setup.api.trim_end_matches('/').to_owned();
        let streams = setup
            .streams
            .iter()
            .map(|s| Arc::new(StreamState::new(&api, s)))
            .collect::<Vec<_>>();
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(streams.len().max(1))
            .build()?;
        let shared = Arc::new(Shared {
            encoding: setup.encoding.protocol(),
            timeouts: setup.timeouts,
            per_gateway_open: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            targets,
            source_addrs: setup.source_addrs.clone(),
            ledgers,
            room_ledger,
            deliveries: ShardedDeliveries::default(),
            frames_taken: AtomicU64::new(0),
            open: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            drops: Mutex::new(Reasons::new()),
            drops_total: AtomicU64::new(0),
            closed_cleanly: AtomicU64::new(0),
            posts_sent: AtomicU64::new(0),
            posts_acked: AtomicU64::new(0),
            post_failures: AtomicU64::new(0),
            post_latency: Mutex::new(Hist::new()),
            post_failure_reasons: Mutex::new(Reasons::new()),
        });
        Ok(Fleet {
            name: name.to_owned(),
            shared,
            total_conns: setup.total_conns.max(1),
            total_streams: setup.total_streams.max(1),
            conns: setup.conns,
            streams,
            http,
            post_timeout: setup.post_timeout,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            life: CpuMeter::start(),
        })
    }

    /// A handle that reads the live counters while an operation runs.
    pub fn progress_handle(&self) -> ProgressHandle {
        ProgressHandle(self.shared.clone())
    }

    /// Counters for the live progress line.
    pub fn progress(&self) -> Progress {
        self.progress_handle().get()
    }
    /// Runs one operation starting at `start`; `cancel` ends it early with
    /// a partial report (Close always runs to the end).
    pub async fn run(&mut self, op: Op, start: Instant, cancel: &CancellationToken) -> OpReport {
        match op {
            Op::Connect { rate } => OpReport::Connect(self.connect(rate, start, cancel).await),
            Op::Hold { duration } => OpReport::Hold(self.hold(duration, start, cancel).await),
            Op::Publish(step) => OpReport::Publish(self.publish(step, start, cancel).await),
            Op::Close => OpReport::Close(self.close().await),
        }
    }

    /// Opens every connection on an open-loop schedule: connection `i` of
    /// this worker starts at `start + i / rate`, whether or not earlier
    /// ones have finished opening.
    pub async fn connect(
        &mut self,
        rate: f64,
        start: Instant,
        cancel: &CancellationToken,
    ) -> ConnectReport {
        let meter = CpuMeter::start();
        let conns = std::mem::take(&mut self.conns);
        let mut per_target: HashMap<std::net::SocketAddr, u64> = HashMap::new();
        for c in &conns {
            let t = &self.shared.targets[c.gateway as usize % self.shared.targets.len()];
            *per_target.entry(t.addr).or_default() += 1;
        }
        let warnings = crate::net::preflight(
            conns.len() as u64,
            per_target.values().copied().max().unwrap_or(0),
            self.shared.source_addrs.len(),
            crate::net::nofile_limit(),
        );
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let share = conns.len() as f64 / self.total_conns as f64;
        let my_rate = rate * share;
        let (tx, mut rx) = mpsc::channel(1024);
        for (i, spec) in conns.into_iter().enumerate() {
            let at = if my_rate > 0.0 && my_rate.is_finite() {
                start + Duration::from_secs_f64(i as f64 / my_rate)
            } else {
                start
            };
            self.tasks.spawn(connection(
                self.shared.clone(),
                spec,
                at,
                tx.clone(),
                cancel.clone(),
                self.stop.clone(),
            ));
        }
        drop(tx);
        let mut report = ConnectReport {
            warnings,
            ..ConnectReport::default()
        };
        // Every task sends exactly one outcome, within its schedule slot
        // plus the open and join timeouts, then drops its sender.
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Connected { timings, joins } => {
                    report.attempted += 1;
                    report.connected += 1;
                    record_timings(&mut report, &timings);
                    for j in joins {
                        report.join.record_us(j.as_micros() as u64);
                    }
                }
                Outcome::Failed { reason, timings } => {
                    report.attempted += 1;
                    if let Some(t) = timings {
                        record_timings(&mut report, &t);
                    }
                    *report.failures.entry(reason).or_default() += 1;
                }
                Outcome::Skipped => report.skipped += 1,
            }
        }
        report.per_gateway = self.shared.per_gateway();
        report.elapsed = start.elapsed();
        report.cpu = vec![meter.finish(&self.name)];
        report
    }

    /// Keeps the connections open (they answer heartbeats) for `duration`.
    pub async fn hold(
        &mut self,
        duration: Duration,
        start: Instant,
        cancel: &CancellationToken,
    ) -> HoldReport {
        let meter = CpuMeter::start();
        let before = self.shared.drops_snapshot();
        tokio::select! {
            _ = tokio::time::sleep_until(start + duration) => {}
            _ = cancel.cancelled() => {}
        }
        HoldReport {
            held: self.shared.open.load(Ordering::Relaxed),
            per_gateway: self.shared.per_gateway(),
            drops: diff_reasons(&self.shared.drops_snapshot(), &before),
            elapsed: start.elapsed(),
            cpu: vec![meter.finish(&self.name)],
        }
    }

    /// One publishing step, then a drain until every acknowledged post has
    /// reached every connection joined to its room (or the drain ends).
    pub async fn publish(
        &mut self,
        step: PublishStep,
        start: Instant,
        cancel: &CancellationToken,
    ) -> StepReport {
        let meter = CpuMeter::start();
        let before = self.shared.drops_snapshot();
        let receivers: u64 = self
            .shared
            .ledgers
            .iter()
            .map(|l| u64::from(l.members()))
            .sum();
        let posts_before = self.shared.posts_sent.load(Ordering::Relaxed);
        let plan = publish::StepPlan {
            step: step.step,
            start,
            end: start + step.duration,
            rate_per_stream: step.rate / self.total_streams as f64,
            total_streams: self.total_streams,
            max_messages: step.max_messages,
            payload_bytes: step.payload_bytes,
            post_timeout: self.post_timeout,
        };
        let mut handles = Vec::with_capacity(self.streams.len());
        for stream in &self.streams {
            handles.push(tokio::spawn(publish::run_stream(
                self.shared.clone(),
                self.http.clone(),
                stream.clone(),
                plan.clone(),
                cancel.clone(),
            )));
        }
        let mut report = StepReport {
            step: step.step,
            rate: step.rate,
            duration: step.duration,
            receivers,
            drained: true,
            ..StepReport::default()
        };
        for handle in handles {
            // A stream task only ends by returning its counts; a panic
            // would be a bug in the tool, reported as a failure reason.
            match handle.await {
                Ok(s) => {
                    report.late_sends += s.late;
                    report.max_lag = report.max_lag.max(s.max_lag);
                    report.not_sent += s.not_sent;
                }
                Err(e) => {
                    *report
                        .post_failures
                        .entry(format!("publisher task failed: {e}"))
                        .or_default() += 1;
                }
            }
        }
        report.publish_elapsed = start.elapsed();
        report.posts_attempted = self.shared.posts_sent.load(Ordering::Relaxed) - posts_before;
        // Even an interrupted step drains (briefly): messages already
        // posted are still due, and counting them lost would be wrong.
        let drain_start = Instant::now();
        let drain = if cancel.is_cancelled() {
            step.drain.min(INTERRUPTED_DRAIN)
        } else {
            step.drain
        };
        let deadline = drain_start + drain;
        report.drained = loop {
            if self.shared.ledgers.iter().all(RoomLedger::settled) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        };
        report.drain_elapsed = drain_start.elapsed();
        for ledger in &self.shared.ledgers {
            report.tally.merge(&ledger.tally());
        }
        report.deliveries = self.shared.deliveries.take();
        self.shared
            .frames_taken
            .fetch_add(report.deliveries.frames, Ordering::Relaxed);
        if let Ok(mut h) = self.shared.post_latency.lock() {
            report.post_latency = h.take();
        }
        if let Ok(mut r) = self.shared.post_failure_reasons.lock() {
            crate::metrics::merge_reasons(&mut report.post_failures, &std::mem::take(&mut *r));
        }
        report.drops = diff_reasons(&self.shared.drops_snapshot(), &before);
        report.cpu = vec![meter.finish(&self.name)];
        report
    }

    /// Closes every connection (close frame, wait for the answer) and
    /// waits for every task.
    pub async fn close(&mut self) -> CloseReport {
        let started = Instant::now();
        let closing = self.shared.open.load(Ordering::Relaxed);
        self.stop.cancel();
        self.tasks.close();
        let limit = self.shared.timeouts.close + CLOSE_GRACE;
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {limit:?}");
        }
        CloseReport {
            closing,
            closed_cleanly: self.shared.closed_cleanly.load(Ordering::Relaxed),
            drops: self.shared.drops_snapshot(),
            elapsed: started.elapsed(),
            cpu: vec![self.life.finish(&self.name)],
        }
    }
}

fn record_timings(report: &mut ConnectReport, t: &OpenTimings) {
    if !t.tcp.is_zero() {
        report.tcp_connect.record_us(t.tcp.as_micros() as u64);
    }
    if !t.handshake.is_zero() {
        report.handshake.record_us(t.handshake.as_micros() as u64);
    }
    if !t.ready.is_zero() {
        report.ready.record_us(t.ready.as_micros() as u64);
    }
}

fn now_ms() -> u32 {
    u32::try_from(clock::now_us() / 1000).unwrap_or(u32::MAX)
}

/// One client connection's whole life.
async fn connection(
    shared: Arc<Shared>,
    mut spec: ConnSpec,
    at: Instant,
    outcome: mpsc::Sender<Outcome>,
    connect_cancel: CancellationToken,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        _ = connect_cancel.cancelled() => {
            let _ = outcome.send(Outcome::Skipped).await;
            return;
        }
    }
    let index = spec.index as usize;
    let gateway = spec.gateway as usize % shared.targets.len();
    let source = (!shared.source_addrs.is_empty())
        .then(|| shared.source_addrs[index % shared.source_addrs.len()]);
    // The token is only needed for `auth`: do not carry it for the
    // connection's whole life.
    let token = std::mem::take(&mut spec.token);
    let opened = client::open(
        &shared.targets[gateway],
        source,
        &token,
        shared.encoding,
        &shared.timeouts,
    )
    .await;
    drop(token);
    let (mut ws, timings) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            let _ = outcome
                .send(Outcome::Failed {
                    reason: e.reason(),
                    timings: None,
                })
                .await;
            return;
        }
    };
    let mut tracks = Vec::with_capacity(spec.rooms.len());
    let mut joins = Vec::with_capacity(spec.rooms.len());
    for (i, &room) in spec.rooms.iter().enumerate() {
        let t0 = std::time::Instant::now();
        match client::join(
            &mut ws,
            shared.encoding,
            room,
            i as u64 + 1,
            shared.timeouts.join,
        )
        .await
        {
            Ok(seq) => {
                joins.push(t0.elapsed());
                let ledger = shared.room_ledger.get(&room).copied().unwrap_or(u32::MAX);
                tracks.push(RoomTrack::new(room, ledger, seq));
            }
            Err(e) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                client::close_gracefully(&mut ws, shared.timeouts.close).await;
                let _ = outcome
                    .send(Outcome::Failed {
                        reason: e.reason(),
                        timings: Some(timings),
                    })
                    .await;
                return;
            }
        }
    }
    for t in &tracks {
        if let Some(l) = shared.ledgers.get(t.ledger as usize) {
            l.member_joined();
        }
    }
    shared.open.fetch_add(1, Ordering::Relaxed);
    shared.per_gateway_open[gateway].fetch_add(1, Ordering::Relaxed);
    let _ = outcome.send(Outcome::Connected { timings, joins }).await;
    drop(outcome);

    let ended = read_until_stopped(&shared, index, &mut ws, &mut tracks, &stop).await;
    shared.open.fetch_sub(1, Ordering::Relaxed);
    shared.per_gateway_open[gateway].fetch_sub(1, Ordering::Relaxed);
    match ended {
        None => {
            if client::close_gracefully(&mut ws, shared.timeouts.close).await {
                shared.closed_cleanly.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(reason) => {
            let at = now_ms();
            for t in &tracks {
                if let Some(l) = shared.ledgers.get(t.ledger as usize) {
                    l.member_dropped(at);
                }
            }
            shared.drops_total.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut d) = shared.drops.lock() {
                *d.entry(reason).or_default() += 1;
            }
        }
    }
}

/// Reads frames until the fleet stops (None) or the connection ends (the reason).
async fn read_until_stopped(
    shared: &Shared,
    index: usize,
    ws: &mut Ws,
    tracks: &mut [RoomTrack],
    stop: &CancellationToken,
) -> Option<String> {
    // One cancellation future for the connection's life: creating one per
    // frame was a measurable share of the tool's CPU at 100,000 frames/s.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Dropping a read half-way loses the frame being read; it only
        // happens when the fleet is closing, after which the connection
        // sends its close and reads nothing but the answer.
        let frame = tokio::select! {
            biased;
            _ = &mut stopped => return None,
            frame = ws.read_frame() => frame,
        };
        match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary => on_frame(shared, index, tracks, &frame.payload),
                OpCode::Close => return Some(client::closed(&frame.payload).reason()),
                _ => {}
            },
            Err(e) => return Some(client::read_error(e).reason()),
        }
    }
}

/// Accounts one server frame: seq order, sender order, latency, ledger.
fn on_frame(shared: &Shared, index: usize, tracks: &mut [RoomTrack], payload: &[u8]) {
    let now = clock::now_us();
    let Some(view) = client::parse_frame(shared.encoding, payload) else {
        return;
    };
    if &*view.kind != "event" {
        return;
    }
    let (Some(room), Some(seq)) = (view.room_id, view.seq) else {
        return;
    };
    let Some(track) = tracks.iter_mut().find(|t| t.room_id == room) else {
        return;
    };
    let check = track.observe_seq(seq);
    let header = match (view.event_kind.as_deref(), view.body.as_deref()) {
        (Some("message.created"), Some(b)) => body::decode(b),
        _ => None,
    };
    let counter = match (header, check) {
        (Some(h), SeqCheck::Fresh | SeqCheck::Late) => {
            if let Some(l) = shared.ledgers.get(track.ledger as usize) {
                l.record_delivery(seq);
            }
            Some(track.observe_counter(h.publisher, h.counter))
        }
        _ => None,
    };
    shared.deliveries.with(index, |d| {
        match check {
            SeqCheck::Fresh => {}
            SeqCheck::Late => d.reordered_seq += 1,
            SeqCheck::Duplicate => d.duplicates += 1,
        }
        match header {
            Some(h) => {
                d.frames += 1;
                d.latency.record_us(now.saturating_sub(h.scheduled_us));
                match counter {
                    Some(CounterCheck::Behind) => d.reordered_counter += 1,
                    Some(CounterCheck::Repeat) => d.repeated_counter += 1,
                    _ => {}
                }
            }
            None => d.other_events += 1,
        }
    });
}
