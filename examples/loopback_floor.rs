//! The floor under any broadcast on this machine: what the kernel charges to
//! write one small WebSocket frame to each of N loopback TCP connections,
//! with nothing else in the way (no broker, no runtime, no queue).
//!
//! A writer thread pinned to core 0 sends one 60-byte frame to each of N
//! sockets with one `send` each (what a broker must do at least once per
//! recipient); a reader process pinned to core 1 reads them all back with
//! tokio, as the load generator's subscribers do. Prints, per round, the wall
//! time and the writer thread's CPU time; then the mean CPU per send over
//! all rounds, the figure to compare a server with, and the median round.
//!
//! Why the mean: a server's CPU per broadcast is its CPU over a window
//! divided by the broadcasts in it — a mean, slow broadcasts included — so
//! the floor under it must be one too. Rounds are skewed (most near the
//! bottom, a few up to twice as slow as the host interferes): over 20
//! rounds the mean came out 6–15 % above the median round, which a
//! comparison against the median would have charged to the server.
//!
//! `--ping` measures the floor under heartbeats instead: for each socket in
//! turn, the writer sleeps until its slot (`rate` exchanges per second, as a
//! server's ping timer fires; 0: no sleep, back to back), sends a 3-byte ping frame, waits in
//! `epoll_wait` until the reader's 7-byte masked pong arrives and reads it:
//! the kernel's cost of one Engine.IO ping/pong for the server's side, wake-ups
//! included. Prints the writer's CPU per exchange.
//!
//! `--warm` (before the counts) first exchanges one ping and pong on every
//! socket, back to back, then measures the sends as without it. A broker's
//! clients have all sent something (a handshake, requests, pongs) before a
//! broadcast reaches them, and a TCP receiver that has answered data
//! acknowledges differently from one that never sent anything (Linux's
//! delayed-ACK "pingpong" mode rather than quick ACKs): this measures the
//! sends to connections in that state.
//!
//! The reader is a child process (forked before any thread starts), so each
//! side needs only N descriptors: N = 19,000 fits under a 20,000 limit.
//!
//! ```sh
//! cargo run --release --example loopback_floor -- 10000 20
//! cargo run --release --example loopback_floor -- --warm 10000 20
//! cargo run --release --example loopback_floor -- --ping 10000 3 2000
//! ```

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server's ping: a text frame "2".
const PING: [u8; 3] = [0x81, 0x01, b'2'];
/// A client's pong: a masked text frame "3".
const PONG: [u8; 7] = [0x81, 0x81, 0, 0, 0, 0, b'3'];

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ping = args.first().is_some_and(|a| a == "--ping");
    if ping {
        args.remove(0);
    }
    let warm = args.first().is_some_and(|a| a == "--warm");
    if warm {
        args.remove(0);
    }
    let connections: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(if ping { 3 } else { 20 });
    let rate: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000.0);
    raise_fd_limit(connections);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    // Bytes the reader has read, and whether it answers pings, in memory
    // shared with the child.
    let received = shared_counter(0);
    let answering = shared_counter(1);
    answering.store(ping as u64, Ordering::Relaxed);
    // SAFETY: no thread has been started yet, so the child is a plain copy.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        drop(listener);
        reader(addr, connections, answering, received);
    }

    pin_to(0);
    let sockets: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    if ping {
        ping_rounds(&sockets, rounds, rate);
    } else {
        if warm {
            print!("warm-up, ");
            answering.store(1, Ordering::Relaxed);
            ping_rounds(&sockets, 1, 0.0);
            answering.store(0, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(500));
        }
        send_rounds(&sockets, rounds, received);
    }
    drop(sockets);
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let _ = std::io::stdin().read(&mut [0u8; 0]);
}

/// One `send` of a 60-byte frame to every socket per round.
fn send_rounds(sockets: &[TcpStream], rounds: usize, received: &AtomicU64) {
    let connections = sockets.len();
    let frame = [b'x'; 60];
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let before = received.load(Ordering::Relaxed);
        let cpu_start = thread_cpu();
        let start = Instant::now();
        for socket in sockets {
            // SAFETY: a valid socket and a buffer that outlives the call.
            let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(sent, frame.len() as isize, "short send");
        }
        let wall = start.elapsed();
        let cpu = thread_cpu() - cpu_start;
        let expected = before + (connections * frame.len()) as u64;
        let wait = Instant::now();
        while received.load(Ordering::Relaxed) < expected && wait.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let all_read = start.elapsed();
        println!(
            "round {round:2}: {connections} sends in {:.1} ms wall, {:.1} ms writer CPU ({:.2} µs/send); all read after {:.1} ms",
            ms(wall),
            ms(cpu),
            cpu.as_secs_f64() * 1e6 / connections as f64,
            ms(all_read)
        );
        walls.push(wall);
        cpus.push(cpu);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mean_cpu, median_cpu) = mean_and_median(&mut cpus);
    let (mean_wall, _) = mean_and_median(&mut walls);
    println!(
        "mean over {rounds} rounds: {:.1} ms wall, {:.1} ms writer CPU per round of {connections} sends = {:.2} µs of CPU per send (median round {:.2} µs)",
        ms(mean_wall),
        ms(mean_cpu),
        mean_cpu.as_secs_f64() * 1e6 / connections as f64,
        median_cpu.as_secs_f64() * 1e6 / connections as f64
    );
}

/// The mean and the median of `values` (sorted in place).
fn mean_and_median(values: &mut [Duration]) -> (Duration, Duration) {
    values.sort();
    let mean = values.iter().sum::<Duration>() / values.len() as u32;
    (mean, values[values.len() / 2])
}

/// Every socket once per round, one at a time at `rate` per second: sleep
/// until the slot, send a ping, wait for the pong in `epoll_wait`, read it.
fn ping_rounds(sockets: &[TcpStream], rounds: usize, rate: f64) {
    let connections = sockets.len();
    // SAFETY: plain epoll calls on descriptors we own; the event array
    // outlives each call.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    for (i, socket) in sockets.iter().enumerate() {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        let r = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
        assert_eq!(r, 0, "epoll_ctl");
    }
    let slot = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = [0u8; 64];
    let mut cpus = Vec::new();
    for round in 0..rounds {
        let cpu_start = thread_cpu();
        let start = Instant::now();
        let mut slow = 0;
        for (i, socket) in sockets.iter().enumerate() {
            let due = start + slot.mul_f64(i as f64);
            let now = Instant::now();
            if rate > 0.0 && due > now {
                let wait = due - now;
                let ts = libc::timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
                // SAFETY: a valid timespec.
                unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            } else if rate > 0.0 {
                slow += 1;
            }
            let fd = socket.as_raw_fd();
            // SAFETY: a valid socket and a buffer that outlives the call.
            let sent = unsafe { libc::send(fd, PING.as_ptr().cast(), PING.len(), 0) };
            assert_eq!(sent, PING.len() as isize, "short send");
            let mut got = 0;
            while got < PONG.len() {
                let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 5000) };
                assert!(n > 0, "no pong within 5 s");
                assert!(events[..n as usize].iter().all(|e| e.u64 == i as u64), "a pong from another socket");
                let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                assert!(r > 0, "recv");
                got += r as usize;
            }
        }
        let wall = start.elapsed();
        let cpu = thread_cpu() - cpu_start;
        println!(
            "round {round:2}: {connections} ping/pong exchanges at {rate:.0}/s in {:.0} ms wall ({slow} late), {:.1} ms writer CPU ({:.2} µs/exchange)",
            ms(wall),
            ms(cpu),
            cpu.as_secs_f64() * 1e6 / connections as f64
        );
        cpus.push(cpu);
    }
    let (mean_cpu, median_cpu) = mean_and_median(&mut cpus);
    println!(
        "mean over {rounds} rounds: {:.1} ms writer CPU per round of {connections} exchanges = {:.2} µs of CPU per exchange (median round {:.2} µs)",
        ms(mean_cpu),
        mean_cpu.as_secs_f64() * 1e6 / connections as f64,
        median_cpu.as_secs_f64() * 1e6 / connections as f64
    );
}

/// The child: connects every socket, reads (and answers pings with pongs)
/// on core 1 until killed.
fn reader(addr: SocketAddr, connections: usize, answering: &'static AtomicU64, received: &'static AtomicU64) -> ! {
    // SAFETY: asks for SIGKILL when the parent dies.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    pin_to(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        for _ in 0..connections {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 4096];
                let mut pending = 0usize;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    if answering.load(Ordering::Relaxed) != 0 {
                        pending += n;
                        while pending >= PING.len() {
                            pending -= PING.len();
                            if stream.write_all(&PONG).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        std::future::pending::<()>().await
    });
    std::process::exit(0)
}

/// Counter `slot` (0 or 1) of a page shared with the forked reader; mapped
/// on first use, before the fork.
fn shared_counter(slot: usize) -> &'static AtomicU64 {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let page = *PAGE.get_or_init(shared_page);
    // SAFETY: the page is 4,096 bytes, zeroed, page-aligned and never unmapped.
    unsafe { &*((page as *const AtomicU64).add(slot)) }
}

fn shared_page() -> usize {
    // SAFETY: a fresh anonymous shared mapping, zeroed, aligned to a page;
    // it is never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        p as usize
    }
}

/// Soft open-file limit to the hard one; says so when N cannot fit.
fn raise_fd_limit(connections: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            if limit.rlim_cur < connections as libc::rlim_t + 32 {
                eprintln!(
                    "loopback_floor: {connections} sockets need {} descriptors per process; the limit is {}",
                    connections + 32,
                    limit.rlim_cur
                );
                std::process::exit(2);
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin_to(cpu: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cores, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
