//! The process: one listener and one thread per shard, HTTP routing on each
//! accepted connection, and orderly shutdown.
//!
//! Every shard binds the same port with `SO_REUSEPORT`, so the kernel hashes
//! incoming connections across shards and a connection is served start to
//! finish by the thread that accepted it — no hand-off between threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::api;
use crate::app::auth::Authenticator;
use crate::app::namespace::Namespaces;
use crate::app::session::AppContext;
use crate::engine_http::Endpoint;
use crate::transport::engine::EngineAppFactory;
use crate::broker::Broker;
use crate::app;
use crate::config::Config;
use crate::engine_http;
use crate::metrics::Metrics;
use crate::protocol::http_upgrade::{self, Head};
use crate::shard::{Router, Shard, ShardInbox, ShardMsg, Shared};

/// How long shutdown waits for connections to close before leaving anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every shard's HTTP handling shares, beside the shard itself.
struct Services {
    socket_io: Endpoint,
    /// Bare Engine.IO applications, by path (`/engine.io/`).
    engine_apps: Vec<(String, Endpoint)>,
    metrics: Arc<Metrics>,
}

/// What a program embedding the broker can add to it.
#[derive(Clone, Default)]
pub struct Extensions {
    /// The Socket.IO namespaces; `None`: only `WEBSOCKET_NAMESPACE`, with the built-in events.
    pub namespaces: Option<Namespaces>,
    /// Bare Engine.IO applications served at other paths (each ending in `/`).
    pub engine_apps: Vec<(String, EngineAppFactory)>,
}

/// A started broker.
pub struct Server {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start a shard thread: {0}")]
    Thread(std::io::Error),
}

impl Server {
    /// Binds the port and starts every shard thread.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with(config, Extensions::default())
    }

    /// Starts the broker with namespaces and Engine.IO applications of your own.
    pub fn start_with(config: Config, extensions: Extensions) -> Result<Server, StartError> {
        let addr = config.listen_addr().map_err(StartError::Config)?;
        let shard_count = config.shard_count();
        let namespace = config.websocket_namespace.clone();
        let namespaces = extensions.namespaces.unwrap_or_else(|| Namespaces::builtin(&config.websocket_namespace));
        let context = AppContext { auth: Authenticator::new(config.jwt_secret.as_deref()), namespaces };
        let services = Arc::new(Services {
            socket_io: Endpoint::SocketIo(Arc::new(context)),
            engine_apps: extensions.engine_apps.into_iter().map(|(path, factory)| (path, Endpoint::App(factory))).collect(),
            metrics: Arc::new(Metrics::new()),
        });
        let presence: Option<crate::shard::PresenceEncoder> = config
            .presence_enabled()
            .then(|| Box::new(move |user: &str, online| app::presence_frame(&namespace, user, online)) as _);
        let (router, inboxes) = Router::new(shard_count);
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            router,
            presence,
            connections: AtomicUsize::new(0),
        });

        ensure_port_free(addr)?;
        let first = bind_reuseport(addr)?;
        let local_addr = first.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let mut listeners = vec![first];
        for _ in 1..shard_count {
            listeners.push(bind_reuseport(local_addr)?);
        }

        let mut threads = Vec::with_capacity(shard_count);
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let shared = shared.clone();
            let services = services.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || run_shard(index, shared, services, listener, inbox))
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        Ok(Server { local_addr, shared, threads })
    }

    /// A handle for publishing and querying from Rust code.
    pub fn broker(&self) -> Broker {
        Broker::new(self.shared.clone())
    }

    /// Stops accepting, closes every client cleanly and waits for the shard
    /// threads (bounded by the shutdown grace period).
    pub fn shutdown(self) {
        for shard in 0..self.shared.router.shard_count() {
            self.shared.router.send(shard, ShardMsg::Shutdown);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Shards share the port through `SO_REUSEPORT`, which would just as
/// happily share it with another broker already running there, splitting
/// the clients between the two. A plain bind first makes that an error.
fn ensure_port_free(addr: SocketAddr) -> Result<(), StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = || -> std::io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    probe().map_err(|source| StartError::Bind { addr, source })
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit it: one `setsockopt` fewer per connection.
        // Small frames must leave at once; Nagle would add up to 40 ms.
        socket.set_tcp_nodelay(true)?;
        defer_accept(&socket);
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    bind().map_err(|source| StartError::Bind { addr, source })
}

/// Lets `accept` return a connection only once its first bytes have arrived
/// (every client of ours speaks first): the accept and the request's read
/// happen on one wake-up instead of two. A connection that sends nothing is
/// still accepted after the delay, and then times out like any other.
fn defer_accept(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let seconds: libc::c_int = 5;
    // SAFETY: a plain setsockopt on a socket we own; failing only costs the
    // optimisation.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn run_shard(
    index: usize,
    shared: Arc<Shared>,
    services: Arc<Services>,
    listener: std::net::TcpListener,
    inbox: ShardInbox,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime can always be built");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let shard = Rc::new(Shard::new(index, shared, inbox));
        let listener = TcpListener::from_std(listener).expect("listener is non-blocking");
        tokio::task::spawn_local(crate::shard::run_inbox(shard.clone()));
        let acceptor = tokio::task::spawn_local(accept_loop(shard.clone(), services, listener));
        let mut ticks = 0u32;
        while !shard.is_shutting_down() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ticks += 1;
            if ticks % 20 == 0 {
                release_freed_memory();
            }
        }
        acceptor.abort();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while shard.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Returns this thread's freed memory to the OS. mimalloc purges freed pages
/// only when the thread allocates again, so after a burst (a wave of
/// handshakes) an idle shard would keep the memory of connections long gone:
/// about 1.3 KiB per live connection in the idle-memory measurement.
fn release_freed_memory() {
    // SAFETY: a plain call into the allocator, on the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

async fn accept_loop(shard: Rc<Shard>, services: Arc<Services>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // (TCP_NODELAY comes from the listener.)
        tokio::task::spawn_local(serve_connection(shard.clone(), services.clone(), stream, peer));
    }
}

/// What a connection's first read may take before hyper gets the connection
/// (browsers' upgrade requests, cookies included, are well under this).
const FIRST_READ_BYTES: usize = 4096;
/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one accepted connection. Its request head is read here first: a
/// new session's WebSocket upgrade is answered without hyper (see
/// `protocol::http_upgrade`); anything else goes to hyper, with the bytes
/// already read put back in front.
async fn serve_connection(shard: Rc<Shard>, services: Arc<Services>, stream: TcpStream, peer: SocketAddr) {
    let mut head = BytesMut::with_capacity(FIRST_READ_BYTES);
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    // The listener accepts once the request has arrived (TCP_DEFER_ACCEPT),
    // so this read usually finds it. It bypasses tokio, which does not know
    // the new socket is readable until its reactor has polled.
    let mut received = recv_now(&stream, &mut head);
    loop {
        match received {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match http_upgrade::parse(&head) {
            Head::Incomplete if head.len() < head.capacity() => {}
            Head::Upgrade(request) => {
                let endpoint = endpoint_for(&services, request.path);
                if let Some(endpoint) = endpoint.filter(|_| engine_http::opens_directly(&shard, &request)) {
                    shard.counters.http_request(route_label(request.path), 101);
                    let response = request.response();
                    let already_read = Bytes::copy_from_slice(&head[request.head_len..]);
                    let (shard, endpoint) = (shard.clone(), endpoint.clone());
                    // Its own task: this one, sized for hyper's connection, ends.
                    tokio::task::spawn_local(engine_http::serve_websocket(shard, endpoint, stream, already_read, response));
                    return;
                }
                break;
            }
            _ => break,
        }
        if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
            return;
        }
        received = stream.try_read_buf(&mut head);
    }
    serve_http(shard, services, PrefixedStream::new(head.freeze(), stream), peer).await
}

/// One non-blocking `recv` into `buf`'s spare room.
fn recv_now(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let received = socket2::SockRef::from(stream).recv(buf.spare_capacity_mut())?;
    // SAFETY: the kernel initialised `received` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + received) };
    Ok(received)
}

/// A TCP stream with bytes already read from it put back in front, for hyper.
pub(crate) struct PrefixedStream {
    prefix: Bytes,
    stream: TcpStream,
}

impl PrefixedStream {
    fn new(prefix: Bytes, stream: TcpStream) -> PrefixedStream {
        PrefixedStream { prefix, stream }
    }

    /// The stream, and the bytes put back that were not read again.
    pub(crate) fn into_parts(self) -> (TcpStream, Bytes) {
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

async fn serve_http(shard: Rc<Shard>, services: Arc<Services>, stream: PrefixedStream, peer: SocketAddr) {
    let broker = Broker::new(shard.shared.clone());
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (shard, services, broker) = (shard.clone(), services.clone(), broker.clone());
        async move {
            let label = route_label(request.uri().path());
            let response = route(&shard, &services, &broker, peer, request).await;
            shard.counters.http_request(label, response.status().as_u16());
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// The Engine.IO endpoint at `path`, if any.
fn endpoint_for<'a>(services: &'a Services, path: &str) -> Option<&'a Endpoint> {
    match path {
        "/socket.io/" | "/socket.io" => Some(&services.socket_io),
        _ => services
            .engine_apps
            .iter()
            .find(|(app_path, _)| app_path.trim_end_matches('/') == path.trim_end_matches('/'))
            .map(|(_, endpoint)| endpoint),
    }
}

use api::HttpResponse;

/// The `route` label of the HTTP requests metric: a fixed set.
fn route_label(path: &str) -> &'static str {
    match path {
        "/socket.io/" | "/socket.io" => "/socket.io/",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        _ if path == "/api" || path.starts_with("/api/") => api::route_template(path).unwrap_or("/api/other"),
        _ => "other",
    }
}

async fn route(
    shard: &Rc<Shard>,
    services: &Services,
    broker: &Broker,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    let path = request.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return api::handle(broker, shard.config(), peer, request).await;
    }
    if let Some(endpoint) = endpoint_for(services, path) {
        return engine_http::handle(shard, endpoint, request).await;
    }
    match path {
        "/metrics" if request.method() == Method::GET => {
            let mut response = Response::new(Full::new(Bytes::from(services.metrics.render(broker).await)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        "/health" => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/ready" if shard.is_shutting_down() => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"shutting down"}"#.into())
        }
        "/ready" => json_response(StatusCode::OK, r#"{"status":"ready"}"#.into()),
        _ => json_response(StatusCode::NOT_FOUND, r#"{"error":"not found","code":"NOT_FOUND"}"#.into()),
    }
}

/// Why a request body could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than the limit; the rest was read and thrown away.
    TooLarge,
    /// The connection failed while the body was arriving.
    Unreadable,
}

/// How much of an over-size body is read and discarded, and for how long,
/// before the answer goes out anyway.
const DISCARD_LIMIT_BYTES: usize = 64 * 1024 * 1024;
const DISCARD_LIMIT_TIME: Duration = Duration::from_secs(2);

/// Reads a request body of at most `limit` bytes.
///
/// A body over the limit is not kept, but the rest of it is still read (up to
/// `DISCARD_LIMIT_BYTES` / `DISCARD_LIMIT_TIME`) before the 413 goes out:
/// closing a socket with unread bytes in it makes the kernel send a reset,
/// and the client would then see a broken pipe instead of our answer.
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut kept = bytes::BytesMut::new();
    loop {
        let Some(frame) = body.frame().await else { return Ok(kept.freeze()) };
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
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

pub(crate) fn json_response(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small frames must leave at once: accepted sockets must have Nagle off
    /// although only the listener sets `TCP_NODELAY`.
    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        // The listener defers accept until the client speaks.
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

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
