//! The cluster shape on a real Redis Cluster (three masters, three replicas
//! on loopback, started by `.ci/redis-cluster` through
//! `testkit::redis_cluster_url`): sharded pub/sub, hash-tagged keys, and
//! the same behaviour as on one Redis server.
//!
//! The behaviour tests are the suite's own, run here in a third shape.
//! Nothing here changes the shared cluster's topology (no failover, no
//! resharding), so these tests run beside each other and beside the rest.

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
                Some(broker::Delivery::Reconnected) => continue,
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
    broker.close().await;
}
