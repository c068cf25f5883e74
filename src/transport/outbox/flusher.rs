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
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::Outbox;

thread_local! {
    static FLUSHER: Flusher = Flusher::default();
}

#[derive(Default)]
struct Flusher {
    pending: RefCell<Vec<Rc<Outbox>>>,
    waker: Cell<Option<Waker>>,
    started: Cell<bool>,
}

/// Lists `outbox` for the next pass. Must run inside the shard's `LocalSet`
/// (the flusher task is started on first use).
pub(super) fn schedule(outbox: Rc<Outbox>) {
    FLUSHER.with(|flusher| {
        flusher.pending.borrow_mut().push(outbox);
        if !flusher.started.replace(true) {
            tokio::task::spawn_local(run());
        } else if let Some(waker) = flusher.waker.take() {
            waker.wake();
        }
    });
}

async fn run() {
    let mut batch = Vec::new();
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
        for outbox in batch.drain(..) {
            outbox.write_now();
        }
    }
}
