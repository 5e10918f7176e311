//! A WebSocket test client. It uses tokio-tungstenite, a different
//! implementation from the gateway's, so the two check each other.

use futures::{SinkExt, StreamExt};
use shared::RoomId;
use shared::protocol::{
    ClientFrame, Encoding, ErrorCode, PresenceSnapshot, ResumeOutcome, ServerFrame,
};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub encoding: Encoding,
    next_id: u64,
    /// `presence` frames are passed on only when asked for
    /// ([`Self::watch_presence`]): they arrive whenever anyone joins or
    /// leaves a room, and most tests are about something else.
    presence: bool,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    /// A close frame with its code, or the socket ending without one.
    Closed(Option<u16>),
}

impl WsClient {
    /// Opens a WebSocket without authenticating.
    pub async fn connect(url: &str, encoding: Encoding) -> WsClient {
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connecting timed out")
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        WsClient {
            ws,
            encoding,
            next_id: 1,
            presence: false,
        }
    }

    /// Opens a WebSocket and authenticates; panics unless `ready` comes back.
    pub async fn authenticated(url: &str, token: &str, encoding: Encoding) -> WsClient {
        let mut client = Self::connect(url, encoding).await;
        client
            .send(&ClientFrame::Auth {
                id: Some(0),
                token: token.into(),
            })
            .await;
        match client.recv().await {
            Received::Frame(ServerFrame::Ready { .. }) => client,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Whether a message is passed on: anything but an unwatched `presence`.
    fn wanted(&self, bytes: &[u8]) -> bool {
        self.presence
            || !matches!(
                self.encoding.decode::<ServerFrame>(bytes, &[]),
                Ok(ServerFrame::Presence { .. })
            )
    }

    /// From now on, [`Self::recv`] and the rest pass `presence` frames on.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = self.encoding.encode(frame);
        let message = match self.encoding {
            Encoding::Json => {
                Message::text(String::from_utf8(bytes.to_vec()).expect("JSON is UTF-8"))
            }
            Encoding::MsgPack => Message::binary(bytes),
        };
        self.send_raw(message).await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("sending a frame");
    }

    /// The next frame or close (`presence` frames only when watched);
    /// panics after [`FRAME_TIMEOUT`] without one.
    pub async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the gateway in time");
            let message = match next {
                None | Some(Err(_)) => return Received::Closed(None),
                Some(Ok(m)) => m,
            };
            let bytes = match message {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(frame) => return Received::Closed(frame.map(|f| u16::from(f.code))),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let frame: ServerFrame = self.encoding.decode(&bytes, &[]).unwrap_or_else(|e| {
                panic!(
                    "undecodable server frame {:?}: {e}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if !self.presence && matches!(frame, ServerFrame::Presence { .. }) {
                continue;
            }
            return Received::Frame(frame);
        }
    }

    /// The next text or binary message exactly as the server sent it;
    /// panics on a close or after [`FRAME_TIMEOUT`].
    pub async fn raw(&mut self) -> Vec<u8> {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the gateway in time");
            match next {
                Some(Ok(Message::Text(t))) if self.wanted(t.as_bytes()) => {
                    return t.as_bytes().to_vec();
                }
                Some(Ok(Message::Binary(b))) if self.wanted(&b) => return b.to_vec(),
                Some(Ok(Message::Text(_) | Message::Binary(_))) => continue,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                other => panic!("connection closed ({other:?}) while a frame was expected"),
            }
        }
    }

    /// The next frame; panics on a close.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Received::Frame(f) => f,
            Received::Closed(code) => {
                panic!("connection closed ({code:?}) while a frame was expected")
            }
        }
    }

    /// Waits for the close and returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.recv().await {
                return code;
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Joins a room: Ok(seq after which events follow) or the error code.
    pub async fn join(&mut self, room: RoomId) -> Result<i64, ErrorCode> {
        self.join_with(room, None, false).await.map(|j| j.0)
    }

    /// Joins a room resuming after `since` (`since_seq`): the `joined`
    /// reply's seq and resume outcome, or the error code.
    pub async fn join_since(
        &mut self,
        room: RoomId,
        since: i64,
    ) -> Result<(i64, Option<ResumeOutcome>), ErrorCode> {
        self.join_with(room, Some(since), false)
            .await
            .map(|(seq, _, resume)| (seq, resume))
    }

    /// Joins a room asking for who is in it: the `joined` reply's seq and
    /// presence snapshot, or the error code.
    pub async fn join_with_presence(
        &mut self,
        room: RoomId,
    ) -> Result<(i64, Option<PresenceSnapshot>), ErrorCode> {
        self.join_with(room, None, true)
            .await
            .map(|(seq, presence, _)| (seq, presence))
    }

    #[allow(clippy::type_complexity)]
    async fn join_with(
        &mut self,
        room: RoomId,
        since_seq: Option<i64>,
        presence: bool,
    ) -> Result<(i64, Option<PresenceSnapshot>, Option<ResumeOutcome>), ErrorCode> {
        let id = self.id();
        self.send(&ClientFrame::Join {
            id: Some(id),
            room_id: room,
            since_seq,
            presence,
        })
        .await;
        loop {
            match self.frame().await {
                ServerFrame::Joined {
                    id: Some(got),
                    seq,
                    presence,
                    resume,
                    ..
                } if got == id => return Ok((seq, presence, resume)),
                ServerFrame::Error {
                    id: Some(got),
                    code,
                    ..
                } if got == id => return Err(code),
                _ => continue,
            }
        }
    }

    /// Sends a ping and returns every frame that arrived before its pong.
    /// Everything the gateway queued for this connection before the ping was
    /// read is in front of the pong, so this is how a test proves that
    /// something was *not* sent, without sleeping.
    pub async fn until_pong(&mut self) -> Vec<ServerFrame> {
        let id = self.id();
        self.send(&ClientFrame::Ping { id: Some(id) }).await;
        let mut before = Vec::new();
        loop {
            match self.frame().await {
                ServerFrame::Pong { id: Some(got) } if got == id => return before,
                other => before.push(other),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await;
    }
}
