//! The outgoing mail queue: jobs that survive restarts, taken by any api
//! node under a lease.
//!
//! A job is taken ([`Store::claim_mail_job`]) by setting `locked_until`
//! and a fresh `lease` id in one statement: on PostgreSQL the candidate row
//! is picked `FOR UPDATE SKIP LOCKED`, so nodes polling at once take
//! different jobs without waiting for each other; SQLite has one writer at
//! a time, so the same single statement is atomic there as it is. Settling
//! a job (sent, failed) names the lease, so a node whose lease ran out
//! (it stalled longer than the lease) cannot settle a job another node has
//! taken since. `attempts` counts takes, so a node that died mid-send uses
//! up an attempt too.
//!
//! Rows hold what a mail is about, never a secret: the api mints a
//! verification or reset token when it sends. A sent job is deleted.

use crate::{Backend, Result, Store};
use shared::UserId;
use sqlx::Row;
use sqlx::any::AnyRow;

/// A job to queue.
#[derive(Clone, Debug)]
pub struct NewMailJob<'a> {
    /// What to send (`verify_email`, `password_reset`, `email_changed`).
    pub kind: &'a str,
    pub recipient: &'a str,
    /// The account the mail is about, where one is (a verification: several
    /// accounts may hold the same unverified address). A reset request
    /// names only an address.
    pub user_id: Option<UserId>,
    /// What the mail needs, a JSON object (no secrets).
    pub payload: String,
}

/// A job as the queue holds it.
#[derive(Clone, Debug)]
pub struct MailJob {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    /// See [`NewMailJob::user_id`].
    pub user_id: Option<UserId>,
    pub payload: String,
    /// `pending` or `parked`.
    pub state: String,
    /// Takes so far (including the current one, for a claimed job).
    pub attempts: i64,
    pub run_after: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A job this node holds under `lease`.
#[derive(Clone, Debug)]
pub struct ClaimedMailJob {
    pub job: MailJob,
    pub lease: String,
}

/// What becomes of a job whose attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAt {
    /// Taken again from this time (ms).
    At(i64),
    /// No more attempts: parked until an admin retries it.
    Park,
}

const JOB_COLUMNS: &str = "id, kind, recipient, user_id, payload, state, attempts, run_after, last_error, created_at, updated_at";

fn job_from_row(row: &AnyRow) -> Result<MailJob> {
    Ok(MailJob {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        recipient: row.try_get("recipient")?,
        user_id: row.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        payload: row.try_get("payload")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        run_after: row.try_get("run_after")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Queues `job` in `tx` (with the change that asks for it), due at once.
pub(crate) async fn insert_mail_job(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    job: &NewMailJob<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO mail_jobs (kind, recipient, payload, state, attempts, run_after, created_at, updated_at, user_id) \
         VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4, $5)",
    )
    .bind(job.kind)
    .bind(job.recipient)
    .bind(job.payload.as_str())
    .bind(now)
    .bind(job.user_id.map(|u| u.0))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Queues a job, due at once.
    #[tracing::instrument(skip_all, fields(kind = job.kind))]
    pub async fn enqueue_mail(&self, job: NewMailJob<'_>, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert_mail_job(&mut tx, &job, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the oldest due job for `lease_ms` under a new lease `lease`,
    /// counting an attempt; None when nothing is due.
    #[tracing::instrument(skip(self))]
    pub async fn claim_mail_job(
        &self,
        now: i64,
        lease: &str,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMailJob>> {
        // The outer conditions repeat the inner ones: should two nodes
        // ever pick the same row, the second UPDATE re-reads it after the
        // first commits and no longer matches.
        let pick = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            // One writer at a time: the statement is atomic as it is.
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE mail_jobs SET locked_until = $2, lease = $3, attempts = attempts + 1, updated_at = $1 \
             WHERE id = (SELECT id FROM mail_jobs WHERE state = 'pending' AND run_after <= $1 \
             AND (locked_until IS NULL OR locked_until <= $1) ORDER BY run_after, id LIMIT 1 {pick}) \
             AND state = 'pending' AND (locked_until IS NULL OR locked_until <= $1) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now.saturating_add(lease_ms))
            .bind(lease)
            .fetch_optional(&self.pool)
            .await;
        let row = self.observe(row)?;
        row.map(|row| {
            Ok(ClaimedMailJob {
                job: job_from_row(&row)?,
                lease: lease.to_owned(),
            })
        })
        .transpose()
    }

    /// The job under `lease` was sent (or needs no mail): it is deleted.
    /// False if the lease was lost meanwhile.
    #[tracing::instrument(skip(self, lease))]
    pub async fn mail_job_done(&self, id: i64, lease: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM mail_jobs WHERE id = $1 AND lease = $2")
            .bind(id)
            .bind(lease)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The attempt under `lease` failed with `error`: the job is due again
    /// at `retry`, or parked. False if the lease was lost meanwhile.
    #[tracing::instrument(skip(self, lease, error))]
    pub async fn mail_job_failed(
        &self,
        id: i64,
        lease: &str,
        error: &str,
        retry: RetryAt,
        now: i64,
    ) -> Result<bool> {
        let (state, run_after) = match retry {
            RetryAt::At(at) => ("pending", at),
            RetryAt::Park => ("parked", now),
        };
        let done = sqlx::query(
            "UPDATE mail_jobs SET state = $3, run_after = $4, locked_until = NULL, lease = NULL, \
             last_error = $5, updated_at = $6 WHERE id = $1 AND lease = $2",
        )
        .bind(id)
        .bind(lease)
        .bind(state)
        .bind(run_after)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Jobs of `kind` for the account at `recipient` not yet sent (pending,
    /// not parked). A job queued before jobs named their account counts
    /// by its address.
    #[tracing::instrument(skip(self, recipient))]
    pub async fn pending_mail_jobs(
        &self,
        kind: &str,
        user: UserId,
        recipient: &str,
    ) -> Result<i64> {
        let pool = &self.pool;
        let row = self
            .read(|| {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM mail_jobs WHERE kind = $1 AND state = 'pending' \
                     AND (user_id = $2 OR (user_id IS NULL AND recipient = $3))",
                )
                .bind(kind)
                .bind(user.0)
                .bind(recipient)
                .fetch_one(pool)
            })
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Jobs in `state`, newest first, with ids below `before_id`.
    #[tracing::instrument(skip(self))]
    pub async fn mail_jobs(
        &self,
        state: &str,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<MailJob>> {
        let pool = &self.pool;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM mail_jobs WHERE state = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let rows = self
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(state)
                    .bind(before_id.unwrap_or(i64::MAX))
                    .bind(limit)
                    .fetch_all(pool)
            })
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Puts every parked job back in the queue (after an outage); how many.
    #[tracing::instrument(skip(self))]
    pub async fn retry_parked_mail_jobs(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE mail_jobs SET state = 'pending', attempts = 0, run_after = $1, locked_until = NULL, \
             lease = NULL, updated_at = $1 WHERE state = 'parked'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes a parked job (an admin gave up on it); false if there is no
    /// parked job `id`.
    #[tracing::instrument(skip(self))]
    pub async fn delete_parked_mail_job(&self, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM mail_jobs WHERE id = $1 AND state = 'parked'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts a parked job back in the queue, due at once, with its attempts
    /// reset; None if there is no parked job `id`.
    #[tracing::instrument(skip(self))]
    pub async fn retry_mail_job(&self, id: i64, now: i64) -> Result<Option<MailJob>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE mail_jobs SET state = 'pending', attempts = 0, run_after = $2, locked_until = NULL, \
             lease = NULL, updated_at = $2 WHERE id = $1 AND state = 'parked' RETURNING {JOB_COLUMNS}"
        )))
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }
}
