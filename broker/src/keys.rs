//! Every Redis key and channel name the system uses, in one place.
//!
//! On one Redis server the names are the ones Parley has always used
//! (`{prefix}room:5`, `{prefix}window:5`, ...), so an upgrade finds its
//! windows, presence and lockouts where they were.
//!
//! On a Redis Cluster a script or a multi-key command may only touch keys of
//! one hash slot, and a script may only publish on a shard channel of that
//! slot, so names carry a hash tag (the part in braces, the only part the
//! slot is computed from) that groups what is used together:
//!
//! - a room: `{<prefix>room:<id>}` is its shard channel and
//!   `{<prefix>room:<id>}:window` its recent window, so event.lua appends and
//!   publishes in the room's slot, and rooms spread over every slot;
//! - a user: `{<prefix>user:<id>}` is their shard channel;
//! - presence: every key under `{<prefix>presence}` (one slot: apply.lua
//!   updates a node's entries, users' and rooms' state in one script);
//! - a login budget: `{<prefix>guard:<key>}:n|s|lock`.
//!
//! The table is in docs/operations.md ("Redis Cluster").

use crate::{RoomId, Topic, UserId};
use std::sync::Arc;

/// Names keys and channels for one deployment (its prefix) and one shape
/// of Redis (a server or a cluster).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Arc<str>,
    clustered: bool,
}

impl Keys {
    pub fn new(prefix: &str, clustered: bool) -> Self {
        Self {
            prefix: prefix.into(),
            clustered,
        }
    }

    /// Whether names are hash-tagged for a Redis Cluster.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// The deployment's prefix (`PARLEY_REDIS_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `base` under the prefix, as a whole hash tag on a cluster.
    fn tagged(&self, base: &str) -> String {
        if self.clustered {
            format!("{{{}{base}}}", self.prefix)
        } else {
            format!("{}{base}", self.prefix)
        }
    }

    /// The channel of a topic.
    pub fn channel(&self, topic: Topic) -> String {
        match topic {
            Topic::Room(id) => self.tagged(&format!("room:{id}")),
            Topic::User(id) => self.tagged(&format!("user:{id}")),
        }
    }

    /// The topic of a channel this deployment publishes on.
    pub fn parse_channel(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix(if self.clustered { "{" } else { "" })?;
        let rest = rest.strip_prefix(&*self.prefix)?;
        let rest = if self.clustered {
            rest.strip_suffix('}')?
        } else {
            rest
        };
        if let Some(id) = rest.strip_prefix("room:") {
            return id.parse().ok().map(|id| Topic::Room(RoomId(id)));
        }
        rest.strip_prefix("user:")?
            .parse()
            .ok()
            .map(|id| Topic::User(UserId(id)))
    }

    /// The stream holding a room's recent window: in the room's slot.
    pub fn window(&self, room: RoomId) -> String {
        if self.clustered {
            format!("{}:window", self.channel(Topic::Room(room)))
        } else {
            format!("{}window:{room}", self.prefix)
        }
    }

    /// A presence key (`nodes`, `node:<id>`, `user:<id>`, ...).
    pub fn presence(&self, rest: &str) -> String {
        if self.clustered {
            format!("{}:{rest}", self.tagged("presence"))
        } else {
            format!("{}presence:{rest}", self.prefix)
        }
    }

    /// One of a login budget's keys (`part`: `n`, `s` or `lock`).
    pub fn guard(&self, key: &str, part: &str) -> String {
        format!("{}:{part}", self.tagged(&format!("guard:{key}")))
    }

    /// What presence events' channels start with, for apply.lua to publish
    /// on (`<prefix>room:<id>`); empty on a cluster, where a script cannot
    /// publish outside its slot and the events are published one by one
    /// after it.
    pub fn presence_channel_prefix(&self) -> &str {
        if self.clustered { "" } else { &self.prefix }
    }
}

/// The hash slot of a key or shard channel (CRC16 of its hash tag, or of
/// the whole name without one, modulo 16384).
pub fn slot(name: &str) -> u16 {
    fred::util::redis_keyslot(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_keeps_the_names_it_always_had() {
        let keys = Keys::new("p:", false);
        assert_eq!(keys.channel(Topic::Room(RoomId(5))), "p:room:5");
        assert_eq!(keys.channel(Topic::User(UserId(9))), "p:user:9");
        assert_eq!(keys.window(RoomId(5)), "p:window:5");
        assert_eq!(keys.presence("nodes"), "p:presence:nodes");
        assert_eq!(keys.presence("room:5"), "p:presence:room:5");
        assert_eq!(keys.guard("alice", "lock"), "p:guard:alice:lock");
        assert_eq!(keys.presence_channel_prefix(), "p:");
    }

    #[test]
    fn a_cluster_puts_what_is_used_together_in_one_slot() {
        let keys = Keys::new("p:", true);
        let channel = keys.channel(Topic::Room(RoomId(5)));
        assert_eq!(channel, "{p:room:5}");
        assert_eq!(keys.window(RoomId(5)), "{p:room:5}:window");
        assert_eq!(slot(&channel), slot(&keys.window(RoomId(5))));
        assert_eq!(
            slot(&keys.presence("nodes")),
            slot(&keys.presence("room:5"))
        );
        assert_eq!(
            slot(&keys.guard("a}b{", "n")),
            slot(&keys.guard("a}b{", "lock"))
        );
        assert_ne!(
            slot(&keys.channel(Topic::Room(RoomId(1)))),
            slot(&keys.channel(Topic::Room(RoomId(2))))
        );
        assert_eq!(keys.presence_channel_prefix(), "");
    }

    #[test]
    fn channel_names_round_trip_in_both_shapes() {
        for clustered in [false, true] {
            let keys = Keys::new("p:", clustered);
            for topic in [Topic::Room(RoomId(5)), Topic::User(UserId(9))] {
                assert_eq!(keys.parse_channel(&keys.channel(topic)), Some(topic));
            }
            let other = Keys::new("other:", clustered);
            assert_eq!(
                other.parse_channel(&keys.channel(Topic::Room(RoomId(5)))),
                None
            );
        }
        let keys = Keys::new("p:", false);
        assert_eq!(keys.parse_channel("p:room:x"), None);
        assert_eq!(Keys::new("p:", true).parse_channel("{p:room:5"), None);
    }

    #[test]
    fn the_slot_is_the_one_redis_computes() {
        // CLUSTER KEYSLOT answers, from Redis's documentation and a server.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
    }
}
