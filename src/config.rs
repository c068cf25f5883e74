//! Configuration: environment variables (SPEC §7), each also a command-line
//! flag. Parsing and validation only; an invalid value stops start-up with a
//! message naming the variable.

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// An on/off setting, spelled `on`/`off` or `true`/`false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
    /// Enabled (spelled `true`).
    True,
    /// Disabled (spelled `false`).
    False,
}

impl Switch {
    /// Whether the setting is enabled.
    pub fn is_on(self) -> bool {
        matches!(self, Switch::On | Switch::True)
    }
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of SPEC §7, from the environment or the command line (`--help` lists them).
#[derive(Debug, Clone, Parser)]
#[command(name = "shardcast", version, about = "A sharded, Socket.IO-compatible real-time event broker")]
pub struct Config {
    /// TCP port for Socket.IO, the HTTP API and metrics (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Comma-separated allowed origins; unset allows all.
    #[arg(long, env = "CORS_ORIGIN")]
    pub cors_origin: Option<String>,

    /// The one Socket.IO namespace that exists.
    #[arg(long, env = "WEBSOCKET_NAMESPACE", default_value = "/", value_parser = parse_namespace)]
    pub websocket_namespace: String,

    /// Enabled transports, comma-separated: websocket, polling.
    #[arg(long, env = "WEBSOCKET_TRANSPORTS", default_value = "websocket,polling", value_parser = parse_transports)]
    pub websocket_transports: Transports,

    /// Shard threads (default: the number of cores).
    #[arg(long, env = "SHARDS")]
    pub shards: Option<NonZeroUsize>,

    /// Bearer token required on /api; unset: /api answers loopback clients only.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// HS256 secret; set: clients authenticate with JWTs, unset: development mode.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Milliseconds between the server's heartbeat pings.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,

    /// Milliseconds a client has to answer a ping before it is closed.
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout_ms: u64,

    /// A connection that sends no Socket.IO CONNECT within this time is closed.
    #[arg(long, env = "CONNECT_TIMEOUT_MS", default_value_t = 45000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,

    /// Milliseconds a client has to send an HTTP request's head (from
    /// connecting, or from its previous request), and then its body.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Largest message a client may send, in bytes.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    pub max_payload_bytes: u64,

    /// Events per second per connection (unset: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_sec: Option<u32>,

    /// Burst allowance of the per-connection rate limit (default: the rate).
    #[arg(long, env = "RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: Option<u32>,

    /// Socket.IO connections the process accepts at once.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET")]
    pub max_rooms_per_socket: Option<usize>,

    /// Frames queued for one slow client before further ones are dropped.
    #[arg(long, env = "OUTBOX_LIMIT", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_limit: u64,

    /// `user-online` / `user-offline` events: on or off.
    #[arg(long, env = "PRESENCE_EVENTS", value_enum, default_value = "on", ignore_case = true)]
    pub presence_events: Switch,

    /// `user-joined` / `user-left` to the other members of a room: on or off
    /// (off for large notification rooms, where each join would otherwise
    /// be announced to every member).
    #[arg(long, env = "ROOM_EVENTS", value_enum, default_value = "on", ignore_case = true)]
    pub room_events: Switch,

    /// Redis URL: set, this node joins a cluster through it (unset: one node, no Redis).
    #[arg(long, env = "REDIS_URL", value_parser = non_empty)]
    pub redis_url: Option<String>,

    /// This node's name in a cluster (Redis keys and channels, `/health`, logs); default:
    /// random at each start. Letters, digits, `.`, `_`, `-`; at most 64.
    #[arg(long, env = "NODE_ID", value_parser = node_id)]
    pub node_id: Option<String>,

    /// Prefix of shardcast's own Redis keys and channels (one per deployment sharing a Redis).
    #[arg(long, env = "REDIS_PREFIX", default_value = "shardcast", value_parser = non_empty)]
    pub redis_prefix: String,

    /// The socket.io Redis adapter's channel prefix (its `key` option), for room broadcasts
    /// shared with socket.io servers and emitters.
    #[arg(long, env = "REDIS_ADAPTER_KEY", default_value = "socket.io", value_parser = non_empty)]
    pub redis_adapter_key: String,

    /// A cluster node whose heartbeat key is this old is dead: its users go offline and its
    /// room members stop counting (e.g. `15s`, `3s`).
    #[arg(long, env = "CLUSTER_NODE_TTL", default_value = "15s", value_parser = duration_at_least_1s)]
    pub cluster_node_ttl: humantime::Duration,

    /// How long a cluster-wide query or an HTTP publish waits for the other nodes' answers
    /// before answering with what it has (`"partial": true`).
    #[arg(long, env = "CLUSTER_REQUEST_TIMEOUT", default_value = "2s", value_parser = duration_at_least_10ms)]
    pub cluster_request_timeout: humantime::Duration,

    /// `development` turns on debug logging.
    #[arg(long, env = "NODE_ENV")]
    pub node_env: Option<String>,

    /// Log filter, e.g. `info`, `shardcast=debug`.
    #[arg(long, env = "RUST_LOG")]
    pub rust_log: Option<String>,

    /// Log line format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", ignore_case = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    pub websocket: bool,
    pub polling: bool,
}

fn parse_transports(value: &str) -> Result<Transports, String> {
    let mut transports = Transports { websocket: false, polling: false };
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "websocket" => transports.websocket = true,
            "polling" => transports.polling = true,
            other => return Err(format!("unknown transport {other:?} (expected websocket, polling)")),
        }
    }
    if !transports.websocket && !transports.polling {
        return Err("at least one transport is needed".into());
    }
    Ok(transports)
}

fn parse_namespace(value: &str) -> Result<String, String> {
    if !value.starts_with('/') || value.contains(',') || value.chars().any(char::is_control) {
        return Err("a namespace starts with '/' and has no ',' or control characters".into());
    }
    Ok(value.to_string())
}

impl Config {
    /// Reads flags and environment; exits with a message naming the variable
    /// on any invalid value.
    pub fn from_env_and_args() -> Config {
        let config = Config::parse();
        if let Err(message) = config.validate() {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
        config
    }

    /// Checks values that clap cannot; the error names the variable.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if let Some(secret) = &self.jwt_secret {
            if secret.is_empty() {
                return Err("JWT_SECRET must not be empty when set".into());
            }
        }
        if let Some(key) = &self.api_key {
            if key.is_empty() {
                return Err("API_KEY must not be empty when set".into());
            }
        }
        if self.max_connections == Some(0) {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        if self.max_rooms_per_socket == Some(0) {
            return Err("MAX_ROOMS_PER_SOCKET must be at least 1".into());
        }
        if self.rate_limit_burst.is_some() && self.rate_limit_per_sec.is_none() {
            return Err("RATE_LIMIT_BURST needs RATE_LIMIT_PER_SEC".into());
        }
        if let Some(origins) = &self.cors_origin {
            if origins.split(',').all(|o| o.trim().is_empty()) {
                return Err("CORS_ORIGIN must list at least one origin when set".into());
            }
        }
        Ok(())
    }

    /// `HOST`:`PORT` as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("HOST {:?} cannot be resolved: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("HOST {:?} resolves to no address", self.host))
    }

    /// `SHARDS`, or the number of cores.
    pub fn shard_count(&self) -> usize {
        self.shards
            .map(NonZeroUsize::get)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// `PING_INTERVAL_MS` as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// `PING_TIMEOUT_MS` as a duration.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    /// `CONNECT_TIMEOUT_MS` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `REQUEST_TIMEOUT_MS` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Whether `user-online` / `user-offline` are sent (`PRESENCE_EVENTS`).
    pub fn presence_enabled(&self) -> bool {
        self.presence_events.is_on()
    }

    /// Whether `user-joined` / `user-left` are sent (`ROOM_EVENTS`).
    pub fn room_events_enabled(&self) -> bool {
        self.room_events.is_on()
    }

    /// `NODE_ENV=development`.
    pub fn is_development(&self) -> bool {
        self.node_env.as_deref() == Some("development")
    }

    /// The allowed origins, or `None` when every origin is allowed.
    pub fn allowed_origins(&self) -> Option<Vec<String>> {
        self.cors_origin.as_ref().map(|list| {
            list.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect()
        })
    }

    /// Defaults, as if no variable were set (for tests and embedding).
    pub fn defaults() -> Config {
        Config::parse_from(["shardcast"])
    }
}

fn node_id(value: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > 64 || !value.chars().all(allowed) {
        return Err("must be 1 to 64 letters, digits, '.', '_' or '-'".into());
    }
    Ok(value.to_string())
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value.to_string())
}

fn duration_at_least(value: &str, min: Duration) -> Result<humantime::Duration, String> {
    let duration: humantime::Duration = value.parse().map_err(|e| format!("{e} (write e.g. 15s, 500ms)"))?;
    if *duration < min {
        return Err(format!("must be at least {}", humantime::format_duration(min)));
    }
    Ok(duration)
}

fn duration_at_least_1s(value: &str) -> Result<humantime::Duration, String> {
    duration_at_least(value, Duration::from_secs(1))
}

fn duration_at_least_10ms(value: &str) -> Result<humantime::Duration, String> {
    duration_at_least(value, Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["shardcast"];
        full.extend_from_slice(args);
        let config = Config::try_parse_from(full).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.port, c.host.as_str()), (3000, "0.0.0.0"));
        assert_eq!((c.ping_interval_ms, c.ping_timeout_ms, c.max_payload_bytes), (25000, 20000, 1_000_000));
        assert_eq!(c.request_timeout(), Duration::from_secs(30));
        assert_eq!(c.websocket_namespace, "/");
        assert_eq!(c.websocket_transports, Transports { websocket: true, polling: true });
        assert!(c.presence_enabled());
        assert!(c.shard_count() >= 1);
    }

    #[test]
    fn invalid_values_name_their_variable() {
        for (args, name) in [
            (&["--port", "abc"][..], "PORT"),
            (&["--shards", "0"], "SHARDS"),
            (&["--ping-interval-ms", "0"], "PING_INTERVAL_MS"),
            (&["--request-timeout-ms", "0"], "REQUEST_TIMEOUT_MS"),
            (&["--websocket-transports", "carrier-pigeon"], "WEBSOCKET_TRANSPORTS"),
            (&["--websocket-namespace", "chat"], "WEBSOCKET_NAMESPACE"),
            (&["--presence-events", "maybe"], "PRESENCE_EVENTS"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(name), "{err:?} should name {name}");
        }
        assert!(parse(&["--rate-limit-burst", "5"]).unwrap_err().contains("RATE_LIMIT_PER_SEC"));
    }
}
