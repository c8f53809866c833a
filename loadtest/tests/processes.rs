//! `run --processes 2`: two child processes of the real binary, each a
//! segment, merged into one report.

mod common;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_merge_into_one_report() {
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("all.json").display().to_string();
    let out = run(
        &node.ws(),
        &profile("smoke.toml"),
        &[
            "--time-scale",
            "0.1",
            "--processes",
            "2",
            "--json",
            &json,
            "--self-exe",
            env!("CARGO_BIN_EXE_navcast-load"),
        ],
    )
    .await;
    assert_passed_but_latency(&out);
    let s = &out.summary;
    assert_eq!(s.segments, vec!["1/2", "2/2"]);
    assert_eq!(s.cell(Metric::WsConnect).count, 11);
    assert_eq!(
        s.cell(Metric::WsLocationUpdate).count,
        messages_in(&[&node], "location_update").await
    );
    assert!(std::path::Path::new(&json).exists());
    // Both processes' own costs are in the merged summary.
    assert_eq!(s.client.processes, 2);
    assert_eq!(s.client.threads, 2);
    assert!(s.client.cpu_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_segment_and_still_writes_the_report() {
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cut.json");
    // The smoke profile at full length (60 s), as a real process.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_navcast-load"))
        .args([
            "run",
            "--host",
            &node.ws(),
            "--profile",
            &profile("smoke.toml"),
        ])
        .args(["--processes", "2", "--quiet", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // All ten riders and the guardian are connected (a 10 s ramp, after
    // provisioning and the segments' common start).
    node.wait_sessions_within(11, std::time::Duration::from_secs(40))
        .await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("the run stops within 30 s of SIGTERM, long before the profile's 60 s")
        .unwrap();
    assert_eq!(status.code(), Some(1), "an interrupted run does not pass");

    let s = navcast_load::Summary::read(&json).unwrap();
    assert_eq!(s.segments, vec!["1/2", "2/2"]);
    assert_eq!(s.stopped_early, vec!["interrupted"]);
    assert_eq!(s.cell(Metric::WsConnect).count, 11);
    // Every session was closed by the client, not dropped.
    assert_eq!(s.close_codes.get("1000"), Some(&11), "{:?}", s.close_codes);
    let eval = navcast_load::criteria::evaluate(&s);
    assert!(
        eval.failed().iter().any(|v| v.criterion == "run completed"),
        "{:?}",
        eval.verdicts
    );
}

/// The value of the first sample line of `text` that starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// #15 §1: `--metrics-listen` serves the run's live measures in
/// Prometheus's format while it runs, one port per `--processes` segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_live_measures_per_segment() {
    let node = Node::single(|_| {}).await;
    let base = loop {
        let p = navcast::testing::free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_navcast-load"))
        .args([
            "run",
            "--host",
            &node.ws(),
            "--profile",
            &profile("smoke.toml"),
        ])
        .args(["--processes", "2", "--quiet", "--metrics-listen"])
        .arg(format!("127.0.0.1:{base}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for (port, segment) in [(base, "1/2"), (base + 1, "2/2")] {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let series = format!(
            "navcast_load_requests_total{{segment=\"{segment}\",name=\"ws_location_update\""
        );
        let mut text = String::new();
        navcast::testing::poll_until(
            "location updates counted on /metrics",
            std::time::Duration::from_secs(60),
            async || {
                text = match http.get(&url).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                sample(&text, &series).is_some_and(|v| v > 0.0)
            },
        )
        .await;
        let users = sample(
            &text,
            &format!("navcast_load_users{{segment=\"{segment}\"}}"),
        );
        assert!(users.is_some_and(|u| u > 0.0), "{text}");
        let inf = format!(
            "navcast_load_latency_seconds_bucket{{segment=\"{segment}\",name=\"ws_location_update\",type=\"WebSocket\",le=\"+Inf\"}}"
        );
        assert!(sample(&text, &inf).is_some_and(|v| v > 0.0), "{text}");
        assert!(text.contains("# TYPE navcast_load_latency_seconds histogram"));
    }
    child.kill().await.unwrap();
}
