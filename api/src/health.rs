//! Liveness and readiness probes.
//!
//! Readiness asks the database and the broker, each bounded by
//! [`shared::health::PROBE_TIMEOUT`]: a dependency that does not answer in
//! time counts as down, so a load balancer hears "not ready" within a
//! second of an outage rather than after the pool's acquire timeout.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Per dependency: `ok` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<&'static str>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        database: None,
        broker: None,
    })
}

/// The process can serve: its database and broker answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Health), (status = 503, description = "The database or the broker does not answer", body = Health)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (db, broker) = tokio::join!(
        shared::health::probe(state.store.ping()),
        shared::health::probe(state.broker.ping())
    );
    let label = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ready = db && broker;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: label(ready),
            database: Some(label(db)),
            broker: Some(label(broker)),
        }),
    )
}
