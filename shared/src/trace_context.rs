//! W3C trace context across the broker: one trace from a request on the api
//! to the fan-out on every gateway that delivers its event.
//!
//! The api publishes an event as its JSON frame, and gateways forward those
//! exact bytes to JSON clients. So the context travels in front of the frame,
//! never inside it. A sampled event is published as a small header block,
//! then the frame:
//!
//! ```text
//! traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n
//! tracestate: vendor=value\n          (only when there is one)
//! \n
//! {"type":"event",...}
//! ```
//!
//! and every other event as the bare frame, which always starts with `{`.
//! A gateway tells the two apart by the first byte and, for a traced payload,
//! slices the frame out of the same buffer ([`split`]): no copy and no
//! re-encoding either way, and no client ever sees the context. Only sampled
//! spans carry it ([`publishable`]), so an unsampled event costs the api one
//! look at its span and the gateway one byte comparison.
//!
//! Incoming HTTP requests may carry a `traceparent` header too
//! ([`continue_from_headers`]): a client's trace then runs on through the api
//! and the gateways, and the (parent-based) sampler follows its decision.

use axum::http::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How a traced payload starts; a bare event frame starts with `{`.
const MARKER: &[u8] = b"traceparent: ";

/// Longest header block a gateway looks through for its end: a
/// `traceparent` (55 bytes) and the largest `tracestate` the W3C allows
/// (512 bytes), with their names, fit with room to spare.
const MAX_HEADER_BYTES: usize = 1024;

/// `frame` as it should be published from inside the current span: with the
/// span's trace context in front when the span is sampled, else untouched
/// (the same buffer).
pub fn publishable(frame: Bytes) -> Bytes {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_sampled() {
        return frame;
    }
    let mut headers = Headers::default();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    if headers.0.is_empty() {
        return frame;
    }
    let size = headers
        .0
        .iter()
        .map(|(k, v)| k.len() + v.len() + 3)
        .sum::<usize>()
        + 1
        + frame.len();
    let mut out = BytesMut::with_capacity(size);
    for (name, value) in &headers.0 {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame);
    out.freeze()
}

/// Splits a published payload into the frame (a slice of the same buffer)
/// and, when it carried one, the publisher's trace context. A payload
/// without a context comes back as it is; so does one whose header block
/// never ends (the caller's frame parser then rejects it). A context that
/// does not parse is dropped, never the frame.
pub fn split(payload: Bytes) -> (Bytes, Option<RemoteParent>) {
    if !payload.starts_with(MARKER) {
        return (payload, None);
    }
    let window = &payload[..payload.len().min(MAX_HEADER_BYTES)];
    let Some(end) = window.windows(2).position(|w| w == b"\n\n") else {
        return (payload, None);
    };
    let parent = std::str::from_utf8(&payload[..end]).ok().and_then(|block| {
        let headers = Parsed(
            block
                .split('\n')
                .filter_map(|line| line.split_once(": "))
                .collect(),
        );
        let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &headers);
        let valid = cx.span().span_context().is_valid();
        valid.then_some(RemoteParent(cx))
    });
    (payload.slice(end + 2..), parent)
}

/// Makes `span` (created, not yet entered) a child of the request's
/// `traceparent`, when it has a valid one.
pub fn continue_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx =
        TraceContextPropagator::new().extract_with_context(&Context::new(), &HttpHeaders(headers));
    if cx.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, when there is nothing to continue.
        let _ = span.set_parent(cx);
    }
}

/// The span a published event came from, on another node.
pub struct RemoteParent(Context);

impl RemoteParent {
    /// Makes `span` (created, not yet entered) a child of the remote span.
    pub fn adopt(self, span: &tracing::Span) {
        // Fails only without an OpenTelemetry layer, when there is nothing to continue.
        let _ = span.set_parent(self.0);
    }
}

/// Header lines to write, in the order the propagator gives them.
#[derive(Default)]
struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        // Only the two W3C names are written; an empty `tracestate` and any
        // value that would break the line format are left out.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        if !value.is_empty() && !value.contains('\n') {
            self.0.push((name, value));
        }
    }
}

/// Header lines read back from a payload.
struct Parsed<'a>(Vec<(&'a str, &'a str)>);

impl Extractor for Parsed<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    const FRAME: &[u8] = br#"{"type":"event","room_id":1,"seq":7,"kind":"message.created"}"#;

    /// Runs `f` under a subscriber that traces with `sampler` (this thread only).
    fn traced<T>(sampler: Sampler, f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn ids(span: &tracing::Span) -> (TraceId, SpanId) {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    }

    #[test]
    fn without_a_tracer_the_frame_is_published_in_its_own_buffer() {
        let frame = Bytes::from_static(FRAME);
        let published = publishable(frame.clone());
        assert_eq!(published.as_ptr(), frame.as_ptr());
        assert_eq!(published, frame);
    }

    #[test]
    fn an_unsampled_span_publishes_the_frame_untouched() {
        let frame = Bytes::from_static(FRAME);
        let published = traced(Sampler::AlwaysOff, || {
            let span = tracing::info_span!("publish");
            let _entered = span.enter();
            publishable(frame.clone())
        });
        assert_eq!(published.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn a_sampled_span_puts_its_context_in_front_and_split_gives_back_the_same_frame() {
        let frame = Bytes::from_static(FRAME);
        let ((trace_id, span_id), published) = traced(Sampler::AlwaysOn, || {
            let span = tracing::info_span!("publish");
            let _entered = span.enter();
            (ids(&span), publishable(frame.clone()))
        });
        let expected = format!("traceparent: 00-{trace_id}-{span_id}-01\n\n");
        assert!(
            published.starts_with(expected.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&published)
        );

        let (bare, parent) = split(published.clone());
        assert_eq!(bare, frame);
        // The frame is a view into the published buffer, not a copy.
        assert_eq!(bare.as_ptr(), published[expected.len()..].as_ptr());
        let parent = parent.expect("a context");
        let sc = parent.0.span().span_context().clone();
        assert_eq!((sc.trace_id(), sc.span_id()), (trace_id, span_id));
        assert!(sc.is_remote() && sc.is_sampled());
        // A span adopted by it joins the trace (its parent span id is
        // checked end to end in node/tests/tracing.rs).
        let child_trace = traced(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            let child = tracing::info_span!("deliver");
            parent.adopt(&child);
            let _entered = child.enter();
            let cx = child.context();
            assert!(cx.span().span_context().is_sampled());
            cx.span().span_context().trace_id()
        });
        assert_eq!(child_trace, trace_id);
    }

    #[test]
    fn a_tracestate_travels_with_the_traceparent() {
        let payload = Bytes::from(
            [
                b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\ntracestate: vendor=abc\n\n".as_slice(),
                FRAME,
            ]
            .concat(),
        );
        let (bare, parent) = split(payload);
        assert_eq!(bare, FRAME);
        let parent = parent.expect("a context");
        let sc = parent.0.span().span_context().clone();
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(sc.trace_state().get("vendor"), Some("abc"));
        assert!(sc.is_remote() && sc.is_sampled());
    }

    #[test]
    fn a_bare_frame_splits_into_itself() {
        let frame = Bytes::from_static(FRAME);
        let (bare, parent) = split(frame.clone());
        assert!(parent.is_none());
        assert_eq!(bare.as_ptr(), frame.as_ptr());
        assert_eq!(bare.len(), frame.len());
    }

    #[test]
    fn a_malformed_context_is_dropped_but_the_frame_is_kept() {
        let payload = Bytes::from([b"traceparent: not-a-context\n\n".as_slice(), FRAME].concat());
        let (bare, parent) = split(payload);
        assert!(parent.is_none());
        assert_eq!(bare, FRAME);
    }

    #[test]
    fn a_header_block_that_never_ends_is_left_for_the_frame_parser_to_reject() {
        let payload = Bytes::from(format!("traceparent: {}", "0".repeat(2 * MAX_HEADER_BYTES)));
        let (bare, parent) = split(payload.clone());
        assert!(parent.is_none());
        assert_eq!(bare, payload);
    }

    #[test]
    fn a_request_traceparent_becomes_the_parent_of_the_request_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let (trace_id, _) = traced(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            let span = tracing::info_span!("request");
            continue_from_headers(&span, &headers);
            let _entered = span.enter();
            assert!(span.context().span().span_context().is_sampled());
            ids(&span)
        });
        assert_eq!(
            trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
    }
}
