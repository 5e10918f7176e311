//! Profiles: a display name, a status text and an avatar, which the user
//! sets and the users who share a room with them see.
//!
//! * Visibility is one rule, checked in the query that reads the profile
//!   (`Store::visible_profile`): the user themselves, or someone who shares
//!   at least one room with them. Anyone else gets `404 user_not_found`,
//!   exactly as for an id that names nobody, so a profile cannot be used
//!   to find out who is in which room. The ids in paths are only ever the
//!   user to read; the viewer is always the caller's token.
//! * Avatars are uploads like attachments (the raw body, typed by its
//!   bytes, a size limit checked as the bytes arrive, the same upload slots
//!   and rate limit) but are never served as sent: they are re-encoded to a
//!   small square (`avatar.rs`). They live in the attachment store (the S3
//!   bucket in a cluster, else the data directory) under
//!   `avatars/<user id>/<avatar id>`; a new avatar is a new id, so its URL
//!   changes and the old object is deleted once the change is committed.
//! * A change is announced live by an ephemeral `profile` frame on the
//!   topics of the user's rooms, at most [`PROFILE_FANOUT_ROOMS`] of them
//!   (docs/protocol.md): only members of those rooms, who may see the
//!   profile anyway, receive it.

pub mod avatar;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, AuthUser};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use broker::Topic;
use futures::StreamExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::Deserialize;
use shared::UserId;
use shared::model::{Profile, now_millis};
use shared::protocol::{Encoding, PROFILE_FANOUT_ROOMS, ServerFrame};
use shared::rest::{ErrorBody, UpdateProfileRequest, UserProfile};
use store::{ProfileUpdate, StoredAvatar};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest display name, in characters after trimming.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Longest status text, in characters after trimming.
pub const MAX_STATUS_TEXT_CHARS: usize = 140;

/// Room topics a profile change is published on at once: enough to keep
/// the broker's connection busy, few enough not to flood it.
const PUBLISH_CONCURRENCY: usize = 16;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_profile, update_profile))
        .routes(routes!(my_avatar, upload_avatar, delete_avatar))
        // The avatar upload reads its body itself, under its own limit.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .merge(
            OpenApiRouter::new()
                .routes(routes!(user_profile))
                .routes(routes!(user_avatar)),
        )
}

/// Describes and registers the profile metrics at zero.
pub fn register_metrics() {
    metrics::describe_counter!(
        "api_avatar_uploads_total",
        "Avatar uploads by outcome: stored, too_large, type_not_allowed, unreadable, error"
    );
    for outcome in [
        "stored",
        "too_large",
        "type_not_allowed",
        "unreadable",
        "error",
    ] {
        metrics::counter!("api_avatar_uploads_total", "outcome" => outcome).increment(0);
    }
}

fn avatar_outcome(name: &'static str) {
    metrics::counter!("api_avatar_uploads_total", "outcome" => name).increment(1);
}

/// A display name or status text as stored: trimmed, at most `max`
/// characters, no control characters; empty means cleared.
fn profile_text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> ApiResult<Option<String>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let trimmed = value.trim();
    if trimmed.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    // Line breaks too: both are shown on one line next to a name.
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(Some(trimmed.to_owned()).filter(|s| !s.is_empty()))
}

/// The caller's own profile.
#[utoipa::path(get, path = "/users/me/profile", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller's profile", body = UserProfile)))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn my_profile(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<UserProfile>> {
    read_profile(&state, &caller, caller.user_id).await
}

/// A user's profile: for the user and for users who share a room with them.
#[utoipa::path(get, path = "/users/{user_id}/profile", tag = "users", security(("bearer" = [])),
    params(("user_id" = i64, Path)),
    responses(
        (status = 200, description = "The user's profile", body = UserProfile),
        (status = 404, description = "`user_not_found`: no such user, or the caller shares no room with them (the two are indistinguishable)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, of = %user_id))]
async fn user_profile(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<UserProfile>> {
    read_profile(&state, &caller, user_id).await
}

async fn read_profile(
    state: &AppState,
    caller: &AuthUser,
    user_id: UserId,
) -> ApiResult<Json<UserProfile>> {
    let found = state
        .store
        .visible_profile(caller.user_id, user_id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(Json(UserProfile {
        user_id: found.user_id,
        username: found.username,
        profile: found.profile,
    }))
}

/// Changes the caller's display name or status text: an absent field stays,
/// `null` or empty text clears it. Members of the caller's rooms get a
/// `profile` frame.
#[utoipa::path(patch, path = "/users/me/profile", tag = "users", security(("bearer" = [])),
    request_body = UpdateProfileRequest,
    responses(
        (status = 200, description = "The profile as it is now", body = Profile),
        (status = 403, description = "`email_unverified`: the server lets only verified accounts change what others see", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`field` names it): too long, or control characters", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn update_profile(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(req): ApiJson<UpdateProfileRequest>,
) -> ApiResult<Json<Profile>> {
    let display_name = req
        .display_name
        .map(|v| profile_text("display_name", v, MAX_DISPLAY_NAME_CHARS))
        .transpose()?;
    let status_text = req
        .status_text
        .map(|v| profile_text("status_text", v, MAX_STATUS_TEXT_CHARS))
        .transpose()?;
    crate::accounts::require_verified(&state, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let change = ProfileUpdate {
        display_name: display_name.as_ref().map(Option::as_deref),
        status_text: status_text.as_ref().map(Option::as_deref),
    };
    let changes = change.display_name.is_some() || change.status_text.is_some();
    let profile = state
        .store
        .update_profile(caller.user_id, change, now_millis())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    if changes {
        announce(&state, caller.user_id, &profile).await;
    }
    Ok(Json(profile))
}

/// The key of avatar `avatar_id` of `user`.
fn avatar_key(user: UserId, avatar_id: &str) -> Path {
    Path::from(format!("avatars/{user}/{avatar_id}"))
}

/// Sets the caller's avatar from the raw request body (`Content-Type` is
/// ignored): a PNG, JPEG, WebP or GIF, decided from its bytes, of at most
/// `PARLEY_AVATAR_MAX_BYTES` (1 MiB by default). It is cropped to its
/// centre square and re-encoded at most 256 px a side (PNG if it has
/// transparency, else JPEG); the previous avatar is deleted.
#[utoipa::path(put, path = "/users/me/avatar", tag = "users", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The image's bytes"),
    responses(
        (status = 200, description = "Stored: the profile with its new `avatar_url`", body = Profile),
        (status = 400, description = "`upload_incomplete`: the body broke off", body = ErrorBody),
        (status = 403, description = "`email_unverified`", body = ErrorBody),
        (status = 413, description = "`avatar_too_large`: over the size limit (answered as soon as it is passed)", body = ErrorBody),
        (status = 415, description = "`avatar_type_not_allowed`: the bytes are not a PNG, JPEG, WebP or GIF", body = ErrorBody),
        (status = 422, description = "`avatar_unreadable`: the image cannot be decoded within the limits; `validation_failed`: an empty body", body = ErrorBody),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store is unavailable, or too many uploads are in progress on this node", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn upload_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Profile>> {
    crate::accounts::require_verified(&state, caller.user_id).await?;
    state.limits.check_message(caller.user_id)?;
    let max_bytes = state.attachments.avatar_max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        avatar_outcome("too_large");
        return Err(ApiError::AvatarTooLarge { max_bytes });
    }
    let slot = state.attachments.upload_slot()?;
    let bytes = read_limited(body, max_bytes).await.inspect_err(|e| {
        if matches!(e, ApiError::AvatarTooLarge { .. }) {
            avatar_outcome("too_large");
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::validation("body", "the upload is empty"));
    }
    let head = &bytes[..bytes.len().min(crate::attachments::sniff::SNIFF_BYTES)];
    if !crate::attachments::sniff::sniff(head)
        .is_some_and(crate::attachments::sniff::is_thumbnailable)
    {
        avatar_outcome("type_not_allowed");
        return Err(ApiError::AvatarTypeNotAllowed);
    }
    let limits = state.attachments.decode_limits;
    let rendered = tokio::task::spawn_blocking(move || avatar::render(&bytes, limits))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the avatar decoder failed: {e}")))?;
    let avatar = match rendered {
        Ok(avatar) => avatar,
        Err(reason) => {
            tracing::info!(%reason, "avatar refused: not decodable within the limits");
            avatar_outcome("unreadable");
            return Err(ApiError::AvatarUnreadable);
        }
    };
    // From here on the store is written: its own task, so a client that
    // goes away does not leave an object nobody refers to.
    let user = caller.user_id;
    let storing = tokio::spawn(async move {
        let stored = store_avatar(&state, user, avatar).await;
        drop(slot);
        stored
    });
    let profile = storing
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the avatar task failed: {e}")))??;
    avatar_outcome("stored");
    Ok(Json(profile))
}

/// The body, refused as soon as it passes `max_bytes`.
async fn read_limited(body: Body, max_bytes: u64) -> ApiResult<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::UploadIncomplete)?;
        if (bytes.len() + chunk.len()) as u64 > max_bytes {
            return Err(ApiError::AvatarTooLarge { max_bytes });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Stores `avatar` as `user`'s avatar, records it, deletes the previous
/// one and announces the change.
async fn store_avatar(
    state: &AppState,
    user: UserId,
    avatar: avatar::Avatar,
) -> ApiResult<Profile> {
    let blobs = &state.attachments.blobs;
    let stored = StoredAvatar {
        avatar_id: uuid::Uuid::new_v4().simple().to_string(),
        content_type: avatar.content_type.to_owned(),
    };
    let key = avatar_key(user, &stored.avatar_id);
    if let Err(e) = blobs.put(&key, PutPayload::from(avatar.bytes)).await {
        avatar_outcome("error");
        return Err(ApiError::Unavailable(e.into()));
    }
    let replaced = match state
        .store
        .replace_avatar(user, Some(&stored), now_millis())
        .await
    {
        Ok(Some(replaced)) => replaced,
        failed => {
            avatar_outcome("error");
            delete_object(state, &key).await;
            return Err(match failed {
                Err(e) => e.into(),
                _ => ApiError::UserNotFound,
            });
        }
    };
    if let Some(previous) = &replaced.previous {
        delete_object(state, &avatar_key(user, previous)).await;
    }
    tracing::info!(avatar_id = %stored.avatar_id, side = avatar.side, "avatar set");
    announce(state, user, &replaced.profile).await;
    Ok(replaced.profile)
}

/// Deletes the object of `user`'s avatar `avatar_id` (an account's deletion).
pub(crate) async fn delete_avatar_object(state: &AppState, user: UserId, avatar_id: &str) {
    delete_object(state, &avatar_key(user, avatar_id)).await;
}

/// Deletes an object of the attachment store; a failure is logged (it
/// leaves an object no row refers to, which nobody can read).
async fn delete_object(state: &AppState, key: &Path) {
    match state.attachments.blobs.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(error = %e, %key, "deleting an avatar object failed"),
    }
}

/// Removes the caller's avatar (nothing to remove is fine).
#[utoipa::path(delete, path = "/users/me/avatar", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile, without an avatar", body = Profile),
        (status = 429, description = "`rate_limited` (shared with posting)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn delete_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<Profile>> {
    state.limits.check_message(caller.user_id)?;
    let replaced = state
        .store
        .replace_avatar(caller.user_id, None, now_millis())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    if let Some(previous) = &replaced.previous {
        delete_object(&state, &avatar_key(caller.user_id, previous)).await;
        announce(&state, caller.user_id, &replaced.profile).await;
    }
    Ok(Json(replaced.profile))
}

/// `GET /v1/users/{user_id}/avatar` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AvatarQuery {
    /// The version in `avatar_url`; ignored (it only makes a new avatar a
    /// new URL for caches).
    #[param(max_length = 64)]
    pub v: Option<String>,
}

/// The caller's own avatar.
#[utoipa::path(get, path = "/users/me/avatar", tag = "users", security(("bearer" = [])),
    params(AvatarQuery),
    responses(
        (status = 200, description = "The avatar", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "`avatar_not_found`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn my_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(_query): ApiQuery<AvatarQuery>,
) -> ApiResult<Response> {
    serve_avatar(&state, &caller, caller.user_id).await
}

/// A user's avatar (PNG or JPEG, at most 256 x 256), with the same access
/// as their profile.
#[utoipa::path(get, path = "/users/{user_id}/avatar", tag = "users", security(("bearer" = [])),
    params(("user_id" = i64, Path), AvatarQuery),
    responses(
        (status = 200, description = "The avatar, with `X-Content-Type-Options: nosniff`", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "`user_not_found` (also when the caller shares no room with the user), or `avatar_not_found`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id, of = %user_id))]
async fn user_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<UserId>,
    ApiQuery(_query): ApiQuery<AvatarQuery>,
) -> ApiResult<Response> {
    serve_avatar(&state, &caller, user_id).await
}

async fn serve_avatar(state: &AppState, caller: &AuthUser, user: UserId) -> ApiResult<Response> {
    let avatar = state
        .store
        .visible_avatar(caller.user_id, user)
        .await?
        .ok_or(ApiError::UserNotFound)?
        .ok_or(ApiError::AvatarNotFound)?;
    let got = match state
        .attachments
        .blobs
        .get(&avatar_key(user, &avatar.avatar_id))
        .await
    {
        Ok(got) => got,
        // Replaced between the read of the row and this.
        Err(object_store::Error::NotFound { .. }) => return Err(ApiError::AvatarNotFound),
        Err(e) => return Err(ApiError::Unavailable(e.into())),
    };
    let size = got.meta.size;
    let mut response = Response::new(Body::from_stream(got.into_stream()));
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()));
    h.insert(header::CONTENT_TYPE, value(&avatar.content_type)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    // A new avatar is a new URL, but who may see this one can change:
    // browsers may keep it a while, shared caches not at all.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    h.insert(header::ETAG, value(&format!("\"{}\"", avatar.avatar_id))?);
    Ok(response.into_response())
}

/// Publishes `user`'s new profile on the topics of their rooms (at most
/// [`PROFILE_FANOUT_ROOMS`]). The change is committed already: a failure
/// here is logged and counted, never the request's.
async fn announce(state: &AppState, user: UserId, profile: &Profile) {
    let rooms = match state.store.profile_rooms(user, PROFILE_FANOUT_ROOMS).await {
        Ok(rooms) => rooms,
        Err(e) => {
            tracing::warn!(error = %e, "listing the rooms to announce a profile change in failed");
            return;
        }
    };
    futures::stream::iter(rooms)
        .for_each_concurrent(PUBLISH_CONCURRENCY, |room_id| async move {
            let frame = ServerFrame::Profile {
                room_id,
                user_id: user,
                profile: profile.clone(),
            };
            if let Err(e) = state
                .broker
                .publish(Topic::Room(room_id), Encoding::Json.encode(&frame))
                .await
            {
                metrics::counter!("api_publish_failures_total").increment(1);
                tracing::warn!(error = %e, %room_id, "publishing a profile change failed");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_text_is_trimmed_bounded_and_free_of_control_characters() {
        let text = |s: &str| profile_text("display_name", Some(s.to_owned()), 5);
        assert_eq!(text("  Ada  ").unwrap(), Some("Ada".to_owned()));
        assert_eq!(text("   ").unwrap(), None);
        assert_eq!(text("ÅÅÅÅÅ").unwrap(), Some("ÅÅÅÅÅ".to_owned()));
        assert!(text("ÅÅÅÅÅÅ").is_err());
        assert!(text("a\u{7}b").is_err());
        assert!(text("a\nb").is_err());
        assert!(text("a\u{85}b").is_err());
        assert_eq!(profile_text("status_text", None, 5).unwrap(), None);
    }
}
