//! The reconnect storm at CI size: `scripts/storm.sh 300` starts its own
//! Redis, 3 node processes and nginx, runs 300 wss sessions through nginx,
//! SIGKILLs node 2 and lets navcast-load's riders and guardians come back
//! with jittered backoff. The script's exit status is navcast-load's
//! verdict (no latency criterion under `CI=true`); the test also reads the
//! report: every session the kill cut came back and resumed.

mod common;

use std::process::Command;

use common::{node_binary, repo_root, require_cluster_tools};
use navcast::testing::free_ports_at;
use navcast_load::summary::Metric;

#[test]
fn a_killed_node_s_sessions_all_come_back_and_resume() {
    require_cluster_tools(&[]);
    let load = env!("CARGO_BIN_EXE_navcast-load");
    let node = node_binary();
    let reports = tempfile::tempdir().unwrap();
    let root = repo_root();
    let out = Command::new(root.join("scripts/storm.sh"))
        .arg("300")
        .current_dir(&root)
        .env("CI", "true")
        .env("SETTLE_S", "40")
        .env(
            "STORM_PORT_BASE",
            free_ports_at(&[1, 2, 3, 43, 80, 81, 90]).to_string(),
        )
        .env("NODE_BIN", &node)
        .env("LOAD_BIN", load)
        .env("REPORT_DIR", reports.path())
        .output()
        .expect("run scripts/storm.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "storm.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("SIGKILL node-2"), "{stdout}");

    let s = navcast_load::Summary::read(&reports.path().join("storm-300.json")).unwrap();
    let cut = s.close_codes.get("1006").copied().unwrap_or(0);
    let reconnect = s.cell(Metric::WsReconnect);
    // Node 2 held about a third of the 300 sessions.
    assert!(cut >= 30, "only {cut} sessions were cut:\n{stdout}");
    // Each cut session has one reconnect sample, and none failed: it came
    // back through nginx to a live node and, for a rider, its route was
    // still there (`resumed` with `active_route`).
    assert_eq!(reconnect.count, cut, "{stdout}");
    assert_eq!(reconnect.failures, 0, "{stdout}");
    assert_eq!(s.fanout.lost, 0, "{stdout}");
    assert!(s.fanout.expected > 0, "no guardian saw events:\n{stdout}");
    // Every session ended with a normal close at the stop time.
    assert_eq!(s.close_codes.get("1000").copied(), Some(300), "{stdout}");
}
