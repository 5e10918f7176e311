//! A real SMTP server on loopback for mail tests: `aiosmtpd` (PyPI;
//! `.ci/run` installs it) writing every message it accepts into a Maildir.
//!
//! Each test starts its own on a free port, so tests count exactly the
//! mail their deployment sent. The server can be stopped and started again
//! on the same port (a mail server outage and its end).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};

/// A port nothing listens on right now (the listener that found it is
/// closed again): for a mail server that is down, then started there.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

pub struct SmtpServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SmtpServer {
    /// Starts a server on a free port.
    pub async fn start() -> SmtpServer {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port`, and returns once it accepts connections.
    pub async fn start_on(port: u16) -> SmtpServer {
        let dir =
            std::env::temp_dir().join(format!("parley-smtp-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).expect("creating the Maildir");
        }
        let mut server = SmtpServer {
            port,
            dir,
            child: None,
        };
        server.resume().await;
        server
    }

    /// `PARLEY_MAIL` for this server (plain SMTP on loopback: `PARLEY_MAIL_TLS=none`).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server (a mail server outage); [`SmtpServer::resume`] starts it again.
    pub async fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server (again) on its port, keeping its Maildir.
    pub async fn resume(&mut self) {
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.dir)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting aiosmtpd (pip install aiosmtpd)");
        self.child = Some(child);
        let ready = crate::eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
        assert!(
            ready,
            "aiosmtpd did not listen on {} within 20 s",
            self.port
        );
    }

    /// Every message received so far (raw RFC 5322 text), oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                files.push((modified, entry.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| std::fs::read_to_string(path).ok())
            .collect()
    }

    /// Messages to `to` received so far.
    pub fn messages_to(&self, to: &str) -> Vec<String> {
        let needle = format!("To: {to}");
        self.messages()
            .into_iter()
            .filter(|m| m.lines().any(|l| l.eq_ignore_ascii_case(&needle)))
            .collect()
    }

    /// Waits until `n` messages to `to` arrived; all of them.
    pub async fn wait_for(&self, to: &str, n: usize, within: Duration) -> Vec<String> {
        let arrived = crate::eventually(within, || async { self.messages_to(to).len() >= n }).await;
        let got = self.messages_to(to);
        assert!(
            arrived,
            "{} of {n} mails to {to} arrived within {within:?}",
            got.len()
        );
        got
    }

    pub fn maildir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `name=` in the first link or line of `mail` that has it
/// (a token in a mailed link).
pub fn query_value(mail: &str, name: &str) -> Option<String> {
    let key = format!("{name}=");
    let at = mail.find(&key)? + key.len();
    let value: String = mail[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!value.is_empty()).then_some(value)
}
