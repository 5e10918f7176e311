//! `parley`: the whole system in one process. `cargo run --release -p parley`.

use clap::Parser;
use parley::{Node, NodeConfig};

/// mimalloc instead of glibc malloc: cheaper small allocations on the hot
/// paths of a busy node (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let config = cli.config;
    let telemetry = config.telemetry.clone();
    shared::shutdown::run_until_signal(&telemetry, |shutdown| async move {
        let node = Node::build(&config).await?;
        print_banner(&node, &config)?;
        node.run(shutdown).await
    })
    .await
}

/// The banner goes to stdout (logs go to stderr): it is what a person reads
/// first, and what the quick-start test parses. A closed stdout (a
/// supervisor that stopped reading) must not stop the node, so write errors
/// are ignored rather than panicking like `println!`.
fn print_banner(node: &Node, config: &NodeConfig) -> anyhow::Result<()> {
    use std::io::Write;
    let addr = node.local_addr()?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Parley is running ({}).", node.description());
    let _ = writeln!(
        out,
        "  REST api:  http://{addr}/v1   (OpenAPI: http://{addr}/openapi.json)"
    );
    let _ = writeln!(out, "  WebSocket: ws://{addr}/ws");
    let _ = writeln!(out, "  Data:      {}", config.data_dir.display());
    let _ = writeln!(
        out,
        "Try it: see \"Quick start\" in README.md. Stop with Ctrl-C."
    );
    let _ = out.flush();
    Ok(())
}
