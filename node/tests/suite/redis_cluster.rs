//! The cluster shape on a real Redis Cluster (three masters, three replicas
//! on loopback, started by `.ci/redis-cluster` through
//! `testkit::redis_cluster_url`): sharded pub/sub, hash-tagged keys, and
//! the same behaviour as on one Redis server.
//!
//! The behaviour tests are the suite's own, run here in a third shape.
//! Nothing here changes the shared cluster's topology, so these tests run
//! beside each other and beside the rest: the failover and resharding tests
//! start clusters of their own on other ports.

use broker::Topic;
use broker::guard::{GuardPolicy, Verdict};
use broker::keys::{Keys, slot};
use broker::presence::{Change, Entry};
use serde_json::json;
use shared::{RoomId, UserId};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::{Mode, TestApp, eventually, redis_cluster_masters, shard_numsub};

mod behaviour {
    //! The suite's tests, on the Redis Cluster.
    use testkit::Mode;

    macro_rules! on_the_cluster {
        ($($module:ident :: $name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(Mode::RedisCluster).await
                }
            )*
        };
    }

    on_the_cluster!(
        realtime::a_message_reaches_every_member_once_in_order_and_nobody_else,
        realtime::concurrent_posts_are_delivered_in_sequence_order,
        realtime::a_node_is_subscribed_to_a_room_only_while_it_has_local_members,
        resume::clients_that_drop_and_resume_get_every_event_once_in_order,
        resume::resumes_are_served_from_the_window,
        presence::presence_changes_only_with_the_first_connection_in_and_the_last_out,
        presence::presence_is_answered_to_those_who_share_a_room_only,
        typing::a_typing_flood_forwards_one_event_per_interval_and_stores_nothing,
        typing::a_message_ends_its_senders_typing_for_the_others,
    );
}

/// A room's events are published on its master only: its shard channel is
/// subscribed there (once per gateway with a member) and on no other node,
/// and nobody uses classic pub/sub, which Redis Cluster sends to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_events_travel_only_through_the_master_that_owns_it() {
    let app = TestApp::spawn(Mode::RedisCluster).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;
    let mut members = Vec::new();
    for (i, user) in [&alice, &bob, &carol].into_iter().enumerate() {
        let mut ws = app.ws(i, user).await;
        ws.join(room).await.expect("a member may join");
        members.push(ws);
    }
    let sent = app.send_message(&alice, room, "hello").await;
    for ws in &mut members {
        let seen = ws.until_pong().await;
        assert!(
            seen.iter()
                .any(|f| matches!(f, shared::protocol::ServerFrame::Event(e) if e.seq == sent.seq)),
            "every member gets the message: {seen:?}"
        );
    }

    let channel = app.room_channel(room);
    assert_eq!(channel, format!("{{{}room:{room}}}", app.redis_prefix));
    let masters = redis_cluster_masters().await;
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let room_slot = slot(&channel);
    let mut owners = 0;
    for (address, ranges) in &masters {
        let owns = ranges.iter().any(|(a, b)| (*a..=*b).contains(&room_slot));
        let subscribed = shard_numsub(address, &channel).await;
        if owns {
            owners += 1;
            assert_eq!(subscribed, 3, "one subscription per gateway on {address}");
        } else {
            assert_eq!(subscribed, 0, "{address} does not own the room's slot");
        }
        // Classic pub/sub would reach every node: nothing of ours is there.
        let classic: Vec<fred::prelude::Value> = {
            use fred::prelude::*;
            let node = testkit::redis_node(address).await;
            let channels = node
                .custom(
                    fred::types::CustomCommand::new_static(
                        "PUBSUB",
                        fred::types::ClusterHash::Random,
                        false,
                    ),
                    vec!["CHANNELS".to_owned(), format!("*{}*", app.redis_prefix)],
                )
                .await
                .expect("PUBSUB CHANNELS");
            let _ = node.quit().await;
            channels
        };
        assert_eq!(classic, vec![], "no classic channel of ours on {address}");
    }
    assert_eq!(owners, 1, "exactly one master owns the room");
    app.stop().await;
}

/// Rooms spread over the masters about evenly: 10,000 rooms' channels
/// counted by the master owning their slot are each within 5% of a third
/// (the standard deviation of a fair split is under 1%), and a room's
/// window lives in its channel's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms_spread_evenly_over_the_masters() {
    const ROOMS: i64 = 10_000;
    let masters = redis_cluster_masters().await;
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let keys = Keys::new("parley:", true);
    let mut per_master: BTreeMap<&str, i64> = BTreeMap::new();
    for room in 1..=ROOMS {
        let channel = keys.channel(Topic::Room(RoomId(room)));
        let room_slot = slot(&channel);
        assert_eq!(room_slot, slot(&keys.window(RoomId(room))));
        let (owner, _) = masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&room_slot)))
            .expect("every slot has a master");
        *per_master.entry(owner.as_str()).or_default() += 1;
    }
    let even = ROOMS / 3;
    for (master, count) in &per_master {
        assert!(
            (count - even).abs() * 20 <= even,
            "{master} owns {count} of {ROOMS} rooms: {per_master:?}"
        );
    }
    assert_eq!(per_master.values().sum::<i64>(), ROOMS);
}

/// The scripts run on the cluster (each touches one slot): a login budget
/// locks out, presence counts and publishes on the room's shard channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_budgets_and_presence_work_on_the_cluster() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let broker = broker::connect(&shared::config::RedisArgs {
        redis_url: Some(testkit::redis_cluster_url().await),
        redis_prefix: prefix.clone(),
        ..shared::config::RedisArgs::in_process()
    })
    .await
    .expect("connecting to the cluster");

    let policy = GuardPolicy {
        max_attempts: 2,
        window: Duration::from_secs(60),
        first_lock: Duration::from_secs(60),
        longest_lock: Duration::from_secs(600),
        strikes_for: Duration::from_secs(3600),
    };
    let guard = broker.login_guard();
    for _ in 0..2 {
        assert_eq!(
            guard.begin("alice", &policy).await.expect("begin"),
            Verdict::Allowed
        );
    }
    assert!(matches!(
        guard.begin("alice", &policy).await.expect("begin"),
        Verdict::Locked {
            just_locked: true,
            ..
        }
    ));
    // Another account's budget is its own.
    assert_eq!(
        guard.begin("bob", &policy).await.expect("begin"),
        Verdict::Allowed
    );

    let room = RoomId(42);
    let mut subscription = broker.subscribe().await.expect("subscribing");
    subscription
        .control
        .add(&[Topic::Room(room)])
        .await
        .expect("SSUBSCRIBE");
    let presence = broker.presence();
    presence
        .register("node-a", Duration::from_secs(30))
        .await
        .expect("register");
    presence
        .apply(
            "node-a",
            &[
                Change::Add(Entry::User(UserId(7))),
                Change::Add(Entry::Room(room, UserId(7))),
            ],
        )
        .await
        .expect("apply");
    assert_eq!(
        presence.room(room).await.expect("room").users,
        vec![UserId(7)]
    );
    assert_eq!(
        presence
            .online(&[UserId(7), UserId(8)])
            .await
            .expect("online"),
        vec![UserId(7)]
    );
    let delivery = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match subscription.deliveries.recv().await {
                Some(broker::Delivery::Message { topic, payload }) => break (topic, payload),
                Some(broker::Delivery::Reconnected | broker::Delivery::Lost) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("the presence event arrives on the room's shard channel");
    assert_eq!(delivery.0, Topic::Room(room));
    let event: serde_json::Value = serde_json::from_slice(&delivery.1).expect("json");
    assert_eq!(event["type"], json!("presence"));
    assert_eq!(event["user_id"], json!(7));
    assert_eq!(event["online"], json!(true));

    // A removed topic stops arriving.
    subscription
        .control
        .remove(&[Topic::Room(room)])
        .await
        .expect("SUNSUBSCRIBE");
    let channel = Keys::new(&prefix, true).channel(Topic::Room(room));
    let owner = testkit::redis_cluster_owner(&channel).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            shard_numsub(&owner, &channel).await == 0
        })
        .await
    );
    subscription.control.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while subscription.deliveries.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "closing ends the delivery stream");
    broker.close().await;
}

/// A cluster of its own (six ports from `first_port`) for a test that changes the
/// topology, so the shared one stays as the other tests expect it. Stopped
/// when dropped.
struct PrivateCluster {
    first_port: u16,
}

impl PrivateCluster {
    async fn start_on(first_port: u16) -> Self {
        let cluster = Self { first_port };
        cluster.script("start").await;
        cluster
    }

    async fn script(&self, action: &str) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/redis-cluster");
        let output = tokio::process::Command::new(&script)
            .arg(action)
            .env(
                "PARLEY_TEST_REDIS_CLUSTER_PORT",
                self.first_port.to_string(),
            )
            .output()
            .await
            .expect("running .ci/redis-cluster");
        assert!(
            output.status.success(),
            ".ci/redis-cluster {action} on port {}: {}",
            self.first_port,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the node on `port` again, as it was started (it keeps its
    /// nodes.conf, so it rejoins the cluster; it has no data, as none is
    /// saved).
    async fn start_node(&self, port: u16) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/redis-cluster");
        let output = tokio::process::Command::new(&script)
            .args(["start-node", &port.to_string()])
            .env(
                "PARLEY_TEST_REDIS_CLUSTER_PORT",
                self.first_port.to_string(),
            )
            .output()
            .await
            .expect("running .ci/redis-cluster");
        assert!(
            output.status.success(),
            ".ci/redis-cluster start-node {port}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The nodes that accept connections (a killed one does not).
    async fn live_nodes(&self) -> Vec<String> {
        let mut live = Vec::new();
        for port in self.first_port..self.first_port + 6 {
            let address = format!("127.0.0.1:{port}");
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                live.push(address);
            }
        }
        live
    }

    fn url(&self) -> String {
        let p = self.first_port;
        format!(
            "redis-cluster://127.0.0.1:{p}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p + 1,
            p + 2
        )
    }

    /// `(node id, address, role, master id)` of every node.
    async fn nodes(&self) -> Vec<(String, String, String, String)> {
        self.nodes_as_seen_by(&format!("127.0.0.1:{}", self.first_port))
            .await
    }

    /// Every node as the node at `address` sees it.
    async fn nodes_as_seen_by(&self, address: &str) -> Vec<(String, String, String, String)> {
        use fred::prelude::*;
        let node = testkit::redis_node(address).await;
        let text: String = node
            .custom(
                fred::types::CustomCommand::new_static(
                    "CLUSTER",
                    fred::types::ClusterHash::Random,
                    false,
                ),
                vec!["NODES"],
            )
            .await
            .expect("CLUSTER NODES");
        let _ = node.quit().await;
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let address = f.get(1)?.split('@').next()?.to_owned();
                let flags = f.get(2)?;
                let role = if flags.contains("fail") && !flags.contains("fail?") {
                    // A node the cluster gave up on, whatever it was.
                    "failed"
                } else if flags.contains("master") {
                    "master"
                } else {
                    "replica"
                };
                Some((
                    f[0].to_owned(),
                    address,
                    role.to_owned(),
                    f.get(3)?.to_string(),
                ))
            })
            .collect()
    }

    /// The master owning `slot`, by its own account (CLUSTER SLOTS on a seed).
    async fn owner(&self, slot_of: u16) -> String {
        self.owner_as_seen_by(&format!("127.0.0.1:{}", self.first_port), slot_of)
            .await
    }

    /// The master owning `slot` as the node at `address` sees it (when the
    /// seed may be down).
    async fn owner_as_seen_by(&self, address: &str, slot_of: u16) -> String {
        use fred::prelude::*;
        let node = testkit::redis_node(address).await;
        let slots: Value = node.cluster_slots().await.expect("CLUSTER SLOTS");
        let _ = node.quit().await;
        let Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let Value::Array(f) = range else { continue };
            let (a, b) = (f[0].as_i64().unwrap_or(-1), f[1].as_i64().unwrap_or(-1));
            if (a..=b).contains(&i64::from(slot_of))
                && let Value::Array(m) = &f[2]
            {
                return format!(
                    "{}:{}",
                    m[0].as_string().unwrap_or_default(),
                    m[1].as_i64().unwrap_or(0)
                );
            }
        }
        panic!("no master owns slot {slot_of}")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/redis-cluster");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .env(
                "PARLEY_TEST_REDIS_CLUSTER_PORT",
                self.first_port.to_string(),
            )
            .output();
    }
}

/// Message events among frames, as seqs.
fn message_seqs(frames: &[shared::protocol::ServerFrame]) -> Vec<i64> {
    use shared::model::{EventKind, RoomEvent};
    use shared::protocol::ServerFrame;
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event(RoomEvent {
                seq,
                kind: EventKind::MessageCreated { .. },
                ..
            }) => Some(*seq),
            _ => None,
        })
        .collect()
}

/// What a test does to the cluster under a live room.
#[derive(Clone, Copy, Debug)]
enum ClusterChange {
    /// `CLUSTER FAILOVER` on the replica of the room's master.
    Failover,
    /// The room's slot (its window with it) moves to another master.
    Reshard,
}

/// A manual failover of the master that owns a live room (its replica
/// takes over, the old master becomes a replica) while messages flow:
/// every member, one on each gateway, still gets every message once and in
/// order, within the stated bound (probe interval, resubscription, gap
/// fill: well inside the test client's 10 s per frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_a_rooms_master_loses_and_repeats_nothing() {
    messages_flow_through(ClusterChange::Failover, 7100).await
}

/// The slot of a live room moves to another master (resharding) while
/// messages flow: the same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_rooms_slot_to_another_master_loses_and_repeats_nothing() {
    messages_flow_through(ClusterChange::Reshard, 7110).await
}

/// Runs a `CLUSTER` subcommand on one node.
async fn cluster_command(address: &str, args: Vec<String>) -> fred::prelude::Value {
    use fred::prelude::*;
    let node = testkit::redis_node(address).await;
    let answer: Value = node
        .custom(
            fred::types::CustomCommand::new_static(
                "CLUSTER",
                fred::types::ClusterHash::Random,
                false,
            ),
            args.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("CLUSTER {args:?} on {address}: {e}"));
    let _ = node.quit().await;
    answer
}

/// Moves `slot` with its keys from master `from` to master `to`, the way
/// `redis-cli --cluster reshard` does.
async fn move_slot(
    nodes: &[(String, String, String, String)],
    slot_of: u16,
    from: (&str, &str),
    to: (&str, &str),
) {
    use fred::prelude::*;
    let s = slot_of.to_string();
    let (from_id, from_address) = from;
    let (to_id, to_address) = to;
    cluster_command(
        to_address,
        vec![
            "SETSLOT".into(),
            s.clone(),
            "IMPORTING".into(),
            from_id.into(),
        ],
    )
    .await;
    cluster_command(
        from_address,
        vec![
            "SETSLOT".into(),
            s.clone(),
            "MIGRATING".into(),
            to_id.into(),
        ],
    )
    .await;
    loop {
        let keys: Vec<String> = cluster_command(
            from_address,
            vec!["GETKEYSINSLOT".into(), s.clone(), "100".into()],
        )
        .await
        .convert()
        .expect("keys");
        if keys.is_empty() {
            break;
        }
        let (host, port) = to_address.split_once(':').expect("host:port");
        let node = testkit::redis_node(from_address).await;
        let mut args: Vec<String> = vec![
            host.into(),
            port.into(),
            "".into(),
            "0".into(),
            "5000".into(),
            "KEYS".into(),
        ];
        args.extend(keys);
        let _: Value = node
            .custom(
                fred::types::CustomCommand::new_static(
                    "MIGRATE",
                    fred::types::ClusterHash::Random,
                    false,
                ),
                args,
            )
            .await
            .expect("MIGRATE");
        let _ = node.quit().await;
    }
    // The new owner first, then the old one, then everyone else.
    cluster_command(
        to_address,
        vec!["SETSLOT".into(), s.clone(), "NODE".into(), to_id.into()],
    )
    .await;
    cluster_command(
        from_address,
        vec!["SETSLOT".into(), s.clone(), "NODE".into(), to_id.into()],
    )
    .await;
    for (_, address, role, _) in nodes {
        if role == "master" && address != to_address && address != from_address {
            cluster_command(
                address,
                vec!["SETSLOT".into(), s.clone(), "NODE".into(), to_id.into()],
            )
            .await;
        }
    }
}

/// A private cluster at `first_port` (see [`PrivateCluster`]), a node on it,
/// and alice's room with bob and carol, each member joined on their own
/// gateway: what every cluster-change test starts from. Alice posts.
async fn members_on_a_private_cluster(
    first_port: u16,
) -> (
    PrivateCluster,
    TestApp,
    testkit::TestUser,
    RoomId,
    Vec<testkit::WsClient>,
) {
    let cluster = PrivateCluster::start_on(first_port).await;
    let app = TestApp::spawn_with(
        Mode::RedisCluster,
        testkit::Options {
            redis_url: Some(cluster.url()),
            ..testkit::Options::default()
        },
    )
    .await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let room = app.create_room(&alice, "general").await;
    app.add_member(&alice, room, &bob).await;
    app.add_member(&alice, room, &carol).await;
    let mut members = Vec::new();
    for (i, user) in [&alice, &bob, &carol].into_iter().enumerate() {
        let mut ws = app.ws(i, user).await;
        ws.join(room).await.expect("a member may join");
        members.push(ws);
    }
    (cluster, app, alice, room, members)
}

async fn messages_flow_through(change: ClusterChange, first_port: u16) {
    const BEFORE: usize = 10;
    const AFTER: usize = 20;
    let (cluster, app, alice, room, mut members) = members_on_a_private_cluster(first_port).await;

    let room_slot = slot(&app.room_channel(room));
    let master = cluster.owner(room_slot).await;
    let nodes = cluster.nodes().await;
    let master_id = nodes
        .iter()
        .find(|(_, address, _, _)| *address == master)
        .map(|(id, ..)| id.clone())
        .expect("the master is listed");
    let new_owner = match change {
        ClusterChange::Failover => nodes
            .iter()
            .find(|(_, _, role, of)| role == "replica" && *of == master_id)
            .map(|(id, address, ..)| (id.clone(), address.clone()))
            .expect("the master has a replica"),
        ClusterChange::Reshard => nodes
            .iter()
            .find(|(_, address, role, _)| role == "master" && *address != master)
            .map(|(id, address, ..)| (id.clone(), address.clone()))
            .expect("another master"),
    };
    let replica = new_owner.1.clone();

    let mut sent = Vec::new();
    for i in 0..BEFORE {
        sent.push(
            app.send_message(&alice, room, &format!("before {i}"))
                .await
                .seq,
        );
    }
    match change {
        ClusterChange::Failover => {
            cluster_command(&replica, vec!["FAILOVER".into()]).await;
        }
        ClusterChange::Reshard => {
            // Moved in the background while messages flow.
            let nodes = nodes.clone();
            let (from, to) = ((master_id.clone(), master.clone()), new_owner.clone());
            tokio::spawn(async move {
                move_slot(&nodes, room_slot, (&from.0, &from.1), (&to.0, &to.1)).await
            });
        }
    }
    // Messages keep flowing while the replica takes over, and after.
    let mut i = 0;
    loop {
        sent.push(
            app.send_message(&alice, room, &format!("during {i}"))
                .await
                .seq,
        );
        i += 1;
        if cluster.owner(room_slot).await == replica {
            break;
        }
        assert!(
            i < 10_000,
            "{replica} never took the room over ({change:?})"
        );
    }
    for i in 0..AFTER {
        sent.push(
            app.send_message(&alice, room, &format!("after {i}"))
                .await
                .seq,
        );
    }

    for (n, ws) in members.iter_mut().enumerate() {
        let mut frames = Vec::new();
        while message_seqs(&frames).len() < sent.len() {
            frames.push(ws.frame().await);
        }
        assert_eq!(
            message_seqs(&frames),
            sent,
            "member {n} got every message once, in order"
        );
        assert_eq!(message_seqs(&ws.until_pong().await), Vec::<i64>::new());
    }
    // The gateways follow the room to its new master.
    let channel = app.room_channel(room);
    assert!(
        eventually(Duration::from_secs(5), || async {
            shard_numsub(&replica, &channel).await == 3
        })
        .await,
        "every gateway subscribes on the new master"
    );
    assert_eq!(shard_numsub(&master, &channel).await, 0);
    app.stop().await;
    drop(cluster);
}

/// How a test stops the master that owns a live room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    /// SIGKILL; the cluster fails it over to its replica.
    Killed,
    /// SIGKILL; once its replica took over, the process is started again
    /// and rejoins as a replica of the new master.
    KilledThenRestarted,
    /// SIGKILL and started again at once, well within cluster-node-timeout:
    /// the same node owns the same slots, with no data (nothing is saved).
    RestartedInPlace,
}

/// `cluster-node-timeout` of the test clusters (`.ci/redis-cluster`).
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// The stated bound on a delivery stall after a master dies
/// (docs/operations.md, "Redis Cluster"): failure detection
/// (`cluster-node-timeout`) and the replica's election (about a second),
/// one probe interval, then a connect, the SSUBSCRIBEs and the gap fill
/// (a second is generous for one room). Two seconds on top for a test
/// machine whose two cores run the cluster, PostgreSQL, the api, three
/// gateways and the test itself.
fn stall_bound() -> Duration {
    NODE_TIMEOUT
        + Duration::from_secs(1)
        + broker::CLUSTER_PROBE_INTERVAL
        + Duration::from_secs(1)
        + Duration::from_secs(2)
}

/// The process id of a Redis node, from `INFO server`.
async fn redis_pid(address: &str) -> u32 {
    use fred::prelude::*;
    let node = testkit::redis_node(address).await;
    let info: String = node
        .custom(
            fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
            vec!["server"],
        )
        .await
        .expect("INFO server");
    let _ = node.quit().await;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server of {address}"))
}

async fn sigkill(pid: u32) {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid}");
}

/// Posts `body` as `user` until the api accepts it, with one
/// `client_msg_id` for every attempt, as a client does: a retryable
/// answer (5xx) is tried again, and a repeat of an attempt that did commit
/// returns the original (200). Returns the event and when the attempt that
/// was accepted began.
async fn post_until_accepted(
    app: &TestApp,
    user: &testkit::TestUser,
    room: RoomId,
    body: &str,
) -> (shared::model::RoomEvent, std::time::Instant) {
    /// Attempts before the test gives up: the api answers within the
    /// publish timeout (1 s) even while Redis is down.
    const ATTEMPTS: usize = 50;
    let client_msg_id = uuid::Uuid::new_v4().simple().to_string();
    for _ in 0..ATTEMPTS {
        let began = std::time::Instant::now();
        let (status, json) = app
            .post(
                &format!("/v1/rooms/{room}/messages"),
                Some(&user.token),
                json!({"body": body, "client_msg_id": client_msg_id}),
            )
            .await;
        if status.is_success() {
            return (serde_json::from_value(json).expect("a room event"), began);
        }
        assert!(
            status.is_server_error(),
            "posting {body:?}: {status} {json} is not retryable"
        );
        // A client's backoff; the next attempt is the same message.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("posting {body:?}: not accepted in {ATTEMPTS} attempts")
}

/// Reads `ws` until the watch names the last seq sent and that seq has
/// arrived: every message event with the moment it arrived.
async fn collect_messages(
    mut ws: testkit::WsClient,
    mut last: tokio::sync::watch::Receiver<Option<i64>>,
) -> (testkit::WsClient, Vec<(i64, std::time::Instant)>) {
    let mut got: Vec<(i64, std::time::Instant)> = Vec::new();
    loop {
        let done = *last.borrow_and_update();
        if let Some(last) = done
            && got.iter().any(|(seq, _)| *seq >= last)
        {
            return (ws, got);
        }
        tokio::select! {
            frame = ws.frame() => {
                let now = std::time::Instant::now();
                got.extend(message_seqs(&[frame]).into_iter().map(|seq| (seq, now)));
            }
            // Looked at again at the top of the loop.
            _ = last.changed() => {}
        }
    }
}

/// A master that owns a live room dies (SIGKILL) while messages flow to
/// members on three gateways; the cluster fails it over to its replica.
/// Posts the api refuses meanwhile are retried with their `client_msg_id`;
/// every member gets every accepted message once, in order, and no message
/// waits longer than the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_of_a_room_loses_and_repeats_nothing() {
    messages_flow_while_a_master_dies(Death::Killed, 7120).await
}

/// The killed master's process is started again after its replica took
/// over: it rejoins as a replica of the new master, and messages keep
/// arriving once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_that_rejoins_as_a_replica_loses_and_repeats_nothing() {
    messages_flow_while_a_master_dies(Death::KilledThenRestarted, 7130).await
}

/// A room's master restarts in place (killed and started again before the
/// cluster notices): the gateways' connections to it drop and are made
/// again to the same, now empty, node; nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_master_restarted_in_place_loses_and_repeats_nothing() {
    messages_flow_while_a_master_dies(Death::RestartedInPlace, 7140).await
}

async fn messages_flow_while_a_master_dies(death: Death, first_port: u16) {
    const BEFORE: usize = 10;
    const AFTER: usize = 20;
    /// Between two posts while the cluster recovers: about 50 a second,
    /// a live room's pace, and a few hundred messages at most.
    const PACE: Duration = Duration::from_millis(20);
    let (cluster, app, alice, room, members) = members_on_a_private_cluster(first_port).await;
    let (last_tx, last_rx) = tokio::sync::watch::channel(None);
    let readers: Vec<_> = members
        .into_iter()
        .map(|ws| tokio::spawn(collect_messages(ws, last_rx.clone())))
        .collect();

    let room_slot = slot(&app.room_channel(room));
    let master = cluster.owner(room_slot).await;
    let nodes = cluster.nodes().await;
    let master_id = nodes
        .iter()
        .find(|(_, address, _, _)| *address == master)
        .map(|(id, ..)| id.clone())
        .expect("the master is listed");
    let replica = nodes
        .iter()
        .find(|(_, _, role, of)| role == "replica" && *of == master_id)
        .map(|(_, address, ..)| address.clone())
        .expect("the master has a replica");
    let master_port: u16 = master
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("host:port");
    let pid = redis_pid(&master).await;
    // A replica that has not finished its first sync cannot take over
    // (Redis refuses to elect it): the cluster would stay down.
    assert!(
        eventually(Duration::from_secs(30), || async {
            replication_link_up(&replica).await
        })
        .await,
        "{replica} never finished syncing from {master}"
    );

    let mut sent: Vec<(i64, std::time::Instant)> = Vec::new();
    for i in 0..BEFORE {
        let (event, began) = post_until_accepted(&app, &alice, room, &format!("before {i}")).await;
        sent.push((event.seq, began));
    }
    sigkill(pid).await;
    let killed = std::time::Instant::now();
    if death == Death::RestartedInPlace {
        cluster.start_node(master_port).await;
    }
    // Whom the room's slot belongs to in the end.
    let owner = match death {
        Death::Killed | Death::KilledThenRestarted => replica.clone(),
        Death::RestartedInPlace => master.clone(),
    };
    let mut ticks = tokio::time::interval(PACE);
    let mut restarted = false;
    let mut i = 0;
    loop {
        ticks.tick().await;
        let (event, began) = post_until_accepted(&app, &alice, room, &format!("during {i}")).await;
        sent.push((event.seq, began));
        i += 1;
        if killed.elapsed() > Duration::from_secs(60) {
            panic!(
                "the cluster did not recover from {death:?} of {master} within a minute: {:?}",
                cluster.nodes_as_seen_by(&owner).await
            );
        }
        // Asked of the node that ends up owning the slot (the killed one
        // may not answer).
        let owns = cluster.owner_as_seen_by(&owner, room_slot).await == owner;
        let recovered = match death {
            Death::Killed | Death::RestartedInPlace => owns && cluster_is_ok(&owner).await,
            Death::KilledThenRestarted if !owns => false,
            Death::KilledThenRestarted if !restarted => {
                cluster.start_node(master_port).await;
                restarted = true;
                false
            }
            Death::KilledThenRestarted => {
                let nodes = cluster.nodes_as_seen_by(&owner).await;
                nodes
                    .iter()
                    .any(|(_, address, role, _)| *address == master && role == "replica")
                    && cluster_is_ok(&owner).await
            }
        };
        if recovered {
            break;
        }
    }
    for i in 0..AFTER {
        let (event, began) = post_until_accepted(&app, &alice, room, &format!("after {i}")).await;
        sent.push((event.seq, began));
    }
    let seqs: Vec<i64> = sent.iter().map(|(seq, _)| *seq).collect();
    let last = *seqs.last().expect("messages were sent");
    last_tx.send_replace(Some(last));

    let mut stall = Duration::ZERO;
    // Kept open to the end: a member leaving would end the subscriptions.
    let mut members = Vec::new();
    for (n, reader) in readers.into_iter().enumerate() {
        let (mut ws, got) = reader.await.expect("a reader");
        assert_eq!(
            got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            seqs,
            "member {n} got every accepted message once, in order ({death:?})"
        );
        assert_eq!(message_seqs(&ws.until_pong().await), Vec::<i64>::new());
        for ((_, began), (_, arrived)) in sent.iter().zip(&got) {
            stall = stall.max(arrived.saturating_duration_since(*began));
        }
        members.push(ws);
    }
    eprintln!(
        "{death:?}: {} messages, the longest from post to delivery {stall:?} (bound {:?})",
        seqs.len(),
        stall_bound()
    );
    assert!(
        stall <= stall_bound(),
        "a message waited {stall:?} for delivery after {death:?}; the bound is {:?}",
        stall_bound()
    );
    // The gateways listen where the room now lives, and only there.
    let channel = app.room_channel(room);
    let owner = cluster.owner_as_seen_by(&replica, room_slot).await;
    let expected: Vec<(String, i64)> = cluster
        .live_nodes()
        .await
        .into_iter()
        .map(|address| {
            let n = if address == owner { 3 } else { 0 };
            (address, n)
        })
        .collect();
    let seen = std::sync::Mutex::new(Vec::new());
    let settled = eventually(Duration::from_secs(5), || {
        let (expected, seen, channel) = (&expected, &seen, &channel);
        async move {
            let mut now = Vec::new();
            for (address, _) in expected {
                now.push((address.clone(), shard_numsub(address, channel).await));
            }
            let same = now == *expected;
            *seen.lock().expect("not poisoned") = now;
            same
        }
    })
    .await;
    assert!(
        settled,
        "every gateway subscribes on {owner} and nowhere else: {:?}",
        seen.lock().expect("not poisoned")
    );
    drop(members);
    app.stop().await;
    drop(cluster);
}

/// Whether the replica at `address` is in sync with its master
/// (`master_link_status:up`).
async fn replication_link_up(address: &str) -> bool {
    use fred::prelude::*;
    let node = testkit::redis_node(address).await;
    let info: String = node
        .custom(
            fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
            vec!["replication"],
        )
        .await
        .expect("INFO replication");
    let _ = node.quit().await;
    info.lines().any(|l| l.trim() == "master_link_status:up")
}

/// Whether the node at `address` reports `cluster_state:ok`.
async fn cluster_is_ok(address: &str) -> bool {
    use fred::prelude::*;
    let node = testkit::redis_node(address).await;
    let info: String = node
        .custom(
            fred::types::CustomCommand::new_static(
                "CLUSTER",
                fred::types::ClusterHash::Random,
                false,
            ),
            vec!["INFO"],
        )
        .await
        .expect("CLUSTER INFO");
    let _ = node.quit().await;
    info.lines().any(|l| l.trim() == "cluster_state:ok")
}

/// The gateways' subscriber connections to a room's master are cut
/// (`CLIENT KILL TYPE pubsub`) while the slot map stays as it was: the
/// client reconnects and subscribes the shard channels again by itself
/// (fred 10.1's own resubscription stopped at an empty SUBSCRIBE and never
/// got to them), and every member gets every later message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_subscriber_connection_is_subscribed_again() {
    let (cluster, app, alice, room, mut members) = members_on_a_private_cluster(7150).await;
    let channel = app.room_channel(room);
    let master = cluster.owner(slot(&channel)).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            shard_numsub(&master, &channel).await == 3
        })
        .await
    );
    let mut sent = vec![app.send_message(&alice, room, "before").await.seq];
    {
        use fred::prelude::*;
        let node = testkit::redis_node(&master).await;
        let killed: i64 = node
            .custom(
                fred::types::CustomCommand::new_static(
                    "CLIENT",
                    fred::types::ClusterHash::Random,
                    false,
                ),
                vec!["KILL", "TYPE", "pubsub"],
            )
            .await
            .expect("CLIENT KILL");
        let _ = node.quit().await;
        assert!(killed >= 3, "the gateways' subscribers were cut: {killed}");
    }
    // Back by themselves, on the same master.
    assert!(
        eventually(Duration::from_secs(10), || async {
            shard_numsub(&master, &channel).await == 3
        })
        .await,
        "every gateway subscribes again: {}",
        shard_numsub(&master, &channel).await
    );
    for i in 0..10 {
        sent.push(
            app.send_message(&alice, room, &format!("after {i}"))
                .await
                .seq,
        );
    }
    for (n, ws) in members.iter_mut().enumerate() {
        let mut frames = Vec::new();
        while message_seqs(&frames).len() < sent.len() {
            frames.push(ws.frame().await);
        }
        assert_eq!(
            message_seqs(&frames),
            sent,
            "member {n}: every message once, in order"
        );
        assert_eq!(message_seqs(&ws.until_pong().await), Vec::<i64>::new());
    }
    app.stop().await;
    drop(cluster);
}
