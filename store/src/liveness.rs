//! Noticing that pooled connections died, without a ping per checkout.
//!
//! When PostgreSQL restarts, fails over or terminates backends, every idle
//! connection in the pool is dead, but nothing says so until it is used:
//! the next requests would each draw one and fail. Pinging before every
//! checkout (`test_before_acquire`) would catch them, at the price of a
//! second round trip on every query of the hot path. Instead the pool's
//! `before_acquire` hook decides per checkout, from two facts it has for
//! free (the connection's age and how long it sat idle):
//!
//! * once the store has seen a connection-level failure (an I/O error, a
//!   terminated backend, a protocol error), every connection opened before
//!   that moment is suspect and is discarded at its next checkout, so the
//!   next query (and the retry of a failed read) runs on a connection
//!   opened afterwards. Healthy connections discarded with them cost one
//!   reconnect each, once per failure, which is rare;
//! * a connection idle for longer than [`PING_IF_IDLE_FOR`] is pinged first.
//!   This catches a restart nobody noticed (a quiet node) before the first
//!   request after it; under load connections are never idle that long, so
//!   the hot path never pays it.
//!
//! The same record tells whether the database currently seems down (the
//! last operation failed as unavailable and nothing has succeeded since):
//! a gateway refuses new WebSockets with a 503 meanwhile.
//!
//! Owned by the [`Store`](crate::Store) and shared with its pool's hook;
//! lock-free (two atomics), bounded by construction.

use sqlx::pool::PoolConnectionMetadata;
use sqlx::{AnyConnection, Connection};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection idle at least this long is pinged before use. Long enough
/// that a busy pool never pays it (a connection is reused within
/// milliseconds), short enough that a database restarted while the node
/// was quiet is noticed before the first request after it fails.
pub(crate) const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Describes and registers the pool's discard counter at zero, per reason.
pub(crate) fn register_metrics() {
    metrics::describe_counter!(
        "store_connections_discarded_total",
        "Pooled connections replaced at checkout: opened before a connection failure (suspect) or failing their ping (dead)"
    );
    for why in ["suspect", "dead"] {
        metrics::counter!("store_connections_discarded_total", "why" => why).increment(0);
    }
}

/// What a checkout should do with an idle connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checkout {
    Use,
    /// Opened before a connection-level failure: maybe dead, replace it.
    Discard,
    /// Idle for a while: check it first.
    Ping,
}

/// The store's knowledge of its connections' health.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// The origin of the millisecond clock below.
    origin: Instant,
    /// When the last connection-level failure was seen, in milliseconds
    /// since `origin`, plus one; 0 when none was.
    failed_at: AtomicU64,
    /// The last operation failed as unavailable and none succeeded since.
    down: AtomicBool,
}

impl Liveness {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            failed_at: AtomicU64::new(0),
            down: AtomicBool::new(false),
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// A connection was found dead: every connection opened until now is suspect.
    pub(crate) fn connection_failed(&self) {
        self.failed_at
            .fetch_max(self.millis(Instant::now()) + 1, Ordering::AcqRel);
        self.unavailable();
    }

    /// The database could not be reached (no connection could be had).
    pub(crate) fn unavailable(&self) {
        if !self.down.load(Ordering::Relaxed) {
            self.down.store(true, Ordering::Relaxed);
        }
    }

    /// An operation succeeded.
    pub(crate) fn succeeded(&self) {
        // Read first: the common case writes nothing to the shared line.
        if self.down.load(Ordering::Relaxed) {
            self.down.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the database seems down right now.
    pub(crate) fn seems_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The verdict on an idle connection about to be handed out, opened
    /// `age` ago and idle for `idle_for`.
    pub(crate) fn checkout(&self, age: Duration, idle_for: Duration) -> Checkout {
        let now = Instant::now();
        let failed_at = self.failed_at.load(Ordering::Acquire);
        if failed_at != 0 {
            // Opened at or before the failure (to the millisecond): suspect.
            let opened = self.millis(now.checked_sub(age).unwrap_or(self.origin)) + 1;
            if opened <= failed_at {
                return Checkout::Discard;
            }
        }
        if idle_for >= PING_IF_IDLE_FOR {
            return Checkout::Ping;
        }
        Checkout::Use
    }

    /// The pool's `before_acquire` hook: `Ok(true)` hands the connection
    /// out, `Ok(false)` closes it, an error closes it hard; either way the
    /// pool opens a fresh one in its place.
    pub(crate) fn before_acquire<'c>(
        self: &Arc<Self>,
        conn: &'c mut AnyConnection,
        meta: PoolConnectionMetadata,
    ) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + 'c>> {
        match self.checkout(meta.age, meta.idle_for) {
            Checkout::Use => Box::pin(std::future::ready(Ok(true))),
            Checkout::Discard => {
                metrics::counter!("store_connections_discarded_total", "why" => "suspect")
                    .increment(1);
                Box::pin(std::future::ready(Ok(false)))
            }
            Checkout::Ping => {
                let liveness = self.clone();
                Box::pin(async move {
                    match conn.ping().await {
                        Ok(()) => Ok(true),
                        Err(e) => {
                            metrics::counter!("store_connections_discarded_total", "why" => "dead")
                                .increment(1);
                            tracing::info!(error = %e, "an idle pooled connection was dead; replacing it");
                            liveness.connection_failed();
                            Err(e)
                        }
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_connection_is_used_without_a_ping() {
        let liveness = Liveness::new();
        assert_eq!(
            liveness.checkout(Duration::from_secs(60), Duration::from_millis(3)),
            Checkout::Use
        );
    }

    #[test]
    fn a_connection_idle_for_a_while_is_pinged_first() {
        let liveness = Liveness::new();
        assert_eq!(
            liveness.checkout(Duration::from_secs(60), PING_IF_IDLE_FOR),
            Checkout::Ping
        );
    }

    #[test]
    fn connections_opened_before_a_failure_are_replaced_and_later_ones_kept() {
        let liveness = Liveness::new();
        std::thread::sleep(Duration::from_millis(20));
        liveness.connection_failed();
        // Opened 5 ms after the store began, 15 ms before the failure.
        let old = liveness.origin.elapsed() - Duration::from_millis(5);
        assert_eq!(liveness.checkout(old, Duration::ZERO), Checkout::Discard);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            liveness.checkout(Duration::ZERO, Duration::ZERO),
            Checkout::Use,
            "a connection opened just now is trusted"
        );
    }

    #[test]
    fn the_database_seems_down_until_something_succeeds() {
        let liveness = Liveness::new();
        assert!(!liveness.seems_down());
        liveness.unavailable();
        assert!(liveness.seems_down());
        liveness.succeeded();
        assert!(!liveness.seems_down());
        liveness.connection_failed();
        assert!(liveness.seems_down());
    }
}
