//! The audit log: security events with when, who and from where.

use crate::{Result, Store};
use shared::UserId;
use sqlx::Row;

pub struct NewSecurityEvent<'a> {
    /// The account concerned (None: a failed login naming no account, an
    /// admin action on no account).
    pub user_id: Option<UserId>,
    pub kind: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// A JSON object.
    pub detail: Option<&'a str>,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct SecurityEventRecord {
    pub id: i64,
    pub user_id: Option<UserId>,
    pub kind: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
}

impl Store {
    pub async fn record_security_event(&self, event: NewSecurityEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO security_events (user_id, kind, ip, user_agent, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event.user_id.map(|u| u.0))
        .bind(event.kind)
        .bind(event.ip)
        .bind(event.user_agent)
        .bind(event.detail)
        .bind(event.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first: up to `limit` events with an id below `before_id`, of
    /// `user` only when given.
    pub async fn security_events(
        &self,
        user: Option<UserId>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<SecurityEventRecord>> {
        let before = before_id.unwrap_or(i64::MAX);
        let pool = &self.pool;
        let rows = self
            .read(|| {
                let query = match user {
                    Some(user) => sqlx::query(
                        "SELECT id, user_id, kind, ip, user_agent, detail, created_at FROM security_events \
                         WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    )
                    .bind(user.0),
                    None => sqlx::query(
                        "SELECT id, user_id, kind, ip, user_agent, detail, created_at FROM security_events \
                         WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    ),
                };
                query.bind(before).bind(limit).fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SecurityEventRecord {
                    id: row.try_get("id")?,
                    user_id: row.try_get::<Option<i64>, _>("user_id")?.map(UserId),
                    kind: row.try_get("kind")?,
                    ip: row.try_get("ip")?,
                    user_agent: row.try_get("user_agent")?,
                    detail: row.try_get("detail")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Deletes events older than `cutoff` (ms); how many.
    pub async fn delete_security_events_before(&self, cutoff: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM security_events WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
