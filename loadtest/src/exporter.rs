//! `--metrics-listen`: the run's live measures in Prometheus's text format,
//! so one Prometheus (and one dashboard) shows the offered load and the
//! latency riders saw beside the nodes' own series.
//!
//! Everything is cumulative since the start of the run, as Prometheus
//! counters are: requests and failures per measure, a latency histogram
//! per measure with fixed buckets (read off the run's HDR histograms, to
//! their three significant digits), the
//! riders running, fan-out counts, and the client's own CPU time. The
//! series are named `navcast_load_*` and carry a `segment` label, so the
//! processes of `--processes` (each on its own port) add up in a query.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::summary::{Cell, Metric};

/// The buckets of every latency histogram, seconds.
const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the exporter shows: a copy taken under the reporter's lock.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub(crate) segment: String,
    /// Cumulative per measure, indexed by [`Metric::index`].
    pub(crate) cells: Vec<Cell>,
    pub(crate) users: u64,
    pub(crate) cpu_s: f64,
    pub(crate) fanout_expected: u64,
    pub(crate) fanout_recovered: u64,
    pub(crate) fanout_lost: u64,
}

/// Serves `/metrics` on `addr` until the task is dropped; `snapshot` is
/// called for each scrape.
pub(crate) async fn serve(
    addr: SocketAddr,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let snapshot = snapshot.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    render(&snapshot()),
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// The text exposition of `s`.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let seg = &s.segment;
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_string()
    };
    let mut lines = Vec::new();
    let n = family("navcast_load_users", "gauge", "Riders running now");
    lines.push(format!("{n}{{segment=\"{seg}\"}} {}", s.users));
    let n = family(
        "navcast_load_client_cpu_seconds_total",
        "counter",
        "CPU time the load client used",
    );
    lines.push(format!("{n}{{segment=\"{seg}\"}} {:.3}", s.cpu_s));
    out.push_str(&lines.join("\n"));
    out.push('\n');

    let mut requests = String::new();
    let mut failures = String::new();
    let mut latency = String::new();
    for m in Metric::ALL {
        let Some(c) = s.cells.get(m.index()) else {
            continue;
        };
        let labels = format!(
            "segment=\"{seg}\",name=\"{}\",type=\"{}\"",
            m.name(),
            m.kind()
        );
        let _ = writeln!(
            requests,
            "navcast_load_requests_total{{{labels}}} {}",
            c.count
        );
        let _ = writeln!(
            failures,
            "navcast_load_failures_total{{{labels}}} {}",
            c.failures
        );
        for b in BUCKETS_S {
            let _ = writeln!(
                latency,
                "navcast_load_latency_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                c.hist.count_at_most((b * 1e6) as u64)
            );
        }
        let _ = writeln!(
            latency,
            "navcast_load_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            c.hist.len()
        );
        let _ = writeln!(
            latency,
            "navcast_load_latency_seconds_sum{{{labels}}} {:.6}",
            c.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            latency,
            "navcast_load_latency_seconds_count{{{labels}}} {}",
            c.hist.len()
        );
    }
    let _ = writeln!(
        out,
        "# HELP navcast_load_requests_total Requests made (and, for fanout_delivery, events received), failures included\n\
         # TYPE navcast_load_requests_total counter\n{requests}\
         # HELP navcast_load_failures_total Requests that failed (error reply, timeout, connection lost)\n\
         # TYPE navcast_load_failures_total counter\n{failures}\
         # HELP navcast_load_latency_seconds Latency from each request's scheduled send to its reply (fan-out: publish to receipt)\n\
         # TYPE navcast_load_latency_seconds histogram\n{latency}\
         # HELP navcast_load_fanout_expected_total Navigation events riders got while a guardian watched (counted when the guardian finishes)\n\
         # TYPE navcast_load_fanout_expected_total counter\n\
         navcast_load_fanout_expected_total{{segment=\"{seg}\"}} {}\n\
         # HELP navcast_load_fanout_recovered_total Events guardians got back with since after a tunnel or a lost connection\n\
         # TYPE navcast_load_fanout_recovered_total counter\n\
         navcast_load_fanout_recovered_total{{segment=\"{seg}\"}} {}\n\
         # HELP navcast_load_fanout_lost_total Events lost for good (counted when the guardian finishes)\n\
         # TYPE navcast_load_fanout_lost_total counter\n\
         navcast_load_fanout_lost_total{{segment=\"{seg}\"}} {}",
        s.fanout_expected, s.fanout_recovered, s.fanout_lost
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_from_the_exact_histogram() {
        let mut cells = vec![Cell::default(); Metric::COUNT];
        let c = &mut cells[Metric::WsLocationUpdate.index()];
        for us in [500, 3_000, 3_000, 40_000] {
            c.hist.record(us);
            c.sum_us += us;
            c.count += 1;
        }
        c.failures = 1;
        let text = render(&Snapshot {
            segment: "1/1".into(),
            cells,
            users: 7,
            ..Default::default()
        });
        let labels = "segment=\"1/1\",name=\"ws_location_update\",type=\"WebSocket\"";
        for (le, n) in [
            ("0.001", 1),
            ("0.0025", 1),
            ("0.005", 3),
            ("0.02", 3),
            ("0.05", 4),
            ("+Inf", 4),
        ] {
            let line = format!("navcast_load_latency_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(text.contains(&format!("navcast_load_failures_total{{{labels}}} 1\n")));
        assert!(text.contains(&format!(
            "navcast_load_latency_seconds_sum{{{labels}}} 0.046500\n"
        )));
        assert!(text.contains("navcast_load_users{segment=\"1/1\"} 7\n"));
    }
}
