//! Draining a stopping node: its connections are told to reconnect and
//! closed, spread evenly over a period, so the nodes that take them over
//! see a steady trickle instead of every client of a node at once.
//!
//! The decision: connection `i` of `n` is closed at `period × i / n` after
//! the drain starts, and its `reconnect` frame asks the client to wait a
//! random `after_ms` below [`RECONNECT_JITTER`] first. Reconnects then
//! arrive at no more than `n / period` per second on average (spreading
//! evenly spaced closes by a random delay cannot raise their density), and
//! the jitter smooths what the schedule cannot: closes that go out
//! together because the drain task woke late. One task (the one running
//! `Gateway::shutdown`) does it all; nothing per connection.

use crate::hub::Conn;
use crate::outbox::CloseReason;
use rand::Rng;
use shared::protocol::{ServerFrame, close};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The most a client is asked to wait before reconnecting. A second is
/// long enough to smooth closes written in one burst (a late wake-up of the
/// drain task, a period of zero) and short enough to stay unnoticed.
pub const RECONNECT_JITTER: Duration = Duration::from_secs(1);

/// The close every drained connection gets after its `reconnect` frame.
pub(crate) const SHUTTING_DOWN: CloseReason = CloseReason {
    code: close::GOING_AWAY,
    reason: "gateway shutting down",
};

/// Tells `conn` to reconnect after a random part of the jitter, and closes it.
pub(crate) fn close_one(conn: &Conn) {
    let jitter = u64::try_from(RECONNECT_JITTER.as_millis()).unwrap_or(u64::MAX);
    let after_ms = rand::thread_rng().gen_range(0..jitter.max(1));
    conn.send(&ServerFrame::Reconnect { after_ms });
    conn.out.close(SHUTTING_DOWN);
}

/// How many of `n` connections are due to be closed `elapsed` into a drain
/// over `period`: all of them once the period is over.
fn due(n: usize, elapsed: Duration, period: Duration) -> usize {
    if elapsed >= period {
        return n;
    }
    // In integers: no float rounding puts a close a step early or late.
    let due = n as u128 * elapsed.as_nanos() / period.as_nanos();
    usize::try_from(due).unwrap_or(n).min(n)
}

/// Closes `conns` (each with [`close_one`]) spread evenly over `period`;
/// returns when the last one was told.
pub(crate) async fn spread(conns: &[Arc<Conn>], period: Duration) {
    let n = conns.len();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let now = due(n, start.elapsed(), period).max(done + 1);
        for conn in &conns[done..now] {
            close_one(conn);
        }
        done = now;
        if done < n {
            // When the next one is due (the one at index `done`).
            let next = period.mul_f64(done as f64 / n as f64);
            tokio::time::sleep_until(start + next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_due_evenly_over_the_period() {
        let period = Duration::from_secs(10);
        assert_eq!(due(2000, Duration::ZERO, period), 0);
        assert_eq!(due(2000, Duration::from_secs(1), period), 200);
        assert_eq!(due(2000, Duration::from_millis(5_005), period), 1001);
        assert_eq!(due(2000, period, period), 2000);
        assert_eq!(due(3, Duration::from_secs(60), period), 3);
        // A period of zero closes everything at once.
        assert_eq!(due(5, Duration::ZERO, Duration::ZERO), 5);
    }
}
