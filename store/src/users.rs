//! Accounts.

use crate::error::unique_violation;
use crate::{Result, Store, StoreError};
use shared::UserId;
use shared::model::{PublicUser, User, time_from_millis};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A validated account to insert.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub created_at: i64,
}

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
    #[error("email taken")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        created_at: time_from_millis(row.try_get("created_at")?),
    })
}

impl Store {
    /// Inserts an account; a taken username or email is its own error, read
    /// from the unique constraint rather than checked beforehand (which would race).
    #[tracing::instrument(skip_all, fields(username = new.username))]
    pub async fn create_user(&self, new: NewUser<'_>) -> Result<User, CreateUserError> {
        let inserted = sqlx::query(
            "INSERT INTO users (username, email, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(new.username)
        .bind(new.email)
        .bind(new.password_hash)
        .bind(new.created_at)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => Ok(User {
                id: UserId(row.try_get("id").map_err(StoreError::from)?),
                username: new.username.to_owned(),
                email: new.email.to_owned(),
                created_at: time_from_millis(new.created_at),
            }),
            Err(e) => Err(match unique_violation(&e) {
                Some("users_username_key") => CreateUserError::UsernameTaken,
                // When both are taken the database names whichever index
                // it checked first (the email's, on both engines). The
                // username is what a person picked and sees, so it is the
                // one reported: look it up now that the insert has failed.
                Some("users_email_key") => match self.user_by_username(new.username).await? {
                    Some(_) => CreateUserError::UsernameTaken,
                    None => CreateUserError::EmailTaken,
                },
                _ => CreateUserError::Store(e.into()),
            }),
        }
    }

    /// The account whose username or email is `login` (both stored lowercase).
    #[tracing::instrument(skip_all)]
    pub async fn user_credentials(&self, login: &str) -> Result<Option<UserCredentials>> {
        let pool = &self.pool;
        let row = self.read(|| sqlx::query(
            "SELECT id, username, email, created_at, password_hash FROM users WHERE username = $1 OR email = $1",
        )
        .bind(login)
        .fetch_optional(pool)).await?;
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
        let row = self
            .read(|| {
                sqlx::query("SELECT id, username, email, created_at FROM users WHERE id = $1")
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
                sqlx::query("SELECT id, username FROM users WHERE username = $1")
                    .bind(username)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(PublicUser {
                id: UserId(row.try_get("id")?),
                username: row.try_get("username")?,
            })
        })
        .transpose()
    }
}
