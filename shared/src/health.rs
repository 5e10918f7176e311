//! Readiness probes of dependencies, bounded in time.
//!
//! A probe that waits for a dependency's own timeouts (the database pool's
//! acquire timeout is 5 s, a reconnecting Redis client queues commands)
//! tells a load balancer about an outage seconds late. Every readiness
//! check of the api and the gateways goes through [`probe`] instead.

use std::future::Future;
use std::time::Duration;

/// How long a readiness probe waits for one dependency. A database or
/// Redis on the same network answers a ping in about a millisecond, so
/// 800 ms only passes when it is down or stuck, and the probe's answer
/// (with its HTTP overhead) still comes within one second.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// `Retry-After` (seconds) of a `503 unavailable`, sent by the api and by a
/// gateway refusing an upgrade, when the database or Redis did not answer.
/// An outage (a restart, a failover) lasts seconds; one second lets clients
/// notice its end quickly, and a client that keeps failing backs off on its own.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// Whether `ping` succeeded within [`PROBE_TIMEOUT`].
pub async fn probe<T, E>(ping: impl Future<Output = Result<T, E>>) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, ping).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dependency_that_does_not_answer_in_time_is_down() {
        let stuck = std::future::pending::<Result<(), ()>>();
        assert!(!probe(stuck).await);
        assert!(probe(async { Ok::<_, ()>(()) }).await);
        assert!(!probe(async { Err::<(), _>("refused") }).await);
    }
}
