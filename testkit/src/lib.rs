//! The test harness: a real deployment on loopback, port 0, per test.
//!
//! [`TestApp::spawn`] starts either shape of the system:
//! - [`Mode::Cluster`]: the api and several gateway nodes, each with its own
//!   listener, store pool and Redis connections, sharing nothing but a fresh
//!   PostgreSQL database and a unique Redis key prefix;
//! - [`Mode::Single`]: one `parley` node (api + gateway on one port) on a
//!   fresh SQLite file and the in-process broker;
//! - [`Mode::RedisCluster`]: the cluster shape on a real Redis Cluster
//!   (three masters, three replicas on loopback; see [`redis_cluster_url`])
//!   instead of one Redis server.
//!
//! Test bodies take the mode as a parameter and [`both_modes!`] runs each
//! one in both shapes, so there is one copy of every test.

pub mod binary;
mod db;
mod services;
mod smtp;
mod sse;
mod ws;

pub use db::{TestDatabase, admin_url};
pub use services::{PrivatePostgres, PrivateRedis, S3Server, StopMode, s3_server};
pub use smtp::{SmtpServer, free_port, query_value};
pub use sse::{SseAuth, SseClient, SseMessage, SseNext};
pub use ws::{FRAME_TIMEOUT, Received, WsClient};

use api::{MailArgs, PolicyArgs};
use gateway::{Gateway, WsSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::auth::KeyPair;
use shared::config::{
    DatabaseArgs, JwtArgs, JwtVerifyArgs, LogFormat, RedisArgs, TelemetryArgs, TraceSampler,
};
use shared::model::RoomEvent;
use shared::protocol::Encoding;
use shared::{RoomId, SessionId, UserId};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which shape of the system a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// api + gateways on PostgreSQL and Redis.
    Cluster,
    /// One node on SQLite and the in-process broker.
    Single,
    /// api + gateways on PostgreSQL and a Redis Cluster (sharded pub/sub).
    RedisCluster,
}

impl Mode {
    /// api and gateway nodes apart, sharing Redis (one server or a cluster).
    pub fn is_cluster(self) -> bool {
        matches!(self, Mode::Cluster | Mode::RedisCluster)
    }
}

/// The Redis Cluster the [`Mode::RedisCluster`] tests use:
/// `PARLEY_TEST_REDIS_CLUSTER` (a `redis-cluster://` URL) when set, else the
/// local one `.ci/redis-cluster` runs on ports 7000-7005, which this starts
/// (once per test process; the script does nothing when it is already up,
/// and holds a lock so concurrent test processes create it once).
///
/// Panics with the reason when the cluster cannot be had: a cluster-mode
/// test must fail, not pass without one.
pub async fn redis_cluster_url() -> String {
    static STARTED: tokio::sync::OnceCell<Result<String, String>> =
        tokio::sync::OnceCell::const_new();
    let url = STARTED
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("PARLEY_TEST_REDIS_CLUSTER") {
                return Ok(url);
            }
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/redis-cluster");
            let output = tokio::process::Command::new(&script)
                .arg("start")
                .output()
                .await
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "{} start failed ({}): {}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Ok(DEFAULT_REDIS_CLUSTER.to_owned())
        })
        .await;
    match url {
        Ok(url) => url.clone(),
        Err(why) => panic!(
            "the Redis Cluster tests need a Redis Cluster (redis-server and redis-cli in PATH, \
             ports 7000-7005 free, or PARLEY_TEST_REDIS_CLUSTER set): {why}"
        ),
    }
}

/// The seeds of the cluster `.ci/redis-cluster` starts.
pub const DEFAULT_REDIS_CLUSTER: &str =
    "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002";

/// Where tests find Redis.
pub fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Runs each listed `async fn name(mode: Mode)` as two tests, one per mode.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Mode::Cluster).await
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Mode::Single).await
                }
            )*
        }
    };
}

/// What a test may change about the deployment.
#[derive(Clone)]
pub struct Options {
    /// Gateway nodes in cluster mode (a single node is always one).
    pub gateways: usize,
    pub policy: PolicyArgs,
    pub ws: WsSettings,
    pub access_token_ttl: Duration,
    /// Keep data here (and keep it after `stop`): for restart tests.
    pub data_dir: Option<PathBuf>,
    /// The address the api (or the single node) binds, on port 0. Loopback
    /// by default; an unspecified address (`0.0.0.0`) is reached through
    /// loopback, for tests of what depends on the listener (CORS).
    pub listen_ip: IpAddr,
    /// Cluster mode: create the test database on this server instead of
    /// the shared one (a [`PrivatePostgres`]'s `admin_url`, for fault tests).
    pub database_admin_url: Option<String>,
    /// Cluster mode: this Redis instead of the shared one (a [`PrivateRedis`]).
    pub redis_url: Option<String>,
    /// Events per room in the recent window (0: none, everything from the database).
    pub window_events: usize,
    /// Api nodes in cluster mode, sharing the database, Redis and keys
    /// (`TestApp::api_urls`); requests go to the first unless a test picks.
    pub api_nodes: usize,
    /// Attachment limits. Cluster mode keeps attachments in a fresh bucket
    /// of the test process's S3 server (moto) unless a bucket is set here;
    /// a single node keeps them in its data directory.
    pub attachments: api::AttachmentArgs,
    /// Outgoing mail: by default the file mailer (into the test's data
    /// directory); mail tests point it at an [`SmtpServer`].
    pub mail: MailArgs,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateways: 3,
            // Tests sign up and post fast from one IP; the limits have tests of their own.
            policy: PolicyArgs {
                auth_per_minute: 1_000_000,
                login_failures_per_15min: 1_000,
                logins_per_ip_per_15min: 1_000_000,
                signups_per_ip_per_hour: 1_000_000,
                messages_per_second: 1_000_000,
                messages_burst: 1_000_000,
                searches_per_second: 1_000_000,
                searches_burst: 1_000_000,
                ..PolicyArgs::default()
            },
            // No drain on stop (the drain has tests of its own): a test's
            // services stop at once, whatever connections are still open.
            ws: WsSettings {
                drain_delay: Duration::ZERO,
                drain_period: Duration::ZERO,
                ..WsSettings::default()
            },
            access_token_ttl: Duration::from_secs(900),
            data_dir: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            database_admin_url: None,
            redis_url: None,
            window_events: shared::config::DEFAULT_WINDOW_EVENTS,
            api_nodes: 1,
            attachments: api::AttachmentArgs::default(),
            mail: MailArgs {
                // `app.user()` signs up and posts at once, as hundreds of
                // tests do; tests/suite/mail.rs turns this off and proves
                // the default policy (and verifies through real mail).
                unverified_may_post: Some(true),
                // Mail queued on a node leaves at once (the node wakes its
                // sender); polling only finds retries and other nodes' jobs,
                // which mail tests make fast themselves.
                mail_poll_interval: Duration::from_secs(1),
                ..MailArgs::default()
            },
        }
    }
}

/// A signed-up, logged-in user.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
    pub session_id: SessionId,
}

pub struct TestApp {
    pub mode: Mode,
    /// `http://127.0.0.1:port`
    pub api: String,
    /// Every api node (the first is `api`).
    pub api_urls: Vec<String>,
    gateway_urls: Vec<String>,
    gateways: Vec<Gateway>,
    http: reqwest::Client,
    pub redis_prefix: String,
    /// The Redis the cluster uses.
    redis_url: String,
    pub data_dir: PathBuf,
    keep_data: bool,
    database: Option<TestDatabase>,
    keys: KeyPair,
    /// The attachment settings the services run with.
    attachments: api::AttachmentArgs,
    /// Each api node's state (the single node's api), for upkeep a test
    /// cannot wait a minute for.
    api_states: Vec<api::AppState>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

fn telemetry() -> TelemetryArgs {
    TelemetryArgs {
        log_filter: "warn".into(),
        log_format: LogFormat::Pretty,
        otlp_endpoint: None,
        traces_sampler: TraceSampler::ParentbasedAlwaysOn,
        traces_sampler_arg: 1.0,
        metrics_addr: None,
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// How a client on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

impl TestApp {
    pub async fn spawn(mode: Mode) -> TestApp {
        Self::spawn_with(mode, Options::default()).await
    }

    pub async fn spawn_with(mode: Mode, options: Options) -> TestApp {
        init_tracing();
        let shutdown = CancellationToken::new();
        let keep_data = options.data_dir.is_some();
        let data_dir = options.data_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("parley-test-{}", uuid::Uuid::new_v4().simple()))
        });
        let redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let redis_url = match (&options.redis_url, mode) {
            (Some(url), _) => url.clone(),
            (None, Mode::RedisCluster) => redis_cluster_url().await,
            (None, _) => redis_url(),
        };
        let keys = KeyPair::generate();
        let jwt = JwtArgs {
            jwt_private_key: None,
            jwt_private_key_file: None,
            verify: JwtVerifyArgs {
                jwt_public_key: None,
                jwt_public_key_file: None,
                jwt_issuer: "parley".into(),
            },
            access_token_ttl: options.access_token_ttl,
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
        };
        let mut tasks = Vec::new();
        let mut api_urls = Vec::new();
        let mut api_states = Vec::new();
        let mut attachments = options.attachments.clone();
        if mode.is_cluster() && attachments.s3_bucket.is_none() {
            let s3 = s3_server().await;
            attachments.s3_bucket = Some(s3.create_bucket().await.expect("an S3 bucket"));
            attachments.s3_endpoint = Some(s3.endpoint.clone());
            attachments.s3_allow_http = true;
            attachments.s3_access_key_id = Some("parley-test".into());
            attachments.s3_secret_access_key = Some("parley-test-secret".to_owned().into());
        }
        let (api, gateway_urls, gateways, database) = match mode {
            Mode::Cluster | Mode::RedisCluster => {
                let database = match &options.database_admin_url {
                    Some(admin) => TestDatabase::create_on(admin).await,
                    None => TestDatabase::create().await,
                }
                .expect("creating a test database");
                let redis = RedisArgs {
                    redis_url: Some(redis_url.clone()),
                    redis_prefix: redis_prefix.clone(),
                    window_events: options.window_events,
                    ..RedisArgs::in_process()
                };
                let api_config = api::ApiConfig {
                    listen: SocketAddr::new(options.listen_ip, 0),
                    data_dir: data_dir.clone(),
                    database: DatabaseArgs {
                        database_url: Some(database.url.clone()),
                        database_max_connections: 5,
                    },
                    redis: redis.clone(),
                    jwt: JwtArgs {
                        jwt_private_key: Some(keys.private_pem.clone()),
                        ..jwt.clone()
                    },
                    policy: options.policy.clone(),
                    attachments: attachments.clone(),
                    mail: options.mail.clone(),
                    telemetry: telemetry(),
                };
                for _ in 0..options.api_nodes.max(1) {
                    let app = api::Application::build(&api_config)
                        .await
                        .expect("building the api");
                    api_urls.push(format!(
                        "http://{}",
                        reachable(app.local_addr().expect("api address"))
                    ));
                    api_states.push(app.state().clone());
                    tasks.push(tokio::spawn(app.run(shutdown.clone())));
                }
                let api = api_urls[0].clone();
                let mut urls = Vec::new();
                let mut gateways = Vec::new();
                for _ in 0..options.gateways.max(1) {
                    let config = gateway::GatewayConfig {
                        listen: loopback(),
                        data_dir: data_dir.clone(),
                        database: DatabaseArgs {
                            database_url: Some(database.url.clone()),
                            database_max_connections: 3,
                        },
                        redis: redis.clone(),
                        jwt: JwtVerifyArgs {
                            jwt_public_key: Some(keys.public_pem.clone()),
                            ..jwt.verify.clone()
                        },
                        ws: options.ws.clone(),
                        telemetry: telemetry(),
                    };
                    let app = gateway::Application::build(&config)
                        .await
                        .expect("building a gateway");
                    urls.push(format!(
                        "ws://{}/ws",
                        app.local_addr().expect("gateway address")
                    ));
                    gateways.push(app.gateway().clone());
                    tasks.push(tokio::spawn(app.run(shutdown.clone())));
                }
                (api, urls, gateways, Some(database))
            }
            Mode::Single => {
                let config = parley::NodeConfig {
                    listen: SocketAddr::new(options.listen_ip, 0),
                    data_dir: data_dir.clone(),
                    database: DatabaseArgs {
                        database_url: None,
                        database_max_connections: 5,
                    },
                    redis: RedisArgs {
                        redis_url: None,
                        redis_prefix: redis_prefix.clone(),
                        window_events: options.window_events,
                        ..RedisArgs::in_process()
                    },
                    // A test's node must not depend on (or leave) key files.
                    jwt: JwtArgs {
                        jwt_private_key: Some(keys.private_pem.clone()),
                        ..jwt
                    },
                    policy: options.policy.clone(),
                    attachments: attachments.clone(),
                    mail: options.mail.clone(),
                    ws: options.ws.clone(),
                    telemetry: telemetry(),
                };
                let node = parley::Node::build(&config)
                    .await
                    .expect("building the node");
                let addr = reachable(node.local_addr().expect("node address"));
                api_urls.push(format!("http://{addr}"));
                let gateway = node.gateway().clone();
                api_states.push(node.api_state().clone());
                tasks.push(tokio::spawn(node.run(shutdown.clone())));
                (
                    format!("http://{addr}"),
                    vec![format!("ws://{addr}/ws")],
                    vec![gateway],
                    None,
                )
            }
        };
        TestApp {
            mode,
            api,
            api_urls,
            gateway_urls,
            gateways,
            http: reqwest::Client::new(),
            redis_prefix,
            redis_url,
            data_dir,
            keep_data,
            database,
            keys,
            attachments,
            api_states,
            shutdown,
            tasks,
        }
    }

    /// Runs the attachment upkeep of the first api node now (expiring
    /// unposted uploads, purging, re-queueing thumbnails), as its minutely
    /// maintenance would.
    pub async fn sweep_attachments(&self) {
        api::attachments::sweep(&self.api_states[0]).await;
    }

    /// Every key in the deployment's attachment store (the bucket, or the
    /// data directory), sorted.
    pub async fn stored_attachment_keys(&self) -> Vec<String> {
        self.stored_keys("attachments").await
    }

    /// The keys under `prefix` (`attachments`, `avatars`) in the
    /// deployment's attachment store (the bucket, or the data directory), sorted.
    pub async fn stored_keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let (blobs, _) = api::attachments::storage::open(&self.attachments, &self.data_dir)
            .expect("opening the attachment store");
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = blobs
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("listing the attachment store");
        keys.sort();
        keys
    }

    /// The bytes stored under `key` in the deployment's attachment store,
    /// and which engine that store is (S3 in cluster mode, disk on a single node).
    pub async fn stored_bytes(&self, key: &str) -> (api::attachments::storage::Engine, Vec<u8>) {
        let (blobs, engine) = api::attachments::storage::open(&self.attachments, &self.data_dir)
            .expect("opening the attachment store");
        let bytes = blobs
            .get(&object_store::path::Path::from(key))
            .await
            .expect("reading a stored object")
            .bytes()
            .await
            .expect("reading a stored object's bytes");
        (engine, bytes.to_vec())
    }

    /// Rows of the attachments table.
    pub async fn attachment_rows(&self) -> i64 {
        use sqlx::Row;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.database_url())
            .await
            .expect("connecting to the database");
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM attachments")
            .fetch_one(&pool)
            .await
            .expect("counting attachments")
            .get("n");
        pool.close().await;
        n
    }

    /// Uploads `bytes` into `room` as `user` (with a `Content-Type` the
    /// server ignores); the status and the JSON answer.
    pub async fn upload(
        &self,
        user: &TestUser,
        room: RoomId,
        filename: &str,
        declared_type: &str,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(&format!("/v1/rooms/{room}/attachments")))
            .query(&[("filename", filename)])
            .bearer_auth(&user.token)
            .header("content-type", declared_type)
            .body(bytes)
            .send()
            .await
            .expect("uploading");
        let status = response.status();
        let json = response.json().await.unwrap_or(Value::Null);
        (status, json)
    }

    /// GETs `path` as `user` with an optional `Range`; status, headers, bytes.
    pub async fn download(
        &self,
        user: &TestUser,
        path: &str,
        range: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self.http.get(self.url(path)).bearer_auth(&user.token);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let response = request.send().await.expect("downloading");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("reading a download").to_vec();
        (status, headers, bytes)
    }

    /// An access token for `user`'s session, signed with the deployment's
    /// key, that expired `ago` ago (beyond any clock-skew leeway).
    pub fn expired_token(&self, user: &TestUser, ago: Duration) -> String {
        let now = unix_now();
        self.sign(user, now - ago.as_secs() - 60, now - ago.as_secs())
    }

    /// An access token for `user`'s session, signed with the deployment's
    /// key, that expires `ttl` from now (rounded down to whole seconds, as
    /// `exp` is), and that expiry in milliseconds since the epoch.
    pub fn token_expiring_in(&self, user: &TestUser, ttl: Duration) -> (String, u64) {
        let now = unix_now();
        let exp = now + ttl.as_secs();
        (self.sign(user, now, exp), exp * 1000)
    }

    fn sign(&self, user: &TestUser, iat: u64, exp: u64) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        use secrecy::ExposeSecret;
        let claims = shared::auth::AccessClaims {
            sub: user.id.to_string(),
            sid: user.session_id,
            iat,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: "parley".into(),
        };
        let key = EncodingKey::from_ed_pem(self.keys.private_pem.expose_secret().as_bytes())
            .expect("our key");
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("signing")
    }

    /// The database URL the services use (PostgreSQL, or the node's SQLite file).
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(db) => db.url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join(parley::DATABASE_FILE).display()
            ),
        }
    }

    /// Stops every service, waits for them, and drops the test's data
    /// (unless the test asked to keep it).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("a service failed: {e:#}"),
                Ok(Err(e)) => panic!("a service panicked: {e}"),
                Err(_) => panic!("a service did not stop within 30 s"),
            }
        }
        if let Some(db) = self.database {
            db.drop_database().await;
        }
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// The public key (SPKI PEM) that verifies the deployment's access
    /// tokens: for a gateway process started beside the harness's own.
    pub fn jwt_public_key_pem(&self) -> &str {
        &self.keys.public_pem
    }

    /// The Redis the cluster uses (its keys are under `redis_prefix`).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// How many gateway nodes there are (1 for a single node).
    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    /// The WebSocket URL of gateway `i` (modulo the node count, so a test
    /// written for three nodes runs unchanged on one).
    pub fn ws_url(&self, i: usize) -> &str {
        &self.gateway_urls[i % self.gateway_urls.len()]
    }

    /// The HTTP base URL of gateway `i` (`http://127.0.0.1:port`), for its probes.
    pub fn gateway_http(&self, i: usize) -> String {
        let ws = self.ws_url(i);
        let addr = ws
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .unwrap_or(ws);
        format!("http://{addr}")
    }

    pub fn gateway(&self, i: usize) -> &Gateway {
        &self.gateways[i % self.gateways.len()]
    }

    /// A single-use ticket for an SSE stream of `user`'s session.
    pub async fn sse_ticket(&self, user: &TestUser) -> String {
        let (status, body) = self
            .post("/v1/sse/tickets", Some(&user.token), json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "SSE ticket: {body}");
        body["ticket"].as_str().expect("a ticket").to_owned()
    }

    /// An SSE stream of `user` from gateway `i`, opened with a new ticket.
    pub async fn sse(&self, i: usize, user: &TestUser, query: &str) -> SseClient {
        let ticket = self.sse_ticket(user).await;
        SseClient::open(&self.gateway_http(i), query, SseAuth::Ticket(&ticket), None)
            .await
            .unwrap_or_else(|(status, body)| panic!("SSE stream refused: {status} {body}"))
    }

    /// An authenticated JSON WebSocket to gateway `i`.
    pub async fn ws(&self, i: usize, user: &TestUser) -> WsClient {
        WsClient::authenticated(self.ws_url(i), &user.token, Encoding::Json).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.api, path)
    }

    /// Sends a request and returns the status and the JSON body (Null if none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, json) = self.request_with_headers(method, path, token, body).await;
        (status, json)
    }

    /// Like [`TestApp::request`], also returning the response's headers.
    pub async fn request_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("sending a request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("reading a response");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, json)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, token, None)
            .await
    }

    /// Signs `name` up (with `name@example.com`) and logs in.
    pub async fn user(&self, name: &str) -> TestUser {
        let password = format!("{name}-correct-horse");
        let (status, body) = self
            .post("/v1/auth/signup", None, json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "signup of {name}: {body}");
        self.login(name, &password).await
    }

    /// Verifies `user`'s address (`<username>@example.com`) the way its
    /// owner would: follows the link in the verification mail the file
    /// mailer (the default here) wrote into the data directory. Logging in
    /// by address needs a verified one.
    pub async fn verify_email(&self, user: &TestUser) {
        let to = format!("{}@example.com", user.username);
        let dir = self.data_dir.join("mail");
        let link = "/v1/auth/verify-email?token=";
        // Polled as `eventually` does: the mail leaves through the queue.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let token = loop {
            let mail = newest_mail_with(&dir, &format!("To: {to}"), link);
            if let Some(token) = mail.and_then(|mail| query_value(&mail, "token")) {
                break token;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no verification mail to {to} in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (status, body) = self
            .get(&format!("/v1/auth/verify-email?token={token}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "verifying {to}: {body}");
        assert_eq!(body["email_verified"], true, "{body}");
    }

    /// Asserts that `user`'s session is over: the access token answers
    /// `401 session_revoked` and the refresh token is refused.
    pub async fn assert_session_ended(&self, user: &TestUser) {
        let (status, body) = self.get("/v1/users/me", Some(&user.token)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("session_revoked")),
            "{}'s access token",
            user.username
        );
        let (status, _) = self
            .post(
                "/v1/auth/refresh",
                None,
                json!({"refresh_token": user.refresh_token}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{}'s refresh token",
            user.username
        );
    }

    pub async fn login(&self, login: &str, password: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/v1/auth/login",
                None,
                json!({"login": login, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login of {login}: {body}");
        TestUser {
            id: UserId(body["user"]["id"].as_i64().expect("user id")),
            username: body["user"]["username"].as_str().expect("username").into(),
            token: body["access_token"].as_str().expect("access token").into(),
            refresh_token: body["refresh_token"]
                .as_str()
                .expect("refresh token")
                .into(),
            session_id: body["session_id"]
                .as_str()
                .expect("session id")
                .parse()
                .expect("a uuid"),
        }
    }

    pub async fn create_room(&self, owner: &TestUser, name: &str) -> RoomId {
        let (status, body) = self
            .post("/v1/rooms", Some(&owner.token), json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "creating room {name}: {body}");
        RoomId(body["id"].as_i64().expect("room id"))
    }

    pub async fn add_member(&self, owner: &TestUser, room: RoomId, user: &TestUser) {
        let (status, body) = self
            .post(
                &format!("/v1/rooms/{room}/members"),
                Some(&owner.token),
                json!({"user_id": user.id}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "adding {} to {room}: {body}",
            user.username
        );
    }

    /// Posts a message and returns the stored event.
    pub async fn send_message(&self, user: &TestUser, room: RoomId, body: &str) -> RoomEvent {
        let (status, json) = self
            .post(
                &format!("/v1/rooms/{room}/messages"),
                Some(&user.token),
                json!({"body": body}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "posting to {room}: {json}");
        serde_json::from_value(json).expect("a room event")
    }

    /// Redis channel of a room (cluster mode).
    /// A connected client of the cluster's Redis (quit it when done).
    async fn redis_client(&self) -> fred::clients::Client {
        use fred::prelude::*;
        let client = Client::new(
            Config::from_url(&self.redis_url).expect("redis url"),
            None,
            None,
            None,
        );
        client.init().await.expect("connecting to Redis");
        client
    }

    /// The room's newest `seq`, as `user` (a member) reads it from the api.
    pub async fn last_seq(&self, user: &TestUser, room: RoomId) -> i64 {
        let (status, body) = self
            .get(&format!("/v1/rooms/{room}"), Some(&user.token))
            .await;
        assert!(status.is_success(), "{body}");
        body["last_seq"].as_i64().expect("last_seq")
    }

    /// Cluster mode: deletes a Redis key (to lose a room's window, say).
    pub async fn delete_redis_key(&self, key: &str) {
        use fred::prelude::*;
        let client = self.redis_client().await;
        let deleted: i64 = client.del(key).await.expect("DEL");
        assert_eq!(deleted, 1, "{key} was not there to delete");
        let _ = client.quit().await;
    }

    /// Cluster mode: the node ids holding a presence lease, and the node
    /// ids with an entry set, in Redis (docs/operations.md, "Presence in
    /// Redis"), each sorted.
    pub async fn presence_nodes(&self) -> (Vec<String>, Vec<String>) {
        use fred::prelude::*;
        let client = self.redis_client().await;
        let mut leases: Vec<String> = client
            .zrange(
                format!("{}presence:nodes", self.redis_prefix),
                0,
                -1,
                None,
                false,
                None,
                false,
            )
            .await
            .expect("ZRANGE");
        let entry_prefix = format!("{}presence:node:", self.redis_prefix);
        let keys: Vec<String> = client
            .custom(fred::cmd!("KEYS"), vec![format!("{entry_prefix}*")])
            .await
            .expect("KEYS");
        let _ = client.quit().await;
        let mut holders: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&entry_prefix).map(str::to_owned))
            .collect();
        leases.sort();
        holders.sort();
        (leases, holders)
    }

    /// The Redis names of this deployment (hash-tagged on a Redis Cluster).
    pub fn redis_keys(&self) -> broker::keys::Keys {
        broker::keys::Keys::new(&self.redis_prefix, self.mode == Mode::RedisCluster)
    }

    pub fn room_channel(&self, room: RoomId) -> String {
        self.redis_keys().channel(broker::Topic::Room(room))
    }

    /// How many connections Redis has subscribed to `room`'s channel, i.e.
    /// how many gateway nodes receive its events. None in single-node mode.
    ///
    /// On a Redis Cluster: PUBSUB SHARDNUMSUB on the master owning the
    /// channel's slot (the only node a shard channel is subscribed on).
    pub async fn redis_subscribers(&self, room: RoomId) -> Option<i64> {
        use fred::prelude::*;
        let client = match self.mode {
            Mode::Single => return None,
            Mode::Cluster => self.redis_client().await,
            Mode::RedisCluster => {
                let channel = self.room_channel(room);
                let owner = redis_cluster_owner(&channel).await;
                let counts = shard_numsub(&owner, &channel).await;
                return Some(counts);
            }
        };
        let counts: Vec<(String, i64)> = client
            .pubsub_numsub(self.room_channel(room))
            .await
            .expect("PUBSUB NUMSUB");
        let _ = client.quit().await;
        Some(counts.first().map(|(_, n)| *n).unwrap_or(0))
    }
}

/// A client of one Redis server (`host:port`), not following a cluster.
pub async fn redis_node(address: &str) -> fred::clients::Client {
    use fred::prelude::*;
    let client = Client::new(
        Config::from_url(&format!("redis://{address}")).expect("a node address"),
        None,
        None,
        None,
    );
    client.init().await.expect("connecting to a Redis node");
    client
}

/// The masters of the Redis Cluster, `host:port`, with the slot ranges each
/// owns, as CLUSTER SLOTS on the first seed reports them.
pub async fn redis_cluster_masters() -> Vec<(String, Vec<(u16, u16)>)> {
    use fred::prelude::*;
    let url = redis_cluster_url().await;
    let seed = url
        .trim_start_matches("redis-cluster://")
        .split(['?', '/'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let client = redis_node(&seed).await;
    let slots: Value = client.cluster_slots().await.expect("CLUSTER SLOTS");
    let _ = client.quit().await;
    let mut masters: std::collections::BTreeMap<String, Vec<(u16, u16)>> = Default::default();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let start = fields[0].as_i64().expect("a start") as u16;
            let end = fields[1].as_i64().expect("an end") as u16;
            let Value::Array(master) = &fields[2] else {
                panic!("CLUSTER SLOTS without a master: {fields:?}")
            };
            let address = format!(
                "{}:{}",
                master[0].as_string().expect("a host"),
                master[1].as_i64().expect("a port")
            );
            masters.entry(address).or_default().push((start, end));
        }
    }
    masters.into_iter().collect()
}

/// The master (`host:port`) owning a key's or shard channel's slot.
pub async fn redis_cluster_owner(name: &str) -> String {
    let slot = broker::keys::slot(name);
    redis_cluster_masters()
        .await
        .into_iter()
        .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|(address, _)| address)
        .unwrap_or_else(|| panic!("no master owns slot {slot}"))
}

/// PUBSUB SHARDNUMSUB of one channel on one node.
pub async fn shard_numsub(address: &str, channel: &str) -> i64 {
    use fred::prelude::*;
    let client = redis_node(address).await;
    let counts: Vec<Value> = client
        .custom(
            fred::types::CustomCommand::new_static(
                "PUBSUB",
                fred::types::ClusterHash::Random,
                false,
            ),
            vec!["SHARDNUMSUB".to_owned(), channel.to_owned()],
        )
        .await
        .expect("PUBSUB SHARDNUMSUB");
    let _ = client.quit().await;
    counts.get(1).and_then(|n| n.as_i64()).unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The newest `.eml` file in `dir` holding both `header` and `needle`.
fn newest_mail_with(dir: &std::path::Path, header: &str, needle: &str) -> Option<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    // Named `<millis>-<uuid>.eml`: the name sorts by time.
    names.sort();
    names.iter().rev().find_map(|path| {
        let mail = std::fs::read_to_string(path).ok()?;
        (mail.lines().any(|line| line.eq_ignore_ascii_case(header)) && mail.contains(needle))
            .then_some(mail)
    })
}

/// Polls `check` until it holds or `within` passes. For conditions that
/// settle asynchronously (a node unsubscribing after the last member left):
/// it waits on the real condition, never for a fixed time.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
