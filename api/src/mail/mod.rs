//! Outgoing mail through a durable queue.
//!
//! Handlers never send mail: they queue a job (`mail_jobs`, in the same
//! transaction as the change that asks for it where there is one) and wake
//! this node's sender. Every api node runs one sender task ([`start`]); it
//! takes due jobs one at a time under a lease (store/src/mail.rs: no job is
//! sent by two nodes while a lease holds, and a lease outlives the longest
//! send), makes the mail, hands it to the [`mailer::Mailer`], and settles
//! the job: deleted when sent, due again after an exponential backoff when
//! the attempt failed, parked for an admin after `PARLEY_MAIL_MAX_ATTEMPTS`
//! (`GET /v1/admin/mail-jobs`).
//!
//! A job says what a mail is about, not what it says: the verification or
//! reset token is minted when the mail is made, so no usable secret is ever
//! at rest in the queue, and a reset request for an address with no account
//! is a job like any other (it ends without a mail), which keeps the
//! request's answer and timing the same either way.
//!
//! The sender is owned by one task per node, woken by a local [`Notify`]
//! (a permit is kept if it is busy, so no wake is lost) and otherwise
//! polling every `PARLEY_MAIL_POLL_INTERVAL` (jobs queued by other nodes,
//! backoffs coming due). On shutdown it finishes the mail in hand (bounded
//! by [`mailer::SMTP_TIMEOUT`]) and stops.

pub mod mailer;

use crate::audit::{self, ClientMeta};
use crate::config::MailArgs;
use crate::state::AppState;
use mailer::{DynMailer, MailError, OutgoingMail};
use rand::Rng;
use serde::{Deserialize, Serialize};
use shared::model::now_millis;
use shared::rest::SecurityEventKind;
use std::path::Path;
use std::time::Duration;
use store::{ClaimedMailJob, NewAccountToken, NewMailJob, RetryAt, TokenPurpose};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a taken job is this node's alone. Longer than any send
/// (`SMTP_TIMEOUT` plus minting a token), so another node never takes a
/// job that is still being sent; short enough that a job of a node that
/// died is sent by another a few minutes later.
const LEASE: Duration = Duration::from_secs(5 * 60);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The window of the per-account mail limits.
const MAIL_LIMIT_WINDOW_MS: i64 = 3600 * 1000;

/// Job kinds.
pub const VERIFY_EMAIL: &str = "verify_email";
pub const PASSWORD_RESET: &str = "password_reset";
pub const EMAIL_CHANGED: &str = "email_changed";

/// What the mail of a job needs besides its recipient (never a secret).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobPayload {
    /// Who asked (a reset's audit event names the requester).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// An address change's notice: the account's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl JobPayload {
    pub fn from_meta(meta: &ClientMeta) -> Self {
        Self {
            ip: meta.ip.clone(),
            user_agent: meta.user_agent.clone(),
            username: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The mail settings every node shares, the mailer, and the sender's wake-up.
pub struct Mail {
    pub mailer: DynMailer,
    wake: Notify,
    public_url: String,
    max_attempts: u32,
    retry_base: Duration,
    poll_interval: Duration,
    pub verification_ttl: Duration,
    pub reset_ttl: Duration,
    pub mails_per_hour: u32,
    /// Whether accounts with an unverified address may post, react and
    /// create rooms (see `MailArgs::unverified_may_post`).
    pub unverified_may_post: bool,
}

impl Mail {
    pub fn from_config(args: &MailArgs, data_dir: &Path) -> anyhow::Result<Mail> {
        let mailer = mailer::from_config(args, data_dir)?;
        let public_url = args.public_url.trim_end_matches('/').to_owned();
        url::Url::parse(&public_url)
            .map_err(|e| anyhow::anyhow!("PARLEY_PUBLIC_URL {public_url:?}: {e}"))?;
        let unverified_may_post = args.unverified_may_post.unwrap_or(mailer.kind() == "file");
        tracing::info!(
            mailer = mailer.kind(),
            unverified_may_post,
            "mail: verification and password reset links go out through the {} mailer",
            mailer.kind()
        );
        Ok(Mail {
            mailer,
            wake: Notify::new(),
            public_url,
            max_attempts: args.mail_max_attempts.max(1),
            retry_base: args.mail_retry_base.max(Duration::from_millis(1)),
            poll_interval: args.mail_poll_interval.max(Duration::from_millis(10)),
            verification_ttl: args.email_verification_ttl,
            reset_ttl: args.password_reset_ttl,
            mails_per_hour: args.account_mails_per_hour,
            unverified_may_post,
        })
    }

    /// A job was queued on this node: its sender looks at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The wait before attempt `attempts + 1`: the base doubling per
    /// attempt made, at most an hour, times a jitter of 0.8 to 1.2 so jobs
    /// that failed together do not retry together.
    fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let wait = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(MAX_BACKOFF);
        wait.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
    }
}

/// Starts this node's sender; it stops when `shutdown` is cancelled.
pub fn start(state: AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Everything due now, one job at a time.
            while !shutdown.is_cancelled() {
                let lease = uuid::Uuid::new_v4().simple().to_string();
                let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
                match state
                    .store
                    .claim_mail_job(now_millis(), &lease, lease_ms)
                    .await
                {
                    Ok(Some(job)) => settle(&state, job).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking a mail job failed; trying again later");
                        break;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = state.mail.wake.notified() => {}
                () = tokio::time::sleep(state.mail.poll_interval) => {}
            }
        }
    })
}

/// What came of a job.
enum Delivery {
    Sent,
    /// No mail was due (no such account, already verified, over the limit).
    Skipped(&'static str),
}

/// Makes and sends one job's mail, then settles the job.
async fn settle(state: &AppState, claimed: ClaimedMailJob) {
    let ClaimedMailJob { job, lease } = claimed;
    let started = std::time::Instant::now();
    let outcome = deliver(state, &job).await;
    let now = now_millis();
    let settled = match outcome {
        Ok(delivery) => {
            match delivery {
                Delivery::Sent => {
                    metrics::histogram!("api_mail_send_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("api_mail_jobs_total", "outcome" => "sent").increment(1);
                    tracing::info!(job_id = job.id, kind = %job.kind, attempts = job.attempts, "mail sent");
                }
                Delivery::Skipped(why) => {
                    metrics::counter!("api_mail_jobs_total", "outcome" => "skipped").increment(1);
                    tracing::debug!(job_id = job.id, kind = %job.kind, why, "no mail was due");
                }
            }
            state.store.mail_job_done(job.id, &lease).await
        }
        Err(e) => {
            let permanent = matches!(e, JobError::Mail(MailError::Invalid(_)));
            let retry = if permanent || job.attempts >= i64::from(state.mail.max_attempts) {
                RetryAt::Park
            } else {
                let wait = state.mail.backoff(job.attempts);
                RetryAt::At(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
            };
            let error = e.to_string();
            if retry == RetryAt::Park {
                metrics::counter!("api_mail_jobs_total", "outcome" => "parked").increment(1);
                tracing::error!(job_id = job.id, kind = %job.kind, attempts = job.attempts, error = %error,
                    "mail job parked: an admin can retry it (GET /v1/admin/mail-jobs?state=parked)");
            } else {
                metrics::counter!("api_mail_jobs_total", "outcome" => "retried").increment(1);
                tracing::warn!(job_id = job.id, kind = %job.kind, attempts = job.attempts, error = %error,
                    "sending a mail failed; it will be retried");
            }
            state
                .store
                .mail_job_failed(job.id, &lease, &error, retry, now)
                .await
        }
    };
    match settled {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            job_id = job.id,
            "a mail job's lease ran out before it was settled; another node holds it now"
        ),
        // The lease runs out and the job is taken again: a sent mail may
        // then go twice, a failed one is retried as it would have been.
        Err(e) => tracing::warn!(job_id = job.id, error = %e, "settling a mail job failed"),
    }
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
}

async fn deliver(state: &AppState, job: &store::MailJob) -> Result<Delivery, JobError> {
    let payload: JobPayload = serde_json::from_str(&job.payload).unwrap_or_default();
    let mail = match job.kind.as_str() {
        VERIFY_EMAIL => {
            let user = match job.user_id {
                Some(id) => state.store.user(id).await?,
                // Queued before jobs named their account.
                None => state.store.user_by_email(&job.recipient).await?,
            };
            let Some(user) = user.filter(|u| u.email == job.recipient) else {
                return Ok(Delivery::Skipped("the account's address changed since"));
            };
            if user.email_verified {
                return Ok(Delivery::Skipped("the address is verified already"));
            }
            // Minted in both cases below: the hourly limit on verification
            // mails counts minted tokens, and a notice to an address's owner
            // must be as limited as a link (or an account could mail them
            // without end). The notice's token is never sent, so it
            // verifies nothing.
            let token = mint(
                state,
                user.id,
                &user.email,
                TokenPurpose::VerifyEmail,
                state.mail.verification_ttl,
            )
            .await?;
            if let Some(owner) = state.store.verified_owner(&user.email, user.id).await? {
                // The address is someone else's: its owner hears of the
                // attempt, the new account gets nothing to verify with.
                // Signup answered as for any address (docs/api.md, "Email
                // addresses and enumeration").
                tracing::info!(target: "security", user_id = %user.id, owner_id = %owner.id,
                    "verification for an address another account verified: its owner is told instead");
                OutgoingMail {
                    to: user.email,
                    subject: "Someone used your email address on Parley".into(),
                    body: format!(
                        "Hello {owner},\r\n\r\nSomeone signed up for Parley, or changed an account's address, giving this\r\n\
                         address. It belongs to your account {owner} already, so nothing changed for you and\r\n\
                         the other account cannot use it. If it was you, log in as {owner} (or reset your\r\n\
                         password with this address). Otherwise you can ignore this mail.\r\n",
                        owner = owner.username,
                    ),
                }
            } else {
                let link = format!(
                    "{}/v1/auth/verify-email?token={token}",
                    state.mail.public_url
                );
                OutgoingMail {
                    to: user.email,
                    subject: "Verify your email address for Parley".into(),
                    body: format!(
                        "Hello {name},\r\n\r\nTo verify this address for your Parley account, open this link:\r\n\r\n{link}\r\n\r\n\
                         It works once, for {ttl}. An app can instead send the token\r\n\r\n{token}\r\n\r\n\
                         to POST /v1/auth/verify-email. If you did not sign up, ignore this mail.\r\n",
                        name = user.username,
                        ttl = human(state.mail.verification_ttl),
                    ),
                }
            }
        }
        PASSWORD_RESET => {
            let Some(user) = state.store.user_by_email(&job.recipient).await? else {
                return Ok(Delivery::Skipped("no account has the address"));
            };
            // A retry of a job that counted already is not a new request.
            if job.attempts <= 1 {
                let since = now_millis() - MAIL_LIMIT_WINDOW_MS;
                let sent = state
                    .store
                    .account_tokens_since(user.id, TokenPurpose::ResetPassword, since)
                    .await?;
                if sent >= i64::from(state.mail.mails_per_hour) {
                    tracing::warn!(target: "security", user_id = %user.id,
                        "password reset mail not sent: the account's hourly limit is reached");
                    return Ok(Delivery::Skipped(
                        "the account's hourly reset limit is reached",
                    ));
                }
                let meta = ClientMeta {
                    ip: payload.ip.clone(),
                    user_agent: payload.user_agent.clone(),
                };
                audit::record(
                    state,
                    SecurityEventKind::PasswordResetRequested,
                    Some(user.id),
                    &meta,
                    serde_json::json!({}),
                )
                .await;
            }
            let token = mint(
                state,
                user.id,
                &user.email,
                TokenPurpose::ResetPassword,
                state.mail.reset_ttl,
            )
            .await?;
            let link = format!("{}/reset-password?token={token}", state.mail.public_url);
            OutgoingMail {
                to: user.email,
                subject: "Reset your Parley password".into(),
                body: format!(
                    "Hello {name},\r\n\r\nSomeone (we hope you) asked to reset the password of your Parley account.\r\n\
                     To choose a new one, open this link:\r\n\r\n{link}\r\n\r\n\
                     It works once, for {ttl}; resetting signs you out everywhere. An app can instead send\r\n\
                     the token\r\n\r\n{token}\r\n\r\nwith the new password to POST /v1/auth/password-reset/confirm.\r\n\
                     If you did not ask for this, ignore this mail: your password stays as it is.\r\n",
                    name = user.username,
                    ttl = human(state.mail.reset_ttl),
                ),
            }
        }
        EMAIL_CHANGED => OutgoingMail {
            to: job.recipient.clone(),
            subject: "Your Parley email address was changed".into(),
            body: format!(
                "Hello {name},\r\n\r\nThe email address of your Parley account was changed: mail for the account\r\n\
                 goes to the new address from now on. If you did not do this, someone else may be using\r\n\
                 your account: contact the operator of this server.\r\n",
                name = payload.username.as_deref().unwrap_or("there"),
            ),
        },
        other => {
            return Err(MailError::Invalid(format!("unknown mail job kind {other:?}")).into());
        }
    };
    state.mail.mailer.send(&mail).await?;
    Ok(Delivery::Sent)
}

/// A new token for `user_id`'s `purpose`, stored as its hash.
async fn mint(
    state: &AppState,
    user_id: shared::UserId,
    email: &str,
    purpose: TokenPurpose,
    ttl: Duration,
) -> Result<String, store::StoreError> {
    let (token, hash) = crate::accounts::new_token();
    let now = now_millis();
    state
        .store
        .create_account_token(NewAccountToken {
            token_hash: &hash,
            user_id,
            purpose,
            email,
            created_at: now,
            expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
        })
        .await?;
    Ok(token)
}

/// "30 minutes", "48 hours": how long a link works, for the mail's text.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 3600 && s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Queues `job` and wakes this node's sender.
pub async fn enqueue(state: &AppState, job: NewMailJob<'_>) -> Result<(), store::StoreError> {
    state.store.enqueue_mail(job, now_millis()).await?;
    state.mail.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(base_ms: u64) -> Mail {
        let args = MailArgs {
            mail_retry_base: Duration::from_millis(base_ms),
            ..MailArgs::default()
        };
        let dir =
            std::env::temp_dir().join(format!("parley-mail-{}", uuid::Uuid::new_v4().simple()));
        let mail = Mail::from_config(&args, &dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        mail
    }

    #[test]
    fn the_backoff_doubles_per_attempt_with_jitter_and_is_capped() {
        let m = mail(1000);
        for (attempts, expected) in [(1, 1000.0), (2, 2000.0), (3, 4000.0), (6, 32000.0)] {
            let got = m.backoff(attempts).as_millis() as f64;
            assert!(
                (expected * 0.8..=expected * 1.2).contains(&got),
                "attempt {attempts}: {got} ms, expected about {expected}"
            );
        }
        assert!(m.backoff(40) <= MAX_BACKOFF.mul_f64(1.2));
        assert!(m.backoff(40) >= MAX_BACKOFF.mul_f64(0.8));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(Duration::from_secs(30 * 60)), "30 minutes");
        assert_eq!(human(Duration::from_secs(48 * 3600)), "48 hours");
        assert_eq!(human(Duration::from_secs(5)), "5 seconds");
    }

    #[test]
    fn the_file_mailer_lets_unverified_accounts_post_unless_told_otherwise() {
        let m = mail(1000);
        assert!(m.unverified_may_post);
        let dir =
            std::env::temp_dir().join(format!("parley-mail-{}", uuid::Uuid::new_v4().simple()));
        let strict = Mail::from_config(
            &MailArgs {
                unverified_may_post: Some(false),
                ..MailArgs::default()
            },
            &dir,
        )
        .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(!strict.unverified_may_post);
    }
}
