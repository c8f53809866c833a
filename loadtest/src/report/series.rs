//! The numbers the reports are drawn from: the rows of the stats table
//! and the per-second history with Locust's windowed percentiles.
//!
//! Both the CSVs and the HTML charts read these, so a figure in the page
//! and the same figure in a CSV cannot disagree.

use crate::hist::Hist;
use crate::summary::{Cell, Metric, Summary};

/// Locust's percentile columns.
pub(super) const PERCENTILES: [(f64, &str); 11] = [
    (0.5, "50%"),
    (0.66, "66%"),
    (0.75, "75%"),
    (0.8, "80%"),
    (0.9, "90%"),
    (0.95, "95%"),
    (0.98, "98%"),
    (0.99, "99%"),
    (0.999, "99.9%"),
    (0.9999, "99.99%"),
    (1.0, "100%"),
];

/// Type, name and cell of each row of the stats table, then the aggregate.
pub(super) fn stat_rows(s: &Summary) -> (Vec<(Metric, Cell)>, Cell) {
    let mut rows: Vec<(Metric, Cell)> = Metric::ALL
        .iter()
        .map(|m| (*m, s.cell(*m)))
        .filter(|(_, c)| c.count > 0)
        .collect();
    rows.sort_by(|a, b| a.0.name().cmp(b.0.name()));
    let mut agg = Cell::default();
    for (_, c) in &rows {
        agg.add(c);
    }
    (rows, agg)
}

/// One metric (or the aggregate) at one second of the history.
#[derive(Debug, Clone, Default)]
pub(super) struct Point {
    pub(super) count: u64,
    pub(super) failures: u64,
    /// Over the last 10 s (Locust's window), µs; `None` when empty.
    pub(super) window: [Option<u64>; 11],
    /// Running totals up to this second.
    pub(super) total_count: u64,
    pub(super) total_failures: u64,
    pub(super) total_bytes: u64,
    pub(super) total_sum_us: u64,
    pub(super) total_samples: u64,
    pub(super) total_median: Option<u64>,
    pub(super) total_min: Option<u64>,
    pub(super) total_max: Option<u64>,
}

/// The history, second by second: per metric (in `Metric::ALL` order,
/// then the aggregate) the second's counts, the windowed percentiles and
/// the running totals. Used by the history CSV and the HTML charts.
pub(super) struct Series {
    pub(super) t: Vec<u64>,
    pub(super) users: Vec<u64>,
    pub(super) stage: Vec<usize>,
    /// `points[m][i]`: metric `m` (index `Metric::COUNT` = aggregate) at second `i`.
    pub(super) points: Vec<Vec<Point>>,
    /// Which metrics had any request at or before each second.
    pub(super) seen: Vec<Vec<bool>>,
}

/// The history of `s` as a [`Series`].
pub(super) fn series(s: &Summary) -> Series {
    let n = Metric::COUNT + 1;
    let mut out = Series {
        t: Vec::new(),
        users: Vec::new(),
        stage: Vec::new(),
        points: vec![Vec::new(); n],
        seen: Vec::new(),
    };
    let mut windows: Vec<std::collections::VecDeque<Hist>> = vec![Default::default(); n];
    let mut window_sum = vec![Hist::default(); n];
    let mut totals = vec![Cell::default(); n];
    let mut seen = vec![false; n];
    for row in &s.history {
        out.t.push(row.t);
        out.users.push(row.users);
        out.stage.push(row.stage);
        let mut agg_sec = Cell::default();
        let mut secs: Vec<Cell> = Vec::with_capacity(n);
        for m in Metric::ALL {
            let c = match row.cells.get(m.name()) {
                Some(rc) => Cell {
                    count: rc.count,
                    failures: rc.failures,
                    bytes: rc.bytes,
                    sum_us: rc.sum_us,
                    hist: rc.hist.unpack(),
                },
                None => Cell::default(),
            };
            agg_sec.add(&c);
            secs.push(c);
        }
        secs.push(agg_sec);
        for (i, c) in secs.into_iter().enumerate() {
            let w = &mut windows[i];
            if w.len() == 10
                && let Some(old) = w.pop_front()
            {
                window_sum[i].subtract(&old);
            }
            window_sum[i].add(&c.hist);
            totals[i].add(&c);
            seen[i] |= c.count > 0;
            let mut window = [None; 11];
            if !window_sum[i].is_empty() {
                for (j, (q, _)) in PERCENTILES.iter().enumerate() {
                    window[j] = window_sum[i].quantile(*q);
                }
            }
            let t = &totals[i];
            out.points[i].push(Point {
                count: c.count,
                failures: c.failures,
                window,
                total_count: t.count,
                total_failures: t.failures,
                total_bytes: t.bytes,
                total_sum_us: t.sum_us,
                total_samples: t.hist.len(),
                total_median: t.hist.quantile(0.5),
                total_min: t.hist.min(),
                total_max: t.hist.max(),
            });
            w.push_back(c.hist);
        }
        out.seen.push(seen.clone());
    }
    out
}

/// What the client cost, as the text and the HTML report both show it.
pub(super) struct ClientCost {
    pub(super) processes: u32,
    pub(super) threads: u64,
    pub(super) cpu_s: f64,
    /// The CPU seconds over the run's duration, in % of one core.
    pub(super) core_pct: f64,
    pub(super) peak_rss_mib: f64,
    pub(super) round_trips: u64,
    /// CPU seconds per 1000 round trips, the figure load tools compare on.
    pub(super) per_1000: Option<f64>,
    /// Seconds in which the client was saturated.
    pub(super) saturated_s: u64,
}

/// The client's cost; `None` for summaries that do not carry it.
pub(super) fn client_cost(s: &Summary) -> Option<ClientCost> {
    let c = &s.client;
    (c.processes > 0).then(|| ClientCost {
        processes: c.processes,
        threads: c.threads,
        cpu_s: c.cpu_s,
        core_pct: c.cpu_s / s.duration_s().max(1e-9) * 100.0,
        peak_rss_mib: c.peak_rss_bytes as f64 / 1048576.0,
        round_trips: s.round_trips(),
        per_1000: s.client_cpu_per_1000(),
        saturated_s: c.saturated_s,
    })
}
