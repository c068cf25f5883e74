//! `GET /metrics`: the Prometheus text format, through `metrics` and
//! `metrics-exporter-prometheus` (its own HTTP listener off).
//!
//! Shards count into their own plain counters ([`crate::shard::ShardCounters`]);
//! a scrape collects a snapshot from every shard, sets the totals on a
//! recorder owned by this module (not the process-global one, so an embedding
//! program keeps its own), and renders it. Gauges are read from the tables at
//! scrape time, so they equal reality whatever way connections ended.
//!
//! The latency histograms are counted here, per bucket ([`LatencyHistogram`]),
//! not by the exporter: its histograms keep every sample until the render
//! (16 bytes each), so a scrape would cost memory and time in proportion to
//! the traffic since the last one.

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::formatting::{write_help_line, write_type_line};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::fmt::Write as _;

use crate::app::errors::RequestError;
use crate::app::session::BUILTIN_EVENTS;
use crate::broker::Broker;
use crate::limits::{ConnectionBudget, REFUSAL_REASONS};
use crate::shard::ClusterStatus;
use std::sync::atomic::Ordering;
use crate::transport::CloseReason;

pub const FAN_OUT_LATENCY: &str = "shardcast_broadcast_fanout_seconds";
/// Publish → written to a recipient's socket (WebSocket clients).
pub const WRITTEN_LATENCY: &str = "shardcast_broadcast_written_seconds";
pub const CLUSTER_LAG: &str = "shardcast_cluster_delivery_lag_seconds";

use crate::shard::stats::LATENCY_BUCKETS;

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The latency histograms. Their lock is also the render lock: two
    /// scrapes at once must not interleave their updates and renders (one
    /// could show the other's older values). Scrape-time only.
    histograms: std::sync::Mutex<Histograms>,
}

struct Histograms {
    fan_out: LatencyHistogram,
    written: LatencyHistogram,
    cluster_lag: LatencyHistogram,
}

/// A Prometheus histogram over [`LATENCY_BUCKETS`]: a count per bucket and
/// the sum, what the exposition shows. `metrics-exporter-prometheus` would
/// instead keep each sample recorded since the last render in a list of
/// 1 KiB blocks (a value and an `Instant`: 16 bytes) and read the clock for
/// each, and it frees the blocks through crossbeam-epoch only once later
/// scrapes have pinned often enough: the first scrape after the 300 s soak
/// turned its ~475,000 latency samples into 7,400 blocks (7.6 MiB) that the
/// idle broker then kept (README "Soak"). Here a scrape costs one addition per sample
/// the shards kept (they keep at most a fixed number and count the rest per
/// bucket), and nothing is allocated.
struct LatencyHistogram {
    name: &'static str,
    help: &'static str,
    /// Per bucket of [`LATENCY_BUCKETS`], plus one above them (`+Inf`); not
    /// cumulative.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

impl LatencyHistogram {
    const fn new(name: &'static str, help: &'static str) -> LatencyHistogram {
        LatencyHistogram { name, help, counts: [0; LATENCY_BUCKETS.len() + 1], sum: 0.0 }
    }

    /// `count` samples of `seconds`.
    fn record_many(&mut self, seconds: f64, count: u64) {
        let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += count;
        self.sum += seconds * count as f64;
    }

    /// The samples a shard counted per bucket past its cap (`overflow[i]`
    /// in bucket `i`, the last one above every bound): each counts at its
    /// bucket's bound, so the counts per bucket are exact and the sum is an
    /// upper estimate.
    fn record_overflow(&mut self, overflow: &[u64]) {
        for (bucket, n) in overflow.iter().enumerate().filter(|(_, n)| **n > 0) {
            let bound = LATENCY_BUCKETS.get(bucket).copied().unwrap_or(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 2.0);
            self.record_many(bound, *n);
        }
    }

    /// The family as the exporter writes one (`_bucket` with cumulative
    /// counts, `+Inf`, `_sum`, `_count`, a blank line).
    fn render(&self, out: &mut String) {
        write_help_line(out, self.name, None, None, self.help);
        write_type_line(out, self.name, None, None, "histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", self.name);
        }
        let count = cumulative + self.counts[LATENCY_BUCKETS.len()];
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", self.name);
        let _ = writeln!(out, "{}_sum {}", self.name, self.sum);
        let _ = writeln!(out, "{}_count {count}\n", self.name);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_all();
            register_known_labels();
        });
        let histograms = Histograms {
            fan_out: LatencyHistogram::new(
                FAN_OUT_LATENCY,
                "From publish to the message being queued (not yet written) for every recipient on a shard (one sample per shard and publish); see shardcast_broadcast_written_seconds for publish to written.",
            ),
            written: LatencyHistogram::new(
                WRITTEN_LATENCY,
                "From publish to the message being written to a recipient's WebSocket (handed to the kernel), one sample per socket write that carried published messages, timed from the oldest.",
            ),
            cluster_lag: LatencyHistogram::new(
                CLUSTER_LAG,
                "Cluster mode: from the publish on the origin node to its arrival here (clocks of different machines add their skew).",
            ),
        };
        Metrics { recorder, handle, histograms: std::sync::Mutex::new(histograms) }
    }

    /// Collects every shard's counters and renders the exposition text;
    /// `budget`: the broker's open TCP connections and their capacity.
    pub async fn render(&self, broker: &Broker, budget: &ConnectionBudget) -> String {
        let shards = broker.shard_metrics().await;
        let depths = broker.queue_depths();
        let mut histograms = self.histograms.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let histograms = &mut *histograms;
        metrics::with_local_recorder(&self.recorder, || {
            let (mut sockets, mut rooms, mut users) = (0, 0, 0);
            let (mut opened, mut delivered, mut dropped, mut bytes_in, mut bytes_out) = (0, 0, 0, 0, 0);
            let mut closed = std::collections::BTreeMap::new();
            let mut events = std::collections::BTreeMap::new();
            let mut rejected = std::collections::BTreeMap::new();
            let mut broadcasts = std::collections::BTreeMap::new();
            let mut refused = std::collections::BTreeMap::new();
            let mut http = std::collections::BTreeMap::new();
            let mut open_connections = 0;
            let mut tables = std::collections::BTreeMap::new();
            for (index, (stats, counters)) in shards.iter().enumerate() {
                gauge!("shardcast_shard_connections", "shard" => index.to_string()).set(counters.open_connections as f64);
                gauge!("shardcast_shard_sockets", "shard" => index.to_string()).set(stats.connections as f64);
                open_connections += counters.open_connections;
                sockets += stats.connections;
                rooms += stats.rooms;
                users += stats.online_users;
                opened += counters.connections_opened;
                delivered += counters.messages_delivered;
                dropped += counters.messages_dropped;
                bytes_in += counters.bytes_in;
                bytes_out += counters.bytes_out;
                for (map, list) in [
                    (&mut closed, &counters.connections_closed),
                    (&mut events, &counters.events_received),
                    (&mut rejected, &counters.rejected),
                    (&mut broadcasts, &counters.broadcasts),
                    (&mut refused, &counters.refused),
                ] {
                    for (label, n) in list {
                        *map.entry(*label).or_insert(0u64) += n;
                    }
                }
                for (table, n) in &counters.table_entries {
                    *tables.entry(*table).or_insert(0usize) += n;
                }
                for ((route, status), n) in &counters.http_requests {
                    *http.entry((*route, *status)).or_insert(0u64) += n;
                }
                let latency = &mut histograms.fan_out;
                for sample in &counters.latency_samples {
                    latency.record_many(*sample, 1);
                }
                latency.record_overflow(&counters.latency_overflow);
                let written = &mut histograms.written;
                for (seconds, n) in &counters.written_latency.runs {
                    written.record_many(*seconds, u64::from(*n));
                }
                written.record_overflow(&counters.written_latency.overflow);
            }
            for (index, depth) in depths.iter().enumerate() {
                gauge!("shardcast_shard_queue_depth", "shard" => index.to_string()).set(*depth as f64);
            }
            gauge!("shardcast_connections").set(open_connections as f64);
            gauge!("shardcast_sockets").set(sockets as f64);
            gauge!("shardcast_rooms").set(rooms as f64);
            gauge!("shardcast_online_users").set(users as f64);
            gauge!("shardcast_tcp_connections").set(budget.open_connections() as f64);
            gauge!("shardcast_connection_capacity").set(budget.capacity.connections as f64);
            for (table, n) in tables {
                gauge!("shardcast_table_entries", "table" => table).set(n as f64);
            }
            gauge!("shardcast_live_objects", "kind" => "socket").set(crate::shard::live_conns() as f64);
            gauge!("shardcast_live_objects", "kind" => "outbox").set(crate::transport::outbox::live_outboxes() as f64);
            for (reason, n) in refused {
                counter!("shardcast_connections_refused_total", "reason" => reason).absolute(n);
            }
            counter!("shardcast_connections_opened_total").absolute(opened);
            for (reason, n) in closed {
                counter!("shardcast_connections_closed_total", "reason" => reason).absolute(n);
            }
            for (event, n) in events {
                counter!("shardcast_events_received_total", "event" => event).absolute(n);
            }
            for (code, n) in rejected {
                counter!("shardcast_requests_rejected_total", "code" => code).absolute(n);
            }
            for (scope, n) in broadcasts {
                counter!("shardcast_broadcasts_total", "scope" => scope).absolute(n);
            }
            counter!("shardcast_messages_delivered_total").absolute(delivered);
            counter!("shardcast_messages_dropped_total", "reason" => "slow_consumer").absolute(dropped);
            counter!("shardcast_bytes_received_total").absolute(bytes_in);
            counter!("shardcast_bytes_sent_total").absolute(bytes_out);
            for ((route, status), n) in http {
                counter!("shardcast_http_requests_total", "route" => route, "status" => status.to_string()).absolute(n);
            }
            if let Some(cluster) = broker.cluster_status() {
                record_cluster(cluster, &mut histograms.cluster_lag);
            }
        });
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        histograms.fan_out.render(&mut text);
        histograms.written.render(&mut text);
        if broker.cluster_status().is_some() {
            histograms.cluster_lag.render(&mut text);
        }
        text
    }
}

/// Cluster mode's figures (`REDIS_URL` set).
fn record_cluster(status: &ClusterStatus, lag: &mut LatencyHistogram) {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    gauge!("shardcast_cluster_nodes").set(status.nodes.load(Ordering::Relaxed) as f64);
    gauge!("shardcast_cluster_redis_up").set(if status.is_redis_up() { 1.0 } else { 0.0 });
    gauge!("shardcast_cluster_subscriptions").set(status.subscriptions.load(Ordering::Relaxed) as f64);
    counter!("shardcast_cluster_messages_published_total").absolute(load(&status.messages_published));
    counter!("shardcast_cluster_messages_received_total").absolute(load(&status.messages_received));
    counter!("shardcast_cluster_bytes_published_total").absolute(load(&status.bytes_published));
    counter!("shardcast_cluster_bytes_received_total").absolute(load(&status.bytes_received));
    counter!("shardcast_cluster_publish_failures_total").absolute(load(&status.publish_failures));
    counter!("shardcast_cluster_messages_undecodable_total").absolute(load(&status.undecodable));
    // The cluster thread's samples since the last scrape move into the histogram.
    if let Ok(mut guard) = status.delivery_lag.lock() {
        if let Some(samples) = guard.as_mut() {
            for value in samples.iter_recorded() {
                lag.record_many(value.value_iterated_to() as f64 / 1e6, value.count_at_value());
            }
            samples.reset();
        }
    }
}

/// Every labelled series exists from the start (at 0), so that `rate()`
/// sees the first increment after a restart and panels are never empty.
fn register_known_labels() {
    for reason in CloseReason::LABELS {
        counter!("shardcast_connections_closed_total", "reason" => reason).absolute(0);
    }
    for event in BUILTIN_EVENTS.into_iter().chain(["other"]) {
        counter!("shardcast_events_received_total", "event" => event).absolute(0);
    }
    for code in RequestError::CODES {
        counter!("shardcast_requests_rejected_total", "code" => code).absolute(0);
    }
    for scope in ["all", "room", "user", "socket"] {
        counter!("shardcast_broadcasts_total", "scope" => scope).absolute(0);
    }
    for reason in REFUSAL_REASONS {
        counter!("shardcast_connections_refused_total", "reason" => reason).absolute(0);
    }
}

fn describe_all() {
    describe_gauge!("shardcast_connections", "Open transport connections (Engine.IO sessions), all shards.");
    describe_gauge!("shardcast_sockets", "Socket.IO sockets that completed CONNECT, all shards.");
    describe_gauge!("shardcast_shard_connections", "Open transport connections on one shard.");
    describe_gauge!("shardcast_shard_sockets", "Socket.IO sockets on one shard.");
    describe_gauge!("shardcast_rooms", "Rooms with at least one member.");
    describe_gauge!("shardcast_online_users", "Users with at least one authenticated connection.");
    describe_gauge!("shardcast_shard_queue_depth", "Messages waiting in a shard's cross-shard inbox.");
    describe_gauge!(
        "shardcast_table_entries",
        "Entries in the shards' tables, by table (sessions, local_* delivery tables, home_* records; nested entries counted); all 0 with no client."
    );
    describe_gauge!(
        "shardcast_live_objects",
        "Socket (kind=socket) and session queue (kind=outbox) objects alive in the process, held by a table or not; 0 with no client."
    );
    describe_gauge!(
        "shardcast_tcp_connections",
        "Open TCP connections (sessions and HTTP requests alike), what the connection capacity is compared against."
    );
    describe_gauge!(
        "shardcast_connection_capacity",
        "TCP connections the open-file limit allows after the reserve; new sessions beyond it are refused."
    );
    describe_counter!("shardcast_connections_opened_total", "Transport connections opened.");
    describe_counter!(
        "shardcast_connections_refused_total",
        "Connections refused before a session began, by reason (capacity: over the connection capacity; descriptors: out of file descriptors)."
    );
    describe_counter!("shardcast_connections_closed_total", "Transport connections closed, by reason.");
    describe_counter!("shardcast_events_received_total", "Client events received, by event name (other: unknown names).");
    describe_counter!("shardcast_requests_rejected_total", "Client requests refused, by error code.");
    describe_counter!("shardcast_broadcasts_total", "Publishes and relays, by scope (all, room, user, socket).");
    describe_counter!("shardcast_messages_delivered_total", "Messages queued to recipient connections by deliveries: broadcasts, relays, private messages, presence and room announcements.");
    describe_counter!("shardcast_messages_dropped_total", "Messages not queued because the recipient's outbound queue was full.");
    describe_counter!("shardcast_bytes_received_total", Unit::Bytes, "Bytes read from client sockets.");
    describe_counter!("shardcast_bytes_sent_total", Unit::Bytes, "Bytes written to client sockets.");
    describe_counter!("shardcast_http_requests_total", "HTTP requests (API, health, metrics, handshakes), by route and status.");
    describe_gauge!("shardcast_cluster_nodes", "Cluster mode: live nodes (with a fresh heartbeat key), this one included.");
    describe_gauge!("shardcast_cluster_redis_up", "Cluster mode: 1 while Redis answers, 0 while cross-node delivery is degraded.");
    describe_gauge!("shardcast_cluster_subscriptions", "Cluster mode: Redis channels this node is subscribed to.");
    describe_counter!("shardcast_cluster_messages_published_total", "Cluster mode: messages this node published on Redis.");
    describe_counter!("shardcast_cluster_messages_received_total", "Cluster mode: messages this node received from Redis (its own included).");
    describe_counter!("shardcast_cluster_bytes_published_total", Unit::Bytes, "Cluster mode: bytes of the messages published.");
    describe_counter!("shardcast_cluster_bytes_received_total", Unit::Bytes, "Cluster mode: bytes of the messages received.");
    describe_counter!(
        "shardcast_cluster_publish_failures_total",
        "Cluster mode: publishes that could not reach Redis (the other nodes missed them; local delivery happened)."
    );
    describe_counter!("shardcast_cluster_messages_undecodable_total", "Cluster mode: messages from Redis that could not be read (dropped).");
}
