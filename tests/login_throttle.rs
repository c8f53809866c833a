//! Nobody can lock others out of login, and guessing passwords is
//! throttled (#11 §3): fairness per client address in the hashing queue, a
//! per-address rate, a per-account lockout that grows, the client address
//! taken from forwarding headers only when a trusted proxy sent them, and
//! counters shared by every node of a cluster.

use std::net::IpAddr;
use std::time::Duration;

use navcast::testing::{
    RedisServer, TestNode, WAIT, account, metric_counter, poll_until, test_config,
};
use reqwest::StatusCode;

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `POST /api/v1/auth/login` with the form body: status and `Retry-After`.
async fn login(
    http: &reqwest::Client,
    node: &TestNode,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<u64>) {
    let mut req = http
        .post(node.http("/api/v1/auth/login"))
        .form(&[("username", email), ("password", password)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("login answers");
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    (r.status(), retry)
}

/// One address floods `/login` as fast as it can while another logs in: a
/// queue of 4 hashes with one thread is full at once on a node without the
/// per-address cap (the other address then gets 503); with it, the flood
/// holds 2 places and the other address always gets in.
#[tokio::test]
async fn a_flood_from_one_address_leaves_room_for_others() {
    let node = TestNode::single(|c| {
        c.auth.hashes_per_address = 2;
        c.auth.hash_queue = 4;
        c.auth.hash_threads = 1;
        // Costly enough that the queue fills: about 10 ms per hash.
        c.auth.argon2_memory_kib = 8 * 1024;
        c.auth.argon2_iterations = 2;
    })
    .await;
    let acct = account(&node, None).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = Vec::new();
    for _ in 0..50 {
        let (stop, url) = (stop.clone(), node.http("/api/v1/auth/login"));
        flood.push(tokio::spawn(async move {
            let http = client_from("127.0.0.1");
            let mut statuses = Vec::new();
            while !stop.is_cancelled() {
                let r = http
                    .post(&url)
                    .form(&[
                        ("username", "nobody@example.com"),
                        ("password", "guess-guess"),
                    ])
                    .send()
                    .await
                    .expect("answers");
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    poll_until("the flood is being throttled", WAIT, async || {
        node.metrics()
            .await
            .contains("navcast_auth_requests_total{op=\"login\",outcome=\"throttled_in_flight\"}")
    })
    .await;
    let other = client_from("127.0.0.2");
    for _ in 0..10 {
        let (status, _) = login(&other, &node, &acct.email, &acct.password, &[]).await;
        assert_eq!(status, 200, "the other address logs in during the flood");
    }
    stop.cancel();
    let mut seen = std::collections::BTreeMap::new();
    for f in flood {
        for s in f.await.unwrap() {
            *seen.entry(s).or_insert(0u32) += 1;
        }
    }
    assert!(seen.contains_key(&429), "{seen:?}");
    assert!(!seen.contains_key(&503), "the queue never filled: {seen:?}");
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let limited = |trusted: bool| {
        move |c: &mut navcast::Config| {
            c.auth.attempts_per_address = 3;
            if trusted {
                c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        }
    };
    let http = reqwest::Client::new();
    let from = |ip: &'static str| [("x-real-ip", ip)];

    // Behind a trusted proxy: each forwarded client has its own budget.
    let node = TestNode::single(limited(true)).await;
    for _ in 0..3 {
        let (s, _) = login(
            &http,
            &node,
            "a@example.com",
            "wrong-password",
            &from("203.0.113.1"),
        )
        .await;
        assert_eq!(s, 401);
    }
    let (s, retry) = login(
        &http,
        &node,
        "a@example.com",
        "wrong-password",
        &from("203.0.113.1"),
    )
    .await;
    assert_eq!(s, 429);
    assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "{retry:?}");
    let (s, _) = login(
        &http,
        &node,
        "b@example.com",
        "wrong-password",
        &from("203.0.113.2"),
    )
    .await;
    assert_eq!(s, 401, "another forwarded client is not throttled");

    // Nobody trusted: the header is the client's own claim and is ignored.
    let node = TestNode::single(limited(false)).await;
    for i in 0..3 {
        let ip = format!("203.0.113.{}", 10 + i);
        let (s, _) = login(
            &http,
            &node,
            "a@example.com",
            "wrong-password",
            &[("x-real-ip", &ip)],
        )
        .await;
        assert_eq!(s, 401);
    }
    let (s, _) = login(
        &http,
        &node,
        "a@example.com",
        "wrong-password",
        &from("203.0.113.99"),
    )
    .await;
    assert_eq!(s, 429, "a made-up X-Real-IP does not buy a new budget");
}

/// Failed logins lock the account (the right password too), for longer
/// after each further failure; a success forgets them. Two nodes on one
/// Redis: failures on one lock the account on the other.
#[tokio::test]
async fn failed_logins_lock_the_account_cluster_wide_with_growing_retry_after() {
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let mut c = test_config();
        c.node_id = name.into();
        c.redis_url = Some(redis.url());
        c.auth.free_failures = 2;
        c.auth.lockout_base = Duration::from_secs(3);
        nodes.push(TestNode::start(c).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let acct = account(a, None).await;
    let http = reqwest::Client::new();
    let wrong =
        async |node: &TestNode| login(&http, node, &acct.email, "wrong-password", &[]).await;
    let right = async |node: &TestNode| login(&http, node, &acct.email, &acct.password, &[]).await;

    assert_eq!(wrong(a).await.0, 401);
    assert_eq!(wrong(b).await.0, 401);
    // The third failure in a row starts a 3 s lockout, on both nodes.
    assert_eq!(wrong(a).await.0, 401);
    let (s, first) = right(b).await;
    assert_eq!(s, 429, "the right password is refused while locked");
    let first = first.expect("Retry-After");
    assert!((1..=3).contains(&first), "{first}");
    assert_eq!(wrong(a).await.0, 429, "a locked account is not even tried");

    // When it ends, one more failure locks the account for twice as long.
    poll_until(
        "the first lockout ends",
        Duration::from_secs(30),
        async || wrong(b).await.0 != 429,
    )
    .await;
    let (s, second) = right(a).await;
    assert_eq!(s, 429);
    let second = second.expect("Retry-After");
    assert!(
        second > first,
        "the lockout grows: {first} s, then {second} s"
    );
    // A successful login forgets the failures: one new failure is free.
    poll_until(
        "the second lockout ends",
        Duration::from_secs(30),
        async || right(b).await.0 == 200,
    )
    .await;
    assert_eq!(wrong(a).await.0, 401);
    assert_eq!(right(b).await.0, 200);
    let m = a.metrics().await;
    assert!(
        metric_counter(
            &m,
            "navcast_auth_requests_total{op=\"login\",outcome=\"throttled_account\"}"
        ) >= 1
    );
}
