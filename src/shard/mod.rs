//! The shard runtime: per-core tables of connections, rooms and users, and
//! the messages shards exchange.
//!
//! - [`local`]: this shard's connections and who of them is in which room
//!   and belongs to which user (what deliveries walk);
//! - [`home`]: the process-wide records of the names homed here;
//! - [`messages`]: deliveries, inter-shard messages, queries and answers;
//! - [`router`]: the channels, and which shard is a name's home;
//! - [`sessions`]: the life of this shard's Engine.IO sessions (open, close,
//!   the registry of live ones that polling requests and shutdown use);
//! - [`id`], [`stats`]: socket ids that name their shard, per-shard counters;
//! - [`cluster`]: in cluster mode, the commands for the cluster thread.
//!
//! This file is the [`Shard`] itself: it applies its inbox, and it changes
//! the two kinds of table in step, by the rules below.
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

pub mod cluster;
mod home;
pub mod id;
mod local;
mod messages;
mod router;
mod sessions;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::protocol::wsframe::OutFrame;
use crate::transport::CloseReason;

use home::HomeTables;
use local::LocalTables;
use sessions::Sessions;

pub use cluster::{ClusterAnswers, ClusterCmd, ClusterLink, ClusterQuery, ClusterStatus, Here, Remote};
pub use id::{node_tag, SocketId};
pub use local::{live_conns, Conn};
pub use messages::{Answer, ConnectionInfo, Delivery, ExceptNames, Query, RoomInfo, ShardMsg, ShardStats, Target};
pub use router::{run_inbox, Router, ShardInbox};
pub use stats::{CounterSnapshot, ShardCounters};

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Builds the `user-online` (true) / `user-offline` (false) event for a user.
/// Supplied by the application layer; `None` turns presence events off.
pub type PresenceEncoder = Box<dyn Fn(&str, bool) -> OutFrame + Send + Sync>;

/// What every shard shares, read-only after start-up (plus counters touched
/// only on connect and disconnect).
pub struct Shared {
    /// `MAX_CONNECTIONS`: Socket.IO connections the process accepts.
    pub max_connections: Option<usize>,
    pub router: Router,
    pub presence: Option<PresenceEncoder>,
    /// Socket.IO-connected sockets in the process, for `MAX_CONNECTIONS`.
    pub connections: AtomicUsize,
    /// Cluster mode: the queue to the cluster thread. `None`: one node.
    pub cluster: Option<ClusterLink>,
}

pub struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub counters: ShardCounters,
    local: RefCell<LocalTables>,
    home: RefCell<HomeTables>,
    /// Every live Engine.IO session of this shard, connected or not.
    sessions: RefCell<Sessions>,
    inbox: ShardInbox,
    /// The inbox is being applied (a nested [`Shard::catch_up`] returns at once).
    applying_inbox: Cell<bool>,
    /// HTTP requests being answered here; shutdown waits for them (a long-poll
    /// GET answered by the session's shard must still be written here).
    requests_in_flight: Cell<usize>,
    shutting_down: Cell<bool>,
    /// Wakes whoever waits for shutdown (the shard thread's main loop).
    shutdown_begun: tokio::sync::Notify,
}

/// An HTTP request being answered on a shard (see [`Shard::request_in_flight`]).
pub struct RequestInFlight(Rc<Shard>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        let count = &self.0.requests_in_flight;
        count.set(count.get() - 1);
    }
}

impl Shard {
    pub fn new(index: usize, shared: Arc<Shared>, inbox: ShardInbox) -> Shard {
        Shard {
            index,
            shared,
            counters: ShardCounters::default(),
            local: RefCell::default(),
            home: RefCell::default(),
            sessions: RefCell::default(),
            inbox,
            applying_inbox: Cell::new(false),
            requests_in_flight: Cell::new(0),
            shutting_down: Cell::new(false),
            shutdown_begun: tokio::sync::Notify::new(),
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

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_begun(&self) {
        while !self.shutting_down.get() {
            self.shutdown_begun.notified().await;
        }
    }

    /// Counts an HTTP request as being answered until the guard drops.
    pub fn request_in_flight(self: &Rc<Self>) -> RequestInFlight {
        self.requests_in_flight.set(self.requests_in_flight.get() + 1);
        RequestInFlight(self.clone())
    }

    /// No live session and no HTTP request being answered: the shard's
    /// thread may end.
    pub fn is_idle(&self) -> bool {
        self.session_count() == 0 && self.requests_in_flight.get() == 0
    }

    // ---- connections -------------------------------------------------------

    /// Registers a socket that completed its Socket.IO CONNECT.
    pub fn add_conn(&self, conn: Rc<Conn>) {
        self.local.borrow_mut().insert(conn);
    }

    /// Forgets a socket: leaves its rooms (telling their homes, which send
    /// `announce(room)` to the remaining members) and detaches it from its user.
    pub fn remove_conn(&self, conn: &Rc<Conn>, announce: impl Fn(&Arc<str>) -> Option<OutFrame>) {
        if !self.local.borrow_mut().remove(conn.id) {
            return;
        }
        let rooms = std::mem::take(&mut *conn.rooms.borrow_mut());
        for room in &rooms {
            self.local.borrow_mut().remove_member(room, conn.id);
            self.notify_room_left(conn, room.clone(), announce(room), None);
        }
        if let Some(user) = conn.user() {
            self.local.borrow_mut().detach_user(&user, conn.id);
            self.to_home(&user.clone(), ShardMsg::UserDetached { user, shard: self.index });
        }
    }

    // ---- users -------------------------------------------------------------

    /// Binds `conn` to `user` and waits until the user's home knows (and
    /// has announced `user-online` if this is the first socket), so that a
    /// private message sent right after the ack finds the user online.
    pub async fn attach_user(&self, conn: &Rc<Conn>, user: Arc<str>) {
        *conn.user.borrow_mut() = Some(user.clone());
        self.local.borrow_mut().attach_user(user.clone(), conn.clone());
        let (tx, rx) = oneshot::channel();
        self.to_home(&user.clone(), ShardMsg::UserAttached { user, shard: self.index, reply: tx });
        let _ = rx.await;
    }

    /// Delivers to every socket of `user`, wherever it is. `false` if the
    /// user has no socket anywhere. Returns once the deliveries are sent.
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
        self.local.borrow_mut().remove_member(&room, conn.id);
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

    fn notify_room_left(&self, conn: &Conn, room: Arc<str>, announce: Option<OutFrame>, reply: Option<oneshot::Sender<()>>) {
        let user = conn.user().unwrap_or_else(|| Arc::from(""));
        self.to_home(&room.clone(), ShardMsg::RoomLeft { room, user, socket: conn.id, announce, reply });
    }

    fn announce_to_room(&self, room: &Arc<str>, except: SocketId, announce: Option<OutFrame>) {
        if let Some(frame) = announce {
            let mut delivery = Delivery::new(Target::Room(room.clone()), frame);
            delivery.except = Some(except);
            // In cluster mode the home's next cluster command (the join or
            // leave itself) follows this publish on Redis: nothing to wait for.
            let _ = self.deliver(delivery);
        }
    }

    fn announce_presence(&self, user: &str, online: bool) {
        if let Some(encode) = &self.shared.presence {
            let _ = self.deliver(Delivery::new(Target::Authenticated, encode(user, online)));
        }
    }

    // ---- delivery ----------------------------------------------------------

    /// Sends a delivery to every shard that may hold a recipient (this one
    /// directly, the others over their channels) and, in cluster mode, to
    /// the other nodes: the receiver then says whether Redis took it. A room
    /// broadcast in cluster mode reaches this node's shards when it comes
    /// back from Redis (see [`ClusterCmd::Publish`]), and the receiver
    /// answers then.
    pub fn deliver(&self, delivery: Delivery) -> Option<oneshot::Receiver<bool>> {
        let published = match &self.shared.cluster {
            Some(link) if delivery.ordered_by_redis() => return Some(link.publish(delivery, Some(Here::Echo))),
            Some(link) if delivery.crosses_nodes() => Some(link.publish(delivery.clone(), None)),
            _ => None,
        };
        match &delivery.target {
            Target::Socket(id) if id.shard() != self.index => {
                self.shared.router.deliver(id.shard(), delivery);
            }
            Target::Socket(_) => {
                self.deliver_local(&delivery);
            }
            _ => {
                for shard in 0..self.shared.router.shard_count() {
                    if shard != self.index {
                        self.shared.router.deliver(shard, delivery.clone());
                    }
                }
                self.deliver_local(&delivery);
            }
        }
        published
    }

    /// Pushes the frame to every matching socket of this shard; returns how many.
    pub fn deliver_local(&self, delivery: &Delivery) -> usize {
        if let Target::Room(room) = &delivery.target {
            // Every room delivery reaches every shard, the room's home included.
            self.home.borrow_mut().touch_room(room, SystemTime::now());
        }
        let (delivered, dropped) = self.local.borrow().deliver(delivery);
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

    /// Sends `msg` to `shard`, or handles it here if that is this shard.
    fn to_shard(&self, shard: usize, msg: ShardMsg) {
        if shard == self.index {
            self.handle(msg);
        } else {
            self.shared.router.send(shard, msg);
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
                let members = self.home.borrow_mut().room_joined(&room, &user, SystemTime::now());
                match &self.shared.cluster {
                    // Redis orders it among every node's joins: the cluster
                    // thread announces it and confirms it to the socket's shard.
                    Some(link) => link.send(ClusterCmd::RoomJoined { room, members_here: members, socket, announce, reply }),
                    None => {
                        self.announce_to_room(&room, socket, announce);
                        self.to_shard(socket.shard(), ShardMsg::RoomJoinConfirmed { room, socket, members, reply });
                    }
                }
            }
            ShardMsg::RoomJoinConfirmed { room, socket, members, reply } => {
                // The socket may have left the room or gone away meanwhile;
                // its leave is already on its way to the home.
                self.local.borrow_mut().add_member(room, socket);
                let _ = reply.send(members);
            }
            ShardMsg::RoomJoinPlaced { room, socket } => {
                self.local.borrow_mut().add_member(room, socket);
            }
            ShardMsg::RoomLeft { room, user, socket, announce, reply } => {
                let mut home = self.home.borrow_mut();
                home.room_left(&room, &user, SystemTime::now());
                let members_here = home.room_size(&room);
                drop(home);
                match &self.shared.cluster {
                    // The cluster thread announces it through Redis, then answers.
                    Some(link) => link.send(ClusterCmd::RoomLeft { room, members_here, socket, announce, reply }),
                    None => {
                        self.announce_to_room(&room, socket, announce);
                        if let Some(reply) = reply {
                            let _ = reply.send(());
                        }
                    }
                }
            }
            ShardMsg::RoomSize { room, reply } => {
                let _ = reply.send(self.home.borrow().room_size(&room));
            }
            ShardMsg::UserAttached { user, shard, reply } => {
                let first = self.home.borrow_mut().user_attached(&user, shard);
                match &self.shared.cluster {
                    // Online across the cluster is Redis's to decide (and announce).
                    Some(link) if first => link.send(ClusterCmd::UserOnline { user, reply }),
                    _ => {
                        if first {
                            self.announce_presence(&user, true);
                        }
                        let _ = reply.send(());
                    }
                }
            }
            ShardMsg::UserDetached { user, shard } => {
                let last = self.home.borrow_mut().user_detached(&user, shard);
                if last {
                    match &self.shared.cluster {
                        Some(link) => link.send(ClusterCmd::UserOffline { user }),
                        None => self.announce_presence(&user, false),
                    }
                }
            }
            ShardMsg::SendToUser { user, frame, reply } => {
                let shards = self.home.borrow().user_shards(&user);
                let delivery = Delivery::new(Target::User(user.clone()), frame.clone());
                for &shard in &shards {
                    self.to_shard(shard, ShardMsg::Deliver(delivery.clone()));
                }
                match &self.shared.cluster {
                    Some(link) => link.send(ClusterCmd::SendToUser { user, frame, online_here: !shards.is_empty(), reply }),
                    None => {
                        let _ = reply.send(!shards.is_empty());
                    }
                }
            }
            // Only `apply_inbox` runs work (it holds the shard's `Rc`); nothing routes it here.
            ShardMsg::Run(_) => tracing::error!("work sent to Shard::handle instead of the inbox; dropped"),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn stats(&self) -> ShardStats {
        let home = self.home.borrow();
        ShardStats { connections: self.local.borrow().len(), rooms: home.room_count(), online_users: home.online_count() }
    }

    /// How many entries each of this shard's tables holds: sessions, local
    /// and home tables, nested entries included. With no client connected
    /// every one is 0; the soak (`loadtest/soak.mjs`) checks that after
    /// thousands of connections came and went.
    fn table_entries(&self) -> Vec<(&'static str, usize)> {
        let mut entries = vec![("sessions", self.sessions.borrow().len())];
        entries.extend(self.local.borrow().entries());
        entries.extend(self.home.borrow().entries());
        entries
    }

    fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Connections { user } => Answer::Connections(self.local.borrow().connections(user.as_deref(), self.index)),
            Query::Rooms => Answer::Rooms(self.home.borrow().rooms()),
            Query::Stats => Answer::Stats(self.stats()),
            Query::UserOnline { user } => Answer::UserOnline(self.home.borrow().is_online(&user)),
            Query::Metrics => {
                let mut counters = self.counters.snapshot();
                counters.table_entries = self.table_entries();
                Answer::Metrics(self.stats(), counters)
            }
        }
    }

    /// Closes every live session cleanly — connected to a namespace or not,
    /// Socket.IO or a bare Engine.IO app, on either transport — and any
    /// that opens from now on.
    fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.shutdown_begun.notify_one();
        self.sessions.borrow_mut().close_all(CloseReason::ServerShutdown);
    }

    /// Adjusts the process-wide socket count; `false` if `MAX_CONNECTIONS`
    /// would be exceeded (the count is then unchanged).
    pub fn reserve_connection(&self) -> bool {
        let max = self.shared.max_connections.unwrap_or(usize::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::outbox::Outbox;
    use std::future::Future;
    use std::task::{Context, Waker};

    fn shards(count: usize) -> Vec<Rc<Shard>> {
        let (router, inboxes) = Router::new(count);
        let shared = Arc::new(Shared { max_connections: None, router, presence: None, connections: Default::default(), cluster: None });
        inboxes.into_iter().enumerate().map(|(i, inbox)| Rc::new(Shard::new(i, shared.clone(), inbox))).collect()
    }

    /// Runs a request to its end, every shard applying its inbox in between.
    fn run<F: Future>(shards: &[Rc<Shard>], future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        for _ in 0..100 {
            if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                return out;
            }
            shards.iter().for_each(|s| s.catch_up());
        }
        panic!("the request never finished");
    }

    /// The rule that local tables and home records change together: after
    /// any mix of joins, leaves, disconnects and user bindings over several
    /// shards, once the inboxes are applied, every home record counts exactly
    /// what the local tables hold.
    #[test]
    fn home_records_match_the_local_tables_after_any_mix_of_changes() {
        let rooms: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("room-{i}"))).collect();
        let users: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("user-{i}"))).collect();
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let shards = shards(2 + rng.usize(..3));
            let mut conns: Vec<(usize, Rc<Conn>)> = Vec::new();
            for _ in 0..300 {
                match rng.u8(..10) {
                    0..=2 => {
                        let s = rng.usize(..shards.len());
                        let conn = Rc::new(Conn::new(SocketId::generate(s), Rc::new(Outbox::new(1 << 16)), "websocket"));
                        shards[s].add_conn(conn.clone());
                        if rng.bool() {
                            run(&shards, shards[s].attach_user(&conn, rng.choice(&users).unwrap().clone()));
                        }
                        conns.push((s, conn));
                    }
                    3..=5 if !conns.is_empty() => {
                        let (s, conn) = rng.choice(&conns).unwrap().clone();
                        let room = rng.choice(&rooms).unwrap().clone();
                        if conn.in_room(&room) {
                        } else if rng.u8(..4) == 0 {
                            // Left while its join is on the way to the home and back.
                            let join = std::pin::pin!(shards[s].join_room(&conn, room.clone(), None));
                            let _ = join.poll(&mut Context::from_waker(Waker::noop()));
                            run(&shards, shards[s].leave_room(&conn, &room, None));
                        } else {
                            run(&shards, shards[s].join_room(&conn, room, None));
                        }
                    }
                    6..=7 if !conns.is_empty() => {
                        let (s, conn) = rng.choice(&conns).unwrap().clone();
                        let room = rng.choice(&rooms).unwrap().clone();
                        run(&shards, shards[s].leave_room(&conn, &room, None));
                    }
                    8..=9 if !conns.is_empty() => {
                        let (s, conn) = conns.swap_remove(rng.usize(..conns.len()));
                        let room = rng.choice(&rooms).unwrap().clone();
                        if rng.bool() && !conn.in_room(&room) {
                            // Gone while its join is on the way to the home and back.
                            let join = std::pin::pin!(shards[s].join_room(&conn, room, None));
                            let _ = join.poll(&mut Context::from_waker(Waker::noop()));
                        }
                        // Without waiting: a disconnect has no answer.
                        shards[s].remove_conn(&conn, |_| None);
                    }
                    _ => {}
                }
            }
            shards.iter().for_each(|s| s.catch_up());
            for room in &rooms {
                let home = shards[shards[0].shared.router.home_of(room)].home.borrow().room_size(room) as usize;
                let local: usize = shards.iter().map(|s| s.local.borrow().room_members(room)).sum();
                let wanted = conns.iter().filter(|(_, c)| c.in_room(room)).count();
                assert_eq!((home, local), (wanted, wanted), "seed {seed}: {room}");
            }
            for user in &users {
                let mut home = shards[shards[0].shared.router.home_of(user)].home.borrow().user_shards(user);
                home.sort();
                let local: Vec<usize> = (0..shards.len()).filter(|s| shards[*s].local.borrow().user_sockets(user) > 0).collect();
                assert_eq!(home, local, "seed {seed}: {user}");
            }
            let total: usize = shards.iter().map(|s| s.local.borrow().len()).sum();
            assert_eq!(total, conns.len());
            // Once every socket is gone, no table holds anything (what
            // `shardcast_table_entries` shows and the soak checks), and no
            // table holds on to a socket.
            for (s, conn) in conns.drain(..) {
                shards[s].remove_conn(&conn, |_| None);
                shards.iter().for_each(|s| s.catch_up());
                assert_eq!(Rc::strong_count(&conn), 1, "seed {seed}: a table still holds a gone socket");
            }
            for shard in &shards {
                let left: Vec<_> = shard.table_entries().into_iter().filter(|(_, n)| *n > 0).collect();
                assert!(left.is_empty(), "seed {seed}: shard {} holds {left:?} with no socket", shard.index);
            }
        }
    }
}
