//! One trace from `POST /v1/rooms/{id}/messages` to the fan-out on every
//! gateway that delivers the message, recorded by an in-memory exporter.
//!
//! A test binary of its own: the tracing subscriber is global per process,
//! and the one installed here records spans for every test in the binary
//! (each test only looks at the trace ids it made up).

use broker::{Delivery, Topic};
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use serde_json::json;
use shared::config::{LogFormat, TelemetryArgs, TraceSampler};
use shared::model::RoomEvent;
use shared::protocol::event_frame_json;
use std::sync::OnceLock;
use std::time::Duration;
use testkit::{Mode, Options, TestApp, TestUser, both_modes};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long spans may take to be exported after the frames arrived (the
/// request span ends once the response body is sent).
const SPAN_WAIT: Duration = Duration::from_secs(10);

/// The process's span exporter, installed on first use behind the
/// production sampler set to `parentbased_always_off`: only traces a client
/// asks for with a sampled `traceparent` are recorded, so the setup's own
/// requests add nothing.
fn spans() -> &'static InMemorySpanExporter {
    static TRACING: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _) = TRACING.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let args = TelemetryArgs {
            log_filter: "info".into(),
            log_format: LogFormat::Pretty,
            otlp_endpoint: None,
            traces_sampler: TraceSampler::ParentbasedAlwaysOff,
            traces_sampler_arg: 1.0,
            metrics_addr: None,
        };
        let provider = shared::telemetry::tracer_provider(&args, "parley-test")
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("parley-test")))
            .init();
        (exporter, provider)
    });
    exporter
}

fn finished(trace_id: TraceId) -> Vec<SpanData> {
    spans()
        .get_finished_spans()
        .expect("reading finished spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// A made-up client span: its trace id and span id.
fn client_span() -> (TraceId, SpanId) {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    (
        TraceId::from_hex(&hex).expect("32 hex digits"),
        SpanId::from_hex(&span[..16]).expect("16 hex digits"),
    )
}

/// Posts `body` as `user` with a `traceparent` header.
async fn post_traced(
    app: &TestApp,
    user: &TestUser,
    room: shared::RoomId,
    body: &str,
    traceparent: String,
) -> RoomEvent {
    let response = reqwest::Client::new()
        .post(app.url(&format!("/v1/rooms/{room}/messages")))
        .bearer_auth(&user.token)
        .header("traceparent", traceparent)
        .json(&json!({ "body": body }))
        .send()
        .await
        .expect("posting");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("a room event")
}

both_modes!(a_posted_message_is_one_trace_through_every_gateway_that_delivers_it);

async fn a_posted_message_is_one_trace_through_every_gateway_that_delivers_it(mode: Mode) {
    spans();
    // Cluster: alice on gateway 0, bob and carol on gateway 1, so each
    // gateway's `deliver` span is told apart by its member count.
    // Single node: all three on the one node.
    let app = TestApp::spawn_with(
        mode,
        Options {
            gateways: 2,
            ..Options::default()
        },
    )
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "traced").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;
    let mut clients = vec![
        app.ws(0, &alice).await,
        app.ws(1, &bob).await,
        app.ws(1, &carol).await,
    ];
    for client in &mut clients {
        client.join(room).await.expect("joining");
    }
    // Cluster: what the api publishes on Redis, as another subscriber sees it.
    let tap = match mode {
        Mode::Cluster | Mode::RedisCluster => {
            let broker = broker::connect(&shared::config::RedisArgs {
                redis_url: Some(app.redis_url().to_owned()),
                redis_prefix: app.redis_prefix.clone(),
                ..shared::config::RedisArgs::in_process()
            })
            .await
            .expect("connecting to Redis");
            let tap = broker.subscribe().await.expect("subscribing");
            tap.control
                .add(&[Topic::Room(room)])
                .await
                .expect("subscribing to the room");
            Some((broker, tap))
        }
        Mode::Single => None,
    };
    let expected_members: Vec<Value> = match app.gateway_count() {
        1 => vec![Value::I64(3)],
        _ => vec![Value::I64(1), Value::I64(2)],
    };

    // A client trace that is not sampled, then one that is.
    let (unsampled, unsampled_parent) = client_span();
    let quiet = post_traced(
        &app,
        &alice,
        room,
        "not traced",
        format!("00-{unsampled}-{unsampled_parent}-00"),
    )
    .await;
    let (trace_id, client_parent) = client_span();
    let traced = post_traced(
        &app,
        &alice,
        room,
        "traced",
        format!("00-{trace_id}-{client_parent}-01"),
    )
    .await;

    // Every client gets both events as the bare event frames, byte for byte:
    // no trace context reaches a client.
    for client in &mut clients {
        assert_eq!(client.raw().await, event_frame_json(&quiet).to_vec());
        assert_eq!(client.raw().await, event_frame_json(&traced).to_vec());
    }

    let gateways_with_members = expected_members.len();
    let complete = testkit::eventually(SPAN_WAIT, move || async move {
        let spans = finished(trace_id);
        let delivers = spans.iter().filter(|s| s.name == "deliver").count();
        spans.iter().any(|s| s.name == "request")
            && spans.iter().any(|s| s.name == "publish")
            && delivers >= gateways_with_members
    })
    .await;
    let spans = finished(trace_id);
    assert!(complete, "spans of the trace: {spans:#?}");

    // The api's request span continues the client's trace...
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.parent_span_id, client_parent);
    assert!(request.parent_span_is_remote);
    // ...and the event is published from one span in it...
    let publishes: Vec<&SpanData> = spans.iter().filter(|s| s.name == "publish").collect();
    assert_eq!(publishes.len(), 1, "{publishes:#?}");
    let publish = publishes[0];
    assert_eq!(attribute(publish, "seq"), Some(Value::I64(traced.seq)));
    // ...whose children are one `deliver` span per gateway with members.
    let delivers: Vec<&SpanData> = spans.iter().filter(|s| s.name == "deliver").collect();
    assert_eq!(delivers.len(), expected_members.len(), "{delivers:#?}");
    for deliver in &delivers {
        assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
        assert!(deliver.parent_span_is_remote);
        assert_eq!(attribute(deliver, "seq"), Some(Value::I64(traced.seq)));
        assert_eq!(
            attribute(deliver, "members"),
            attribute(deliver, "delivered")
        );
    }
    let mut members: Vec<Value> = delivers
        .iter()
        .filter_map(|s| attribute(s, "members"))
        .collect();
    members.sort_by_key(|v| v.to_string());
    assert_eq!(members, expected_members);

    if let Some((broker, mut tap)) = tap {
        // On the wire between the nodes: the unsampled event is the bare
        // frame, the sampled one has its context in front.
        let mut payloads = Vec::new();
        while payloads.len() < 2 {
            match tap.deliveries.recv().await {
                Some(Delivery::Message { payload, .. }) => payloads.push(payload),
                Some(Delivery::Reconnected | Delivery::Lost) => {}
                None => panic!("the tap ended"),
            }
        }
        assert_eq!(payloads[0], event_frame_json(&quiet));
        let prefix = format!(
            "traceparent: 00-{trace_id}-{}-01\n\n",
            publish.span_context.span_id()
        );
        assert_eq!(
            payloads[1],
            [prefix.as_bytes(), &event_frame_json(&traced)[..]].concat(),
        );
        tap.control.close().await;
        broker.close().await;
    }
    app.stop().await;
}
