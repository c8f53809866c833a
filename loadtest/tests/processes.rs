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
    assert!(out.passed, "{:?}", out.failed);
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
