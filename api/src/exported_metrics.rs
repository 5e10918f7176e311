//! Every metric the api exports, described and registered at start-up.
//!
//! The Prometheus exporter only shows a series once something touched it,
//! so a fresh api would lack its failure counters (publish failures, refresh
//! token reuse) and a dashboard would say "no data" where the truth is
//! zero. Each series is registered at zero here, in one place; labelled
//! counters start with their known label values: login outcomes, every
//! error code, and for the HTTP metrics each documented route with its
//! documented success status. The recorder must be installed first
//! (`shared::shutdown::run_until_signal` does it before building the
//! service); without one this does nothing.

use crate::error::ApiError;
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use utoipa::openapi::OpenApi;

/// Describes and registers the api's metrics (and those of the message
/// appender it runs); `openapi` lists the routes.
pub fn register(openapi: &OpenApi) {
    describe_counter!("api_signups_total", "Accounts created");
    describe_counter!(
        "api_logins_total",
        "Logins, by outcome (ok, failed, suspended: right credentials of a suspended account)"
    );
    describe_counter!(
        "api_refresh_reuse_total",
        "Refresh tokens presented again after rotation (the session is revoked)"
    );
    describe_counter!(
        "api_audit_failures_total",
        "Security events that could not be stored in the audit log (they are still logged)"
    );
    counter!("api_audit_failures_total").increment(0);
    describe_counter!("api_messages_posted_total", "Messages committed");
    describe_counter!("api_searches_total", "Message searches answered");
    counter!("api_searches_total").increment(0);
    describe_counter!(
        "api_server_events_published_total",
        "Custom events committed through the server publish api"
    );
    describe_counter!(
        "api_server_signals_published_total",
        "Signals published through the server publish api, by target (room, user)"
    );
    describe_histogram!(
        "api_publish_seconds",
        Unit::Seconds,
        "Time to publish a committed event to the broker"
    );
    describe_counter!(
        "api_publish_failures_total",
        "Committed events whose publish failed (retried in the background; gateways also recover them from the store)"
    );
    describe_counter!(
        "api_publish_retries_total",
        "Background retries of failed publishes, by outcome: published, gave_up (after about 13 s), dropped (too many retrying at once)"
    );
    describe_counter!("api_errors_total", "Error responses, by error code");
    describe_counter!(
        "api_mail_jobs_total",
        "Mail jobs settled by this node, by outcome: sent, skipped (no mail was due: no such account, verified already, over the hourly limit), retried (an attempt failed), parked (no attempts left)"
    );
    describe_histogram!(
        "api_mail_send_seconds",
        Unit::Seconds,
        "Time to make and send one mail (token, template, mailer)"
    );
    describe_counter!(
        "api_email_verifications_total",
        "Addresses verified through a mailed link"
    );
    describe_counter!(
        "api_accounts_deleted_total",
        "Accounts deleted by their owners"
    );
    describe_counter!(
        "api_password_resets_total",
        "Passwords reset through a mailed link"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route template"
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );

    for name in [
        "api_signups_total",
        "api_refresh_reuse_total",
        "api_messages_posted_total",
        "api_server_events_published_total",
        "api_publish_failures_total",
        "api_email_verifications_total",
        "api_password_resets_total",
        "api_accounts_deleted_total",
    ] {
        counter!(name).increment(0);
    }
    for to in ["room", "user"] {
        counter!("api_server_signals_published_total", "to" => to).increment(0);
    }
    for outcome in ["ok", "failed", "suspended"] {
        counter!("api_logins_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["published", "gave_up", "dropped"] {
        counter!("api_publish_retries_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["sent", "skipped", "retried", "parked"] {
        counter!("api_mail_jobs_total", "outcome" => outcome).increment(0);
    }
    let _ = histogram!("api_mail_send_seconds");
    for code in ApiError::CODES {
        counter!("api_errors_total", "code" => *code).increment(0);
    }
    // Taking a handle registers a histogram (exported with zero counts).
    let _ = histogram!("api_publish_seconds");
    for (method, route, status) in documented_routes(openapi) {
        let _ = histogram!("http_request_duration_seconds", "method" => method, "route" => route.clone());
        counter!("http_requests_total", "method" => method, "route" => route, "status" => status)
            .increment(0);
    }
    crate::attachments::register_metrics();
    crate::profiles::register_metrics();
    store::register_metrics();
    broker::register_metrics();
}

/// (method, route template, first documented 2xx status) of each operation.
fn documented_routes(openapi: &OpenApi) -> Vec<(&'static str, String, String)> {
    let mut routes = Vec::new();
    for (path, item) in &openapi.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let success = operation
                .responses
                .responses
                .keys()
                .find(|status| status.starts_with('2'));
            if let Some(status) = success {
                routes.push((method, path.clone(), status.clone()));
            }
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operation_has_a_route_and_a_success_status() {
        use utoipa::OpenApi as _;
        let (_, openapi) = utoipa_axum::router::OpenApiRouter::<crate::AppState>::with_openapi(
            crate::openapi::ApiDoc::openapi(),
        )
        .nest("/v1", crate::rooms::router())
        .split_for_parts();
        let routes = documented_routes(&openapi);
        assert!(
            routes.contains(&("GET", "/v1/rooms/{room_id}".to_owned(), "200".to_owned())),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|(method, _, status)| *method == "POST" && status == "201"),
            "{routes:?}"
        );
    }
}
