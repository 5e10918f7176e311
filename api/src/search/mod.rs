//! Message search: `GET /v1/search/messages`.
//!
//! Full-text search over the messages of the rooms the caller is a member
//! of now, best first, with a highlighted excerpt of each hit. The query
//! syntax is parsed here (`query.rs`) and the excerpt built here
//! (`snippet.rs`), so both deployment modes accept the same input and
//! answer with the same markup; the matching itself is the store's, on
//! PostgreSQL's full-text index or SQLite's FTS5 (`store/src/search.rs`).
//!
//! Who can find what: membership is a join in the store's statement, so a
//! search only ever reaches the caller's current rooms (a member who left
//! a room cannot read its history, and cannot search it either). A
//! `room_id` filter naming another room is answered 404 `room_not_found`,
//! as every room endpoint answers a stranger, rather than an empty page a
//! client would take for "no matches".
//!
//! Pages: `next_cursor` is an opaque token holding where the page ended
//! (the store's keyset) and a fingerprint of the search it belongs to, so
//! a cursor replayed with another query or other filters is refused
//! instead of silently answering something else.

pub mod query;
pub mod snippet;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, AuthUser};
use crate::rooms::membership_of;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use shared::RoomId;
use shared::model::time_from_millis;
use shared::rest::{ErrorBody, SearchHit, SearchPage, SearchQuery};
use store::{SearchKey, SearchRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_messages))
}

/// Hits per page when the client does not say.
const DEFAULT_PAGE: u32 = 20;
/// Most hits per page: each carries an excerpt built from its whole body.
const MAX_PAGE: u32 = 50;

/// Finds messages in the caller's rooms (see docs/api.md for the query
/// syntax), best first, each with an HTML excerpt whose matched words are
/// in `<mark>`. Filters: one room, one sender, a time range; `cursor`
/// continues a search.
#[utoipa::path(get, path = "/search/messages", tag = "messages", security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of hits, best first", body = SearchPage),
        (status = 404, description = "`room_not_found`: `room_id` is not a room the caller is a member of", body = ErrorBody),
        (status = 422, description = "`validation_failed` (`field` names it): `q` empty, too long, of too many words or of nothing to find; `before`/`after` not RFC 3339 times or out of order; `limit` out of range; `cursor` not one of this search. `search_too_broad`: the search ran past its time limit", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's search allowance is spent", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn search_messages(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> ApiResult<Json<SearchPage>> {
    state.limits.check_search(caller.user_id)?;
    let expr = query::parse(query.q.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation("limit", "limit must be 1 to 50"));
    }
    let before = query
        .before
        .as_deref()
        .map(|t| time("before", t))
        .transpose()?;
    let after = query
        .after
        .as_deref()
        .map(|t| time("after", t))
        .transpose()?;
    if let (Some(before), Some(after)) = (before, after)
        && after >= before
    {
        return Err(ApiError::validation(
            "after",
            "after must be earlier than before",
        ));
    }
    let fingerprint = fingerprint(&query, before, after);
    let page_after = query
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, &fingerprint))
        .transpose()?;
    if let Some(room) = query.room_id {
        membership_of(&state, room, caller.user_id).await?;
    }
    let hits = state
        .store
        .search_messages(&SearchRequest {
            caller: caller.user_id,
            expr: &expr,
            room: query.room_id,
            sender: query.sender_id,
            before,
            after,
            page_after,
            limit,
        })
        .await?;
    metrics::counter!("api_searches_total").increment(1);
    let next_cursor = match hits.last() {
        Some(last) if hits.len() == limit as usize => Some(encode_cursor(&fingerprint, last.key())),
        _ => None,
    };
    let hits = hits
        .into_iter()
        .map(|hit| SearchHit {
            snippet: snippet::snippet(&hit.body, &expr),
            room_id: hit.room_id,
            seq: hit.seq,
            sender_id: hit.sender_id,
            created_at: time_from_millis(hit.created_at),
            edited_at: hit.edited_at.map(time_from_millis),
            rank: hit.score,
        })
        .collect();
    Ok(Json(SearchPage { hits, next_cursor }))
}

/// An RFC 3339 time parameter, in ms since the epoch.
fn time(field: &'static str, value: &str) -> ApiResult<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::validation(
                field,
                format!("{field} must be an RFC 3339 time, such as 2026-12-01T09:30:00Z"),
            )
        })
}

/// What identifies a search across its pages (everything but `limit`
/// and `cursor`): 8 bytes of a SHA-256, hex.
fn fingerprint(query: &SearchQuery, before: Option<i64>, after: Option<i64>) -> String {
    let canonical = serde_json::json!([
        query.q,
        query.room_id.map(|r| r.0),
        query.sender_id.map(|u| u.0),
        before,
        after,
    ]);
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Cursor format, version 1: `1.<fingerprint>.<score bits, hex>.<created_at>.<room_id>.<seq>`,
/// base64url. The score travels as its exact bits: the keyset compares it
/// for equality with the score the next page's statement computes.
fn encode_cursor(fingerprint: &str, key: SearchKey) -> String {
    let raw = format!(
        "1.{fingerprint}.{:016x}.{}.{}.{}",
        key.score.to_bits(),
        key.created_at,
        key.room_id.0,
        key.seq
    );
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str, fingerprint: &str) -> ApiResult<SearchKey> {
    let invalid = || ApiError::validation("cursor", "cursor is not a next_cursor of this search");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let parts: Vec<&str> = raw.split('.').collect();
    let [version, print, score, created_at, room, seq] = parts[..] else {
        return Err(invalid());
    };
    if version != "1" || print != fingerprint {
        return Err(invalid());
    }
    let score = u64::from_str_radix(score, 16)
        .map(f64::from_bits)
        .ok()
        .filter(|s| s.is_finite())
        .ok_or_else(invalid)?;
    Ok(SearchKey {
        score,
        created_at: created_at.parse().map_err(|_| invalid())?,
        room_id: RoomId(room.parse().map_err(|_| invalid())?),
        seq: seq.parse().map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(q: &str) -> SearchQuery {
        SearchQuery {
            q: Some(q.to_owned()),
            ..SearchQuery::default()
        }
    }

    #[test]
    fn a_cursor_round_trips_for_its_own_search_only() {
        let key = SearchKey {
            score: 0.0607927,
            created_at: 1_764_000_000_123,
            room_id: RoomId(42),
            seq: 7,
        };
        let mine = fingerprint(&search("deploy"), None, None);
        let cursor = encode_cursor(&mine, key);
        assert_eq!(decode_cursor(&cursor, &mine).unwrap(), key);
        let other = fingerprint(&search("deploy"), Some(1), None);
        assert!(decode_cursor(&cursor, &other).is_err());
        for junk in ["", "x", "MS4y", "%%%", &cursor[1..]] {
            assert!(decode_cursor(junk, &mine).is_err(), "{junk}");
        }
    }

    #[test]
    fn times_must_be_rfc3339() {
        assert_eq!(time("before", "1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(time("before", "1970-01-01T01:00:01+01:00").unwrap(), 1000);
        assert!(time("before", "yesterday").is_err());
        assert!(time("before", "").is_err());
    }
}
