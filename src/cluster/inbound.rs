//! What this node receives from Redis, in the order Redis sends it: each
//! message becomes a delivery on this node's shards (one encoded frame for
//! all of them), a count or an answer for a waiting request, or an answer
//! to another node's query. Messages this node published itself come back
//! on the socket.io channels and are dropped (the uid is the node's name).

use std::rc::Rc;
use std::sync::Arc;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::node::{now_ms, Node};
use super::wire::{self, NodeMessage, To};
use crate::protocol::wsframe::OutFrame;
use fastwebsockets::OpCode;
use crate::shard::{ClusterStatus, Delivery, ExceptNames, SocketId, Target};

pub(super) async fn run(node: Rc<Node>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        if push.kind != PushKind::Message {
            continue;
        }
        let mut data = push.data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else { continue };
        let (Some(channel), Some(payload)) = (bytes_of(channel), bytes_of(payload)) else { continue };
        ClusterStatus::add(&node.status.messages_received, 1);
        ClusterStatus::add(&node.status.bytes_received, payload.len() as u64);
        let channel = String::from_utf8_lossy(&channel);
        if node.names.is_adapter_channel(&channel) {
            adapter_message(&node, &payload);
        } else {
            node_message(&node, &payload);
        }
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

fn undecodable(node: &Node, error: &dyn std::fmt::Display) {
    ClusterStatus::add(&node.status.undecodable, 1);
    tracing::debug!(%error, "a Redis message that cannot be read was dropped");
}

fn record_lag(node: &Node, ts: u64) {
    if ts > 0 {
        node.status.record_lag(now_ms().saturating_sub(ts) * 1000);
    }
}

/// A socket.io adapter broadcast (from a shardcast node, a socket.io
/// server or an emitter).
fn adapter_message(node: &Rc<Node>, payload: &[u8]) {
    let message = match wire::decode_adapter(payload) {
        Ok(message) => message,
        Err(error) => return undecodable(node, &error),
    };
    if node.is_own(&message.uid) {
        // This node delivered its own broadcasts itself; a join's or leave's
        // announcement is delivered here when it comes back.
        if let Some(echo) = message.extension.and_then(|e| e.echo) {
            node.echo_arrived(echo);
        }
        return;
    }
    if message.nsp != node.settings.namespace {
        return;
    }
    let target = match message.rooms.len() {
        0 => Target::All,
        1 => Target::Room(Arc::from(message.rooms[0].as_str())),
        _ => Target::Rooms(message.rooms.iter().map(|r| Arc::from(r.as_str())).collect()),
    };
    let mut delivery = Delivery::new(target, OutFrame::new(OpCode::Text, message.packet.as_bytes()));
    let mut except = ExceptNames::default();
    for name in &message.except {
        match SocketId::parse(name) {
            Some(id) if id.node() == node.own_tag() => except.sockets.push(id),
            // Another node's socket: not here.
            Some(_) => {}
            None => except.rooms.push(Arc::from(name.as_str())),
        }
    }
    if !except.sockets.is_empty() || !except.rooms.is_empty() {
        delivery.except_names = Some(Arc::new(except));
    }
    let extension = message.extension.unwrap_or_default();
    record_lag(node, extension.ts);
    if !extension.except_users.is_empty() {
        delivery.exclude_users = Some(extension.except_users.iter().map(|u| Arc::from(u.as_str())).collect());
    }
    match extension.reply {
        Some(id) => node.deliver_here_counted(delivery, message.uid, id),
        None => node.deliver_here(delivery),
    }
}

/// One of shardcast's own messages.
fn node_message(node: &Rc<Node>, payload: &[u8]) {
    let message = match NodeMessage::decode(payload) {
        Ok(message) => message,
        Err(error) => return undecodable(node, &error),
    };
    if node.is_own(message.origin()) {
        // This node delivered its own presence changes itself; a join's mark
        // is the join's place in Redis's order.
        if let NodeMessage::Mark { echo, .. } = message {
            node.echo_arrived(echo);
        }
        return;
    }
    match message {
        NodeMessage::Deliver { o, ts, to, packet, reply } => {
            record_lag(node, ts);
            let target = match to {
                To::User(user) => Target::User(Arc::from(user.as_str())),
                To::Socket(socket) => match SocketId::parse(&socket) {
                    Some(id) if id.node() == node.own_tag() => Target::Socket(id),
                    _ => return undecodable(node, &"a socket id of another node"),
                },
            };
            let delivery = Delivery::new(target, OutFrame::new(OpCode::Text, packet.as_bytes()));
            match reply {
                Some(id) => node.deliver_here_counted(delivery, o, id),
                None => node.deliver_here(delivery),
            }
        }
        NodeMessage::Presence { ts, user, online, .. } => {
            record_lag(node, ts);
            node.announce_presence(&user, online);
        }
        NodeMessage::Count { o, id, delivered } => node.pending.count_arrived(id, &o, delivered),
        NodeMessage::Query { o, id, query } => {
            tokio::task::spawn_local(node.clone().answer(o, id, query));
        }
        NodeMessage::Answer { o, id, answer } => node.pending.answer_arrived(id, &o, answer),
        NodeMessage::Leaving { o } => node.node_left(&o),
        // Only ever published on its origin's own channel.
        NodeMessage::Mark { .. } => {}
    }
}
