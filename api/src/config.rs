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
    pub attachments: AttachmentArgs,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Attachments: where their bytes are kept, how large they may be, and the
/// thumbnail worker's limits. See docs/operations.md ("Attachments").
#[derive(Clone, Debug, Args)]
pub struct AttachmentArgs {
    /// Keep attachments in this S3-compatible bucket. Unset: in the data
    /// directory (`<data dir>/attachments`), which only a single node (or
    /// api nodes sharing that directory) can use.
    #[arg(long, env = "PARLEY_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// The S3 endpoint (`https://s3.eu-west-1.amazonaws.com`, a MinIO or
    /// Ceph URL). Unset: AWS's endpoint for the region.
    #[arg(long, env = "PARLEY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "PARLEY_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Access key; unset: the usual AWS sources (instance or pod role, `AWS_*` variables).
    #[arg(long, env = "PARLEY_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "PARLEY_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<SecretString>,
    /// Allow a plain `http://` endpoint (a store on the same host or network).
    #[arg(long, env = "PARLEY_S3_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
    /// Largest attachment, in bytes; an upload is refused (413) as soon as
    /// it passes this, without reading the rest.
    #[arg(long, env = "PARLEY_ATTACHMENT_MAX_BYTES", default_value_t = DEFAULT_ATTACHMENT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Uploads this api node receives at once; more are refused with 503
    /// and Retry-After. Each holds at most one part of the upload in memory
    /// (5 MiB for S3, 1 MiB on disk).
    #[arg(long, env = "PARLEY_ATTACHMENT_MAX_UPLOADS", default_value_t = DEFAULT_MAX_UPLOADS)]
    pub max_uploads: usize,
    /// Uploads never posted in a message are deleted after this long.
    #[arg(long, env = "PARLEY_ATTACHMENT_ORPHAN_TTL", default_value = "24h", value_parser = shared::config::parse_duration)]
    pub orphan_ttl: std::time::Duration,
    /// Thumbnails made at once on this api node (each on a blocking thread).
    #[arg(long, env = "PARLEY_THUMBNAIL_WORKERS", default_value_t = DEFAULT_THUMBNAIL_WORKERS)]
    pub thumbnail_workers: usize,
    /// Thumbnail jobs waiting at most; beyond, a job waits for the periodic
    /// sweep of pending thumbnails instead.
    #[arg(long, env = "PARLEY_THUMBNAIL_QUEUE", default_value_t = DEFAULT_THUMBNAIL_QUEUE)]
    pub thumbnail_queue: usize,
    /// Widest or tallest image a thumbnail is made of, in pixels; larger
    /// ones (and decompression bombs declaring such sizes) get none.
    #[arg(long, env = "PARLEY_THUMBNAIL_MAX_DIMENSION", default_value_t = DEFAULT_THUMBNAIL_MAX_DIMENSION)]
    pub thumbnail_max_dimension: u32,
    /// Most memory one image decode may allocate, in bytes.
    #[arg(long, env = "PARLEY_THUMBNAIL_MAX_ALLOC", default_value_t = DEFAULT_THUMBNAIL_MAX_ALLOC)]
    pub thumbnail_max_alloc: u64,
    /// Largest avatar upload, in bytes (413 beyond). Avatars are kept in
    /// the attachment store, re-encoded to at most 256 x 256 pixels.
    #[arg(long, env = "PARLEY_AVATAR_MAX_BYTES", default_value_t = DEFAULT_AVATAR_MAX_BYTES)]
    pub avatar_max_bytes: u64,
}

/// 25 MiB: photos and documents people share in chat, not videos to archive.
pub const DEFAULT_ATTACHMENT_MAX_BYTES: u64 = 25 * 1024 * 1024;
/// 64 uploads of at most one 5 MiB part each: a bound of about 320 MiB.
pub const DEFAULT_MAX_UPLOADS: usize = 64;
/// Two: one per core of a small node; thumbnails are not urgent.
pub const DEFAULT_THUMBNAIL_WORKERS: usize = 2;
/// A burst of uploads' worth; the sweep picks up what does not fit.
pub const DEFAULT_THUMBNAIL_QUEUE: usize = 256;
/// 16384 px: larger than any camera's photo (a 100 MP sensor is 12288 px
/// wide), far below what a bomb declares.
pub const DEFAULT_THUMBNAIL_MAX_DIMENSION: u32 = 16_384;
/// 512 MiB: a 100 MP RGBA photo decodes into 400 MB.
pub const DEFAULT_THUMBNAIL_MAX_ALLOC: u64 = 512 * 1024 * 1024;
/// 1 MiB: a phone photo cropped to a face, not the camera's original. The
/// whole upload is held in memory to decode it, so this also bounds that.
pub const DEFAULT_AVATAR_MAX_BYTES: u64 = 1024 * 1024;

impl Default for AttachmentArgs {
    fn default() -> Self {
        Self {
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            max_bytes: DEFAULT_ATTACHMENT_MAX_BYTES,
            max_uploads: DEFAULT_MAX_UPLOADS,
            orphan_ttl: std::time::Duration::from_secs(24 * 3600),
            thumbnail_workers: DEFAULT_THUMBNAIL_WORKERS,
            thumbnail_queue: DEFAULT_THUMBNAIL_QUEUE,
            thumbnail_max_dimension: DEFAULT_THUMBNAIL_MAX_DIMENSION,
            thumbnail_max_alloc: DEFAULT_THUMBNAIL_MAX_ALLOC,
            avatar_max_bytes: DEFAULT_AVATAR_MAX_BYTES,
        }
    }
}

/// Outgoing mail (verification links, password resets) and its queue;
/// see docs/operations.md, "Mail".
#[derive(Clone, Debug, Args)]
pub struct MailArgs {
    /// Where mail goes: `file` writes each mail to `<data dir>/mail/` and
    /// logs the file's path (a developer's machine, no mail server); or an
    /// SMTP server, `smtp://[user:password@]host[:port]` (port 587 by
    /// default) or `smtps://...` (implicit TLS, port 465).
    #[arg(
        long,
        env = "PARLEY_MAIL",
        default_value = "file",
        hide_env_values = true
    )]
    pub mail: String,
    /// TLS to the SMTP server: `starttls` (the default for `smtp://`),
    /// `tls` (the default for `smtps://`), or `none` (plain text: only for
    /// a relay on the same host).
    #[arg(long, env = "PARLEY_MAIL_TLS", value_enum)]
    pub mail_tls: Option<MailTls>,
    /// The From of every mail.
    #[arg(
        long,
        env = "PARLEY_MAIL_FROM",
        default_value = "Parley <parley@localhost>"
    )]
    pub mail_from: String,
    /// The base URL people reach Parley at, for the links in mails: the
    /// verification link is `<url>/v1/auth/verify-email?token=...`, the
    /// password reset link `<url>/reset-password?token=...` (a page of
    /// the web app, which posts the token and the new password).
    #[arg(
        long,
        env = "PARLEY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    /// Attempts to send a mail before it is parked for an admin.
    #[arg(long, env = "PARLEY_MAIL_MAX_ATTEMPTS", default_value_t = DEFAULT_MAIL_MAX_ATTEMPTS)]
    pub mail_max_attempts: u32,
    /// Wait before the second attempt; each further one waits twice as
    /// long (up to an hour), with jitter.
    #[arg(long, env = "PARLEY_MAIL_RETRY_BASE", default_value = "30s", value_parser = shared::config::parse_duration)]
    pub mail_retry_base: std::time::Duration,
    /// How often each api node looks for due mail (mail queued on a node
    /// wakes that node's sender at once).
    #[arg(long, env = "PARLEY_MAIL_POLL_INTERVAL", default_value = "5s", value_parser = shared::config::parse_duration)]
    pub mail_poll_interval: std::time::Duration,
    /// What an account whose address is not verified may do besides log
    /// in and read: `true` lets it post, react and create rooms too;
    /// `false` refuses those (403 `email_unverified`). Unset: `false` with
    /// an SMTP mailer, `true` with the file mailer (whose mail reaches no
    /// one but the operator, so verification would prove nothing).
    #[arg(long, env = "PARLEY_UNVERIFIED_MAY_POST", action = clap::ArgAction::Set)]
    pub unverified_may_post: Option<bool>,
    /// How long a verification link works.
    #[arg(long, env = "PARLEY_EMAIL_VERIFICATION_TTL", default_value = "48h", value_parser = shared::config::parse_duration)]
    pub email_verification_ttl: std::time::Duration,
    /// How long a password reset link works.
    #[arg(long, env = "PARLEY_PASSWORD_RESET_TTL", default_value = "30m", value_parser = shared::config::parse_duration)]
    pub password_reset_ttl: std::time::Duration,
    /// Verification mails, and separately password reset mails, one
    /// account may be sent per hour; requests beyond it are refused (429)
    /// or, for resets, silently dropped (the answer must not tell).
    #[arg(long, env = "PARLEY_ACCOUNT_MAILS_PER_HOUR", default_value_t = DEFAULT_ACCOUNT_MAILS_PER_HOUR)]
    pub account_mails_per_hour: u32,
}

/// TLS to the SMTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MailTls {
    None,
    Starttls,
    Tls,
}

/// Eight attempts at the default backoff span about an hour and a quarter
/// (30 s doubling): an outage of the mail server longer than that needs an
/// operator anyway.
pub const DEFAULT_MAIL_MAX_ATTEMPTS: u32 = 8;

/// Five: a person who did not get the mail tries again a few times; more
/// is a script mail-bombing an address through us.
pub const DEFAULT_ACCOUNT_MAILS_PER_HOUR: u32 = 5;

impl Default for MailArgs {
    fn default() -> Self {
        Self {
            mail: "file".into(),
            mail_tls: None,
            mail_from: "Parley <parley@localhost>".into(),
            public_url: "http://127.0.0.1:8080".into(),
            mail_max_attempts: DEFAULT_MAIL_MAX_ATTEMPTS,
            mail_retry_base: std::time::Duration::from_secs(30),
            mail_poll_interval: std::time::Duration::from_secs(5),
            unverified_may_post: None,
            email_verification_ttl: std::time::Duration::from_secs(48 * 3600),
            password_reset_ttl: std::time::Duration::from_secs(30 * 60),
            account_mails_per_hour: DEFAULT_ACCOUNT_MAILS_PER_HOUR,
        }
    }
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
    /// Logins (each password and each second-factor code, right or wrong)
    /// one client IP may try per 15 minutes on all api nodes together; the
    /// next attempt from it is refused until the window ends. Set it above
    /// the busiest NAT your users share.
    #[arg(long, env = "PARLEY_RATE_LOGINS_PER_IP", default_value_t = 100)]
    pub logins_per_ip_per_15min: u32,
    /// Signups one client IP may make per hour on all api nodes together.
    #[arg(long, env = "PARLEY_RATE_SIGNUPS_PER_IP", default_value_t = 20)]
    pub signups_per_ip_per_hour: u32,
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
    /// How long a deleted account's username stays unavailable to others.
    #[arg(long, env = "PARLEY_USERNAME_HOLD", default_value = "30d", value_parser = shared::config::parse_duration)]
    pub username_hold: std::time::Duration,
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

/// A deleted account's username is free for others after this (30 days).
pub const DEFAULT_USERNAME_HOLD: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

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
            logins_per_ip_per_15min: 100,
            signups_per_ip_per_hour: 20,
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
            username_hold: DEFAULT_USERNAME_HOLD,
        }
    }
}
