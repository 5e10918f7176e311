//! `presence-kill`: how long after a gateway dies (SIGKILL, no goodbye)
//! the other members of its users' rooms see those users leave.
//!
//! Users are provisioned in rooms and connected round-robin over the
//! gateways; every `--second-device-every`-th user also connects a second
//! device to the next gateway. Every connection joins its user's room
//! asking for the presence snapshot and then follows the room's `presence`
//! events, so each connection knows who its gateway says is in the room.
//! The run waits until every connection's view holds every connected user
//! (the settle is observed, not slept), sends SIGKILL to `--kill-pid` (the
//! process behind gateway `--kill-gateway`) and then measures, on the
//! connections of the surviving gateways, the time from the kill to each
//! `presence ... online: false` event of a user whose every connection
//! was on the killed gateway. A leave of a user who still has a connection
//! elsewhere is counted as unexpected.
//!
//! The clients of the killed gateway do **not** reconnect (a real client
//! would, and a reconnection within the lease would rightly produce no
//! leave at all): this measures the lease and the reaping, which is the
//! bound on how long a dead node's users look present.
//!
//! Everything runs in this process (no agents): the kill and every leave
//! are timed on one clock.

use super::{provision_run, timeouts, token_ttl};
use crate::cli::PresenceKillArgs;
use crate::client::{self, GatewayTarget, Timeouts, Ws};
use crate::metrics::{Hist, LatencySummary, Reasons};
use crate::provision::ProvisionPlan;
use crate::report::Report;
use fastwebsockets::OpCode;
use serde::{Deserialize, Serialize};
use shared::protocol::Encoding;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages from the connection tasks waiting for the coordinator at most:
/// a few per user and room; beyond it the readers wait (nothing is lost).
const CHANNEL: usize = 65_536;

/// Unexpected leaves listed by user id in the report (the rest are counted).
const SAMPLE: usize = 20;

/// Extra time, beyond the close handshake's own timeout, that closing the
/// surviving connections may take before the run stops waiting for them.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the run saw, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PresenceKillReport {
    pub killed_pid: u32,
    /// `/proc/PID/comm` of the killed process, read before the run.
    pub killed_process: String,
    pub killed_gateway: usize,
    pub killed_gateway_url: String,
    pub users: u64,
    pub rooms: u64,
    pub room_size: u64,
    /// Users with a second connection on the next gateway.
    pub second_device_users: u64,
    pub connections: u64,
    pub connected: u64,
    pub failures: Reasons,
    /// Joined connections per gateway before the kill.
    pub per_gateway: Vec<u64>,
    /// Every connection's view held every connected user of its room.
    pub settled: bool,
    /// From the last connection's `joined` to the settled views.
    pub settle_s: f64,
    /// Joined connections on the killed gateway, and how many of them saw
    /// their socket end after the kill (they do not reconnect).
    pub killed_connections: u64,
    pub killed_connections_ended: u64,
    /// Users whose every connection was on the killed gateway: the leaves
    /// the other gateways must announce.
    pub users_only_on_killed: u64,
    /// One leave per such user per connection in their room on a
    /// surviving gateway.
    pub expected_leaves: u64,
    pub received_leaves: u64,
    /// Users whose leave reached every such connection.
    pub users_fully_reported: u64,
    /// Time from the kill to each expected leave.
    pub leave_latency: Hist,
    pub leave_summary: LatencySummary,
    /// Leaves of users who still had a connection on a surviving gateway.
    pub unexpected_leaves: u64,
    pub unexpected_users: Vec<i64>,
    /// The same leave seen twice by one connection.
    pub duplicate_leaves: u64,
    /// `online: true` events after the kill (nobody joined then).
    pub online_after_kill: u64,
    /// Connections of surviving gateways that ended during the wait.
    pub observers_dropped: Reasons,
    /// The wait ended at `--leave-timeout` with leaves missing.
    pub timed_out: bool,
    /// The wait ended because every connection had closed (the surviving
    /// gateways went away too: nothing more could arrive).
    pub all_connections_ended: bool,
    /// From the kill to the end of the wait (the tail after the last
    /// expected leave included).
    pub waited_s: f64,
    pub leave_timeout_s: f64,
    pub tail_s: f64,
}

impl PresenceKillReport {
    /// The human summary.
    pub fn write_text(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\npresence-kill: {} users in {} rooms of {} ({} with a second device), {} of {} connections joined, per gateway {:?}",
            self.users,
            self.rooms,
            self.room_size,
            self.second_device_users,
            self.connected,
            self.connections,
            self.per_gateway
        );
        for (reason, n) in &self.failures {
            let _ = writeln!(o, "  failed: {n} {reason}");
        }
        let _ = writeln!(
            o,
            "  settle: {} in {:.2} s (every connection's view holds every connected user of its room)",
            if self.settled {
                "complete"
            } else {
                "INCOMPLETE"
            },
            self.settle_s
        );
        let _ = writeln!(
            o,
            "  killed: pid {} ({}) = gateway {} {}; {} of its {} connections saw their socket end (no reconnection)",
            self.killed_pid,
            self.killed_process,
            self.killed_gateway,
            self.killed_gateway_url,
            self.killed_connections_ended,
            self.killed_connections
        );
        let s = &self.leave_summary;
        let _ = writeln!(
            o,
            "  leaves: {} users only on the killed gateway; expected {} leave events on the surviving gateways, received {} ({} users reported to every observer)",
            self.users_only_on_killed,
            self.expected_leaves,
            self.received_leaves,
            self.users_fully_reported
        );
        if s.count > 0 {
            let _ = writeln!(
                o,
                "  kill -> leave seen (s): first {:.2}  p50 {:.2}  p90 {:.2}  max (last) {:.2}",
                s.min_ms / 1000.0,
                s.p50_ms / 1000.0,
                s.p90_ms / 1000.0,
                s.max_ms / 1000.0
            );
        }
        let _ = writeln!(
            o,
            "  unexpected leaves (user still connected elsewhere): {}{}; duplicate leaves: {}; online events after the kill: {}",
            self.unexpected_leaves,
            if self.unexpected_users.is_empty() {
                String::new()
            } else {
                format!(" (users {:?})", self.unexpected_users)
            },
            self.duplicate_leaves,
            self.online_after_kill
        );
        for (reason, n) in &self.observers_dropped {
            let _ = writeln!(o, "  observer dropped: {n} {reason}");
        }
        let _ = writeln!(
            o,
            "  waited {:.1} s after the kill (limit {:.0} s, tail {:.1} s){}",
            self.waited_s,
            self.leave_timeout_s,
            self.tail_s,
            if self.all_connections_ended {
                " — ENDED EARLY: every connection closed (did the other gateways stop too?)"
            } else if self.timed_out {
                " — TIMED OUT with leaves missing"
            } else {
                ""
            }
        );
    }
}

/// One planned connection.
struct Plan {
    user_id: i64,
    room_id: i64,
    gateway: usize,
    token: String,
}

/// What connection tasks tell the coordinator, in order per connection.
enum Msg {
    Joined {
        conn: usize,
        snapshot: Option<shared::protocol::PresenceSnapshot>,
    },
    Failed {
        reason: String,
    },
    Presence {
        conn: usize,
        user: i64,
        online: bool,
        version: i64,
        at: Instant,
    },
    Ended {
        conn: usize,
        reason: String,
    },
}

/// The fields of a server frame this scenario reads.
#[derive(Deserialize)]
struct PresenceView {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user_id: Option<i64>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    version: Option<i64>,
}

/// The coordinator's view of one connection.
struct ConnState {
    user_id: i64,
    room: usize,
    gateway: usize,
    joined: bool,
    alive: bool,
    /// Users its gateway says are in the room, with the version that said so.
    present: HashMap<i64, (bool, i64)>,
    snapshot_version: i64,
}

impl ConnState {
    fn apply(&mut self, user: i64, online: bool, version: i64) {
        let known = self
            .present
            .get(&user)
            .map_or(self.snapshot_version, |&(_, v)| v);
        if version > known {
            self.present.insert(user, (online, version));
        }
    }

    fn sees(&self, user: i64) -> bool {
        user == self.user_id || self.present.get(&user).is_some_and(|&(on, _)| on)
    }
}

pub async fn run(args: &PresenceKillArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let target = &args.target;
    anyhow::ensure!(
        target.agents.is_empty(),
        "presence-kill runs in this process only (the kill and every leave are timed on one clock): drop --agents"
    );
    let gateways = target.gateways.len();
    anyhow::ensure!(
        gateways >= 2,
        "give at least two gateways: the leaves are seen on the surviving ones"
    );
    anyhow::ensure!(
        args.kill_gateway < gateways,
        "--kill-gateway {} is not one of the {gateways} gateway URLs (0 to {})",
        args.kill_gateway,
        gateways - 1
    );
    let killed_process = check_pid(args.kill_pid)?;
    let size = args.room_size;
    let rooms = args.users / size;
    anyhow::ensure!(
        rooms >= 1,
        "{} users cannot fill a room of {size}",
        args.users
    );
    let users = rooms * size;
    let planned = Duration::from_secs_f64(f64::from(users) * 2.0 / args.connect_rate)
        + args.settle_timeout
        + args.leave_timeout
        + args.tail;
    let (mut report, roster) = provision_run(
        "presence-kill",
        serde_json::to_value(args)?,
        target,
        &ProvisionPlan {
            users,
            rooms,
            room_size: size,
            token_ttl_secs: token_ttl(planned),
        },
    )
    .await?;
    let mut targets = Vec::with_capacity(gateways);
    for url in &target.gateways {
        targets.push(GatewayTarget::resolve(url).await?);
    }
    let targets = Arc::new(targets);
    // Room r's members are users r*size .. r*size+size-1 (see provision).
    let mut plans = Vec::new();
    let mut second_devices = 0u64;
    for (r, room) in roster.rooms.iter().enumerate() {
        for &u in &room.members {
            let user = &roster.users[u as usize];
            let primary = u as usize % gateways;
            plans.push((
                r,
                Plan {
                    user_id: user.id,
                    room_id: room.id,
                    gateway: primary,
                    token: user.token.clone(),
                },
            ));
            if args.second_device_every > 0 && u % args.second_device_every == 0 {
                second_devices += 1;
                plans.push((
                    r,
                    Plan {
                        user_id: user.id,
                        room_id: room.id,
                        gateway: (primary + 1) % gateways,
                        token: user.token.clone(),
                    },
                ));
            }
        }
    }
    drop(roster);
    let mut pk = PresenceKillReport {
        killed_pid: args.kill_pid,
        killed_process,
        killed_gateway: args.kill_gateway,
        killed_gateway_url: target.gateways[args.kill_gateway].clone(),
        users: u64::from(users),
        rooms: u64::from(rooms),
        room_size: u64::from(size),
        second_device_users: second_devices,
        connections: plans.len() as u64,
        leave_timeout_s: args.leave_timeout.as_secs_f64(),
        tail_s: args.tail.as_secs_f64(),
        per_gateway: vec![0; gateways],
        ..PresenceKillReport::default()
    };
    let mut conns: Vec<ConnState> = plans
        .iter()
        .map(|(r, p)| ConnState {
            user_id: p.user_id,
            room: *r,
            gateway: p.gateway,
            joined: false,
            alive: false,
            present: HashMap::new(),
            snapshot_version: 0,
        })
        .collect();

    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let limits = timeouts(target);
    let encoding = target.encoding.protocol();
    let sources = target.source_addrs.0.clone();
    let start = Instant::now();
    for (i, (_, plan)) in plans.into_iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / args.connect_rate);
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        tasks.spawn(connection(
            i,
            plan,
            targets.clone(),
            source,
            encoding,
            limits,
            at,
            tx.clone(),
            stop.clone(),
        ));
    }
    drop(tx);

    let outcome = observe(args, &mut conns, &mut rx, &mut pk, &cancel).await;
    if let Err(e) = outcome {
        report.errors.push(format!("{e:#}"));
    }
    // Whatever happened: close the surviving connections, wait for the tasks.
    stop.cancel();
    tasks.close();
    // Keep receiving so no reader waits on a full channel while closing.
    let drain = async { while rx.recv().await.is_some() {} };
    let limit = limits.close + CLOSE_GRACE;
    let _ = tokio::time::timeout(limit, async {
        tokio::join!(tasks.wait(), drain);
    })
    .await;
    pk.leave_summary = pk.leave_latency.summary();
    if cancel.is_cancelled() {
        report.interrupted = true;
    }
    report.presence_kill = Some(pk);
    report.finish(&[]);
    Ok(report)
}

/// Connect, settle, kill, wait for the leaves: the coordinator's part.
async fn observe(
    args: &PresenceKillArgs,
    conns: &mut [ConnState],
    rx: &mut mpsc::Receiver<Msg>,
    pk: &mut PresenceKillReport,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // 1. Every connection answers once (joined or failed); presence events
    //    of the early ones arrive meanwhile and are applied as they come.
    let mut answered = 0usize;
    let connect_limit = Instant::now()
        + Duration::from_secs_f64(conns.len() as f64 / args.connect_rate)
        + args.target.timeout * 4;
    while answered < conns.len() {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(connect_limit) => anyhow::bail!("connections did not answer by the connect deadline"),
            _ = cancel.cancelled() => anyhow::bail!("interrupted while connecting"),
        };
        let Some(msg) = msg else {
            anyhow::bail!("every connection task ended while connecting")
        };
        if matches!(msg, Msg::Joined { .. } | Msg::Failed { .. }) {
            answered += 1;
        }
        apply_before_kill(conns, pk, msg);
    }
    pk.connected = conns.iter().filter(|c| c.joined).count() as u64;
    for c in conns.iter().filter(|c| c.joined) {
        pk.per_gateway[c.gateway] += 1;
    }

    // 2. Settle: every live connection sees every connected user of its room.
    let settle_start = Instant::now();
    let settle_limit = settle_start + args.settle_timeout;
    while !settled(conns) {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(settle_limit) => {
                pk.settle_s = settle_start.elapsed().as_secs_f64();
                anyhow::bail!("presence did not settle within {:?}: not killing", args.settle_timeout);
            }
            _ = cancel.cancelled() => anyhow::bail!("interrupted while settling"),
        };
        let Some(msg) = msg else {
            anyhow::bail!("every connection task ended while settling")
        };
        apply_before_kill(conns, pk, msg);
        // Apply whatever else is queued before checking again.
        while let Ok(msg) = rx.try_recv() {
            apply_before_kill(conns, pk, msg);
        }
    }
    pk.settled = true;
    pk.settle_s = settle_start.elapsed().as_secs_f64();

    // 3. Who must be seen leaving, and by whom.
    let killed = args.kill_gateway;
    let mut on_survivor: HashSet<i64> = HashSet::new();
    let mut on_killed: HashSet<i64> = HashSet::new();
    for c in conns.iter().filter(|c| c.alive) {
        if c.gateway == killed {
            on_killed.insert(c.user_id);
        } else {
            on_survivor.insert(c.user_id);
        }
    }
    let only_killed: HashSet<i64> = on_killed.difference(&on_survivor).copied().collect();
    let mut room_leavers: HashMap<usize, Vec<i64>> = HashMap::new();
    for c in conns.iter().filter(|c| c.alive && c.gateway == killed) {
        if only_killed.contains(&c.user_id) {
            let leavers = room_leavers.entry(c.room).or_default();
            if !leavers.contains(&c.user_id) {
                leavers.push(c.user_id);
            }
        }
    }
    let mut expected: HashMap<(usize, i64), Option<Duration>> = HashMap::new();
    for (i, c) in conns.iter().enumerate() {
        if !c.alive || c.gateway == killed {
            continue;
        }
        for &u in room_leavers.get(&c.room).into_iter().flatten() {
            expected.insert((i, u), None);
        }
    }
    pk.users_only_on_killed = only_killed.len() as u64;
    pk.expected_leaves = expected.len() as u64;
    pk.killed_connections = conns
        .iter()
        .filter(|c| c.alive && c.gateway == killed)
        .count() as u64;

    // 4. The kill.
    let killed_at = Instant::now();
    // SAFETY: kill(2) with a pid checked at start-up; no memory is involved.
    if unsafe { libc::kill(args.kill_pid as libc::pid_t, libc::SIGKILL) } != 0 {
        anyhow::bail!(
            "kill -KILL {}: {}",
            args.kill_pid,
            std::io::Error::last_os_error()
        );
    }

    // 5. Wait for every expected leave (bounded), then a short tail for
    //    late unexpected ones.
    let deadline = killed_at + args.leave_timeout;
    let mut received = 0usize;
    let mut until = deadline;
    let mut unexpected: Vec<i64> = Vec::new();
    loop {
        if received == expected.len() && until == deadline {
            until = (Instant::now() + args.tail).min(deadline);
        }
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(until) => break,
            _ = cancel.cancelled() => break,
        };
        let Some(msg) = msg else {
            pk.all_connections_ended = true;
            break;
        };
        match msg {
            Msg::Presence {
                conn,
                user,
                online: false,
                at,
                ..
            } => match expected.get_mut(&(conn, user)) {
                Some(slot @ None) => {
                    let waited = at.saturating_duration_since(killed_at);
                    *slot = Some(waited);
                    pk.leave_latency.record_us(waited.as_micros() as u64);
                    received += 1;
                }
                Some(Some(_)) => pk.duplicate_leaves += 1,
                None if only_killed.contains(&user) => pk.duplicate_leaves += 1,
                None => {
                    pk.unexpected_leaves += 1;
                    if unexpected.len() < SAMPLE && !unexpected.contains(&user) {
                        unexpected.push(user);
                    }
                }
            },
            Msg::Presence { online: true, .. } => pk.online_after_kill += 1,
            Msg::Ended { conn, reason } => {
                let c = &mut conns[conn];
                c.alive = false;
                if c.gateway == killed {
                    pk.killed_connections_ended += 1;
                } else {
                    *pk.observers_dropped.entry(reason).or_default() += 1;
                }
            }
            Msg::Joined { .. } | Msg::Failed { .. } => {}
        }
    }
    pk.waited_s = killed_at.elapsed().as_secs_f64();
    pk.timed_out = received < expected.len() && !cancel.is_cancelled() && !pk.all_connections_ended;
    pk.received_leaves = received as u64;
    unexpected.sort_unstable();
    pk.unexpected_users = unexpected;
    let mut per_user: HashMap<i64, (usize, usize)> = HashMap::new();
    for ((_, user), seen) in &expected {
        let e = per_user.entry(*user).or_default();
        e.0 += 1;
        e.1 += usize::from(seen.is_some());
    }
    pk.users_fully_reported = per_user.values().filter(|(n, seen)| n == seen).count() as u64;
    Ok(())
}

fn apply_before_kill(conns: &mut [ConnState], pk: &mut PresenceKillReport, msg: Msg) {
    match msg {
        Msg::Joined { conn, snapshot } => {
            let c = &mut conns[conn];
            c.joined = true;
            c.alive = true;
            if let Some(s) = snapshot {
                c.snapshot_version = s.version;
                for u in s.user_ids.unwrap_or_default() {
                    c.present.insert(u.0, (true, s.version));
                }
            }
        }
        Msg::Failed { reason, .. } => *pk.failures.entry(reason).or_default() += 1,
        Msg::Presence {
            conn,
            user,
            online,
            version,
            ..
        } => conns[conn].apply(user, online, version),
        Msg::Ended { conn, reason } => {
            conns[conn].alive = false;
            *pk.observers_dropped
                .entry(format!("before the kill: {reason}"))
                .or_default() += 1;
        }
    }
}

/// Every live connection's view holds every user with a live connection in its room.
fn settled(conns: &[ConnState]) -> bool {
    let mut in_room: HashMap<usize, HashSet<i64>> = HashMap::new();
    for c in conns.iter().filter(|c| c.alive) {
        in_room.entry(c.room).or_default().insert(c.user_id);
    }
    conns.iter().filter(|c| c.alive).all(|c| {
        in_room
            .get(&c.room)
            .is_some_and(|users| users.iter().all(|&u| c.sees(u)))
    })
}

/// The process exists and may be signalled; returns its name.
fn check_pid(pid: u32) -> anyhow::Result<String> {
    anyhow::ensure!(
        pid > 1 && pid != std::process::id(),
        "--kill-pid {pid} is not a gateway's process id"
    );
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        anyhow::bail!("--kill-pid {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into()))
}

/// One connection: open, join with the presence snapshot, report every
/// `presence` event until stopped or the socket ends. Never reconnects.
#[allow(clippy::too_many_arguments)]
async fn connection(
    conn: usize,
    plan: Plan,
    targets: Arc<Vec<GatewayTarget>>,
    source: Option<IpAddr>,
    encoding: Encoding,
    limits: Timeouts,
    at: Instant,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        _ = stop.cancelled() => return,
    }
    let target = &targets[plan.gateway];
    let mut ws = match client::open(target, source, &plan.token, encoding, &limits).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = tx.send(Msg::Failed { reason: e.reason() }).await;
            return;
        }
    };
    drop(plan.token);
    match client::join_room(&mut ws, encoding, plan.room_id, 1, true, limits.join).await {
        Ok(joined) => {
            if tx
                .send(Msg::Joined {
                    conn,
                    snapshot: joined.presence,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        Err(e) => {
            client::close_gracefully(&mut ws, limits.close).await;
            let _ = tx.send(Msg::Failed { reason: e.reason() }).await;
            return;
        }
    }
    if let Some(reason) = follow(conn, &mut ws, encoding, &tx, &stop).await {
        let _ = tx.send(Msg::Ended { conn, reason }).await;
    } else {
        client::close_gracefully(&mut ws, limits.close).await;
    }
}

/// Reads frames until stopped (None) or the socket ends (the reason).
async fn follow(
    conn: usize,
    ws: &mut Ws,
    encoding: Encoding,
    tx: &mpsc::Sender<Msg>,
    stop: &CancellationToken,
) -> Option<String> {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // A read dropped half-way loses its frame: only when stopping.
        let frame = tokio::select! {
            biased;
            _ = &mut stopped => return None,
            frame = ws.read_frame() => frame,
        };
        let at = Instant::now();
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Some(client::read_error(e).reason()),
        };
        match frame.opcode {
            OpCode::Close => return Some(client::closed(&frame.payload).reason()),
            OpCode::Text | OpCode::Binary => {
                let Some(view) = client::decode::<PresenceView>(encoding, &frame.payload) else {
                    continue;
                };
                if view.kind != "presence" {
                    continue;
                }
                let (Some(user), Some(online), Some(version)) =
                    (view.user_id, view.online, view.version)
                else {
                    continue;
                };
                let msg = Msg::Presence {
                    conn,
                    user,
                    online,
                    version,
                    at,
                };
                if tx.send(msg).await.is_err() {
                    return None;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(user: i64, room: usize) -> ConnState {
        ConnState {
            user_id: user,
            room,
            gateway: 0,
            joined: true,
            alive: true,
            present: HashMap::new(),
            snapshot_version: 10,
        }
    }

    #[test]
    fn stale_presence_events_do_not_change_a_view() {
        let mut c = conn(1, 0);
        c.apply(2, true, 5);
        assert!(!c.sees(2), "older than the snapshot");
        c.apply(2, true, 11);
        c.apply(2, false, 11);
        assert!(c.sees(2), "same version: not newer");
        c.apply(2, false, 12);
        assert!(!c.sees(2));
        assert!(c.sees(1), "a connection always counts its own user");
    }

    #[test]
    fn a_room_is_settled_when_every_view_holds_every_connected_user() {
        let mut a = conn(1, 0);
        let mut b = conn(2, 0);
        let other = conn(3, 1);
        a.apply(2, true, 11);
        assert!(!settled(&[
            a.clone_view(),
            b.clone_view(),
            other.clone_view()
        ]));
        b.apply(1, true, 12);
        assert!(settled(&[
            a.clone_view(),
            b.clone_view(),
            other.clone_view()
        ]));
        a.alive = false;
        assert!(
            settled(&[a, b, other]),
            "a dead connection's user is not awaited"
        );
    }

    impl ConnState {
        fn clone_view(&self) -> ConnState {
            ConnState {
                user_id: self.user_id,
                room: self.room,
                gateway: self.gateway,
                joined: self.joined,
                alive: self.alive,
                present: self.present.clone(),
                snapshot_version: self.snapshot_version,
            }
        }
    }
}
