//! The shard runtime's side of cluster mode: the commands shards and the
//! broker hand to the cluster thread (`crate::cluster`, which owns the Redis
//! connections), and the status it keeps for `/health` and `/metrics`.
//!
//! With no `REDIS_URL`, [`Shared::cluster`](super::Shared) is `None` and
//! nothing here runs. The cluster thread takes commands in the order they
//! were sent and puts them on Redis in that order, on one connection; that
//! is what gives per-sender order across nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::messages::{Answer, Delivery};
use super::SocketId;
use crate::protocol::wsframe::OutFrame;

/// Sockets reached on the other nodes by one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remote {
    /// Sockets the other nodes reported.
    pub delivered: usize,
    /// Some node that should have answered did not, in time (or Redis was
    /// unreachable): `delivered` may be short.
    pub partial: bool,
}

/// A cluster-wide question (the node's own part is answered by its shards).
#[derive(Debug, Clone)]
pub enum ClusterQuery {
    Connections { user: Option<Arc<str>> },
    Rooms,
    Stats,
    /// Does the user have a socket on any node?
    UserOnline { user: Arc<str> },
}

/// What the other nodes answered.
#[derive(Debug, Default)]
pub struct ClusterAnswers {
    /// One answer per node that answered (this node excluded).
    pub answers: Vec<(String, Answer)>,
    /// Live nodes, this one included.
    pub nodes: usize,
    /// A live node did not answer in time, or Redis was unreachable.
    pub partial: bool,
    /// For `Stats`: rooms and online users across the cluster (from Redis).
    pub rooms: Option<usize>,
    pub online_users: Option<usize>,
    /// For `UserOnline`.
    pub online: Option<bool>,
}

/// What a shard or the broker asks of the cluster thread.
pub enum ClusterCmd {
    /// A delivery that started on this node (a relay, an HTTP publish):
    /// carry it to the other nodes that may hold a recipient. `sent` is told
    /// `true` once Redis took it, `false` if it could not; `counted` (HTTP
    /// publishes) is told how many sockets the other nodes reached.
    /// `here`: a room broadcast or a broadcast to all reaches this node's own
    /// sockets only when it comes back from Redis — its place among every
    /// node's traffic, so all nodes see one order — and `sent` / `here`'s
    /// count (sockets reached on this node) are told then.
    Publish {
        delivery: Delivery,
        sent: Option<oneshot::Sender<bool>>,
        counted: Option<oneshot::Sender<Remote>>,
        here: Option<Here>,
    },
    /// From a room's home: `socket` (of this node) joined; the room has
    /// `members_here` on this node now (1: subscribe to the room's channel
    /// first). Redis counts the join and publishes `announce` in one step
    /// (no announcement: a mark on this node's channel). When it comes back —
    /// the join's place among every node's room traffic — the announcement
    /// is delivered to this node's members and the socket joins its shard's
    /// local room; `reply` gets the members across the cluster once Redis's
    /// count is in too (`RoomJoinConfirmed`, or `RoomJoinPlaced` then `reply`).
    RoomJoined { room: Arc<str>, members_here: u32, socket: SocketId, announce: Option<OutFrame>, reply: oneshot::Sender<u32> },
    /// From a room's home: `socket` left (0 left here: unsubscribe after);
    /// like a join, `announce` goes through Redis, then `reply`.
    RoomLeft { room: Arc<str>, members_here: u32, socket: SocketId, announce: Option<OutFrame>, reply: Option<oneshot::Sender<()>> },
    /// From a user's home: the user's first socket on this node. `reply`
    /// once Redis has it (and `user-online` is out if it is the first anywhere).
    UserOnline { user: Arc<str>, reply: oneshot::Sender<()> },
    /// From a user's home: the user's last socket on this node went.
    UserOffline { user: Arc<str> },
    /// From a user's home: deliver to the user's sockets on other nodes;
    /// `reply`: whether the user has a socket here (`online_here`) or on
    /// another node, once the copies are on Redis.
    SendToUser { user: Arc<str>, frame: OutFrame, online_here: bool, reply: oneshot::Sender<bool> },
    /// A cluster-wide question.
    Query { query: ClusterQuery, reply: oneshot::Sender<ClusterAnswers> },
}

/// How a published delivery reaches this node's own sockets.
pub enum Here {
    /// When it comes back from Redis.
    Echo,
    /// When it comes back, telling how many sockets it reached here.
    EchoCounted(oneshot::Sender<usize>),
}

/// The handle shards and the broker hold: a queue to the cluster thread.
pub struct ClusterLink {
    commands: mpsc::UnboundedSender<ClusterCmd>,
    pub status: Arc<ClusterStatus>,
}

impl ClusterLink {
    pub fn new(commands: mpsc::UnboundedSender<ClusterCmd>, status: Arc<ClusterStatus>) -> ClusterLink {
        ClusterLink { commands, status }
    }

    /// Queues a command; it is applied in the order queued.
    pub fn send(&self, command: ClusterCmd) {
        // Fails only once the cluster thread has stopped (shutdown).
        let _ = self.commands.send(command);
    }

    /// Publishes a delivery; the receiver says whether Redis took it.
    /// `here`: see [`ClusterCmd::Publish`].
    pub fn publish(&self, delivery: Delivery, here: Option<Here>) -> oneshot::Receiver<bool> {
        let (sent, taken) = oneshot::channel();
        self.send(ClusterCmd::Publish { delivery, sent: Some(sent), counted: None, here });
        taken
    }

    /// Publishes a delivery and counts what the other nodes reached.
    pub fn publish_counted(&self, delivery: Delivery, here: Option<Here>) -> oneshot::Receiver<Remote> {
        let (counted, count) = oneshot::channel();
        self.send(ClusterCmd::Publish { delivery, sent: None, counted: Some(counted), here });
        count
    }

    /// Asks the other nodes.
    pub fn query(&self, query: ClusterQuery) -> oneshot::Receiver<ClusterAnswers> {
        let (reply, answers) = oneshot::channel();
        self.send(ClusterCmd::Query { query, reply });
        answers
    }
}

/// Cluster figures for `/health` and `/metrics`, written by the cluster thread.
#[derive(Default)]
pub struct ClusterStatus {
    /// This node's id on Redis.
    pub node: String,
    /// The last Redis round trip succeeded.
    pub redis_up: AtomicBool,
    /// Live nodes (this one included) at the last heartbeat.
    pub nodes: AtomicUsize,
    pub messages_published: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_published: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Channels subscribed.
    pub subscriptions: AtomicUsize,
    /// Publishes that could not reach Redis.
    pub publish_failures: AtomicU64,
    /// Messages from Redis that could not be read (counted, then dropped).
    pub undecodable: AtomicU64,
    /// Origin publish → received here, in microseconds.
    pub delivery_lag: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl ClusterStatus {
    pub fn new(node: String) -> ClusterStatus {
        ClusterStatus {
            node,
            delivery_lag: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok()),
            ..ClusterStatus::default()
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn is_redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    pub fn record_lag(&self, micros: u64) {
        if let Ok(mut guard) = self.delivery_lag.lock() {
            if let Some(histogram) = guard.as_mut() {
                let _ = histogram.record(micros.max(1));
            }
        }
    }
}
