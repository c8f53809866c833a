//! Fan-out of navigation events: other devices, guardians, across nodes
//! sharing an in-process bus, and the multi-device policies.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn other_devices_and_guardians_get_every_event_in_order() {
    let node = TestNode::start(test_config()).await;
    let rider = account(&node, None).await;
    let guardian = account(&node, None).await;
    let mut phone = Client::connect(&node, &rider).await;
    let mut watch_device = Client::connect(&node, &rider).await;
    let mut g = Client::connect(&node, &guardian).await;
    share_and_watch(&mut phone, &mut g, &rider.user_id, &guardian.user_id).await;

    let calc = phone
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(calc["type"], "route_calculated");
    for _ in 0..5 {
        let r = phone
            .request(
                json!({"type": "location_update", "latitude": YEOKSAM.0, "longitude": YEOKSAM.1}),
            )
            .await;
        assert!(
            r["type"].as_str().unwrap().starts_with("navigation_update")
                || r["type"] == "route_deviation"
        );
    }
    for receiver in [&mut g, &mut watch_device] {
        let mut last_seq = 0;
        for i in 0..6 {
            let ev = receiver.pushed_of("peer_event").await;
            assert_eq!(ev["user_id"], rider.user_id.as_str());
            assert_eq!(ev["origin_node"], node.state.node_id.as_ref());
            assert!(
                ev.get("request_id").is_none(),
                "peer events never carry the sender's request id"
            );
            let seq = ev["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "no gap, in order");
            last_seq = seq;
            assert!(ev["sent_at_us"].as_u64().unwrap() > 0);
            let expected = if i == 0 {
                "route_calculated"
            } else {
                "navigation_update"
            };
            if i == 0 {
                assert_eq!(ev["event"]["type"], expected);
                assert_eq!(ev["event"]["route_id"], calc["route_id"]);
            }
        }
    }
    // The sender itself got only direct replies.
    assert!(phone.pushed.iter().all(|f| f["type"] != "peer_event"));
}

#[tokio::test]
async fn guardian_on_another_node_receives_events_once() {
    let nodes = TestNode::cluster(3, |_| {}).await;
    let rider = account(&nodes[0], None).await;
    let guardian = account(&nodes[0], None).await;
    let mut r = Client::connect(&nodes[0], &rider).await;
    let mut g = Client::connect(&nodes[1], &guardian).await;
    assert_ne!(r.connected["node_id"], g.connected["node_id"]);
    share_and_watch(&mut r, &mut g, &rider.user_id, &guardian.user_id).await;
    r.request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
        .await;
    for _ in 0..3 {
        r.request(json!({"type": "location_update", "latitude": 37.5547, "longitude": 126.9707}))
            .await;
    }
    r.request(json!({"type": "end_navigation"})).await;
    let mut seqs = Vec::new();
    for _ in 0..5 {
        let ev = g.pushed_of("peer_event").await;
        assert_eq!(ev["origin_node"], "node-a");
        seqs.push(ev["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    // Exactly once: a ping round trip later, nothing else is pending.
    let pong = g.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert!(
        g.pushed.iter().all(|f| f["type"] != "peer_event"),
        "duplicates: {:?}",
        g.pushed
    );
    // A route made on node A continues on node C after a reconnect.
    drop(r);
    let mut again = Client::connect(&nodes[2], &rider).await;
    again
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    let mut on_c = Client::connect(&nodes[2], &rider).await;
    let upd = on_c
        .request(json!({"type": "location_update", "latitude": YEOKSAM.0, "longitude": YEOKSAM.1}))
        .await;
    assert!(
        upd["type"] == "navigation_update" || upd["type"] == "route_deviation",
        "{upd}"
    );
}

#[tokio::test]
async fn replace_policy_closes_the_older_session_across_nodes() {
    let nodes = TestNode::cluster(2, |c| {
        c.ws.multi_device = navcast::config::MultiDevice::Replace
    })
    .await;
    let rider = account(&nodes[0], None).await;
    let mut old = Client::connect(&nodes[0], &rider).await;
    let _new = Client::connect(&nodes[1], &rider).await;
    let notice = old.pushed_of("disconnected").await;
    assert_eq!(notice["code"], "DUPLICATE_CONNECTION");
    assert_eq!(old.close_code().await, Some(4002));
    // Same node, too.
    let mut third = Client::connect(&nodes[1], &rider).await;
    let _fourth = Client::connect(&nodes[1], &rider).await;
    assert_eq!(
        third.pushed_of("disconnected").await["code"],
        "DUPLICATE_CONNECTION"
    );
    assert_eq!(third.close_code().await, Some(4002));
}

#[tokio::test]
async fn unshare_stops_delivery_and_watch_needs_a_share() {
    let node = TestNode::start(test_config()).await;
    let rider = account(&node, None).await;
    let guardian = account(&node, None).await;
    let mut r = Client::connect(&node, &rider).await;
    let mut g = Client::connect(&node, &guardian).await;
    share_and_watch(&mut r, &mut g, &rider.user_id, &guardian.user_id).await;
    r.request(json!({"type": "start_navigation", "origin": "강남", "destination": "잠실"}))
        .await;
    assert_eq!(g.pushed_of("peer_event").await["seq"], 1);
    let u = r
        .request(json!({"type": "unshare_navigation", "guardian_id": guardian.user_id}))
        .await;
    assert_eq!(u["type"], "unshared");
    r.request(json!({"type": "end_navigation"})).await;
    let pong = g.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert!(
        g.pushed.is_empty(),
        "no events after unshare: {:?}",
        g.pushed
    );
    let w = g
        .request(json!({"type": "watch", "user_id": rider.user_id}))
        .await;
    assert_eq!(w["code"], "FORBIDDEN");
}
