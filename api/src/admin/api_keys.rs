//! API keys of the server publish api, managed by an admin (`server/key.rs`
//! says how they are checked).

use super::Admin;
use crate::audit::{self, ClientMeta};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::server::key;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use shared::ApiKeyId;
use shared::model::now_millis;
use shared::rest::{ApiKeyList, CreateApiKeyRequest, CreatedApiKey, ErrorBody, SecurityEventKind};
use store::{CreateApiKeyError, NewApiKey};

/// Most rooms one key may be restricted to: a key for more is a key for any room.
const MAX_KEY_ROOMS: usize = 1_000;
const MAX_KEY_NAME_CHARS: usize = 100;

/// Creates an API key. The answer is the only time the key is shown: only
/// its hash is kept.
#[utoipa::path(post, path = "/admin/api-keys", tag = "admin", security(("bearer" = []), ("admin" = [])), request_body = CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created: the key (shown this once) and its description", body = CreatedApiKey),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`name`, `scopes`, `room_ids`: empty, too many or an unknown room) or `invalid_body` (an unknown scope)", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
pub async fn create_api_key(
    State(state): State<AppState>,
    _admin: Admin,
    meta: ClientMeta,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let name = req.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_KEY_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::validation(
            "name",
            "name must be 1 to 100 characters without control characters",
        ));
    }
    let mut scopes = req.scopes;
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(ApiError::validation(
            "scopes",
            "scopes must name at least one of rooms:publish, users:publish",
        ));
    }
    let room_ids = req.room_ids.map(|mut rooms| {
        rooms.sort();
        rooms.dedup();
        rooms
    });
    if let Some(rooms) = &room_ids
        && !(1..=MAX_KEY_ROOMS).contains(&rooms.len())
    {
        return Err(ApiError::validation(
            "room_ids",
            "room_ids must list 1 to 1000 rooms (leave it out for any room)",
        ));
    }
    let (secret, key_hash) = key::generate();
    let created = state
        .store
        .create_api_key(NewApiKey {
            id: ApiKeyId::new(),
            name,
            key_hash: &key_hash,
            scopes: &scopes,
            room_ids: room_ids.as_deref(),
            created_at: now_millis(),
        })
        .await
        .map_err(|e| match e {
            CreateApiKeyError::UnknownRoom(room) => ApiError::Validation {
                field: Some("room_ids".into()),
                message: format!("room_ids names a room that does not exist: {room}"),
            },
            CreateApiKeyError::Store(e) => e.into(),
        })?;
    tracing::info!(target: "security", api_key_id = %created.info.id, name = %created.info.name,
        scopes = ?created.info.scopes, "API key created");
    audit::record(
        &state,
        SecurityEventKind::ApiKeyCreated,
        None,
        &meta,
        serde_json::json!({"api_key_id": created.info.id, "name": created.info.name}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: secret,
            info: created.info,
        }),
    ))
}

/// Every API key, revoked ones too, newest first, without the keys themselves.
#[utoipa::path(get, path = "/admin/api-keys", tag = "admin", security(("bearer" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<ApiKeyList>> {
    Ok(Json(ApiKeyList {
        api_keys: state.store.api_keys().await?,
    }))
}

/// Revokes an API key: every api node refuses it from the next request on.
/// Revoking a revoked key changes nothing (204).
#[utoipa::path(delete, path = "/admin/api-keys/{key_id}", tag = "admin", security(("bearer" = []), ("admin" = [])),
    params(("key_id" = String, Path, description = "The key's id (a UUID)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`missing_token`: no `Authorization: Bearer` header", body = ErrorBody),
        (status = 403, description = "`forbidden`: neither an admin account nor the admin token", body = ErrorBody),
        (status = 404, description = "`api_key_not_found`", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(%key_id))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    _admin: Admin,
    meta: ClientMeta,
    ApiPath(key_id): ApiPath<ApiKeyId>,
) -> ApiResult<StatusCode> {
    if !state.store.revoke_api_key(key_id, now_millis()).await? {
        return Err(ApiError::ApiKeyNotFound);
    }
    tracing::info!(target: "security", api_key_id = %key_id, "API key revoked");
    audit::record(
        &state,
        SecurityEventKind::ApiKeyRevoked,
        None,
        &meta,
        serde_json::json!({"api_key_id": key_id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
