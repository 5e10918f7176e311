//! The mail queue as an admin sees it: parked jobs (every attempt failed)
//! and pending ones; putting parked jobs back in the queue once the cause
//! (a mail server down, a wrong password in `PARLEY_MAIL`) is fixed, or
//! giving up on one.

use super::Admin;
use crate::audit::{self, ClientMeta};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::model::time_from_millis;
use shared::rest::{
    ErrorBody, MailJob, MailJobPage, MailJobState, MailJobsQuery, MailJobsRetried,
    SecurityEventKind,
};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

fn view(job: store::MailJob) -> MailJob {
    MailJob {
        id: job.id,
        kind: job.kind,
        recipient: job.recipient,
        state: if job.state == "parked" {
            MailJobState::Parked
        } else {
            MailJobState::Pending
        },
        attempts: job.attempts,
        last_error: job.last_error,
        next_attempt_at: time_from_millis(job.run_after),
        created_at: time_from_millis(job.created_at),
        updated_at: time_from_millis(job.updated_at),
    }
}

/// Mail jobs in one state (parked by default), newest first.
#[utoipa::path(get, path = "/admin/mail-jobs", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(MailJobsQuery),
    responses((status = 200, description = "A page of mail jobs, newest first", body = MailJobPage),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit` or `before_id` out of range", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(super) async fn list_mail_jobs(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<MailJobsQuery>,
) -> ApiResult<Json<MailJobPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 100"));
    }
    if query.before_id.is_some_and(|id| id < 1) {
        return Err(ApiError::validation(
            "before_id",
            "before_id must be at least 1",
        ));
    }
    let wanted = query.state.unwrap_or(MailJobState::Parked);
    let rows = state
        .store
        .mail_jobs(wanted.as_str(), query.before_id, i64::from(limit))
        .await?;
    let next_before_id = match rows.last() {
        Some(oldest) if rows.len() == limit as usize => Some(oldest.id),
        _ => None,
    };
    Ok(Json(MailJobPage {
        jobs: rows.into_iter().map(view).collect(),
        next_before_id,
    }))
}

/// Puts a parked job back in the queue: due at once, with a fresh set of attempts.
#[utoipa::path(post, path = "/admin/mail-jobs/{job_id}/retry", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("job_id" = i64, Path, description = "Mail job id", minimum = 1)),
    responses((status = 200, description = "The job, pending again", body = MailJob),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`mail_job_not_found`: no parked job with this id", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(super) async fn retry_mail_job(
    State(state): State<AppState>,
    _admin: Admin,
    meta: ClientMeta,
    ApiPath(job_id): ApiPath<i64>,
) -> ApiResult<Json<MailJob>> {
    let job = state
        .store
        .retry_mail_job(job_id, shared::model::now_millis())
        .await?
        .ok_or(ApiError::MailJobNotFound)?;
    state.mail.wake();
    tracing::info!(target: "security", job_id, "parked mail job put back in the queue");
    audit::record(
        &state,
        SecurityEventKind::MailJobRetried,
        None,
        &meta,
        serde_json::json!({"mail_job_id": job_id}),
    )
    .await;
    Ok(Json(view(job)))
}

/// Puts every parked job back in the queue (after a mail server outage).
#[utoipa::path(post, path = "/admin/mail-jobs/retry", tag = "admin", security(("bearer" = []), ("admin" = [])),
    responses((status = 200, description = "How many parked jobs are pending again", body = MailJobsRetried),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),))]
#[tracing::instrument(skip_all)]
pub(super) async fn retry_parked_mail_jobs(
    State(state): State<AppState>,
    _admin: Admin,
    meta: ClientMeta,
) -> ApiResult<Json<MailJobsRetried>> {
    let retried = state
        .store
        .retry_parked_mail_jobs(shared::model::now_millis())
        .await?;
    state.mail.wake();
    tracing::info!(target: "security", retried, "parked mail jobs put back in the queue");
    audit::record(
        &state,
        SecurityEventKind::MailJobRetried,
        None,
        &meta,
        serde_json::json!({"retried": retried}),
    )
    .await;
    Ok(Json(MailJobsRetried { retried }))
}

/// Deletes a parked job: the mail will not be sent.
#[utoipa::path(delete, path = "/admin/mail-jobs/{job_id}", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("job_id" = i64, Path, description = "Mail job id", minimum = 1)),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`mail_job_not_found`: no parked job with this id", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub(super) async fn delete_mail_job(
    State(state): State<AppState>,
    _admin: Admin,
    meta: ClientMeta,
    ApiPath(job_id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    if !state.store.delete_parked_mail_job(job_id).await? {
        return Err(ApiError::MailJobNotFound);
    }
    tracing::info!(target: "security", job_id, "parked mail job deleted");
    audit::record(
        &state,
        SecurityEventKind::MailJobDeleted,
        None,
        &meta,
        serde_json::json!({"mail_job_id": job_id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
