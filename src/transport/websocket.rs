//! Engine.IO over a WebSocket, after the HTTP upgrade: either a whole
//! session ([`run`]) or the second half of one that began on long-polling
//! ([`run_upgrade`]).
//!
//! The reader (decode frames, hand packets to the [`EngineHandler`]) and the
//! writer (drain the outbox with vectored writes) run as two futures in one
//! task, so neither is ever cancelled mid-operation; when either ends, the
//! other gets a short grace period to flush a close frame.
//!
//! Memory: an idle connection holds no read buffer (we wait for readability
//! before allocating one and release it once drained) and no write buffer.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::engine::{on_text_packet, supervise, EngineHandler, LastPong, Settings};
use super::upgrade::{ProbeStep, UpgradeProbe};
use super::Traffic;
use super::outbox::{advance, send_frames, send_vectored, Next, Outbox};
use super::CloseReason;
use crate::protocol::engineio;
use crate::protocol::wsframe::{FrameDecoder, FrameError, Message, OutFrame};

/// Size of the read buffer allocated when a connection has bytes to read.
const READ_CHUNK: usize = 4096;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A new WebSocket connection, as the listener hands it over: the socket,
/// what was read past the upgrade request, and the 101 response when the
/// listener answered the upgrade itself (else empty). Boxed on its way into
/// [`run`]: what a future is given stays in it for its whole life, and of
/// these only the socket is needed past the first write.
pub struct Opening {
    pub stream: TcpStream,
    pub already_read: Bytes,
    pub preamble: Vec<u8>,
}

/// Runs a whole session over a WebSocket and says why it ended. Sends the
/// open packet first, behind the opening's preamble: both leave in one
/// segment. A session that starts on WebSocket has nowhere to upgrade to.
///
/// Not an `async fn`: one would keep a second copy of every argument in the
/// future (its parameters, then the locals they are moved into), and this
/// future is most of what an idle connection costs.
#[allow(clippy::manual_async_fn, clippy::blocks_in_conditions)]
pub fn run<'a, H: EngineHandler>(
    opening: Box<Opening>,
    sid: impl std::fmt::Display + 'a,
    settings: &'a Settings,
    traffic: &'a Rc<Traffic>,
    handler: &'a H,
) -> impl Future<Output = CloseReason> + 'a {
    async move {
        let last_pong = LastPong::new(Instant::now());
        // The opening's parts and the open frame live in this block only,
        // and the stream and buffer pass straight into `serve` (no binding
        // outlives the match): a local a future still holds, even moved
        // from, keeps its bytes in the future for the connection's life.
        let session = match {
            let Opening { mut stream, already_read, preamble } = *opening;
            // Written before anything can be queued: nothing else can come first.
            let open = engineio::open_frame(&settings.open_info(&sid.to_string(), &[]));
            let written = write_first(&mut stream, &preamble, open.wire()).await;
            match written {
                Ok(()) => {
                    traffic.sent(open.wire().len());
                    Ok((stream, BytesMut::from(&already_read[..])))
                }
                Err(_) => Err(CloseReason::TransportError),
            }
        } {
            Ok((stream, buf)) => serve(stream, buf, settings, traffic, handler, &last_pong),
            Err(reason) => return reason,
        };
        let heartbeat = supervise(settings, handler, &last_pong);
        tokio::pin!(heartbeat, session);
        tokio::select! {
            reason = &mut session => reason,
            reason = &mut heartbeat => {
                // A missed deadline: say why with a close frame (if the client
                // can still read it) and let the writer finish, briefly. The
                // timer is boxed: rare, and it would otherwise take room in
                // every connection's future.
                handler.outbox().close_for(reason.clone());
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut session)).await;
                reason
            }
        }
    }
}

/// Writes `first` then `second` with one `sendmsg` if the socket takes them
/// (a new connection's empty send buffer always does), else the rest through
/// tokio. Sent straight away rather than through tokio: a socket accepted a
/// moment ago is not known writable to tokio until its reactor has polled,
/// which would cost a round through the reactor per handshake.
async fn write_first(stream: &mut TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    let total = first.len() + second.len();
    let sent = match send_vectored(stream.as_raw_fd(), &[IoSlice::new(first), IoSlice::new(second)], Next::Writes) {
        Ok(sent) => sent,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => return Err(error),
    };
    if sent < total {
        let rest = [first, second].concat();
        stream.write_all(&rest[sent..]).await?;
    }
    Ok(())
}

/// Takes over a long-polling session: answers the client's `2probe` with
/// `3probe`, releases the pending poll with a noop, and on the client's
/// `5` calls `upgraded` and serves the session over this WebSocket until
/// it ends. The session's heartbeat keeps running in its owner task.
pub async fn run_upgrade<H: EngineHandler>(
    mut stream: TcpStream,
    already_read: Bytes,
    settings: &Settings,
    traffic: &Rc<Traffic>,
    handler: &H,
    last_pong: &LastPong,
    upgraded: impl FnOnce(),
) -> CloseReason {
    let mut decoder = FrameDecoder::new(settings.max_payload);
    let mut buf = BytesMut::from(&already_read[..]);
    let mut probe = UpgradeProbe::new(std::time::Instant::now(), settings.ping_timeout);
    let deadline = Instant::from_std(probe.deadline());
    loop {
        let message = match tokio::time::timeout_at(deadline, next_message(&mut stream, &mut buf, &mut decoder, traffic)).await {
            Ok(Ok(message)) => message,
            Ok(Err(reason)) => return reason,
            Err(_) => match probe.on_deadline() {
                ProbeStep::Fail(reason) => return reason,
                _ => unreachable!("a deadline only fails an upgrade"),
            },
        };
        let text = match &message {
            Message::Text(bytes) => std::str::from_utf8(bytes).unwrap_or(""),
            Message::Close { .. } => return CloseReason::ClientClose,
            _ => continue,
        };
        match probe.on_packet(std::time::Instant::now(), engineio::decode(text)) {
            ProbeStep::AnswerProbe => {
                let reply = engineio::control_frame(engineio::PONG, "probe");
                if stream.write_all(reply.wire()).await.is_err() {
                    return CloseReason::TransportError;
                }
                traffic.sent(reply.wire().len());
                handler.outbox().push_or_close(engineio::control_frame(b'6', ""));
            }
            ProbeStep::Upgraded => break,
            ProbeStep::Fail(reason) => return reason,
        }
    }
    upgraded();
    serve(stream, buf, settings, traffic, handler, last_pong).await
}

/// Reader and writer of an established WebSocket session. A plain fn, like
/// [`run`]: the socket is split and both halves handed to their futures
/// before the `async` block, so the block holds those two futures and no
/// second copy of the stream or the buffer.
fn serve<'a, H: EngineHandler>(
    stream: TcpStream,
    buf: BytesMut,
    settings: &'a Settings,
    traffic: &'a Rc<Traffic>,
    handler: &'a H,
    last_pong: &'a LastPong,
) -> impl Future<Output = CloseReason> + 'a {
    let outbox = handler.outbox();
    let (read_half, write_half) = stream.into_split();
    let mut reader = read_loop(read_half, buf, settings, traffic, handler, last_pong);
    let mut writer = write_loop(write_half, outbox, traffic);
    async move {
        // Pinned where they are, not moved into locals as `tokio::pin!`
        // would (a second copy of both futures, ~400 bytes per connection).
        // SAFETY: `reader` and `writer` are this block's own captures: they
        // live in its state, which is pinned from its first poll on and
        // dropped in place; they are reached only through these pins.
        let (mut reader, mut writer) = unsafe { (Pin::new_unchecked(&mut reader), Pin::new_unchecked(&mut writer)) };
        let (reason, lingering) = tokio::select! {
            // Writing what is queued comes before reading more.
            biased;
            // Cut off (a client too slow to read): end now, even while the
            // writer waits on a socket the client no longer reads.
            reason = outbox.aborted() => (reason, None),
            reason = &mut writer => (reason, None),
            (reason, read_half) = &mut reader => {
                outbox.close_for(reason.clone());
                // Boxed: see `run`.
                let written = Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut writer)).await.is_ok();
                let refused = matches!(
                    reason,
                    CloseReason::ProtocolError(_) | CloseReason::InvalidUtf8 | CloseReason::PayloadTooLarge | CloseReason::RateLimited
                );
                (reason, (written && refused).then_some(read_half))
            }
        };
        if let Some(read_half) = lingering {
            // In a task of its own: the session ends (and is cleaned up) now.
            tokio::task::spawn_local(linger(read_half));
        }
        reason
    }
}

/// How long, and for how many bytes, a connection closed for what its
/// client sent is read from (and the bytes thrown away) after the close frame.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// After a close frame sent because of the client's input (a protocol
/// error, too big a message, a flood): says it is done writing (FIN), then
/// reads and throws away what the client still sends, until it closes too
/// or [`LINGER`] has passed; the descriptor is closed then. Closing at once with its bytes unread would
/// make the kernel answer with a reset, which can overtake the close frame:
/// the client would see 1006 instead of 1002, 1007, 1008 or 1009.
async fn linger(mut read_half: OwnedReadHalf) {
    // SAFETY: a plain shutdown of the write side of a socket this session owns.
    unsafe { libc::shutdown(read_half.as_ref().as_raw_fd(), libc::SHUT_WR) };
    let mut scratch = vec![0u8; READ_CHUNK];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match read_half.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Reads until one whole message is decoded (probe phase only).
async fn next_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    traffic: &Traffic,
) -> Result<Message, CloseReason> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(error) => return Err(close_reason(error)),
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(CloseReason::TransportError),
            Ok(n) => traffic.received(n),
        }
    }
}

/// Reads and handles the client's frames until the session must end; gives
/// the read half back with the reason (a refused client is lingered on). A
/// plain fn for the reason [`run`] gives: the future owns the socket half
/// and the buffer once, not as an argument and again as a local.
fn read_loop<'a, H: EngineHandler>(
    mut read_half: OwnedReadHalf,
    mut buf: BytesMut,
    settings: &Settings,
    traffic: &'a Traffic,
    handler: &'a H,
    last_pong: &'a LastPong,
) -> impl Future<Output = (CloseReason, OwnedReadHalf)> + 'a {
    let mut decoder = FrameDecoder::new(settings.max_payload);
    async move {
        let reason = 'session: loop {
            loop {
                let message = match decoder.decode(&mut buf) {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(error) => break 'session close_reason(error),
                };
                if let Err(reason) = Box::pin(on_frame(message, handler, last_pong)).await {
                    break 'session reason;
                }
            }
            if buf.is_empty() {
                // Idle connections keep no buffer.
                buf = BytesMut::new();
            }
            // `poll_read_ready`, not `readable()`: the latter's future keeps a
            // waiter node (168 bytes) in every idle connection's future; this
            // session's task is the socket's only reader, so the one waker slot
            // `poll_read_ready` uses is enough.
            if std::future::poll_fn(|cx| read_half.as_ref().poll_read_ready(cx)).await.is_err() {
                break CloseReason::TransportError;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            // `read_buf`, not `try_read_buf`: after a short read tokio takes the
            // socket as drained (it is, with epoll) and waits for the next event,
            // instead of one more `recv` that fails with EAGAIN for every message.
            match read_half.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break CloseReason::TransportError,
                Ok(n) => traffic.received(n),
            }
        };
        (reason, read_half)
    }
}

/// Why a frame the decoder refused closes the connection: 1009 for a
/// message over the limit, 1007 for text that is not UTF-8, 1002 for the rest.
fn close_reason(error: FrameError) -> CloseReason {
    match error {
        FrameError::TooBig { .. } => CloseReason::PayloadTooLarge,
        FrameError::InvalidUtf8 => CloseReason::InvalidUtf8,
        other => CloseReason::ProtocolError(other.to_string()),
    }
}

async fn on_frame<H: EngineHandler>(message: Message, handler: &H, last_pong: &LastPong) -> Result<(), CloseReason> {
    match message {
        Message::Text(bytes) => {
            // SAFETY: the frame decoder validated text messages as UTF-8.
            let text = unsafe { std::str::from_utf8_unchecked(&bytes) };
            on_text_packet(text, handler, last_pong).await
        }
        Message::Binary(data) => handler.on_binary(data).await,
        Message::Ping(data) => {
            handler.outbox().push_or_close(OutFrame::new(OpCode::Pong, &data));
            Ok(())
        }
        Message::Pong => Ok(()),
        Message::Close { .. } => Err(CloseReason::ClientClose),
    }
}

/// Drains the outbox to the socket until the session closes. While it waits,
/// the shard's flusher may write to the socket directly.
#[allow(clippy::manual_async_fn)]
fn write_loop<'a>(mut write_half: OwnedWriteHalf, outbox: &'a Rc<Outbox>, traffic: &'a Rc<Traffic>) -> impl Future<Output = CloseReason> + 'a {
    // A plain fn for the reason `run` gives.
    async move {
        let reason = write_until_closed(&mut write_half, outbox, traffic).await;
        // No `shutdown`: the socket is closed as the session ends, which sends
        // the FIN after what was written; a shutdown first is one more syscall
        // per connection (which fails when the client has already gone).
        write_half.forget();
        reason
    }
}

async fn write_until_closed(write_half: &mut OwnedWriteHalf, outbox: &Rc<Outbox>, traffic: &Rc<Traffic>) -> CloseReason {
    let _direct = outbox.write_directly(write_half.as_ref().as_raw_fd(), traffic);
    loop {
        outbox.ready().await;
        if flush(write_half, outbox, traffic).await.is_err() {
            return CloseReason::TransportError;
        }
        if let Some(reason) = outbox.close_reason() {
            if outbox.is_empty() {
                return reason;
            }
        }
    }
}

/// Writes everything queued, coalescing frames into vectored writes, waiting
/// for the socket as long as it takes.
async fn flush(write_half: &mut OwnedWriteHalf, outbox: &Outbox, traffic: &Traffic) -> io::Result<()> {
    loop {
        let (mut batch, mut offset) = outbox.take_all();
        if batch.is_empty() {
            outbox.set_writing(false);
            return Ok(());
        }
        let published_at = outbox.take_published_at();
        outbox.set_writing(true);
        while !batch.is_empty() {
            // The flusher's write (`send_frames`), through tokio's readiness:
            // `try_io` takes EAGAIN as "not writable" and the wait below
            // lasts until the socket is. Its slice array is on the stack of
            // a plain call, not in this future (which every connection holds).
            // A closing outbox's writes are the session's last: the socket is
            // closed as soon as they are done (`write_until_closed`).
            let next = if outbox.is_closing() { Next::Close } else { Next::Writes };
            let sent = {
                let socket = write_half.as_ref();
                socket.try_io(Interest::WRITABLE, || send_frames(socket.as_raw_fd(), &batch, offset, next))
            };
            let written = match sent {
                Ok((written, _)) => Some(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
                Err(error) => return Err(error),
            };
            let Some(written) = written else {
                // `poll_write_ready`, not `writable()`: see `read_loop`.
                std::future::poll_fn(|cx| write_half.as_ref().poll_write_ready(cx)).await?;
                continue;
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            traffic.sent(written);
            outbox.progressed();
            advance(&mut batch, &mut offset, written);
        }
        // One clock read per batch, on the slow path (a socket that pushed back).
        if let Some(published_at) = published_at {
            traffic.written_latency.record(published_at.elapsed(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A session's writer task on the server end of a fresh loopback
    /// connection, and the client end.
    struct LoopbackWriter {
        client: TcpStream,
        /// The server's read half: dropping it (after the writer has ended)
        /// closes the server's socket, as a session's end does.
        read_half: OwnedReadHalf,
        outbox: Rc<Outbox>,
        traffic: Rc<Traffic>,
        writer: tokio::task::JoinHandle<CloseReason>,
    }

    /// Must run inside a `LocalSet`.
    async fn writer_on_loopback() -> LoopbackWriter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read_half, write_half) = server.into_split();
        let outbox = Rc::new(Outbox::new(100_000));
        let traffic = Rc::new(Traffic::default());
        let writer = tokio::task::spawn_local({
            let (outbox, traffic) = (outbox.clone(), traffic.clone());
            async move { write_loop(write_half, &outbox, &traffic).await }
        });
        tokio::task::yield_now().await; // the writer registers its socket
        LoopbackWriter { client, read_half, outbox, traffic, writer }
    }

    /// Frames reach the socket whole and in order whichever way they go out:
    /// straight from the flusher, or through the writer task once the socket
    /// pushes back (partial writes included), and back again.
    #[test]
    fn flusher_and_writer_hand_over_without_losing_or_reordering_bytes() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let LoopbackWriter { mut client, read_half: _read_half, outbox, traffic, writer } = writer_on_loopback().await;

            let mut expected = Vec::new();
            let mut push = |i: usize, size: usize| {
                let payload = vec![b'a' + (i % 26) as u8; size];
                let frame = OutFrame::new(OpCode::Text, &payload);
                expected.extend_from_slice(frame.wire());
                outbox.push(frame);
            };
            // Small frames, one pass at a time: the flusher writes them.
            for i in 0..100 {
                push(i, 10);
                tokio::task::yield_now().await;
            }
            // Far more than the socket buffers hold while nobody reads.
            for i in 0..3000 {
                push(i, 3000 + i % 7);
            }
            tokio::task::yield_now().await;
            // Then small ones again, queued behind the backlog.
            for i in 0..100 {
                push(i, 5);
            }
            let mut received = Vec::new();
            while received.len() < expected.len() {
                let mut buf = vec![0u8; 65536];
                let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "connection closed early");
                received.extend_from_slice(&buf[..n]);
            }
            assert!(received == expected, "bytes differ from the frames pushed, in order");
            assert_eq!(traffic.bytes_out.get(), expected.len() as u64);
            outbox.close_after(None, CloseReason::ServerShutdown);
            assert_eq!(writer.await.unwrap(), CloseReason::ServerShutdown);
        });
    }

    /// Segments the kernel has received on `socket`.
    fn segments_in(socket: &TcpStream) -> u32 {
        // SAFETY: getsockopt fills at most `len` bytes of the zeroed struct.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let info_ptr = &mut info as *mut libc::tcp_info as *mut libc::c_void;
            assert_eq!(libc::getsockopt(socket.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info_ptr, &mut len), 0);
            info.tcpi_segs_in
        }
    }

    /// A session's last write (here the answer to the client's close frame)
    /// reaches the client whole, followed by the end of the connection, and
    /// both in one segment: the FIN rides with the frame.
    #[test]
    fn the_last_frame_and_the_fin_leave_in_one_segment() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let LoopbackWriter { mut client, read_half, outbox, writer, .. } = writer_on_loopback().await;
            let before = segments_in(&client);

            outbox.close_for(CloseReason::ClientClose);
            assert_eq!(writer.await.unwrap(), CloseReason::ClientClose);
            drop(read_half); // the session's end closes the socket

            let mut received = Vec::new();
            let read_all = client.read_to_end(&mut received);
            tokio::time::timeout(Duration::from_secs(10), read_all).await.unwrap().unwrap();
            assert_eq!(received[..], OutFrame::close(1000, "").wire()[..], "the close answer, then the end");
            assert_eq!(segments_in(&client) - before, 1, "the close answer and the FIN in one segment");
        });
    }
}
