//! The coordinator's view of its workers: the in-process fleet, or remote
//! agents reached over [`crate::wire`]. Scenarios drive [`Workers`] one
//! operation at a time; every worker starts the operation at the same
//! wall-clock moment and the reports come back merged.

use crate::clock;
use crate::fleet::{Fleet, ProgressHandle};
use crate::net::FileLimit;
use crate::wire::{FromAgent, PROTOCOL_VERSION, ToAgent, read_msg, write_msg};
use crate::work::{Op, OpReport, Progress, WorkerSetup};
use anyhow::Context as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Time between sending an operation and its start: long enough for every
/// agent to receive it over a LAN, so all start together.
const REMOTE_LEAD: Duration = Duration::from_millis(500);
const LOCAL_LEAD: Duration = Duration::from_millis(20);

/// How long to wait for an agent's hello and for its setup to be accepted.
const AGENT_HANDSHAKE: Duration = Duration::from_secs(60);

/// Slack added to an operation's own length before an agent that has not
/// answered is given up on.
const OP_SLACK: Duration = Duration::from_secs(120);

/// Reads one worker's live counters.
#[derive(Clone)]
pub enum ProgressSource {
    Local(ProgressHandle),
    Remote(Arc<Mutex<Progress>>),
}

impl ProgressSource {
    pub fn get(&self) -> Progress {
        match self {
            ProgressSource::Local(h) => h.get(),
            ProgressSource::Remote(p) => p.lock().map(|p| *p).unwrap_or_default(),
        }
    }
}

/// A remote agent, connected and set up.
pub struct RemoteAgent {
    pub addr: String,
    writer: OwnedWriteHalf,
    inbox: mpsc::Receiver<FromAgent>,
    progress: Arc<Mutex<Progress>>,
    reader: tokio::task::JoinHandle<()>,
}

enum Worker {
    Local(Box<Fleet>),
    Remote(RemoteAgent),
}

/// Every worker of a run.
pub struct Workers {
    workers: Vec<Worker>,
    /// `local` or the agents' addresses, in order.
    pub names: Vec<String>,
    /// Each worker's open-file limits.
    pub files: Vec<(String, FileLimit)>,
    total_conns: u64,
}

impl Workers {
    /// The in-process worker.
    pub async fn local(setup: WorkerSetup, files: FileLimit) -> anyhow::Result<Workers> {
        let total_conns = setup.total_conns;
        let fleet = Fleet::new("local", setup).await?;
        Ok(Workers {
            workers: vec![Worker::Local(Box::new(fleet))],
            names: vec!["local".into()],
            files: vec![("local".into(), files)],
            total_conns,
        })
    }

    /// Connects to each agent and hands it its setup (`setups[i]` to `agents[i]`).
    pub async fn remote(agents: &[String], setups: Vec<WorkerSetup>) -> anyhow::Result<Workers> {
        anyhow::ensure!(agents.len() == setups.len(), "one setup per agent");
        let total_conns = setups.first().map_or(0, |s| s.total_conns);
        let connecting = agents
            .iter()
            .zip(setups)
            .map(|(addr, setup)| connect_agent(addr.clone(), setup));
        let mut workers = Vec::new();
        let mut files = Vec::new();
        for result in futures::future::join_all(connecting).await {
            let (agent, limit) = result?;
            files.push((agent.addr.clone(), limit));
            workers.push(Worker::Remote(agent));
        }
        Ok(Workers {
            workers,
            names: agents.to_vec(),
            files,
            total_conns,
        })
    }

    pub fn progress_sources(&self) -> Vec<ProgressSource> {
        self.workers
            .iter()
            .map(|w| match w {
                Worker::Local(f) => ProgressSource::Local(f.progress_handle()),
                Worker::Remote(a) => ProgressSource::Remote(a.progress.clone()),
            })
            .collect()
    }

    /// Runs `op` on every worker, starting together, and merges the reports.
    pub async fn run(&mut self, op: Op, cancel: &CancellationToken) -> anyhow::Result<OpReport> {
        let remote = self.workers.iter().any(|w| matches!(w, Worker::Remote(_)));
        let lead = if remote { REMOTE_LEAD } else { LOCAL_LEAD };
        let start_unix_ms = clock::unix_ms() + lead.as_millis() as u64;
        let limit = op_limit(&op, self.total_conns) + lead;
        let runs = self.workers.iter_mut().map(|w| {
            let op = op.clone();
            async move {
                match w {
                    Worker::Local(fleet) => {
                        let start = clock::instant_of_unix_ms(start_unix_ms);
                        Ok(fleet.run(op, start, cancel).await)
                    }
                    Worker::Remote(agent) => {
                        run_remote(agent, op, start_unix_ms, cancel, limit).await
                    }
                }
            }
        });
        let reports = futures::future::join_all(runs).await;
        let mut merged: Option<OpReport> = None;
        for report in reports {
            let report = report?;
            merged = Some(match merged {
                None => report,
                Some(acc) => merge(acc, &report)?,
            });
        }
        merged.ok_or_else(|| anyhow::anyhow!("no workers"))
    }

    /// Ends the agents' sessions (their connections are closed by then).
    pub async fn finish(self) {
        for w in self.workers {
            if let Worker::Remote(mut agent) = w {
                let _ = write_msg(&mut agent.writer, &ToAgent::Bye).await;
                agent.reader.abort();
            }
        }
    }
}

/// An upper bound on how long `op` can take on a healthy agent.
fn op_limit(op: &Op, total_conns: u64) -> Duration {
    let own = match op {
        Op::Connect { rate } if *rate > 0.0 => Duration::from_secs_f64(total_conns as f64 / rate),
        Op::Connect { .. } => Duration::ZERO,
        Op::Hold { duration } => *duration,
        Op::Publish(step) => step.duration + step.drain,
        Op::Close => Duration::ZERO,
    };
    own + OP_SLACK
}

async fn connect_agent(
    addr: String,
    setup: WorkerSetup,
) -> anyhow::Result<(RemoteAgent, FileLimit)> {
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to agent {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut writer) = stream.into_split();
    let hello = tokio::time::timeout(AGENT_HANDSHAKE, read_msg::<_, FromAgent>(&mut rd))
        .await
        .with_context(|| format!("agent {addr} sent no hello"))??;
    let files = match hello {
        Some(FromAgent::Hello { version, files }) if version == PROTOCOL_VERSION => files,
        Some(FromAgent::Hello { version, .. }) => anyhow::bail!(
            "agent {addr} speaks protocol {version}, this coordinator {PROTOCOL_VERSION}: use the same build"
        ),
        other => anyhow::bail!("agent {addr} answered {other:?} instead of hello"),
    };
    write_msg(
        &mut writer,
        &ToAgent::Setup {
            setup: Box::new(setup),
        },
    )
    .await
    .with_context(|| format!("sending the setup to agent {addr}"))?;
    match tokio::time::timeout(AGENT_HANDSHAKE, read_msg::<_, FromAgent>(&mut rd))
        .await
        .with_context(|| format!("agent {addr} did not accept its setup in time"))??
    {
        Some(FromAgent::Ready) => {}
        Some(FromAgent::Failed { error }) => anyhow::bail!("agent {addr}: {error}"),
        other => anyhow::bail!("agent {addr} answered {other:?} instead of ready"),
    }
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (tx, inbox) = mpsc::channel(16);
    let latest = progress.clone();
    let reader = tokio::spawn(async move {
        // Ends when the agent closes or sends garbage; dropping tx tells
        // whoever waits for a report.
        while let Ok(Some(msg)) = read_msg::<_, FromAgent>(&mut rd).await {
            match msg {
                FromAgent::Progress { progress } => {
                    if let Ok(mut p) = latest.lock() {
                        *p = progress;
                    }
                }
                other => {
                    if tx.send(other).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok((
        RemoteAgent {
            addr,
            writer,
            inbox,
            progress,
            reader,
        },
        files,
    ))
}

async fn run_remote(
    agent: &mut RemoteAgent,
    op: Op,
    start_unix_ms: u64,
    cancel: &CancellationToken,
    limit: Duration,
) -> anyhow::Result<OpReport> {
    write_msg(&mut agent.writer, &ToAgent::Run { op, start_unix_ms })
        .await
        .with_context(|| format!("sending an operation to agent {}", agent.addr))?;
    let mut aborted = false;
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            msg = agent.inbox.recv() => match msg {
                Some(FromAgent::Done { report }) => return Ok(*report),
                Some(FromAgent::Failed { error }) => anyhow::bail!("agent {}: {error}", agent.addr),
                Some(other) => tracing::debug!(?other, "unexpected message from agent"),
                None => anyhow::bail!("agent {} disconnected", agent.addr),
            },
            _ = cancel.cancelled(), if !aborted => {
                aborted = true;
                let _ = write_msg(&mut agent.writer, &ToAgent::Abort).await;
            }
            _ = &mut deadline => anyhow::bail!("agent {} did not answer within {limit:?}", agent.addr),
        }
    }
}

/// Merges two workers' reports of the same operation.
pub fn merge(mut acc: OpReport, other: &OpReport) -> anyhow::Result<OpReport> {
    match (&mut acc, other) {
        (OpReport::Connect(a), OpReport::Connect(b)) => a.merge(b),
        (OpReport::Hold(a), OpReport::Hold(b)) => a.merge(b),
        (OpReport::Publish(a), OpReport::Publish(b)) => a.merge(b),
        (OpReport::Close(a), OpReport::Close(b)) => a.merge(b),
        _ => anyhow::bail!("workers answered different operations"),
    }
    Ok(acc)
}
