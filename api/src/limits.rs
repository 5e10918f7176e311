//! Abuse limits that live inside the handlers (per-IP limits on the auth
//! routes are a tower layer, see `startup.rs`).

use crate::config::PolicyArgs;
use crate::error::ApiError;
use broker::guard::{DynLoginGuard, GuardPolicy, LoginGuard, MemoryGuard, Verdict};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use shared::{ApiKeyId, UserId};
use std::num::NonZeroU32;
use std::time::Duration;

/// The window over which failed logins of one account are counted.
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long a repeated lockout is remembered for the doubling.
const LOCKOUT_MEMORY: Duration = Duration::from_secs(24 * 3600);

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

impl LoginKey {
    /// The guard's key: an account by id, an unknown identifier by a
    /// digest (bounded, and no client text in Redis key names).
    fn guard_key(&self) -> String {
        match self {
            LoginKey::Account(id) => format!("u{}", id.0),
            LoginKey::Unknown(name) => {
                let digest = Sha256::digest(name.as_bytes());
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("n{hex}")
            }
        }
    }
}

/// What a client IP's cluster-wide budget is spent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpBudget {
    /// Passwords and second-factor codes tried.
    Login,
    Signup,
}

impl IpBudget {
    fn as_str(self) -> &'static str {
        match self {
            IpBudget::Login => "login",
            IpBudget::Signup => "signup",
        }
    }
}

/// The window of [`IpBudget::Signup`].
pub const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);

/// Whether a login may go on to its password check.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginGate {
    Open,
    /// Locked out for `retry_after_secs`; `just_locked`: this attempt
    /// started the lockout.
    Locked {
        retry_after_secs: u64,
        just_locked: bool,
    },
}

/// SSE tickets one user may take: a page opens a stream or two, and
/// reconnects after a cut; more than this is a loop or abuse, and every
/// ticket is a row until it expires.
const TICKETS_PER_MINUTE: u32 = 60;
const TICKET_BURST: u32 = 10;

pub struct Limits {
    messages: DefaultKeyedRateLimiter<UserId>,
    tickets: DefaultKeyedRateLimiter<UserId>,
    searches: DefaultKeyedRateLimiter<UserId>,
    /// Server publishes per API key (every `/v1/server/...` request).
    server_publishes: DefaultKeyedRateLimiter<ApiKeyId>,
    login_policy: GuardPolicy,
    ip_login_policy: GuardPolicy,
    ip_signup_policy: GuardPolicy,
    /// Used when the shared guard (Redis) does not answer: logins keep a
    /// per-node limit instead of none.
    fallback_guard: MemoryGuard,
}

impl Limits {
    pub fn new(args: &PolicyArgs) -> Self {
        let per_second = NonZeroU32::new(args.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(args.messages_burst).unwrap_or(per_second);
        let publish_rate =
            NonZeroU32::new(args.server_publish_per_second).unwrap_or(NonZeroU32::MIN);
        let publish_burst = NonZeroU32::new(args.server_publish_burst).unwrap_or(publish_rate);
        let search_rate = NonZeroU32::new(args.searches_per_second).unwrap_or(NonZeroU32::MIN);
        let search_burst = NonZeroU32::new(args.searches_burst).unwrap_or(search_rate);
        Self {
            searches: RateLimiter::keyed(Quota::per_second(search_rate).allow_burst(search_burst)),
            messages: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            tickets: RateLimiter::keyed(
                Quota::per_minute(NonZeroU32::new(TICKETS_PER_MINUTE).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(TICKET_BURST).unwrap_or(NonZeroU32::MIN)),
            ),
            server_publishes: RateLimiter::keyed(
                Quota::per_second(publish_rate).allow_burst(publish_burst),
            ),
            login_policy: GuardPolicy {
                max_attempts: args.login_failures_per_15min.max(1),
                window: LOGIN_FAILURE_WINDOW,
                first_lock: args.login_lockout,
                longest_lock: args.login_lockout_max.max(args.login_lockout),
                strikes_for: LOCKOUT_MEMORY,
            },
            // An IP's budget refills when its window ends: the "lockout" is
            // the rest of the window, and does not grow.
            ip_login_policy: window_budget(args.logins_per_ip_per_15min, LOGIN_FAILURE_WINDOW),
            ip_signup_policy: window_budget(args.signups_per_ip_per_hour, SIGNUP_WINDOW),
            fallback_guard: MemoryGuard::new(),
        }
    }

    /// Counts one login attempt or signup from client `ip` against its
    /// budget, shared by every api node (in Redis; in process on a single
    /// node), or answers 429 while it is spent. Nothing gives an attempt
    /// back: one valid account must not let an IP guess at others. The
    /// per-node tower-governor limit stays in front of this.
    pub async fn begin_ip(
        &self,
        guard: &DynLoginGuard,
        budget: IpBudget,
        ip: Option<&str>,
    ) -> Result<(), IpRefused> {
        let Some(ip) = ip else { return Ok(()) };
        let policy = match budget {
            IpBudget::Login => &self.ip_login_policy,
            IpBudget::Signup => &self.ip_signup_policy,
        };
        let digest = Sha256::digest(ip.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}{hex}", &budget.as_str()[..1]);
        let verdict = match guard.begin(&key, policy).await {
            Ok(verdict) => verdict,
            Err(e) => {
                metrics::counter!("api_login_guard_fallbacks_total").increment(1);
                tracing::warn!(error = %e, "the shared login guard did not answer; counting on this node");
                self.fallback_guard
                    .begin(&key, policy)
                    .await
                    .unwrap_or(Verdict::Allowed)
            }
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Locked {
                retry_after,
                just_locked,
            } => {
                tracing::warn!(target: "security", ip, budget = budget.as_str(), "per-IP budget spent on all api nodes");
                Err(IpRefused {
                    retry_after_secs: retry_after.as_secs().max(1),
                    just_spent: just_locked,
                })
            }
        }
    }

    /// Takes one message from `user`'s allowance.
    pub fn check_message(&self, user: UserId) -> Result<(), ApiError> {
        check(&self.messages, user, "message")
    }

    /// Takes one search from `user`'s allowance.
    pub fn check_search(&self, user: UserId) -> Result<(), ApiError> {
        check(&self.searches, user, "search")
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
    /// checked, in `guard` (shared by every api node), or refuses it while
    /// the account is locked out. Counting up front means concurrent
    /// guesses, on any nodes, cannot overrun the budget; a success gives
    /// the attempt back through [`Limits::login_succeeded`].
    pub async fn begin_login(&self, guard: &DynLoginGuard, key: &LoginKey) -> LoginGate {
        let guard_key = key.guard_key();
        let verdict = match guard.begin(&guard_key, &self.login_policy).await {
            Ok(verdict) => verdict,
            Err(e) => {
                metrics::counter!("api_login_guard_fallbacks_total").increment(1);
                tracing::warn!(error = %e, "the shared login guard did not answer; counting on this node");
                // The in-process guard cannot fail.
                self.fallback_guard
                    .begin(&guard_key, &self.login_policy)
                    .await
                    .unwrap_or(Verdict::Allowed)
            }
        };
        match verdict {
            Verdict::Allowed => LoginGate::Open,
            Verdict::Locked {
                retry_after,
                just_locked,
            } => {
                if just_locked {
                    tracing::warn!(target: "security", ?key, lockout_secs = retry_after.as_secs(),
                        "login locked out: too many failures");
                } else {
                    tracing::warn!(target: "security", ?key, "login refused: locked out");
                }
                LoginGate::Locked {
                    retry_after_secs: retry_after.as_secs().max(1),
                    just_locked,
                }
            }
        }
    }

    pub async fn login_succeeded(&self, guard: &DynLoginGuard, key: &LoginKey) {
        let guard_key = key.guard_key();
        if let Err(e) = guard.succeeded(&guard_key).await {
            tracing::warn!(error = %e, "the shared login guard did not answer a success");
        }
        let _ = self.fallback_guard.succeeded(&guard_key).await;
    }

    /// The account's owner reset the password through their mailbox: its
    /// failed-login count and a current lockout are cleared, in the shared
    /// guard and in this node's fallback.
    pub async fn login_cleared(&self, guard: &DynLoginGuard, user: UserId) {
        let guard_key = LoginKey::Account(user).guard_key();
        if let Err(e) = guard.clear(&guard_key).await {
            tracing::warn!(error = %e, "the shared login guard did not answer a clear");
        }
        let _ = self.fallback_guard.clear(&guard_key).await;
    }

    /// Forgets state that no longer limits anyone (called periodically).
    pub fn evict_stale(&self) {
        self.messages.retain_recent();
        self.tickets.retain_recent();
        self.searches.retain_recent();
        self.server_publishes.retain_recent();
        self.fallback_guard.evict_stale();
    }
}

/// A client IP whose budget is spent.
#[derive(Debug, PartialEq, Eq)]
pub struct IpRefused {
    pub retry_after_secs: u64,
    /// This request spent it (worth one audit event; the rest are not).
    pub just_spent: bool,
}

/// `max` attempts per `window`, then none until the window ends.
fn window_budget(max: u32, window: Duration) -> GuardPolicy {
    GuardPolicy {
        max_attempts: max.max(1),
        window,
        first_lock: window,
        longest_lock: window,
        strikes_for: window,
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

    #[tokio::test]
    async fn repeated_login_failures_lock_the_account_out() {
        let l = limits(1, 1, 3);
        let guard: DynLoginGuard = std::sync::Arc::new(MemoryGuard::new());
        let ann = LoginKey::Account(UserId(1));
        for _ in 0..3 {
            assert_eq!(l.begin_login(&guard, &ann).await, LoginGate::Open);
        }
        assert_eq!(
            l.begin_login(&guard, &ann).await,
            LoginGate::Locked {
                retry_after_secs: 15 * 60,
                just_locked: true
            }
        );
        assert!(matches!(
            l.begin_login(&guard, &ann).await,
            LoginGate::Locked {
                just_locked: false,
                ..
            }
        ));
        let other = LoginKey::Account(UserId(2));
        assert_eq!(l.begin_login(&guard, &other).await, LoginGate::Open);
        l.login_succeeded(&guard, &other).await;
        let unknown = LoginKey::Unknown("ann".into());
        assert_eq!(l.begin_login(&guard, &unknown).await, LoginGate::Open);
    }
}
