//! The storage seam.
//!
//! One [`Store`] serves both deployment shapes: PostgreSQL for a cluster and
//! SQLite (WAL mode, one file) for a single node. It is written once against
//! sqlx's `Any` driver with SQL both dialects accept, so the api and the
//! gateway cannot tell which engine is underneath, and the two cannot drift
//! apart behaviourally. The rare statements that must differ (appending
//! messages, which PostgreSQL does in one statement) branch on [`Backend`].
//! Message posts are committed in shared batches by [`MessageAppender`].
//!
//! A database that restarts, fails over or kills connections is the
//! server's fault, not the request's: such errors are
//! [`StoreError::Unavailable`] (a 503 to clients), reads that hit a dead
//! connection are retried once on a fresh one (`Store::read`), and the
//! pool replaces its dead connections without a ping per checkout
//! (`liveness.rs`).
//!
//! All times are stored as milliseconds since the Unix epoch.

mod account_admin;
mod account_tokens;
mod api_keys;
mod append;
mod audit;
mod error;
#[macro_use]
mod events;
mod attachments;
mod liveness;
mod mail;
mod markers;
mod messages;
mod profiles;
mod provision;
mod room_admin;
mod rooms;
mod search;
mod sessions;
mod tickets;
mod totp;
mod users;

pub use account_admin::{
    AccountState, AdminUserFilter, DELETED_USERNAME_PREFIX, DeletedAccount, MembershipOf,
    deleted_username,
};
pub use account_tokens::{EmailVerification, NewAccountToken, PasswordReset, TokenPurpose};
pub use api_keys::{
    ApiKeyRecord, CreateApiKeyError, CustomOutcome, IDEMPOTENCY_TTL_MS, Idempotency, NewApiKey,
    NewCustomEvent,
};
pub use append::{MAX_BATCH, MessageAppender, QUEUE_CAPACITY};
pub use attachments::{
    AttachedPostOutcome, NewUpload, ReadableAttachment, ThumbnailRecorded, ThumbnailResult,
};
pub use audit::{NewSecurityEvent, SecurityEventRecord};
pub use error::StoreError;
pub use events::{MAX_HISTORY_PAGE, NewMessage, PostOutcome};
pub use mail::{ClaimedMailJob, MailJob, NewMailJob, RetryAt};
pub use markers::{FLUSH_INTERVAL, MarkerChange, MarkerStats, MarkerUpdate, MarkerWriter};
pub use messages::{ChangeOutcome, MAX_DISTINCT_REACTIONS, MessageChange};
pub use profiles::{AvatarReplaced, ProfileUpdate, StoredAvatar, VisibleProfile};
pub use provision::{ProvisionError, ProvisionSpec, Provisioned, UNUSABLE_PASSWORD};
pub use room_admin::{DeletedRoom, InvitationError, ProfileChange, RoomChangeError};
pub use rooms::{
    AddMemberError, DirectRoom, MAX_ROOMS_PAGE, MemberIds, Membership, RemoveMemberError,
    RoomCursor, RoomProfile,
};
pub use search::{
    Explain, SEARCH_TIMEOUT_MS, SearchClause, SearchExpr, SearchHit, SearchKey, SearchRequest,
};
pub use sessions::{NewSession, RefreshOutcome, SessionRecord};
pub use tickets::{NewTicket, TicketGrant};
pub use totp::{LoginChallenge, TotpRecord};
pub use users::{ChangeEmailError, CreateUserError, EmailChange, NewUser, UserCredentials};

use liveness::Liveness;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a request waits for a pooled connection before the store is
/// reported unavailable (a 503), rather than queueing without bound.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long SQLite waits for the write lock held by another connection of
/// this process before giving up. Writes are short; 5 s only passes when
/// something is wrong.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Describes and registers, at zero, every metric the store records (the
/// group commit of posts, the marker writer, dead-connection handling), so
/// a fresh node exports them all.
pub fn register_metrics() {
    append::register_metrics();
    markers::register_metrics();
    liveness::register_metrics();
    metrics::describe_counter!(
        "store_read_retries_total",
        "Reads retried once on a fresh connection after hitting a dead one"
    );
    metrics::counter!("store_read_retries_total").increment(0);
}

/// Which engine a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(StoreError::Config(format!(
                "unsupported database URL {:?}: use postgres://... or sqlite://...",
                url.split("://").next().unwrap_or("")
            )))
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        }
    }
}

/// Everything the services persist. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Which pooled connections to trust; shared with the pool's hook.
    liveness: Arc<Liveness>,
}

impl Store {
    /// Connects a pool. For SQLite the file (and its directory) is created
    /// if missing and the journal is switched to WAL.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("invalid database URL: {e}")))?;
        let liveness = Liveness::new();
        let hook = liveness.clone();
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping before every checkout doubles the round trips of the
            // hot path. Dead connections are found by `liveness` instead:
            // after a connection-level failure the older ones are replaced,
            // and only a connection idle for a while is pinged.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| hook.before_acquire(conn, meta));
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;"
                    )))
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(StoreError::from)?;
        Ok(Store {
            pool,
            backend,
            liveness,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations this binary embeds for its backend.
    pub async fn migrate(&self) -> Result<()> {
        self.backend
            .migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// Answers when the database does (readiness probes). A dead pooled
    /// connection does not make it fail: like any read, it is retried once
    /// on a fresh connection.
    pub async fn ping(&self) -> Result<()> {
        let pool = &self.pool;
        self.read(|| sqlx::query("SELECT 1").execute(pool)).await?;
        Ok(())
    }

    /// Whether the database seems down: the last operation could not reach
    /// it and none has succeeded since. Costs nothing (no query); for
    /// refusing work early while it is down.
    pub fn seems_down(&self) -> bool {
        self.liveness.seems_down()
    }

    /// Runs a read, and once more if it failed because its connection was
    /// dead (the database restarted or terminated the backend since the
    /// connection was last used): the retry runs on a connection opened
    /// after the failure (see `liveness.rs`), so the first request after the
    /// database is back succeeds. Only for statements that change nothing:
    /// a write whose connection died may or may not have committed.
    async fn read<T, F, Fut>(&self, mut query: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        match query().await {
            Err(e) if error::is_connection_failure(&e) => {
                self.liveness.connection_failed();
                metrics::counter!("store_read_retries_total").increment(1);
                tracing::info!(error = %e, "a read hit a dead connection; retrying on a fresh one");
                self.observe(query().await)
            }
            outcome => self.observe(outcome),
        }
    }

    /// Records what an operation's outcome says about the database's
    /// health, and converts its error.
    fn observe<T>(&self, outcome: Result<T, sqlx::Error>) -> Result<T> {
        match outcome {
            Ok(value) => {
                self.liveness.succeeded();
                Ok(value)
            }
            Err(e) => {
                if error::is_connection_failure(&e) {
                    self.liveness.connection_failed();
                }
                let e = StoreError::from(e);
                if e.is_unavailable() {
                    self.liveness.unavailable();
                }
                Err(e)
            }
        }
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction. SQLite's must take the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then
    /// writes can fail with SQLITE_BUSY instead of waiting its turn.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let begun = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        };
        // A dead connection usually shows at BEGIN, before anything is
        // written: note it so the pool replaces its other old connections.
        if let Err(e) = &begun
            && error::is_connection_failure(e)
        {
            self.liveness.connection_failed();
        }
        begun
    }
}

/// `sqlite://path` with the options a node needs: create the file when
/// missing (and its directory).
fn prepare_sqlite_url(url: &str) -> Result<String> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Config(
            "an in-memory SQLite database loses everything on exit; give a file path".into(),
        ));
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_follows_the_url_scheme() {
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("sqlite://data/p.db").unwrap(),
            Backend::Sqlite
        );
        assert!(Backend::from_url("mysql://h/db").is_err());
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        let dir = std::env::temp_dir().join(format!("parley-url-{}", std::process::id()));
        let url = format!("sqlite://{}/x.db", dir.display());
        assert_eq!(prepare_sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.is_dir());
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
