//! One Engine.IO session over a WebSocket, after the HTTP upgrade.
//!
//! A connection is one task running two futures side by side: the reader
//! (decode frames, answer control packets, hand Socket.IO messages to the
//! [`EngineHandler`]) and the writer (drain the [`Outbox`] with vectored
//! writes, send heartbeats, enforce the ping and connect deadlines). They run
//! in one task so neither is ever cancelled mid-operation; when either ends,
//! the other is given a short grace period to flush a close frame.
//!
//! Memory: an idle connection holds no read buffer (we wait for readability
//! before allocating one and release it once drained) and no write buffer.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::outbox::Outbox;
use super::CloseReason;
use crate::protocol::engineio::{self, OpenInfo};
use crate::protocol::wsframe::{FrameDecoder, FrameError, Message, OutFrame};

/// Size of the read buffer allocated when a connection has bytes to read.
const READ_CHUNK: usize = 4096;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames per vectored write (Linux accepts up to 1024 iovecs).
const MAX_IOVECS: usize = 64;

/// The layer above Engine.IO (Socket.IO, or a bare Engine.IO echo).
pub trait EngineHandler {
    /// An Engine.IO message packet's data (text). An error ends the connection.
    fn on_message(&self, text: &str) -> impl Future<Output = Result<(), CloseReason>>;
    /// A binary Engine.IO message.
    fn on_binary(&self, data: Bytes) -> impl Future<Output = Result<(), CloseReason>>;
    /// Whether the session above is established; until it is, the connect
    /// timeout applies.
    fn is_established(&self) -> bool;
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_payload: usize,
}

/// Byte counters a session adds to (one per shard: read at scrape time).
#[derive(Default)]
pub struct Traffic {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

/// Runs the session to its end and says why it ended. Sends the open packet
/// first; `upgrades` is what the open packet advertises.
pub async fn run<H: EngineHandler>(
    stream: TcpStream,
    already_read: Bytes,
    sid: &str,
    upgrades: &[&str],
    settings: &Settings,
    outbox: &Outbox,
    traffic: &Traffic,
    handler: &H,
) -> CloseReason {
    outbox.push(engineio::open_frame(&OpenInfo {
        sid,
        upgrades,
        ping_interval_ms: settings.ping_interval.as_millis() as u64,
        ping_timeout_ms: settings.ping_timeout.as_millis() as u64,
        max_payload: settings.max_payload,
    }));
    let (read_half, write_half) = stream.into_split();
    let last_pong = Cell::new(Instant::now());
    let reader = read_loop(read_half, already_read, settings, outbox, traffic, handler, &last_pong);
    let writer = write_loop(write_half, settings, outbox, traffic, handler, &last_pong);
    tokio::pin!(reader, writer);
    tokio::select! {
        reason = &mut reader => {
            let close = reason.close_frame().map(|(code, text)| OutFrame::close(code, text));
            outbox.close_after(close, reason.clone());
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
            reason
        }
        reason = &mut writer => reason,
    }
}

async fn read_loop<H: EngineHandler>(
    read_half: OwnedReadHalf,
    already_read: Bytes,
    settings: &Settings,
    outbox: &Outbox,
    traffic: &Traffic,
    handler: &H,
    last_pong: &Cell<Instant>,
) -> CloseReason {
    let mut decoder = FrameDecoder::new(settings.max_payload);
    let mut buf = BytesMut::from(&already_read[..]);
    loop {
        loop {
            let message = match decoder.decode(&mut buf) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(FrameError::TooBig { .. }) => return CloseReason::PayloadTooLarge,
                Err(e) => return CloseReason::ProtocolError(e.to_string()),
            };
            if let Err(reason) = on_frame(message, outbox, handler, last_pong).await {
                return reason;
            }
        }
        if buf.is_empty() {
            // Idle connections keep no buffer.
            buf = BytesMut::new();
        }
        if read_half.readable().await.is_err() {
            return CloseReason::TransportError;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read_half.try_read_buf(&mut buf) {
            Ok(0) => return CloseReason::TransportError,
            Ok(n) => traffic.bytes_in.set(traffic.bytes_in.get() + n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return CloseReason::TransportError,
        }
    }
}

async fn on_frame<H: EngineHandler>(
    message: Message,
    outbox: &Outbox,
    handler: &H,
    last_pong: &Cell<Instant>,
) -> Result<(), CloseReason> {
    match message {
        Message::Text(bytes) => {
            // SAFETY: the frame decoder validated text messages as UTF-8.
            let text = unsafe { std::str::from_utf8_unchecked(&bytes) };
            match engineio::decode(text) {
                Ok(engineio::Packet::Message(data)) => handler.on_message(data).await,
                Ok(engineio::Packet::Pong(_)) => {
                    last_pong.set(Instant::now());
                    Ok(())
                }
                // Clients ping only to probe a transport during an upgrade.
                Ok(engineio::Packet::Ping(data)) => {
                    outbox.push(engineio::control_frame(engineio::PONG, data));
                    Ok(())
                }
                Ok(engineio::Packet::Close) => Err(CloseReason::ClientClose),
                Ok(engineio::Packet::Noop) => Ok(()),
                Ok(engineio::Packet::Open | engineio::Packet::Upgrade) => {
                    Err(CloseReason::ProtocolError("unexpected Engine.IO packet".into()))
                }
                Err(e) => Err(CloseReason::ProtocolError(e.to_string())),
            }
        }
        Message::Binary(data) => handler.on_binary(data).await,
        Message::Ping(data) => {
            outbox.push(OutFrame::new(OpCode::Pong, &data));
            Ok(())
        }
        Message::Pong => Ok(()),
        Message::Close { .. } => Err(CloseReason::ClientClose),
    }
}

async fn write_loop<H: EngineHandler>(
    mut write_half: OwnedWriteHalf,
    settings: &Settings,
    outbox: &Outbox,
    traffic: &Traffic,
    handler: &H,
    last_pong: &Cell<Instant>,
) -> CloseReason {
    let opened = Instant::now();
    let connect_deadline = opened + settings.connect_timeout;
    let mut next_ping = opened + settings.ping_interval;
    let mut ping_sent: Option<Instant> = None;
    let sleep = tokio::time::sleep_until(next_ping);
    tokio::pin!(sleep);
    loop {
        let mut deadline = match ping_sent {
            Some(sent) => sent + settings.ping_timeout,
            None => next_ping,
        };
        if !handler.is_established() {
            deadline = deadline.min(connect_deadline);
        }
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = outbox.ready() => {}
            _ = &mut sleep => {
                let now = Instant::now();
                if !handler.is_established() && now >= connect_deadline {
                    return CloseReason::ConnectTimeout;
                }
                match ping_sent {
                    Some(sent) if last_pong.get() >= sent => {
                        ping_sent = None;
                        next_ping = last_pong.get() + settings.ping_interval;
                    }
                    Some(sent) if now >= sent + settings.ping_timeout => return CloseReason::PingTimeout,
                    Some(_) => {}
                    None if now >= next_ping => {
                        outbox.push(engineio::control_frame(engineio::PING, ""));
                        ping_sent = Some(now);
                    }
                    None => {}
                }
            }
        }
        if let Err(_) = flush(&mut write_half, outbox, traffic).await {
            return CloseReason::TransportError;
        }
        if let Some(reason) = outbox.close_reason() {
            if outbox.is_empty() {
                let _ = write_half.shutdown().await;
                return reason;
            }
        }
    }
}

/// Writes everything queued, coalescing frames into vectored writes.
async fn flush(write_half: &mut OwnedWriteHalf, outbox: &Outbox, traffic: &Traffic) -> io::Result<()> {
    loop {
        let mut batch = outbox.take_all();
        if batch.is_empty() {
            return Ok(());
        }
        let mut offset = 0;
        while !batch.is_empty() {
            let written = {
                let slices: Vec<IoSlice<'_>> = batch
                    .iter()
                    .take(MAX_IOVECS)
                    .enumerate()
                    .map(|(i, frame)| IoSlice::new(if i == 0 { &frame.wire()[offset..] } else { frame.wire() }))
                    .collect();
                write_half.write_vectored(&slices).await?
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            traffic.bytes_out.set(traffic.bytes_out.get() + written as u64);
            outbox.progressed();
            let mut left = written;
            while left > 0 {
                let remaining_in_front = batch[0].wire().len() - offset;
                if left >= remaining_in_front {
                    left -= remaining_in_front;
                    batch.pop_front();
                    offset = 0;
                } else {
                    offset += left;
                    left = 0;
                }
            }
        }
    }
}
