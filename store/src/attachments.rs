//! Attachments: who uploaded what into which room, which message carries
//! it, where its thumbnail is, and when its bytes must go.
//!
//! The bytes are not here (the api's attachment store keeps them); this
//! table is the truth about who may read them:
//! * before it is posted, only the uploader, and only into the room it was
//!   uploaded into;
//! * once posted (`seq` set), every member of that room;
//! * once its message is deleted (`deleted_at` set, in the delete's own
//!   transaction), nobody: the sweep then purges the bytes and the row.
//!
//! Posting claims attachments inside the post's transaction, after the room
//! row's lock ([`Store::post_message_with_attachments`]); the thumbnail
//! worker records a finished thumbnail under the same lock when the
//! attachment is already posted ([`Store::thumbnail_done`]). So exactly one
//! of the two sees the other: either the post reads `ready`, or the worker
//! sees the message and appends `attachment.thumbnail_ready` after it.

use crate::events::{event_from_row, insert_event, next_seq};
use crate::{Result, Store, StoreError};
use shared::model::{
    Attachment, EventKind, RoomEvent, ThumbnailState, now_millis, time_from_millis,
};
use shared::{RoomId, UserId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// Every column an [`Attachment`] is read from.
const ATTACHMENT_COLUMNS: &str = "id, room_id, seq, filename, content_type, size, sha256, \
     thumbnail, width, height, thumb_width, thumb_height";

/// An upload about to start (its row exists from the first byte).
pub struct NewUpload<'a> {
    pub id: &'a str,
    pub room_id: RoomId,
    pub uploader_id: UserId,
    pub filename: &'a str,
    pub content_type: &'a str,
    /// `Pending` for images the worker will make a thumbnail of, else `None`.
    pub thumbnail: ThumbnailState,
    pub created_at: i64,
}

/// An attachment a caller may read, and where it was posted.
#[derive(Clone, Debug)]
pub struct ReadableAttachment {
    pub attachment: Attachment,
    pub room_id: RoomId,
    /// The message it was posted with; None while only its uploader sees it.
    pub seq: Option<i64>,
    /// What the thumbnail is encoded as, once it is ready.
    pub thumbnail_type: Option<String>,
}

/// What [`Store::thumbnail_done`] did.
#[derive(Debug)]
pub enum ThumbnailRecorded {
    /// Recorded; with the event to publish when the attachment is in a message.
    Recorded(Option<RoomEvent>),
    /// The attachment is gone (its message was deleted, or it expired) or
    /// its thumbnail was recorded by another node: a thumbnail just stored
    /// for it must be removed.
    Gone,
}

/// What became of a post with attachments.
#[derive(Debug)]
pub enum AttachedPostOutcome {
    Created(RoomEvent),
    /// The sender already posted this `client_msg_id` in this room: the original.
    Existing(RoomEvent),
    /// No such room, or the sender is not a member.
    NotFound,
    /// This id is not an upload of the sender's into this room that is
    /// complete and not posted yet (or it is gone): nothing was posted.
    InvalidAttachment(String),
}

/// How making a thumbnail ended.
#[derive(Clone, Copy, Debug)]
pub enum ThumbnailResult {
    Ready {
        width: i64,
        height: i64,
        thumb_width: i64,
        thumb_height: i64,
        thumb_type: &'static str,
    },
    /// Not decodable within the limits; the image's size when its header said.
    Failed {
        width: Option<i64>,
        height: Option<i64>,
    },
}

fn attachment_from_row(row: &AnyRow) -> Result<Attachment> {
    let thumbnail: String = row.try_get("thumbnail")?;
    Ok(Attachment {
        id: row.try_get("id")?,
        filename: row.try_get("filename")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        thumbnail: ThumbnailState::parse(&thumbnail)
            .ok_or_else(|| StoreError::Corrupt(format!("thumbnail state {thumbnail:?}")))?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        thumbnail_width: row.try_get("thumb_width")?,
        thumbnail_height: row.try_get("thumb_height")?,
    })
}

/// The live attachments of message `seq` of `room`, in the author's order.
async fn attachments_of(
    conn: &mut AnyConnection,
    room: RoomId,
    seq: i64,
) -> Result<Vec<Attachment>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ATTACHMENT_COLUMNS} FROM attachments \
         WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL ORDER BY position"
    )))
    .bind(room.0)
    .bind(seq)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(attachment_from_row).collect()
}

impl Store {
    /// Records an upload starting into `room`, if the uploader is a member
    /// of it (false otherwise: nothing recorded).
    #[tracing::instrument(skip(self, upload), fields(id = upload.id, room_id = %upload.room_id))]
    pub async fn start_upload(&self, upload: NewUpload<'_>) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO attachments (id, room_id, uploader_id, status, filename, content_type, size, \
                 sha256, thumbnail, created_at) \
             SELECT $1, $2, $3, 'uploading', $4, $5, 0, '', $6, $7 \
             WHERE EXISTS (SELECT 1 FROM room_members WHERE room_id = $2 AND user_id = $3)",
        )
        .bind(upload.id)
        .bind(upload.room_id.0)
        .bind(upload.uploader_id.0)
        .bind(upload.filename)
        .bind(upload.content_type)
        .bind(upload.thumbnail.as_str())
        .bind(upload.created_at)
        .execute(&self.pool)
        .await;
        Ok(self.observe(inserted)?.rows_affected() == 1)
    }

    /// Marks an upload complete (its bytes are all stored) and returns it.
    #[tracing::instrument(skip(self, sha256))]
    pub async fn finish_upload(&self, id: &str, size: i64, sha256: &str) -> Result<Attachment> {
        let done = sqlx::query(
            "UPDATE attachments SET status = 'stored', size = $2, sha256 = $3 \
             WHERE id = $1 AND status = 'uploading'",
        )
        .bind(id)
        .bind(size)
        .bind(sha256)
        .execute(&self.pool)
        .await;
        if self.observe(done)?.rows_affected() != 1 {
            return Err(StoreError::Corrupt(format!("upload {id} vanished")));
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&self.pool)
        .await;
        attachment_from_row(&self.observe(row)?)
    }

    /// Forgets an upload that failed (its bytes were never stored, or were removed).
    #[tracing::instrument(skip(self))]
    pub async fn discard_upload(&self, id: &str) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM attachments WHERE id = $1 AND seq IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await;
        self.observe(deleted)?;
        Ok(())
    }

    /// Attachment `id` if `caller` may read it: its uploader before it is
    /// posted, a member of its room after; never once its message is deleted.
    #[tracing::instrument(skip(self))]
    pub async fn readable_attachment(
        &self,
        id: &str,
        caller: UserId,
    ) -> Result<Option<ReadableAttachment>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS}, thumb_type FROM attachments a \
             WHERE a.id = $1 AND a.status = 'stored' AND a.deleted_at IS NULL AND ( \
                 (a.seq IS NULL AND a.uploader_id = $2) \
                 OR ((a.seq IS NOT NULL OR EXISTS ( \
                         SELECT 1 FROM rooms r WHERE r.avatar_attachment_id = a.id)) \
                     AND EXISTS ( \
                     SELECT 1 FROM room_members m WHERE m.room_id = a.room_id AND m.user_id = $2)))"
        );
        let row = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(id)
                    .bind(caller.0)
                    .fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ReadableAttachment {
            attachment: attachment_from_row(&row)?,
            room_id: RoomId(row.try_get("room_id")?),
            seq: row.try_get("seq")?,
            thumbnail_type: row.try_get("thumb_type")?,
        }))
    }

    /// Posts a message carrying `attachment_ids` (in that order), in one
    /// transaction: the attachments are claimed for the message only if
    /// each is a complete upload of the sender's into this room, not posted
    /// yet; otherwise nothing is posted. Not group-committed: posts with
    /// files are rare next to text, and each has its own claims to check.
    #[tracing::instrument(skip_all, fields(room_id = %msg.room_id, sender_id = %msg.sender_id))]
    pub async fn post_message_with_attachments(
        &self,
        msg: crate::NewMessage<'_>,
        attachment_ids: &[String],
    ) -> Result<AttachedPostOutcome> {
        let mut tx = self.begin_write().await?;
        // Numbering first: the room row's lock orders this post with other
        // posts of the room, message deletes and thumbnail events.
        let Some(seq) = next_seq(&mut tx, msg.room_id).await? else {
            return Ok(AttachedPostOutcome::NotFound);
        };
        let member =
            sqlx::query("SELECT 1 AS one FROM room_members WHERE room_id = $1 AND user_id = $2")
                .bind(msg.room_id.0)
                .bind(msg.sender_id.0)
                .fetch_optional(&mut *tx)
                .await?;
        if member.is_none() {
            return Ok(AttachedPostOutcome::NotFound);
        }
        if let Some(client_msg_id) = msg.client_msg_id {
            let original = sqlx::query(select_events!(
                "WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
            ))
            .bind(msg.room_id.0)
            .bind(msg.sender_id.0)
            .bind(client_msg_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = original {
                let mut event = event_from_row(&row)?;
                let found = attachments_of(&mut tx, msg.room_id, event.seq).await?;
                if let EventKind::MessageCreated { attachments, .. } = &mut event.kind {
                    *attachments = found;
                }
                // Dropping the transaction gives the number back.
                return Ok(AttachedPostOutcome::Existing(event));
            }
        }
        for (position, id) in attachment_ids.iter().enumerate() {
            let claimed = sqlx::query(
                "UPDATE attachments SET seq = $1, position = $2 \
                 WHERE id = $3 AND room_id = $4 AND uploader_id = $5 AND status = 'stored' \
                     AND seq IS NULL AND deleted_at IS NULL",
            )
            .bind(seq)
            .bind(position as i64)
            .bind(id.as_str())
            .bind(msg.room_id.0)
            .bind(msg.sender_id.0)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() != 1 {
                return Ok(AttachedPostOutcome::InvalidAttachment(id.clone()));
            }
        }
        let mut event = msg.event(seq);
        insert_event(&mut tx, &event).await?;
        sqlx::query(
            "UPDATE room_members SET read_seq = $3, delivered_seq = $3 \
             WHERE room_id = $1 AND user_id = $2 AND read_seq < $3",
        )
        .bind(msg.room_id.0)
        .bind(msg.sender_id.0)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        let found = attachments_of(&mut tx, msg.room_id, seq).await?;
        if let EventKind::MessageCreated { attachments, .. } = &mut event.kind {
            *attachments = found;
        }
        tx.commit().await?;
        Ok(AttachedPostOutcome::Created(event))
    }

    /// Fills in the attachments of the messages among `events` of `room`,
    /// and the attachment of `attachment.thumbnail_ready` events, as they
    /// are now (a deleted message's are gone).
    pub(crate) async fn fill_attachments(
        &self,
        room: RoomId,
        events: &mut [RoomEvent],
    ) -> Result<()> {
        let seqs = events.iter().filter_map(|e| match &e.kind {
            EventKind::MessageCreated {
                deleted_at: None, ..
            } => Some(e.seq),
            EventKind::AttachmentThumbnailReady { target_seq, .. } => Some(*target_seq),
            _ => None,
        });
        let (Some(from), Some(to)) = (seqs.clone().min(), seqs.max()) else {
            return Ok(());
        };
        let pool = &self.pool;
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments \
             WHERE room_id = $1 AND seq >= $2 AND seq <= $3 AND deleted_at IS NULL \
             ORDER BY seq, position"
        );
        let rows = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(room.0)
                    .bind(from)
                    .bind(to)
                    .fetch_all(pool)
            })
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut by_seq: HashMap<i64, Vec<Attachment>> = HashMap::new();
        for row in &rows {
            by_seq
                .entry(row.try_get("seq")?)
                .or_default()
                .push(attachment_from_row(row)?);
        }
        for event in events {
            match &mut event.kind {
                EventKind::MessageCreated {
                    deleted_at: None,
                    attachments,
                    ..
                } => {
                    if let Some(found) = by_seq.get(&event.seq) {
                        attachments.clone_from(found);
                    }
                }
                EventKind::AttachmentThumbnailReady {
                    target_seq,
                    attachment_id,
                    attachment,
                } => {
                    *attachment = by_seq
                        .get(target_seq)
                        .and_then(|all| all.iter().find(|a| &a.id == attachment_id))
                        .cloned()
                        .map(Box::new);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records how making attachment `id`'s thumbnail ended. When it is
    /// ready and the attachment is already in a message, the
    /// `attachment.thumbnail_ready` event is appended to the room in the
    /// same transaction and returned for publishing.
    #[tracing::instrument(skip(self, result))]
    pub async fn thumbnail_done(
        &self,
        id: &str,
        result: ThumbnailResult,
    ) -> Result<ThumbnailRecorded> {
        let (state, width, height, thumb_width, thumb_height, thumb_type) = match result {
            ThumbnailResult::Ready {
                width,
                height,
                thumb_width,
                thumb_height,
                thumb_type,
            } => (
                ThumbnailState::Ready,
                Some(width),
                Some(height),
                Some(thumb_width),
                Some(thumb_height),
                Some(thumb_type),
            ),
            ThumbnailResult::Failed { width, height } => {
                (ThumbnailState::Failed, width, height, None, None, None)
            }
        };
        let update = "UPDATE attachments SET thumbnail = $2, width = $3, height = $4, \
                          thumb_width = $5, thumb_height = $6, thumb_type = $7 \
                      WHERE id = $1 AND thumbnail = 'pending' AND deleted_at IS NULL";
        let bind = |sql: String| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.to_owned())
                .bind(state.as_str())
                .bind(width)
                .bind(height)
                .bind(thumb_width)
                .bind(thumb_height)
                .bind(thumb_type)
        };
        // A failure needs no event, wherever the attachment is.
        if state == ThumbnailState::Failed {
            let failed = bind(update.to_owned()).execute(&self.pool).await;
            self.observe(failed)?;
            return Ok(ThumbnailRecorded::Recorded(None));
        }
        // Not posted yet: no event, no room lock. The update only applies
        // while it is still unposted; if a post claimed it meanwhile, the
        // posted path below takes over.
        let unposted = bind(format!("{update} AND seq IS NULL"))
            .execute(&self.pool)
            .await;
        if self.observe(unposted)?.rows_affected() == 1 {
            return Ok(ThumbnailRecorded::Recorded(None));
        }
        let row = sqlx::query(
            "SELECT room_id, seq, uploader_id FROM attachments \
             WHERE id = $1 AND thumbnail = 'pending' AND deleted_at IS NULL AND seq IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await;
        let Some(row) = self.observe(row)? else {
            // Done elsewhere, or deleted: nothing to record.
            return Ok(ThumbnailRecorded::Gone);
        };
        let room = RoomId(row.try_get("room_id")?);
        let seq: i64 = row.try_get("seq")?;
        let uploader = UserId(row.try_get("uploader_id")?);
        let mut tx = self.begin_write().await?;
        // The room's lock first, as a post and a delete take it, then the row.
        let Some(event_seq) = next_seq(&mut tx, room).await? else {
            return Ok(ThumbnailRecorded::Gone);
        };
        let updated = bind(format!("{update} AND seq = $8"))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            // Deleted (or done by another node) meanwhile: rolling back
            // gives the number back.
            return Ok(ThumbnailRecorded::Gone);
        }
        let attachment = attachments_of(&mut tx, room, seq)
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .map(Box::new);
        let event = RoomEvent {
            room_id: room,
            seq: event_seq,
            sender_id: uploader,
            created_at: time_from_millis(now_millis()),
            kind: EventKind::AttachmentThumbnailReady {
                target_seq: seq,
                attachment_id: id.to_owned(),
                attachment,
            },
        };
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(ThumbnailRecorded::Recorded(Some(event)))
    }

    /// Posted images whose thumbnail is still pending after `created_before`
    /// (their job was dropped by a full queue or a restart), oldest first.
    #[tracing::instrument(skip(self))]
    pub async fn pending_thumbnails(&self, created_before: i64, limit: i64) -> Result<Vec<String>> {
        let pool = &self.pool;
        let rows = self
            .read(|| {
                sqlx::query(
                    "SELECT id FROM attachments WHERE thumbnail = 'pending' AND seq IS NOT NULL \
                         AND deleted_at IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2",
                )
                .bind(created_before)
                .bind(limit)
                .fetch_all(pool)
            })
            .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    /// Marks uploads never posted and created before `orphaned_before` as
    /// due for purging (so no post can claim them from now on); returns how many.
    #[tracing::instrument(skip(self))]
    pub async fn expire_orphan_uploads(&self, orphaned_before: i64, now: i64) -> Result<u64> {
        let marked = sqlx::query(
            "UPDATE attachments SET deleted_at = $2 \
             WHERE seq IS NULL AND created_at < $1 AND deleted_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM rooms r WHERE r.avatar_attachment_id = attachments.id)",
        )
        .bind(orphaned_before)
        .bind(now)
        .execute(&self.pool)
        .await;
        Ok(self.observe(marked)?.rows_affected())
    }

    /// Attachments whose bytes must go (their message was deleted, or they
    /// expired unposted): at most `limit` ids, `room`'s message `seq` only
    /// when given.
    #[tracing::instrument(skip(self))]
    pub async fn attachments_to_purge(
        &self,
        message: Option<(RoomId, i64)>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let pool = &self.pool;
        let rows = self
            .read(|| match message {
                Some((room, seq)) => sqlx::query(
                    "SELECT id FROM attachments \
                     WHERE room_id = $1 AND seq = $2 AND deleted_at IS NOT NULL LIMIT $3",
                )
                .bind(room.0)
                .bind(seq)
                .bind(limit)
                .fetch_all(pool),
                None => sqlx::query(
                    "SELECT id FROM attachments WHERE deleted_at IS NOT NULL \
                     ORDER BY deleted_at LIMIT $1",
                )
                .bind(limit)
                .fetch_all(pool),
            })
            .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    /// Forgets a purged attachment (its bytes are gone).
    #[tracing::instrument(skip(self))]
    pub async fn purged(&self, id: &str) -> Result<()> {
        let deleted =
            sqlx::query("DELETE FROM attachments WHERE id = $1 AND deleted_at IS NOT NULL")
                .bind(id)
                .execute(&self.pool)
                .await;
        self.observe(deleted)?;
        Ok(())
    }
}

/// Inside a message delete's transaction: its attachments become unreadable
/// at once and due for purging.
pub(crate) async fn delete_attachments_of(
    conn: &mut AnyConnection,
    room: RoomId,
    seq: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE attachments SET deleted_at = $3 \
         WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL",
    )
    .bind(room.0)
    .bind(seq)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
