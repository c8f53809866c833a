//! A node that goes away mid-run: its sessions end with 1001, the client
//! counts that close code, and the riders carry on on the other node.

mod common;

use std::time::Duration;

use common::*;
use navcast_load::summary::Metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_node_counts_1001_and_riders_move_to_the_other_node() {
    let mut nodes = Node::cluster_with(
        2,
        |c| {
            c.shutdown.drain_timeout = Duration::from_secs(2);
        },
        |b| b,
    )
    .await;
    let targets = hosts(&nodes);
    let smoke = profile("smoke.toml");
    let running = tokio::spawn(async move {
        run(
            &targets,
            &smoke,
            &["--time-scale", "0.5", "--server-stats-every", "0"],
        )
        .await
    });
    // Wait for all ten riders and the guardian to be up, half on each node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (nodes[0].stats().await, nodes[1].stats().await);
        let (a, b) = (
            a["sessions"].as_u64().unwrap(),
            b["sessions"].as_u64().unwrap(),
        );
        if a + b == 11 && b >= 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sessions {a} + {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = nodes.pop().unwrap();
    b.stop().await.expect("the node drains and stops");
    let out = running.await.unwrap();
    let s = &out.summary;
    let drained = s.close_codes.get("1001").copied().unwrap_or(0);
    assert!(drained >= 5, "close codes: {:?}", s.close_codes);
    // Every rider that node-b served reconnected to node-a.
    assert!(s.nodes["node-a"].connects >= 5 + drained, "{:?}", s.nodes);
    assert!(s.cell(Metric::WsConnect).count > 11);
    let text = navcast_load::report::text_report(s, &out.evaluation);
    assert!(text.contains("1001: "), "{text}");
}
