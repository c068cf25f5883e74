//! A minimal Socket.IO client over WebSocket: what the load generator and
//! the in-process tests need, nothing more (no polling, no reconnection).
//!
//! Written here rather than taken from a crate because the load generator
//! must drive tens of thousands of connections from one core: one task and
//! one small buffer per connection, frames parsed in place, pings answered
//! inline, no JSON work on the hot path unless the caller asks for it.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One Socket.IO connection (namespace `/`).
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    next_ack: u64,
    /// The socket id from the CONNECT reply.
    pub socket_id: String,
}

/// A client's close frame: masked (with a zero key), status 1000.
const CLOSE_FRAME: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Client {
    /// Opens the WebSocket, reads the open packet, sends CONNECT (with an
    /// optional auth payload) and waits for the reply.
    pub async fn connect(addr: SocketAddr, auth: Option<&Value>) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client { stream, buf: BytesMut::with_capacity(1024), next_ack: 1, socket_id: String::new() };
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            client.fill().await?;
        };
        if !client.buf.starts_with(b"HTTP/1.1 101") {
            return Err(protocol(&format!("upgrade refused: {}", String::from_utf8_lossy(&client.buf[..end]))));
        }
        client.buf.advance(end);
        if !client.next_packet().await?.starts_with('0') {
            return Err(protocol("expected the Engine.IO open packet"));
        }
        match auth {
            Some(auth) => client.send(&format!("40{auth}")).await?,
            None => client.send("40").await?,
        }
        let reply = client.next_packet().await?;
        let Some(json) = reply.strip_prefix("40") else {
            return Err(protocol(&format!("CONNECT refused: {reply}")));
        };
        let value: Value = serde_json::from_str(json).map_err(|_| protocol("bad CONNECT reply"))?;
        client.socket_id = value["sid"].as_str().unwrap_or_default().to_string();
        Ok(client)
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(4096);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Sends one text frame (masked, as clients must).
    pub async fn send(&mut self, text: &str) -> io::Result<()> {
        let mask = [0x5a, 0x17, 0xc3, 0x9e];
        let len = text.len();
        let mut frame = Vec::with_capacity(len + 14);
        frame.push(0x81);
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    /// The next Engine.IO text packet from the server; pings are answered on the way.
    pub async fn next_packet(&mut self) -> io::Result<String> {
        loop {
            if let Some((head, len)) = frame_bounds(&self.buf) {
                let opcode = self.buf[0] & 0x0F;
                let payload = self.buf[head..head + len].to_vec();
                self.buf.advance(head + len);
                match opcode {
                    0x1 => {
                        let text = String::from_utf8(payload).map_err(|_| protocol("text frame is not UTF-8"))?;
                        if text == "2" {
                            self.send("3").await?;
                            continue;
                        }
                        return Ok(text);
                    }
                    0x8 => return Err(io::ErrorKind::ConnectionAborted.into()),
                    _ => continue,
                }
            }
            self.fill().await?;
        }
    }

    /// Reads once from the socket and hands every whole text frame's payload
    /// to `on_text`, without copying or allocating (the load generator's hot
    /// path); pings are answered on the way.
    pub async fn read_batch(&mut self, mut on_text: impl FnMut(&[u8])) -> io::Result<()> {
        // Frames a `next_packet` call read past what it returned (a ping in
        // the same segment as an ack) are handled before waiting for more:
        // the server sends nothing after a ping until its pong, so waiting
        // first would leave the ping unanswered until the server gives up.
        if frame_bounds(&self.buf).is_none() {
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let mut pings = 0;
        while let Some((head, len)) = frame_bounds(&self.buf) {
            match self.buf[0] & 0x0F {
                0x1 if &self.buf[head..head + len] == b"2" => pings += 1,
                0x1 => on_text(&self.buf[head..head + len]),
                0x8 => return Err(io::ErrorKind::ConnectionAborted.into()),
                _ => {}
            }
            self.buf.advance(head + len);
        }
        for _ in 0..pings {
            self.send("3").await?;
        }
        Ok(())
    }

    /// Emits `event` with `data`, without an ack.
    pub async fn emit(&mut self, event: &str, data: &Value) -> io::Result<()> {
        self.send(&format!("42{}", serde_json::json!([event, data]))).await
    }

    /// Emits `event` with `data` and an ack request; returns the ack's first
    /// argument. Events arriving meanwhile are skipped.
    pub async fn request(&mut self, event: &str, data: &Value) -> io::Result<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(&format!("42{id}{}", serde_json::json!([event, data]))).await?;
        let prefix = format!("43{id}");
        loop {
            let packet = self.next_packet().await?;
            if let Some(rest) = packet.strip_prefix(&prefix).filter(|rest| rest.starts_with('[')) {
                let mut items: Vec<Value> = serde_json::from_str(rest).map_err(|_| protocol("bad ack"))?;
                return Ok(if items.is_empty() { Value::Null } else { items.swap_remove(0) });
            }
        }
    }

    /// The next event as (name, first argument), skipping acks.
    pub async fn next_event(&mut self) -> io::Result<(String, Value)> {
        loop {
            let packet = self.next_packet().await?;
            if let Some(json) = packet.strip_prefix("42") {
                let mut items: Vec<Value> = serde_json::from_str(json).map_err(|_| protocol("bad event"))?;
                let data = if items.len() > 1 { items.swap_remove(1) } else { Value::Null };
                let name = items.first().and_then(Value::as_str).unwrap_or_default().to_string();
                return Ok((name, data));
            }
        }
    }

    /// Sends a WebSocket close frame and shuts the connection down at once,
    /// without waiting for the server's answer (which then meets a closed
    /// socket, and the kernel answers it with a reset).
    pub async fn close(mut self) -> io::Result<()> {
        self.stream.write_all(&CLOSE_FRAME).await?;
        self.stream.shutdown().await
    }

    /// Closes as socket.io-client (`ws`) and browsers do (RFC 6455 §7.1.1):
    /// sends a close frame, then reads until the server has answered and
    /// ended the TCP connection, and only then closes its own end.
    pub async fn close_and_wait(mut self) -> io::Result<()> {
        self.stream.write_all(&CLOSE_FRAME).await?;
        let until_server_closes = async {
            loop {
                self.buf.clear();
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), until_server_closes).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the server did not end the connection")),
        }
    }
}

/// Header length and payload length of the first whole frame in `buf`.
fn frame_bounds(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (head, len) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= head + len).then_some((head, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A server's text frame (unmasked; short payloads only).
    fn text_frame(payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    /// The next text message the fake server gets from the client (masked,
    /// short).
    async fn next_text(stream: &mut TcpStream, buf: &mut BytesMut) -> String {
        loop {
            if buf.len() >= 6 && buf.len() >= 6 + (buf[1] & 0x7F) as usize {
                let len = (buf[1] & 0x7F) as usize;
                let mask = [buf[2], buf[3], buf[4], buf[5]];
                let text: Vec<u8> = buf[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
                buf.advance(6 + len);
                return String::from_utf8(text).unwrap();
            }
            assert!(stream.read_buf(buf).await.unwrap() > 0, "the client closed");
        }
    }

    /// A ping that arrives in the same segment as an ack is answered by the
    /// next `read_batch`, without more input first: the server sends nothing
    /// more until its pong (the capacity smoke lost connections to this when
    /// the broker's pings fell in the same instant as a burst of acks).
    #[test]
    fn a_ping_read_along_with_an_ack_is_answered_by_the_next_read_batch() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = BytesMut::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    stream.read_buf(&mut buf).await.unwrap();
                }
                buf.clear();
                let mut out = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
                out.extend_from_slice(&text_frame(br#"0{"sid":"s"}"#));
                stream.write_all(&out).await.unwrap();
                assert_eq!(next_text(&mut stream, &mut buf).await, "40");
                stream.write_all(&text_frame(br#"40{"sid":"x"}"#)).await.unwrap();
                let join = next_text(&mut stream, &mut buf).await;
                assert!(join.starts_with("421["), "{join}");
                // The ack and a ping in one write.
                let mut out = text_frame(br#"431[{"success":true}]"#);
                out.extend_from_slice(&text_frame(b"2"));
                stream.write_all(&out).await.unwrap();
                next_text(&mut stream, &mut buf).await
            });
            let mut client = Client::connect(addr, None).await.unwrap();
            let ack = client.request("join-room", &serde_json::json!({ "roomName": "r" })).await.unwrap();
            assert_eq!(ack["success"], true);
            let answered = tokio::time::timeout(Duration::from_secs(5), async {
                let reading = async {
                    // The server closes once it has its answer: reading ends there.
                    while client.read_batch(|_| {}).await.is_ok() {}
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    reply = server => reply.unwrap(),
                    _ = reading => unreachable!(),
                }
            })
            .await
            .expect("the ping was never answered");
            assert_eq!(answered, "3");
        });
    }
}
