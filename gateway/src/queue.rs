//! A live connection's bounded queue of frames, from the hub to the connection's task.
//!
//! Most connections are idle, and memory per connection is what limits how many one gateway
//! holds: this queue is one small allocation until frames arrive (a tokio `mpsc` channel
//! allocates a block of 32 slots per channel up front). One producer (the hub, under its lock)
//! and one consumer (the socket's task). A full queue refuses the frame: the hub then drops
//! the connection, whose task closes the socket (the client resyncs from the inbox).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

struct Shared {
    state: Mutex<State>,
    /// Wakes the consumer; a notification given while it is not waiting is kept (one permit).
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A queue holding at most `capacity` frames (at least one).
pub fn queue(capacity: usize) -> (FrameSender, FrameReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        ready: Notify::new(),
        capacity: capacity.max(1),
    });
    (FrameSender(shared.clone()), FrameReceiver(shared))
}

/// The hub's end. Dropping it ends the receiver's stream once the queued frames are taken.
pub struct FrameSender(Arc<Shared>);

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The consumer is `capacity` frames behind.
    Full,
    /// The consumer is gone.
    Closed,
}

impl FrameSender {
    pub fn try_send(&self, frame: Bytes) -> Result<(), Refused> {
        {
            let mut s = self.0.state();
            if s.receiver_gone {
                return Err(Refused::Closed);
            }
            if s.frames.len() >= self.0.capacity {
                return Err(Refused::Full);
            }
            s.frames.push_back(frame);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        self.0.state().sender_gone = true;
        self.0.ready.notify_one();
    }
}

/// The connection's end.
pub struct FrameReceiver(Arc<Shared>);

impl FrameReceiver {
    /// The next frame; `None` once the sender is gone and the queue is empty. Cancel-safe:
    /// a frame is only taken in the poll that returns it.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut s = self.0.state();
                if let Some(f) = s.frames.pop_front() {
                    return Some(f);
                }
                if s.sender_gone {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// A frame already queued, if any.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.0.state().frames.pop_front()
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.receiver_gone = true;
        s.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_end_is_seen() {
        let (tx, mut rx) = queue(3);
        for i in 0..3u8 {
            tx.try_send(Bytes::from(vec![i])).unwrap();
        }
        assert_eq!(tx.try_send(Bytes::from_static(b"x")), Err(Refused::Full));
        for i in 0..3u8 {
            assert_eq!(rx.recv().await, Some(Bytes::from(vec![i])));
        }
        assert_eq!(rx.try_recv(), None);
        tx.try_send(Bytes::from_static(b"last")).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(Bytes::from_static(b"last")));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_and_a_gone_receiver_refuses() {
        let (tx, mut rx) = queue(8);
        let waiter = tokio::spawn(async move {
            let f = rx.recv().await;
            (f, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"hi")).unwrap();
        let (f, rx) = waiter.await.unwrap();
        assert_eq!(f, Some(Bytes::from_static(b"hi")));
        drop(rx);
        assert_eq!(
            tx.try_send(Bytes::from_static(b"late")),
            Err(Refused::Closed)
        );
    }
}
