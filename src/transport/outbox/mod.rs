//! The bounded outbound queue of one connection.
//!
//! Everything sent to a client — replies, relays, broadcasts — is an encoded
//! [`OutFrame`] pushed here by code running on the connection's shard thread,
//! and everything queued for a socket leaves in one vectored write.
//! Single-threaded by design (`Cell`/`RefCell`, a plain `Waker`): only the
//! owning shard touches it, so a delivery costs no lock and no atomic beyond
//! the frame's reference count.
//!
//! Who writes: while a WebSocket connection's socket takes everything it is
//! given, the shard's [`flusher`](super::flusher) writes the queue straight to
//! the socket once per scheduler pass, for all such connections in one loop
//! (a broadcast to 10,000 sockets is 10,000 `sendmsg` calls and one task
//! poll, not 10,000 task wake-ups). When a socket pushes back, or on any
//! other transport, the connection's own writer task drains the queue,
//! waiting for the socket to become writable.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::protocol::wsframe::OutFrame;

use super::{CloseReason, Traffic};

mod flusher;
mod queue;

pub use queue::FrameQueue;

/// Frames per vectored write (Linux accepts up to 1024 iovecs).
pub const MAX_IOVECS: usize = 64;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the frame was dropped (and counted).
    Dropped,
    /// The connection is closing; nothing more is accepted.
    Closed,
}

/// Outboxes alive in the process (one per Engine.IO session; the
/// `shardcast_live_objects{kind="outbox"}` gauge): one held past its
/// session's end by a forgotten `Rc` shows here. Touched only when a session
/// opens or is freed.
static LIVE_OUTBOXES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn live_outboxes() -> usize {
    LIVE_OUTBOXES.load(std::sync::atomic::Ordering::Relaxed)
}

impl Drop for Outbox {
    fn drop(&mut self) {
        LIVE_OUTBOXES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `repr(C)`, fields in this order: what a delivery's push and the
/// flusher's write touch comes first, in the allocation's first three cache
/// lines (the reference counts, the queue with its inline frame, the flags,
/// the socket); the wakers and the close reason, which they rarely touch,
/// come last. A broadcast reaches each recipient's outbox at random (a room
/// lists its members in hash order), so every line it touches is a likely
/// cache miss. 208 bytes: with `Rc`'s counts, mimalloc's 224-byte class.
#[repr(C)]
pub struct Outbox {
    queue: RefCell<FrameQueue>,
    limit: u32,
    /// Drops since the writer last made progress: a client that keeps
    /// overflowing without reading anything is cut off.
    drops_without_progress: Cell<u32>,
    /// Bytes of the front frame already written.
    front_written: Cell<u32>,
    /// The writer is writing a batch it took.
    writing: Cell<bool>,
    /// In the flusher's list for this scheduler pass.
    scheduled: Cell<bool>,
    /// Closed without flushing: the connection must end now, even if its
    /// writer is stuck on a socket the client no longer reads.
    aborted: Cell<bool>,
    /// `closing` is set (read on every push; the reason itself is cold).
    is_closing: Cell<bool>,
    /// When the oldest published frame still queued was published (for
    /// `shardcast_broadcast_written_seconds`). One per outbox, not one per
    /// frame: frames stay 40 bytes, and a write that empties the queue
    /// records one sample, at the oldest frame it carried.
    published_at: Cell<Option<Instant>>,
    /// The socket the flusher may write to, while the writer task is idle.
    direct: RefCell<Option<Direct>>,
    /// Woken when everything queued has been handed to the transport.
    flush_waker: Cell<Option<Waker>>,
    waker: Cell<Option<Waker>>,
    /// Woken when the outbox starts closing (the session owner waits on it).
    close_waker: Cell<Option<Waker>>,
    abort_waker: Cell<Option<Waker>>,
    closing: RefCell<Option<CloseReason>>,
}

/// A WebSocket connection's socket, registered by its writer task.
struct Direct {
    fd: RawFd,
    traffic: Rc<Traffic>,
}

/// Unregisters the socket from the flusher when dropped (before the socket
/// can close, so the flusher never writes to a stale descriptor).
pub struct DirectGuard<'a>(&'a Outbox);

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.direct.borrow_mut().take();
    }
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        LIVE_OUTBOXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Outbox {
            queue: RefCell::new(FrameQueue::default()),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            drops_without_progress: Cell::new(0),
            front_written: Cell::new(0),
            writing: Cell::new(false),
            scheduled: Cell::new(false),
            aborted: Cell::new(false),
            is_closing: Cell::new(false),
            published_at: Cell::new(None),
            direct: RefCell::new(None),
            flush_waker: Cell::new(None),
            waker: Cell::new(None),
            close_waker: Cell::new(None),
            abort_waker: Cell::new(None),
            closing: RefCell::new(None),
        }
    }

    pub fn push(self: &Rc<Self>, frame: OutFrame) -> Pushed {
        if self.is_closing.get() {
            return Pushed::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= self.limit as usize {
            let drops = self.drops_without_progress.get() + 1;
            self.drops_without_progress.set(drops);
            if drops > self.limit {
                drop(queue);
                self.abort(CloseReason::SlowConsumer);
            }
            return Pushed::Dropped;
        }
        queue.push_back(frame);
        drop(queue);
        if !self.schedule_direct() {
            self.wake();
        }
        Pushed::Queued
    }

    /// [`push`](Self::push) for a published message (a relay, a broadcast,
    /// an API publish): its write to the socket is timed from `published_at`.
    pub fn push_published(self: &Rc<Self>, frame: OutFrame, published_at: Instant) -> Pushed {
        let pushed = self.push(frame);
        if pushed == Pushed::Queued && self.published_at.get().is_none() {
            self.published_at.set(Some(published_at));
        }
        pushed
    }

    /// When the oldest published frame queued now was published (forgotten
    /// here): the writer task takes it with the frames it takes.
    pub fn take_published_at(&self) -> Option<Instant> {
        self.published_at.take()
    }

    /// Asks for the cache lines a push and the flusher's write touch (see
    /// [`crate::prefetch`]): `Rc`'s counts and the hot fields after them.
    pub fn prefetch(this: &Rc<Outbox>) {
        crate::prefetch::prefetch_rc(this, std::mem::offset_of!(Outbox, close_waker));
    }

    /// Lets the shard's flusher write to `fd` while the writer task waits;
    /// the returned guard takes that back. `fd` must stay open while the
    /// guard lives.
    pub fn write_directly<'a>(self: &'a Rc<Self>, fd: RawFd, traffic: &Rc<Traffic>) -> DirectGuard<'a> {
        *self.direct.borrow_mut() = Some(Direct { fd, traffic: traffic.clone() });
        DirectGuard(self)
    }

    /// Puts this outbox on the flusher's list (once per pass); false if the
    /// writer task has to do the writing.
    fn schedule_direct(self: &Rc<Self>) -> bool {
        if self.writing.get() {
            return false;
        }
        let direct = self.direct.borrow();
        let Some(direct) = direct.as_ref() else { return false };
        if !self.scheduled.get() {
            self.scheduled.set(true);
            flusher::schedule(direct.fd, self.clone());
        }
        true
    }

    /// The flusher's turn: writes what is queued without waiting. If the
    /// socket takes only part of it (or something went wrong), the rest is
    /// left for the writer task, which waits for the socket. When it wrote
    /// everything and that included published frames, adds the oldest
    /// one's publish time to `written`, for the socket's shard.
    fn write_now(&self, written: &mut flusher::Written) {
        self.scheduled.set(false);
        if self.writing.get() || self.is_closing() {
            return;
        }
        let direct = self.direct.borrow();
        let Some(direct) = direct.as_ref() else {
            self.wake();
            return;
        };
        let mut queue = self.queue.borrow_mut();
        let mut offset = self.front_written.get() as usize;
        while !queue.is_empty() {
            let Ok((written, len)) = send_frames(direct.fd, &queue, offset, Next::Writes) else { break };
            direct.traffic.sent(written);
            self.drops_without_progress.set(0);
            advance(&mut queue, &mut offset, written);
            if written < len {
                break;
            }
        }
        self.front_written.set(offset as u32);
        let done = queue.is_empty();
        // A burst spilled; an idle connection gives the memory back.
        queue.release_spill();
        drop(queue);
        if done {
            if let Some(published_at) = self.published_at.take() {
                written.add(published_at, &direct.traffic);
            }
            if let Some(waker) = self.flush_waker.take() {
                waker.wake();
            }
        } else {
            self.wake();
        }
    }

    /// Queues a frame that must not be dropped (a reply the client waits
    /// for, a heartbeat): if the queue is full, the client is not reading,
    /// and the connection is closed rather than left waiting forever.
    pub fn push_or_close(self: &Rc<Self>, frame: OutFrame) -> Pushed {
        let pushed = self.push(frame);
        if pushed == Pushed::Dropped {
            self.abort(CloseReason::SlowConsumer);
        }
        pushed
    }

    /// Ends the connection for `reason`: what is queued goes out, then the
    /// WebSocket close frame the reason calls for (if any).
    pub fn close_for(&self, reason: CloseReason) {
        let frame = reason.close_frame().map(|(code, text)| OutFrame::close(code, text));
        self.close_after(frame, reason);
    }

    /// Sends what is queued, then `last` (typically a close frame), then ends.
    pub fn close_after(&self, last: Option<OutFrame>, reason: CloseReason) {
        if self.is_closing.get() {
            return;
        }
        if let Some(frame) = last {
            self.queue.borrow_mut().push_back(frame);
        }
        self.set_closing(reason);
    }

    /// Ends the connection without flushing (keeps the first reason given).
    pub fn abort(&self, reason: CloseReason) {
        *self.queue.borrow_mut() = FrameQueue::default();
        self.published_at.set(None);
        if !self.is_closing.get() {
            self.set_closing(reason);
        }
        self.aborted.set(true);
        if let Some(waker) = self.abort_waker.take() {
            waker.wake();
        }
        self.wake();
    }

    /// Resolves with the reason once the outbox is aborted (not on a
    /// graceful close, which lets the writer finish).
    pub async fn aborted(&self) -> CloseReason {
        poll_fn(|cx| match (self.aborted.get(), &*self.closing.borrow()) {
            (true, Some(reason)) => Poll::Ready(reason.clone()),
            _ => {
                self.abort_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn set_closing(&self, reason: CloseReason) {
        *self.closing.borrow_mut() = Some(reason);
        self.is_closing.set(true);
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
        self.is_closing.get()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closing.borrow().clone()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Takes everything queued, leaving the queue empty, with how many bytes
    /// of the first frame were already written.
    pub fn take_all(&self) -> (FrameQueue, usize) {
        (std::mem::take(&mut *self.queue.borrow_mut()), self.front_written.replace(0) as usize)
    }

    /// Takes up to `max` frames from the front (a transport that sends whole
    /// frames only: no partial front frame to carry).
    pub fn take_up_to(&self, max: usize) -> FrameQueue {
        let taken = {
            let mut queue = self.queue.borrow_mut();
            if queue.len() <= max {
                // Not timed: a polling client's packets wait for its next GET,
                // which is its round trip, not the broker's latency.
                self.published_at.set(None);
            }
            queue.split_front(max)
        };
        self.wake_if_flushed();
        taken
    }

    /// Wakes a [`Outbox::flushed`] waiter once the queue is empty and no
    /// writer holds frames. A long-polling GET takes frames without a
    /// writer (the WebSocket writer's `set_writing(false)` wakes it there),
    /// so taking must wake it: else a waiter on a polling session (a
    /// namespace's `on_connect` hook) never runs, and the session's
    /// requests queue behind it.
    fn wake_if_flushed(&self) {
        if self.queue.borrow().is_empty() && !self.writing.get() {
            if let Some(waker) = self.flush_waker.take() {
                waker.wake();
            }
        }
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
            if (self.queue.borrow().is_empty() && !self.writing.get()) || self.is_closing.get() {
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
            if !self.queue.borrow().is_empty() || self.is_closing.get() {
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

/// What follows a write on its socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Next {
    /// More writes, or nothing for a while: the bytes leave now.
    Writes,
    /// The socket's close, at once (the session's last write): the bytes
    /// wait (`MSG_MORE`) for the FIN that the close or a shutdown sends, and
    /// leave with it in one segment rather than two. Every connection ends
    /// this way, so a handshake-and-go client costs one loopback segment
    /// less: its transmission, and the wake-up and processing on the
    /// receiving side, which loopback charges to the sender. Only for a
    /// close that follows at once: nothing else pushes the held bytes out.
    Close,
}

/// One non-blocking write of the unwritten bytes of `frames` (`offset`:
/// how far into the front one the socket has got), up to `MAX_IOVECS`
/// frames; returns (bytes written, bytes offered). A single frame, the usual
/// case, is written straight from the queue's inline slot, without filling
/// a slice array.
pub fn send_frames(fd: RawFd, frames: &FrameQueue, offset: usize, next: Next) -> std::io::Result<(usize, usize)> {
    match frames.front() {
        Some(only) if frames.len() == 1 => {
            let only = &only.wire()[offset..];
            send_vectored(fd, &[IoSlice::new(only)], next).map(|written| (written, only.len()))
        }
        _ => {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let (count, len) = fill_slices(frames, offset, &mut slices);
            send_vectored(fd, &slices[..count], next).map(|written| (written, len))
        }
    }
}

/// Points `slices` at the unwritten bytes of up to `MAX_IOVECS` frames;
/// returns how many slices and how many bytes.
fn fill_slices<'a>(frames: &'a FrameQueue, offset: usize, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> (usize, usize) {
    let mut len = 0;
    let mut count = 0;
    for (slot, frame) in slices.iter_mut().zip(frames.iter()) {
        let bytes = if count == 0 { &frame.wire()[offset..] } else { &frame.wire()[..] };
        *slot = IoSlice::new(bytes);
        len += bytes.len();
        count += 1;
    }
    (count, len)
}

/// Drops the frames that `written` bytes completed; `offset` is how far into
/// the front frame the socket has got.
pub fn advance(frames: &mut FrameQueue, offset: &mut usize, mut written: usize) {
    while written > 0 {
        let Some(front) = frames.front() else { break };
        let remaining_in_front = front.wire().len() - *offset;
        if written >= remaining_in_front {
            written -= remaining_in_front;
            frames.pop_front();
            *offset = 0;
        } else {
            *offset += written;
            written = 0;
        }
    }
}

/// One non-blocking `sendmsg` (a plain `send` for a single slice, the usual
/// case: one broadcast frame per socket, which then costs the kernel no
/// `msghdr` or iovec to copy in). Hand-written rather than through tokio:
/// the flusher writes outside any task, and `sendmsg` skips the VFS layer
/// that `writev` goes through (about 5 % of a loopback write, measured with
/// perf). Made as raw system calls: libc's `send` and `sendmsg` are thread
/// cancellation points, which wrap each call in two more function calls
/// (`__pthread_enable/disable_asynccancel`, ~1 % of a broadcast's profile)
/// for a feature this program never uses.
pub(super) fn send_vectored(fd: RawFd, slices: &[IoSlice<'_>], next: Next) -> std::io::Result<usize> {
    let more = if next == Next::Close { libc::MSG_MORE } else { 0 };
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | more;
    // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the slices and
    // the header outlive the call; `fd` is open while the outbox holds it.
    // The arguments are those of sendto(2) and sendmsg(2).
    let sent = unsafe {
        if let [only] = slices {
            let no_address = std::ptr::null::<libc::sockaddr>();
            libc::syscall(libc::SYS_sendto, fd, only.as_ptr(), only.len(), flags, no_address, 0)
        } else {
            let mut header: libc::msghdr = std::mem::zeroed();
            header.msg_iov = slices.as_ptr() as *mut libc::iovec;
            header.msg_iovlen = slices.len() as _;
            libc::syscall(libc::SYS_sendmsg, fd, &header as *const libc::msghdr, flags)
        }
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::OpCode;
    use std::future::Future;

    fn frame() -> OutFrame {
        OutFrame::new(OpCode::Text, b"42[\"x\"]")
    }

    /// A long-polling GET takes the queue without a writer: whoever waits
    /// for the queue to be handed over is woken all the same (a
    /// namespace's `on_connect` hook waits so on every transport).
    #[test]
    fn flushed_wakes_when_a_poll_takes_the_queue() {
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let outbox = Rc::new(Outbox::new(4));
        outbox.push(frame());
        outbox.push(frame());
        let mut flushed = std::pin::pin!(outbox.flushed());
        assert!(flushed.as_mut().poll(&mut cx).is_pending());
        assert_eq!(outbox.take_up_to(1).len(), 1);
        assert!(!woken.0.load(std::sync::atomic::Ordering::SeqCst), "a frame is still queued");
        assert_eq!(outbox.take_up_to(16).len(), 1);
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst), "the waiter was not woken");
        assert!(flushed.poll(&mut cx).is_ready());
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_when_full_and_aborts_a_client_that_stays_stuck() {
        let outbox = Rc::new(Outbox::new(2));
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
    fn an_abort_is_seen_by_whoever_waits_for_it_and_a_graceful_close_is_not() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let graceful = Rc::new(Outbox::new(4));
        graceful.close_for(CloseReason::ServerShutdown);
        assert!(std::pin::pin!(graceful.aborted()).poll(&mut cx).is_pending(), "a graceful close lets the writer finish");
        let cut = Rc::new(Outbox::new(1));
        let mut waiting = std::pin::pin!(cut.aborted());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        cut.push(frame());
        for _ in 0..2 {
            cut.push(frame()); // full: dropped; the second drop past the limit cuts it off
        }
        assert_eq!(waiting.poll(&mut cx), Poll::Ready(CloseReason::SlowConsumer));
    }

    #[test]
    fn a_reply_that_does_not_fit_closes_the_connection() {
        let outbox = Rc::new(Outbox::new(1));
        assert_eq!(outbox.push(frame()), Pushed::Queued);
        assert_eq!(outbox.push_or_close(frame()), Pushed::Dropped);
        assert_eq!(outbox.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn an_emptied_queue_gives_back_what_a_burst_grew() {
        use std::os::fd::AsRawFd;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let outbox = Rc::new(Outbox::new(1024));
        let traffic = Rc::new(Traffic::default());
        let _guard = outbox.write_directly(ours.as_raw_fd(), &traffic);
        outbox.scheduled.set(true); // no flusher task here: write by hand
        for _ in 0..200 {
            outbox.queue.borrow_mut().push_back(frame());
        }
        assert!(outbox.queue.borrow().spill_capacity() >= 199);
        outbox.write_now(&mut flusher::Written::default());
        assert!(outbox.is_empty());
        assert_eq!(outbox.queue.borrow().spill_capacity(), 0, "an idle connection holds no write buffer");
        assert_eq!(traffic.bytes_out.get(), 200 * frame().wire().len() as u64);
        drop(theirs);
    }

    #[test]
    fn a_whole_write_of_published_frames_is_timed_once_from_the_oldest() {
        use std::os::fd::AsRawFd;
        use std::time::Duration;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let outbox = Rc::new(Outbox::new(1024));
        let traffic = Rc::new(Traffic::default());
        let _guard = outbox.write_directly(ours.as_raw_fd(), &traffic);
        outbox.scheduled.set(true); // no flusher task here: write by hand
        let older = Instant::now() - Duration::from_millis(50);
        outbox.push(frame()); // a reply: not timed
        outbox.push_published(frame(), older);
        outbox.push_published(frame(), Instant::now());
        let mut written = flusher::Written::default();
        outbox.write_now(&mut written);
        assert!(outbox.is_empty());
        written.record();
        let samples = traffic.written_latency.take();
        assert_eq!(samples.runs.len(), 1, "one sample per write: {samples:?}");
        assert_eq!(samples.runs[0].1, 1);
        assert!(samples.runs[0].0 >= 0.05, "timed from the oldest publish: {samples:?}");
        // Nothing published since: the next write records nothing.
        outbox.scheduled.set(true);
        outbox.push(frame());
        outbox.write_now(&mut written);
        written.record();
        assert!(traffic.written_latency.take().runs.is_empty());
        drop(theirs);
    }

    #[test]
    fn close_after_keeps_queued_frames_and_appends_the_last_one() {
        let outbox = Rc::new(Outbox::new(8));
        outbox.push(frame());
        outbox.close_after(Some(OutFrame::close(1000, "")), CloseReason::ServerShutdown);
        assert_eq!(outbox.push(frame()), Pushed::Closed);
        let (all, _) = outbox.take_all();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().nth(1).unwrap().wire()[0], 0x88);
    }
}
