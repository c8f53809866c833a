//! Nodes on a real Redis Cluster (3 masters, 3 replicas on loopback):
//! sharded fan-out across nodes and shards, and a master killed mid-run.
//! The store contracts on a cluster are in `cluster_redis.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use navcast::Config;
use navcast::config::{BusTopology, RedisMode};
use navcast::testing::*;
use serde_json::{Value, json};

fn cluster_config(cluster: &RedisCluster, node: &str) -> Config {
    let mut c = test_config();
    c.node_id = node.to_string();
    c.redis_url = Some(cluster.seeds());
    c.redis_mode = RedisMode::Cluster;
    c.bus.topology = BusTopology::Targeted;
    c.bus.heartbeat_interval = Duration::from_millis(200);
    c
}

async fn nodes_on(cluster: &RedisCluster, n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("node-{}", (b'a' + i as u8) as char);
        nodes.push(TestNode::start(cluster_config(cluster, &name)).await);
    }
    for node in &nodes {
        node.wait_ready(true).await;
    }
    nodes
}

fn is_nav_event(reply: &Value) -> bool {
    [
        "route_calculated",
        "navigation_update",
        "route_deviation",
        "arrival",
        "navigation_ended",
    ]
    .contains(&reply["type"].as_str().unwrap_or(""))
}

/// Riders on every node, each watched by a guardian on the next node: every
/// event reaches its guardian once and in order, every event is one
/// `SPUBLISH` on the shard of its rider (so the shards split the traffic),
/// and nothing travels over classic pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_fanout_reaches_guardians_on_other_nodes_and_splits_over_the_shards() {
    let cluster = RedisCluster::start(3).await;
    let nodes = nodes_on(&cluster, 3).await;
    // 24 riders with random ids: the chance that a shard gets none is
    // 3 × (2/3)^24 ≈ 0.02 %.
    const RIDERS: usize = 24;
    let mut pairs = Vec::new();
    for i in 0..RIDERS {
        pairs.push(watched_rider(&nodes[i % 3], &nodes[(i + 1) % 3]).await);
    }
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let mut before = Vec::new();
    for &m in &masters {
        before.push(cluster.calls(m, "spublish").await);
    }

    let mut events = 0u64;
    for w in pairs.iter_mut() {
        let calc = w
            .r
            .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
            .await;
        assert_eq!(calc["type"], "route_calculated", "{calc}");
        for _ in 0..3 {
            let u = w
                .r
                .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
                .await;
            assert!(is_nav_event(&u), "{u}");
        }
        let end = w.r.request(json!({"type": "end_navigation"})).await;
        assert_eq!(end["type"], "navigation_ended", "{end}");
        events += 5;
    }
    for w in pairs.iter_mut() {
        let mut offsets = Vec::new();
        let mut kinds = Vec::new();
        for _ in 0..5 {
            let ev = w.g.pushed_of("peer_event").await;
            assert_eq!(ev["user_id"], w.rider.user_id.as_str(), "{ev}");
            offsets.push(ev["offset"].as_u64().expect("offset"));
            kinds.push(ev["event"]["type"].as_str().unwrap().to_string());
        }
        assert_eq!(offsets, (1..=5).collect::<Vec<_>>(), "in order, no gaps");
        assert_eq!(kinds[0], "route_calculated");
        assert_eq!(kinds[4], "navigation_ended");
        w.g.assert_none_pending("peer_event").await;
    }

    let mut per_shard = Vec::new();
    for (i, &m) in masters.iter().enumerate() {
        per_shard.push(cluster.calls(m, "spublish").await - before[i]);
        assert_eq!(
            cluster.calls(m, "publish").await,
            0,
            "no classic pub/sub on {m}"
        );
    }
    eprintln!("SPUBLISH per shard for {events} events: {per_shard:?}");
    assert_eq!(per_shard.iter().sum::<u64>(), events, "{per_shard:?}");
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    for node in &nodes {
        let stats = node.stats().await;
        assert_eq!(stats["bus"]["kind"], "redis-cluster-targeted", "{stats}");
        assert_eq!(stats["bus"]["gaps"], 0, "{stats}");
        assert_eq!(stats["bus"]["publish_failures"], 0, "{stats}");
    }
}

/// Offsets a guardian holds for its rider, the stream's epoch, and whether
/// the rider's last event (`navigation_ended`) has arrived.
#[derive(Default)]
struct Seen {
    offsets: BTreeSet<u64>,
    epoch: String,
    ended: bool,
}

impl Seen {
    fn take(&mut self, ev: &Value) {
        self.offsets.insert(ev["offset"].as_u64().expect("offset"));
        self.epoch = ev["epoch"].as_str().expect("epoch").to_string();
        if ev["event"]["type"] == "navigation_ended" {
            self.ended = true;
        }
    }

    /// The highest offset up to which nothing is missing.
    fn contiguous(&self) -> u64 {
        let mut n = 0;
        while self.offsets.contains(&(n + 1)) {
            n += 1;
        }
        n
    }
}

/// A master is SIGKILLed while riders keep navigating. Its replica is
/// promoted; every node notices, subscribes again and carries on; each
/// guardian ends with every event of its rider's stream, in order, the
/// ones its node missed during the failover recovered with `watch` +
/// `since`; every event a rider was answered with is either in its stream
/// or counted as a publish failure; and every account acknowledged before
/// the kill still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_fanout_accounts_and_streams_carry_on() {
    let mut cluster = RedisCluster::start(3).await;
    let nodes = nodes_on(&cluster, 3).await;
    const RIDERS: usize = 12;
    let mut pairs = Vec::new();
    for i in 0..RIDERS {
        pairs.push(watched_rider(&nodes[i % 3], &nodes[(i + 1) % 3]).await);
    }
    let mut answered = 0u64;
    let update = json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1});
    let mut seen: Vec<Seen> = (0..RIDERS).map(|_| Seen::default()).collect();
    for (w, seen) in pairs.iter_mut().zip(&mut seen) {
        let calc = w
            .r
            .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
            .await;
        assert_eq!(calc["type"], "route_calculated", "{calc}");
        answered += 1;
        let u = w.r.request(update.clone()).await;
        assert!(is_nav_event(&u), "{u}");
        answered += 1;
        for _ in 0..2 {
            seen.take(&w.g.pushed_of("peer_event").await);
        }
    }

    // The master with the most riders' traffic dies.
    let mut busiest = (0, 0);
    for m in cluster.masters().await {
        let n = cluster.calls(m, "spublish").await;
        if n > busiest.1 {
            busiest = (m, n);
        }
    }
    let killed_at = Instant::now();
    cluster.kill(busiest.0);

    // Riders keep going while the cluster fails over: a reply may be an
    // error (its route store's shard is down), never a hang.
    for w in pairs.iter_mut() {
        let u = w.r.request(update.clone()).await;
        if is_nav_event(&u) {
            answered += 1;
        } else {
            assert_eq!(u["type"], "error", "{u}");
        }
    }
    cluster.wait_promoted(busiest.0, 3).await;
    let promoted_ms = killed_at.elapsed().as_millis();
    for node in &nodes {
        poll_until(
            "every node's bus is connected again",
            WAIT * 3,
            async || node.stats().await["bus"]["connected"] == true,
        )
        .await;
    }
    let recovered_ms = killed_at.elapsed().as_millis();
    for node in &nodes {
        poll_until("every node is ready again", WAIT * 3, async || {
            node.ready_status().await == 200
        })
        .await;
    }

    // After the failover, every rider's events flow again.
    for w in pairs.iter_mut() {
        for _ in 0..2 {
            let u = w.r.request(update.clone()).await;
            assert!(is_nav_event(&u), "after the failover: {u}");
            answered += 1;
        }
        let end = w.r.request(json!({"type": "end_navigation"})).await;
        assert_eq!(end["type"], "navigation_ended", "{end}");
        answered += 1;
    }
    let mut replayed = 0u64;
    let mut in_streams = 0u64;
    for (w, seen) in pairs.iter_mut().zip(&mut seen) {
        while !seen.ended {
            seen.take(&w.g.pushed_of("peer_event").await);
        }
        let since = json!({"offset": seen.contiguous(), "epoch": seen.epoch});
        let watching =
            w.g.request(json!({"type": "watch", "user_id": w.rider.user_id, "since": since}))
                .await;
        assert_eq!(watching["type"], "watching", "{watching}");
        assert_eq!(watching["recovered"], true, "{watching}");
        let last = watching["offset"].as_u64().unwrap();
        let missed = watching["missed"].as_u64().unwrap();
        for _ in 0..missed {
            seen.take(&w.g.pushed_of("peer_event").await);
        }
        replayed += missed;
        assert_eq!(
            seen.offsets,
            (1..=last).collect::<BTreeSet<_>>(),
            "guardian of {} holds the whole stream",
            w.rider.user_id
        );
        in_streams += last;
    }
    let mut failures = 0u64;
    for node in &nodes {
        failures += node.stats().await["bus"]["publish_failures"]
            .as_u64()
            .unwrap();
    }
    eprintln!(
        "master killed: replica promoted after {promoted_ms} ms, every node's bus back after \
         {recovered_ms} ms; {answered} events answered, {in_streams} in streams, {replayed} \
         recovered with since, {failures} publish failures"
    );
    assert_eq!(
        in_streams + failures,
        answered,
        "every event is in its stream or counted as lost"
    );

    // Accounts acknowledged before the kill all log in, on any node.
    let http = reqwest::Client::new();
    for (i, w) in pairs.iter().enumerate() {
        for acct in [&w.rider, &w.guardian] {
            let r = http
                .post(nodes[i % 3].http("/api/v1/auth/login"))
                .form(&[
                    ("username", acct.email.as_str()),
                    ("password", acct.password.as_str()),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{} after the failover", acct.email);
        }
    }
}
