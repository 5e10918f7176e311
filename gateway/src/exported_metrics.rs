//! Every metric the gateway exports, described and registered at start-up.
//!
//! The Prometheus exporter only shows a series once something touched it,
//! so a metric counted on rare events (gaps, slow consumers, subscribe
//! failures) would be missing from a fresh node and its dashboard panel
//! would say "no data" where the truth is zero. Registering each series at
//! zero here, in one place, makes a fresh node export all of them; the
//! labelled counters start with every label value the code can produce.
//! The recorder must be installed first (`shared::shutdown::run_until_signal`
//! does it before building the service); without one this does nothing.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use shared::protocol::close;

/// Outcomes of `gateway_connections_total` besides the close codes of a
/// refused connection.
const CONNECTION_OUTCOMES: &[&str] = &["ready", "over_capacity", "shutting_down"];

/// Describes and registers the gateway's metrics (and the broker's, which it
/// subscribes through).
pub fn register() {
    describe_gauge!(
        "gateway_connections",
        "Authenticated WebSocket connections on this node"
    );
    describe_counter!(
        "gateway_connections_total",
        "WebSocket connections by outcome: ready, over_capacity, shutting_down, or the close code that refused them"
    );
    describe_counter!(
        "gateway_sse_streams_total",
        "Server-Sent Events streams: open (authenticated and registered) or refused (authentication failed)"
    );
    for outcome in ["open", "refused"] {
        counter!("gateway_sse_streams_total", "outcome" => outcome).increment(0);
    }
    describe_counter!(
        "gateway_auth_cache_total",
        "Session checks (kind=session) and join membership checks (kind=membership) answered by what the node knows (hit) or by a store query (miss)"
    );
    for kind in ["session", "membership"] {
        for outcome in ["hit", "miss"] {
            counter!("gateway_auth_cache_total", "kind" => kind, "outcome" => outcome).increment(0);
        }
    }
    describe_counter!(
        "gateway_member_lists_total",
        "Member lists read from the store for a room becoming live on this node: listed, too_many (over the per-room limit, not kept), failed"
    );
    for outcome in ["listed", "too_many", "failed"] {
        counter!("gateway_member_lists_total", "outcome" => outcome).increment(0);
    }
    describe_gauge!(
        "gateway_known_members",
        "Member ids the node keeps for its live rooms (bounded by the node's budget)"
    );
    gauge!("gateway_known_members").set(0.0);
    describe_counter!(
        "gateway_disconnects_total",
        "Authenticated connections that ended, by close reason"
    );
    describe_counter!(
        "gateway_client_frames_total",
        "Frames received from authenticated clients and decoded"
    );
    describe_counter!(
        "gateway_socket_writes_total",
        "Socket writes to clients (with gateway_deliveries_total: events per write)"
    );
    describe_counter!(
        "gateway_deliveries_total",
        "Room events written to client connections"
    );
    describe_histogram!(
        "gateway_event_lag_seconds",
        Unit::Seconds,
        "Time from an event's commit to its delivery by this node"
    );
    describe_counter!(
        "gateway_duplicate_events_total",
        "Room events received twice and dropped"
    );
    describe_counter!(
        "gateway_gap_fills_total",
        "Missing room events read from the store"
    );
    describe_counter!(
        "gateway_gaps_skipped_total",
        "Gaps in a room's events that the store could not fill"
    );
    describe_counter!(
        "gateway_slow_consumers_total",
        "Connections closed with 4009 because their outbound queue overflowed"
    );
    describe_counter!(
        "gateway_subscribe_failures_total",
        "Broker subscriptions that failed or timed out"
    );
    describe_counter!(
        "gateway_typing_frames_total",
        "Typing frames from clients: forwarded, or throttled (dropped silently)"
    );
    describe_counter!(
        "gateway_publish_failures_total",
        "Ephemeral events (typing, read markers) the gateway could not publish"
    );
    describe_counter!(
        "gateway_backlog_reads_total",
        "Reads of past events (resumes, gap fills) by source: window, database, or shared with a read in flight"
    );
    describe_counter!(
        "gateway_resumes_total",
        "Joins with since_seq: complete, over_limit (told to page the history), unavailable (nothing could be read)"
    );
    describe_counter!(
        "gateway_presence_changes_total",
        "Presence changes this node reported (a user's first connection here, or a room entered or left)"
    );
    describe_counter!(
        "gateway_presence_resyncs_total",
        "Times this node re-reported all its presence under a new id (a lost lease or a failed report)"
    );
    describe_counter!(
        "gateway_presence_reaped_total",
        "Presence entries this node removed for gateways whose leases expired"
    );

    // increment(0), not set(0): registering must not reset a value another
    // gateway in the same process (the test harness) already counts.
    gauge!("gateway_connections").increment(0.0);
    for outcome in CONNECTION_OUTCOMES {
        counter!("gateway_connections_total", "outcome" => *outcome).increment(0);
    }
    for &code in close::ALL {
        counter!("gateway_connections_total", "outcome" => close::name(code)).increment(0);
        counter!("gateway_disconnects_total", "reason" => close::name(code)).increment(0);
    }
    for name in [
        "gateway_client_frames_total",
        "gateway_socket_writes_total",
        "gateway_deliveries_total",
        "gateway_duplicate_events_total",
        "gateway_gap_fills_total",
        "gateway_gaps_skipped_total",
        "gateway_slow_consumers_total",
        "gateway_subscribe_failures_total",
        "gateway_publish_failures_total",
        "gateway_presence_changes_total",
        "gateway_presence_resyncs_total",
        "gateway_presence_reaped_total",
    ] {
        counter!(name).increment(0);
    }
    for outcome in ["forwarded", "throttled"] {
        counter!("gateway_typing_frames_total", "outcome" => outcome).increment(0);
    }
    for source in ["window", "database", "shared"] {
        counter!("gateway_backlog_reads_total", "source" => source).increment(0);
    }
    for outcome in ["complete", "over_limit", "unavailable"] {
        counter!("gateway_resumes_total", "outcome" => outcome).increment(0);
    }
    // Taking a handle registers the histogram (exported with zero counts).
    let _ = metrics::histogram!("gateway_event_lag_seconds");
    broker::register_metrics();
    store::register_metrics();
}
