//! `navcast-load run` in one process (the whole test or one segment):
//! plans the test, provisions accounts, spawns riders on schedule, drains
//! the recorder once a second into the summary, and writes the reports.
//! `--processes` runs are `fleet`'s; each of their children runs here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use navcast::clock::{unix_ms, unix_s};
use navcast::protocol::DisabilityType;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{self, Accounts, AccountsFile};
use crate::cli::RunArgs;
use crate::criteria;
use crate::hist::{Hist, PackedHist};
use crate::motion::Trace;
use crate::net::{self, Transport};
use crate::profile::Profile;
use crate::recorder::Recorder;
use crate::rider::{RiderPlan, RunCtx, StationPoint, rider};
use crate::schedule::{self, in_share};
use crate::signal::stop_signal;
use crate::summary::{
    Cell, ClientUsage, FORMAT, FanoutCounts, HistoryRow, Metric, RowCell, ServerSample,
    StageSummary, Summary,
};
use crate::usage::{ProcessUsage, SATURATED_SHARE, runtime_threads};
use crate::{Outcome, report};

/// Phase of the deviating share relative to the guardian share, so the
/// two do not pick the same riders.
const DEVIATING_PHASE: u64 = 37;
/// The same for the riders that navigate.
const NAVIGATING_PHASE: u64 = 71;

/// Coordinates of the profile's stations, from the embedded network.
fn resolve_stations(names: &[String]) -> anyhow::Result<Vec<StationPoint>> {
    let network = navcast::transit::Network::embedded();
    names
        .iter()
        .map(|name| {
            let ids = network
                .resolve(name)
                .map_err(|e| anyhow::anyhow!("station {name:?}: {e}"))?;
            let s = network.station(*ids.first().context("no station")?);
            Ok(StationPoint {
                name: name.clone(),
                lat: s.lat,
                lon: s.lon,
            })
        })
        .collect()
}

/// Accounts a run (or segment) needs, created when missing.
async fn ensure_accounts(
    args: &RunArgs,
    profile: &Profile,
    transport: &Arc<Transport>,
    users: u64,
) -> anyhow::Result<Accounts> {
    if let Some(path) = &args.accounts {
        let file = AccountsFile::read(path)?;
        if (file.accounts.len() as u64) < users {
            bail!(
                "{} holds {} accounts; this test needs {users}",
                path.display(),
                file.accounts.len()
            );
        }
        return Ok(Accounts::File(Arc::new(file)));
    }
    let generated = args.account.generated();
    if !args.account.no_provision {
        let mut entries = accounts::plan(&generated, users, profile.rider.guardian_share);
        entries.retain(|e| args.segment.owns(e.index));
        accounts::provision(
            transport.clone(),
            entries,
            args.account.provision_concurrency,
            false,
            args.quiet,
        )
        .await?;
    }
    Ok(generated)
}

/// Drains the recorder once a second into the summary, prints progress,
/// and judges each finished stress step.
struct Reporter {
    summary: Summary,
    profile: Profile,
    start_unix: u64,
    tick: u64,
    /// The last 10 one-second histograms per metric (Locust's window).
    window: Vec<VecDeque<Hist>>,
    window_sum: Vec<Hist>,
    best_open: u64,
    last_stage: usize,
    quiet: bool,
    label: String,
    /// Runtime worker threads (the CPU the client gave itself).
    threads: usize,
    /// The process's usage at the start of the test and at the last step.
    usage_start: ProcessUsage,
    usage_last: ProcessUsage,
    /// CPU share of the threads used in the last second.
    cpu_share: f64,
}

impl Reporter {
    fn step(&mut self, rec: &Recorder, abort: &CancellationToken) {
        self.tick += 1;
        let mut interval = vec![Cell::default(); Metric::COUNT];
        rec.drain(&mut interval);
        let elapsed = self.tick as f64 - 0.5;
        let stage = self.profile.stage_at(elapsed);
        let users = rec.users.load(std::sync::atomic::Ordering::Relaxed);
        let usage = ProcessUsage::now();
        let cpu = usage.cpu.saturating_sub(self.usage_last.cpu);
        self.usage_last = usage;
        self.cpu_share = cpu.as_secs_f64() / self.threads as f64;
        if self.cpu_share >= SATURATED_SHARE {
            self.summary.client.saturated_s += 1;
        }
        let mut row = HistoryRow {
            t: self.start_unix + self.tick,
            users,
            stage,
            client_cpu_ms: cpu.as_millis() as u64,
            ..Default::default()
        };
        for m in Metric::ALL {
            let c = &interval[m.index()];
            let w = &mut self.window[m.index()];
            if w.len() == 10
                && let Some(old) = w.pop_front()
            {
                self.window_sum[m.index()].subtract(&old);
            }
            self.window_sum[m.index()].add(&c.hist);
            w.push_back(c.hist.clone());
            if c.count == 0 && c.hist.is_empty() {
                continue;
            }
            row.cells.insert(
                m.name().to_string(),
                RowCell {
                    count: c.count,
                    failures: c.failures,
                    bytes: c.bytes,
                    sum_us: c.sum_us,
                    hist: PackedHist(c.hist.to_bytes()),
                },
            );
            self.summary
                .metrics
                .entry(m.name().to_string())
                .or_default()
                .add(c);
            if let Some(st) = self.summary.stages.get_mut(stage) {
                st.cells.entry(m.name().to_string()).or_default().add(c);
            }
        }
        if let Some(st) = self.summary.stages.get_mut(stage) {
            st.peak_users = st.peak_users.max(users);
        }
        self.summary.history.push(row);
        let nodes = rec.nodes();
        let open: u64 = nodes.values().map(|n| n.peak_open).sum();
        if open >= self.best_open {
            self.best_open = open;
            self.summary.nodes = nodes;
        }
        if !self.quiet {
            self.progress(&interval, users, stage, rec);
        }
        if stage != self.last_stage {
            self.judge_stage(self.last_stage, abort);
            self.last_stage = stage;
        }
    }

    fn judge_stage(&mut self, stage: usize, abort: &CancellationToken) {
        let Some(stress) = &self.profile.stress else {
            return;
        };
        let Some(st) = self.summary.stages.get(stage) else {
            return;
        };
        let probe = Summary {
            thresholds: self.summary.thresholds.clone(),
            stress: true,
            stages: vec![st.clone()],
            ..Default::default()
        };
        if let Some(b) = criteria::evaluate(&probe).stress_break
            && stress.stop_on_break
            && !abort.is_cancelled()
        {
            let msg = format!(
                "stress: {} broke at {} users ({}); stopping",
                b.stage,
                b.users,
                b.criteria.join(", ")
            );
            eprintln!("navcast-load{}: {msg}", self.label);
            self.summary.stopped_early.push(msg);
            abort.cancel();
        }
    }

    fn progress(&self, interval: &[Cell], users: u64, stage: usize, rec: &Recorder) {
        let fmt = |m: Metric| -> String {
            let h = &self.window_sum[m.index()];
            match (h.quantile(0.5), h.quantile(0.95), h.quantile(0.99)) {
                (Some(a), Some(b), Some(c)) => format!(
                    "{:.1}/{:.1}/{:.1} ms",
                    a as f64 / 1e3,
                    b as f64 / 1e3,
                    c as f64 / 1e3
                ),
                _ => "-".into(),
            }
        };
        let reqs: u64 = interval
            .iter()
            .zip(Metric::ALL)
            .filter(|(_, m)| m.is_request())
            .map(|(c, _)| c.count)
            .sum();
        let stage_name = self
            .profile
            .stages
            .get(stage)
            .map(|s| s.name.as_str())
            .unwrap_or("-");
        eprintln!(
            "navcast-load{} [{:>5}s] {stage_name} ({}/{}) | users {users} | conn/s {} | req/s {reqs} | location_update p50/95/99 {} | start_navigation {} | fanout/s {} | failures {} | client cpu {:.0}%{}",
            self.label,
            self.tick,
            stage + 1,
            self.profile.stages.len(),
            interval[Metric::WsConnect.index()].count,
            fmt(Metric::WsLocationUpdate),
            fmt(Metric::WsStartNavigation),
            interval[Metric::FanoutDelivery.index()].count,
            rec.failure_total(),
            self.cpu_share * 100.0,
            if self.cpu_share >= SATURATED_SHARE {
                " (saturated: figures may measure the client)"
            } else {
                ""
            },
        );
    }
}

/// Polls `{base}/stats` of every base URL (the hosts', or `--stats-url`)
/// until `stop`, for the report's node sessions and memory. A base whose
/// /stats cannot be read is reported once, not counted as a failure: the
/// nodes' numbers are extra, not the test. Requests go through the
/// transport's clients, so `--ca-file` and `--source-ips` apply to them too.
async fn sample_servers(
    transport: Arc<Transport>,
    bases: Vec<String>,
    every: Duration,
    out: Arc<Mutex<Vec<ServerSample>>>,
    stop: CancellationToken,
) {
    let mut warned = vec![false; bases.len()];
    loop {
        for (i, base) in bases.iter().enumerate() {
            let url = format!("{base}/stats");
            let r = transport
                .http(i % transport.hosts.len())
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let body = match r {
                Ok(r) if r.status().is_success() => r
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|_| "an answer that is not JSON".to_string()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err("a timeout".into()),
                Err(_) => Err("a connection error".into()),
            };
            match body {
                Ok(v) => out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ServerSample {
                        t: unix_s() as u64,
                        host: base.clone(),
                        node_id: v["node_id"].as_str().unwrap_or("").to_string(),
                        sessions: v["sessions"].as_u64().unwrap_or(0),
                        rss_bytes: v["memory"]["rss_bytes"].as_u64().unwrap_or(0),
                    }),
                Err(why) if !warned[i] => {
                    warned[i] = true;
                    eprintln!(
                        "navcast-load: {url} gave {why}; node memory will be missing from the report \
                         (behind a proxy, point --stats-url at the nodes)"
                    );
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Warns (once, for the whole test) when one source address would need
/// too many ephemeral ports.
pub(crate) fn warn_port_pressure(args: &RunArgs) -> anyhow::Result<()> {
    if args.segment.count > 1 {
        return Ok(());
    }
    let profile = args.load_profile()?;
    let users = schedule::user_count(&schedule::plan(&profile.stages));
    let peak = profile.peak_users();
    let guardians = (0..peak)
        .filter(|k| in_share(*k, profile.rider.guardian_share, 0))
        .count() as u64;
    let target = &args.target;
    let sources = match &target.source_ips {
        Some(s) => net::parse_source_ips(s)?.len(),
        None => 1,
    };
    if let Some(w) = net::port_pressure(peak.min(users) + guardians, target.host.len(), sources) {
        eprintln!("navcast-load: warning: {w}");
    }
    Ok(())
}

/// Runs `args` in this process: the whole test, or the segment
/// `--segment` names.
pub(crate) async fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    let profile = args.load_profile()?;
    let label = if args.segment.count > 1 {
        format!(" {}", args.segment)
    } else {
        String::new()
    };
    let transport = args.target.transport().await?;
    let stations = resolve_stations(&profile.rider.stations)?;
    let mut types = Vec::new();
    let mut type_weights = Vec::new();
    for (k, w) in &profile.rider.disability_weights {
        types.push(
            k.parse::<DisabilityType>()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        type_weights.push(*w);
    }
    let trace = profile.trace_path().map(|p| Trace::load(&p)).transpose()?;
    let plan = schedule::plan(&profile.stages);
    let users = schedule::user_count(&plan);
    let accounts = ensure_accounts(args, &profile, &transport, users).await?;

    let now_ms = unix_ms() as u64;
    let start_ms = args.start_at.unwrap_or(now_ms).max(now_ms);
    let start = Instant::now() + Duration::from_millis(start_ms - now_ms);
    let abort = CancellationToken::new();
    let ctx = Arc::new(RunCtx {
        transport: transport.clone(),
        rec: Recorder::new(),
        spec: profile.rider.clone(),
        time_scale: profile.time_scale,
        stations,
        types,
        type_weights,
        trace,
        accounts,
        seed: args.seed,
        abort: abort.clone(),
        tick_grid_ns: Default::default(),
        max_tick_grid: Duration::from_micros((args.tick_grid_ms.max(0.0) * 1000.0) as u64),
        epoch: start,
    });
    ctx.set_grid(0);

    let summary = Summary {
        format: FORMAT,
        tool: format!("navcast-load {}", env!("CARGO_PKG_VERSION")),
        profile: profile.name.clone(),
        description: profile.description.clone(),
        hosts: args.target.host.clone(),
        seed: args.seed,
        time_scale: profile.time_scale,
        network: args.network.clone(),
        segments: vec![args.segment.to_string()],
        started_unix_ms: start_ms,
        thresholds: profile.thresholds.clone(),
        stress: profile.stress.is_some(),
        stages: profile
            .stages
            .iter()
            .map(|s| StageSummary {
                name: s.name.clone(),
                start_s: s.start_s,
                end_s: s.end_s,
                users: s.users,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let reporter = Arc::new(Mutex::new(Reporter {
        summary,
        profile: profile.clone(),
        start_unix: start_ms / 1000,
        tick: 0,
        window: vec![VecDeque::new(); Metric::COUNT],
        window_sum: vec![Hist::default(); Metric::COUNT],
        best_open: 0,
        last_stage: 0,
        quiet: args.quiet,
        label: label.clone(),
        threads: runtime_threads(),
        usage_start: ProcessUsage::now(),
        usage_last: ProcessUsage::now(),
        cpu_share: 0.0,
    }));
    let reporter_stop = CancellationToken::new();
    // A thread of its own: a saturated runtime must not delay the
    // once-a-second drain (the rows would bunch up).
    let reporter_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter_thread = {
        let (reporter, ctx, done) = (reporter.clone(), ctx.clone(), reporter_done.clone());
        let start = start.into_std();
        std::thread::Builder::new()
            .name("navcast-load-reporter".into())
            .spawn(move || {
                let mut k = 1u64;
                loop {
                    let at = start + Duration::from_secs(k);
                    loop {
                        if done.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                        let now = std::time::Instant::now();
                        if now >= at {
                            break;
                        }
                        std::thread::sleep((at - now).min(Duration::from_millis(50)));
                    }
                    reporter
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .step(&ctx.rec, &ctx.abort);
                    ctx.set_grid(ctx.rec.users.load(std::sync::atomic::Ordering::Relaxed));
                    k += 1;
                }
            })?
    };
    let exporter = match args.metrics_listen {
        Some(addr) => {
            // Weak: the run takes the reporter back at its end, whatever
            // scraper connection is still open.
            let (reporter, ctx) = (Arc::downgrade(&reporter), ctx.clone());
            let segment = args.segment.to_string();
            let snapshot = move || {
                let Some(r) = reporter.upgrade() else {
                    return crate::exporter::Snapshot::default();
                };
                let r = r.lock().unwrap_or_else(|e| e.into_inner());
                let ld =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                crate::exporter::Snapshot {
                    segment: segment.clone(),
                    cells: Metric::ALL
                        .iter()
                        .map(|m| r.summary.metrics.get(m.name()).cloned().unwrap_or_default())
                        .collect(),
                    users: ld(&ctx.rec.users),
                    cpu_s: r
                        .usage_last
                        .cpu
                        .saturating_sub(r.usage_start.cpu)
                        .as_secs_f64(),
                    fanout_expected: ld(&ctx.rec.fanout.expected),
                    fanout_recovered: ld(&ctx.rec.fanout.recovered),
                    fanout_lost: ld(&ctx.rec.fanout.lost),
                }
            };
            Some(crate::exporter::serve(addr, Arc::new(snapshot)).await?)
        }
        None => None,
    };
    let server_samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = (args.server_stats_every > 0.0).then(|| {
        let bases = if args.stats_url.is_empty() {
            transport
                .hosts
                .iter()
                .map(|h| h.http_base.clone())
                .collect()
        } else {
            args.stats_url
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect()
        };
        tokio::spawn(sample_servers(
            transport.clone(),
            bases,
            Duration::from_secs_f64(args.server_stats_every),
            server_samples.clone(),
            reporter_stop.clone(),
        ))
    });
    let interrupt = {
        let abort = abort.clone();
        tokio::spawn(async move {
            stop_signal().await;
            eprintln!("navcast-load: interrupted; stopping riders");
            abort.cancel();
        })
    };

    let tracker = TaskTracker::new();
    let share = profile.rider.guardian_share;
    let deviating = profile.rider.deviating_share;
    let navigating = profile.rider.navigating_share;
    for inc in plan.iter().filter(|i| args.segment.owns(i.user)) {
        let at = start + Duration::from_secs_f64(inc.start_s);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = abort.cancelled() => break,
        }
        let guardian = in_share(inc.user, share, 0);
        let p = RiderPlan {
            user: inc.user,
            incarnation: inc.incarnation,
            start: at,
            stop: start + Duration::from_secs_f64(inc.stop_s),
            guardian,
            deviating: in_share(inc.user, deviating, DEVIATING_PHASE),
            // A watched rider always navigates: its guardian is there to
            // receive navigation events, and without them the lost-events
            // criterion would have nothing to judge.
            navigating: guardian || in_share(inc.user, navigating, NAVIGATING_PHASE),
        };
        tracker.spawn(rider(ctx.clone(), p));
    }
    tracker.close();
    // Riders stop by themselves; allow for the last timeouts and drains.
    let spec = &profile.rider;
    let slack = spec.start_timeout_s.max(spec.connect_timeout_s) + spec.fanout_grace_s + 10.0;
    let end = start + Duration::from_secs_f64(profile.duration_s() + slack);
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep_until(end) => {
            eprintln!("navcast-load{label}: riders still running after the end; aborting them");
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
    }
    // The interrupt task only finishes by itself when a signal came; a
    // stress break or riders aborted after the end are not interruptions.
    interrupt.abort();
    let interrupted = interrupt.await.is_ok();
    reporter_stop.cancel();
    reporter_done.store(true, std::sync::atomic::Ordering::Release);
    let _ = reporter_thread.join();
    if let Some(e) = exporter {
        e.abort();
    }
    if let Some(s) = sampler {
        let _ = s.await;
    }

    let mut rep = Arc::try_unwrap(reporter)
        .ok()
        .context("reporter still shared")?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    // The samples of the last (partial) second.
    rep.quiet = true;
    rep.step(&ctx.rec, &ctx.abort);
    let usage = ProcessUsage::now();
    rep.summary.client = ClientUsage {
        processes: 1,
        threads: rep.threads as u64,
        cpu_s: usage.cpu.saturating_sub(rep.usage_start.cpu).as_secs_f64(),
        peak_rss_bytes: usage.peak_rss_bytes,
        saturated_s: rep.summary.client.saturated_s,
    };
    let mut summary = rep.summary;
    let rec = &ctx.rec;
    summary.ended_unix_ms = unix_ms() as u64;
    summary.failures = rec.failures();
    let node_label = if args.segment.count > 1 {
        format!("segment {}", args.segment)
    } else {
        "local".to_string()
    };
    summary.exceptions = rec
        .exceptions()
        .into_iter()
        .map(|(message, count)| crate::summary::ExceptionRow {
            count,
            message,
            traceback: String::new(),
            nodes: node_label.clone(),
        })
        .collect();
    summary.close_codes = rec
        .close_codes()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let final_nodes = rec.nodes();
    for (k, v) in final_nodes {
        summary.nodes.entry(k).or_default().connects = v.connects;
    }
    let f = &rec.fanout;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    summary.fanout = FanoutCounts {
        expected: ld(&f.expected),
        received: ld(&f.received),
        duplicates: ld(&f.duplicates),
        reorders: ld(&f.reorders),
        gaps: ld(&f.gaps),
        lost: ld(&f.lost),
        recovered: ld(&f.recovered),
    };
    summary.server = std::mem::take(&mut *server_samples.lock().unwrap_or_else(|e| e.into_inner()));
    if interrupted {
        summary
            .stopped_early
            .push(crate::criteria::INTERRUPTED.into());
    }
    report::finish(summary, &args.out, args.quiet)
}
