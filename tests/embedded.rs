//! The library handle against a broker started in-process, observed by raw
//! WebSocket clients speaking Engine.IO / Socket.IO over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shardcast::{BroadcastOptions, Config, Server};
use shardcast::client::Client;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// Connects, checks the `connected` event, and authenticates as `user`.
async fn connect(addr: SocketAddr, user: &str) -> Client {
    let mut client = timeout(WAIT, Client::connect(addr, None)).await.expect("in time").unwrap();
    let (name, data) = client.next_event().await.unwrap();
    assert_eq!((name.as_str(), data["socketId"].as_str()), ("connected", Some(client.socket_id.as_str())));
    let ack = client.request("authenticate", &json!({ "userId": user })).await.unwrap();
    assert_eq!(ack["success"], true);
    client
}

/// The next event, within the test's patience.
async fn event(client: &mut Client) -> (String, Value) {
    timeout(WAIT, client.next_event()).await.expect("an event in time").unwrap()
}

/// Asserts that nothing but `pong` arrives before the reply to a ping:
/// i.e. no other event was queued for this client.
async fn expect_nothing_queued(client: &mut Client) {
    client.emit("ping", &json!({})).await.unwrap();
    let (name, _) = event(client).await;
    assert_eq!(name, "pong", "an unexpected event was delivered");
}

fn test_config() -> Config {
    let mut config = common::loopback_config();
    config.presence_events = shardcast::Switch::Off;
    config
}

#[tokio::test(flavor = "current_thread")]
async fn the_handle_publishes_and_answers_queries_across_shards() {
    let server = Server::start(test_config()).unwrap();
    let broker = server.broker();
    let addr = server.local_addr;

    let mut alice = connect(addr, "alice").await;
    let mut bob = connect(addr, "bob").await;
    let mut bob_phone = connect(addr, "bob").await;
    for client in [&mut alice, &mut bob] {
        let ack = client.request("join-room", &json!({ "roomName": "general" })).await.unwrap();
        assert_eq!(ack["success"], true);
    }
    let (name, data) = event(&mut alice).await;
    assert_eq!((name.as_str(), &data["userId"]), ("user-joined", &json!("bob")));

    // The seed's typing indicator: the room minus the typist.
    let options = BroadcastOptions { exclude: vec!["alice".into()] };
    let delivered = broker
        .broadcast_to_room("general", "user-typing", &json!({ "userId": "alice" }), options)
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(event(&mut bob).await, ("user-typing".to_string(), json!({ "userId": "alice" })));
    expect_nothing_queued(&mut alice).await;
    expect_nothing_queued(&mut bob_phone).await;

    // sendToUser reaches every connection of the user.
    let delivered = broker.send_to_user("bob", "notification", &json!({ "message": "hi" })).await.unwrap();
    assert_eq!(delivered, 2);
    for client in [&mut bob, &mut bob_phone] {
        assert_eq!(event(client).await, ("notification".to_string(), json!({ "message": "hi" })));
    }

    // broadcastToAll with an excluded user.
    let options = BroadcastOptions { exclude: vec!["bob".into()] };
    assert_eq!(broker.broadcast_to_all("system-notification", &json!(1), options).await.unwrap(), 1);
    assert_eq!(event(&mut alice).await, ("system-notification".to_string(), json!(1)));

    // Queries.
    assert_eq!(broker.connection_count().await, 3);
    assert_eq!(broker.room_count().await, 1);
    let rooms = broker.active_rooms().await;
    assert_eq!(rooms[0].name, "general");
    assert_eq!(rooms[0].member_count, 2);
    let mut users = rooms[0].users.clone();
    users.sort();
    assert_eq!(users, vec!["alice", "bob"]);
    assert!(broker.is_user_online("bob").await);
    assert_eq!(broker.user_connections("bob").await.len(), 2);
    let ids: Vec<String> = broker.active_connections().await.into_iter().map(|c| c.socket_id).collect();
    assert_eq!(ids.len(), 3);

    // sendToSocket by id, and nothing for an unknown id.
    let alice_id = broker.user_connections("alice").await[0].socket_id.clone();
    assert_eq!(broker.send_to_socket(&alice_id, "direct", &json!("x")).await.unwrap(), 1);
    assert_eq!(event(&mut alice).await, ("direct".to_string(), json!("x")));
    assert_eq!(broker.send_to_socket("not-a-socket-id", "direct", &json!("x")).await.unwrap(), 0);

    // Invalid publishes are refused, not sent.
    assert!(broker.broadcast_to_all("", &json!(1), BroadcastOptions::default()).await.is_err());
    assert!(broker.broadcast_to_all("disconnect", &json!(1), BroadcastOptions::default()).await.is_err());

    // Going away is seen by the queries.
    drop(bob);
    drop(bob_phone);
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.is_user_online("bob").await {
        assert!(tokio::time::Instant::now() < deadline, "bob still online after his sockets closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.connection_count().await, 1);
    assert_eq!(broker.active_rooms().await[0].member_count, 1);
    server.shutdown();
}
