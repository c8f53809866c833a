//! The live side of measurement: what riders record into while the test
//! runs, and what the reporter drains once per second.
//!
//! Samples go into a few sharded cells (a shard per worker thread, picked
//! once per thread), so recording is an uncontended lock and a histogram
//! increment. Failures, close codes and per-node counts are rarer and sit
//! behind one lock each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::summary::{Cell, FailureRow, Metric, NodeCounts};

const SHARDS: usize = 16;

struct Shard {
    cells: Vec<Cell>,
}

/// A failure cause seen while running.
struct FailureLive {
    occurrences: u64,
    first_seen: u64,
    last_seen: u64,
}

#[derive(Default)]
struct NodeLive {
    connects: u64,
    open: u64,
}

/// Fan-out counters, updated by guardians and riders.
#[derive(Default)]
pub(crate) struct FanoutLive {
    pub(crate) expected: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) reorders: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) lost: AtomicU64,
}

pub(crate) struct Recorder {
    shards: Box<[Mutex<Shard>]>,
    failures: Mutex<HashMap<(Metric, String), FailureLive>>,
    exceptions: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<u16, u64>>,
    nodes: Mutex<BTreeMap<String, NodeLive>>,
    pub(crate) fanout: FanoutLive,
    /// Riders between their start and stop.
    pub(crate) users: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    cells: vec![Cell::default(); Metric::COUNT],
                })
            })
            .collect();
        Recorder {
            shards,
            failures: Mutex::default(),
            exceptions: Mutex::default(),
            closes: Mutex::default(),
            nodes: Mutex::default(),
            fanout: FanoutLive::default(),
            users: AtomicU64::new(0),
        }
    }

    fn with_cell(&self, m: Metric, f: impl FnOnce(&mut Cell)) {
        let mut shard = self.shards[shard_index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut shard.cells[m.index()]);
    }

    /// A request that got its answer.
    pub(crate) fn success(&self, m: Metric, latency: Duration, bytes: usize) {
        let us = latency.as_micros() as u64;
        self.with_cell(m, |c| {
            c.count += 1;
            c.bytes += bytes as u64;
            c.sum_us += us;
            c.hist.record(us);
        });
    }

    /// A request that failed; `latency` when the failure has one (an error
    /// reply, a timeout), none when nothing was measured (a refused connection).
    pub(crate) fn failure(&self, m: Metric, latency: Option<Duration>, cause: &str) {
        self.with_cell(m, |c| {
            c.count += 1;
            c.failures += 1;
            if let Some(l) = latency {
                let us = l.as_micros() as u64;
                c.sum_us += us;
                c.hist.record(us);
            }
        });
        let now = navcast::clock::unix_s() as u64;
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let e = f.entry((m, cause.to_string())).or_insert(FailureLive {
            occurrences: 0,
            first_seen: now,
            last_seen: now,
        });
        e.occurrences += 1;
        e.last_seen = now;
    }

    /// Something the client did not expect (unparseable frame, reply to
    /// nothing); kept with a count, like Locust's exceptions.
    pub(crate) fn exception(&self, message: &str) {
        *self
            .exceptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(message.to_string())
            .or_default() += 1;
    }

    pub(crate) fn closed(&self, code: u16) {
        *self
            .closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub(crate) fn node_open(&self, node: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let n = nodes.entry(node.to_string()).or_default();
        n.connects += 1;
        n.open += 1;
    }

    pub(crate) fn node_close(&self, node: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(node) {
            n.open = n.open.saturating_sub(1);
        }
    }

    /// Moves every sample recorded since the last call into `into`.
    pub(crate) fn drain(&self, into: &mut [Cell]) {
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (dst, src) in into.iter_mut().zip(s.cells.iter_mut()) {
                if src.count > 0 || !src.hist.is_empty() {
                    dst.add(src);
                    src.count = 0;
                    src.failures = 0;
                    src.bytes = 0;
                    src.sum_us = 0;
                    src.hist.reset();
                }
            }
        }
    }

    /// Open sessions per node now, and connects so far.
    pub(crate) fn nodes(&self) -> BTreeMap<String, NodeCounts> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    NodeCounts {
                        connects: v.connects,
                        peak_open: v.open,
                    },
                )
            })
            .collect()
    }

    pub(crate) fn failures(&self) -> Vec<FailureRow> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<FailureRow> = f
            .iter()
            .map(|((m, cause), v)| FailureRow {
                method: m.kind().into(),
                name: m.name().into(),
                error: cause.clone(),
                occurrences: v.occurrences,
                first_seen: v.first_seen,
                last_seen: v.last_seen,
            })
            .collect();
        rows.sort_by(|a, b| b.occurrences.cmp(&a.occurrences).then(a.name.cmp(&b.name)));
        rows
    }

    pub(crate) fn exceptions(&self) -> BTreeMap<String, u64> {
        self.exceptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn close_codes(&self) -> BTreeMap<u16, u64> {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Failures so far, all metrics (for the progress line).
    pub(crate) fn failure_total(&self) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|f| f.occurrences)
            .sum()
    }
}
