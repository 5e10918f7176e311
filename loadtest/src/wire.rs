//! The coordinator–agent protocol: length-prefixed JSON over TCP.
//!
//! Each message is a 4-byte big-endian length and that many bytes of JSON.
//! A session is: agent `hello`; coordinator `setup` (the agent's share of
//! connections, rooms and streams, with their tokens); agent `ready`; then
//! any number of `run` (an [`Op`] and the wall-clock time at which every
//! agent starts it), each answered by `progress` about once a second and
//! one `done` carrying the report (histograms in HdrHistogram V2 form);
//! `abort` ends the running operation early with a partial report; `bye`
//! (or the coordinator going away) closes every connection and ends the
//! session.

use crate::net::FileLimit;
use crate::work::{Op, OpReport, Progress, WorkerSetup};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped when a message changes shape: a coordinator and an agent of
/// different versions refuse each other instead of misreading.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message: a setup carries one access token (~300 bytes) per
/// connection, so 100,000 connections per agent stay far below this.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    Setup { setup: Box<WorkerSetup> },
    Run { op: Op, start_unix_ms: u64 },
    Abort,
    Bye,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    Hello { version: u32, files: FileLimit },
    Ready,
    Progress { progress: Progress },
    Done { report: Box<OpReport> },
    Failed { error: String },
}

pub async fn write_msg<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::other("message too large"));
    }
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await?;
    w.flush().await
}

/// The next message, or None when the peer closed the connection between
/// messages.
pub async fn read_msg<R, T>(r: &mut R) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_through_a_byte_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_msg(
            &mut a,
            &ToAgent::Run {
                op: Op::Connect { rate: 10.0 },
                start_unix_ms: 5,
            },
        )
        .await
        .unwrap();
        write_msg(&mut a, &ToAgent::Abort).await.unwrap();
        drop(a);
        let first: Option<ToAgent> = read_msg(&mut b).await.unwrap();
        assert!(matches!(
            first,
            Some(ToAgent::Run { op: Op::Connect { rate }, start_unix_ms: 5 }) if rate == 10.0
        ));
        assert!(matches!(
            read_msg::<_, ToAgent>(&mut b).await.unwrap(),
            Some(ToAgent::Abort)
        ));
        assert!(read_msg::<_, ToAgent>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_without_allocating_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_u32(u32::MAX).await.unwrap();
        let err = read_msg::<_, ToAgent>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
