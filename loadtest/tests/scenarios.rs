//! Every scenario, briefly, against a real cluster (api + three gateways on
//! PostgreSQL and Redis, all on 127.0.0.1 port 0), through the same library
//! entry point and argument parsing as the binary. The counts the tool
//! reports are checked against what was actually sent.

use clap::Parser as _;
use loadtest::cli::{Cli, Command};
use loadtest::metrics::total;
use loadtest::report::Report;
use std::time::Duration;
use testkit::{Mode, Options, TestApp};
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "a-load-test-admin-token-0123456789abcdef";

/// Presence timing of the presence tests' gateways: a dead gateway's users
/// are reaped within about lease + heartbeat (1.3 s) instead of 17 s.
const TEST_PRESENCE_HEARTBEAT: &str = "300ms";
const TEST_PRESENCE_LEASE: &str = "1s";

/// Set in the environment of a child gateway process (see
/// [`child_gateway_process`]); its value is the line prefix of its address.
const CHILD_GATEWAY: &str = "PARLEY_LOADTEST_CHILD_GATEWAY";
const CHILD_READY: &str = "child gateway listening on";

async fn cluster() -> TestApp {
    cluster_with(Options {
        gateways: 3,
        ..Options::default()
    })
    .await
}

async fn cluster_with(mut options: Options) -> TestApp {
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    TestApp::spawn_with(Mode::Cluster, options).await
}

/// The tool's command line for `app`: `parley-loadtest <scenario> --api ...
/// --gateways ... --admin-token ... <extra>`.
fn command(app: &TestApp, scenario: &str, extra: &[&str]) -> Command {
    let gateways = (0..app.gateway_count())
        .map(|i| app.ws_url(i).to_owned())
        .collect::<Vec<_>>();
    command_on(app, &gateways, scenario, extra)
}

/// The same, with the gateway URLs given.
fn command_on(app: &TestApp, gateways: &[String], scenario: &str, extra: &[&str]) -> Command {
    let gateways = gateways.join(",");
    let mut args = vec![
        "parley-loadtest".to_owned(),
        scenario.to_owned(),
        "--api".into(),
        app.api.clone(),
        "--gateways".into(),
        gateways,
        "--admin-token".into(),
        ADMIN.into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(args) {
        Ok(cli) => cli.command,
        Err(e) => panic!("bad test arguments: {e}"),
    }
}

async fn run(command: &Command) -> Report {
    let report = loadtest::run_scenario(command, CancellationToken::new())
        .await
        .expect("the scenario runs");
    assert!(
        report.errors.is_empty(),
        "errors: {:?}\n{}",
        report.errors,
        report.text()
    );
    assert!(!report.interrupted);
    report
}

/// Checks a publishing step's accounting against what was posted.
fn assert_every_acknowledged_post_reached_every_member(report: &Report, room_size: u64) {
    assert!(!report.steps.is_empty(), "{}", report.text());
    for step in &report.steps {
        let t = &step.tally;
        let d = &step.deliveries;
        assert!(t.posts_acked > 0, "something was posted\n{}", report.text());
        assert_eq!(total(&step.post_failures), 0, "{}", report.text());
        assert_eq!(
            step.posts_attempted, t.posts_acked,
            "every post acknowledged"
        );
        assert_eq!(
            t.expected,
            t.posts_acked * room_size,
            "every member was joined"
        );
        assert_eq!(t.delivered, t.expected, "{}", report.text());
        assert_eq!(d.frames, t.expected, "one frame per member per post");
        assert_eq!(d.latency.len(), d.frames, "a latency for every delivery");
        assert_eq!(
            (
                t.lost,
                d.duplicates,
                d.reordered_seq,
                d.reordered_counter,
                d.repeated_counter
            ),
            (0, 0, 0, 0, 0),
            "{}",
            report.text()
        );
        assert_eq!((t.untracked, t.unacked_deliveries, t.excess), (0, 0, 0));
        assert!(step.drained);
        assert_eq!(step.post_latency.len(), t.posts_acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_every_connection_and_times_each_stage() {
    let app = cluster().await;
    // Two source addresses: 127.0.0.1 and 127.0.0.2.
    let report = run(&command(
        &app,
        "connect",
        &["-n", "50", "--rate", "500", "--source-addrs", "2"],
    ))
    .await;
    let c = report.connect.as_ref().expect("a connect report");
    assert_eq!((c.attempted, c.connected), (50, 50), "{}", report.text());
    assert!(c.failures.is_empty(), "{:?}", c.failures);
    assert_eq!(
        c.per_gateway,
        [17, 17, 16],
        "round-robin over three gateways"
    );
    assert_eq!(
        (c.handshake.len(), c.ready.len(), c.tcp_connect.len()),
        (50, 50, 50)
    );
    assert!(
        c.ready.0.min() >= c.handshake.0.min(),
        "ready comes after the upgrade"
    );
    let close = report.close.as_ref().expect("a close report");
    assert_eq!((close.closing, close.closed_cleanly), (50, 50));
    assert!(close.drops.is_empty());
    assert_eq!(report.provision.as_ref().map(|p| p.users), Some(50));
    assert!(report.text().contains("ready (to auth ok)"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_reported_with_the_os_reason() {
    let app = cluster().await;
    // A port nobody listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead_url = format!("ws://{}/ws", dead.local_addr().expect("its address"));
    drop(dead);
    let gateways = format!("{},{dead_url}", app.ws_url(0));
    let mut cmd = command(&app, "connect", &["-n", "10", "--rate", "1000"]);
    if let Command::Connect(args) = &mut cmd {
        args.target.gateways = gateways.split(',').map(str::to_owned).collect();
    }
    let report = run(&cmd).await;
    let c = report.connect.as_ref().expect("a connect report");
    assert_eq!((c.attempted, c.connected), (10, 5));
    let refused: Vec<_> = c.failures.keys().collect();
    assert_eq!(c.failures.values().sum::<u64>(), 5);
    assert!(refused[0].contains("ECONNREFUSED"), "{refused:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_joined_connections_and_reads_memory() {
    let app = cluster().await;
    let pid = std::process::id().to_string();
    let report = run(&command(
        &app,
        "idle",
        &[
            "-n",
            "30",
            "--rooms",
            "3",
            "--duration",
            "2s",
            "--gateway-pid",
            &pid,
        ],
    ))
    .await;
    let c = report.connect.as_ref().expect("a connect report");
    assert_eq!(c.connected, 30);
    assert_eq!(c.join.len(), 30, "each connection joined its room");
    let hold = report.hold.as_ref().expect("a hold report");
    assert_eq!(hold.held, 30);
    assert!(hold.drops.is_empty(), "{:?}", hold.drops);
    assert!(hold.elapsed >= std::time::Duration::from_secs(2));
    let memory = report.memory.as_ref().expect("a memory report");
    assert!(memory.errors.is_empty(), "{:?}", memory.errors);
    assert_eq!(memory.gateways.len(), 1);
    assert_eq!(memory.gateways[0].connections, 30);
    assert!(memory.gateways[0].during.rss_bytes > 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_acknowledged_message_once_and_in_order() {
    let app = cluster().await;
    let dir = std::env::temp_dir().join(format!("parley-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let json = dir.join("fanout.json");
    let html = dir.join("fanout.html");
    let (json_s, html_s) = (json.display().to_string(), html.display().to_string());
    let report = run(&command(
        &app,
        "fanout",
        &[
            "-c",
            "60",
            "-r",
            "3",
            "-p",
            "6",
            "--rate",
            "50",
            "-d",
            "2s",
            "--payload",
            "300",
            "--drain",
            "10s",
            "--json",
            &json_s,
            "--html",
            &html_s,
        ],
    ))
    .await;
    assert_eq!(report.connect.as_ref().map(|c| c.connected), Some(60));
    assert_every_acknowledged_post_reached_every_member(&report, 20);
    let step = &report.steps[0];
    // 50 msg/s for 2 s on a schedule: 100 posts, give or take the edges.
    assert!(
        (95..=101).contains(&step.posts_attempted),
        "{}",
        step.posts_attempted
    );
    assert_eq!(step.receivers, 60);
    // The files were written and the JSON is the same report.
    let back: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("a report");
    assert_eq!(back.steps[0], *step);
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(page.contains("<svg") && page.contains("publish -&gt; deliver"));
    assert!(
        !page.contains(ADMIN)
            && !std::fs::read_to_string(&json)
                .unwrap_or_default()
                .contains(ADMIN)
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_runs_rising_steps_on_the_same_connections() {
    let app = cluster().await;
    let report = run(&command(
        &app,
        "ramp",
        &[
            "-c",
            "30",
            "-r",
            "3",
            "-p",
            "3",
            "--start-rate",
            "20",
            "--step-rate",
            "20",
            "--max-rate",
            "40",
            "--step-duration",
            "1s",
            "--p99-bound",
            "2s",
            "--warmup",
            "500ms",
        ],
    ))
    .await;
    let ramp = report.ramp.as_ref().expect("a ramp outcome");
    assert_eq!(report.steps.len(), 3, "{}", report.text());
    assert_eq!(ramp.highest_rate_held, Some(40.0), "{}", report.text());
    assert_eq!(
        report.steps[0].rate, 10.0,
        "the warm-up runs at half the start rate"
    );
    assert_eq!(report.steps[2].rate, 40.0);
    assert_every_acknowledged_post_reached_every_member(&report, 10);
    assert_eq!(
        report.summary.steps[0].verdict.as_deref(),
        Some("warm-up, not judged")
    );
    assert!(
        report.summary.steps[1..]
            .iter()
            .all(|s| s.verdict.is_none())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_split_the_rooms_and_the_coordinator_merges_exactly() {
    let app = cluster().await;
    let shutdown = CancellationToken::new();
    let files = loadtest::net::raise_nofile_limit().expect("rlimit");
    let mut agents = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("an agent port");
        agents.push(listener.local_addr().expect("its address").to_string());
        tasks.push(tokio::spawn(loadtest::agent::serve(
            listener,
            files,
            shutdown.clone(),
        )));
    }
    let report = run(&command(
        &app,
        "fanout",
        &[
            "-c",
            "60",
            "-r",
            "4",
            "-p",
            "4",
            "--rate",
            "40",
            "-d",
            "2s",
            "--agents",
            &agents.join(","),
        ],
    ))
    .await;
    assert_eq!(report.workers, agents);
    let c = report.connect.as_ref().expect("a connect report");
    assert_eq!(c.connected, 60);
    assert_eq!(c.cpu.len(), 2, "one CPU figure per agent");
    assert_eq!(c.ready.len(), 60, "the agents' histograms were merged");
    assert_every_acknowledged_post_reached_every_member(&report, 15);
    let close = report.close.as_ref().expect("a close report");
    assert_eq!(close.closed_cleanly, 60);
    shutdown.cancel();
    for t in tasks {
        t.await
            .expect("the agent task")
            .expect("the agent ends cleanly");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_ends_it_early_with_a_partial_report() {
    let app = cluster().await;
    let cmd = command(
        &app,
        "fanout",
        &[
            "-c", "30", "-r", "3", "-p", "3", "--rate", "30", "-d", "60s",
        ],
    );
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { loadtest::run_scenario(&cmd, cancel).await }
    });
    // Ctrl-C once every client is connected, i.e. during the publishing step.
    let connected = testkit::eventually(std::time::Duration::from_secs(30), || async {
        (0..app.gateway_count())
            .map(|i| app.gateway(i).connection_count())
            .sum::<usize>()
            == 30
    })
    .await;
    assert!(connected, "the clients connect");
    cancel.cancel();
    let report = running
        .await
        .expect("the run does not panic")
        .expect("an interrupted run still reports");
    assert!(report.interrupted, "{}", report.text());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(45),
        "stopped long before its 60 s ({:?})",
        started.elapsed()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let close = report.close.as_ref().expect("connections are closed");
    assert_eq!((close.closing, close.closed_cleanly), (30, 30));
    for step in &report.steps {
        assert_eq!(step.tally.lost, 0, "{}", report.text());
        assert_eq!(
            step.tally.delivered,
            step.tally.expected,
            "{}",
            report.text()
        );
    }
    assert!(report.text().contains("INTERRUPTED"), "{}", report.text());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_counts_the_redis_commands_of_held_connections() {
    // A Redis of the test's own: only this cluster's commands are counted.
    let redis = testkit::PrivateRedis::start()
        .await
        .expect("a redis-server");
    let mut options = Options {
        gateways: 3,
        redis_url: Some(redis.url()),
        ..Options::default()
    };
    options.ws.presence_heartbeat =
        humantime::parse_duration(TEST_PRESENCE_HEARTBEAT).expect("a duration");
    options.ws.presence_lease = humantime::parse_duration(TEST_PRESENCE_LEASE).expect("a duration");
    let app = cluster_with(options).await;
    let report = run(&command(
        &app,
        "idle",
        &[
            "-n",
            "30",
            "--rooms",
            "3",
            "--duration",
            "2s",
            "--redis-url",
            &redis.url(),
        ],
    ))
    .await;
    assert_eq!(report.hold.as_ref().map(|h| h.held), Some(30));
    let r = report.redis.as_ref().expect("a redis report");
    assert!(r.window_s >= 2.0, "{}", report.text());
    // Each gateway renews its lease every 300 ms (one EVALSHA running a
    // ZRANGEBYSCORE and a ZADD): about 3 x 6 x 3 commands in 2 s.
    assert!(r.commands > 0, "{}", report.text());
    assert_eq!(r.gateways, 3);
    assert!(
        r.top.iter().any(|(name, _)| name == "evalsha"),
        "{}",
        report.text()
    );
    assert!(
        r.top.iter().all(|(name, _)| name != "info"),
        "the tool's own INFO is not counted"
    );
    assert!(report.text().contains("commands/s"), "{}", report.text());
    app.stop().await;
}

/// Not a test of its own: the body of the gateway process that
/// `presence_kill_times_the_leaves_of_a_killed_gateways_users` starts (this
/// test binary again, configured by `PARLEY_*` variables like the real
/// binary) and kills with SIGKILL. Without the variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the presence-kill test"]
async fn child_gateway_process() {
    if std::env::var_os(CHILD_GATEWAY).is_none() {
        return;
    }
    #[derive(clap::Parser)]
    struct ChildCli {
        #[command(flatten)]
        config: gateway::GatewayConfig,
    }
    let cli = ChildCli::parse_from(["child-gateway"]);
    let app = gateway::Application::build(&cli.config)
        .await
        .expect("building the child gateway");
    println!("{CHILD_READY} {}", app.local_addr().expect("its address"));
    // Runs until killed (the test's SIGKILL) or the parent's harness ends.
    let _ = app.run(CancellationToken::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_kill_times_the_leaves_of_a_killed_gateways_users() {
    let mut options = Options {
        gateways: 2,
        ..Options::default()
    };
    options.ws.presence_heartbeat =
        humantime::parse_duration(TEST_PRESENCE_HEARTBEAT).expect("a duration");
    options.ws.presence_lease = humantime::parse_duration(TEST_PRESENCE_LEASE).expect("a duration");
    let app = cluster_with(options).await;
    // A third gateway as a real process of its own, which can be killed.
    let data_dir = std::env::temp_dir().join(format!("parley-child-gw-{}", std::process::id()));
    let mut child =
        tokio::process::Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "child_gateway_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_GATEWAY, "1")
            .env("PARLEY_LISTEN", "127.0.0.1:0")
            .env("PARLEY_DATA_DIR", &data_dir)
            .env("PARLEY_DATABASE_URL", app.database_url())
            .env("PARLEY_DATABASE_MAX_CONNECTIONS", "3")
            .env("PARLEY_REDIS_URL", app.redis_url())
            .env("PARLEY_REDIS_PREFIX", &app.redis_prefix)
            .env("PARLEY_JWT_PUBLIC_KEY", app.jwt_public_key_pem())
            .env("PARLEY_PRESENCE_HEARTBEAT", TEST_PRESENCE_HEARTBEAT)
            .env("PARLEY_PRESENCE_LEASE", TEST_PRESENCE_LEASE)
            .env("PARLEY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the child gateway");
    let pid = child.id().expect("a running child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix(CHILD_READY) {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await
    .expect("the child gateway starts within 60 s")
    .expect("the child gateway prints its address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let gateways = vec![
        app.ws_url(0).to_owned(),
        app.ws_url(1).to_owned(),
        format!("ws://{addr}/ws"),
    ];
    let pid_s = pid.to_string();
    let report = run(&command_on(
        &app,
        &gateways,
        "presence-kill",
        &[
            "-n",
            "60",
            "--room-size",
            "10",
            "--second-device-every",
            "4",
            "--kill-pid",
            &pid_s,
            "--kill-gateway",
            "2",
            "--settle-timeout",
            "20s",
            "--leave-timeout",
            "20s",
            "--tail",
            "1s",
        ],
    ))
    .await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the child ends")
        .expect("its status");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(9),
        "the gateway was killed with SIGKILL"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
    let p = report
        .presence_kill
        .as_ref()
        .expect("a presence-kill report");
    let text = report.text();
    // 60 users, users 0, 4, 8... (15) with a second device on the next gateway.
    assert_eq!((p.users, p.second_device_users), (60, 15), "{text}");
    assert_eq!((p.connections, p.connected), (75, 75), "{text}");
    assert!(p.settled, "{text}");
    assert_eq!(p.per_gateway.iter().sum::<u64>(), 75);
    assert_eq!(p.killed_connections, p.per_gateway[2]);
    assert_eq!(p.killed_connections_ended, p.killed_connections, "{text}");
    // Users 2, 5, 8... are on the killed gateway; those of them with a second
    // device (8, 20, ...) are still on gateway 0 and must not leave.
    assert!(
        p.users_only_on_killed > 0 && p.users_only_on_killed < 20,
        "{text}"
    );
    assert!(p.expected_leaves > 0, "{text}");
    assert_eq!(p.received_leaves, p.expected_leaves, "{text}");
    assert_eq!(p.users_fully_reported, p.users_only_on_killed, "{text}");
    assert_eq!(p.leave_latency.len(), p.expected_leaves);
    assert_eq!(
        (p.unexpected_leaves, p.duplicate_leaves, p.online_after_kill),
        (0, 0, 0),
        "{text}"
    );
    assert!(p.observers_dropped.is_empty(), "{text}");
    assert!(!p.timed_out);
    // Lease 1 s + heartbeat 0.3 s, with room for a slow machine.
    assert!(p.leave_summary.max_ms < 5_000.0, "{text}");
    assert!(text.contains("kill -> leave seen"), "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_sends_read_frames_at_the_rate_and_counts_what_reached_the_database() {
    let app = cluster().await;
    let database = app.database_url();
    let report = run(&command(
        &app,
        "reads",
        &[
            "-c",
            "30",
            "-r",
            "3",
            "--rate",
            "30",
            "-d",
            "3s",
            "--database-url",
            &database,
            "--stats-settle",
            "1s",
        ],
    ))
    .await;
    let text = report.text();
    let r = report.reads.as_ref().expect("a reads report");
    assert_eq!((r.connections, r.connected), (30, 30), "{text}");
    // 30 reads/s for 3 s: 3 per connection, so 4 messages per room.
    assert_eq!((r.messages_per_room, r.posts_acked), (4, 12), "{text}");
    assert!(r.delivered, "{text}");
    assert_eq!(r.reads_sent, 90, "{text}");
    assert_eq!(r.reads_repeated, 0, "{text}");
    assert!(r.error_frames.is_empty(), "no invalid_seq: {text}");
    assert!(r.drops.is_empty(), "{text}");
    assert!(
        r.read_markers_received > 0 && r.receipts_received > 0,
        "{text}"
    );
    let db = r.database.as_ref().expect("pg_stat_database figures");
    assert!(
        db.delta.xact_commit > 0 && db.delta.tup_updated > 0,
        "{text}"
    );
    // What the database holds: every connected member read the first three
    // of its room's four messages; the poster (a member without a
    // connection) is at its own last post.
    let pool = sqlx::PgPool::connect(&database)
        .await
        .expect("the test database");
    let (moved, at_three): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE m.read_seq > 0 AND m.read_seq < r.last_seq), \
                count(*) FILTER (WHERE m.read_seq = r.last_seq - 1) \
         FROM room_members m JOIN rooms r ON r.id = m.room_id",
    )
    .fetch_one(&pool)
    .await
    .expect("the markers");
    pool.close().await;
    assert_eq!((moved, at_three), (30, 30), "{text}");
    app.stop().await;
}

/// Serves this process's Prometheus metrics (every in-process gateway's
/// counters, summed: the test harness has one recorder) at
/// `http://{addr}/metrics`, as a real gateway's metrics listener would.
async fn serve_process_metrics() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = shared::telemetry::prometheus();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a metrics port");
    let url = format!(
        "http://{}/metrics",
        listener.local_addr().expect("its address")
    );
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = shared::telemetry::render_metrics();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_resumes_every_client_with_every_event_exactly_once() {
    let (metrics_url, metrics) = serve_process_metrics().await;
    let redis = testkit::PrivateRedis::start()
        .await
        .expect("a redis-server");
    let app = cluster_with(Options {
        gateways: 3,
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let database = app.database_url();
    let report = run(&command(
        &app,
        "storm",
        &[
            "-c",
            "30",
            "-r",
            "3",
            "--rate",
            "20",
            "--before",
            "3s",
            "--offline",
            "1s",
            "--after",
            "1s",
            "--metrics-url",
            &metrics_url,
            "--redis-url",
            &redis.url(),
            "--database-url",
            &database,
            "--stats-settle",
            "1s",
        ],
    ))
    .await;
    let text = report.text();
    let s = report.storm.as_ref().expect("a storm report");
    assert_eq!((s.connections, s.connected), (30, 30), "{text}");
    assert!(
        s.failures.is_empty() && s.post_failures.is_empty(),
        "{text}"
    );
    // Every client resumed, completely, and missed something to resume:
    // 20 msg/s over 3 rooms while it was away for a second.
    assert_eq!(
        (s.resumed_complete, s.resumed_incomplete, s.resume_failed),
        (30, 0, 0),
        "{text}"
    );
    assert!(s.backlog_events >= 30, "{text}");
    assert_eq!(s.resume_latency.len(), 30, "{text}");
    assert!(s.resume_summary.min_ms >= 1000.0, "away for 1 s: {text}");
    // Every event of every room, once and in order, across the drop.
    assert!(s.delivered, "{text}");
    assert_eq!(
        (s.gaps, s.duplicates, s.left_to_history, s.resume_anomalies),
        (0, 0, 0, 0),
        "{text}"
    );
    assert!(s.drops.is_empty(), "{text}");
    // The gateways counted the 30 resumes, and read the backlogs.
    assert!(s.metrics_errors.is_empty(), "{text}");
    let b = &s.backlog_reads;
    assert_eq!(b.complete, 30, "{text}");
    assert!(b.window + b.database + b.shared > 0, "{text}");
    assert!(s.database_reads_per_client.is_some(), "{text}");
    assert!(
        s.redis_storm.as_ref().is_some_and(|r| r.commands > 0),
        "{text}"
    );
    assert!(s.redis_commands_per_client.is_some(), "{text}");
    assert!(s.database_storm.is_some() && s.database_commits_per_client.is_some());
    assert!(text.contains("to resumed"), "{text}");
    app.stop().await;
    metrics.abort();
}
