//! Software prefetch: a hint that memory is about to be read, for the two
//! walks a broadcast makes over every recipient — pushing its frame to each
//! outbox (in a room table's hash order) and the flusher's write of each
//! outbox (in descriptor order). Each step of either walk starts with a
//! cache miss on that recipient's objects (perf annotate: half of
//! `Outbox::write_now`'s samples and most of `Outbox::push`'s sat on their
//! first load); asking for them a few steps ahead overlaps those misses
//! with the work in between. A hint only: on other targets, nothing.

use std::rc::Rc;

/// Asks for the cache lines of the `bytes` bytes at `start` (any address;
/// nothing is read, and an invalid one faults nothing).
#[inline(always)]
pub fn prefetch<T>(start: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = start as *const u8;
        let end = line.wrapping_add(bytes);
        while line < end {
            // SAFETY: a prefetch never faults and reads nothing visible.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Asks for an `Rc`'s allocation: its two counts (which a clone or a drop
/// touches) and the first `bytes` bytes of the value after them. Assumes
/// `Rc` keeps its counts just before the value, as std does: a hint only,
/// so were that to change, the lines asked for would merely be the wrong ones.
#[inline(always)]
pub fn prefetch_rc<T>(rc: &Rc<T>, bytes: usize) {
    const COUNTS: usize = 2 * std::mem::size_of::<usize>();
    prefetch(Rc::as_ptr(rc).cast::<u8>().wrapping_sub(COUNTS), COUNTS + bytes);
}
