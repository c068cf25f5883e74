//! The seed's `ChatService`, against an embedded shardcast broker: chat
//! messages to a room, and a typing indicator that skips the typist.
//!
//! Run: `cargo run --release --example chat_service`, connect socket.io
//! clients, authenticate them (`user123` and others) and join `general`.

use std::time::Duration;

use serde_json::json;
use shardcast::{BroadcastOptions, Broker, Config, Server};

struct ChatService {
    broker: Broker,
}

impl ChatService {
    /// Send a message to a chat room.
    async fn send_chat_message(&self, room_name: &str, user_id: &str, message: &str) -> usize {
        let data = json!({ "userId": user_id, "message": message, "timestamp": shardcast::now_iso8601() });
        self.broker
            .broadcast_to_room(room_name, "chat-message", &data, BroadcastOptions::default())
            .await
            .unwrap_or(0)
    }

    /// Tell the room that a user is typing — everyone but that user.
    async fn notify_typing(&self, room_name: &str, user_id: &str) -> usize {
        let data = json!({ "userId": user_id, "timestamp": shardcast::now_iso8601() });
        let options = BroadcastOptions { exclude: vec![user_id.to_string()] };
        self.broker.broadcast_to_room(room_name, "user-typing", &data, options).await.unwrap_or(0)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Server::start(Config::from_env_and_args()).expect("the broker starts");
    println!("shardcast listening on http://{}", server.local_addr);
    let chat = ChatService { broker: server.broker() };
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let typing = chat.notify_typing("general", "user123").await;
        let said = chat.send_chat_message("general", "user123", "Hi all!").await;
        let rooms = chat.broker.active_rooms().await;
        let members = rooms.iter().find(|r| r.name == "general").map_or(0, |r| r.member_count);
        println!("general: {members} members; typing sent to {typing}, message to {said}");
    }
    server.shutdown();
}
