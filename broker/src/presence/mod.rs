//! Presence: who is online, and who is in which room, across every node.
//!
//! Each gateway node knows its own connections exactly; this seam keeps the
//! union of what every node holds, and turns changes of that union into
//! `presence` events on the room's topic. Two facts are kept:
//!
//! - a user is **online** while some node holds one of their connections
//!   ([`Entry::User`]);
//! - a user is **in a room** while some node holds a connection of theirs
//!   that joined it ([`Entry::Room`]).
//!
//! A node only ever reports that it holds or let go of an entry
//! ([`Change`]); the store counts the nodes per entry, so a user's second
//! device (on this node or another) changes nothing anyone sees, and only
//! the first node to hold a room entry and the last to let go publish an
//! event. Events carry a `version` (microseconds of the store's clock,
//! strictly increasing per room) so a client can drop stale ones.
//!
//! Nodes die without saying goodbye, so each holds a **lease** it renews
//! with one heartbeat (a node's, not a connection's: idle connections cost
//! nothing). A node that sees another's lease expired removes that node's
//! entries ([`Presence::reap`]) under a lock, publishing the leaves. A lease,
//! once expired, is never renewed: a node that finds its own lost (it was
//! frozen, or the store was unreachable) carries on under a new id and
//! reports everything it holds again.
//!
//! Two implementations, like the broker's: [`RedisPresence`] (Lua scripts,
//! one round trip per batch of changes; key layout in docs/operations.md)
//! and [`MemoryPresence`] (a single node, no leases needed).

pub(crate) mod memory;
mod redis;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use crate::BrokerError;
use async_trait::async_trait;
use shared::{RoomId, UserId};
use std::sync::Arc;
use std::time::Duration;

/// Something a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A connection of this user.
    User(UserId),
    /// A connection of this user that joined this room.
    Room(RoomId, UserId),
}

/// A change of what a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Add(Entry),
    Remove(Entry),
}

/// Who is in a room now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomPresence {
    /// The version of the room's latest presence change (0: nobody has been
    /// in it since it was last empty). Events with a version at most this
    /// are already reflected here.
    pub version: i64,
    /// Users in the room, ascending.
    pub users: Vec<UserId>,
}

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Renewed. Other nodes whose leases have expired, to reap.
    Held { expired: Vec<String> },
    /// This node's lease expired or was reaped: carry on under a new id.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The node's lease expired: nothing was applied.
    #[error("the node's presence lease is lost")]
    LeaseLost,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Presence as one store shared by every node (see the module docs).
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Starts a node's lease under a new id.
    async fn register(&self, node: &str, lease: Duration) -> Result<(), BrokerError>;
    /// Renews a node's lease; reports the nodes whose leases expired.
    async fn renew(&self, node: &str, lease: Duration) -> Result<Lease, BrokerError>;
    /// Ends a node's lease `after` from now (its goodbye): its entries stay
    /// until then, so clients that reconnect elsewhere meanwhile change
    /// nothing anyone sees, and are reaped after.
    async fn retire(&self, node: &str, after: Duration) -> Result<(), BrokerError>;
    /// Applies a node's changes in order (one round trip), publishing a
    /// `presence` event for each user entering or leaving a room.
    async fn apply(&self, node: &str, changes: &[Change]) -> Result<(), PresenceError>;
    /// Removes an expired node's entries (publishing the leaves) unless
    /// another node is already doing it; returns how many were removed.
    async fn reap(&self, dead: &str, reaper: &str) -> Result<usize, BrokerError>;
    /// Who is in `room`.
    async fn room(&self, room: RoomId) -> Result<RoomPresence, BrokerError>;
    /// Which of `users` are online.
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BrokerError>;
}

pub type DynPresence = Arc<dyn Presence>;

/// The `presence` frame for a change, as the Redis script writes it.
pub(crate) fn event_json(room: RoomId, user: UserId, online: bool, version: i64) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        r#"{{"type":"presence","room_id":{room},"user_id":{user},"online":{online},"version":{version}}}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::{Encoding, ServerFrame};

    #[test]
    fn the_event_is_a_presence_frame() {
        let json = event_json(RoomId(7), UserId(9), true, 1_700_000_000_000_001);
        let frame: ServerFrame = Encoding::Json.decode(&json, &[]).expect("a frame");
        assert_eq!(
            frame,
            ServerFrame::Presence {
                room_id: RoomId(7),
                user_id: UserId(9),
                online: true,
                version: 1_700_000_000_000_001,
            }
        );
        assert_eq!(Encoding::Json.encode(&frame), json);
    }
}
