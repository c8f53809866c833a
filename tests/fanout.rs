//! Fan-out of navigation events: other devices, guardians, across nodes
//! sharing an in-process bus, and the multi-device policies.

use navcast::testing::*;
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

    // What the phone got back, without its request ids: exactly the events
    // its other device and the guardian must see, in this order.
    let mut sent = Vec::new();
    let calc = phone
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    sent.push(calc.clone());
    for _ in 0..5 {
        let r = phone
            .request(
                json!({"type": "location_update", "latitude": YEOKSAM.0, "longitude": YEOKSAM.1}),
            )
            .await;
        assert!(
            r["type"] == "navigation_update" || r["type"] == "route_deviation",
            "{r}"
        );
        assert_eq!(r["route_id"], calc["route_id"], "{r}");
        sent.push(r);
    }
    for reply in &mut sent {
        reply
            .as_object_mut()
            .unwrap()
            .remove("request_id")
            .expect("a direct reply echoes its request id");
    }
    for receiver in [&mut g, &mut watch_device] {
        for (i, expected) in sent.iter().enumerate() {
            let ev = receiver.pushed_of("peer_event").await;
            assert_eq!(ev["user_id"], rider.user_id.as_str());
            assert_eq!(ev["origin_node"], node.state.node_id.as_ref());
            assert!(
                ev.get("request_id").is_none(),
                "peer events never carry the sender's request id"
            );
            assert_eq!(ev["seq"], i as u64 + 1, "no gap, in order: {ev}");
            assert!(ev["sent_at_us"].as_u64().unwrap() > 0);
            // Type, order and every field: the event is the reply itself.
            assert_eq!(&ev["event"], expected, "event {}", i + 1);
        }
        // Nothing beyond the six.
        receiver.assert_none_pending("peer_event").await;
    }
    // The sender itself got only direct replies.
    phone.assert_none_pending("peer_event").await;
}

#[tokio::test]
async fn guardian_on_another_node_receives_events_once() {
    let nodes = TestNode::cluster(3, |_| {}).await;
    let Watched {
        rider,
        mut r,
        mut g,
        ..
    } = watched_rider(&nodes[0], &nodes[1]).await;
    assert_ne!(r.node_id(), g.node_id());
    let calc = r
        .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    let route_id = calc["route_id"].clone();
    for _ in 0..3 {
        let u = r
            .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1}))
            .await;
        assert_eq!(u["type"], "navigation_update", "{u}");
    }
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let ev = g.pushed_of("peer_event").await;
        assert_eq!(ev["origin_node"], "node-a");
        assert_eq!(ev["event"]["route_id"], route_id);
        seqs.push(ev["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    // Exactly once.
    g.assert_none_pending("peer_event").await;

    // The route made on node A continues on node C after a reconnect: no
    // new start, the next fix is tracked on the same route.
    drop(r);
    let mut on_c = Client::connect(&nodes[2], &rider).await;
    assert_eq!(on_c.node_id(), "node-c");
    let upd = on_c
        .request(json!({"type": "location_update", "latitude": SEOUL_STATION.0, "longitude": SEOUL_STATION.1, "route_id": route_id}))
        .await;
    assert_eq!(upd["type"], "navigation_update", "{upd}");
    assert_eq!(upd["route_id"], route_id, "{upd}");
    assert_eq!(
        upd["current_station"]["name"], "서울",
        "progress on the same route: {upd}"
    );
    // The guardian on node B sees the continuation, now from node C
    // (`seq` counts per publishing node, so node C's first event is 1).
    let ev = g.pushed_of("peer_event").await;
    assert_eq!(ev["origin_node"], "node-c", "{ev}");
    assert_eq!(ev["seq"], 1, "{ev}");
    let mut expected = upd.clone();
    expected.as_object_mut().unwrap().remove("request_id");
    assert_eq!(ev["event"], expected);
    let end = on_c.request(json!({"type": "end_navigation"})).await;
    assert_eq!(end["type"], "navigation_ended", "{end}");
    assert_eq!(
        end["route_id"], route_id,
        "the route of node A ends on node C"
    );
    let ev = g.pushed_of("peer_event").await;
    assert_eq!(
        (ev["origin_node"].as_str(), ev["seq"].as_u64()),
        (Some("node-c"), Some(2))
    );
    assert_eq!(ev["event"]["type"], "navigation_ended");
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
    let Watched {
        rider,
        guardian,
        mut r,
        mut g,
    } = watched_rider(&node, &node).await;
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
