//! What can go wrong in the store, and the one place that decides which
//! failures are the database server's (unavailable: a 503, retry) rather
//! than the statement's (a bug: a 500).

use sqlx::error::DatabaseError;
use std::sync::Arc;

/// What can go wrong in the store. Conflicts that a client caused are
/// reported as their own variants by the functions that can hit them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, the connection died under the query
    /// (see [`is_connection_failure`]), or the pool timed out (overload).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for a reason that is a bug or a broken database.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row holds a value this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A statement ran past its time limit and was cancelled (a search,
    /// see `search.rs`): the request asked too much, the database is fine.
    #[error("the statement ran past its time limit")]
    TimedOut,
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("{0}")]
    Config(String),
    /// The store takes no more writes: the service is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// The batch a message post was committed in failed as a whole; every
    /// post of the batch gets the same error.
    #[error(transparent)]
    Batch(Arc<StoreError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_connection_failure(&e)
            || matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// SQLSTATEs that mean "this connection is gone (or cannot be had) because
/// of the server", never because of the query:
/// * class 08, connection exception;
/// * 57P01 admin_shutdown (a fast shutdown, `pg_terminate_backend`),
///   57P02 crash_shutdown (another backend crashed), 57P03
///   cannot_connect_now (starting up or shutting down), 57P05
///   idle_session_timeout;
/// * 25P03 idle_in_transaction_session_timeout;
/// * 53300 too_many_connections.
const CONNECTION_SQLSTATES: &[&str] = &["57P01", "57P02", "57P03", "57P05", "25P03", "53300"];

/// Whether `e` says the connection it happened on is dead or could not be
/// opened, as opposed to the statement being wrong: the database restarted,
/// failed over, terminated the backend, or cannot be reached. Such an error
/// is the server's, so clients get a 503 and retry; and the store replaces
/// the pool's older connections (`liveness.rs`).
pub(crate) fn is_connection_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || CONNECTION_SQLSTATES.contains(&&*code)),
        _ => false,
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed => true,
            StoreError::Batch(cause) => cause.is_unavailable(),
            _ => false,
        }
    }
}

/// Which named unique constraint an error violated, if any.
///
/// PostgreSQL reports the constraint's name; SQLite only says
/// `UNIQUE constraint failed: table.column, ...`, so each constraint is also
/// known by the first column SQLite names for it.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<&'static str> {
    const CONSTRAINTS: &[(&str, &str)] = &[
        ("users_username_key", "users.username"),
        ("users_verified_email_key", "users.email"),
        ("rooms_direct_key_key", "rooms.direct_key"),
        ("room_members_pkey", "room_members.room_id"),
        (
            "room_events_idempotency_key",
            "room_events.room_id, room_events.sender_id",
        ),
        ("room_events_pkey", "room_events.room_id, room_events.seq"),
    ];
    let db: &dyn DatabaseError = match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.as_ref(),
        _ => return None,
    };
    let message = db.message();
    CONSTRAINTS.iter().find_map(|(name, sqlite_columns)| {
        let by_name = db.constraint() == Some(*name);
        let by_columns = message
            .strip_prefix("UNIQUE constraint failed: ")
            .is_some_and(|cols| cols.starts_with(sqlite_columns));
        (by_name || by_columns).then_some(*name)
    })
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::error::ErrorKind;
    use std::borrow::Cow;

    /// A server error with a SQLSTATE, as a driver reports it.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl DatabaseError for ServerError {
        fn message(&self) -> &str {
            "server error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(code)))
    }

    #[test]
    fn a_terminated_or_unreachable_backend_is_unavailable() {
        for code in ["57P01", "57P02", "57P03", "08006", "08003", "53300"] {
            assert!(
                StoreError::from(server(code)).is_unavailable(),
                "SQLSTATE {code}"
            );
        }
        let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        assert!(StoreError::from(sqlx::Error::Io(closed)).is_unavailable());
        assert!(
            StoreError::from(sqlx::Error::Protocol("unexpected message".into())).is_unavailable()
        );
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
    }

    #[test]
    fn a_failing_statement_is_a_database_error() {
        for code in ["23505", "42601", "22P02", "40001"] {
            let e = StoreError::from(server(code));
            assert!(matches!(e, StoreError::Database(_)), "SQLSTATE {code}");
        }
        assert!(!is_connection_failure(&sqlx::Error::PoolTimedOut));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
    }
}
