//! The HTTP layer's bounds (#11 §2): what a connection may hold before it
//! is a session, and for how long; what happens when the process runs out
//! of files; and a drain started by a real SIGTERM, which keeps answering
//! 503 while it lasts and ends on time whatever clients do.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::testing::{
    NodeProcess, TestNode, WAIT, account, handshake_status, metric_counter, poll_until,
    read_until_closed, register_and_login,
};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const NODE: &str = env!("CARGO_BIN_EXE_navcast");

/// Bound on waiting for a close the node must make by itself: its own
/// timeouts here are 1 s, so this only catches a connection kept forever.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

async fn connect(node: &TestNode) -> TcpStream {
    TcpStream::connect(node.addr).await.expect("connect")
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_closed_and_counted() {
    let node = TestNode::single(|c| c.http.header_read_timeout = Duration::from_secs(1)).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tcp = connect(&node).await;
        tcp.write_all(b"GET /api/v1/ws/u?token=x HTTP/1.1\r\nHost: n\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tcp);
    }
    for tcp in &mut slow {
        let got = read_until_closed(tcp, CLOSED_WITHIN).await;
        // hyper answers nothing to a head it never got, or a 408.
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    let metrics = node.metrics().await;
    assert!(
        metric_counter(&metrics, "navcast_http_timeouts_total{phase=\"header\"}") >= 20,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let node = TestNode::single(|c| c.http.header_read_timeout = Duration::from_secs(1)).await;
    let mut tcp = connect(&node).await;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: n\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut tcp, CLOSED_WITHIN).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"ok\""),
        "the response came before the close: {text}"
    );
}

#[tokio::test]
async fn a_request_body_that_never_completes_gets_408() {
    let node = TestNode::single(|c| c.http.request_timeout = Duration::from_secs(1)).await;
    let mut tcp = connect(&node).await;
    tcp.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: n\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=a",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut tcp, CLOSED_WITHIN).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let metrics = node.metrics().await;
    assert!(metric_counter(&metrics, "navcast_http_timeouts_total{phase=\"request\"}") >= 1);
}

#[tokio::test]
async fn connections_beyond_max_pending_get_503_and_sessions_do_not_count() {
    let node = TestNode::single(|c| c.http.max_pending = 4).await;
    // Sessions first: they hold places under ws.max_connections, not here.
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let acct = account(&node, None).await;
        sessions.push(navcast::testing::Client::connect(&node, &acct).await);
    }
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&node).await);
    }
    poll_until("every idle socket counted", WAIT, async || {
        node.state.metrics.http_connections.get() == 4
    })
    .await;
    let mut extra = connect(&node).await;
    let got = read_until_closed(&mut extra, CLOSED_WITHIN).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert_eq!(node.state.metrics.http_refused.get(), 1);
    // Sessions still work, and a freed place is taken again.
    let pong = sessions[0].request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    drop(idle);
    poll_until("freed places", WAIT, async || {
        node.state.metrics.http_connections.get() == 0
    })
    .await;
    let health = reqwest::get(node.http("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let stats = node.stats().await;
    assert_eq!(stats["http"]["refused"], 1, "{stats}");
    assert_eq!(stats["sessions"], 6, "{stats}");
}

/// A node process limited to 64 open files, configured to accept more than
/// that: accept fails with EMFILE, the node backs off (a counter, one log
/// line per 10 s, no spin), closes what it holds when the header timeout
/// passes, and serves again.
#[tokio::test]
async fn out_of_files_backs_off_counts_and_recovers() {
    let mut node = NodeProcess::start(
        NODE,
        &[
            ("NAVCAST_WS_MAX_CONNECTIONS", "1000"),
            ("NAVCAST_HTTP_MAX_PENDING", "1000"),
            ("NAVCAST_HTTP_HEADER_READ_TIMEOUT", "2s"),
        ],
        Some(64),
    )
    .await;
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(
            TcpStream::connect(("127.0.0.1", node.port))
                .await
                .expect("the kernel completes the handshake"),
        );
    }
    // Every one of them is eventually accepted and closed by the node's
    // header timeout, the later ones once earlier ones freed their files.
    for tcp in &mut held {
        read_until_closed(tcp, Duration::from_secs(120)).await;
    }
    drop(held);
    let metrics = reqwest::get(node.http("/metrics"))
        .await
        .expect("the node serves again")
        .text()
        .await
        .unwrap();
    let failures = metric_counter(&metrics, "navcast_accept_errors_total{cause=\"fd_limit\"}");
    assert!(failures >= 1, "EMFILE was counted: {metrics}");
    let log = node.log();
    let lines = log.matches("\"accept_failed\"").count() as u64;
    let allowed = 1 + started.elapsed().as_secs() / 10;
    assert!(lines >= 1, "the cause is logged: {log}");
    assert!(
        lines <= allowed,
        "{lines} accept_failed lines for {failures} failures; at most one per 10 s"
    );
    assert!(node.try_status().is_none(), "still running");
}

/// SIGTERM to a node process: requests the client sent before it are
/// answered before the 1001; `/ready` and upgrades get 503 (not a refused
/// connection) while the drain lasts; a client holding a half-sent request
/// does not keep the process alive past `shutdown.drain_timeout`.
#[tokio::test]
async fn sigterm_drains_answers_503_and_ends_on_time() {
    let mut node = NodeProcess::start(
        NODE,
        &[
            ("NAVCAST_SHUTDOWN_DRAIN_TIMEOUT", "4s"),
            ("NAVCAST_HTTP_HEADER_READ_TIMEOUT", "10m"),
            ("NAVCAST_WS_RATE_PER_S", "100000"),
            ("NAVCAST_WS_RATE_BURST", "100000"),
        ],
        None,
    )
    .await;
    let http = reqwest::Client::new();
    let rider = register_and_login(&http, &node.http(""), None).await;
    let late = register_and_login(&http, &node.http(""), None).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url(&rider.user_id, &rider.access))
        .await
        .unwrap();
    let connected = ws.next().await.unwrap().unwrap();
    assert!(connected.to_text().unwrap().contains("connected"));
    // A client that never finishes its request head.
    let mut half = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();

    // Within what a drain answers (`ws.queue_frames`, 256).
    const SENT: usize = 200;
    for i in 0..SENT {
        ws.feed(Message::text(
            json!({"type": "ping", "request_id": i}).to_string(),
        ))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
    node.signal("TERM");

    // Draining: still accepting, answering 503.
    let ready = poll_ready_503(&node).await;
    assert_eq!(ready["draining"], true, "{ready}");
    let (status, retry) = handshake_status(&node.ws_url(&late.user_id, &late.access), &[]).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());

    // Every request sent before SIGTERM is answered, then 1001.
    let mut answered = 0;
    let close = loop {
        match tokio::time::timeout(CLOSED_WITHIN, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "pong" {
                    assert_eq!(v["request_id"], answered, "in order");
                    answered += 1;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("session ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(answered, SENT, "every request sent before SIGTERM answered");
    assert_eq!(close, Some(1001));

    // The half-sent request does not hold the process: it exits at the
    // drain deadline with the client still connected.
    let status = node.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}: {}", node.log());
    read_until_closed(&mut half, WAIT).await;
    let log = node.log();
    assert!(log.contains("\"drain_finished\""), "{log}");
}

/// `/ready` on a draining node: 503 with its body. Polls because the
/// signal is delivered asynchronously; a refused connection fails at once.
async fn poll_ready_503(node: &NodeProcess) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = reqwest::get(node.http("/ready"))
            .await
            .expect("a draining node still accepts connections");
        if r.status() == 503 {
            return r.json().await.unwrap();
        }
        assert_eq!(r.status(), 200);
        assert!(tokio::time::Instant::now() < deadline, "/ready never 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_pending_place() {
    let node = TestNode::single(|c| {
        c.http.max_pending = 100;
        c.http.max_pending_per_address = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&node).await);
    }
    poll_until("the held sockets counted", WAIT, async || {
        node.state.metrics.http_connections.get() == 3
    })
    .await;
    let mut extra = connect(&node).await;
    let got = read_until_closed(&mut extra, CLOSED_WITHIN).await;
    assert!(
        got.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(node.state.metrics.http_refused_address.get(), 1);
    // Another address is served.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let health = other.get(node.http("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_request_head_over_the_limit_gets_431() {
    let node = TestNode::single(|_| {}).await;
    let mut tcp = connect(&node).await;
    // Exactly http.max_header_bytes (16 KiB) of an unfinished head: the
    // node reads all of it (so its close is a FIN, not a reset that could
    // swallow the answer) and finds no room left for the rest.
    let mut big = b"GET /health HTTP/1.1\r\nHost: n\r\nX-Big: ".to_vec();
    big.resize(16 * 1024, b'b');
    tcp.write_all(&big).await.unwrap();
    let got = read_until_closed(&mut tcp, CLOSED_WITHIN).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}
