//! Minimal socketioxide 0.18 server with the three shardcast events that
//! `loadtest/compare` drives: `authenticate`, `join-room`, `custom-event`
//! (relay to the room except the sender), with shardcast's ack shapes.
//! Written as socketioxide's documentation shows (axum + the layer), on the
//! default multi-threaded tokio runtime: pinned to one core with `taskset`,
//! tokio starts one worker thread.

use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;
use socketioxide::TransportType;

#[derive(Deserialize)]
struct AuthIn {
    #[serde(rename = "userId")]
    user_id: String,
}

#[derive(Deserialize)]
struct RoomIn {
    #[serde(rename = "roomName")]
    room_name: String,
}

#[derive(Deserialize)]
struct CustomIn {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(rename = "roomName")]
    room_name: String,
}

fn validation_error(ack: AckSender, message: &str) {
    ack.send(&json!({ "success": false, "error": message, "code": "VALIDATION_ERROR" })).ok();
}

async fn on_connect(socket: SocketRef) {
    // Handlers are registered first thing in the connect handler, before any
    // await, so no event sent right after CONNECT can arrive unhandled.
    socket.on("authenticate", async |s: SocketRef, data: Data<Value>, ack: AckSender| {
        match serde_json::from_value::<AuthIn>(data.0) {
            Ok(input) => {
                ack.send(&json!({ "success": true, "userId": input.user_id, "socketId": s.id.to_string() })).ok();
            }
            Err(_) => validation_error(ack, "userId is required"),
        }
    });
    socket.on("join-room", async |s: SocketRef, data: Data<Value>, ack: AckSender| {
        match serde_json::from_value::<RoomIn>(data.0) {
            Ok(input) => {
                s.join(input.room_name.clone());
                let member_count = s.within(input.room_name.clone()).sockets().len();
                ack.send(&json!({ "success": true, "roomName": input.room_name, "memberCount": member_count }))
                    .ok();
            }
            Err(_) => validation_error(ack, "roomName is required"),
        }
    });
    socket.on("custom-event", async |s: SocketRef, data: Data<Value>, ack: AckSender| {
        match serde_json::from_value::<CustomIn>(data.0) {
            Ok(input) => {
                s.to(input.room_name).emit(input.event, &input.data).await.ok();
                ack.send(&json!({ "success": true })).ok();
            }
            Err(_) => validation_error(ack, "event and roomName are required"),
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());

    let (layer, io) = SocketIo::builder().transports([TransportType::Websocket]).build_layer();
    io.ns("/", on_connect);

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{}:{}", addr.ip(), addr.port());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
