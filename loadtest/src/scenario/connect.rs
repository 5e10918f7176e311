//! `connect`: open N connections at a target rate and close them.

use super::{Start, start, token_ttl};
use crate::cli::ConnectArgs;
use crate::provision::ProvisionPlan;
use crate::report::Report;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(args: &ConnectArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let planned = Duration::from_secs_f64(f64::from(args.connections) / args.rate);
    let mut session = start(
        Start {
            scenario: "connect",
            config: serde_json::to_value(args)?,
            target: &args.target,
            plan: ProvisionPlan {
                users: args.connections,
                rooms: 0,
                room_size: 0,
                token_ttl_secs: token_ttl(planned),
            },
            join: false,
            publish: None,
            post_timeout: Duration::from_secs(10),
        },
        cancel,
    )
    .await?;
    session.report.connect = session.connect(args.rate).await;
    Ok(session.finish(&[]).await)
}
