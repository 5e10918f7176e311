//! `ramp`: fanout at rising rates, one step after another on the same
//! connections, until a step misses its bound; the answer is the highest
//! rate held.

use super::fanout::publishing_start;
use super::start;
use crate::cli::RampArgs;
use crate::metrics::total;
use crate::plan::{stream_count, stream_messages_per_step};
use crate::report::{RampOutcome, Report};
use crate::work::{PublishStep, StepReport};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a step did not hold, or None if it did: p99 within the bound, and
/// nothing lost, failed, skipped or left undelivered.
pub fn verdict(step: &StepReport, p99_bound: Duration) -> Option<String> {
    let p99_ms = step.deliveries.latency.summary().p99_ms;
    let bound_ms = p99_bound.as_secs_f64() * 1000.0;
    let mut why = Vec::new();
    if step.deliveries.latency.is_empty() {
        why.push("nothing was delivered".to_owned());
    }
    if p99_ms > bound_ms {
        why.push(format!("p99 {p99_ms:.1} ms > {bound_ms:.1} ms"));
    }
    if step.tally.lost > 0 {
        why.push(format!("{} deliveries lost", step.tally.lost));
    }
    let failed = total(&step.post_failures);
    if failed > 0 {
        why.push(format!("{failed} posts failed"));
    }
    if step.not_sent > 0 {
        why.push(format!(
            "{} posts never sent (schedule too far behind)",
            step.not_sent
        ));
    }
    if !step.drained {
        why.push("deliveries still missing after the drain".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

pub async fn run(args: &RampArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let shape = &args.shape;
    let rates = args.rates();
    anyhow::ensure!(!rates.is_empty(), "--start-rate is above --max-rate");
    let streams = u64::from(stream_count(shape.publishers, shape.rooms));
    let warmup = args.warmup_step();
    let per_stream: u64 = rates
        .iter()
        .map(|&r| stream_messages_per_step(r, args.step_duration, None, streams))
        .sum::<u64>()
        + warmup.map_or(0, |(r, d)| stream_messages_per_step(r, d, None, streams));
    let planned = Duration::from_secs_f64(f64::from(shape.connections) / shape.connect_rate)
        + (args.step_duration + shape.drain) * rates.len() as u32
        + warmup.map_or(Duration::ZERO, |(_, d)| d + shape.drain);
    let mut session = start(
        publishing_start(
            "ramp",
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
    let mut verdicts = Vec::new();
    let mut outcome = RampOutcome {
        p99_bound_ms: args.p99_bound.as_secs_f64() * 1000.0,
        highest_rate_held: None,
        stopped_because: "every step held up to --max-rate".into(),
    };
    if connected == 0 {
        outcome.stopped_because = "no connection could be opened".into();
    }
    // The warm-up, if any, is step 0 of the report and never judged; the
    // judged steps follow it.
    let steps = warmup
        .map(|(rate, duration)| (rate, duration, false))
        .into_iter()
        .chain(rates.iter().map(|&rate| (rate, args.step_duration, true)));
    for (i, (rate, duration, judged)) in steps.enumerate() {
        if connected == 0 {
            break;
        }
        let Some(step) = session
            .publish(PublishStep {
                step: i as u32,
                rate,
                duration,
                max_messages: None,
                payload_bytes: shape.payload,
                drain: shape.drain,
            })
            .await
        else {
            outcome.stopped_because = "interrupted".into();
            break;
        };
        let v = if judged {
            verdict(&step, args.p99_bound)
        } else {
            Some("warm-up, not judged".to_owned())
        };
        session.report.steps.push(step);
        verdicts.push(v.clone());
        if !judged {
            continue;
        }
        match v {
            None => outcome.highest_rate_held = Some(rate),
            Some(why) => {
                outcome.stopped_because =
                    format!("step {i} at {rate:.1} msg/s did not hold: {why}");
                break;
            }
        }
    }
    session.report.ramp = Some(outcome);
    Ok(session.finish(&verdicts).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Tally;

    fn step(latencies_ms: &[u64], lost: u64) -> StepReport {
        let mut s = StepReport {
            drained: true,
            tally: Tally {
                lost,
                ..Tally::default()
            },
            ..StepReport::default()
        };
        for &ms in latencies_ms {
            s.deliveries.latency.record_us(ms * 1000);
        }
        s
    }

    #[test]
    fn a_step_holds_within_the_bound_and_without_loss() {
        let bound = Duration::from_millis(250);
        let fast: Vec<u64> = (1..=100).collect();
        assert_eq!(verdict(&step(&fast, 0), bound), None);
        let mut slow = fast.clone();
        slow.extend([400, 400]);
        assert!(verdict(&step(&slow, 0), bound).unwrap().starts_with("p99"));
        assert!(
            verdict(&step(&fast, 3), bound)
                .unwrap()
                .contains("3 deliveries lost")
        );
        assert!(
            verdict(&step(&[], 0), bound)
                .unwrap()
                .contains("nothing was delivered")
        );
    }
}
