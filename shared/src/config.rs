//! Configuration pieces that several binaries share.
//!
//! Each binary has one typed configuration parsed by clap from flags and
//! `PARLEY_*` environment variables (every flag has one), with defaults that
//! run on a laptop. `--help` lists them all. These groups are flattened into
//! each binary's own `Config`.

use clap::{Args, ValueEnum};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Parses durations written like `15m`, `30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 15m, 1h)"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The OpenTelemetry samplers, named as in `OTEL_TRACES_SAMPLER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceSampler {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    /// Keeps `OTEL_TRACES_SAMPLER_ARG` of traces, by trace id.
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentbasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentbasedAlwaysOff,
    /// Follows the parent; a new trace is kept with `OTEL_TRACES_SAMPLER_ARG`.
    #[value(name = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

/// A sampling ratio: a number from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1 (write e.g. 0.1)")),
    }
}

/// Logs, traces and metrics.
#[derive(Clone, Debug, Args)]
pub struct TelemetryArgs {
    /// Log filter, in `tracing` env-filter syntax.
    #[arg(long = "log", env = "PARLEY_LOG", default_value = "info")]
    pub log_filter: String,
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Send traces to this OTLP/gRPC collector (e.g. http://otel-collector:4317).
    /// Unset or empty: no traces are recorded.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Which traces to record (the OpenTelemetry sampler names). The
    /// `parentbased_*` samplers follow the decision of a request's
    /// `traceparent` and, on gateways, of the api that published the event.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = TraceSampler::ParentbasedAlwaysOn)]
    pub traces_sampler: TraceSampler,
    /// The fraction of traces the `*traceidratio` samplers keep, 0 to 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio, default_value_t = 1.0)]
    pub traces_sampler_arg: f64,
    /// Serve Prometheus metrics on this address at `/metrics` (off when unset).
    /// Keep it off the public network.
    #[arg(long, env = "PARLEY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// The relational store.
#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// `postgres://...` (cluster) or `sqlite://path/to/file.db` (single node).
    #[arg(long, env = "PARLEY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the pool.
    #[arg(long, env = "PARLEY_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

/// The Redis server that carries events between nodes.
#[derive(Clone, Debug, Args)]
pub struct RedisArgs {
    /// `redis://host:6379`, or `redis-cluster://host:7000?node=host2:7000`
    /// (seed nodes of a Redis Cluster: sharded pub/sub, hash-tagged keys).
    /// Required by the api and gateways; without it the single node uses
    /// its in-process broker, which only reaches connections in the same
    /// process.
    #[arg(long, env = "PARLEY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the Redis pub/sub channels (`{prefix}room:{id}`,
    /// `{prefix}user:{id}`), so several deployments can share one Redis.
    #[arg(long, env = "PARLEY_REDIS_PREFIX", default_value = "parley:")]
    pub redis_prefix: String,
    /// Most recent events of each room kept in its window (a Redis stream,
    /// or in process on a single node) for resuming clients and gateways'
    /// gap fills, in front of the database. 0 turns the window off.
    #[arg(long, env = "PARLEY_WINDOW_EVENTS", default_value_t = DEFAULT_WINDOW_EVENTS)]
    pub window_events: usize,
    /// A room's window is dropped after this long without a new event.
    #[arg(long, env = "PARLEY_WINDOW_AGE", default_value = "10m", value_parser = parse_duration)]
    pub window_age: Duration,
}

/// Events per room in the recent window: a reconnect after a few minutes
/// in a busy room is served without the database.
pub const DEFAULT_WINDOW_EVENTS: usize = 256;

impl RedisArgs {
    /// No Redis (the in-process broker), the default prefix and window.
    pub fn in_process() -> Self {
        Self {
            redis_url: None,
            redis_prefix: "parley:".into(),
            window_events: DEFAULT_WINDOW_EVENTS,
            window_age: Duration::from_secs(600),
        }
    }
}

/// Verifying access tokens: what every binary that accepts them needs
/// (gateways need nothing more, and never hold the signing key).
#[derive(Clone, Debug, Args)]
pub struct JwtVerifyArgs {
    /// Ed25519 public key (SPKI PEM) that verifies access tokens. Given to
    /// an api or single node, it must match their private key.
    #[arg(long, env = "PARLEY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// File holding the public key, instead of the key itself.
    #[arg(long, env = "PARLEY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// The `iss` claim written and required.
    #[arg(long, env = "PARLEY_JWT_ISSUER", default_value = "parley")]
    pub jwt_issuer: String,
}

/// Signing access tokens and their lifetimes (the api and the single node).
#[derive(Clone, Debug, Args)]
pub struct JwtArgs {
    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens. Unset: the
    /// pair kept in the data directory (generated on first start).
    #[arg(long, env = "PARLEY_JWT_PRIVATE_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_private_key: Option<SecretString>,
    /// File holding the private key, instead of the key itself.
    #[arg(long, env = "PARLEY_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub verify: JwtVerifyArgs,
    /// Lifetime of an access token.
    #[arg(long, env = "PARLEY_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Lifetime of a session that is not refreshed.
    #[arg(long, env = "PARLEY_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

impl JwtArgs {
    /// The private key PEM, if configured.
    pub fn private_pem(&self) -> anyhow::Result<Option<SecretString>> {
        use secrecy::ExposeSecret;
        let inline = self.jwt_private_key.as_ref().map(|s| s.expose_secret());
        Ok(crate::auth::pem_from(
            inline,
            self.jwt_private_key_file.as_deref(),
            "JWT private key",
        )?
        .map(SecretString::from))
    }

    /// The public key PEM, if configured.
    pub fn public_pem(&self) -> anyhow::Result<Option<String>> {
        self.verify.public_pem()
    }
}

impl JwtVerifyArgs {
    /// The public key PEM, if configured.
    pub fn public_pem(&self) -> anyhow::Result<Option<String>> {
        crate::auth::pem_from(
            self.jwt_public_key.as_deref(),
            self.jwt_public_key_file.as_deref(),
            "JWT public key",
        )
    }
}

/// Hides the password of a URL such as `postgres://user:secret@host/db` for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("sqlite://data/parley.db"),
            "sqlite://data/parley.db"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("fifteen").is_err());
    }

    #[test]
    fn the_standard_sampler_settings_parse_and_bad_ones_are_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            telemetry: TelemetryArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--traces-sampler",
            "parentbased_traceidratio",
            "--traces-sampler-arg",
            "0.25",
        ])
        .unwrap();
        assert_eq!(
            cli.telemetry.traces_sampler,
            TraceSampler::ParentbasedTraceIdRatio
        );
        assert_eq!(cli.telemetry.traces_sampler_arg, 0.25);
        assert!(Cli::try_parse_from(["x", "--traces-sampler-arg", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--traces-sampler", "sometimes"]).is_err());
    }
}
