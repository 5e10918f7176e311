//! Presence in Redis: three Lua scripts (`apply.lua`, `lease.lua`,
//! `forget.lua`), each change batch and each heartbeat one round trip. The
//! key layout is in docs/operations.md ("Presence in Redis").

use super::{Change, Entry, Lease, Presence, PresenceError, RoomPresence};
use crate::keys::Keys;
use crate::redis::{evalsha, fail_fast, unavailable};
use crate::{BrokerError, Topic};
use async_trait::async_trait;
use fred::clients::Pool;
use fred::prelude::*;
use fred::types::scripts::Script;
use shared::{RoomId, UserId};
use std::time::Duration;

/// How long a presence command may take. Presence is off the message
/// path; a node retries what failed by reporting its whole state again.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Entries removed per round trip while reaping: each batch runs as one
/// script, so this bounds how long Redis is busy with one.
const REAP_BATCH: usize = 256;

/// How long a reaper holds the clean-up lock of a dead node: if it dies
/// itself meanwhile, another takes over after this.
const REAP_LOCK: Duration = Duration::from_secs(30);

/// Most expired nodes one heartbeat reports (the rest come with the next).
const EXPIRED_PER_HEARTBEAT: usize = 16;

pub struct RedisPresence {
    pool: Pool,
    keys: Keys,
    apply: Script,
    lease: Script,
    forget: Script,
}

impl RedisPresence {
    pub(crate) fn new(pool: Pool, keys: Keys) -> Self {
        Self {
            pool,
            keys,
            apply: Script::from_lua(include_str!("apply.lua")),
            lease: Script::from_lua(include_str!("lease.lua")),
            forget: Script::from_lua(include_str!("forget.lua")),
        }
    }

    fn nodes_key(&self) -> String {
        self.keys.presence("nodes")
    }

    fn node_key(&self, node: &str) -> String {
        self.keys.presence(&format!("node:{node}"))
    }

    fn lock_key(&self, node: &str) -> String {
        self.keys.presence(&format!("reap:{node}"))
    }

    fn user_key(&self, user: UserId) -> String {
        self.keys.presence(&format!("user:{user}"))
    }

    fn room_key(&self, room: RoomId) -> String {
        self.keys.presence(&format!("room:{room}"))
    }

    /// The key an entry's change updates.
    fn entry_key(&self, entry: Entry) -> String {
        match entry {
            Entry::User(user) => self.user_key(user),
            Entry::Room(room, _) => self.room_key(room),
        }
    }

    /// Runs a script by its hash, loading it first if Redis does not know
    /// it (a restarted or flushed Redis).
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, BrokerError> {
        let client = self.pool.next().with_options(&fail_fast(TIMEOUT));
        evalsha(
            &client,
            script,
            keys.into_iter().map(Value::from).collect(),
            args.into_iter().map(Value::from).collect(),
        )
        .await
        .map_err(unavailable)
    }

    /// Runs apply.lua for `node` in `mode` ("live" or "reap"). On a cluster
    /// the script returns its events instead of publishing them (a script
    /// may only publish in its own slot, and a room's channel is in the
    /// room's): they are published here, after it, in order.
    async fn run_apply(
        &self,
        node: &str,
        mode: &str,
        changes: &[Change],
    ) -> Result<i64, BrokerError> {
        let mut keys = Vec::with_capacity(changes.len() + 2);
        keys.push(self.nodes_key());
        keys.push(self.node_key(node));
        let mut args = Vec::with_capacity(changes.len() + 3);
        args.push(node.to_owned());
        args.push(self.keys.presence_channel_prefix().to_owned());
        args.push(mode.to_owned());
        for change in changes {
            let (sign, entry) = match change {
                Change::Add(e) => ('+', *e),
                Change::Remove(e) => ('-', *e),
            };
            keys.push(self.entry_key(entry));
            args.push(format!("{sign}{}", entry_name(entry)));
        }
        let answer: Vec<Value> = self.eval(&self.apply, keys, args).await?;
        let mut answer = answer.into_iter();
        let code = answer.next().and_then(|v| v.as_i64()).unwrap_or(0);
        while let (Some(room), Some(event)) = (answer.next(), answer.next()) {
            let Some(room) = room.as_str().and_then(|r| r.parse::<i64>().ok()) else {
                continue;
            };
            let _: i64 = self
                .pool
                .next()
                .with_options(&fail_fast(TIMEOUT))
                .spublish(self.keys.channel(Topic::Room(RoomId(room))), event)
                .await
                .map_err(unavailable)?;
        }
        Ok(code)
    }

    async fn run_lease(
        &self,
        node: &str,
        lease: Duration,
        mode: &str,
    ) -> Result<Lease, BrokerError> {
        let answer: Vec<Value> = self
            .eval(
                &self.lease,
                vec![self.nodes_key()],
                vec![
                    node.to_owned(),
                    lease.as_millis().to_string(),
                    mode.to_owned(),
                    EXPIRED_PER_HEARTBEAT.to_string(),
                ],
            )
            .await?;
        let mut answer = answer.into_iter();
        match answer.next().and_then(|v| v.as_i64()) {
            Some(1) => Ok(Lease::Held {
                expired: answer.filter_map(|v| v.into_string()).collect(),
            }),
            _ => Ok(Lease::Lost),
        }
    }
}

/// An entry as the scripts store it: `u:<user>` or `r:<room>:<user>`.
fn entry_name(entry: Entry) -> String {
    match entry {
        Entry::User(user) => format!("u:{user}"),
        Entry::Room(room, user) => format!("r:{room}:{user}"),
    }
}

fn parse_entry(name: &str) -> Option<Entry> {
    if let Some(user) = name.strip_prefix("u:") {
        return Some(Entry::User(UserId(user.parse().ok()?)));
    }
    let (room, user) = name.strip_prefix("r:")?.split_once(':')?;
    Some(Entry::Room(
        RoomId(room.parse().ok()?),
        UserId(user.parse().ok()?),
    ))
}

#[async_trait]
impl Presence for RedisPresence {
    async fn register(&self, node: &str, lease: Duration) -> Result<(), BrokerError> {
        self.run_lease(node, lease, "new").await.map(|_| ())
    }

    async fn renew(&self, node: &str, lease: Duration) -> Result<Lease, BrokerError> {
        self.run_lease(node, lease, "renew").await
    }

    async fn retire(&self, node: &str, after: Duration) -> Result<(), BrokerError> {
        self.run_lease(node, after, "retire").await.map(|_| ())
    }

    async fn apply(&self, node: &str, changes: &[Change]) -> Result<(), PresenceError> {
        if changes.is_empty() {
            return Ok(());
        }
        match self.run_apply(node, "live", changes).await? {
            -1 => Err(PresenceError::LeaseLost),
            _ => Ok(()),
        }
    }

    async fn reap(&self, dead: &str, reaper: &str) -> Result<usize, BrokerError> {
        let client = self.pool.next().with_options(&fail_fast(TIMEOUT));
        let locked: Option<String> = client
            .set(
                self.lock_key(dead),
                reaper,
                Some(Expiration::PX(REAP_LOCK.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        if locked.is_none() {
            // Another node is on it.
            return Ok(0);
        }
        let mut removed = 0;
        loop {
            let names: Vec<String> = client
                .srandmember(self.node_key(dead), Some(REAP_BATCH))
                .await
                .map_err(unavailable)?;
            let changes: Vec<Change> = names
                .iter()
                .filter_map(|n| parse_entry(n))
                .map(Change::Remove)
                .collect();
            if changes.is_empty() {
                if !names.is_empty() {
                    // Names no version of this code wrote: drop them.
                    let _: i64 = client
                        .srem(self.node_key(dead), names)
                        .await
                        .map_err(unavailable)?;
                    continue;
                }
                break;
            }
            if self.run_apply(dead, "reap", &changes).await? == -2 {
                // Renewed after all (cannot happen to an expired lease;
                // checked so a bug cannot remove a live node's entries).
                break;
            }
            removed += changes.len();
        }
        let _: i64 = self
            .eval(
                &self.forget,
                vec![self.nodes_key(), self.node_key(dead), self.lock_key(dead)],
                vec![dead.to_owned(), reaper.to_owned()],
            )
            .await?;
        Ok(removed)
    }

    async fn room(&self, room: RoomId) -> Result<RoomPresence, BrokerError> {
        let fields: std::collections::HashMap<String, i64> = self
            .pool
            .next()
            .with_options(&fail_fast(TIMEOUT))
            .hgetall(self.room_key(room))
            .await
            .map_err(unavailable)?;
        let mut presence = RoomPresence::default();
        for (field, value) in fields {
            if field == "v" {
                presence.version = value;
            } else if value > 0
                && let Ok(user) = field.parse()
            {
                presence.users.push(UserId(user));
            }
        }
        presence.users.sort_unstable();
        Ok(presence)
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BrokerError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.pool.next().pipeline();
        for user in users {
            let _: () = pipeline
                .exists(self.user_key(*user))
                .await
                .map_err(unavailable)?;
        }
        let found: Vec<i64> = tokio::time::timeout(TIMEOUT, pipeline.all())
            .await
            .map_err(|_| BrokerError::Unavailable("presence query timed out".into()))?
            .map_err(unavailable)?;
        Ok(users
            .iter()
            .zip(found)
            .filter(|(_, n)| *n > 0)
            .map(|(u, _)| *u)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip() {
        for entry in [Entry::User(UserId(3)), Entry::Room(RoomId(12), UserId(3))] {
            assert_eq!(parse_entry(&entry_name(entry)), Some(entry));
        }
        assert_eq!(parse_entry("r:1"), None);
        assert_eq!(parse_entry("x:1"), None);
    }
}
