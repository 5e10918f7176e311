//! Open-loop publishing through the REST api.
//!
//! Each stream (one publisher posting into one room) follows a fixed
//! schedule: post `k` is due at `start + offset + k / rate`, whatever
//! happened to post `k - 1`. The body carries the *scheduled* time, so the
//! measured latency includes any time a post waited because the api (or
//! the tool) fell behind: the coordinated-omission trap of closed-loop
//! tools. Posts of one stream are sent one after another (a chat client
//! sends in order and waits for its answer), which is what makes the
//! per-publisher counter check meaningful; concurrency comes from many
//! streams.

use crate::body::{self, BodyHeader};
use crate::clock;
use crate::fleet::Shared;
use crate::net::describe_io_error;
use crate::work::{LATE_SEND, StreamSpec};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A stream that is this far past the end of its step stops and counts
/// the posts it never sent, so an overloaded api cannot stretch a step
/// indefinitely.
const OVERRUN_LIMIT: Duration = Duration::from_secs(5);

/// A stream's identity and its counter, which continues across steps.
pub struct StreamState {
    pub spec: StreamSpec,
    url: String,
    auth: HeaderValue,
    counter: AtomicU32,
}

impl StreamState {
    pub fn new(api: &str, spec: &StreamSpec) -> Self {
        let auth = HeaderValue::from_str(&format!("Bearer {}", spec.token))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
        Self {
            url: format!("{api}/v1/rooms/{}/messages", spec.room_id),
            auth,
            counter: AtomicU32::new(0),
            spec: spec.clone(),
        }
    }
}

/// One step's schedule, common to every stream of the worker.
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub step: u32,
    pub start: Instant,
    pub end: Instant,
    pub rate_per_stream: f64,
    pub total_streams: u64,
    pub max_messages: Option<u64>,
    pub payload_bytes: usize,
    pub post_timeout: Duration,
}

/// What a stream reports at the end of a step (latency and failures go
/// straight into the fleet's shared histogram and table).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamCounts {
    pub late: u64,
    pub max_lag: Duration,
    pub not_sent: u64,
}

/// The part of the 201 answer we need.
#[derive(Deserialize)]
struct Posted {
    seq: i64,
}

/// This stream's share of a message cap: the cap split evenly, the first
/// `cap % streams` streams taking one more.
pub fn quota(max_messages: Option<u64>, index: u64, streams: u64) -> u64 {
    match max_messages {
        None => u64::MAX,
        Some(m) => m / streams.max(1) + u64::from(index < m % streams.max(1)),
    }
}

/// Runs one stream for one step.
pub(crate) async fn run_stream(
    shared: Arc<Shared>,
    http: reqwest::Client,
    stream: Arc<StreamState>,
    plan: StepPlan,
    cancel: CancellationToken,
) -> StreamCounts {
    let mut counts = StreamCounts::default();
    if plan.rate_per_stream <= 0.0 || !plan.rate_per_stream.is_finite() {
        return counts;
    }
    let interval = Duration::from_secs_f64(1.0 / plan.rate_per_stream);
    // Streams are staggered over one interval so the total rate is smooth.
    let offset = interval.mul_f64(stream.spec.index as f64 / plan.total_streams.max(1) as f64);
    let quota = quota(
        plan.max_messages,
        u64::from(stream.spec.index),
        plan.total_streams,
    );
    let mut next = plan.start + offset;
    let mut sent = 0u64;
    let mut text = String::with_capacity(plan.payload_bytes.max(body::MAX_HEADER_LEN));
    let ledger = shared.room_ledger.get(&stream.spec.room_id).copied();
    while sent < quota && next < plan.end {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = cancel.cancelled() => break,
        }
        let actual = Instant::now();
        if actual > plan.end + OVERRUN_LIMIT {
            let left = (plan.end.saturating_duration_since(next).as_secs_f64()
                / interval.as_secs_f64())
            .ceil() as u64;
            counts.not_sent += left.min(quota - sent);
            break;
        }
        let lag = actual.saturating_duration_since(next);
        if lag > LATE_SEND {
            counts.late += 1;
        }
        counts.max_lag = counts.max_lag.max(lag);
        let counter = stream.counter.fetch_add(1, Ordering::Relaxed);
        body::encode_into(
            &mut text,
            BodyHeader {
                publisher: stream.spec.publisher,
                counter,
                scheduled_us: clock::instant_us(next.into_std()),
            },
            plan.payload_bytes,
        );
        // Our bodies are ASCII letters, digits and spaces: no JSON escaping.
        let json = format!("{{\"body\":\"{text}\"}}");
        shared.posts_sent.fetch_add(1, Ordering::Relaxed);
        let sent_ms =
            u32::try_from(clock::instant_us(actual.into_std()) / 1000).unwrap_or(u32::MAX);
        match post(&http, &stream, json, plan.post_timeout).await {
            Ok(seq) => {
                let took = actual.elapsed();
                shared.posts_acked.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = ledger.and_then(|i| shared.ledgers.get(i as usize)) {
                    l.record_ack(seq, plan.step, sent_ms);
                }
                if let Ok(mut h) = shared.post_latency.lock() {
                    h.record_us(took.as_micros() as u64);
                }
            }
            Err(reason) => {
                shared.post_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut r) = shared.post_failure_reasons.lock() {
                    *r.entry(reason).or_default() += 1;
                }
            }
        }
        sent += 1;
        next += interval;
    }
    counts
}

/// One post; the seq of the stored event, or why it failed.
async fn post(
    http: &reqwest::Client,
    stream: &StreamState,
    json: String,
    timeout: Duration,
) -> Result<i64, String> {
    let request = http
        .post(&stream.url)
        .header(AUTHORIZATION, stream.auth.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(json)
        .send();
    let answer = async {
        let response = request.await.map_err(|e| describe_reqwest(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| describe_reqwest(&e))?;
        if status.as_u16() != 201 {
            let code = serde_json::from_slice::<shared::rest::ErrorBody>(&bytes)
                .map(|b| format!(" {}", b.error.code))
                .unwrap_or_default();
            return Err(format!("HTTP {}{code}", status.as_u16()));
        }
        serde_json::from_slice::<Posted>(&bytes)
            .map(|p| p.seq)
            .map_err(|_| "HTTP 201 without a seq".to_owned())
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("timeout: no answer within {timeout:?}"))?
}

/// A failure reason for a REST request: the OS's refusal when there is one.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let stage = if e.is_connect() { "connect" } else { "request" };
            return format!("{stage}: {}", describe_io_error(io));
        }
        source = err.source();
    }
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect: failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_cap_is_split_exactly_over_streams() {
        let total: u64 = (0..7).map(|i| quota(Some(100), i, 7)).sum();
        assert_eq!(total, 100);
        assert_eq!(quota(Some(100), 0, 7), 15);
        assert_eq!(quota(Some(100), 6, 7), 14);
        assert_eq!(quota(None, 3, 7), u64::MAX);
    }
}
