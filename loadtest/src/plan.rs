//! Splitting a run between workers.
//!
//! - Connection `k` is provisioned user `k`, on gateway `k % G`. Rooms take
//!   consecutive users, so every room's members are spread over all gateways
//!   and every message crosses the broker.
//! - Room `r` belongs to worker `r % W` with all its members and all the
//!   streams that publish into it: a message's publisher and receivers share
//!   one process and one clock. Users in no room go to worker `k % W`.
//! - Streams: `max(P, R)` of them; stream `j` posts into room `j % R` as
//!   publisher `j % P`, using the token of member `j / R` of the room (so
//!   several publishers in one room are several users, each with its own
//!   rate limit on the api).

use crate::client::Timeouts;
use crate::provision::Roster;
use crate::work::{ConnSpec, RoomSpec, StreamSpec, WireEncoding, WorkerSetup};
use std::net::IpAddr;
use std::time::Duration;

/// Most ledger slots (12 bytes each, one per planned message) a run may
/// allocate: ~600 MB. A plan beyond it should cap messages with `--messages`.
pub const MAX_LEDGER_SLOTS: u64 = 50_000_000;

/// Slots added to each room's planned message count: rounding of the
/// schedule, and events other than ours that might take a seq.
const LEDGER_SLACK: u32 = 64;

/// What the workers will be asked to publish, to size their ledgers.
#[derive(Clone, Copy, Debug)]
pub struct PublishPlan {
    pub publishers: u32,
    /// Most posts one stream makes over the whole run (all steps).
    pub total_messages_per_stream: u64,
}

/// Per-run settings every worker gets.
#[derive(Clone, Debug)]
pub struct Common {
    pub api: String,
    pub gateways: Vec<String>,
    pub source_addrs: Vec<IpAddr>,
    pub encoding: WireEncoding,
    pub timeouts: Timeouts,
    pub post_timeout: Duration,
}

/// Most posts one stream makes in a step of `duration` at `rate` (all
/// streams together), within the cap: the schedule's slots in the window,
/// plus one for rounding.
pub fn stream_messages_per_step(
    rate: f64,
    duration: Duration,
    max_messages: Option<u64>,
    streams: u64,
) -> u64 {
    let by_time = (rate / streams.max(1) as f64 * duration.as_secs_f64()).ceil() as u64 + 1;
    match max_messages {
        Some(m) => by_time.min(m / streams.max(1) + 1),
        None => by_time,
    }
}

/// Number of publishing streams for `publishers` over `rooms`.
pub fn stream_count(publishers: u32, rooms: u32) -> u32 {
    if publishers == 0 || rooms == 0 {
        0
    } else {
        publishers.max(rooms)
    }
}

/// Builds one setup per worker.
///
/// `join` says whether connections join their rooms; `publish` is None for
/// scenarios that do not publish.
pub fn split(
    roster: &Roster,
    common: &Common,
    workers: usize,
    join: bool,
    publish: Option<PublishPlan>,
) -> anyhow::Result<Vec<WorkerSetup>> {
    let workers = workers.max(1);
    let gateways = common.gateways.len().max(1);
    let rooms = roster.rooms.len() as u32;
    let streams = publish.map_or(0, |p| stream_count(p.publishers, rooms));
    let per_stream = publish.map_or(0, |p| p.total_messages_per_stream);
    // Worker of each user: its (first) room's worker, else round-robin.
    let mut user_room: Vec<Option<u32>> = vec![None; roster.users.len()];
    for (r, room) in roster.rooms.iter().enumerate() {
        for &m in &room.members {
            if let Some(slot) = user_room.get_mut(m as usize) {
                slot.get_or_insert(r as u32);
            }
        }
    }
    // Rooms of each user (all of them, for joining).
    let mut user_rooms: Vec<Vec<i64>> = vec![Vec::new(); roster.users.len()];
    if join {
        for room in &roster.rooms {
            for &m in &room.members {
                if let Some(list) = user_rooms.get_mut(m as usize) {
                    list.push(room.id);
                }
            }
        }
    }
    let mut streams_in_room = vec![0u64; rooms as usize];
    for j in 0..streams {
        streams_in_room[(j % rooms) as usize] += 1;
    }
    let slots: u64 = streams_in_room
        .iter()
        .map(|s| s * per_stream + u64::from(LEDGER_SLACK))
        .sum();
    anyhow::ensure!(
        slots <= MAX_LEDGER_SLOTS,
        "the plan needs {slots} message slots (rate x duration); cap it with --messages (at most {MAX_LEDGER_SLOTS})"
    );

    let mut setups: Vec<WorkerSetup> = (0..workers)
        .map(|w| WorkerSetup {
            worker: w,
            workers,
            api: common.api.clone(),
            gateways: common.gateways.clone(),
            source_addrs: common.source_addrs.clone(),
            encoding: common.encoding,
            timeouts: common.timeouts,
            post_timeout: common.post_timeout,
            total_conns: roster.users.len() as u64,
            total_streams: u64::from(streams),
            conns: Vec::new(),
            rooms: Vec::new(),
            streams: Vec::new(),
        })
        .collect();
    for (k, user) in roster.users.iter().enumerate() {
        let worker = match user_room[k] {
            Some(r) => r as usize % workers,
            None => k % workers,
        };
        setups[worker].conns.push(ConnSpec {
            index: k as u32,
            token: user.token.clone(),
            gateway: (k % gateways) as u32,
            rooms: std::mem::take(&mut user_rooms[k]),
        });
    }
    if join {
        for (r, room) in roster.rooms.iter().enumerate() {
            let capacity = streams_in_room[r] * per_stream + u64::from(LEDGER_SLACK);
            setups[r % workers].rooms.push(RoomSpec {
                id: room.id,
                last_seq: room.last_seq,
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            });
        }
    }
    if let Some(p) = publish {
        for j in 0..streams {
            let r = j % rooms;
            let room = &roster.rooms[r as usize];
            let member = room.members[((j / rooms) as usize) % room.members.len()];
            setups[r as usize % workers].streams.push(StreamSpec {
                index: j,
                publisher: j % p.publishers,
                room_id: room.id,
                token: roster.users[member as usize].token.clone(),
            });
        }
    }
    Ok(setups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::{RosterRoom, RosterUser};

    fn roster(rooms: u32, size: u32) -> Roster {
        Roster {
            prefix: "lt".into(),
            users: (0..rooms * size)
                .map(|i| RosterUser {
                    id: i64::from(i) + 1000,
                    token: format!("t{i}"),
                })
                .collect(),
            rooms: (0..rooms)
                .map(|r| RosterRoom {
                    id: i64::from(r) + 1,
                    last_seq: 10,
                    members: (r * size..(r + 1) * size).collect(),
                })
                .collect(),
            requests: 1,
            elapsed: Duration::ZERO,
        }
    }

    fn common(gateways: usize) -> Common {
        Common {
            api: "http://127.0.0.1:1".into(),
            gateways: (0..gateways)
                .map(|g| format!("ws://127.0.0.1:{}/ws", 2 + g))
                .collect(),
            source_addrs: Vec::new(),
            encoding: WireEncoding::Json,
            timeouts: Timeouts::default(),
            post_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_worker_hosts_whole_rooms_with_their_publishers() {
        let r = roster(5, 6);
        let setups = split(
            &r,
            &common(3),
            2,
            true,
            Some(PublishPlan {
                publishers: 3,
                total_messages_per_stream: 10,
            }),
        )
        .unwrap();
        assert_eq!(setups.len(), 2);
        assert_eq!(setups.iter().map(|s| s.conns.len()).sum::<usize>(), 30);
        for s in &setups {
            let hosted: Vec<i64> = s.rooms.iter().map(|r| r.id).collect();
            for c in &s.conns {
                assert!(
                    c.rooms.iter().all(|id| hosted.contains(id)),
                    "conn {} of worker {}",
                    c.index,
                    s.worker
                );
            }
            for st in &s.streams {
                assert!(
                    hosted.contains(&st.room_id),
                    "stream {} posts into a hosted room",
                    st.index
                );
            }
            assert_eq!(s.total_streams, 5, "max(publishers, rooms)");
        }
        // Rooms 0, 2, 4 on worker 0: 3 rooms * 6 members.
        assert_eq!(setups[0].conns.len(), 18);
        assert_eq!(
            setups[0]
                .rooms
                .iter()
                .map(|r| r.capacity)
                .collect::<Vec<_>>(),
            [74, 74, 74]
        );
    }

    #[test]
    fn a_rooms_members_are_spread_over_all_gateways() {
        let r = roster(2, 6);
        let setups = split(&r, &common(3), 1, true, None).unwrap();
        let mut per_gateway = [0; 3];
        for c in setups[0].conns.iter().filter(|c| c.rooms == [1]) {
            per_gateway[c.gateway as usize] += 1;
        }
        assert_eq!(per_gateway, [2, 2, 2]);
    }

    #[test]
    fn publishers_beyond_rooms_post_as_different_members() {
        let r = roster(2, 4);
        let setups = split(
            &r,
            &common(1),
            1,
            true,
            Some(PublishPlan {
                publishers: 4,
                total_messages_per_stream: 1,
            }),
        )
        .unwrap();
        let s = &setups[0].streams;
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.iter()
                .map(|s| (s.publisher, s.room_id, s.token.as_str()))
                .collect::<Vec<_>>(),
            [(0, 1, "t0"), (1, 2, "t4"), (2, 1, "t1"), (3, 2, "t5")]
        );
    }

    #[test]
    fn per_stream_message_counts_follow_the_schedule_and_the_cap() {
        assert_eq!(
            stream_messages_per_step(50.0, Duration::from_secs(2), None, 5),
            21
        );
        assert_eq!(
            stream_messages_per_step(50.0, Duration::from_secs(2), Some(10), 5),
            3
        );
    }
}
