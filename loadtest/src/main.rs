//! `parley-loadtest`: parse the command line, raise the open-file limit,
//! run a scenario (or an agent) until it ends or Ctrl-C, print the report.

use clap::Parser;
use loadtest::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: cheaper small allocations on the hot
/// paths of a busy node (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let files = loadtest::net::raise_nofile_limit()?;
    eprintln!(
        "open-file limit: soft {} (was {}), hard {}",
        files.soft, files.soft_before, files.hard
    );
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\ninterrupted: stopping, closing connections, then reporting (Ctrl-C again to quit now)"
            );
            on_signal.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    match &cli.command {
        Command::Loopback(args) => {
            let args = args.clone();
            let report =
                tokio::task::spawn_blocking(move || loadtest::loopback::run(&args)).await??;
            print!("{}", report.text());
            Ok(())
        }
        Command::Uploads(args) => {
            let report = tokio::time::timeout(
                loadtest::uploads::UPLOAD_TIMEOUT,
                loadtest::uploads::run(args),
            )
            .await??;
            print!("{}", report.text());
            Ok(())
        }
        Command::Agent(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            eprintln!("agent listening on {}", listener.local_addr()?);
            loadtest::agent::serve(listener, files, cancel).await
        }
        command => {
            let report = loadtest::run_scenario(command, cancel).await?;
            print!("{}", report.text());
            if report.interrupted {
                std::process::exit(130);
            }
            Ok(())
        }
    }
}
