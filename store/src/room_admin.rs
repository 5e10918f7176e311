//! Managing a group room: its profile (name, topic, join policy), handing
//! it to another member, deleting it, and invitations. Each change is a
//! timeline event appended in the transaction that makes it, after
//! [`next_seq`] took the room row's lock: concurrent changes of one room
//! are applied one after the other, so the checks made inside the
//! transaction (who is owner, who is invited) cannot be raced.

use crate::events::{insert_event, next_seq};
use crate::rooms::{RoomProfile, add_member_row};
use crate::{Result, Store, StoreError};
use shared::model::{
    EventKind, Invitation, JoinPolicy, Role, RoomEvent, RoomKind, time_from_millis,
};
use shared::{RoomId, UserId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// Why a change to a room was not made.
#[derive(Debug, thiserror::Error)]
pub enum RoomChangeError {
    #[error("no such room, or the caller is not a member")]
    RoomNotFound,
    #[error("a direct room has no owner, profile or invitations")]
    DirectRoom,
    #[error("the caller's role may not make this change")]
    NotAllowed,
    #[error("that user is not a member")]
    MemberNotFound,
    #[error("the avatar must be an image the caller uploaded into this room and did not post")]
    InvalidAvatar,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RoomChangeError {
    fn from(e: sqlx::Error) -> Self {
        RoomChangeError::Store(e.into())
    }
}

/// Why an invitation could not be made, answered or withdrawn.
#[derive(Debug, thiserror::Error)]
pub enum InvitationError {
    #[error("no such room")]
    RoomNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("already a member")]
    AlreadyMember,
    #[error("already invited")]
    AlreadyInvited,
    #[error("no pending invitation")]
    NotInvited,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for InvitationError {
    fn from(e: sqlx::Error) -> Self {
        InvitationError::Store(e.into())
    }
}

/// A member's role and the room's kind and profile, read inside a write
/// transaction.
struct Standing {
    role: Role,
    kind: RoomKind,
    profile: RoomProfile,
}

async fn standing(
    conn: &mut AnyConnection,
    room: RoomId,
    user: UserId,
) -> Result<Option<Standing>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT m.role, r.kind, r.name, r.topic, r.join_policy, r.avatar_attachment_id \
         FROM room_members m JOIN rooms r ON r.id = m.room_id \
         WHERE m.room_id = $1 AND m.user_id = $2",
    )
    .bind(room.0)
    .bind(user.0)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let corrupt = |what: String| sqlx::Error::Decode(what.into());
    let role: String = row.try_get("role")?;
    let kind: String = row.try_get("kind")?;
    let policy: String = row.try_get("join_policy")?;
    Ok(Some(Standing {
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("member role {role:?}")))?,
        kind: RoomKind::parse(&kind).ok_or_else(|| corrupt(format!("room kind {kind:?}")))?,
        profile: RoomProfile {
            name: row.try_get("name")?,
            topic: row.try_get("topic")?,
            join_policy: JoinPolicy::parse(&policy)
                .ok_or_else(|| corrupt(format!("join policy {policy:?}")))?,
            avatar_attachment_id: row.try_get("avatar_attachment_id")?,
        },
    }))
}

/// The standing of `actor` in a group room, or why there is none.
async fn group_standing(
    conn: &mut AnyConnection,
    room: RoomId,
    actor: UserId,
) -> Result<Standing, RoomChangeError> {
    let standing = standing(conn, room, actor)
        .await?
        .ok_or(RoomChangeError::RoomNotFound)?;
    if standing.kind == RoomKind::Direct {
        return Err(RoomChangeError::DirectRoom);
    }
    Ok(standing)
}

/// What a `PATCH` of a room changes; `None` keeps the current value.
#[derive(Clone, Debug, Default)]
pub struct ProfileChange {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub join_policy: Option<JoinPolicy>,
    /// `Some(None)` removes the avatar.
    pub avatar_attachment_id: Option<Option<String>>,
}

/// Largest avatar image.
pub const MAX_AVATAR_BYTES: i64 = 5 * 1024 * 1024;

/// A room deleted by its owner.
#[derive(Debug)]
pub struct DeletedRoom {
    /// `room.deleted`: numbered, but not stored (the timeline is gone).
    pub event: RoomEvent,
    /// Who were members.
    pub members: Vec<UserId>,
    /// Whose pending invitations went with it.
    pub invited: Vec<UserId>,
}

fn event(room: RoomId, seq: i64, sender: UserId, now: i64, kind: EventKind) -> RoomEvent {
    RoomEvent {
        room_id: room,
        seq,
        sender_id: sender,
        created_at: time_from_millis(now),
        kind,
    }
}

fn user_ids(rows: Vec<AnyRow>) -> Result<Vec<UserId>, sqlx::Error> {
    rows.iter()
        .map(|r| r.try_get("user_id").map(UserId))
        .collect()
}

macro_rules! select_invitations {
    () => {
        "SELECT i.room_id, r.name AS room_name, i.user_id, i.role, i.invited_by, \
             u.username AS invited_by_username, i.created_at \
         FROM room_invitations i JOIN rooms r ON r.id = i.room_id \
         JOIN users u ON u.id = i.invited_by "
    };
}

impl Store {
    /// Changes a group room's profile (owners and admins) and appends
    /// `room.updated` carrying the whole new profile. None when nothing
    /// would change: no event, no seq taken.
    #[tracing::instrument(skip(self, change))]
    pub async fn update_room(
        &self,
        room: RoomId,
        actor: UserId,
        change: ProfileChange,
        now: i64,
    ) -> Result<Option<RoomEvent>, RoomChangeError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(RoomChangeError::RoomNotFound)?;
        let current = group_standing(&mut tx, room, actor).await?;
        if !current.role.can_manage_members() {
            return Err(RoomChangeError::NotAllowed);
        }
        let new = RoomProfile {
            name: change.name.unwrap_or(current.profile.name.clone()),
            topic: change.topic.unwrap_or(current.profile.topic.clone()),
            join_policy: change.join_policy.unwrap_or(current.profile.join_policy),
            avatar_attachment_id: change
                .avatar_attachment_id
                .unwrap_or(current.profile.avatar_attachment_id.clone()),
        };
        if new == current.profile {
            // Dropping the transaction gives the seq back.
            return Ok(None);
        }
        if new.avatar_attachment_id != current.profile.avatar_attachment_id {
            if let Some(avatar) = &new.avatar_attachment_id {
                let usable = sqlx::query(
                    "SELECT 1 FROM attachments WHERE id = $1 AND room_id = $2 AND uploader_id = $3 \
                     AND status = 'stored' AND deleted_at IS NULL AND seq IS NULL \
                     AND content_type IN ('image/png', 'image/jpeg', 'image/webp', 'image/gif') \
                     AND size <= $4 \
                     AND NOT EXISTS (SELECT 1 FROM rooms r WHERE r.avatar_attachment_id = $1)",
                )
                .bind(avatar)
                .bind(room.0)
                .bind(actor.0)
                .bind(MAX_AVATAR_BYTES)
                .fetch_optional(&mut *tx)
                .await?;
                if usable.is_none() {
                    return Err(RoomChangeError::InvalidAvatar);
                }
            }
            // The old image is no one's any more: purged by the sweep.
            if let Some(old) = &current.profile.avatar_attachment_id {
                sqlx::query("UPDATE attachments SET deleted_at = $2 WHERE id = $1")
                    .bind(old)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "UPDATE rooms SET name = $2, topic = $3, join_policy = $4, avatar_attachment_id = $5 \
             WHERE id = $1",
        )
        .bind(room.0)
        .bind(&new.name)
        .bind(&new.topic)
        .bind(new.join_policy.as_str())
        .bind(new.avatar_attachment_id.as_deref())
        .execute(&mut *tx)
        .await?;
        let updated = event(
            room,
            seq,
            actor,
            now,
            EventKind::RoomUpdated {
                name: new.name,
                topic: new.topic,
                join_policy: new.join_policy,
                avatar_attachment_id: new.avatar_attachment_id,
            },
        );
        insert_event(&mut tx, &updated).await?;
        tx.commit().await?;
        Ok(Some(updated))
    }

    /// Makes member `to` the owner of a group room and its owner `actor` an
    /// admin, and appends `room.owner_changed`.
    #[tracing::instrument(skip(self))]
    pub async fn transfer_ownership(
        &self,
        room: RoomId,
        actor: UserId,
        to: UserId,
        now: i64,
    ) -> Result<RoomEvent, RoomChangeError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(RoomChangeError::RoomNotFound)?;
        if group_standing(&mut tx, room, actor).await?.role != Role::Owner {
            return Err(RoomChangeError::NotAllowed);
        }
        let promoted = sqlx::query(
            "UPDATE room_members SET role = 'owner' WHERE room_id = $1 AND user_id = $2 AND role <> 'owner'",
        )
        .bind(room.0)
        .bind(to.0)
        .execute(&mut *tx)
        .await?;
        if promoted.rows_affected() == 0 {
            return Err(RoomChangeError::MemberNotFound);
        }
        sqlx::query("UPDATE room_members SET role = 'admin' WHERE room_id = $1 AND user_id = $2")
            .bind(room.0)
            .bind(actor.0)
            .execute(&mut *tx)
            .await?;
        let changed = event(
            room,
            seq,
            actor,
            now,
            EventKind::OwnerChanged { user_id: to },
        );
        insert_event(&mut tx, &changed).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Deletes a group room (its owner only). In its transaction the members
    /// and invitations go (so no read path finds the room any more), its
    /// attachments become due for purging, and the room is marked deleted
    /// (it takes no more events). [`Store::purge_deleted_rooms`] removes the
    /// row, and with it the timeline, reactions and mentions, once the
    /// attachments' bytes are gone: dropping the rows first would lose track
    /// of the bytes. The `room.deleted` event takes the next seq but is not
    /// stored; the api publishes it so live members leave.
    #[tracing::instrument(skip(self))]
    pub async fn delete_room(
        &self,
        room: RoomId,
        actor: UserId,
        now: i64,
    ) -> Result<DeletedRoom, RoomChangeError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(RoomChangeError::RoomNotFound)?;
        if group_standing(&mut tx, room, actor).await?.role != Role::Owner {
            return Err(RoomChangeError::NotAllowed);
        }
        let members = sqlx::query("SELECT user_id FROM room_members WHERE room_id = $1")
            .bind(room.0)
            .fetch_all(&mut *tx)
            .await?;
        let invited = sqlx::query("SELECT user_id FROM room_invitations WHERE room_id = $1")
            .bind(room.0)
            .fetch_all(&mut *tx)
            .await?;
        for statement in [
            "DELETE FROM room_members WHERE room_id = $1",
            "DELETE FROM room_invitations WHERE room_id = $1",
        ] {
            sqlx::query(statement)
                .bind(room.0)
                .execute(&mut *tx)
                .await?;
        }
        for statement in [
            "UPDATE attachments SET deleted_at = $2 WHERE room_id = $1 AND deleted_at IS NULL",
            "UPDATE rooms SET deleted_at = $2 WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(room.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(DeletedRoom {
            event: event(room, seq, actor, now, EventKind::RoomDeleted {}),
            members: user_ids(members)?,
            invited: user_ids(invited)?,
        })
    }

    /// Removes deleted rooms whose attachments are purged, with everything
    /// that cascades from them (timeline, reactions, mentions); how many.
    #[tracing::instrument(skip(self))]
    pub async fn purge_deleted_rooms(&self) -> Result<u64> {
        let purged = sqlx::query(
            "DELETE FROM rooms WHERE deleted_at IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.room_id = rooms.id)",
        )
        .execute(&self.pool)
        .await?;
        Ok(purged.rows_affected())
    }

    /// Invites `user` to a group room with `role` and appends
    /// `member.invited` (by `actor`). Authorising `actor` is the caller's job.
    #[tracing::instrument(skip(self))]
    pub async fn invite(
        &self,
        room: RoomId,
        actor: UserId,
        user: UserId,
        role: Role,
        now: i64,
    ) -> Result<RoomEvent, InvitationError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(InvitationError::RoomNotFound)?;
        let exists = sqlx::query("SELECT 1 FROM users WHERE id = $1")
            .bind(user.0)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(InvitationError::UserNotFound);
        }
        if standing(&mut tx, room, user).await?.is_some() {
            return Err(InvitationError::AlreadyMember);
        }
        if pending_role(&mut tx, room, user).await?.is_some() {
            return Err(InvitationError::AlreadyInvited);
        }
        sqlx::query(
            "INSERT INTO room_invitations (room_id, user_id, invited_by, role, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(room.0)
        .bind(user.0)
        .bind(actor.0)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let invited = event(
            room,
            seq,
            actor,
            now,
            EventKind::MemberInvited {
                user_id: user,
                role,
            },
        );
        insert_event(&mut tx, &invited).await?;
        tx.commit().await?;
        Ok(invited)
    }

    /// `user` accepts their invitation: they become a member with the
    /// invited role, and `member.added` (sent by them) is appended.
    #[tracing::instrument(skip(self))]
    pub async fn accept_invitation(
        &self,
        room: RoomId,
        user: UserId,
        now: i64,
    ) -> Result<RoomEvent, InvitationError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(InvitationError::NotInvited)?;
        let role = pending_role(&mut tx, room, user)
            .await?
            .ok_or(InvitationError::NotInvited)?;
        end_invitation(&mut tx, room, user).await?;
        add_member_row(&mut tx, room, user, role, now, seq).await?;
        let added = event(
            room,
            seq,
            user,
            now,
            EventKind::MemberAdded {
                user_id: user,
                role,
            },
        );
        insert_event(&mut tx, &added).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Ends `user`'s pending invitation: declined by them (`actor` is
    /// `user`: `invitation.declined`) or withdrawn by an owner or admin
    /// (`invitation.revoked`; authorising `actor` is the caller's job).
    #[tracing::instrument(skip(self))]
    pub async fn end_pending_invitation(
        &self,
        room: RoomId,
        actor: UserId,
        user: UserId,
        now: i64,
    ) -> Result<RoomEvent, InvitationError> {
        let mut tx = self.begin_write().await?;
        let seq = next_seq(&mut tx, room)
            .await?
            .ok_or(InvitationError::NotInvited)?;
        if !end_invitation(&mut tx, room, user).await? {
            return Err(InvitationError::NotInvited);
        }
        let kind = if actor == user {
            EventKind::InvitationDeclined { user_id: user }
        } else {
            EventKind::InvitationRevoked { user_id: user }
        };
        let ended = event(room, seq, actor, now, kind);
        insert_event(&mut tx, &ended).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// `user`'s pending invitations, newest first.
    #[tracing::instrument(skip(self))]
    pub async fn invitations_of(&self, user: UserId) -> Result<Vec<Invitation>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(concat!(
                    select_invitations!(),
                    "WHERE i.user_id = $1 ORDER BY i.created_at DESC, i.room_id DESC"
                ))
                .bind(user.0)
                .fetch_all(pool)
            })
            .await?;
        rows.iter().map(invitation_from_row).collect()
    }

    /// The pending invitations of `room`, oldest first.
    #[tracing::instrument(skip(self))]
    pub async fn room_invitations(&self, room: RoomId) -> Result<Vec<Invitation>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(concat!(
                    select_invitations!(),
                    "WHERE i.room_id = $1 ORDER BY i.created_at, i.user_id"
                ))
                .bind(room.0)
                .fetch_all(pool)
            })
            .await?;
        rows.iter().map(invitation_from_row).collect()
    }
}

fn invitation_from_row(row: &AnyRow) -> Result<Invitation> {
    let role: String = row.try_get("role")?;
    Ok(Invitation {
        room_id: RoomId(row.try_get("room_id")?),
        room_name: row.try_get("room_name")?,
        user_id: UserId(row.try_get("user_id")?),
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("invitation role {role:?}")))?,
        invited_by: UserId(row.try_get("invited_by")?),
        invited_by_username: row.try_get("invited_by_username")?,
        created_at: time_from_millis(row.try_get("created_at")?),
    })
}

/// The role `user` is invited to `room` with, if they are.
async fn pending_role(
    conn: &mut AnyConnection,
    room: RoomId,
    user: UserId,
) -> Result<Option<Role>, sqlx::Error> {
    let row = sqlx::query("SELECT role FROM room_invitations WHERE room_id = $1 AND user_id = $2")
        .bind(room.0)
        .bind(user.0)
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    Role::parse(&role)
        .map(Some)
        .ok_or_else(|| sqlx::Error::Decode(format!("invitation role {role:?}").into()))
}

/// Deletes `user`'s invitation to `room`; whether there was one.
pub(crate) async fn end_invitation(
    conn: &mut AnyConnection,
    room: RoomId,
    user: UserId,
) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query("DELETE FROM room_invitations WHERE room_id = $1 AND user_id = $2")
        .bind(room.0)
        .bind(user.0)
        .execute(conn)
        .await?;
    Ok(ended.rows_affected() > 0)
}
