//! Single-use tickets that open a Server-Sent Events stream.
//!
//! The api issues one to a caller with a valid access token; a gateway
//! takes it (deleting it in the same statement, so two streams can never
//! share one) and opens the stream as that caller's session. Only the
//! SHA-256 of a ticket is stored: the ticket is random and high-entropy, so
//! a fast hash is enough, and a database dump holds nothing usable.

use crate::{Result, Store};
use shared::{SessionId, UserId};
use sqlx::Row;

pub struct NewTicket<'a> {
    pub ticket_hash: &'a str,
    pub user_id: UserId,
    pub session_id: SessionId,
    /// When the access token that asked for it expires (ms).
    pub token_expires_at: i64,
    /// When the ticket stops being good (ms).
    pub expires_at: i64,
}

/// What a taken ticket grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TicketGrant {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub token_expires_at: i64,
}

impl Store {
    #[tracing::instrument(skip_all, fields(user_id = %new.user_id))]
    pub async fn create_sse_ticket(&self, new: NewTicket<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO sse_tickets (ticket_hash, user_id, session_id, token_expires_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new.ticket_hash)
        .bind(new.user_id.0)
        .bind(new.session_id.to_string())
        .bind(new.token_expires_at)
        .bind(new.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the ticket with this hash: it is deleted whether or not it is
    /// still good, and what it grants is returned only if it was (not
    /// expired at `now`). A second take of the same ticket finds nothing.
    #[tracing::instrument(skip_all)]
    pub async fn take_sse_ticket(
        &self,
        ticket_hash: &str,
        now: i64,
    ) -> Result<Option<TicketGrant>> {
        let row = sqlx::query(
            "DELETE FROM sse_tickets WHERE ticket_hash = $1 \
             RETURNING user_id, session_id, token_expires_at, expires_at",
        )
        .bind(ticket_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<i64, _>("expires_at")? <= now {
            return Ok(None);
        }
        let session: String = row.try_get("session_id")?;
        let Ok(session_id) = session.parse() else {
            return Ok(None);
        };
        Ok(Some(TicketGrant {
            user_id: UserId(row.try_get("user_id")?),
            session_id,
            token_expires_at: row.try_get("token_expires_at")?,
        }))
    }

    /// Deletes tickets that expired before `now` (never taken); how many.
    pub async fn delete_expired_sse_tickets(&self, now: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sse_tickets WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
