//! The process: one listener and one thread per shard, HTTP routing on each
//! accepted connection, and orderly shutdown.
//!
//! Every shard binds the same port with `SO_REUSEPORT`, so the kernel hashes
//! incoming connections across shards and a connection is served start to
//! finish by the thread that accepted it — no hand-off between threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
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
use crate::app::session::AppSettings;
use crate::engine_http::{Endpoint, Handler};
use crate::transport::engine::{EngineAppFactory, Settings};
use crate::broker::Broker;
use crate::app;
use crate::cluster::{wire, Cluster, ClusterError, ClusterSettings};
use crate::config::Config;
use crate::engine_http;
use crate::http::{json_response, HttpResponse, PrefixedStream};
use crate::limits::{self, Backoff, Capacity, ConnectionBudget, ConnectionSlot, NofileLimit};
use crate::metrics::Metrics;
use crate::protocol::http_upgrade::{self, Head};
use crate::shard::{node_tag, ClusterLink, ClusterStatus, Router, Shard, ShardInbox, Shared};

/// How long shutdown waits for connections to close before leaving anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every shard's HTTP handling shares, beside the shard itself.
struct Services {
    config: Arc<Config>,
    broker: Broker,
    socket_io: Endpoint,
    /// Bare Engine.IO applications, by path (`/engine.io/`).
    engine_apps: Vec<(String, Endpoint)>,
    metrics: Arc<Metrics>,
    /// Open TCP connections against the connection capacity.
    budget: Arc<ConnectionBudget>,
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
    /// The address the listeners are bound to (the real port when `PORT=0`).
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    services: Arc<Services>,
    budget: Arc<ConnectionBudget>,
    threads: Vec<JoinHandle<()>>,
    /// Cluster mode's thread (`REDIS_URL`).
    cluster: Option<Cluster>,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The port cannot be listened on (in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A setting is invalid; the text names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operating system refused a shard thread.
    #[error("cannot start a shard thread: {0}")]
    Thread(std::io::Error),
    /// Cluster mode cannot start (a bad `REDIS_URL`).
    #[error("cannot start cluster mode: {0}")]
    Cluster(String),
}

impl From<ClusterError> for StartError {
    fn from(error: ClusterError) -> StartError {
        StartError::Cluster(error.to_string())
    }
}

impl Server {
    /// Binds the port and starts every shard thread. Like every `start`,
    /// raises the process's soft open-file limit to its hard limit and sizes
    /// the connection capacity from it (see [`crate::limits`]).
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with(config, Extensions::default())
    }

    /// Starts the broker with namespaces and Engine.IO applications of your own.
    pub fn start_with(config: Config, extensions: Extensions) -> Result<Server, StartError> {
        let addr = config.listen_addr().map_err(StartError::Config)?;
        let shard_count = config.shard_count();
        let namespace = config.websocket_namespace.clone();
        let namespaces = extensions.namespaces.unwrap_or_else(|| Namespaces::builtin(&config.websocket_namespace));
        let engine = engine_settings(&config);
        let app_settings = app_settings(&config);
        let context = AppContext { auth: Authenticator::new(config.jwt_secret.as_deref()), namespaces, settings: app_settings };
        let budget = Arc::new(connection_budget(&config, shard_count));
        let presence: Option<crate::shard::PresenceEncoder> = config.presence_enabled().then(|| {
            let namespace = namespace.clone();
            Box::new(move |user: &str, online| app::presence_frame(&namespace, user, online)) as _
        });
        let (router, inboxes) = Router::new(shard_count);
        // Cluster mode: the shards' queue to the cluster thread exists before the shards.
        let cluster_queue = config.redis_url.as_ref().map(|_| {
            let (commands, queued) = Cluster::channel();
            let name = config.node_id.clone().unwrap_or_else(|| wire::node_name(node_tag()));
            let status = Arc::new(ClusterStatus::new(name));
            (ClusterLink::new(commands.clone(), status.clone()), (commands, queued), status)
        });
        let (link, cluster_queue) = match cluster_queue {
            Some((link, queue, status)) => (Some(link), Some((queue, status))),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            max_connections: config.max_connections,
            router,
            presence,
            connections: AtomicUsize::new(0),
            cluster: link,
        });
        let broker = Broker::new(shared.clone(), &namespace);
        let cluster = match cluster_queue {
            Some((queue, status)) => Some(Cluster::start(cluster_settings(&config), shared.clone(), broker.clone(), queue, status)?),
            None => None,
        };
        let config = Arc::new(config);
        let endpoint = |handler| Endpoint { handler, config: config.clone(), engine: Arc::new(engine.clone()) };
        let services = Arc::new(Services {
            config: config.clone(),
            broker,
            socket_io: endpoint(Handler::SocketIo(Arc::new(context))),
            engine_apps: extensions.engine_apps.into_iter().map(|(path, factory)| (path, endpoint(Handler::App(factory)))).collect(),
            metrics: Arc::new(Metrics::new()),
            budget: budget.clone(),
        });

        ensure_port_free(addr)?;
        let first = bind_reuseport(addr)?;
        let local_addr = first.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let mut listeners = vec![first];
        for _ in 1..shard_count {
            listeners.push(bind_reuseport(local_addr)?);
        }

        let mut threads = Vec::with_capacity(shard_count);
        let closed = Arc::new(AtomicUsize::new(0));
        for (index, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let shared = shared.clone();
            let services = services.clone();
            let closed = closed.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || run_shard(index, shared, services, listener, inbox, closed))
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        Ok(Server { local_addr, shared, services, budget, threads, cluster })
    }

    /// How many connections the open-file limit allows, after the reserve.
    pub fn connection_capacity(&self) -> Capacity {
        self.budget.capacity
    }

    /// The open-file limit, before and after start-up raised it.
    pub fn nofile_limit(&self) -> NofileLimit {
        self.budget.nofile
    }

    /// A handle for publishing and querying from Rust code.
    pub fn broker(&self) -> Broker {
        self.services.broker.clone()
    }

    /// Stops accepting, closes every client cleanly and waits for the shard
    /// threads (bounded by the shutdown grace period).
    pub fn shutdown(self) {
        self.shared.router.shutdown_all();
        for thread in self.threads {
            let _ = thread.join();
        }
        // After the shards: their sockets' last leaves and offlines are on Redis first.
        if let Some(cluster) = self.cluster {
            cluster.stop();
        }
    }
}

/// Raises the soft open-file limit to the hard one, and sizes the
/// connection capacity from it (see [`limits`]); both are logged.
/// What the Socket.IO layer needs of the configuration.
pub(crate) fn app_settings(config: &Config) -> AppSettings {
    AppSettings {
        engine: engine_settings(config),
        room_events: config.room_events_enabled(),
        max_rooms_per_socket: config.max_rooms_per_socket,
        rate_limit: config.rate_limit_per_sec.map(|rate| (rate, config.rate_limit_burst.unwrap_or(rate))),
    }
}

/// What cluster mode needs of the configuration (`REDIS_URL` set).
fn cluster_settings(config: &Config) -> ClusterSettings {
    ClusterSettings {
        redis_url: config.redis_url.clone().unwrap_or_default(),
        prefix: config.redis_prefix.clone(),
        adapter_key: config.redis_adapter_key.clone(),
        namespace: config.websocket_namespace.clone(),
        node_ttl: *config.cluster_node_ttl,
        request_timeout: *config.cluster_request_timeout,
    }
}

/// What an Engine.IO session needs of the configuration.
fn engine_settings(config: &Config) -> Settings {
    Settings {
        ping_interval: config.ping_interval(),
        ping_timeout: config.ping_timeout(),
        connect_timeout: config.connect_timeout(),
        max_payload: config.max_payload_bytes as usize,
        outbox_limit: config.outbox_limit as usize,
        upgrades: if config.websocket_transports.websocket { &["websocket"] } else { &[] },
    }
}

fn connection_budget(config: &Config, shards: usize) -> ConnectionBudget {
    let nofile = match limits::raise_nofile_limit() {
        Ok(nofile) => nofile,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit (RLIMIT_NOFILE); keeping it");
            limits::current_nofile_limit().unwrap_or(NofileLimit { soft_before: 1024, soft: 1024, hard: 1024 })
        }
    };
    tracing::info!(
        soft_before = nofile.soft_before,
        soft = nofile.soft,
        hard = nofile.hard,
        "open-file limit (RLIMIT_NOFILE): soft limit raised to the hard limit"
    );
    let capacity = Capacity::new(nofile.soft, shards);
    tracing::info!(
        capacity = capacity.connections,
        descriptors = capacity.descriptors,
        reserve = capacity.reserve,
        shards,
        "connection capacity: the open-file limit minus a reserve for listeners, runtimes, HTTP requests and Redis"
    );
    if capacity.connections == 0 {
        tracing::warn!(descriptors = nofile.soft, reserve = capacity.reserve, "the open-file limit leaves no room for connections: every new session will be refused");
    }
    if let Some(max) = config.max_connections.filter(|max| *max as u64 > capacity.connections) {
        tracing::warn!(
            max_connections = max,
            capacity = capacity.connections,
            "MAX_CONNECTIONS is above the connection capacity: new sessions will be refused (503) at the capacity first; \
             raise the open-file limit (LimitNOFILE, ulimit -n) or lower MAX_CONNECTIONS"
        );
    }
    ConnectionBudget::new(capacity, nofile)
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
    closed: Arc<AtomicUsize>,
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
        // Wakes once a second (not on a short tick: an idle shard should
        // cost nothing), and at once when shutdown begins.
        let mut collect = tokio::time::interval(Duration::from_secs(1));
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shard.shutdown_begun() => break,
                _ = collect.tick() => release_freed_memory(),
            }
        }
        acceptor.abort();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !shard.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A closed socket's last messages go to the homes of its rooms and
        // user, on other shards: every shard waits until all have closed
        // theirs, then applies what it was sent (in cluster mode, that puts
        // the last leaves and offlines on Redis before the node leaves).
        closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let shards = shard.shared.router.shard_count();
        while closed.load(std::sync::atomic::Ordering::SeqCst) < shards && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shard.catch_up();
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

/// Accepts connections until the shard shuts down.
///
/// When `accept` fails for want of descriptors (`EMFILE`, `ENFILE`), the
/// kernel keeps the connection in the backlog and the listener stays
/// readable: accepting again at once would spin. Instead the loop answers
/// what is waiting through its spare descriptor ([`refuse_at_wall`]) and
/// sleeps with a bounded exponential back-off (5 ms → 500 ms) before the
/// next `accept`; the first one that succeeds ends the episode.
async fn accept_loop(shard: Rc<Shard>, services: Arc<Services>, listener: TcpListener) {
    hold_spare(&mut lock_spare());
    let mut backoff = Backoff::new();
    // Connections refused since the wall was hit, `None` while off it.
    let mut at_wall: Option<u64> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.reset();
                if let Some(refused) = at_wall.take() {
                    tracing::info!(shard = shard.index, refused, "file descriptors free again: accepting connections");
                    hold_spare(&mut lock_spare());
                }
                // (TCP_NODELAY comes from the listener.)
                start_connection(&shard, &services, stream, peer);
            }
            Err(error) if limits::is_out_of_descriptors(&error) => {
                services.budget.wall_hit();
                let refused = at_wall.get_or_insert_with(|| {
                    tracing::warn!(
                        shard = shard.index,
                        %error,
                        "out of file descriptors: answering new connections with 503 and backing off; \
                         open connections are served as before"
                    );
                    0
                });
                let round = refuse_at_wall(&shard, &services, &listener);
                *refused += round.refused;
                if round.resumed {
                    backoff.reset();
                    tracing::info!(shard = shard.index, refused = *refused, "file descriptors free again: accepting connections");
                    at_wall = None;
                    continue;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Counts an accepted connection and starts serving it. Its first read is
/// made here: the listener accepts once the request has arrived
/// (`TCP_DEFER_ACCEPT`), so it usually finds it, and the usual request — a
/// new session's WebSocket upgrade — then starts the session's task at once. Anything else gets a task that
/// reads on (`serve_connection`); that task, sized for hyper's connection,
/// would be one more to allocate, schedule and free per handshake.
fn start_connection(shard: &Rc<Shard>, services: &Arc<Services>, mut stream: TcpStream, peer: SocketAddr) {
    let slot = services.budget.open_slot();
    let mut head = BytesMut::with_capacity(FIRST_READ_BYTES);
    let received = recv_now(&mut stream, &mut head);
    let Some((stream, slot)) = open_session_directly(shard, services, stream, &head, slot) else { return };
    tokio::task::spawn_local(serve_connection(shard.clone(), services.clone(), stream, peer, slot, head, received));
}

/// Starts the session of a new WebSocket upgrade whose request is all in
/// `head`, answered without hyper (see `protocol::http_upgrade`) in a task
/// of the session's own; gives the connection back if `head` holds no such
/// request (incomplete, something else, or one to refuse, which hyper's
/// path answers).
fn open_session_directly(
    shard: &Rc<Shard>,
    services: &Arc<Services>,
    stream: TcpStream,
    head: &[u8],
    slot: ConnectionSlot,
) -> Option<(TcpStream, ConnectionSlot)> {
    let Head::Upgrade(request) = http_upgrade::parse(head) else { return Some((stream, slot)) };
    let direct = |endpoint: &&Endpoint| engine_http::opens_directly(shard, endpoint, &request) && slot.admits_new_session();
    let Some(endpoint) = endpoint_for(services, request.path).filter(direct) else { return Some((stream, slot)) };
    shard.counters.http_request(route_label(request.path), 101);
    let response = request.response();
    let already_read = Bytes::copy_from_slice(&head[request.head_len..]);
    tokio::task::spawn_local(engine_http::serve_websocket(shard, endpoint, stream, already_read, response, slot));
    None
}

/// Most connections one round at the wall answers before backing off.
const WALL_ROUND_MAX: usize = 1024;

#[derive(Debug, Default)]
struct WallRound {
    /// Connections answered 503 and closed.
    refused: u64,
    /// A descriptor was free after all: the connection was kept, the wall is gone.
    resumed: bool,
}

/// At the wall: closes the spare descriptor to make room for one
/// connection, then accepts each waiting connection into it, answers it
/// (`/health` 200, else 503) and closes it, so that clients get an answer
/// rather than wait in the backlog; then takes the spare back. If the spare
/// can be reopened while a connection is held, descriptors are free again:
/// that connection is served as usual.
///
/// Shards share the descriptor table, so another shard may take the freed
/// descriptor first; this round then answers nothing and the loop backs off.
fn refuse_at_wall(
    shard: &Rc<Shard>,
    services: &Arc<Services>,
    listener: &TcpListener,
) -> WallRound {
    let mut round = WallRound::default();
    let mut spare = lock_spare();
    drop(spare.take());
    let listener_socket = socket2::SockRef::from(listener);
    for _ in 0..WALL_ROUND_MAX {
        // Non-blocking listener: WouldBlock once the backlog is empty; EMFILE
        // if the freed descriptor went elsewhere.
        let Ok((socket, peer)) = listener_socket.accept() else { break };
        hold_spare(&mut spare);
        if spare.is_some() {
            drop(spare);
            let stream = socket
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(std::net::TcpStream::from(socket)));
            if let (Ok(stream), Some(peer)) = (stream, peer.as_socket()) {
                start_connection(shard, services, stream, peer);
            }
            round.resumed = true;
            return round;
        }
        if answer_at_wall(shard, &socket) {
            round.refused += 1;
        }
    }
    hold_spare(&mut spare);
    round
}

/// The process's spare descriptor ([`refuse_at_wall`]): one for the
/// process, not one per shard. The shards share the descriptor table; with
/// a spare each, one shard's round could reopen its spare in the descriptor
/// another shard's round had just freed and take the wall for gone. With
/// their back-offs in step, both then did so every round: they flapped
/// between "out of descriptors" and "free again" in the log and served
/// connections as usual at the wall. A round holds the lock throughout (at
/// most `WALL_ROUND_MAX` non-blocking accepts and answers), so another
/// shard at the wall waits for it rather than race it. Touched only at start
/// and at the wall.
static SPARE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

fn lock_spare() -> std::sync::MutexGuard<'static, Option<std::fs::File>> {
    // Nothing panics while holding it; were it poisoned, the file is still fine.
    SPARE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the spare descriptor back if it is not held (and one is free).
fn hold_spare(spare: &mut Option<std::fs::File>) {
    if spare.is_none() {
        *spare = limits::open_spare_descriptor();
    }
}

/// Answers a connection accepted at the wall from what it has sent so far,
/// without waiting for anything; `true` if it was refused (not `/health`).
/// The request is read off first so that closing sends a FIN, not a reset
/// that could overtake the answer.
fn answer_at_wall(shard: &Shard, socket: &socket2::Socket) -> bool {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ_BYTES];
    let received = socket.recv_with_flags(&mut buf, libc::MSG_DONTWAIT).unwrap_or(0);
    // SAFETY: the kernel initialised `received` bytes.
    let request = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), received) };
    let answer = limits::wall_answer(request);
    if let Some(path) = answer.path {
        shard.counters.http_request(route_label(path), answer.status);
    }
    let refused = answer.status != 200;
    if refused {
        shard.counters.connection_refused("descriptors");
    }
    let mut rest = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ_BYTES];
    for _ in 0..4 {
        if !matches!(socket.recv_with_flags(&mut rest, libc::MSG_DONTWAIT), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = socket.send_with_flags(answer.response, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    refused
}

/// The largest request head (request line and headers) hyper accepts; past
/// it, 431 and the connection is closed. Without it hyper's only bound is its
/// read buffer (~400 KiB), checked only while a head is incomplete: a larger
/// head that happens to arrive in one read would be served (Node's own limit
/// is 16 KiB; browsers send a few KiB, cookies included).
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// What a connection's first read may take before hyper gets the connection
/// (browsers' upgrade requests, cookies included, are well under this).
const FIRST_READ_BYTES: usize = 4096;

/// Serves one accepted connection whose first read (`head`, `received`)
/// did not start a session: reads on until the request head is complete —
/// a new session's WebSocket upgrade then still opens directly
/// ([`open_session_directly`]) — and hands anything else to hyper, with the
/// bytes already read put back in front.
///
/// `slot` counts the connection as open for as long as its socket lives,
/// and decides whether it may start a new session (the connection capacity).
async fn serve_connection(
    shard: Rc<Shard>,
    services: Arc<Services>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut slot: ConnectionSlot,
    mut head: BytesMut,
    mut received: std::io::Result<usize>,
) {
    // A head trickled in a byte at a time, or never sent, ends here
    // (`REQUEST_TIMEOUT_MS`, or `SLOW_HEAD_AT_WALL` at the wall); hyper has
    // the same bound for each request after.
    let accepted = tokio::time::Instant::now();
    let mut deadline = accepted + services.config.request_timeout();
    loop {
        match received {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match http_upgrade::parse(&head) {
            Head::Incomplete if head.len() < head.capacity() => {}
            // One whose head is now whole; or one the first read held whole
            // but `start_connection` could not open, tried again (it goes to
            // hyper unless the capacity freed up meanwhile).
            Head::Upgrade(_) => match open_session_directly(&shard, &services, stream, &head, slot) {
                None => return,
                Some(not_opened) => {
                    (stream, slot) = not_opened;
                    break;
                }
            },
            _ => break,
        }
        if !head_readable(&stream, &services.budget, accepted, &mut deadline).await {
            return;
        }
        received = stream.try_read_buf(&mut head);
    }
    // A client may send its request and shut its sending side in one go
    // (`socket.end(request)`, a one-shot `nc -N`) and still wait for the
    // answer; by default hyper takes that EOF for an abort and drops the
    // request. Half-closes are therefore allowed, except on a connection
    // that opens with a request to an Engine.IO endpoint: there an EOF while
    // a long-poll GET waits is how a GET its client abandoned is noticed, so
    // that its packets go to the next GET (`PollingSession::get`). hyper
    // fixes this per connection, and Engine.IO clients keep one alive for
    // the handshake, their POSTs and their polls, so the first request
    // decides for all that follow (README "Behaviour notes").
    let half_close = http_upgrade::request_path(&head).is_some_and(|path| endpoint_for(&services, path).is_none());
    serve_http(shard, services, PrefixedStream::new(head.freeze(), stream), peer, slot, half_close).await
}

/// Waits until more of a request head can be read; `false` once `deadline`
/// has passed. Out of descriptors meanwhile (an accept loop's round at the
/// wall), the deadline comes forward to [`limits::SLOW_HEAD_AT_WALL`] after
/// the accept: a head that slow is closed to free its descriptor.
async fn head_readable(
    stream: &TcpStream,
    budget: &limits::ConnectionBudget,
    accepted: tokio::time::Instant,
    deadline: &mut tokio::time::Instant,
) -> bool {
    loop {
        let wall = budget.wall_notified();
        tokio::select! {
            readable = tokio::time::timeout_at(*deadline, stream.readable()) => return readable.is_ok(),
            () = wall => *deadline = (*deadline).min(accepted + limits::SLOW_HEAD_AT_WALL),
        }
    }
}

/// One non-blocking read into `buf`'s spare room (`WouldBlock` if nothing
/// has arrived). Made through tokio, not with a bare `recv`: tokio takes a
/// socket it has just accepted for readable, and only its own short read
/// tells it the socket is drained. After a bare `recv`, the session's first
/// read would try the socket again and fail with EAGAIN: one wasted system
/// call per handshake. Unconstrained by the task budget: a read refused for
/// the accept loop's budget would send an upgrade down the slow path.
fn recv_now(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncReadExt;
    // Polled once, with a no-op waker: whoever reads next (the session, or
    // `serve_connection`) registers its own.
    let read = std::pin::pin!(tokio::task::coop::unconstrained(stream.read_buf(buf)));
    match read.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(received) => received,
        Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
    }
}

async fn serve_http(
    shard: Rc<Shard>,
    services: Arc<Services>,
    stream: PrefixedStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    half_close: bool,
) {
    let broker = services.broker.clone();
    let request_timeout = services.config.request_timeout();
    // Dropped with the connection (or when hyper hands an upgraded one over,
    // which takes a slot of its own).
    let slot = Rc::new(slot);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (shard, services, broker, slot) = (shard.clone(), services.clone(), broker.clone(), slot.clone());
        async move {
            let label = route_label(request.uri().path());
            let _in_flight = shard.request_in_flight();
            let response = route(&shard, &services, &broker, &slot, peer, request).await;
            shard.counters.http_request(label, response.status().as_u16());
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .half_close(half_close)
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
    slot: &ConnectionSlot,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> HttpResponse {
    let path = request.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return api::handle(broker, &services.config, &services.budget, peer, request).await;
    }
    if let Some(endpoint) = endpoint_for(services, path) {
        return engine_http::handle(shard, endpoint, slot, request).await;
    }
    match path {
        "/metrics" if request.method() == Method::GET => {
            let mut response = Response::new(Full::new(Bytes::from(services.metrics.render(broker, &services.budget).await)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        // 200 while the process serves, in cluster mode too: a Redis outage
        // must not make a load balancer drain every node (README "Cluster").
        "/health" => match broker.cluster_status() {
            None => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            Some(status) => {
                let up = status.is_redis_up();
                let body = serde_json::json!({
                    "status": "ok",
                    "cluster": {
                        "node": status.node,
                        "redis": if up { "up" } else { "down" },
                        "delivery": if up { "ok" } else { "degraded" },
                        "nodes": status.nodes.load(std::sync::atomic::Ordering::Relaxed),
                    }
                });
                json_response(StatusCode::OK, body.to_string())
            }
        },
        "/ready" if shard.is_shutting_down() => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"shutting down"}"#.into())
        }
        "/ready" => json_response(StatusCode::OK, r#"{"status":"ready"}"#.into()),
        _ => json_response(StatusCode::NOT_FOUND, r#"{"error":"not found","code":"NOT_FOUND"}"#.into()),
    }
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
}
