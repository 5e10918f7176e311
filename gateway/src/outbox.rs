//! A connection's way out: encoded frames waiting for the socket, and the
//! socket's write half.
//!
//! Whoever produces a frame writes it. The room shards append event frames
//! to the buffers of every member during one pass over their queue and
//! then write each touched connection once, with a non-blocking write from
//! the shard's own task: no task wake-up per delivery, and a busy room
//! sends a connection several events in one segment. Replies, notices and
//! pings are written at once by whoever sends them. Only when the socket
//! cannot take everything (the client reads slowly) does a flusher task
//! wait for it; while it waits, nobody else touches the socket, so there is
//! never more than one waker registered for its write readiness.
//!
//! Bounded (a connection with `capacity` frames unsent is closed as a slow
//! consumer, the node never waits for it) and empty-cheap: an idle
//! connection holds no buffer and no task of its own.
//!
//! The same outbox serves a Server-Sent Events stream: only the framing
//! differs ([`Framing`]), so an SSE client gets the very frames, in the
//! same order, through the same fan-out as a WebSocket client.

use crate::frames;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;

/// Why a connection is being closed: code and reason for the close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// The socket's write half, whatever stream it is.
pub type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// A buffer above this size is released once written, so one burst does
/// not pin memory on an otherwise idle connection.
const KEEP_BUFFER_BYTES: usize = 4 * 1024;

/// The frame could not be queued: `capacity` frames are waiting already.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// How frames are put on the wire.
pub enum Framing {
    /// WebSocket frames (RFC 6455) on an upgraded connection.
    WebSocket,
    /// Messages of a Server-Sent Events stream (JSON only).
    Sse(crate::sse::Encoder),
}

/// What [`Outbox::queue`] asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// The frame is in the buffer and nobody has promised to write it yet:
    /// the caller must call [`Outbox::flush`] (now, or at the end of its pass).
    FlushNeeded,
    /// Someone will write it (a flush is already promised, or the flusher
    /// task is waiting for the socket).
    Covered,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// What a deferred flush should wait for (see [`Outbox::flush_after`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    Done,
    /// The connection wrote less than the coalescing window ago: flush again then.
    Later(Instant),
}

struct State {
    /// None once the connection is finished (or before a test gives one).
    io: Option<Sink>,
    framing: Framing,
    /// Encoded frames; `buf[sent..]` is not written yet.
    buf: Vec<u8>,
    sent: usize,
    /// Data frames in `buf` since it was last empty (the slow-consumer bound).
    frames: usize,
    /// Set by [`Outbox::close`] (its close frame is then the last thing in
    /// `buf`) or by a failed write (the socket is gone).
    close: Option<CloseReason>,
    /// A flush is promised by whoever got [`Queued::FlushNeeded`].
    promised: bool,
    /// The flusher task owns the socket until `buf` is written.
    flusher: Option<Waker>,
    flusher_running: bool,
    last_write: Option<Instant>,
    finished: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection's reader: the connection is closing.
    closing: Notify,
    /// Wakes whoever waits for the last frame to be written.
    finished: Notify,
    capacity: usize,
}

impl Outbox {
    /// A WebSocket connection's outbox.
    pub fn new(io: Sink, capacity: usize) -> Arc<Self> {
        Self::with_framing(io, capacity, Framing::WebSocket)
    }

    pub fn with_framing(io: Sink, capacity: usize, framing: Framing) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                io: Some(io),
                framing,
                buf: Vec::new(),
                sent: 0,
                frames: 0,
                close: None,
                promised: false,
                flusher: None,
                flusher_running: false,
                last_write: None,
                finished: false,
            }),
            closing: Notify::new(),
            finished: Notify::new(),
            capacity,
        })
    }

    /// Appends a data frame (text for JSON, binary for MessagePack) without
    /// writing it. See [`Queued`] for what the caller owes.
    pub fn queue(&self, binary: bool, payload: &[u8]) -> Result<Queued, Full> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Ok(Queued::Closed);
        }
        if state.frames >= self.capacity {
            return Err(Full);
        }
        state.frames += 1;
        let State { framing, buf, .. } = &mut *state;
        match framing {
            Framing::WebSocket if binary => frames::binary(buf, payload),
            Framing::WebSocket => frames::text(buf, payload),
            Framing::Sse(encoder) => encoder.data(buf, payload),
        }
        Ok(promise(&mut state))
    }

    /// Queues a data frame and writes it now, with anything queued before
    /// it (a reply is not held back by a deferred flush).
    pub fn send(self: &Arc<Self>, binary: bool, payload: &[u8]) -> Result<(), Full> {
        if self.queue(binary, payload)? != Queued::Closed {
            self.flush();
        }
        Ok(())
    }

    /// Sends a ping now (heartbeat): a WebSocket ping, or an SSE comment
    /// (which also keeps proxies from timing an idle stream out).
    pub fn ping(self: &Arc<Self>) {
        self.control(|framing, buf| match framing {
            Framing::WebSocket => frames::ping(buf),
            Framing::Sse(_) => crate::sse::Encoder::heartbeat(buf),
        });
    }

    /// Answers a client's ping now. Control frames bypass the data bound: a
    /// client has only a few pings in flight before its frame limit stops it.
    pub fn pong(self: &Arc<Self>, payload: &[u8]) {
        self.control(|framing, buf| {
            // An SSE client sends nothing, so it never pings.
            if let Framing::WebSocket = framing {
                frames::pong(buf, payload);
            }
        });
    }

    fn control(self: &Arc<Self>, encode: impl FnOnce(&mut Framing, &mut Vec<u8>)) {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return;
            }
            let State { framing, buf, .. } = &mut *state;
            encode(framing, buf);
        }
        self.flush();
    }

    /// Sends a close frame after everything queued, then ends the stream.
    /// The first reason wins; frames queued later are dropped.
    pub fn close(self: &Arc<Self>, reason: CloseReason) {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return;
            }
            let State { framing, buf, .. } = &mut *state;
            match framing {
                Framing::WebSocket => frames::close(buf, reason.code, reason.reason),
                Framing::Sse(encoder) => encoder.close(buf, reason.code, reason.reason),
            }
            state.close = Some(reason);
        }
        self.closing.notify_waiters();
        self.flush();
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Resolves once [`Outbox::close`] has been called (or a write failed).
    pub async fn closed(&self) {
        self.wait(&self.closing, |s| s.close.is_some()).await;
    }

    /// Waits until the close frame is written and the stream shut down (or
    /// the write failed), at most `limit`; then lets go of the socket.
    pub async fn finish(&self, limit: Duration) {
        let written = self.wait(&self.finished, |s| s.finished);
        let _ = tokio::time::timeout(limit, written).await;
        let mut state = self.lock();
        state.io = None;
        state.finished = true;
        if let Some(waker) = state.flusher.take() {
            // The flusher sees the socket gone and ends.
            waker.wake();
        }
    }

    /// Writes what the socket takes now. Whatever remains is left to a
    /// flusher task that waits for the socket (started here if needed).
    pub fn flush(self: &Arc<Self>) {
        let mut state = self.lock();
        state.promised = false;
        if state.flusher_running || state.finished {
            return;
        }
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        if write_some(&mut state, &mut cx, &self.finished, &self.closing).is_pending() {
            state.flusher_running = true;
            drop(state);
            let this = self.clone();
            tokio::spawn(async move { poll_fn(|cx| this.poll_drain(cx)).await });
        }
    }

    /// Like [`Outbox::flush`], unless the last write was less than `window`
    /// ago: then the caller keeps the promise and flushes at the time returned,
    /// so a connection receiving many events gets them in fewer, larger writes.
    pub fn flush_after(self: &Arc<Self>, window: Duration, now: Instant) -> Flushed {
        if !window.is_zero() {
            let state = self.lock();
            if let Some(last) = state.last_write {
                let due = last + window;
                if due > now && state.close.is_none() && !state.flusher_running {
                    return Flushed::Later(due);
                }
            }
        }
        self.flush();
        Flushed::Done
    }

    /// The flusher task: writes until the buffer is empty or the socket fails.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.finished {
            state.flusher_running = false;
            state.flusher = None;
            return Poll::Ready(());
        }
        match write_some(&mut state, cx, &self.finished, &self.closing) {
            Poll::Ready(()) => {
                state.flusher_running = false;
                state.flusher = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                state.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Resolves once `done` holds; `notify` is what wakes a change of it.
    async fn wait(&self, notify: &Notify, done: impl Fn(&State) -> bool) {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between still wakes us.
            notified.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (appends and
        // bookkeeping around one non-blocking write), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The flush promise after appending to the buffer.
fn promise(state: &mut State) -> Queued {
    if state.promised || state.flusher_running {
        Queued::Covered
    } else {
        state.promised = true;
        Queued::FlushNeeded
    }
}

/// Writes `buf[sent..]` until done (Ready) or the socket is full (Pending,
/// with `cx`'s waker registered). A failed write closes the connection.
fn write_some(
    state: &mut State,
    cx: &mut Context<'_>,
    finished: &Notify,
    closing: &Notify,
) -> Poll<()> {
    let State { io, buf, sent, .. } = state;
    let Some(sink) = io.as_mut() else {
        return Poll::Ready(());
    };
    let mut failed = false;
    let mut wrote = false;
    let mut full = false;
    while *sent < buf.len() {
        match sink.as_mut().poll_write(cx, &buf[*sent..]) {
            Poll::Ready(Ok(0)) => {
                failed = true;
                break;
            }
            Poll::Ready(Ok(n)) => {
                *sent += n;
                wrote = true;
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(_)) => {
                failed = true;
                break;
            }
            Poll::Pending => {
                full = true;
                break;
            }
        }
    }
    if wrote {
        state.last_write = Some(Instant::now());
        // With gateway_deliveries_total, shows how many events share a write.
        metrics::counter!("gateway_socket_writes_total").increment(1);
    }
    if full {
        return Poll::Pending;
    }
    if failed {
        // The peer is gone: stop everyone from queueing more for it, and
        // tell the reader.
        state.io = None;
        state.buf = Vec::new();
        state.sent = 0;
        if state.close.is_none() {
            state.close = Some(CloseReason {
                code: shared::protocol::close::GOING_AWAY,
                reason: "write failed",
            });
        }
        state.finished = true;
        closing.notify_waiters();
        finished.notify_waiters();
        return Poll::Ready(());
    }
    // Everything is written.
    if state.buf.capacity() > KEEP_BUFFER_BYTES {
        state.buf = Vec::new();
    } else {
        state.buf.clear();
    }
    state.sent = 0;
    state.frames = 0;
    if state.close.is_some() {
        // The close frame was the last thing queued: end the stream.
        if let Some(sink) = state.io.as_mut()
            && sink.as_mut().poll_shutdown(cx).is_pending()
        {
            return Poll::Pending;
        }
        state.io = None;
        state.finished = true;
        finished.notify_waiters();
    }
    Poll::Ready(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pair(window: usize) -> (Arc<Outbox>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(window);
        (Outbox::new(Box::pin(a), 4), b)
    }

    async fn read_n(peer: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        peer.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_queued_in_one_pass_go_out_in_order_in_one_write() {
        let (out, mut peer) = pair(1024);
        assert_eq!(out.queue(false, b"a").unwrap(), Queued::FlushNeeded);
        assert_eq!(out.queue(false, b"b").unwrap(), Queued::Covered);
        out.flush();
        assert_eq!(
            read_n(&mut peer, 6).await,
            vec![0x81, 1, b'a', 0x81, 1, b'b']
        );
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_instead_of_blocking() {
        // A socket that takes nothing: every frame stays queued.
        let (out, _peer) = pair(1);
        for _ in 0..4 {
            out.send(false, b"xx").unwrap();
        }
        assert_eq!(out.queue(false, b"x"), Err(Full));
    }

    #[tokio::test]
    async fn what_the_socket_cannot_take_now_is_written_when_it_can() {
        let (out, mut peer) = pair(8);
        let payload = [7u8; 100];
        out.send(true, &payload).unwrap();
        let got = read_n(&mut peer, 102).await;
        assert_eq!(&got[..2], &[0x82, 100]);
        assert_eq!(&got[2..], &payload);
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_later_frames_are_dropped() {
        let (out, mut peer) = pair(1024);
        out.close(CloseReason {
            code: 4009,
            reason: "slow",
        });
        out.close(CloseReason {
            code: 1001,
            reason: "later",
        });
        assert_eq!(out.queue(false, b"x").unwrap(), Queued::Closed);
        out.finish(Duration::from_secs(1)).await;
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, vec![0x88, 6, 0x0F, 0xA9, b's', b'l', b'o', b'w']);
    }

    #[tokio::test]
    async fn a_waiting_reader_learns_of_the_close() {
        let (out, _peer) = pair(1024);
        let waiter = tokio::spawn({
            let out = out.clone();
            async move { out.closed().await }
        });
        tokio::task::yield_now().await;
        out.close(CloseReason {
            code: 1001,
            reason: "bye",
        });
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_closes_the_connection() {
        let (out, peer) = pair(1024);
        drop(peer);
        out.send(false, b"x").unwrap();
        assert!(out.is_closed());
        out.closed().await;
    }

    #[tokio::test]
    async fn a_recent_write_defers_the_next_flush_by_the_window() {
        let (out, mut peer) = pair(1024);
        out.send(false, b"a").unwrap();
        read_n(&mut peer, 3).await;
        assert_eq!(out.queue(false, b"b").unwrap(), Queued::FlushNeeded);
        let now = Instant::now();
        match out.flush_after(Duration::from_secs(60), now) {
            Flushed::Later(due) => assert!(due > now),
            Flushed::Done => panic!("flushed inside the window"),
        }
        // Still promised: the next frame is covered by the deferred flush.
        assert_eq!(out.queue(false, b"c").unwrap(), Queued::Covered);
        assert_eq!(
            out.flush_after(Duration::ZERO, Instant::now()),
            Flushed::Done
        );
        assert_eq!(
            read_n(&mut peer, 6).await,
            vec![0x81, 1, b'b', 0x81, 1, b'c']
        );
    }

    #[tokio::test]
    async fn finishing_lets_go_of_a_socket_that_never_drains() {
        let (out, _peer) = pair(1);
        out.send(false, &[1u8; 64]).unwrap();
        out.close(CloseReason {
            code: 1001,
            reason: "bye",
        });
        out.finish(Duration::from_millis(20)).await;
        assert!(out.lock().io.is_none());
    }
}
