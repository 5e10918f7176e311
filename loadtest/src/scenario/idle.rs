//! `idle`: hold N connections for a while (they answer the gateways'
//! heartbeats), optionally joined to rooms, and measure what that costs the
//! gateways in memory and, with `--redis-url`, in Redis commands.

use super::{Start, room_size, start, token_ttl};
use crate::cli::IdleArgs;
use crate::memory::{self, Probe};
use crate::provision::ProvisionPlan;
use crate::redis_stats::{self, RedisTarget};
use crate::report::{MemoryReport, Report};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(args: &IdleArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let (users, rooms, size) = if args.rooms > 0 {
        let size = room_size(args.connections, args.rooms)?;
        (args.rooms * size, args.rooms, size)
    } else {
        (args.connections, 0, 0)
    };
    let planned = Duration::from_secs_f64(f64::from(users) / args.connect_rate) + args.duration;
    let probes: Vec<Probe> = args
        .gateway_pids
        .iter()
        .map(|&p| Probe::Pid(p))
        .chain(args.metrics_urls.iter().cloned().map(Probe::Metrics))
        .collect();
    let redis = args
        .redis_url
        .as_deref()
        .map(RedisTarget::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    // Before anything connects: the gateways' baseline.
    let before = memory::sample_all(&http, &probes).await;
    let mut session = start(
        Start {
            scenario: "idle",
            config: serde_json::to_value(args)?,
            target: &args.target,
            plan: ProvisionPlan {
                users,
                rooms,
                room_size: size,
                token_ttl_secs: token_ttl(planned),
            },
            join: rooms > 0,
            publish: None,
            post_timeout: Duration::from_secs(10),
        },
        cancel,
    )
    .await?;
    session.report.connect = session.connect(args.connect_rate).await;
    // Redis is read at the edges of the hold: once everything is connected
    // (and joined), and before anything closes.
    let redis_before = match &redis {
        Some(target) => Some((redis_stats::sample(target).await, std::time::Instant::now())),
        None => None,
    };
    let hold = session.hold(args.duration).await;
    if let (Some(target), Some((before, started))) = (&redis, redis_before) {
        let after = redis_stats::sample(target).await;
        match (before, after) {
            (Ok(before), Ok(after)) => {
                session.report.redis = Some(redis_stats::window_report(
                    target,
                    &before,
                    &after,
                    started.elapsed(),
                    args.target.gateways.len(),
                ));
            }
            (Err(e), _) | (_, Err(e)) => session.report.errors.push(e),
        }
    }
    if let Some(hold) = hold {
        if !probes.is_empty() {
            // Still holding: the close is a separate operation.
            let during = memory::sample_all(&http, &probes).await;
            let (gateways, errors) =
                memory::per_connection(&probes, &before, &during, &hold.per_gateway);
            session.report.memory = Some(MemoryReport { gateways, errors });
        }
        session.report.hold = Some(hold);
    }
    Ok(session.finish(&[]).await)
}
