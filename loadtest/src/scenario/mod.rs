//! Scenarios: each provisions what it needs, drives the workers through a
//! sequence of operations and assembles the report. What they share —
//! provisioning, starting workers (local or agents), the progress line,
//! running an operation so that a failure or Ctrl-C still ends in a closed
//! fleet and a partial report — lives here.

pub mod connect;
pub mod fanout;
pub mod idle;
pub mod presence_kill;
pub mod ramp;
pub mod reads;
pub mod storm;

use crate::cli::TargetArgs;
use crate::client::Timeouts;
use crate::coordinator::Workers;
use crate::plan::{self, Common, PublishPlan};
use crate::provision::{self, ProvisionPlan, Roster};
use crate::report::{ProvisionSummary, Report};
use crate::work::{ConnectReport, HoldReport, Op, OpReport, StepReport};
use anyhow::Context as _;
use secrecy::SecretString;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Added to a run's planned length for the lifetime of its tokens: tokens
/// must outlive the run (connecting, draining, closing) with room to spare.
const TOKEN_MARGIN: Duration = Duration::from_secs(15 * 60);

/// A scenario in progress.
pub(crate) struct Session {
    workers: Option<Workers>,
    printer: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    pub report: Report,
    pub cancel: CancellationToken,
}

/// What a scenario asks of [`start`].
pub(crate) struct Start<'a> {
    pub scenario: &'a str,
    pub config: serde_json::Value,
    pub target: &'a TargetArgs,
    pub plan: ProvisionPlan,
    pub join: bool,
    pub publish: Option<PublishPlan>,
    pub post_timeout: Duration,
}

/// The token lifetime for a run expected to last `planned`.
pub(crate) fn token_ttl(planned: Duration) -> u64 {
    (planned + TOKEN_MARGIN)
        .as_secs()
        .min(provision::MAX_TOKEN_TTL_SECS)
}

/// Provisions, starts the workers and the progress line.
pub(crate) async fn start(s: Start<'_>, cancel: CancellationToken) -> anyhow::Result<Session> {
    let files = crate::net::raise_nofile_limit().context("raising the open-file limit")?;
    let (mut report, roster) = provision_run(s.scenario, s.config, s.target, &s.plan).await?;
    let common = Common {
        api: s.target.api.clone(),
        gateways: s.target.gateways.clone(),
        source_addrs: s.target.source_addrs.0.clone(),
        encoding: s.target.encoding,
        timeouts: timeouts(s.target),
        post_timeout: s.post_timeout,
    };
    let agents = &s.target.agents;
    let setups = plan::split(&roster, &common, agents.len().max(1), s.join, s.publish)?;
    drop(roster);
    let workers = if agents.is_empty() {
        let setup = setups.into_iter().next().context("no setup")?;
        Workers::local(setup, files).await?
    } else {
        Workers::remote(agents, setups).await?
    };
    report.workers = workers.names.clone();
    report.files = workers.files.clone();
    let printer = (!s.target.quiet).then(|| {
        let stop = CancellationToken::new();
        (
            crate::progress::spawn(workers.progress_sources(), stop.clone()),
            stop,
        )
    });
    Ok(Session {
        workers: Some(workers),
        printer,
        report,
        cancel,
    })
}

/// The stage limits of opening a connection, from `--timeout`.
pub(crate) fn timeouts(target: &TargetArgs) -> Timeouts {
    let t = target.timeout;
    Timeouts {
        connect: t,
        handshake: t,
        // A little beyond the stage limit, so that with the default the
        // gateway's own auth timeout (10 s, close 4003) names the failure.
        ready: t + Duration::from_secs(2),
        join: t,
        close: Timeouts::default().close,
    }
}

/// The report's header and the run's users and rooms: what every scenario
/// starts with, whether it drives workers or its own connections.
pub(crate) async fn provision_run(
    scenario: &str,
    config: serde_json::Value,
    target: &TargetArgs,
    plan: &ProvisionPlan,
) -> anyhow::Result<(Report, Roster)> {
    let mut report = Report {
        tool: format!("parley-loadtest {}", env!("CARGO_PKG_VERSION")),
        scenario: scenario.to_owned(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        config,
        api: target.api.clone(),
        gateways: target.gateways.clone(),
        ..Report::default()
    };
    anyhow::ensure!(!target.gateways.is_empty(), "give at least one gateway URL");
    let admin: SecretString = target
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "an admin token is needed to provision users: --admin-token or PARLEY_ADMIN_TOKEN"
            )
        })?
        .into();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let roster: Roster = provision::provision(&http, &target.api, &admin, plan).await?;
    report.provision = Some(ProvisionSummary {
        prefix: roster.prefix.clone(),
        users: roster.users.len() as u64,
        rooms: roster.rooms.len() as u64,
        room_size: u64::from(plan.room_size),
        requests: roster.requests,
        elapsed_s: roster.elapsed.as_secs_f64(),
    });
    Ok((report, roster))
}

impl Session {
    /// Runs an operation on every worker. None if the run was interrupted
    /// before it or a worker failed (the error goes into the report).
    async fn op(&mut self, op: Op) -> Option<OpReport> {
        let is_close = matches!(op, Op::Close);
        if self.cancel.is_cancelled() && !is_close {
            return None;
        }
        let workers = self.workers.as_mut()?;
        // Close is never cancelled: it is how an interrupted run ends cleanly.
        let never = CancellationToken::new();
        let cancel = if is_close { &never } else { &self.cancel };
        match workers.run(op, cancel).await {
            Ok(r) => Some(r),
            Err(e) => {
                self.report.errors.push(format!("{e:#}"));
                self.report.interrupted = true;
                None
            }
        }
    }

    pub async fn connect(&mut self, rate: f64) -> Option<ConnectReport> {
        match self.op(Op::Connect { rate }).await? {
            OpReport::Connect(r) => Some(r),
            _ => None,
        }
    }

    pub async fn hold(&mut self, duration: Duration) -> Option<HoldReport> {
        match self.op(Op::Hold { duration }).await? {
            OpReport::Hold(r) => Some(r),
            _ => None,
        }
    }

    pub async fn publish(&mut self, step: crate::work::PublishStep) -> Option<StepReport> {
        match self.op(Op::Publish(step)).await? {
            OpReport::Publish(r) => Some(r),
            _ => None,
        }
    }

    /// Closes every connection, ends the agents' sessions and the progress
    /// line, and returns the report.
    pub async fn finish(mut self, verdicts: &[Option<String>]) -> Report {
        if let Some(OpReport::Close(c)) = self.op(Op::Close).await {
            self.report.close = Some(c);
        }
        if let Some(w) = self.workers.take() {
            w.finish().await;
        }
        if let Some((task, stop)) = self.printer.take() {
            stop.cancel();
            let _ = task.await;
        }
        if self.cancel.is_cancelled() {
            self.report.interrupted = true;
        }
        self.report.finish(verdicts);
        self.report
    }
}

/// Connections rounded down to whole rooms: every room gets the same
/// number of members (member `i` of room `r` is user `r * size + i`).
pub(crate) fn room_size(connections: u32, rooms: u32) -> anyhow::Result<u32> {
    anyhow::ensure!(rooms > 0, "at least one room is needed");
    let size = connections / rooms;
    anyhow::ensure!(
        size >= 1,
        "{connections} connections cannot fill {rooms} rooms: give at least one connection per room"
    );
    Ok(size)
}
