//! `fanout`: connections in rooms spread over every gateway, publishers
//! posting at a fixed total rate through the api, every delivery measured
//! and accounted.

use super::{Start, room_size, start, token_ttl};
use crate::cli::{FanoutArgs, FanoutShape};
use crate::plan::{PublishPlan, stream_count, stream_messages_per_step};
use crate::provision::ProvisionPlan;
use crate::report::Report;
use crate::work::PublishStep;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Provisioning and split for a publishing run of `shape` whose streams
/// post at most `per_stream` messages in total.
pub(crate) fn publishing_start<'a>(
    scenario: &'a str,
    config: serde_json::Value,
    target: &'a crate::cli::TargetArgs,
    shape: &FanoutShape,
    per_stream: u64,
    planned: Duration,
) -> anyhow::Result<Start<'a>> {
    let size = room_size(shape.connections, shape.rooms)?;
    Ok(Start {
        scenario,
        config,
        target,
        plan: ProvisionPlan {
            users: shape.rooms * size,
            rooms: shape.rooms,
            room_size: size,
            token_ttl_secs: token_ttl(planned),
        },
        join: true,
        publish: Some(PublishPlan {
            publishers: shape.publishers,
            total_messages_per_stream: per_stream,
        }),
        post_timeout: shape.post_timeout,
    })
}

pub async fn run(args: &FanoutArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let shape = &args.shape;
    let streams = u64::from(stream_count(shape.publishers, shape.rooms));
    let per_stream = stream_messages_per_step(args.rate, args.duration, args.messages, streams);
    let size = room_size(shape.connections, shape.rooms)?;
    let planned = Duration::from_secs_f64(f64::from(shape.rooms * size) / shape.connect_rate)
        + args.duration
        + shape.drain;
    let mut session = start(
        publishing_start(
            "fanout",
            serde_json::to_value(args)?,
            &args.target,
            shape,
            per_stream,
            planned,
        )?,
        cancel,
    )
    .await?;
    session.report.connect = session.connect(shape.connect_rate).await;
    let connected = session.report.connect.as_ref().map_or(0, |c| c.connected);
    if connected > 0 {
        if let Some(step) = session
            .publish(PublishStep {
                step: 0,
                rate: args.rate,
                duration: args.duration,
                max_messages: args.messages,
                payload_bytes: shape.payload,
                drain: shape.drain,
            })
            .await
        {
            session.report.steps.push(step);
        }
    } else if !session.cancel.is_cancelled() {
        session
            .report
            .errors
            .push("no connection could be opened: nothing was published".into());
    }
    Ok(session.finish(&[]).await)
}
