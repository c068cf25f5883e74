//! The shard runtime: per-core tables of connections, rooms and users, and
//! the messages shards exchange.
//!
//! Each shard is one thread with its own single-threaded tokio runtime. It
//! owns, with no lock:
//! - its connections ([`Conn`]), by [`SocketId`];
//! - its *local* room and user tables: which of its own connections are in a
//!   room, which belong to a user — used to deliver;
//! - the *home* records of the rooms and users whose name hashes to it
//!   ([`Router::home_of`]): global member counts, per-shard presence counts,
//!   creation time — used to answer `memberCount`, `USER_OFFLINE` and
//!   presence for the whole process.
//!
//! Rule that keeps the tables consistent: a shard mutates its local tables
//! and sends the matching message to the home shard in the same synchronous
//! step, before awaiting anything. Messages between two shards are FIFO, so
//! a home sees a connection's joins, leaves and detaches in order.
//!
//! Rules that keep shards invisible to clients (the order one socket.io
//! process gives; README "Ordering"):
//! 1. *An answer follows its effects.* A request is answered (ack, or the
//!    reply a publish waits for) only once every delivery it causes has been
//!    pushed to the outboxes of this shard or sent to the other shards'
//!    inboxes. Where the effect passes through a home shard (leave, private
//!    message, authenticate, join), the request waits for the home's reply,
//!    and the home replies after it has sent the deliveries.
//! 2. *A request sees everything sent before it.* Before a shard handles a
//!    client's request it applies every message already in its inbox
//!    ([`Shard::catch_up`]). An inbox is one queue, so whatever effect a
//!    client could have heard of before sending (rule 1: its ack came after
//!    the send) is applied here before the request — a member cannot leave a
//!    room ahead of an announcement already on its way to it.

pub mod id;
mod router;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use crate::config::Config;
use crate::protocol::wsframe::OutFrame;
use crate::transport::outbox::{Outbox, Pushed};
use crate::transport::CloseReason;

pub use id::SocketId;
pub use router::{run_inbox, Router, ShardInbox};
pub use stats::{CounterSnapshot, ShardCounters};

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Builds the `user-online` (true) / `user-offline` (false) event for a user.
/// Supplied by the application layer; `None` turns presence events off.
pub type PresenceEncoder = Box<dyn Fn(&str, bool) -> OutFrame + Send + Sync>;

/// What every shard shares, read-only after start-up (plus counters touched
/// only on connect and disconnect).
pub struct Shared {
    pub config: Arc<Config>,
    pub router: Router,
    pub presence: Option<PresenceEncoder>,
    /// Socket.IO-connected sockets in the process, for `MAX_CONNECTIONS`.
    pub connections: AtomicUsize,
}

/// One Socket.IO socket, owned by the shard its id names.
pub struct Conn {
    pub id: SocketId,
    /// `id` in its wire form, kept because most events quote it.
    pub id_text: Box<str>,
    /// The queue of the Engine.IO session this socket rides on (shared by
    /// its sockets in other namespaces).
    pub outbox: Rc<Outbox>,
    pub user: RefCell<Option<Arc<str>>>,
    pub rooms: RefCell<Vec<Arc<str>>>,
    /// `websocket` or `polling` (changes on upgrade).
    pub transport: Cell<&'static str>,
    pub connected_at: SystemTime,
    pub last_activity: Cell<SystemTime>,
}

impl Conn {
    pub fn new(id: SocketId, outbox: Rc<Outbox>, transport: &'static str) -> Conn {
        let now = SystemTime::now();
        Conn {
            id,
            id_text: id.to_string().into_boxed_str(),
            outbox,
            user: RefCell::new(None),
            rooms: RefCell::new(Vec::new()),
            transport: Cell::new(transport),
            connected_at: now,
            last_activity: Cell::new(now),
        }
    }

    pub fn user(&self) -> Option<Arc<str>> {
        self.user.borrow().clone()
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.rooms.borrow().iter().any(|r| &**r == room)
    }

    /// Queues a reply or event for this socket alone: it must arrive, so a
    /// full queue closes the connection instead of dropping it.
    pub fn send(&self, frame: OutFrame) -> Pushed {
        self.outbox.push_or_close(frame)
    }
}

/// Who a delivery is for.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every connected socket.
    All,
    /// Every socket bound to a user.
    Authenticated,
    Room(Arc<str>),
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
    /// When it was published, for the fan-out latency histogram.
    pub published_at: Instant,
}

impl Delivery {
    pub fn new(target: Target, frame: OutFrame) -> Delivery {
        Delivery { target, frame, except: None, exclude_users: None, published_at: Instant::now() }
    }

    fn wants(&self, conn: &Conn) -> bool {
        if self.except == Some(conn.id) {
            return false;
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

/// Messages between shards.
pub enum ShardMsg {
    Deliver(Delivery),
    /// To a room's home: a socket wants to join. The home counts it, sends
    /// `announce` to the room's other members, then confirms to the socket's
    /// shard with [`ShardMsg::RoomJoinConfirmed`].
    RoomJoined { room: Arc<str>, user: Arc<str>, socket: SocketId, announce: Option<OutFrame>, reply: oneshot::Sender<u32> },
    /// From a room's home to the joining socket's shard: add it to the local
    /// room now. Arriving on the same channel as the home's announcements,
    /// it orders them: the joiner hears of every later join, of no earlier one.
    RoomJoinConfirmed { room: Arc<str>, socket: SocketId, members: u32, reply: oneshot::Sender<u32> },
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
    /// deliveries are sent, whether the user had any.
    SendToUser { user: Arc<str>, frame: OutFrame, reply: oneshot::Sender<bool> },
    /// Like `Deliver`, replying with the number of sockets reached here.
    /// `count_as` names the broadcast scope on the one copy that counts it.
    DeliverCounted { delivery: Delivery, count_as: Option<&'static str>, reply: oneshot::Sender<usize> },
    /// A question about this shard's tables (see [`Query`]).
    Query { query: Query, reply: oneshot::Sender<Answer> },
    /// Work to run on the receiving shard's thread (polling requests and
    /// upgrades for sessions that live there). It must only start tasks, not
    /// wait: it runs inside [`Shard::catch_up`] too.
    Run(Box<dyn FnOnce(&Rc<Shard>) + Send>),
    /// Close every connection and stop.
    Shutdown,
}

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

#[derive(Debug)]
pub enum Answer {
    Connections(Vec<ConnectionInfo>),
    Rooms(Vec<RoomInfo>),
    Stats(ShardStats),
    UserOnline(bool),
    Metrics(ShardStats, CounterSnapshot),
}

#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub socket_id: String,
    pub user_id: Option<String>,
    pub rooms: Vec<String>,
    pub transport: &'static str,
    pub shard: usize,
    pub connected_at: SystemTime,
    pub last_activity: SystemTime,
}

#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub name: String,
    pub member_count: u32,
    pub users: Vec<String>,
    pub created_at: SystemTime,
    pub last_activity: SystemTime,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub connections: usize,
    pub rooms: usize,
    pub online_users: usize,
}

struct LocalRoom {
    members: Map<SocketId, Rc<Conn>>,
}

struct HomeRoom {
    members: u32,
    created_at: SystemTime,
    last_activity: SystemTime,
    /// Sockets per user in the room.
    users: Map<Arc<str>, u32>,
}

#[derive(Default)]
struct HomeUser {
    /// Sockets per shard, for the shards that have any.
    shards: Vec<(usize, u32)>,
}

impl HomeUser {
    fn total(&self) -> u32 {
        self.shards.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Default)]
struct Tables {
    conns: Map<SocketId, Rc<Conn>>,
    rooms: Map<Arc<str>, LocalRoom>,
    users: Map<Arc<str>, Vec<Rc<Conn>>>,
    home_rooms: Map<Arc<str>, HomeRoom>,
    home_users: Map<Arc<str>, HomeUser>,
}

impl Tables {
    /// Sockets here; rooms and online users homed here.
    fn stats(&self) -> ShardStats {
        ShardStats { connections: self.conns.len(), rooms: self.home_rooms.len(), online_users: self.home_users.len() }
    }
}

pub struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub counters: ShardCounters,
    tables: RefCell<Tables>,
    inbox: ShardInbox,
    /// The inbox is being applied (a nested [`Shard::catch_up`] returns at once).
    applying_inbox: Cell<bool>,
    shutting_down: Cell<bool>,
}

impl Shard {
    pub fn new(index: usize, shared: Arc<Shared>, inbox: ShardInbox) -> Shard {
        Shard {
            index,
            shared,
            counters: ShardCounters::default(),
            tables: RefCell::default(),
            inbox,
            applying_inbox: Cell::new(false),
            shutting_down: Cell::new(false),
        }
    }

    pub(super) fn inbox(&self) -> &ShardInbox {
        &self.inbox
    }

    /// Applies every message already in this shard's inbox. Called before a
    /// client's request is handled (rule 2 in the module doc): whatever was
    /// sent to this shard before the request was read — a `user-left` for a
    /// member about to leave, a relay for a member about to leave, a join
    /// confirmation — takes effect first.
    pub fn catch_up(self: &Rc<Self>) {
        let waiting = self.inbox.len();
        if waiting > 0 {
            self.apply_inbox(waiting);
        }
    }

    /// Applies up to `limit` messages from the inbox, oldest first; `true`
    /// if more are waiting.
    pub fn apply_inbox(self: &Rc<Self>, limit: usize) -> bool {
        // Only `Run` work could nest (it must not), and a nested pass would
        // apply later messages before the one in hand.
        if self.applying_inbox.replace(true) {
            return false;
        }
        let mut applied = 0;
        while applied < limit {
            let Some(msg) = self.inbox.try_next() else { break };
            match msg {
                ShardMsg::Run(work) => work(self),
                msg => self.handle(msg),
            }
            applied += 1;
        }
        self.applying_inbox.set(false);
        applied == limit && self.inbox.len() > 0
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    pub fn connection_count(&self) -> usize {
        self.tables.borrow().conns.len()
    }

    // ---- connections -------------------------------------------------------

    /// Registers a socket that completed its Socket.IO CONNECT.
    pub fn add_conn(&self, conn: Rc<Conn>) {
        self.tables.borrow_mut().conns.insert(conn.id, conn);
    }

    /// Forgets a socket: leaves its rooms (telling their homes, which send
    /// `announce(room)` to the remaining members) and detaches it from its user.
    pub fn remove_conn(&self, conn: &Rc<Conn>, announce: impl Fn(&Arc<str>) -> Option<OutFrame>) {
        if self.tables.borrow_mut().conns.remove(&conn.id).is_none() {
            return;
        }
        let rooms = std::mem::take(&mut *conn.rooms.borrow_mut());
        for room in &rooms {
            self.leave_local(conn, room);
            self.notify_room_left(conn, room.clone(), announce(room), None);
        }
        if let Some(user) = conn.user() {
            self.detach_user(conn, user);
        }
    }

    pub fn conn(&self, id: SocketId) -> Option<Rc<Conn>> {
        self.tables.borrow().conns.get(&id).cloned()
    }

    // ---- users -------------------------------------------------------------

    /// Binds `conn` to `user` and waits until the user's home knows, so that
    /// a private message sent right after the ack finds the user online.
    pub async fn attach_user(&self, conn: &Rc<Conn>, user: Arc<str>) {
        *conn.user.borrow_mut() = Some(user.clone());
        self.tables.borrow_mut().users.entry(user.clone()).or_default().push(conn.clone());
        let (tx, rx) = oneshot::channel();
        self.to_home(&user, ShardMsg::UserAttached { user: user.clone(), shard: self.index, reply: tx });
        let _ = rx.await;
    }

    fn detach_user(&self, conn: &Rc<Conn>, user: Arc<str>) {
        {
            let mut tables = self.tables.borrow_mut();
            if let Some(list) = tables.users.get_mut(&user) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    tables.users.remove(&user);
                }
            }
        }
        self.to_home(&user.clone(), ShardMsg::UserDetached { user, shard: self.index });
    }

    /// Delivers to every socket of `user`, wherever it is. `false` if the
    /// user has no socket anywhere.
    pub async fn send_to_user(&self, user: Arc<str>, frame: OutFrame) -> bool {
        let (tx, rx) = oneshot::channel();
        self.to_home(&user.clone(), ShardMsg::SendToUser { user, frame, reply: tx });
        rx.await.unwrap_or(false)
    }

    // ---- rooms -------------------------------------------------------------

    /// Adds `conn` to `room` (it must not be in it yet) and returns the
    /// room's member count across all shards, this socket included. The home
    /// sends `announce` to the other members first.
    pub async fn join_room(&self, conn: &Rc<Conn>, room: Arc<str>, announce: Option<OutFrame>) -> u32 {
        let user = conn.user().unwrap_or_else(|| Arc::from(""));
        conn.rooms.borrow_mut().push(room.clone());
        let (tx, rx) = oneshot::channel();
        self.to_home(&room.clone(), ShardMsg::RoomJoined { room, user, socket: conn.id, announce, reply: tx });
        rx.await.unwrap_or(0)
    }

    /// Removes `conn` from `room`; the home sends `announce` to the remaining
    /// members, and this returns once it has (rule 1). `false` if it was not
    /// a member.
    pub async fn leave_room(&self, conn: &Rc<Conn>, room: &str, announce: Option<OutFrame>) -> bool {
        let position = conn.rooms.borrow().iter().position(|r| &**r == room);
        let Some(position) = position else { return false };
        let room = conn.rooms.borrow_mut().swap_remove(position);
        self.leave_local(conn, &room);
        let (tx, rx) = oneshot::channel();
        self.notify_room_left(conn, room, announce, Some(tx));
        let _ = rx.await;
        true
    }

    /// Sockets in `room` across all shards.
    pub async fn room_size(&self, room: Arc<str>) -> u32 {
        let (tx, rx) = oneshot::channel();
        self.to_home(&room.clone(), ShardMsg::RoomSize { room, reply: tx });
        rx.await.unwrap_or(0)
    }

    fn leave_local(&self, conn: &Conn, room: &str) {
        let mut tables = self.tables.borrow_mut();
        if let Some(local) = tables.rooms.get_mut(room) {
            local.members.remove(&conn.id);
            if local.members.is_empty() {
                tables.rooms.remove(room);
            }
        }
    }

    fn notify_room_left(&self, conn: &Conn, room: Arc<str>, announce: Option<OutFrame>, reply: Option<oneshot::Sender<()>>) {
        let user = conn.user().unwrap_or_else(|| Arc::from(""));
        self.to_home(&room.clone(), ShardMsg::RoomLeft { room, user, socket: conn.id, announce, reply });
    }

    fn announce_to_room(&self, room: &Arc<str>, except: SocketId, announce: Option<OutFrame>) {
        if let Some(frame) = announce {
            let mut delivery = Delivery::new(Target::Room(room.clone()), frame);
            delivery.except = Some(except);
            self.deliver(delivery);
        }
    }

    // ---- delivery ----------------------------------------------------------

    /// Sends a delivery to every shard that may hold a recipient (this one
    /// directly, the others over their channels).
    pub fn deliver(&self, delivery: Delivery) {
        match &delivery.target {
            Target::Socket(id) if id.shard() != self.index => {
                self.shared.router.send(id.shard(), ShardMsg::Deliver(delivery));
            }
            Target::Socket(_) => {
                self.deliver_local(&delivery);
            }
            _ => {
                for shard in 0..self.shared.router.shard_count() {
                    if shard != self.index {
                        self.shared.router.send(shard, ShardMsg::Deliver(delivery.clone()));
                    }
                }
                self.deliver_local(&delivery);
            }
        }
    }

    /// Pushes the frame to every matching socket of this shard; returns how many.
    pub fn deliver_local(&self, delivery: &Delivery) -> usize {
        if let Target::Room(room) = &delivery.target {
            // Every room delivery reaches every shard, the room's home included.
            if let Some(home) = self.tables.borrow_mut().home_rooms.get_mut(room) {
                home.last_activity = SystemTime::now();
            }
        }
        let tables = self.tables.borrow();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        let mut push = |conn: &Rc<Conn>| {
            if delivery.wants(conn) {
                // Broadcasts may be dropped for a slow client (and counted).
                match conn.outbox.push(delivery.frame.clone()) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Dropped => dropped += 1,
                    Pushed::Closed => {}
                }
            }
        };
        match &delivery.target {
            Target::All => tables.conns.values().for_each(&mut push),
            Target::Authenticated => {
                tables.users.values().flatten().for_each(&mut push);
            }
            Target::Room(room) => {
                if let Some(local) = tables.rooms.get(room) {
                    local.members.values().for_each(&mut push);
                }
            }
            Target::User(user) => {
                if let Some(conns) = tables.users.get(user) {
                    conns.iter().for_each(&mut push);
                }
            }
            Target::Socket(id) => {
                if let Some(conn) = tables.conns.get(id) {
                    push(conn);
                }
            }
        }
        ShardCounters::add(&self.counters.messages_delivered, delivered);
        ShardCounters::add(&self.counters.messages_dropped, dropped);
        if delivered > 0 {
            self.counters.fan_out_latency(delivery.published_at.elapsed());
        }
        delivered as usize
    }

    // ---- messages from other shards (and from this one, to itself) --------

    fn to_home(&self, key: &str, msg: ShardMsg) {
        let home = self.shared.router.home_of(key);
        if home == self.index {
            self.handle(msg);
        } else {
            self.shared.router.send(home, msg);
        }
    }

    pub fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver(delivery) => {
                self.deliver_local(&delivery);
            }
            ShardMsg::DeliverCounted { delivery, count_as, reply } => {
                if let Some(scope) = count_as {
                    self.counters.broadcast(scope);
                }
                let _ = reply.send(self.deliver_local(&delivery));
            }
            ShardMsg::Query { query, reply } => {
                let _ = reply.send(self.answer(query));
            }
            ShardMsg::RoomJoined { room, user, socket, announce, reply } => {
                let now = SystemTime::now();
                let members = {
                    let mut tables = self.tables.borrow_mut();
                    let home = tables.home_rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
                        members: 0,
                        created_at: now,
                        last_activity: now,
                        users: Map::default(),
                    });
                    home.members += 1;
                    home.last_activity = now;
                    if !user.is_empty() {
                        *home.users.entry(user).or_default() += 1;
                    }
                    home.members
                };
                self.announce_to_room(&room, socket, announce);
                let confirm = ShardMsg::RoomJoinConfirmed { room, socket, members, reply };
                if socket.shard() == self.index {
                    self.handle(confirm);
                } else {
                    self.shared.router.send(socket.shard(), confirm);
                }
            }
            ShardMsg::RoomJoinConfirmed { room, socket, members, reply } => {
                let mut tables = self.tables.borrow_mut();
                // The socket may have left the room or gone away meanwhile;
                // its leave is already on its way to the home.
                if let Some(conn) = tables.conns.get(&socket).cloned() {
                    if conn.in_room(&room) {
                        tables
                            .rooms
                            .entry(room)
                            .or_insert_with(|| LocalRoom { members: Map::default() })
                            .members
                            .insert(socket, conn);
                    }
                }
                let _ = reply.send(members);
            }
            ShardMsg::RoomLeft { room, user, socket, announce, reply } => {
                {
                    let mut tables = self.tables.borrow_mut();
                    if let Some(home) = tables.home_rooms.get_mut(&room) {
                        home.members = home.members.saturating_sub(1);
                        home.last_activity = SystemTime::now();
                        if let Some(n) = home.users.get_mut(&user) {
                            *n -= 1;
                            if *n == 0 {
                                home.users.remove(&user);
                            }
                        }
                        if home.members == 0 {
                            tables.home_rooms.remove(&room);
                        }
                    }
                }
                self.announce_to_room(&room, socket, announce);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            ShardMsg::RoomSize { room, reply } => {
                let size = self.tables.borrow().home_rooms.get(&room).map_or(0, |r| r.members);
                let _ = reply.send(size);
            }
            ShardMsg::UserAttached { user, shard, reply } => {
                let first = {
                    let mut tables = self.tables.borrow_mut();
                    let home = tables.home_users.entry(user.clone()).or_default();
                    let first = home.shards.is_empty();
                    match home.shards.iter_mut().find(|(s, _)| *s == shard) {
                        Some((_, n)) => *n += 1,
                        None => home.shards.push((shard, 1)),
                    }
                    first
                };
                if first {
                    self.announce_presence(&user, true);
                }
                let _ = reply.send(());
            }
            ShardMsg::UserDetached { user, shard } => {
                let last = {
                    let mut tables = self.tables.borrow_mut();
                    let Some(home) = tables.home_users.get_mut(&user) else { return };
                    if let Some(i) = home.shards.iter().position(|(s, _)| *s == shard) {
                        home.shards[i].1 -= 1;
                        if home.shards[i].1 == 0 {
                            home.shards.swap_remove(i);
                        }
                    }
                    let last = home.total() == 0;
                    if last {
                        tables.home_users.remove(&user);
                    }
                    last
                };
                if last {
                    self.announce_presence(&user, false);
                }
            }
            ShardMsg::SendToUser { user, frame, reply } => {
                let shards: Vec<usize> = match self.tables.borrow().home_users.get(&user) {
                    Some(home) => home.shards.iter().map(|(s, _)| *s).collect(),
                    None => Vec::new(),
                };
                let delivery = Delivery::new(Target::User(user), frame);
                for &shard in &shards {
                    if shard == self.index {
                        self.deliver_local(&delivery);
                    } else {
                        self.shared.router.send(shard, ShardMsg::Deliver(delivery.clone()));
                    }
                }
                let _ = reply.send(!shards.is_empty());
            }
            // Only `apply_inbox` runs work (it holds the shard's `Rc`); nothing routes it here.
            ShardMsg::Run(_) => tracing::error!("work sent to Shard::handle instead of the inbox; dropped"),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn answer(&self, query: Query) -> Answer {
        let tables = self.tables.borrow();
        match query {
            Query::Connections { user } => {
                let describe = |conn: &Rc<Conn>| ConnectionInfo {
                    socket_id: conn.id_text.to_string(),
                    user_id: conn.user().map(|u| u.to_string()),
                    rooms: conn.rooms.borrow().iter().map(|r| r.to_string()).collect(),
                    transport: conn.transport.get(),
                    shard: self.index,
                    connected_at: conn.connected_at,
                    last_activity: conn.last_activity.get(),
                };
                Answer::Connections(match user {
                    Some(user) => tables.users.get(&user).map_or(Vec::new(), |c| c.iter().map(describe).collect()),
                    None => tables.conns.values().map(describe).collect(),
                })
            }
            Query::Rooms => Answer::Rooms(
                tables
                    .home_rooms
                    .iter()
                    .map(|(name, room)| RoomInfo {
                        name: name.to_string(),
                        member_count: room.members,
                        users: room.users.keys().map(|u| u.to_string()).collect(),
                        created_at: room.created_at,
                        last_activity: room.last_activity,
                    })
                    .collect(),
            ),
            Query::Stats => Answer::Stats(tables.stats()),
            Query::UserOnline { user } => Answer::UserOnline(tables.home_users.contains_key(&user)),
            Query::Metrics => Answer::Metrics(tables.stats(), self.counters.snapshot()),
        }
    }

    fn announce_presence(&self, user: &str, online: bool) {
        if let Some(encode) = &self.shared.presence {
            self.deliver(Delivery::new(Target::Authenticated, encode(user, online)));
        }
    }

    fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        let conns: Vec<Rc<Conn>> = self.tables.borrow().conns.values().cloned().collect();
        for conn in conns {
            conn.outbox.close_for(CloseReason::ServerShutdown);
        }
    }

    /// Adjusts the process-wide socket count; `false` if `MAX_CONNECTIONS`
    /// would be exceeded (the count is then unchanged).
    pub fn reserve_connection(&self) -> bool {
        let max = self.shared.config.max_connections.unwrap_or(usize::MAX);
        let previous = self.shared.connections.fetch_add(1, Ordering::Relaxed);
        if previous >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn release_connection(&self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
