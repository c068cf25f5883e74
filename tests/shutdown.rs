//! Shutdown closes every live Engine.IO session cleanly, whatever it is:
//! sessions of a bare Engine.IO application and sockets on a namespace of
//! the library API (neither is in the shard's tables of Socket.IO
//! connections), a session that never sent CONNECT, and a socket on the
//! built-in namespace. `Server::shutdown` is what SIGTERM does in the binary.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardcast::{EngineApp, EngineSocket, Extensions, Namespace, Namespaces, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// Sends every message back.
struct Echo;

impl EngineApp for Echo {
    fn on_text(&self, socket: &EngineSocket<'_>, text: &str) {
        socket.send_text(text);
    }

    fn on_binary(&self, socket: &EngineSocket<'_>, data: Bytes) {
        socket.send_binary(&data);
    }
}

fn start() -> Server {
    let config = common::loopback_config();
    let extensions = Extensions {
        namespaces: Some(Namespaces::builtin("/").with("/custom", Namespace::new())),
        engine_apps: vec![("/engine.io/".to_string(), Arc::new(|| Box::new(Echo) as Box<dyn EngineApp>))],
    };
    Server::start_with(config, extensions).expect("the server starts")
}

/// A raw WebSocket client: just enough to see the server's frames, close
/// frames included.
struct RawWebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWebSocket {
    /// Opens a WebSocket to `path` and reads the Engine.IO open packet.
    async fn open(addr: SocketAddr, path: &str) -> RawWebSocket {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawWebSocket { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(client.fill().await, "connection closed during the upgrade");
        };
        assert!(client.buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&client.buf[..end]));
        client.buf.drain(..end);
        let open = client.next_text().await;
        assert!(open.starts_with("0{"), "expected the open packet, got {open:?}");
        client
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame as (opcode, payload); `None` if the connection ends first.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (head, len) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 => panic!("no frame here is that large"),
                    126 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                if head != usize::MAX && self.buf.len() >= head + len {
                    let opcode = self.buf[0] & 0x0F;
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn next_text(&mut self) -> String {
        let (opcode, payload) = timeout(WAIT, self.next_frame()).await.expect("a frame in time").expect("a frame");
        assert_eq!(opcode, 0x1, "expected a text frame, got opcode {opcode}: {payload:?}");
        String::from_utf8(payload).unwrap()
    }

    /// Sends one masked text frame (short ones only).
    async fn send_text(&mut self, text: &str) {
        assert!(text.len() < 126);
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Reads to the close frame: its status code and reason. `None` if the
    /// connection ended without one.
    async fn close(&mut self) -> Option<(u16, String)> {
        while let Some((opcode, payload)) = self.next_frame().await {
            if opcode == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
        None
    }
}

/// One HTTP GET on a connection of its own; the body of the answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_closes_every_kind_of_session_cleanly() {
    let server = start();
    let addr = server.local_addr;

    // A bare Engine.IO application's session, live (it echoes).
    let mut app = RawWebSocket::open(addr, "/engine.io/?EIO=4&transport=websocket").await;
    app.send_text("4hello").await;
    assert_eq!(app.next_text().await, "4hello");
    // A socket on a namespace of the library API.
    let mut custom = RawWebSocket::open(addr, "/socket.io/?EIO=4&transport=websocket").await;
    custom.send_text("40/custom,").await;
    let reply = custom.next_text().await;
    assert!(reply.starts_with("40/custom,{\"sid\""), "{reply}");
    // A Socket.IO session that never sent CONNECT.
    let mut silent = RawWebSocket::open(addr, "/socket.io/?EIO=4&transport=websocket").await;
    // A socket on the built-in namespace (closed at shutdown before too).
    let mut builtin = RawWebSocket::open(addr, "/socket.io/?EIO=4&transport=websocket").await;
    builtin.send_text("40").await;
    assert!(builtin.next_text().await.starts_with("40{\"sid\""));
    // A bare Engine.IO application's session over long-polling, its GET waiting.
    let open = http_get(addr, "/engine.io/?EIO=4&transport=polling").await;
    let sid = open.split("\"sid\":\"").nth(1).and_then(|rest| rest.split('"').next()).expect("a sid").to_string();
    let poll = tokio::spawn(async move { http_get(addr, &format!("/engine.io/?EIO=4&transport=polling&sid={sid}")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll waits: nothing to send yet");

    let started = std::time::Instant::now();
    let stopped = tokio::task::spawn_blocking(move || server.shutdown());
    let shutting_down = Some((1001, "server shutting down".to_string()));
    for (what, client) in
        [("Engine.IO app", &mut app), ("custom namespace", &mut custom), ("no CONNECT", &mut silent), ("built-in", &mut builtin)]
    {
        assert_eq!(timeout(WAIT, client.close()).await.expect("closed in time"), shutting_down, "{what}");
    }
    assert_eq!(timeout(WAIT, poll).await.expect("answered in time").unwrap(), "1", "the pending poll gets the close packet");
    timeout(WAIT, stopped).await.expect("stopped in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
}
