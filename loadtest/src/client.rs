//! One WebSocket client connection to a gateway: TCP connect, the HTTP
//! upgrade (written by hand, so each stage is timed and each refusal is
//! named), `auth` until `ready`, `join`, reading frames, and a clean close.
//!
//! The handshake is done directly on the `TcpStream` rather than through a
//! hyper client connection: the socket stays a plain `TcpStream` under
//! fastwebsockets (no boxed upgrade, no buffer left in hyper), which keeps
//! the per-connection cost of the tool low.

use crate::net::{connect_tcp, describe_io_error};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket,
    WebSocketError, WebSocketWrite,
};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use shared::RoomId;
use shared::protocol::{ClientFrame, Encoding, PresenceSnapshot, close};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A client WebSocket over a plain TCP stream.
pub type Ws = FragmentCollector<TcpStream>;

/// The read half of a split client WebSocket (for connections that send
/// while they read: one task reads, another writes).
pub type WsRead = FragmentCollectorRead<OwnedReadHalf>;

/// The write half of a split client WebSocket.
pub type WsWrite = WebSocketWrite<OwnedWriteHalf>;

/// Largest server frame accepted: events carry bodies of at most 4000
/// characters; anything near this is a broken server.
const MAX_SERVER_FRAME: usize = 1 << 20;

/// Largest HTTP response head to the upgrade request.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// RFC 6455's GUID for Sec-WebSocket-Accept.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Where one gateway is: resolved once, used by every connection to it.
#[derive(Clone, Debug)]
pub struct GatewayTarget {
    pub url: String,
    pub addr: SocketAddr,
    host_header: String,
    path: String,
}

impl GatewayTarget {
    /// Parses `ws://host:port/path` and resolves the host once.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| {
            anyhow::anyhow!("{url}: only ws:// gateway URLs are supported (terminate TLS in front of the tool's network, not in it)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        if authority.is_empty() {
            anyhow::bail!("{url}: no host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| anyhow::anyhow!("{url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{url}: {with_port} has no address"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            host_header: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Time limits of each stage of opening a connection.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub ready: Duration,
    pub join: Duration,
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            // The gateway's own auth timeout is 10 s; wait a little longer
            // so its 4003 close, not our timer, names the failure.
            ready: Duration::from_secs(12),
            join: Duration::from_secs(10),
            close: Duration::from_secs(3),
        }
    }
}

/// Why a connection could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{stage}: {reason}")]
    Io { stage: &'static str, reason: String },
    #[error("timeout: {0}")]
    Timeout(&'static str),
    #[error("HTTP {status}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Http { status: u16, code: Option<String> },
    #[error("close {code}{}", close_suffix(*code))]
    Closed { code: u16 },
    #[error("join refused: {0}")]
    JoinRefused(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ConnError {
    /// The stable text used in failure tables.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    fn io(stage: &'static str, e: &std::io::Error) -> Self {
        ConnError::Io {
            stage,
            reason: describe_io_error(e),
        }
    }

    fn ws(stage: &'static str, e: WebSocketError) -> Self {
        match e {
            WebSocketError::IoError(e) => ConnError::io(stage, &e),
            WebSocketError::UnexpectedEOF => ConnError::Io {
                stage,
                reason: "EOF: the gateway closed TCP without a close frame".into(),
            },
            WebSocketError::ConnectionClosed => ConnError::Protocol("connection closed".into()),
            other => ConnError::Protocol(other.to_string()),
        }
    }
}

/// " (name)" of a close code, from `shared::protocol::close`.
fn close_suffix(code: u16) -> String {
    match close_name(code) {
        "" => String::new(),
        name => format!(" ({name})"),
    }
}

/// Names of close codes, from `shared::protocol::close`.
pub fn close_name(code: u16) -> &'static str {
    match code {
        1005 => "no status",
        1006 => "abnormal",
        close::NORMAL => "normal",
        close::GOING_AWAY => "going away",
        close::PROTOCOL_ERROR => "protocol error",
        close::INVALID_PAYLOAD => "invalid payload",
        close::MESSAGE_TOO_BIG => "message too big",
        close::INTERNAL_ERROR => "internal error",
        close::TRY_AGAIN_LATER => "try again later",
        close::UNAUTHORIZED => "unauthorized",
        close::TOKEN_EXPIRED => "token expired",
        close::AUTH_TIMEOUT => "auth timeout",
        close::SESSION_REVOKED => "session revoked",
        close::RATE_LIMITED => "rate limited",
        close::SLOW_CONSUMER => "slow consumer",
        close::HEARTBEAT_TIMEOUT => "heartbeat timeout",
        _ => "",
    }
}

/// How long each stage of opening took, from the start of the TCP connect.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenTimings {
    pub tcp: Duration,
    /// Until the 101 response (TCP connect included).
    pub handshake: Duration,
    /// Until `ready` (TCP, upgrade and auth).
    pub ready: Duration,
}

/// A string borrowed from the frame when it has no escapes (our bodies
/// never do), owned otherwise. serde's own `Option<Cow<str>>` always
/// allocates, hence this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The parts of a server frame the tool reads; everything else is skipped
/// by the parser without being allocated. Strings are borrowed from the
/// frame whenever they contain no escapes (our bodies never do).
#[derive(Debug, Deserialize)]
pub struct FrameView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Text<'a>,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub room_id: Option<i64>,
    #[serde(default)]
    pub seq: Option<i64>,
    /// An event's kind (`message.created`...).
    #[serde(rename = "kind", default, borrow)]
    pub event_kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub body: Option<Text<'a>>,
    /// An `error` frame's code.
    #[serde(default, borrow)]
    pub code: Option<Text<'a>>,
}

/// Decodes the parts of a server frame we need, in the connection's encoding.
pub fn parse_frame(encoding: Encoding, payload: &[u8]) -> Option<FrameView<'_>> {
    match encoding {
        Encoding::Json => serde_json::from_slice(payload).ok(),
        Encoding::MsgPack => rmp_serde::from_slice(payload).ok(),
    }
}

/// Opens a connection and authenticates it: TCP, upgrade, `auth`, `ready`.
pub async fn open(
    target: &GatewayTarget,
    source: Option<IpAddr>,
    token: &str,
    encoding: Encoding,
    timeouts: &Timeouts,
) -> Result<(Ws, OpenTimings), ConnError> {
    let (ws, timings) = open_socket(target, source, token, encoding, timeouts).await?;
    Ok((FragmentCollector::new(ws), timings))
}

/// Opens and authenticates a connection that will be split into a read
/// and a write half ([`split`]): nothing the gateway sent is lost in the
/// split, because the read half keeps the socket's read buffer.
pub async fn open_split(
    target: &GatewayTarget,
    source: Option<IpAddr>,
    token: &str,
    encoding: Encoding,
    timeouts: &Timeouts,
) -> Result<(WsRead, WsWrite, OpenTimings), ConnError> {
    let (ws, timings) = open_socket(target, source, token, encoding, timeouts).await?;
    let (read, write) = ws.split(TcpStream::into_split);
    Ok((FragmentCollectorRead::new(read), write, timings))
}

/// TCP, upgrade, `auth` and `ready` on an unwrapped socket. The gateway
/// sends nothing but `ready` (or a close) before the client's next frame,
/// so reading it without collecting fragments is enough.
async fn open_socket(
    target: &GatewayTarget,
    source: Option<IpAddr>,
    token: &str,
    encoding: Encoding,
    timeouts: &Timeouts,
) -> Result<(WebSocket<TcpStream>, OpenTimings), ConnError> {
    let started = Instant::now();
    let mut stream = tokio::time::timeout(timeouts.connect, connect_tcp(target.addr, source))
        .await
        .map_err(|_| ConnError::Timeout("TCP connect"))?
        .map_err(|e| ConnError::io("connect", &e))?;
    let tcp = started.elapsed();
    tokio::time::timeout(timeouts.handshake, upgrade(&mut stream, target))
        .await
        .map_err(|_| ConnError::Timeout("WebSocket upgrade"))??;
    let handshake = started.elapsed();
    let mut ws = WebSocket::after_handshake(stream, Role::Client);
    ws.set_max_message_size(MAX_SERVER_FRAME);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    ws.write_frame(client_frame(
        encoding,
        &ClientFrame::Auth {
            id: None,
            token: token.to_owned(),
        },
    ))
    .await
    .map_err(|e| ConnError::ws("send", e))?;
    tokio::time::timeout(timeouts.ready, async {
        loop {
            let frame = ws
                .read_frame()
                .await
                .map_err(|e| ConnError::ws("auth", e))?;
            match frame.opcode {
                OpCode::Close => return Err(closed(&frame.payload)),
                OpCode::Text | OpCode::Binary => {
                    let view = parse_frame(encoding, &frame.payload).ok_or_else(|| {
                        ConnError::Protocol("undecodable frame before ready".into())
                    })?;
                    match &*view.kind {
                        "ready" => return Ok(()),
                        "error" => {
                            return Err(ConnError::Protocol(format!(
                                "error frame before ready: {}",
                                view.code.as_deref().unwrap_or("?")
                            )));
                        }
                        other => {
                            return Err(ConnError::Protocol(format!(
                                "unexpected {other:?} frame before ready"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| ConnError::Timeout("waiting for ready"))??;
    let ready = started.elapsed();
    Ok((
        ws,
        OpenTimings {
            tcp,
            handshake,
            ready,
        },
    ))
}

/// Joins a room and returns the `seq` the connection receives events after.
pub async fn join(
    ws: &mut Ws,
    encoding: Encoding,
    room: i64,
    id: u64,
    timeout: Duration,
) -> Result<i64, ConnError> {
    join_room(ws, encoding, room, id, false, timeout)
        .await
        .map(|j| j.seq)
}

/// What a `joined` reply says.
#[derive(Clone, Debug, Deserialize)]
pub struct Joined {
    /// Events after this one are delivered.
    pub seq: i64,
    /// Who was in the room (when the join asked for presence).
    #[serde(default)]
    pub presence: Option<PresenceSnapshot>,
}

/// Joins a room, asking for the presence snapshot when `presence`.
pub async fn join_room(
    ws: &mut Ws,
    encoding: Encoding,
    room: i64,
    id: u64,
    presence: bool,
    timeout: Duration,
) -> Result<Joined, ConnError> {
    send(ws, encoding, &join_frame(room, id, presence)).await?;
    tokio::time::timeout(timeout, async {
        loop {
            let frame = ws
                .read_frame()
                .await
                .map_err(|e| ConnError::ws("join", e))?;
            if let Some(answer) = join_answer(encoding, &frame, id) {
                return answer;
            }
        }
    })
    .await
    .map_err(|_| ConnError::Timeout("waiting for joined"))?
}

/// Joins a room over a split connection. Pings that arrive meanwhile are
/// answered from the write half once the read returns.
pub async fn join_split(
    read: &mut WsRead,
    write: &mut WsWrite,
    encoding: Encoding,
    room: i64,
    id: u64,
    timeout: Duration,
) -> Result<Joined, ConnError> {
    send_split(write, encoding, &join_frame(room, id, false)).await?;
    tokio::time::timeout(timeout, async {
        loop {
            let mut owed: Vec<Frame<'static>> = Vec::new();
            let frame = read
                .read_frame(&mut |f: Frame<'_>| {
                    owed.push(owned_frame(&f));
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .await
                .map_err(|e| ConnError::ws("join", e))?;
            let answer = join_answer(encoding, &frame, id);
            for f in owed {
                write
                    .write_frame(f)
                    .await
                    .map_err(|e| ConnError::ws("join", e))?;
            }
            if let Some(answer) = answer {
                return answer;
            }
        }
    })
    .await
    .map_err(|_| ConnError::Timeout("waiting for joined"))?
}

/// An owned copy of a frame fastwebsockets owes the peer (a pong or a
/// close echo), to be written from the write half.
pub fn owned_frame(f: &Frame<'_>) -> Frame<'static> {
    Frame::new(true, f.opcode, None, Payload::Owned(f.payload.to_vec()))
}

fn join_frame(room: i64, id: u64, presence: bool) -> ClientFrame {
    ClientFrame::Join {
        id: Some(id),
        room_id: RoomId(room),
        since_seq: None,
        presence,
    }
}

/// The outcome of a join if `frame` answers request `id`; None for any
/// other frame (joins happen before any publishing: other frames, such as
/// room notices, are not part of a measurement).
fn join_answer(
    encoding: Encoding,
    frame: &Frame<'_>,
    id: u64,
) -> Option<Result<Joined, ConnError>> {
    match frame.opcode {
        OpCode::Close => Some(Err(closed(&frame.payload))),
        OpCode::Text | OpCode::Binary => {
            let Some(view) = parse_frame(encoding, &frame.payload) else {
                return Some(Err(ConnError::Protocol("undecodable frame".into())));
            };
            match (&*view.kind, view.id) {
                ("joined", Some(i)) if i == id => Some(
                    decode::<Joined>(encoding, &frame.payload)
                        .ok_or_else(|| ConnError::Protocol("joined without seq".into())),
                ),
                ("error", Some(i)) if i == id => Some(Err(ConnError::JoinRefused(
                    view.code.as_deref().unwrap_or("?").to_owned(),
                ))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Sends a client frame in the connection's encoding.
pub async fn send(ws: &mut Ws, encoding: Encoding, frame: &ClientFrame) -> Result<(), ConnError> {
    ws.write_frame(client_frame(encoding, frame))
        .await
        .map_err(|e| ConnError::ws("send", e))
}

/// Sends a client frame on the write half of a split connection.
pub async fn send_split(
    ws: &mut WsWrite,
    encoding: Encoding,
    frame: &ClientFrame,
) -> Result<(), ConnError> {
    ws.write_frame(client_frame(encoding, frame))
        .await
        .map_err(|e| ConnError::ws("send", e))
}

/// A client frame as a WebSocket frame (text for JSON, binary for MessagePack).
fn client_frame(encoding: Encoding, frame: &ClientFrame) -> Frame<'static> {
    let payload = Payload::Owned(encoding.encode(frame).to_vec());
    match encoding {
        Encoding::Json => Frame::text(payload),
        Encoding::MsgPack => Frame::binary(payload),
    }
}

/// Decodes a whole server frame into `T` (a view of the fields a scenario
/// needs), in the connection's encoding.
pub fn decode<'a, T: Deserialize<'a>>(encoding: Encoding, payload: &'a [u8]) -> Option<T> {
    match encoding {
        Encoding::Json => serde_json::from_slice(payload).ok(),
        Encoding::MsgPack => rmp_serde::from_slice(payload).ok(),
    }
}

/// The error for a close frame from the gateway.
pub fn closed(payload: &[u8]) -> ConnError {
    let code = if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        // A close without a code is "no status received" (RFC 6455, 1005).
        1005
    };
    ConnError::Closed { code }
}

/// Classifies an error while reading frames after the connection was open.
pub fn read_error(e: WebSocketError) -> ConnError {
    ConnError::ws("read", e)
}

/// Closes cleanly: our close frame, then the gateway's answer. Returns
/// whether the close handshake completed in time.
pub async fn close_gracefully(ws: &mut Ws, timeout: Duration) -> bool {
    let done = async {
        if ws
            .write_frame(Frame::close(close::NORMAL, b""))
            .await
            .is_err()
        {
            return false;
        }
        loop {
            match ws.read_frame().await {
                Ok(frame) if frame.opcode == OpCode::Close => return true,
                Ok(_) => {}
                // Once our close is written, fastwebsockets reports every
                // other frame that was already on its way (an event, a
                // presence change) as this error, after consuming it: the
                // gateway's close can still follow.
                Err(WebSocketError::ConnectionClosed) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(timeout, done).await.unwrap_or(false)
}

/// The HTTP/1.1 upgrade, by hand: request, response head, accept check.
async fn upgrade(stream: &mut TcpStream, target: &GatewayTarget) -> Result<(), ConnError> {
    let key = STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: parley-loadtest\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ConnError::io("upgrade", &e))?;
    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| ConnError::io("upgrade", &e))?;
        if n == 0 {
            return Err(ConnError::Io {
                stage: "upgrade",
                reason: "EOF: the gateway closed TCP before answering the upgrade".into(),
            });
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                if status != 101 {
                    return Err(ConnError::Http {
                        status,
                        code: error_code(&buf[head_len..len]),
                    });
                }
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value)
                    .unwrap_or_default();
                let mut sha = Sha1::new();
                sha.update(key.as_bytes());
                sha.update(WS_GUID.as_bytes());
                if accept != STANDARD.encode(sha.finalize()).as_bytes() {
                    return Err(ConnError::Protocol("wrong Sec-WebSocket-Accept".into()));
                }
                if head_len != len {
                    // The gateway speaks only after `auth`, except to close
                    // (4003 when this client took longer than the auth
                    // timeout to read the 101, i.e. it is overloaded).
                    return Err(match early_close_code(&buf[head_len..len]) {
                        Some(code) => ConnError::Closed { code },
                        None => ConnError::Protocol("data before the first frame".into()),
                    });
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Err(ConnError::Protocol(
                    "upgrade response head too large".into(),
                ));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(ConnError::Protocol(format!("bad HTTP response: {e}"))),
        }
    }
}

/// The code of a server close frame at the start of `bytes` (unmasked
/// close opcode, payload under 126 bytes, code first).
fn early_close_code(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [0x88, len, hi, lo, ..] if (2..126).contains(len) => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// The `error.code` of a JSON error body, when it arrived with the head.
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<shared::rest::ErrorBody>(body)
        .ok()
        .map(|b| b.error.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_right_after_the_upgrade_is_reported_as_that_close() {
        assert_eq!(
            early_close_code(&[0x88, 0x04, 0x0f, 0xa3, b'n', b'o']),
            Some(4003)
        );
        assert_eq!(early_close_code(&[0x81, 0x02, b'h', b'i']), None);
        assert_eq!(early_close_code(&[0x88]), None);
    }

    #[test]
    fn an_event_frame_is_read_without_the_fields_we_do_not_need() {
        let json = br#"{"type":"event","room_id":3,"seq":42,"sender_id":9,"created_at":"2026-01-01T00:00:00Z","kind":"message.created","body":"plt1 1 2 3 xx"}"#;
        let v = parse_frame(Encoding::Json, json).unwrap();
        assert_eq!(
            (
                &*v.kind,
                v.room_id,
                v.seq,
                v.event_kind.as_deref(),
                v.body.as_deref()
            ),
            (
                "event",
                Some(3),
                Some(42),
                Some("message.created"),
                Some("plt1 1 2 3 xx")
            )
        );
        assert!(
            matches!(v.body, Some(Text(Cow::Borrowed(_)))),
            "no allocation for our bodies"
        );
        let escaped =
            br#"{"type":"event","room_id":3,"seq":1,"kind":"message.created","body":"a\"b"}"#;
        let v = parse_frame(Encoding::Json, escaped).unwrap();
        assert_eq!(
            v.body.as_deref(),
            Some("a\"b"),
            "escaped strings still decode"
        );
    }

    #[test]
    fn a_msgpack_event_frame_decodes_the_same() {
        use shared::model::{EventKind, RoomEvent, time_from_millis};
        use shared::protocol::ServerFrame;
        let frame = ServerFrame::Event(RoomEvent {
            room_id: RoomId(3),
            seq: 42,
            sender_id: shared::UserId(9),
            created_at: time_from_millis(0),
            kind: EventKind::MessageCreated {
                body: "plt1 1 2 3 x".into(),
                client_msg_id: None,
                reply_to_seq: None,
                edited_at: None,
                deleted_at: None,
                reactions: Vec::new(),
                attachments: Vec::new(),
            },
        });
        let bytes = Encoding::MsgPack.encode(&frame);
        let v = parse_frame(Encoding::MsgPack, &bytes).unwrap();
        assert_eq!(
            (&*v.kind, v.seq, v.body.as_deref()),
            ("event", Some(42), Some("plt1 1 2 3 x"))
        );
    }

    #[tokio::test]
    async fn a_frame_that_crosses_our_close_does_not_spoil_the_close_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = WebSocket::after_handshake(stream, Role::Server);
            ws.set_auto_close(false);
            // A presence event already on its way when the client closes.
            let frame = ws.read_frame().await.unwrap();
            assert_eq!(frame.opcode, OpCode::Close);
            ws.write_frame(Frame::text(Payload::Borrowed(br#"{"type":"presence"}"#)))
                .await
                .unwrap();
            ws.write_frame(Frame::close(close::NORMAL, b""))
                .await
                .unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut ws = FragmentCollector::new(WebSocket::after_handshake(stream, Role::Client));
        assert!(close_gracefully(&mut ws, Duration::from_secs(5)).await);
        server.await.unwrap();
    }

    #[test]
    fn close_codes_are_named() {
        assert_eq!(
            closed(&4009u16.to_be_bytes()).reason(),
            "close 4009 (slow consumer)"
        );
        assert_eq!(closed(&[]).reason(), "close 1005 (no status)");
        assert_eq!(closed(&4999u16.to_be_bytes()).reason(), "close 4999");
    }

    #[tokio::test]
    async fn gateway_urls_are_parsed() {
        let t = GatewayTarget::resolve("ws://127.0.0.1:9/ws").await.unwrap();
        assert_eq!(
            (t.addr.port(), t.path.as_str(), t.host_header.as_str()),
            (9, "/ws", "127.0.0.1:9")
        );
        let t = GatewayTarget::resolve("ws://127.0.0.1:9").await.unwrap();
        assert_eq!(t.path, "/ws");
        assert!(
            GatewayTarget::resolve("wss://127.0.0.1:9/ws")
                .await
                .is_err()
        );
    }
}
