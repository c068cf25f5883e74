//! The server the official protocol test suites expect, on port 3000:
//!
//! - Socket.IO (`socketio/socket.io-protocol`, `test-suite/`): namespaces `/`
//!   and `/custom` that emit `auth` with the handshake payload on connect;
//!   on `/`, `message` is echoed back as `message-back` and
//!   `message-with-ack` is acked with its own arguments (binary attachments
//!   included).
//! - Engine.IO (`socketio/engine.io-protocol`, `test-suite/`): a bare
//!   Engine.IO echo at `/engine.io/`.
//!
//! Both with pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1,000,000,
//! connectTimeout 1 s and every origin allowed.
//!
//! Run: `cargo run --release --example conformance`, then `npm ci && npm test`
//! in each suite's `test-suite/` directory.

use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use shardcast::{EngineApp, EngineSocket, Extensions, Namespace, Namespaces, Payload};
use shardcast::{Config, Server};

/// Sends every message back as it came.
struct Echo;

impl EngineApp for Echo {
    fn on_text(&self, socket: &EngineSocket<'_>, text: &str) {
        socket.send_text(text);
    }

    fn on_binary(&self, socket: &EngineSocket<'_>, data: Bytes) {
        socket.send_binary(&data);
    }
}

fn main() {
    let mut config = Config::defaults();
    config.port = 3000;
    config.host = "::".into(); // `localhost` may resolve to ::1 or 127.0.0.1
    config.ping_interval_ms = 300;
    config.ping_timeout_ms = 200;
    config.max_payload_bytes = 1_000_000;
    config.connect_timeout_ms = 1000;
    config.cors_origin = None;
    config.shards = NonZeroUsize::new(2);

    let emit_auth = |socket: &shardcast::Socket<'_>, auth: &serde_json::Value| {
        socket.emit("auth", &Payload::json(vec![auth.clone()]));
    };
    let main_namespace = Namespace::new()
        .on_connect(emit_auth)
        .on("message", |socket, payload, _ack| socket.emit("message-back", &payload))
        .on("message-with-ack", |socket, payload, ack| {
            if let Some(ack) = ack {
                socket.ack(ack, &payload);
            }
        });
    let extensions = Extensions {
        namespaces: Some(Namespaces::new().with("/", main_namespace).with("/custom", Namespace::new().on_connect(emit_auth))),
        engine_apps: vec![("/engine.io/".to_string(), Arc::new(|| Box::new(Echo) as Box<dyn EngineApp>))],
    };
    let server = Server::start_with(config, extensions).expect("port 3000 is free");
    println!("shardcast listening on http://{}", server.local_addr);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    server.shutdown();
}
