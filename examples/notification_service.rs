//! The seed's `NotificationService`, against an embedded shardcast broker.
//!
//! Run: `cargo run --release --example notification_service` (PORT, SHARDS…
//! as for the binary), connect socket.io clients to it, and watch them
//! receive a global notification every five seconds.

use std::time::Duration;

use serde_json::json;
use shardcast::{BroadcastOptions, Broker, Config, Server};

/// What a NestJS `NotificationService` did with `WebSocketService`.
struct NotificationService {
    broker: Broker,
}

impl NotificationService {
    /// Send notification to all users.
    async fn send_global_notification(&self, message: &str) -> usize {
        let data = json!({ "message": message, "timestamp": shardcast::now_iso8601() });
        self.broker.broadcast_to_all("notification", &data, BroadcastOptions::default()).await.unwrap_or(0)
    }

    /// Send notification to a specific user (every one of their connections).
    async fn send_user_notification(&self, user_id: &str, message: &str) -> usize {
        let data = json!({ "message": message, "timestamp": shardcast::now_iso8601() });
        self.broker.send_to_user(user_id, "notification", &data).await.unwrap_or(0)
    }

    /// Send notification to a specific room.
    async fn send_room_notification(&self, room_name: &str, message: &str) -> usize {
        let data = json!({ "message": message, "timestamp": shardcast::now_iso8601() });
        self.broker
            .broadcast_to_room(room_name, "notification", &data, BroadcastOptions::default())
            .await
            .unwrap_or(0)
    }

    /// Send a system notification to some users, or to everyone.
    async fn send_system_notification(&self, message: &str, user_ids: Option<&[&str]>) -> usize {
        let data = json!({ "message": message, "timestamp": shardcast::now_iso8601() });
        match user_ids {
            Some(users) => {
                let mut delivered = 0;
                for user in users {
                    delivered += self.broker.send_to_user(user, "system-notification", &data).await.unwrap_or(0);
                }
                delivered
            }
            None => self
                .broker
                .broadcast_to_all("system-notification", &data, BroadcastOptions::default())
                .await
                .unwrap_or(0),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Server::start(Config::from_env_and_args()).expect("the broker starts");
    println!("shardcast listening on http://{}", server.local_addr);
    let service = NotificationService { broker: server.broker() };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let all = service.send_global_notification("Hello, everyone").await;
        let user = service.send_user_notification("user123", "Hello, user123").await;
        let room = service.send_room_notification("general", "Hello, #general").await;
        let system = service.send_system_notification("Maintenance at noon", Some(&["user123", "user456"])).await;
        let online = service.broker.is_user_online("user123").await;
        println!("delivered: all={all} user123={user} (online: {online}) general={room} system={system}");
    }
    server.shutdown();
}
