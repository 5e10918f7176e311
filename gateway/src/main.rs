//! `parley-gateway`: a WebSocket gateway node of a Parley cluster.

use clap::Parser;
use gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

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
    let shutdown = CancellationToken::new();
    let metrics = match cli.config.telemetry.metrics_addr {
        Some(addr) => {
            Some(shared::telemetry::serve_metrics(addr, shutdown.clone().cancelled_owned()).await?)
        }
        None => None,
    };
    let app = gateway::Application::build(&cli.config).await?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shared::shutdown::signal().await;
        signal.cancel();
    });
    app.run(shutdown).await?;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}
