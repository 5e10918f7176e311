//! The gateway's configuration: flags or `PARLEY_*` environment variables.

use clap::Args;
use shared::config::{DatabaseArgs, JwtVerifyArgs, RedisArgs, TelemetryArgs, parse_duration};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Args)]
pub struct GatewayConfig {
    /// Address the WebSocket endpoint (`/ws`) listens on.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Directory where a generated public key can be found (single-machine setups).
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtVerifyArgs,
    #[command(flatten)]
    pub ws: WsSettings,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Per-connection behaviour and limits.
/// A person typing sends a frame every few seconds; three seconds keeps an
/// indicator responsive while costing a room at most one event per typist
/// per three seconds on every node.
pub const DEFAULT_TYPING_INTERVAL: Duration = Duration::from_secs(3);

/// HAProxy (deploy/haproxy) checks `/readyz` every 2 s and takes a server
/// out after two failures: 4 s, plus a second of slack. Kubernetes removes
/// a terminating pod's endpoints on its own; the delay then covers the
/// ingress controller catching up.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);

/// A full gateway (19,000 connections) drained over 10 s asks the others to
/// take 1,900 connections/s, under half of what one node accepts (4,000/s
/// measured in docs/benchmarks.md), while a rolling restart of a pod still
/// takes well under a minute.
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(10);

/// Clients refresh their access token shortly before it expires; the grace
/// covers the refresh round trip to the api, clock skew between client and
/// server, and an app that was suspended (a phone screen off) through the
/// moment, without letting a stolen, expired token ride an open socket for
/// long.
pub const DEFAULT_TOKEN_EXPIRY_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Args)]
pub struct WsSettings {
    /// WebSocket connections this node accepts; more get HTTP 503.
    /// Each holds a file descriptor: keep it under the process's open-file limit.
    #[arg(long, env = "PARLEY_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,
    /// Interval of the gateway's pings. A connection silent for twice this
    /// (plus a few seconds) is closed as dead.
    #[arg(long, env = "PARLEY_HEARTBEAT_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Time a new connection has to send its `auth` frame.
    #[arg(long, env = "PARLEY_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub auth_timeout: Duration,
    /// Frames queued for one connection before it is closed as a slow
    /// consumer (4009). At 100 events/s in its rooms, about ten seconds.
    #[arg(long, env = "PARLEY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Frames a client may send per second (sustained); beyond the burst it
    /// is closed with 4008.
    #[arg(long, env = "PARLEY_CLIENT_FRAMES_PER_SECOND", default_value_t = 20)]
    pub client_frames_per_second: u32,
    #[arg(long, env = "PARLEY_CLIENT_FRAME_BURST", default_value_t = 100)]
    pub client_frame_burst: u32,
    /// After the drain's last close, how long shutdown waits for
    /// connections to take their close frames. Shutdown takes at most
    /// PARLEY_DRAIN_DELAY + PARLEY_DRAIN_PERIOD + this: size
    /// terminationGracePeriodSeconds and `docker stop -t` above the sum.
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long the node reports not-ready (`/readyz` 503)
    /// while still serving, before it starts closing connections: time for
    /// the load balancer to take it out of rotation.
    #[arg(long, env = "PARLEY_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After the delay, the node's connections are closed (`reconnect`,
    /// then 1001) spread evenly over this period, so the other nodes see
    /// them come back at (connections / period) per second, not at once.
    #[arg(long, env = "PARLEY_DRAIN_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub drain_period: Duration,
    /// How long past its access token's expiry a connection may stay open
    /// without a `refresh`; then it is closed with 4002.
    #[arg(long, env = "PARLEY_TOKEN_EXPIRY_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub token_expiry_grace: Duration,
    /// Room shards (tasks that own rooms' state); 0 means one per CPU.
    #[arg(long, env = "PARLEY_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// Least time between two writes of room events to one connection.
    /// Events arriving sooner wait and share the next write: fewer, larger
    /// TCP segments when a connection receives many events per second, at
    /// the cost of up to this much latency for those events. A connection
    /// that receives events less often than this is not delayed. 0 writes
    /// every event at once.
    #[arg(long, env = "PARLEY_WRITE_COALESCE", default_value = "0ms", value_parser = parse_duration)]
    pub write_coalesce: Duration,
    /// Least time between two `typing` events forwarded for one user in one
    /// room from this node; frames in between are dropped (and counted in
    /// `gateway_typing_frames_total{outcome="throttled"}`). Clients show an
    /// indicator for twice this, so one frame per interval keeps it lit.
    #[arg(long, env = "PARLEY_TYPING_INTERVAL", default_value = "3s", value_parser = parse_duration)]
    pub typing_interval: Duration,
    /// Rooms with at most this many members get `receipt` events when a
    /// member reads; bigger rooms only update the reader's own connections
    /// (the markers stay readable at `GET /v1/rooms/{id}/receipts`).
    #[arg(long = "receipt-room-limit", id = "gateway_receipt_room_limit", env = "PARLEY_RECEIPT_ROOM_LIMIT", default_value_t = shared::protocol::DEFAULT_RECEIPT_ROOM_LIMIT)]
    pub receipt_room_limit: i64,
    /// How long a user stays present after their connection drops without
    /// leaving: a reconnect within it (to any node) changes nothing others
    /// see. An explicit `leave` or a logout is immediate.
    #[arg(long, env = "PARLEY_PRESENCE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub presence_grace: Duration,
    /// How often a node renews its presence lease and looks for nodes whose
    /// leases expired (one Redis script per heartbeat, whatever the load).
    #[arg(long, env = "PARLEY_PRESENCE_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub presence_heartbeat: Duration,
    /// How long a node's presence outlives its last heartbeat: a node that
    /// dies is reaped by another within this plus one heartbeat. Must be
    /// longer than the heartbeat.
    #[arg(long, env = "PARLEY_PRESENCE_LEASE", default_value = "12s", value_parser = parse_duration)]
    pub presence_lease: Duration,
    /// Rooms with at most this many users present get the list in the
    /// `joined` reply of a `join` that asks for presence; bigger ones get
    /// the count only.
    #[arg(long, env = "PARLEY_PRESENCE_SNAPSHOT_LIMIT", default_value_t = shared::protocol::DEFAULT_PRESENCE_SNAPSHOT_LIMIT)]
    pub presence_snapshot_limit: usize,
    /// Longest backlog a resuming `join` (`since_seq`) is sent; a client
    /// further behind is told to page the history instead.
    #[arg(long, env = "PARLEY_RESUME_LIMIT", default_value_t = shared::protocol::DEFAULT_RESUME_LIMIT)]
    pub resume_limit: i64,
}

impl WsSettings {
    /// The presence timing, checked: a lease no longer than the heartbeat
    /// would expire between two renewals.
    pub fn presence_timing(&self) -> anyhow::Result<crate::presence::PresenceTiming> {
        anyhow::ensure!(
            self.presence_lease > self.presence_heartbeat && !self.presence_heartbeat.is_zero(),
            "PARLEY_PRESENCE_LEASE ({:?}) must be longer than PARLEY_PRESENCE_HEARTBEAT ({:?}), which must be above 0",
            self.presence_lease,
            self.presence_heartbeat
        );
        Ok(crate::presence::PresenceTiming {
            heartbeat: self.presence_heartbeat,
            lease: self.presence_lease,
            grace: self.presence_grace,
        })
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            max_connections: 19_000,
            heartbeat_interval: Duration::from_secs(25),
            auth_timeout: Duration::from_secs(shared::protocol::AUTH_TIMEOUT_SECS),
            outbound_queue: 1024,
            client_frames_per_second: 20,
            client_frame_burst: 100,
            shutdown_grace: Duration::from_secs(10),
            drain_delay: DEFAULT_DRAIN_DELAY,
            drain_period: DEFAULT_DRAIN_PERIOD,
            token_expiry_grace: DEFAULT_TOKEN_EXPIRY_GRACE,
            shards: 0,
            write_coalesce: Duration::ZERO,
            typing_interval: DEFAULT_TYPING_INTERVAL,
            receipt_room_limit: shared::protocol::DEFAULT_RECEIPT_ROOM_LIMIT,
            presence_grace: Duration::from_secs(10),
            presence_heartbeat: Duration::from_secs(5),
            presence_lease: Duration::from_secs(12),
            presence_snapshot_limit: shared::protocol::DEFAULT_PRESENCE_SNAPSHOT_LIMIT,
            resume_limit: shared::protocol::DEFAULT_RESUME_LIMIT,
        }
    }
}
