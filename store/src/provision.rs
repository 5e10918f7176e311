//! Bulk creation of users, sessions, rooms and memberships, for load tests
//! (behind the api's admin-only provisioning endpoint).
//!
//! One transaction, multi-row inserts: thousands of users in well under a
//! second, where signing them up one by one would spend seconds of argon2
//! per hundred. The accounts get an unusable password hash: they can only
//! be used through the sessions created here.

use crate::error::unique_violation;
use crate::{Result, Store, StoreError};
use shared::rest::member_of;
use shared::{RoomId, SessionId, UserId};
use sqlx::{AnyConnection, Row};

/// Rows per multi-row INSERT: far below both engines' parameter limits
/// (SQLite 32766, PostgreSQL 65535) with seven columns.
const CHUNK: usize = 1_000;

/// A password hash no password matches (not a PHC string at all).
pub const UNUSABLE_PASSWORD: &str = "!";

pub struct ProvisionSpec<'a> {
    /// Usernames are `{prefix}_{index}`.
    pub prefix: &'a str,
    pub users: u32,
    /// Room `r`'s members are users `(r * room_size + i) % users`, `i < room_size`;
    /// the first is its owner.
    pub rooms: u32,
    pub room_size: u32,
    /// One session per user, with these ids and refresh-secret hashes.
    pub sessions: &'a [(SessionId, String)],
    pub session_expires_at: i64,
    pub now: i64,
}

pub struct Provisioned {
    /// (id, username), in index order.
    pub users: Vec<(UserId, String)>,
    /// (id, name, last_seq), in index order.
    pub rooms: Vec<(RoomId, String, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("usernames with this prefix exist already")]
    PrefixTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `INSERT INTO {head} VALUES ($1, ..), ($n, ..), ...` for `rows` rows of `width`.
fn multi_insert(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = format!("INSERT INTO {head} VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * width + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

impl Store {
    #[tracing::instrument(skip_all, fields(prefix = spec.prefix, users = spec.users, rooms = spec.rooms))]
    pub async fn provision(&self, spec: &ProvisionSpec<'_>) -> Result<Provisioned, ProvisionError> {
        let mut tx = self.begin_write().await.map_err(StoreError::from)?;
        let result = provision_in(&mut tx, spec).await;
        match result {
            Ok(done) => {
                tx.commit().await.map_err(StoreError::from)?;
                Ok(done)
            }
            Err(e) if unique_violation(&e).is_some() => Err(ProvisionError::PrefixTaken),
            Err(e) => Err(ProvisionError::Store(e.into())),
        }
    }
}

async fn provision_in(
    conn: &mut AnyConnection,
    spec: &ProvisionSpec<'_>,
) -> Result<Provisioned, sqlx::Error> {
    let names: Vec<String> = (0..spec.users)
        .map(|i| format!("{}_{i}", spec.prefix))
        .collect();
    let mut ids = std::collections::HashMap::with_capacity(names.len());
    for chunk in names.chunks(CHUNK) {
        let sql = multi_insert(
            // Load-test accounts are verified: their addresses are
            // `.invalid`, and they must be able to post whatever the policy.
            "users (username, email, password_hash, created_at, email_verified_at)",
            5,
            chunk.len(),
            " RETURNING id, username",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for name in chunk {
            query = query
                .bind(name.as_str())
                .bind(format!("{name}@loadtest.invalid"))
                .bind(UNUSABLE_PASSWORD)
                .bind(spec.now)
                .bind(spec.now);
        }
        for row in query.fetch_all(&mut *conn).await? {
            ids.insert(
                row.try_get::<String, _>("username")?,
                UserId(row.try_get("id")?),
            );
        }
    }
    let users: Vec<(UserId, String)> = names
        .into_iter()
        .map(|n| (ids.get(&n).copied().unwrap_or(UserId(0)), n))
        .collect();

    for (chunk_users, chunk_sessions) in users.chunks(CHUNK).zip(spec.sessions.chunks(CHUNK)) {
        let sql = multi_insert(
            "sessions (id, user_id, refresh_hash, created_at, last_used_at, expires_at)",
            6,
            chunk_users.len(),
            "",
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((user, _), (session, hash)) in chunk_users.iter().zip(chunk_sessions) {
            query = query
                .bind(session.to_string())
                .bind(user.0)
                .bind(hash.as_str())
                .bind(spec.now)
                .bind(spec.now)
                .bind(spec.session_expires_at);
        }
        query.execute(&mut *conn).await?;
    }

    let mut rooms = Vec::with_capacity(spec.rooms as usize);
    for r in 0..spec.rooms {
        let mut members: Vec<UserId> = Vec::new();
        for i in 0..spec.room_size.min(spec.users) {
            let user = users[member_of(r, i, spec.room_size, spec.users) as usize].0;
            if !members.contains(&user) {
                members.push(user);
            }
        }
        let Some(&owner) = members.first() else {
            continue;
        };
        let name = format!("{}_room_{r}", spec.prefix);
        let last_seq = members.len() as i64; // room.created, then one member.added per other member
        let row = sqlx::query(
            "INSERT INTO rooms (kind, name, created_by, created_at, last_seq) VALUES ('group', $1, $2, $3, $4) RETURNING id",
        )
        .bind(name.as_str())
        .bind(owner.0)
        .bind(spec.now)
        .bind(last_seq)
        .fetch_one(&mut *conn)
        .await?;
        let room = RoomId(row.try_get("id")?);
        for (n, chunk) in members.chunks(CHUNK).enumerate() {
            let sql = multi_insert(
                "room_members (room_id, user_id, role, joined_at)",
                4,
                chunk.len(),
                "",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, user) in chunk.iter().enumerate() {
                let role = if n == 0 && i == 0 { "owner" } else { "member" };
                query = query.bind(room.0).bind(user.0).bind(role).bind(spec.now);
            }
            query.execute(&mut *conn).await?;
        }
        for (n, chunk) in members.chunks(CHUNK).enumerate() {
            let sql = multi_insert(
                "room_events (room_id, seq, kind, sender_id, target_user_id, role, room_name, created_at)",
                8,
                chunk.len(),
                "",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, user) in chunk.iter().enumerate() {
                let seq = (n * CHUNK + i + 1) as i64;
                if seq == 1 {
                    query = query
                        .bind(room.0)
                        .bind(seq)
                        .bind("room.created")
                        .bind(owner.0)
                        .bind(None::<i64>)
                        .bind(None::<String>)
                        .bind(Some(name.as_str()))
                        .bind(spec.now);
                } else {
                    query = query
                        .bind(room.0)
                        .bind(seq)
                        .bind("member.added")
                        .bind(owner.0)
                        .bind(Some(user.0))
                        .bind(Some("member"))
                        .bind(None::<String>)
                        .bind(spec.now);
                }
            }
            query.execute(&mut *conn).await?;
        }
        rooms.push((room, name, last_seq));
    }
    Ok(Provisioned { users, rooms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_inserts_number_their_placeholders() {
        assert_eq!(
            multi_insert("t (a, b)", 2, 2, " RETURNING a"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
    }

    #[test]
    fn rooms_take_consecutive_users_and_wrap() {
        assert_eq!(
            (0..3).map(|i| member_of(0, i, 3, 10)).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            (0..3).map(|i| member_of(3, i, 3, 10)).collect::<Vec<_>>(),
            vec![9, 0, 1]
        );
    }
}
