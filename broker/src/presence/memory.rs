//! Presence of a single node: the same counting as the Redis scripts, in
//! process, publishing through the in-process broker. One process holds
//! every connection, so there are no leases to keep or nodes to reap.

use super::{Change, Entry, Lease, Presence, PresenceError, RoomPresence, event_json};
use crate::{Broker, BrokerError, MemoryBroker, Topic};
use async_trait::async_trait;
use bytes::Bytes;
use shared::{RoomId, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct MemoryPresence {
    broker: MemoryBroker,
    state: SharedState,
}

/// Kept by the broker, so every handle to its presence sees the same.
pub(crate) type SharedState = Arc<Mutex<State>>;

#[derive(Default)]
pub(crate) struct State {
    /// node → what it holds.
    nodes: HashMap<String, HashSet<Entry>>,
    /// user → nodes holding a connection of theirs.
    users: HashMap<UserId, HashSet<String>>,
    rooms: HashMap<RoomId, RoomState>,
}

#[derive(Default)]
struct RoomState {
    version: i64,
    /// user → nodes holding a connection of theirs in the room.
    users: BTreeMap<UserId, u32>,
}

impl MemoryPresence {
    pub(crate) fn new(broker: MemoryBroker, state: SharedState) -> Self {
        Self { broker, state }
    }
}

fn poisoned() -> BrokerError {
    BrokerError::Unavailable("presence state poisoned".into())
}

/// Microseconds of the wall clock, like the Redis scripts' versions.
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl State {
    /// Applies one change; the event to publish, if the room's view changed.
    fn apply(&mut self, node: &str, change: Change) -> Option<(RoomId, Bytes)> {
        let (entry, add) = match change {
            Change::Add(e) => (e, true),
            Change::Remove(e) => (e, false),
        };
        let held = self.nodes.entry(node.to_owned()).or_default();
        let moved = if add {
            held.insert(entry)
        } else {
            held.remove(&entry)
        };
        if !moved {
            return None;
        }
        match entry {
            Entry::User(user) => {
                let nodes = self.users.entry(user).or_default();
                if add {
                    nodes.insert(node.to_owned());
                } else {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        self.users.remove(&user);
                    }
                }
                None
            }
            Entry::Room(room, user) => {
                let state = self.rooms.entry(room).or_default();
                let count = state.users.entry(user).or_default();
                let changed = if add {
                    *count += 1;
                    *count == 1
                } else {
                    *count = count.saturating_sub(1);
                    *count == 0
                };
                if *count == 0 {
                    state.users.remove(&user);
                }
                if !changed {
                    return None;
                }
                state.version = now_micros().max(state.version + 1);
                let event = event_json(room, user, add, state.version);
                Some((room, event))
            }
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn register(&self, _node: &str, _lease: Duration) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn renew(&self, _node: &str, _lease: Duration) -> Result<Lease, BrokerError> {
        Ok(Lease::Held {
            expired: Vec::new(),
        })
    }

    async fn retire(&self, _node: &str, _after: Duration) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn apply(&self, node: &str, changes: &[Change]) -> Result<(), PresenceError> {
        let events: Vec<(RoomId, Bytes)> = {
            let mut state = self.state.lock().map_err(|_| poisoned())?;
            changes
                .iter()
                .filter_map(|change| state.apply(node, *change))
                .collect()
        };
        for (room, event) in events {
            self.broker.publish(Topic::Room(room), event).await?;
        }
        Ok(())
    }

    async fn reap(&self, _dead: &str, _reaper: &str) -> Result<usize, BrokerError> {
        Ok(0)
    }

    async fn room(&self, room: RoomId) -> Result<RoomPresence, BrokerError> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        Ok(state
            .rooms
            .get(&room)
            .map(|r| RoomPresence {
                version: r.version,
                users: r.users.keys().copied().collect(),
            })
            .unwrap_or_default())
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BrokerError> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        Ok(users
            .iter()
            .filter(|u| state.users.contains_key(u))
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(presence: &MemoryPresence, node: &str, changes: &[Change]) -> Vec<(RoomId, Bytes)> {
        let mut state = presence.state.lock().unwrap();
        changes
            .iter()
            .filter_map(|c| state.apply(node, *c))
            .collect()
    }

    #[test]
    fn only_the_first_node_in_and_the_last_out_change_a_room() {
        let presence = MemoryPresence::new(MemoryBroker::new(), SharedState::default());
        let entry = Entry::Room(RoomId(1), UserId(2));
        assert_eq!(changes(&presence, "a", &[Change::Add(entry)]).len(), 1);
        // The same node again, another node, and one of two leaving: nothing.
        assert!(changes(&presence, "a", &[Change::Add(entry)]).is_empty());
        assert!(changes(&presence, "b", &[Change::Add(entry)]).is_empty());
        assert!(changes(&presence, "a", &[Change::Remove(entry)]).is_empty());
        assert!(changes(&presence, "a", &[Change::Remove(entry)]).is_empty());
        assert_eq!(changes(&presence, "b", &[Change::Remove(entry)]).len(), 1);
    }
}
