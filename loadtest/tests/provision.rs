//! `provision` registers riders and guardians once (a second call logs the
//! same accounts in), and `run --accounts` uses that file without
//! registering anything.

mod common;

use common::*;
use navcast_load::accounts::AccountsFile;
use navcast_load::summary::Metric;

fn user_ids(file: &AccountsFile) -> Vec<Option<String>> {
    file.accounts
        .iter()
        .flat_map(|a| [Some(&a.rider), a.guardian.as_ref()])
        .flatten()
        .map(|c| c.user_id.clone())
        .collect()
}

/// `navcast_auth_requests_total{op, outcome}` from the node's /metrics.
async fn auth(node: &Node, op: &str, outcome: &str) -> u64 {
    let text = node.metrics().await;
    let key = format!("navcast_auth_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_is_idempotent_and_run_uses_its_file() {
    let node = Node::single(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts.json");
    let smoke = profile("smoke.toml");
    let host = node.ws();
    let args = [
        "provision",
        "--host",
        &host,
        "--profile",
        &smoke,
        "--out",
        path.to_str().unwrap(),
        "--account-prefix",
        "prov",
        "--quiet",
    ];

    assert!(cli(&args).await.unwrap().is_none());
    assert_eq!(auth(&node, "register", "ok").await, 11);
    let first = AccountsFile::read(&path).unwrap();
    // The smoke profile's peak (10 riders) and its guardian share (10 %).
    assert_eq!(first.accounts.len(), 10);
    let guardians = first.accounts.iter().filter(|a| a.guardian.is_some());
    assert_eq!(guardians.count(), 1);
    let ids = user_ids(&first);
    assert_eq!(ids.len(), 11);
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    assert!(first.accounts[0].rider.email.starts_with("prov-r"));

    // Again: the same accounts, logged in rather than registered anew.
    assert!(cli(&args).await.unwrap().is_none());
    assert_eq!(auth(&node, "register", "ok").await, 11, "no account twice");
    assert_eq!(user_ids(&AccountsFile::read(&path).unwrap()), ids);

    let out = run(
        &node.ws(),
        &smoke,
        &[
            "--accounts",
            path.to_str().unwrap(),
            "--time-scale",
            "0.1",
            "--server-stats-every",
            "0",
        ],
    )
    .await;
    assert_passed_but_latency(&out);
    assert_eq!(out.summary.cell(Metric::WsConnect).count, 11);
    assert_eq!(out.summary.cell(Metric::Login).failures, 0);
    assert_eq!(
        auth(&node, "register", "ok").await,
        11,
        "run registered none"
    );
}
