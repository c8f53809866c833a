//! Memory under a ping flood, alone in its test binary: RSS is the whole
//! process's, so no other test may run beside it.

use std::time::Duration;

use navcast::testing::{Client, TestNode, account, ping_flood, raw_session};
use serde_json::json;

async fn rss(node: &TestNode) -> u64 {
    node.stats().await["memory"]["rss_bytes"]
        .as_u64()
        .expect("rss_bytes")
}

#[tokio::test]
async fn unanswered_pings_cost_a_bounded_amount_of_memory() {
    let node = TestNode::single(|c| {
        // Neither the heartbeat nor the flood rule ends this: only the
        // write-buffer cap bounds what the pongs cost.
        c.ws.ping_interval = Duration::from_secs(60);
        c.ws.pong_timeout = Duration::from_secs(120);
        c.ws.rate_per_s = 1e9;
        c.ws.rate_burst = 1e9;
    })
    .await;
    let acct = account(&node, None).await;
    let mut tcp = raw_session(&node, &acct).await;
    node.wait_sessions(1).await;
    let before = rss(&node).await;
    assert!(!ping_flood(&mut tcp, Duration::from_secs(5)).await);
    let grown = rss(&node).await.saturating_sub(before);
    // ws.write_buffer_bytes (256 KiB) of pongs at most, plus what the
    // allocator keeps; without the cap this was hundreds of MiB.
    assert!(
        grown < 16 * 1024 * 1024,
        "RSS grew by {} KiB during a 5 s ping flood",
        grown / 1024
    );
    // The session is still there and the node still serves others.
    assert_eq!(node.stats().await["sessions"], 1);
    let other = account(&node, None).await;
    let mut c = Client::connect(&node, &other).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}
