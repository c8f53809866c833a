//! Two segments of a test, merged, add up to one run of the whole test:
//! same seed, same riders, same requests.

mod common;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_segments_equal_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let smoke = profile("smoke.toml");
    let same = ["--time-scale", "0.25", "--seed", "42"];

    // The whole test on a fresh two-node cluster.
    let whole = {
        let nodes = Node::cluster_with(2, |_| {}, |b| b).await;
        let json = path("whole.json");
        let mut args = vec!["--json", json.as_str()];
        args.extend(same);
        let out = run(&hosts(&nodes), &smoke, &args).await;
        assert_passed_but_latency(&out);
        out.summary
    };

    // The same test as two segments on another fresh cluster, started
    // together, then merged.
    let nodes = Node::cluster_with(2, |_| {}, |b| b).await;
    let targets = hosts(&nodes);
    let (j1, j2) = (path("seg1.json"), path("seg2.json"));
    let start_at = (navcast::clock::unix_ms() + 1500).to_string();
    let seg = |segment: &'static str, json: String| {
        let (targets, start_at, smoke) = (targets.clone(), start_at.clone(), smoke.clone());
        async move {
            let mut args = vec![
                "--segment",
                segment,
                "--json",
                &json,
                "--start-at",
                &start_at,
            ];
            args.extend(same);
            run(&targets, &smoke, &args).await
        }
    };
    let (a, b) = tokio::join!(seg("1/2", j1.clone()), seg("2/2", j2.clone()));
    assert!(a.summary.cell(Metric::WsConnect).count > 0);
    assert!(b.summary.cell(Metric::WsConnect).count > 0);
    let merged_json = path("merged.json");
    let prefix = path("merged");
    let merged = cli(&[
        "merge",
        &j1,
        &j2,
        "--json",
        &merged_json,
        "--csv",
        &prefix,
        "--quiet",
    ])
    .await
    .unwrap()
    .unwrap();
    assert_passed_but_latency(&merged);
    let twice = cli(&["merge", &j1, &j2, &j1, "--quiet"]).await.unwrap_err();
    assert!(
        format!("{twice:#}").contains("segment 1/2 is in the merge twice"),
        "{twice:#}"
    );
    let m = &merged.summary;
    assert_eq!(m.segments, vec!["1/2", "2/2"]);

    for metric in Metric::ALL {
        let (w, g) = (whole.cell(metric), m.cell(metric));
        assert_eq!(w.count, g.count, "{}: whole vs merged", metric.name());
        assert_eq!(w.failures, g.failures, "{}", metric.name());
        assert_eq!(
            g.hist.len(),
            a.summary.cell(metric).hist.len() + b.summary.cell(metric).hist.len(),
            "{}: histograms add up exactly",
            metric.name()
        );
    }
    assert_eq!(whole.fanout.expected, m.fanout.expected);
    assert_eq!(whole.fanout.received, m.fanout.received);
    assert_eq!(whole.close_codes, m.close_codes);
    assert_eq!(m.client.processes, 2);
    assert!(
        (m.client.cpu_s - (a.summary.client.cpu_s + b.summary.client.cpu_s)).abs() < 1e-9,
        "merged client CPU is the sum of the segments'"
    );
    let connects = |s: &navcast_load::Summary| -> Vec<(String, u64)> {
        s.nodes
            .iter()
            .map(|(k, v)| (k.clone(), v.connects))
            .collect()
    };
    assert_eq!(connects(&whole), connects(m));
    let peak: u64 = m.nodes.values().map(|n| n.peak_open).sum();
    assert_eq!(peak, 11, "10 riders and a guardian open at the peak");

    // The merged CSV's location_update row counts what the nodes counted.
    let stats = std::fs::read_to_string(format!("{prefix}_stats.csv")).unwrap();
    let row = stats
        .lines()
        .find(|l| l.starts_with("WebSocket,ws_location_update,"))
        .unwrap();
    let count: u64 = row.split(',').nth(2).unwrap().parse().unwrap();
    assert_eq!(
        count,
        messages_in(&[&nodes[0], &nodes[1]], "location_update").await
    );
}
