//! The live progress line on stderr, about once a second: rewritten in
//! place on a terminal, one line per second otherwise (logs stay readable).

use crate::coordinator::ProgressSource;
use crate::work::Progress;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(1);

/// Prints progress until `stop` is cancelled.
pub fn spawn(sources: Vec<ProgressSource>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut last = sum(&sources);
        let mut last_at = Instant::now();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let now = sum(&sources);
            let secs = last_at.elapsed().as_secs_f64().max(1e-3);
            let line = line(started.elapsed(), &now, &last, secs);
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
            last = now;
            last_at = Instant::now();
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    })
}

fn sum(sources: &[ProgressSource]) -> Progress {
    let mut total = Progress::default();
    for s in sources {
        total.add(&s.get());
    }
    total
}

fn line(elapsed: Duration, now: &Progress, last: &Progress, secs: f64) -> String {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    format!(
        "[{:>5.0}s] conns {} | sent {:.0}/s acked {:.0}/s | deliveries {:.0}/s | errors: connect {} drops {} posts {}",
        elapsed.as_secs_f64(),
        now.open,
        rate(now.posts_sent, last.posts_sent),
        rate(now.posts_acked, last.posts_acked),
        rate(now.deliveries, last.deliveries),
        now.connect_failures,
        now.drops,
        now.post_failures,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_rates_over_the_interval() {
        let last = Progress {
            posts_sent: 100,
            deliveries: 1000,
            ..Progress::default()
        };
        let now = Progress {
            open: 60,
            posts_sent: 150,
            posts_acked: 150,
            deliveries: 3000,
            ..Progress::default()
        };
        let l = line(Duration::from_secs(3), &now, &last, 1.0);
        assert!(l.contains("conns 60"), "{l}");
        assert!(l.contains("sent 50/s"), "{l}");
        assert!(l.contains("deliveries 2000/s"), "{l}");
    }
}
