//! [`FrameQueue`]: the frames one outbox holds, oldest first.
//!
//! Hand-written rather than a `VecDeque` (or a small-vector crate): the
//! first frame waits inside the outbox itself. A broadcast almost always
//! finds a connection's queue empty and leaves one frame in it, and the
//! flusher's write then takes that one frame; with the frame inline, neither
//! side touches a heap block of the connection's own (one random memory
//! access fewer on each side of every delivery, out of a handful), and an
//! idle connection keeps no such block at all. Frames behind the first (a
//! burst, or a reply and an event in one pass) spill into a boxed
//! `VecDeque` (boxed: 8 bytes inline, not 32, in every outbox and in the
//! writer task's future), freed again once the queue has emptied.

use std::collections::VecDeque;

use crate::protocol::wsframe::OutFrame;

#[derive(Default)]
pub struct FrameQueue {
    head: Option<OutFrame>,
    /// The frames behind `head`; empty whenever `head` is `None`. Boxed on
    /// purpose (see the module doc).
    #[allow(clippy::box_collection)]
    spill: Option<Box<VecDeque<OutFrame>>>,
}

impl FrameQueue {
    pub fn len(&self) -> usize {
        match self.head {
            None => 0,
            Some(_) => 1 + self.spill.as_ref().map_or(0, |spill| spill.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub fn push_back(&mut self, frame: OutFrame) {
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.spill.get_or_insert_default().push_back(frame);
        }
    }

    pub fn pop_front(&mut self) -> Option<OutFrame> {
        let front = self.head.take()?;
        self.head = self.spill.as_mut().and_then(|spill| spill.pop_front());
        Some(front)
    }

    pub fn front(&self) -> Option<&OutFrame> {
        self.head.as_ref()
    }

    pub fn iter(&self) -> impl Iterator<Item = &OutFrame> {
        self.head.iter().chain(self.spill.iter().flat_map(|spill| spill.iter()))
    }

    /// Takes out the first `max` frames (all of them if there are no more).
    pub fn split_front(&mut self, max: usize) -> FrameQueue {
        if self.len() <= max {
            return std::mem::take(self);
        }
        let mut front = FrameQueue::default();
        for _ in 0..max {
            front.push_back(self.pop_front().expect("more than `max` frames"));
        }
        front
    }

    /// Frees the spill buffer of an emptied queue (an idle connection holds
    /// no heap block for its queue).
    pub fn release_spill(&mut self) {
        if self.is_empty() {
            self.spill = None;
        }
    }

    /// Frames the spill buffer has room for (tests).
    #[cfg(test)]
    pub fn spill_capacity(&self) -> usize {
        self.spill.as_ref().map_or(0, |spill| spill.capacity())
    }
}

impl IntoIterator for FrameQueue {
    type Item = OutFrame;
    type IntoIter = std::iter::Chain<std::option::IntoIter<OutFrame>, std::collections::vec_deque::IntoIter<OutFrame>>;

    fn into_iter(self) -> Self::IntoIter {
        self.head.into_iter().chain(self.spill.map(|spill| *spill).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::OpCode;

    fn frame(n: u8) -> OutFrame {
        OutFrame::new(OpCode::Text, &[b'0' + n])
    }

    fn payloads(queue: &FrameQueue) -> Vec<u8> {
        queue.iter().map(|f| *f.wire().last().unwrap()).collect()
    }

    #[test]
    fn keeps_order_across_the_inline_slot_and_the_spill() {
        let mut queue = FrameQueue::default();
        assert!(queue.is_empty() && queue.front().is_none() && queue.pop_front().is_none());
        for n in 0..5 {
            queue.push_back(frame(n));
        }
        assert_eq!(queue.len(), 5);
        assert_eq!(payloads(&queue), b"01234");
        assert_eq!(*queue.pop_front().unwrap().wire().last().unwrap(), b'0');
        queue.push_back(frame(5));
        assert_eq!(payloads(&queue), b"12345");
        let front = queue.split_front(2);
        assert_eq!((payloads(&front), payloads(&queue)), (b"12".to_vec(), b"345".to_vec()));
        let all: Vec<u8> = queue.split_front(10).into_iter().map(|f| *f.wire().last().unwrap()).collect();
        assert_eq!(all, b"345");
        assert!(queue.is_empty());
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn one_frame_at_a_time_never_allocates_and_an_emptied_spill_is_freed() {
        let mut queue = FrameQueue::default();
        for n in 0..3 {
            queue.push_back(frame(n));
            queue.pop_front();
        }
        assert_eq!(queue.spill_capacity(), 0);
        queue.push_back(frame(0));
        queue.push_back(frame(1));
        assert!(queue.spill_capacity() > 0);
        queue.release_spill();
        assert!(queue.spill_capacity() > 0, "not while frames wait in it");
        while queue.pop_front().is_some() {}
        queue.release_spill();
        assert_eq!(queue.spill_capacity(), 0);
    }
}
