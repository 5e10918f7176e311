//! What admins do to accounts (roles, suspension, the user list) and what
//! an owner's deletion of their account removes.

use crate::sessions::revoke_sessions_of;
use crate::users::account_role;
use crate::{Result, Store, StoreError};
use shared::model::{AccountRole, Role, RoomKind, time_from_millis};
use shared::rest::{AccountStatus, AdminUser};
use shared::{RoomId, SessionId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

/// An account's standing, for the checks that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub role: AccountRole,
    pub suspended: bool,
    pub deleted: bool,
}

/// A filter of [`Store::admin_users`].
#[derive(Clone, Debug, Default)]
pub struct AdminUserFilter {
    /// Lowercase prefix of the username or the email.
    pub prefix: Option<String>,
    pub status: AccountStatus,
    pub role: Option<AccountRole>,
    pub after_id: i64,
    pub limit: i64,
}

/// What deleting an account changed, for the caller to announce.
#[derive(Debug)]
pub struct DeletedAccount {
    /// The sessions that were live: their sockets must close.
    pub revoked_sessions: Vec<SessionId>,
    /// Rooms whose invitations to the account were dropped.
    pub invitations_dropped: Vec<RoomId>,
    /// The avatar the account had: its object is the caller's to delete.
    pub avatar_id: Option<String>,
}

/// A room an account is a member of.
#[derive(Clone, Copy, Debug)]
pub struct MembershipOf {
    pub room: RoomId,
    pub kind: RoomKind,
    pub role: Role,
}

/// The username a deleted account keeps: unique, and not one a person can
/// sign up with (signup names are at least 3 of `a-z0-9_`, and the api
/// refuses this prefix).
pub fn deleted_username(user: UserId) -> String {
    format!("deleted_{}", user.0)
}

/// Signup refuses names with this prefix (they belong to deleted accounts).
pub const DELETED_USERNAME_PREFIX: &str = "deleted_";

const ADMIN_USER_COLUMNS: &str = "u.id, u.username, u.email, u.email_verified_at, u.role, u.created_at, \
     u.suspended_at, u.deleted_at, \
     (SELECT COUNT(*) FROM user_totp t WHERE t.user_id = u.id AND t.confirmed_at IS NOT NULL) AS totp";

fn admin_user_from_row(row: &AnyRow) -> Result<AdminUser> {
    let deleted_at: Option<i64> = row.try_get("deleted_at")?;
    Ok(AdminUser {
        id: UserId(row.try_get("id")?),
        username: row.try_get("username")?,
        email: match deleted_at {
            Some(_) => None,
            None => Some(row.try_get("email")?),
        },
        email_verified: row
            .try_get::<Option<i64>, _>("email_verified_at")?
            .is_some(),
        role: account_role(row)?,
        two_factor: row.try_get::<i64, _>("totp")? > 0,
        created_at: time_from_millis(row.try_get("created_at")?),
        suspended_at: row
            .try_get::<Option<i64>, _>("suspended_at")?
            .map(time_from_millis),
        deleted_at: deleted_at.map(time_from_millis),
    })
}

/// `%` and `_` match literally in a LIKE prefix (escaped with `\`).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Store {
    /// The account's role and whether it is suspended or deleted.
    #[tracing::instrument(skip(self))]
    pub async fn account_state(&self, user: UserId) -> Result<Option<AccountState>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query("SELECT role, suspended_at, deleted_at FROM users WHERE id = $1")
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(AccountState {
                role: account_role(&row)?,
                suspended: row.try_get::<Option<i64>, _>("suspended_at")?.is_some(),
                deleted: row.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
            })
        })
        .transpose()
    }

    /// Sets the role of a live account; false if there is none.
    #[tracing::instrument(skip(self))]
    pub async fn set_account_role(&self, user: UserId, role: AccountRole) -> Result<bool> {
        let updated =
            sqlx::query("UPDATE users SET role = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(user.0)
                .bind(role.as_str())
                .execute(&self.pool)
                .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A live account's id by username (the command line names accounts so).
    #[tracing::instrument(skip(self))]
    pub async fn live_user_id(&self, username: &str) -> Result<Option<UserId>> {
        let row = sqlx::query("SELECT id FROM users WHERE username = $1 AND deleted_at IS NULL")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(UserId(r.try_get("id")?))).transpose()
    }

    /// One account as an admin sees it.
    #[tracing::instrument(skip(self))]
    pub async fn admin_user(&self, user: UserId) -> Result<Option<AdminUser>> {
        let sql = format!("SELECT {ADMIN_USER_COLUMNS} FROM users u WHERE u.id = $1");
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(admin_user_from_row).transpose()
    }

    /// Accounts in id order after `filter.after_id`, at most `filter.limit`.
    #[tracing::instrument(skip(self))]
    pub async fn admin_users(&self, filter: &AdminUserFilter) -> Result<Vec<AdminUser>> {
        let mut conditions = vec!["u.id > $1".to_owned()];
        match filter.status {
            AccountStatus::Active => {
                conditions.push("u.suspended_at IS NULL AND u.deleted_at IS NULL".into())
            }
            AccountStatus::Suspended => {
                conditions.push("u.suspended_at IS NOT NULL AND u.deleted_at IS NULL".into())
            }
            AccountStatus::Deleted => conditions.push("u.deleted_at IS NOT NULL".into()),
            AccountStatus::Any => {}
        }
        // Every parameter is used whatever the filter (SQLite refuses a
        // binding the statement does not have); '' means "any".
        conditions.push("($3 = '' OR u.role = $3)".into());
        // Usernames and emails are stored lowercase; a deleted account no
        // longer has a name or address to find it by.
        conditions.push(
            "($4 = '' OR ((u.username LIKE $4 ESCAPE '\\' OR u.email LIKE $4 ESCAPE '\\') AND u.deleted_at IS NULL))"
                .into(),
        );
        let sql = format!(
            "SELECT {ADMIN_USER_COLUMNS} FROM users u WHERE {} ORDER BY u.id LIMIT $2",
            conditions.join(" AND ")
        );
        let role = filter.role.map(AccountRole::as_str).unwrap_or_default();
        let pattern = filter
            .prefix
            .as_deref()
            .map(like_prefix)
            .unwrap_or_default();
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(filter.after_id)
                    .bind(filter.limit)
                    .bind(role)
                    .bind(pattern.clone())
                    .fetch_all(pool)
            })
            .await?;
        rows.iter().map(admin_user_from_row).collect()
    }

    /// Suspends a live account and revokes its sessions in one transaction;
    /// the sessions that were live (None: no such live account, or already
    /// suspended).
    #[tracing::instrument(skip(self))]
    pub async fn suspend_account(&self, user: UserId, now: i64) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE users SET suspended_at = $2 WHERE id = $1 AND suspended_at IS NULL AND deleted_at IS NULL",
        )
        .bind(user.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        let revoked = revoke_sessions_of(&mut tx, user, None, now).await?;
        // A half-finished two-factor login must not finish into a session.
        sqlx::query("DELETE FROM login_challenges WHERE user_id = $1")
            .bind(user.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// Lifts a suspension; false if the account was not suspended.
    #[tracing::instrument(skip(self))]
    pub async fn unsuspend_account(&self, user: UserId) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE users SET suspended_at = NULL WHERE id = $1 AND suspended_at IS NOT NULL AND deleted_at IS NULL",
        )
        .bind(user.0)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Deletes an account's personal data in one transaction: the row keeps
    /// its id (messages keep their sender) with an anonymous name, no
    /// address, no password; sessions are revoked; second factor, tokens,
    /// pending mail, invitations, its own audit trail, reactions and API
    /// idempotency records go; the username is held until `reusable_at`.
    /// Room memberships are left by the caller one room at a time (each
    /// leave is a numbered event: [`Store::memberships_of`]). None if the
    /// account does not exist or is deleted already.
    #[tracing::instrument(skip(self))]
    pub async fn delete_account(
        &self,
        user: UserId,
        now: i64,
        reusable_at: i64,
    ) -> Result<Option<DeletedAccount>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT username, email, avatar_id FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let username: String = row.try_get("username")?;
        let email: String = row.try_get("email")?;
        let avatar_id: Option<String> = row.try_get("avatar_id")?;
        let anonymous = deleted_username(user);
        sqlx::query(
            "INSERT INTO username_holds (username, released_at, reusable_at) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO UPDATE SET released_at = $2, reusable_at = $3",
        )
        .bind(&username)
        .bind(now)
        .bind(reusable_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE users SET username = $2, email = $3, password_hash = '!', email_verified_at = NULL, \
             role = 'user', suspended_at = NULL, deleted_at = $4, display_name = NULL, \
             status_text = NULL, avatar_id = NULL, avatar_type = NULL, profile_updated_at = $4 \
             WHERE id = $1",
        )
        .bind(user.0)
        .bind(&anonymous)
        .bind(format!("{anonymous}@deleted.invalid"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let revoked_sessions = revoke_sessions_of(&mut tx, user, None, now).await?;
        let invited = sqlx::query("SELECT room_id FROM room_invitations WHERE user_id = $1")
            .bind(user.0)
            .fetch_all(&mut *tx)
            .await?;
        for statement in [
            "UPDATE sessions SET user_agent = NULL WHERE user_id = $1",
            "DELETE FROM user_totp WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM login_challenges WHERE user_id = $1",
            "DELETE FROM account_tokens WHERE user_id = $1",
            "DELETE FROM room_invitations WHERE user_id = $1",
            "DELETE FROM sse_tickets WHERE user_id = $1",
            "DELETE FROM security_events WHERE user_id = $1",
            "DELETE FROM message_reactions WHERE user_id = $1",
        ] {
            sqlx::query(statement)
                .bind(user.0)
                .execute(&mut *tx)
                .await?;
        }
        // Mail not sent yet would carry the old address and name.
        sqlx::query("DELETE FROM mail_jobs WHERE recipient = $1")
            .bind(&email)
            .execute(&mut *tx)
            .await?;
        let invitations_dropped = invited
            .iter()
            .map(|r| r.try_get("room_id").map(RoomId))
            .collect::<std::result::Result<_, sqlx::Error>>()?;
        tx.commit().await?;
        Ok(Some(DeletedAccount {
            revoked_sessions,
            invitations_dropped,
            avatar_id,
        }))
    }

    /// Sets a new password hash and revokes every session of the account
    /// but `keep` in one transaction; the sessions revoked (None: no such
    /// live account).
    #[tracing::instrument(skip(self, password_hash))]
    pub async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        now: i64,
    ) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.begin_write().await?;
        let updated =
            sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(user.0)
                .bind(password_hash)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        let revoked = revoke_sessions_of(&mut tx, user, Some(keep), now).await?;
        // A reset link mailed before the change must not undo it.
        sqlx::query(
            "UPDATE account_tokens SET used_at = $2 WHERE user_id = $1 AND purpose = 'reset_password' AND used_at IS NULL",
        )
        .bind(user.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// The rooms `user` is a member of, in id order.
    #[tracing::instrument(skip(self))]
    pub async fn memberships_of(&self, user: UserId) -> Result<Vec<MembershipOf>> {
        let rows = sqlx::query(
            "SELECT m.room_id, m.role, r.kind FROM room_members m JOIN rooms r ON r.id = m.room_id \
             WHERE m.user_id = $1 ORDER BY m.room_id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                let kind: String = row.try_get("kind")?;
                Ok(MembershipOf {
                    room: RoomId(row.try_get("room_id")?),
                    role: Role::parse(&role)
                        .ok_or_else(|| StoreError::Corrupt(format!("member role {role:?}")))?,
                    kind: RoomKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("room kind {kind:?}")))?,
                })
            })
            .collect()
    }

    /// Who takes over a group room its owner leaves for good: the longest
    /// serving admin, else the longest serving member; None if nobody else
    /// is in it.
    #[tracing::instrument(skip(self))]
    pub async fn successor(&self, room: RoomId, leaving: UserId) -> Result<Option<UserId>> {
        let row = sqlx::query(
            "SELECT user_id FROM room_members WHERE room_id = $1 AND user_id <> $2 \
             ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_at, user_id LIMIT 1",
        )
        .bind(room.0)
        .bind(leaving.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(UserId(r.try_get("user_id")?))).transpose()
    }

    /// Deleted accounts still listed as members of a room (their deletion
    /// stopped before it had left every room): the maintenance finishes them.
    #[tracing::instrument(skip(self))]
    pub async fn deleted_accounts_with_rooms(&self, limit: i64) -> Result<Vec<UserId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT m.user_id FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE u.deleted_at IS NOT NULL ORDER BY m.user_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(UserId(r.try_get("user_id")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_in_a_search_match_themselves() {
        assert_eq!(like_prefix("al"), "al%");
        assert_eq!(like_prefix("a_b%"), "a\\_b\\%%");
        assert_eq!(like_prefix("x\\y"), "x\\\\y%");
    }
}
