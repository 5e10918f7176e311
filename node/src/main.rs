//! `parley`: the whole system in one process. `cargo run --release -p parley`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: NodeConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default).
    Serve,
    /// Manage admin accounts: `parley admin grant <username>` makes the
    /// first admin (the account signs up as usual first).
    Admin {
        #[command(subcommand)]
        command: api::admin::cli::AdminCommand,
    },
}

impl Cli {
    /// Every option is accepted before and after the subcommand, as in
    /// `parley-api` (see its `command_with_global_options`).
    fn parse_with_global_options() -> Cli {
        let mut command = Cli::command().mut_args(|arg| arg.global(true));
        let matches = command.get_matches_mut();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_with_global_options();
    let _telemetry = shared::telemetry::init(&cli.config.telemetry, "parley")?;
    if let Some(Command::Admin { command }) = cli.command {
        let out = parley::admin(&cli.config, command).await?;
        print!("{out}");
        return Ok(());
    }
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
