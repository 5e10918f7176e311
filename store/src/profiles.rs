//! Profiles: display name, status text and avatar, on the users row.
//!
//! Who may read a profile is decided here, in the same query that reads
//! it: the user themselves, or a user who shares at least one room with
//! them. Anyone else gets exactly what a user that does not exist gets
//! (`None`), so the answer cannot be used to probe who is in which room.
//!
//! The avatar's bytes live in the attachment store (the api's job); the
//! row holds its id (the object `avatars/<user id>/<avatar_id>`) and type.
//! Replacing or removing it answers the previous id, for the api to delete
//! that object once the change is committed.

use crate::{Result, Store};
use shared::model::{Profile, avatar_url};
use shared::{RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

/// The profile of the users row `row` (columns `id`, `display_name`,
/// `status_text`, `avatar_id`).
pub(crate) fn profile_from_row(row: &AnyRow) -> Result<Profile> {
    let id = UserId(row.try_get("id")?);
    let avatar_id: Option<String> = row.try_get("avatar_id")?;
    Ok(Profile {
        display_name: row.try_get("display_name")?,
        status_text: row.try_get("status_text")?,
        avatar_url: avatar_id.map(|a| avatar_url(id, &a)),
    })
}

/// A change of the text fields: `None` keeps a field, `Some(None)` clears it.
#[derive(Debug, Default)]
pub struct ProfileUpdate<'a> {
    pub display_name: Option<Option<&'a str>>,
    pub status_text: Option<Option<&'a str>>,
}

/// A profile as a viewer allowed to see it reads it.
#[derive(Debug)]
pub struct VisibleProfile {
    pub user_id: UserId,
    pub username: String,
    pub profile: Profile,
}

/// Where a user's avatar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAvatar {
    pub avatar_id: String,
    pub content_type: String,
}

/// The outcome of replacing (or removing) an avatar.
#[derive(Debug)]
pub struct AvatarReplaced {
    pub profile: Profile,
    /// The avatar that was there before, whose object is to be deleted.
    pub previous: Option<String>,
}

/// `$1` is the viewer, `$2` the user whose row is read.
const VISIBLE: &str = "u.id = $2 AND u.deleted_at IS NULL AND (u.id = $1 OR EXISTS ( \
     SELECT 1 FROM room_members me JOIN room_members o ON o.room_id = me.room_id \
     WHERE me.user_id = $1 AND o.user_id = $2))";

const PROFILE_COLUMNS: &str = "id, display_name, status_text, avatar_id";

impl Store {
    /// `user`'s profile if `viewer` may see it (they are `user`, or share a
    /// room with them); None otherwise, and for a user that does not exist.
    #[tracing::instrument(skip(self))]
    pub async fn visible_profile(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<Option<VisibleProfile>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT u.id, u.username, u.display_name, u.status_text, u.avatar_id FROM users u WHERE {VISIBLE}"
        );
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(viewer.0)
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            Ok(VisibleProfile {
                user_id: UserId(row.try_get("id")?),
                username: row.try_get("username")?,
                profile: profile_from_row(&row)?,
            })
        })
        .transpose()
    }

    /// `user`'s avatar if `viewer` may see the profile: None when they may
    /// not (or there is no such user), `Some(None)` when there is no avatar.
    #[tracing::instrument(skip(self))]
    pub async fn visible_avatar(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<Option<Option<StoredAvatar>>> {
        let pool = &self.pool;
        let sql = format!("SELECT u.avatar_id, u.avatar_type FROM users u WHERE {VISIBLE}");
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(viewer.0)
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.map(|row| {
            let id: Option<String> = row.try_get("avatar_id")?;
            let content_type: Option<String> = row.try_get("avatar_type")?;
            Ok(id
                .zip(content_type)
                .map(|(avatar_id, content_type)| StoredAvatar {
                    avatar_id,
                    content_type,
                }))
        })
        .transpose()
    }

    /// Changes `user`'s display name and status text (validated by the
    /// caller); the profile as it is now, or None if there is no such user.
    #[tracing::instrument(skip(self))]
    pub async fn update_profile(
        &self,
        user: UserId,
        change: ProfileUpdate<'_>,
        now: i64,
    ) -> Result<Option<Profile>> {
        // CASE keeps a field the change leaves alone: one statement whatever
        // the change, the same on both engines.
        let sql = format!(
            "UPDATE users SET \
             display_name = CASE WHEN $2 = 1 THEN $3 ELSE display_name END, \
             status_text = CASE WHEN $4 = 1 THEN $5 ELSE status_text END, \
             profile_updated_at = $6 \
             WHERE id = $1 RETURNING {PROFILE_COLUMNS}"
        );
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0)
            .bind(i64::from(change.display_name.is_some()))
            .bind(change.display_name.flatten())
            .bind(i64::from(change.status_text.is_some()))
            .bind(change.status_text.flatten())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let profile = row.as_ref().map(profile_from_row).transpose()?;
        tx.commit().await?;
        Ok(profile)
    }

    /// Makes `avatar` (None: no avatar) `user`'s avatar; None if there is
    /// no such user. The previous avatar's id is read under the row's lock
    /// (taken by the first update), so of two concurrent replacements each
    /// learns the id the other one replaced, and no object is left behind.
    #[tracing::instrument(skip(self))]
    pub async fn replace_avatar(
        &self,
        user: UserId,
        avatar: Option<&StoredAvatar>,
        now: i64,
    ) -> Result<Option<AvatarReplaced>> {
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query(
            "UPDATE users SET profile_updated_at = $2 WHERE id = $1 RETURNING avatar_id",
        )
        .bind(user.0)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(locked) = locked else {
            return Ok(None);
        };
        let previous: Option<String> = locked.try_get("avatar_id")?;
        let sql = format!(
            "UPDATE users SET avatar_id = $2, avatar_type = $3 WHERE id = $1 RETURNING {PROFILE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0)
            .bind(avatar.map(|a| a.avatar_id.as_str()))
            .bind(avatar.map(|a| a.content_type.as_str()))
            .fetch_one(&mut *tx)
            .await?;
        let profile = profile_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(AvatarReplaced { profile, previous }))
    }

    /// The rooms a profile change of `user` is announced in: at most
    /// `limit`, the most recently joined first.
    #[tracing::instrument(skip(self))]
    pub async fn profile_rooms(&self, user: UserId, limit: i64) -> Result<Vec<RoomId>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(
                    "SELECT room_id FROM room_members WHERE user_id = $1 \
                     ORDER BY joined_at DESC, room_id DESC LIMIT $2",
                )
                .bind(user.0)
                .bind(limit)
                .fetch_all(pool)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("room_id").map(RoomId))
            .collect::<std::result::Result<Vec<_>, _>>()?)
    }
}
