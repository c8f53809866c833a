//! Locust's four CSV files, with its exact headers, so tooling written for
//! Locust reads navcast-load's results unchanged.

use std::fmt::Write as _;

use super::series::{PERCENTILES, Series, stat_rows};
use crate::hist::Hist;
use crate::summary::{Cell, Metric, Summary};

const STATS_HEADER: &str = "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%";
const HISTORY_HEADER: &str = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size";
const FAILURES_HEADER: &str = "Method,Name,Error,Occurrences,First Seen,Last Seen";
const EXCEPTIONS_HEADER: &str = "Count,Message,Traceback,Nodes";

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

/// `PREFIX_stats.csv`: one row per metric, then the aggregate.
pub(super) fn stats(s: &Summary) -> String {
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

/// `PREFIX_stats_history.csv`: per second, a row per metric seen so far
/// and the aggregate.
pub(super) fn history(series: &Series) -> String {
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

/// `PREFIX_failures.csv`: one row per metric and cause.
pub(super) fn failures(s: &Summary) -> String {
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

/// `PREFIX_exceptions.csv`: what went wrong outside any request.
pub(super) fn exceptions(s: &Summary) -> String {
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
