//! The `shardcast` binary: configuration, logging, start, and shutdown on
//! SIGTERM / SIGINT.

use std::io::IsTerminal;

use mimalloc::MiMalloc;
use shardcast::LogFormat;
use shardcast::{Config, Server};
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations on many threads: mimalloc keeps them
// thread-local and cheap. Without transparent huge pages: see
// `disable_transparent_huge_pages`.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// HS256 wants a key at least as long as its hash (RFC 7518 §3.2).
const MIN_JWT_SECRET_BYTES: usize = 32;

fn main() {
    disable_transparent_huge_pages();
    let config = Config::from_env_and_args();
    init_logging(&config);

    let shards = config.shard_count();
    let development = config.jwt_secret.is_none();
    let transports = config.websocket_transports;
    let server = match Server::start(config.clone()) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    if let Some(secret) = config.jwt_secret.as_deref().filter(|secret| secret.len() < MIN_JWT_SECRET_BYTES) {
        tracing::warn!(
            bytes = secret.len(),
            "JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes: anyone holding one token can try secrets \
             offline until its signature matches, then sign tokens for any user. Use at least \
             {MIN_JWT_SECRET_BYTES} random bytes (RFC 7518 §3.2)."
        );
    }
    if development {
        tracing::warn!(
            "DEVELOPMENT MODE: JWT_SECRET is not set, so any client can claim any userId. \
             Set JWT_SECRET before exposing this server."
        );
    }
    tracing::info!(
        addr = %server.local_addr,
        shards,
        namespace = %config.websocket_namespace,
        websocket = transports.websocket,
        polling = transports.polling,
        auth = if development { "development (trusted userId)" } else { "jwt (HS256)" },
        max_payload_bytes = config.max_payload_bytes,
        ping_interval_ms = config.ping_interval_ms,
        ping_timeout_ms = config.ping_timeout_ms,
        connection_capacity = server.connection_capacity().connections,
        open_file_limit = server.nofile_limit().soft,
        "shardcast started"
    );
    // Tests and scripts read the port from this line (PORT=0 picks a free one).
    println!("shardcast listening on http://{}", server.local_addr);

    wait_for_signal();
    tracing::info!("shutting down: closing connections");
    server.shutdown();
    tracing::info!("stopped");
}

/// Turns transparent huge pages off for this process, before the shards
/// allocate anything.
///
/// mimalloc asks for them on its arena (`madvise(MADV_HUGEPAGE)`, which Linux
/// honours in its default `madvise` mode; `always` needs no asking). Then a
/// 2 MiB range of the arena is faulted in whole when any of it is first
/// touched, and it can only shrink when mimalloc's 64 KiB purges split it —
/// which khugepaged can undo for ranges still partly in use
/// (`max_ptes_none` 511 lets it fill a range that is all but empty). After a
/// crowd has come and gone, the few blocks still alive are spread over the
/// arena the crowd grew, so most of the peak stayed: 150 s of the by-hand
/// soak (3,000 clients) ended at 49–55 MiB from 19–21 with 1.7–5 MiB live
/// (counted by a wrapping allocator) and 22–26 MiB of the arena in huge
/// pages (`AnonHugePages` in `/proc/PID/smaps`), though mimalloc had purged
/// 0.6 GiB by then; without them, at 15 MiB from 8 (README "Soak"). The cost
/// is TLB reach: more page walks for the same memory (not measured here).
///
/// Two halves: mimalloc is built without the `madvise` (`no_thp` in
/// Cargo.toml), which is all it takes in `madvise` mode, from its first
/// allocation (before `main`); and `prctl(PR_SET_THP_DISABLE)` here turns
/// them off for every mapping of the process, for faults and khugepaged
/// alike, which is what `always` mode needs.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: a prctl with integer arguments; it only sets a flag of this
    // process. Failing (a kernel without it) leaves huge pages on: more
    // memory kept after a peak, nothing else.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn init_logging(config: &Config) {
    let default = if config.is_development() { "debug" } else { "info" };
    let filter = config
        .rust_log
        .as_deref()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime can always be built");
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler can be installed");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    });
}
