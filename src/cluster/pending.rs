//! Publishes and queries waiting for other nodes' answers: which nodes are
//! expected, what they said so far, and who to tell. A wait ends when every
//! expected node answered, or at the request timeout (partial).
//!
//! Answers may arrive before the origin knows who to expect (a fast node
//! counts before Redis's reply to the publish is back): they are kept and
//! checked off when the expected list arrives.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tokio::sync::oneshot;

use super::wire::WireAnswer;
use crate::shard::Remote;

struct CountWait {
    /// `None` until the publish's reply says who will count.
    expected: Option<Vec<String>>,
    answered: Vec<String>,
    delivered: usize,
    reply: oneshot::Sender<Remote>,
}

struct AnswerWait {
    expected: Vec<String>,
    got: Vec<(String, WireAnswer)>,
    done: Option<oneshot::Sender<Vec<(String, WireAnswer)>>>,
}

#[derive(Default)]
pub(super) struct Pending {
    next_id: Cell<u64>,
    counts: RefCell<HashMap<u64, CountWait>>,
    answers: RefCell<HashMap<u64, AnswerWait>>,
}

impl Pending {
    fn next(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// Opens a count wait (the caller ends it with [`Pending::fail_count`]
    /// at its timeout, if it is still open then).
    pub fn open_count(&self, reply: oneshot::Sender<Remote>) -> u64 {
        let id = self.next();
        self.counts.borrow_mut().insert(id, CountWait { expected: None, answered: Vec::new(), delivered: 0, reply });
        id
    }

    /// Who will count publish `id`.
    pub fn expect_counts(&self, id: u64, expected: Vec<String>) {
        let mut counts = self.counts.borrow_mut();
        let Some(wait) = counts.get_mut(&id) else { return };
        let expected: Vec<String> = expected.into_iter().filter(|node| !wait.answered.contains(node)).collect();
        if expected.is_empty() {
            let wait = counts.remove(&id).expect("present");
            let _ = wait.reply.send(Remote { delivered: wait.delivered, partial: false });
        } else {
            wait.expected = Some(expected);
        }
    }

    pub fn count_arrived(&self, id: u64, node: &str, delivered: usize) {
        let mut counts = self.counts.borrow_mut();
        let Some(wait) = counts.get_mut(&id) else { return };
        wait.delivered += delivered;
        match &mut wait.expected {
            None => wait.answered.push(node.to_string()),
            Some(expected) => {
                expected.retain(|n| n != node);
                if expected.is_empty() {
                    let wait = counts.remove(&id).expect("present");
                    let _ = wait.reply.send(Remote { delivered: wait.delivered, partial: false });
                }
            }
        }
    }

    /// Ends a count wait as partial (Redis failed, or the timeout).
    pub fn fail_count(&self, id: u64) {
        if let Some(wait) = self.counts.borrow_mut().remove(&id) {
            let _ = wait.reply.send(Remote { delivered: wait.delivered, partial: true });
        }
    }

    /// Opens a query wait for `expected` nodes.
    pub fn open_answers(&self, expected: Vec<String>) -> (u64, oneshot::Receiver<Vec<(String, WireAnswer)>>) {
        let id = self.next();
        let (done, collected) = oneshot::channel();
        if expected.is_empty() {
            let _ = done.send(Vec::new());
        } else {
            self.answers.borrow_mut().insert(id, AnswerWait { expected, got: Vec::new(), done: Some(done) });
        }
        (id, collected)
    }

    pub fn answer_arrived(&self, id: u64, node: &str, answer: WireAnswer) {
        let mut answers = self.answers.borrow_mut();
        let Some(wait) = answers.get_mut(&id) else { return };
        if !wait.expected.iter().any(|n| n == node) {
            return;
        }
        wait.expected.retain(|n| n != node);
        wait.got.push((node.to_string(), answer));
        if wait.expected.is_empty() {
            let mut wait = answers.remove(&id).expect("present");
            if let Some(done) = wait.done.take() {
                let _ = done.send(std::mem::take(&mut wait.got));
            }
        }
    }

    /// `node` left the cluster: no wait expects it any more.
    pub fn node_left(&self, node: &str) {
        let ids: Vec<u64> = self.counts.borrow().keys().copied().collect();
        for id in ids {
            self.count_arrived(id, node, 0);
        }
        let ids: Vec<u64> = self.answers.borrow().keys().copied().collect();
        for id in ids {
            let mut answers = self.answers.borrow_mut();
            let Some(wait) = answers.get_mut(&id) else { continue };
            wait.expected.retain(|n| n != node);
            if wait.expected.is_empty() {
                let mut wait = answers.remove(&id).expect("present");
                if let Some(done) = wait.done.take() {
                    let _ = done.send(std::mem::take(&mut wait.got));
                }
            }
        }
    }

    /// What a timed-out query got.
    pub fn take_answers(&self, id: u64) -> Vec<(String, WireAnswer)> {
        self.answers.borrow_mut().remove(&id).map(|wait| wait.got).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(rx: &mut oneshot::Receiver<Remote>) -> Option<Remote> {
        rx.try_recv().ok()
    }

    #[test]
    fn a_count_completes_when_every_expected_node_answered_even_before_the_list() {
        let pending = Pending::default();
        let (tx, mut rx) = oneshot::channel();
        let id = pending.open_count(tx);
        pending.count_arrived(id, "b", 3);
        assert_eq!(remote(&mut rx), None);
        pending.expect_counts(id, vec!["b".into(), "c".into()]);
        assert_eq!(remote(&mut rx), None);
        pending.count_arrived(id, "c", 4);
        assert_eq!(remote(&mut rx), Some(Remote { delivered: 7, partial: false }));
        pending.count_arrived(id, "c", 4);
    }

    #[test]
    fn nobody_to_wait_for_and_failures_end_at_once() {
        let pending = Pending::default();
        let (tx, mut rx) = oneshot::channel();
        let id = pending.open_count(tx);
        pending.expect_counts(id, vec![]);
        assert_eq!(remote(&mut rx), Some(Remote { delivered: 0, partial: false }));
        let (tx, mut rx) = oneshot::channel();
        let id = pending.open_count(tx);
        pending.count_arrived(id, "b", 2);
        pending.fail_count(id);
        assert_eq!(remote(&mut rx), Some(Remote { delivered: 2, partial: true }));
    }

    #[test]
    fn a_node_that_leaves_is_not_waited_for() {
        let pending = Pending::default();
        let (tx, mut rx) = oneshot::channel();
        let id = pending.open_count(tx);
        pending.expect_counts(id, vec!["b".into(), "c".into()]);
        pending.count_arrived(id, "b", 1);
        pending.node_left("c");
        assert_eq!(remote(&mut rx), Some(Remote { delivered: 1, partial: false }));
        let (id, mut answers) = pending.open_answers(vec!["c".into()]);
        pending.node_left("c");
        assert!(answers.try_recv().unwrap().is_empty());
        let _ = id;
    }

    #[test]
    fn queries_collect_the_expected_nodes_only() {
        let pending = Pending::default();
        let stats = || WireAnswer::Stats { connections: 1, rooms: 0, online_users: 0 };
        let (id, mut rx) = pending.open_answers(vec!["b".into(), "c".into()]);
        pending.answer_arrived(id, "x", stats());
        pending.answer_arrived(id, "b", stats());
        assert!(rx.try_recv().is_err());
        pending.answer_arrived(id, "c", stats());
        assert_eq!(rx.try_recv().unwrap().len(), 2);
        let (id, _rx) = pending.open_answers(vec!["b".into(), "c".into()]);
        pending.answer_arrived(id, "b", stats());
        assert_eq!(pending.take_answers(id).len(), 1, "a timed-out query keeps what came");
    }
}
