//! Parley on one machine: the REST api and the WebSocket gateway in one
//! process, on one port, over the same store and broker seams as a cluster.
//!
//! With no configuration the store is an SQLite file in the data directory
//! and the broker is in-process, so nothing else needs to be installed. Set
//! `PARLEY_DATABASE_URL=postgres://...` and `PARLEY_REDIS_URL=redis://...`
//! and the same binary is a combined api+gateway member of a cluster.

use anyhow::Context;
use api::{AppState, AttachmentArgs, MailArgs, PolicyArgs, Tokens};
use clap::Args;
use gateway::{Gateway, WsSettings};
use shared::config::{DatabaseArgs, JwtArgs, RedisArgs, TelemetryArgs};
use std::net::SocketAddr;
use std::path::PathBuf;

use store::Store;
use tokio_util::sync::CancellationToken;

/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "parley.db";

#[derive(Clone, Debug, Args)]
pub struct NodeConfig {
    /// Address for both the REST api (`/v1/...`) and the WebSocket (`/ws`).
    #[arg(long, env = "PARLEY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database file and the generated signing keys live.
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub attachments: AttachmentArgs,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub ws: WsSettings,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl NodeConfig {
    /// The configured database, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join(DATABASE_FILE).display()))
    }
}

/// `/readyz` answers 503 while the node's gateway drains (the api's own
/// check knows nothing of it), so a load balancer stops sending clients.
async fn not_ready_while_draining(
    axum::extract::State(gateway): axum::extract::State<Gateway>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if gateway.is_draining() && request.uri().path() == "/readyz" {
        return gateway::server::draining();
    }
    next.run(request).await
}

/// Runs an admin command (`parley admin ...`) against the node's database.
pub async fn admin(
    config: &NodeConfig,
    command: api::admin::cli::AdminCommand,
) -> anyhow::Result<String> {
    let url = config.database_url();
    if config.database.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
    }
    let store = Store::connect(&url, 1)
        .await
        .with_context(|| format!("opening {}", shared::config::redact_url(&url)))?;
    if config.policy.migrate_on_start {
        store.migrate().await.context("migrating the database")?;
    }
    api::admin::cli::run(&store, command).await
}

/// A running single node.
pub struct Node {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    api: AppState,
    gateway: Gateway,
    description: String,
}

impl Node {
    /// Opens (and migrates) the store, starts the broker and the gateway,
    /// and binds the listener.
    pub async fn build(config: &NodeConfig) -> anyhow::Result<Node> {
        let url = config.database_url();
        let store = Store::connect(&url, config.database.database_max_connections)
            .await
            .with_context(|| format!("opening {}", shared::config::redact_url(&url)))?;
        if config.policy.migrate_on_start {
            store.migrate().await.context("migrating the database")?;
        }
        let broker = broker::connect(&config.redis).await?;
        let tokens = Tokens::from_config(&config.jwt, &config.data_dir)?;
        let verifier = tokens.verifier.clone();
        let mail = api::mail::Mail::from_config(&config.mail, &config.data_dir)?;
        let api = AppState::new(
            store.clone(),
            broker.clone(),
            tokens,
            &config.policy,
            &config.attachments,
            &config.data_dir,
            mail,
        )?;
        let gateway =
            Gateway::start(store.clone(), broker.clone(), verifier, config.ws.clone()).await?;
        // The listener's address decides the default CORS policy: on loopback
        // (the default) pages from loopback origins may call the api.
        let router = api::router(api.clone(), &config.policy, config.listen.ip())
            .merge(gateway.ws_router())
            .layer(axum::middleware::from_fn_with_state(
                gateway.clone(),
                not_ready_while_draining,
            ));
        let listener = shared::system::listen(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let description = format!(
            "store: {} ({}), broker: {}",
            shared::config::redact_url(&url),
            match store.backend() {
                store::Backend::Postgres => "PostgreSQL",
                store::Backend::Sqlite => "SQLite",
            },
            broker.kind()
        );
        Ok(Node {
            listener,
            router,
            api,
            gateway,
            description,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The api's state (for tests that run its upkeep on demand).
    pub fn api_state(&self) -> &AppState {
        &self.api
    }

    /// What the node runs on, for the start-up banner.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Serves until `shutdown`, then drains WebSockets (the api keeps
    /// serving meanwhile, its `/readyz` saying 503), and closes the message
    /// appender (committing what it holds), the broker and the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let upkeep = api::maintenance(self.api.clone(), shutdown.clone());
        let mail_sender = api::mail::start(self.api.clone(), shutdown.clone());
        tracing::info!(addr = %self.listener.local_addr()?, "node listening");
        let stop_serving = CancellationToken::new();
        let served = gateway::server::serve(self.listener, self.router, stop_serving.clone());
        tokio::pin!(served);
        let early = tokio::select! {
            result = &mut served => Some(result),
            () = shutdown.cancelled() => None,
        };
        shutdown.cancel();
        self.gateway.shutdown().await;
        stop_serving.cancel();
        let served = match early {
            Some(result) => result,
            None => served.await,
        };
        let _ = upkeep.await;
        let _ = mail_sender.await;
        self.api.appender.close().await;
        self.api.attachments.close().await;
        self.api.broker.close().await;
        self.api.store.close().await;
        served
    }
}
