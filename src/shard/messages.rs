//! What travels between shards, and between a shard and the server-side
//! API: deliveries, the messages of the ordering rules, queries and answers.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::local::Conn;
use super::stats::CounterSnapshot;
use super::{Shard, SocketId};
use crate::protocol::wsframe::OutFrame;

/// Who a delivery is for.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every connected socket.
    All,
    /// Every socket bound to a user.
    Authenticated,
    Room(Arc<str>),
    /// The members of any of these rooms, each once (from a socket.io node).
    Rooms(Arc<[Arc<str>]>),
    User(Arc<str>),
    Socket(SocketId),
}

/// One encoded event on its way to the sockets of a [`Target`].
#[derive(Clone, Debug)]
pub struct Delivery {
    pub target: Target,
    pub frame: OutFrame,
    /// A socket that must not receive it (the sender of a relay).
    pub except: Option<SocketId>,
    /// Users whose sockets must not receive it.
    pub exclude_users: Option<Arc<[Arc<str>]>>,
    /// Sockets and rooms whose members must not receive it (a socket.io
    /// adapter's `except`, from another node).
    pub except_names: Option<Arc<ExceptNames>>,
    /// When it was published, for the fan-out latency histogram.
    pub published_at: Instant,
}

impl Delivery {
    pub fn new(target: Target, frame: OutFrame) -> Delivery {
        Delivery { target, frame, except: None, exclude_users: None, except_names: None, published_at: Instant::now() }
    }

    /// In cluster mode, whether this node's own sockets get it when it comes
    /// back from Redis (its place in one order for every node) rather than
    /// at once: room broadcasts and broadcasts to all.
    pub fn ordered_by_redis(&self) -> bool {
        matches!(self.target, Target::Room(_) | Target::All)
    }

    /// Whether sockets of other nodes may be concerned (cluster mode).
    /// Deliveries to a user go through the user's home instead.
    pub fn crosses_nodes(&self) -> bool {
        match &self.target {
            Target::All | Target::Authenticated | Target::Room(_) | Target::Rooms(_) => true,
            Target::User(_) => false,
            Target::Socket(id) => id.node() != super::id::node_tag(),
        }
    }

    pub(super) fn wants(&self, conn: &Conn) -> bool {
        if self.except == Some(conn.id) {
            return false;
        }
        if let Some(except) = &self.except_names {
            if except.sockets.contains(&conn.id) || except.rooms.iter().any(|room| conn.in_room(room)) {
                return false;
            }
        }
        match &self.exclude_users {
            Some(excluded) => match &*conn.user.borrow() {
                Some(user) => !excluded.iter().any(|u| u == user),
                None => true,
            },
            None => true,
        }
    }
}

/// A socket.io adapter's `except` list, split into this node's socket ids
/// and room names.
#[derive(Debug, Default)]
pub struct ExceptNames {
    pub sockets: Vec<SocketId>,
    pub rooms: Vec<Arc<str>>,
}

/// Messages between shards.
pub enum ShardMsg {
    Deliver(Delivery),
    /// To a room's home: a socket wants to join. The home counts it, sends
    /// `announce` to the room's other members, then confirms to the socket's
    /// shard with [`ShardMsg::RoomJoinConfirmed`].
    /// In cluster mode the home hands the join to the cluster thread, which
    /// announces it and confirms it through Redis (see `ClusterCmd::RoomJoined`).
    RoomJoined { room: Arc<str>, user: Arc<str>, socket: SocketId, announce: Option<OutFrame>, reply: oneshot::Sender<u32> },
    /// From a room's home to the joining socket's shard: add it to the local
    /// room now. Arriving on the same channel as the home's announcements,
    /// it orders them: the joiner hears of every later join, of no earlier one.
    RoomJoinConfirmed { room: Arc<str>, socket: SocketId, members: u32, reply: oneshot::Sender<u32> },
    /// From the cluster thread: the socket's join came back from Redis
    /// before Redis's count did. The socket joins the local room now, at the
    /// join's place among the room's traffic (a message Redis ordered after
    /// the join arrives right behind it); the count answers the join later.
    RoomJoinPlaced { room: Arc<str>, socket: SocketId },
    /// To a room's home: a socket left (or went away); `announce` goes to the
    /// remaining members, then `reply` (if any) says it has gone out.
    RoomLeft { room: Arc<str>, user: Arc<str>, socket: SocketId, announce: Option<OutFrame>, reply: Option<oneshot::Sender<()>> },
    /// To a room's home: how many sockets are in it?
    RoomSize { room: Arc<str>, reply: oneshot::Sender<u32> },
    /// To a user's home: a socket on `shard` is now this user's (`reply`
    /// once the home counts it, and `user-online` has gone out if it is the first).
    UserAttached { user: Arc<str>, shard: usize, reply: oneshot::Sender<()> },
    /// To a user's home: one of the user's sockets on `shard` went away.
    UserDetached { user: Arc<str>, shard: usize },
    /// To a user's home: deliver to all the user's sockets; replies, once the
    /// deliveries are sent, whether the user had any (in cluster mode the
    /// cluster thread replies, once the other nodes' copies are on Redis).
    SendToUser { user: Arc<str>, frame: OutFrame, reply: oneshot::Sender<bool> },
    /// Like `Deliver`, replying with the number of sockets reached here.
    /// `count_as` names the broadcast scope on the one copy that counts it.
    DeliverCounted { delivery: Delivery, count_as: Option<&'static str>, reply: oneshot::Sender<usize> },
    /// A question about this shard's tables (see [`Query`]).
    Query { query: Query, reply: oneshot::Sender<Answer> },
    /// Work to run on the receiving shard's thread (polling requests and
    /// upgrades for sessions that live there). It must only start tasks, not
    /// wait: it runs inside [`Shard::catch_up`] too.
    Run(ShardWork),
    /// Close every connection and stop.
    Shutdown,
}

/// A closure sent to run on one shard's thread (see [`ShardMsg::Run`]).
pub type ShardWork = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// Questions the server-side API asks every shard (or a name's home).
#[derive(Debug, Clone)]
pub enum Query {
    /// This shard's sockets, optionally only those of one user.
    Connections { user: Option<Arc<str>> },
    /// The rooms homed on this shard.
    Rooms,
    /// Counts: sockets on this shard, rooms and online users homed here.
    Stats,
    /// Asked of a user's home: does the user have any socket?
    UserOnline { user: Arc<str> },
    /// Counters and table sizes, for `/metrics`.
    Metrics,
}

/// One per shard per question (rare: API calls and scrapes), so the
/// `Metrics` variant's size costs nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Connections(Vec<ConnectionInfo>),
    Rooms(Vec<RoomInfo>),
    Stats(ShardStats),
    UserOnline(bool),
    Metrics(ShardStats, CounterSnapshot),
}

/// One connection, as `GET /api/connections` describes it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The socket id.
    pub socket_id: String,
    /// The user it is authenticated as.
    pub user_id: Option<String>,
    /// The rooms it is in.
    pub rooms: Vec<String>,
    /// `websocket` or `polling`.
    pub transport: &'static str,
    /// The shard that owns it.
    pub shard: usize,
    /// In cluster mode, the node that owns it.
    pub node: Option<String>,
    /// When it connected.
    pub connected_at: SystemTime,
    /// When it last sent an event.
    pub last_activity: SystemTime,
}

/// One room, as `GET /api/rooms` describes it.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// The room name.
    pub name: String,
    /// Connections in the room.
    pub member_count: u32,
    /// The users of those connections.
    pub users: Vec<String>,
    /// When its first member joined.
    pub created_at: SystemTime,
    /// When something was last delivered to it or it changed.
    pub last_activity: SystemTime,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub connections: usize,
    pub rooms: usize,
    pub online_users: usize,
}
