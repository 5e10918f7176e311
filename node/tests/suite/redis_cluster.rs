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
        use fred::prelude::*;
        let node = testkit::redis_node(&format!("127.0.0.1:{}", self.first_port)).await;
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
                let role = if f.get(2)?.contains("master") {
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
        use fred::prelude::*;
        let node = testkit::redis_node(&format!("127.0.0.1:{}", self.first_port)).await;
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

async fn messages_flow_through(change: ClusterChange, first_port: u16) {
    const BEFORE: usize = 10;
    const AFTER: usize = 20;
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
