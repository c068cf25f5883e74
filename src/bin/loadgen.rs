//! `loadgen`: a native load generator for shardcast and other Socket.IO
//! servers that implement `authenticate`, `join-room` and `custom-event`
//! (see loadtest/compare/). k6 is too heavy to reach the figures we measure.
//!
//! Scenarios (one JSON line of results on stdout):
//! - `idle`: N authenticated connections in `--rooms-per-conn` rooms; the
//!   server's RSS growth per connection (from /proc/PID/status).
//! - `handshake`: connect + CONNECT + authenticate ack, as fast as
//!   `--concurrency` loops can, for `--duration` seconds.
//! - `fanout`: N subscribers in one room, one publisher relaying
//!   `custom-event`s with its send time inside; deliveries per second,
//!   end-to-end latency percentiles, messages lost, server CPU.
//! - `acks`: N clients, each looping join-room, custom-event,
//!   private-message, leave-room over rooms of 10 for `--duration` seconds;
//!   request → ack latency percentiles per event and requests per second
//!   (what waiting for a room's or user's home shard costs a client).
//! - `capacity`: N authenticated connections opened at a steady `--rate`,
//!   each in its group of 100 (`cap-g{i/100}`) and its group of 1,000
//!   (`cap-k{i/1000}`); then server memory per connection (user space and
//!   the kernel's socket memory apart), server CPU while idle over
//!   `--idle-seconds` (heartbeats only), broadcasts to all and to a group of
//!   1,000 (latency over recipients, server CPU), and a reconnect storm
//!   (`--storm-fraction` of the clients dropped at once, reconnecting with
//!   socket.io-client's default backoff while the others must lose nothing).
//! - `cluster`: N connections spread over the nodes `--urls` names (the
//!   i-th on node i mod k), each in a room whose members are all on its node
//!   (`--local-room-size`) and in a room with members on every node
//!   (`--spread-room-size`); one publish to every room right after the joins
//!   (the warm-up), then numbered room broadcasts at `--rate` for
//!   `--duration` s (each one's room drawn at its due time; the lane owning
//!   the room sends it after the room's previous one is answered), through
//!   the HTTP API of a node (`--publish-node`) or as `custom-event` relays
//!   from a member (`--via relay`); every delivery is
//!   checked at the clients: lost, duplicated, out of order, delivered outside
//!   the room; deliveries/s, those crossing nodes, latency. The harness
//!   (loadtest/compare/cluster.py) reads the nodes and Redis around the
//!   measured phase (`--sync`).
//!
//! Single-threaded on purpose: pin it to one core with `taskset`.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use shardcast::client::Client;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Idle,
    Handshake,
    Fanout,
    Acks,
    Capacity,
    Cluster,
}

/// How the capacity scenario broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// shardcast's HTTP API (`POST /api/broadcast`, `/api/rooms/{room}/broadcast`).
    Api,
    /// A `custom-event` relay from a publisher connection (servers with no
    /// HTTP API); a broadcast to all needs `--all-room`.
    Relay,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for Socket.IO servers (shardcast, socket.io, socketioxide)")]
struct Args {
    /// Server base URL, e.g. http://127.0.0.1:3000
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Connections (idle, capacity) or subscribers (fanout).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 2)]
    rooms_per_conn: usize,
    /// Seconds of measurement (handshake, fanout).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Publishes per second, or `max` to publish as fast as acks return
    /// (fanout); handshakes per second, or `max` (handshake); connections
    /// opened per second, or `max` (capacity).
    #[arg(long, default_value = "max")]
    rate: String,
    /// Parallel handshake loops; also how many connections are opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Handshake: each client closes as socket.io-client does (its close
    /// frame, then waits for the server's answer and end of connection)
    /// rather than at once after its close frame.
    #[arg(long)]
    close_wait: bool,
    /// The server's process id, for its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bytes of filler in each published message.
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// Subscribers pause this long between reads (fanout), so that one read
    /// takes several messages: the generator then costs far fewer syscalls
    /// per delivery, at the price of up to this much added latency.
    #[arg(long, default_value_t = 0)]
    read_interval_ms: u64,
    /// Capacity: seconds of idle measurement (heartbeats only); cover at
    /// least one ping interval.
    #[arg(long, default_value_t = 30.0)]
    idle_seconds: f64,
    /// Capacity: the server's ping interval (for CPU per connection per
    /// heartbeat interval; socket.io's default is 25 s).
    #[arg(long, default_value_t = 25_000)]
    ping_interval_ms: u64,
    /// Capacity: broadcasts of each kind (to all, to a group of 1,000); the
    /// latency figures are medians over them, the server CPU their mean.
    #[arg(long, default_value_t = 5)]
    broadcasts: usize,
    /// Capacity: how to broadcast (the HTTP API, or custom-event relays).
    #[arg(long, value_enum, default_value_t = Via::Api)]
    via: Via,
    /// Capacity: every connection also joins `cap-all` (after the memory
    /// figure is taken), the room a relay "to all" goes to.
    #[arg(long)]
    all_room: bool,
    /// Capacity: share of the clients dropped at once in the reconnect storm.
    #[arg(long, default_value_t = 0.2)]
    storm_fraction: f64,
    /// Capacity: numbered relays per second to the group rooms during the storm.
    #[arg(long, default_value_t = 200.0)]
    storm_rate: f64,
    /// Capacity: reconnection backoff (socket.io-client's defaults:
    /// reconnectionDelay 1000, reconnectionDelayMax 5000, randomizationFactor 0.5).
    #[arg(long, default_value_t = 1000)]
    backoff_min_ms: u64,
    #[arg(long, default_value_t = 5000)]
    backoff_max_ms: u64,
    #[arg(long, default_value_t = 0.5)]
    backoff_jitter: f64,
    /// Capacity: give up waiting for the storm's reconnections after this long.
    #[arg(long, default_value_t = 120.0)]
    storm_timeout: f64,
    /// Capacity: a connection attempt (connect + authenticate + joins) that
    /// takes longer fails (socket.io-client's `timeout` is 20 s).
    #[arg(long, default_value_t = 20_000)]
    connect_timeout_ms: u64,
    /// Cluster: the nodes' base URLs, comma-separated (`--url` is not used).
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// Cluster: members of a room whose members are all on one node.
    #[arg(long, default_value_t = 10)]
    local_room_size: usize,
    /// Cluster: members of a room spread evenly over every node (rounded to
    /// a multiple of the node count).
    #[arg(long, default_value_t = 30)]
    spread_room_size: usize,
    /// Cluster: share of the publishes that go to one-node rooms (the rest
    /// go to rooms on every node).
    #[arg(long, default_value_t = 0.5)]
    local_share: f64,
    /// Cluster: publisher lanes; each owns a share of the rooms and publishes
    /// to them one at a time, each after the previous answer or ack.
    #[arg(long, default_value_t = 64)]
    lanes: usize,
    /// Cluster (`--via api`): which node gets each HTTP publish: `rotate`
    /// (the next node each time, as a load balancer would), `room` (always
    /// the same node for a room), or a node's index.
    #[arg(long, default_value = "rotate")]
    publish_node: String,
    /// Cluster (`--via api`): each answer's `delivered` must equal the room's
    /// members on every node (shardcast's cluster-wide count).
    #[arg(long)]
    check_delivered: bool,
    /// Cluster: pause after the last join before the warm-up publishes.
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Cluster: before the measured phase and after its drain, print
    /// `@measure` / `@drained` to stderr and wait for a line on stdin (the
    /// harness reads the nodes' counters and CPU there).
    #[arg(long)]
    sync: bool,
}

fn main() {
    let args = Args::parse();
    raise_fd_limit();
    let addr = resolve(&args.url);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        match args.scenario {
            Scenario::Idle => idle(&args, addr).await,
            Scenario::Handshake => handshake(&args, addr).await,
            Scenario::Fanout => fanout(&args, addr).await,
            Scenario::Acks => acks(&args, addr).await,
            Scenario::Capacity => capacity(&args, addr).await,
            Scenario::Cluster => cluster(&args).await,
        }
    });
    println!("{result}");
}

fn resolve(url: &str) -> SocketAddr {
    let host = url.trim_start_matches("http://").trim_start_matches("ws://").trim_end_matches('/');
    host.to_socket_addrs().ok().and_then(|mut a| a.next()).unwrap_or_else(|| panic!("cannot resolve {host}"))
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// CPU time (user + system, in seconds) and resident memory (KiB) of a process.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some((ticks as f64 / per_second, rss))
}

async fn connect_user(addr: SocketAddr, user: &str) -> std::io::Result<Client> {
    let mut client = Client::connect(addr, None).await?;
    let ack = client.request("authenticate", &json!({ "userId": user })).await?;
    if ack["success"] != true {
        return Err(std::io::Error::other(format!("authenticate refused: {ack}")));
    }
    Ok(client)
}

/// Opens `n` authenticated connections, `concurrency` at a time, each joined
/// to the rooms `rooms(i)` names.
async fn open_many(addr: SocketAddr, n: usize, concurrency: usize, rooms: impl Fn(usize) -> Vec<String>) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + concurrency).min(n))
            .map(|i| {
                let rooms = rooms(i);
                async move {
                    let mut client = connect_user(addr, &format!("load-{i}")).await?;
                    for room in rooms {
                        client.request("join-room", &json!({ "roomName": room })).await?;
                    }
                    Ok::<_, std::io::Error>(client)
                }
            })
            .collect();
        next += batch.len();
        for result in futures_join_all(batch).await {
            clients.push(result.unwrap_or_else(|e| panic!("connection failed: {e}")));
        }
    }
    clients
}

/// Awaits every future (they make progress concurrently on this thread).
async fn futures_join_all<F: std::future::Future + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task did not panic"));
    }
    out
}

async fn idle(args: &Args, addr: SocketAddr) -> Value {
    let before = args.server_pid.and_then(process_usage);
    let per_conn = args.rooms_per_conn;
    let clients = open_many(addr, args.connections, args.concurrency, |i| {
        (0..per_conn).map(|r| format!("idle-{r}-{}", i % 100)).collect()
    })
    .await;
    // Keep answering heartbeats while the server settles.
    let alive = Rc::new(Cell::new(clients.len()));
    for mut client in clients {
        let alive = alive.clone();
        tokio::task::spawn_local(async move {
            if client.next_packet().await.is_err() {
                alive.set(alive.get() - 1);
            }
            loop {
                if client.next_packet().await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = args.server_pid.and_then(process_usage);
    let mut out = json!({ "scenario": "idle", "connections": args.connections, "rooms_per_conn": per_conn });
    if let (Some((_, rss0)), Some((_, rss1))) = (before, after) {
        out["server_rss_kib"] = json!(rss1);
        out["rss_per_connection_kib"] = json!((rss1 as f64 - rss0 as f64) / args.connections as f64);
    }
    out
}

async fn handshake(args: &Args, addr: SocketAddr) -> Value {
    let done = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let before = args.server_pid.and_then(process_usage);
    let started = Instant::now();
    // At a fixed rate, handshake n starts at n / rate seconds (if a loop is free).
    let rate: Option<f64> = args.rate.parse().ok();
    let issued = Rc::new(Cell::new(0u64));
    let close_wait = args.close_wait;
    let loops: Vec<_> = (0..args.concurrency)
        .map(|l| {
            let (done, failed, issued) = (done.clone(), failed.clone(), issued.clone());
            async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    if let Some(rate) = rate {
                        let n = issued.get();
                        issued.set(n + 1);
                        tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / rate)).into()).await;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    i += 1;
                    match connect_user(addr, &format!("hs-{l}-{i}")).await {
                        Ok(client) => {
                            done.set(done.get() + 1);
                            let _ = if close_wait { client.close_and_wait().await } else { client.close().await };
                        }
                        Err(_) => failed.set(failed.get() + 1),
                    }
                }
            }
        })
        .collect();
    futures_join_all(loops).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut out = json!({
        "scenario": "handshake",
        "rate": args.rate,
        "concurrency": args.concurrency,
        "close_wait": args.close_wait,
        "handshakes": done.get(),
        "failed": failed.get(),
        "handshakes_per_sec": done.get() as f64 / elapsed,
    });
    add_cpu(&mut out, args.server_pid, before, elapsed);
    if let (Some(cpu), true) = (out["server_cpu_percent"].as_f64(), done.get() > 0) {
        out["server_cpu_us_per_handshake"] = json!(cpu / 100.0 * elapsed * 1e6 / done.get() as f64);
    }
    out
}

fn add_cpu(out: &mut Value, pid: Option<u32>, before: Option<(f64, u64)>, elapsed: f64) {
    if let (Some((cpu0, _)), Some((cpu1, rss))) = (before, pid.and_then(process_usage)) {
        out["server_cpu_percent"] = json!((cpu1 - cpu0) / elapsed * 100.0);
        out["server_cpu_seconds"] = json!(cpu1 - cpu0);
        out["server_rss_kib"] = json!(rss);
    }
}

/// Microseconds since the run's start: publisher and subscribers share the clock.
fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// `…"t":T…` → T, without a JSON parser or an allocation (the hot path).
fn sent_at(packet: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"t\":";
    let at = packet.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut value = 0u64;
    let mut digits = 0;
    for &b in &packet[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        value = value * 10 + (b - b'0') as u64;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

async fn fanout(args: &Args, addr: SocketAddr) -> Value {
    let room = format!("fanout-{}", std::process::id());
    let subscribers = open_many(addr, args.connections, args.concurrency, |_| vec![room.clone()]).await;
    let mut publisher = connect_user(addr, "publisher").await.expect("publisher connects");
    publisher.request("join-room", &json!({ "roomName": room })).await.expect("publisher joins");

    let start = Instant::now();
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let received = Rc::new(Cell::new(0u64));
    let last_receipt = Rc::new(Cell::new(0u64));
    let read_interval = Duration::from_millis(args.read_interval_ms);
    for mut client in subscribers {
        let (histogram, received, last_receipt) = (histogram.clone(), received.clone(), last_receipt.clone());
        tokio::task::spawn_local(async move {
            loop {
                if !read_interval.is_zero() {
                    tokio::time::sleep(read_interval).await;
                }
                let result = client
                    .read_batch(|packet| {
                        if !packet.starts_with(b"42[\"bench\"") {
                            return;
                        }
                        if let Some(sent) = sent_at(packet) {
                            let now = micros_since(start);
                            let _ = histogram.borrow_mut().record(now.saturating_sub(sent).max(1));
                            received.set(received.get() + 1);
                            last_receipt.set(now);
                        }
                    })
                    .await;
                if result.is_err() {
                    break;
                }
            }
        });
    }

    let filler = "x".repeat(args.payload_bytes);
    let rate: Option<f64> = args.rate.parse().ok();
    let before = args.server_pid.and_then(process_usage);
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut published = 0u64;
    let mut next_at = Instant::now();
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            tokio::time::sleep_until(next_at.into()).await;
            next_at += Duration::from_secs_f64(1.0 / rate);
        }
        let data = json!({ "seq": published, "t": micros_since(start), "filler": filler });
        let relay = json!({ "event": "bench", "data": data, "roomName": room });
        if rate.is_some() {
            publisher.emit("custom-event", &relay).await.expect("publish");
        } else {
            publisher.request("custom-event", &relay).await.expect("publish");
        }
        published += 1;
    }
    let publish_elapsed = start.elapsed().as_secs_f64();
    add_drain_wait(&received, published * args.connections as u64).await;
    let elapsed = start.elapsed().as_secs_f64();
    // Deliveries per second over the time they actually took to arrive.
    let delivering = (last_receipt.get() as f64 / 1e6).max(1e-9);
    let expected = published * args.connections as u64;
    let histogram = histogram.borrow();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let mut out = json!({
        "scenario": "fanout",
        "connections": args.connections,
        "rate": args.rate,
        "publishes": published,
        "publishes_per_sec": published as f64 / publish_elapsed,
        "deliveries": received.get(),
        "deliveries_per_sec": received.get() as f64 / delivering,
        "lost": expected.saturating_sub(received.get()),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": histogram.max() as f64 / 1000.0,
        "read_interval_ms": args.read_interval_ms,
    });
    add_cpu(&mut out, args.server_pid, before, elapsed);
    out
}

/// Waits (up to 5 s after the last publish) for deliveries to stop arriving.
async fn add_drain_wait(received: &Cell<u64>, expected: u64) {
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut last = received.get();
    let mut quiet_since = Instant::now();
    while received.get() < expected && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if received.get() != last {
            last = received.get();
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
}

async fn acks(args: &Args, addr: SocketAddr) -> Value {
    const EVENTS: [&str; 4] = ["join-room", "custom-event", "private-message", "leave-room"];
    let clients = open_many(addr, args.connections, args.concurrency, |_| Vec::new()).await;
    let histograms: Rc<Vec<RefCell<Histogram<u64>>>> = Rc::new(
        EVENTS.iter().map(|_| RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))).collect(),
    );
    let before = args.server_pid.and_then(process_usage);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let count = args.connections;
    let loops: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let histograms = histograms.clone();
            async move {
                let room = format!("acks-{}", i / 10);
                let peer = format!("load-{}", (i + 1) % count);
                let requests = [
                    json!({ "roomName": room }),
                    json!({ "roomName": room, "event": "note", "data": { "from": i } }),
                    json!({ "targetUserId": peer, "message": "hi" }),
                    json!({ "roomName": room }),
                ];
                while Instant::now() < deadline {
                    for (e, (event, data)) in EVENTS.iter().zip(&requests).enumerate() {
                        let sent = Instant::now();
                        let ack = client.request(event, data).await.expect("request");
                        assert_eq!(ack["success"], true, "{event} failed: {ack}");
                        let _ = histograms[e].borrow_mut().record(sent.elapsed().as_micros().max(1) as u64);
                    }
                }
                // Kept open until every loop is done: a peer's last message may still be on its way.
                client
            }
        })
        .collect();
    let _clients = futures_join_all(loops).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = histograms.iter().map(|h| h.borrow().len()).sum();
    let mut out = json!({
        "scenario": "acks",
        "connections": count,
        "requests": total,
        "requests_per_sec": total as f64 / elapsed,
    });
    for (event, histogram) in EVENTS.iter().zip(histograms.iter()) {
        let h = histogram.borrow();
        out[event] = json!({
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99),
            "max_us": h.max(),
        });
    }
    add_cpu(&mut out, args.server_pid, before, elapsed);
    out
}

// ---- capacity -----------------------------------------------------------------------

/// Members of each connection's small group room (`cap-g{i/100}`) and large
/// one (`cap-k{i/1000}`).
const GROUP_SMALL: usize = 100;
const GROUP_LARGE: usize = 1000;
/// Phases the driver announces to every connection task.
const PHASE_JOIN_ALL: u8 = 1;
const PHASE_STORM: u8 = 2;

fn cap_rooms(i: usize, all_room: bool) -> Vec<String> {
    let mut rooms = vec![format!("cap-g{}", i / GROUP_SMALL), format!("cap-k{}", i / GROUP_LARGE)];
    if all_room {
        rooms.push("cap-all".to_string());
    }
    rooms
}

/// CPU time of every thread of a process in nanoseconds (the sum of
/// /proc/PID/task/*/schedstat: the clock `loopback_floor` reads for its
/// writer thread). Threads that exited are not in it: for short windows.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// TCP sockets in use and the kernel's TCP memory in KiB (`/proc/net/sockstat`:
/// `mem` is in pages), machine-wide.
fn sockstat_tcp() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)?.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some((field("inuse")?, field("mem")? * page / 1024))
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The unsigned integer after `key` in `packet` (`"b":12` → 12).
fn num_after(packet: &[u8], key: &[u8]) -> Option<u64> {
    let at = packet.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = packet[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&packet[at..at + digits]).ok()?.parse().ok()
}

/// socket.io-client's reconnection delay before attempt `attempt` (its
/// `Backoff.duration()`): min·2^attempt, moved by up to ±jitter of itself
/// (down when ⌊rand·10⌋ is even), then capped at max.
fn backoff_delay(attempt: u32, min_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let mut ms = min_ms as f64 * 2f64.powi(attempt.min(40) as i32);
    if jitter > 0.0 {
        let rand = fastrand::f64();
        let deviation = (rand * jitter * ms).floor();
        ms = if ((rand * 10.0).floor() as u64) & 1 == 0 { ms - deviation } else { ms + deviation };
    }
    Duration::from_millis(ms.min(max_ms as f64) as u64)
}

/// Connects, authenticates as `user` and joins `rooms`, each with its ack.
async fn join_user(addr: SocketAddr, user: &str, rooms: &[String]) -> std::io::Result<Client> {
    let mut client = connect_user(addr, user).await?;
    for room in rooms {
        let ack = client.request("join-room", &json!({ "roomName": room })).await?;
        if ack["success"] != true {
            return Err(std::io::Error::other(format!("join-room refused: {ack}")));
        }
    }
    Ok(client)
}

/// What one connection's task and the driver share about it.
#[derive(Default)]
struct CapConn {
    connected: Cell<bool>,
    alive: Cell<bool>,
    /// Dropped in the storm (the others are checked for losses).
    dropper: Cell<bool>,
    connect_us: Cell<u64>,
    /// The broadcast id last received (duplicates count as strays).
    last_broadcast: Cell<u64>,
    /// Storm relays: the next number expected, numbers skipped, numbers
    /// seen again or out of order.
    next_seq: Cell<u64>,
    missing: Cell<u64>,
    disorder: Cell<u64>,
    /// Storm: microseconds after the run's start when it was back.
    back_us: Cell<u64>,
}

#[derive(Clone, Copy)]
struct CapOpts {
    addr: SocketAddr,
    all_room: bool,
    connect_timeout: Duration,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    backoff_jitter: f64,
}

struct Cap {
    start: Instant,
    conns: Vec<CapConn>,
    /// Connection attempts in flight at most (`--concurrency`).
    gate: tokio::sync::Semaphore,
    /// Something a waiting driver may want to re-check happened.
    progress: tokio::sync::Notify,
    settled: Cell<usize>,
    errors: RefCell<Vec<String>>,
    error_count: Cell<u64>,
    joined_all: Cell<usize>,
    join_all_failed: Cell<usize>,
    broadcast_id: Cell<u64>,
    broadcast_expected: Cell<usize>,
    latencies: RefCell<Vec<u64>>,
    strays: Cell<u64>,
    storm_checking: Cell<bool>,
    storm_sent: RefCell<Vec<u64>>,
    back: Cell<usize>,
    reconnect_attempts: Cell<u64>,
    reconnect_failures: Cell<u64>,
    unexpected_disconnects: Cell<u64>,
    staying_disconnected: Cell<u64>,
}

impl Cap {
    fn note_error(&self, what: String) {
        self.error_count.set(self.error_count.get() + 1);
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 5 {
            errors.push(what);
        }
    }

    fn alive(&self, range: std::ops::Range<usize>) -> usize {
        self.conns[range].iter().filter(|c| c.alive.get()).count()
    }

    /// Waits until `done()` holds or `limit` passes; true if it holds.
    async fn wait_for(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), self.progress.notified()).await;
        }
        true
    }

    /// A text packet for connection `i` (its reads; pings are answered before).
    fn packet(&self, i: usize, packet: &[u8]) {
        let conn = &self.conns[i];
        if packet.starts_with(b"42[\"cap-b\"") {
            match (num_after(packet, b"\"b\":"), num_after(packet, b"\"t\":")) {
                (Some(b), Some(t)) if b == self.broadcast_id.get() && conn.last_broadcast.get() != b => {
                    conn.last_broadcast.set(b);
                    let mut latencies = self.latencies.borrow_mut();
                    latencies.push(micros_since(self.start).saturating_sub(t));
                    if latencies.len() >= self.broadcast_expected.get() {
                        self.progress.notify_one();
                    }
                }
                _ => self.strays.set(self.strays.get() + 1),
            }
        } else if packet.starts_with(b"42[\"cap-s\"") && self.storm_checking.get() && !conn.dropper.get() {
            if let Some(s) = num_after(packet, b"\"s\":") {
                let next = conn.next_seq.get();
                if s == next {
                    conn.next_seq.set(next + 1);
                } else if s > next {
                    conn.missing.set(conn.missing.get() + (s - next));
                    conn.next_seq.set(s + 1);
                } else {
                    conn.disorder.set(conn.disorder.get() + 1);
                }
            }
        }
    }
}

/// One connection for the whole run: connect, then read (answering pings)
/// and follow the driver's phases; a dropper reconnects in the storm.
async fn cap_conn(i: usize, cap: Rc<Cap>, opts: CapOpts, mut phase: tokio::sync::watch::Receiver<u8>) {
    let conn = &cap.conns[i];
    let user = format!("cap-{i}");
    let permit = cap.gate.acquire().await.expect("gate open");
    let t0 = Instant::now();
    let attempt = tokio::time::timeout(opts.connect_timeout, join_user(opts.addr, &user, &cap_rooms(i, false))).await;
    drop(permit);
    let mut client = match attempt {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            cap.note_error(format!("connect {i}: {e}"));
            cap.settled.set(cap.settled.get() + 1);
            cap.progress.notify_one();
            return;
        }
        Err(_) => {
            cap.note_error(format!("connect {i}: timed out after {:?}", opts.connect_timeout));
            cap.settled.set(cap.settled.get() + 1);
            cap.progress.notify_one();
            return;
        }
    };
    conn.connect_us.set(t0.elapsed().as_micros() as u64);
    conn.connected.set(true);
    conn.alive.set(true);
    cap.settled.set(cap.settled.get() + 1);
    cap.progress.notify_one();
    let mut seen = 0u8;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *phase.borrow_and_update();
                while seen < now {
                    seen += 1;
                    if seen == PHASE_JOIN_ALL && opts.all_room {
                        // Keep reading (and answering pings) while waiting for a
                        // turn: a client that stops reading for seconds is one
                        // the server rightly drops for its heartbeat. A read
                        // error is left for the loop's read branch to see again.
                        let _permit = loop {
                            tokio::select! {
                                permit = cap.gate.acquire() => break permit.expect("gate open"),
                                read = client.read_batch(|packet| cap.packet(i, packet)) => {
                                    if read.is_err() {
                                        break cap.gate.acquire().await.expect("gate open");
                                    }
                                }
                            }
                        };
                        match client.request("join-room", &json!({ "roomName": "cap-all" })).await {
                            Ok(ack) if ack["success"] == true => cap.joined_all.set(cap.joined_all.get() + 1),
                            other => {
                                cap.note_error(format!("join cap-all {i}: {other:?}"));
                                cap.join_all_failed.set(cap.join_all_failed.get() + 1);
                            }
                        }
                        cap.progress.notify_one();
                    } else if seen == PHASE_STORM && conn.dropper.get() {
                        // Abrupt: no close frame, no Socket.IO DISCONNECT.
                        drop(client);
                        conn.alive.set(false);
                        client = reconnect(i, &cap, opts).await;
                        conn.alive.set(true);
                        conn.back_us.set(micros_since(cap.start).max(1));
                        cap.back.set(cap.back.get() + 1);
                        cap.progress.notify_one();
                    }
                }
            }
            read = client.read_batch(|packet| cap.packet(i, packet)) => {
                if let Err(e) = read {
                    conn.alive.set(false);
                    cap.unexpected_disconnects.set(cap.unexpected_disconnects.get() + 1);
                    if cap.storm_checking.get() && !conn.dropper.get() {
                        cap.staying_disconnected.set(cap.staying_disconnected.get() + 1);
                    }
                    cap.note_error(format!("connection {i} lost: {e}"));
                    cap.progress.notify_one();
                    return;
                }
            }
        }
    }
}

/// socket.io-client's reconnection: wait the backoff delay, try (connect,
/// authenticate, join the rooms again), and again with the next delay.
async fn reconnect(i: usize, cap: &Cap, opts: CapOpts) -> Client {
    let user = format!("cap-{i}");
    let rooms = cap_rooms(i, opts.all_room);
    let mut attempt = 0;
    loop {
        tokio::time::sleep(backoff_delay(attempt, opts.backoff_min_ms, opts.backoff_max_ms, opts.backoff_jitter)).await;
        attempt += 1;
        cap.reconnect_attempts.set(cap.reconnect_attempts.get() + 1);
        match tokio::time::timeout(opts.connect_timeout, join_user(opts.addr, &user, &rooms)).await {
            Ok(Ok(client)) => return client,
            Ok(Err(e)) => cap.note_error(format!("reconnect {i}: {e}")),
            Err(_) => cap.note_error(format!("reconnect {i}: timed out")),
        }
        cap.reconnect_failures.set(cap.reconnect_failures.get() + 1);
    }
}

/// A minimal HTTP/1.1 client for the broker's API (keep-alive, reopened when
/// the server has closed it).
struct Http {
    addr: SocketAddr,
    stream: Option<tokio::net::TcpStream>,
}

impl Http {
    async fn post(&mut self, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
        use tokio::io::AsyncWriteExt;
        if let Some(stream) = &self.stream {
            // A closed keep-alive connection reads as EOF; an open one would block.
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => self.stream = None,
            }
        }
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if let Err(e) = read_more(stream, &mut buf).await {
                self.stream = None;
                return Err(e);
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| std::io::Error::other("HTTP answer without Content-Length"))?;
        while buf.len() < head_end + length {
            if let Err(e) = read_more(stream, &mut buf).await {
                self.stream = None;
                return Err(e);
            }
        }
        let value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

/// Who sends broadcasts and storm relays: the HTTP API, or a publisher
/// connection relaying `custom-event`s (member of every room it relays to).
enum Sender {
    Api(Http),
    Relay(Client),
}

impl Sender {
    /// Sends `data` as event `event` to `room` (None: to all). Ok(delivered
    /// count, when the API tells it).
    async fn send(&mut self, room: Option<&str>, event: &str, data: Value) -> Result<Option<u64>, String> {
        match self {
            Sender::Api(http) => {
                let path = match room {
                    Some(room) => format!("/api/rooms/{room}/broadcast"),
                    None => "/api/broadcast".to_string(),
                };
                match http.post(&path, &json!({ "event": event, "data": data })).await {
                    Ok((200, answer)) => Ok(answer["delivered"].as_u64()),
                    Ok((status, answer)) => Err(format!("POST {path}: {status} {answer}")),
                    Err(e) => Err(format!("POST {path}: {e}")),
                }
            }
            Sender::Relay(client) => {
                let room = room.unwrap_or("cap-all");
                let relay = json!({ "event": event, "data": data, "roomName": room });
                match client.request("custom-event", &relay).await {
                    Ok(ack) if ack["success"] == true => Ok(None),
                    Ok(ack) => Err(format!("custom-event to {room}: {ack}")),
                    Err(e) => Err(format!("custom-event to {room}: {e}")),
                }
            }
        }
    }
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let at = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[at] as f64 / 1000.0)
}

fn mean_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn median_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// One broadcast: send, wait until every target has it (or a time limit),
/// latency over recipients and the server's CPU from send to the last receipt.
async fn cap_broadcast(cap: &Cap, sender: &mut Sender, id: u64, room: Option<&str>, targets: usize, pid: Option<u32>) -> Value {
    let expected = cap.alive(0..targets);
    cap.latencies.borrow_mut().clear();
    cap.broadcast_expected.set(expected);
    cap.broadcast_id.set(id);
    let cpu0 = pid.and_then(process_cpu_ns);
    let sent = micros_since(cap.start);
    let result = sender.send(room, "cap-b", json!({ "b": id, "t": sent })).await;
    let limit = Duration::from_secs_f64(10.0 + targets as f64 / 1000.0);
    cap.wait_for(limit, || cap.latencies.borrow().len() >= expected).await;
    let cpu1 = pid.and_then(process_cpu_ns);
    cap.broadcast_id.set(u64::MAX);
    let mut latencies = std::mem::take(&mut *cap.latencies.borrow_mut());
    latencies.sort_unstable();
    let mut out = json!({
        "recipients": expected,
        "received": latencies.len(),
        "missing": expected.saturating_sub(latencies.len()),
        "p50_ms": percentile_ms(&latencies, 0.5),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "max_ms": percentile_ms(&latencies, 1.0),
    });
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        out["server_cpu_ms"] = json!(b.saturating_sub(a) as f64 / 1e6);
    }
    match result {
        Ok(Some(delivered)) => out["api_delivered"] = json!(delivered),
        Ok(None) => {}
        Err(e) => out["error"] = json!(e),
    }
    out
}

/// The storm's publisher: numbered relays to every group room in turn, at
/// `rate` per second, until `stop`. Returns (relays sent, errors, seconds).
async fn storm_publisher(cap: Rc<Cap>, mut sender: Sender, rate: f64, stop: Rc<Cell<bool>>) -> (Sender, u64, u64, f64) {
    let groups = cap.storm_sent.borrow().len();
    let started = Instant::now();
    let mut next_at = Instant::now();
    let (mut sent, mut errors, mut g) = (0u64, 0u64, 0usize);
    while !stop.get() {
        tokio::time::sleep_until(next_at.into()).await;
        next_at += Duration::from_secs_f64(1.0 / rate);
        let seq = cap.storm_sent.borrow()[g];
        // The number is used whatever the answer: a failed relay that still
        // arrived must not be counted as a duplicate of the next one.
        cap.storm_sent.borrow_mut()[g] = seq + 1;
        let room = format!("cap-g{g}");
        if let Err(e) = sender.send(Some(&room), "cap-s", json!({ "g": g, "s": seq })).await {
            errors += 1;
            cap.note_error(format!("storm relay: {e}"));
        }
        sent += 1;
        g = (g + 1) % groups;
    }
    (sender, sent, errors, started.elapsed().as_secs_f64())
}

async fn capacity(args: &Args, addr: SocketAddr) -> Value {
    let n = args.connections;
    let pid = args.server_pid;
    let opts = CapOpts {
        addr,
        all_room: args.all_room,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        backoff_min_ms: args.backoff_min_ms,
        backoff_max_ms: args.backoff_max_ms,
        backoff_jitter: args.backoff_jitter,
    };
    let cap = Rc::new(Cap {
        start: Instant::now(),
        conns: (0..n).map(|_| CapConn::default()).collect(),
        gate: tokio::sync::Semaphore::new(args.concurrency.max(1)),
        progress: tokio::sync::Notify::new(),
        settled: Cell::new(0),
        errors: RefCell::new(Vec::new()),
        error_count: Cell::new(0),
        joined_all: Cell::new(0),
        join_all_failed: Cell::new(0),
        broadcast_id: Cell::new(u64::MAX),
        broadcast_expected: Cell::new(0),
        latencies: RefCell::new(Vec::new()),
        strays: Cell::new(0),
        storm_checking: Cell::new(false),
        storm_sent: RefCell::new(Vec::new()),
        back: Cell::new(0),
        reconnect_attempts: Cell::new(0),
        reconnect_failures: Cell::new(0),
        unexpected_disconnects: Cell::new(0),
        staying_disconnected: Cell::new(0),
    });
    // The storm drops every connection where ⌊i·f⌋ steps (f = 0.2: every fifth).
    let f = args.storm_fraction.clamp(0.0, 1.0);
    for (i, conn) in cap.conns.iter().enumerate() {
        conn.dropper.set(((i + 1) as f64 * f).floor() > (i as f64 * f).floor());
    }
    let mut problems: Vec<String> = Vec::new();
    let mut out = json!({
        "scenario": "capacity",
        "connections": n,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "via": format!("{:?}", args.via).to_lowercase(),
        "all_room": args.all_room,
        "rooms_per_conn": 2,
        "ping_interval_ms": args.ping_interval_ms,
    });

    // -- connect at a steady rate ---------------------------------------------------
    let rss0 = pid.and_then(process_usage).map(|(_, rss)| rss);
    let sock0 = sockstat_tcp();
    let slab0 = meminfo_kib("Slab:");
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);
    let rate: Option<f64> = args.rate.parse().ok();
    let t_connect = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            tokio::time::sleep_until((t_connect + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        tokio::task::spawn_local(cap_conn(i, cap.clone(), opts, phase_rx.clone()));
    }
    cap.wait_for(Duration::from_secs(3600), || cap.settled.get() >= n).await;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let mut connect_us: Vec<u64> =
        cap.conns.iter().filter(|c| c.connected.get()).map(|c| c.connect_us.get()).collect();
    connect_us.sort_unstable();
    let connected = connect_us.len();
    out["connected"] = json!(connected);
    out["connect_failed"] = json!(n - connected);
    out["connect_seconds"] = json!(connect_secs);
    out["connect_rate"] = json!(connected as f64 / connect_secs.max(1e-9));
    out["connect_ms_p50"] = json!(percentile_ms(&connect_us, 0.5));
    out["connect_ms_p99"] = json!(percentile_ms(&connect_us, 0.99));
    out["connect_ms_max"] = json!(percentile_ms(&connect_us, 1.0));
    if connected < n {
        problems.push(format!("{} of {n} connections failed", n - connected));
    }

    // -- memory: user space (RSS) and the kernel's (sockstat, slab) ----------------
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = pid.and_then(process_usage).map(|(_, rss)| rss);
    let sock1 = sockstat_tcp();
    let slab1 = meminfo_kib("Slab:");
    let per_conn = |before: u64, after: u64, unit: f64| (after as f64 - before as f64) * unit / connected.max(1) as f64;
    if let (Some(a), Some(b)) = (rss0, rss1) {
        out["server_rss_kib_before"] = json!(a);
        out["server_rss_kib"] = json!(b);
        out["rss_per_connection_kib"] = json!(per_conn(a, b, 1.0));
    }
    // Machine-wide, so both ends of every loopback connection (the load
    // generator's sockets too) and whatever else runs meanwhile.
    if let (Some((inuse0, mem0)), Some((inuse1, mem1))) = (sock0, sock1) {
        out["tcp_inuse_before"] = json!(inuse0);
        out["tcp_inuse_after"] = json!(inuse1);
        out["kernel_tcp_mem_kib_before"] = json!(mem0);
        out["kernel_tcp_mem_kib_after"] = json!(mem1);
        out["kernel_tcp_mem_bytes_per_connection"] = json!(per_conn(mem0, mem1, 1024.0));
    }
    if let (Some(a), Some(b)) = (slab0, slab1) {
        out["kernel_slab_kib_before"] = json!(a);
        out["kernel_slab_kib_after"] = json!(b);
        out["kernel_slab_bytes_per_connection"] = json!(per_conn(a, b, 1024.0));
    }
    if args.all_room {
        let alive = cap.alive(0..n);
        phase_tx.send_replace(PHASE_JOIN_ALL);
        let joined = cap
            .wait_for(Duration::from_secs(120), || cap.joined_all.get() + cap.join_all_failed.get() >= alive)
            .await;
        if !joined || cap.join_all_failed.get() > 0 {
            problems.push(format!("{} of {alive} did not join cap-all", alive - cap.joined_all.get()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let (Some(a), Some((_, b))) = (rss0, pid.and_then(process_usage)) {
            out["server_rss_kib_all_room"] = json!(b);
            out["rss_per_connection_kib_all_room"] = json!(per_conn(a, b, 1.0));
        }
    }

    // -- idle: heartbeats only ------------------------------------------------------
    let lost_before = cap.unexpected_disconnects.get();
    let alive = cap.alive(0..n);
    // CPU from the threads' schedstat (ns; /proc/PID/stat counts 10 ms
    // ticks), and from /proc/PID/stat beside it, which also keeps the time of
    // threads that exit meanwhile.
    let idle0 = pid.and_then(process_usage);
    let idle0_ns = pid.and_then(process_cpu_ns);
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    let idle_secs = t_idle.elapsed().as_secs_f64();
    let idle1_ns = pid.and_then(process_cpu_ns);
    out["idle_seconds"] = json!(idle_secs);
    if let (Some((c0, _)), Some((c1, _))) = (idle0, pid.and_then(process_usage)) {
        out["idle_server_cpu_percent_stat"] = json!((c1 - c0) / idle_secs * 100.0);
    }
    if let (Some(a), Some(b)) = (idle0_ns, idle1_ns) {
        let cpu = b.saturating_sub(a) as f64 / 1e9;
        out["idle_server_cpu_percent"] = json!(cpu / idle_secs * 100.0);
        let intervals = idle_secs * 1000.0 / args.ping_interval_ms as f64;
        out["idle_server_cpu_us_per_conn_per_interval"] = json!(cpu * 1e6 / intervals / alive.max(1) as f64);
    }
    out["idle_disconnected"] = json!(cap.unexpected_disconnects.get() - lost_before);
    if idle_secs * 1000.0 < args.ping_interval_ms as f64 {
        out["idle_note"] = json!("the idle window is shorter than the ping interval: not every connection was pinged");
    }

    // -- broadcasts: to all, to a group of 1,000 --------------------------------------
    let groups = n.div_ceil(GROUP_SMALL);
    let mut sender = match args.via {
        Via::Api => Sender::Api(Http { addr, stream: None }),
        Via::Relay => {
            // Member of every room it relays to (shardcast refuses a relay
            // to a room the sender is not in; the others do not care).
            let mut rooms: Vec<String> = (0..groups).map(|g| format!("cap-g{g}")).collect();
            rooms.push("cap-k0".into());
            if args.all_room {
                rooms.push("cap-all".into());
            }
            match tokio::time::timeout(Duration::from_secs(60), join_user(addr, "cap-publisher", &rooms)).await {
                Ok(Ok(client)) => Sender::Relay(client),
                other => {
                    problems.push(format!("the publisher could not connect: {:?}", other.map(|r| r.err())));
                    out["problems"] = json!(problems);
                    out["ok"] = json!(false);
                    return out;
                }
            }
        }
    };
    let can_all = args.via == Via::Api || args.all_room;
    if !can_all {
        problems.push("no broadcast to all: --via relay needs --all-room".into());
    }
    let group = n.min(GROUP_LARGE);
    let (mut all_runs, mut group_runs) = (Vec::new(), Vec::new());
    let mut id = 1; // 0 is what no connection has received yet
    for _ in 0..args.broadcasts {
        if can_all {
            all_runs.push(cap_broadcast(&cap, &mut sender, id, None, n, pid).await);
            id += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        group_runs.push(cap_broadcast(&cap, &mut sender, id, Some("cap-k0"), group, pid).await);
        id += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    out["group_size"] = json!(group);
    for (name, runs) in [("all", &all_runs), ("group", &group_runs)] {
        if runs.is_empty() {
            continue;
        }
        let field = |key: &str| median_of(runs.iter().map(|r: &Value| r[key].as_f64()));
        out[format!("bcast_{name}_recipients")] = json!(runs[0]["recipients"]);
        for key in ["p50_ms", "p99_ms", "max_ms"] {
            out[format!("bcast_{name}_{key}")] = json!(field(key));
        }
        // CPU is a cost: the mean over the broadcasts, as the floor it is
        // compared with (`examples/loopback_floor`) reports its rounds.
        out[format!("bcast_{name}_server_cpu_ms")] = json!(mean_of(runs.iter().map(|r: &Value| r["server_cpu_ms"].as_f64())));
        let missing: u64 = runs.iter().map(|r| r["missing"].as_u64().unwrap_or(0)).sum();
        out[format!("bcast_{name}_missing")] = json!(missing);
        out[format!("bcast_{name}_runs")] = json!(runs);
        if missing > 0 {
            problems.push(format!("broadcasts to {name}: {missing} deliveries missing"));
        }
        if let Some(e) = runs.iter().find_map(|r| r["error"].as_str()) {
            problems.push(format!("broadcast to {name} failed: {e}"));
        }
    }
    out["bcast_strays"] = json!(cap.strays.get());

    // -- reconnect storm ---------------------------------------------------------------
    let droppers = cap.conns.iter().filter(|c| c.dropper.get() && c.alive.get()).count();
    if droppers > 0 {
        *cap.storm_sent.borrow_mut() = vec![0; groups];
        cap.storm_checking.set(true);
        let stop = Rc::new(Cell::new(false));
        let publisher = tokio::task::spawn_local(storm_publisher(cap.clone(), sender, args.storm_rate, stop.clone()));
        // A second of relays before the drop: everyone's sequences are under way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let staying = cap.conns.iter().filter(|c| !c.dropper.get() && c.alive.get()).count();
        let cpu0 = pid.and_then(process_usage);
        let drop_us = micros_since(cap.start);
        phase_tx.send_replace(PHASE_STORM);
        let all_back = cap.wait_for(Duration::from_secs_f64(args.storm_timeout), || cap.back.get() >= droppers).await;
        let back_secs = (micros_since(cap.start) - drop_us) as f64 / 1e6;
        let cpu1 = pid.and_then(process_usage);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.set(true);
        let (_sender, relays, publish_errors, publish_secs) = publisher.await.expect("publisher");
        // Let the last relays arrive: until every staying client has every number.
        let complete = || {
            let sent = cap.storm_sent.borrow();
            cap.conns.iter().enumerate().all(|(i, c)| {
                c.dropper.get() || !c.alive.get() || c.next_seq.get() >= sent[i / GROUP_SMALL]
            })
        };
        cap.wait_for(Duration::from_secs(10), complete).await;
        cap.storm_checking.set(false);
        let sent = cap.storm_sent.borrow().clone();
        let (mut checked, mut lost, mut disorder, mut with_errors) = (0u64, 0u64, 0u64, 0u64);
        for (i, c) in cap.conns.iter().enumerate() {
            if c.dropper.get() || !c.connected.get() {
                continue;
            }
            let tail = sent[i / GROUP_SMALL].saturating_sub(c.next_seq.get());
            let missing = c.missing.get() + tail;
            checked += sent[i / GROUP_SMALL];
            lost += missing;
            disorder += c.disorder.get();
            if missing + c.disorder.get() > 0 {
                with_errors += 1;
            }
        }
        let mut back_us: Vec<u64> = cap
            .conns
            .iter()
            .filter(|c| c.dropper.get() && c.back_us.get() > 0)
            .map(|c| c.back_us.get() - drop_us)
            .collect();
        back_us.sort_unstable();
        out["storm_dropped"] = json!(droppers);
        out["storm_back"] = json!(cap.back.get());
        out["storm_all_back_seconds"] = json!(if all_back { Some(back_secs) } else { None });
        out["storm_back_ms_p50"] = json!(percentile_ms(&back_us, 0.5));
        out["storm_back_ms_p99"] = json!(percentile_ms(&back_us, 0.99));
        out["storm_reconnect_attempts"] = json!(cap.reconnect_attempts.get());
        out["storm_reconnect_failures"] = json!(cap.reconnect_failures.get());
        if let (Some((c0, _)), Some((c1, _))) = (cpu0, cpu1) {
            out["storm_server_cpu_seconds"] = json!(c1 - c0);
        }
        out["storm_staying"] = json!(staying);
        out["storm_staying_disconnected"] = json!(cap.staying_disconnected.get());
        out["storm_relays"] = json!(relays);
        out["storm_relays_per_sec"] = json!(relays as f64 / publish_secs.max(1e-9));
        out["storm_publish_errors"] = json!(publish_errors);
        out["storm_checked_deliveries"] = json!(checked);
        out["storm_lost"] = json!(lost);
        out["storm_duplicated_or_reordered"] = json!(disorder);
        out["storm_staying_with_errors"] = json!(with_errors);
        out["backoff_ms"] = json!([args.backoff_min_ms, args.backoff_max_ms, args.backoff_jitter]);
        if !all_back {
            problems.push(format!(
                "storm: only {} of {droppers} back after {:.0} s",
                cap.back.get(),
                args.storm_timeout
            ));
        }
        if cap.staying_disconnected.get() > 0 {
            problems.push(format!("storm: {} staying clients were disconnected", cap.staying_disconnected.get()));
        }
        if lost + disorder > 0 || publish_errors > 0 {
            problems.push(format!(
                "storm: staying clients lost {lost} relays, {disorder} duplicated or out of order, {publish_errors} publish errors"
            ));
        }
    }

    // -- the end ----------------------------------------------------------------------
    out["disconnected_unexpectedly"] = json!(cap.unexpected_disconnects.get());
    out["alive_at_end"] = json!(cap.alive(0..n));
    if cap.unexpected_disconnects.get() > 0 {
        problems.push(format!("{} connections were lost unexpectedly", cap.unexpected_disconnects.get()));
    }
    if let Some(pid) = pid {
        if process_usage(pid).is_none() {
            problems.push("the server exited".into());
        }
    }
    out["errors"] = json!(cap.error_count.get());
    out["error_samples"] = json!(*cap.errors.borrow());
    out["ok"] = json!(problems.is_empty());
    out["problems"] = json!(problems);
    out
}

/// Appends one read's worth to `buf`; the end of the stream is an error
/// (an HTTP answer was still expected).
async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

// ---- cluster ------------------------------------------------------------------------

/// A room of the cluster scenario.
struct ClRoom {
    name: String,
    /// Connection indexes.
    members: Vec<usize>,
    /// All members on one node.
    local: bool,
    /// Publishes so far: the next sequence number.
    sent: Cell<u64>,
    /// Sequence numbers whose publish failed (not expected anywhere).
    failed: RefCell<Vec<u64>>,
    /// Relay: the member that sends next.
    next_sender: Cell<usize>,
}

/// A relay for a connection's task to send: the `["custom-event", …]` array
/// and who waits for the ack (true: `success: true`).
struct RelayCmd {
    array: String,
    done: tokio::sync::oneshot::Sender<bool>,
}

struct ClConn {
    node: usize,
    /// Its one-node room and its every-node room.
    rooms: [usize; 2],
    /// Per room: the sequence numbers received (a bit each).
    seen: [RefCell<Vec<u64>>; 2],
    /// Per room: 1 + the highest sequence number received (0: none yet).
    high: [Cell<u64>; 2],
    alive: Cell<bool>,
    relay: RefCell<Option<tokio::sync::mpsc::UnboundedSender<RelayCmd>>>,
}

impl ClConn {
    /// Marks `seq` of room slot `slot` as received; false if it already was.
    fn mark(&self, slot: usize, seq: u64) -> bool {
        let mut bits = self.seen[slot].borrow_mut();
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = bits[word] & bit == 0;
        bits[word] |= bit;
        fresh
    }

    fn has(&self, slot: usize, seq: u64) -> bool {
        let bits = self.seen[slot].borrow();
        bits.get((seq / 64) as usize).is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    fn count(&self, slot: usize, below: u64) -> u64 {
        (0..below).filter(|&s| self.has(slot, s)).count() as u64
    }
}

struct Cl {
    start: Instant,
    nodes: usize,
    conns: Vec<ClConn>,
    rooms: Vec<ClRoom>,
    /// Distinct deliveries expected / received, warm-up included.
    expected: Cell<u64>,
    received: Cell<u64>,
    duplicated: Cell<u64>,
    reordered: Cell<u64>,
    /// A delivery for a room the connection is not in.
    misdelivered: Cell<u64>,
    /// Measured phase: its start (µs after `start`), deliveries of the
    /// publishes sent in it, those received on another node than the one the
    /// publish entered by, per receiving node, the last one's time.
    measure_from_us: Cell<u64>,
    m_received: Cell<u64>,
    m_cross: Cell<u64>,
    m_by_node: Vec<Cell<u64>>,
    m_last_us: Cell<u64>,
    histogram: RefCell<Histogram<u64>>,
    progress: tokio::sync::Notify,
    disconnected: Cell<u64>,
    errors: RefCell<Vec<String>>,
    error_count: Cell<u64>,
}

impl Cl {
    fn note_error(&self, what: String) {
        self.error_count.set(self.error_count.get() + 1);
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 8 {
            errors.push(what);
        }
    }

    /// A text packet for connection `i` (pings are answered before).
    fn packet(&self, i: usize, packet: &[u8]) {
        if !packet.starts_with(b"42[\"cl\"") {
            return;
        }
        let (Some(r), Some(s), Some(n), Some(t)) = (
            num_after(packet, b"\"r\":"),
            num_after(packet, b"\"s\":"),
            num_after(packet, b"\"n\":"),
            num_after(packet, b"\"t\":"),
        ) else {
            self.misdelivered.set(self.misdelivered.get() + 1);
            return;
        };
        let conn = &self.conns[i];
        let Some(slot) = conn.rooms.iter().position(|&room| room as u64 == r) else {
            self.misdelivered.set(self.misdelivered.get() + 1);
            return;
        };
        if !conn.mark(slot, s) {
            self.duplicated.set(self.duplicated.get() + 1);
            return;
        }
        if s + 1 < conn.high[slot].get() {
            self.reordered.set(self.reordered.get() + 1);
        } else {
            conn.high[slot].set(s + 1);
        }
        self.received.set(self.received.get() + 1);
        if t >= self.measure_from_us.get() {
            let now = micros_since(self.start);
            let _ = self.histogram.borrow_mut().record(now.saturating_sub(t).max(1));
            self.m_received.set(self.m_received.get() + 1);
            if n as usize != conn.node {
                self.m_cross.set(self.m_cross.get() + 1);
            }
            self.m_by_node[conn.node].set(self.m_by_node[conn.node].get() + 1);
            self.m_last_us.set(now);
        }
        if self.received.get() >= self.expected.get() {
            self.progress.notify_one();
        }
    }

    /// Waits until every expected delivery arrived, nothing arrived for
    /// `quiet`, or `limit` passed.
    async fn drain(&self, quiet: Duration, limit: Duration) {
        let give_up = Instant::now() + limit;
        let mut last = self.received.get();
        let mut quiet_since = Instant::now();
        while self.received.get() < self.expected.get() && Instant::now() < give_up {
            let _ = tokio::time::timeout(Duration::from_millis(20), self.progress.notified()).await;
            if self.received.get() != last {
                last = self.received.get();
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() > quiet {
                break;
            }
        }
    }

    /// (lost, failed-publish deliveries not received) over every connection.
    fn lost(&self) -> (u64, u64) {
        let (mut lost, mut after_failure) = (0, 0);
        for conn in &self.conns {
            for (slot, &r) in conn.rooms.iter().enumerate() {
                let room = &self.rooms[r];
                let sent = room.sent.get();
                let failed = room.failed.borrow();
                let unseen_failed = failed.iter().filter(|&&s| !conn.has(slot, s)).count() as u64;
                after_failure += unseen_failed;
                lost += sent - conn.count(slot, sent) - unseen_failed;
            }
        }
        (lost, after_failure)
    }
}

/// One connection's task: reads (answering pings), and sends the relays the
/// lanes hand it, matching their acks.
async fn cl_conn(i: usize, cl: Rc<Cl>, mut client: Client, mut rx: tokio::sync::mpsc::UnboundedReceiver<RelayCmd>) {
    let mut next_id = 1000u64;
    let mut pending: Vec<(u64, tokio::sync::oneshot::Sender<bool>)> = Vec::new();
    let mut acks: Vec<(u64, bool)> = Vec::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let id = next_id;
                next_id += 1;
                if let Err(e) = client.send(&format!("42{id}{}", cmd.array)).await {
                    let _ = cmd.done.send(false);
                    cl.note_error(format!("connection {i}: relay not sent: {e}"));
                } else {
                    pending.push((id, cmd.done));
                }
            }
            read = client.read_batch(|packet| {
                if let Some(rest) = packet.strip_prefix(b"43") {
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    if let Some(id) = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse().ok()) {
                        const OK: &[u8] = b"\"success\":true";
                        let ok = rest.windows(OK.len()).any(|w| w == OK);
                        acks.push((id, ok));
                    }
                } else {
                    cl.packet(i, packet);
                }
            }) => {
                if let Err(e) = read {
                    cl.conns[i].alive.set(false);
                    cl.disconnected.set(cl.disconnected.get() + 1);
                    cl.note_error(format!("connection {i} lost: {e}"));
                    cl.progress.notify_one();
                    return;
                }
                for (id, ok) in acks.drain(..) {
                    if let Some(at) = pending.iter().position(|(p, _)| *p == id) {
                        let (_, done) = pending.swap_remove(at);
                        let _ = done.send(ok);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum PublishNode {
    Rotate,
    Room,
    Fixed(usize),
}

/// What one publisher lane did.
#[derive(Default)]
struct LaneStats {
    published: u64,
    errors: u64,
    /// API answers whose `delivered` was not the room's size / that said `partial`.
    delivered_mismatch: u64,
    partial: u64,
    delivered_sum: u64,
    by_node: Vec<u64>,
    /// Microseconds from sending a publish to its answer (API) or ack (relay).
    answer_us: Vec<u64>,
}

struct Lane {
    index: usize,
    rooms_local: Vec<usize>,
    rooms_spread: Vec<usize>,
    http: Vec<Http>,
    turn: usize,
    stats: LaneStats,
}

impl Lane {
    /// Publishes the room's next sequence number and waits for its answer / ack.
    async fn publish(&mut self, cl: &Cl, r: usize, via: Via, choice: PublishNode, filler: &str, check: bool) {
        let room = &cl.rooms[r];
        let seq = room.sent.get();
        room.sent.set(seq + 1);
        self.stats.published += 1;
        let asked = Instant::now();
        let result = match via {
            Via::Api => {
                let node = match choice {
                    PublishNode::Rotate => (self.index + self.turn) % cl.nodes,
                    PublishNode::Room => r % cl.nodes,
                    PublishNode::Fixed(n) => n % cl.nodes,
                };
                self.turn += 1;
                self.stats.by_node[node] += 1;
                let data = json!({ "r": r, "s": seq, "n": node, "t": micros_since(cl.start), "f": filler });
                let path = format!("/api/rooms/{}/broadcast", room.name);
                match self.http[node].post(&path, &json!({ "event": "cl", "data": data })).await {
                    Ok((200, answer)) => {
                        cl.expected.set(cl.expected.get() + room.members.len() as u64);
                        let delivered = answer["delivered"].as_u64().unwrap_or(0);
                        self.stats.delivered_sum += delivered;
                        if answer["partial"] == true {
                            self.stats.partial += 1;
                        }
                        if check && delivered != room.members.len() as u64 {
                            self.stats.delivered_mismatch += 1;
                            if self.stats.delivered_mismatch <= 2 {
                                cl.note_error(format!(
                                    "POST {path} to node {node}: delivered {delivered}, the room has {}: {answer}",
                                    room.members.len()
                                ));
                            }
                        }
                        Ok(())
                    }
                    Ok((status, answer)) => Err(format!("POST {path} to node {node}: {status} {answer}")),
                    Err(e) => Err(format!("POST {path} to node {node}: {e}")),
                }
            }
            Via::Relay => {
                let turn = room.next_sender.get();
                room.next_sender.set(turn + 1);
                let sender = room.members[turn % room.members.len()];
                let conn = &cl.conns[sender];
                self.stats.by_node[conn.node] += 1;
                // The sender does not get its own relay: counted as had (and
                // as a duplicate if it comes all the same).
                let slot = conn.rooms.iter().position(|&x| x == r).expect("a member");
                conn.mark(slot, seq);
                let data = json!({ "r": r, "s": seq, "n": conn.node, "t": micros_since(cl.start), "f": filler });
                let array = json!(["custom-event", { "event": "cl", "data": data, "roomName": room.name }]).to_string();
                let (done, answered) = tokio::sync::oneshot::channel();
                let sent = conn.relay.borrow().as_ref().is_some_and(|tx| tx.send(RelayCmd { array, done }).is_ok());
                if !sent {
                    Err(format!("relay by connection {sender}: its connection is gone"))
                } else {
                    match tokio::time::timeout(Duration::from_secs(10), answered).await {
                        Ok(Ok(true)) => {
                            cl.expected.set(cl.expected.get() + room.members.len() as u64 - 1);
                            Ok(())
                        }
                        Ok(Ok(false)) => Err(format!("relay by connection {sender} to {}: refused", room.name)),
                        Ok(Err(_)) => Err(format!("relay by connection {sender}: its connection closed")),
                        Err(_) => Err(format!("relay by connection {sender} to {}: no ack in 10 s", room.name)),
                    }
                }
            }
        };
        self.stats.answer_us.push(asked.elapsed().as_micros() as u64);
        if let Err(e) = result {
            self.stats.errors += 1;
            room.failed.borrow_mut().push(seq);
            cl.note_error(e);
        }
    }
}

/// Prints `@tag` to stderr and waits for a line on stdin (the harness's turn).
async fn sync_point(tag: &str) {
    eprintln!("@{tag}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.await;
}

async fn cluster(args: &Args) -> Value {
    let addrs: Vec<SocketAddr> = args.urls.iter().map(|u| resolve(u)).collect();
    let k = addrs.len();
    assert!(k > 0, "--scenario cluster needs --urls");
    let per_node = args.connections / k;
    let n = per_node * k;
    let local_size = args.local_room_size.max(1);
    let share = (args.spread_room_size / k).max(1);
    let spread_size = share * k;
    let choice = match args.publish_node.as_str() {
        "rotate" => PublishNode::Rotate,
        "room" => PublishNode::Room,
        other => PublishNode::Fixed(other.parse().expect("--publish-node: rotate, room or a node index")),
    };
    // Connection i is on node i % k, the (i / k)-th there; its one-node room
    // is its node's (i / k) / local_size-th, its every-node room the
    // (i / k) / share-th (share members on each node).
    let mut rooms: Vec<ClRoom> = Vec::new();
    let room = |name: String, local: bool| ClRoom {
        name,
        members: Vec::new(),
        local,
        sent: Cell::new(0),
        failed: RefCell::new(Vec::new()),
        next_sender: Cell::new(0),
    };
    let locals_per_node = per_node.div_ceil(local_size);
    for node in 0..k {
        for b in 0..locals_per_node {
            rooms.push(room(format!("cl-n{node}-{b}"), true));
        }
    }
    let spreads = per_node.div_ceil(share);
    for a in 0..spreads {
        rooms.push(room(format!("cl-all-{a}"), false));
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let (node, j) = (i % k, i / k);
        let local = node * locals_per_node + j / local_size;
        let spread = k * locals_per_node + j / share;
        rooms[local].members.push(i);
        rooms[spread].members.push(i);
        conns.push(ClConn {
            node,
            rooms: [local, spread],
            seen: Default::default(),
            high: Default::default(),
            alive: Cell::new(false),
            relay: RefCell::new(None),
        });
    }
    let cl = Rc::new(Cl {
        start: Instant::now(),
        nodes: k,
        conns,
        rooms,
        expected: Cell::new(0),
        received: Cell::new(0),
        duplicated: Cell::new(0),
        reordered: Cell::new(0),
        misdelivered: Cell::new(0),
        measure_from_us: Cell::new(u64::MAX),
        m_received: Cell::new(0),
        m_cross: Cell::new(0),
        m_by_node: (0..k).map(|_| Cell::new(0)).collect(),
        m_last_us: Cell::new(0),
        histogram: RefCell::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
        progress: tokio::sync::Notify::new(),
        disconnected: Cell::new(0),
        errors: RefCell::new(Vec::new()),
        error_count: Cell::new(0),
    });
    let mut problems: Vec<String> = Vec::new();
    let mut out = json!({
        "scenario": "cluster",
        "nodes": k,
        "connections": n,
        "connections_per_node": per_node,
        "rooms_one_node": k * locals_per_node,
        "rooms_every_node": spreads,
        "local_room_size": local_size,
        "spread_room_size": spread_size,
        "local_share": args.local_share,
        "via": format!("{:?}", args.via).to_lowercase(),
        "publish_node": args.publish_node,
        "lanes": args.lanes,
        "rate": args.rate,
        "duration": args.duration,
        "payload_bytes": args.payload_bytes,
    });

    // -- connect, authenticate, join: `--concurrency` at a time -------------------
    let t_connect = Instant::now();
    let mut failed = 0;
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + args.concurrency.max(1)).min(n))
            .map(|i| {
                let cl = cl.clone();
                let addr = addrs[i % k];
                async move {
                    let names: Vec<String> = cl.conns[i].rooms.iter().map(|&r| cl.rooms[r].name.clone()).collect();
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(20),
                        join_user(addr, &format!("cl-{i}"), &names),
                    )
                    .await;
                    (i, attempt)
                }
            })
            .collect();
        next += batch.len();
        for (i, attempt) in futures_join_all(batch).await {
            match attempt {
                Ok(Ok(client)) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    *cl.conns[i].relay.borrow_mut() = Some(tx);
                    cl.conns[i].alive.set(true);
                    tokio::task::spawn_local(cl_conn(i, cl.clone(), client, rx));
                }
                Ok(Err(e)) => {
                    failed += 1;
                    cl.note_error(format!("connect {i} (node {}): {e}", i % k));
                }
                Err(_) => {
                    failed += 1;
                    cl.note_error(format!("connect {i} (node {}): timed out", i % k));
                }
            }
        }
    }
    out["connected"] = json!(n - failed);
    out["connect_seconds"] = json!(t_connect.elapsed().as_secs_f64());
    if failed > 0 {
        problems.push(format!("{failed} of {n} connections failed"));
    }
    if args.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }

    // -- lanes: each owns the rooms r with r % lanes == its index -----------------
    let lanes_n = args.lanes.clamp(1, cl.rooms.len());
    let mut lanes: Vec<Lane> = (0..lanes_n)
        .map(|l| Lane {
            index: l,
            rooms_local: (0..cl.rooms.len()).filter(|r| r % lanes_n == l && cl.rooms[*r].local).collect(),
            rooms_spread: (0..cl.rooms.len()).filter(|r| r % lanes_n == l && !cl.rooms[*r].local).collect(),
            http: addrs.iter().map(|&addr| Http { addr, stream: None }).collect(),
            turn: 0,
            stats: LaneStats { by_node: vec![0; k], ..Default::default() },
        })
        .collect();
    let filler = "x".repeat(args.payload_bytes);
    let check = args.check_delivered && args.via == Via::Api;

    // -- warm-up: one publish to every room, right after the joins ----------------
    // Every member must have it: a node that answered a join before it could
    // receive the room's cross-node traffic loses it here.
    let t_warm = Instant::now();
    let warm: Vec<_> = lanes
        .drain(..)
        .map(|mut lane| {
            let cl = cl.clone();
            let filler = filler.clone();
            let via = args.via;
            async move {
                let rooms: Vec<usize> = lane.rooms_local.iter().chain(&lane.rooms_spread).copied().collect();
                for r in rooms {
                    lane.publish(&cl, r, via, choice, &filler, check).await;
                }
                lane
            }
        })
        .collect();
    lanes = futures_join_all(warm).await;
    cl.drain(Duration::from_secs(3), Duration::from_secs(15)).await;
    let (warm_lost, _) = cl.lost();
    let warm_errors: u64 = lanes.iter().map(|l| l.stats.errors).sum();
    let warm_mismatch: u64 = lanes.iter().map(|l| l.stats.delivered_mismatch).sum();
    let warm_partial: u64 = lanes.iter().map(|l| l.stats.partial).sum();
    out["warmup_publishes"] = json!(cl.rooms.len());
    out["warmup_expected"] = json!(cl.expected.get());
    out["warmup_received"] = json!(cl.received.get());
    out["warmup_lost"] = json!(warm_lost);
    out["warmup_seconds"] = json!(t_warm.elapsed().as_secs_f64());
    if warm_lost > 0 || warm_errors > 0 {
        problems.push(format!(
            "warm-up (one publish per room right after the joins): {warm_lost} deliveries lost, {warm_errors} publish errors"
        ));
    }
    if warm_mismatch > 0 || warm_partial > 0 {
        problems.push(format!(
            "warm-up: {warm_mismatch} API answers with a wrong cluster-wide `delivered`, {warm_partial} partial"
        ));
    }
    out["warmup_api_delivered_mismatch"] = json!(warm_mismatch);
    out["warmup_api_partial_answers"] = json!(warm_partial);
    for lane in &mut lanes {
        lane.stats = LaneStats { by_node: vec![0; k], ..Default::default() };
    }
    let (dup0, reorder0, mis0) = (cl.duplicated.get(), cl.reordered.get(), cl.misdelivered.get());
    let received0 = cl.received.get();
    let expected0 = cl.expected.get();

    // -- measured phase -------------------------------------------------------------
    if args.sync {
        sync_point("measure").await;
    }
    let rate: f64 = args.rate.parse().expect("--scenario cluster needs a numeric --rate (publishes/s)");
    let measure_from = micros_since(cl.start);
    cl.measure_from_us.set(measure_from);
    let t_measure = Instant::now();
    let deadline = t_measure + Duration::from_secs_f64(args.duration);
    // Publishes still queued this long after the end are not sent.
    let give_up = deadline + Duration::from_secs(10);
    // The dispatcher picks each publish's room (its kind by --local-share,
    // then uniformly among the rooms of that kind) at its due time and hands
    // it to the lane that owns the room, which sends its rooms' publishes one
    // at a time.
    let locals: Vec<usize> = (0..cl.rooms.len()).filter(|&r| cl.rooms[r].local).collect();
    let spreads: Vec<usize> = (0..cl.rooms.len()).filter(|&r| !cl.rooms[r].local).collect();
    let mut queues = Vec::with_capacity(lanes_n);
    let running: Vec<_> = lanes
        .drain(..)
        .map(|mut lane| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
            queues.push(tx);
            let cl = cl.clone();
            let filler = filler.clone();
            let via = args.via;
            async move {
                let mut delays: Vec<u64> = Vec::new();
                let mut not_sent = 0u64;
                while let Some((r, due)) = rx.recv().await {
                    if Instant::now() > give_up {
                        not_sent += 1;
                        continue;
                    }
                    delays.push(Instant::now().saturating_duration_since(due).as_micros() as u64);
                    lane.publish(&cl, r, via, choice, &filler, check).await;
                }
                (lane, delays, not_sent)
            }
        })
        .collect();
    let handles: Vec<_> = running.into_iter().map(tokio::task::spawn_local).collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut due = t_measure;
    while due < deadline {
        tokio::time::sleep_until(due.into()).await;
        let local = !locals.is_empty() && (spreads.is_empty() || rng.f64() < args.local_share);
        let rooms = if local { &locals } else { &spreads };
        let r = rooms[rng.usize(..rooms.len())];
        let _ = queues[r % lanes_n].send((r, due));
        due += Duration::from_secs_f64(1.0 / rate);
    }
    drop(queues);
    let mut finished = Vec::with_capacity(handles.len());
    for handle in handles {
        finished.push(handle.await.expect("lane"));
    }
    let publish_secs = t_measure.elapsed().as_secs_f64();
    let mut delays: Vec<u64> = finished.iter().flat_map(|(_, d, _)| d.iter().copied()).collect();
    delays.sort_unstable();
    let not_sent: u64 = finished.iter().map(|(_, _, n)| n).sum();
    let behind = Duration::from_micros(delays.last().copied().unwrap_or(0));
    out["publish_delay_ms_p99"] = json!(percentile_ms(&delays, 0.99));
    out["publishes_not_sent"] = json!(not_sent);
    if not_sent > 0 {
        problems.push(format!("{not_sent} publishes were still queued 10 s after the end (the publishers fell behind)"));
    }
    let lanes: Vec<Lane> = finished.into_iter().map(|(lane, _, _)| lane).collect();
    cl.drain(Duration::from_secs(2), Duration::from_secs(20)).await;
    if args.sync {
        sync_point("drained").await;
    }

    // -- figures ----------------------------------------------------------------------
    let sum = |f: &dyn Fn(&LaneStats) -> u64| lanes.iter().map(|l| f(&l.stats)).sum::<u64>();
    let published = sum(&|s| s.published);
    let errors = sum(&|s| s.errors);
    let mismatch = sum(&|s| s.delivered_mismatch);
    let partial = sum(&|s| s.partial);
    let by_node: Vec<u64> = (0..k).map(|node| lanes.iter().map(|l| l.stats.by_node[node]).sum()).collect();
    let (lost, after_failure) = cl.lost();
    let delivering = (cl.m_last_us.get().saturating_sub(measure_from) as f64 / 1e6).max(1e-9);
    let hist = cl.histogram.borrow();
    let ms = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64 / 1000.0);
    let m_expected = cl.expected.get() - expected0;
    out["publishes"] = json!(published);
    out["publishes_per_sec"] = json!(published as f64 / publish_secs.max(1e-9));
    out["publishes_by_node"] = json!(by_node);
    out["publisher_behind_ms"] = json!(behind.as_secs_f64() * 1000.0);
    out["publish_errors"] = json!(errors);
    let mut answer_us: Vec<u64> = lanes.iter().flat_map(|l| l.stats.answer_us.iter().copied()).collect();
    answer_us.sort_unstable();
    out["answer_ms_p50"] = json!(percentile_ms(&answer_us, 0.5));
    out["answer_ms_p99"] = json!(percentile_ms(&answer_us, 0.99));
    out["expected"] = json!(m_expected);
    out["deliveries"] = json!(cl.m_received.get());
    out["deliveries_per_publish"] = json!(cl.m_received.get() as f64 / published.max(1) as f64);
    out["deliveries_per_sec"] = json!(cl.m_received.get() as f64 / delivering);
    out["cross_node_deliveries"] = json!(cl.m_cross.get());
    out["cross_node_deliveries_per_sec"] = json!(cl.m_cross.get() as f64 / delivering);
    out["deliveries_by_node"] = json!(cl.m_by_node.iter().map(Cell::get).collect::<Vec<_>>());
    out["delivering_seconds"] = json!(delivering);
    out["p50_ms"] = json!(ms(0.5));
    out["p99_ms"] = json!(ms(0.99));
    out["max_ms"] = json!((!hist.is_empty()).then(|| hist.max() as f64 / 1000.0));
    // Correctness, warm-up included (the measured phase's share beside it).
    out["lost"] = json!(lost);
    out["lost_measured"] = json!(m_expected.saturating_sub(cl.received.get() - received0));
    out["duplicated"] = json!(cl.duplicated.get());
    out["duplicated_measured"] = json!(cl.duplicated.get() - dup0);
    out["reordered"] = json!(cl.reordered.get());
    out["reordered_measured"] = json!(cl.reordered.get() - reorder0);
    out["misdelivered"] = json!(cl.misdelivered.get());
    out["misdelivered_measured"] = json!(cl.misdelivered.get() - mis0);
    out["undelivered_after_failed_publish"] = json!(after_failure);
    if args.via == Via::Api {
        out["api_delivered_sum"] = json!(sum(&|s| s.delivered_sum));
        out["api_partial_answers"] = json!(partial);
        if check {
            out["api_delivered_mismatch"] = json!(mismatch);
        }
    }
    out["disconnected"] = json!(cl.disconnected.get());
    out["alive_at_end"] = json!(cl.conns.iter().filter(|c| c.alive.get()).count());
    if lost > 0 {
        problems.push(format!("{lost} deliveries lost"));
    }
    if cl.duplicated.get() > 0 {
        problems.push(format!("{} deliveries duplicated", cl.duplicated.get()));
    }
    if cl.misdelivered.get() > 0 {
        problems.push(format!("{} deliveries to a connection outside the room", cl.misdelivered.get()));
    }
    if errors > 0 {
        problems.push(format!("{errors} publishes failed"));
    }
    if check && mismatch > 0 {
        problems.push(format!("{mismatch} API answers with a wrong cluster-wide `delivered`"));
    }
    if partial > 0 {
        problems.push(format!("{partial} API answers were partial"));
    }
    if cl.disconnected.get() > 0 {
        problems.push(format!("{} connections were lost", cl.disconnected.get()));
    }
    out["errors"] = json!(cl.error_count.get());
    out["error_samples"] = json!(*cl.errors.borrow());
    out["ok"] = json!(problems.is_empty());
    out["problems"] = json!(problems);
    out
}
