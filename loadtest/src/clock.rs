//! Time as the load generator measures it.
//!
//! Latency is measured on one monotonic clock per process: a message's body
//! carries its scheduled send time as microseconds since this process's
//! epoch, and the receiver in the same process subtracts. That is why, in
//! distributed mode, each agent only publishes into rooms whose members it
//! hosts: two machines never have to agree on a clock to measure latency.
//! Wall-clock time is only used to agree on when a phase starts.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since this process's clock epoch.
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// An instant as microseconds since the epoch (0 if before it).
pub fn instant_us(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch (wall clock).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The local instant of a wall-clock start time agreed with a coordinator
/// (now, if it has passed).
pub fn instant_of_unix_ms(start_unix_ms: u64) -> tokio::time::Instant {
    let now_ms = unix_ms();
    let now = tokio::time::Instant::now();
    now + Duration::from_millis(start_unix_ms.saturating_sub(now_ms))
}
