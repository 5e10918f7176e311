//! `parley-api`: the REST api of a Parley cluster.

use api::ApiConfig;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: cheaper small allocations on the hot
/// paths of a busy node (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "parley-api",
    version,
    about = "Parley's REST api (cluster mode: PostgreSQL + Redis)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ApiConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the api (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Create the JWT key pair in PARLEY_DATA_DIR (kept if it exists) and
    /// print where it is; with --print, print the PEMs instead (for secrets stores).
    Keygen {
        #[arg(long)]
        print: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init(&cli.config.telemetry, "parley-api")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen { print: true } => {
            use secrecy::ExposeSecret;
            let pair = shared::auth::KeyPair::generate();
            print!("{}{}", pair.private_pem.expose_secret(), pair.public_pem);
            Ok(())
        }
        Command::Keygen { print: false } => {
            shared::auth::KeyPair::load_or_generate(&cli.config.data_dir)?;
            println!(
                "{}\n{}",
                cli.config
                    .data_dir
                    .join(shared::auth::PRIVATE_KEY_FILE)
                    .display(),
                shared::auth::public_key_path(&cli.config.data_dir).display()
            );
            Ok(())
        }
        Command::Migrate => {
            let url = cli
                .config
                .database
                .database_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("PARLEY_DATABASE_URL is required"))?;
            let store = store::Store::connect(url, 1).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let config = cli.config;
            let telemetry = config.telemetry.clone();
            shared::shutdown::run_until_signal(&telemetry, |shutdown| async move {
                api::Application::build(&config).await?.run(shutdown).await
            })
            .await
        }
    }
}
