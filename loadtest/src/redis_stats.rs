//! What Redis did during a window: `INFO commandstats` read at its start
//! and end. Redis counts every command it runs there, those a Lua script
//! runs with `redis.call` included (each `EVALSHA` counts once as itself
//! and once per command inside), so the difference is the work the
//! deployment asked of Redis, whoever sent it.
//!
//! The client is a few lines of RESP over one TCP connection: one `INFO`
//! per sample (and an `AUTH` first when the URL has a password). The
//! tool's own commands are counted by Redis too; they are subtracted.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Time limit of one sample (connect, optional AUTH, INFO).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest INFO answer accepted: commandstats of every Redis command is a
/// few tens of KB.
const MAX_INFO_BYTES: usize = 4 << 20;

/// How many of the busiest commands a report lists.
pub const TOP_COMMANDS: usize = 10;

/// Where Redis is: `redis://[user:password@]host:port[/db]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub addr: String,
    user: Option<String>,
    password: Option<String>,
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url}: only redis:// URLs are supported"))?;
        let rest = rest.split('/').next().unwrap_or(rest);
        let (auth, host) = match rest.rsplit_once('@') {
            Some((auth, host)) => (Some(auth), host),
            None => (None, rest),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:6379")
        };
        let (user, password) = match auth.map(|a| a.split_once(':')) {
            Some(Some((user, password))) => (
                (!user.is_empty()).then(|| user.to_owned()),
                Some(password.to_owned()),
            ),
            Some(None) => (None, auth.map(str::to_owned)),
            None => (None, None),
        };
        Ok(Self {
            addr,
            user,
            password,
        })
    }

    /// Commands one [`sample`] sends (Redis counts them too).
    fn own_commands(&self) -> u64 {
        1 + u64::from(self.password.is_some())
    }
}

/// Calls per command (`get`, `evalsha`, `client|setname`...), as counted so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStats(pub BTreeMap<String, u64>);

impl CommandStats {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Parses the `# Commandstats` section of `INFO`:
/// `cmdstat_get:calls=3,usec=12,usec_per_call=4.00,rejected_calls=0,failed_calls=0`.
pub fn parse_commandstats(info: &str) -> CommandStats {
    let mut stats = CommandStats::default();
    for line in info.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|c| c.parse::<u64>().ok());
        if let Some(calls) = calls {
            stats.0.insert(name.to_owned(), calls);
        }
    }
    stats
}

/// Reads `INFO commandstats` once.
pub async fn sample(target: &RedisTarget) -> Result<CommandStats, String> {
    tokio::time::timeout(SAMPLE_TIMEOUT, sample_inner(target))
        .await
        .map_err(|_| format!("redis {}: no answer within {SAMPLE_TIMEOUT:?}", target.addr))?
}

async fn sample_inner(target: &RedisTarget) -> Result<CommandStats, String> {
    let fail = |e: std::io::Error| format!("redis {}: {e}", target.addr);
    let stream = TcpStream::connect(&target.addr).await.map_err(fail)?;
    let mut stream = BufReader::new(stream);
    if let Some(password) = &target.password {
        let mut args = vec!["AUTH"];
        if let Some(user) = &target.user {
            args.push(user);
        }
        args.push(password);
        stream
            .get_mut()
            .write_all(&command(&args))
            .await
            .map_err(fail)?;
        let line = read_line(&mut stream).await.map_err(fail)?;
        if !line.starts_with('+') {
            return Err(format!("redis {}: AUTH refused: {line}", target.addr));
        }
    }
    stream
        .get_mut()
        .write_all(&command(&["INFO", "commandstats"]))
        .await
        .map_err(fail)?;
    let head = read_line(&mut stream).await.map_err(fail)?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("redis {}: unexpected answer to INFO: {head}", target.addr))?;
    if len > MAX_INFO_BYTES {
        return Err(format!("redis {}: INFO answer of {len} bytes", target.addr));
    }
    let mut body = vec![0u8; len + 2];
    stream.read_exact(&mut body).await.map_err(fail)?;
    body.truncate(len);
    Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
}

/// A command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    // A status or length line is short; a longer one is not Redis.
    let n = (&mut *stream).take(1024).read_line(&mut line).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// What Redis ran during a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisReport {
    pub addr: String,
    /// Between the two samples.
    pub window_s: f64,
    /// Every command Redis counted in the window, the tool's own sampling
    /// commands excluded.
    pub commands: u64,
    pub commands_per_s: f64,
    /// Gateways the run used: `commands_per_s` divided by them is the
    /// figure per node (the api's share, if any, is counted in it).
    pub gateways: usize,
    pub commands_per_s_per_gateway: f64,
    /// The busiest commands in the window (calls, the tool's INFO excluded).
    pub top: Vec<(String, u64)>,
}

/// The difference of two samples `window` apart.
pub fn window_report(
    target: &RedisTarget,
    before: &CommandStats,
    after: &CommandStats,
    window: Duration,
    gateways: usize,
) -> RedisReport {
    let mut delta: Vec<(String, u64)> = after
        .0
        .iter()
        .map(|(name, &calls)| {
            let was = before.0.get(name).copied().unwrap_or(0);
            (name.clone(), calls.saturating_sub(was))
        })
        .collect();
    // The first sample's own commands ran after its INFO was answered and
    // show in the second (the second's own are not in it yet).
    let own = target.own_commands();
    for (name, calls) in &mut delta {
        match name.as_str() {
            "info" => *calls = calls.saturating_sub(1),
            "auth" if own > 1 => *calls = calls.saturating_sub(1),
            _ => {}
        }
    }
    delta.retain(|(_, calls)| *calls > 0);
    delta.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let commands: u64 = delta.iter().map(|(_, c)| c).sum();
    let secs = window.as_secs_f64();
    let per_s = if secs > 0.0 {
        commands as f64 / secs
    } else {
        0.0
    };
    RedisReport {
        addr: target.addr.clone(),
        window_s: secs,
        commands,
        commands_per_s: per_s,
        gateways,
        commands_per_s_per_gateway: per_s / gateways.max(1) as f64,
        top: delta.into_iter().take(TOP_COMMANDS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_including_subcommands() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=300,usec_per_call=25.00,rejected_calls=0,failed_calls=0\r\ncmdstat_client|setname:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\ncmdstat_zadd:calls=24,usec=40,usec_per_call=1.67,rejected_calls=0,failed_calls=0\r\n";
        let s = parse_commandstats(info);
        assert_eq!(s.0["evalsha"], 12);
        assert_eq!(s.0["client|setname"], 3);
        assert_eq!(s.total(), 39);
    }

    #[test]
    fn a_window_subtracts_the_tools_own_info_and_ranks_commands() {
        let target = RedisTarget::parse("redis://127.0.0.1:6390").unwrap();
        let before = CommandStats(
            [("info".to_owned(), 5), ("evalsha".to_owned(), 10)]
                .into_iter()
                .collect(),
        );
        let after = CommandStats(
            [
                ("info".to_owned(), 6),
                ("evalsha".to_owned(), 22),
                ("zadd".to_owned(), 12),
                ("zrangebyscore".to_owned(), 12),
            ]
            .into_iter()
            .collect(),
        );
        let r = window_report(&target, &before, &after, Duration::from_secs(60), 3);
        assert_eq!(r.commands, 36, "the tool's INFO is not counted");
        assert_eq!(r.commands_per_s, 0.6);
        assert!((r.commands_per_s_per_gateway - 0.2).abs() < 1e-9);
        assert_eq!(r.top[0], ("evalsha".to_owned(), 12));
        assert!(r.top.iter().all(|(n, _)| n != "info"));
    }

    #[test]
    fn urls_are_parsed() {
        let t = RedisTarget::parse("redis://127.0.0.1:6390/0").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref()),
            ("127.0.0.1:6390", None)
        );
        let t = RedisTarget::parse("redis://:secret@localhost").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref()),
            ("localhost:6379", Some("secret"))
        );
        let t = RedisTarget::parse("redis://me:secret@h:1").unwrap();
        assert_eq!(t.user.as_deref(), Some("me"));
        assert!(RedisTarget::parse("http://x").is_err());
    }
}
