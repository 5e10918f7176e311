//! Private PostgreSQL and Redis servers that a test can stop and start.
//!
//! Fault tests take a dependency away from a running deployment, so they
//! cannot use the shared servers every other test runs against. Each
//! [`PrivatePostgres`] is a fresh cluster (`initdb` into a temporary
//! directory, run as the `postgres` user when the tests run as root, since
//! PostgreSQL refuses to run as root) on a free loopback port; each
//! [`PrivateRedis`] is a `redis-server` child process. Both keep their port
//! across restarts, so the services under test reconnect to the same
//! address, and both are torn down when dropped.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How long a server may take to come up before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (the OS picks it; the listener is closed at
/// once, so another process could take it before the server binds it, which
/// on a test machine does not happen in practice).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// How a PostgreSQL server is stopped (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug)]
pub enum StopMode {
    /// Backends are told to end (57P01) and the server shuts down cleanly.
    Fast,
    /// The server dies without a goodbye (as in a crash or a failover).
    Immediate,
}

/// A PostgreSQL cluster of the test's own.
pub struct PrivatePostgres {
    /// Holds the data directory, the socket and the log; removed on drop.
    root: PathBuf,
    port: u16,
    /// Whether commands run through `runuser -u postgres`.
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, superuser `postgres`) and starts it.
    pub async fn start() -> anyhow::Result<PrivatePostgres> {
        let root =
            std::env::temp_dir().join(format!("parley-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let as_postgres = running_as_root();
        let server = PrivatePostgres {
            root,
            port: free_port()?,
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&server.root)
                .status()
                .await?;
            if !status.success() {
                bail!("chown postgres {} failed", server.root.display());
            }
        }
        server
            .run(
                "initdb",
                &[
                    "-D",
                    &server.data_dir().to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
            )
            .await?;
        server.start_server().await?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A URL of the server's `postgres` database, for the harness to create
    /// test databases from.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs a PostgreSQL program (as the `postgres` user when root).
    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        };
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| {
                format!("running {program} (PostgreSQL's programs must be in PATH; see .ci/run)")
            })?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    ///
    /// `fsync=off` saves the disk, and only loses data when the machine
    /// crashes, not when the server does. `synchronous_commit` stays on: off,
    /// a commit would be acknowledged before its WAL left the server, and an
    /// immediate stop (a crash) would lose posts already answered 201.
    pub async fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.root.display()
        );
        let timeout = START_TIMEOUT.as_secs().to_string();
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                &timeout,
                "-D",
                &self.data_dir().to_string_lossy(),
                "-l",
                &self.root.join("log").to_string_lossy(),
                "-o",
                &options,
            ],
        )
        .await
    }

    /// Stops the server and waits until it is down.
    pub async fn stop_server(&self, mode: StopMode) -> anyhow::Result<()> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                mode,
                "-D",
                &self.data_dir().to_string_lossy(),
            ],
        )
        .await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", "pg_ctl"]);
            c
        } else {
            std::process::Command::new("pg_ctl")
        };
        // Already stopped is fine: this is cleanup.
        let _ = command
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A `redis-server` of the test's own (no persistence: a restart starts empty).
pub struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> anyhow::Result<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port()?,
            child: None,
        };
        redis.start_server().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server and waits until it answers PING.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !ping(self.port).await {
            if tokio::time::Instant::now() >= deadline {
                bail!("redis-server on port {} did not come up", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Calls per command since the last [`Self::reset_stats`] (`INFO
    /// commandstats`; commands run inside Lua scripts count too).
    pub async fn command_calls(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let info: String = self.command("INFO", &["commandstats"]).await?;
        // Lines look like `cmdstat_get:calls=3,usec=...`.
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect())
    }

    /// Zeroes the server's command statistics (`CONFIG RESETSTAT`).
    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        let _: String = self.command("CONFIG", &["RESETSTAT"]).await?;
        Ok(())
    }

    async fn command(&self, name: &'static str, args: &[&str]) -> anyhow::Result<String> {
        use fred::prelude::*;
        let client = Client::new(Config::from_url(&self.url())?, None, None, None);
        client.init().await?;
        let answer: String = client
            .custom(
                fred::types::CustomCommand::new_static(
                    name,
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
            .await?;
        let _ = client.quit().await;
        Ok(answer)
    }

    /// Kills the server (its connections are reset) and waits for it to exit.
    pub async fn stop_server(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing redis-server")?;
        }
        Ok(())
    }
}

/// Whether a Redis on `port` answers PING.
async fn ping(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await,
        Ok(Ok(_))
    ) && &answer == b"+PONG\r\n"
}

/// The S3-compatible server of this test process: one `moto_server` on a
/// free loopback port, started by the first test that needs it (cluster
/// mode keeps attachments in S3) and shared by all; each test uses a bucket
/// of its own ([`S3Server::create_bucket`]).
///
/// `moto_server` comes from PyPI (`pip install 'moto[server]'`; `.ci/run`
/// installs it). It is found as `$PARLEY_TEST_MOTO_SERVER`, on PATH, or
/// as pyenv's shim.
pub struct S3Server {
    /// `http://127.0.0.1:port`
    pub endpoint: String,
}

static S3_SERVER: tokio::sync::OnceCell<S3Server> = tokio::sync::OnceCell::const_new();

/// The moto server of this process, started on first use.
pub async fn s3_server() -> &'static S3Server {
    S3_SERVER
        .get_or_init(|| async {
            S3Server::start()
                .await
                .expect("starting moto_server (pip install 'moto[server]')")
        })
        .await
}

impl S3Server {
    async fn start() -> anyhow::Result<S3Server> {
        let program = std::env::var("PARLEY_TEST_MOTO_SERVER")
            .ok()
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .map(|dir| dir.join("moto_server"))
                    .find(|p| p.is_file())
                    .map(|p| p.display().to_string())
            })
            .unwrap_or_else(|| "/root/.pyenv/shims/moto_server".to_owned());
        let port = free_port()?;
        let (started, spawned) = std::sync::mpsc::channel();
        // The server lives as long as the test process: it is spawned from
        // a thread that never ends, and told (PR_SET_PDEATHSIG) to go when
        // that thread does, i.e. when the process exits. A test's own
        // thread would end with the test and take the server with it.
        std::thread::Builder::new()
            .name("moto_server".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                let mut command = std::process::Command::new(&program);
                command
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: prctl is async-signal-safe; nothing else runs
                // between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let child = command.spawn();
                let failed = child.is_err();
                let _ = started.send(child.map(|_| ()).map_err(|e| format!("{program}: {e}")));
                if !failed {
                    loop {
                        std::thread::park();
                    }
                }
            })?;
        spawned
            .recv()
            .context("the moto_server thread")?
            .map_err(anyhow::Error::msg)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if http.get(format!("{endpoint}/")).send().await.is_ok() {
                return Ok(S3Server { endpoint });
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("moto_server did not answer on {endpoint} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates an empty bucket of the caller's own and returns its name.
    pub async fn create_bucket(&self) -> anyhow::Result<String> {
        let name = format!("parley-test-{}", uuid::Uuid::new_v4().simple());
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("creating bucket {name}: {}", response.status());
        }
        Ok(name)
    }
}
