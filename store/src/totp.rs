//! Two-factor login: each account's TOTP secret, its recovery codes, and
//! the challenges of logins that passed the password and wait for a code.
//!
//! Every "use once" rule is one conditional statement, so two api nodes
//! racing with the same code or challenge cannot both win: a TOTP step is
//! accepted only if it is newer than the last accepted one, a recovery code
//! only while `used_at` is NULL, a challenge is deleted by the statement
//! that takes it.

use crate::{Result, Store};
use shared::UserId;
use sqlx::Row;

/// An account's authenticator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotpRecord {
    /// base32
    pub secret: String,
    /// Whether it guards the login (the user confirmed a code).
    pub confirmed: bool,
}

/// A pending two-factor login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginChallenge {
    pub user_id: UserId,
    pub attempts: i64,
    pub user_agent: Option<String>,
    pub expires_at: i64,
}

impl Store {
    /// The account's authenticator, confirmed or not.
    #[tracing::instrument(skip(self))]
    pub async fn totp(&self, user: UserId) -> Result<Option<TotpRecord>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query("SELECT secret, confirmed_at FROM user_totp WHERE user_id = $1")
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TotpRecord {
            secret: row.try_get("secret")?,
            confirmed: row.try_get::<Option<i64>, _>("confirmed_at")?.is_some(),
        }))
    }

    /// Stores a new, unconfirmed secret for `user`, replacing an unconfirmed
    /// one. False (nothing changed) if the account has a confirmed one.
    #[tracing::instrument(skip(self, secret))]
    pub async fn begin_totp(&self, user: UserId, secret: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let current = sqlx::query("SELECT confirmed_at FROM user_totp WHERE user_id = $1")
            .bind(user.0)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = current {
            if row.try_get::<Option<i64>, _>("confirmed_at")?.is_some() {
                return Ok(false);
            }
            sqlx::query("DELETE FROM user_totp WHERE user_id = $1")
                .bind(user.0)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO user_totp (user_id, secret, created_at, last_used_step) VALUES ($1, $2, $3, 0)",
        )
        .bind(user.0)
        .bind(secret)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Confirms `user`'s pending secret with the code of `step`, and stores
    /// `recovery_hashes` as the account's recovery codes (replacing any).
    /// False if there is no pending secret (none, or confirmed already).
    #[tracing::instrument(skip(self, recovery_hashes))]
    pub async fn confirm_totp(
        &self,
        user: UserId,
        step: i64,
        recovery_hashes: &[String],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let confirmed = sqlx::query(
            "UPDATE user_totp SET confirmed_at = $2, last_used_step = $3 \
             WHERE user_id = $1 AND confirmed_at IS NULL",
        )
        .bind(user.0)
        .bind(now)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        if confirmed.rows_affected() == 0 {
            return Ok(false);
        }
        replace_codes(&mut tx, user, recovery_hashes).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Accepts a code of `step` for `user`'s confirmed authenticator once:
    /// true only if `step` is newer than every step accepted before.
    #[tracing::instrument(skip(self))]
    pub async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool> {
        let used = sqlx::query(
            "UPDATE user_totp SET last_used_step = $2 \
             WHERE user_id = $1 AND confirmed_at IS NOT NULL AND last_used_step < $2",
        )
        .bind(user.0)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(used.rows_affected() == 1)
    }

    /// Spends one of `user`'s recovery codes; false if it is not one, or
    /// was spent.
    #[tracing::instrument(skip(self, code_hash))]
    pub async fn use_recovery_code(&self, user: UserId, code_hash: &str, now: i64) -> Result<bool> {
        let used = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user.0)
        .bind(code_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(used.rows_affected() == 1)
    }

    /// How many unspent recovery codes `user` has.
    #[tracing::instrument(skip(self))]
    pub async fn recovery_codes_left(&self, user: UserId) -> Result<i64> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT count(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                )
                .bind(user.0)
                .fetch_one(pool)
            })
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Replaces `user`'s recovery codes.
    #[tracing::instrument(skip(self, recovery_hashes))]
    pub async fn replace_recovery_codes(
        &self,
        user: UserId,
        recovery_hashes: &[String],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        replace_codes(&mut tx, user, recovery_hashes).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes `user`'s authenticator, recovery codes and pending challenges.
    #[tracing::instrument(skip(self))]
    pub async fn disable_totp(&self, user: UserId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for statement in [
            "DELETE FROM user_totp WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM login_challenges WHERE user_id = $1",
        ] {
            sqlx::query(statement)
                .bind(user.0)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip(self, challenge_hash, user_agent))]
    pub async fn create_login_challenge(
        &self,
        challenge_hash: &str,
        user: UserId,
        user_agent: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_challenges (challenge_hash, user_id, attempts, user_agent, created_at, expires_at) \
             VALUES ($1, $2, 0, $3, $4, $5)",
        )
        .bind(challenge_hash)
        .bind(user.0)
        .bind(user_agent)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Counts one attempt at a challenge and returns it as it is after
    /// that; None if there is no such challenge or it expired before `now`.
    #[tracing::instrument(skip_all)]
    pub async fn attempt_login_challenge(
        &self,
        challenge_hash: &str,
        now: i64,
    ) -> Result<Option<LoginChallenge>> {
        let row = sqlx::query(
            "UPDATE login_challenges SET attempts = attempts + 1 \
             WHERE challenge_hash = $1 AND expires_at > $2 \
             RETURNING user_id, attempts, user_agent, expires_at",
        )
        .bind(challenge_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LoginChallenge {
            user_id: UserId(row.try_get("user_id")?),
            attempts: row.try_get("attempts")?,
            user_agent: row.try_get("user_agent")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Deletes a challenge (used, or out of attempts); whether it existed.
    #[tracing::instrument(skip_all)]
    pub async fn end_login_challenge(&self, challenge_hash: &str) -> Result<bool> {
        let ended = sqlx::query("DELETE FROM login_challenges WHERE challenge_hash = $1")
            .bind(challenge_hash)
            .execute(&self.pool)
            .await?;
        Ok(ended.rows_affected() == 1)
    }

    /// Deletes challenges that expired before `now`; how many.
    pub async fn delete_expired_login_challenges(&self, now: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM login_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected())
    }
}

async fn replace_codes(
    conn: &mut sqlx::AnyConnection,
    user: UserId,
    recovery_hashes: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user.0)
        .execute(&mut *conn)
        .await?;
    for hash in recovery_hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user.0)
            .bind(hash)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
