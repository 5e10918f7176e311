//! Server-Sent Events: a read-only stream of the same frames a WebSocket
//! connection gets, for clients that cannot use WebSockets (proxies that
//! do not pass upgrades, runtimes without a WebSocket client).
//!
//! `GET /sse?rooms=7,9` opens a stream as the caller (a single-use
//! `ticket` from the api's `POST /v1/sse/tickets`, or an `Authorization:
//! Bearer` access token), joins each room after checking membership
//! exactly as a `join` frame does, and registers the stream with the hub
//! like any connection: fan-out, ordering, gap recovery, slow-consumer
//! bound, revocation, drain and presence are the WebSocket path's own.
//! Only the framing differs ([`Encoder`]): each frame is one `data:` line
//! of JSON.
//!
//! Resume: every `event` and `joined` message carries an `id:` that is the
//! stream's position in every room, `7:42,9:13` (room:seq, ascending
//! rooms). A client reconnecting with it (`Last-Event-ID`, which an
//! `EventSource` sends by itself, or `last_event_id=` in the URL when it
//! opens a new stream with a new ticket) rejoins each room with that
//! position as `since_seq`: the same resume as a WebSocket `join`.
//!
//! The stream ends when the access token that opened it expires (plus the
//! grace, as an unrefreshed WebSocket connection), when its session is
//! revoked, when the client is too slow, or when the node drains; the last
//! message is `{"type":"close","code":...,"reason":...}` with the code a
//! WebSocket connection would get.

use crate::connection::{self, TOKEN_EXPIRED, WRITER_DRAIN, expiry_deadline};
use crate::hub::Conn;
use crate::outbox::{Framing, Outbox};
use crate::server::{json_error, unavailable};
use crate::{Inner, drain};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Deserialize;
use shared::RoomId;
use shared::auth::{TokenError, sse_ticket};
use shared::model::now_millis;
use shared::protocol::{Encoding, MAX_CLIENT_FRAME_BYTES, ServerFrame, close};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Most rooms one stream may join: every `id:` lists them all, so this
/// bounds what each event costs on the wire (about 20 bytes a room).
pub const MAX_SSE_ROOMS: usize = 100;

/// The `retry:` a stream opens with is this plus a random part of
/// [`RETRY_JITTER`]: clients of a node that dies do not all come back in
/// the same second. A drained stream gets the `reconnect` frame's delay.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
pub const RETRY_JITTER: Duration = Duration::from_secs(2);

/// Bytes between the outbox and the HTTP body. Small: the outbox is the
/// stream's queue (and its slow-consumer bound), not this pipe.
const PIPE_BYTES: usize = 16 * 1024;

/// The longest `Last-Event-ID` accepted (a position in every room).
const MAX_LAST_EVENT_ID: usize = MAX_SSE_ROOMS * 42;

/// The query of `GET /sse`.
#[derive(Debug, Default, Deserialize)]
pub struct SseQuery {
    /// Room ids, comma-separated.
    #[serde(default)]
    pub rooms: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    /// For a new stream that resumes an old one (a new `EventSource` with a
    /// new ticket cannot set the `Last-Event-ID` header).
    #[serde(default)]
    pub last_event_id: Option<String>,
}

/// Who is opening the stream, and until when.
struct Caller {
    user_id: shared::UserId,
    session_id: shared::SessionId,
    expires_at_ms: u64,
}

/// Opens a stream: checks the request, admits and authenticates the
/// caller, and returns the streaming response; the rooms are joined by
/// the stream's task, so the headers go out at once.
pub(crate) async fn open(
    node: Arc<Inner>,
    permit: OwnedSemaphorePermit,
    headers: &HeaderMap,
    query: SseQuery,
) -> Response {
    let rooms = match parse_rooms(query.rooms.as_deref().unwrap_or("")) {
        Ok(rooms) => rooms,
        Err(response) => return *response,
    };
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
        .or(query.last_event_id);
    let mut positions = match last_event_id.as_deref().map(parse_positions) {
        None => BTreeMap::new(),
        Some(Ok(positions)) => positions,
        Some(Err(())) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "Last-Event-ID must be the id of a message of this stream: room:seq pairs, comma-separated",
            );
        }
    };
    // A room of the old stream that this one does not list is forgotten.
    positions.retain(|room, _| rooms.contains(room));
    let caller = match authenticate(&node, headers, query.ticket.as_deref()).await {
        Ok(caller) => caller,
        Err(response) => {
            metrics::counter!("gateway_sse_streams_total", "outcome" => "refused").increment(1);
            return *response;
        }
    };

    let (write, read) = tokio::io::duplex(PIPE_BYTES);
    let retry = RETRY_BASE
        + Duration::from_millis(
            rand::thread_rng().gen_range(0..=u64::try_from(RETRY_JITTER.as_millis()).unwrap_or(0)),
        );
    let out = Outbox::with_framing(
        Box::pin(write),
        node.settings.outbound_queue,
        Framing::Sse(Encoder::new(retry, positions.clone())),
    );
    let conn = Arc::new(Conn {
        id: node.next_conn_id.fetch_add(1, Ordering::Relaxed),
        user_id: caller.user_id,
        session_id: caller.session_id,
        encoding: Encoding::Json,
        out,
        joined: Default::default(),
        present: Default::default(),
        logged_out: Default::default(),
        session: Default::default(),
    });
    if node.hub.register(conn.clone()).await.is_err() {
        node.hub.unregister(&conn);
        return unavailable("the gateway cannot subscribe right now; retry shortly");
    }
    // Checked once the user's notices reach this node: a revocation
    // committed after the check ends the stream through its notice.
    match connection::session_live(&node, &conn).await {
        Ok(true) => node.hub.announce(&conn),
        Ok(false) => {
            tracing::warn!(target: "security", user_id = %caller.user_id, session_id = %caller.session_id,
                "SSE stream for a revoked session");
            node.hub.unregister(&conn);
            return json_error(
                StatusCode::UNAUTHORIZED,
                "session_revoked",
                "the session was revoked",
            );
        }
        Err(e) => {
            node.hub.unregister(&conn);
            return store_failure(e);
        }
    }
    metrics::counter!("gateway_sse_streams_total", "outcome" => "open").increment(1);
    conn.send(&ServerFrame::Ready {
        id: None,
        user_id: conn.user_id,
        session_id: conn.session_id,
        heartbeat_ms: u64::try_from(node.settings.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
        max_frame_bytes: MAX_CLIENT_FRAME_BYTES,
        expires_at_ms: caller.expires_at_ms,
    });
    let task_node = node.clone();
    node.connections.spawn(async move {
        let _permit = permit;
        serve(task_node, conn, rooms, positions, caller.expires_at_ms).await;
    });

    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(read)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // nginx buffers proxied responses unless told not to; HAProxy and the
    // rest pass chunks through (docs/operations.md, "Server-Sent Events").
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // Any page may read a stream: nothing ambient (a cookie) authenticates
    // it, only the ticket or token the page itself presented.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The stream's life after the headers: joins, then waits for its end.
async fn serve(
    node: Arc<Inner>,
    conn: Arc<Conn>,
    rooms: Vec<RoomId>,
    positions: BTreeMap<RoomId, i64>,
    expires_at_ms: u64,
) {
    if node.slots.is_closed() {
        // Opened while the node began to drain, after its list of
        // connections to close was taken: drained like the others.
        drain::close_one(&conn);
    }
    for room in rooms {
        if conn.out.is_closed() {
            break;
        }
        let since = positions.get(&room).copied();
        connection::join(&node, &conn, None, room, since, false).await;
    }
    let expiry = tokio::time::sleep_until(expiry_deadline(
        expires_at_ms,
        node.settings.token_expiry_grace,
    ));
    tokio::select! {
        // Revoked, slow, drained, or the client went away (a write failed).
        () = conn.out.closed() => {}
        () = expiry => conn.out.close(TOKEN_EXPIRED),
    }
    node.hub.unregister(&conn);
    let reason = conn.out.close_reason();
    let code = reason.as_ref().map_or(close::GOING_AWAY, |r| r.code);
    metrics::counter!("gateway_disconnects_total", "reason" => close::name(code)).increment(1);
    tracing::debug!(user_id = %conn.user_id, code, "SSE stream closed");
    conn.out.finish(WRITER_DRAIN).await;
}

/// The caller, from a ticket (taken: it never works twice) or an access
/// token; its session is checked once the stream is registered, as for a
/// WebSocket `auth`.
async fn authenticate(
    node: &Inner,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<Caller, Box<Response>> {
    let unauthorized =
        |code: &str, message: &str| Box::new(json_error(StatusCode::UNAUTHORIZED, code, message));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = match (bearer, ticket) {
        (Some(token), _) => match node.verifier.verify(token) {
            Ok(identity) => Caller {
                user_id: identity.user_id,
                session_id: identity.session_id,
                expires_at_ms: connection::expiry_ms(&identity),
            },
            Err(TokenError::Expired) => {
                return Err(unauthorized(
                    "token_expired",
                    "the access token has expired",
                ));
            }
            Err(TokenError::Invalid) => {
                tracing::warn!(target: "security", "SSE stream with an invalid token");
                return Err(unauthorized("invalid_token", "invalid access token"));
            }
        },
        (None, Some(ticket)) => {
            let grant = match sse_ticket::hash(ticket) {
                None => None,
                Some(hash) => match node.store.take_sse_ticket(&hash, now_millis()).await {
                    Ok(grant) => grant,
                    Err(e) => return Err(Box::new(store_failure(e))),
                },
            };
            let Some(grant) = grant else {
                tracing::warn!(target: "security", "SSE stream with an unknown, used or expired ticket");
                return Err(unauthorized(
                    "invalid_ticket",
                    "the ticket is unknown, used or expired: get a new one (POST /v1/sse/tickets)",
                ));
            };
            Caller {
                user_id: grant.user_id,
                session_id: grant.session_id,
                expires_at_ms: u64::try_from(grant.token_expires_at).unwrap_or(0),
            }
        }
        (None, None) => {
            return Err(unauthorized(
                "missing_token",
                "send a ticket (?ticket=) or an Authorization: Bearer access token",
            ));
        }
    };
    Ok(caller)
}

fn store_failure(e: store::StoreError) -> Response {
    if e.is_unavailable() {
        tracing::warn!(error = %e, "cannot open an SSE stream: the database is unavailable");
    } else {
        tracing::error!(error = %e, "cannot open an SSE stream");
    }
    unavailable("the database is unavailable; retry shortly")
}

/// `rooms=7,9` (empty: no room, only the user's own notices).
fn parse_rooms(list: &str) -> Result<Vec<RoomId>, Box<Response>> {
    let bad =
        |code: &str, message: String| Box::new(json_error(StatusCode::BAD_REQUEST, code, &message));
    let mut rooms = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let room = part
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(RoomId)
            .ok_or_else(|| {
                bad(
                    "invalid_query",
                    "rooms must be room ids separated by commas".into(),
                )
            })?;
        if !rooms.contains(&room) {
            rooms.push(room);
        }
        if rooms.len() > MAX_SSE_ROOMS {
            return Err(bad(
                "too_many_rooms",
                format!("a stream may join at most {MAX_SSE_ROOMS} rooms"),
            ));
        }
    }
    Ok(rooms)
}

/// A stream position, `7:42,9:13`, as written by [`Encoder`].
fn parse_positions(id: &str) -> Result<BTreeMap<RoomId, i64>, ()> {
    if id.len() > MAX_LAST_EVENT_ID {
        return Err(());
    }
    let mut positions = BTreeMap::new();
    for pair in id.split(',').filter(|p| !p.is_empty()) {
        let (room, seq) = pair.split_once(':').ok_or(())?;
        let room = room.parse::<i64>().map_err(|_| ())?;
        let seq = seq.parse::<i64>().map_err(|_| ())?;
        if room <= 0 || seq < 0 {
            return Err(());
        }
        positions.insert(RoomId(room), seq);
    }
    Ok(positions)
}

/// Writes frames as Server-Sent Events and keeps the stream's position.
///
/// Every frame is one message, `data: <the frame's JSON>` (JSON never
/// holds a raw line break, so it is always one line), without an `event:`
/// name, so an `EventSource`'s `onmessage` sees them all and tells them
/// apart by `type`, as a WebSocket client does. `event` and `joined`
/// frames move the position of their room, and their message carries the
/// whole position as its `id:`; `left` drops the room from it.
pub struct Encoder {
    /// `retry:` to send with the first message (then None).
    first_retry: Option<Duration>,
    positions: BTreeMap<RoomId, i64>,
}

/// The fields of a frame the encoder looks at.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    room_id: Option<RoomId>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    after_ms: Option<u64>,
}

impl Encoder {
    /// A stream that resumes from `positions` starts its ids from them: a
    /// room's position is not lost when the stream is cut again before
    /// that room's `joined` went out.
    pub fn new(retry: Duration, positions: BTreeMap<RoomId, i64>) -> Self {
        Self {
            first_retry: Some(retry),
            positions,
        }
    }

    /// Appends one frame (JSON) as a message.
    pub fn data(&mut self, buf: &mut Vec<u8>, frame: &[u8]) {
        if let Some(retry) = self.first_retry.take() {
            let _ = writeln!(Text(buf), "retry: {}", retry.as_millis());
        }
        let mut moved = false;
        if let Ok(head) = serde_json::from_slice::<Head<'_>>(frame) {
            match (head.kind, head.room_id, head.seq) {
                ("event" | "joined", Some(room), Some(seq)) => {
                    self.positions.insert(room, seq);
                    moved = true;
                }
                ("left", Some(room), _) => {
                    moved = self.positions.remove(&room).is_some();
                }
                ("reconnect", _, _) => {
                    // Drained: the client waits this long before it comes back.
                    let _ = writeln!(Text(buf), "retry: {}", head.after_ms.unwrap_or(0));
                }
                _ => {}
            }
        }
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(frame);
        buf.push(b'\n');
        if moved {
            buf.extend_from_slice(b"id: ");
            let mut first = true;
            for (room, seq) in &self.positions {
                let sep = if first { "" } else { "," };
                first = false;
                let _ = write!(Text(buf), "{sep}{}:{seq}", room.0);
            }
            buf.push(b'\n');
        }
        buf.push(b'\n');
    }

    /// A comment: keeps the stream (and every proxy's idle timer) alive.
    pub fn heartbeat(buf: &mut Vec<u8>) {
        buf.extend_from_slice(b": ping\n\n");
    }

    /// The last message of a stream the gateway ends.
    pub fn close(&mut self, buf: &mut Vec<u8>, code: u16, reason: &str) {
        #[derive(serde::Serialize)]
        struct Close<'a> {
            r#type: &'static str,
            code: u16,
            reason: &'a str,
        }
        let frame = Close {
            r#type: "close",
            code,
            reason,
        };
        if let Ok(json) = serde_json::to_vec(&frame) {
            self.data(buf, &json);
        }
    }
}

/// `fmt::Write` onto a byte buffer.
struct Text<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buf: &[u8]) -> &str {
        std::str::from_utf8(buf).unwrap()
    }

    #[test]
    fn frames_become_messages_and_events_carry_the_whole_position() {
        let mut e = Encoder::new(Duration::from_millis(1500), BTreeMap::new());
        let mut buf = Vec::new();
        e.data(&mut buf, br#"{"type":"ready","user_id":1}"#);
        e.data(&mut buf, br#"{"type":"joined","room_id":9,"seq":4}"#);
        e.data(
            &mut buf,
            br#"{"type":"event","room_id":7,"seq":42,"kind":"message.created","body":"a\nb"}"#,
        );
        e.data(
            &mut buf,
            br#"{"type":"typing","room_id":7,"user_id":2,"active":true,"ttl_ms":6000}"#,
        );
        e.data(
            &mut buf,
            br#"{"type":"left","room_id":9,"reason":"removed"}"#,
        );
        assert_eq!(
            text(&buf),
            "retry: 1500\ndata: {\"type\":\"ready\",\"user_id\":1}\n\n\
             data: {\"type\":\"joined\",\"room_id\":9,\"seq\":4}\nid: 9:4\n\n\
             data: {\"type\":\"event\",\"room_id\":7,\"seq\":42,\"kind\":\"message.created\",\"body\":\"a\\nb\"}\nid: 7:42,9:4\n\n\
             data: {\"type\":\"typing\",\"room_id\":7,\"user_id\":2,\"active\":true,\"ttl_ms\":6000}\n\n\
             data: {\"type\":\"left\",\"room_id\":9,\"reason\":\"removed\"}\nid: 7:42\n\n"
        );
        assert_eq!(
            parse_positions("7:42,9:4").unwrap(),
            BTreeMap::from([(RoomId(7), 42), (RoomId(9), 4)])
        );
    }

    #[test]
    fn a_drained_stream_is_told_when_to_retry_and_ends_with_a_close_message() {
        let mut e = Encoder::new(Duration::ZERO, BTreeMap::new());
        let mut buf = Vec::new();
        e.data(&mut buf, br#"{"type":"reconnect","after_ms":640}"#);
        e.close(&mut buf, 1001, "gateway shutting down");
        let out = text(&buf);
        assert!(
            out.contains("retry: 640\ndata: {\"type\":\"reconnect\",\"after_ms\":640}\n\n"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "data: {\"type\":\"close\",\"code\":1001,\"reason\":\"gateway shutting down\"}\n\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_resumed_stream_keeps_the_positions_it_was_opened_with() {
        let mut e = Encoder::new(
            Duration::ZERO,
            BTreeMap::from([(RoomId(7), 40), (RoomId(9), 3)]),
        );
        let mut buf = Vec::new();
        e.data(&mut buf, br#"{"type":"joined","room_id":7,"seq":40}"#);
        assert!(text(&buf).ends_with("id: 7:40,9:3\n\n"), "{}", text(&buf));
    }

    #[test]
    fn positions_and_room_lists_are_checked() {
        for bad in ["7", "7:x", "x:1", "0:1", "7:-1", "7:1;8:2"] {
            assert!(parse_positions(bad).is_err(), "{bad}");
        }
        assert!(parse_positions(&"1:1,".repeat(MAX_SSE_ROOMS * 20)).is_err());
        assert_eq!(parse_positions("").unwrap(), BTreeMap::new());
        assert_eq!(
            parse_rooms(" 7, 9,7 ,").unwrap(),
            vec![RoomId(7), RoomId(9)]
        );
        assert!(parse_rooms("7,abc").is_err());
        assert!(parse_rooms("-3").is_err());
        let many: Vec<String> = (1..=MAX_SSE_ROOMS as i64 + 1)
            .map(|i| i.to_string())
            .collect();
        assert!(parse_rooms(&many.join(",")).is_err());
    }
}
