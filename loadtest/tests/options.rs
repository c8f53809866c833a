//! Options beyond the default run: source addresses, GPS trace replay,
//! and a stress staircase that stops where a threshold breaks.

mod common;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ips_and_a_gps_trace() {
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let trace = profile("traces/line2-gangnam-hongdae.csv");
    let file = write_profile(
        &dir,
        "trace.toml",
        &format!(
            "name = \"trace\"\n[[stage]]\nname = \"hold\"\nend_s = 8\nusers = 4\n[rider]\nupdate_interval_s = [1.0, 1.5]\nguardian_share = 0.0\ntrace = {trace:?}\n"
        ),
    );
    let out = run(
        &node.ws(),
        &file,
        &[
            "--source-ips",
            "127.0.0.2-127.0.0.4",
            "--server-stats-every",
            "0",
        ],
    )
    .await;
    assert_passed_but_latency(&out);
    assert!(out.summary.cell(Metric::WsLocationUpdate).count >= 16);
    assert_eq!(out.summary.cell(Metric::WsConnect).count, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_stops_at_the_step_that_breaks() {
    // Riders send every 1.2 s; the node allows a burst of 3, then one
    // request every 2 s per session: within a few seconds every session
    // gets RATE_LIMITED errors, and the step running then breaks.
    let node = rate_limited_node(0.5, 3.0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(
        &dir,
        "stress.toml",
        r#"
name = "stress-test"
[stress]
start_users = 4
step_users = 4
step_interval_s = 4
max_users = 40
spawn_rate = 20
[rider]
update_interval_s = [1.2, 1.2]
guardian_share = 0.0
"#,
    );
    // Without latency thresholds a step breaks on what the node did (its
    // errors), never on how busy the machine running the test is.
    let out = run(
        &node.ws(),
        &file,
        &[
            "--server-stats-every",
            "0",
            "--threshold",
            "connect_p95_ms=none",
            "--threshold",
            "start_navigation_p95_ms=none",
            "--threshold",
            "location_update_p95_ms=none",
        ],
    )
    .await;
    let b = out.evaluation.stress_break.clone().expect("a step broke");
    assert!(b.criteria.contains(&"error rate".to_string()), "{b:?}");
    assert!(
        !out.summary.stopped_early.is_empty(),
        "the run stopped at the break"
    );
    assert!(b.users < 40, "{b:?}");
    assert!(!out.passed);
    let text = navcast_load::report::text_report(&out.summary, &out.evaluation);
    assert!(text.contains("stress: broke at"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outlive_their_tokens_by_refreshing_in_band() {
    // Tokens live 6 s and the node warns 4 s before: a 12 s run only
    // keeps its sessions by refreshing (HTTP refresh, then refresh_token).
    let node = Node::single(|c| {
        c.jwt.access_ttl = std::time::Duration::from_secs(6);
        c.ws.token_expiry_warning = std::time::Duration::from_secs(4);
    })
    .await;
    let out = run(
        &node.ws(),
        &profile("smoke.toml"),
        &[
            "--time-scale",
            "0.2",
            "--users",
            "4",
            "--server-stats-every",
            "0",
        ],
    )
    .await;
    assert_passed_but_latency(&out);
    assert!(
        out.summary.cell(Metric::Refresh).count >= 4,
        "{:?}",
        out.summary.metrics.keys()
    );
    assert_eq!(
        out.summary.close_codes.keys().collect::<Vec<_>>(),
        vec!["1000"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_url_reads_node_stats_elsewhere_and_a_dead_one_is_not_a_failure() {
    // Riders on the first node, /stats read from the second.
    let nodes = Node::cluster_with(2, |_| {}, |b| b).await;
    let (node, other) = (&nodes[0], &nodes[1]);
    let stats = other.http("");
    let smoke_with_stats = |url: String, users: &'static str| {
        let host = node.ws();
        async move {
            let args = [
                "--time-scale",
                "0.1",
                "--users",
                users,
                "--server-stats-every",
                "1",
                "--stats-url",
                &url,
            ];
            run(&host, &profile("smoke.toml"), &args).await
        }
    };
    let out = smoke_with_stats(stats.clone(), "10").await;
    assert_passed_but_latency(&out);
    let samples = &out.summary.server;
    assert!(samples.len() >= 3, "{samples:?}");
    let other_id = other.stats().await["node_id"].as_str().unwrap().to_string();
    assert!(
        samples
            .iter()
            .all(|x| x.host == stats && x.node_id == other_id && x.rss_bytes > 0),
        "{samples:?}"
    );

    // Nothing listens there: no samples, and the run still passes.
    let out = smoke_with_stats(format!("http://{}", unused_addr()), "2").await;
    assert_passed_but_latency(&out);
    assert!(out.summary.server.is_empty());
}
