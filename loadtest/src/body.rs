//! The body of a load-test message: who sent it, its place in the sender's
//! sequence for that room, and when it was meant to be sent, padded to the
//! payload size under test.
//!
//! `plt1 <publisher> <counter> <scheduled_us> xxxx...` — ASCII only, so a
//! JSON event frame carries it without escapes and the receiver can borrow
//! it straight out of the frame.

use std::fmt::Write as _;

/// Marks our messages; anything else in a room (room.created, another
/// tool's traffic) is not counted as a delivery.
const MAGIC: &str = "plt1 ";

/// The longest a header can be: magic, two u32, one u64, three spaces.
pub const MAX_HEADER_LEN: usize = MAGIC.len() + 10 + 1 + 10 + 1 + 20 + 1;

/// Largest body the api accepts (characters; our bodies are ASCII).
pub const MAX_BODY_LEN: usize = 4000;

/// What a receiver needs from a message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyHeader {
    /// The publisher (global index across all workers).
    pub publisher: u32,
    /// Per (publisher, room), from 0, in send order.
    pub counter: u32,
    /// The scheduled send time, in microseconds since the sending process's
    /// clock epoch (see [`crate::clock`]).
    pub scheduled_us: u64,
}

/// Writes the body into `out` (cleared first), padded with `x` to `size`
/// bytes; a size smaller than the header gives just the header.
pub fn encode_into(out: &mut String, header: BodyHeader, size: usize) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{MAGIC}{} {} {} ",
        header.publisher, header.counter, header.scheduled_us
    );
    let size = size.min(MAX_BODY_LEN);
    while out.len() < size {
        out.push('x');
    }
}

/// Reads the header of one of our bodies; `None` for anything else.
pub fn decode(body: &str) -> Option<BodyHeader> {
    let rest = body.strip_prefix(MAGIC)?;
    let mut parts = rest.splitn(4, ' ');
    let publisher = parts.next()?.parse().ok()?;
    let counter = parts.next()?.parse().ok()?;
    let scheduled_us = parts.next()?.parse().ok()?;
    // The fourth part (padding) must exist: the header ends with a space.
    parts.next()?;
    Some(BodyHeader {
        publisher,
        counter,
        scheduled_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_round_trips_at_the_requested_size() {
        let header = BodyHeader {
            publisher: 17,
            counter: 4_000_000_000,
            scheduled_us: 123_456_789,
        };
        let mut body = String::new();
        encode_into(&mut body, header, 256);
        assert_eq!(body.len(), 256);
        assert_eq!(decode(&body), Some(header));
    }

    #[test]
    fn a_size_below_the_header_gives_the_bare_header_and_sizes_are_capped() {
        let header = BodyHeader {
            publisher: 0,
            counter: 0,
            scheduled_us: 0,
        };
        let mut body = String::new();
        encode_into(&mut body, header, 1);
        assert_eq!(body, "plt1 0 0 0 ");
        assert_eq!(decode(&body), Some(header));
        encode_into(&mut body, header, 1_000_000);
        assert_eq!(body.len(), MAX_BODY_LEN);
    }

    #[test]
    fn foreign_bodies_are_not_ours() {
        assert_eq!(decode("hello"), None);
        assert_eq!(decode("plt1 1 2"), None);
        assert_eq!(decode("plt1 a 2 3 "), None);
        assert_eq!(decode("plt1 1 2 3"), None, "the header ends with a space");
    }

    #[test]
    fn the_longest_header_fits_the_bound() {
        let mut body = String::new();
        encode_into(
            &mut body,
            BodyHeader {
                publisher: u32::MAX,
                counter: u32::MAX,
                scheduled_us: u64::MAX,
            },
            0,
        );
        assert_eq!(body.len(), MAX_HEADER_LEN);
    }
}
