//! Abuse limits that live inside the handlers (per-IP limits on the auth
//! routes are a tower layer, see `startup.rs`).

use crate::config::PolicyArgs;
use crate::error::ApiError;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shared::{ApiKeyId, UserId};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// The window over which failed logins of one account are counted.
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What failed logins are counted against: the account, however it was
/// named (its username or its email, in any case), so that every way of
/// naming it shares one budget; an identifier that names no account is
/// counted by itself, so probing unknown names is limited the same way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LoginKey {
    Account(UserId),
    /// The normalised (trimmed, lowercase) identifier.
    Unknown(String),
}

/// SSE tickets one user may take: a page opens a stream or two, and
/// reconnects after a cut; more than this is a loop or abuse, and every
/// ticket is a row until it expires.
const TICKETS_PER_MINUTE: u32 = 60;
const TICKET_BURST: u32 = 10;

pub struct Limits {
    messages: DefaultKeyedRateLimiter<UserId>,
    tickets: DefaultKeyedRateLimiter<UserId>,
    /// Server publishes per API key (every `/v1/server/...` request).
    server_publishes: DefaultKeyedRateLimiter<ApiKeyId>,
    login_failures: DashMap<LoginKey, (u32, Instant)>,
    max_login_failures: u32,
}

impl Limits {
    pub fn new(args: &PolicyArgs) -> Self {
        let per_second = NonZeroU32::new(args.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(args.messages_burst).unwrap_or(per_second);
        let publish_rate =
            NonZeroU32::new(args.server_publish_per_second).unwrap_or(NonZeroU32::MIN);
        let publish_burst = NonZeroU32::new(args.server_publish_burst).unwrap_or(publish_rate);
        Self {
            messages: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            tickets: RateLimiter::keyed(
                Quota::per_minute(NonZeroU32::new(TICKETS_PER_MINUTE).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(TICKET_BURST).unwrap_or(NonZeroU32::MIN)),
            ),
            server_publishes: RateLimiter::keyed(
                Quota::per_second(publish_rate).allow_burst(publish_burst),
            ),
            login_failures: DashMap::new(),
            max_login_failures: args.login_failures_per_15min.max(1),
        }
    }

    /// Takes one message from `user`'s allowance.
    pub fn check_message(&self, user: UserId) -> Result<(), ApiError> {
        check(&self.messages, user, "message")
    }

    /// Takes one SSE ticket from `user`'s allowance.
    pub fn check_ticket(&self, user: UserId) -> Result<(), ApiError> {
        check(&self.tickets, user, "SSE ticket")
    }

    /// Takes one publish from API key `key`'s allowance.
    pub fn check_server_publish(&self, key: ApiKeyId) -> Result<(), ApiError> {
        check(&self.server_publishes, key, "server publish")
    }

    /// Takes one attempt from `key`'s login budget before the password is
    /// checked, or refuses it (429) when the budget is spent. Counting up
    /// front means concurrent guesses cannot overrun the budget; a success
    /// gives the attempts back through [`Limits::login_succeeded`].
    pub fn begin_login(&self, key: &LoginKey) -> Result<(), ApiError> {
        let mut entry = self
            .login_failures
            .entry(key.clone())
            .or_insert((0, Instant::now()));
        let (failures, since) = &mut *entry;
        if since.elapsed() >= LOGIN_FAILURE_WINDOW {
            *failures = 0;
            *since = Instant::now();
        }
        if *failures >= self.max_login_failures {
            let retry_after_secs = (LOGIN_FAILURE_WINDOW - since.elapsed()).as_secs().max(1);
            drop(entry);
            tracing::warn!(target: "security", ?key, "login refused: too many failures");
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        *failures += 1;
        Ok(())
    }

    pub fn login_succeeded(&self, key: &LoginKey) {
        self.login_failures.remove(key);
    }

    /// Forgets state that no longer limits anyone (called periodically).
    pub fn evict_stale(&self) {
        self.messages.retain_recent();
        self.tickets.retain_recent();
        self.server_publishes.retain_recent();
        self.login_failures
            .retain(|_, (_, since)| since.elapsed() < LOGIN_FAILURE_WINDOW);
    }
}

/// Takes one from `key`'s allowance in `limiter` (a user's, an API
/// key's), or answers 429.
fn check<K>(limiter: &DefaultKeyedRateLimiter<K>, key: K, what: &str) -> Result<(), ApiError>
where
    K: std::hash::Hash + Eq + Clone + std::fmt::Display,
{
    limiter.check_key(&key).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        tracing::warn!(target: "security", %key, "{what} rate limit hit");
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages_per_second: u32, burst: u32, failures: u32) -> Limits {
        Limits::new(&PolicyArgs {
            messages_per_second,
            messages_burst: burst,
            login_failures_per_15min: failures,
            ..PolicyArgs::default()
        })
    }

    #[test]
    fn a_user_may_post_a_burst_then_is_limited() {
        let l = limits(1, 3, 10);
        for _ in 0..3 {
            l.check_message(UserId(1)).unwrap();
        }
        assert!(matches!(
            l.check_message(UserId(1)),
            Err(ApiError::RateLimited { .. })
        ));
        l.check_message(UserId(2)).unwrap();
    }

    #[test]
    fn repeated_login_failures_lock_the_account_until_a_success_clears_them() {
        let l = limits(1, 1, 3);
        let ann = LoginKey::Account(UserId(1));
        for _ in 0..3 {
            l.begin_login(&ann).unwrap();
        }
        assert!(matches!(
            l.begin_login(&ann),
            Err(ApiError::RateLimited { .. })
        ));
        l.begin_login(&LoginKey::Account(UserId(2))).unwrap();
        l.begin_login(&LoginKey::Unknown("ann".into())).unwrap();
        l.login_succeeded(&ann);
        l.begin_login(&ann).unwrap();
    }
}
