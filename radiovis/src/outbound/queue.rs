//! A connection's bounded outbound queue (docs/protocol.md#delivery).

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Poll, Waker};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::Outbound;

/// Why a session must close at once, signalled through its queue (the one thing both
/// the fan-out and the server hold of a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// The queue overflowed: the client does not read fast enough.
    SlowConsumer,
    /// The server is stopping: write what is queued and close.
    Shutdown,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection has `capacity` frames waiting: a slow consumer.
    Full,
    /// The session is closing (or was killed).
    Closed,
}

/// A connection's bounded outbound queue: many producers (the fan-out), one consumer
/// (the session). It holds no buffer while nothing waits (unlike a channel that
/// preallocates blocks, or a queue that keeps what a burst made it grow to), and wakes
/// its consumer only when it stops being empty: a burst of N messages is one wake-up.
/// It also carries the [`Kill`] signal to its session, which then needs no token (and no
/// waiting future) of its own.
#[derive(Debug)]
pub struct OutboundQueue {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Whether a push to a full queue replaces its oldest frame instead of failing:
    /// a client that is only ever sent the newest message (a long-poll) cannot be a
    /// slow consumer.
    keep_newest: bool,
    /// Cancelled when the queue overflows too: a web client's connection, closed even
    /// while a write to it is blocked (STOMP sessions wait on the queue itself and have none).
    abort: Option<CancellationToken>,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    /// The consumer waiting in [`OutboundQueue::ready`].
    waker: Option<Waker>,
    closed: bool,
    killed: Option<Kill>,
}

impl OutboundQueue {
    /// A queue that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> OutboundQueue {
        OutboundQueue {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            keep_newest: false,
            abort: None,
        }
    }

    /// A queue that holds only the newest frame pushed to it (a push replaces the one
    /// waiting) and never overflows (a long-poll, answered with the
    /// newest message: docs/protocol.md#http-long-poll).
    pub fn newest(abort: CancellationToken) -> OutboundQueue {
        OutboundQueue {
            keep_newest: true,
            ..OutboundQueue::with_abort(1, abort)
        }
    }

    /// A queue that also cancels `abort` when it overflows (a slow consumer).
    pub fn with_abort(capacity: usize, abort: CancellationToken) -> OutboundQueue {
        OutboundQueue {
            abort: Some(abort),
            ..OutboundQueue::new(capacity)
        }
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.closed || inner.killed.is_some() {
                return Err(PushError::Closed);
            }
            if inner.items.len() >= self.capacity {
                if !self.keep_newest {
                    return Err(PushError::Full);
                }
                // The consumer was woken for the one replaced.
                inner.items.pop_front();
                inner.items.push_back(item);
                return Ok(());
            }
            inner.items.push_back(item);
            if inner.items.len() > 1 {
                // The consumer was woken for the first one and has not taken it yet.
                return Ok(());
            }
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Completes when frames are waiting or the session is killed (cancel-safe);
    /// returns the kill, if any. The future is two pointers: every idle session holds
    /// one.
    pub fn ready(&self) -> impl Future<Output = Option<Kill>> + '_ {
        self.wait(|inner| !inner.items.is_empty() || inner.killed.is_some())
    }

    /// Completes when the session is killed (cancel-safe).
    pub async fn killed(&self) -> Kill {
        loop {
            if let Some(kill) = self.wait(|inner| inner.killed.is_some()).await {
                return kill;
            }
        }
    }

    /// Waits until `done` holds, then returns the kill (if any); the consumer's waker
    /// is kept for the producers.
    fn wait<'a>(
        &'a self,
        done: impl Fn(&Inner) -> bool + 'a,
    ) -> impl Future<Output = Option<Kill>> + 'a {
        std::future::poll_fn(move |cx| {
            let mut inner = self.inner.lock();
            if done(&inner) {
                return Poll::Ready(inner.killed);
            }
            match &inner.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inner.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Tells the session to close (`reason`); true when this call killed it, false
    /// when it was killed before. Queued frames stay for a shutdown flush.
    pub fn kill(&self, reason: Kill) -> bool {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.killed.is_some() {
                return false;
            }
            inner.killed = Some(reason);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        // A slow consumer's connection is closed even in the middle of a write; at a
        // shutdown its client gets what it is owed first.
        if let (Kill::SlowConsumer, Some(abort)) = (reason, &self.abort) {
            abort.cancel();
        }
        true
    }

    /// Why the session was killed, if it was.
    pub fn kill_reason(&self) -> Option<Kill> {
        self.inner.lock().killed
    }

    /// Appends waiting frames to `out` until it holds `max_bytes` or the queue is
    /// empty; returns how many were taken.
    pub fn drain_into(&self, out: &mut BytesMut, max_bytes: usize) -> usize {
        let mut inner = self.inner.lock();
        let mut n = 0;
        while out.len() < max_bytes {
            let Some(item) = inner.items.pop_front() else {
                break;
            };
            if n == 0 {
                out.reserve(
                    inner.items.len().saturating_add(1) * (item.head.len() + item.tail.len()),
                );
            }
            out.extend_from_slice(&item.head);
            out.extend_from_slice(&item.tail);
            n += 1;
        }
        if inner.items.is_empty() && inner.items.capacity() > 0 {
            // An idle connection holds no queue buffer.
            inner.items = VecDeque::new();
        }
        n
    }

    /// Takes the waiting frames and returns the newest (the one a long-poll answers).
    pub fn take_newest(&self) -> Option<Outbound> {
        let mut inner = self.inner.lock();
        let newest = inner.items.pop_back();
        // An idle client holds no queue buffer.
        inner.items = VecDeque::new();
        newest
    }

    /// Takes every waiting frame when there are at most `max`; `None` (and nothing
    /// taken) when there are more.
    pub fn take_up_to(&self, max: usize) -> Option<VecDeque<Outbound>> {
        let mut inner = self.inner.lock();
        (inner.items.len() <= max).then(|| std::mem::take(&mut inner.items))
    }

    /// Refuses further pushes and drops what is queued.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.items = VecDeque::new();
        inner.waker = None;
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn queue_is_bounded_and_wakes_its_consumer() {
        let q = std::sync::Arc::new(OutboundQueue::new(2));
        let item = || Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(b"T"),
        };
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.try_push(item()), Ok(()));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(q.try_push(item()), Ok(()));
        assert_eq!(q.try_push(item()), Err(PushError::Full));
        assert_eq!(q.kill_reason(), None);
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, 1), 1, "stops at max_bytes");
        assert_eq!(q.drain_into(&mut out, 1024), 1);
        assert_eq!(&out[..], b"HTHT");
        q.close();
        assert_eq!(q.try_push(item()), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_newest_queue_keeps_only_the_newest_frame_and_is_never_full() {
        let abort = CancellationToken::new();
        let q = std::sync::Arc::new(OutboundQueue::newest(abort.clone()));
        let item = |tail: &'static [u8]| Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(tail),
        };
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        for tail in [&b"1"[..], b"2", b"3"] {
            assert_eq!(q.try_push(item(tail)), Ok(()));
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(q.len(), 1);
        assert_eq!(q.kill_reason(), None, "never a slow consumer");
        assert!(!abort.is_cancelled());
        let newest = q.take_newest().expect("a frame");
        assert_eq!(&newest.tail[..], b"3");
        assert!(q.take_newest().is_none(), "taken");
        assert!(q.kill(Kill::Shutdown));
        assert!(
            !abort.is_cancelled(),
            "a shutdown lets the client have its answer"
        );
    }

    #[tokio::test]
    async fn a_kill_wakes_the_consumer_once_and_keeps_what_is_queued() {
        let q = std::sync::Arc::new(OutboundQueue::new(4));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.killed().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            q.try_push(Outbound {
                head: Arc::from(&b"H"[..]),
                tail: Bytes::from_static(b"T"),
            }),
            Ok(())
        );
        assert!(q.kill(Kill::Shutdown), "first kill");
        assert!(!q.kill(Kill::SlowConsumer), "killed already");
        let reason = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(reason, Kill::Shutdown);
        let ready = tokio::time::timeout(std::time::Duration::from_secs(1), q.ready()).await;
        assert_eq!(ready, Ok(Some(Kill::Shutdown)), "a killed queue is ready");
        let mut out = BytesMut::new();
        assert_eq!(
            q.drain_into(&mut out, 1024),
            1,
            "kept for the shutdown flush"
        );
        let refused = q.try_push(Outbound {
            head: Arc::from(&b"H"[..]),
            tail: Bytes::from_static(b"T"),
        });
        assert_eq!(refused, Err(PushError::Closed));
    }
}
