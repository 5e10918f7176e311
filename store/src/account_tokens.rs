//! Single-use secrets mailed to users: email verification and password
//! reset.
//!
//! Only the SHA-256 of a token is stored (a token is random and
//! high-entropy, so a fast hash suffices and a database dump holds nothing
//! usable). Using a token is one conditional UPDATE (unused, unexpired, of
//! its purpose), so two uses racing cannot both succeed. Used tokens keep
//! their row until a day past expiry: the per-account mail limits count
//! them.

use crate::error::unique_violation;
use crate::{Result, Store};
use shared::model::User;
use shared::{SessionId, UserId};
use sqlx::Row;

/// What a token is good for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::ResetPassword => "reset_password",
        }
    }
}

pub struct NewAccountToken<'a> {
    pub token_hash: &'a str,
    pub user_id: UserId,
    pub purpose: TokenPurpose,
    /// The address the token is mailed to.
    pub email: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What using a verification token did.
#[derive(Debug)]
pub enum EmailVerification {
    /// The address is verified (or was already).
    Verified(User),
    /// Unknown, used, expired, of another purpose, or for an address the
    /// account no longer has.
    Invalid,
    /// Another account verified the address after this mail left.
    AddressTaken,
}

/// A password reset that took effect.
#[derive(Debug)]
pub struct PasswordReset {
    pub user_id: UserId,
    /// The sessions it revoked (all the account's live ones).
    pub revoked_sessions: Vec<SessionId>,
}

impl Store {
    #[tracing::instrument(skip_all, fields(user_id = %new.user_id, purpose = new.purpose.as_str()))]
    pub async fn create_account_token(&self, new: NewAccountToken<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_tokens (token_hash, user_id, purpose, email, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new.token_hash)
        .bind(new.user_id.0)
        .bind(new.purpose.as_str())
        .bind(new.email)
        .bind(new.created_at)
        .bind(new.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tokens of `purpose` minted for `user_id` since `since` (for the
    /// per-account mail limits).
    #[tracing::instrument(skip(self))]
    pub async fn account_tokens_since(
        &self,
        user_id: UserId,
        purpose: TokenPurpose,
        since: i64,
    ) -> Result<i64> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM account_tokens WHERE user_id = $1 AND purpose = $2 AND created_at >= $3",
                )
                .bind(user_id.0)
                .bind(purpose.as_str())
                .bind(since)
                .fetch_one(pool)
            })
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Uses a verification token: the account's address is verified if
    /// the token is unused, unexpired, and was mailed to the address the
    /// account still has, and no other account verified the address since
    /// the mail left (addresses are unique among verified accounts). Nothing
    /// changes otherwise.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(&self, token_hash: &str, now: i64) -> Result<EmailVerification> {
        let mut tx = self.begin_write().await?;
        let Some(token) = use_token(&mut tx, token_hash, TokenPurpose::VerifyEmail, now).await?
        else {
            return Ok(EmailVerification::Invalid);
        };
        let row = sqlx::query(
            "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $3) \
             WHERE id = $1 AND email = $2 RETURNING id, username, email, email_verified_at, role, created_at, \
             display_name, status_text, avatar_id",
        )
        .bind(token.0.0)
        .bind(token.1.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            Ok(Some(row)) => row,
            // The address changed since the mail: the token proves nothing
            // about the current one (and the rollback leaves it unused).
            Ok(None) => return Ok(EmailVerification::Invalid),
            Err(e) if unique_violation(&e) == Some("users_verified_email_key") => {
                return Ok(EmailVerification::AddressTaken);
            }
            Err(e) => return Err(e.into()),
        };
        let user = crate::users::user_from_row(&row)?;
        tx.commit().await?;
        Ok(EmailVerification::Verified(user))
    }

    /// Uses a reset token: sets the password hash, spends every other
    /// reset token of the account, revokes all its sessions, and (the
    /// mail reached the account's current address) verifies the address.
    /// None if the token is not good (nothing changes).
    #[tracing::instrument(skip_all)]
    pub async fn reset_password(
        &self,
        token_hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<PasswordReset>> {
        let mut tx = self.begin_write().await?;
        let Some((user_id, email)) =
            use_token(&mut tx, token_hash, TokenPurpose::ResetPassword, now).await?
        else {
            return Ok(None);
        };
        let updated = sqlx::query(
            "UPDATE users SET password_hash = $2, \
             email_verified_at = COALESCE(email_verified_at, CASE WHEN email = $3 AND NOT EXISTS \
             (SELECT 1 FROM users o WHERE o.email = $3 AND o.email_verified_at IS NOT NULL AND o.id <> $1) \
             THEN $4 END) WHERE id = $1",
        )
        .bind(user_id.0)
        .bind(password_hash)
        .bind(email.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE account_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(user_id.0)
        .bind(TokenPurpose::ResetPassword.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let revoked_sessions =
            crate::sessions::revoke_sessions_of(&mut tx, user_id, None, now).await?;
        tx.commit().await?;
        Ok(Some(PasswordReset {
            user_id,
            revoked_sessions,
        }))
    }

    /// Deletes tokens that expired before `before`; how many.
    pub async fn delete_account_tokens_expired_before(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM account_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Marks the token used if it is good for `purpose` at `now`: its account
/// and the address it was mailed to.
async fn use_token(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    token_hash: &str,
    purpose: TokenPurpose,
    now: i64,
) -> Result<Option<(UserId, String)>> {
    let row = sqlx::query(
        "UPDATE account_tokens SET used_at = $3 \
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
         RETURNING user_id, email",
    )
    .bind(token_hash)
    .bind(purpose.as_str())
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| Ok((UserId(row.try_get("user_id")?), row.try_get("email")?)))
        .transpose()
}
