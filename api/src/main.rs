//! `parley-api`: the REST api of a Parley cluster.

use api::ApiConfig;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc instead of glibc malloc: cheaper small allocations on the hot
/// paths of a busy node (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line. Every option of [`ApiConfig`] is accepted before and
/// after the subcommand (`parley-api --listen X serve` and
/// `parley-api serve --listen X`) and listed in each subcommand's `--help`:
/// see [`Cli::command_with_global_options`].
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
    /// Manage admin accounts: `parley-api admin grant <username>` makes the
    /// first admin (the account signs up as usual first).
    Admin {
        #[command(subcommand)]
        command: api::admin::cli::AdminCommand,
    },
}

impl Cli {
    /// clap's derive cannot mark the fields of a flattened struct `global`
    /// from the outside, and `ApiConfig`'s groups are shared with binaries
    /// that have no subcommands, so the flag is set here, on every option of
    /// the top-level command; clap then copies them into each subcommand.
    fn command_with_global_options() -> clap::Command {
        Cli::command().mut_args(|arg| arg.global(true))
    }

    fn try_parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command_with_global_options();
        let matches = command.try_get_matches_from_mut(args)?;
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::try_parse_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
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
        Command::Admin { command } => {
            let url = cli
                .config
                .database
                .database_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("PARLEY_DATABASE_URL is required"))?;
            let store = store::Store::connect(url, 1).await?;
            if cli.config.policy.migrate_on_start {
                store.migrate().await?;
            }
            print!("{}", api::admin::cli::run(&store, command).await?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from_args(args).unwrap_or_else(|e| panic!("{args:?} should parse, but: {e}"))
    }

    #[test]
    fn options_work_before_and_after_the_subcommand() {
        let listen: std::net::SocketAddr = "127.0.0.1:9999".parse().unwrap();
        for args in [
            &["parley-api", "--listen", "127.0.0.1:9999", "serve"][..],
            &["parley-api", "serve", "--listen", "127.0.0.1:9999"],
            &["parley-api", "--listen", "127.0.0.1:9999"],
        ] {
            let cli = parse(args);
            assert_eq!(cli.config.listen, listen, "{args:?}");
            assert!(matches!(cli.command, None | Some(Command::Serve)));
        }
        let cli = parse(&[
            "parley-api",
            "migrate",
            "--database-url",
            "postgres://db/x",
            "--redis-prefix",
            "p:",
        ]);
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(
            cli.config.database.database_url.as_deref(),
            Some("postgres://db/x")
        );
        assert_eq!(cli.config.redis.redis_prefix, "p:");
        let cli = parse(&["parley-api", "keygen", "--data-dir", "/tmp/k", "--print"]);
        assert!(matches!(cli.command, Some(Command::Keygen { print: true })));
        assert_eq!(cli.config.data_dir, std::path::PathBuf::from("/tmp/k"));
    }

    #[test]
    fn an_option_after_the_subcommand_wins_over_its_default_only() {
        let cli = parse(&["parley-api", "serve"]);
        assert_eq!(cli.config.listen.port(), 8080, "the default stays");
        let cli = parse(&[
            "parley-api",
            "--log",
            "debug",
            "serve",
            "--listen",
            "127.0.0.1:1",
        ]);
        assert_eq!(cli.config.telemetry.log_filter, "debug");
        assert_eq!(cli.config.listen.port(), 1);
    }

    #[test]
    fn every_subcommands_help_lists_every_option() {
        let top = Cli::command_with_global_options();
        let options: Vec<String> = top
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .filter(|long| long != "help" && long != "version")
            .collect();
        assert!(options.iter().any(|o| o == "listen"), "{options:?}");
        for sub in ["serve", "migrate", "keygen", "admin"] {
            let help = match Cli::try_parse_from_args(["parley-api", sub, "--help"]) {
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
                _ => panic!("`{sub} --help` should print help"),
            };
            for option in &options {
                assert!(
                    help.contains(&format!("--{option}")),
                    "`{sub} --help` does not list --{option}:\n{help}"
                );
            }
        }
    }
}
