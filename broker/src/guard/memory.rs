//! The in-process login guard (see the module above).

use super::{GuardPolicy, LoginGuard, Verdict, lock_for};
use crate::BrokerError;
use async_trait::async_trait;
use dashmap::DashMap;
use std::time::Instant;

#[derive(Default)]
struct Account {
    attempts: u32,
    window_ends: Option<Instant>,
    strikes: u32,
    strikes_end: Option<Instant>,
    locked_until: Option<Instant>,
}

/// Budgets in this process's memory.
#[derive(Default)]
pub struct MemoryGuard {
    accounts: DashMap<String, Account>,
}

impl MemoryGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets accounts with nothing left to remember (called periodically
    /// so the map stays bounded by recent activity).
    pub fn evict_stale(&self) {
        let now = Instant::now();
        let live = |at: Option<Instant>| at.is_some_and(|t| t > now);
        self.accounts
            .retain(|_, a| live(a.window_ends) || live(a.strikes_end) || live(a.locked_until));
    }
}

#[async_trait]
impl LoginGuard for MemoryGuard {
    async fn begin(&self, key: &str, policy: &GuardPolicy) -> Result<Verdict, BrokerError> {
        let now = Instant::now();
        let mut a = self.accounts.entry(key.to_owned()).or_default();
        if let Some(until) = a.locked_until.filter(|t| *t > now) {
            return Ok(Verdict::Locked {
                retry_after: until - now,
                just_locked: false,
            });
        }
        if a.window_ends.is_none_or(|t| t <= now) {
            a.attempts = 0;
            a.window_ends = Some(now + policy.window);
        }
        a.attempts += 1;
        if a.attempts <= policy.max_attempts {
            return Ok(Verdict::Allowed);
        }
        if a.strikes_end.is_none_or(|t| t <= now) {
            a.strikes = 0;
        }
        a.strikes += 1;
        a.strikes_end = Some(now + policy.strikes_for);
        let lock = lock_for(policy, a.strikes);
        a.locked_until = Some(now + lock);
        a.attempts = 0;
        a.window_ends = None;
        Ok(Verdict::Locked {
            retry_after: lock,
            just_locked: true,
        })
    }

    async fn succeeded(&self, key: &str) -> Result<(), BrokerError> {
        if let Some(mut a) = self.accounts.get_mut(key) {
            a.attempts = 0;
            a.window_ends = None;
        }
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), BrokerError> {
        if let Some(mut a) = self.accounts.get_mut(key) {
            a.attempts = 0;
            a.window_ends = None;
            a.locked_until = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> GuardPolicy {
        GuardPolicy {
            max_attempts: 2,
            window: Duration::from_secs(900),
            first_lock: Duration::from_secs(60),
            longest_lock: Duration::from_secs(3600),
            strikes_for: Duration::from_secs(86_400),
        }
    }

    #[tokio::test]
    async fn the_attempt_over_the_budget_locks_and_a_success_gives_attempts_back() {
        let g = MemoryGuard::new();
        let p = policy();
        assert_eq!(g.begin("a", &p).await.unwrap(), Verdict::Allowed);
        g.succeeded("a").await.unwrap();
        assert_eq!(g.begin("a", &p).await.unwrap(), Verdict::Allowed);
        assert_eq!(g.begin("a", &p).await.unwrap(), Verdict::Allowed);
        assert_eq!(
            g.begin("a", &p).await.unwrap(),
            Verdict::Locked {
                retry_after: Duration::from_secs(60),
                just_locked: true
            }
        );
        assert!(matches!(
            g.begin("a", &p).await.unwrap(),
            Verdict::Locked {
                just_locked: false,
                ..
            }
        ));
        assert_eq!(g.begin("b", &p).await.unwrap(), Verdict::Allowed);
    }
}
