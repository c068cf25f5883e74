//! What the HTTP faces share (the Engine.IO endpoints, the API, the
//! server's own routes): the response type, JSON answers, reading a bounded
//! body, and the TCP stream with its first bytes put back. Below all of
//! them, so that none imports another.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::net::TcpStream;

pub type HttpResponse = Response<Full<Bytes>>;

/// Why a request body could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit; the rest was read and thrown away.
    TooLarge,
    /// The connection failed while the body was arriving.
    Unreadable,
    /// The body did not arrive within the request timeout (`REQUEST_TIMEOUT_MS`).
    TimedOut,
}

/// How much of an over-size body is read and discarded, and for how long,
/// before the answer goes out anyway.
const DISCARD_LIMIT_BYTES: usize = 64 * 1024 * 1024;
const DISCARD_LIMIT_TIME: Duration = Duration::from_secs(2);

/// Reads a request body of at most `limit` bytes, all of it within
/// `timeout`: a body sent slowly, or never finished, cannot hold the
/// connection (and the request's memory) longer than that.
///
/// A body over the limit is not kept, but the rest of it is still read (up to
/// `DISCARD_LIMIT_BYTES` / `DISCARD_LIMIT_TIME`) before the 413 goes out:
/// closing a socket with unread bytes in it makes the kernel send a reset,
/// and the client would then see a broken pipe instead of our answer.
pub async fn read_body(mut body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut kept = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(kept.freeze()),
            Ok(Some(frame)) => frame.map_err(|_| BodyError::Unreadable)?,
        };
        let Ok(data) = frame.into_data() else { continue };
        if kept.len() + data.len() > limit {
            break;
        }
        kept.extend_from_slice(&data);
    }
    drop(kept);
    let discard = async {
        let mut discarded = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, Bytes::len);
            if discarded > DISCARD_LIMIT_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_LIMIT_TIME, discard).await;
    Err(BodyError::TooLarge)
}

/// The answer to a request whose body did not arrive in time: 408, and
/// the connection closes after it.
pub fn request_timed_out() -> HttpResponse {
    let mut response = json_response(
        StatusCode::REQUEST_TIMEOUT,
        r#"{"error":"the request body did not arrive in time","code":"REQUEST_TIMEOUT"}"#.into(),
    );
    response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response with a JSON body (already serialized).
pub fn json_response(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A TCP stream with bytes already read from it put back in front, for hyper.
pub struct PrefixedStream {
    prefix: Bytes,
    stream: TcpStream,
}

impl PrefixedStream {
    pub fn new(prefix: Bytes, stream: TcpStream) -> PrefixedStream {
        PrefixedStream { prefix, stream }
    }

    /// The stream, and the bytes put back that were not read again.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }
}

impl tokio::io::AsyncRead for PrefixedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let taken = this.prefix.split_to(this.prefix.len().min(buf.remaining()));
        buf.put_slice(&taken);
        if this.prefix.is_empty() {
            // Let go of the first read's buffer: a keep-alive connection lives long.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for PrefixedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn bytes_put_back_are_read_first_then_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(b" world").await.unwrap();
            let mut stream = PrefixedStream::new(Bytes::from_static(b"hello"), server);
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"hel");
            let mut rest = [0u8; 8];
            stream.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"lo world");
            let (_, unread) = stream.into_parts();
            assert!(unread.is_empty());
        });
    }
}
