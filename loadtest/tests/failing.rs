//! A server that refuses work makes the run exit non-zero and name the
//! criterion that failed.

mod common;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_node_fails_the_error_rate_criterion() {
    // Two requests of burst, then one every 100 s: most requests get
    // RATE_LIMITED errors.
    let node = Node::single(|c| {
        c.ws.rate_per_s = 0.01;
        c.ws.rate_burst = 2.0;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("limited").display().to_string();
    let host = node.ws();
    let out = cli(&[
        "run",
        "--host",
        &host,
        "--profile",
        &profile("smoke.toml"),
        "--time-scale",
        "0.2",
        "--csv",
        &prefix,
        "--quiet",
    ])
    .await
    .unwrap()
    .unwrap();
    assert!(!out.passed);
    assert_ne!(out.exit_code(), std::process::ExitCode::SUCCESS);
    assert!(
        out.failed.contains(&"error rate".to_string()),
        "{:?}",
        out.failed
    );
    assert!(out.summary.cell(Metric::WsLocationUpdate).failures > 0);
    let failures = std::fs::read_to_string(format!("{prefix}_failures.csv")).unwrap();
    assert!(
        failures.contains("WebSocket,ws_location_update,error RATE_LIMITED,"),
        "{failures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_fails_connect_success() {
    // A port nothing listens on (bound, then released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = format!("ws://127.0.0.1:{port}");
    let out = cli(&[
        "run",
        "--host",
        &host,
        "--profile",
        &profile("smoke.toml"),
        "--time-scale",
        "0.05",
        "--users",
        "2",
        "--quiet",
        "--no-provision",
        "--server-stats-every",
        "0",
    ])
    .await
    .unwrap()
    .unwrap();
    assert!(!out.passed);
    assert!(
        out.failed.contains(&"connect success".to_string()),
        "{:?}",
        out.failed
    );
    assert!(
        out.summary
            .failures
            .iter()
            .any(|f| f.name == "login" && f.error == "connection refused")
    );
}
