//! Server-to-client WebSocket frames, encoded into one buffer per batch.
//!
//! A server's frames are unmasked and, for this protocol, never fragmented,
//! so encoding is a header and a copy. Writing a whole batch with one
//! `write_all` instead of one syscall per frame is what keeps fan-out cheap:
//! a busy room sends a connection several events between two wake-ups.

use tokio::io::{AsyncWrite, AsyncWriteExt};

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// A buffer above this size is released after a write, so one burst does
/// not pin memory on an otherwise idle connection.
const KEEP_BUFFER_BYTES: usize = 4 * 1024;

pub struct FrameWriter<W> {
    io: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    pub fn text(&mut self, payload: &[u8]) {
        self.frame(OP_TEXT, payload);
    }

    pub fn binary(&mut self, payload: &[u8]) {
        self.frame(OP_BINARY, payload);
    }

    pub fn ping(&mut self) {
        self.frame(OP_PING, &[]);
    }

    pub fn pong(&mut self, payload: &[u8]) {
        // Control payloads are at most 125 bytes (the reader enforces it for pings).
        self.frame(OP_PONG, &payload[..payload.len().min(125)]);
    }

    pub fn close(&mut self, code: u16, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A close reason must fit in a control frame: 123 bytes after the code.
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.frame(OP_CLOSE, &payload);
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.buf.push(FIN | opcode);
        let len = payload.len();
        if len < 126 {
            self.buf.push(len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            self.buf.push(126);
            self.buf.extend_from_slice(&short.to_be_bytes());
        } else {
            self.buf.push(127);
            self.buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.buf.extend_from_slice(payload);
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.io.flush().await?;
        }
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends FIN on the socket after the close frame.
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(f: impl FnOnce(&mut FrameWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(&mut out);
        f(&mut w);
        w.flush().await.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_are_encoded_per_rfc_6455() {
        assert_eq!(written(|w| w.text(b"hi")).await, vec![0x81, 2, b'h', b'i']);
        assert_eq!(written(|w| w.ping()).await, vec![0x89, 0]);
        assert_eq!(
            written(|w| w.close(1000, "ok")).await,
            vec![0x88, 4, 0x03, 0xE8, b'o', b'k']
        );
        let medium = written(|w| w.binary(&[7u8; 300])).await;
        assert_eq!(&medium[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(medium.len(), 4 + 300);
        let large = written(|w| w.text(&[b'a'; 70_000])).await;
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
    }

    #[tokio::test]
    async fn a_batch_is_one_buffer_in_order() {
        let out = written(|w| {
            w.text(b"a");
            w.pong(b"p");
            w.text(b"b");
        })
        .await;
        assert_eq!(out, vec![0x81, 1, b'a', 0x8A, 1, b'p', 0x81, 1, b'b']);
    }

    #[tokio::test]
    async fn a_long_close_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let out = written(|w| w.close(4001, &reason)).await;
        assert!(out[1] <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
