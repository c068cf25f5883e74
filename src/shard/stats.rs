//! Per-shard counters for the metrics endpoint.
//!
//! Plain `Cell`s owned by the shard thread: counting a message costs an
//! add, never a lock or an atomic shared between cores. A scrape asks every
//! shard for a [`CounterSnapshot`] and sums them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::transport::{LatencySnapshot, Traffic};

/// Latency samples kept between two scrapes; beyond this, further ones are
/// only counted in buckets (so the histogram still counts every publish).
const MAX_LATENCY_SAMPLES: usize = 20_000;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub use crate::transport::LATENCY_BUCKETS;

type LabelCounts = RefCell<HashMap<&'static str, u64, ahash::RandomState>>;

#[derive(Default)]
pub struct ShardCounters {
    /// Transport connections open right now on this shard.
    pub open_connections: Cell<u64>,
    pub connections_opened: Cell<u64>,
    connections_closed: LabelCounts,
    events_received: LabelCounts,
    rejected: LabelCounts,
    broadcasts: LabelCounts,
    /// Connections refused before a session began, by reason (`capacity`, `descriptors`).
    refused: LabelCounts,
    pub messages_delivered: Cell<u64>,
    pub messages_dropped: Cell<u64>,
    pub traffic: Rc<Traffic>,
    latency_samples: RefCell<Vec<f64>>,
    /// Samples past the cap, per bucket (the last slot is above every bound).
    latency_overflow: RefCell<[u64; LATENCY_BUCKETS.len() + 1]>,
    http_requests: RefCell<HashMap<(&'static str, u16), u64, ahash::RandomState>>,
}

fn bump(counts: &LabelCounts, label: &'static str) {
    *counts.borrow_mut().entry(label).or_default() += 1;
}

impl ShardCounters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }

    pub fn connection_opened(&self) {
        Self::add(&self.connections_opened, 1);
        Self::add(&self.open_connections, 1);
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.open_connections.set(self.open_connections.get().saturating_sub(1));
        bump(&self.connections_closed, reason);
    }

    pub fn event_received(&self, event: &'static str) {
        bump(&self.events_received, event);
    }

    pub fn request_rejected(&self, code: &'static str) {
        bump(&self.rejected, code);
    }

    pub fn broadcast(&self, scope: &'static str) {
        bump(&self.broadcasts, scope);
    }

    /// A connection refused before its session began: `capacity` (a new
    /// session over the connection capacity) or `descriptors` (`accept`
    /// failed with `EMFILE`/`ENFILE`; accepted on the spare and closed).
    pub fn connection_refused(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    pub fn fan_out_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let mut samples = self.latency_samples.borrow_mut();
        if samples.len() < MAX_LATENCY_SAMPLES {
            samples.push(seconds);
        } else {
            let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
            self.latency_overflow.borrow_mut()[bucket] += 1;
        }
    }

    pub fn http_request(&self, route: &'static str, status: u16) {
        *self.http_requests.borrow_mut().entry((route, status)).or_default() += 1;
    }

    /// Totals so far; latency samples are handed over (and forgotten here).
    pub fn snapshot(&self) -> CounterSnapshot {
        let list = |counts: &LabelCounts| counts.borrow().iter().map(|(k, v)| (*k, *v)).collect();
        CounterSnapshot {
            open_connections: self.open_connections.get(),
            connections_opened: self.connections_opened.get(),
            connections_closed: list(&self.connections_closed),
            events_received: list(&self.events_received),
            rejected: list(&self.rejected),
            broadcasts: list(&self.broadcasts),
            refused: list(&self.refused),
            messages_delivered: self.messages_delivered.get(),
            messages_dropped: self.messages_dropped.get(),
            bytes_in: self.traffic.bytes_in.get(),
            bytes_out: self.traffic.bytes_out.get(),
            latency_samples: std::mem::take(&mut *self.latency_samples.borrow_mut()),
            latency_overflow: std::mem::take(&mut *self.latency_overflow.borrow_mut()).to_vec(),
            written_latency: self.traffic.written_latency.take(),
            http_requests: self.http_requests.borrow().iter().map(|(k, v)| (*k, *v)).collect(),
            table_entries: Vec::new(),
        }
    }
}

/// One shard's counters at one moment, sent to the scraping thread.
#[derive(Debug, Default, Clone)]
pub struct CounterSnapshot {
    pub open_connections: u64,
    pub connections_opened: u64,
    pub connections_closed: Vec<(&'static str, u64)>,
    pub events_received: Vec<(&'static str, u64)>,
    pub rejected: Vec<(&'static str, u64)>,
    pub broadcasts: Vec<(&'static str, u64)>,
    pub refused: Vec<(&'static str, u64)>,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_samples: Vec<f64>,
    /// Per bucket of [`LATENCY_BUCKETS`] (plus one above them): samples past the cap.
    pub latency_overflow: Vec<u64>,
    /// Publish → written to the socket (see [`crate::transport::Traffic`]).
    pub written_latency: LatencySnapshot,
    pub http_requests: Vec<((&'static str, u16), u64)>,
    /// Entries in the shard's tables, by table (filled in by the shard, not
    /// the counters: see `Shard::table_entries`).
    pub table_entries: Vec<(&'static str, usize)>,
}
