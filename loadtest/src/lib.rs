//! parley-loadtest: a load generator that speaks Parley's own protocol.
//!
//! Clients are real WebSocket connections to the gateways (one light task
//! each); publishers post through the REST api on an open-loop schedule;
//! every delivery's latency goes into an HDR histogram and every delivery is
//! checked against what the api acknowledged (lost, duplicated, reordered).
//! Users and rooms come from the admin provisioning endpoint.
//!
//! Layers:
//! - [`cli`]: the command line; [`scenario`]: connect, idle, fanout, ramp,
//!   presence-kill, reads, storm;
//! - [`coordinator`] drives [`fleet`]s, in process or in [`agent`]s over
//!   [`wire`]; [`plan`] splits a run between them; [`work`] is what they
//!   are asked and what they answer;
//! - [`client`] (one WebSocket connection), [`publish`] (REST streams),
//!   [`accounting`] (order and loss), [`metrics`] (histograms);
//! - [`report`], [`chart`], [`progress`]: what a person reads;
//! - [`net`], [`clock`], [`memory`], [`provision`], [`body`]: the edges;
//! - [`redis_stats`], [`db_stats`]: what Redis and PostgreSQL did in a window;
//! - [`loopback`]: the machine's own floor (CPU per TCP segment), no Parley;
//!   [`uploads`]: attachment upload throughput through the api.

pub mod accounting;
pub mod agent;
pub mod body;
pub mod chart;
pub mod cli;
pub mod client;
pub mod clock;
pub mod coordinator;
pub mod db_stats;
pub mod fleet;
pub mod loopback;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod progress;
pub mod provision;
pub mod publish;
pub mod redis_stats;
pub mod report;
pub mod scenario;
pub mod uploads;
pub mod wire;
pub mod work;

use cli::Command;
use report::Report;
use tokio_util::sync::CancellationToken;

/// Runs a scenario and writes the files its arguments ask for. Agents are
/// not scenarios: see [`agent::serve`].
pub async fn run_scenario(command: &Command, cancel: CancellationToken) -> anyhow::Result<Report> {
    let (report, target) = match command {
        Command::Connect(a) => (scenario::connect::run(a, cancel).await?, &a.target),
        Command::Idle(a) => (scenario::idle::run(a, cancel).await?, &a.target),
        Command::Fanout(a) => (scenario::fanout::run(a, cancel).await?, &a.target),
        Command::Ramp(a) => (scenario::ramp::run(a, cancel).await?, &a.target),
        Command::PresenceKill(a) => (scenario::presence_kill::run(a, cancel).await?, &a.target),
        Command::Reads(a) => (scenario::reads::run(a, cancel).await?, &a.target),
        Command::Storm(a) => (scenario::storm::run(a, cancel).await?, &a.target),
        Command::Agent(_) | Command::Loopback(_) | Command::Uploads(_) => {
            anyhow::bail!("not a scenario")
        }
    };
    if let Some(path) = &target.json {
        report.write_json(path)?;
    }
    if let Some(path) = &target.html {
        std::fs::write(path, report.html())?;
    }
    if let Some(path) = &target.svg {
        std::fs::write(path, report.svg())?;
    }
    Ok(report)
}
