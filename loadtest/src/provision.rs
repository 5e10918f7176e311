//! Users, tokens and rooms for a run, through the admin provisioning
//! endpoint (`POST /v1/admin/provision`): thousands of users in a request,
//! no password hashing. Runs bigger than one request's limits are split in
//! batches, each a self-contained set of users and the rooms among them.

use anyhow::Context as _;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use shared::rest::{ErrorBody, ProvisionRequest, ProvisionResponse, member_of};
use std::time::{Duration, Instant};

/// The endpoint's limits per request (api/src/admin): a bigger run makes
/// several requests.
pub const MAX_USERS_PER_REQUEST: u32 = 100_000;
pub const MAX_ROOMS_PER_REQUEST: u32 = 10_000;
pub const MAX_MEMBERSHIPS_PER_REQUEST: u64 = 2_000_000;
/// Longest token lifetime the endpoint grants.
pub const MAX_TOKEN_TTL_SECS: u64 = 86_400;

/// Provisioning 100,000 users is one large transaction plus 100,000 token
/// signatures; give it time before calling the api unresponsive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// What to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProvisionPlan {
    /// Users (one connection each). With rooms, exactly `rooms * room_size`.
    pub users: u32,
    pub rooms: u32,
    pub room_size: u32,
    pub token_ttl_secs: u64,
}

/// One request of a plan: `users` users starting at global index
/// `first_user`, and `rooms` rooms starting at global index `first_room`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub first_user: u32,
    pub users: u32,
    pub first_room: u32,
    pub rooms: u32,
}

/// Splits a plan into requests within the endpoint's limits. With rooms,
/// each batch holds whole rooms and exactly their members, so no room
/// spans two batches.
pub fn batches(plan: &ProvisionPlan) -> Vec<Batch> {
    let mut out = Vec::new();
    if plan.rooms == 0 {
        let mut first = 0;
        while first < plan.users {
            let users = (plan.users - first).min(MAX_USERS_PER_REQUEST);
            out.push(Batch {
                first_user: first,
                users,
                first_room: 0,
                rooms: 0,
            });
            first += users;
        }
        return out;
    }
    let size = plan.room_size.max(1);
    let per_batch = (MAX_USERS_PER_REQUEST / size)
        .min(MAX_ROOMS_PER_REQUEST)
        .min((MAX_MEMBERSHIPS_PER_REQUEST / u64::from(size)) as u32)
        .max(1);
    let mut room = 0;
    while room < plan.rooms {
        let rooms = (plan.rooms - room).min(per_batch);
        out.push(Batch {
            first_user: room * size,
            users: rooms * size,
            first_room: room,
            rooms,
        });
        room += rooms;
    }
    out
}

/// A provisioned user: its id and access token (held in memory only, never printed).
#[derive(Clone, Debug)]
pub struct RosterUser {
    pub id: i64,
    pub token: String,
}

/// A provisioned room and its members (global user indices).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RosterRoom {
    pub id: i64,
    pub last_seq: i64,
    pub members: Vec<u32>,
}

/// Everything provisioned for a run.
#[derive(Clone, Debug)]
pub struct Roster {
    /// The run's username prefix (users are `{prefix}[batch]_{i}`).
    pub prefix: String,
    pub users: Vec<RosterUser>,
    pub rooms: Vec<RosterRoom>,
    pub requests: usize,
    pub elapsed: Duration,
}

/// A fresh prefix per run: `lt` and 8 random characters of a-z0-9, leaving
/// room for a batch number within the 16-character limit.
pub fn run_prefix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..8)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    format!("lt{tail}")
}

/// Creates the plan's users and rooms.
pub async fn provision(
    http: &reqwest::Client,
    api: &str,
    admin_token: &SecretString,
    plan: &ProvisionPlan,
) -> anyhow::Result<Roster> {
    let started = Instant::now();
    let prefix = run_prefix();
    let batches = batches(plan);
    let many = batches.len() > 1;
    let mut users = Vec::with_capacity(plan.users as usize);
    let mut rooms = Vec::with_capacity(plan.rooms as usize);
    let url = format!("{}/v1/admin/provision", api.trim_end_matches('/'));
    for (b, batch) in batches.iter().enumerate() {
        let request = ProvisionRequest {
            prefix: if many {
                format!("{prefix}{b}")
            } else {
                prefix.clone()
            },
            users: batch.users,
            rooms: batch.rooms,
            room_size: if batch.rooms > 0 { plan.room_size } else { 0 },
            token_ttl_secs: Some(plan.token_ttl_secs.clamp(1, MAX_TOKEN_TTL_SECS)),
        };
        let response = http
            .post(&url)
            .bearer_auth(admin_token.expose_secret())
            .json(&request)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("provisioning through {url}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("reading the provisioning answer")?;
        if status.as_u16() != 201 {
            let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| format!("{}: {}", b.error.code, b.error.message))
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            let hint = match status.as_u16() {
                404 => " (is PARLEY_ADMIN_TOKEN set on the api?)",
                401 | 403 => " (check --admin-token / PARLEY_ADMIN_TOKEN)",
                _ => "",
            };
            anyhow::bail!("provisioning failed: HTTP {status} {detail}{hint}");
        }
        let done: ProvisionResponse =
            serde_json::from_slice(&bytes).context("decoding the provisioning answer")?;
        anyhow::ensure!(
            done.users.len() == batch.users as usize && done.rooms.len() == batch.rooms as usize,
            "provisioning returned {} users and {} rooms, asked for {} and {}",
            done.users.len(),
            done.rooms.len(),
            batch.users,
            batch.rooms
        );
        users.extend(done.users.into_iter().map(|u| RosterUser {
            id: u.id.0,
            token: u.access_token,
        }));
        for (r, room) in done.rooms.into_iter().enumerate() {
            let members = (0..plan.room_size)
                .map(|i| batch.first_user + member_of(r as u32, i, plan.room_size, batch.users))
                .collect();
            rooms.push(RosterRoom {
                id: room.id.0,
                last_seq: room.last_seq,
                members,
            });
        }
    }
    Ok(Roster {
        prefix,
        users,
        rooms,
        requests: batches.len(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_without_rooms_are_split_at_the_request_limit() {
        let b = batches(&ProvisionPlan {
            users: 250_000,
            rooms: 0,
            room_size: 0,
            token_ttl_secs: 60,
        });
        assert_eq!(
            b.iter().map(|b| b.users).collect::<Vec<_>>(),
            [100_000, 100_000, 50_000]
        );
        assert_eq!(b[2].first_user, 200_000);
    }

    #[test]
    fn rooms_stay_whole_within_a_batch() {
        let plan = ProvisionPlan {
            users: 30_000 * 7,
            rooms: 30_000,
            room_size: 7,
            token_ttl_secs: 60,
        };
        let b = batches(&plan);
        // 100,000 / 7 = 14,285 rooms by users, but at most 10,000 per request.
        assert_eq!(
            b.iter().map(|b| b.rooms).collect::<Vec<_>>(),
            [10_000, 10_000, 10_000]
        );
        assert!(b.iter().all(|b| b.users == b.rooms * 7));
        assert_eq!(b.iter().map(|b| b.users).sum::<u32>(), plan.users);
        assert_eq!(b[1].first_user, 70_000);
        let big = batches(&ProvisionPlan {
            users: 200_000,
            rooms: 2,
            room_size: 100_000,
            token_ttl_secs: 60,
        });
        assert_eq!(big.len(), 2, "a room of 100,000 fills a request");
    }

    #[test]
    fn prefixes_are_valid_and_leave_room_for_batch_numbers() {
        let p = run_prefix();
        assert_eq!(p.len(), 10);
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(run_prefix(), p);
    }
}
