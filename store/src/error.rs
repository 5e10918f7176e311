use sqlx::error::DatabaseError;
use std::sync::Arc;

/// What can go wrong in the store. Conflicts that a client caused are
/// reported as their own variants by the functions that can hit them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is overloaded (the pool timed out).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for a reason that is a bug or a broken database.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row holds a value this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
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
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            other => StoreError::Database(other),
        }
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
        ("users_email_key", "users.email"),
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
