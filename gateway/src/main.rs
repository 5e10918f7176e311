//! `parley-gateway`: a WebSocket gateway node of a Parley cluster.

use clap::Parser;
use gateway::GatewayConfig;

/// mimalloc instead of glibc malloc: cheaper small allocations on the hot
/// paths of a busy node (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "parley-gateway",
    version,
    about = "Parley's WebSocket gateway (cluster mode: Redis fan-out)"
)]
struct Cli {
    #[command(flatten)]
    config: GatewayConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init(&cli.config.telemetry, "parley-gateway")?;
    let config = cli.config;
    let telemetry = config.telemetry.clone();
    shared::shutdown::run_until_signal(&telemetry, |shutdown| async move {
        gateway::Application::build(&config)
            .await?
            .run(shutdown)
            .await
    })
    .await
}
