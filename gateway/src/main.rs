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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A gateway only verifies tokens: what signs them, and their
    /// lifetimes, belong to the api and are not offered here.
    #[test]
    fn the_gateway_offers_no_api_only_option() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--jwt-public-key"), "{help}");
        for api_only in [
            "--jwt-private-key",
            "--access-token-ttl",
            "--refresh-token-ttl",
            "--rate-",
            "--admin-token",
        ] {
            assert!(!help.contains(api_only), "the gateway lists {api_only}");
        }
        assert!(Cli::try_parse_from(["parley-gateway", "--access-token-ttl", "1m"]).is_err());
    }
}
