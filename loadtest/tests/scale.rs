//! `scripts/scale.sh` at CI size, so the 100 000-session script cannot rot:
//! the city-100k profile scaled to 300 riders (10 % navigating, idle
//! sessions for the rest) over wss through nginx to its own cluster, from
//! two source addresses. The script's exit status is navcast-load's
//! verdict; the test also reads the report.

mod common;

use std::process::Command;

use common::{node_binary, repo_root, require_cluster_tools};
use navcast::testing::free_ports_at;
use navcast_load::summary::Metric;

#[test]
fn the_city_profile_runs_through_nginx_at_ci_size() {
    require_cluster_tools(&[]);
    let load = env!("CARGO_BIN_EXE_navcast-load");
    let node = node_binary();
    let reports = tempfile::tempdir().unwrap();
    let root = repo_root();
    let out = Command::new(root.join("scripts/scale.sh"))
        .args(["300", "0.05"])
        .current_dir(&root)
        .env(
            "SCALE_PORT_BASE",
            free_ports_at(&[1, 2, 43, 80, 81, 90]).to_string(),
        )
        .env("NODE_BIN", &node)
        .env("LOAD_BIN", load)
        .env("REPORT_DIR", reports.path())
        .output()
        .expect("run scripts/scale.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scale.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("scale: nodes RSS"), "{stdout}");
    // A passing run prints its closing report too (--quiet alone would not).
    assert!(stdout.contains("result: PASS"), "{stdout}");
    // The share of a core each part used over the hold, from the samples.
    assert!(stdout.contains("scale: CPU over the hold"), "{stdout}");

    let s = navcast_load::Summary::read(&reports.path().join("city-300.json")).unwrap();
    // 300 riders and their 1 % of guardians, each connected once.
    let connects = s.cell(Metric::WsConnect);
    assert!(connects.count >= 300, "{stdout}");
    assert_eq!(connects.failures, 0, "{stdout}");
    // About one rider in ten navigates: updates were sent, by far fewer
    // riders than connected.
    let starts = s.cell(Metric::WsStartNavigation).count;
    assert!(starts > 0 && starts < 150, "{starts} starts:\n{stdout}");
    assert_eq!(s.fanout.lost, 0, "{stdout}");
}
