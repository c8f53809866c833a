//! A server that refuses work or answers slowly makes the run exit
//! non-zero and name the criterion that failed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use navcast_load::summary::Metric;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Forwards to `backend` and holds every byte the node sends back for
/// `delay`, so each reply reaches the client `delay` late: a slowed server
/// as the client sees it, with the real node behind it.
async fn slow_proxy(backend: SocketAddr, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(backend).await else {
                    return;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut up_rx, mut up_tx) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut up_tx).await;
                    let _ = up_tx.shutdown().await;
                });
                let (due_tx, mut due_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = up_rx.read(&mut buf).await {
                        if due_tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                while let Some((due, bytes)) = due_rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    if client_tx.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = client_tx.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_node_fails_the_error_rate_criterion() {
    // Two requests of burst, then one every 100 s: most requests get
    // RATE_LIMITED errors.
    let node = rate_limited_node(0.01, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("limited").display().to_string();
    let out = run(
        &node.ws(),
        &profile("smoke.toml"),
        &["--time-scale", "0.2", "--csv", &prefix],
    )
    .await;
    assert!(!out.passed);
    assert_ne!(out.exit_code(), std::process::ExitCode::SUCCESS);
    assert_failed(&out, "error rate", true);
    assert!(out.summary.cell(Metric::WsLocationUpdate).failures > 0);
    let failures = std::fs::read_to_string(format!("{prefix}_failures.csv")).unwrap();
    assert!(
        failures.contains("WebSocket,ws_location_update,error RATE_LIMITED,"),
        "{failures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_fails_connect_success() {
    let host = format!("ws://{}", unused_addr());
    let out = run(
        &host,
        &profile("smoke.toml"),
        &[
            "--time-scale",
            "0.05",
            "--users",
            "2",
            "--no-provision",
            "--server-stats-every",
            "0",
        ],
    )
    .await;
    assert!(!out.passed);
    assert_failed(&out, "connect success", true);
    let text = navcast_load::report::text_report(&out.summary, &out.evaluation);
    let logins = out.summary.cell(Metric::Login);
    assert!(logins.count > 0 && logins.failures == logins.count);
    let why = format!(
        "no connection was attempted: {n} of {n} login attempts failed",
        n = logins.count
    );
    assert!(text.contains(&why), "{text}");
    assert_failure_row(&out, "login", "connection refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowed_node_fails_the_latency_criteria_and_nothing_else() {
    let node = Node::single(|_| {}).await;
    let port = slow_proxy(node.addr, Duration::from_millis(80)).await;
    let host = format!("ws://127.0.0.1:{port}");
    let out = run(&host, &profile("smoke.toml"), &["--time-scale", "0.2"]).await;
    assert!(!out.passed);
    assert_ne!(out.exit_code(), std::process::ExitCode::SUCCESS);
    for name in ["connect p95", "start_navigation p95", "location_update p95"] {
        assert_failed(&out, name, true);
    }
    // Slow is not broken: every request was answered, every event arrived.
    assert_failed(&out, "error rate", false);
    assert_failed(&out, "lost peer_events", false);
    let updates = out.summary.cell(Metric::WsLocationUpdate);
    assert!(updates.count > 0);
    assert_eq!(updates.failures, 0);
    // Measured latency includes the delay the proxy added.
    let min_us = updates.hist.min().unwrap();
    assert!(min_us >= 80_000, "fastest location_update {min_us} µs");
    let text = navcast_load::report::text_report(&out.summary, &out.evaluation);
    assert!(text.contains("[FAIL] location_update p95"), "{text}");
}
