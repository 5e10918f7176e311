//! The login guard in Redis: `attempt.lua`, one round trip per login.
//! Keys (`{prefix}` is `PARLEY_REDIS_PREFIX`), each expiring by itself:
//! `{prefix}guard:{key}:n` (attempts in the window), `:s` (lockouts
//! remembered), `:lock` (present while locked out); on a Redis Cluster
//! `{{prefix}guard:{key}}:n` etc., one slot per budget ([`crate::keys`]).

use super::{GuardPolicy, LoginGuard, Verdict};
use crate::BrokerError;
use crate::keys::Keys;
use crate::redis::{evalsha, fail_fast, unavailable};
use async_trait::async_trait;
use fred::clients::Pool;
use fred::prelude::*;
use fred::types::scripts::Script;
use std::time::Duration;

/// A login waits at most this long for Redis before the api falls back to
/// its own in-process guard.
const GUARD_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisGuard {
    client: Pool,
    keys: Keys,
    attempt: Script,
}

impl RedisGuard {
    pub fn new(client: Pool, keys: Keys) -> Self {
        Self {
            client,
            keys,
            attempt: Script::from_lua(include_str!("attempt.lua")),
        }
    }

    fn key(&self, key: &str, part: &str) -> String {
        self.keys.guard(key, part)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[async_trait]
impl LoginGuard for RedisGuard {
    async fn begin(&self, key: &str, policy: &GuardPolicy) -> Result<Verdict, BrokerError> {
        let (allowed, retry_ms, just_locked): (i64, i64, i64) = evalsha(
            &self.client.next().with_options(&fail_fast(GUARD_TIMEOUT)),
            &self.attempt,
            vec![
                self.key(key, "n").into(),
                self.key(key, "s").into(),
                self.key(key, "lock").into(),
            ],
            vec![
                i64::from(policy.max_attempts).into(),
                millis(policy.window).into(),
                millis(policy.first_lock).into(),
                millis(policy.longest_lock).into(),
                millis(policy.strikes_for).into(),
            ],
        )
        .await
        .map_err(unavailable)?;
        Ok(if allowed == 1 {
            Verdict::Allowed
        } else {
            Verdict::Locked {
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
                just_locked: just_locked == 1,
            }
        })
    }

    async fn succeeded(&self, key: &str) -> Result<(), BrokerError> {
        let _: i64 = self
            .client
            .next()
            .with_options(&fail_fast(GUARD_TIMEOUT))
            .del(self.key(key, "n"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), BrokerError> {
        let _: i64 = self
            .client
            .next()
            .with_options(&fail_fast(GUARD_TIMEOUT))
            .del(vec![self.key(key, "n"), self.key(key, "lock")])
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
