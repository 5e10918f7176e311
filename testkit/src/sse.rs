//! A Server-Sent Events test client: an HTTP request whose body is read as
//! the event-stream format (WHATWG HTML, "Server-sent events"), the way a
//! browser's `EventSource` reads it, written apart from the gateway's
//! encoder so the two check each other.

use crate::FRAME_TIMEOUT;
use reqwest::StatusCode;
use serde_json::Value;
use shared::protocol::ServerFrame;

/// How the stream is opened.
pub enum SseAuth<'a> {
    Ticket(&'a str),
    Bearer(&'a str),
    None,
}

/// One dispatched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub data: String,
    /// The `id:` of this message, when it had one.
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// What the stream gave next.
#[derive(Debug)]
pub enum SseNext {
    Frame(ServerFrame),
    /// The gateway's last message: `{"type":"close","code","reason"}`.
    Close(u16),
    /// The body ended (without a close message, if none came before).
    End,
}

pub struct SseClient {
    response: reqwest::Response,
    pending: Vec<u8>,
    /// The last event ID, as an `EventSource` keeps it (for a reconnect).
    pub last_event_id: Option<String>,
    /// The last `retry:` received.
    pub retry: Option<u64>,
}

impl SseClient {
    /// Opens `GET {base}/sse?{query}`; on a refusal, its status and body.
    pub async fn open(
        base: &str,
        query: &str,
        auth: SseAuth<'_>,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (StatusCode, Value)> {
        let url = match auth {
            SseAuth::Ticket(ticket) => format!("{base}/sse?{query}&ticket={ticket}"),
            _ => format!("{base}/sse?{query}"),
        };
        let mut request = reqwest::Client::new().get(&url);
        if let SseAuth::Bearer(token) = auth {
            request = request.bearer_auth(token);
        }
        request = request.header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
            .await
            .expect("the gateway answered the SSE request in time")
            .expect("sending the SSE request");
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.json().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type}"
        );
        Ok(SseClient {
            response,
            pending: Vec::new(),
            last_event_id: None,
            retry: None,
        })
    }

    /// The next dispatched message (comments and empty messages are
    /// skipped, as a browser does), or None at the end of the body.
    pub async fn message(&mut self) -> Option<SseMessage> {
        let mut data: Option<String> = None;
        let mut id = None;
        let mut retry = None;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                // A blank line dispatches what was gathered.
                if let Some(data) = data.take() {
                    return Some(SseMessage { data, id, retry });
                }
                id = None;
                retry = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "data" => match data.as_mut() {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                "id" => {
                    self.last_event_id = Some(value.to_owned());
                    id = Some(value.to_owned());
                }
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        self.retry = Some(ms);
                        retry = Some(ms);
                    }
                }
                _ => {}
            }
        }
    }

    /// The next frame, the close message, or the end; panics after
    /// [`FRAME_TIMEOUT`] without one.
    pub async fn next(&mut self) -> SseNext {
        let message = tokio::time::timeout(FRAME_TIMEOUT, self.message())
            .await
            .expect("an SSE message in time");
        let Some(message) = message else {
            return SseNext::End;
        };
        let value: Value = serde_json::from_str(&message.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {}", message.data));
        if value["type"] == "close" {
            return SseNext::Close(value["code"].as_u64().unwrap_or(0) as u16);
        }
        match serde_json::from_value(value) {
            Ok(frame) => SseNext::Frame(frame),
            Err(e) => panic!("SSE data is not a frame ({e}): {}", message.data),
        }
    }

    /// The next frame; panics on a close or the end.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.next().await {
            SseNext::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The code of the close message, skipping frames before it; None if
    /// the body ended without one.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                SseNext::Frame(_) => continue,
                SseNext::Close(code) => return Some(code),
                SseNext::End => return None,
            }
        }
    }

    /// One line without its terminator (LF, CR or CRLF), None at the end.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
                let line = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let mut next = end + 1;
                if self.pending[end] == b'\r' {
                    // A CR at the very end may be half of a CRLF.
                    if next == self.pending.len()
                        && let Some(more) = self.response.chunk().await.ok().flatten()
                    {
                        self.pending.extend_from_slice(&more);
                        continue;
                    }
                    if self.pending.get(next) == Some(&b'\n') {
                        next += 1;
                    }
                }
                self.pending.drain(..next);
                return Some(line);
            }
            match self.response.chunk().await {
                Ok(Some(more)) => self.pending.extend_from_slice(&more),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}
