//! Changes to posted messages: edits, deletes, reactions, and the mentions
//! a body records.
//!
//! Each change is a timeline event of its own (`message.edited`,
//! `message.deleted`, `reaction.added`, `reaction.removed`), numbered and
//! stored in the transaction that changes the message, like a membership
//! change: numbering first takes the room row's lock, so every change to a
//! room's messages is ordered with its posts and with each other (which is
//! also what makes the distinct-emoji limit exact). A change that changes
//! nothing (a repeated reaction) rolls back, so it takes no number.
//!
//! The message is always resolved inside the room the caller names and the
//! caller's membership of that room is read in the same transaction: a seq
//! of another room is simply not found.
//!
//! A delete keeps the `message.created` row as a tombstone (the seq stays,
//! numbering stays gap-free) but sets its body to NULL, and also the body of
//! every `message.edited` event of it, and drops its reactions and
//! mentions: no read path of the store can return the text afterwards.

use crate::events::{insert_event, next_seq};
use crate::{Backend, Result, Store};
use shared::model::{EventKind, Reaction, Role, RoomEvent, time_from_millis};
use shared::{RoomId, UserId};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// Most distinct emoji on one message: a reaction bar, not a second
/// message body; each history page carries them for every message.
pub const MAX_DISTINCT_REACTIONS: i64 = 20;

/// What to do to message `seq`.
#[derive(Debug)]
pub enum MessageChange<'a> {
    /// Replace the body (author only); `mentions` are the usernames it names.
    Edit {
        body: &'a str,
        mentions: &'a [String],
    },
    /// Delete (author, or a room owner or admin).
    Delete,
    React {
        emoji: &'a str,
    },
    Unreact {
        emoji: &'a str,
    },
}

#[derive(Debug)]
pub enum ChangeOutcome {
    /// Done; the event to publish.
    Changed(RoomEvent),
    /// Nothing to do (the reaction was already there, or was not): no event.
    Unchanged,
    /// The caller is not a member of the room (or there is no such room).
    RoomNotFound,
    /// No live message (`message.created`, not deleted) at that seq in the room.
    MessageNotFound,
    /// Only the author may edit; only the author or an owner/admin may delete.
    NotAllowed,
    /// The message has [`MAX_DISTINCT_REACTIONS`] other emoji already.
    TooManyReactions,
}

impl Store {
    /// Applies `change` to message `seq` of `room` on behalf of `actor`.
    #[tracing::instrument(skip(self, change), fields(change = change_name(&change)))]
    pub async fn change_message(
        &self,
        room: RoomId,
        actor: UserId,
        seq: i64,
        change: MessageChange<'_>,
        now: i64,
    ) -> Result<ChangeOutcome> {
        let mut tx = self.begin_write().await?;
        // Numbering first: the room row's lock orders this change with
        // posts and other changes. Rolled back (dropped) when unused.
        let Some(event_seq) = next_seq(&mut tx, room).await? else {
            return Ok(ChangeOutcome::RoomNotFound);
        };
        let role = sqlx::query("SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room.0)
            .bind(actor.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(role) = role else {
            return Ok(ChangeOutcome::RoomNotFound);
        };
        let role: String = role.try_get("role")?;
        let target = sqlx::query(
            "SELECT sender_id FROM room_events \
             WHERE room_id = $1 AND seq = $2 AND kind = 'message.created' AND deleted_at IS NULL",
        )
        .bind(room.0)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(target) = target else {
            return Ok(ChangeOutcome::MessageNotFound);
        };
        let author = UserId(target.try_get("sender_id")?);
        let kind = match change {
            MessageChange::Edit { body, mentions } => {
                if author != actor {
                    return Ok(ChangeOutcome::NotAllowed);
                }
                sqlx::query(
                    "UPDATE room_events SET body = $3, edited_at = $4 WHERE room_id = $1 AND seq = $2",
                )
                .bind(room.0)
                .bind(seq)
                .bind(body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM message_mentions WHERE room_id = $1 AND seq = $2")
                    .bind(room.0)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                record_mentions_in(&mut tx, self.backend, room, seq, author, mentions).await?;
                EventKind::MessageEdited {
                    target_seq: seq,
                    body: body.to_owned(),
                    edited_at: time_from_millis(now),
                }
            }
            MessageChange::Delete => {
                let moderator = Role::parse(&role).is_some_and(Role::can_manage_members);
                if author != actor && !moderator {
                    return Ok(ChangeOutcome::NotAllowed);
                }
                sqlx::query(
                    "UPDATE room_events SET body = NULL, deleted_at = $3 WHERE room_id = $1 AND seq = $2",
                )
                .bind(room.0)
                .bind(seq)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE room_events SET body = NULL \
                     WHERE room_id = $1 AND kind = 'message.edited' AND target_seq = $2",
                )
                .bind(room.0)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                // Its files become unreadable with it, and due for purging.
                crate::attachments::delete_attachments_of(&mut tx, room, seq, now).await?;
                for table in [
                    "DELETE FROM message_reactions WHERE room_id = $1 AND seq = $2",
                    "DELETE FROM message_mentions WHERE room_id = $1 AND seq = $2",
                ] {
                    sqlx::query(table)
                        .bind(room.0)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                EventKind::MessageDeleted { target_seq: seq }
            }
            MessageChange::React { emoji } => {
                let others = sqlx::query(
                    "SELECT count(DISTINCT emoji) AS n, \
                         sum(CASE WHEN emoji = $3 THEN 1 ELSE 0 END) AS same \
                     FROM message_reactions WHERE room_id = $1 AND seq = $2",
                )
                .bind(room.0)
                .bind(seq)
                .bind(emoji)
                .fetch_one(&mut *tx)
                .await?;
                let distinct: i64 = others.try_get("n")?;
                let same: Option<i64> = others.try_get("same")?;
                if same.unwrap_or(0) == 0 && distinct >= MAX_DISTINCT_REACTIONS {
                    return Ok(ChangeOutcome::TooManyReactions);
                }
                let added = sqlx::query(
                    "INSERT INTO message_reactions (room_id, seq, user_id, emoji, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(room.0)
                .bind(seq)
                .bind(actor.0)
                .bind(emoji)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if added.rows_affected() == 0 {
                    return Ok(ChangeOutcome::Unchanged);
                }
                EventKind::ReactionAdded {
                    target_seq: seq,
                    emoji: emoji.to_owned(),
                }
            }
            MessageChange::Unreact { emoji } => {
                let removed = sqlx::query(
                    "DELETE FROM message_reactions \
                     WHERE room_id = $1 AND seq = $2 AND user_id = $3 AND emoji = $4",
                )
                .bind(room.0)
                .bind(seq)
                .bind(actor.0)
                .bind(emoji)
                .execute(&mut *tx)
                .await?;
                if removed.rows_affected() == 0 {
                    return Ok(ChangeOutcome::Unchanged);
                }
                EventKind::ReactionRemoved {
                    target_seq: seq,
                    emoji: emoji.to_owned(),
                }
            }
        };
        let event = RoomEvent {
            room_id: room,
            seq: event_seq,
            sender_id: actor,
            created_at: time_from_millis(now),
            kind,
        };
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(ChangeOutcome::Changed(event))
    }

    /// Records that message `seq` of `room` (by `author`) mentions the
    /// members among `usernames` (the author never counts).
    #[tracing::instrument(skip(self, usernames), fields(usernames = usernames.len()))]
    pub async fn record_mentions(
        &self,
        room: RoomId,
        seq: i64,
        author: UserId,
        usernames: &[String],
    ) -> Result<()> {
        if usernames.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let recorded =
            record_mentions_in(&mut conn, self.backend, room, seq, author, usernames).await;
        self.observe(recorded)
    }

    /// Whether `room` has a `message.created` event at `seq` (a reply target).
    #[tracing::instrument(skip(self))]
    pub async fn is_message(&self, room: RoomId, seq: i64) -> Result<bool> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT 1 AS one FROM room_events \
                     WHERE room_id = $1 AND seq = $2 AND kind = 'message.created'",
                )
                .bind(room.0)
                .bind(seq)
                .fetch_optional(pool)
            })
            .await?;
        Ok(row.is_some())
    }

    /// The reactions to the messages `from..=to` of `room`, by seq, counted
    /// per emoji (oldest emoji first) with whether `caller` is among them.
    #[tracing::instrument(skip(self))]
    pub async fn reactions(
        &self,
        room: RoomId,
        from: i64,
        to: i64,
        caller: UserId,
    ) -> Result<HashMap<i64, Vec<Reaction>>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(
                    "SELECT seq, emoji, count(*) AS n, \
                         sum(CASE WHEN user_id = $4 THEN 1 ELSE 0 END) AS mine, \
                         min(created_at) AS first_at \
                     FROM message_reactions WHERE room_id = $1 AND seq >= $2 AND seq <= $3 \
                     GROUP BY seq, emoji ORDER BY seq, first_at, emoji",
                )
                .bind(room.0)
                .bind(from)
                .bind(to)
                .bind(caller.0)
                .fetch_all(pool)
            })
            .await?;
        let mut by_seq: HashMap<i64, Vec<Reaction>> = HashMap::new();
        for row in &rows {
            let mine: Option<i64> = row.try_get("mine")?;
            by_seq
                .entry(row.try_get("seq")?)
                .or_default()
                .push(Reaction {
                    emoji: row.try_get("emoji")?,
                    count: row.try_get("n")?,
                    me: mine.unwrap_or(0) > 0,
                });
        }
        Ok(by_seq)
    }
}

/// Inserts the mentions of message `seq`: the members of `room` (other than
/// `author`) whose usernames are in `usernames`. The names go as one JSON
/// array (sqlx's `Any` driver cannot bind arrays).
async fn record_mentions_in(
    conn: &mut AnyConnection,
    backend: Backend,
    room: RoomId,
    seq: i64,
    author: UserId,
    usernames: &[String],
) -> Result<(), sqlx::Error> {
    if usernames.is_empty() {
        return Ok(());
    }
    let names = serde_json::to_string(usernames).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let statement = match backend {
        Backend::Postgres => {
            "INSERT INTO message_mentions (room_id, seq, user_id) \
             SELECT $1, $2, m.user_id FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = $1 AND m.user_id <> $3 \
                 AND u.username IN (SELECT json_array_elements_text($4::json)) \
             ON CONFLICT DO NOTHING"
        }
        Backend::Sqlite => {
            "INSERT INTO message_mentions (room_id, seq, user_id) \
             SELECT $1, $2, m.user_id FROM room_members m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = $1 AND m.user_id <> $3 \
                 AND u.username IN (SELECT value FROM json_each($4)) \
             ON CONFLICT DO NOTHING"
        }
    };
    sqlx::query(statement)
        .bind(room.0)
        .bind(seq)
        .bind(author.0)
        .bind(names)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn change_name(change: &MessageChange<'_>) -> &'static str {
    match change {
        MessageChange::Edit { .. } => "edit",
        MessageChange::Delete => "delete",
        MessageChange::React { .. } => "react",
        MessageChange::Unreact { .. } => "unreact",
    }
}
