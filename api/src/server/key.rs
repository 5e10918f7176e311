//! API keys: how they are made, hashed and checked on each request.
//!
//! A key is `pk_` and 32 random bytes (base64url), sent as
//! `Authorization: Bearer pk_...`. Only its SHA-256 is stored: the key has
//! 256 bits of entropy, so a fast hash cannot be reversed by guessing and a
//! slow one (argon2) would only add CPU to every request. Each request looks
//! its key up by that hash, so a revocation on any api node takes effect on
//! every node at once; the lookup is one indexed read, like the session
//! check of user requests.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use shared::model::now_millis;
use shared::rest::ApiScope;
use shared::{ApiKeyId, RoomId, UserId};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a key pasted in the wrong place (a log,
/// a repository) is recognisable, and a user token sent here is told apart
/// without a database read.
pub const KEY_PREFIX: &str = "pk_";

/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// `last_used_at` is written at most this often per key (in ms), so a
/// busy key does not cost a write per request.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A new key, and the hash to store.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&key);
    (key, hash)
}

/// Lowercase hex SHA-256 of a key (see the module doc for why a fast hash).
pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A caller holding a live API key, checked against the store on this
/// request and within its rate limit.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: ApiKeyId,
    /// The key's account: the sender of what it publishes.
    pub user_id: UserId,
    pub scopes: Vec<ApiScope>,
    pub room_ids: Option<Vec<RoomId>>,
}

impl ApiKey {
    pub fn require(&self, scope: ApiScope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            tracing::warn!(target: "security", api_key_id = %self.id, scope = scope.as_str(),
                "API key used without the scope");
            Err(ApiError::MissingScope(scope.as_str()))
        }
    }

    pub fn may_publish_into(&self, room: RoomId) -> Result<(), ApiError> {
        match &self.room_ids {
            Some(rooms) if !rooms.contains(&room) => {
                tracing::warn!(target: "security", api_key_id = %self.id, %room,
                    "API key used for a room outside its list");
                Err(ApiError::RoomNotAllowed)
            }
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::MissingApiKey)?;
        if !presented.starts_with(KEY_PREFIX) {
            tracing::warn!(target: "security", "server api called without an API key");
            return Err(ApiError::InvalidApiKey);
        }
        let presented_hash = hash(presented);
        let Some(found) = state.store.api_key_by_hash(&presented_hash).await? else {
            tracing::warn!(target: "security", "server api called with an unknown API key");
            return Err(ApiError::InvalidApiKey);
        };
        // The row was found by this hash; compared again without an early
        // exit, so no code path depends on how much of it matched.
        if !bool::from(found.key_hash.as_bytes().ct_eq(presented_hash.as_bytes())) {
            return Err(ApiError::InvalidApiKey);
        }
        let id = found.info.id;
        if found.revoked {
            tracing::warn!(target: "security", api_key_id = %id, "server api called with a revoked API key");
            return Err(ApiError::ApiKeyRevoked);
        }
        state.limits.check_server_publish(id)?;
        let now = now_millis();
        if found
            .last_used_at
            .is_none_or(|at| at < now - LAST_USED_RESOLUTION_MS)
            && let Err(e) = state
                .store
                .touch_api_key(id, now, now - LAST_USED_RESOLUTION_MS)
                .await
        {
            // Bookkeeping only: the request goes on.
            tracing::warn!(error = %e, api_key_id = %id, "recording an API key's use failed");
        }
        Ok(ApiKey {
            id,
            user_id: found.info.user_id,
            scopes: found.info.scopes,
            room_ids: found.info.room_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed_to_hex() {
        let (a, hash_a) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43, "32 bytes of base64url");
        assert_eq!(hash_a, hash(&a));
        assert_eq!(hash_a.len(), 64);
        assert!(
            hash_a
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
