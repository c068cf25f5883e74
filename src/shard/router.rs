//! Channels between shards.
//!
//! Every shard has one unbounded crossbeam channel and a `Notify` that wakes
//! its inbox task. Unbounded because a shard must never block its own thread
//! waiting for another shard (two shards doing so would deadlock); the queue
//! depth is watched instead.
//!
//! A channel is one queue, not one queue per sender: a message whose `send`
//! finished before another's began is received first, whoever sent them.
//! The ordering rule of the shard runtime ([`Shard::catch_up`]) is built on
//! that.

use std::rc::Rc;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, Notify};

use super::{Answer, Delivery, Query, Shard, ShardMsg, SocketId};

/// Handles to every shard's inbox; shared by all threads.
pub struct Router {
    links: Vec<(Sender<ShardMsg>, Arc<Notify>)>,
    /// Fixed seeds: every thread must agree on a name's home shard.
    hasher: ahash::RandomState,
}

/// The receiving end of one shard's inbox, owned by its [`Shard`].
pub struct ShardInbox {
    rx: Receiver<ShardMsg>,
    wake: Arc<Notify>,
}

/// Messages handled before the inbox task yields to connections.
const INBOX_BATCH: usize = 256;

impl Router {
    pub fn new(shards: usize) -> (Router, Vec<ShardInbox>) {
        let mut links = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::unbounded();
            let wake = Arc::new(Notify::new());
            links.push((tx, wake.clone()));
            inboxes.push(ShardInbox { rx, wake });
        }
        let hasher = ahash::RandomState::with_seeds(0x5ca1ab1e, 0xdecafbad, 0x0ddba11, 0xfeedface);
        (Router { links, hasher }, inboxes)
    }

    pub fn shard_count(&self) -> usize {
        self.links.len()
    }

    /// Queues `msg` in `shard`'s inbox and wakes it. Within the shard
    /// runtime; other layers use the typed methods below.
    pub(super) fn send(&self, shard: usize, msg: ShardMsg) {
        let (tx, wake) = &self.links[shard];
        // Sending fails only once the shard has stopped; the message has no one to reach.
        if tx.send(msg).is_ok() {
            wake.notify_one();
        }
    }

    /// Runs `work` on `shard`'s thread, in inbox order. It must only start
    /// tasks, not wait (it may run inside [`Shard::catch_up`]).
    pub fn run_on(&self, shard: usize, work: impl FnOnce(&Rc<Shard>) + Send + 'static) {
        self.send(shard, ShardMsg::Run(Box::new(work)));
    }

    /// Asks `shard` a question about its tables.
    pub fn ask(&self, shard: usize, query: Query) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        self.send(shard, ShardMsg::Query { query, reply });
        answer
    }

    /// Delivers on `shard`, with no answer.
    pub fn deliver(&self, shard: usize, delivery: Delivery) {
        self.send(shard, ShardMsg::Deliver(delivery));
    }

    /// Delivers on `shard`; the answer is how many sockets it reached there.
    /// `count_as` names the broadcast scope on the one copy that counts it.
    pub fn deliver_counted(&self, shard: usize, delivery: Delivery, count_as: Option<&'static str>) -> oneshot::Receiver<usize> {
        let (reply, delivered) = oneshot::channel();
        self.send(shard, ShardMsg::DeliverCounted { delivery, count_as, reply });
        delivered
    }

    /// Confirms a join to the socket's shard (cluster mode: from the cluster
    /// thread, once Redis has ordered it): the socket joins the room's local
    /// table and `reply` gets the member count.
    pub fn confirm_join(&self, room: Arc<str>, socket: SocketId, members: u32, reply: oneshot::Sender<u32>) {
        self.send(socket.shard(), ShardMsg::RoomJoinConfirmed { room, socket, members, reply });
    }

    /// Puts a socket in its shard's local room ahead of its join's count
    /// (cluster mode: the join came back from Redis first).
    pub fn place_join(&self, room: Arc<str>, socket: SocketId) {
        self.send(socket.shard(), ShardMsg::RoomJoinPlaced { room, socket });
    }

    /// Tells every shard to close its connections and stop.
    pub fn shutdown_all(&self) {
        for shard in 0..self.shard_count() {
            self.send(shard, ShardMsg::Shutdown);
        }
    }

    /// The shard that keeps the global record of a room or user name.
    pub fn home_of(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) % self.links.len() as u64) as usize
    }

    /// Messages waiting in each shard's inbox.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.links.iter().map(|(tx, _)| tx.len()).collect()
    }
}

impl ShardInbox {
    /// The next waiting message, if any.
    pub(super) fn try_next(&self) -> Option<ShardMsg> {
        self.rx.try_recv().ok()
    }

    /// Messages waiting now.
    pub(super) fn len(&self) -> usize {
        self.rx.len()
    }
}

/// The shard's inbox task: applies messages as they arrive, in batches, so
/// that connections get their turn between batches. Requests that cannot
/// wait for it apply the inbox themselves ([`Shard::catch_up`]).
pub async fn run_inbox(shard: Rc<Shard>) {
    loop {
        while shard.apply_inbox(INBOX_BATCH) {
            tokio::task::yield_now().await;
        }
        shard.inbox().wake.notified().await;
    }
}
