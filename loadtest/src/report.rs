//! Writing results: Locust-compatible CSVs, the JSON summary, the HTML
//! report (see [`crate::html`]) and the closing text on stdout.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::Outcome;
use crate::cli::OutputArgs;
use crate::criteria::{self, Evaluation, Status};
use crate::hist::Hist;
use crate::summary::{Cell, Metric, Summary};

/// Locust's percentile columns.
pub const PERCENTILES: [(f64, &str); 11] = [
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

pub const STATS_HEADER: &str = "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%";
pub const HISTORY_HEADER: &str = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size";
pub const FAILURES_HEADER: &str = "Method,Name,Error,Occurrences,First Seen,Last Seen";
pub const EXCEPTIONS_HEADER: &str = "Count,Message,Traceback,Nodes";

/// A CSV field, quoted when needed.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Integer milliseconds, as Locust writes percentiles.
fn ms_int(us: Option<u64>) -> String {
    match us {
        Some(us) => format!("{}", (us as f64 / 1000.0).round() as u64),
        None => "N/A".into(),
    }
}

fn ms_f(us: f64) -> String {
    let v = (us / 1000.0 * 1000.0).round() / 1000.0;
    format!("{v}")
}

fn num(x: f64) -> String {
    let v = (x * 1000.0).round() / 1000.0;
    format!("{v}")
}

fn percentile_fields(h: &Hist, n: u64) -> String {
    PERCENTILES
        .iter()
        .map(|(q, _)| {
            if n == 0 {
                "N/A".into()
            } else {
                ms_int(h.quantile(*q))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Type, name and cell of each row of the stats table, then the aggregate.
pub fn stat_rows(s: &Summary) -> (Vec<(Metric, Cell)>, Cell) {
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

fn stats_line(kind: &str, name: &str, c: &Cell, secs: f64) -> String {
    let secs = secs.max(1e-9);
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}",
        field(kind),
        field(name),
        c.count,
        c.failures,
        if c.hist.is_empty() {
            "0".into()
        } else {
            ms_int(c.hist.quantile(0.5))
        },
        c.mean_us().map(ms_f).unwrap_or_else(|| "0".into()),
        c.hist
            .min()
            .map(|v| ms_f(v as f64))
            .unwrap_or_else(|| "0".into()),
        c.hist
            .max()
            .map(|v| ms_f(v as f64))
            .unwrap_or_else(|| "0".into()),
        if c.count == 0 {
            "0".into()
        } else {
            num(c.bytes as f64 / c.count as f64)
        },
        num(c.count as f64 / secs),
        num(c.failures as f64 / secs),
        percentile_fields(&c.hist, c.hist.len()),
    )
}

pub fn stats_csv(s: &Summary) -> String {
    let secs = s.duration_s();
    let (rows, agg) = stat_rows(s);
    let mut out = String::from(STATS_HEADER);
    out.push('\n');
    for (m, c) in &rows {
        out.push_str(&stats_line(m.kind(), m.name(), c, secs));
        out.push('\n');
    }
    out.push_str(&stats_line("", "Aggregated", &agg, secs));
    out.push('\n');
    out
}

/// One metric (or the aggregate) at one second of the history.
#[derive(Debug, Clone, Default)]
pub struct Point {
    pub count: u64,
    pub failures: u64,
    /// Over the last 10 s (Locust's window), µs; `None` when empty.
    pub window: [Option<u64>; 11],
    /// Running totals up to this second.
    pub total_count: u64,
    pub total_failures: u64,
    pub total_bytes: u64,
    pub total_sum_us: u64,
    pub total_samples: u64,
    pub total_median: Option<u64>,
    pub total_min: Option<u64>,
    pub total_max: Option<u64>,
}

/// The history, second by second: per metric (in `Metric::ALL` order,
/// then the aggregate) the second's counts, the windowed percentiles and
/// the running totals. Used by the history CSV and the HTML charts.
pub struct Series {
    pub t: Vec<u64>,
    pub users: Vec<u64>,
    pub stage: Vec<usize>,
    /// `points[m][i]`: metric `m` (index `Metric::COUNT` = aggregate) at second `i`.
    pub points: Vec<Vec<Point>>,
    /// Which metrics had any request at or before each second.
    pub seen: Vec<Vec<bool>>,
}

pub fn series(s: &Summary) -> Series {
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

pub fn history_csv(series: &Series) -> String {
    let mut out = String::from(HISTORY_HEADER);
    out.push('\n');
    for (i, t) in series.t.iter().enumerate() {
        let names = Metric::ALL
            .iter()
            .enumerate()
            .filter(|(j, _)| series.seen[i][*j])
            .map(|(j, m)| (j, m.kind(), m.name()))
            .chain(std::iter::once((Metric::COUNT, "", "Aggregated")));
        for (j, kind, name) in names {
            let p = &series.points[j][i];
            let window = p
                .window
                .iter()
                .map(|v| ms_int(*v))
                .collect::<Vec<_>>()
                .join(",");
            let or0 = |v: Option<u64>| v.map(|v| ms_f(v as f64)).unwrap_or_else(|| "0".into());
            let median = p
                .total_median
                .map(|v| ms_int(Some(v)))
                .unwrap_or_else(|| "0".into());
            let avg = if p.total_samples == 0 {
                "0".into()
            } else {
                ms_f(p.total_sum_us as f64 / p.total_samples as f64)
            };
            let size = if p.total_count == 0 {
                "0".into()
            } else {
                num(p.total_bytes as f64 / p.total_count as f64)
            };
            let _ = writeln!(
                out,
                "{t},{},{},{},{},{},{window},{},{},{median},{avg},{},{},{size}",
                series.users[i],
                field(kind),
                field(name),
                p.count,
                p.failures,
                p.total_count,
                p.total_failures,
                or0(p.total_min),
                or0(p.total_max),
            );
        }
    }
    out
}

pub fn failures_csv(s: &Summary) -> String {
    let mut out = String::from(FAILURES_HEADER);
    out.push('\n');
    for f in &s.failures {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            field(&f.method),
            field(&f.name),
            field(&f.error),
            f.occurrences,
            f.first_seen,
            f.last_seen
        );
    }
    out
}

pub fn exceptions_csv(s: &Summary) -> String {
    let mut out = String::from(EXCEPTIONS_HEADER);
    out.push('\n');
    for e in &s.exceptions {
        let _ = writeln!(
            out,
            "{},{},{},{}",
            e.count,
            field(&e.message),
            field(&e.traceback),
            field(&e.nodes)
        );
    }
    out
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes every requested output and returns the verdicts.
pub fn write_outputs(s: &Summary, eval: &Evaluation, out: &OutputArgs) -> anyhow::Result<()> {
    let needs_series = out.csv.is_some() || out.html.is_some();
    let series = needs_series.then(|| series(s));
    if let Some(prefix) = &out.csv {
        let series = series.as_ref().expect("computed");
        write(Path::new(&format!("{prefix}_stats.csv")), &stats_csv(s))?;
        write(
            Path::new(&format!("{prefix}_stats_history.csv")),
            &history_csv(series),
        )?;
        write(
            Path::new(&format!("{prefix}_failures.csv")),
            &failures_csv(s),
        )?;
        write(
            Path::new(&format!("{prefix}_exceptions.csv")),
            &exceptions_csv(s),
        )?;
    }
    if let Some(path) = &out.html {
        let series = series.as_ref().expect("computed");
        write(path, &crate::html::render(s, eval, series))?;
    }
    if let Some(path) = &out.json {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        s.write(path)?;
    }
    Ok(())
}

/// The closing text: stats table, criteria, where a stress run broke.
pub fn text_report(s: &Summary, eval: &Evaluation) -> String {
    let mut out = String::new();
    let (rows, agg) = stat_rows(s);
    let _ = writeln!(
        out,
        "\nnavcast-load: profile {} · {} · segments {} · {:.0} s",
        s.profile,
        s.hosts.join(", "),
        s.segments.join(" "),
        s.duration_s()
    );
    let _ = writeln!(
        out,
        "{:<10} {:<22} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "type", "name", "requests", "fails", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"
    );
    let secs = s.duration_s().max(1e-9);
    let q = |c: &Cell, q: f64| {
        c.hist
            .quantile(q)
            .map(|v| format!("{:.2}", v as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    for (kind, name, c) in rows
        .iter()
        .map(|(m, c)| (m.kind(), m.name(), c))
        .chain(std::iter::once(("", "Aggregated", &agg)))
    {
        let _ = writeln!(
            out,
            "{:<10} {:<22} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9.1}",
            kind,
            name,
            c.count,
            c.failures,
            q(c, 0.5),
            q(c, 0.95),
            q(c, 0.99),
            q(c, 1.0),
            c.count as f64 / secs
        );
    }
    if !s.close_codes.is_empty() {
        let codes: Vec<String> = s
            .close_codes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "close codes: {}", codes.join(", "));
    }
    if !s.nodes.is_empty() {
        let nodes: Vec<String> = s
            .nodes
            .iter()
            .map(|(k, v)| format!("{k}: {} at peak ({} connects)", v.peak_open, v.connects))
            .collect();
        let _ = writeln!(out, "nodes: {}", nodes.join(", "));
    }
    let f = &s.fanout;
    let _ = writeln!(
        out,
        "fan-out: expected {} received {} lost {} gaps {} duplicates {} reorders {}",
        f.expected, f.received, f.lost, f.gaps, f.duplicates, f.reorders
    );
    if let Some(line) = client_line(s) {
        let _ = writeln!(out, "{line}");
    }
    for why in &s.stopped_early {
        let _ = writeln!(out, "stopped early: {why}");
    }
    if let Some(b) = &eval.stress_break {
        let _ = writeln!(
            out,
            "stress: broke at {} users in stage {:?} ({})",
            b.users,
            b.stage,
            b.criteria.join(", ")
        );
    } else if s.stress {
        let _ = writeln!(out, "stress: no step broke a threshold");
    }
    let _ = writeln!(out, "criteria:");
    for v in &eval.verdicts {
        let mark = match v.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIP",
        };
        let note = if v.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", v.note)
        };
        let _ = writeln!(
            out,
            "  [{mark}] {}: {} (target {}){note}",
            v.criterion, v.observed, v.target
        );
    }
    let failed: Vec<&str> = eval.failed().iter().map(|v| v.criterion.as_str()).collect();
    if failed.is_empty() {
        let _ = writeln!(out, "result: PASS");
    } else {
        let _ = writeln!(out, "result: FAIL ({})", failed.join(", "));
    }
    out
}

/// What the client cost, in one line (none for summaries without it).
pub fn client_line(s: &Summary) -> Option<String> {
    let c = &s.client;
    if c.processes == 0 {
        return None;
    }
    let secs = s.duration_s().max(1e-9);
    let mut line = format!(
        "client: {} process(es), {} thread(s), {:.1} CPU s ({:.0} % of one core), peak RSS {:.0} MiB, {} round trips",
        c.processes,
        c.threads,
        c.cpu_s,
        c.cpu_s / secs * 100.0,
        c.peak_rss_bytes as f64 / 1048576.0,
        s.round_trips(),
    );
    if let Some(per) = s.client_cpu_per_1000() {
        let _ = write!(line, " → {per:.4} CPU s per 1000");
    }
    if c.saturated_s > 0 {
        let _ = write!(
            line,
            "\nwarning: the client used ≥ 90 % of its threads for {} s; those seconds may measure the client, not the server (add --threads or --processes)",
            c.saturated_s
        );
    }
    Some(line)
}

/// Judges, writes and prints a finished summary.
pub fn finish(summary: Summary, out: &OutputArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let eval = criteria::evaluate(&summary);
    write_outputs(&summary, &eval, out)?;
    if !quiet || !eval.passed() {
        // Not `print!`: a closed pipe (`| head`) must not panic the run
        // after its reports are written.
        use std::io::Write as _;
        let _ = std::io::stdout()
            .lock()
            .write_all(text_report(&summary, &eval).as_bytes());
    }
    Ok(Outcome {
        passed: eval.passed(),
        failed: eval.failed().iter().map(|v| v.criterion.clone()).collect(),
        evaluation: eval,
        summary,
    })
}
