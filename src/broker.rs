//! [`Broker`]: the server-side operations of SPEC §5 as a Rust handle — the
//! WebSocketService of the NestJS original. Cheap to clone, `Send + Sync`,
//! usable from any thread or runtime; the HTTP API is a thin layer over it.
//!
//! Publishes encode the event once (Socket.IO packet and WebSocket frame)
//! and hand the same buffer to every shard; queries ask every shard for its
//! part and merge the answers.

use std::sync::Arc;

use serde::Serialize;

use crate::app::validate;
use crate::protocol::socketio;
use crate::protocol::wsframe::OutFrame;
use crate::shard::{Answer, ConnectionInfo, CounterSnapshot, Delivery, Query, RoomInfo, ShardStats, Shared, SocketId, Target};

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
    /// Connections per shard, by shard index.
    pub connections_per_shard: Vec<usize>,
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
        let invalid = |e: crate::app::errors::RequestError| PublishError::Invalid(e.to_string());
        let target = match scope {
            Scope::All => Some(Target::All),
            Scope::Room(room) => {
                validate::check_name("roomName", room).map_err(invalid)?;
                Some(Target::Room(Arc::from(room)))
            }
            Scope::User(user) => {
                validate::check_name("userId", user).map_err(invalid)?;
                Some(Target::User(Arc::from(user)))
            }
            Scope::Socket(socket) => SocketId::parse(socket)
                .filter(|id| id.shard() < self.shared.router.shard_count())
                .map(Target::Socket),
        };
        let frame = self.encode(event, data)?;
        Ok(Publication { target, frame, exclude: options.exclude })
    }

    /// Every connection, on every shard.
    pub async fn active_connections(&self) -> Vec<ConnectionInfo> {
        let mut all = Vec::new();
        for answer in self.ask_all(Query::Connections { user: None }).await {
            if let Answer::Connections(list) = answer {
                all.extend(list);
            }
        }
        all
    }

    /// Every room, by name.
    pub async fn active_rooms(&self) -> Vec<RoomInfo> {
        let mut all = Vec::new();
        for answer in self.ask_all(Query::Rooms).await {
            if let Answer::Rooms(list) = answer {
                all.extend(list);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Counts over every shard.
    pub async fn stats(&self) -> Stats {
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

    /// Socket.IO connections in the process.
    pub async fn connection_count(&self) -> usize {
        self.stats().await.connections
    }

    /// Rooms with at least one member.
    pub async fn room_count(&self) -> usize {
        self.stats().await.rooms
    }

    /// The connections of one user, on every shard.
    pub async fn user_connections(&self, user_id: &str) -> Vec<ConnectionInfo> {
        let mut all = Vec::new();
        for answer in self.ask_all(Query::Connections { user: Some(Arc::from(user_id)) }).await {
            if let Answer::Connections(list) = answer {
                all.extend(list);
            }
        }
        all
    }

    /// Whether `user_id` has at least one connection (asked of the user's home shard).
    pub async fn is_user_online(&self, user_id: &str) -> bool {
        let home = self.shared.router.home_of(user_id);
        let answer = self.shared.router.ask(home, Query::UserOnline { user: Arc::from(user_id) });
        matches!(answer.await, Ok(Answer::UserOnline(true)))
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

    fn encode(&self, event: &str, data: &impl Serialize) -> Result<OutFrame, PublishError> {
        validate::check_name("event", event).map_err(|e| PublishError::Invalid(e.to_string()))?;
        if validate::CLIENT_RESERVED_EVENTS.contains(&event) {
            return Err(PublishError::Invalid(format!("event {event:?} is reserved by the Socket.IO client")));
        }
        // A `&RawValue` (what the HTTP API passes) is copied byte for byte.
        socketio::try_event_frame(&self.namespace, event, data)
            .map_err(|e| PublishError::Invalid(format!("data cannot be encoded: {e}")))
    }

    /// Hands a prepared publish to every shard that may hold a recipient
    /// and sums what each delivered.
    pub async fn send(&self, publication: Publication) -> usize {
        let Publication { target, frame, exclude } = publication;
        let Some(target) = target else {
            // A socket id that names no socket reaches nobody, but the
            // publish is counted like any other (on the first shard).
            self.shared.router.run_on(0, |shard| shard.counters.broadcast("socket"));
            return 0;
        };
        let mut delivery = Delivery::new(target, frame);
        if !exclude.is_empty() {
            delivery.exclude_users = Some(exclude.iter().map(|u| Arc::from(u.as_str())).collect());
        }
        let scope = match &delivery.target {
            Target::All | Target::Authenticated => "all",
            Target::Room(_) => "room",
            Target::User(_) => "user",
            Target::Socket(_) => "socket",
        };
        let shards: Vec<usize> = match &delivery.target {
            Target::Socket(id) => vec![id.shard()],
            _ => (0..self.shared.router.shard_count()).collect(),
        };
        let mut replies = Vec::with_capacity(shards.len());
        for (i, shard) in shards.into_iter().enumerate() {
            let count_as = (i == 0).then_some(scope);
            replies.push(self.shared.router.deliver_counted(shard, delivery.clone(), count_as));
        }
        let mut delivered = 0;
        for reply in replies {
            delivered += reply.await.unwrap_or(0);
        }
        delivered
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
