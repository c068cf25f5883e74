//! [`Broker`]: the server-side operations of SPEC §5 as a Rust handle — the
//! WebSocketService of the NestJS original. Cheap to clone, `Send + Sync`,
//! usable from any thread or runtime; the HTTP API is a thin layer over it.
//!
//! Publishes encode the event once (Socket.IO packet and WebSocket frame)
//! and hand the same buffer to every shard; queries ask every shard for its
//! part and merge the answers. In cluster mode, publishes also go to the
//! cluster thread (which counts what the other nodes reached) and queries
//! merge the other nodes' answers too; the `node_*` methods answer for this
//! node alone.

use std::sync::Arc;

use serde::Serialize;

use crate::app::validate;
use crate::protocol::socketio;
use crate::protocol::wsframe::OutFrame;
use crate::shard::{
    node_tag, Answer, ClusterAnswers, ClusterLink, ClusterQuery, Here, ConnectionInfo, CounterSnapshot, Delivery, Query, Remote, RoomInfo,
    ShardStats, Shared, SocketId, Target,
};

/// Options of a broadcast (as in the seed's `BroadcastOptions`).
#[derive(Debug, Clone, Default)]
pub struct BroadcastOptions {
    /// Users whose connections must not receive the event.
    pub exclude: Vec<String>,
}

/// A publish the broker refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event name, the target or the data is not acceptable; the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

/// Totals over every shard.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Socket.IO connections in the process.
    pub connections: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
    /// Users with at least one authenticated connection.
    pub online_users: usize,
    /// Connections per shard of this node, by shard index.
    pub connections_per_shard: Vec<usize>,
    /// In cluster mode: this node's own figures, and how complete the answer is.
    pub cluster: Option<ClusterStats>,
}

/// This node's part of [`Stats`] in cluster mode (the totals are cluster-wide).
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// This node's name on Redis.
    pub node: String,
    /// Live nodes, this one included.
    pub nodes: usize,
    /// Nodes whose figures are in the totals, this one included.
    pub answered: usize,
    /// Some live node did not answer in time (or Redis was unreachable).
    pub partial: bool,
    /// Connections on this node.
    pub node_connections: usize,
    /// Rooms with members on this node.
    pub node_rooms: usize,
    /// Users with connections on this node.
    pub node_online_users: usize,
}

/// What a publish reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Connections it was queued for, on every node.
    pub delivered: usize,
    /// Some node did not report its count in time (or Redis was unreachable).
    pub partial: bool,
}

/// The checks of [`Broker::prepare`] that need no broker (the HTTP API's
/// body parser runs them too): the room or user name and the event name
/// follow the client rules, and the event is not one the Socket.IO client
/// reserves. A socket id is not checked: one that names no socket reaches
/// nobody, which is not an error.
pub(crate) fn check_publish(scope: Scope<'_>, event: &str) -> Result<(), PublishError> {
    let invalid = |e: crate::app::errors::RequestError| PublishError::Invalid(e.to_string());
    match scope {
        Scope::Room(room) => validate::check_name("roomName", room).map_err(invalid)?,
        Scope::User(user) => validate::check_name("userId", user).map_err(invalid)?,
        Scope::All | Scope::Socket(_) => {}
    }
    validate::check_name("event", event).map_err(invalid)?;
    if validate::CLIENT_RESERVED_EVENTS.contains(&event) {
        return Err(PublishError::Invalid(format!("event {event:?} is reserved by the Socket.IO client")));
    }
    Ok(())
}

/// Who a publish is for.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every connection.
    All,
    /// The members of a room.
    Room(&'a str),
    /// Every connection of a user.
    User(&'a str),
    /// One connection, by socket id.
    Socket(&'a str),
}

/// A validated, encoded publish, ready for [`Broker::send`].
#[derive(Debug, Clone)]
pub struct Publication {
    target: Option<Target>,
    frame: OutFrame,
    exclude: Vec<String>,
}

/// The server-side handle: publishes to clients and answers questions about them. Get one from [`crate::Server::broker`].
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    /// The namespace publishes go to (`WEBSOCKET_NAMESPACE`).
    namespace: Arc<str>,
}

impl Broker {
    pub(crate) fn new(shared: Arc<Shared>, namespace: &str) -> Broker {
        Broker { shared, namespace: Arc::from(namespace) }
    }

    /// Sends `event` with `data` to every connection (but the excluded users').
    /// Returns the number of connections it was delivered to.
    pub async fn broadcast_to_all(
        &self,
        event: &str,
        data: &impl Serialize,
        options: BroadcastOptions,
    ) -> Result<usize, PublishError> {
        Ok(self.send(self.prepare(Scope::All, event, data, options)?).await)
    }

    /// Sends `event` with `data` to every member of `room`.
    pub async fn broadcast_to_room(
        &self,
        room: &str,
        event: &str,
        data: &impl Serialize,
        options: BroadcastOptions,
    ) -> Result<usize, PublishError> {
        Ok(self.send(self.prepare(Scope::Room(room), event, data, options)?).await)
    }

    /// Sends `event` with `data` to every connection of `user_id`.
    pub async fn send_to_user(&self, user_id: &str, event: &str, data: &impl Serialize) -> Result<usize, PublishError> {
        Ok(self.send(self.prepare(Scope::User(user_id), event, data, BroadcastOptions::default())?).await)
    }

    /// Sends `event` with `data` to one connection; 0 if no such socket exists.
    pub async fn send_to_socket(&self, socket_id: &str, event: &str, data: &impl Serialize) -> Result<usize, PublishError> {
        Ok(self.send(self.prepare(Scope::Socket(socket_id), event, data, BroadcastOptions::default())?).await)
    }

    /// Validates and encodes a publish without sending it, so that a batch
    /// can be checked whole before anything goes out.
    pub fn prepare(
        &self,
        scope: Scope<'_>,
        event: &str,
        data: &impl Serialize,
        options: BroadcastOptions,
    ) -> Result<Publication, PublishError> {
        check_publish(scope, event)?;
        let target = match scope {
            Scope::All => Some(Target::All),
            Scope::Room(room) => Some(Target::Room(Arc::from(room))),
            Scope::User(user) => Some(Target::User(Arc::from(user))),
            // Another node's socket ids name shards of that node.
            Scope::Socket(socket) => SocketId::parse(socket)
                .filter(|id| id.node() != node_tag() || id.shard() < self.shared.router.shard_count())
                .map(Target::Socket),
        };
        let frame = self.encode(event, data)?;
        Ok(Publication { target, frame, exclude: options.exclude })
    }

    fn cluster(&self) -> Option<&ClusterLink> {
        self.shared.cluster.as_ref()
    }

    /// Cluster mode's status (Redis, nodes, traffic); `None` on a single node.
    pub(crate) fn cluster_status(&self) -> Option<&crate::shard::ClusterStatus> {
        self.cluster().map(|link| &*link.status)
    }

    /// Asks the other nodes (cluster mode only).
    async fn ask_cluster(&self, query: ClusterQuery) -> Option<ClusterAnswers> {
        let link = self.cluster()?;
        Some(link.query(query).await.unwrap_or(ClusterAnswers { partial: true, ..ClusterAnswers::default() }))
    }

    /// Every connection, on every shard (and node).
    pub async fn active_connections(&self) -> Vec<ConnectionInfo> {
        self.connections_view(None).await.0
    }

    /// Every connection (of one user, or all) on every node; `true` if some
    /// node did not answer.
    pub(crate) async fn connections_view(&self, user: Option<&str>) -> (Vec<ConnectionInfo>, bool) {
        let mut all = self.node_connections(user).await;
        let mut partial = false;
        if let Some(answers) = self.ask_cluster(ClusterQuery::Connections { user: user.map(Arc::from) }).await {
            partial = answers.partial;
            for (_, answer) in answers.answers {
                if let Answer::Connections(list) = answer {
                    all.extend(list);
                }
            }
        }
        (all, partial)
    }

    /// This node's connections (of one user, or all).
    pub(crate) async fn node_connections(&self, user: Option<&str>) -> Vec<ConnectionInfo> {
        let node = self.cluster().map(|link| link.status.node.clone());
        let mut all = Vec::new();
        for answer in self.ask_all(Query::Connections { user: user.map(Arc::from) }).await {
            if let Answer::Connections(list) = answer {
                all.extend(list);
            }
        }
        if node.is_some() {
            all.iter_mut().for_each(|conn| conn.node = node.clone());
        }
        all
    }

    /// Every room, by name (across nodes: members summed, users merged).
    pub async fn active_rooms(&self) -> Vec<RoomInfo> {
        self.rooms_view().await.0
    }

    /// Every room on every node; `true` if some node did not answer.
    pub(crate) async fn rooms_view(&self) -> (Vec<RoomInfo>, bool) {
        let mut all = self.node_rooms().await;
        let Some(answers) = self.ask_cluster(ClusterQuery::Rooms).await else { return (all, false) };
        let mut by_name: ahash::AHashMap<String, usize> = all.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        for (_, answer) in answers.answers {
            let Answer::Rooms(list) = answer else { continue };
            for room in list {
                match by_name.get(&room.name) {
                    Some(&i) => {
                        let merged = &mut all[i];
                        merged.member_count += room.member_count;
                        for user in room.users {
                            if !merged.users.contains(&user) {
                                merged.users.push(user);
                            }
                        }
                        merged.created_at = merged.created_at.min(room.created_at);
                        merged.last_activity = merged.last_activity.max(room.last_activity);
                    }
                    None => {
                        by_name.insert(room.name.clone(), all.len());
                        all.push(room);
                    }
                }
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        (all, answers.partial)
    }

    /// The rooms with members on this node (their members here only).
    pub(crate) async fn node_rooms(&self) -> Vec<RoomInfo> {
        let mut all = Vec::new();
        for answer in self.ask_all(Query::Rooms).await {
            if let Answer::Rooms(list) = answer {
                all.extend(list);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Counts over every shard (in cluster mode: over every node, with this
    /// node's own figures in [`Stats::cluster`]).
    pub async fn stats(&self) -> Stats {
        let mut stats = self.node_stats().await;
        let Some(answers) = self.ask_cluster(ClusterQuery::Stats).await else { return stats };
        let mut cluster = ClusterStats {
            node: self.cluster().map(|link| link.status.node.clone()).unwrap_or_default(),
            nodes: answers.nodes,
            answered: 1 + answers.answers.len(),
            partial: answers.partial,
            node_connections: stats.connections,
            node_rooms: stats.rooms,
            node_online_users: stats.online_users,
        };
        for (_, answer) in &answers.answers {
            if let Answer::Stats(remote) = answer {
                stats.connections += remote.connections;
            }
        }
        // Rooms and users on several nodes count once: Redis keeps the sets.
        stats.rooms = answers.rooms.unwrap_or(stats.rooms);
        stats.online_users = answers.online_users.unwrap_or(stats.online_users);
        cluster.nodes = cluster.nodes.max(cluster.answered);
        stats.cluster = Some(cluster);
        stats
    }

    /// Counts over this node's shards.
    pub(crate) async fn node_stats(&self) -> Stats {
        let mut stats = Stats::default();
        for answer in self.ask_all(Query::Stats).await {
            if let Answer::Stats(ShardStats { connections, rooms, online_users }) = answer {
                stats.connections += connections;
                stats.rooms += rooms;
                stats.online_users += online_users;
                stats.connections_per_shard.push(connections);
            }
        }
        stats
    }

    /// Socket.IO connections (in cluster mode, on every node).
    pub async fn connection_count(&self) -> usize {
        self.stats().await.connections
    }

    /// Rooms with at least one member.
    pub async fn room_count(&self) -> usize {
        self.stats().await.rooms
    }

    /// The connections of one user, on every shard (and node).
    pub async fn user_connections(&self, user_id: &str) -> Vec<ConnectionInfo> {
        self.connections_view(Some(user_id)).await.0
    }

    /// Whether `user_id` has at least one connection (asked of the user's
    /// home shard; in cluster mode, of Redis if not here).
    pub async fn is_user_online(&self, user_id: &str) -> bool {
        let home = self.shared.router.home_of(user_id);
        let answer = self.shared.router.ask(home, Query::UserOnline { user: Arc::from(user_id) });
        if matches!(answer.await, Ok(Answer::UserOnline(true))) {
            return true;
        }
        let answers = self.ask_cluster(ClusterQuery::UserOnline { user: Arc::from(user_id) }).await;
        answers.and_then(|a| a.online).unwrap_or(false)
    }

    /// Every shard's table sizes and counters, in shard order (for `/metrics`).
    pub(crate) async fn shard_metrics(&self) -> Vec<(ShardStats, CounterSnapshot)> {
        self.ask_all(Query::Metrics)
            .await
            .into_iter()
            .filter_map(|answer| match answer {
                Answer::Metrics(stats, counters) => Some((stats, counters)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn queue_depths(&self) -> Vec<usize> {
        self.shared.router.queue_depths()
    }

    /// The frame of a publish whose names [`check_publish`] accepted.
    fn encode(&self, event: &str, data: &impl Serialize) -> Result<OutFrame, PublishError> {
        // A `&RawValue` (what the HTTP API passes) is copied byte for byte.
        socketio::try_event_frame(&self.namespace, event, data)
            .map_err(|e| PublishError::Invalid(format!("data cannot be encoded: {e}")))
    }

    /// Hands a prepared publish to every shard that may hold a recipient
    /// and sums what each delivered (in cluster mode, on every node).
    pub async fn send(&self, publication: Publication) -> usize {
        self.send_counted(publication).await.delivered
    }

    /// Like [`Broker::send`], saying whether every node's count came in.
    pub(crate) async fn send_counted(&self, publication: Publication) -> Sent {
        let Publication { target, frame, exclude } = publication;
        let Some(target) = target else {
            // A socket id that names no socket reaches nobody, but the
            // publish is counted like any other (on the first shard).
            self.shared.router.run_on(0, |shard| shard.counters.broadcast("socket"));
            return Sent::default();
        };
        let mut delivery = Delivery::new(target, frame);
        if !exclude.is_empty() {
            delivery.exclude_users = Some(exclude.iter().map(|u| Arc::from(u.as_str())).collect());
        }
        let scope = match &delivery.target {
            Target::All | Target::Authenticated => "all",
            Target::Room(_) | Target::Rooms(_) => "room",
            Target::User(_) => "user",
            Target::Socket(_) => "socket",
        };
        // Queued for the other nodes first: their count comes back while this node delivers.
        // A room broadcast or a broadcast to all reaches this node's sockets
        // when it comes back from Redis (one order for every node).
        let mut here = None;
        let remote = match self.cluster() {
            Some(link) if delivery.ordered_by_redis() => {
                let (count, counted) = tokio::sync::oneshot::channel();
                here = Some(counted);
                Some(link.publish_counted(delivery.clone(), Some(Here::EchoCounted(count))))
            }
            Some(link) if matches!(delivery.target, Target::User(_)) || delivery.crosses_nodes() => {
                Some(link.publish_counted(delivery.clone(), None))
            }
            _ => None,
        };
        let shards: Vec<usize> = match &delivery.target {
            Target::Socket(id) if id.node() != node_tag() => Vec::new(),
            Target::Socket(id) => vec![id.shard()],
            _ if here.is_some() => Vec::new(),
            _ => (0..self.shared.router.shard_count()).collect(),
        };
        if shards.is_empty() {
            self.shared.router.run_on(0, move |shard| shard.counters.broadcast(scope));
        }
        let mut replies = Vec::with_capacity(shards.len());
        for (i, shard) in shards.into_iter().enumerate() {
            let count_as = (i == 0).then_some(scope);
            replies.push(self.shared.router.deliver_counted(shard, delivery.clone(), count_as));
        }
        let mut sent = Sent::default();
        for reply in replies {
            sent.delivered += reply.await.unwrap_or(0);
        }
        if let Some(here) = here {
            sent.delivered += here.await.unwrap_or(0);
        }
        if let Some(remote) = remote {
            let Remote { delivered, partial } = remote.await.unwrap_or(Remote { delivered: 0, partial: true });
            sent.delivered += delivered;
            sent.partial = partial;
        }
        sent
    }

    async fn ask_all(&self, query: Query) -> Vec<Answer> {
        let mut replies = Vec::new();
        for shard in 0..self.shared.router.shard_count() {
            replies.push(self.shared.router.ask(shard, query.clone()));
        }
        let mut answers = Vec::with_capacity(replies.len());
        for reply in replies {
            if let Ok(answer) = reply.await {
                answers.push(answer);
            }
        }
        answers
    }
}
