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
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for Socket.IO servers (shardcast, socket.io, socketioxide)")]
struct Args {
    /// Server base URL, e.g. http://127.0.0.1:3000
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Connections (idle) or subscribers (fanout).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 2)]
    rooms_per_conn: usize,
    /// Seconds of measurement (handshake, fanout).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Publishes per second, or `max` to publish as fast as acks return
    /// (fanout); handshakes per second, or `max` (handshake).
    #[arg(long, default_value = "max")]
    rate: String,
    /// Parallel handshake loops; also how many connections are opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
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
                            let _ = client.close().await;
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
