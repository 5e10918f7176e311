//! Rooms and their members. Every membership change is also an event in the
//! room's timeline, appended in the same transaction.

use crate::error::{is_foreign_key_violation, unique_violation};
use crate::events::{insert_event, next_seq};
use crate::{Result, Store, StoreError};
use shared::model::{
    EventKind, JoinPolicy, Member, MessagePreview, PREVIEW_CHARS, Role, Room, RoomEvent, RoomKind,
    time_from_millis,
};
use shared::{RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A user's standing in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub role: Role,
    pub kind: RoomKind,
    pub join_policy: JoinPolicy,
    /// The room's newest `seq` when this was read.
    pub last_seq: i64,
}

/// A room's members as one read saw them ([`Store::member_ids`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberIds {
    /// Every member, as of the room's `last_seq`.
    Listed { last_seq: i64, users: Vec<UserId> },
    /// More members than the caller wanted listed.
    TooMany,
}

#[derive(Debug, thiserror::Error)]
pub enum AddMemberError {
    #[error("already a member")]
    AlreadyMember,
    #[error("no such user")]
    UserNotFound,
    #[error("no such room")]
    RoomNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveMemberError {
    #[error("not a member")]
    NotMember,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of asking for a direct room.
pub struct DirectRoom {
    pub room: Room,
    /// The room's first event if this call created it.
    pub created: Option<RoomEvent>,
}

/// `SELECT <a room as one member sees it> <rest>`, as a `&'static str`.
/// `unread` counts at most 100 rows ([`shared::model::UNREAD_CAP`]; a
/// macro cannot splice a constant into the literal) of the partial index
/// `room_events_messages_idx`, so a long-unread room costs no more than a
/// short one; `mentions` likewise at most 100 rows of `message_mentions_user_idx`.
/// The newest message (`lm_*`) is one probe of the same partial index
/// (`max(seq)`) and one primary-key read; `last_activity` is its time, or
/// the member's `joined_at` when that is later (a room you were just added
/// to comes first). CASE rather than `greatest`/`max`, which the two
/// dialects spell differently.
macro_rules! select_rooms {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.kind, r.name, r.topic, r.join_policy, r.avatar_attachment_id, \
                 r.created_by, r.created_at, \
                 r.last_seq, m.role, m.read_seq, \
                 (SELECT count(*) FROM ( \
                     SELECT 1 FROM room_events e \
                     WHERE e.room_id = m.room_id AND e.seq > m.read_seq \
                         AND e.kind = 'message.created' AND e.sender_id <> m.user_id \
                     LIMIT 100) unread_window) AS unread, \
                 (SELECT count(*) FROM ( \
                     SELECT 1 FROM message_mentions mm \
                     WHERE mm.room_id = m.room_id AND mm.user_id = m.user_id AND mm.seq > m.read_seq \
                     LIMIT 100) mention_window) AS mentions, \
                 lm.seq AS lm_seq, lm.sender_id AS lm_sender_id, lm.body AS lm_body, \
                 lm.deleted_at AS lm_deleted_at, lm.created_at AS lm_created_at, \
                 CASE WHEN lm.created_at > m.joined_at THEN lm.created_at ELSE m.joined_at END \
                     AS last_activity \
             FROM room_members m JOIN rooms r ON r.id = m.room_id \
             LEFT JOIN room_events lm ON lm.room_id = m.room_id AND lm.seq = ( \
                 SELECT max(e.seq) FROM room_events e \
                 WHERE e.room_id = m.room_id AND e.kind = 'message.created') ",
            $rest
        )
    };
}

fn room_from_row(row: &AnyRow) -> Result<Room> {
    let kind: String = row.try_get("kind")?;
    let role: String = row.try_get("role")?;
    let policy: String = row.try_get("join_policy")?;
    let last_message = match row.try_get::<Option<i64>, _>("lm_seq")? {
        None => None,
        Some(seq) => {
            let deleted = row.try_get::<Option<i64>, _>("lm_deleted_at")?.is_some();
            let body = row
                .try_get::<Option<String>, _>("lm_body")?
                .unwrap_or_default();
            let mut preview: String = body.chars().take(PREVIEW_CHARS).collect();
            let truncated = preview.len() < body.len();
            if deleted {
                preview.clear();
            }
            Some(MessagePreview {
                seq,
                sender_id: UserId(row.try_get("lm_sender_id")?),
                body: preview,
                truncated: truncated && !deleted,
                deleted,
                created_at: time_from_millis(row.try_get("lm_created_at")?),
            })
        }
    };
    Ok(Room {
        id: RoomId(row.try_get("id")?),
        kind: RoomKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("room kind {kind:?}")))?,
        name: row.try_get("name")?,
        topic: row.try_get("topic")?,
        avatar_attachment_id: row.try_get("avatar_attachment_id")?,
        join_policy: JoinPolicy::parse(&policy)
            .ok_or_else(|| StoreError::Corrupt(format!("join policy {policy:?}")))?,
        created_by: UserId(row.try_get("created_by")?),
        created_at: time_from_millis(row.try_get("created_at")?),
        last_seq: row.try_get("last_seq")?,
        last_message,
        last_activity_at: time_from_millis(row.try_get("last_activity")?),
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("member role {role:?}")))?,
        read_seq: row.try_get("read_seq")?,
        unread: row.try_get("unread")?,
        mentions: row.try_get("mentions")?,
    })
}

/// Where a page of a user's rooms list starts: strictly after the room
/// with this `last_activity` (milliseconds) and id, in the list's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomCursor {
    pub last_activity: i64,
    pub room_id: RoomId,
}

/// Largest page of `GET /v1/rooms`.
pub const MAX_ROOMS_PAGE: u32 = 100;

/// What owners and admins set about a group room (a direct room's are empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomProfile {
    pub name: String,
    pub topic: String,
    pub join_policy: JoinPolicy,
    pub avatar_attachment_id: Option<String>,
}

/// Both users of a direct room, smallest id first, as stored in `direct_key`.
fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

impl Store {
    /// Creates a group room owned by `owner`; its first event is `room.created`.
    #[tracing::instrument(skip(self))]
    pub async fn create_group_room(
        &self,
        owner: UserId,
        profile: &RoomProfile,
        now: i64,
    ) -> Result<(Room, RoomEvent)> {
        let mut tx = self.begin_write().await?;
        let event = insert_room(
            &mut tx,
            RoomKind::Group,
            profile,
            None,
            &[(owner, Role::Owner)],
            now,
        )
        .await?;
        let room_id = event.room_id;
        tx.commit().await?;
        let room = Room {
            id: room_id,
            kind: RoomKind::Group,
            name: profile.name.clone(),
            topic: profile.topic.clone(),
            join_policy: profile.join_policy,
            avatar_attachment_id: None,
            created_by: owner,
            created_at: event.created_at,
            last_seq: 1,
            last_message: None,
            last_activity_at: event.created_at,
            role: Role::Owner,
            read_seq: 1,
            unread: 0,
            mentions: 0,
        };
        Ok((room, event))
    }

    /// The direct room of `me` and `other`, created on first request.
    #[tracing::instrument(skip(self))]
    pub async fn direct_room(
        &self,
        me: UserId,
        other: UserId,
        now: i64,
    ) -> Result<DirectRoom, AddMemberError> {
        let key = direct_key(me, other);
        if let Some(room) = self.direct_room_by_key(&key, me).await? {
            return Ok(DirectRoom {
                room,
                created: None,
            });
        }
        let created = async {
            let mut tx = self.begin_write().await?;
            let members = [(me, Role::Member), (other, Role::Member)];
            let event = insert_room(
                &mut tx,
                RoomKind::Direct,
                &RoomProfile::default(),
                Some(&key),
                &members,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(event)
        }
        .await;
        match created {
            Ok(event) => {
                let room = self.direct_room_by_key(&key, me).await?.ok_or_else(|| {
                    StoreError::Corrupt("direct room vanished after creation".into())
                })?;
                Ok(DirectRoom {
                    room,
                    created: Some(event),
                })
            }
            // Someone created the same pair's room concurrently: use theirs.
            Err(e) if unique_violation(&e) == Some("rooms_direct_key_key") => {
                let room = self
                    .direct_room_by_key(&key, me)
                    .await?
                    .ok_or(AddMemberError::RoomNotFound)?;
                Ok(DirectRoom {
                    room,
                    created: None,
                })
            }
            Err(e) if is_foreign_key_violation(&e) => Err(AddMemberError::UserNotFound),
            Err(e) => Err(AddMemberError::Store(e.into())),
        }
    }

    async fn direct_room_by_key(&self, key: &str, me: UserId) -> Result<Option<Room>> {
        let row = sqlx::query(select_rooms!("WHERE r.direct_key = $1 AND m.user_id = $2"))
            .bind(key)
            .bind(me.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    /// A page of the rooms `user` is a member of, the most recently active
    /// first (ties: the newer room first), after `cursor`.
    #[tracing::instrument(skip(self))]
    pub async fn rooms_of(
        &self,
        user: UserId,
        cursor: Option<RoomCursor>,
        limit: u32,
    ) -> Result<Vec<Room>> {
        let (activity, after_id) =
            cursor.map_or((i64::MAX, i64::MAX), |c| (c.last_activity, c.room_id.0));
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(concat!(
                    "SELECT * FROM (",
                    select_rooms!("WHERE m.user_id = $1"),
                    ") x WHERE x.last_activity < $2 OR (x.last_activity = $2 AND x.id < $3) \
                     ORDER BY x.last_activity DESC, x.id DESC LIMIT $4"
                ))
                .bind(user.0)
                .bind(activity)
                .bind(after_id)
                .bind(i64::from(limit.clamp(1, MAX_ROOMS_PAGE)))
                .fetch_all(pool)
            })
            .await?;
        rows.iter().map(room_from_row).collect()
    }

    /// `room` as `user` sees it; None if it does not exist or they are not a member.
    #[tracing::instrument(skip(self))]
    pub async fn room_for(&self, room: RoomId, user: UserId) -> Result<Option<Room>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(select_rooms!("WHERE m.room_id = $1 AND m.user_id = $2"))
                    .bind(room.0)
                    .bind(user.0)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    /// `user`'s role in `room` and the room's newest `seq`; None for non-members.
    #[tracing::instrument(skip(self))]
    pub async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        Ok(self.room_for(room, user).await?.map(|r| Membership {
            role: r.role,
            kind: r.kind,
            join_policy: r.join_policy,
            last_seq: r.last_seq,
        }))
    }

    /// The room's newest `seq` if `user` is a member of it; None if not.
    /// The gateway's join check: one indexed row, nothing of the room's
    /// listing (unread counts, last message) that [`Store::membership`] reads.
    #[tracing::instrument(skip(self))]
    pub async fn member_last_seq(&self, room: RoomId, user: UserId) -> Result<Option<i64>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT r.last_seq FROM room_members m JOIN rooms r ON r.id = m.room_id \
                     WHERE m.room_id = $1 AND m.user_id = $2",
                )
                .bind(room.0)
                .bind(user.0)
                .fetch_optional(pool)
            })
            .await?;
        Ok(row.map(|r| r.try_get("last_seq")).transpose()?)
    }

    /// Every member of `room` and the room's newest `seq`, read in one
    /// statement (so the list is exactly the membership as of that seq: a
    /// member change and its event's seq commit together), if `reader` is a
    /// member: a stranger learns nothing and costs one indexed probe, not
    /// the list. None if there is no such room or `reader` is not in it;
    /// [`MemberIds::TooMany`] past `limit` members.
    #[tracing::instrument(skip(self))]
    pub async fn member_ids(
        &self,
        room: RoomId,
        reader: UserId,
        limit: usize,
    ) -> Result<Option<MemberIds>> {
        let pool = &self.pool;
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let rows = self
            .read(|| {
                sqlx::query(
                    "SELECT r.last_seq, m.user_id FROM rooms r \
                     JOIN room_members m ON m.room_id = r.id \
                     WHERE r.id = $1 AND EXISTS ( \
                         SELECT 1 FROM room_members me WHERE me.room_id = $1 AND me.user_id = $2) \
                     LIMIT $3",
                )
                .bind(room.0)
                .bind(reader.0)
                .bind(fetch)
                .fetch_all(pool)
            })
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        if rows.len() > limit {
            return Ok(Some(MemberIds::TooMany));
        }
        let last_seq: i64 = first.try_get("last_seq")?;
        let users = rows
            .iter()
            .map(|row| row.try_get("user_id").map(UserId))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(MemberIds::Listed { last_seq, users }))
    }

    /// The newest `seq` of `room`'s timeline; None if there is no such room.
    #[tracing::instrument(skip(self))]
    pub async fn last_seq(&self, room: RoomId) -> Result<Option<i64>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query("SELECT last_seq FROM rooms WHERE id = $1")
                    .bind(room.0)
                    .fetch_optional(pool)
            })
            .await?;
        Ok(row.map(|r| r.try_get("last_seq")).transpose()?)
    }

    /// Everyone in `room`, in the order they joined.
    #[tracing::instrument(skip(self))]
    pub async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(
            "SELECT m.user_id, u.username, u.display_name, u.avatar_id, m.role, m.joined_at \
             FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = $1 ORDER BY m.joined_at, m.user_id",
        )
        .bind(room.0)
        .fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                let user_id = UserId(row.try_get("user_id")?);
                let avatar_id: Option<String> = row.try_get("avatar_id")?;
                Ok(Member {
                    user_id,
                    username: row.try_get("username")?,
                    display_name: row.try_get("display_name")?,
                    avatar_url: avatar_id.map(|a| shared::model::avatar_url(user_id, &a)),
                    role: Role::parse(&role)
                        .ok_or_else(|| StoreError::Corrupt(format!("member role {role:?}")))?,
                    joined_at: time_from_millis(row.try_get("joined_at")?),
                })
            })
            .collect()
    }

    /// Makes `user` a member of `room` and appends `member.added` (by `actor`).
    /// Authorising `actor` is the caller's job.
    #[tracing::instrument(skip(self))]
    pub async fn add_member(
        &self,
        room: RoomId,
        actor: UserId,
        user: UserId,
        role: Role,
        now: i64,
    ) -> Result<RoomEvent, AddMemberError> {
        let result = async {
            let mut tx = self.begin_write().await?;
            // Numbering first: it takes the room row's lock, ordering this
            // change with concurrent messages.
            let Some(seq) = next_seq(&mut tx, room).await? else {
                return Ok(None);
            };
            add_member_row(&mut tx, room, user, role, now, seq).await?;
            // Added directly: a pending invitation has nothing left to do.
            crate::room_admin::end_invitation(&mut tx, room, user).await?;
            let event = RoomEvent {
                room_id: room,
                seq,
                sender_id: actor,
                created_at: time_from_millis(now),
                kind: EventKind::MemberAdded {
                    user_id: user,
                    role,
                },
            };
            insert_event(&mut tx, &event).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some(event))
        }
        .await;
        match result {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(AddMemberError::RoomNotFound),
            Err(e) if unique_violation(&e) == Some("room_members_pkey") => {
                Err(AddMemberError::AlreadyMember)
            }
            Err(e) if is_foreign_key_violation(&e) => Err(AddMemberError::UserNotFound),
            Err(e) => Err(AddMemberError::Store(e.into())),
        }
    }

    /// Removes `user` from `room` and appends `member.removed` (by `actor`).
    #[tracing::instrument(skip(self))]
    pub async fn remove_member(
        &self,
        room: RoomId,
        actor: UserId,
        user: UserId,
        now: i64,
    ) -> Result<RoomEvent, RemoveMemberError> {
        let result = async {
            let mut tx = self.begin_write().await?;
            let Some(seq) = next_seq(&mut tx, room).await? else {
                return Ok(None);
            };
            let removed =
                sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
                    .bind(room.0)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await?;
            if removed.rows_affected() == 0 {
                return Ok(None);
            }
            let event = RoomEvent {
                room_id: room,
                seq,
                sender_id: actor,
                created_at: time_from_millis(now),
                kind: EventKind::MemberRemoved { user_id: user },
            };
            insert_event(&mut tx, &event).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some(event))
        }
        .await;
        match result {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(RemoveMemberError::NotMember),
            Err(e) => Err(RemoveMemberError::Store(e.into())),
        }
    }
}

/// Inserts a room with its members (the first is its creator) and its first
/// event, `room.created` at seq 1, inside the caller's transaction.
async fn insert_room(
    conn: &mut sqlx::AnyConnection,
    kind: RoomKind,
    profile: &RoomProfile,
    direct_key: Option<&str>,
    members: &[(UserId, Role)],
    now: i64,
) -> Result<RoomEvent, sqlx::Error> {
    let creator = members.first().map(|(u, _)| *u).unwrap_or(UserId(0));
    let row = sqlx::query(
        "INSERT INTO rooms (kind, name, topic, join_policy, direct_key, created_by, created_at, last_seq) \
         VALUES ($1, $2, $6, $7, $3, $4, $5, 1) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(&profile.name)
    .bind(direct_key)
    .bind(creator.0)
    .bind(now)
    .bind(&profile.topic)
    .bind(profile.join_policy.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let room_id = RoomId(row.try_get("id")?);
    for (user, role) in members {
        // The room's first event is seq 1 (see below).
        add_member_row(conn, room_id, *user, *role, now, 1).await?;
    }
    let event = RoomEvent {
        room_id,
        seq: 1,
        sender_id: creator,
        created_at: time_from_millis(now),
        kind: EventKind::RoomCreated {
            name: profile.name.clone(),
        },
    };
    insert_event(conn, &event).await?;
    Ok(event)
}

pub(crate) async fn add_member_row(
    conn: &mut sqlx::AnyConnection,
    room: RoomId,
    user: UserId,
    role: Role,
    now: i64,
    joined_seq: i64,
) -> Result<(), sqlx::Error> {
    // A new member has read (and been delivered) the room up to the event
    // that added them: what came before is history, not unread.
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, role, joined_at, read_seq, delivered_seq) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(room.0)
    .bind(user.0)
    .bind(role.as_str())
    .bind(now)
    .bind(joined_seq)
    .execute(conn)
    .await?;
    Ok(())
}

const SHARING_POSTGRES: &str = "\
SELECT DISTINCT o.user_id FROM room_members me
JOIN room_members o ON o.room_id = me.room_id
WHERE me.user_id = $1 AND o.user_id IN (SELECT (v #>> '{}')::bigint FROM json_array_elements($2::json) j(v))";

const SHARING_SQLITE: &str = "\
SELECT DISTINCT o.user_id FROM room_members me
JOIN room_members o ON o.room_id = me.room_id
WHERE me.user_id = $1 AND o.user_id IN (SELECT value FROM json_each($2))";

impl Store {
    /// Which of `users` share at least one room with `user` (`user` itself
    /// when it is a member of any room): whose presence `user` may see.
    #[tracing::instrument(skip_all, fields(%user, asked = users.len()))]
    pub async fn sharing_a_room(&self, user: UserId, users: &[UserId]) -> Result<Vec<UserId>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&users.iter().map(|u| u.0).collect::<Vec<_>>())
            .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let query = match self.backend {
            crate::Backend::Postgres => SHARING_POSTGRES,
            crate::Backend::Sqlite => SHARING_SQLITE,
        };
        let pool = &self.pool;
        let rows = self
            .read(|| sqlx::query(query).bind(user.0).bind(&ids).fetch_all(pool))
            .await?;
        let mut found = rows
            .iter()
            .map(|r| r.try_get("user_id").map(UserId))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        found.sort_unstable();
        Ok(found)
    }
}
