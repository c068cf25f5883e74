//! This node on Redis: the writer (commands → pipelines, in order), the
//! heartbeat (liveness, sweeping dead nodes, re-registering after Redis
//! comes back) and the node's own record of what it has registered.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use super::pending::Pending;
use super::wire::{self, Extension, Names, NodeMessage, To, WireAnswer, WireQuery};
use super::{scripts, ClusterError, ClusterSettings};
use crate::broker::Broker;
use crate::protocol::wsframe::OutFrame;
use crate::shard::{
    node_tag, Answer, ClusterAnswers, ClusterCmd, ClusterQuery, ClusterStatus, ConnectionInfo, Delivery, Here, Remote, RoomInfo,
    ShardStats, Shared, SocketId, Target,
};

/// Commands taken from the queue into one pipeline at most.
const BATCH: usize = 256;

/// A Redis client speaking RESP3 (push messages on a shared connection).
pub(super) fn client(url: &str) -> Result<redis::Client, ClusterError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(|e| ClusterError::Url(e.to_string()))?;
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).map_err(|e| ClusterError::Url(e.to_string()))
}

/// Reconnect quickly and fail fast: while Redis is away, commands must not
/// pile up behind reconnection attempts (the heartbeat notices the return).
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.min(Duration::from_secs(1))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

pub(super) fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// Milliseconds since the epoch, the wire's time unit.
fn ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// What this node has registered on Redis (re-registered after Redis
/// restarts or after the node was swept by mistake).
#[derive(Default)]
struct Registered {
    /// Members per room on this node.
    rooms: HashMap<Arc<str>, u32>,
    /// Users with sockets on this node.
    users: HashSet<Arc<str>>,
    /// Rooms whose channel is subscribed.
    subscribed: HashSet<Arc<str>>,
}

pub(super) struct Node {
    /// This node's name on Redis (its node tag in hex).
    pub name: String,
    pub names: Names,
    pub settings: ClusterSettings,
    pub shared: Arc<Shared>,
    pub broker: Broker,
    pub status: Arc<ClusterStatus>,
    publisher: ConnectionManager,
    subscriber: ConnectionManager,
    registered: RefCell<Registered>,
    /// Live nodes at the last heartbeat (this one included).
    live: RefCell<Vec<String>>,
    pub pending: Pending,
    /// Joins and leaves waiting for Redis, by echo id.
    memberships: RefCell<HashMap<u64, Membership>>,
    next_echo: Cell<u64>,
    /// A resync is running (the heartbeat does not start another).
    resyncing: Cell<bool>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    settings: ClusterSettings,
    client: redis::Client,
    shared: Arc<Shared>,
    broker: Broker,
    commands: mpsc::UnboundedReceiver<ClusterCmd>,
    status: Arc<ClusterStatus>,
    stop: Arc<Notify>,
    started: std::sync::mpsc::Sender<()>,
) {
    let (pushes, pushed) = mpsc::unbounded_channel();
    let config = manager_config(settings.request_timeout);
    let publisher = ConnectionManager::new_lazy_with_config(client.clone(), config.clone());
    let subscriber =
        ConnectionManager::new_lazy_with_config(client, config.set_push_sender(pushes).set_automatic_resubscription());
    let (publisher, subscriber) = match (publisher, subscriber) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot set up the Redis connections: cluster mode is off for this node");
            let _ = started.send(());
            return;
        }
    };
    let names = Names::new(&settings.adapter_key, &settings.namespace, &settings.prefix);
    let node = Rc::new(Node {
        name: status.node.clone(),
        names,
        settings,
        shared,
        broker,
        status,
        publisher,
        subscriber,
        registered: RefCell::default(),
        live: RefCell::default(),
        pending: Pending::default(),
        memberships: RefCell::default(),
        next_echo: Cell::new(0),
        resyncing: Cell::new(false),
    });
    let first = tokio::time::timeout(node.settings.request_timeout, node.beat()).await;
    if first.is_err() {
        node.redis_down("no answer to the first heartbeat");
    }
    tracing::info!(
        node = %node.name,
        redis = if node.status.is_redis_up() { "up" } else { "down" },
        nodes = node.status.nodes.load(Ordering::Relaxed),
        "cluster mode: this node joined"
    );
    let _ = started.send(());
    tokio::task::spawn_local(super::inbound::run(node.clone(), pushed));
    tokio::task::spawn_local(node.clone().run_heartbeat());
    node.clone().run_writer(commands, stop).await;
    node.leave().await;
}

/// How one queued command ends, once its pipeline has answered.
enum Finish {
    /// `echo`: this node's sockets get it when it comes back (see [`Membership`]).
    Sent { sent: Option<oneshot::Sender<bool>>, echo: Option<u64> },
    Counted { id: u64, expect: Expect, echo: Option<u64> },
    /// A join or leave: its echo (if announced) or its end.
    Membership { echo: u64, fallback: u32 },
    Online { user: Arc<str>, reply: oneshot::Sender<()> },
    Offline { user: Arc<str> },
    ToUser { online_here: bool, reply: oneshot::Sender<bool> },
}

/// Which nodes will count a publish.
enum Expect {
    /// Those the script returned.
    Listed,
    /// Every live node.
    Live,
    /// The node the script returned, if any.
    Node,
}

impl Finish {
    fn publishes(&self) -> bool {
        !matches!(self, Finish::Membership { .. })
    }
}

/// A join, a leave or a broadcast waiting for Redis: for the script's or
/// `PUBLISH`'s reply and, if published, for its message to come back on
/// its channel — its place among every node's traffic, where this node's
/// own sockets get it.
struct Membership {
    /// What this node's sockets get when it comes back.
    announce: Option<Delivery>,
    /// Waiting for the message to come back.
    echo_due: bool,
    members: Option<u32>,
    /// Redis could not take it.
    failed: bool,
    done: MembershipDone,
}

enum MembershipDone {
    /// `placed`: the socket is in its shard's local room already (the join
    /// came back before its count: see [`Node::echo_arrived`]).
    Join { room: Arc<str>, socket: SocketId, reply: oneshot::Sender<u32>, placed: bool },
    Leave(Option<oneshot::Sender<()>>),
    /// A room broadcast or a broadcast to all (`sent`: Redis took it;
    /// `count`: sockets reached on this node).
    Publish { sent: Option<oneshot::Sender<bool>>, count: Option<oneshot::Sender<usize>> },
}

impl Node {
    fn eval(&self, script: &str, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }

    fn user_script(&self, script: &str, user: &str, online: bool) -> Cmd {
        let presence = NodeMessage::Presence { o: self.name.clone(), ts: now_ms(), user: user.to_string(), online }.encode();
        self.eval(
            script,
            &[&self.names.key("user", user), &self.names.set("users"), &self.names.key("node-users", &self.name)],
            &[self.name.as_bytes(), user.as_bytes(), self.names.all_channel().as_bytes(), &presence],
        )
    }

    fn room_script(&self, room: &str, members_here: u32, announce: Option<(&str, &[u8])>) -> Cmd {
        let count = members_here.to_string();
        let mut args: Vec<&[u8]> = vec![self.name.as_bytes(), room.as_bytes(), count.as_bytes()];
        if let Some((channel, message)) = announce {
            args.extend([channel.as_bytes(), message]);
        }
        self.eval(
            scripts::ROOM_COUNT,
            &[&self.names.key("room", room), &self.names.set("rooms"), &self.names.key("node-rooms", &self.name)],
            &args,
        )
    }

    /// The command for a join or leave, and its wait (see [`Membership`]).
    fn membership_entry(
        &self,
        room: &Arc<str>,
        members_here: u32,
        socket: SocketId,
        announce: Option<OutFrame>,
        done: MembershipDone,
    ) -> (Cmd, Finish, usize) {
        let echo = self.next_echo.get() + 1;
        self.next_echo.set(echo);
        let announce = announce.map(|frame| {
            let mut delivery = Delivery::new(Target::Room(room.clone()), frame);
            delivery.except = Some(socket);
            delivery
        });
        let extension = Extension { ts: now_ms(), echo: Some(echo), ..Extension::default() };
        let announced = announce.as_ref().and_then(|delivery| {
            let except = [socket.to_string()];
            let message = wire::encode_adapter(&self.name, &self.settings.namespace, &delivery.frame.payload(), &[room], &except, &extension);
            message.ok().map(|message| (self.names.adapter_room(room), message))
        });
        // A join must come back too, to find its place among the room's
        // traffic: with nothing to announce, a mark on this node's channel
        // (Redis sends one subscriber its messages in publishing order,
        // whatever the channel).
        let published = announced.or_else(|| {
            matches!(done, MembershipDone::Join { .. }).then(|| {
                let mark = NodeMessage::Mark { o: self.name.clone(), echo }.encode();
                (self.names.node_channel(&self.name), mark)
            })
        });
        let cmd = self.room_script(room, members_here, published.as_ref().map(|(channel, message)| (channel.as_str(), message.as_slice())));
        let echo_due = published.is_some();
        let size = published.as_ref().map_or(0, |(_, message)| message.len());
        self.memberships.borrow_mut().insert(echo, Membership { announce, echo_due, members: None, failed: false, done });
        (cmd, Finish::Membership { echo, fallback: members_here }, size)
    }

    /// A join's or leave's announcement (or a join's mark) came back from
    /// Redis: this node's members get it now, in its place among the room's
    /// traffic, and a joining socket takes its place in the room.
    pub fn echo_arrived(self: &Rc<Self>, echo: u64) {
        let mut memberships = self.memberships.borrow_mut();
        let Some(waiting) = memberships.get_mut(&echo) else { return };
        waiting.echo_due = false;
        if matches!(waiting.done, MembershipDone::Publish { .. }) {
            // Delivered (and counted) here now; Redis's reply to the publish may still be on its way.
            let waiting = memberships.remove(&echo).expect("present");
            drop(memberships);
            return self.complete_membership(waiting);
        }
        if let Some(announce) = waiting.announce.take() {
            self.deliver_here(announce);
        }
        if waiting.members.is_some() {
            let done = memberships.remove(&echo).expect("present");
            drop(memberships);
            self.complete_membership(done);
        } else if let MembershipDone::Join { room, socket, placed, .. } = &mut waiting.done {
            // Redis's count is still on its way on the other connection, and
            // what Redis ordered after this join is arriving behind it: the
            // socket must be in the room for that, so it joins now.
            self.shared.router.place_join(room.clone(), *socket);
            *placed = true;
        }
    }

    fn complete_membership(self: &Rc<Self>, waiting: Membership) {
        if let MembershipDone::Publish { sent, count } = waiting.done {
            if let Some(sent) = sent {
                let _ = sent.send(!waiting.failed);
            }
            match (waiting.announce, count) {
                (Some(delivery), Some(count)) => self.deliver_here_then(delivery, move |n| {
                    let _ = count.send(n);
                }),
                (Some(delivery), None) => self.deliver_here(delivery),
                (None, Some(count)) => {
                    let _ = count.send(0);
                }
                (None, None) => {}
            }
            return;
        }
        if let Some(announce) = waiting.announce {
            self.deliver_here(announce);
        }
        let members = waiting.members.unwrap_or(0);
        match waiting.done {
            MembershipDone::Publish { .. } => {}
            MembershipDone::Join { reply, placed: true, .. } => {
                let _ = reply.send(members);
            }
            MembershipDone::Join { room, socket, reply, placed: false } => self.shared.router.confirm_join(room, socket, members, reply),
            MembershipDone::Leave(reply) => {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// The script answered (`Some` count) or failed (`None`: the node's own
    /// count stands in, and the announcement is delivered here at once).
    fn membership_counted(self: &Rc<Self>, echo: u64, members: Option<u32>, fallback: u32) {
        let mut memberships = self.memberships.borrow_mut();
        let Some(waiting) = memberships.get_mut(&echo) else { return };
        waiting.members = Some(members.unwrap_or(fallback));
        waiting.failed = members.is_none();
        if members.is_some() && waiting.echo_due {
            // The echo is on its way on the other connection; if Redis
            // loses it (a restart), give up waiting after the timeout.
            let node = self.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(node.settings.request_timeout).await;
                let late = node.memberships.borrow_mut().remove(&echo);
                if let Some(waiting) = late {
                    node.complete_membership(waiting);
                }
            });
            return;
        }
        let waiting = memberships.remove(&echo).expect("present");
        drop(memberships);
        self.complete_membership(waiting);
    }

    fn publish_cmd(channel: &str, message: &[u8]) -> Cmd {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        cmd
    }

    /// Applies queued commands in order, a batch per pipeline, until `stop`;
    /// then applies what is still queued (the shards' last leaves and
    /// offlines) and returns.
    async fn run_writer(self: Rc<Self>, mut commands: mpsc::UnboundedReceiver<ClusterCmd>, stop: Arc<Notify>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                received = commands.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    let commands = std::mem::take(&mut batch);
                    self.apply(commands).await;
                }
                _ = stop.notified() => break,
            }
        }
        while let Ok(command) = commands.try_recv() {
            batch.push(command);
        }
        if !batch.is_empty() {
            let _ = tokio::time::timeout(self.settings.request_timeout, self.apply(batch)).await;
        }
    }

    async fn apply(self: &Rc<Self>, commands: Vec<ClusterCmd>) {
        let mut entries: Vec<(Cmd, Finish, usize)> = Vec::with_capacity(commands.len());
        let mut touched: Vec<Arc<str>> = Vec::new();
        for command in commands {
            match command {
                ClusterCmd::Publish { delivery, sent, counted, here } => {
                    if let Some(entry) = self.publish_entry(&delivery, sent, counted, here) {
                        entries.push(entry);
                    }
                }
                ClusterCmd::RoomJoined { room, members_here, socket, announce, reply } => {
                    self.registered.borrow_mut().rooms.insert(room.clone(), members_here);
                    let done = MembershipDone::Join { room: room.clone(), socket, reply, placed: false };
                    entries.push(self.membership_entry(&room, members_here, socket, announce, done));
                    touched.push(room);
                }
                ClusterCmd::RoomLeft { room, members_here, socket, announce, reply } => {
                    let mut registered = self.registered.borrow_mut();
                    if members_here == 0 {
                        registered.rooms.remove(&room);
                    } else {
                        registered.rooms.insert(room.clone(), members_here);
                    }
                    drop(registered);
                    entries.push(self.membership_entry(&room, members_here, socket, announce, MembershipDone::Leave(reply)));
                    touched.push(room);
                }
                ClusterCmd::UserOnline { user, reply } => {
                    self.registered.borrow_mut().users.insert(user.clone());
                    entries.push((self.user_script(scripts::USER_ONLINE, &user, true), Finish::Online { user, reply }, 0));
                }
                ClusterCmd::UserOffline { user } => {
                    self.registered.borrow_mut().users.remove(&user);
                    entries.push((self.user_script(scripts::USER_OFFLINE, &user, false), Finish::Offline { user }, 0));
                }
                ClusterCmd::SendToUser { user, frame, online_here, reply } => {
                    let packet = String::from_utf8_lossy(&frame.payload()).into_owned();
                    let message = NodeMessage::Deliver { o: self.name.clone(), ts: now_ms(), to: To::User(user.to_string()), packet, reply: None }.encode();
                    let cmd = self.eval(
                        scripts::TO_USER_NODES,
                        &[&self.names.key("user", &user)],
                        &[self.name.as_bytes(), self.names.node_channel("").as_bytes(), &message],
                    );
                    entries.push((cmd, Finish::ToUser { online_here, reply }, message.len()));
                }
                ClusterCmd::Query { query, reply } => {
                    tokio::task::spawn_local(self.clone().query(query, reply));
                }
            }
        }
        self.update_subscriptions(&touched, true).await;
        if !entries.is_empty() {
            self.send_pipeline(entries).await;
        }
        self.update_subscriptions(&touched, false).await;
    }

    /// Subscribes (`before` the pipeline) to the channels of rooms that now
    /// have local members, or unsubscribes (after it) from those that have none.
    async fn update_subscriptions(&self, touched: &[Arc<str>], before: bool) {
        if touched.is_empty() || !self.status.is_redis_up() {
            // Re-registering after Redis returns subscribes to what is wanted then.
            return;
        }
        let mut changes: Vec<Arc<str>> = Vec::new();
        {
            let registered = self.registered.borrow();
            for room in touched {
                let wanted = registered.rooms.contains_key(room);
                let held = registered.subscribed.contains(room);
                if wanted != held && before == wanted && !changes.contains(room) {
                    changes.push(room.clone());
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        let channels: Vec<String> = changes.iter().map(|room| self.names.adapter_room(room)).collect();
        let mut subscriber = self.subscriber.clone();
        let done = if before { subscriber.subscribe(&channels).await } else { subscriber.unsubscribe(&channels).await };
        match done {
            Ok(()) => {
                let mut registered = self.registered.borrow_mut();
                for room in changes {
                    if before {
                        registered.subscribed.insert(room);
                    } else {
                        registered.subscribed.remove(&room);
                    }
                }
                self.status.subscriptions.store(registered.subscribed.len() + 3, Ordering::Relaxed);
            }
            Err(error) => self.redis_down(&error.to_string()),
        }
    }

    /// The Redis command that carries a delivery to the other nodes.
    fn publish_entry(
        self: &Rc<Self>,
        delivery: &Delivery,
        sent: Option<oneshot::Sender<bool>>,
        counted: Option<oneshot::Sender<Remote>>,
        here: Option<Here>,
    ) -> Option<(Cmd, Finish, usize)> {
        let ts = now_ms();
        // Delivered here when it comes back: the wait is registered first.
        // A room with no member here is not subscribed: nothing would come
        // back, and nobody here is to get it.
        let comes_back = match &delivery.target {
            Target::Room(room) => self.registered.borrow().rooms.contains_key(room),
            _ => true,
        };
        let (sent, echo) = match here {
            Some(Here::EchoCounted(count)) if !comes_back => {
                let _ = count.send(0);
                (sent, None)
            }
            Some(here) if delivery.ordered_by_redis() && comes_back => {
                let echo = self.next_echo.get() + 1;
                self.next_echo.set(echo);
                let count = match here {
                    Here::EchoCounted(count) => Some(count),
                    Here::Echo => None,
                };
                let waiting = Membership {
                    announce: Some(delivery.clone()),
                    echo_due: true,
                    members: None,
                    failed: false,
                    done: MembershipDone::Publish { sent, count },
                };
                self.memberships.borrow_mut().insert(echo, waiting);
                (None, Some(echo))
            }
            _ => (sent, None),
        };
        let reply_id = counted.map(|reply| {
            let id = self.pending.open_count(reply);
            let node = self.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(node.settings.request_timeout).await;
                node.pending.fail_count(id);
            });
            id
        });
        let payload = delivery.frame.payload();
        let finish = |expect: Expect| match reply_id {
            Some(id) => Finish::Counted { id, expect, echo },
            None => Finish::Sent { sent: None, echo },
        };
        let fail = |sent: Option<oneshot::Sender<bool>>| {
            if let Some(sent) = sent {
                let _ = sent.send(false);
            }
            if let Some(id) = reply_id {
                self.pending.fail_count(id);
            }
            if let Some(echo) = echo {
                self.membership_counted(echo, None, 0);
            }
        };
        let adapter_message = |rooms: &[&str]| {
            let except: Vec<String> = delivery.except.iter().map(|id| id.to_string()).collect();
            let except_users = delivery.exclude_users.iter().flat_map(|users| users.iter().map(|u| u.to_string())).collect();
            let extension = Extension { ts, reply: reply_id, except_users, echo };
            wire::encode_adapter(&self.name, &self.settings.namespace, &payload, rooms, &except, &extension)
        };
        let node_message = |to: To| {
            let packet = String::from_utf8_lossy(&payload).into_owned();
            NodeMessage::Deliver { o: self.name.clone(), ts, to, packet, reply: reply_id }.encode()
        };
        let (cmd, finish, size) = match &delivery.target {
            Target::Room(room) => {
                let message = match adapter_message(&[room]) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "a room broadcast cannot be put in the socket.io adapter format; not sent to other nodes");
                        fail(sent);
                        return None;
                    }
                };
                let channel = self.names.adapter_room(room);
                let cmd = match reply_id {
                    Some(_) => self.eval(
                        scripts::TO_ROOM_COUNTED,
                        &[&self.names.key("room", room)],
                        &[self.name.as_bytes(), channel.as_bytes(), &message],
                    ),
                    None => Self::publish_cmd(&channel, &message),
                };
                (cmd, finish(Expect::Listed), message.len())
            }
            Target::All => {
                let message = match adapter_message(&[]) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "a broadcast cannot be put in the socket.io adapter format; not sent to other nodes");
                        fail(sent);
                        return None;
                    }
                };
                (Self::publish_cmd(self.names.adapter_all(), &message), finish(Expect::Live), message.len())
            }
            Target::User(user) => {
                let message = node_message(To::User(user.to_string()));
                let cmd = self.eval(
                    scripts::TO_USER_NODES,
                    &[&self.names.key("user", user)],
                    &[self.name.as_bytes(), self.names.node_channel("").as_bytes(), &message],
                );
                (cmd, finish(Expect::Listed), message.len())
            }
            Target::Socket(id) => {
                let message = node_message(To::Socket(id.to_string()));
                let cmd = self.eval(
                    scripts::TO_SOCKET_NODE,
                    &[&self.names.set("tags")],
                    &[wire::node_name(id.node()).as_bytes(), self.names.node_channel("").as_bytes(), &message],
                );
                (cmd, finish(Expect::Node), message.len())
            }
            // Presence goes through the user scripts; several rooms come only from socket.io nodes.
            Target::Authenticated | Target::Rooms(_) => {
                fail(sent);
                return None;
            }
        };
        let finish = match (finish, sent) {
            (Finish::Sent { echo, .. }, sent) => Finish::Sent { sent, echo },
            (finish, _) => finish,
        };
        Some((cmd, finish, size))
    }

    async fn send_pipeline(self: &Rc<Self>, entries: Vec<(Cmd, Finish, usize)>) {
        let result = if self.status.is_redis_up() {
            let mut pipe = redis::pipe();
            for (cmd, _, _) in &entries {
                pipe.add_command(cmd.clone());
            }
            let mut publisher = self.publisher.clone();
            match tokio::time::timeout(self.settings.request_timeout, pipe.query_async::<Vec<Value>>(&mut publisher)).await {
                Ok(Ok(values)) if values.len() == entries.len() => Ok(values),
                Ok(Ok(_)) => Err("a pipeline answered with the wrong number of replies".to_string()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("Redis did not answer in time".to_string()),
            }
        } else {
            Err(String::new())
        };
        match result {
            Ok(values) => {
                for ((_, finish, size), value) in entries.into_iter().zip(values) {
                    if finish.publishes() {
                        ClusterStatus::add(&self.status.messages_published, 1);
                        ClusterStatus::add(&self.status.bytes_published, size as u64);
                    }
                    self.finish(finish, Some(value));
                }
            }
            Err(reason) => {
                if !reason.is_empty() {
                    self.redis_down(&reason);
                }
                for (_, finish, _) in entries {
                    if finish.publishes() {
                        ClusterStatus::add(&self.status.publish_failures, 1);
                    }
                    self.finish(finish, None);
                }
            }
        }
    }

    /// Ends one command with its reply (`None`: Redis could not take it).
    fn finish(self: &Rc<Self>, finish: Finish, value: Option<Value>) {
        let int = |value: &Option<Value>| match value {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        let nodes = |value: Option<Value>| -> Vec<String> {
            value.and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok()).unwrap_or_default()
        };
        if let Finish::Sent { echo: Some(echo), .. } | Finish::Counted { echo: Some(echo), .. } = &finish {
            self.membership_counted(*echo, value.as_ref().map(|_| 0), 0);
        }
        match finish {
            Finish::Sent { sent, .. } => {
                if let Some(sent) = sent {
                    let _ = sent.send(value.is_some());
                }
            }
            Finish::Counted { id, expect, .. } => match value {
                None => self.pending.fail_count(id),
                Some(value) => {
                    let expected = match expect {
                        Expect::Listed => nodes(Some(value)),
                        Expect::Live => self.live.borrow().iter().filter(|n| **n != self.name).cloned().collect(),
                        Expect::Node => redis::from_redis_value::<Option<String>>(value).ok().flatten().into_iter().collect(),
                    };
                    self.pending.expect_counts(id, expected);
                }
            },
            Finish::Membership { echo, fallback } => {
                self.membership_counted(echo, int(&value).map(|n| n.max(0) as u32), fallback);
            }
            Finish::Online { user, reply } => {
                // Without Redis, this node's view decides (as a single node would).
                if int(&value).is_none_or(|n| n == 1) {
                    self.announce_presence(&user, true);
                }
                let _ = reply.send(());
            }
            Finish::Offline { user } => {
                if int(&value).is_none_or(|n| n == 1) {
                    self.announce_presence(&user, false);
                }
            }
            Finish::ToUser { online_here, reply } => {
                let _ = reply.send(online_here || !nodes(value).is_empty());
            }
        }
    }

    /// Delivers `user-online` / `user-offline` to this node's authenticated sockets.
    pub fn announce_presence(&self, user: &str, online: bool) {
        if let Some(encode) = &self.shared.presence {
            self.deliver_here(Delivery::new(Target::Authenticated, encode(user, online)));
        }
    }

    /// Hands a delivery to every shard of this node that may hold a recipient.
    pub fn deliver_here(&self, delivery: Delivery) {
        let router = &self.shared.router;
        match &delivery.target {
            Target::Socket(id) if id.shard() < router.shard_count() => router.deliver(id.shard(), delivery),
            Target::Socket(_) => {}
            _ => {
                for shard in 0..router.shard_count() {
                    router.deliver(shard, delivery.clone());
                }
            }
        }
    }

    /// Like [`Node::deliver_here`], then publishes the count to `origin`.
    pub fn deliver_here_counted(self: &Rc<Self>, delivery: Delivery, origin: String, id: u64) {
        let node = self.clone();
        self.deliver_here_then(delivery, move |delivered| {
            let message = NodeMessage::Count { o: node.name.clone(), id, delivered }.encode();
            tokio::task::spawn_local(async move {
                node.publish_now(&node.names.node_channel(&origin), &message).await;
            });
        });
    }

    /// Like [`Node::deliver_here`], then tells `then` how many sockets it reached.
    fn deliver_here_then(self: &Rc<Self>, delivery: Delivery, then: impl FnOnce(usize) + 'static) {
        let router = &self.shared.router;
        let shards: Vec<usize> = match &delivery.target {
            Target::Socket(id) if id.shard() < router.shard_count() => vec![id.shard()],
            Target::Socket(_) => Vec::new(),
            _ => (0..router.shard_count()).collect(),
        };
        let replies: Vec<_> = shards.into_iter().map(|shard| router.deliver_counted(shard, delivery.clone(), None)).collect();
        tokio::task::spawn_local(async move {
            let mut delivered = 0;
            for reply in replies {
                delivered += reply.await.unwrap_or(0);
            }
            then(delivered);
        });
    }

    /// Publishes outside the ordered queue (answers and counts).
    pub async fn publish_now(&self, channel: &str, message: &[u8]) -> bool {
        let mut publisher = self.publisher.clone();
        let sent = tokio::time::timeout(self.settings.request_timeout, Self::publish_cmd(channel, message).query_async::<i64>(&mut publisher)).await;
        match sent {
            Ok(Ok(_)) => {
                ClusterStatus::add(&self.status.messages_published, 1);
                ClusterStatus::add(&self.status.bytes_published, message.len() as u64);
                true
            }
            _ => {
                ClusterStatus::add(&self.status.publish_failures, 1);
                false
            }
        }
    }

    // ---- queries ----------------------------------------------------------

    async fn query(self: Rc<Self>, query: ClusterQuery, reply: oneshot::Sender<ClusterAnswers>) {
        let others: Vec<String> = self.live.borrow().iter().filter(|n| **n != self.name).cloned().collect();
        let mut answers = ClusterAnswers { nodes: others.len() + 1, ..ClusterAnswers::default() };
        if !self.status.is_redis_up() {
            answers.partial = true;
            let _ = reply.send(answers);
            return;
        }
        let mut publisher = self.publisher.clone();
        let wire_query = match &query {
            ClusterQuery::UserOnline { user } => {
                let online = redis::cmd("HLEN").arg(self.names.key("user", user)).query_async::<i64>(&mut publisher).await;
                match online {
                    Ok(n) => answers.online = Some(n > 0),
                    Err(_) => answers.partial = true,
                }
                let _ = reply.send(answers);
                return;
            }
            ClusterQuery::Stats => {
                let counts = redis::pipe()
                    .cmd("SCARD")
                    .arg(self.names.set("rooms"))
                    .cmd("SCARD")
                    .arg(self.names.set("users"))
                    .query_async::<(usize, usize)>(&mut publisher)
                    .await;
                match counts {
                    Ok((rooms, users)) => (answers.rooms, answers.online_users) = (Some(rooms), Some(users)),
                    Err(_) => answers.partial = true,
                }
                WireQuery::Stats
            }
            ClusterQuery::Rooms => WireQuery::Rooms,
            ClusterQuery::Connections { user } => WireQuery::Connections { user: user.as_ref().map(|u| u.to_string()) },
        };
        let (id, collected) = self.pending.open_answers(others);
        let message = NodeMessage::Query { o: self.name.clone(), id, query: wire_query }.encode();
        if !self.publish_now(&self.names.all_channel(), &message).await {
            answers.partial = true;
        }
        let got = match tokio::time::timeout(self.settings.request_timeout, collected).await {
            Ok(Ok(got)) => got,
            _ => {
                answers.partial = true;
                self.pending.take_answers(id)
            }
        };
        answers.answers = got.into_iter().map(|(node, answer)| (node.clone(), to_answer(&node, answer))).collect();
        let _ = reply.send(answers);
    }

    /// Answers another node's query with this node's part.
    pub async fn answer(self: Rc<Self>, origin: String, id: u64, query: WireQuery) {
        let answer = match query {
            WireQuery::Stats => {
                let stats = self.broker.node_stats().await;
                WireAnswer::Stats { connections: stats.connections, rooms: stats.rooms, online_users: stats.online_users }
            }
            WireQuery::Rooms => WireAnswer::Rooms { list: self.broker.node_rooms().await.iter().map(wire_room).collect() },
            WireQuery::Connections { user } => {
                WireAnswer::Connections { list: self.broker.node_connections(user.as_deref()).await.iter().map(wire_connection).collect() }
            }
        };
        let message = NodeMessage::Answer { o: self.name.clone(), id, answer }.encode();
        self.publish_now(&self.names.node_channel(&origin), &message).await;
    }

    // ---- liveness ----------------------------------------------------------

    /// Every TTL/4, at most every second.
    fn heartbeat_interval(&self) -> Duration {
        (self.settings.node_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    async fn run_heartbeat(self: Rc<Self>) {
        let interval = self.heartbeat_interval();
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::timeout(self.settings.request_timeout, self.beat()).await.is_err() {
                self.redis_down("no answer to the heartbeat");
            }
        }
    }

    /// Refreshes this node's key, sweeps dead nodes, learns the live ones;
    /// re-registers this node when Redis came back or had forgotten it.
    async fn beat(self: &Rc<Self>) {
        let ttl_ms = self.settings.node_ttl.as_millis().max(1) as u64;
        let cmd = self.eval(
            scripts::HEARTBEAT,
            &[&self.names.key("node", &self.name), &self.names.set("nodes"), &self.names.set("tags"), &self.names.set("suspects")],
            &[
                self.name.as_bytes(),
                ttl_ms.to_string().as_bytes(),
                self.names.prefix().as_bytes(),
                self.names.all_channel().as_bytes(),
                now_ms().to_string().as_bytes(),
                wire::node_name(node_tag()).as_bytes(),
                (2 * self.heartbeat_interval().as_millis() as u64).to_string().as_bytes(),
            ],
        );
        let mut publisher = self.publisher.clone();
        match cmd.query_async::<Vec<Value>>(&mut publisher).await {
            Ok(values) => {
                let mut values = values.into_iter();
                let fresh = matches!(values.next(), Some(Value::Int(1)));
                let live: Vec<String> = values.filter_map(|v| redis::from_redis_value::<String>(v).ok()).collect();
                self.status.nodes.store(live.len(), Ordering::Relaxed);
                *self.live.borrow_mut() = live;
                let was_up = self.status.is_redis_up();
                if (!was_up || fresh) && !self.resyncing.replace(true) {
                    // Back only once both connections are: until the
                    // subscriber is subscribed again, a publish could not
                    // come back here (its sender would wait for the echo).
                    let _resetting = ResetOnDrop(&self.resyncing);
                    if !self.resync().await {
                        return;
                    }
                }
                if !self.status.redis_up.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %self.name, "Redis reachable: cross-node delivery is on");
                }
            }
            Err(error) => self.redis_down(&error.to_string()),
        }
    }

    pub fn redis_down(&self, reason: &str) {
        if self.status.redis_up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                node = %self.name,
                %reason,
                "Redis unreachable: cross-node delivery is degraded (local delivery goes on; publishes that cannot cross are counted in shardcast_cluster_publish_failures_total)"
            );
        }
    }

    /// Subscribes to every channel this node needs and registers its rooms
    /// and users again (after a restart Redis has forgotten them).
    /// `false`: Redis failed on the way (and is down).
    async fn resync(self: &Rc<Self>) -> bool {
        // What Redis says this node has, read before this node's own record:
        // an entry the record lacks is stale (a leave or an offline that
        // could not reach Redis while it was away), and one the record gains
        // meanwhile is in the record by the time it is compared.
        let mut publisher = self.publisher.clone();
        let on_redis = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.names.key("node-users", &self.name))
            .cmd("SMEMBERS")
            .arg(self.names.key("node-rooms", &self.name))
            .query_async::<(Vec<String>, Vec<String>)>(&mut publisher)
            .await;
        let (users_on_redis, rooms_on_redis) = match on_redis {
            Ok(sets) => sets,
            Err(error) => {
                self.redis_down(&error.to_string());
                return false;
            }
        };
        let rooms: Vec<(Arc<str>, u32)> = self.registered.borrow().rooms.iter().map(|(r, n)| (r.clone(), *n)).collect();
        let users: Vec<Arc<str>> = self.registered.borrow().users.iter().cloned().collect();
        let stale_users: Vec<String> = users_on_redis.into_iter().filter(|u| !users.iter().any(|k| **k == **u)).collect();
        let stale_rooms: Vec<String> = rooms_on_redis.into_iter().filter(|r| !rooms.iter().any(|(k, _)| **k == **r)).collect();
        let mut channels = vec![self.names.all_channel(), self.names.node_channel(&self.name), self.names.adapter_all().to_string()];
        channels.extend(rooms.iter().map(|(room, _)| self.names.adapter_room(room)));
        let mut subscriber = self.subscriber.clone();
        let mut subscribed = subscriber.subscribe(&channels).await;
        if subscribed.is_err() {
            // The subscriber's last reconnection may have failed while Redis
            // was away (nothing else uses it): that stale error started a new
            // connection (which resubscribes what it had); subscribe on it.
            subscribed = subscriber.subscribe(&channels).await;
        }
        if let Err(error) = subscribed {
            self.redis_down(&error.to_string());
            return false;
        }
        {
            let mut registered = self.registered.borrow_mut();
            registered.subscribed = rooms.iter().map(|(room, _)| room.clone()).collect();
            self.status.subscriptions.store(registered.subscribed.len() + 3, Ordering::Relaxed);
        }
        if rooms.is_empty() && users.is_empty() && stale_users.is_empty() && stale_rooms.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for room in &stale_rooms {
            pipe.add_command(self.room_script(room, 0, None)).ignore();
        }
        for user in &stale_users {
            // `user-offline` goes out (from Redis) if no node has the user.
            pipe.add_command(self.user_script(scripts::USER_OFFLINE, user, false)).ignore();
        }
        for (room, members) in &rooms {
            pipe.add_command(self.room_script(room, *members, None)).ignore();
        }
        for user in &users {
            pipe.add_command(self.user_script(scripts::USER_ONLINE, user, true)).ignore();
        }
        match pipe.query_async::<()>(&mut publisher).await {
            Ok(()) => {
                tracing::info!(
                    node = %self.name,
                    rooms = rooms.len(),
                    users = users.len(),
                    stale_rooms = stale_rooms.len(),
                    stale_users = stale_users.len(),
                    "registered this node's rooms and users on Redis again"
                );
                true
            }
            Err(error) => {
                self.redis_down(&error.to_string());
                false
            }
        }
    }

    /// Leaves on shutdown (its clients' leaves and offlines are on Redis
    /// already): the node's key and entries go, and the others hear at once
    /// that no answer will come from it.
    async fn leave(&self) {
        let mut publisher = self.publisher.clone();
        let leaving = NodeMessage::Leaving { o: self.name.clone() }.encode();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.names.key("node", &self.name)).ignore();
        pipe.cmd("SREM").arg(self.names.set("nodes")).arg(&self.name).ignore();
        pipe.cmd("HDEL").arg(self.names.set("tags")).arg(wire::node_name(node_tag())).ignore();
        pipe.cmd("PUBLISH").arg(self.names.all_channel()).arg(leaving).ignore();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut publisher)).await;
    }

    /// Another node stopped cleanly: not live, and not waited for.
    pub fn node_left(&self, node: &str) {
        self.live.borrow_mut().retain(|n| n != node);
        self.status.nodes.store(self.live.borrow().len(), Ordering::Relaxed);
        self.pending.node_left(node);
    }

    pub fn is_own(&self, origin: &str) -> bool {
        origin == self.name
    }

    pub fn own_tag(&self) -> u32 {
        node_tag()
    }
}

/// Clears a flag when dropped: the heartbeat's timeout may drop a resync
/// half-way, and the next beat must be able to start another.
struct ResetOnDrop<'a>(&'a Cell<bool>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn wire_room(room: &RoomInfo) -> wire::WireRoom {
    wire::WireRoom {
        name: room.name.clone(),
        member_count: room.member_count,
        users: room.users.clone(),
        created_at_ms: ms(room.created_at),
        last_activity_ms: ms(room.last_activity),
    }
}

fn wire_connection(conn: &ConnectionInfo) -> wire::WireConnection {
    wire::WireConnection {
        socket_id: conn.socket_id.clone(),
        user_id: conn.user_id.clone(),
        rooms: conn.rooms.clone(),
        transport: conn.transport.to_string(),
        shard: conn.shard,
        connected_at_ms: ms(conn.connected_at),
        last_activity_ms: ms(conn.last_activity),
    }
}

/// Another node's answer, as this node's types.
fn to_answer(node: &str, answer: WireAnswer) -> Answer {
    match answer {
        WireAnswer::Stats { connections, rooms, online_users } => Answer::Stats(ShardStats { connections, rooms, online_users }),
        WireAnswer::Rooms { list } => Answer::Rooms(
            list.into_iter()
                .map(|room| RoomInfo {
                    name: room.name,
                    member_count: room.member_count,
                    users: room.users,
                    created_at: from_ms(room.created_at_ms),
                    last_activity: from_ms(room.last_activity_ms),
                })
                .collect(),
        ),
        WireAnswer::Connections { list } => Answer::Connections(
            list.into_iter()
                .map(|conn| ConnectionInfo {
                    socket_id: conn.socket_id,
                    user_id: conn.user_id,
                    rooms: conn.rooms,
                    transport: match conn.transport.as_str() {
                        "websocket" => "websocket",
                        "polling" => "polling",
                        _ => "unknown",
                    },
                    shard: conn.shard,
                    node: Some(node.to_string()),
                    connected_at: from_ms(conn.connected_at_ms),
                    last_activity: from_ms(conn.last_activity_ms),
                })
                .collect(),
        ),
    }
}
