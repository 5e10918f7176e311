//! One WebSocket connection, from the first frame to the close.
//!
//! One task per connection reads and answers the client's frames. Nothing
//! here waits to write: replies, room events and pings go through the
//! connection's [`Outbox`](crate::outbox::Outbox), written by whoever
//! produced them, so the node's fan-out never waits on a client and an idle
//! connection costs one parked task. The code is generic over the byte
//! streams so tests can run it without sockets.
//!
//! The connection lives as long as its access token plus a grace
//! (`PARLEY_TOKEN_EXPIRY_GRACE`): a `refresh` with a newer token of the same
//! user and session moves that deadline, which is one timer in the read
//! loop's `select!`, owned by the connection's task (no task of its own).
//!
//! A connection the gateway closes keeps its read half a little longer:
//! what the client still sends is read and discarded until the client
//! answers the close (bounded in time and bytes), because a socket dropped
//! with unread input is reset, and the reset can overtake the close frame.

use crate::Inner;
use crate::hub::{Conn, JoinError, ReadVerdict, TypingVerdict};
use crate::outbox::{CloseReason, Outbox, Sink};
use broker::Topic;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError, WebSocketRead};
use shared::RoomId;
use shared::auth::{Identity, TokenError};
use shared::model::now_millis;
use shared::protocol::{
    ClientFrame, Encoding, ErrorCode, LeftReason, MAX_CLIENT_FRAME_BYTES, MAX_ROOMS_PER_CONNECTION,
    ServerFrame, close,
};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most grace added to twice the heartbeat interval before a silent client
/// is declared dead (one more interval, up to this): covers a slow network.
const HEARTBEAT_GRACE: Duration = Duration::from_secs(5);

/// How long a closing connection may take to write its last frames.
pub(crate) const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// After the close frame is written, how long the gateway keeps reading
/// (and discarding) what the client still sends, waiting for its end of
/// stream. A socket dropped with unread bytes in its receive buffer is
/// reset (RST) instead of closed, and a reset destroys whatever of the
/// close frame the client has not received yet: a flooding client (4008)
/// would see a reset, not why.
const LINGER: Duration = Duration::from_secs(2);

/// A pause this long ends the linger early: the client has stopped sending
/// (it answered the close and keeps its socket, or it is gone), so nothing
/// unread is left to cause a reset.
const LINGER_QUIET: Duration = Duration::from_millis(250);

/// Most bytes discarded while closing: a client that keeps sending past
/// this is reset, as it would be without the linger.
const LINGER_BYTES: usize = 256 * 1024;

/// The read error of a client that is gone (end of stream, reset).
const CONNECTION_LOST: CloseReason = CloseReason {
    code: close::GOING_AWAY,
    reason: "connection lost",
};

/// The echo of the client's own close frame.
const CLIENT_CLOSED: CloseReason = CloseReason {
    code: close::NORMAL,
    reason: "",
};

/// Serves one upgraded connection until it ends.
pub(crate) async fn serve<R>(node: Arc<Inner>, mut read: R, write: Sink, peer: Option<SocketAddr>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    // The reader borrows the stream, so what is left of it can be drained
    // after the close (see `LINGER`).
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(&mut read, tokio::io::sink(), Role::Server);
    // fastwebsockets refuses a frame whose length is >= its limit; ours is
    // inclusive (`ready` advertises the largest frame that is accepted).
    reader.set_max_message_size(MAX_CLIENT_FRAME_BYTES + 1);
    let out = Outbox::new(write, node.settings.outbound_queue);
    let mut assembler = Assembler::default();

    let (conn, expires_at_ms) = match authenticate(&node, &mut reader, &out, &mut assembler).await {
        Ok(authenticated) => authenticated,
        Err(reason) => {
            metrics::counter!("gateway_connections_total", "outcome" => close::name(reason.code))
                .increment(1);
            tracing::debug!(
                ?peer,
                code = reason.code,
                reason = reason.reason,
                "connection refused"
            );
            let client_may_send = client_may_still_send(&reason);
            out.close(reason);
            drop(reader);
            finish(&out, &mut read, client_may_send).await;
            return;
        }
    };
    metrics::counter!("gateway_connections_total", "outcome" => "ready").increment(1);
    if node.slots.is_closed() {
        // Authenticated while the node began to drain, after its list of
        // connections to close was taken: drained like the others.
        crate::drain::close_one(&conn);
    }

    let mut session = Session {
        node: node.clone(),
        conn: conn.clone(),
        limiter: FrameLimiter::new(&node),
        expires_at_ms,
    };
    let reason = session.read_loop(&mut reader, &mut assembler).await;
    drop(reader);
    let client_may_send = client_may_still_send(&reason);
    conn.out.close(reason.clone());
    metrics::counter!("gateway_disconnects_total", "reason" => close::name(reason.code))
        .increment(1);
    node.hub.unregister(&conn);
    tracing::debug!(?peer, user_id = %conn.user_id, code = reason.code, reason = reason.reason, "connection closed");
    finish(&conn.out, &mut read, client_may_send).await;
}

/// Whether a connection ending for `reason` may still have bytes coming
/// from the client: unless the client closed (its close frame, or the end
/// of its stream), it may.
fn client_may_still_send(reason: &CloseReason) -> bool {
    *reason != CONNECTION_LOST && *reason != CLIENT_CLOSED
}

/// Writes the queued close frame and ends the write half; meanwhile and
/// for a short while after, reads and discards what the client still sends
/// (see [`LINGER`]), so the socket is closed, not reset.
async fn finish<R: AsyncRead + Unpin>(out: &Outbox, read: &mut R, client_may_send: bool) {
    if !client_may_send {
        out.finish(WRITER_DRAIN).await;
        return;
    }
    let mut discard = Discard {
        buf: vec![0; 4096],
        budget: LINGER_BYTES,
    };
    let written = out.finish(WRITER_DRAIN);
    tokio::pin!(written);
    loop {
        tokio::select! {
            () = &mut written => break,
            more = discard.chunk(read) => if !more {
                // The client is done (or over budget): only the write is left.
                written.await;
                return;
            },
        }
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        let pause_over = (tokio::time::Instant::now() + LINGER_QUIET).min(deadline);
        match tokio::time::timeout_at(pause_over, discard.chunk(read)).await {
            Ok(true) => continue,
            // Its end of stream came, it went quiet, or time is up.
            Ok(false) | Err(_) => return,
        }
    }
}

/// What a closing connection reads and throws away, bounded in bytes.
struct Discard {
    buf: Vec<u8>,
    budget: usize,
}

impl Discard {
    /// Reads one chunk; false at the end of the stream, on an error, or
    /// once the budget is spent.
    async fn chunk<R: AsyncRead + Unpin>(&mut self, read: &mut R) -> bool {
        if self.budget == 0 {
            return false;
        }
        match read.read(&mut self.buf).await {
            Ok(n) if n > 0 => {
                self.budget = self.budget.saturating_sub(n);
                true
            }
            _ => false,
        }
    }
}

/// Reads the first frame, which must be a valid `auth`, and registers the
/// connection: the connection and its token's expiry (ms since the epoch).
/// On failure, the close to send.
async fn authenticate<R>(
    node: &Arc<Inner>,
    reader: &mut WebSocketRead<R>,
    out: &Arc<Outbox>,
    assembler: &mut Assembler,
) -> Result<(Arc<Conn>, u64), CloseReason>
where
    R: AsyncRead + Unpin,
{
    let first = tokio::time::timeout(
        node.settings.auth_timeout,
        next_message(reader, assembler, &mut |payload: Bytes| out.pong(&payload)),
    )
    .await;
    let (encoding, bytes) = match first {
        Err(_) => {
            return Err(CloseReason {
                code: close::AUTH_TIMEOUT,
                reason: "no auth frame in time",
            });
        }
        Ok(Err(reason)) => return Err(reason),
        Ok(Ok(Message::Data(encoding, bytes))) => (encoding, bytes),
        Ok(Ok(Message::Close | Message::Pong)) => {
            return Err(CloseReason {
                code: close::UNAUTHORIZED,
                reason: "the first frame must be auth",
            });
        }
    };
    let (id, token) = match encoding.decode_client(&bytes) {
        Ok(ClientFrame::Auth { id, token }) => (id, token),
        _ => {
            return Err(CloseReason {
                code: close::UNAUTHORIZED,
                reason: "the first frame must be auth",
            });
        }
    };
    let identity = match shared::auth::sse_ticket::hash(&token) {
        // A single-use ticket (POST /v1/sse/tickets) instead of a token:
        // what a browser page in cookie mode, which cannot read its
        // access token, opens a socket with.
        Some(hash) => match node.store.take_sse_ticket(&hash, now_millis()).await {
            Ok(Some(grant)) => shared::auth::Identity {
                user_id: grant.user_id,
                session_id: grant.session_id,
                expires_at: u64::try_from(grant.token_expires_at / 1000).unwrap_or(0),
            },
            Ok(None) => {
                tracing::warn!(target: "security", "WebSocket auth with an unknown, used or expired ticket");
                return Err(CloseReason {
                    code: close::UNAUTHORIZED,
                    reason: "invalid ticket",
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a WebSocket ticket");
                return Err(CloseReason {
                    code: close::TRY_AGAIN_LATER,
                    reason: "unavailable",
                });
            }
        },
        None => node.verifier.verify(&token).map_err(|e| match e {
            TokenError::Expired => TOKEN_EXPIRED,
            TokenError::Invalid => {
                tracing::warn!(target: "security", "WebSocket auth with an invalid token");
                CloseReason {
                    code: close::UNAUTHORIZED,
                    reason: "invalid access token",
                }
            }
        })?,
    };
    let conn = Arc::new(Conn {
        id: node.next_conn_id.fetch_add(1, Ordering::Relaxed),
        user_id: identity.user_id,
        session_id: identity.session_id,
        encoding,
        out: out.clone(),
        joined: Default::default(),
        present: Default::default(),
        logged_out: Default::default(),
        session: Default::default(),
    });
    if node.hub.register(conn.clone()).await.is_err() {
        // The broker did not confirm the user's subscription in time
        // (Redis is down or reconnecting): try again later.
        node.hub.unregister(&conn);
        return Err(CloseReason {
            code: close::TRY_AGAIN_LATER,
            reason: "unavailable",
        });
    }
    // Checked once the user's notices reach this node: a revocation
    // committed after the check closes the socket through its notice.
    match session_live(node, &conn).await {
        Ok(true) => node.hub.announce(&conn),
        Ok(false) => {
            tracing::warn!(target: "security", user_id = %identity.user_id, session_id = %identity.session_id,
                "WebSocket auth with a token of a revoked session");
            node.hub.unregister(&conn);
            return Err(CloseReason {
                code: close::SESSION_REVOKED,
                reason: "session revoked",
            });
        }
        Err(e) if e.is_unavailable() => {
            // The database is down or the connection died: not this
            // client's fault nor a bug; it reconnects after a backoff.
            tracing::warn!(error = %e, "cannot check the session: the database is unavailable");
            node.hub.unregister(&conn);
            return Err(CloseReason {
                code: close::TRY_AGAIN_LATER,
                reason: "unavailable",
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check the session");
            node.hub.unregister(&conn);
            return Err(CloseReason {
                code: close::INTERNAL_ERROR,
                reason: "internal error",
            });
        }
    }
    conn.send(&ServerFrame::Ready {
        id,
        user_id: conn.user_id,
        session_id: conn.session_id,
        heartbeat_ms: u64::try_from(node.settings.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
        max_frame_bytes: MAX_CLIENT_FRAME_BYTES,
        expires_at_ms: expiry_ms(&identity),
    });
    Ok((conn, expiry_ms(&identity)))
}

/// Whether the session of registered connection `conn` may be used: known
/// from a live connection of it on this node ([`crate::hub::Hub::vouch`]),
/// else asked of the store, whose answer then vouches for the next ones.
pub(crate) async fn session_live(node: &Inner, conn: &Conn) -> Result<bool, store::StoreError> {
    let now = now_millis();
    if node.hub.vouch(conn, now) {
        return Ok(true);
    }
    // Read first: a notice missed while the store is asked moves it, and
    // this check then vouches for nothing.
    let epoch = node.hub.notice_epoch();
    match node
        .store
        .session_active_until(conn.session_id, now)
        .await?
    {
        Some(until) => {
            node.hub.session_checked(conn, epoch, until);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A token's expiry in milliseconds since the Unix epoch.
pub(crate) fn expiry_ms(identity: &Identity) -> u64 {
    identity.expires_at.saturating_mul(1000)
}

/// When a connection whose token expires at `expires_at_ms` is closed:
/// its expiry plus the grace, on the runtime's clock.
pub(crate) fn expiry_deadline(expires_at_ms: u64, grace: Duration) -> tokio::time::Instant {
    let now_ms = u64::try_from(now_millis()).unwrap_or(0);
    tokio::time::Instant::now()
        + Duration::from_millis(expires_at_ms.saturating_sub(now_ms))
        + grace
}

/// The close for a connection whose token expired and was not refreshed.
pub(crate) const TOKEN_EXPIRED: CloseReason = CloseReason {
    code: close::TOKEN_EXPIRED,
    reason: "access token expired",
};

/// The authenticated part of a connection.
struct Session {
    node: Arc<Inner>,
    conn: Arc<Conn>,
    limiter: FrameLimiter,
    /// The connection's token expiry (ms since the epoch), moved by `refresh`.
    expires_at_ms: u64,
}

impl Session {
    /// Reads and answers frames until the connection ends; returns why.
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut WebSocketRead<R>,
        assembler: &mut Assembler,
    ) -> CloseReason {
        let heartbeat = self.node.settings.heartbeat_interval;
        let idle = heartbeat * 2 + heartbeat.min(HEARTBEAT_GRACE);
        let conn = self.conn.clone();
        let mut on_ping = |payload: Bytes| conn.out.pong(&payload);
        let grace = self.node.settings.token_expiry_grace;
        let mut armed_for = self.expires_at_ms;
        let expiry = tokio::time::sleep_until(expiry_deadline(armed_for, grace));
        tokio::pin!(expiry);
        loop {
            if armed_for != self.expires_at_ms {
                armed_for = self.expires_at_ms;
                expiry.as_mut().reset(expiry_deadline(armed_for, grace));
            }
            let next = tokio::select! {
                next = tokio::time::timeout(idle, next_message(reader, assembler, &mut on_ping)) => next,
                // Closed from elsewhere (revoked, slow, shutdown): the close
                // frame is already queued; an unfinished read is abandoned with the socket.
                _ = conn.out.closed() => return CloseReason { code: close::GOING_AWAY, reason: "closed by the gateway" },
                () = &mut expiry => return TOKEN_EXPIRED,
            };
            let (encoding, bytes) = match next {
                Err(_) => {
                    return CloseReason {
                        code: close::HEARTBEAT_TIMEOUT,
                        reason: "heartbeat timeout",
                    };
                }
                Ok(Err(reason)) => return reason,
                Ok(Ok(Message::Close)) => return CLIENT_CLOSED,
                Ok(Ok(Message::Pong)) => continue,
                Ok(Ok(Message::Data(encoding, bytes))) => (encoding, bytes),
            };
            if !self.limiter.allow() {
                tracing::warn!(target: "security", user_id = %conn.user_id, "client frame rate limit exceeded");
                return CloseReason {
                    code: close::RATE_LIMITED,
                    reason: "too many frames",
                };
            }
            match encoding.decode_client(&bytes) {
                Ok(frame) => {
                    metrics::counter!("gateway_client_frames_total").increment(1);
                    if let Some(reason) = self.handle(frame).await {
                        return reason;
                    }
                }
                // The frame's id, when it had one, is echoed: a client
                // waiting on it gets its answer.
                Err(e) => self.error(e.id(), e.code(), e.to_string(), None),
            }
        }
    }

    /// Answers one frame; the close to send if it ends the connection.
    async fn handle(&mut self, frame: ClientFrame) -> Option<CloseReason> {
        match frame {
            ClientFrame::Refresh { id, token } => return self.refresh(id, &token).await,
            ClientFrame::Auth { id, .. } => {
                self.error(
                    id,
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated".into(),
                    None,
                );
            }
            ClientFrame::Ping { id } => self.conn.send(&ServerFrame::Pong { id }),
            ClientFrame::Join {
                id,
                room_id,
                since_seq,
                presence,
            } => self.join(id, room_id, since_seq, presence).await,
            ClientFrame::Typing {
                id,
                room_id,
                active,
            } => self.typing(id, room_id, active).await,
            ClientFrame::Read { id, room_id, seq } => self.read(id, room_id, seq).await,
            ClientFrame::Leave { id, room_id } => {
                if self.node.hub.leave(room_id, self.conn.id).await {
                    self.conn.send(&ServerFrame::Left {
                        id,
                        room_id,
                        reason: LeftReason::Requested,
                    });
                } else {
                    self.error(
                        id,
                        ErrorCode::NotJoined,
                        "this connection has not joined the room".into(),
                        Some(room_id),
                    );
                }
            }
        }
        None
    }

    /// Extends the connection with a newer token of the same user and
    /// session, whose session is still active. A token of someone else, or
    /// of another session, ends the connection (4001): one socket is one
    /// session, and a client that mixes them up (or is trying tokens) must
    /// authenticate afresh. A revoked session ends it too (4004). A token
    /// that does not verify is answered `invalid_token` and changes
    /// nothing: the connection lasts until its current deadline.
    async fn refresh(&mut self, id: Option<u64>, token: &str) -> Option<CloseReason> {
        let conn = &self.conn;
        let identity = match self.node.verifier.verify(token) {
            Ok(identity) => identity,
            Err(e) => {
                if e == TokenError::Invalid {
                    tracing::warn!(target: "security", user_id = %conn.user_id, session_id = %conn.session_id,
                        "WebSocket refresh with an invalid token");
                }
                self.error(id, ErrorCode::InvalidToken, e.to_string(), None);
                return None;
            }
        };
        if identity.user_id != conn.user_id || identity.session_id != conn.session_id {
            let other_user = identity.user_id != conn.user_id;
            tracing::warn!(target: "security", user_id = %conn.user_id, session_id = %conn.session_id,
                token_user_id = %identity.user_id, token_session_id = %identity.session_id,
                "WebSocket refresh with a token of another {}", if other_user { "user" } else { "session" });
            return Some(CloseReason {
                code: close::UNAUTHORIZED,
                reason: if other_user {
                    "refresh with a token of another user"
                } else {
                    "refresh with a token of another session"
                },
            });
        }
        // Always the store, never another connection's word: a refresh is
        // when a revocation whose notice was lost (a publish that failed for
        // good) is caught, so a token's lifetime bounds what a lost notice
        // can leave open.
        let epoch = self.node.hub.notice_epoch();
        let checked = self
            .node
            .store
            .session_active_until(identity.session_id, now_millis())
            .await
            .map(|until| {
                if let Some(until) = until {
                    self.node.hub.session_checked(conn, epoch, until);
                }
                until.is_some()
            });
        match checked {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(target: "security", user_id = %identity.user_id, session_id = %identity.session_id,
                    "WebSocket refresh with a token of a revoked session");
                // A logout: presence lets go at once, as for a revocation notice.
                conn.logged_out.store(true, Ordering::Relaxed);
                return Some(CloseReason {
                    code: close::SESSION_REVOKED,
                    reason: "session revoked",
                });
            }
            Err(e) => {
                // Nothing changes: the client may try again before its
                // current deadline.
                tracing::warn!(error = %e, "cannot check the session of a refresh");
                self.error(id, ErrorCode::Unavailable, "try again shortly".into(), None);
                return None;
            }
        }
        // Never shortened: an older token sent late changes nothing.
        self.expires_at_ms = self.expires_at_ms.max(expiry_ms(&identity));
        conn.send(&ServerFrame::Refreshed {
            id,
            expires_at_ms: self.expires_at_ms,
        });
        None
    }

    async fn join(
        &mut self,
        id: Option<u64>,
        room_id: RoomId,
        since_seq: Option<i64>,
        presence: bool,
    ) {
        join(&self.node, &self.conn, id, room_id, since_seq, presence).await;
    }

    /// Forwards a `typing` frame to the room's other members on every node,
    /// unless the room's shard throttles it. Publishing is best effort: a
    /// lost typing event is not worth an error, it is logged and counted.
    async fn typing(&mut self, id: Option<u64>, room_id: RoomId, active: bool) {
        match self.node.hub.typing(room_id, &self.conn, active).await {
            TypingVerdict::Forward(bytes) => {
                if let Err(e) = self.node.broker.publish(Topic::Room(room_id), bytes).await {
                    metrics::counter!("gateway_publish_failures_total").increment(1);
                    tracing::warn!(error = %e, %room_id, "publishing a typing event failed");
                }
            }
            TypingVerdict::Throttled => {}
            TypingVerdict::NotJoined => self.error(
                id,
                ErrorCode::NotJoined,
                "join the room before sending typing".into(),
                Some(room_id),
            ),
        }
    }

    /// Records how far the user has read. Accepted reads are coalesced by
    /// the node's marker writer (the largest wins, so a backwards or
    /// repeated `seq` changes nothing); they are not answered.
    async fn read(&mut self, id: Option<u64>, room_id: RoomId, seq: i64) {
        if seq < 1 {
            return self.error(
                id,
                ErrorCode::InvalidSeq,
                "seq must be at least 1".into(),
                Some(room_id),
            );
        }
        match self.node.hub.read(room_id, &self.conn, seq).await {
            ReadVerdict::Accept => self.node.markers.read(room_id, self.conn.user_id, seq),
            ReadVerdict::NotJoined => self.error(
                id,
                ErrorCode::NotJoined,
                "join the room before sending read".into(),
                Some(room_id),
            ),
            ReadVerdict::Beyond(last) => self.error(
                id,
                ErrorCode::InvalidSeq,
                format!("seq is beyond the newest event delivered in this room ({last})"),
                Some(room_id),
            ),
        }
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: String, room_id: Option<RoomId>) {
        send_error(&self.conn, id, code, message, room_id);
    }
}

/// Joins `conn` to a room its user is a member of (a WebSocket `join`, or
/// a room of an SSE stream), answering `joined` or `error` on it. The
/// room's shard decides first from the room's member list, which it keeps
/// while the room is live on this node; only when it does not know is the
/// store asked (one indexed row), so a stranger's join never costs a
/// subscription. The room cap is the shard's to check: only it knows
/// whether this is a re-join of a room the connection is already in
/// (answered `joined`).
pub(crate) async fn join(
    node: &Inner,
    conn: &Arc<Conn>,
    id: Option<u64>,
    room_id: RoomId,
    since_seq: Option<i64>,
    presence: bool,
) {
    let known = match since_seq {
        // Refused below with the room's newest seq in the message.
        Some(since) if since < 0 => {
            node.hub.auth_cache_stats().count("membership", false);
            Err(JoinError::Unchecked)
        }
        _ => {
            node.hub
                .join(room_id, conn.clone(), None, id, since_seq, presence)
                .await
        }
    };
    let joined = match known {
        Err(JoinError::Unchecked) => {
            join_checked(node, conn, id, room_id, since_seq, presence).await
        }
        known => known.map_err(Refused::Join),
    };
    match joined {
        Ok(_) => {}
        Err(Refused::SinceBeyond(last_seq)) => {
            let message =
                format!("since_seq must be between 0 and the room's newest seq ({last_seq})");
            send_error(conn, id, ErrorCode::InvalidSeq, message, Some(room_id));
        }
        Err(Refused::Join(JoinError::NotMember)) => not_found(conn, id, room_id),
        Err(Refused::Join(JoinError::TooManyRooms)) => {
            let message = format!("a connection may join at most {MAX_ROOMS_PER_CONNECTION} rooms");
            send_error(conn, id, ErrorCode::TooManyRooms, message, Some(room_id));
        }
        // After the store was asked the shard always decides; should it
        // not, the client may try again.
        Err(Refused::Join(JoinError::Unavailable | JoinError::Unchecked)) => send_error(
            conn,
            id,
            ErrorCode::Unavailable,
            "try again shortly".into(),
            Some(room_id),
        ),
    }
}

/// Why a join was refused.
enum Refused {
    Join(JoinError),
    /// `since_seq` is past the room's newest seq (carried).
    SinceBeyond(i64),
}

/// A join the node could not decide: membership and the room's newest seq
/// read from the store, then the join with them.
async fn join_checked(
    node: &Inner,
    conn: &Arc<Conn>,
    id: Option<u64>,
    room_id: RoomId,
    since_seq: Option<i64>,
    presence: bool,
) -> Result<i64, Refused> {
    let last_seq = match node.store.member_last_seq(room_id, conn.user_id).await {
        Ok(Some(last_seq)) => last_seq,
        Ok(None) => return Err(Refused::Join(JoinError::NotMember)),
        Err(e) => {
            tracing::warn!(error = %e, "membership check failed");
            return Err(Refused::Join(JoinError::Unavailable));
        }
    };
    if let Some(since) = since_seq
        && !(0..=last_seq).contains(&since)
    {
        return Err(Refused::SinceBeyond(last_seq));
    }
    node.hub
        .join(
            room_id,
            conn.clone(),
            Some(last_seq),
            id,
            since_seq,
            presence,
        )
        .await
        .map_err(Refused::Join)
}

fn not_found(conn: &Conn, id: Option<u64>, room_id: RoomId) {
    tracing::info!(target: "security", user_id = %conn.user_id, %room_id, "join refused: not a member");
    send_error(
        conn,
        id,
        ErrorCode::RoomNotFound,
        "no such room".into(),
        Some(room_id),
    );
}

fn send_error(
    conn: &Conn,
    id: Option<u64>,
    code: ErrorCode,
    message: String,
    room_id: Option<RoomId>,
) {
    conn.send(&ServerFrame::Error {
        id,
        code,
        message,
        room_id,
    });
}

/// A whole client message, or a control event the caller cares about.
enum Message {
    Data(Encoding, Bytes),
    Pong,
    Close,
}

/// Reads until a whole message, a pong or a close arrives. Pings are
/// answered through `on_ping` (with the payload to echo).
async fn next_message<R: AsyncRead + Unpin>(
    reader: &mut WebSocketRead<R>,
    assembler: &mut Assembler,
    on_ping: &mut impl FnMut(Bytes),
) -> Result<Message, CloseReason> {
    loop {
        let frame = reader
            .read_frame(&mut |obligated: Frame<'_>| {
                // fastwebsockets owes a pong for every ping (and echoes
                // closes, which the caller answers itself).
                if obligated.opcode == OpCode::Pong {
                    on_ping(Bytes::copy_from_slice(&obligated.payload));
                }
                std::future::ready(Ok::<(), Infallible>(()))
            })
            .await
            .map_err(close_for)?;
        match frame.opcode {
            OpCode::Close => return Ok(Message::Close),
            OpCode::Pong => return Ok(Message::Pong),
            OpCode::Ping => continue,
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if let Some(message) = assembler.push(frame)? {
                    return Ok(message);
                }
            }
        }
    }
}

/// The close a read error deserves.
fn close_for(e: WebSocketError) -> CloseReason {
    use WebSocketError::*;
    match e {
        FrameTooLarge => CloseReason {
            code: close::MESSAGE_TOO_BIG,
            reason: "frame too large",
        },
        InvalidUTF8 => CloseReason {
            code: close::INVALID_PAYLOAD,
            reason: "text frame is not UTF-8",
        },
        UnexpectedEOF | ConnectionClosed | IoError(_) => CONNECTION_LOST,
        _ => CloseReason {
            code: close::PROTOCOL_ERROR,
            reason: "WebSocket protocol error",
        },
    }
}

/// Reassembles fragmented messages, bounded by the frame size limit
/// (fastwebsockets bounds single frames, not their sum).
#[derive(Default)]
struct Assembler {
    kind: Option<Encoding>,
    buf: Vec<u8>,
}

impl Assembler {
    fn push(&mut self, frame: Frame<'_>) -> Result<Option<Message>, CloseReason> {
        let protocol_error = CloseReason {
            code: close::PROTOCOL_ERROR,
            reason: "bad fragmentation",
        };
        let encoding = match frame.opcode {
            OpCode::Text => Some(Encoding::Json),
            OpCode::Binary => Some(Encoding::MsgPack),
            _ => None,
        };
        match (encoding, self.kind) {
            (Some(_), Some(_)) => return Err(protocol_error),
            (Some(encoding), None) if frame.fin => {
                return Ok(Some(Message::Data(
                    encoding,
                    Bytes::copy_from_slice(&frame.payload),
                )));
            }
            (Some(encoding), None) => {
                self.kind = Some(encoding);
                self.buf.extend_from_slice(&frame.payload);
            }
            (None, None) => return Err(protocol_error),
            (None, Some(_)) => {
                if self.buf.len() + frame.payload.len() > MAX_CLIENT_FRAME_BYTES {
                    return Err(CloseReason {
                        code: close::MESSAGE_TOO_BIG,
                        reason: "message too large",
                    });
                }
                self.buf.extend_from_slice(&frame.payload);
            }
        }
        if !frame.fin {
            return Ok(None);
        }
        let encoding = self.kind.take().unwrap_or(Encoding::Json);
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        if encoding == Encoding::Json && std::str::from_utf8(&bytes).is_err() {
            return Err(CloseReason {
                code: close::INVALID_PAYLOAD,
                reason: "text message is not UTF-8",
            });
        }
        Ok(Some(Message::Data(encoding, bytes)))
    }
}

/// A token bucket over the client's frames.
struct FrameLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl FrameLimiter {
    fn new(node: &Inner) -> Self {
        let burst = f64::from(node.settings.client_frame_burst.max(1));
        Self {
            per_second: f64::from(node.settings.client_frames_per_second.max(1)),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame<'static> {
        Frame::new(fin, opcode, None, Payload::Owned(payload.to_vec()))
    }

    fn data(message: Option<Message>) -> Option<(Encoding, Bytes)> {
        match message {
            Some(Message::Data(encoding, bytes)) => Some((encoding, bytes)),
            _ => None,
        }
    }

    #[test]
    fn fragments_are_reassembled_into_one_message() {
        let mut a = Assembler::default();
        assert!(
            a.push(frame(false, OpCode::Text, b"{\"type\":"))
                .unwrap()
                .is_none()
        );
        assert!(
            a.push(frame(false, OpCode::Continuation, b"\"pi"))
                .unwrap()
                .is_none()
        );
        let message = a.push(frame(true, OpCode::Continuation, b"ng\"}")).unwrap();
        assert_eq!(
            data(message),
            Some((Encoding::Json, Bytes::from_static(b"{\"type\":\"ping\"}")))
        );
        let single = a.push(frame(true, OpCode::Binary, b"\x81")).unwrap();
        assert_eq!(
            data(single),
            Some((Encoding::MsgPack, Bytes::from_static(b"\x81")))
        );
    }

    #[test]
    fn reassembly_is_bounded_by_the_frame_limit() {
        let mut a = Assembler::default();
        let chunk = vec![b'x'; MAX_CLIENT_FRAME_BYTES / 2];
        assert!(
            a.push(frame(false, OpCode::Text, &chunk))
                .unwrap()
                .is_none()
        );
        assert!(
            a.push(frame(false, OpCode::Continuation, &chunk))
                .unwrap()
                .is_none()
        );
        let err = a
            .push(frame(false, OpCode::Continuation, b"x"))
            .err()
            .unwrap();
        assert_eq!(err.code, close::MESSAGE_TOO_BIG);
    }

    #[test]
    fn broken_fragmentation_is_a_protocol_error() {
        let mut a = Assembler::default();
        let err = a
            .push(frame(true, OpCode::Continuation, b"x"))
            .err()
            .unwrap();
        assert_eq!(err.code, close::PROTOCOL_ERROR);
        let mut a = Assembler::default();
        a.push(frame(false, OpCode::Text, b"a")).unwrap();
        let err = a.push(frame(true, OpCode::Text, b"b")).err().unwrap();
        assert_eq!(err.code, close::PROTOCOL_ERROR);
    }

    #[test]
    fn text_split_inside_a_character_must_still_be_utf8_at_the_end() {
        let mut a = Assembler::default();
        let e_acute = "é".as_bytes();
        a.push(frame(false, OpCode::Text, &e_acute[..1])).unwrap();
        let ok = a
            .push(frame(true, OpCode::Continuation, &e_acute[1..]))
            .unwrap();
        assert_eq!(
            data(ok).map(|(_, b)| b),
            Some(Bytes::from_static("é".as_bytes()))
        );
        a.push(frame(false, OpCode::Text, &e_acute[..1])).unwrap();
        let err = a
            .push(frame(true, OpCode::Continuation, b""))
            .err()
            .unwrap();
        assert_eq!(err.code, close::INVALID_PAYLOAD);
    }
}
