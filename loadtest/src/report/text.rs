//! The closing text on stdout: stats table, close codes, nodes, fan-out,
//! the client's own cost and the verdict of each criterion.

use std::fmt::Write as _;

use super::series::{client_cost, stat_rows};
use crate::criteria::{Evaluation, Status};
use crate::summary::{Cell, Summary};

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
    if let Some(network) = &s.network {
        let _ = writeln!(out, "network: {network}");
    }
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
        "fan-out: expected {} received {} lost {} gaps {} duplicates {} reorders {} recovered {}",
        f.expected, f.received, f.lost, f.gaps, f.duplicates, f.reorders, f.recovered
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
fn client_line(s: &Summary) -> Option<String> {
    let c = client_cost(s)?;
    let mut line = format!(
        "client: {} process(es), {} thread(s), {:.1} CPU s ({:.0} % of one core), peak RSS {:.0} MiB, {} round trips",
        c.processes, c.threads, c.cpu_s, c.core_pct, c.peak_rss_mib, c.round_trips,
    );
    if let Some(per) = c.per_1000 {
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
