//! The embedding API (README "Embedding" and "Rust handle") against the
//! official clients a user runs: a server started in-process with
//! `Server::start_with`, Rust event handlers on a namespace of its own
//! (acks, binary attachments both ways) reached by socket.io-client, a bare
//! `EngineApp` reached by engine.io-client, and the `Broker` handle used
//! from other threads while socket.io-client sockets check that every
//! publish arrived exactly once, in order. Each transport setting a client
//! can choose is run. The clients are `tests/embedding/*.mjs` (Node, with
//! the packages of `tests/client`); without them the tests are skipped,
//! except under `CI=true`.

mod common;
#[path = "embedding/node.rs"]
mod node;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use shardcast::{BroadcastOptions, Broker, EngineApp, EngineSocket, Extensions, Namespace, Namespaces, Payload, Scope, Server};

use node::Node;

/// Every transport setting of the clients: WebSocket only, long-polling
/// only, and the default (long-polling, then the upgrade).
const MODES: [&str; 3] = ["websocket", "polling", "default"];

fn url(server: &Server) -> String {
    format!("http://{}", server.local_addr)
}

/// The `/echo` namespace: handlers that answer from what they were given,
/// so that the client can tell the arguments and attachments arrived whole.
fn echo_namespace() -> Namespace {
    Namespace::new()
        .on_connect(|socket, auth| socket.emit("welcome", &Payload::json(vec![auth.clone(), json!(socket.id())])))
        .on("sum", |socket, payload, ack| {
            let total: i64 = payload.args.iter().filter_map(Value::as_i64).sum();
            if let Some(ack) = ack {
                socket.ack(ack, &Payload::json(vec![json!(total)]));
            }
        })
        .on("describe", |socket, payload, ack| {
            let attachments: Vec<Vec<u8>> = payload.attachments.iter().map(|a| a.to_vec()).collect();
            if let Some(ack) = ack {
                socket.ack(ack, &Payload::json(vec![json!({ "args": payload.args, "attachments": attachments })]));
            }
        })
        .on("echo-ack", |socket, payload, ack| {
            if let Some(ack) = ack {
                socket.ack(ack, &payload);
            }
        })
        .on("echo", |socket, payload, _ack| socket.emit("echo-back", &payload))
        .on("send-binary", |socket, _payload, _ack| {
            let args = vec![
                json!({ "label": "two buffers", "first": { "_placeholder": true, "num": 0 } }),
                json!({ "_placeholder": true, "num": 1 }),
            ];
            let attachments = vec![Bytes::from_static(&[0xde, 0xad]), Bytes::from((0..=255u8).cycle().take(300).collect::<Vec<_>>())];
            socket.emit("binary", &Payload { args, attachments });
        })
}

/// Answers text in upper case and binary reversed.
struct Shout;

impl EngineApp for Shout {
    fn on_text(&self, socket: &EngineSocket<'_>, text: &str) {
        socket.send_text(&text.to_uppercase());
    }

    fn on_binary(&self, socket: &EngineSocket<'_>, data: Bytes) {
        socket.send_binary(&data.iter().rev().copied().collect::<Vec<_>>());
    }
}

fn start() -> Server {
    let extensions = Extensions {
        namespaces: Some(Namespaces::builtin("/").with("/echo", echo_namespace())),
        engine_apps: vec![("/engine.io/".to_string(), Arc::new(|| Box::new(Shout) as Box<dyn EngineApp>))],
    };
    Server::start_with(common::loopback_config(), extensions).expect("the server starts")
}

/// Runs the Node client `script` against `server` once per transport mode,
/// all at once, and gives each mode's JSON report when its process is done.
async fn reports_in_every_mode(node: &Node, server: &Server, script: &str) -> Vec<(&'static str, Value)> {
    let url = url(server);
    let clients: Vec<_> = MODES.iter().map(|mode| node.spawn(script, &[url.as_str(), mode])).collect();
    let mut reports = Vec::new();
    for (mode, mut client) in MODES.into_iter().zip(clients) {
        let out = client.next_json().await;
        client.finish().await;
        reports.push((mode, out));
    }
    reports
}

fn bytes(data: impl IntoIterator<Item = u8>) -> Value {
    json!({ "bytes": data.into_iter().collect::<Vec<_>>() })
}

#[tokio::test(flavor = "current_thread")]
async fn rust_handlers_answer_socket_io_client_with_acks_and_binary_attachments() {
    let Some(node) = Node::find() else { return };
    let server = start();
    for (mode, out) in reports_in_every_mode(&node, &server, "socketio.mjs").await {
        // The auth payload of the CONNECT reaches on_connect; the handler's
        // socket id is the client's.
        assert_eq!(out["welcome"], json!({ "auth": { "token": "abc" }, "idIsTheSocketId": true }), "{mode}");
        assert_eq!(out["sum"], json!(42), "{mode}: the handler read every argument");
        // The client's binary attachments reach the handler in order, the
        // placeholders where the client put the buffers.
        let describe = json!({
            "args": [{ "name": "file", "file": { "_placeholder": true, "num": 0 } }, { "_placeholder": true, "num": 1 }, "text"],
            "attachments": [[1, 2, 3], [4, 5]],
        });
        assert_eq!(out["describe"], describe, "{mode}");
        // An ack and an event sent back with the client's own attachments.
        assert_eq!(out["echoAck"], json!([{ "a": bytes([9, 8, 7]) }, [bytes(*b"xy")], "plain"]), "{mode}");
        assert_eq!(out["echoBack"], json!([bytes([0, 255]), { "nested": [bytes([1])] }]), "{mode}");
        // The server's own attachments land where its placeholders say.
        let binary = json!([{ "label": "two buffers", "first": bytes([0xde, 0xad]) }, bytes((0..=255u8).cycle().take(300))]);
        assert_eq!(out["binary"], binary, "{mode}");
        assert_eq!(out["afterUnknown"], json!({ "sum": 5, "unknownAcked": false }), "{mode}: an event without a handler is ignored");
        assert_eq!(out["unknownNamespace"], "Invalid namespace", "{mode}");
        let builtin = json!({ "socketIdMatches": true, "authenticated": true, "userId": format!("embed-{mode}") });
        assert_eq!(out["builtin"], builtin, "{mode}: the built-in namespace is served beside /echo");
        match mode {
            "default" => assert_eq!(out["transport"], "websocket", "the default client upgrades"),
            // A placeholder pointing at no attachment ends the session (1002)
            // before any handler runs.
            "websocket" => assert_eq!(out["placeholderNowhere"], json!({ "code": 1002, "echoed": false })),
            _ => {}
        }
    }
    server.shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn an_engine_app_answers_engine_io_client() {
    let Some(node) = Node::find() else { return };
    let server = start();
    for (mode, out) in reports_in_every_mode(&node, &server, "engine.mjs").await {
        let transport = if mode == "polling" { "polling" } else { "websocket" };
        let answers = json!(["HELLO", bytes([3, 2, 1]), "GRÜSSE", bytes([128, 255, 0])]);
        assert_eq!(out, json!({ "transport": transport, "answers": answers }), "{mode}");
    }
    server.shutdown();
}

/// How many of each kind the publishers send.
const ROOM_SEQ: u64 = 200;
const USER_SEQ: u64 = 200;
const SOCKET_SEQ: u64 = 20;
const PREPARED_SENDS: usize = 99;
const ALL_SEQ: u64 = 20;

/// Publishes `seq-room` to room `news` (alice) from a thread of its own,
/// on a runtime of its own: the handle needs neither the server's threads
/// nor the caller's runtime.
fn room_publisher(broker: Broker) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for seq in 0..ROOM_SEQ {
                let delivered = broker.broadcast_to_room("news", "seq-room", &json!({ "seq": seq }), BroadcastOptions::default()).await;
                assert_eq!(delivered.unwrap(), 1, "room news has one member");
            }
        });
    })
}

/// Publishes `seq-user` to bob and `seq-socket` to alice's socket, from
/// another thread with a multi-thread runtime.
fn user_publisher(broker: Broker, alice_socket: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            for seq in 0..USER_SEQ {
                assert_eq!(broker.send_to_user("bob", "seq-user", &json!({ "seq": seq })).await.unwrap(), 1);
            }
            for seq in 0..SOCKET_SEQ {
                assert_eq!(broker.send_to_socket(&alice_socket, "seq-socket", &json!({ "seq": seq })).await.unwrap(), 1);
            }
        });
    })
}

/// The `seq` values of the `event`s in a client's record, in arrival order.
fn seqs(received: &Value, event: &str) -> Vec<u64> {
    received.as_array().unwrap().iter().filter(|e| e[0] == event).map(|e| e[1]["seq"].as_u64().expect("a seq")).collect()
}

async fn publish_and_check(node: &Node, mode: &str) {
    let server = Server::start(common::loopback_config()).expect("the server starts");
    let broker = server.broker();
    let mut client = node.spawn("broker.mjs", &[&url(&server), mode]);
    let ready = client.next_json().await;
    let alice_socket = ready["ready"]["alice"].as_str().expect("alice's socket id").to_string();

    let stats = broker.stats().await;
    assert_eq!((stats.connections, stats.rooms, stats.online_users), (2, 1, 2), "{mode}: {stats:?}");
    assert_eq!(stats.connections_per_shard.len(), 2, "{mode}: one count per shard");
    assert_eq!(stats.connections_per_shard.iter().sum::<usize>(), 2, "{mode}");
    assert!(broker.is_user_online("bob").await && !broker.is_user_online("carol").await, "{mode}");

    // Refusals a backend would see, before anything is sent.
    assert!(broker.send_to_user("", "e", &json!(1)).await.is_err(), "an empty user id");
    assert!(broker.broadcast_to_all("disconnect", &json!(1), BroadcastOptions::default()).await.is_err(), "a reserved event");
    assert!(broker.prepare(Scope::Room(&"r".repeat(129)), "e", &json!(1), BroadcastOptions::default()).is_err());
    assert_eq!(broker.send_to_user("carol", "seq-user", &json!({ "seq": 999 })).await.unwrap(), 0, "an offline user");

    // Three publishers at once: two threads of their own, and this test's
    // runtime (its tasks move between worker threads) sending prepared
    // publications over and over, then broadcasts.
    let room = room_publisher(broker.clone());
    let user = user_publisher(broker.clone(), alice_socket);
    let local = tokio::spawn({
        let broker = broker.clone();
        async move {
            let prepared: Vec<_> = (0..3)
                .map(|k| broker.prepare(Scope::Room("news"), "seq-prepared", &json!({ "seq": k }), BroadcastOptions::default()).unwrap())
                .collect();
            for i in 0..PREPARED_SENDS {
                assert_eq!(broker.send(prepared[i % 3].clone()).await, 1);
            }
            for seq in 0..ALL_SEQ {
                // The first half leaves bob out.
                let exclude = if seq < ALL_SEQ / 2 { vec!["bob".to_string()] } else { Vec::new() };
                let delivered = broker.broadcast_to_all("seq-all", &json!({ "seq": seq }), BroadcastOptions { exclude }).await.unwrap();
                assert_eq!(delivered, if seq < ALL_SEQ / 2 { 1 } else { 2 });
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        room.join().expect("the room publisher");
        user.join().expect("the user publisher");
    })
    .await
    .unwrap();
    local.await.expect("the prepared publisher");
    // Sent after every other publish returned, so it arrives after them.
    assert_eq!(broker.broadcast_to_all("done", &json!({}), BroadcastOptions::default()).await.unwrap(), 2);

    let received = client.next_json().await;
    client.finish().await;
    let (alice, bob) = (&received["received"]["alice"], &received["received"]["bob"]);
    // Each publisher's messages arrive exactly once and in its order.
    assert_eq!(seqs(alice, "seq-room"), (0..ROOM_SEQ).collect::<Vec<_>>(), "{mode}");
    assert_eq!(seqs(alice, "seq-socket"), (0..SOCKET_SEQ).collect::<Vec<_>>(), "{mode}");
    assert_eq!(seqs(alice, "seq-prepared"), (0..PREPARED_SENDS as u64).map(|i| i % 3).collect::<Vec<_>>(), "{mode}");
    assert_eq!(seqs(alice, "seq-all"), (0..ALL_SEQ).collect::<Vec<_>>(), "{mode}");
    assert_eq!(seqs(bob, "seq-user"), (0..USER_SEQ).collect::<Vec<_>>(), "{mode}: not the one for carol");
    assert_eq!(seqs(bob, "seq-all"), (ALL_SEQ / 2..ALL_SEQ).collect::<Vec<_>>(), "{mode}: excluded from the first half");
    // Nothing else, and `done` last.
    let total = |v: &Value| v.as_array().unwrap().len();
    assert_eq!(total(alice), (ROOM_SEQ + SOCKET_SEQ + PREPARED_SENDS as u64 + ALL_SEQ + 1) as usize, "{mode}");
    assert_eq!(total(bob), (USER_SEQ + ALL_SEQ / 2 + 1) as usize, "{mode}");
    for who in [alice, bob] {
        assert_eq!(who.as_array().unwrap().last().unwrap()[0], "done", "{mode}");
    }

    // The clients have gone: the tables are empty again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = broker.stats().await;
        if (stats.connections, stats.rooms, stats.online_users) == (0, 0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "{mode}: still {stats:?} after the clients left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Off this task: the other transport's check runs on it too.
    tokio::task::spawn_blocking(move || server.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_handle_publishes_from_other_threads_exactly_once_in_order() {
    let Some(node) = Node::find() else { return };
    tokio::join!(publish_and_check(&node, "websocket"), publish_and_check(&node, "polling"));
}
