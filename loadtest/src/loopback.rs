//! The machine's floor: what one small TCP segment over loopback costs in
//! CPU, sent and received, with nothing of Parley in the way.
//!
//! A gateway delivering an event to a socket and a client reading it pay at
//! least this (the kernel's TCP path on both ends, the wake-up of the
//! reader), so it bounds how many deliveries per second a machine can carry
//! when every delivery is its own segment. A sender thread writes `size`
//! bytes to each of `connections` sockets in turn at `rate` writes per
//! second (blocking sockets, `TCP_NODELAY`, paced per millisecond); a
//! receiver thread reads them with one Tokio task per socket, as the load
//! tool's clients do. Each side's CPU time is its own thread's.

use crate::cli::LoopbackArgs;
use anyhow::Context;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// What a loopback run measured.
#[derive(Debug, serde::Serialize)]
pub struct LoopbackReport {
    pub connections: u32,
    pub writes: u64,
    pub bytes_per_write: usize,
    pub seconds: f64,
    pub bytes_received: u64,
    pub reads: u64,
    /// CPU of the sending thread per write, microseconds.
    pub send_us_per_write: f64,
    /// CPU of the receiving thread per write, microseconds.
    pub receive_us_per_write: f64,
}

impl LoopbackReport {
    pub fn text(&self) -> String {
        format!(
            "loopback floor: {} writes of {} bytes over {} connections in {:.1} s ({:.0}/s); {} reads\n  \
             CPU per write: send {:.2} µs + receive {:.2} µs = {:.2} µs\n  \
             => one core carries at most {:.0} segments/s end to end\n",
            self.writes,
            self.bytes_per_write,
            self.connections,
            self.seconds,
            self.writes as f64 / self.seconds,
            self.reads,
            self.send_us_per_write,
            self.receive_us_per_write,
            self.send_us_per_write + self.receive_us_per_write,
            1e6 / (self.send_us_per_write + self.receive_us_per_write).max(f64::MIN_POSITIVE),
        )
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is supported on every Linux this tool runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the measurement. Both ends of every connection are in this
/// process: it needs two descriptors per connection (main raises the
/// open-file limit first).
pub fn run(args: &LoopbackArgs) -> anyhow::Result<LoopbackReport> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(args.connections as usize);
    let mut accepted = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        let s = TcpStream::connect(addr).context("connecting (raise the open-file limit?)")?;
        s.set_nodelay(true)?;
        senders.push(s);
        let (r, _) = listener.accept()?;
        r.set_nonblocking(true)?;
        accepted.push(r);
    }

    let received = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let total = (args.rate * args.duration.as_secs_f64()) as u64;
    let expected = total * u64::from(args.size);
    let receiver = {
        let received = received.clone();
        let reads = reads.clone();
        std::thread::spawn(move || -> anyhow::Result<Duration> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let start = thread_cpu();
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for s in accepted {
                    let mut s = tokio::net::TcpStream::from_std(s)?;
                    let received = received.clone();
                    let reads = reads.clone();
                    tasks.spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            reads.fetch_add(1, Ordering::Relaxed);
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
                anyhow::Ok(())
            })?;
            Ok(thread_cpu() - start)
        })
    };

    let payload = vec![b'x'; args.size as usize];
    let started = Instant::now();
    let send_cpu_start = thread_cpu();
    let mut sent = 0u64;
    let mut next = 0usize;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * args.rate) as u64).min(total);
        while sent < due {
            senders[next].write_all(&payload)?;
            next = (next + 1) % senders.len();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let send_cpu = thread_cpu() - send_cpu_start;
    let seconds = started.elapsed().as_secs_f64();
    // Wait (bounded) for the receiver to have everything, then end it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(senders);
    let receive_cpu = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;
    let writes = sent.max(1) as f64;
    Ok(LoopbackReport {
        connections: args.connections,
        writes: sent,
        bytes_per_write: args.size as usize,
        seconds,
        bytes_received: received.load(Ordering::Relaxed),
        reads: reads.load(Ordering::Relaxed),
        send_us_per_write: send_cpu.as_secs_f64() * 1e6 / writes,
        receive_us_per_write: receive_cpu.as_secs_f64() * 1e6 / writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_received_and_costed() {
        let args = LoopbackArgs {
            connections: 4,
            rate: 2_000.0,
            size: 100,
            duration: Duration::from_millis(200),
        };
        let report = run(&args).unwrap();
        assert_eq!(report.writes, 400);
        assert_eq!(report.bytes_received, 400 * 100);
        assert!(report.reads >= 1 && report.reads <= 400);
        assert!(report.send_us_per_write > 0.0);
        assert!(report.text().contains("CPU per write"));
    }
}
