//! Local tables: this shard's own connections ([`Conn`]), and which of them
//! are in each room and belong to each user — what a delivery walks. Plain
//! tables with no I/O; the shard keeps them in step with the home records
//! (see the module doc of [`super`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::messages::{ConnectionInfo, Delivery, Target};
use super::{Map, SocketId};
use crate::protocol::wsframe::OutFrame;
use crate::transport::outbox::{Outbox, Pushed};

/// One Socket.IO socket, owned by the shard its id names.
pub struct Conn {
    pub id: SocketId,
    /// `id` in its wire form, kept because most events quote it.
    pub id_text: Box<str>,
    /// The queue of the Engine.IO session this socket rides on (shared by
    /// its sockets in other namespaces).
    pub outbox: Rc<Outbox>,
    pub user: RefCell<Option<Arc<str>>>,
    /// The rooms the socket asked to be in (a join counts from its request;
    /// the local room table gets it once the home confirms).
    pub rooms: RefCell<Vec<Arc<str>>>,
    /// `websocket` or `polling` (changes on upgrade).
    pub transport: Cell<&'static str>,
    pub connected_at: SystemTime,
    pub last_activity: Cell<SystemTime>,
}

/// [`Conn`]s alive in the process, whether or not a table still holds them
/// (the `shardcast_live_objects{kind="socket"}` gauge): a socket kept alive
/// by a forgotten `Rc` shows here after it has left every table. Touched
/// only when a socket is made or freed, never per message.
static LIVE_CONNS: AtomicUsize = AtomicUsize::new(0);

pub fn live_conns() -> usize {
    LIVE_CONNS.load(Ordering::Relaxed)
}

impl Drop for Conn {
    fn drop(&mut self) {
        LIVE_CONNS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    pub fn new(id: SocketId, outbox: Rc<Outbox>, transport: &'static str) -> Conn {
        LIVE_CONNS.fetch_add(1, Ordering::Relaxed);
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

    fn describe(&self, shard: usize) -> ConnectionInfo {
        ConnectionInfo {
            socket_id: self.id_text.to_string(),
            user_id: self.user().map(|u| u.to_string()),
            rooms: self.rooms.borrow().iter().map(|r| r.to_string()).collect(),
            transport: self.transport.get(),
            shard,
            node: None,
            connected_at: self.connected_at,
            last_activity: self.last_activity.get(),
        }
    }
}

/// Calls `push` on each socket in turn, with what a push touches asked for
/// a few sockets ahead (see [`crate::prefetch`]): a table lists its sockets
/// in hash order, so each one's `Conn` and outbox would otherwise be a cache
/// miss, waited for one after the other. A socket's `Conn` is asked for
/// `AHEAD` sockets before its push, its outbox (whose address is in the
/// `Conn`, arrived by then) half as many.
fn for_each_prefetched<'a>(conns: impl Iterator<Item = &'a Rc<Conn>>, mut push: impl FnMut(&'a Rc<Conn>)) {
    const AHEAD: usize = 8;
    let mut window: [Option<&'a Rc<Conn>>; AHEAD] = [None; AHEAD];
    let mut seen = 0;
    for conn in conns {
        crate::prefetch::prefetch_rc(conn, std::mem::size_of::<Conn>());
        if let Some(halfway) = window[(seen + AHEAD / 2) % AHEAD] {
            Outbox::prefetch(&halfway.outbox);
        }
        if let Some(due) = window[seen % AHEAD].replace(conn) {
            push(due);
        }
        seen += 1;
    }
    // The last few, in the order they came.
    for i in seen.saturating_sub(AHEAD)..seen {
        if let Some(conn) = window[i % AHEAD].take() {
            push(conn);
        }
    }
}

#[derive(Default)]
pub(super) struct LocalTables {
    conns: Map<SocketId, Rc<Conn>>,
    rooms: Map<Arc<str>, Map<SocketId, Rc<Conn>>>,
    users: Map<Arc<str>, Vec<Rc<Conn>>>,
}

impl LocalTables {
    pub fn insert(&mut self, conn: Rc<Conn>) {
        self.conns.insert(conn.id, conn);
    }

    /// Forgets a socket (its rooms and user are left to the caller, who
    /// must tell their homes); `false` if it was not here.
    pub fn remove(&mut self, id: SocketId) -> bool {
        self.conns.remove(&id).is_some()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Entries held, table by table (the `shardcast_table_entries` gauge).
    pub fn entries(&self) -> [(&'static str, usize); 5] {
        [
            ("local_sockets", self.conns.len()),
            ("local_rooms", self.rooms.len()),
            ("local_room_members", self.rooms.values().map(|m| m.len()).sum()),
            ("local_users", self.users.len()),
            ("local_user_sockets", self.users.values().map(|c| c.len()).sum()),
        ]
    }

    /// Puts a socket in the room's delivery table, if it is still here and
    /// still wants the room (it may have left or gone while its join
    /// travelled to the home and back).
    pub fn add_member(&mut self, room: Arc<str>, id: SocketId) {
        let Some(conn) = self.conns.get(&id).cloned() else { return };
        if conn.in_room(&room) {
            self.rooms.entry(room).or_default().insert(id, conn);
        }
    }

    pub fn remove_member(&mut self, room: &str, id: SocketId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    pub fn attach_user(&mut self, user: Arc<str>, conn: Rc<Conn>) {
        self.users.entry(user).or_default().push(conn);
    }

    pub fn detach_user(&mut self, user: &str, id: SocketId) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Pushes the delivery's frame to every matching socket here; returns
    /// (queued, dropped for a full queue).
    pub fn deliver(&self, delivery: &Delivery) -> (u64, u64) {
        let (mut delivered, mut dropped) = (0u64, 0u64);
        let mut push = |conn: &Rc<Conn>| {
            if delivery.wants(conn) {
                // Broadcasts may be dropped for a slow client (and counted).
                match conn.outbox.push_published(delivery.frame.clone(), delivery.published_at) {
                    Pushed::Queued => delivered += 1,
                    Pushed::Dropped => dropped += 1,
                    Pushed::Closed => {}
                }
            }
        };
        match &delivery.target {
            Target::All => for_each_prefetched(self.conns.values(), &mut push),
            Target::Authenticated => for_each_prefetched(self.users.values().flatten(), &mut push),
            Target::Room(room) => {
                if let Some(members) = self.rooms.get(room) {
                    for_each_prefetched(members.values(), &mut push);
                }
            }
            Target::Rooms(rooms) => {
                let mut seen = ahash::AHashSet::new();
                for members in rooms.iter().filter_map(|room| self.rooms.get(room)) {
                    for_each_prefetched(members.values().filter(|conn| seen.insert(conn.id)), &mut push);
                }
            }
            Target::User(user) => {
                if let Some(conns) = self.users.get(user) {
                    conns.iter().for_each(&mut push);
                }
            }
            Target::Socket(id) => {
                if let Some(conn) = self.conns.get(id) {
                    push(conn);
                }
            }
        }
        (delivered, dropped)
    }

    /// This shard's sockets (of one user, or all), described for the API.
    pub fn connections(&self, user: Option<&str>, shard: usize) -> Vec<ConnectionInfo> {
        match user {
            Some(user) => self.users.get(user).map_or(Vec::new(), |c| c.iter().map(|c| c.describe(shard)).collect()),
            None => self.conns.values().map(|c| c.describe(shard)).collect(),
        }
    }

    /// Members of `room` here (tests and checks).
    #[cfg(test)]
    pub fn room_members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |m| m.len())
    }

    /// Sockets of `user` here (tests and checks).
    #[cfg(test)]
    pub fn user_sockets(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |c| c.len())
    }
}
