//! The bounded outbound queue of one connection.
//!
//! Everything sent to a client — replies, relays, broadcasts — is an encoded
//! [`OutFrame`] pushed here by code running on the connection's shard thread;
//! the connection's writer drains the whole queue into one vectored write.
//! Single-threaded by design (`Cell`/`RefCell`, a plain `Waker`): only the
//! owning shard touches it, so a delivery costs no lock and no atomic beyond
//! the frame's reference count.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::protocol::wsframe::OutFrame;

use super::CloseReason;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the frame was dropped (and counted).
    Dropped,
    /// The connection is closing; nothing more is accepted.
    Closed,
}

pub struct Outbox {
    queue: RefCell<VecDeque<OutFrame>>,
    waker: Cell<Option<Waker>>,
    /// Woken when the outbox starts closing (the session owner waits on it).
    close_waker: Cell<Option<Waker>>,
    /// Woken when everything queued has been handed to the transport.
    flush_waker: Cell<Option<Waker>>,
    /// The writer is writing a batch it took.
    writing: Cell<bool>,
    closing: RefCell<Option<CloseReason>>,
    /// Drops since the writer last made progress: a client that keeps
    /// overflowing without reading anything is cut off.
    drops_without_progress: Cell<u32>,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            close_waker: Cell::new(None),
            flush_waker: Cell::new(None),
            writing: Cell::new(false),
            closing: RefCell::new(None),
            drops_without_progress: Cell::new(0),
            limit,
        }
    }

    pub fn push(&self, frame: OutFrame) -> Pushed {
        if self.closing.borrow().is_some() {
            return Pushed::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= self.limit {
            let drops = self.drops_without_progress.get() + 1;
            self.drops_without_progress.set(drops);
            if drops as usize > self.limit {
                drop(queue);
                self.abort(CloseReason::SlowConsumer);
            }
            return Pushed::Dropped;
        }
        queue.push_back(frame);
        drop(queue);
        self.wake();
        Pushed::Queued
    }

    /// Queues a frame that must not be dropped (a reply the client waits
    /// for, a heartbeat): if the queue is full, the client is not reading,
    /// and the connection is closed rather than left waiting forever.
    pub fn push_or_close(&self, frame: OutFrame) -> Pushed {
        let pushed = self.push(frame);
        if pushed == Pushed::Dropped {
            self.abort(CloseReason::SlowConsumer);
        }
        pushed
    }

    /// Sends what is queued, then `last` (typically a close frame), then ends.
    pub fn close_after(&self, last: Option<OutFrame>, reason: CloseReason) {
        if self.closing.borrow().is_some() {
            return;
        }
        if let Some(frame) = last {
            self.queue.borrow_mut().push_back(frame);
        }
        self.set_closing(reason);
    }

    /// Ends the connection without flushing (keeps the first reason given).
    pub fn abort(&self, reason: CloseReason) {
        self.queue.borrow_mut().clear();
        if self.closing.borrow().is_none() {
            self.set_closing(reason);
        }
        self.wake();
    }

    fn set_closing(&self, reason: CloseReason) {
        *self.closing.borrow_mut() = Some(reason);
        self.wake();
        if let Some(waker) = self.close_waker.take() {
            waker.wake();
        }
    }

    /// Resolves with the reason once the outbox starts closing.
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| match &*self.closing.borrow() {
            Some(reason) => Poll::Ready(reason.clone()),
            None => {
                self.close_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    pub fn is_closing(&self) -> bool {
        self.closing.borrow().is_some()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closing.borrow().clone()
    }

    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Takes everything queued, leaving the queue empty.
    pub fn take_all(&self) -> VecDeque<OutFrame> {
        std::mem::take(&mut *self.queue.borrow_mut())
    }

    /// Records that the writer got bytes onto the socket.
    pub fn progressed(&self) {
        self.drops_without_progress.set(0);
    }

    /// The writer took a batch and is writing it (`true`), or is done (`false`).
    pub fn set_writing(&self, writing: bool) {
        self.writing.set(writing);
        if !writing {
            if let Some(waker) = self.flush_waker.take() {
                waker.wake();
            }
        }
    }

    /// Resolves once everything queued so far has been handed to the transport.
    pub async fn flushed(&self) {
        poll_fn(|cx| {
            if (self.queue.borrow().is_empty() && !self.writing.get()) || self.closing.borrow().is_some() {
                Poll::Ready(())
            } else {
                self.flush_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when there is something to write or the connection is closing.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.queue.borrow().is_empty() || self.closing.borrow().is_some() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::OpCode;

    fn frame() -> OutFrame {
        OutFrame::new(OpCode::Text, b"42[\"x\"]")
    }

    #[test]
    fn drops_when_full_and_aborts_a_client_that_stays_stuck() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(frame()), Pushed::Queued);
        assert_eq!(outbox.push(frame()), Pushed::Queued);
        assert_eq!(outbox.push(frame()), Pushed::Dropped);
        outbox.progressed();
        assert_eq!(outbox.push(frame()), Pushed::Dropped);
        assert_eq!(outbox.push(frame()), Pushed::Dropped);
        assert!(!outbox.is_closing());
        assert_eq!(outbox.push(frame()), Pushed::Dropped);
        assert_eq!(outbox.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(outbox.push(frame()), Pushed::Closed);
    }

    #[test]
    fn a_reply_that_does_not_fit_closes_the_connection() {
        let outbox = Outbox::new(1);
        assert_eq!(outbox.push(frame()), Pushed::Queued);
        assert_eq!(outbox.push_or_close(frame()), Pushed::Dropped);
        assert_eq!(outbox.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn close_after_keeps_queued_frames_and_appends_the_last_one() {
        let outbox = Outbox::new(8);
        outbox.push(frame());
        outbox.close_after(Some(OutFrame::close(1000, "")), CloseReason::ServerShutdown);
        assert_eq!(outbox.push(frame()), Pushed::Closed);
        let all = outbox.take_all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].wire()[0], 0x88);
    }
}
