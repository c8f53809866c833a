//! Pass criteria, judged from a [`Summary`] (so a merged summary is judged
//! exactly like a single run).

use serde::Serialize;

use crate::summary::{Cell, Metric, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not judged, with the reason in the note (counts as passed).
    Skipped,
}

/// The judgement of one criterion.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub criterion: String,
    pub(crate) target: String,
    pub(crate) observed: String,
    pub(crate) status: Status,
    pub(crate) note: String,
    /// Set by the latency judgements (p95s, drift); see [`Verdict::is_latency`].
    #[serde(skip)]
    latency: bool,
}

impl Verdict {
    /// A latency criterion (a p95, or the drift of p95s): it measures how
    /// fast the machine answered as well as what the node did, so it
    /// belongs to benchmarks on a quiet machine, not to behaviour tests.
    pub fn is_latency(&self) -> bool {
        self.latency
    }

    fn of_latency(self) -> Verdict {
        Verdict {
            latency: true,
            ..self
        }
    }
}

/// Where a stress run broke.
#[derive(Debug, Clone, Serialize)]
pub struct Break {
    pub(crate) stage: String,
    pub users: u64,
    pub criteria: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub verdicts: Vec<Verdict>,
    /// The first stage that failed a per-stage criterion (stress profiles).
    pub stress_break: Option<Break>,
}

impl Evaluation {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.status != Status::Fail)
    }

    pub fn failed(&self) -> Vec<&Verdict> {
        self.verdicts
            .iter()
            .filter(|v| v.status == Status::Fail)
            .collect()
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn verdict(criterion: &str, target: String, observed: String, ok: bool) -> Verdict {
    Verdict {
        criterion: criterion.into(),
        target,
        observed,
        status: if ok { Status::Pass } else { Status::Fail },
        note: String::new(),
        latency: false,
    }
}

fn p95_verdict(criterion: &str, cell: &Cell, limit_ms: f64) -> Verdict {
    quantile_verdict(criterion, cell, 0.95, limit_ms)
}

fn quantile_verdict(criterion: &str, cell: &Cell, q: f64, limit_ms: f64) -> Verdict {
    match cell.hist.quantile(q) {
        Some(p) => verdict(
            criterion,
            format!("< {limit_ms} ms"),
            ms(p),
            (p as f64) < limit_ms * 1000.0,
        ),
        None => Verdict {
            note: "no samples".into(),
            ..verdict(criterion, format!("< {limit_ms} ms"), "–".into(), false)
        },
    }
    .of_latency()
}

/// `login` explains a run that never got as far as connecting.
fn connect_verdict(cell: &Cell, login: &Cell, min: f64) -> Verdict {
    if cell.count == 0 {
        let note = if login.failures > 0 {
            format!(
                "no connection was attempted: {} of {} login attempts failed",
                login.failures, login.count
            )
        } else {
            "no connection was attempted".into()
        };
        return Verdict {
            note,
            ..verdict(
                "connect success",
                format!(">= {}", pct(min)),
                "–".into(),
                false,
            )
        };
    }
    let ok = cell.count - cell.failures.min(cell.count);
    let rate = ok as f64 / cell.count as f64;
    verdict(
        "connect success",
        format!(">= {}", pct(min)),
        format!("{} ({ok}/{})", pct(rate), cell.count),
        rate >= min,
    )
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0} %")
    } else {
        format!("{p:.3} %")
    }
}

fn error_verdict(cells: &[(Metric, Cell)], max: f64) -> Verdict {
    let (mut n, mut f) = (0u64, 0u64);
    for (m, c) in cells {
        if m.is_request() {
            n += c.count;
            f += c.failures;
        }
    }
    let rate = if n == 0 { 0.0 } else { f as f64 / n as f64 };
    let target = if max == 0.0 {
        "0 errors".to_string()
    } else {
        format!("<= {}", pct(max))
    };
    verdict(
        "error rate",
        target,
        format!("{} ({f} of {n} requests)", pct(rate)),
        if max == 0.0 { f == 0 } else { rate <= max },
    )
}

/// What `stopped_early` holds for a run stopped by SIGINT or SIGTERM.
pub(crate) const INTERRUPTED: &str = "interrupted";

/// Judges a summary against its thresholds.
pub fn evaluate(s: &Summary) -> Evaluation {
    let t = &s.thresholds;
    let mut out = Vec::new();
    let cells: Vec<(Metric, Cell)> = Metric::ALL.iter().map(|m| (*m, s.cell(*m))).collect();
    let cell = |m: Metric| cells[m.index()].1.clone();

    // A run cut short by a signal measured less than its profile asks for:
    // whatever else it saw, it has not passed.
    if s.stopped_early.iter().any(|w| w == INTERRUPTED) {
        out.push(verdict(
            "run completed",
            "the whole profile".into(),
            format!("interrupted after {:.0} s", s.duration_s()),
            false,
        ));
    }
    out.push(connect_verdict(
        &cell(Metric::WsConnect),
        &cell(Metric::Login),
        t.connect_success_min,
    ));
    if let Some(l) = t.connect_p95_ms {
        out.push(p95_verdict("connect p95", &cell(Metric::WsConnect), l));
    }
    if let Some(l) = t.start_navigation_p95_ms {
        out.push(p95_verdict(
            "start_navigation p95",
            &cell(Metric::WsStartNavigation),
            l,
        ));
    }
    if let Some(l) = t.location_update_p95_ms {
        out.push(p95_verdict(
            "location_update p95",
            &cell(Metric::WsLocationUpdate),
            l,
        ));
    }
    if let Some(l) = t.login_p95_ms {
        out.push(p95_verdict("login p95", &cell(Metric::Login), l));
    }
    if let Some(l) = t.reconnect_p95_ms {
        out.push(p95_verdict("reconnect p95", &cell(Metric::WsReconnect), l));
    }
    if let Some(l) = t.reconnect_p99_ms {
        out.push(quantile_verdict(
            "reconnect p99",
            &cell(Metric::WsReconnect),
            0.99,
            l,
        ));
    }
    if let Some(max) = t.reconnect_failures_max {
        let c = cell(Metric::WsReconnect);
        out.push(verdict(
            "failed reconnects",
            format!("<= {max}"),
            format!("{} of {}", c.failures, c.count),
            c.failures <= max,
        ));
    }
    if let Some(l) = t.fanout_p95_ms {
        let c = cell(Metric::FanoutDelivery);
        if c.hist.is_empty() && s.fanout.expected == 0 {
            out.push(Verdict {
                status: Status::Skipped,
                note: "no guardian received events in this run".into(),
                ..verdict("fanout p95", format!("< {l} ms"), "–".into(), true).of_latency()
            });
        } else {
            out.push(p95_verdict("fanout p95", &c, l));
        }
    }
    out.push(error_verdict(&cells, t.error_rate_max));

    let f = &s.fanout;
    let observed = format!(
        "{} lost (expected {}, received {}, gaps {}, duplicates {}, reorders {})",
        f.lost, f.expected, f.received, f.gaps, f.duplicates, f.reorders
    );
    let target = format!("<= {}", t.lost_peer_events_max);
    if f.expected == 0 && f.received == 0 && f.lost == 0 {
        out.push(Verdict {
            status: Status::Skipped,
            note: "no guardian watched a navigating rider in this run".into(),
            ..verdict("lost peer_events", target, observed, true)
        });
    } else {
        out.push(verdict(
            "lost peer_events",
            target,
            observed,
            f.lost <= t.lost_peer_events_max,
        ));
    }

    if let Some(tol) = t.spread_tolerance {
        out.push(spread_verdict(s, tol, t.spread_min_share));
    }

    if let Some(max) = t.latency_drift_max {
        out.push(drift_verdict(s, max));
    }

    Evaluation {
        verdicts: out,
        stress_break: if s.stress { stress_break(s) } else { None },
    }
}

fn spread_verdict(s: &Summary, tol: f64, min_share: f64) -> Verdict {
    let target = format!("each node within ±{} of an even share", pct(tol));
    let nodes: Vec<(&String, u64)> = s.nodes.iter().map(|(k, v)| (k, v.peak_open)).collect();
    let total: u64 = nodes.iter().map(|(_, n)| n).sum();
    let listing = nodes
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.len() < 2 {
        return Verdict {
            status: Status::Skipped,
            note: format!(
                "{} node(s) served this run: there is nothing to spread",
                nodes.len()
            ),
            ..verdict("spread across nodes", target, listing, true)
        };
    }
    let even = total as f64 / nodes.len() as f64;
    if even < min_share {
        return Verdict {
            status: Status::Skipped,
            note: format!(
                "an even share is {even:.1} connections, under the {min_share} needed for ±{} to mean something",
                pct(tol)
            ),
            ..verdict("spread across nodes", target, listing, true)
        };
    }
    let worst = nodes
        .iter()
        .map(|(_, n)| (*n as f64 - even).abs() / even)
        .fold(0.0, f64::max);
    verdict(
        "spread across nodes",
        target,
        format!("{listing} (worst {} off)", pct(worst)),
        worst <= tol,
    )
}

fn drift_verdict(s: &Summary, max: f64) -> Verdict {
    let target = format!("last stage p95 <= {max}x first stage p95");
    let with = |m: Metric| -> Option<(u64, u64)> {
        let mut stages = s
            .stages
            .iter()
            .filter_map(|st| st.cells.get(m.name()).and_then(|c| c.hist.quantile(0.95)));
        let first = stages.next()?;
        let last = stages.next_back()?;
        Some((first, last))
    };
    let mut parts = Vec::new();
    let mut ok = true;
    for m in [Metric::WsLocationUpdate, Metric::WsStartNavigation] {
        if let Some((a, b)) = with(m) {
            let ratio = b as f64 / a.max(1) as f64;
            ok &= ratio <= max;
            parts.push(format!("{}: {} → {} ({ratio:.2}x)", m.name(), ms(a), ms(b)));
        }
    }
    if parts.is_empty() {
        return Verdict {
            status: Status::Skipped,
            note: "needs samples in at least two stages".into(),
            ..verdict("latency drift", target, "–".into(), true).of_latency()
        };
    }
    verdict("latency drift", target, parts.join("; "), ok).of_latency()
}

/// The first stage whose own numbers break a threshold.
fn stress_break(s: &Summary) -> Option<Break> {
    let t = &s.thresholds;
    for st in &s.stages {
        let get = |m: Metric| st.cells.get(m.name()).cloned().unwrap_or_default();
        let mut broken = Vec::new();
        let c = get(Metric::WsConnect);
        if c.count > 0
            && connect_verdict(&c, &get(Metric::Login), t.connect_success_min).status
                == Status::Fail
        {
            broken.push("connect success".to_string());
        }
        for (name, m, limit) in [
            ("connect p95", Metric::WsConnect, t.connect_p95_ms),
            (
                "start_navigation p95",
                Metric::WsStartNavigation,
                t.start_navigation_p95_ms,
            ),
            (
                "location_update p95",
                Metric::WsLocationUpdate,
                t.location_update_p95_ms,
            ),
        ] {
            let c = get(m);
            if let Some(l) = limit
                && !c.hist.is_empty()
                && p95_verdict(name, &c, l).status == Status::Fail
            {
                broken.push(name.to_string());
            }
        }
        let cells: Vec<(Metric, Cell)> = Metric::ALL.iter().map(|m| (*m, get(*m))).collect();
        if error_verdict(&cells, t.error_rate_max).status == Status::Fail {
            broken.push("error rate".to_string());
        }
        if !broken.is_empty() {
            return Some(Break {
                stage: st.name.clone(),
                users: if st.peak_users > 0 {
                    st.peak_users
                } else {
                    st.users
                },
                criteria: broken,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::NodeCounts;

    fn summary() -> Summary {
        let mut s = Summary::default();
        for m in [
            Metric::WsConnect,
            Metric::WsStartNavigation,
            Metric::WsLocationUpdate,
        ] {
            let mut c = Cell {
                count: 100,
                ..Default::default()
            };
            for i in 0..100 {
                c.hist.record(1000 + i);
            }
            s.metrics.insert(m.name().into(), c);
        }
        s
    }

    #[test]
    fn healthy_run_passes_and_spread_is_skipped_for_one_node() {
        let mut s = summary();
        s.nodes.insert(
            "a".into(),
            NodeCounts {
                connects: 100,
                peak_open: 100,
            },
        );
        let e = evaluate(&s);
        assert!(e.passed(), "{:#?}", e.verdicts);
        let spread = e
            .verdicts
            .iter()
            .find(|v| v.criterion == "spread across nodes")
            .unwrap();
        assert_eq!(spread.status, Status::Skipped);
    }

    #[test]
    fn failures_name_the_criterion() {
        let mut s = summary();
        s.metrics.get_mut("ws_location_update").unwrap().failures = 3;
        s.metrics
            .get_mut("ws_start_navigation")
            .unwrap()
            .hist
            .record(900_000);
        for _ in 0..10 {
            s.metrics
                .get_mut("ws_start_navigation")
                .unwrap()
                .hist
                .record(900_000);
        }
        s.fanout.expected = 10;
        s.fanout.received = 9;
        s.fanout.lost = 1;
        for (k, n) in [("a", 100), ("b", 60)] {
            s.nodes.insert(
                k.into(),
                NodeCounts {
                    connects: n,
                    peak_open: n,
                },
            );
        }
        let e = evaluate(&s);
        let failed: Vec<&str> = e.failed().iter().map(|v| v.criterion.as_str()).collect();
        assert_eq!(
            failed,
            vec![
                "start_navigation p95",
                "error rate",
                "lost peer_events",
                "spread across nodes"
            ]
        );
    }
}
