//! A guardian that stops reading: its session is closed with 4008 and the
//! node's memory stays within what the session's bounded queue can hold.
//! In its own test binary so the process RSS it measures is not shared with
//! other tests.

use navcast::testing::*;
use serde_json::json;

/// Frames the slow session may queue before it is closed.
const QUEUE_FRAMES: usize = 16;
/// Events the rider's stream history keeps.
const HISTORY: usize = 4;

/// What RSS may grow by besides the frames the slow session holds: the
/// allocator's rounding and page granularity over the rider's own few
/// hundred requests and replies. Measured at about 100 KiB beyond the
/// queued frames; the kernel's socket buffers (which absorb hundreds of
/// events before the queue fills) are not process memory.
const ALLOCATOR_SLACK: u64 = 512 * 1024;

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_and_memory_stays_bounded() {
    let mut cfg = test_config();
    cfg.ws.queue_frames = QUEUE_FRAMES;
    cfg.ws.rate_per_s = 100_000.0;
    cfg.ws.rate_burst = 100_000.0;
    // The rider's stream keeps its last events (protocol v1.1): a few here,
    // counted in the bound below.
    cfg.history.size = HISTORY;
    let node = TestNode::start(cfg).await;
    let rider = account(&node, None).await;
    let guardian = account(&node, None).await;
    let mut r = Client::connect(&node, &rider).await;
    // The guardian's socket has a tiny receive buffer; it reads its
    // `connected` frame and the reply to `watch`, then nothing more.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        node.ws_url(&guardian.user_id, &guardian.access),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut slow = Client::from_ws(ws).await;
    share_and_watch(&mut r, &mut slow, &rider.user_id, &guardian.user_id).await;

    let start = json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"});
    let first = r.request(start.clone()).await;
    assert_eq!(first["type"], "route_calculated", "{first}");
    // The node holds at most the queue plus the frame its writer is
    // sending (and the one it has taken out of the queue to send next);
    // a peer_event frame is the event plus an envelope of under 256 bytes.
    let frame_bytes = first.to_string().len() as u64 + 256;
    let bound = (QUEUE_FRAMES as u64 + 2 + HISTORY as u64) * frame_bytes;
    let rss_before = node.stats().await["memory"]["rss_bytes"].as_u64().unwrap();

    // Each route_calculated event is several KiB; push until the node
    // gives up on the guardian. Without the bound it never would.
    let mut pushed = 0;
    while node.stats().await["queue_full_closes"] == 0 {
        let again = r.request(start.clone()).await;
        assert_eq!(again["type"], "route_calculated", "{again}");
        pushed += 1;
        assert!(pushed < 10_000, "slow consumer never closed");
    }
    // Reading the slow socket now drains what the kernel buffered and ends
    // in close 4008.
    assert_eq!(slow.close_code().await, Some(4008));

    let rss_after = node.stats().await["memory"]["rss_bytes"].as_u64().unwrap();
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth <= bound + ALLOCATOR_SLACK,
        "memory bounded by {QUEUE_FRAMES} queued frames and {HISTORY} kept events of {frame_bytes} B ({bound} B) \
         + {ALLOCATOR_SLACK} B slack: {rss_before} → {rss_after} after {pushed} events"
    );
    // The rider is unaffected.
    let pong = r.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(node.stats().await["queue_full_closes"], 1);
}
