//! `scripts/scale.sh` at CI size, so the 100 000-session script cannot rot:
//! the city-100k profile scaled to 300 riders (10 % navigating, idle
//! sessions for the rest) over wss through nginx to its own cluster, from
//! two source addresses. The script's exit status is navcast-load's
//! verdict; the test also reads the report.

use std::path::Path;
use std::process::Command;

use navcast::testing::require_tool;
use navcast_load::summary::Metric;

/// A base port with the script's ports (base+1..2, +43, +80, +81, +90) free.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 20_000;
        if [1, 2, 43, 80, 81, 90]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports for the scale cluster");
}

#[test]
fn the_city_profile_runs_through_nginx_at_ci_size() {
    for tool in ["redis-server", "nginx", "curl", "python3", "openssl"] {
        require_tool(
            tool,
            "apt-get install -y redis-server nginx curl python3 openssl",
        );
    }
    let load = env!("CARGO_BIN_EXE_navcast-load");
    let node = Path::new(load).with_file_name("navcast");
    assert!(
        node.is_file(),
        "{} is missing: build it with `cargo build -p navcast` (`cargo test --workspace` does)",
        node.display()
    );
    let reports = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/scale.sh"))
        .args(["300", "0.05"])
        .current_dir(&root)
        .env("SCALE_PORT_BASE", free_base().to_string())
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
