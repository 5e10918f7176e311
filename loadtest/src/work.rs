//! What a worker (the in-process fleet, or a remote agent) is given and
//! asked to do, and what it answers. These types are the agent protocol's
//! payload: every report merges exactly with the same report of another
//! worker (counters add, histograms `add`), so the coordinator's report of
//! N agents is the report of one big worker.

use crate::accounting::{DeliveryStats, Tally};
use crate::client::Timeouts;
use crate::metrics::{Hist, Reasons, merge_counts, merge_reasons};
use crate::net::CpuUsage;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// Which encoding the clients speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    #[default]
    Json,
    Msgpack,
}

impl WireEncoding {
    pub fn protocol(self) -> shared::protocol::Encoding {
        match self {
            WireEncoding::Json => shared::protocol::Encoding::Json,
            WireEncoding::Msgpack => shared::protocol::Encoding::MsgPack,
        }
    }
}

/// One client connection: a provisioned user on one gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnSpec {
    /// Global index of the connection (= the provisioned user's index).
    pub index: u32,
    pub token: String,
    /// Index into the gateway list.
    pub gateway: u32,
    /// Room ids to join after `ready`.
    pub rooms: Vec<i64>,
}

/// A room whose members (and publishers) this worker hosts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomSpec {
    pub id: i64,
    /// The room's newest seq before the run.
    pub last_seq: i64,
    /// Most posts the whole run can make into it (sizes the ledger).
    pub capacity: u32,
}

/// One open-loop publishing stream: a publisher posting into one room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Global index across all workers (orders the schedule offsets).
    pub index: u32,
    /// Publisher id carried in the bodies.
    pub publisher: u32,
    pub room_id: i64,
    /// Token of a member of the room to post as.
    pub token: String,
}

/// Everything a worker needs before its first operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSetup {
    pub worker: usize,
    pub workers: usize,
    /// REST api base URL (`http://host:port`).
    pub api: String,
    pub gateways: Vec<String>,
    pub source_addrs: Vec<IpAddr>,
    pub encoding: WireEncoding,
    pub timeouts: Timeouts,
    /// Per-request timeout of posts.
    pub post_timeout: Duration,
    /// Connections and streams of all workers together (rates are shared
    /// in proportion to what each worker has).
    pub total_conns: u64,
    pub total_streams: u64,
    pub conns: Vec<ConnSpec>,
    pub rooms: Vec<RoomSpec>,
    pub streams: Vec<StreamSpec>,
}

/// An operation, started by all workers at the same wall-clock time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Open every connection at `rate` connections/s (all workers together),
    /// authenticate, join rooms; connections stay open.
    Connect { rate: f64 },
    /// Keep the connections open (answering heartbeats) for a while.
    Hold { duration: Duration },
    /// One open-loop publishing step.
    Publish(PublishStep),
    /// Close every connection cleanly.
    Close,
}

/// One publishing step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishStep {
    /// 0, 1, ... (ramp steps).
    pub step: u32,
    /// Messages per second, all workers together.
    pub rate: f64,
    pub duration: Duration,
    /// Stop after this many messages (all workers together).
    pub max_messages: Option<u64>,
    pub payload_bytes: usize,
    /// How long to wait after the last post for deliveries to arrive.
    pub drain: Duration,
}

/// Opening connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    /// Reached `ready` and joined every room.
    pub connected: u64,
    pub failures: Reasons,
    /// Not attempted because the run was interrupted.
    pub skipped: u64,
    pub tcp_connect: Hist,
    /// TCP connect + HTTP upgrade (until 101).
    pub handshake: Hist,
    /// TCP connect + upgrade + auth (until `ready`).
    pub ready: Hist,
    /// Each `join` until `joined`.
    pub join: Hist,
    /// Connections open per gateway when the operation ended.
    pub per_gateway: Vec<u64>,
    pub elapsed: Duration,
    pub cpu: Vec<CpuUsage>,
    /// Limits of the load machine the plan is likely to hit (open files,
    /// ephemeral ports), found before connecting.
    pub warnings: Vec<String>,
}

impl ConnectReport {
    pub fn merge(&mut self, o: &ConnectReport) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        merge_reasons(&mut self.failures, &o.failures);
        self.skipped += o.skipped;
        self.tcp_connect.merge(&o.tcp_connect);
        self.handshake.merge(&o.handshake);
        self.ready.merge(&o.ready);
        self.join.merge(&o.join);
        merge_counts(&mut self.per_gateway, &o.per_gateway);
        self.elapsed = self.elapsed.max(o.elapsed);
        self.cpu.extend(o.cpu.iter().cloned());
        self.warnings.extend(o.warnings.iter().cloned());
    }
}

/// Holding connections open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections open at the end.
    pub held: u64,
    pub per_gateway: Vec<u64>,
    /// Connections that ended during the hold, by reason.
    pub drops: Reasons,
    pub elapsed: Duration,
    pub cpu: Vec<CpuUsage>,
}

impl HoldReport {
    pub fn merge(&mut self, o: &HoldReport) {
        self.held += o.held;
        merge_counts(&mut self.per_gateway, &o.per_gateway);
        merge_reasons(&mut self.drops, &o.drops);
        self.elapsed = self.elapsed.max(o.elapsed);
        self.cpu.extend(o.cpu.iter().cloned());
    }
}

/// One publishing step: what was posted, what arrived, what went wrong.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u32,
    pub rate: f64,
    pub duration: Duration,
    /// Connections joined to the rooms published into, at the start.
    pub receivers: u64,
    pub posts_attempted: u64,
    pub post_failures: Reasons,
    /// REST latency of acknowledged posts (from the actual send).
    pub post_latency: Hist,
    /// Posts sent more than [`LATE_SEND`] after their scheduled time:
    /// the schedule fell behind (the tool or the api could not keep up).
    pub late_sends: u64,
    pub max_lag: Duration,
    /// Scheduled posts never sent because the stream was too far behind.
    pub not_sent: u64,
    pub deliveries: DeliveryStats,
    pub tally: Tally,
    /// From the start of the step to the last post's answer.
    pub publish_elapsed: Duration,
    /// From the last answer until every delivery arrived (or the drain ended).
    pub drain_elapsed: Duration,
    /// Every expected delivery arrived within the drain.
    pub drained: bool,
    /// Connections that dropped during the step, by reason.
    pub drops: Reasons,
    pub cpu: Vec<CpuUsage>,
}

/// A send this late after its scheduled time counts as the schedule falling
/// behind: the timer wheel's 1 ms granularity plus scheduling noise stay
/// well under it.
pub const LATE_SEND: Duration = Duration::from_millis(10);

impl StepReport {
    pub fn merge(&mut self, o: &StepReport) {
        self.receivers += o.receivers;
        self.posts_attempted += o.posts_attempted;
        merge_reasons(&mut self.post_failures, &o.post_failures);
        self.post_latency.merge(&o.post_latency);
        self.late_sends += o.late_sends;
        self.max_lag = self.max_lag.max(o.max_lag);
        self.not_sent += o.not_sent;
        self.deliveries.merge(&o.deliveries);
        self.tally.merge(&o.tally);
        self.publish_elapsed = self.publish_elapsed.max(o.publish_elapsed);
        self.drain_elapsed = self.drain_elapsed.max(o.drain_elapsed);
        self.drained &= o.drained;
        merge_reasons(&mut self.drops, &o.drops);
        self.cpu.extend(o.cpu.iter().cloned());
    }
}

/// Closing every connection; also the worker's totals over its life.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CloseReport {
    pub closing: u64,
    /// Close handshakes completed in time.
    pub closed_cleanly: u64,
    /// Every connection that ended before the close, over the whole run.
    pub drops: Reasons,
    pub elapsed: Duration,
    /// CPU over the worker's whole run.
    pub cpu: Vec<CpuUsage>,
}

impl CloseReport {
    pub fn merge(&mut self, o: &CloseReport) {
        self.closing += o.closing;
        self.closed_cleanly += o.closed_cleanly;
        merge_reasons(&mut self.drops, &o.drops);
        self.elapsed = self.elapsed.max(o.elapsed);
        self.cpu.extend(o.cpu.iter().cloned());
    }
}

/// The answer to an [`Op`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum OpReport {
    Connect(ConnectReport),
    Hold(HoldReport),
    Publish(StepReport),
    Close(CloseReport),
}

/// A worker's counters, sent about once a second while an operation runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub open: u64,
    pub connect_failures: u64,
    pub drops: u64,
    pub posts_sent: u64,
    pub posts_acked: u64,
    pub post_failures: u64,
    pub deliveries: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.open += o.open;
        self.connect_failures += o.connect_failures;
        self.drops += o.drops;
        self.posts_sent += o.posts_sent;
        self.posts_acked += o.posts_acked;
        self.post_failures += o.post_failures;
        self.deliveries += o.deliveries;
    }
}
