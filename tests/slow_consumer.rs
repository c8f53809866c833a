//! A guardian that stops reading: its session is closed with 4008 and the
//! node's memory stays bounded. In its own test binary so the process RSS
//! it measures is not shared with other tests.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_and_memory_stays_bounded() {
    let mut cfg = test_config();
    cfg.ws.queue_frames = 16;
    cfg.ws.rate_per_s = 100_000.0;
    cfg.ws.rate_burst = 100_000.0;
    let node = TestNode::start(cfg).await;
    let rider = account(&node, None).await;
    let guardian = account(&node, None).await;
    let mut r = Client::connect(&node, &rider).await;
    // The guardian's socket has a tiny receive buffer and is never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        node.ws_url(&guardian.user_id, &guardian.access),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let connected = slow.next().await.unwrap().unwrap();
    assert!(connected.to_text().unwrap().contains("connected"));
    use futures_util::SinkExt;
    r.request(json!({"type": "share_navigation", "guardian_id": guardian.user_id}))
        .await;
    slow.send(Message::text(
        json!({"type": "watch", "user_id": rider.user_id, "request_id": 1}).to_string(),
    ))
    .await
    .unwrap();
    // Wait until the watch is registered (the rider sees the guardian's
    // session in /stats as a watcher only indirectly: poll the count of
    // delivered peer events after one event).
    r.request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    let rss_before = node.stats().await["memory"]["rss_bytes"].as_u64().unwrap();
    // Each route_calculated event is several KiB; push until the node gives up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        r.request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
            .await;
        if node.stats().await["queue_full_closes"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow consumer never closed"
        );
    }
    let rss_after = node.stats().await["memory"]["rss_bytes"].as_u64().unwrap();
    assert!(
        rss_after < rss_before + 64 * 1024 * 1024,
        "memory bounded: {rss_before} → {rss_after}"
    );
    // The rider is unaffected.
    let pong = r.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    // Reading the slow socket now ends in close 4008.
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(4008));
}
