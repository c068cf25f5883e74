//! The shard's flusher: one task per shard thread that writes the outboxes
//! of idle WebSocket connections straight to their sockets.
//!
//! A frame pushed to such an outbox puts it on this thread's list (once) and
//! wakes the flusher, which runs after the work that is already ready on
//! this thread — so a connection that gets several frames in one pass still
//! gets one write — and then writes every listed outbox in a loop. Compared
//! with waking each connection's writer task, a broadcast to N sockets costs
//! one task poll instead of N, and no per-write allocation. See
//! [`Outbox::write_now`] for what happens when a socket cannot take it all.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use super::Outbox;
use crate::transport::Traffic;

thread_local! {
    static FLUSHER: Flusher = Flusher::default();
}

#[derive(Default)]
struct Flusher {
    /// Listed outboxes, with the descriptor each wrote to when listed: only
    /// the order of the pass (a write uses the outbox's socket as it is then,
    /// so a descriptor closed and reused meanwhile only puts one out of order).
    pending: RefCell<Vec<(RawFd, Rc<Outbox>)>>,
    waker: Cell<Option<Waker>>,
    started: Cell<bool>,
}

/// Lists `outbox` for the next pass. Must run inside the shard's `LocalSet`
/// (the flusher task is started on first use).
pub(super) fn schedule(fd: RawFd, outbox: Rc<Outbox>) {
    FLUSHER.with(|flusher| {
        flusher.pending.borrow_mut().push((fd, outbox));
        if !flusher.started.replace(true) {
            tokio::task::spawn_local(run());
        } else if let Some(waker) = flusher.waker.take() {
            waker.wake();
        }
    });
}

/// The publish times of what one pass wrote whole, as runs of equal values:
/// a broadcast's frame is shared by every recipient, so the sockets of one
/// pass that got the same publish make one run.
///
/// Recorded with one clock read at the end of the pass rather than one per
/// `sendmsg`: the pass exists to make a broadcast cost one loop of system
/// calls, and a clock read per socket would add to each. The value is thus
/// when the pass ended — for the first socket of a long pass later than its
/// own write, by at most the pass's length, which is itself part of what
/// the last recipient waits.
#[derive(Default)]
pub(super) struct Written {
    runs: Vec<(Instant, u32, Rc<Traffic>)>,
}

impl Written {
    pub(super) fn add(&mut self, published_at: Instant, traffic: &Rc<Traffic>) {
        match self.runs.last_mut() {
            Some((at, count, same)) if *at == published_at && Rc::ptr_eq(same, traffic) => *count += 1,
            _ => self.runs.push((published_at, 1, traffic.clone())),
        }
    }

    pub(super) fn record(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        let now = Instant::now();
        for (published_at, count, traffic) in self.runs.drain(..) {
            traffic.written_latency.record(now.saturating_duration_since(published_at), count);
        }
    }
}

async fn run() {
    let mut batch = Vec::new();
    let mut written = Written::default();
    loop {
        poll_fn(|cx| {
            FLUSHER.with(|flusher| {
                let mut pending = flusher.pending.borrow_mut();
                if pending.is_empty() {
                    flusher.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    // Swap, so both vectors keep their capacity.
                    std::mem::swap(&mut *pending, &mut batch);
                    Poll::Ready(())
                }
            })
        })
        .await;
        // In descriptor order, not in the order the outboxes were listed
        // (a room's members come in hash order): the kernel's per-socket
        // structures (descriptor table, `struct file`, socket) were mostly
        // allocated in accept order, which descriptor order follows, and
        // walking them in that order instead of at random costs less per
        // send; so does walking the outboxes, allocated in the same order.
        // Measured with `examples/loopback_floor` (19,000 sockets, shuffled
        // vs in order): 8.4–8.7 against 6.5–7.6 µs per send. Writes to
        // different sockets are independent, so their order is free.
        if batch.len() > 1 {
            batch.sort_unstable_by_key(|(fd, _)| *fd);
        }
        // Each write is preceded by a request for the next outbox's lines,
        // which would otherwise be a cache miss of its own: a `send` takes
        // microseconds, time enough for them to arrive.
        for i in 0..batch.len() {
            if let Some((_, next)) = batch.get(i + 1) {
                Outbox::prefetch(next);
            }
            batch[i].1.write_now(&mut written);
        }
        batch.clear();
        written.record();
    }
}
