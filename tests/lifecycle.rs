//! Session lifecycle: heartbeat, token expiry and in-band refresh, slow
//! consumers, graceful drain, and the auth endpoints.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use navcast::clock::unix_s;
use navcast::testing::*;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A client's TCP stream whose outgoing direction can be cut: once muted,
/// what the client writes (its automatic pongs, its close reply) is dropped
/// instead of sent, as on a link that lost its upstream half. Reads pass
/// through, so the client still sees everything the node sends.
struct Muted {
    inner: TcpStream,
    muted: Arc<AtomicBool>,
}

impl AsyncRead for Muted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Muted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.muted.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.muted.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.muted.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn heartbeat_timeout_closes_a_client_whose_pongs_stop() {
    let mut cfg = test_config();
    cfg.ws.ping_interval = Duration::from_millis(100);
    cfg.ws.pong_timeout = Duration::from_secs(1);
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;

    // The silent client keeps reading (so it sees the close frame), but its
    // pongs never reach the node.
    let muted = Arc::new(AtomicBool::new(false));
    let stream = Muted {
        inner: TcpStream::connect(node.addr).await.unwrap(),
        muted: muted.clone(),
    };
    let (ws, _) = tokio_tungstenite::client_async(node.ws_url(&acct.user_id, &acct.access), stream)
        .await
        .unwrap();
    let mut silent = Client::from_ws(ws).await;
    muted.store(true, Ordering::Relaxed);
    assert_eq!(
        silent.close_code().await,
        Some(1008),
        "heartbeat timeout closes with 1008 (policy)"
    );
    node.wait_sessions(0).await;
    assert_eq!(node.stats().await["heartbeat_timeouts"], 1);

    // A client that sends nothing of its own but answers the node's pings
    // (tungstenite pongs while it reads) stays: it reads 25 pings, 2.5
    // pong timeouts' worth, and the session is still there.
    let mut live = Client::connect(&node, &acct).await;
    let mut pings = 0;
    while pings < 25 {
        match tokio::time::timeout(WAIT, live.ws.next())
            .await
            .expect("the node keeps pinging")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("only pings expected, got {other:?}"),
        }
    }
    let r = live.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    let stats = node.stats().await;
    assert_eq!(
        stats["heartbeat_timeouts"], 1,
        "the live client never timed out"
    );
    assert_eq!(stats["sessions"], 1, "{stats}");
}

#[tokio::test]
async fn token_expiry_warns_then_closes_with_4001() {
    let mut cfg = test_config();
    cfg.jwt.access_ttl = Duration::from_secs(3);
    cfg.ws.token_expiry_warning = Duration::from_secs(2);
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let warn = c.pushed_of("token_expiring").await;
    assert_eq!(warn["expires_at"], c.connected["token_expires_at"]);
    assert_eq!(c.close_code().await, Some(4001));
}

#[tokio::test]
async fn in_band_refresh_keeps_the_session() {
    let mut cfg = test_config();
    // A 5 s window between the warning and expiry, so a loaded machine
    // still gets the refresh in before the deadline; the warning comes 5 s
    // after issue, so the new token outlives the old one by about 5 s and
    // the check just past the old expiry is not a race with the new one
    // (expiry is in whole seconds).
    cfg.jwt.access_ttl = Duration::from_secs(10);
    cfg.ws.token_expiry_warning = Duration::from_secs(5);
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let old_exp = c.connected["token_expires_at"].as_i64().unwrap();
    c.pushed_of("token_expiring").await;
    // Get a fresh access token over HTTP and hand it over in band.
    let pair = refresh(&node, &acct.refresh).await;
    let new_access = pair["access_token"].as_str().unwrap().to_string();
    let r = c
        .request(json!({"type": "refresh_token", "token": new_access}))
        .await;
    assert_eq!(r["type"], "token_refreshed", "{r}");
    let new_exp = r["token_expires_at"].as_i64().unwrap();
    assert!(new_exp >= old_exp + 3, "{new_exp} well after {old_exp}");
    // Past the old expiry, the session still answers.
    while unix_s() <= old_exp {
        let pong = c.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "alive after the old token's exp");
    // A token of another user is refused in band.
    let other = account(&node, None).await;
    let r = c
        .request(json!({"type": "refresh_token", "token": other.access}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");
}

#[tokio::test]
async fn drain_closes_every_session_with_1001() {
    let node = TestNode::start(test_config()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let acct = account(&node, None).await;
        clients.push(Client::connect(&node, &acct).await);
    }
    let ready = reqwest::get(node.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let stopping = tokio::spawn(node.stop());
    for c in clients.iter_mut() {
        assert_eq!(c.close_code().await, Some(1001));
    }
    stopping
        .await
        .unwrap()
        .expect("run returns Ok after the drain");
}

#[tokio::test]
async fn drain_refuses_new_upgrades_and_ready_turns_503() {
    let node = TestNode::start(test_config()).await;
    let acct = account(&node, None).await;
    node.state.begin_drain();
    let ready = reqwest::get(node.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, _) = handshake_status(&node.ws_url(&acct.user_id, &acct.access), &[]).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn auth_endpoints_follow_the_contract() {
    let node = TestNode::start(test_config()).await;
    let http = reqwest::Client::new();
    let reg = |body: Value| {
        http.post(node.http("/api/v1/auth/register"))
            .json(&body)
            .send()
    };
    assert_eq!(
        reg(json!({"email": "a@b.co", "password": "short"}))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        reg(json!({"email": "not-an-email", "password": "longenough"}))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        reg(json!({"email": "a@b.co", "password": "longenough", "disability_type": "XYZ"}))
            .await
            .unwrap()
            .status(),
        422
    );
    let ok = reg(json!({"email": "A@B.co", "password": "longenough", "disability_type": "ELD"}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let user_id = ok.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        reg(json!({"email": "a@b.co", "password": "longenough"}))
            .await
            .unwrap()
            .status(),
        409
    );

    // Login: JSON and form both; wrong password 401.
    let json_login = http
        .post(node.http("/api/v1/auth/login"))
        .json(&json!({"username": "a@b.co", "password": "longenough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_login.status(), 200);
    let pair: Value = json_login.json().await.unwrap();
    assert_eq!(pair["token_type"], "bearer");
    assert_eq!(pair["user_id"], user_id.as_str());
    assert_eq!(pair["expires_in"], 1800);
    let bad = http
        .post(node.http("/api/v1/auth/login"))
        .form(&[("username", "a@b.co"), ("password", "wrong-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let body = bad.text().await.unwrap();
    assert!(!body.contains("argon2"), "no internals: {body}");

    // Refresh rotates; the spent token is refused; its replay revokes the family.
    let refresh = |t: &str| {
        http.post(node.http("/api/v1/auth/refresh"))
            .json(&json!({"refresh_token": t}))
            .send()
    };
    let first = pair["refresh_token"].as_str().unwrap();
    let rotated: Value = refresh(first).await.unwrap().json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);
    assert_eq!(
        refresh(first).await.unwrap().status(),
        401,
        "spent token refused"
    );
    assert_eq!(
        refresh(second).await.unwrap().status(),
        401,
        "replay revoked the family"
    );
    assert_eq!(
        refresh(pair["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn seeded_accounts_can_log_in_and_metrics_are_exposed() {
    let mut cfg = test_config();
    cfg.auth.seed_file = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/accounts.toml").into());
    let node = TestNode::start(cfg).await;
    let r = reqwest::Client::new()
        .post(node.http("/api/v1/auth/login"))
        .form(&[("username", "test123@test.com"), ("password", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = node.metrics().await;
    for name in [
        "navcast_sessions",
        "navcast_connections_total",
        "navcast_messages_in_total",
        "navcast_request_handle_seconds_bucket",
        "navcast_errors_total",
        "navcast_queue_full_closes_total",
        "navcast_heartbeat_timeouts_total",
        "navcast_route_cache_hits_total",
        "navcast_bus_publish_failures_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

/// #11 §4: one account per normalised email (trim, NFKC, lower case);
/// control and invisible characters are a 422, not a second account.
#[tokio::test]
async fn emails_are_normalised_and_invisible_characters_refused() {
    let node = TestNode::start(test_config()).await;
    let http = reqwest::Client::new();
    let register = async |email: &str| {
        http.post(node.http("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(register("Ünïcode.Rider@Example.com").await, 201);
    // Fullwidth letters, other case, surrounding space: the same account.
    assert_eq!(register("  ｕ\u{0308}nïcode.rider@EXAMPLE.com ").await, 409);
    for bad in [
        "unicode.rider\u{200B}@example.com",
        "unicode.rider@exam\u{00AD}ple.com",
        "unicode.rider\u{202E}@example.com",
        "unicode.rider\u{0000}@example.com",
    ] {
        assert_eq!(register(bad).await, 422, "{bad:?}");
    }
    let login = http
        .post(node.http("/api/v1/auth/login"))
        .form(&[
            ("username", "ÜNÏCODE.RIDER@example.com"),
            ("password", "correct horse battery"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "login normalises the same way");
}

/// #11 §4: rotation keeps one record per login, not one per refresh, so a
/// client refreshing in a loop cannot grow the node; a replay on a single
/// node closes the family's session with 4001.
#[tokio::test]
async fn refreshing_keeps_one_record_per_login_and_a_replay_closes_the_session() {
    let store = Arc::new(navcast::store::memory::MemoryStore::default());
    let stores = navcast::store::Stores {
        accounts: store.clone(),
        tokens: store.clone(),
        routes: store.clone(),
        shares: store.clone(),
        nodes: store.clone(),
        throttle: store.clone(),
    };
    let node = TestNode::start_with(
        test_config(),
        navcast::Parts {
            stores: Some(stores),
            ..Default::default()
        },
    )
    .await;
    let acct = account(&node, None).await;
    assert_eq!(store.families(), 1);
    let mut current = acct.refresh.clone();
    let mut spent = Vec::new();
    for _ in 0..2000 {
        let pair = refresh(&node, &current).await;
        spent.push(std::mem::replace(
            &mut current,
            pair["refresh_token"].as_str().expect("rotated").to_string(),
        ));
    }
    assert_eq!(store.families(), 1, "2000 refreshes, still one record");

    let mut session = Client::connect(&node, &acct).await;
    // Any earlier token of the family is a replay.
    let replay = refresh(&node, &spent[1000]).await;
    assert_eq!(replay["detail"], "invalid refresh token");
    assert_eq!(session.close_code().await, Some(4001));
    assert_eq!(token_status(&node, &acct.user_id, &acct.access).await, 401);
    let dead = refresh(&node, &current).await;
    assert_eq!(dead["detail"], "invalid refresh token");
}
