//! Hostile and broken clients against a real node on real sockets: every
//! per-session resource has a bound, and a client that misbehaves is
//! closed with a documented code and counted, while the node stays up.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::testing::{
    Account, Client, TestNode, WAIT, account, metric_counter as counter, ping_flood, poll_until,
    raw_session,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_that_sends_but_never_reads_is_closed_by_the_heartbeat() {
    let node = TestNode::single(|c| {
        c.ws.ping_interval = Duration::from_millis(200);
        c.ws.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let acct = account(&node, None).await;
    let (ws, _) = tokio_tungstenite::connect_async(node.ws_url(&acct.user_id, &acct.access))
        .await
        .expect("ws connect");
    // Only the sending half is ever driven: the client never reads, so it
    // never answers the node's pings. Its requests (a few a second, small
    // replies that the socket buffers absorb) are no sign of life.
    let (mut tx, _rx) = ws.split();
    node.wait_sessions(1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut dropped = false;
    while tokio::time::Instant::now() < deadline {
        let ping = json!({"type": "ping"}).to_string();
        if tx.send(Message::text(ping)).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the node kept a client that never reads");
    node.wait_sessions(0).await;
    let m = node.metrics().await;
    assert_eq!(counter(&m, "navcast_heartbeat_timeouts_total"), 1);
    assert!(m.contains("navcast_closes_total{code=\"1008\"} 1"), "{m}");
}

#[tokio::test]
async fn a_ping_flood_that_is_never_read_is_closed_with_4008() {
    let node = TestNode::single(|c| {
        // Neither the heartbeat nor the flood rule ends this.
        c.ws.pong_timeout = Duration::from_secs(120);
        c.ws.write_timeout = Duration::from_secs(1);
        c.ws.ping_interval = Duration::from_millis(200);
        c.ws.rate_per_s = 1e9;
        c.ws.rate_burst = 1e9;
    })
    .await;
    let acct = account(&node, None).await;
    let mut tcp = raw_session(&node, &acct).await;
    node.wait_sessions(1).await;
    // The pongs it asks for fill the socket and the write buffer; the
    // node's own next ping finds the buffer full or makes no progress for
    // ws.write_timeout: either way the peer does not read, 4008.
    assert!(
        ping_flood(&mut tcp, WAIT).await,
        "the node kept a client that never reads"
    );
    node.wait_sessions(0).await;
    let m = node.metrics().await;
    assert_eq!(
        counter(&m, "navcast_queue_full_closes_total")
            + counter(&m, "navcast_write_timeouts_total"),
        1
    );
    assert!(m.contains("navcast_closes_total{code=\"4008\"} 1"), "{m}");
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
