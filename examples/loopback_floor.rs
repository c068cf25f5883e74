//! The floor under any broadcast on this machine: what the kernel charges to
//! write one small WebSocket frame to each of N loopback TCP connections,
//! with nothing else in the way (no broker, no runtime, no queue).
//!
//! A writer thread pinned to core 0 sends one 60-byte frame to each of N
//! sockets with one `send` each (what a broker must do at least once per
//! recipient); a reader thread pinned to core 1 reads them all back with
//! tokio, as the load generator's subscribers do. Prints, per round, the wall
//! time and the writer thread's CPU time, and their medians.
//!
//! ```sh
//! cargo run --release --example loopback_floor -- 10000 20
//! ```

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let frame = [b'x'; 60];

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));

    let reader_received = received.clone();
    std::thread::spawn(move || {
        pin_to(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    for _ in 0..connections {
                        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                        stream.set_nodelay(true).unwrap();
                        let received = reader_received.clone();
                        tokio::task::spawn_local(async move {
                            let mut buf = vec![0u8; 4096];
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        });
                    }
                    std::future::pending::<()>().await
                })
                .await
        });
    });

    pin_to(0);
    let sockets: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let before = received.load(Ordering::Relaxed);
        let cpu_start = thread_cpu();
        let start = Instant::now();
        for socket in &sockets {
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
    walls.sort();
    cpus.sort();
    let median_cpu = cpus[cpus.len() / 2];
    println!(
        "median: {:.1} ms wall, {:.1} ms writer CPU per round of {connections} sends = {:.2} µs of CPU per send",
        ms(walls[walls.len() / 2]),
        ms(median_cpu),
        median_cpu.as_secs_f64() * 1e6 / connections as f64
    );
    drop(sockets);
    let _ = std::io::stdin().read(&mut [0u8; 0]);
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
