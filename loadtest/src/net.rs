//! What the operating system lets one load-generating process do: open
//! files, local addresses, CPU time, and how to say clearly what it refused.

use serde::{Deserialize, Serialize};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;
use tokio::net::{TcpSocket, TcpStream};

/// The process's open-file limits after [`raise_nofile_limit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every client socket is
/// a file descriptor, and the usual soft default (1024) would cap a run at
/// about a thousand connections long before anything else does.
pub fn raise_nofile_limit() -> io::Result<FileLimit> {
    let (soft_before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(FileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// CPU time this process has used (user and system), from getrusage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_us: u64,
    pub sys_us: u64,
}

pub fn cpu_time() -> CpuTime {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return CpuTime::default();
    }
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    CpuTime {
        user_us: us(usage.ru_utime),
        sys_us: us(usage.ru_stime),
    }
}

/// The load generator's own CPU over one operation: lets a reader tell
/// whether the tool, rather than the system under test, saturated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// `local` or the agent's address.
    pub worker: String,
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
    /// CPUs the process may use.
    pub cores: usize,
}

impl CpuUsage {
    /// Share of the machine's CPUs used (1.0 = every core busy all the time).
    pub fn utilisation(&self) -> f64 {
        if self.wall_s <= 0.0 || self.cores == 0 {
            return 0.0;
        }
        (self.user_s + self.sys_s) / self.wall_s / self.cores as f64
    }
}

/// Measures CPU and wall time from its creation.
pub struct CpuMeter {
    cpu: CpuTime,
    wall: Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    pub fn finish(&self, worker: &str) -> CpuUsage {
        let now = cpu_time();
        CpuUsage {
            worker: worker.to_owned(),
            user_s: now.user_us.saturating_sub(self.cpu.user_us) as f64 / 1e6,
            sys_s: now.sys_us.saturating_sub(self.cpu.sys_us) as f64 / 1e6,
            wall_s: self.wall.elapsed().as_secs_f64(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Parses `--source-addrs`: a list of IPs (`127.0.0.2,127.0.0.3`) or a
/// count `N`, meaning the loopback addresses 127.0.0.1 to 127.0.0.N. Each
/// source address has its own ~28k ephemeral ports towards one gateway.
pub fn parse_source_addrs(s: &str) -> Result<Vec<IpAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(n) = s.parse::<u32>() {
        if !(1..=250).contains(&n) {
            return Err("a count of source addresses must be 1 to 250".into());
        }
        return Ok((1..=n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
            .collect());
    }
    s.split(',')
        .map(|part| {
            part.trim()
                .parse::<IpAddr>()
                .map_err(|e| format!("{part:?} is not an IP address: {e}"))
        })
        .collect()
}

/// Opens a TCP connection to `target`, from `source` (port chosen by the OS)
/// when one is given. Nagle is off: frames are small and latency is measured.
pub async fn connect_tcp(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Files a process needs besides its client sockets (stdio, epoll, the
/// runtime's pipes, REST connections, logs).
const FILE_HEADROOM: u64 = 100;

/// The local port range for outgoing connections (Linux).
pub fn ephemeral_ports() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// What this machine will likely refuse for a plan of `per_target[g]`
/// connections to each of `targets` distinct gateway addresses from
/// `sources` source addresses: said before connecting, so an EMFILE or
/// EADDRNOTAVAIL in the results is no surprise.
pub fn preflight(
    connections: u64,
    max_per_target: u64,
    sources: usize,
    files: Option<FileLimit>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(f) = files
        && connections + FILE_HEADROOM > f.soft
    {
        warnings.push(format!(
            "{connections} connections in one process but only {} open files allowed (hard limit {}): expect EMFILE; split the load over agents (--agents)",
            f.soft, f.hard
        ));
    }
    if let Some((lo, hi)) = ephemeral_ports() {
        let ports = u64::from(hi.saturating_sub(lo)) + 1;
        let per_source = max_per_target.div_ceil(sources.max(1) as u64);
        if per_source > ports {
            warnings.push(format!(
                "{per_source} connections from one source address to one gateway address but only {ports} ephemeral ports ({lo}-{hi}): expect EADDRNOTAVAIL; add --source-addrs"
            ));
        }
    }
    warnings
}

/// The current open-file limits, without changing them.
pub fn nofile_limit() -> Option<FileLimit> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    Some(FileLimit {
        soft_before: soft,
        soft,
        hard,
    })
}

/// A stable, readable name for what the OS refused: these are the reasons
/// in failure tables, so they say what was refused and what to do about it.
pub fn describe_io_error(e: &io::Error) -> String {
    if let Some(code) = e.raw_os_error() {
        return match code {
            libc::EMFILE => {
                "EMFILE: out of file descriptors in this process (raise ulimit -n or add agents)"
                    .into()
            }
            libc::ENFILE => "ENFILE: the system-wide open-file table is full".into(),
            libc::EADDRNOTAVAIL => {
                "EADDRNOTAVAIL: no free local address/port (add --source-addrs)".into()
            }
            libc::EADDRINUSE => "EADDRINUSE: local address already in use".into(),
            libc::ECONNREFUSED => "ECONNREFUSED: connection refused (nothing listening)".into(),
            libc::ECONNRESET => "ECONNRESET: connection reset by peer".into(),
            libc::ETIMEDOUT => "ETIMEDOUT: TCP timed out".into(),
            libc::ENETUNREACH => "ENETUNREACH: network unreachable".into(),
            libc::EHOSTUNREACH => "EHOSTUNREACH: host unreachable".into(),
            libc::EPIPE => "EPIPE: broken pipe".into(),
            libc::ENOBUFS | libc::ENOMEM => "ENOBUFS/ENOMEM: kernel out of socket memory".into(),
            other => format!("os error {other}: {e}"),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "EOF: the peer closed the TCP connection".into(),
        io::ErrorKind::ConnectionReset => "ECONNRESET: connection reset by peer".into(),
        kind => format!("io error: {kind}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_of_source_addresses_means_the_first_loopback_addresses() {
        let addrs = parse_source_addrs("3").unwrap();
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "127.0.0.2".parse().unwrap(),
                "127.0.0.3".parse().unwrap()
            ]
        );
        assert_eq!(parse_source_addrs("127.0.0.5, 127.0.0.6").unwrap().len(), 2);
        assert!(parse_source_addrs("0").is_err());
        assert!(parse_source_addrs("nope").is_err());
    }

    #[test]
    fn a_plan_beyond_the_machine_is_warned_about() {
        let files = FileLimit {
            soft_before: 1024,
            soft: 20_000,
            hard: 20_000,
        };
        assert!(preflight(1_000, 1_000, 1, Some(files)).is_empty());
        let w = preflight(19_950, 19_950, 1, Some(files));
        assert!(w[0].contains("EMFILE"), "{w:?}");
        if let Some((lo, hi)) = ephemeral_ports() {
            let too_many = u64::from(hi - lo) + 2;
            let w = preflight(10, too_many, 1, None);
            assert!(w.iter().any(|w| w.contains("EADDRNOTAVAIL")), "{w:?}");
            assert!(
                preflight(10, too_many, 2, None).is_empty(),
                "two sources double the ports"
            );
        }
    }

    #[test]
    fn os_refusals_are_named() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(describe_io_error(&e).starts_with("EMFILE"));
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(describe_io_error(&e).starts_with("EADDRNOTAVAIL"));
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(describe_io_error(&e).starts_with("ECONNREFUSED"));
    }
}
