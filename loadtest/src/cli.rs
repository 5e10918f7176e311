//! Command line: one subcommand per scenario, plus `agent`.

use crate::net::parse_source_addrs;
use crate::work::WireEncoding;
use clap::{Args, Parser, Subcommand};
use serde::{Serialize, Serializer};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Hard caps on parameters: a typo must not start a run that cannot end
/// or that allocates without bound.
pub const MAX_CONNECTIONS: u32 = 1_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_MESSAGES: u64 = 100_000_000;
pub const MAX_PUBLISHERS: u32 = 10_000;
pub const MAX_ROOMS: u32 = 100_000;
pub const MAX_RAMP_STEPS: usize = 100;

const ABOUT: &str = "Load generator for Parley: real WebSocket clients on the gateways, open-loop publishers on the REST api, HDR latency histograms, loss/duplicate/reorder accounting, and distributed agents.";

const AFTER_HELP: &str = "\
Users, tokens and rooms are created per run through POST /v1/admin/provision
(the api needs PARLEY_ADMIN_TOKEN; pass the same value with --admin-token or the
PARLEY_ADMIN_TOKEN environment variable). Raise the api's per-user post limit
(PARLEY_RATE_MESSAGES_PER_SECOND / _BURST) for publishing scenarios.

Distributed: start `parley-loadtest agent --listen ADDR` on each load machine and
pass `--agents ADDR,ADDR` to a scenario: the coordinator provisions once, splits
rooms (with their members and publishers) between agents and merges the exact
histograms they return.";

#[derive(Parser)]
#[command(name = "parley-loadtest", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Open N connections at a target rate; report TCP, handshake and
    /// handshake+auth (time to `ready`) latency and failures by reason.
    Connect(ConnectArgs),
    /// Hold N connections for a while (answering heartbeats), optionally
    /// joined to rooms; report drops and gateway memory per connection.
    Idle(IdleArgs),
    /// C connections in R rooms over all gateways, P publishers posting at a
    /// total rate through the api; publish-to-deliver latency of every
    /// delivery, and lost/duplicated/reordered deliveries.
    Fanout(FanoutArgs),
    /// Fanout at rising rates until p99 latency passes a bound or anything
    /// is lost; reports each step and the highest rate held.
    Ramp(RampArgs),
    /// Users in rooms over the gateways, presence settled, then SIGKILL one
    /// gateway process: time from the kill until the other gateways'
    /// members see each of its users leave (in this process only).
    PresenceKill(PresenceKillArgs),
    /// C connections in R rooms receive messages, then send `read` frames
    /// at a total rate: what reaches the database (marker batches,
    /// statements, commits) per read frame (in this process only).
    Reads(ReadsArgs),
    /// C clients in R rooms receive messages posted at a steady rate, then
    /// all drop their sockets at once, reconnect and resume with
    /// `since_seq` while posting goes on: time to resume, gaps and
    /// duplicates across the drop, database reads and Redis commands per
    /// resumed client (in this process only).
    Storm(StormArgs),
    /// Upload files through the api (one user, one room) with a number of
    /// uploads in flight: uploads/s, MiB/s, latency, and the server's CPU
    /// per GiB and peak memory given its pid (in this process only).
    Uploads(UploadsArgs),
    /// Run as an agent for a distributed coordinator.
    Agent(AgentArgs),
    /// Measure this machine's floor without Parley: CPU per small TCP
    /// segment over loopback, sent and received (what every delivery costs
    /// at least when it is its own segment).
    Loopback(LoopbackArgs),
}

#[derive(Args, Clone, Debug)]
pub struct UploadsArgs {
    /// Base URL of the REST api (or of a single `parley` node).
    #[arg(
        long,
        env = "PARLEY_LOADTEST_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Files to upload in all.
    #[arg(long, short = 'n', default_value = "100")]
    pub count: u64,
    /// Uploads in flight at once.
    #[arg(long, short = 'c', default_value = "4", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Bytes per file (10 MiB by default).
    #[arg(long, default_value = "10485760", value_parser = clap::value_parser!(u64).range(16..=(1 << 32)))]
    pub size: u64,
    /// The server's process id: its CPU time and peak memory are reported.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Args, Clone, Debug)]
pub struct LoopbackArgs {
    /// Socket pairs.
    #[arg(long, short = 'c', default_value = "2000", value_parser = parse_connections)]
    pub connections: u32,
    /// Writes per second, over all sockets in turn.
    #[arg(long, default_value = "50000", value_parser = parse_rate)]
    pub rate: f64,
    /// Bytes per write (an event frame of a 256-byte message is about 330).
    #[arg(long, default_value = "330", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub size: u32,
    /// How long to send.
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_DURATION {
        return Err(format!(
            "at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(r > 0.0 && r <= MAX_RATE) {
        return Err(format!("must be above 0 and at most {MAX_RATE}"));
    }
    Ok(r)
}

fn parse_connections(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_CONNECTIONS).contains(&n) {
        return Err(format!("must be 1 to {MAX_CONNECTIONS}"));
    }
    Ok(n)
}

fn parse_messages(s: &str) -> Result<u64, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_MESSAGES).contains(&n) {
        return Err(format!("must be 1 to {MAX_MESSAGES}"));
    }
    Ok(n)
}

fn parse_publishers(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_PUBLISHERS).contains(&n) {
        return Err(format!("must be 1 to {MAX_PUBLISHERS}"));
    }
    Ok(n)
}

fn parse_rooms(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n > MAX_ROOMS {
        return Err(format!("at most {MAX_ROOMS}"));
    }
    Ok(n)
}

fn parse_payload(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=crate::body::MAX_BODY_LEN).contains(&n) {
        return Err(format!("must be 1 to {} bytes", crate::body::MAX_BODY_LEN));
    }
    Ok(n)
}

/// Source addresses as parsed from `--source-addrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceAddrs(pub Vec<IpAddr>);

fn parse_sources(s: &str) -> Result<SourceAddrs, String> {
    parse_source_addrs(s).map(SourceAddrs)
}

pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Where the system under test is, how to reach it, and where the report goes.
#[derive(Args, Clone, Serialize)]
pub struct TargetArgs {
    /// Base URL of the REST api (or of a single `parley` node).
    #[arg(
        long,
        env = "PARLEY_LOADTEST_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Gateway WebSocket URLs, comma-separated (or one load balancer's);
    /// connections are spread over them round-robin.
    #[arg(
        long,
        env = "PARLEY_LOADTEST_GATEWAYS",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8081/ws"
    )]
    pub gateways: Vec<String>,
    /// The api's admin token (PARLEY_ADMIN_TOKEN), for provisioning. Never printed.
    #[arg(long, env = "PARLEY_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Agents to run the load (host:port, comma-separated); without it the
    /// load runs in this process.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Local source addresses for client sockets, to multiply ephemeral
    /// ports: a list (127.0.0.2,127.0.0.3) or a count N (127.0.0.1..N).
    #[arg(long, value_parser = parse_sources, default_value = "")]
    pub source_addrs: SourceAddrs,
    /// Client frame encoding.
    #[arg(long, value_enum, default_value_t = WireEncoding::Json)]
    pub encoding: WireEncoding,
    /// Time limit of each stage of opening a connection (TCP, upgrade, auth, join).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Write the full report (histograms included) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML page with latency charts and the summary.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the latency-by-percentile chart as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Clone, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open.
    #[arg(long, short = 'n', default_value = "1000", value_parser = parse_connections)]
    pub connections: u32,
    /// Target opening rate (connections per second, all agents together).
    #[arg(long, default_value = "200", value_parser = parse_rate)]
    pub rate: f64,
}

#[derive(Args, Clone, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to hold.
    #[arg(long, short = 'n', default_value = "1000", value_parser = parse_connections)]
    pub connections: u32,
    /// Opening rate (connections per second).
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub connect_rate: f64,
    /// How long to hold them once all are open.
    #[arg(long, short = 'd', default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// Join the connections to this many rooms (0: join none).
    #[arg(long, default_value = "0", value_parser = parse_rooms)]
    pub rooms: u32,
    /// A gateway's process id on this machine (repeatable; in --gateways
    /// order for per-gateway figures): VmRSS is read before and while holding.
    #[arg(long = "gateway-pid")]
    pub gateway_pids: Vec<u32>,
    /// A gateway's Prometheus endpoint (repeatable): process_resident_memory_bytes
    /// and gateway_connections before and while holding.
    #[arg(long = "metrics-url")]
    pub metrics_urls: Vec<String>,
    /// The deployment's Redis (redis://[:password@]host:port): `INFO
    /// commandstats` is read when the hold starts and when it ends, and
    /// the report gives Redis commands/s while the connections were held
    /// (commands run inside Lua scripts included), per gateway and by
    /// command. Use a Redis only this deployment uses: every client's
    /// commands are counted.
    #[arg(long)]
    #[serde(skip)]
    pub redis_url: Option<String>,
}

/// Rooms bigger than the presence snapshot limit get a count instead of
/// the list of users, which the settle check needs.
pub const MAX_PRESENCE_ROOM: u32 = shared::protocol::DEFAULT_PRESENCE_SNAPSHOT_LIMIT as u32;

fn parse_presence_room(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_PRESENCE_ROOM).contains(&n) {
        return Err(format!("must be 1 to {MAX_PRESENCE_ROOM}"));
    }
    Ok(n)
}

#[derive(Args, Clone, Serialize)]
pub struct PresenceKillArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Users (rounded down to whole rooms); user i connects to gateway i mod G.
    #[arg(long, short = 'n', default_value = "300", value_parser = parse_connections)]
    pub users: u32,
    /// Users per room (at most the presence snapshot limit, 100).
    #[arg(long, default_value = "10", value_parser = parse_presence_room)]
    pub room_size: u32,
    /// Every Nth user also connects a second device to the next gateway
    /// (0: none). Those on the killed gateway must not be seen leaving.
    #[arg(long, default_value = "5")]
    pub second_device_every: u32,
    /// Opening rate (connections per second).
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub connect_rate: f64,
    /// Process id of the gateway to SIGKILL (it must be the process behind
    /// the --gateways URL at --kill-gateway).
    #[arg(long)]
    pub kill_pid: u32,
    /// Which --gateways URL (0-based) the killed process serves.
    #[arg(long)]
    pub kill_gateway: usize,
    /// Longest wait for every connection to see every connected user of
    /// its room before the kill (the run fails without killing after it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub settle_timeout: Duration,
    /// Longest wait after the kill for the expected leaves.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub leave_timeout: Duration,
    /// After the last expected leave, keep listening this long for
    /// unexpected ones (within --leave-timeout).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub tail: Duration,
}

#[derive(Args, Clone, Serialize)]
pub struct ReadsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections (one user each), rounded down to a multiple of --rooms.
    #[arg(long, short = 'c', default_value = "1000", value_parser = parse_connections)]
    pub connections: u32,
    /// Rooms; each has connections/rooms members over all gateways.
    #[arg(long, short = 'r', default_value = "100", value_parser = parse_rooms)]
    pub rooms: u32,
    /// Read frames per second, all connections together.
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to send read frames.
    #[arg(long, short = 'd', default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// Messages posted into each room first (default: one more than the
    /// reads each connection sends, so every read moves its marker).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub messages: Option<u32>,
    /// Opening rate of the connections (per second).
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub connect_rate: f64,
    /// Rooms posted into at the same time (each room's posts in order).
    #[arg(long, default_value = "16", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub post_concurrency: u16,
    /// Longest wait for every connection to receive every message.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub delivery_timeout: Duration,
    /// A gateway's Prometheus endpoint (repeatable, one per gateway):
    /// store_marker_batches_total and store_marker_rows_written_total
    /// before and after the read window.
    #[arg(long = "metrics-url")]
    pub metrics_urls: Vec<String>,
    /// The deployment's PostgreSQL database (postgres://...): its
    /// pg_stat_database row before and after the window (commits, rows
    /// updated). Adds 11 s of quiet on each side for PostgreSQL's
    /// statistics to flush (--stats-settle). Never printed.
    #[arg(long, env = "PARLEY_LOADTEST_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// With --database-url: quiet before the first and after the window
    /// before the second pg_stat_database sample. PostgreSQL's backends
    /// flush their statistics at most once a second, idle ones after up to
    /// 10 s; shorter undercounts.
    #[arg(long, default_value = "11s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub stats_settle: Duration,
}

/// Where a client of the `storm` scenario reconnects.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconnectTo {
    /// The gateway it was on (a network drop).
    Same,
    /// The next one in --gateways (its gateway went away).
    Next,
}

#[derive(Args, Clone, Serialize)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Clients (one user and one connection each), rounded down to a
    /// multiple of --rooms; client i starts on gateway i mod G.
    #[arg(long, short = 'c', default_value = "300", value_parser = parse_connections)]
    pub connections: u32,
    /// Rooms; each has connections/rooms clients and one poster without a
    /// connection.
    #[arg(long, short = 'r', default_value = "30", value_parser = parse_rooms)]
    pub rooms: u32,
    /// Messages per second, all rooms together (in turn), from after every
    /// client joined until the last sample after the storm.
    #[arg(long, default_value = "50", value_parser = parse_rate)]
    pub rate: f64,
    /// Posting before the drop (the first second of it is left out of the
    /// baseline window).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub before: Duration,
    /// How long every client stays away after the drop.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub offline: Duration,
    /// Reconnects spread evenly over this after --offline (0: all at once).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub reconnect_spread: Duration,
    /// Which gateway a client reconnects to.
    #[arg(long, value_enum, default_value_t = ReconnectTo::Next)]
    pub reconnect_to: ReconnectTo,
    /// Attempts to reconnect and resume per client (backing off 0.5 s more
    /// after each failure).
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub reconnect_attempts: u32,
    /// Longest wait from the drop for every client to resume.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub resume_timeout: Duration,
    /// Posting goes on this long after the last resume (live events after
    /// the seam, for the gap and duplicate count).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub after: Duration,
    /// Opening rate of the first connections (per second).
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub connect_rate: f64,
    /// Posts in flight at most.
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub post_concurrency: u16,
    /// After posting stops, longest wait for every client to receive its
    /// room's last acknowledged message.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub delivery_timeout: Duration,
    /// A gateway's Prometheus endpoint (repeatable, one per gateway):
    /// gateway_backlog_reads_total by source and gateway_resumes_total by
    /// outcome at the drop and after the last resume.
    #[arg(long = "metrics-url")]
    pub metrics_urls: Vec<String>,
    /// The deployment's PostgreSQL database (postgres://...): commits from
    /// pg_stat_database without reconnects (baseline) and over the storm.
    /// Never printed.
    #[arg(long, env = "PARLEY_LOADTEST_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// With --database-url: how long after the last resume the second
    /// sample is taken (posting goes on), for PostgreSQL's statistics to
    /// catch up.
    #[arg(long, default_value = "11s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub stats_settle: Duration,
    /// The deployment's Redis (redis://...): INFO commandstats without
    /// reconnects (baseline) and over the storm. Use a Redis only this
    /// deployment uses.
    #[arg(long)]
    #[serde(skip)]
    pub redis_url: Option<String>,
}

/// The shape of a publishing run (fanout and ramp).
#[derive(Args, Clone, Serialize)]
pub struct FanoutShape {
    /// Connections (one user each), rounded down to a multiple of --rooms.
    #[arg(long, short = 'c', default_value = "1000", value_parser = parse_connections)]
    pub connections: u32,
    /// Rooms; each has connections/rooms members spread over all gateways.
    #[arg(long, short = 'r', default_value = "10", value_parser = parse_rooms)]
    pub rooms: u32,
    /// Publishers. There are max(publishers, rooms) open-loop streams; each
    /// sends its posts in order, one at a time, so it manages at most
    /// 1/(REST latency) msg/s: raise this for high rates.
    #[arg(long, short = 'p', default_value = "10", value_parser = parse_publishers)]
    pub publishers: u32,
    /// Message body size in bytes (header plus padding; at most 4000).
    #[arg(long, default_value = "200", value_parser = parse_payload)]
    pub payload: usize,
    /// Opening rate of the connections (per second).
    #[arg(long, default_value = "500", value_parser = parse_rate)]
    pub connect_rate: f64,
    /// After the last post, how long to wait for deliveries before counting loss.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub drain: Duration,
    /// Time limit of one post.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub post_timeout: Duration,
}

#[derive(Args, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub shape: FanoutShape,
    /// Total publishing rate (messages per second, all publishers together).
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, short = 'd', default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// Stop after this many messages (whichever comes first with --duration).
    #[arg(long, short = 'm', value_parser = parse_messages)]
    pub messages: Option<u64>,
}

#[derive(Args, Clone, Serialize)]
pub struct RampArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub shape: FanoutShape,
    /// Rate of the first step (messages per second).
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub start_rate: f64,
    /// Rate added at each step.
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub step_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value = "2000", value_parser = parse_rate)]
    pub max_rate: f64,
    /// Length of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub step_duration: Duration,
    /// A step holds while its p99 publish-to-deliver latency stays at or below this.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub p99_bound: Duration,
    /// Publish at half the start rate for this long before the first step,
    /// without judging it: a freshly started deployment opens its database
    /// connections and fills its caches (sessions, verified tokens, query
    /// plans) under the first load, which would otherwise count against
    /// the first step. 0 skips it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub warmup: Duration,
}

impl RampArgs {
    /// The warm-up's rate and length, if there is one.
    pub fn warmup_step(&self) -> Option<(f64, Duration)> {
        (!self.warmup.is_zero()).then(|| (self.start_rate / 2.0, self.warmup))
    }

    /// The rates of the steps, capped at [`MAX_RAMP_STEPS`].
    pub fn rates(&self) -> Vec<f64> {
        let mut rates = Vec::new();
        let mut r = self.start_rate;
        while r <= self.max_rate + 1e-9 && rates.len() < MAX_RAMP_STEPS {
            rates.push(r);
            r += self.step_rate;
        }
        rates
    }
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// Address to listen on for a coordinator. The agent protocol has no
    /// authentication or encryption (it carries access tokens and decides
    /// where load goes): listen only on a trusted network.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_lists_parse() {
        let cli = Cli::try_parse_from([
            "parley-loadtest",
            "fanout",
            "--gateways",
            "ws://a:1/ws,ws://b:2/ws",
            "--source-addrs",
            "2",
            "--admin-token",
            "x",
        ])
        .unwrap();
        let Command::Fanout(f) = cli.command else {
            panic!("fanout")
        };
        assert_eq!(f.target.gateways.len(), 2);
        assert_eq!(f.target.source_addrs.0.len(), 2);
        assert_eq!(
            (f.shape.connections, f.shape.rooms, f.rate),
            (1000, 10, 100.0)
        );
        let config = serde_json::to_value(&f).unwrap();
        assert!(
            !config.to_string().contains("\"x\""),
            "the admin token is never in the config"
        );
        assert_eq!(config["duration"], "30s");
    }

    #[test]
    fn caps_are_enforced() {
        for bad in [
            vec!["connect", "-n", "0"],
            vec!["connect", "-n", "2000000"],
            vec!["fanout", "--rate", "0"],
            vec!["fanout", "--duration", "2days"],
            vec!["fanout", "--payload", "5000"],
        ] {
            let args = std::iter::once("parley-loadtest").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ramp_rates_rise_to_the_maximum() {
        let cli = Cli::try_parse_from([
            "parley-loadtest",
            "ramp",
            "--start-rate",
            "50",
            "--step-rate",
            "25",
            "--max-rate",
            "100",
        ])
        .unwrap();
        let Command::Ramp(r) = cli.command else {
            panic!("ramp")
        };
        assert_eq!(r.rates(), [50.0, 75.0, 100.0]);
    }
}
