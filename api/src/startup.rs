//! Building and running the api.

use crate::config::{ApiConfig, PolicyArgs};
use crate::cors::CorsPolicy;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::{AppState, Tokens};
use crate::{
    accounts, admin, attachments, audit, auth, health, messages, presence, profiles, rooms, search,
    server, sse, users,
};
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::routing::get;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::{KeyExtractor, PeerIpKeyExtractor, SmartIpKeyExtractor};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Largest request body. The largest legitimate one is a 4000-character
/// message, under 20 KiB even fully escaped.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How often per-node caches and limiters forget what no longer matters.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The complete api (`/v1/...`, `/openapi.json`, `/healthz`, `/readyz`),
/// for a listener bound to `listen` (which decides the default CORS policy,
/// see [`crate::cors`]).
pub fn router(state: AppState, policy: &PolicyArgs, listen: IpAddr) -> Router {
    let per_minute = policy.auth_per_minute.max(1);
    let governor = GovernorConfigBuilder::default()
        .period(Duration::from_secs(60) / per_minute)
        .burst_size((per_minute / 5).max(5))
        .key_extractor(ClientIp {
            trust_proxy_headers: policy.trust_proxy_headers,
        })
        .finish()
        // 60 s / u32::MAX is still over 10 ns and the burst is at least 5,
        // so the quota is always valid.
        .expect("a non-zero period and burst make a valid rate limit");
    let credentials = auth::credential_router()
        .merge(accounts::credential_router())
        .layer(GovernorLayer::new(governor).error_handler(|e| {
            let retry_after_secs = match e {
                tower_governor::GovernorError::TooManyRequests { wait_time, .. } => wait_time,
                _ => 1,
            };
            tracing::warn!(target: "security", "per-IP rate limit hit on an auth endpoint");
            ApiError::RateLimited { retry_after_secs }.into_response()
        }));

    // Provisioning bodies are small but answers carry a token per user; the
    // request limit is the api's default.
    let admin_router = admin::router().merge(audit::admin_router());
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1/auth", credentials.merge(auth::session_router()))
        .nest(
            "/v1",
            rooms::router()
                .merge(messages::router())
                .merge(attachments::router())
                .merge(search::router())
                .merge(users::router())
                .merge(profiles::router())
                .merge(accounts::user_router())
                .merge(audit::user_router())
                .merge(presence::router())
                .merge(sse::router())
                .merge(server::router())
                .merge(admin_router),
        )
        .merge(health::router())
        .split_for_parts();
    let openapi = crate::openapi::complete(openapi);
    crate::exported_metrics::register(&openapi);
    let openapi = Arc::new(openapi);

    let mut router = api
        .route(
            "/openapi.json",
            get(move || std::future::ready(axum::Json(openapi.clone()))),
        )
        .fallback(|| std::future::ready(ApiError::NotFound))
        .method_not_allowed_fallback(|| std::future::ready(ApiError::MethodNotAllowed))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    if let Some(cors) = CorsPolicy::new(&policy.cors_allow_origins, listen).layer() {
        router = router
            .layer(cors)
            .layer(axum::middleware::from_fn(crate::cors::drop_ungranted));
    }
    router
        .layer(axum::middleware::from_fn(record_http_metrics))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                let span = tracing::info_span!("request", otel.kind = "server", method = %req.method(), path = %req.uri().path(), request_id);
                // A client's own trace continues through the api and on to the gateways.
                shared::trace_context::continue_from_headers(&span, req.headers());
                span
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}

/// `http_requests_total` and `http_request_duration_seconds` by route
/// template (`/v1/rooms/{room_id}`), never by raw path: ids would explode the
/// number of series.
async fn record_http_metrics(
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// The client IP used as the rate-limit key: the peer address, or the
/// proxy headers when configured to trust them.
#[derive(Clone, Copy)]
struct ClientIp {
    trust_proxy_headers: bool,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, tower_governor::GovernorError> {
        if self.trust_proxy_headers {
            SmartIpKeyExtractor.extract(req)
        } else {
            PeerIpKeyExtractor.extract(req)
        }
    }
}

/// Periodic upkeep of per-node caches and limiters, until `shutdown`.
pub fn maintenance(state: AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    state.sessions.evict_stale();
                    state.tokens.evict_expired();
                    state.limits.evict_stale();
                    state.verified.evict_stale();
                    // Every api node runs this; the deletes are idempotent
                    // and cheap (an index range), so no node is singled out.
                    let retention = i64::try_from(state.audit_retention.as_millis()).unwrap_or(i64::MAX);
                    match state.store.delete_security_events_before(shared::model::now_millis().saturating_sub(retention)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "security events past their retention deleted"),
                        Err(e) => tracing::warn!(error = %e, "deleting old security events failed"),
                    }
                    match state.store.delete_expired_sse_tickets(shared::model::now_millis()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(tickets = n, "deleted expired SSE tickets"),
                        Err(e) => tracing::warn!(error = %e, "deleting expired SSE tickets failed"),
                    }
                    match state.store.delete_expired_login_challenges(shared::model::now_millis()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(challenges = n, "deleted expired two-factor login challenges"),
                        Err(e) => tracing::warn!(error = %e, "deleting expired login challenges failed"),
                    }
                    attachments::sweep(&state).await;
                    accounts::finish_deletions(&state).await;
                    // Kept a day past expiry: the hourly mail limits count them.
                    match state.store.delete_account_tokens_expired_before(shared::model::now_millis() - 24 * 3600 * 1000).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(tokens = n, "deleted expired verification and reset tokens"),
                        Err(e) => tracing::warn!(error = %e, "deleting expired account tokens failed"),
                    }
                    let cutoff = shared::model::now_millis() - store::IDEMPOTENCY_TTL_MS;
                    match state.store.delete_idempotency_before(cutoff).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "expired idempotency records deleted"),
                        Err(e) => tracing::warn!(error = %e, "deleting expired idempotency records failed"),
                    }
                }
            }
        }
    })
}

/// The standalone api service.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connects the store (migrating it) and Redis, loads keys and binds the listener.
    pub async fn build(config: &ApiConfig) -> anyhow::Result<Self> {
        let url = config.database.database_url.as_deref().context(
            "PARLEY_DATABASE_URL is required (postgres://... for a cluster, sqlite://... for one node)",
        )?;
        let store = Store::connect(url, config.database.database_max_connections)
            .await
            .with_context(|| format!("connecting to {}", shared::config::redact_url(url)))?;
        if config.policy.migrate_on_start {
            store.migrate().await.context("migrating the database")?;
        }
        if config.redis.redis_url.is_none() {
            anyhow::bail!(
                "PARLEY_REDIS_URL is required: the api publishes events to gateways in other processes \
             (for everything in one process without Redis, run the single-node `parley` binary)"
            );
        }
        let broker = broker::connect(&config.redis).await?;
        let tokens = Tokens::from_config(&config.jwt, &config.data_dir)?;
        let mail = crate::mail::Mail::from_config(&config.mail, &config.data_dir)?;
        let state = AppState::new(
            store,
            broker,
            tokens,
            &config.policy,
            &config.attachments,
            &config.data_dir,
            mail,
        )?;
        let router = router(state.clone(), &config.policy, config.listen.ip());
        let listener = shared::system::listen(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, lets in-flight requests finish,
    /// then closes the message appender (committing what it holds), the
    /// broker and the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let upkeep = maintenance(self.state.clone(), shutdown.clone());
        let mail_sender = crate::mail::start(self.state.clone(), shutdown.clone());
        tracing::info!(addr = %self.listener.local_addr()?, "api listening");
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        shutdown.cancel();
        let _ = upkeep.await;
        let _ = mail_sender.await;
        self.state.appender.close().await;
        self.state.attachments.close().await;
        self.state.broker.close().await;
        self.state.store.close().await;
        served.context("serving the api")
    }
}
