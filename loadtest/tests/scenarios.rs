//! Every scenario, briefly, against a real cluster (api + three gateways on
//! PostgreSQL and Redis, all on 127.0.0.1 port 0), through the same library
//! entry point and argument parsing as the binary. The counts the tool
//! reports are checked against what was actually sent.

use clap::Parser as _;
use loadtest::cli::{Cli, Command};
use loadtest::metrics::total;
use loadtest::report::Report;
use testkit::{Mode, Options, TestApp};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "a-load-test-admin-token-0123456789abcdef";

async fn cluster() -> TestApp {
    let mut options = Options {
        gateways: 3,
        ..Options::default()
    };
    options.policy.admin_token = Some(ADMIN.to_owned().into());
    TestApp::spawn_with(Mode::Cluster, options).await
}

/// The tool's command line for `app`: `parley-loadtest <scenario> --api ...
/// --gateways ... --admin-token ... <extra>`.
fn command(app: &TestApp, scenario: &str, extra: &[&str]) -> Command {
    let gateways = (0..app.gateway_count())
        .map(|i| app.ws_url(i).to_owned())
        .collect::<Vec<_>>()
        .join(",");
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
