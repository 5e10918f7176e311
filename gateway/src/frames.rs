//! Server-to-client WebSocket frames, encoded onto the end of a buffer.
//!
//! A server's frames are unmasked and, for this protocol, never fragmented,
//! so encoding is a header and a copy. Frames for one connection accumulate
//! in one buffer and go out with one write (see [`crate::outbox`]).

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

pub fn text(buf: &mut Vec<u8>, payload: &[u8]) {
    frame(buf, OP_TEXT, payload);
}

pub fn binary(buf: &mut Vec<u8>, payload: &[u8]) {
    frame(buf, OP_BINARY, payload);
}

pub fn ping(buf: &mut Vec<u8>) {
    frame(buf, OP_PING, &[]);
}

pub fn pong(buf: &mut Vec<u8>, payload: &[u8]) {
    // The reader enforces the limit on pings; this keeps a pong valid anyway.
    frame(
        buf,
        OP_PONG,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    );
}

pub fn close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    // The reason must fit in a control frame after the 2-byte code.
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    header(buf, OP_CLOSE, 2 + cut);
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(&reason.as_bytes()[..cut]);
}

fn frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    header(buf, opcode, payload.len());
    buf.extend_from_slice(payload);
}

fn header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.reserve(len + 10);
    buf.push(FIN | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&short.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        f(&mut buf);
        buf
    }

    #[test]
    fn frames_are_encoded_per_rfc_6455() {
        assert_eq!(encoded(|b| text(b, b"hi")), vec![0x81, 2, b'h', b'i']);
        assert_eq!(encoded(ping), vec![0x89, 0]);
        assert_eq!(
            encoded(|b| close(b, 1000, "ok")),
            vec![0x88, 4, 0x03, 0xE8, b'o', b'k']
        );
        let medium = encoded(|b| binary(b, &[7u8; 300]));
        assert_eq!(&medium[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(medium.len(), 4 + 300);
        let large = encoded(|b| text(b, &[b'a'; 70_000]));
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn frames_append_in_order() {
        let out = encoded(|b| {
            text(b, b"a");
            pong(b, b"p");
            text(b, b"b");
        });
        assert_eq!(out, vec![0x81, 1, b'a', 0x8A, 1, b'p', 0x81, 1, b'b']);
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let out = encoded(|b| close(b, 4001, &reason));
        assert!(out[1] <= 125);
        assert_eq!(out.len(), 2 + out[1] as usize);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
