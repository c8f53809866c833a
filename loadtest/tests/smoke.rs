//! The `smoke` profile against a real node passes, writes Locust's exact
//! CSV headers, and its counts agree with the node's `/stats`.

mod common;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_passes_with_locust_csvs_and_counts_matching_the_node() {
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("smoke").display().to_string();
    let html = dir.path().join("report.html").display().to_string();
    let json = dir.path().join("summary.json").display().to_string();
    let out = run(
        &node.ws(),
        &profile("smoke.toml"),
        &[
            "--time-scale",
            "0.25",
            "--csv",
            &prefix,
            "--html",
            &html,
            "--json",
            &json,
        ],
    )
    .await;
    let s = &out.summary;
    assert_passed_but_latency(&out);

    // Every rider connected once and started a navigation; the timer sent
    // location updates; the guardian (10 % of 10) saw the rider's events.
    assert_eq!(s.cell(Metric::Login).count, 11);
    assert_eq!(s.cell(Metric::WsConnect).count, 11);
    assert!(s.cell(Metric::WsStartNavigation).count >= 10);
    assert!(s.cell(Metric::WsLocationUpdate).count >= 10);
    assert!(s.fanout.received > 0 && s.fanout.expected > 0);
    assert_eq!(s.fanout.lost, 0);
    assert_eq!(s.close_codes.get("1000"), Some(&11));
    assert_eq!(s.nodes["node-a"].connects, 11);

    // The node counted the same requests.
    for (m, kind) in [
        (Metric::WsLocationUpdate, "location_update"),
        (Metric::WsStartNavigation, "start_navigation"),
        (Metric::WsShareNavigation, "share_navigation"),
        (Metric::WsWatch, "watch"),
    ] {
        assert_eq!(
            messages_in(&[&node], kind).await,
            s.cell(m).count,
            "{kind}: node vs client"
        );
    }
    let stats = node.stats().await;
    assert_eq!(stats["connections"]["accepted"], 11);

    // Locust's exact headers.
    let first_line = |suffix: &str| {
        let text = std::fs::read_to_string(format!("{prefix}_{suffix}.csv")).unwrap();
        (text.lines().next().unwrap().to_string(), text)
    };
    let (h, stats_csv) = first_line("stats");
    assert_eq!(
        h,
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
    );
    let last = stats_csv.lines().last().unwrap();
    assert!(last.starts_with(",Aggregated,"), "{last}");
    assert!(stats_csv.contains("\nWebSocket,ws_location_update,"));
    assert!(stats_csv.contains("\nHTTP,login,11,0,"));
    let (h, history) = first_line("stats_history");
    assert_eq!(
        h,
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size"
    );
    assert!(history.lines().count() > 10);
    for line in history.lines() {
        assert_eq!(line.split(',').count(), 24, "{line}");
    }
    assert_eq!(
        first_line("failures").0,
        "Method,Name,Error,Occurrences,First Seen,Last Seen"
    );
    assert_eq!(first_line("exceptions").0, "Count,Message,Traceback,Nodes");

    // The HTML report stands alone; the JSON summary reads back.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"));
    let badge = if out.passed {
        ">PASS</span>"
    } else {
        ">FAIL</span>"
    };
    assert!(page.contains(badge), "the page's verdict is the run's");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    assert!(page.contains("<h2>Load client</h2>"));

    // The client reports what it cost itself.
    assert_eq!(s.client.processes, 1);
    assert!(
        s.client.cpu_s > 0.0 && s.client.peak_rss_bytes > 0,
        "{:?}",
        s.client
    );
    assert_eq!(
        s.round_trips(),
        s.cell(Metric::WsStartNavigation).count
            + s.cell(Metric::WsLocationUpdate).count
            + s.cell(Metric::WsShareNavigation).count
            + s.cell(Metric::WsWatch).count
    );
    assert!(s.client_cpu_per_1000().is_some_and(|v| v > 0.0));
    let row_cpu_ms: u64 = s.history.iter().map(|r| r.client_cpu_ms).sum();
    assert!(
        row_cpu_ms as f64 <= s.client.cpu_s * 1000.0 + 1.0,
        "per-second CPU {row_cpu_ms} ms exceeds the total {} s",
        s.client.cpu_s
    );
    let back = navcast_load::Summary::read(std::path::Path::new(&json)).unwrap();
    assert_eq!(back.client.processes, 1);
    assert_eq!(
        back.cell(Metric::WsLocationUpdate).hist.len(),
        s.cell(Metric::WsLocationUpdate).hist.len()
    );
}
