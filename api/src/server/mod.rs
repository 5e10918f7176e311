//! The server publish api: backends push events into rooms and to users
//! with an API key (`key.rs`), without a user's token.
//!
//! - A custom event is part of a room's timeline: numbered, stored and
//!   delivered like a message (`Store::append_custom_event`, then
//!   `Events::room_event`). An `Idempotency-Key` makes a retry return the
//!   first result.
//! - A signal is ephemeral: published on the room's or the user's topic and
//!   passed on by the gateways, never stored. An `Idempotency-Key` is
//!   checked for shape and otherwise ignored: a signal is delivered at most
//!   once to whoever is connected, so a retried one is at worst a duplicate
//!   the application tells apart by its payload.

pub mod key;

use crate::domain::{EventName, IdempotencyKey};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use key::ApiKey;
use sha2::{Digest, Sha256};
use shared::model::{MAX_CUSTOM_PAYLOAD_BYTES, RoomEvent, now_millis};
use shared::rest::{ApiScope, ErrorBody, PublishRequest};
use shared::{RoomId, UserId};
use store::{CustomOutcome, Idempotency, NewCustomEvent};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish_room_event))
        .routes(routes!(publish_room_signal))
        .routes(routes!(publish_user_signal))
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on the answer to a retried publish: the stored original.
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A publish request once checked: a valid name, a payload within bounds.
struct Publish {
    name: EventName,
    payload: serde_json::Value,
}

impl Publish {
    fn parse(req: PublishRequest) -> ApiResult<Self> {
        let name = EventName::parse(&req.name)?;
        let size = serde_json::to_vec(&req.payload)
            .map(|json| json.len())
            .unwrap_or(usize::MAX);
        if size > MAX_CUSTOM_PAYLOAD_BYTES {
            return Err(ApiError::EventPayloadTooLarge {
                max_bytes: MAX_CUSTOM_PAYLOAD_BYTES,
            });
        }
        Ok(Self {
            name,
            payload: req.payload,
        })
    }
}

/// The request's `Idempotency-Key`, if it sent one.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<IdempotencyKey>> {
    headers
        .get(&IDEMPOTENCY_KEY)
        .map(|v| IdempotencyKey::parse(v.as_bytes()))
        .transpose()
}

/// What a retry must repeat exactly to count as the same request: the room,
/// the name and the payload (as a JSON value: key order and spacing aside).
fn request_hash(room: RoomId, publish: &Publish) -> String {
    let payload = serde_json::to_string(&publish.payload).unwrap_or_default();
    Sha256::digest(format!("{room}\n{}\n{payload}", publish.name.as_str()).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Appends a custom event to a room's timeline: numbered after the room's
/// newest event, in history, and delivered live to every connection that
/// joined the room, like a message. Its `sender_id` is the API key's own
/// account. With an `Idempotency-Key`, a retry of the same request returns
/// the stored event (200, `Idempotent-Replayed: true`) and stores nothing.
#[utoipa::path(post, path = "/server/rooms/{room_id}/events", tag = "server", security(("api_key" = [])),
    params(
        ("room_id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 of `A-Z a-z 0-9 - _ . :`; remembered for 24 h per API key"),
    ),
    request_body = PublishRequest,
    responses(
        (status = 201, description = "Stored and published", body = RoomEvent),
        (status = 200, description = "Already stored with this Idempotency-Key: the original (`Idempotent-Replayed: true`)", body = RoomEvent,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 401, description = "`missing_api_key`, `invalid_api_key` or `api_key_revoked`", body = ErrorBody),
        (status = 403, description = "`missing_scope` (`rooms:publish`) or `room_not_allowed` (outside the key's `room_ids`)", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 413, description = "`event_payload_too_large`: the payload is over 16 KiB", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`name`, or the `Idempotency-Key` header) or `idempotency_key_reused` (the key was used for another request)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the key's allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(api_key_id = %key.id, %room_id))]
async fn publish_room_event(
    State(state): State<AppState>,
    key: ApiKey,
    ApiPath(room_id): ApiPath<RoomId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PublishRequest>,
) -> ApiResult<Response> {
    key.require(ApiScope::RoomsPublish)?;
    key.may_publish_into(room_id)?;
    let publish = Publish::parse(req)?;
    let idempotency_key = idempotency_key(&headers)?;
    let hash = request_hash(room_id, &publish);
    let outcome = state
        .store
        .append_custom_event(NewCustomEvent {
            room_id,
            sender_id: key.user_id,
            name: publish.name.as_str(),
            payload: &publish.payload,
            created_at: now_millis(),
            idempotency: idempotency_key.as_ref().map(|k| Idempotency {
                api_key_id: key.id,
                key: k.as_str(),
                request_hash: &hash,
            }),
        })
        .await?;
    match outcome {
        CustomOutcome::Created(event) => {
            metrics::counter!("api_server_events_published_total").increment(1);
            state.events.room_event(&event).await;
            Ok((StatusCode::CREATED, Json(event)).into_response())
        }
        CustomOutcome::Existing {
            request_hash,
            event,
        } => {
            if request_hash != hash {
                return Err(ApiError::IdempotencyKeyReused);
            }
            let event = event.ok_or(ApiError::RoomNotFound)?;
            let mut response = (StatusCode::OK, Json(event)).into_response();
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        CustomOutcome::RoomNotFound => Err(ApiError::RoomNotFound),
    }
}

/// Sends an ephemeral `signal` frame to every connection that joined the
/// room now. Not stored, not numbered, not in history; accepted (202) once
/// published to the gateways. An `Idempotency-Key` is accepted and ignored.
#[utoipa::path(post, path = "/server/rooms/{room_id}/signals", tag = "server", security(("api_key" = [])),
    params(
        ("room_id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Checked for shape, otherwise ignored (signals are at most once)"),
    ),
    request_body = PublishRequest,
    responses(
        (status = 202, description = "Published to the gateways"),
        (status = 401, description = "`missing_api_key`, `invalid_api_key` or `api_key_revoked`", body = ErrorBody),
        (status = 403, description = "`missing_scope` (`rooms:publish`) or `room_not_allowed` (outside the key's `room_ids`)", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 413, description = "`event_payload_too_large`: the payload is over 16 KiB", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`name`, or the `Idempotency-Key` header)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the key's allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(api_key_id = %key.id, %room_id))]
async fn publish_room_signal(
    State(state): State<AppState>,
    key: ApiKey,
    ApiPath(room_id): ApiPath<RoomId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PublishRequest>,
) -> ApiResult<StatusCode> {
    key.require(ApiScope::RoomsPublish)?;
    key.may_publish_into(room_id)?;
    let publish = Publish::parse(req)?;
    idempotency_key(&headers)?;
    if state.store.last_seq(room_id).await?.is_none() {
        return Err(ApiError::RoomNotFound);
    }
    state
        .events
        .room_signal(room_id, publish.name.as_str(), &publish.payload)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    metrics::counter!("api_server_signals_published_total", "to" => "room").increment(1);
    Ok(StatusCode::ACCEPTED)
}

/// Sends an ephemeral `signal` frame to every connection of the user, on
/// any gateway, whatever rooms it joined. Not stored; accepted (202) once
/// published to the gateways. An `Idempotency-Key` is accepted and ignored.
#[utoipa::path(post, path = "/server/users/{user_id}/signals", tag = "server", security(("api_key" = [])),
    params(
        ("user_id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Checked for shape, otherwise ignored (signals are at most once)"),
    ),
    request_body = PublishRequest,
    responses(
        (status = 202, description = "Published to the gateways"),
        (status = 401, description = "`missing_api_key`, `invalid_api_key` or `api_key_revoked`", body = ErrorBody),
        (status = 403, description = "`missing_scope` (`users:publish`)", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 413, description = "`event_payload_too_large`: the payload is over 16 KiB", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`name`, or the `Idempotency-Key` header)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the key's allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(api_key_id = %key.id, %user_id))]
async fn publish_user_signal(
    State(state): State<AppState>,
    key: ApiKey,
    ApiPath(user_id): ApiPath<UserId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PublishRequest>,
) -> ApiResult<StatusCode> {
    key.require(ApiScope::UsersPublish)?;
    let publish = Publish::parse(req)?;
    idempotency_key(&headers)?;
    if state.store.user(user_id).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    state
        .events
        .user_signal(user_id, publish.name.as_str(), &publish.payload)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    metrics::counter!("api_server_signals_published_total", "to" => "user").increment(1);
    Ok(StatusCode::ACCEPTED)
}
