//! Attachments: uploads into a room, downloads authorised by membership,
//! thumbnails of images, and deleting the bytes when their message goes.
//!
//! * Upload (`POST /v1/rooms/{room_id}/attachments`, the raw bytes as the
//!   body): streamed from the socket into the attachment store in parts,
//!   never held whole; the size limit is enforced as the bytes arrive (413
//!   as soon as it is passed, without reading the rest); the type is
//!   decided from the first bytes against an allow-list (`sniff.rs`) before
//!   anything is stored; the SHA-256 is computed on the way. The receiving
//!   runs in a task of its own, so a client that disconnects mid-upload
//!   still gets its partial upload aborted and its row removed.
//! * The upload is the uploader's alone until they post it in a message of
//!   that room (`attachment_ids` of `POST /v1/rooms/{room_id}/messages`);
//!   then every member of the room can download it.
//! * An image's thumbnail is made once it is posted ([`posted`]): never for
//!   uploads abandoned unposted, and always announced the same way, by an
//!   `attachment.thumbnail_ready` event after the `message.created` that
//!   shows it `pending` (the uploader has the file itself meanwhile).
//! * Downloads are authorised endpoints (`GET /v1/attachments/{id}` and
//!   `.../thumbnail`) with the caller's bearer token rather than signed
//!   URLs: membership is checked on every read, so removing a member or
//!   deleting the message takes effect at once (a signed URL stays valid
//!   until it expires, and leaks through logs and shared links), and one
//!   code path serves both the disk and S3. They answer ranges (206/416).
//! * Deleting a message marks its attachments in the delete's transaction
//!   (unreadable from then on, and durably due); the bytes are removed right
//!   after the delete and, whatever failed then, by the periodic [`sweep`],
//!   which also expires uploads never posted (`PARLEY_ATTACHMENT_ORPHAN_TTL`).

pub mod sniff;
pub mod storage;
pub mod thumbnails;

use crate::config::AttachmentArgs;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, AuthUser};
use crate::rooms::membership_of;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::RoomId;
use shared::model::{Attachment, ThumbnailState, now_millis};
use shared::rest::ErrorBody;
use std::sync::Arc;
use std::time::Duration;
use storage::Engine;
use store::{NewUpload, Store};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use thumbnails::Thumbnailer;

/// Attachments purged per sweep at most; the next sweep takes the rest.
const PURGE_BATCH: i64 = 500;

/// A thumbnail still pending this long after its upload lost its job (a
/// full queue, a restart) and is queued again by the sweep.
const PENDING_THUMBNAIL_GRACE: Duration = Duration::from_secs(60);

/// The attachment store and its limits, shared by every request.
pub struct Attachments {
    pub blobs: Arc<dyn ObjectStore>,
    pub engine: Engine,
    pub max_bytes: u64,
    pub orphan_ttl: Duration,
    /// Uploads being received on this node; at most `PARLEY_ATTACHMENT_MAX_UPLOADS`.
    uploads: Arc<Semaphore>,
    pub thumbnails: Thumbnailer,
    /// Largest avatar upload (`PARLEY_AVATAR_MAX_BYTES`); avatars share
    /// this store and the upload slots (`crate::profiles`).
    pub avatar_max_bytes: u64,
    /// The decode limits of images (thumbnails and avatars).
    pub decode_limits: thumbnails::DecodeLimits,
}

impl Attachments {
    /// Opens the attachment store and starts the thumbnail worker (needs a
    /// Tokio runtime); [`Attachments::close`] it after serving.
    pub fn start(
        config: &AttachmentArgs,
        data_dir: &std::path::Path,
        store: Store,
        events: crate::events::Events,
    ) -> anyhow::Result<Self> {
        let (blobs, engine) = storage::open(config, data_dir)?;
        tracing::info!(?engine, max_bytes = config.max_bytes, "attachment store");
        Ok(Self {
            thumbnails: Thumbnailer::start(store, blobs.clone(), events, config),
            blobs,
            engine,
            max_bytes: config.max_bytes,
            orphan_ttl: config.orphan_ttl,
            uploads: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            avatar_max_bytes: config.avatar_max_bytes,
            decode_limits: thumbnails::DecodeLimits {
                max_dimension: config.thumbnail_max_dimension,
                max_alloc: config.thumbnail_max_alloc,
            },
        })
    }

    /// One of this node's upload slots, or the 503 a busy node answers.
    pub fn upload_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.uploads.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(anyhow::anyhow!("too many uploads in progress on this node"))
        })
    }

    /// Waits for the thumbnails being made.
    pub async fn close(&self) {
        self.thumbnails.close().await;
    }

    /// Removes attachment `id`'s bytes and thumbnail from the store, then
    /// its row (only a row already marked deleted).
    async fn purge(&self, store: &Store, id: &str) -> anyhow::Result<()> {
        for key in [storage::original_key(id), storage::thumbnail_key(id)] {
            match self.blobs.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        store.purged(id).await?;
        metrics::counter!("api_attachments_purged_total").increment(1);
        Ok(())
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        // The upload streams its body and enforces its own limit.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .merge(
            OpenApiRouter::new()
                .routes(routes!(download))
                .routes(routes!(thumbnail)),
        )
}

/// Describes and registers the attachment metrics at zero.
pub fn register_metrics() {
    thumbnails::register_metrics();
    metrics::describe_counter!(
        "api_attachment_uploads_total",
        "Uploads by outcome: stored, too_large, type_not_allowed, interrupted, error"
    );
    for outcome in [
        "stored",
        "too_large",
        "type_not_allowed",
        "interrupted",
        "error",
    ] {
        metrics::counter!("api_attachment_uploads_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        "api_attachment_upload_bytes_total",
        "Bytes of uploads stored"
    );
    metrics::counter!("api_attachment_upload_bytes_total").increment(0);
    metrics::describe_counter!(
        "api_attachments_purged_total",
        "Attachments whose bytes were removed (message deleted, or never posted)"
    );
    metrics::counter!("api_attachments_purged_total").increment(0);
}

/// `POST /v1/rooms/{room_id}/attachments` query.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name (any path is dropped, control characters and quotes
    /// removed, at most 200 characters); `file` when absent.
    #[param(max_length = 1024)]
    pub filename: Option<String>,
}

/// Uploads a file into a room (members only) as the raw request body,
/// `Content-Type` ignored: the type is decided from the bytes and must be
/// one of the allow-list (docs/api.md). The answer is the attachment, to
/// post with a message (`attachment_ids`); until then only the uploader
/// can read it. Images get a thumbnail made in the background once posted.
#[utoipa::path(post, path = "/rooms/{room_id}/attachments", tag = "attachments", security(("bearer" = [])),
    params(("room_id" = i64, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 201, description = "Stored", body = Attachment),
        (status = 400, description = "`upload_incomplete`: the body ended early or broke off", body = ErrorBody),
        (status = 403, description = "`email_unverified`: the server lets only verified accounts upload", body = ErrorBody),
        (status = 404, description = "`room_not_found` (also for non-members)", body = ErrorBody),
        (status = 413, description = "`attachment_too_large`: over the size limit (answered as soon as it is passed)", body = ErrorBody),
        (status = 415, description = "`attachment_type_not_allowed`: the bytes are none of the allowed types", body = ErrorBody),
        (status = 422, description = "`validation_failed`: an empty body, or a bad query", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store or database is unavailable, or too many uploads are in progress on this node", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, %room_id))]
async fn upload(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    crate::accounts::require_verified(&state, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let max_bytes = state.attachments.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        metrics::counter!("api_attachment_uploads_total", "outcome" => "too_large").increment(1);
        return Err(ApiError::AttachmentTooLarge { max_bytes });
    }
    membership_of(&state, room_id, caller.user_id).await?;
    let filename = sniff::safe_filename(query.filename.as_deref());
    let Ok(slot) = state.attachments.uploads.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "too many uploads in progress on this node"
        )));
    };
    // Its own task: if the client goes away the request future is dropped,
    // but the receiving still sees the broken body and cleans up.
    let receiving = tokio::spawn(async move {
        let received = receive(&state, room_id, caller, filename, body).await;
        drop(slot);
        received
    });
    let attachment = receiving
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the upload task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(attachment)))
}

/// Reads the upload's body into the store; see [`upload`].
async fn receive(
    state: &AppState,
    room_id: RoomId,
    caller: AuthUser,
    filename: String,
    body: Body,
) -> ApiResult<Attachment> {
    let attachments = &state.attachments;
    let max_bytes = attachments.max_bytes;
    let outcome = |name: &'static str| {
        metrics::counter!("api_attachment_uploads_total", "outcome" => name).increment(1);
    };
    let mut stream = body.into_data_stream();
    // The first bytes decide the type, before anything is stored.
    let mut head = Vec::with_capacity(sniff::SNIFF_BYTES);
    let mut ended = false;
    while head.len() < sniff::SNIFF_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => {
                if (head.len() + chunk.len()) as u64 > max_bytes {
                    outcome("too_large");
                    return Err(ApiError::AttachmentTooLarge { max_bytes });
                }
                head.extend_from_slice(&chunk);
            }
            Some(Err(_)) => {
                outcome("interrupted");
                return Err(ApiError::UploadIncomplete);
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    if head.is_empty() {
        return Err(ApiError::validation("body", "the upload is empty"));
    }
    let Some(content_type) = sniff::sniff(&head) else {
        outcome("type_not_allowed");
        return Err(ApiError::AttachmentTypeNotAllowed);
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let thumbnail = if sniff::is_thumbnailable(content_type) {
        ThumbnailState::Pending
    } else {
        ThumbnailState::None
    };
    let started = state
        .store
        .start_upload(NewUpload {
            id: &id,
            room_id,
            uploader_id: caller.user_id,
            filename: &filename,
            content_type,
            thumbnail,
            created_at: now_millis(),
        })
        .await?;
    if !started {
        // Left the room since the check above.
        return Err(ApiError::RoomNotFound);
    }
    let stored = store_bytes(attachments, &id, head, ended, &mut stream).await;
    let (size, sha256) = match stored {
        Ok(done) => done,
        Err(e) => {
            outcome(match &e {
                ApiError::AttachmentTooLarge { .. } => "too_large",
                ApiError::UploadIncomplete => "interrupted",
                _ => "error",
            });
            if let Err(cleanup) = state.store.discard_upload(&id).await {
                // The orphan sweep removes the row (and any bytes) later.
                tracing::warn!(error = %cleanup, "forgetting a failed upload failed");
            }
            return Err(e);
        }
    };
    let attachment = state.store.finish_upload(&id, size as i64, &sha256).await?;
    outcome("stored");
    metrics::counter!("api_attachment_upload_bytes_total").increment(size);
    Ok(attachment)
}

/// Streams `head` and the rest of `stream` into the store under `id`'s key
/// in parts, counting and hashing; aborts the upload (nothing stays in the
/// store) on any failure. Returns the size and hex SHA-256.
async fn store_bytes<S, E>(
    attachments: &Attachments,
    id: &str,
    head: Vec<u8>,
    ended: bool,
    stream: &mut S,
) -> ApiResult<(u64, String)>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let max_bytes = attachments.max_bytes;
    let unavailable = |e: object_store::Error| ApiError::Unavailable(e.into());
    let upload = attachments
        .blobs
        .put_multipart(&storage::original_key(id))
        .await
        .map_err(unavailable)?;
    let mut writer =
        WriteMultipart::new_with_chunk_size(upload, storage::part_size(attachments.engine));
    let mut hasher = Sha256::new();
    let mut size = head.len() as u64;
    hasher.update(&head);
    writer.write(&head);
    let failure = if ended {
        None
    } else {
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > max_bytes {
                        break Some(ApiError::AttachmentTooLarge { max_bytes });
                    }
                    hasher.update(&chunk);
                    // At most one part in flight besides the one filling:
                    // memory per upload stays at two parts.
                    if let Err(e) = writer.wait_for_capacity(1).await {
                        break Some(unavailable(e));
                    }
                    writer.write(&chunk);
                }
                Some(Err(_)) => break Some(ApiError::UploadIncomplete),
                None => break None,
            }
        }
    };
    if let Some(e) = failure {
        if let Err(abort) = writer.abort().await {
            tracing::warn!(error = %abort, "aborting a failed upload failed");
        }
        return Err(e);
    }
    writer.finish().await.map_err(unavailable)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Downloads an attachment: its uploader before it is posted, members of
/// its room after; nobody once its message is deleted. Single byte ranges
/// (`Range: bytes=...`) get 206; a range past the end 416.
#[utoipa::path(get, path = "/attachments/{attachment_id}", tag = "attachments", security(("bearer" = [])),
    params(("attachment_id" = String, Path, description = "The attachment's id (32 hex digits)", max_length = 64),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`")),
    responses(
        (status = 200, description = "The file, with its type, `Content-Disposition` and `X-Content-Type-Options: nosniff`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range (`Content-Range`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "`attachment_not_found` (also when the caller may not read it, or its message was deleted)", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable` (`Content-Range: bytes */size`)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, attachment_id = %id))]
async fn download(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve(&state, &caller, &id, &headers, Variant::Original).await
}

/// Downloads an attachment's thumbnail (JPEG, or PNG for images with
/// transparency, at most 320 px a side), with the same access as the file.
#[utoipa::path(get, path = "/attachments/{attachment_id}/thumbnail", tag = "attachments", security(("bearer" = [])),
    params(("attachment_id" = String, Path, description = "The attachment's id (32 hex digits)", max_length = 64),
        ("Range" = Option<String>, Header, description = "One byte range")),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "`attachment_not_found`, or `thumbnail_not_found`: not an image, not made yet, or it failed", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, attachment_id = %id))]
async fn thumbnail(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve(&state, &caller, &id, &headers, Variant::Thumbnail).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Original,
    Thumbnail,
}

/// An attachment id is 32 lowercase hex digits; anything else names nothing.
fn is_attachment_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn serve(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
    headers: &HeaderMap,
    variant: Variant,
) -> ApiResult<Response> {
    if !is_attachment_id(id) {
        return Err(ApiError::AttachmentNotFound);
    }
    let found = state
        .store
        .readable_attachment(id, caller.user_id)
        .await?
        .ok_or(ApiError::AttachmentNotFound)?;
    let blobs = &state.attachments.blobs;
    let (key, content_type, size, etag, disposition) = match variant {
        Variant::Original => (
            storage::original_key(id),
            found.attachment.content_type.clone(),
            found.attachment.size as u64,
            format!("\"{}\"", found.attachment.sha256),
            sniff::content_disposition(
                &found.attachment.filename,
                sniff::is_inline(&found.attachment.content_type),
            ),
        ),
        Variant::Thumbnail => {
            let content_type = match (found.attachment.thumbnail, found.thumbnail_type) {
                (ThumbnailState::Ready, Some(t)) => t,
                _ => return Err(ApiError::ThumbnailNotFound),
            };
            let key = storage::thumbnail_key(id);
            let meta = match blobs.head(&key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ApiError::ThumbnailNotFound);
                }
                Err(e) => return Err(ApiError::Unavailable(e.into())),
            };
            let extension = if content_type == "image/png" {
                "png"
            } else {
                "jpg"
            };
            (
                key,
                content_type,
                meta.size,
                format!("\"{}-thumbnail\"", found.attachment.sha256),
                sniff::content_disposition(&format!("thumbnail.{extension}"), true),
            )
        }
    };
    let range = match requested_range(headers, size) {
        Ok(range) => range,
        Err(()) => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let options = GetOptions {
        range: range
            .clone()
            .map(|r| GetRange::Bounded(*r.start()..*r.end() + 1)),
        ..GetOptions::default()
    };
    let got = match blobs.get_opts(&key, options).await {
        Ok(got) => got,
        // Purged between the check and the read.
        Err(object_store::Error::NotFound { .. }) => return Err(ApiError::AttachmentNotFound),
        Err(e) => return Err(ApiError::Unavailable(e.into())),
    };
    let body = Body::from_stream(got.into_stream());
    let mut response = Response::new(body);
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()));
    h.insert(header::CONTENT_TYPE, value(&content_type)?);
    h.insert(header::CONTENT_DISPOSITION, value(&disposition)?);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Even if a browser were talked into rendering it, nothing may run.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The bytes never change (a new upload is a new id), but who may read
    // them does: browsers may keep them, shared caches may not.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    h.insert(header::ETAG, value(&etag)?);
    match range {
        Some(r) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {}-{}/{size}", r.start(), r.end()))?,
            );
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(r.end() - r.start() + 1),
            );
        }
        None => {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    Ok(response.into_response())
}

/// The one byte range (inclusive) a `Range` header asks of `size` bytes:
/// None for the whole file (no header, a header we do not parse, or several
/// ranges, which RFC 9110 lets a server answer with the whole), `Err` when
/// it cannot be satisfied (416).
fn requested_range(
    headers: &HeaderMap,
    size: u64,
) -> Result<Option<std::ops::RangeInclusive<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => Ok(ranges.into_iter().next()),
        Ok(_) => Ok(None),
        Err(_) => Err(()),
    }
}

/// Right after a message with attachments is committed: queue thumbnails
/// of its images.
pub fn posted(state: &AppState, attachments: &[Attachment]) {
    for attachment in attachments {
        if attachment.thumbnail == ThumbnailState::Pending {
            state.attachments.thumbnails.enqueue(attachment.id.clone());
        }
    }
}

/// Right after a message's delete is committed: removes its attachments'
/// bytes. What fails here is left to the sweep (the rows stay marked).
pub async fn message_deleted(state: &AppState, room: RoomId, seq: i64) {
    let ids = match state
        .store
        .attachments_to_purge(Some((room, seq)), PURGE_BATCH)
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing a deleted message's attachments failed; the sweep will purge them");
            return;
        }
    };
    for id in ids {
        if let Err(e) = state.attachments.purge(&state.store, &id).await {
            tracing::warn!(error = %e, attachment_id = %id, "purging an attachment failed; the sweep will retry");
        }
    }
}

/// The periodic upkeep (every api node runs it; each step is idempotent):
/// expire uploads never posted, purge what is due, queue thumbnails whose
/// job was lost.
pub async fn sweep(state: &AppState) {
    let now = now_millis();
    let ttl = i64::try_from(state.attachments.orphan_ttl.as_millis()).unwrap_or(i64::MAX);
    match state
        .store
        .expire_orphan_uploads(now.saturating_sub(ttl), now)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(uploads = n, "uploads never posted expired"),
        Err(e) => tracing::warn!(error = %e, "expiring unposted uploads failed"),
    }
    match state.store.attachments_to_purge(None, PURGE_BATCH).await {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = state.attachments.purge(&state.store, &id).await {
                    tracing::warn!(error = %e, attachment_id = %id, "purging an attachment failed");
                    break;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing attachments to purge failed"),
    }
    // Deleted rooms go once their attachments have (store::Store::delete_room).
    match state.store.purge_deleted_rooms().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rooms = n, "deleted rooms purged"),
        Err(e) => tracing::warn!(error = %e, "purging deleted rooms failed"),
    }
    let grace = PENDING_THUMBNAIL_GRACE.as_millis() as i64;
    match state
        .store
        .pending_thumbnails(now - grace, PURGE_BATCH)
        .await
    {
        Ok(ids) => {
            for id in ids {
                state.attachments.thumbnails.enqueue(id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing pending thumbnails failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<std::ops::RangeInclusive<u64>>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        requested_range(&headers, size)
    }

    #[test]
    fn ranges_are_one_satisfiable_byte_range_or_the_whole_file() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some(0..=9)));
        assert_eq!(range("bytes=90-", 100), Ok(Some(90..=99)));
        assert_eq!(range("bytes=-10", 100), Ok(Some(90..=99)));
        assert_eq!(range("bytes=50-500", 100), Ok(Some(50..=99)));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("lines=1-2", 100), Ok(None));
        assert_eq!(requested_range(&HeaderMap::new(), 100), Ok(None));
    }

    #[test]
    fn attachment_ids_are_32_lowercase_hex_digits() {
        assert!(is_attachment_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_attachment_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_attachment_id("../../etc/passwd"));
        assert!(!is_attachment_id(""));
    }
}
