//! Room timelines: appending events with gap-free sequence numbers, and
//! reading them back.
//!
//! A room's `last_seq` is incremented by the same transaction that inserts
//! the event, under the room row's lock. Concurrent appends to one room
//! therefore queue on that lock and each gets the next number; a failed
//! append rolls the increment back with it, so no number is ever skipped.
//!
//! The api posts messages through the group-commit appender (`append.rs`);
//! [`Store::post_message`] here is the one-message path it falls back to.

use crate::error::unique_violation;
use crate::{Backend, Result, Store, StoreError};
use shared::model::{EventKind, Role, RoomEvent, time_from_millis};
use shared::{RoomId, UserId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// A message to append.
pub struct NewMessage<'a> {
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub body: &'a str,
    pub client_msg_id: Option<&'a str>,
    /// An earlier `message.created` seq of the same room (the api checks it).
    pub reply_to_seq: Option<i64>,
    pub created_at: i64,
}

impl NewMessage<'_> {
    /// The event this message is once it has number `seq`.
    pub(crate) fn event(&self, seq: i64) -> RoomEvent {
        RoomEvent {
            room_id: self.room_id,
            seq,
            sender_id: self.sender_id,
            created_at: time_from_millis(self.created_at),
            kind: EventKind::MessageCreated {
                body: self.body.to_owned(),
                client_msg_id: self.client_msg_id.map(str::to_owned),
                reply_to_seq: self.reply_to_seq,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        }
    }
}

#[derive(Debug)]
pub enum PostOutcome {
    /// Appended now.
    Created(RoomEvent),
    /// The sender already posted this `client_msg_id` in this room: the original.
    Existing(RoomEvent),
    /// No such room, or the sender is not a member.
    NotFound,
}

/// `SELECT <every event column> FROM room_events <rest>`, as a `&'static str`.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT room_id, seq, kind, sender_id, body, client_msg_id, target_user_id, role, room_name, \
             event_name, payload, reply_to_seq, edited_at, deleted_at, target_seq, emoji, attachment_id, \
             created_at FROM room_events ",
            $rest
        )
    };
}

pub(crate) fn event_from_row(row: &AnyRow) -> Result<RoomEvent> {
    let kind: String = row.try_get("kind")?;
    let role = |row: &AnyRow| -> Result<Role> {
        let role: Option<String> = row.try_get("role")?;
        role.as_deref()
            .and_then(Role::parse)
            .ok_or_else(|| StoreError::Corrupt(format!("event role {role:?}")))
    };
    let target = |row: &AnyRow| -> Result<UserId> {
        let id: Option<i64> = row.try_get("target_user_id")?;
        id.map(UserId)
            .ok_or_else(|| StoreError::Corrupt("member event without a user".into()))
    };
    let target_seq = |row: &AnyRow| -> Result<i64> {
        let seq: Option<i64> = row.try_get("target_seq")?;
        seq.ok_or_else(|| StoreError::Corrupt(format!("a {kind} event without target_seq")))
    };
    let emoji = |row: &AnyRow| -> Result<String> {
        Ok(row
            .try_get::<Option<String>, _>("emoji")?
            .unwrap_or_default())
    };
    let time = |row: &AnyRow, column: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(time_from_millis))
    };
    // A deleted message's body is NULL: it reads as empty.
    let body = |row: &AnyRow| -> Result<String> {
        Ok(row
            .try_get::<Option<String>, _>("body")?
            .unwrap_or_default())
    };
    let kind = match kind.as_str() {
        "message.created" => EventKind::MessageCreated {
            body: body(row)?,
            client_msg_id: row.try_get("client_msg_id")?,
            reply_to_seq: row.try_get("reply_to_seq")?,
            edited_at: time(row, "edited_at")?,
            deleted_at: time(row, "deleted_at")?,
            reactions: Vec::new(),
            attachments: Vec::new(),
        },
        "message.edited" => EventKind::MessageEdited {
            target_seq: target_seq(row)?,
            body: body(row)?,
            edited_at: time_from_millis(row.try_get("created_at")?),
        },
        "message.deleted" => EventKind::MessageDeleted {
            target_seq: target_seq(row)?,
        },
        "reaction.added" => EventKind::ReactionAdded {
            target_seq: target_seq(row)?,
            emoji: emoji(row)?,
        },
        "reaction.removed" => EventKind::ReactionRemoved {
            target_seq: target_seq(row)?,
            emoji: emoji(row)?,
        },
        // Only this kind reads `attachment_id`: the group commit's own
        // select of posted rows does not carry the column.
        "attachment.thumbnail_ready" => EventKind::AttachmentThumbnailReady {
            target_seq: target_seq(row)?,
            attachment_id: row
                .try_get::<Option<String>, _>("attachment_id")?
                .unwrap_or_default(),
            // Filled in from the attachments table by the reader.
            attachment: None,
        },
        "member.added" => EventKind::MemberAdded {
            user_id: target(row)?,
            role: role(row)?,
        },
        "member.removed" => EventKind::MemberRemoved {
            user_id: target(row)?,
        },
        "room.updated" => {
            let payload: Option<String> = row.try_get("payload")?;
            let profile: StoredProfile = payload
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .ok_or_else(|| StoreError::Corrupt("a room.updated without its profile".into()))?;
            EventKind::RoomUpdated {
                name: row
                    .try_get::<Option<String>, _>("room_name")?
                    .unwrap_or_default(),
                topic: profile.topic,
                join_policy: profile.join_policy,
                avatar_attachment_id: profile.avatar_attachment_id,
            }
        }
        "room.owner_changed" => EventKind::OwnerChanged {
            user_id: target(row)?,
        },
        "room.deleted" => EventKind::RoomDeleted {},
        "member.invited" => EventKind::MemberInvited {
            user_id: target(row)?,
            role: role(row)?,
        },
        "invitation.declined" => EventKind::InvitationDeclined {
            user_id: target(row)?,
        },
        "invitation.revoked" => EventKind::InvitationRevoked {
            user_id: target(row)?,
        },
        "room.created" => EventKind::RoomCreated {
            name: row
                .try_get::<Option<String>, _>("room_name")?
                .unwrap_or_default(),
        },
        "custom" => {
            let payload: Option<String> = row.try_get("payload")?;
            EventKind::Custom {
                name: row
                    .try_get::<Option<String>, _>("event_name")?
                    .unwrap_or_default(),
                payload: match payload {
                    Some(json) => serde_json::from_str(&json).map_err(|_| {
                        StoreError::Corrupt("a custom payload that is not JSON".into())
                    })?,
                    None => serde_json::Value::Null,
                },
            }
        }
        other => return Err(StoreError::Corrupt(format!("event kind {other:?}"))),
    };
    Ok(RoomEvent {
        room_id: RoomId(row.try_get("room_id")?),
        seq: row.try_get("seq")?,
        sender_id: UserId(row.try_get("sender_id")?),
        created_at: time_from_millis(row.try_get("created_at")?),
        kind,
    })
}

/// The part of a `room.updated` event kept in `payload` (the name has its
/// own column).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredProfile {
    topic: String,
    join_policy: shared::model::JoinPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar_attachment_id: Option<String>,
}

/// Takes the next number of `room`'s timeline inside the caller's
/// transaction (and with it the room row's lock). None if there is no such room.
pub(crate) async fn next_seq(
    conn: &mut AnyConnection,
    room: RoomId,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 AND deleted_at IS NULL \
             RETURNING last_seq",
    )
    .bind(room.0)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| r.try_get("last_seq")).transpose()
}

/// Inserts an event whose `seq` the caller took with [`next_seq`].
pub(crate) async fn insert_event(
    conn: &mut AnyConnection,
    event: &RoomEvent,
) -> Result<(), sqlx::Error> {
    let (mut body, mut client_msg_id, mut target, mut role, mut room_name) =
        (None, None, None, None, None);
    let (mut event_name, mut payload) = (None, None);
    let (mut reply_to_seq, mut target_seq, mut emoji) = (None, None, None);
    let mut attachment_id = None;
    match &event.kind {
        EventKind::MessageCreated {
            body: b,
            client_msg_id: c,
            reply_to_seq: r,
            ..
        } => {
            body = Some(b.as_str());
            client_msg_id = c.as_deref();
            reply_to_seq = *r;
        }
        EventKind::MessageEdited {
            target_seq: t,
            body: b,
            ..
        } => {
            target_seq = Some(*t);
            body = Some(b.as_str());
        }
        EventKind::MessageDeleted { target_seq: t } => target_seq = Some(*t),
        EventKind::ReactionAdded {
            target_seq: t,
            emoji: e,
        }
        | EventKind::ReactionRemoved {
            target_seq: t,
            emoji: e,
        } => {
            target_seq = Some(*t);
            emoji = Some(e.as_str());
        }
        EventKind::AttachmentThumbnailReady {
            target_seq: t,
            attachment_id: a,
            ..
        } => {
            target_seq = Some(*t);
            attachment_id = Some(a.as_str());
        }
        EventKind::MemberAdded { user_id, role: r } => {
            target = Some(user_id.0);
            role = Some(r.as_str());
        }
        EventKind::MemberRemoved { user_id }
        | EventKind::OwnerChanged { user_id }
        | EventKind::InvitationDeclined { user_id }
        | EventKind::InvitationRevoked { user_id } => target = Some(user_id.0),
        EventKind::MemberInvited { user_id, role: r } => {
            target = Some(user_id.0);
            role = Some(r.as_str());
        }
        EventKind::RoomUpdated {
            name,
            topic,
            join_policy,
            avatar_attachment_id,
        } => {
            room_name = Some(name.as_str());
            let profile = StoredProfile {
                topic: topic.clone(),
                join_policy: *join_policy,
                avatar_attachment_id: avatar_attachment_id.clone(),
            };
            payload =
                Some(serde_json::to_string(&profile).map_err(|e| sqlx::Error::Encode(e.into()))?);
        }
        EventKind::RoomDeleted {} => {}
        EventKind::RoomCreated { name } => room_name = Some(name.as_str()),
        EventKind::Custom { name, payload: p } => {
            event_name = Some(name.as_str());
            payload = Some(serde_json::to_string(p).map_err(|e| sqlx::Error::Encode(e.into()))?);
        }
    }
    sqlx::query(
        "INSERT INTO room_events (room_id, seq, kind, sender_id, body, client_msg_id, target_user_id, role, room_name, \
         event_name, payload, reply_to_seq, target_seq, emoji, created_at, attachment_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(event.room_id.0)
    .bind(event.seq)
    .bind(event.kind.name())
    .bind(event.sender_id.0)
    .bind(body)
    .bind(client_msg_id)
    .bind(target)
    .bind(role)
    .bind(room_name)
    .bind(event_name)
    .bind(payload)
    .bind(reply_to_seq)
    .bind(target_seq)
    .bind(emoji)
    .bind(event.created_at.timestamp_millis())
    .bind(attachment_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// SQLite, inside the caller's write transaction (which holds the
/// database's write lock, so nothing changes between the steps): the
/// membership check, an earlier post with the same `client_msg_id`, then
/// numbering and insert. SQLite has no writable CTEs to do this in one statement.
pub(crate) async fn post_message_in(
    conn: &mut AnyConnection,
    msg: &NewMessage<'_>,
) -> Result<PostOutcome> {
    let member = sqlx::query("SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2")
        .bind(msg.room_id.0)
        .bind(msg.sender_id.0)
        .fetch_optional(&mut *conn)
        .await?;
    if member.is_none() {
        return Ok(PostOutcome::NotFound);
    }
    if let Some(original) = original_message(&mut *conn, msg).await? {
        return Ok(PostOutcome::Existing(original));
    }
    let Some(seq) = next_seq(conn, msg.room_id).await? else {
        return Ok(PostOutcome::NotFound);
    };
    let event = msg.event(seq);
    insert_event(&mut *conn, &event).await?;
    // Your own messages are never unread: the sender's markers move to the
    // post in its transaction.
    sqlx::query(
        "UPDATE room_members SET read_seq = $3, delivered_seq = $3 \
         WHERE room_id = $1 AND user_id = $2 AND read_seq < $3",
    )
    .bind(msg.room_id.0)
    .bind(msg.sender_id.0)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(PostOutcome::Created(event))
}

/// The event `msg`'s sender posted earlier in its room with the same
/// `client_msg_id`, if there is one.
async fn original_message<'c, E>(conn: E, msg: &NewMessage<'_>) -> Result<Option<RoomEvent>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let Some(client_msg_id) = msg.client_msg_id else {
        return Ok(None);
    };
    let row = sqlx::query(select_events!(
        "WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
    ))
    .bind(msg.room_id.0)
    .bind(msg.sender_id.0)
    .bind(client_msg_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// Largest page the history endpoint serves.
pub const MAX_HISTORY_PAGE: u32 = 100;

impl Store {
    /// Appends one message to a room its sender is a member of, in its own
    /// transaction. The api posts through [`crate::MessageAppender`], which
    /// commits many posts at once and falls back to this.
    #[tracing::instrument(skip_all, fields(room_id = %msg.room_id, sender_id = %msg.sender_id))]
    pub async fn post_message(&self, msg: NewMessage<'_>) -> Result<PostOutcome> {
        match self.backend {
            Backend::Postgres => self.post_message_postgres(&msg).await,
            Backend::Sqlite => {
                let mut tx = self.begin_write().await?;
                let outcome = post_message_in(&mut tx, &msg).await?;
                tx.commit().await?;
                Ok(outcome)
            }
        }
    }

    /// PostgreSQL: membership check, numbering and insert in one statement,
    /// one round trip. A duplicate `client_msg_id` fails the whole statement,
    /// so the increment is rolled back with it, and the original is read.
    async fn post_message_postgres(&self, msg: &NewMessage<'_>) -> Result<PostOutcome> {
        let appended = sqlx::query(
            "WITH next AS ( \
                 UPDATE rooms SET last_seq = last_seq + 1 \
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2) \
                 RETURNING last_seq), \
             own_read AS ( \
                 UPDATE room_members m SET read_seq = greatest(m.read_seq, n.last_seq), \
                     delivered_seq = greatest(m.delivered_seq, n.last_seq) \
                 FROM next n WHERE m.room_id = $1 AND m.user_id = $2) \
             INSERT INTO room_events (room_id, seq, kind, sender_id, body, client_msg_id, reply_to_seq, created_at) \
             SELECT $1, last_seq, 'message.created', $2, $3, $4, $6, $5 FROM next \
             RETURNING seq",
        )
        .bind(msg.room_id.0)
        .bind(msg.sender_id.0)
        .bind(msg.body)
        .bind(msg.client_msg_id)
        .bind(msg.created_at)
        .bind(msg.reply_to_seq)
        .fetch_optional(&self.pool)
        .await;
        match appended {
            Ok(Some(row)) => Ok(PostOutcome::Created(msg.event(row.try_get("seq")?))),
            Ok(None) => Ok(PostOutcome::NotFound),
            Err(e) if unique_violation(&e) == Some("room_events_idempotency_key") => {
                let original = original_message(&self.pool, msg).await?;
                original.map(PostOutcome::Existing).ok_or_else(|| {
                    StoreError::Corrupt("a duplicate post without an original".into())
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A page of `room`'s timeline, newest first, strictly before `before_seq`.
    #[tracing::instrument(skip(self))]
    pub async fn history(
        &self,
        room: RoomId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RoomEvent>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(select_events!(
                    "WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .bind(room.0)
                .bind(before_seq.unwrap_or(i64::MAX))
                .bind(i64::from(limit.clamp(1, MAX_HISTORY_PAGE)))
                .fetch_all(pool)
            })
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.fill_attachments(room, &mut events).await?;
        Ok(events)
    }

    /// A page of `room`'s timeline strictly after `after_seq`: the `limit`
    /// events that follow it, returned newest first like [`Store::history`].
    #[tracing::instrument(skip(self))]
    pub async fn history_after(
        &self,
        room: RoomId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RoomEvent>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(select_events!(
                    "WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .bind(room.0)
                .bind(after_seq)
                .bind(i64::from(limit.clamp(1, MAX_HISTORY_PAGE)))
                .fetch_all(pool)
            })
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// Events `from..=to` of `room`, oldest first, at most `MAX_HISTORY_PAGE`
    /// (gateways fill gaps in what they received with this, page by page).
    #[tracing::instrument(skip(self))]
    pub async fn events_between(&self, room: RoomId, from: i64, to: i64) -> Result<Vec<RoomEvent>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(select_events!(
                    "WHERE room_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4"
                ))
                .bind(room.0)
                .bind(from)
                .bind(to)
                .bind(i64::from(MAX_HISTORY_PAGE))
                .fetch_all(pool)
            })
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.fill_attachments(room, &mut events).await?;
        Ok(events)
    }
}
