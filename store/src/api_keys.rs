//! API keys of the server publish api, their idempotency records, and the
//! custom events published with them.
//!
//! Only a SHA-256 hash of a key is stored (see the migration) and keys are
//! looked up by it. Each key gets its own account when it is created, with
//! no password and no session: custom events need a `sender_id` that is a
//! user, and a per-key account tells a room's members which integration
//! published an event, with every read path (history, gap fills) unchanged.
//!
//! A custom event is appended like a membership change: numbered in a write
//! transaction under the room row's lock ([`next_seq`]), so it shares the
//! room's gap-free numbering with messages. It does not go through the
//! message group commit, which is tuned for members' posts (membership
//! checks, own read markers); server publishes are rate-limited per key and
//! far rarer. With an `Idempotency-Key`, the record is inserted in the same
//! transaction as the event, so a retry finds either both or neither.

use crate::events::{insert_event, next_seq};
use crate::{Result, Store, StoreError, UNUSABLE_PASSWORD};
use shared::model::{EventKind, RoomEvent, time_from_millis};
use shared::rest::{ApiKeyInfo, ApiScope};
use shared::{ApiKeyId, RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

/// How long an `Idempotency-Key` is remembered at least: a day covers any
/// sane retry policy. Older records are deleted by
/// [`Store::delete_idempotency_before`], which the api runs periodically.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// A key to store (its hash only).
pub struct NewApiKey<'a> {
    pub id: ApiKeyId,
    pub name: &'a str,
    /// Lowercase hex SHA-256 of the key.
    pub key_hash: &'a str,
    pub scopes: &'a [ApiScope],
    pub room_ids: Option<&'a [RoomId]>,
    pub created_at: i64,
}

/// A live or revoked key, as found by its hash.
#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub info: ApiKeyInfo,
    pub key_hash: String,
    pub last_used_at: Option<i64>,
    pub revoked: bool,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateApiKeyError {
    /// One of the rooms it would be restricted to does not exist.
    #[error("no such room: {0}")]
    UnknownRoom(RoomId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A custom event to append.
pub struct NewCustomEvent<'a> {
    pub room_id: RoomId,
    /// The key's account.
    pub sender_id: UserId,
    pub name: &'a str,
    pub payload: &'a serde_json::Value,
    pub created_at: i64,
    pub idempotency: Option<Idempotency<'a>>,
}

/// An `Idempotency-Key` and what it was used for.
pub struct Idempotency<'a> {
    pub api_key_id: ApiKeyId,
    pub key: &'a str,
    /// A hash of the request: the same key with another request is refused.
    pub request_hash: &'a str,
}

#[derive(Debug)]
pub enum CustomOutcome {
    /// Appended now.
    Created(RoomEvent),
    /// The key's `Idempotency-Key` was used before: that request's hash and
    /// its event (None only if the event's room was deleted since).
    Existing {
        request_hash: String,
        event: Option<RoomEvent>,
    },
    RoomNotFound,
}

/// `SELECT <every key column> FROM api_keys <rest>`, as a `&'static str`.
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, key_hash, scopes, room_ids, user_id, created_at, last_used_at, revoked_at \
             FROM api_keys ",
            $rest
        )
    };
}

fn key_from_row(row: &AnyRow) -> Result<ApiKeyRecord> {
    let id: String = row.try_get("id")?;
    let scopes: String = row.try_get("scopes")?;
    let room_ids: Option<String> = row.try_get("room_ids")?;
    let last_used_at: Option<i64> = row.try_get("last_used_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let info = ApiKeyInfo {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("api key id {id:?}")))?,
        name: row.try_get("name")?,
        scopes: scopes
            .split_whitespace()
            .map(|s| {
                ApiScope::parse(s)
                    .ok_or_else(|| StoreError::Corrupt(format!("api key scope {s:?}")))
            })
            .collect::<Result<_>>()?,
        room_ids: room_ids
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|_| StoreError::Corrupt(format!("api key rooms {json:?}")))
            })
            .transpose()?,
        user_id: UserId(row.try_get("user_id")?),
        created_at: time_from_millis(row.try_get("created_at")?),
        last_used_at: last_used_at.map(time_from_millis),
        revoked_at: revoked_at.map(time_from_millis),
    };
    Ok(ApiKeyRecord {
        info,
        key_hash: row.try_get("key_hash")?,
        last_used_at,
        revoked: revoked_at.is_some(),
    })
}

impl Store {
    /// Creates a key and its account (`apikey.<id>`: the dot keeps it out
    /// of the names people can sign up with) in one transaction.
    #[tracing::instrument(skip_all, fields(api_key_id = %new.id))]
    pub async fn create_api_key(
        &self,
        new: NewApiKey<'_>,
    ) -> Result<ApiKeyRecord, CreateApiKeyError> {
        let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
        let room_ids = new
            .room_ids
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("room ids that are not JSON: {e}")))?;
        let mut tx = self.begin_write().await.map_err(StoreError::from)?;
        for &room in new.room_ids.unwrap_or_default() {
            let found = sqlx::query("SELECT 1 FROM rooms WHERE id = $1")
                .bind(room.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            if found.is_none() {
                return Err(CreateApiKeyError::UnknownRoom(room));
            }
        }
        let simple = new.id.0.simple();
        let user = sqlx::query(
            "INSERT INTO users (username, email, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(format!("apikey.{simple}"))
        .bind(format!("{simple}@api-keys.parley.invalid"))
        .bind(UNUSABLE_PASSWORD)
        .bind(new.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let user_id = UserId(user.try_get("id").map_err(StoreError::from)?);
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, scopes, room_ids, user_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.id.to_string())
        .bind(new.name)
        .bind(new.key_hash)
        .bind(scopes.join(" "))
        .bind(room_ids)
        .bind(user_id.0)
        .bind(new.created_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ApiKeyRecord {
            info: ApiKeyInfo {
                id: new.id,
                name: new.name.to_owned(),
                scopes: new.scopes.to_vec(),
                room_ids: new.room_ids.map(<[RoomId]>::to_vec),
                user_id,
                created_at: time_from_millis(new.created_at),
                last_used_at: None,
                revoked_at: None,
            },
            key_hash: new.key_hash.to_owned(),
            last_used_at: None,
            revoked: false,
        })
    }

    /// The key whose hash is `key_hash`, live or revoked.
    #[tracing::instrument(skip_all)]
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(select_keys!("WHERE key_hash = $1"))
                    .bind(key_hash)
                    .fetch_optional(pool)
            })
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Every key, newest first.
    #[tracing::instrument(skip_all)]
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let pool = &self.pool;
        let rows = self
            .read(|| sqlx::query(select_keys!("ORDER BY created_at DESC, id")).fetch_all(pool))
            .await?;
        rows.iter()
            .map(|row| key_from_row(row).map(|k| k.info))
            .collect()
    }

    /// Revokes a key (a revoked one keeps its first revocation time); false
    /// if there is no such key.
    #[tracing::instrument(skip(self))]
    pub async fn revoke_api_key(&self, id: ApiKeyId, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1")
                .bind(id.to_string())
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a key was used at `now`, unless it was recorded since
    /// `since` (the caller's resolution: one write a minute, not one a request).
    #[tracing::instrument(skip(self))]
    pub async fn touch_api_key(&self, id: ApiKeyId, now: i64, since: i64) -> Result<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a custom event to a room (see the module doc). With an
    /// idempotency key used before, nothing is appended and the earlier
    /// request's hash and event come back.
    #[tracing::instrument(skip_all, fields(room_id = %new.room_id, sender_id = %new.sender_id))]
    pub async fn append_custom_event(&self, new: NewCustomEvent<'_>) -> Result<CustomOutcome> {
        // A retry usually finds its record here, without taking the room's lock.
        if let Some(idem) = &new.idempotency
            && let Some(existing) = self.idempotency_record(idem).await?
        {
            return Ok(existing);
        }
        let mut tx = self.begin_write().await?;
        let Some(seq) = next_seq(&mut tx, new.room_id).await? else {
            return Ok(CustomOutcome::RoomNotFound);
        };
        let event = RoomEvent {
            room_id: new.room_id,
            seq,
            sender_id: new.sender_id,
            created_at: time_from_millis(new.created_at),
            kind: EventKind::Custom {
                name: new.name.to_owned(),
                payload: new.payload.clone(),
            },
        };
        insert_event(&mut tx, &event).await?;
        if let Some(idem) = &new.idempotency {
            // A concurrent request with the same key waits here for the
            // other transaction, then inserts nothing: this one rolls back
            // (its number with it, so no gap) and answers with the other's.
            let claimed = sqlx::query(
                "INSERT INTO api_idempotency (api_key_id, idempotency_key, request_hash, room_id, seq, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING seq",
            )
            .bind(idem.api_key_id.to_string())
            .bind(idem.key)
            .bind(idem.request_hash)
            .bind(new.room_id.0)
            .bind(seq)
            .bind(new.created_at)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() {
                tx.rollback().await?;
                return self.idempotency_record(idem).await?.ok_or_else(|| {
                    StoreError::Corrupt("an idempotency conflict without a record".into())
                });
            }
        }
        tx.commit().await?;
        Ok(CustomOutcome::Created(event))
    }

    async fn idempotency_record(&self, idem: &Idempotency<'_>) -> Result<Option<CustomOutcome>> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT request_hash, room_id, seq FROM api_idempotency \
                     WHERE api_key_id = $1 AND idempotency_key = $2",
                )
                .bind(idem.api_key_id.to_string())
                .bind(idem.key)
                .fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (room, seq): (i64, i64) = (row.try_get("room_id")?, row.try_get("seq")?);
        let event = self
            .events_between(RoomId(room), seq, seq)
            .await?
            .into_iter()
            .next();
        Ok(Some(CustomOutcome::Existing {
            request_hash: row.try_get("request_hash")?,
            event,
        }))
    }

    /// Forgets idempotency records created before `cutoff`; how many.
    #[tracing::instrument(skip(self))]
    pub async fn delete_idempotency_before(&self, cutoff: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM api_idempotency WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
