//! Login budgets shared by every api node: failed logins per account, and
//! lockouts that grow with each repeat.
//!
//! An api node asks before it checks a password ([`LoginGuard::begin`]):
//! the attempt is counted up front (so concurrent guesses, on any number
//! of nodes, cannot exceed the budget) and given back by a success
//! ([`LoginGuard::succeeded`]). The `max`+1-th attempt within the window
//! locks the account out for `first_lock`; each further lockout within
//! `strikes_for` lasts twice as long as the one before, up to `longest_lock`.
//! While locked out, attempts are refused without touching the password,
//! and are not counted (a lockout cannot be extended by guessing on).
//!
//! Two implementations, like the broker's: Redis (one script, one round
//! trip; cluster-wide) and in process (the single node; also the fallback
//! of an api node whose Redis does not answer, so logins keep a per-node
//! limit rather than none).

mod memory;
mod redis;

pub use memory::MemoryGuard;
pub use redis::RedisGuard;

use crate::BrokerError;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The budget and the lockouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Attempts allowed per window (failures, since a success gives its
    /// attempt back).
    pub max_attempts: u32,
    pub window: Duration,
    pub first_lock: Duration,
    pub longest_lock: Duration,
    /// How long a lockout is remembered for the doubling.
    pub strikes_for: Duration,
}

/// What [`LoginGuard::begin`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on and check the password.
    Allowed,
    /// Refused; try again after this long. `just_locked`: this attempt
    /// started the lockout.
    Locked {
        retry_after: Duration,
        just_locked: bool,
    },
}

#[async_trait]
pub trait LoginGuard: Send + Sync + 'static {
    /// Counts one attempt on `key` (an account, or an identifier that names
    /// none) before its password is checked.
    async fn begin(&self, key: &str, policy: &GuardPolicy) -> Result<Verdict, BrokerError>;
    /// The attempt succeeded: it and the window's failures are forgotten
    /// (earlier lockouts still count for the doubling).
    async fn succeeded(&self, key: &str) -> Result<(), BrokerError>;
    /// The account's owner proved who they are another way (a password
    /// reset through their mailbox): the window's failures and a current
    /// lockout are forgotten. Earlier lockouts still count for the
    /// doubling, so a guesser gains nothing from a reset they cannot do.
    async fn clear(&self, key: &str) -> Result<(), BrokerError>;
}

pub type DynLoginGuard = Arc<dyn LoginGuard>;

/// The lockout after `strikes` lockouts (the first is 1).
fn lock_for(policy: &GuardPolicy, strikes: u32) -> Duration {
    let doubled = policy
        .first_lock
        .saturating_mul(2u32.saturating_pow(strikes.saturating_sub(1)));
    doubled.min(policy.longest_lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_up_to_the_longest() {
        let policy = GuardPolicy {
            max_attempts: 3,
            window: Duration::from_secs(900),
            first_lock: Duration::from_secs(60),
            longest_lock: Duration::from_secs(300),
            strikes_for: Duration::from_secs(3600),
        };
        let locks: Vec<u64> = (1..=5).map(|s| lock_for(&policy, s).as_secs()).collect();
        assert_eq!(locks, [60, 120, 240, 300, 300]);
    }
}
