//! The load client's tests run real nodes (`navcast::testing`, shared with
//! the node's own tests) and the real CLI in-process.
#![allow(dead_code)]

use std::path::PathBuf;

use clap::Parser;
use navcast_load::{Cli, Outcome};

pub use navcast::testing::TestNode as Node;

pub fn profile(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "config", "loadtest", name]
        .iter()
        .collect();
    p.display().to_string()
}

/// Runs the real CLI in-process.
pub async fn cli(args: &[&str]) -> anyhow::Result<Option<Outcome>> {
    let mut argv = vec!["navcast-load"];
    argv.extend_from_slice(args);
    navcast_load::run(Cli::parse_from(argv)).await
}

/// `messages_in` of one type, summed over nodes.
pub async fn messages_in(nodes: &[&Node], kind: &str) -> u64 {
    let mut n = 0;
    for node in nodes {
        n += node.stats().await["messages_in"][kind]
            .as_u64()
            .unwrap_or(0);
    }
    n
}

/// `run --host HOST --profile PROFILE --quiet` and `extra`, in-process. The
/// run itself must complete; its criteria may pass or fail.
pub async fn run(host: &str, profile: &str, extra: &[&str]) -> Outcome {
    let mut args = vec!["run", "--host", host, "--profile", profile, "--quiet"];
    args.extend_from_slice(extra);
    cli(&args)
        .await
        .expect("the run completes")
        .expect("`run` returns an outcome")
}

/// The nodes' WebSocket URLs, comma separated, as `--host` takes them.
pub fn hosts(nodes: &[Node]) -> String {
    nodes.iter().map(Node::ws).collect::<Vec<_>>().join(",")
}

/// Writes a profile into `dir` and returns its path.
pub fn write_profile(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    file.display().to_string()
}

/// Asserts that the named criterion failed (`true`) or did not (`false`).
pub fn assert_failed(out: &Outcome, criterion: &str, failed: bool) {
    assert_eq!(
        out.failed.iter().any(|c| c == criterion),
        failed,
        "criterion {criterion:?}; failed: {:?}",
        out.failed
    );
}

/// Asserts that every criterion except the latency ones passed. The
/// profiles' latency targets are benchmarks for a quiet machine (README,
/// "Performance"); on a busy CI machine a p95 can miss them while the
/// client and the node behaved exactly right, and behaviour — counts,
/// codes, order, loss — is what these tests check.
pub fn assert_passed_but_latency(out: &Outcome) {
    let failed: Vec<&str> = out
        .evaluation
        .failed()
        .into_iter()
        .filter(|v| !v.is_latency())
        .map(|v| v.criterion.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\n{:?}\n{:#?}",
        out.summary.failures,
        out.evaluation.verdicts
    );
}

/// A node that allows each session a burst of `burst` requests, then
/// `per_s` a second: past that its replies are RATE_LIMITED errors.
pub async fn rate_limited_node(per_s: f64, burst: f64) -> Node {
    Node::single(|c| {
        c.ws.rate_per_s = per_s;
        c.ws.rate_burst = burst;
    })
    .await
}

/// Asserts that the summary's failure table has a row for `metric` with
/// this cause.
pub fn assert_failure_row(out: &Outcome, metric: &str, error: &str) {
    let rows = &out.summary.failures;
    assert!(
        rows.iter().any(|f| f.name == metric && f.error == error),
        "no {metric:?} failure {error:?} in {rows:?}"
    );
}

/// A loopback address nothing listens on (bound, then released).
pub fn unused_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The node binary beside navcast-load in the target directory, for the
/// tests that run the repository's scripts (storm, scale, monitoring).
pub fn node_binary() -> PathBuf {
    let node = std::path::Path::new(env!("CARGO_BIN_EXE_navcast-load")).with_file_name("navcast");
    assert!(
        node.is_file(),
        "{} is missing: build it with `cargo build -p navcast` (`cargo test --workspace` does)",
        node.display()
    );
    node
}

/// The repository's root (the scripts run from there).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails loudly, with the install command, unless the Debian packages a
/// script's cluster needs are on `PATH`.
pub fn require_cluster_tools(extra: &[&str]) {
    for tool in ["redis-server", "nginx", "curl", "python3", "openssl"]
        .iter()
        .chain(extra)
    {
        let pkg = if *tool == "promtool" {
            "prometheus"
        } else {
            tool
        };
        navcast::testing::require_tool(tool, &format!("apt-get install -y {pkg}"));
    }
}
