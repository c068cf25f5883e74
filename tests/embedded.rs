//! The library handle against a broker started in-process, observed by raw
//! WebSocket clients speaking Engine.IO / Socket.IO over real sockets.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::{json, Value};
use shardcast::{BroadcastOptions, Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A minimal Socket.IO client: enough to connect, authenticate, join rooms
/// and read events, answering heartbeats.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    next_ack: u64,
}

impl RawClient {
    async fn connect(addr: SocketAddr, user: &str) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient { stream, buf: Vec::new(), next_ack: 1 };
        while !client.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            client.fill().await;
        }
        let end = client.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(client.buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&client.buf));
        client.buf.drain(..end);
        assert!(client.recv().await.starts_with('0'), "open packet first");
        client.send("40").await;
        assert!(client.recv().await.starts_with("40{\"sid\""));
        assert!(client.recv().await.starts_with("42[\"connected\""));
        let ack = client.request("authenticate", json!({ "userId": user })).await;
        assert_eq!(ack["success"], true);
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("server answered in time").unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn send(&mut self, text: &str) {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81];
        let len = text.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next Engine.IO text packet, answering pings on the way.
    async fn recv(&mut self) -> String {
        loop {
            while self.buf.len() < 2 || self.buf.len() < self.frame_len() {
                self.fill().await;
            }
            let (head, len) = match self.buf[1] {
                126 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                127 => (10, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize),
                n => (2, n as usize),
            };
            let text = String::from_utf8(self.buf[head..head + len].to_vec()).unwrap();
            self.buf.drain(..head + len);
            if text == "2" {
                self.send("3").await;
                continue;
            }
            return text;
        }
    }

    fn frame_len(&self) -> usize {
        match self.buf[1] {
            126 if self.buf.len() >= 4 => 4 + u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize,
            127 if self.buf.len() >= 10 => 10 + u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
            126 | 127 => usize::MAX,
            n => 2 + n as usize,
        }
    }

    /// The next event as (name, first argument), skipping acks.
    async fn event(&mut self) -> (String, Value) {
        loop {
            let packet = self.recv().await;
            if let Some(json) = packet.strip_prefix("42") {
                let mut items: Vec<Value> = serde_json::from_str(json).unwrap();
                let data = if items.len() > 1 { items.remove(1) } else { Value::Null };
                return (items[0].as_str().unwrap().to_string(), data);
            }
        }
    }

    /// Emits with an ack and returns the ack's body, skipping events.
    async fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(&format!("42{id}{}", json!([event, data]))).await;
        let prefix = format!("43{id}");
        loop {
            let packet = self.recv().await;
            if let Some(json) = packet.strip_prefix(&prefix) {
                let mut items: Vec<Value> = serde_json::from_str(json).unwrap();
                return items.remove(0);
            }
        }
    }

    /// Asserts that nothing but `pong` arrives before the reply to a ping:
    /// i.e. no other event was queued for this client.
    async fn expect_nothing_queued(&mut self) {
        self.send("42[\"ping\"]").await;
        let (name, _) = self.event().await;
        assert_eq!(name, "pong", "an unexpected event was delivered");
    }
}

fn test_config() -> Config {
    let mut config = Config::defaults();
    config.port = 0;
    config.host = "127.0.0.1".into();
    config.shards = NonZeroUsize::new(2);
    config.jwt_secret = None;
    config.api_key = None;
    config.presence_events = shardcast::config::Switch::Off;
    config
}

#[tokio::test(flavor = "current_thread")]
async fn the_handle_publishes_and_answers_queries_across_shards() {
    let server = Server::start(test_config()).unwrap();
    let broker = server.broker();
    let addr = server.local_addr;

    let mut alice = RawClient::connect(addr, "alice").await;
    let mut bob = RawClient::connect(addr, "bob").await;
    let mut bob_phone = RawClient::connect(addr, "bob").await;
    for client in [&mut alice, &mut bob] {
        let ack = client.request("join-room", json!({ "roomName": "general" })).await;
        assert_eq!(ack["success"], true);
    }
    let (name, data) = alice.event().await;
    assert_eq!((name.as_str(), &data["userId"]), ("user-joined", &json!("bob")));

    // The seed's typing indicator: the room minus the typist.
    let options = BroadcastOptions { exclude: vec!["alice".into()] };
    let delivered = broker
        .broadcast_to_room("general", "user-typing", &json!({ "userId": "alice" }), options)
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(bob.event().await, ("user-typing".to_string(), json!({ "userId": "alice" })));
    alice.expect_nothing_queued().await;
    bob_phone.expect_nothing_queued().await;

    // sendToUser reaches every connection of the user.
    let delivered = broker.send_to_user("bob", "notification", &json!({ "message": "hi" })).await.unwrap();
    assert_eq!(delivered, 2);
    for client in [&mut bob, &mut bob_phone] {
        assert_eq!(client.event().await, ("notification".to_string(), json!({ "message": "hi" })));
    }

    // broadcastToAll with an excluded user.
    let options = BroadcastOptions { exclude: vec!["bob".into()] };
    assert_eq!(broker.broadcast_to_all("system-notification", &json!(1), options).await.unwrap(), 1);
    assert_eq!(alice.event().await, ("system-notification".to_string(), json!(1)));

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
    assert_eq!(alice.event().await, ("direct".to_string(), json!("x")));
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
