//! Handlers of the client → server events (SPEC §2). Each returns the
//! success ack body or the reason for refusing; the session turns that into
//! an ack or an `error` event.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::errors::RequestError;
use super::session::SocketSession;
use super::{timestamp, validate};
use crate::protocol::socketio;
use crate::shard::{Delivery, SocketId, Target};

#[derive(Deserialize)]
struct AuthenticateIn<'a> {
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RoomIn<'a> {
    #[serde(borrow, rename = "roomName")]
    room_name: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PrivateMessageIn<'a> {
    #[serde(borrow, rename = "targetUserId")]
    target_user_id: Option<&'a RawValue>,
    // `null` must reach the checks as a value: it is refused, not "absent".
    #[serde(borrow, default, deserialize_with = "validate::present")]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "validate::present", rename = "messageType")]
    message_type: Option<&'a RawValue>,
}

/// The `private-message` event; `message` goes out byte for byte as the
/// sender wrote it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrivateMessageOut<'a> {
    message_id: &'a str,
    from_user_id: &'a str,
    target_user_id: &'a str,
    message: &'a RawValue,
    message_type: &'a str,
    timestamp: &'a str,
}

#[derive(Deserialize)]
struct CustomEventIn<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow, rename = "roomName")]
    room_name: Option<&'a RawValue>,
}

impl SocketSession {
    fn room_events(&self) -> bool {
        self.settings().room_events
    }

    fn require_user(&self) -> Result<Arc<str>, RequestError> {
        self.conn.user().ok_or(RequestError::Unauthenticated)
    }

    pub(super) async fn authenticate(&self, payload: Option<&RawValue>) -> Result<Value, RequestError> {
        let input: AuthenticateIn = validate::object(payload)?;
        let token = input.token.map(|t| validate::string("token", Some(t))).transpose()?;
        let user_id = input.user_id.map(|u| validate::string("userId", Some(u))).transpose()?;
        let user = self.auth().identify(token.as_deref(), user_id.as_deref())?;
        match self.conn.user() {
            Some(current) if *current == *user => {}
            Some(current) => {
                return Err(RequestError::Validation(format!(
                    "userId: this connection is already authenticated as {current:?}"
                )))
            }
            None => self.bind_user(Arc::from(user.as_str())).await,
        }
        Ok(json!({ "success": true, "userId": user, "socketId": &*self.conn.id_text }))
    }

    pub(super) async fn join_room(&self, payload: Option<&RawValue>) -> Result<Value, RequestError> {
        let input: RoomIn = validate::object(payload)?;
        let room = validate::name("roomName", input.room_name)?;
        let user = self.require_user()?;
        let room: Arc<str> = Arc::from(room);
        let member_count = if self.conn.in_room(&room) {
            // Joining twice changes nothing and announces nothing.
            self.shard.room_size(room.clone()).await
        } else {
            if let Some(max) = self.settings().max_rooms_per_socket {
                if self.conn.rooms.borrow().len() >= max {
                    return Err(RequestError::LimitExceeded(format!(
                        "a connection may be in at most {max} rooms (MAX_ROOMS_PER_SOCKET)"
                    )));
                }
            }
            let announce = self.room_events().then(|| self.room_change_frame("user-joined", &room, &user));
            let count = self.shard.join_room(&self.conn, room.clone(), announce).await;
            self.emit("room-joined", &json!({ "roomName": &*room, "memberCount": count, "timestamp": timestamp() }));
            count
        };
        Ok(json!({ "success": true, "roomName": &*room, "memberCount": member_count }))
    }

    pub(super) async fn leave_room(&self, payload: Option<&RawValue>) -> Result<Value, RequestError> {
        let input: RoomIn = validate::object(payload)?;
        let room = validate::name("roomName", input.room_name)?;
        let user = self.require_user()?;
        let room: Arc<str> = Arc::from(room);
        if !self.conn.in_room(&room) {
            return Err(RequestError::NotInRoom(room.to_string()));
        }
        let announce = self.room_events().then(|| self.room_change_frame("user-left", &room, &user));
        self.shard.leave_room(&self.conn, &room, announce).await;
        self.emit("room-left", &json!({ "roomName": &*room, "timestamp": timestamp() }));
        Ok(json!({ "success": true, "roomName": &*room }))
    }

    pub(super) async fn private_message(&self, payload: Option<&RawValue>) -> Result<Value, RequestError> {
        let input: PrivateMessageIn = validate::object(payload)?;
        let target = validate::name("targetUserId", input.target_user_id)?;
        let message = validate::message(input.message)?;
        let message_type = validate::message_type(input.message_type)?;
        let from = self.require_user()?;
        let message_id = SocketId::generate(self.shard.index).to_string();
        let sent_at = timestamp();
        let delivered = PrivateMessageOut {
            message_id: &message_id,
            from_user_id: &from,
            target_user_id: &target,
            message,
            message_type,
            timestamp: &sent_at,
        };
        let frame = socketio::event_frame(self.namespace(), "private-message", &delivered);
        self.shard.counters.broadcast("user");
        if !self.shard.send_to_user(Arc::from(target.as_str()), frame).await {
            return Err(RequestError::UserOffline(target));
        }
        self.emit("message-sent", &json!({ "messageId": message_id, "targetUserId": target, "timestamp": sent_at }));
        Ok(json!({ "success": true, "messageId": message_id, "timestamp": sent_at }))
    }

    pub(super) async fn custom_event(&self, payload: Option<&RawValue>) -> Result<Value, RequestError> {
        let input: CustomEventIn = validate::object(payload)?;
        let event = validate::custom_event_name(input.event)?;
        let room = validate::name("roomName", input.room_name)?;
        self.require_user()?;
        if !self.conn.in_room(&room) {
            return Err(RequestError::NotInRoom(room));
        }
        let null = RawValue::NULL;
        let frame = socketio::event_frame_raw(self.namespace(), &event, input.data.unwrap_or(null));
        let mut delivery = Delivery::new(Target::Room(Arc::from(room)), frame);
        delivery.except = Some(self.conn.id);
        self.shard.counters.broadcast("room");
        // In cluster mode the ack waits for Redis to take the relay (queued
        // for every node); if it could not, the other nodes' members missed
        // it, and the ack says so.
        if let Some(published) = self.shard.deliver(delivery) {
            if !published.await.unwrap_or(false) {
                return Ok(json!({ "success": true, "partial": true }));
            }
        }
        Ok(json!({ "success": true }))
    }

    pub(super) fn ping(&self) -> Value {
        let now = timestamp();
        self.emit("pong", &json!({ "timestamp": now }));
        json!({ "success": true, "timestamp": now })
    }
}
