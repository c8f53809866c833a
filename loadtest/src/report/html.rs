//! The self-contained HTML report: inline CSS and SVG, no script, no
//! external asset, so it renders the same offline as on a CI artifact page.

use std::fmt::Write as _;

use super::series::{Series, client_cost, stat_rows};
use crate::criteria::{Evaluation, Status};
use crate::summary::{Cell, Metric, Summary};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(us: Option<u64>) -> String {
    us.map(|v| format!("{:.2}", v as f64 / 1000.0))
        .unwrap_or_else(|| "–".into())
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart; `None` values leave a gap.
fn chart(title: &str, unit: &str, xs: &[f64], lines: &[(String, Vec<Option<f64>>)]) -> String {
    let (w, h) = (900.0, 240.0);
    let (ml, mr, mt, mb) = (64.0, 16.0, 28.0, 36.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let xmax = xs.iter().cloned().fold(1.0, f64::max);
    let ymax_raw = lines
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .cloned()
        .fold(0.0, f64::max);
    let (ymax, yticks) = y_axis(ymax_raw);
    let x = |v: f64| ml + pw * v / xmax;
    let y = |v: f64| mt + ph - ph * v / ymax;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<figure><svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{t}"><text x="{ml}" y="18" class="ct">{t}</text>"#,
        t = esc(title)
    );
    for i in 0..=yticks {
        let v = ymax * i as f64 / yticks as f64;
        let yy = y(v);
        let _ = write!(
            out,
            r##"<line x1="{ml}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" class="ax" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let step = nice_ceiling(xmax / 8.0).max(1.0);
    let mut t = 0.0;
    while t <= xmax + 1e-9 {
        let xx = x(t);
        let _ = write!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{mt}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" class="ax" text-anchor="middle">{}s</text>"##,
            mt + ph,
            mt + ph + 16.0,
            fmt_num(t)
        );
        t += step;
    }
    let _ = write!(
        out,
        r#"<text x="12" y="{}" class="ax" transform="rotate(-90 12 {})">{}</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(unit)
    );
    let mut lx = ml + 10.0;
    for (i, (label, values)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut segment = String::new();
        let flush = |segment: &mut String, out: &mut String| {
            if !segment.is_empty() {
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{segment}"/>"#
                );
                segment.clear();
            }
        };
        for (xv, v) in xs.iter().zip(values) {
            match v {
                Some(v) => {
                    let _ = write!(segment, "{:.1},{:.1} ", x(*xv), y(*v));
                }
                None => flush(&mut segment, &mut out),
            }
        }
        flush(&mut segment, &mut out);
        let _ = write!(
            out,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}" class="ax">{}</text>"#,
            h - 8.0,
            lx + 16.0,
            h - 4.0,
            esc(label)
        );
        lx += 40.0 + 6.5 * label.chars().count() as f64;
    }
    out.push_str("</svg></figure>");
    out
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The top of a y axis a little above `max`, and how many equal steps of
/// a round size (a `nice_ceiling`) lead there: 1050 gives 1250 in 5 steps,
/// not 2000 in 4.
fn y_axis(max: f64) -> (f64, u32) {
    let top = if max > 0.0 { max * 1.05 } else { 1.0 };
    let step = nice_ceiling(top / 5.0);
    let steps = (top / step).ceil().max(1.0);
    (steps * step, steps as u32)
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
}

fn stat_row(kind: &str, name: &str, c: &Cell, secs: f64) -> String {
    let q = |q: f64| ms(c.hist.quantile(q));
    format!(
        "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
        esc(kind),
        esc(name),
        c.count,
        c.failures,
        c.mean_us()
            .map(|v| format!("{:.2}", v / 1000.0))
            .unwrap_or_else(|| "–".into()),
        q(0.5),
        q(0.95),
        q(0.99),
        q(0.999),
        ms(c.hist.max()),
        c.count as f64 / secs.max(1e-9)
    )
}

pub(super) fn render(s: &Summary, eval: &Evaluation, series: &Series) -> String {
    let mut o = String::new();
    let passed = eval.passed();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>navcast-load: {}</title><style>
body{{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}}
h1{{font-size:22px;margin:0 0 4px}}h2{{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}}
table{{border-collapse:collapse;width:100%;margin:6px 0}}th,td{{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}}
th{{background:#f6f6f6}}td:first-child,th:first-child,td.l,th.l{{text-align:left}}
.pass{{color:#0a7a2f;font-weight:600}}.fail{{color:#b00020;font-weight:600}}.skip{{color:#777;font-weight:600}}
.badge{{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff}}.bp{{background:#0a7a2f}}.bf{{background:#b00020}}
.meta{{color:#555}}figure{{margin:8px 0}}.ct{{font-size:13px;font-weight:600}}.ax{{font-size:11px;fill:#555}}
</style></head><body>"#,
        esc(&s.profile)
    );
    let _ = write!(
        o,
        r#"<h1>navcast-load report: {} <span class="badge {}">{}</span></h1><p class="meta">{}<br>hosts: {} · segments: {} · seed {} · time scale {} · {:.0} s from {} · {}{}</p>"#,
        esc(&s.profile),
        if passed { "bp" } else { "bf" },
        if passed { "PASS" } else { "FAIL" },
        esc(&s.description),
        esc(&s.hosts.join(", ")),
        esc(&s.segments.join(" ")),
        s.seed,
        s.time_scale,
        s.duration_s(),
        utc(s.started_unix_ms),
        esc(&s.tool),
        s.network
            .as_deref()
            .map(|n| format!("<br>network: {}", esc(n)))
            .unwrap_or_default()
    );
    for why in &s.stopped_early {
        let _ = write!(o, "<p class=\"fail\">Stopped early: {}</p>", esc(why));
    }

    o.push_str("<h2>Criteria</h2><table><tr><th>criterion</th><th class=\"l\">target</th><th class=\"l\">observed</th><th class=\"l\">result</th></tr>");
    for v in &eval.verdicts {
        let (class, word) = match v.status {
            Status::Pass => ("pass", "pass"),
            Status::Fail => ("fail", "FAIL"),
            Status::Skipped => ("skip", "skipped"),
        };
        let note = if v.note.is_empty() {
            String::new()
        } else {
            format!("<br><small>{}</small>", esc(&v.note))
        };
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="l">{}</td><td class="l">{}</td><td class="l {class}">{word}{note}</td></tr>"#,
            esc(&v.criterion),
            esc(&v.target),
            esc(&v.observed)
        );
    }
    o.push_str("</table>");
    if let Some(b) = &eval.stress_break {
        let _ = write!(
            o,
            "<p class=\"fail\">Stress: broke at {} users in stage “{}” ({}).</p>",
            b.users,
            esc(&b.stage),
            esc(&b.criteria.join(", "))
        );
    }

    let secs = s.duration_s();
    o.push_str("<h2>Requests</h2><table><tr><th>type</th><th class=\"l\">name</th><th>requests</th><th>failures</th><th>avg ms</th><th>p50</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>req/s</th></tr>");
    let (rows, agg) = stat_rows(s);
    for (m, c) in &rows {
        o.push_str(&stat_row(m.kind(), m.name(), c, secs));
    }
    o.push_str(&stat_row("", "Aggregated", &agg, secs));
    o.push_str("</table><p class=\"meta\">Latencies in ms, exact to 0.1 % (HDR histograms in µs); timer-driven requests are measured from their scheduled send time.</p>");

    // Charts.
    let t0 = series.t.first().copied().unwrap_or(0);
    let xs: Vec<f64> = series.t.iter().map(|t| (t - t0) as f64).collect();
    if !xs.is_empty() {
        o.push_str("<h2>Over time</h2>");
        o.push_str(&chart(
            "Users (riders running)",
            "users",
            &xs,
            &[(
                "users".into(),
                series.users.iter().map(|u| Some(*u as f64)).collect(),
            )],
        ));
        let agg_i = Metric::COUNT;
        o.push_str(&chart(
            "Requests per second (all requests and fan-out deliveries)",
            "per second",
            &xs,
            &[
                (
                    "requests/s".into(),
                    series.points[agg_i]
                        .iter()
                        .map(|p| Some(p.count as f64))
                        .collect(),
                ),
                (
                    "failures/s".into(),
                    series.points[agg_i]
                        .iter()
                        .map(|p| Some(p.failures as f64))
                        .collect(),
                ),
            ],
        ));
        let pct = |i: usize, j: usize| -> Vec<Option<f64>> {
            series.points[i]
                .iter()
                .map(|p| p.window[j].map(|v| v as f64 / 1000.0))
                .collect()
        };
        o.push_str(&chart(
            "Response time, all requests: p50 / p95 / p99 over the last 10 s",
            "ms",
            &xs,
            &[
                ("p50".into(), pct(agg_i, 0)),
                ("p95".into(), pct(agg_i, 5)),
                ("p99".into(), pct(agg_i, 7)),
            ],
        ));
        let lines: Vec<(String, Vec<Option<f64>>)> = [
            Metric::WsConnect,
            Metric::WsStartNavigation,
            Metric::WsLocationUpdate,
            Metric::FanoutDelivery,
        ]
        .iter()
        .filter(|m| s.cell(**m).count > 0)
        .map(|m| (format!("{} p95", m.name()), pct(m.index(), 5)))
        .collect();
        if !lines.is_empty() {
            o.push_str(&chart(
                "p95 per request type (last 10 s)",
                "ms",
                &xs,
                &lines,
            ));
        }
        if !s.server.is_empty() {
            let mut hosts: Vec<String> = s.server.iter().map(|x| x.node_id.clone()).collect();
            hosts.sort();
            hosts.dedup();
            let lines: Vec<(String, Vec<Option<f64>>)> = hosts
                .iter()
                .map(|h| {
                    // The last sample at or before each second (samples
                    // are taken every few seconds).
                    let mut samples: Vec<(u64, f64)> = s
                        .server
                        .iter()
                        .filter(|x| &x.node_id == h)
                        .map(|x| (x.t, x.rss_bytes as f64 / 1048576.0))
                        .collect();
                    samples.sort_by_key(|x| x.0);
                    let v = series
                        .t
                        .iter()
                        .map(|t| {
                            let i = samples.partition_point(|x| x.0 <= *t);
                            (i > 0).then(|| samples[i - 1].1)
                        })
                        .collect();
                    (format!("{h} RSS"), v)
                })
                .collect();
            o.push_str(&chart("Node memory (RSS from /stats)", "MiB", &xs, &lines));
        }
        if s.client.processes > 0 {
            o.push_str(&chart(
                "Load client CPU (all its processes; 100 % = one core)",
                "%",
                &xs,
                &[(
                    "client CPU".into(),
                    s.history
                        .iter()
                        .map(|r| Some(r.client_cpu_ms as f64 / 10.0))
                        .collect(),
                )],
            ));
        }
    }

    o.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>time s</th><th>users target / peak</th><th>requests</th><th>failures</th><th>connect p95</th><th>start_navigation p50 / p95 / p99</th><th>location_update p50 / p95 / p99</th><th>fan-out p95</th></tr>");
    for st in &s.stages {
        let get = |m: Metric| st.cells.get(m.name()).cloned().unwrap_or_default();
        let (mut n, mut f) = (0, 0);
        for (k, c) in &st.cells {
            if Metric::from_name(k).is_some_and(|m| m.is_request()) {
                n += c.count;
                f += c.failures;
            }
        }
        let three = |c: &Cell| {
            format!(
                "{} / {} / {}",
                ms(c.hist.quantile(0.5)),
                ms(c.hist.quantile(0.95)),
                ms(c.hist.quantile(0.99))
            )
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{:.0}–{:.0}</td><td>{} / {}</td><td>{n}</td><td>{f}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&st.name),
            st.start_s,
            st.end_s,
            st.users,
            st.peak_users,
            ms(get(Metric::WsConnect).hist.quantile(0.95)),
            three(&get(Metric::WsStartNavigation)),
            three(&get(Metric::WsLocationUpdate)),
            ms(get(Metric::FanoutDelivery).hist.quantile(0.95)),
        );
    }
    o.push_str("</table>");

    o.push_str("<h2>Nodes</h2><table><tr><th>node_id</th><th>sessions at the client's peak</th><th>share</th><th>off an even share</th><th>connects</th></tr>");
    let total: u64 = s.nodes.values().map(|n| n.peak_open).sum();
    let even = total as f64 / s.nodes.len().max(1) as f64;
    for (k, v) in &s.nodes {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{:.1} %</td><td>{:+.1} %</td><td>{}</td></tr>",
            esc(k),
            v.peak_open,
            100.0 * v.peak_open as f64 / total.max(1) as f64,
            if even > 0.0 {
                100.0 * (v.peak_open as f64 - even) / even
            } else {
                0.0
            },
            v.connects
        );
    }
    o.push_str("</table>");

    o.push_str(
        "<h2>Close codes</h2><table><tr><th>code</th><th class=\"l\">meaning</th><th>connections</th></tr>",
    );
    for (k, v) in &s.close_codes {
        let meaning = match k.as_str() {
            "1000" => "normal (includes the client's own closes at stop)",
            "1001" => "node draining",
            "1005" => "close frame without a code",
            "1006" => "closed without a close frame",
            "1008" => "policy (protocol errors, heartbeat)",
            "1009" => "frame too large",
            "1011" => "internal error",
            "4001" => "token expired",
            "4002" => "replaced by a newer session",
            "4008" => "too slow (outbound queue full)",
            _ => "",
        };
        let _ = write!(
            o,
            "<tr><td>{k}</td><td class=\"l\">{meaning}</td><td>{v}</td></tr>"
        );
    }
    o.push_str("</table>");

    let f = &s.fanout;
    let _ = write!(
        o,
        "<h2>Fan-out (peer events to guardians)</h2><table><tr><th>expected</th><th>received</th><th>lost</th><th>gaps in seq</th><th>duplicates</th><th>reorders</th><th>recovered after a tunnel</th></tr><tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        f.expected,
        f.received,
        if f.lost == 0 { "pass" } else { "fail" },
        f.lost,
        f.gaps,
        f.duplicates,
        f.reorders,
        f.recovered
    );

    if let Some(c) = client_cost(s) {
        let _ = write!(
            o,
            "<h2>Load client</h2><table><tr><th>processes</th><th>threads</th><th>CPU s</th><th>of one core</th><th>peak RSS MiB</th><th>round trips</th><th>CPU s per 1000</th><th>saturated s</th></tr><tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.0} %</td><td>{:.0}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr></table>",
            c.processes,
            c.threads,
            c.cpu_s,
            c.core_pct,
            c.peak_rss_mib,
            c.round_trips,
            c.per_1000
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into()),
            if c.saturated_s == 0 { "pass" } else { "fail" },
            c.saturated_s,
        );
        if c.saturated_s > 0 {
            o.push_str("<p class=\"fail\">The client used ≥ 90 % of its threads in some seconds: figures of those seconds may measure the client, not the server. Give it more threads (--threads) or processes (--processes).</p>");
        }
    }

    if !s.failures.is_empty() {
        o.push_str("<h2>Failures</h2><table><tr><th>method</th><th class=\"l\">name</th><th class=\"l\">error</th><th>occurrences</th></tr>");
        for x in &s.failures {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td></tr>",
                esc(&x.method),
                esc(&x.name),
                esc(&x.error),
                x.occurrences
            );
        }
        o.push_str("</table>");
    }
    if !s.exceptions.is_empty() {
        o.push_str("<h2>Client exceptions</h2><table><tr><th>count</th><th class=\"l\">message</th><th class=\"l\">where</th></tr>");
        for x in &s.exceptions {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                x.count,
                esc(&x.message),
                esc(&x.nodes)
            );
        }
        o.push_str("</table>");
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
    }

    #[test]
    fn y_axes_end_just_above_the_data() {
        assert_eq!(y_axis(1000.0), (1250.0, 5));
        assert_eq!(y_axis(458.0), (500.0, 5));
        assert_eq!(y_axis(7.1), (8.0, 4));
        assert_eq!(y_axis(0.0), (1.0, 5));
    }

    #[test]
    fn start_times_read_as_utc() {
        assert_eq!(utc(1_796_481_558_168), "2026-12-05 14:39:18 UTC");
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
