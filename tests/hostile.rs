//! Hostile and broken clients against a real node on real sockets: every
//! per-session resource has a bound, and a client that misbehaves is
//! closed with a documented code and counted, while the node stays up.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::testing::{Account, Client, TestNode, WAIT, account, poll_until};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A masked, empty client ping frame (RFC 6455 §5.2: opcode 0x9, FIN, mask
/// bit, length 0, a 4-byte mask).
const RAW_PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];

/// Connects, reads `connected`, and hands back the raw TCP stream, so the
/// test can write frames and never read again.
async fn raw_session(node: &TestNode, acct: &Account) -> TcpStream {
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url(&acct.user_id, &acct.access))
        .await
        .expect("ws connect");
    let first = ws.next().await.expect("connected").expect("frame");
    assert!(
        first.to_text().unwrap().contains("\"connected\""),
        "{first}"
    );
    match ws.into_inner() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => panic!("plain ws expected"),
    }
}

/// Writes client pings as fast as the socket takes them, never reading,
/// until the node drops the connection or `limit` passes. True if the node
/// dropped it.
async fn ping_flood(tcp: &mut TcpStream, limit: Duration) -> bool {
    let burst: Vec<u8> = RAW_PING.iter().copied().cycle().take(6 * 10_000).collect();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // A timeout means the node stopped reading for now (its buffers
        // are full); only a write error means the connection is gone.
        let write = tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&burst));
        if let Ok(Err(_)) = write.await {
            return true;
        }
    }
    false
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics"))
}

async fn rss(node: &TestNode) -> u64 {
    node.stats().await["memory"]["rss_bytes"]
        .as_u64()
        .expect("rss_bytes")
}

#[tokio::test]
async fn a_client_that_only_sends_pings_is_closed_by_the_heartbeat() {
    let node = TestNode::single(|c| {
        c.ws.ping_interval = Duration::from_millis(200);
        c.ws.pong_timeout = Duration::from_secs(1);
        // Only the heartbeat may close it here, not the flood rule.
        c.ws.rate_per_s = 1e9;
        c.ws.rate_burst = 1e9;
    })
    .await;
    let acct = account(&node, None).await;
    let mut tcp = raw_session(&node, &acct).await;
    node.wait_sessions(1).await;
    // Its pings arrive all the time, but it never reads, so it never
    // answers ours: pings it sends are no sign of life.
    assert!(
        ping_flood(&mut tcp, WAIT).await,
        "the node kept a client that never reads"
    );
    node.wait_sessions(0).await;
    assert_eq!(
        counter(&node.metrics().await, "navcast_heartbeat_timeouts_total"),
        1
    );
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
    assert!(!ping_flood(&mut tcp, Duration::from_secs(3)).await);
    let grown = rss(&node).await.saturating_sub(before);
    // ws.write_buffer_bytes (256 KiB) of pongs at most, plus what the
    // allocator keeps; without the cap this was hundreds of MiB.
    assert!(
        grown < 16 * 1024 * 1024,
        "RSS grew by {} KiB during a 3 s ping flood",
        grown / 1024
    );
    // The session is still there and the node still serves others.
    assert_eq!(node.stats().await["sessions"], 1);
    let other = account(&node, None).await;
    let mut c = Client::connect(&node, &other).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_control_frame_flood_is_closed_with_1008() {
    let node = TestNode::single(|c| {
        c.ws.rate_per_s = 5.0;
        c.ws.rate_burst = 5.0;
    })
    .await;
    let acct = account(&node, None).await;
    let mut tcp = raw_session(&node, &acct).await;
    node.wait_sessions(1).await;
    assert!(
        ping_flood(&mut tcp, WAIT).await,
        "a ping flood was never closed"
    );
    node.wait_sessions(0).await;
    let m = node.metrics().await;
    assert_eq!(counter(&m, "navcast_flood_closes_total"), 1);
    assert!(m.contains("navcast_closes_total{code=\"1008\"} 1"), "{m}");
}

#[tokio::test]
async fn a_request_flood_is_answered_then_closed_with_1008() {
    let node = TestNode::single(|c| {
        c.ws.rate_per_s = 5.0;
        c.ws.rate_burst = 5.0;
        c.ws.flood_rejections = 50;
    })
    .await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    for i in 0..200 {
        c.send(json!({"type": "ping", "request_id": i})).await;
    }
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["code"] == "RATE_LIMITED" {
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break None,
        }
    };
    assert_eq!(code, Some(1008));
    // Every refused request got its answer up to the close.
    assert_eq!(limited, 50);
    assert_eq!(
        counter(&node.metrics().await, "navcast_flood_closes_total"),
        1
    );
}

/// A client with a tiny receive buffer that stops reading.
async fn non_reader(node: &TestNode, acct: &Account) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(node.ws_url(&acct.user_id, &acct.access), tcp)
        .await
        .expect("ws handshake");
    ws
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_when_writes_stall() {
    let node = TestNode::single(|c| {
        c.ws.write_timeout = Duration::from_secs(1);
        // Neither the queue nor the flood rule may end this first.
        c.ws.queue_frames = 1_000_000;
        c.ws.queue_bytes = 1 << 30;
        c.ws.rate_per_s = 1e9;
        c.ws.rate_burst = 1e9;
    })
    .await;
    let acct = account(&node, None).await;
    let mut ws = non_reader(&node, &acct).await;
    node.wait_sessions(1).await;
    // ~190-byte replies, 16 MB of them: more than the kernel buffers hold.
    let id = "x".repeat(128);
    for _ in 0..80_000 {
        let frame = json!({"type": "ping", "request_id": id}).to_string();
        if ws.feed(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    poll_until("a stalled write closes the session", WAIT, async || {
        counter(&node.metrics().await, "navcast_write_timeouts_total") == 1
    })
    .await;
    node.wait_sessions(0).await;
    let m = node.metrics().await;
    assert!(m.contains("navcast_closes_total{code=\"4008\"} 1"), "{m}");
    assert_eq!(counter(&m, "navcast_queue_full_closes_total"), 0);
}

#[tokio::test]
async fn request_ids_are_bounded_and_numbers_echoed_as_written() {
    let node = TestNode::single(|_| {}).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let mut raw_reply = async |frame: String| -> String {
        c.send_text(frame).await;
        loop {
            match tokio::time::timeout(WAIT, c.ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("no reply: {other:?}"),
            }
        }
    };
    let big = 123456789012345678901234567890u128;
    let reply = raw_reply(format!(r#"{{"type":"ping","request_id":{big}}}"#)).await;
    assert!(reply.contains(&format!(r#""request_id":{big}"#)), "{reply}");
    let at_limit = "a".repeat(128);
    let reply: Value = serde_json::from_str(
        &raw_reply(json!({"type": "ping", "request_id": at_limit}).to_string()).await,
    )
    .unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["request_id"].as_str()),
        (Some("pong"), Some(at_limit.as_str()))
    );
    let over = "b".repeat(129);
    let text = raw_reply(json!({"type": "ping", "request_id": over}).to_string()).await;
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "INVALID_PARAMETERS");
    assert!(!text.contains(&over), "an over-long id is not echoed");
    // The session carries on.
    let reply: Value =
        serde_json::from_str(&raw_reply(r#"{"type":"ping","request_id":1}"#.into()).await).unwrap();
    assert_eq!(reply["type"], "pong");
}
