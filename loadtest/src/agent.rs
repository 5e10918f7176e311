//! `parley-loadtest agent`: runs on each load machine and does what a
//! coordinator asks (see [`crate::wire`] for the protocol). One coordinator
//! at a time; a session's connections are always closed when it ends, even
//! if the coordinator vanished.

use crate::clock;
use crate::fleet::Fleet;
use crate::net::FileLimit;
use crate::wire::{FromAgent, PROTOCOL_VERSION, ToAgent, read_msg, write_msg};
use crate::work::Op;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a running operation reports its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Messages buffered towards the coordinator: progress is tiny and sent
/// once a second, so a handful is plenty; a full queue only delays progress.
const OUTBOX: usize = 64;

/// Serves coordinators one after another until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    files: FileLimit,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = listener.local_addr()?.to_string();
    tracing::info!(%name, "agent listening");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        tracing::info!(%peer, "coordinator connected");
        if let Err(e) = session(stream, &name, files, &shutdown).await {
            tracing::warn!(%peer, error = %format!("{e:#}"), "session ended with an error");
        } else {
            tracing::info!(%peer, "session ended");
        }
    }
}

/// One coordinator's session.
async fn session(
    stream: TcpStream,
    name: &str,
    files: FileLimit,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<FromAgent>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if write_msg(&mut wr, &msg).await.is_err() {
                break;
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::channel::<ToAgent>(OUTBOX);
    let reader = tokio::spawn(async move {
        // Ends on EOF or a broken message; dropping in_tx tells the session.
        while let Ok(Some(msg)) = read_msg::<_, ToAgent>(&mut rd).await {
            if in_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let result = run_session(name, files, &out_tx, &mut in_rx, shutdown).await;
    if let Err(e) = &result {
        let _ = out_tx
            .send(FromAgent::Failed {
                error: format!("{e:#}"),
            })
            .await;
    }
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
    result
}

async fn run_session(
    name: &str,
    files: FileLimit,
    out: &mpsc::Sender<FromAgent>,
    inbox: &mut mpsc::Receiver<ToAgent>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    out.send(FromAgent::Hello {
        version: PROTOCOL_VERSION,
        files,
    })
    .await?;
    let setup = match inbox.recv().await {
        Some(ToAgent::Setup { setup }) => setup,
        Some(other) => anyhow::bail!("expected setup, got {other:?}"),
        None => return Ok(()),
    };
    let mut fleet = Fleet::new(name, *setup).await?;
    out.send(FromAgent::Ready).await?;
    let progress = fleet.progress_handle();
    let mut closed = false;
    let mut coordinator_gone = false;
    while !coordinator_gone {
        let msg = tokio::select! {
            msg = inbox.recv() => msg,
            _ = shutdown.cancelled() => None,
        };
        let (op, start_unix_ms) = match msg {
            Some(ToAgent::Run { op, start_unix_ms }) => (op, start_unix_ms),
            Some(ToAgent::Abort) => continue,
            Some(ToAgent::Setup { .. }) => anyhow::bail!("this session is already set up"),
            Some(ToAgent::Bye) | None => break,
        };
        if matches!(op, Op::Close) {
            closed = true;
        }
        let cancel = CancellationToken::new();
        let start = clock::instant_of_unix_ms(start_unix_ms);
        let run = fleet.run(op, start, &cancel);
        tokio::pin!(run);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                _ = tick.tick() => {
                    let _ = out.try_send(FromAgent::Progress { progress: progress.get() });
                }
                msg = inbox.recv(), if !coordinator_gone => match msg {
                    Some(ToAgent::Abort) => cancel.cancel(),
                    Some(ToAgent::Bye) | None => {
                        coordinator_gone = true;
                        cancel.cancel();
                    }
                    Some(other) => tracing::warn!(?other, "ignored while an operation runs"),
                },
                _ = shutdown.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            }
        };
        // If the coordinator is gone the report has nowhere to go; the
        // loop then ends and the connections are closed below.
        let _ = out
            .send(FromAgent::Done {
                report: Box::new(report),
            })
            .await;
    }
    if !closed {
        fleet.close().await;
    }
    Ok(())
}
