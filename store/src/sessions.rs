//! Login sessions and their rotating refresh tokens.
//!
//! Only SHA-256 hashes of refresh secrets are stored. Each refresh replaces
//! the current hash and keeps the one before; a client presenting that
//! previous secret again is replaying a token that was already used, which
//! means it leaked, so the whole session is revoked.

use crate::{Backend, Result, Store};
use shared::model::time_from_millis;
use shared::{SessionId, UserId};
use sqlx::Row;

pub struct NewSession<'a> {
    pub id: SessionId,
    pub user_id: UserId,
    pub refresh_hash: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
    pub user_agent: Option<&'a str>,
}

/// A live session as its owner sees it.
pub struct SessionRecord {
    pub id: SessionId,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub user_agent: Option<String>,
}

/// The result of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it has been replaced by the new hash.
    Rotated { user_id: UserId },
    /// The token was the one before the current: replay of a leaked token.
    /// The session is now revoked.
    Reused { user_id: UserId },
    /// Unknown, expired or revoked session, or a wrong secret.
    Invalid,
}

impl Store {
    /// Starts a session, unless the account is suspended or deleted (then
    /// false). The account row is read under a share lock (PostgreSQL; on
    /// SQLite the write transaction is exclusive), so a suspension that
    /// commits meanwhile either sees this session and revokes it, or is
    /// seen here.
    #[tracing::instrument(skip_all, fields(session_id = %new.id, user_id = %new.user_id))]
    pub async fn create_session(&self, new: NewSession<'_>) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let active = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM users WHERE id = $1 AND suspended_at IS NULL AND deleted_at IS NULL{lock}"
        )))
        .bind(new.user_id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at, user_agent) \
             VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(new.id.to_string())
        .bind(new.user_id.0)
        .bind(new.refresh_hash)
        .bind(new.created_at)
        .bind(new.expires_at)
        .bind(new.user_agent)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Swaps the session's refresh hash from `presented` to `replacement`
    /// if `presented` is current; detects replays of the previous one.
    #[tracing::instrument(skip(self, presented, replacement))]
    pub async fn rotate_refresh(
        &self,
        id: SessionId,
        presented: &str,
        replacement: &str,
        now: i64,
        new_expiry: i64,
    ) -> Result<RefreshOutcome> {
        // The compare-and-swap is the UPDATE's WHERE clause, so two
        // refreshes racing with one token cannot both succeed.
        let rotated = sqlx::query(
            "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = $3, last_used_at = $4, expires_at = $5 \
             WHERE id = $1 AND refresh_hash = $2 AND revoked_at IS NULL AND expires_at > $4 RETURNING user_id",
        )
        .bind(id.to_string())
        .bind(presented)
        .bind(replacement)
        .bind(now)
        .bind(new_expiry)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = rotated {
            return Ok(RefreshOutcome::Rotated {
                user_id: UserId(row.try_get("user_id")?),
            });
        }
        let replayed = sqlx::query(
            "UPDATE sessions SET revoked_at = $3 WHERE id = $1 AND previous_hash = $2 AND revoked_at IS NULL RETURNING user_id",
        )
        .bind(id.to_string())
        .bind(presented)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match replayed {
            Some(row) => RefreshOutcome::Reused {
                user_id: UserId(row.try_get("user_id")?),
            },
            None => RefreshOutcome::Invalid,
        })
    }

    /// Revokes one of `user_id`'s sessions; false if there was none to revoke.
    #[tracing::instrument(skip(self))]
    pub async fn revoke_session(&self, id: SessionId, user_id: UserId, now: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE sessions SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
            .bind(id.to_string())
            .bind(user_id.0)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// When a session that may still be used (not revoked, not expired)
    /// expires (ms since the epoch); None if it may not. What a gateway
    /// needs to vouch for the session later without asking again.
    #[tracing::instrument(skip(self))]
    pub async fn session_active_until(&self, id: SessionId, now: i64) -> Result<Option<i64>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT expires_at FROM sessions \
                     WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
                )
                .bind(id.to_string())
                .bind(now)
                .fetch_optional(pool)
            })
            .await?;
        Ok(row.map(|r| r.try_get("expires_at")).transpose()?)
    }

    /// Whether a session may still be used (not revoked, not expired).
    #[tracing::instrument(skip(self))]
    pub async fn session_active(&self, id: SessionId, now: i64) -> Result<bool> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
            "SELECT 1 FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(now)
        .fetch_optional(pool)
            })
            .await?;
        Ok(row.is_some())
    }

    /// The user's live sessions, most recently used first.
    #[tracing::instrument(skip(self))]
    pub async fn sessions(&self, user_id: UserId, now: i64) -> Result<Vec<SessionRecord>> {
        let pool = &self.pool;
        let rows = self.read(|| sqlx::query(
            "SELECT id, created_at, last_used_at, expires_at, user_agent FROM sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY last_used_at DESC",
        )
        .bind(user_id.0)
        .bind(now)
        .fetch_all(pool)).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                Ok(SessionRecord {
                    id: id
                        .parse()
                        .map_err(|_| crate::StoreError::Corrupt(format!("session id {id:?}")))?,
                    created_at: time_from_millis(row.try_get("created_at")?),
                    last_used_at: time_from_millis(row.try_get("last_used_at")?),
                    expires_at: time_from_millis(row.try_get("expires_at")?),
                    user_agent: row.try_get("user_agent")?,
                })
            })
            .collect()
    }
}

/// Revokes every live session of `user` but `keep`, inside the caller's
/// transaction; the ids revoked (their sockets are the caller's to close).
pub(crate) async fn revoke_sessions_of(
    conn: &mut sqlx::AnyConnection,
    user: UserId,
    keep: Option<SessionId>,
    now: i64,
) -> Result<Vec<SessionId>> {
    // '' is no session id, so "keep none" needs no second statement.
    let keep = keep.map(|k| k.to_string()).unwrap_or_default();
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND id <> $3 AND revoked_at IS NULL RETURNING id",
    )
    .bind(user.0)
    .bind(now)
    .bind(keep)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            id.parse()
                .map_err(|_| crate::StoreError::Corrupt(format!("session id {id:?}")))
        })
        .collect()
}
