//! A connection's outbound queue.
//!
//! Bounded, never blocking the producer (the node's fan-out must not wait on
//! one slow client), and empty-cheap: an idle connection's queue holds no
//! buffer at all, which matters at tens of thousands of connections.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Why a connection is being closed: code and reason for the close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Pong payloads owed to the client's pings.
    pongs: VecDeque<Bytes>,
    close: Option<CloseReason>,
}

/// What the writer takes in one go.
#[derive(Default)]
pub struct Batch {
    pub frames: VecDeque<Bytes>,
    pub pongs: VecDeque<Bytes>,
    pub close: Option<CloseReason>,
}

pub struct OutQueue {
    state: Mutex<State>,
    /// Wakes the writer: something to send.
    notify: Notify,
    /// Wakes the reader: the connection is closing.
    closing: Notify,
    capacity: usize,
}

/// The queue is full: the client is not reading.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl OutQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            closing: Notify::new(),
            capacity,
        }
    }

    /// Queues a data frame. Frames pushed after close are dropped silently.
    pub fn push(&self, frame: Bytes) -> Result<(), Full> {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return Ok(());
            }
            if state.frames.len() >= self.capacity {
                return Err(Full);
            }
            state.frames.push_back(frame);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Queues a pong (control frames bypass the data bound; a client can
    /// only have a few pings in flight before the frame rate limit stops it).
    pub fn push_pong(&self, payload: Bytes) {
        self.lock().pongs.push_back(payload);
        self.notify.notify_one();
    }

    /// Asks the writer to send a close frame and stop. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut state = self.lock();
            if state.close.is_none() {
                state.close = Some(reason);
            }
        }
        self.notify.notify_one();
        self.closing.notify_waiters();
    }

    /// Resolves once [`OutQueue::close`] has been called.
    pub async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close in between still wakes us.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Waits until there is something to write, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || !state.pongs.is_empty() || state.close.is_some() {
                    return Batch {
                        frames: std::mem::take(&mut state.frames),
                        pongs: std::mem::take(&mut state.pongs),
                        close: state.close.clone(),
                    };
                }
            }
            self.notify.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push or take), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_in_one_batch() {
        let q = OutQueue::new(4);
        q.push(Bytes::from_static(b"1")).unwrap();
        q.push(Bytes::from_static(b"2")).unwrap();
        let batch = q.next_batch().await;
        assert_eq!(
            batch.frames,
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        assert_eq!(batch.close, None);
    }

    #[test]
    fn a_full_queue_refuses_instead_of_blocking() {
        let q = OutQueue::new(2);
        q.push(Bytes::new()).unwrap();
        q.push(Bytes::new()).unwrap();
        assert_eq!(q.push(Bytes::new()), Err(Full));
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_later_frames_are_dropped() {
        let q = OutQueue::new(2);
        q.close(CloseReason {
            code: 4009,
            reason: "slow",
        });
        q.close(CloseReason {
            code: 1001,
            reason: "later",
        });
        q.push(Bytes::from_static(b"x")).unwrap();
        let batch = q.next_batch().await;
        assert!(batch.frames.is_empty());
        assert_eq!(
            batch.close,
            Some(CloseReason {
                code: 4009,
                reason: "slow"
            })
        );
    }

    #[tokio::test]
    async fn a_waiting_reader_learns_of_the_close() {
        let q = std::sync::Arc::new(OutQueue::new(2));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.closed().await }
        });
        tokio::task::yield_now().await;
        q.close(CloseReason {
            code: 1001,
            reason: "bye",
        });
        waiter.await.unwrap();
        q.closed().await;
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push() {
        let q = std::sync::Arc::new(OutQueue::new(2));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next_batch().await.frames.len() }
        });
        tokio::task::yield_now().await;
        q.push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
