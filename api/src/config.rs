//! The api's configuration: flags or `PARLEY_*` environment variables.

use clap::Args;
use secrecy::SecretString;
use shared::config::{DatabaseArgs, JwtArgs, RedisArgs, TelemetryArgs};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Args)]
pub struct ApiConfig {
    /// Address the REST api listens on.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Directory for generated keys (and, for SQLite, the database file).
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
    pub telemetry: TelemetryArgs,
}

/// Abuse limits and HTTP policy. Limits are per api node; see docs/operations.md.
#[derive(Clone, Debug, Args)]
pub struct PolicyArgs {
    /// Signups, logins and refreshes a client IP may make per minute (burst: a fifth of it, at least 5).
    #[arg(long, env = "PARLEY_RATE_AUTH_PER_MINUTE", default_value_t = 60)]
    pub auth_per_minute: u32,
    /// Failed logins one account may take per 15 minutes before further
    /// attempts are refused, whatever IP they come from.
    #[arg(long, env = "PARLEY_RATE_LOGIN_FAILURES", default_value_t = 10)]
    pub login_failures_per_15min: u32,
    /// How long an account is locked out the first time it spends its
    /// failed-login budget; each further lockout within a day lasts twice
    /// as long as the one before.
    #[arg(long, env = "PARLEY_LOGIN_LOCKOUT", default_value = "15m", value_parser = shared::config::parse_duration)]
    pub login_lockout: std::time::Duration,
    /// The longest lockout.
    #[arg(long, env = "PARLEY_LOGIN_LOCKOUT_MAX", default_value = "24h", value_parser = shared::config::parse_duration)]
    pub login_lockout_max: std::time::Duration,
    /// Messages one user may post per second (sustained).
    #[arg(long, env = "PARLEY_RATE_MESSAGES_PER_SECOND", default_value_t = 20)]
    pub messages_per_second: u32,
    /// Messages one user may post in a burst.
    #[arg(long, env = "PARLEY_RATE_MESSAGES_BURST", default_value_t = 50)]
    pub messages_burst: u32,
    /// Message searches one user may make per second (sustained), on each
    /// api node.
    #[arg(long, env = "PARLEY_RATE_SEARCHES_PER_SECOND", default_value_t = DEFAULT_SEARCHES_PER_SECOND)]
    pub searches_per_second: u32,
    /// Message searches one user may make in a burst.
    #[arg(long, env = "PARLEY_RATE_SEARCHES_BURST", default_value_t = DEFAULT_SEARCHES_BURST)]
    pub searches_burst: u32,
    /// Server publishes (custom events and signals) one API key may make
    /// per second (sustained), on each api node.
    #[arg(long, env = "PARLEY_RATE_SERVER_PUBLISH_PER_SECOND", default_value_t = DEFAULT_SERVER_PUBLISH_PER_SECOND)]
    pub server_publish_per_second: u32,
    /// Server publishes one API key may make in a burst.
    #[arg(long, env = "PARLEY_RATE_SERVER_PUBLISH_BURST", default_value_t = DEFAULT_SERVER_PUBLISH_BURST)]
    pub server_publish_burst: u32,
    /// Take the client IP from `X-Forwarded-For`/`X-Real-IP`/`Forwarded`.
    /// Only set this behind a load balancer that overwrites those headers.
    #[arg(long, env = "PARLEY_TRUST_PROXY_HEADERS", default_value_t = false)]
    pub trust_proxy_headers: bool,
    /// Browser origins allowed to call the api (CORS), comma-separated
    /// (`https://app.example.com,http://localhost:3000`); `*` allows any.
    /// Unset: pages from loopback origins (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*`) when listening on a loopback
    /// address, otherwise same-origin only. See `crate::cors`.
    #[arg(long, env = "PARLEY_CORS_ALLOW_ORIGINS", value_delimiter = ',', value_parser = crate::cors::parse_origin)]
    pub cors_allow_origins: Vec<String>,
    /// Apply the database migrations at start-up (they are idempotent and
    /// serialised by a database lock, so several nodes may start at once).
    #[arg(long, env = "PARLEY_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Enables the admin endpoints (`/v1/admin/...`, load-test provisioning)
    /// for callers presenting this bearer token; at least 32 characters.
    /// Unset: the admin endpoints do not exist.
    #[arg(long, env = "PARLEY_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<SecretString>,
    /// Least time between the starts of two group commits of message posts
    /// on this node. Posts arriving sooner join the next batch: under steady
    /// load batches hold about rate × interval posts, so the database pays
    /// for fewer commits (a commit costs PostgreSQL far more than a post),
    /// for at most this much added latency. A lone post after a quiet
    /// interval is committed at once. 0 commits as soon as the previous batch is done.
    #[arg(long, env = "PARLEY_COMMIT_INTERVAL", default_value = "2ms", value_parser = shared::config::parse_duration)]
    pub commit_interval: std::time::Duration,
    /// Rooms with at most this many members get `receipt` events when a
    /// member reads (the same setting as the gateway's).
    #[arg(long = "api-receipt-room-limit", id = "api_receipt_room_limit", env = "PARLEY_RECEIPT_ROOM_LIMIT", default_value_t = shared::protocol::DEFAULT_RECEIPT_ROOM_LIMIT)]
    pub receipt_room_limit: i64,
    /// How long security events (the audit log) are kept.
    #[arg(long, env = "PARLEY_AUDIT_RETENTION", default_value = "180d", value_parser = shared::config::parse_duration)]
    pub audit_retention: std::time::Duration,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"));
    }
    Ok(SecretString::from(s.to_owned()))
}

/// A backend pushing notifications for many users at once: five times a
/// person's message rate, a custom event is a database write like a message.
pub const DEFAULT_SERVER_PUBLISH_PER_SECOND: u32 = 100;
/// Two seconds' worth, for a backend flushing a queue after a hiccup.
pub const DEFAULT_SERVER_PUBLISH_BURST: u32 = 200;

/// A search box that searches as the user types sends a few searches a
/// second; a search can cost the database tens of milliseconds, so a
/// script must not send hundreds.
pub const DEFAULT_SEARCHES_PER_SECOND: u32 = 5;
/// Room for a burst of keystrokes and a few pages.
pub const DEFAULT_SEARCHES_BURST: u32 = 20;

/// 180 days: long enough to investigate an incident noticed late.
pub const DEFAULT_AUDIT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(180 * 24 * 3600);

/// Shortest admin token accepted: long enough that guessing is hopeless
/// even without the per-IP limit in front of it.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

impl Default for PolicyArgs {
    fn default() -> Self {
        Self {
            auth_per_minute: 60,
            login_failures_per_15min: 10,
            login_lockout: std::time::Duration::from_secs(15 * 60),
            login_lockout_max: std::time::Duration::from_secs(24 * 3600),
            messages_per_second: 20,
            messages_burst: 50,
            server_publish_per_second: DEFAULT_SERVER_PUBLISH_PER_SECOND,
            server_publish_burst: DEFAULT_SERVER_PUBLISH_BURST,
            searches_per_second: DEFAULT_SEARCHES_PER_SECOND,
            searches_burst: DEFAULT_SEARCHES_BURST,
            trust_proxy_headers: false,
            cors_allow_origins: Vec::new(),
            migrate_on_start: true,
            admin_token: None,
            commit_interval: std::time::Duration::from_millis(2),
            receipt_room_limit: shared::protocol::DEFAULT_RECEIPT_ROOM_LIMIT,
            audit_retention: DEFAULT_AUDIT_RETENTION,
        }
    }
}
