//! Accounts.

use crate::error::unique_violation;
use crate::mail::{NewMailJob, insert_mail_job};
use crate::{Result, Store, StoreError};
use shared::UserId;
use shared::model::{AccountRole, PublicUser, User, time_from_millis};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A validated account to insert.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub created_at: i64,
    /// Queued in the same transaction: the verification mail, so an
    /// account never exists without one on its way.
    pub mail: Option<NewMailJob<'a>>,
}

/// The columns [`user_from_row`] reads.
const USER_COLUMNS: &str = "id, username, email, email_verified_at, role, created_at, display_name, status_text, avatar_id";

/// What a login needs to check a password.
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("username taken")]
    UsernameTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        email_verified: row
            .try_get::<Option<i64>, _>("email_verified_at")?
            .is_some(),
        role: account_role(row)?,
        created_at: time_from_millis(row.try_get("created_at")?),
        profile: crate::profiles::profile_from_row(row)?,
    })
}

pub(crate) fn account_role(row: &AnyRow) -> Result<AccountRole> {
    let role: String = row.try_get("role")?;
    AccountRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("account role {role:?}")))
}

/// Why an address could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeEmailError {
    #[error("no such user")]
    NoUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new address for an account, and the mails it sends.
pub struct EmailChange<'a> {
    pub user_id: UserId,
    pub email: &'a str,
    /// The verification mail to the new address.
    pub verification: NewMailJob<'a>,
    /// The notice to the old address (its owner learns of the change).
    pub notice: Option<NewMailJob<'a>>,
    pub now: i64,
}

impl Store {
    /// Inserts an account; a taken username is its own error, read from the
    /// unique constraint rather than checked beforehand (which would race).
    /// An address is never "taken" here: it is unique among verified
    /// accounts only, and a new account's is unverified (docs/api.md,
    /// "Email addresses and enumeration"). The verification job, if any, is
    /// queued for the new account.
    #[tracing::instrument(skip_all, fields(username = new.username))]
    pub async fn create_user(&self, new: NewUser<'_>) -> Result<User, CreateUserError> {
        let mut tx = self.begin_write().await.map_err(StoreError::from)?;
        // A deleted account's name is held for a while (see
        // `username_holds`); to the newcomer it is simply taken.
        let held =
            sqlx::query("SELECT 1 FROM username_holds WHERE username = $1 AND reusable_at > $2")
                .bind(new.username)
                .bind(new.created_at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        if held.is_some() {
            return Err(CreateUserError::UsernameTaken);
        }
        let inserted = sqlx::query(
            "INSERT INTO users (username, email, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(new.username)
        .bind(new.email)
        .bind(new.password_hash)
        .bind(new.created_at)
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(row) => {
                let id = UserId(row.try_get("id").map_err(StoreError::from)?);
                if let Some(job) = &new.mail {
                    let job = NewMailJob {
                        user_id: Some(id),
                        ..job.clone()
                    };
                    insert_mail_job(&mut tx, &job, new.created_at)
                        .await
                        .map_err(StoreError::from)?;
                }
                tx.commit().await.map_err(StoreError::from)?;
                Ok(User {
                    id,
                    username: new.username.to_owned(),
                    email: new.email.to_owned(),
                    email_verified: false,
                    role: AccountRole::User,
                    created_at: time_from_millis(new.created_at),
                    profile: Default::default(),
                })
            }
            Err(e) => {
                drop(tx);
                Err(match unique_violation(&e) {
                    Some("users_username_key") => CreateUserError::UsernameTaken,
                    _ => CreateUserError::Store(e.into()),
                })
            }
        }
    }

    /// Gives an account a new, unverified address and queues the mails
    /// (the verification to the new address, the notice to the old) in the
    /// same transaction. Another account's address is accepted, unverified,
    /// as at signup (see [`Store::create_user`]).
    #[tracing::instrument(skip_all, fields(user_id = %change.user_id))]
    pub async fn change_email(&self, change: EmailChange<'_>) -> Result<User, ChangeEmailError> {
        let mut tx = self.begin_write().await.map_err(StoreError::from)?;
        let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET email = $2, email_verified_at = NULL WHERE id = $1 RETURNING {USER_COLUMNS}"
        )))
        .bind(change.user_id.0)
        .bind(change.email)
        .fetch_optional(&mut *tx)
        .await;
        let row = match updated {
            Ok(Some(row)) => row,
            Ok(None) => return Err(ChangeEmailError::NoUser),
            Err(e) => return Err(ChangeEmailError::Store(e.into())),
        };
        let user = user_from_row(&row)?;
        insert_mail_job(&mut tx, &change.verification, change.now)
            .await
            .map_err(StoreError::from)?;
        if let Some(notice) = &change.notice {
            insert_mail_job(&mut tx, notice, change.now)
                .await
                .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(user)
    }

    /// The account an address (stored lowercase) reaches: the one that
    /// verified it, else the newest that holds it unverified, if any.
    #[tracing::instrument(skip_all)]
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1 \
             ORDER BY CASE WHEN email_verified_at IS NULL THEN 1 ELSE 0 END, id DESC LIMIT 1"
        );
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(email)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The account other than `except` that verified `email`, if any: the
    /// address's owner, whom a verification mail for `except` must not
    /// reach with a link.
    #[tracing::instrument(skip_all)]
    pub async fn verified_owner(&self, email: &str, except: UserId) -> Result<Option<User>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1 AND email_verified_at IS NOT NULL AND id <> $2"
        );
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(email)
                    .bind(except.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Whether the account's address is verified (None: no such account).
    #[tracing::instrument(skip(self))]
    pub async fn email_verified(&self, id: UserId) -> Result<Option<bool>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query("SELECT email_verified_at FROM users WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(row
                .try_get::<Option<i64>, _>("email_verified_at")?
                .is_some())
        })
        .transpose()
    }

    /// The account's password hash (to confirm a sensitive change).
    #[tracing::instrument(skip(self))]
    pub async fn password_hash(&self, id: UserId) -> Result<Option<String>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query("SELECT password_hash FROM users WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| Ok(row.try_get("password_hash")?)).transpose()
    }

    /// The account whose username or *verified* email is `login` (both
    /// stored lowercase). An unverified address logs nobody in: several
    /// accounts may hold it, and a login that worked with it would tell
    /// whether someone else had verified it.
    #[tracing::instrument(skip_all)]
    pub async fn user_credentials(&self, login: &str) -> Result<Option<UserCredentials>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users \
             WHERE username = $1 OR (email = $1 AND email_verified_at IS NOT NULL)"
        );
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(login)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(UserCredentials {
                user: user_from_row(&row)?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    #[tracing::instrument(skip(self))]
    pub async fn user(&self, id: UserId) -> Result<Option<User>> {
        let pool = &self.pool;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(id.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    #[tracing::instrument(skip(self))]
    pub async fn user_by_username(&self, username: &str) -> Result<Option<PublicUser>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT id, username FROM users WHERE username = $1 AND deleted_at IS NULL",
                )
                .bind(username)
                .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(PublicUser {
                id: UserId(row.try_get("id")?),
                username: row.try_get("username")?,
                display_name: None,
                avatar_url: None,
            })
        })
        .transpose()
    }
}
