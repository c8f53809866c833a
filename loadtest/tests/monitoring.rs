//! Monitoring as a part that runs (#15): the alert rules pass `promtool`,
//! and every query of every panel of the Grafana dashboard returns series
//! from a real Prometheus scraping a real cluster (`scripts/cluster.sh` with
//! `MONITORING=1`: Redis, 3 node processes, nginx, the Redis and nginx
//! exporters) while navcast-load runs against it with `--metrics-listen`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{node_binary, repo_root, require_cluster_tools};
use navcast::testing::{free_port, free_ports_at, poll_until, require_tool};

fn promtool(args: &[&str]) -> std::process::Output {
    require_tool("promtool", "apt-get install -y prometheus");
    Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run promtool")
}

#[test]
fn alert_rules_and_configs_pass_promtool() {
    for args in [
        &["check", "rules", "monitoring/alerts.yml"][..],
        &["test", "rules", "monitoring/alerts_test.yml"],
        &["check", "config", "monitoring/prometheus.yml"],
    ] {
        let out = promtool(args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a firing and a quiet case in the tests.
    let rules = std::fs::read_to_string(repo_root().join("monitoring/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo_root().join("monitoring/alerts_test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases = tests.matches(&format!("alertname: {line}\n")).count();
        assert!(cases >= 2, "{line} has {cases} test case(s)");
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn script(&self, arg: &str) -> std::process::Output {
        Command::new(repo_root().join("scripts/cluster.sh"))
            .arg(arg)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run scripts/cluster.sh")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// `scripts/dashboard-queries.py` against Prometheus: its exit status and
/// its report (one line per query).
async fn dashboard_queries(prom: u16) -> (bool, String) {
    let out = tokio::process::Command::new(repo_root().join("scripts/dashboard-queries.py"))
        .arg(format!("http://127.0.0.1:{prom}"))
        .output()
        .await
        .expect("run scripts/dashboard-queries.py");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An instant query's first value.
async fn value(http: &reqwest::Client, prom: u16, expr: &str) -> Option<f64> {
    let v: serde_json::Value = http
        .get(format!("http://127.0.0.1:{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_during_a_load() {
    require_cluster_tools(&[
        "prometheus",
        "promtool",
        "prometheus-redis-exporter",
        "prometheus-nginx-exporter",
    ]);
    let load = env!("CARGO_BIN_EXE_navcast-load");
    let node = node_binary();
    let dir = tempfile::tempdir().unwrap();
    let (https, prom, load_port) = (free_port(), free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("CLUSTER_DIR", dir.path().display().to_string()),
        ("NODES", "3".into()),
        ("NODE_BASE_PORT", free_ports_at(&[0, 1, 2]).to_string()),
        ("REDIS_PORT", free_port().to_string()),
        ("HTTP_PORT", free_port().to_string()),
        ("HTTPS_PORT", https.to_string()),
        ("NGINX_STATUS_PORT", free_port().to_string()),
        ("MONITORING", "1".into()),
        ("PROM_PORT", prom.to_string()),
        ("PROM_SCRAPE", "1s".into()),
        ("REDIS_EXPORTER_PORT", free_port().to_string()),
        ("NGINX_EXPORTER_PORT", free_port().to_string()),
        ("LOAD_METRICS_PORT", load_port.to_string()),
        ("NODE_BIN", node.display().to_string()),
        ("NAVCAST_AUTH_ARGON2_MEMORY_KIB", "1024".into()),
        ("NAVCAST_AUTH_ARGON2_ITERATIONS", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cluster = Cluster { dir, env };
    let out = cluster.script("up");
    assert!(
        out.status.success(),
        "cluster up failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A minute of the smoke profile through nginx, measured live.
    let mut run = tokio::process::Command::new(load)
        .args(["run", "--host", &format!("wss://127.0.0.1:{https}")])
        .arg("--ca-file")
        .arg(cluster.dir.path().join("tls/cert.pem"))
        .arg("--profile")
        .arg(repo_root().join("config/loadtest/smoke.toml"))
        .args(["--quiet", "--server-stats-every", "0", "--metrics-listen"])
        .arg(format!("127.0.0.1:{load_port}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    // Every target is up (3 nodes, Redis, nginx, the load), and the load's
    // updates show in a rate.
    poll_until(
        "every scrape target up",
        Duration::from_secs(60),
        async || value(&http, prom, "count(up == 1)").await == Some(6.0),
    )
    .await;
    poll_until(
        "location updates in a rate",
        Duration::from_secs(60),
        async || {
            value(
                &http,
                prom,
                "sum(rate(navcast_messages_in_total{type=\"location_update\"}[1m]))",
            )
            .await
            .is_some_and(|v| v > 0.0)
        },
    )
    .await;
    let mut report = String::new();
    poll_until(
        "every dashboard query returns series",
        Duration::from_secs(60),
        async || {
            let (ok, text) = dashboard_queries(prom).await;
            report = text;
            ok
        },
    )
    .await;
    assert!(
        report.lines().filter(|l| l.starts_with("ok ")).count() >= 20,
        "{report}"
    );
    // The figures, for whoever runs this with --nocapture.
    println!("{report}");
    run.kill().await.unwrap();
}
