//! A cluster over a real Redis: three nodes in this process, each with its
//! own Redis bus and Redis stores, against a `redis-server` the test starts
//! on a free port (and kills, to test outages).

use std::sync::Arc;
use std::time::Duration;

use navcast::clock::unix_s;
use navcast::config::{BusTopology, MultiDevice};
use navcast::store::{
    Account as StoredAccount, Consumed, NodeInfo, RefreshRecord, RouteRecord, StoredRoute, Stores,
};
use navcast::testing::*;
use navcast::{Config, Parts};
use serde_json::{Value, json};

const TOPOLOGIES: [BusTopology; 2] = [BusTopology::Broadcast, BusTopology::Targeted];

fn redis_config(redis_url: &str, node: &str, topology: BusTopology) -> Config {
    let mut c = test_config();
    c.node_id = node.to_string();
    c.redis_url = Some(redis_url.to_string());
    c.bus.topology = topology;
    c.bus.heartbeat_interval = Duration::from_millis(200);
    c
}

/// `n` nodes named node-a, node-b, … on one Redis, each ready.
async fn redis_cluster(
    redis_url: &str,
    n: usize,
    topology: BusTopology,
    tweak: impl Fn(&mut Config),
) -> Vec<TestNode> {
    require_redis_server();
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut c = redis_config(
            redis_url,
            &format!("node-{}", (b'a' + i as u8) as char),
            topology,
        );
        tweak(&mut c);
        nodes.push(TestNode::start(c).await);
    }
    for node in &nodes {
        node.wait_ready(true).await;
    }
    nodes
}

fn is_nav_event(kind: &Value) -> bool {
    ["navigation_update", "route_deviation", "arrival"].contains(&kind.as_str().unwrap_or(""))
}

/// A rider on node A and a guardian on node B; node C has nobody. Returns
/// what the guardian received, as (seq, event type), and each node's
/// `/stats`.
async fn guardian_across_nodes(topology: BusTopology) -> (Vec<(u64, String)>, Vec<Value>) {
    let redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 3, topology, |_| {}).await;
    let Watched {
        rider,
        mut r,
        mut g,
        ..
    } = watched_rider(&nodes[0], &nodes[1]).await;

    let calc = r
        .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    for _ in 0..20 {
        let u = r
            .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
            .await;
        assert!(is_nav_event(&u["type"]), "{u}");
    }
    let end = r.request(json!({"type": "end_navigation"})).await;
    assert_eq!(end["type"], "navigation_ended", "{end}");

    let mut got = Vec::new();
    for _ in 0..22 {
        let ev = g.pushed_of("peer_event").await;
        assert_eq!(ev["origin_node"], "node-a", "{ev}");
        assert_eq!(ev["user_id"], rider.user_id.as_str());
        assert!(ev["sent_at_us"].as_u64().unwrap() > 0);
        got.push((
            ev["seq"].as_u64().unwrap(),
            ev["event"]["type"].as_str().unwrap().to_string(),
        ));
    }
    // Exactly once.
    g.assert_none_pending("peer_event").await;
    let mut stats = Vec::new();
    for node in &nodes {
        stats.push(node.stats().await);
    }
    (got, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_topologies_deliver_every_event_in_order_and_targeted_spares_idle_nodes() {
    let (broadcast, b_stats) = guardian_across_nodes(BusTopology::Broadcast).await;
    let (targeted, t_stats) = guardian_across_nodes(BusTopology::Targeted).await;

    let seqs: Vec<u64> = broadcast.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=22).collect::<Vec<_>>(), "in order, no gaps");
    assert_eq!(broadcast[0].1, "route_calculated");
    assert_eq!(broadcast[21].1, "navigation_ended");
    assert_eq!(
        broadcast, targeted,
        "both topologies give the same deliveries"
    );

    for stats in b_stats.iter().chain(&t_stats) {
        assert_eq!(stats["bus"]["gaps"], 0, "{stats}");
        assert_eq!(stats["bus"]["publish_failures"], 0, "{stats}");
        assert_eq!(stats["bus"]["connected"], true, "{stats}");
    }
    // Node B (the guardian's) receives the rider's 22 events either way.
    assert_eq!(b_stats[1]["bus"]["received"], 22);
    assert_eq!(t_stats[1]["bus"]["received"], 22);
    // Node C has no interested session: broadcast still sends it
    // everything, targeted sends it nothing.
    assert_eq!(b_stats[2]["bus"]["received"], 22);
    assert_eq!(t_stats[2]["bus"]["received"], 0, "{}", t_stats[2]);
    assert_eq!(t_stats[2]["bus"]["kind"], "redis-targeted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_closes_the_older_session_on_another_node() {
    for topology in TOPOLOGIES {
        let redis = RedisServer::start().await;
        let nodes = redis_cluster(&redis.url(), 2, topology, |c| {
            c.ws.multi_device = MultiDevice::Replace
        })
        .await;
        let rider = account(&nodes[0], None).await;
        let mut old = Client::connect(&nodes[0], &rider).await;
        let mut new = Client::connect(&nodes[1], &rider).await;
        let notice = old.pushed_of("disconnected").await;
        assert_eq!(notice["code"], "DUPLICATE_CONNECTION", "{topology:?}");
        assert_eq!(old.close_code().await, Some(4002), "{topology:?}");
        // The newer session is untouched.
        assert_eq!(new.request(json!({"type": "ping"})).await["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_gives_every_session_of_a_user_on_any_node_the_events() {
    let redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 3, BusTopology::Targeted, |_| {}).await;
    let rider = account(&nodes[0], None).await;
    let mut phone = Client::connect(&nodes[0], &rider).await;
    let mut watch = Client::connect(&nodes[2], &rider).await;
    let calc = phone
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    let ev = watch.pushed_of("peer_event").await;
    assert_eq!(ev["event"]["route_id"], calc["route_id"]);
    assert_eq!(ev["origin_node"], "node-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_made_on_node_a_continues_on_node_c_after_reconnect() {
    let redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 3, BusTopology::Broadcast, |_| {}).await;
    let rider = account(&nodes[0], None).await;
    let mut on_a = Client::connect(&nodes[0], &rider).await;
    let calc = on_a
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    let route_id = calc["route_id"].clone();
    drop(on_a);

    // Log in again through node C too: accounts and refresh tokens are shared.
    let login = refresh(&nodes[2], &rider.refresh).await;
    let access = login["access_token"].as_str().expect("refresh on node C");
    let mut on_c = Client::connect_url(&nodes[2].ws_url(&rider.user_id, access)).await;
    assert_eq!(on_c.connected["node_id"], "node-c");
    let upd = on_c
        .request(json!({"type": "location_update", "latitude": YEOKSAM.0, "longitude": YEOKSAM.1, "route_id": route_id}))
        .await;
    assert!(is_nav_event(&upd["type"]), "{upd}");
    assert_eq!(upd["route_id"], route_id);
    let end = on_c.request(json!({"type": "end_navigation"})).await;
    assert_eq!(end["type"], "navigation_ended");
    assert_eq!(end["route_id"], route_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_every_live_node_of_the_cluster() {
    let redis = RedisServer::start().await;
    let mut nodes = redis_cluster(&redis.url(), 3, BusTopology::Broadcast, |_| {}).await;
    let rider = account(&nodes[1], None).await;
    let _s1 = Client::connect(&nodes[1], &rider).await;
    let _s2 = Client::connect(&nodes[1], &rider).await;
    // Heartbeats run every 200 ms; wait until node B's record shows both.
    let shows_both = |cluster: &Value| {
        let b = cluster["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node_id"] == "node-b").cloned());
        cluster["node_count"] == 3 && b.is_some_and(|b| b["sessions"] == 2)
    };
    poll_until("node B's record shows 2 sessions", WAIT, async || {
        shows_both(&nodes[0].stats().await["cluster"])
    })
    .await;
    let cluster = nodes[0].stats().await["cluster"].clone();
    assert!(shows_both(&cluster), "{cluster}");
    let ids: Vec<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    assert_eq!(cluster["sessions"], 2);
    // A node that stops leaves the registry at once.
    let c = nodes.pop().unwrap();
    c.stop().await.unwrap();
    let stats = nodes[0].stats().await;
    assert_eq!(stats["cluster"]["node_count"], 2, "{}", stats["cluster"]);
}

/// Sends `n` location updates, each answered with a navigation event.
async fn location_updates(rider: &mut Client, n: usize) {
    for _ in 0..n {
        let u = rider
            .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
            .await;
        assert!(is_nav_event(&u["type"]), "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_delivery_resumes_and_gaps_show_the_loss() {
    for topology in TOPOLOGIES {
        require_redis_server();
        let mut redis = RedisServer::start().await;
        // The bus goes through Redis; state stays in this process's memory,
        // so the rider's requests keep working during the outage and the
        // events made meanwhile are the ones the bus loses.
        let stores = Stores::memory();
        let mut nodes = Vec::new();
        for name in ["node-a", "node-b"] {
            let c = redis_config(&redis.url(), name, topology);
            let parts = Parts {
                bus: None,
                stores: Some(stores.clone()),
            };
            nodes.push(TestNode::start_with(c, parts).await);
        }
        for node in &nodes {
            node.wait_ready(true).await;
        }
        let Watched { mut r, mut g, .. } = watched_rider(&nodes[0], &nodes[1]).await;
        r.request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
            .await;
        location_updates(&mut r, 9).await;
        for expected in 1..=10 {
            assert_eq!(g.pushed_of("peer_event").await["seq"], expected);
        }

        redis.kill();
        for node in &nodes {
            node.wait_ready(false).await;
        }
        // Sessions keep working; these 10 events cannot cross the bus. Wait
        // until the publisher has given up on them before Redis returns.
        location_updates(&mut r, 10).await;
        poll_until("the publisher gives up on 10 events", WAIT, async || {
            nodes[0].stats().await["bus"]["publish_failures"].as_u64() >= Some(10)
        })
        .await;
        redis.restart().await;
        for node in &nodes {
            node.wait_ready(true).await;
        }
        location_updates(&mut r, 10).await;

        // Every event made after the restart arrives (21..=30), in order;
        // the outage's 10 (11..=20) are lost and counted as one gap of 10.
        let mut seqs = Vec::new();
        for _ in 0..10 {
            seqs.push(g.pushed_of("peer_event").await["seq"].as_u64().unwrap());
        }
        assert_eq!(
            seqs,
            (21..=30).collect::<Vec<_>>(),
            "{topology:?}: every post-restart event, in order"
        );
        let missing = 10;
        let a = nodes[0].stats().await;
        let b = nodes[1].stats().await;
        assert_eq!(b["bus"]["gaps"], missing, "{topology:?} {b}");
        assert!(a["bus"]["publish_failures"].as_u64().unwrap() >= 10, "{a}");
        for stats in [&a, &b] {
            assert!(stats["bus"]["reconnects"].as_u64().unwrap() >= 1, "{stats}");
            assert_eq!(stats["sessions"], 1, "no session closed: {stats}");
        }
        let metrics = nodes[1].metrics().await;
        assert!(
            metrics.contains(&format!("navcast_bus_gaps_total {missing}")),
            "{metrics}"
        );
        assert!(metrics.contains("navcast_bus_connected 1"));
        // Both sessions are still the original ones.
        assert_eq!(r.request(json!({"type": "ping"})).await["type"], "pong");
        assert_eq!(g.request(json!({"type": "ping"})).await["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_redis_state_fails_requests_cleanly_and_recovers() {
    let mut redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 2, BusTopology::Targeted, |_| {}).await;
    let Watched {
        rider,
        mut r,
        mut g,
        ..
    } = watched_rider(&nodes[0], &nodes[1]).await;
    r.request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
        .await;
    assert_eq!(g.pushed_of("peer_event").await["seq"], 1);

    redis.kill();
    // State reads fail: the client gets INTERNAL_ERROR, and stays connected.
    let u = r
        .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
        .await;
    assert_eq!(u["type"], "error", "{u}");
    assert_eq!(u["code"], "INTERNAL_ERROR", "{u}");
    assert!(!u["message"].as_str().unwrap().contains("redis"), "{u}");
    assert_eq!(r.request(json!({"type": "ping"})).await["type"], "pong");
    // The auth endpoints answer 503 rather than 500.
    let login = reqwest::Client::new()
        .post(nodes[0].http("/api/v1/auth/login"))
        .json(&json!({"username": rider.email, "password": rider.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503);
    nodes[0].wait_ready(false).await;

    // Redis comes back empty (no persistence in this test): the rider
    // starts again and the guardian's watch still delivers.
    redis.restart().await;
    for node in &nodes {
        node.wait_ready(true).await;
    }
    let calc = r
        .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    let ev = g.pushed_of("peer_event").await;
    assert_eq!(ev["seq"], 2, "{ev}");
    assert_eq!(ev["event"]["route_id"], calc["route_id"]);
    for node in &nodes {
        let stats = node.stats().await;
        assert_eq!(stats["sessions"], 1, "no session closed: {stats}");
        assert_eq!(stats["bus"]["gaps"], 0, "{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_redis_comes_up_unready_then_ready() {
    require_redis_server();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let node = TestNode::start(redis_config(&url, "node-a", BusTopology::Broadcast)).await;
    let mut degraded_ok = redis_config(&url, "node-b", BusTopology::Broadcast);
    degraded_ok.bus.ready_when_degraded = true;
    let lenient = TestNode::start(degraded_ok).await;

    let health = reqwest::get(node.http("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(node.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["bus"], "degraded", "{body}");
    let lenient_ready = reqwest::get(lenient.http("/ready")).await.unwrap();
    assert_eq!(lenient_ready.status(), 200, "ready_when_degraded");
    let stats = node.stats().await;
    assert_eq!(stats["bus"]["connected"], false);
    assert!(
        stats["cluster"]["error"].is_string(),
        "{}",
        stats["cluster"]
    );

    let _redis = RedisServer::start_on(port).await;
    node.wait_ready(true).await;
    // Now it serves: register, log in, connect.
    let rider = account(&node, None).await;
    let mut c = Client::connect(&node, &rider).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(node.stats().await["bus"]["connected"], true);
}

fn route_record(route_id: &str) -> RouteRecord {
    RouteRecord {
        route_id: route_id.into(),
        origin_code: "0222".into(),
        destination_code: "0239".into(),
        disability_type: navcast::transit::DisabilityType::Visual,
        routes: Arc::new(vec![StoredRoute {
            rank: 1,
            codes: vec!["0222".into(), "0239".into()],
        }]),
        selected_rank: 1,
        track: Default::default(),
    }
}

/// Fails unless `key` expires in `secs` seconds counted from a moment
/// after `set_before`: its PTTL is at most `secs` and at least `secs` less
/// the time since `set_before` (less a second for whole-second expiries).
/// However slowly the test runs, a right TTL passes and a wrong one fails.
async fn assert_ttl(
    raw: &mut impl ::redis::aio::ConnectionLike,
    key: &str,
    secs: i64,
    set_before: std::time::Instant,
) {
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(key)
        .query_async(raw)
        .await
        .unwrap();
    let max = secs * 1000;
    let min = max - set_before.elapsed().as_millis() as i64 - 1000;
    assert!(
        (min..=max).contains(&pttl),
        "{key}: PTTL {pttl} ms, expected {min}..={max}"
    );
}

#[tokio::test]
async fn redis_stores_keep_the_store_contracts() {
    let redis = RedisServer::start().await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let stores = Stores::redis(client.clone(), Default::default()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    store_contracts(stores, &mut raw).await;
}

/// The same contracts on a Redis Cluster of 3 masters and 3 replicas:
/// every script and transaction keeps to one slot, an account (two slots)
/// is created without leaving a claimed email behind, and the node
/// registry works without `SCAN`.
#[tokio::test]
async fn redis_cluster_stores_keep_the_store_contracts() {
    let cluster = RedisCluster::start(3).await;
    let target =
        navcast::redis_conn::Target::open(navcast::config::RedisMode::Cluster, &cluster.seeds())
            .unwrap();
    let stores = Stores::redis(target, Default::default()).unwrap();
    let seeds: Vec<String> = cluster.seeds().split(',').map(String::from).collect();
    let mut raw = ::redis::cluster::ClusterClient::new(seeds)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    store_contracts(stores.clone(), &mut raw).await;

    // The keys really are spread over the shards: each master holds some.
    for port in cluster.masters().await {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut one = client.get_multiplexed_async_connection().await.unwrap();
        let n: u64 = ::redis::cmd("DBSIZE").query_async(&mut one).await.unwrap();
        assert!(n > 0, "master {port} holds no key");
    }

    // Two registrations of one email with different ids race: one wins,
    // and the loser's account is taken back.
    let racer = |id: &str| StoredAccount {
        user_id: id.into(),
        email: "race@example.com".into(),
        username: None,
        disability_type: None,
        password_hash: "$argon2id$stub".into(),
    };
    let (a, b) = tokio::join!(
        stores.accounts.create(racer("r-1")),
        stores.accounts.create(racer("r-2"))
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    let winner = if a.is_ok() { "r-1" } else { "r-2" };
    let loser = if a.is_ok() { "r-2" } else { "r-1" };
    let found = stores
        .accounts
        .by_email("race@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.user_id, winner);
    assert!(stores.accounts.by_id(loser).await.unwrap().is_none());
    // An id that exists is never overwritten, whatever its email.
    let again = StoredAccount {
        email: "other@example.com".into(),
        ..racer(winner)
    };
    assert!(matches!(
        stores.accounts.create(again).await,
        Err(navcast::store::StoreError::Conflict)
    ));
    assert!(
        stores
            .accounts
            .by_email("other@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        stores.accounts.by_id(winner).await.unwrap().unwrap().email,
        "race@example.com"
    );
}

/// The contracts every Redis store keeps; `raw` reads keys behind its back.
async fn store_contracts(stores: Stores, raw: &mut impl ::redis::aio::ConnectionLike) {
    // Accounts: email unique, fields round-trip.
    let acct = StoredAccount {
        user_id: "u-1".into(),
        email: "a@example.com".into(),
        username: Some("Ana".into()),
        disability_type: Some(navcast::transit::DisabilityType::Elderly),
        password_hash: "$argon2id$stub".into(),
    };
    stores.accounts.create(acct.clone()).await.unwrap();
    let dup = StoredAccount {
        user_id: "u-2".into(),
        ..acct.clone()
    };
    assert!(matches!(
        stores.accounts.create(dup).await,
        Err(navcast::store::StoreError::Conflict)
    ));
    let by_email = stores
        .accounts
        .by_email("a@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.user_id, "u-1");
    assert_eq!(by_email.username.as_deref(), Some("Ana"));
    assert_eq!(by_email.disability_type, acct.disability_type);
    assert!(stores.accounts.by_id("u-2").await.unwrap().is_none());

    // Refresh tokens: one record per family. One spend of the current
    // token wins under contention; the loser is a replay and revokes the
    // family; an earlier token of the family is a replay too.
    let issued = std::time::Instant::now();
    let far = unix_s() + 3600;
    let rec = |jti: &str| RefreshRecord {
        jti: jti.into(),
        user_id: "u-1".into(),
        family: "fam-1".into(),
        expires_at: far,
    };
    stores.tokens.issue(rec("t1")).await.unwrap();
    let mut spends = Vec::new();
    for i in 0..8 {
        let tokens = stores.tokens.clone();
        let next = rec(&format!("t2-{i}"));
        spends.push(tokio::spawn(async move {
            tokens.rotate("fam-1", "t1", &next).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for s in spends {
        outcomes.push(s.await.unwrap());
    }
    let fresh = outcomes
        .iter()
        .filter(|o| matches!(o, Consumed::Fresh(_)))
        .count();
    let reused = outcomes
        .iter()
        .filter(|o| matches!(o, Consumed::Reused(_)))
        .count();
    assert_eq!((fresh, reused), (1, 1), "{outcomes:?}");
    assert!(
        !stores.tokens.family_alive("fam-1").await.unwrap(),
        "revoked"
    );
    assert!(
        !stores.tokens.family_alive("fam-9").await.unwrap(),
        "unknown"
    );
    // A second family: rotation moves on; the earlier token is a replay.
    let fam2 = |jti: &str| RefreshRecord {
        family: "fam-2".into(),
        ..rec(jti)
    };
    stores.tokens.issue(fam2("a1")).await.unwrap();
    assert!(stores.tokens.family_alive("fam-2").await.unwrap());
    assert!(matches!(
        stores.tokens.rotate("fam-2", "a1", &fam2("a2")).await.unwrap(),
        Consumed::Fresh(r) if r.jti == "a1"
    ));
    assert!(matches!(
        stores
            .tokens
            .rotate("fam-2", "a2", &fam2("a3"))
            .await
            .unwrap(),
        Consumed::Fresh(_)
    ));
    assert!(matches!(
        stores
            .tokens
            .rotate("fam-2", "a1", &fam2("x"))
            .await
            .unwrap(),
        Consumed::Reused(_)
    ));
    assert_eq!(
        stores
            .tokens
            .rotate("fam-2", "a3", &fam2("a4"))
            .await
            .unwrap(),
        Consumed::Unknown,
        "a revoked family's current token is dead too"
    );
    assert_eq!(
        stores.tokens.rotate("nope", "x", &rec("y")).await.unwrap(),
        Consumed::Unknown
    );
    let expired = RefreshRecord {
        family: "fam-3".into(),
        expires_at: unix_s() - 10,
        ..rec("t3")
    };
    stores.tokens.issue(expired).await.unwrap();
    assert_eq!(
        stores
            .tokens
            .rotate("fam-3", "t3", &rec("t4"))
            .await
            .unwrap(),
        Consumed::Unknown
    );
    // A family's record expires with its current token: one key per login.
    assert_ttl(raw, "navcast:family:fam-1", 3600, issued).await;

    // Routes: progress only for the active route id; TTL set and renewed.
    let ttl = Duration::from_secs(60);
    stores
        .routes
        .put("u-1", route_record("r1"), ttl)
        .await
        .unwrap();
    assert_eq!(
        stores.routes.get("u-1").await.unwrap(),
        Some(route_record("r1"))
    );
    let track = navcast::transit::TrackState {
        along_m: 1234.5,
        arrived: false,
        updates: 7,
    };
    assert!(
        !stores
            .routes
            .save_progress("u-1", "other", 2, &track, ttl)
            .await
            .unwrap()
    );
    let renewed = std::time::Instant::now();
    assert!(
        stores
            .routes
            .save_progress("u-1", "r1", 2, &track, ttl)
            .await
            .unwrap()
    );
    let saved = stores.routes.get("u-1").await.unwrap().unwrap();
    assert_eq!((saved.selected_rank, saved.track), (2, track));
    assert_ttl(raw, "navcast:route:u-1", 60, renewed).await;
    assert!(!stores.routes.remove("u-1", "other").await.unwrap());
    assert!(stores.routes.remove("u-1", "r1").await.unwrap());
    assert!(stores.routes.get("u-1").await.unwrap().is_none());
    assert!(
        !stores
            .routes
            .save_progress("u-1", "r1", 1, &track, ttl)
            .await
            .unwrap()
    );

    // Shares.
    stores.shares.share("u-1", "g-1").await.unwrap();
    assert!(stores.shares.is_shared("u-1", "g-1").await.unwrap());
    assert!(!stores.shares.is_shared("g-1", "u-1").await.unwrap());
    assert!(stores.shares.unshare("u-1", "g-1").await.unwrap());
    assert!(!stores.shares.unshare("u-1", "g-1").await.unwrap());

    // Node registry: records expire by themselves, leave removes at once.
    let node = |id: &str, sessions| NodeInfo {
        node_id: id.into(),
        sessions,
        started_at: 1,
        heartbeat_at_ms: 2,
        version: "t".into(),
    };
    stores.nodes.heartbeat(&node("n2", 5), ttl).await.unwrap();
    stores.nodes.heartbeat(&node("n1", 3), ttl).await.unwrap();
    let live = stores.nodes.live().await.unwrap();
    assert_eq!(live, vec![node("n1", 3), node("n2", 5)]);
    stores.nodes.leave("n2").await.unwrap();
    assert_eq!(stores.nodes.live().await.unwrap(), vec![node("n1", 3)]);
    // A node that stops beating drops out once its TTL has passed, and the
    // next heartbeat of another node prunes its entry.
    let short = Duration::from_millis(300);
    stores.nodes.heartbeat(&node("n3", 1), short).await.unwrap();
    assert!(stores.nodes.live().await.unwrap().contains(&node("n3", 1)));
    poll_until(
        "a silent node drops out of the registry",
        WAIT,
        async || !stores.nodes.live().await.unwrap().contains(&node("n3", 1)),
    )
    .await;
    stores.nodes.heartbeat(&node("n1", 4), ttl).await.unwrap();
    let fields: Vec<String> = ::redis::cmd("HKEYS")
        .arg("navcast:{nodes}")
        .query_async(raw)
        .await
        .unwrap();
    assert_eq!(fields, vec!["n1".to_string()]);
}

#[tokio::test]
async fn redis_stores_report_unavailable_while_redis_is_down() {
    require_redis_server();
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{}/", free_port())).unwrap();
    let stores = Stores::redis(client, Default::default()).unwrap();
    // It answers (an error) rather than waiting for Redis to appear.
    let err = tokio::time::timeout(WAIT, stores.routes.get("u"))
        .await
        .expect("a store call answers while Redis is down")
        .unwrap_err();
    assert!(
        matches!(err, navcast::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
}

/// Revocation reaches every node: after the rider's `unshared` reply, a
/// guardian watching from another node receives none of the rider's
/// events; sharing again and watching again brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharing_stops_a_guardian_on_another_node() {
    for topology in TOPOLOGIES {
        let redis = RedisServer::start().await;
        let nodes = redis_cluster(&redis.url(), 3, topology, |_| {}).await;
        let Watched {
            rider,
            guardian,
            mut r,
            mut g,
        } = watched_rider(&nodes[0], &nodes[1]).await;
        // A second guardian on the same node stays shared: what it receives
        // shows what the bus has delivered to that node.
        let witness = account(&nodes[1], None).await;
        let mut w = Client::connect(&nodes[1], &witness).await;
        share_and_watch(&mut r, &mut w, &rider.user_id, &witness.user_id).await;
        let calc = r
            .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
            .await;
        assert_eq!(calc["type"], "route_calculated", "{calc}");
        g.pushed_of("peer_event").await;
        w.pushed_of("peer_event").await;

        let unshared = r
            .request(json!({"type": "unshare_navigation", "guardian_id": guardian.user_id}))
            .await;
        assert_eq!(unshared["type"], "unshared", "{unshared}");
        let update = json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1});
        for _ in 0..5 {
            let u = r.request(update.clone()).await;
            assert!(is_nav_event(&u["type"]), "{u}");
        }
        // Node B delivers each envelope to every watcher at once; once the
        // witness has all five, anything leaked to the revoked guardian is
        // queued before the reply to its ping.
        for _ in 0..5 {
            let ev = w.pushed_of("peer_event").await;
            assert_eq!(ev["user_id"], rider.user_id.as_str(), "{ev}");
        }
        g.assert_none_pending("peer_event").await;
        // Watching without a share is refused.
        let again = g
            .request(json!({"type": "watch", "user_id": rider.user_id}))
            .await;
        assert_eq!(again["code"], "FORBIDDEN", "{topology:?}: {again}");

        // Share and watch again: events flow again.
        share_and_watch(&mut r, &mut g, &rider.user_id, &guardian.user_id).await;
        let u = r.request(update.clone()).await;
        let ev = g.pushed_of("peer_event").await;
        assert_eq!(ev["user_id"], rider.user_id.as_str(), "{topology:?}: {ev}");
        assert_eq!(ev["event"]["type"], u["type"], "{ev}");
    }
}

/// #11 §4: replaying a spent refresh token revokes its family, and with it
/// the family's access tokens: open sessions close with 4001 on every node,
/// new upgrades and in-band refreshes with them are refused. Another login
/// of the same rider (another family) is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_closes_its_familys_sessions_on_every_node() {
    for topology in TOPOLOGIES {
        let redis = RedisServer::start().await;
        let nodes = redis_cluster(&redis.url(), 2, topology, |_| {}).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        let stolen = account(a, None).await;
        // The same rider logged in on another phone: another family.
        let other_login = second_login(a, &stolen).await;
        let mut on_a = Client::connect(a, &stolen).await;
        let mut on_b = Client::connect(b, &stolen).await;
        let mut other_phone = Client::connect(b, &other_login).await;
        b.wait_sessions(2).await;

        // The rider rotates; the thief then replays the spent token.
        let rotated = refresh(a, &stolen.refresh).await;
        let new_access = rotated["access_token"]
            .as_str()
            .expect("rotated")
            .to_string();
        let replay = refresh(b, &stolen.refresh).await;
        assert_eq!(replay["detail"], "invalid refresh token", "{replay}");

        assert_eq!(on_a.close_code().await, Some(4001), "{topology:?}");
        assert_eq!(on_b.close_code().await, Some(4001), "{topology:?}");
        for node in [a, b] {
            for token in [&stolen.access, &new_access] {
                assert_eq!(token_status(node, &stolen.user_id, token).await, 401);
            }
        }
        let pong = other_phone.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "another login is untouched");
        let r = other_phone
            .request(json!({"type": "refresh_token", "token": new_access}))
            .await;
        assert_eq!(r["code"], "INVALID_PARAMETERS", "{r}");
        assert!(r["message"].as_str().unwrap().contains("revoked"), "{r}");
        // The rotated refresh token is dead too.
        let again = refresh(a, rotated["refresh_token"].as_str().unwrap()).await;
        assert_eq!(again["detail"], "invalid refresh token");
    }
}

/// A second login of `acct` (a new refresh-token family).
async fn second_login(node: &TestNode, acct: &Account) -> Account {
    let login: Value = reqwest::Client::new()
        .post(node.http("/api/v1/auth/login"))
        .form(&[
            ("username", acct.email.as_str()),
            ("password", acct.password.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Account {
        access: login["access_token"].as_str().unwrap().into(),
        refresh: login["refresh_token"].as_str().unwrap().into(),
        ..acct.clone()
    }
}

/// Starts a navigation and checks one update works.
async fn navigating(node: &TestNode) -> Client {
    let acct = account(node, None).await;
    let mut rider = Client::connect(node, &acct).await;
    let r = rider
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(r["type"], "route_calculated", "{r}");
    location_updates(&mut rider, 1).await;
    rider
}

fn update() -> Value {
    json!({"type": "location_update", "latitude": 37.4979, "longitude": 127.0276, "accuracy": 10})
}

/// #11 §5: a Redis that stops answering (SIGSTOP: its sockets stay open)
/// is noticed by the health check: `/ready` turns 503 and store requests
/// fail while Redis is still stopped; when it answers again, all is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_turns_ready_503_and_requests_fail_until_it_answers() {
    let redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 1, BusTopology::Broadcast, |c| {
        c.redis_health_interval = Duration::from_millis(200);
        c.redis_health_timeout = Duration::from_millis(300);
    })
    .await;
    let node = &nodes[0];
    let mut rider = navigating(node).await;

    redis.pause();
    node.wait_ready(false).await;
    let ready: Value = reqwest::get(node.http("/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["redis"], "down", "{ready}");
    let r = rider.request(update()).await;
    assert_eq!(
        r["code"], "INTERNAL_ERROR",
        "answered while Redis is stopped: {r}"
    );
    let m = node.metrics().await;
    assert_eq!(metric_counter(&m, "navcast_redis_up"), 0);
    assert!(metric_counter(&m, "navcast_redis_failed_checks_total") >= 2);

    redis.resume();
    node.wait_ready(true).await;
    location_updates(&mut rider, 1).await;
}

/// #11 §5: a Redis that comes back empty is detected by its generation
/// key, logged and counted, and a rider whose route it lost is told so
/// (`STATE_LOST`), not `NO_ACTIVE_SESSION`; starting again works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_back_empty_tells_riders_their_state_was_lost() {
    let redis = RedisServer::start().await;
    let nodes = redis_cluster(&redis.url(), 1, BusTopology::Broadcast, |c| {
        c.redis_health_interval = Duration::from_secs(3600);
    })
    .await;
    let node = &nodes[0];
    let mut rider = navigating(node).await;
    // Let the first check record the generation (a check also runs at once
    // when a route is missing, which is the path under test).
    poll_until("the generation is written", WAIT, async || {
        let client = ::redis::Client::open(redis.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let g: Option<String> = ::redis::cmd("GET")
            .arg("navcast:generation")
            .query_async(&mut raw)
            .await
            .unwrap();
        g.is_some()
    })
    .await;

    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .unwrap();

    let r = rider.request(update()).await;
    assert_eq!(r["code"], "STATE_LOST", "{r}");
    let m = node.metrics().await;
    assert_eq!(metric_counter(&m, "navcast_redis_data_lost_total"), 1);
    let again = rider
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(again["type"], "route_calculated", "{again}");
    location_updates(&mut rider, 1).await;
    // A rider who never had a route still gets NO_ACTIVE_SESSION.
    let other = account(node, None).await;
    let mut idle = Client::connect(node, &other).await;
    assert_eq!(idle.request(update()).await["code"], "NO_ACTIVE_SESSION");
}
