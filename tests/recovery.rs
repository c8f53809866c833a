//! Protocol v1.1 (#13 §1): each rider's events form one stream with
//! gap-free offsets under an epoch; a session that comes back with `since`
//! gets exactly the events it missed, in order, then live ones, none twice —
//! on a single node, and across nodes over a real Redis with the guardian
//! reconnecting to another node.

use navcast::config::BusTopology;
use navcast::testing::*;
use serde_json::{Value, json};

/// Ten updates along a line, each a navigation event.
async fn updates(rider: &mut Client, n: usize) {
    for k in 0..n {
        let u = rider
            .request(json!({
                "type": "location_update",
                "latitude": SEOUL_STATION.0 + k as f64 * 1e-5,
                "longitude": SEOUL_STATION.1,
            }))
            .await;
        assert!(u["type"].as_str().is_some_and(|t| t != "error"), "{u}");
    }
}

async fn start(rider: &mut Client) -> Value {
    let r = rider
        .request(json!({"type": "start_navigation", "origin": "서울역", "destination": "홍대입구"}))
        .await;
    assert_eq!(r["type"], "route_calculated", "{r}");
    r
}

/// The next `n` peer events: their offsets, checking the epoch.
async fn offsets(c: &mut Client, n: usize, epoch: &str) -> Vec<u64> {
    let mut got = Vec::new();
    for _ in 0..n {
        let e = c.pushed_of("peer_event").await;
        assert_eq!(e["epoch"], epoch, "{e}");
        got.push(e["offset"].as_u64().expect("offset"));
    }
    got
}

/// The guardian watches on `first`, sees two events, goes away while the
/// rider sends ten, and comes back on `second` with `since`.
async fn guardian_recovers(rider_node: &TestNode, first: &TestNode, second: &TestNode) {
    let mut w = watched_rider(rider_node, first).await;
    start(&mut w.r).await;
    let started = w.g.pushed_of("peer_event").await;
    let epoch = started["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(started["offset"], 1, "{started}");
    updates(&mut w.r, 1).await;
    assert_eq!(offsets(&mut w.g, 1, &epoch).await, [2]);
    drop(w.g);

    updates(&mut w.r, 10).await;

    let mut g = Client::connect(second, &w.guardian).await;
    let back = g
        .request(json!({
            "type": "watch",
            "user_id": w.rider.user_id,
            "since": {"offset": 2, "epoch": epoch},
        }))
        .await;
    assert_eq!(back["type"], "watching", "{back}");
    assert_eq!(back["recovered"], true, "{back}");
    assert_eq!(back["missed"], 10, "{back}");
    assert_eq!(back["offset"], 12, "{back}");
    assert_eq!(back["epoch"], epoch.as_str());
    assert_eq!(
        offsets(&mut g, 10, &epoch).await,
        (3..=12).collect::<Vec<_>>(),
        "exactly the missed events, in order"
    );
    // Then live ones, and nothing twice.
    updates(&mut w.r, 2).await;
    assert_eq!(offsets(&mut g, 2, &epoch).await, [13, 14]);
    g.assert_none_pending("peer_event").await;
}

#[tokio::test]
async fn a_guardian_away_for_ten_events_recovers_them_on_a_single_node() {
    let node = TestNode::single(|_| {}).await;
    guardian_recovers(&node, &node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_recovers_on_another_node_over_redis() {
    for topology in [BusTopology::Broadcast, BusTopology::Targeted] {
        let redis = RedisServer::start().await;
        let mut nodes = Vec::new();
        for name in ["node-a", "node-b", "node-c"] {
            let mut c = test_config();
            c.node_id = name.into();
            c.redis_url = Some(redis.url());
            c.bus.topology = topology;
            nodes.push(TestNode::start(c).await);
        }
        for n in &nodes {
            n.wait_ready(true).await;
        }
        guardian_recovers(&nodes[0], &nodes[1], &nodes[2]).await;
        // A guardian on the rider's own node gets the events through Redis
        // too, and comes back there.
        guardian_recovers(&nodes[0], &nodes[0], &nodes[0]).await;
    }
}

/// What cannot be recovered is said so: another epoch, or events older
/// than the history keeps. The reply then carries the current navigation
/// and position, and nothing is replayed.
#[tokio::test]
async fn lost_history_is_reported_with_the_current_state() {
    let node = TestNode::single(|c| c.history.size = 5).await;
    let mut w = watched_rider(&node, &node).await;
    start(&mut w.r).await;
    let first = w.g.pushed_of("peer_event").await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    drop(w.g);
    updates(&mut w.r, 9).await;

    let mut g = Client::connect(&node, &w.guardian).await;
    let back = g
        .request(json!({"type": "watch", "user_id": w.rider.user_id, "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(
        back["recovered"], false,
        "only 5 of the 9 missed are kept: {back}"
    );
    assert_eq!(back["missed"], 9);
    assert_eq!(back["offset"], 10);
    assert!(back["active_route"]["route_id"].is_string(), "{back}");
    g.assert_none_pending("peer_event").await;

    let other_epoch = g
        .request(json!({"type": "watch", "user_id": w.rider.user_id, "since": {"offset": 10, "epoch": "not-the-epoch"}}))
        .await;
    assert_eq!(other_epoch["recovered"], false);
    assert_eq!(other_epoch["missed"], 0);
    // Live events go on from the current offset.
    updates(&mut w.r, 1).await;
    assert_eq!(offsets(&mut g, 1, &epoch).await, [11]);

    let bad = g
        .request(json!({"type": "watch", "user_id": w.rider.user_id, "since": {"offset": -1, "epoch": "e"}}))
        .await;
    assert_eq!(bad["code"], "INVALID_PARAMETERS", "{bad}");
    let long = g
        .request(json!({"type": "watch", "user_id": w.rider.user_id, "since": {"offset": 1, "epoch": "e".repeat(65)}}))
        .await;
    assert_eq!(long["code"], "INVALID_PARAMETERS", "{long}");
}

/// A rider's other device resumes its own stream with `resume`.
#[tokio::test]
async fn another_device_of_the_rider_resumes_its_own_stream() {
    let node = TestNode::single(|_| {}).await;
    let rider = account(&node, None).await;
    let mut phone = Client::connect(&node, &rider).await;
    let mut watch = Client::connect(&node, &rider).await;
    start(&mut phone).await;
    let first = watch.pushed_of("peer_event").await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    drop(watch);
    updates(&mut phone, 3).await;

    let mut watch = Client::connect(&node, &rider).await;
    let back = watch
        .request(json!({"type": "resume", "user_id": rider.user_id, "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(back["type"], "resumed", "{back}");
    assert_eq!(
        (back["recovered"].clone(), back["missed"].clone()),
        (json!(true), json!(3))
    );
    assert!(back["active_route"]["route_id"].is_string(), "{back}");
    assert_eq!(offsets(&mut watch, 3, &epoch).await, [2, 3, 4]);
    // The device that sent an event does not get it back.
    updates(&mut watch, 1).await;
    assert_eq!(offsets(&mut phone, 1, &epoch).await, [5]);
    phone.assert_none_pending("peer_event").await;

    let other = account(&node, None).await;
    let refused = watch
        .request(json!({"type": "resume", "user_id": other.user_id, "since": {"offset": 0, "epoch": epoch}}))
        .await;
    assert_eq!(refused["code"], "FORBIDDEN", "{refused}");
}

/// A rider's only phone comes back and asks for its navigation with a
/// `resume` without `since`: the snapshot and the position, nothing
/// replayed.
#[tokio::test]
async fn a_lone_phone_resumes_its_route_without_since() {
    let node = TestNode::single(|_| {}).await;
    let rider = account(&node, None).await;
    let mut phone = Client::connect(&node, &rider).await;
    let route = start(&mut phone).await;
    updates(&mut phone, 2).await;
    drop(phone);

    let mut phone = Client::connect(&node, &rider).await;
    let back = phone
        .request(json!({"type": "resume", "user_id": rider.user_id}))
        .await;
    assert_eq!(back["type"], "resumed", "{back}");
    assert_eq!(
        back["active_route"]["route_id"], route["route_id"],
        "{back}"
    );
    assert_eq!(back["offset"], json!(3), "{back}");
    assert!(back.get("recovered").is_none(), "{back}");
    assert!(back.get("missed").is_none(), "{back}");
    phone.assert_none_pending("peer_event").await;
    // The route goes on where it was.
    let next = phone
        .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
        .await;
    assert_ne!(next["type"], "error", "{next}");
}
