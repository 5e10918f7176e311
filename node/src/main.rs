//! `parley`: the whole system in one process. `cargo run --release -p parley`.

use clap::Parser;
use parley::{Node, NodeConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley single node: REST api and WebSocket gateway in one process (SQLite + in-process broker by default)"
)]
struct Cli {
    #[command(flatten)]
    config: NodeConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init(&cli.config.telemetry, "parley")?;
    let shutdown = CancellationToken::new();
    if let Some(addr) = cli.config.telemetry.metrics_addr {
        shared::telemetry::serve_metrics(addr, shutdown.clone().cancelled_owned()).await?;
    }
    let node = Node::build(&cli.config).await?;
    let addr = node.local_addr()?;
    // The banner goes to stdout (logs go to stderr): it is what a person
    // reads first, and what the quick-start test parses. A closed stdout
    // (a supervisor that stopped reading) must not stop the node, so write
    // errors are ignored rather than panicking like `println!`.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Parley is running ({}).", node.description());
        let _ = writeln!(
            out,
            "  REST api:  http://{addr}/v1   (OpenAPI: http://{addr}/openapi.json)"
        );
        let _ = writeln!(out, "  WebSocket: ws://{addr}/ws");
        let _ = writeln!(out, "  Data:      {}", cli.config.data_dir.display());
        let _ = writeln!(
            out,
            "Try it: see \"Quick start\" in README.md. Stop with Ctrl-C."
        );
        let _ = out.flush();
    }
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shared::shutdown::signal().await;
        signal.cancel();
    });
    node.run(shutdown).await
}
