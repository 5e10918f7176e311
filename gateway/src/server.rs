//! The gateway node as a service: the HTTP side (`/ws` upgrade, probes),
//! start-up and shutdown. Connections themselves are in `connection`.

use crate::config::{GatewayConfig, WsSettings};
use crate::hub::{Hub, HubSettings};
use crate::{Inner, connection};
use anyhow::Context;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broker::{DynBroker, Topic};
use fastwebsockets::upgrade::IncomingUpgrade;
use hyper_util::rt::TokioIo;
use shared::RoomId;
use shared::auth::TokenVerifier;
use shared::health::UNAVAILABLE_RETRY_AFTER_SECS;
use shared::rest::{ErrorBody, ErrorDetail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use store::Store;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Opens the node's broker subscription and starts its tasks.
    pub async fn start(
        store: Store,
        broker: DynBroker,
        verifier: Arc<TokenVerifier>,
        settings: WsSettings,
    ) -> anyhow::Result<Gateway> {
        shared::system::raise_open_files_limit(settings.max_connections as u64);
        crate::exported_metrics::register();
        let background = TaskTracker::new();
        let stop = CancellationToken::new();
        let shards = match settings.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let presence_timing = settings.presence_timing()?;
        let presence_store = broker.presence();
        let presence = crate::presence::start(
            presence_store.clone(),
            presence_timing,
            &background,
            stop.child_token(),
        );
        let (markers, marker_changes) = store::MarkerWriter::start(store.clone());
        background.spawn(crate::receipts::publish(
            broker.clone(),
            marker_changes,
            settings.receipt_room_limit,
        ));
        let hub = Hub::start(
            &broker,
            store.clone(),
            markers.clone(),
            HubSettings {
                shards,
                heartbeat_interval: settings.heartbeat_interval,
                write_coalesce: settings.write_coalesce,
                typing_interval: settings.typing_interval,
                presence: presence.clone(),
                presence_store,
                presence_snapshot_limit: settings.presence_snapshot_limit,
                backlog: Arc::new(crate::backlog::BacklogReader::new(
                    broker.clone(),
                    store.clone(),
                )),
                resume_limit: settings.resume_limit,
            },
            &background,
            stop.child_token(),
        )
        .await
        .context("opening the broker subscription")?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                hub,
                store,
                broker,
                verifier,
                slots: Arc::new(Semaphore::new(settings.max_connections)),
                settings,
                next_conn_id: AtomicU64::new(1),
                connections: TaskTracker::new(),
                draining: AtomicBool::new(false),
                background,
                shutdown: stop,
                markers,
                presence,
            }),
        })
    }

    /// `/ws`, `/healthz` and `/readyz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(ready))
            .with_state(self.clone())
            .merge(self.ws_router())
    }

    /// Only the client transports, `/ws` and `/sse`, to mount beside
    /// another service's routes (the single node).
    pub fn ws_router(&self) -> Router {
        Router::new()
            .route("/ws", get(upgrade))
            .route("/sse", get(sse_stream))
            .with_state(self.clone())
    }

    /// Authenticated WebSocket connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.hub.connection_count()
    }

    /// Whether this node holds a broker subscription to `room`'s events.
    pub fn is_subscribed_to_room(&self, room: RoomId) -> bool {
        self.inner.hub.is_subscribed(Topic::Room(room))
    }

    /// Every topic this node is subscribed to.
    pub fn subscribed_topics(&self) -> Vec<Topic> {
        self.inner.hub.subscribed_topics()
    }

    /// Reads of past events (resumes, gap fills) by where they were served
    /// from: (window, database, shared with another read).
    pub fn backlog_reads(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.inner.hub.backlog_stats();
        (
            stats.window.load(Relaxed),
            stats.database.load(Relaxed),
            stats.shared.load(Relaxed),
        )
    }

    /// Session and membership checks this node answered without the store
    /// and with it, and the member lists it read.
    pub fn auth_cache_stats(&self) -> &crate::hub::AuthCacheStats {
        self.inner.hub.auth_cache_stats()
    }

    /// Presence changes this node reported that the store applied.
    pub fn presence_changes_applied(&self) -> u64 {
        self.inner.presence.applied()
    }

    /// Batches of read and delivery markers this node has written.
    pub fn marker_batches(&self) -> u64 {
        self.inner
            .markers
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Rooms with at least one local member.
    pub async fn local_rooms(&self) -> Vec<RoomId> {
        self.inner.hub.local_rooms().await
    }

    /// Whether the node is shutting down (its readiness is then red).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Drains the node (docs/operations.md, "Rolling restarts"):
    ///
    /// 1. `/readyz` answers 503 at once, so the load balancer stops sending
    ///    new connections; for `drain_delay` the node still accepts
    ///    upgrades (the balancer may not have noticed yet), and those
    ///    connections are drained with the rest;
    /// 2. then new upgrades are refused (503 `unavailable`) and the open
    ///    connections get `reconnect` and a 1001 close, spread evenly over
    ///    `drain_period` (see [`crate::drain`]);
    /// 3. presence reporting stops only then, and what the node holds stays
    ///    in Redis for the presence grace, so the users of its last
    ///    connections, too, have that long to reconnect elsewhere unseen;
    /// 4. it waits up to `shutdown_grace` for the connections to end, then
    ///    stops its tasks and its broker subscription.
    ///
    /// The whole takes at most `drain_delay + drain_period + shutdown_grace`
    /// (plus writing pending read markers). Calling it again does nothing.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let settings = &inner.settings;
        tracing::info!(
            connections = inner.hub.connection_count(),
            delay = ?settings.drain_delay,
            period = ?settings.drain_period,
            "draining: not ready; closing connections after the delay"
        );
        tokio::time::sleep(settings.drain_delay).await;
        // From here on, an upgrade is refused and a connection that still
        // registers (it was being authenticated) is closed as it does.
        inner.slots.close();
        let conns = inner.hub.connections();
        tracing::info!(connections = conns.len(), "draining: closing connections");
        crate::drain::spread(&conns, settings.drain_period).await;
        for conn in inner.hub.connections() {
            crate::drain::close_one(&conn);
        }
        // Presence last: the connections closed above reconnect elsewhere,
        // and nobody should see their users leave and come back. What this
        // node holds stays for the grace, then the other nodes reap it.
        inner.presence.stop(settings.presence_grace).await;
        inner.connections.close();
        if tokio::time::timeout(settings.shutdown_grace, inner.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        // Pending markers are written (and announced) before the tasks stop.
        inner.markers.close().await;
        inner.shutdown.cancel();
        inner.background.close();
        inner.background.wait().await;
        tracing::info!("drained");
    }
}

pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            field: None,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// `503 unavailable` with `Retry-After`: the node cannot check sessions
/// because its database is down, or it is shutting down. The same answer
/// (and header) as the api's for a dependency that is down.
pub(crate) fn unavailable(message: &str) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
    );
    response
}

/// A slot for a new connection (WebSocket or SSE), or the answer that
/// refuses it: the database is down, the node is draining, or it is full.
async fn admit(gateway: &Gateway) -> Result<OwnedSemaphorePermit, Box<Response>> {
    if gateway.inner.store.seems_down() && !shared::health::probe(gateway.inner.store.ping()).await
    {
        // Refused before the upgrade: the session check could not be made.
        // While the database is up this costs nothing (a flag); while it
        // seems down, one bounded ping per upgrade, which also notices
        // that it is back.
        metrics::counter!("gateway_connections_total", "outcome" => "unavailable").increment(1);
        return Err(Box::new(unavailable(
            "the database is unavailable; retry shortly",
        )));
    }
    let Ok(permit) = gateway.inner.slots.clone().try_acquire_owned() else {
        if gateway.inner.slots.is_closed() {
            // Draining: the client's retry goes through the load balancer,
            // which by now sends it to another node.
            metrics::counter!("gateway_connections_total", "outcome" => "shutting_down")
                .increment(1);
            return Err(Box::new(unavailable(
                "this gateway is shutting down; connect again",
            )));
        }
        metrics::counter!("gateway_connections_total", "outcome" => "over_capacity").increment(1);
        return Err(Box::new(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this gateway is full; try another",
        )));
    };
    Ok(permit)
}

/// `GET /sse`: a Server-Sent Events stream (see [`crate::sse`]).
async fn sse_stream(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<crate::sse::SseQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query must be rooms=, ticket= and last_event_id= (each at most once)",
        );
    };
    let permit = match admit(&gateway).await {
        Ok(permit) => permit,
        Err(response) => return *response,
    };
    crate::sse::open(gateway.inner.clone(), permit, &headers, query).await
}

/// Upgrades `/ws` and hands the socket to a connection task.
async fn upgrade(State(gateway): State<Gateway>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let Ok(incoming) = IncomingUpgrade::from_request_parts(&mut parts, &()).await else {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only",
        );
    };
    let permit = match admit(&gateway).await {
        Ok(permit) => permit,
        Err(response) => return *response,
    };
    let (response, socket) = match incoming.upgrade() {
        Ok(pair) => pair,
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_upgrade",
                "invalid WebSocket upgrade request",
            );
        }
    };
    let node = gateway.inner.clone();
    gateway.inner.connections.spawn(async move {
        let _permit = permit;
        let ws = match socket.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // The plain TCP stream, when that is what is under the upgrade, is
        // split into independent halves: writes from the fan-out never wait
        // for the reader's lock. Bytes the client sent right behind its
        // upgrade request (an eager `auth`) were already read; they come first.
        let upgraded = ws.into_inner().into_inner();
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let read = std::io::Cursor::new(parts.read_buf).chain(read);
                connection::serve(node, read, Box::pin(write), peer).await;
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                connection::serve(node, read, Box::pin(write), peer).await;
            }
        }
    });
    response.map(axum::body::Body::new).into_response()
}

/// Ready when the database and Redis answer (within
/// [`shared::health::PROBE_TIMEOUT`] each) and the node has room for
/// another connection: a full node drops out of the load balancer's
/// rotation (its open connections stay) instead of refusing upgrades.
/// A draining node is never ready.
async fn ready(State(gateway): State<Gateway>) -> Response {
    if gateway.is_draining() {
        return draining();
    }
    let (db, broker) = tokio::join!(
        shared::health::probe(gateway.inner.store.ping()),
        shared::health::probe(gateway.inner.broker.ping())
    );
    let label = |ok: bool| if ok { "ok" } else { "unavailable" };
    let full = gateway.inner.slots.available_permits() == 0;
    let ready = db && broker && !full;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": label(ready),
        "database": label(db),
        "broker": label(broker),
        "connections": gateway.connection_count(),
        "full": full,
    });
    (status, axum::Json(body)).into_response()
}

/// `/readyz` of a node that is shutting down.
pub fn draining() -> Response {
    let body = serde_json::json!({"status": "draining"});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// The verifying key: configured, or the public half of a pair generated
/// into `data_dir` by an api on the same machine. A gateway only verifies
/// tokens, so it is never given the signing key.
pub fn verifier_from_config(config: &GatewayConfig) -> anyhow::Result<TokenVerifier> {
    let jwt = &config.jwt;
    let public = match jwt.public_pem()? {
        Some(public) => public,
        None => {
            let path = shared::auth::public_key_path(&config.data_dir);
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no JWT public key: set PARLEY_JWT_PUBLIC_KEY(_FILE), or run the api once with the same \
                     PARLEY_DATA_DIR so it generates {}",
                    path.display()
                )
            })?
        }
    };
    TokenVerifier::from_pem(&public, &jwt.jwt_issuer)
}

/// The standalone gateway service.
pub struct Application {
    listener: tokio::net::TcpListener,
    gateway: Gateway,
}

impl Application {
    pub async fn build(config: &GatewayConfig) -> anyhow::Result<Self> {
        let url = config
            .database
            .database_url
            .as_deref()
            .context("PARLEY_DATABASE_URL is required")?;
        let store = Store::connect(url, config.database.database_max_connections)
            .await
            .with_context(|| format!("connecting to {}", shared::config::redact_url(url)))?;
        if config.redis.redis_url.is_none() {
            anyhow::bail!(
                "PARLEY_REDIS_URL is required: gateway nodes receive events through Redis \
             (for everything in one process without Redis, run the single-node `parley` binary)"
            );
        }
        let broker = broker::connect(&config.redis).await?;
        let verifier = Arc::new(verifier_from_config(config)?);
        let gateway = Gateway::start(store, broker, verifier, config.ws.clone()).await?;
        let listener = shared::system::listen(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self { listener, gateway })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Serves until `shutdown` is cancelled, then drains connections
    /// (still serving `/readyz` meanwhile, which says 503) and closes the
    /// store and the broker.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "gateway listening");
        let stop_serving = CancellationToken::new();
        let served = serve(self.listener, self.gateway.router(), stop_serving.clone());
        tokio::pin!(served);
        let early = tokio::select! {
            result = &mut served => Some(result),
            () = shutdown.cancelled() => None,
        };
        self.gateway.shutdown().await;
        stop_serving.cancel();
        let served = match early {
            Some(result) => result,
            None => served.await,
        };
        self.gateway.inner.broker.close().await;
        self.gateway.inner.store.close().await;
        served
    }
}

/// Serves `router` on `listener` (TCP_NODELAY: events are small and must not
/// wait for Nagle) until `shutdown`, with the peer address available to handlers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("serving HTTP")
}
