//! The run's results as one value: what the JSON summary holds, what the
//! CSV and HTML reports are written from, and what `merge` adds up.
//!
//! Everything here is additive (counters, histograms, per-second rows keyed
//! by Unix second), so the summaries of the segments of one test merge into
//! the summary of the whole test exactly.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::hist::{Hist, PackedHist};
use crate::profile::Thresholds;

/// Version of the JSON layout.
pub(crate) const FORMAT: u32 = 1;

/// What is measured. Names and request types are those of the
/// reference's reports (README, "Metrics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Login,
    Refresh,
    WsConnect,
    WsStartNavigation,
    WsLocationUpdate,
    WsShareNavigation,
    WsWatch,
    FanoutDelivery,
    /// From the network's return after a tunnel to `watching` (guardians).
    WsReconnect,
    /// How long a guardian in a tunnel saw nothing: from entering it to
    /// the `watching` reply after it.
    GuardianBlind,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Login,
        Metric::Refresh,
        Metric::WsConnect,
        Metric::WsStartNavigation,
        Metric::WsLocationUpdate,
        Metric::WsShareNavigation,
        Metric::WsWatch,
        Metric::FanoutDelivery,
        Metric::WsReconnect,
        Metric::GuardianBlind,
    ];
    pub(crate) const COUNT: usize = Metric::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Metric::Login => "login",
            Metric::Refresh => "refresh",
            Metric::WsConnect => "ws_connect",
            Metric::WsStartNavigation => "ws_start_navigation",
            Metric::WsLocationUpdate => "ws_location_update",
            Metric::WsShareNavigation => "ws_share_navigation",
            Metric::WsWatch => "ws_watch",
            Metric::FanoutDelivery => "fanout_delivery",
            Metric::WsReconnect => "ws_reconnect",
            Metric::GuardianBlind => "guardian_blind",
        }
    }

    /// Locust's request type column.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Metric::Login | Metric::Refresh => "HTTP",
            _ => "WebSocket",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Requests the client made (fan-out deliveries are received, not
    /// requested, and have their own criterion).
    pub(crate) fn is_request(self) -> bool {
        !matches!(
            self,
            Metric::FanoutDelivery | Metric::WsReconnect | Metric::GuardianBlind
        )
    }
}

/// Counters and a latency histogram of one metric over some span.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cell {
    pub count: u64,
    pub failures: u64,
    /// Sum of reply sizes, bytes (Locust's content size).
    pub(crate) bytes: u64,
    /// Sum of the latencies recorded in `hist`, µs (an exact mean).
    pub(crate) sum_us: u64,
    pub hist: Hist,
}

impl Cell {
    pub(crate) fn add(&mut self, o: &Cell) {
        self.count += o.count;
        self.failures += o.failures;
        self.bytes += o.bytes;
        self.sum_us += o.sum_us;
        self.hist.add(&o.hist);
    }

    pub(crate) fn mean_us(&self) -> Option<f64> {
        let n = self.hist.len();
        (n > 0).then(|| self.sum_us as f64 / n as f64)
    }
}

/// One metric in one second, with its histogram kept encoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RowCell {
    pub(crate) count: u64,
    pub(crate) failures: u64,
    pub(crate) bytes: u64,
    pub(crate) sum_us: u64,
    pub(crate) hist: PackedHist,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryRow {
    /// Unix seconds.
    pub(crate) t: u64,
    /// Riders running.
    pub(crate) users: u64,
    /// Index of the stage at that second.
    pub(crate) stage: usize,
    pub(crate) cells: BTreeMap<String, RowCell>,
    /// CPU time the client's process(es) used in this second, ms.
    #[serde(default)]
    pub client_cpu_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSummary {
    pub(crate) name: String,
    /// Seconds from the test start (after time scaling).
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
    /// The profile's target.
    pub(crate) users: u64,
    /// Most riders seen running in the stage.
    pub(crate) peak_users: u64,
    pub(crate) cells: BTreeMap<String, Cell>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailureRow {
    pub(crate) method: String,
    pub name: String,
    pub error: String,
    pub(crate) occurrences: u64,
    /// Unix seconds.
    pub(crate) first_seen: u64,
    pub(crate) last_seen: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExceptionRow {
    pub(crate) count: u64,
    pub(crate) message: String,
    pub(crate) traceback: String,
    pub(crate) nodes: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCounts {
    /// Successful WebSocket connects that landed on this node.
    pub connects: u64,
    /// Sessions open on this node when the client had the most open.
    pub peak_open: u64,
}

/// Peer events seen by guardians.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FanoutCounts {
    /// Navigation events riders got while a guardian watched them.
    pub expected: u64,
    /// Distinct peer events guardians received.
    pub received: u64,
    pub duplicates: u64,
    /// A `seq` lower than one already seen (not a restart at 1).
    pub(crate) reorders: u64,
    /// Sequence numbers skipped.
    pub gaps: u64,
    /// Per rider/guardian pair, the larger of the gaps and the shortfall
    /// of received against expected, summed: events lost for good.
    pub lost: u64,
    /// Events a guardian got back by `watch` with `since` after a tunnel.
    #[serde(default)]
    pub recovered: u64,
}

/// A sample of a node's `/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSample {
    pub(crate) t: u64,
    pub host: String,
    pub node_id: String,
    pub(crate) sessions: u64,
    pub rss_bytes: u64,
}

/// What the load client itself used (summed over processes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientUsage {
    /// Processes this summary covers.
    pub processes: u32,
    /// Runtime worker threads, summed over processes (the CPU capacity the
    /// client gave itself).
    pub threads: u64,
    /// User + system CPU seconds from the first rider to the last report.
    pub cpu_s: f64,
    /// Peak resident memory, summed over processes.
    pub peak_rss_bytes: u64,
    /// Seconds in which a process used ≥ 90 % of its threads: the client,
    /// not the server, may have limited the figures of those seconds.
    pub(crate) saturated_s: u64,
}

/// The summary of a run (or of merged runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub(crate) format: u32,
    pub(crate) tool: String,
    pub(crate) profile: String,
    pub(crate) description: String,
    pub(crate) hosts: Vec<String>,
    pub(crate) seed: u64,
    pub(crate) time_scale: f64,
    /// The network the run went over, when it was not plain loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) network: Option<String>,
    /// The segments this summary covers (`1/1` for a whole run).
    pub segments: Vec<String>,
    pub(crate) started_unix_ms: u64,
    pub(crate) ended_unix_ms: u64,
    pub(crate) thresholds: Thresholds,
    /// A stress profile: the report names the step that broke.
    #[serde(default)]
    pub(crate) stress: bool,
    pub metrics: BTreeMap<String, Cell>,
    pub(crate) stages: Vec<StageSummary>,
    pub history: Vec<HistoryRow>,
    pub failures: Vec<FailureRow>,
    pub(crate) exceptions: Vec<ExceptionRow>,
    /// Connection ends by close code (`1000` includes the client's own
    /// closes at stop; `1006` = closed without a close frame).
    pub close_codes: BTreeMap<String, u64>,
    pub nodes: BTreeMap<String, NodeCounts>,
    pub fanout: FanoutCounts,
    pub server: Vec<ServerSample>,
    /// Why the run ended early, if it did.
    pub stopped_early: Vec<String>,
    #[serde(default)]
    pub client: ClientUsage,
}

impl Summary {
    pub fn cell(&self, m: Metric) -> Cell {
        self.metrics.get(m.name()).cloned().unwrap_or_default()
    }

    /// WebSocket request/reply pairs (every request metric but HTTP and
    /// the connect), the unit of the client's CPU cost.
    pub fn round_trips(&self) -> u64 {
        [
            Metric::WsStartNavigation,
            Metric::WsLocationUpdate,
            Metric::WsShareNavigation,
            Metric::WsWatch,
        ]
        .into_iter()
        .map(|m| self.cell(m).count)
        .sum()
    }

    /// The client's CPU seconds per 1000 round trips.
    pub fn client_cpu_per_1000(&self) -> Option<f64> {
        let n = self.round_trips();
        (n > 0 && self.client.processes > 0).then(|| self.client.cpu_s * 1000.0 / n as f64)
    }

    pub(crate) fn duration_s(&self) -> f64 {
        (self.ended_unix_ms.saturating_sub(self.started_unix_ms)) as f64 / 1000.0
    }

    /// Adds another summary of the same test (another segment).
    pub(crate) fn merge(&mut self, o: &Summary) -> anyhow::Result<()> {
        if self.stages.len() != o.stages.len()
            || self
                .stages
                .iter()
                .zip(&o.stages)
                .any(|(a, b)| a.name != b.name)
        {
            anyhow::bail!(
                "summaries of different tests: profile {:?} vs {:?} (stages differ)",
                self.profile,
                o.profile
            );
        }
        // The same segment twice is the same riders counted twice (often
        // the same file given twice); whole runs ("1/1") may be added up.
        if let Some(seg) = o
            .segments
            .iter()
            .find(|seg| seg.as_str() != "1/1" && self.segments.contains(seg))
        {
            anyhow::bail!("segment {seg} is in the merge twice; each segment counts once");
        }
        if self.seed != o.seed {
            eprintln!(
                "navcast-load merge: warning: seeds differ ({} vs {}); totals still add up",
                self.seed, o.seed
            );
        }
        for h in &o.hosts {
            if !self.hosts.contains(h) {
                self.hosts.push(h.clone());
            }
        }
        self.segments.extend(o.segments.iter().cloned());
        self.started_unix_ms = self.started_unix_ms.min(o.started_unix_ms);
        self.ended_unix_ms = self.ended_unix_ms.max(o.ended_unix_ms);
        for (k, c) in &o.metrics {
            self.metrics.entry(k.clone()).or_default().add(c);
        }
        for (a, b) in self.stages.iter_mut().zip(&o.stages) {
            a.peak_users += b.peak_users;
            for (k, c) in &b.cells {
                a.cells.entry(k.clone()).or_default().add(c);
            }
        }
        let mut rows: BTreeMap<u64, HistoryRow> = std::mem::take(&mut self.history)
            .into_iter()
            .map(|r| (r.t, r))
            .collect();
        for r in &o.history {
            let row = rows.entry(r.t).or_insert_with(|| HistoryRow {
                t: r.t,
                stage: r.stage,
                ..Default::default()
            });
            row.users += r.users;
            row.client_cpu_ms += r.client_cpu_ms;
            row.stage = row.stage.max(r.stage);
            for (k, c) in &r.cells {
                let cell = row.cells.entry(k.clone()).or_default();
                cell.count += c.count;
                cell.failures += c.failures;
                cell.bytes += c.bytes;
                cell.sum_us += c.sum_us;
                let mut h = cell.hist.unpack();
                h.add(&c.hist.unpack());
                cell.hist = PackedHist(h.to_bytes());
            }
        }
        self.history = rows.into_values().collect();
        for f in &o.failures {
            match self
                .failures
                .iter_mut()
                .find(|x| x.method == f.method && x.name == f.name && x.error == f.error)
            {
                Some(x) => {
                    x.occurrences += f.occurrences;
                    x.first_seen = x.first_seen.min(f.first_seen);
                    x.last_seen = x.last_seen.max(f.last_seen);
                }
                None => self.failures.push(f.clone()),
            }
        }
        for e in &o.exceptions {
            match self.exceptions.iter_mut().find(|x| x.message == e.message) {
                Some(x) => {
                    x.count += e.count;
                    if !x.nodes.split(' ').any(|n| n == e.nodes) {
                        x.nodes = format!("{} {}", x.nodes, e.nodes);
                    }
                }
                None => self.exceptions.push(e.clone()),
            }
        }
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.nodes {
            let n = self.nodes.entry(k.clone()).or_default();
            n.connects += v.connects;
            n.peak_open += v.peak_open;
        }
        let (a, b) = (&mut self.fanout, &o.fanout);
        a.expected += b.expected;
        a.received += b.received;
        a.duplicates += b.duplicates;
        a.reorders += b.reorders;
        a.recovered += b.recovered;
        a.gaps += b.gaps;
        a.lost += b.lost;
        let (a, b) = (&mut self.client, &o.client);
        a.processes += b.processes;
        a.threads += b.threads;
        a.cpu_s += b.cpu_s;
        a.peak_rss_bytes += b.peak_rss_bytes;
        a.saturated_s += b.saturated_s;
        self.server.extend(o.server.iter().cloned());
        for why in &o.stopped_early {
            if !self.stopped_early.contains(why) {
                self.stopped_early.push(why.clone());
            }
        }
        Ok(())
    }

    pub fn read(path: &std::path::Path) -> anyhow::Result<Summary> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Summary = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a navcast-load JSON summary", path.display()))?;
        if s.format != FORMAT {
            anyhow::bail!(
                "{}: summary format {} (expected {FORMAT})",
                path.display(),
                s.format
            );
        }
        Ok(s)
    }

    /// Reads and merges the summaries of the segments of one test.
    pub(crate) fn read_merged(paths: &[std::path::PathBuf]) -> anyhow::Result<Summary> {
        let (first, rest) = paths.split_first().context("no summary to merge")?;
        let mut s = Summary::read(first)?;
        for p in rest {
            s.merge(&Summary::read(p)?)?;
        }
        Ok(s)
    }

    pub(crate) fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}
