//! The WebSocket contract against a real node on port 0: handshake
//! rejections, the happy path, every error code, and frame-level abuse.

use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use navcast::clock::unix_s;
use navcast::config::JwtAlgorithm;
use navcast::testing::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A node config signing with the key pair `{kind}_private.pem` /
/// `{kind}_public.pem` of the test fixtures.
fn key_pair_config(algorithm: JwtAlgorithm, kind: &str) -> navcast::Config {
    let mut c = test_config();
    c.jwt.algorithm = algorithm;
    c.jwt.secret = None;
    c.jwt.public_key_file = Some(format!("{FIXTURES}/{kind}_public.pem").into());
    c.jwt.private_key_file = Some(format!("{FIXTURES}/{kind}_private.pem").into());
    c
}

fn claims(sub: &str, kind: &str, exp: i64) -> Value {
    json!({"sub": sub, "exp": exp, "iat": unix_s(), "jti": "t1", "type": kind})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn es256(claims: &Value, pem: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn handshake_rejections_are_plain_http() {
    let node = TestNode::start(test_config()).await;
    let acct = account(&node, None).await;
    let url = |token: &str| node.ws_url(&acct.user_id, token);
    let base = format!("ws://{}/api/v1/ws/{}", node.addr, acct.user_id);

    assert_eq!(handshake_status(&base, &[]).await.0, 401, "no token");
    let forged = hs256(
        &claims(&acct.user_id, "access", unix_s() + 600),
        "another-secret-0123456789",
    );
    assert_eq!(
        handshake_status(&url(&forged), &[]).await.0,
        401,
        "bad signature"
    );
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&acct.user_id, "access", unix_s() + 600))
    );
    assert_eq!(
        handshake_status(&url(&none_token), &[]).await.0,
        401,
        "alg none"
    );
    let expired = hs256(
        &claims(&acct.user_id, "access", unix_s() - 120),
        TEST_SECRET,
    );
    assert_eq!(
        handshake_status(&url(&expired), &[]).await.0,
        401,
        "expired"
    );
    assert_eq!(
        handshake_status(&url(&acct.refresh), &[]).await.0,
        401,
        "refresh token"
    );
    let other = account(&node, None).await;
    assert_eq!(
        token_status(&node, &acct.user_id, &other.access).await,
        403,
        "sub != path"
    );
    // The valid token works in each of the three places.
    assert_eq!(handshake_status(&url(&acct.access), &[]).await.0, 101);
    let bearer = format!("Bearer {}", acct.access);
    assert_eq!(
        handshake_status(&base, &[("authorization", &bearer)])
            .await
            .0,
        101
    );
    let proto = format!("bearer, {}", acct.access);
    assert_eq!(
        handshake_status(&base, &[("sec-websocket-protocol", &proto)])
            .await
            .0,
        101
    );
    let stats = node.stats().await;
    assert_eq!(stats["connections"]["rejected_unauthorized"], 5);
    assert_eq!(stats["connections"]["rejected_forbidden"], 1);
}

#[tokio::test]
async fn hs_rs_confusion_is_rejected() {
    let c = key_pair_config(JwtAlgorithm::RS256, "rsa");
    let node = TestNode::start(c).await;
    let acct = account(&node, None).await;
    // A real RS256 token from the node works.
    assert_eq!(token_status(&node, &acct.user_id, &acct.access).await, 101);
    // An HS256 token "signed" with the public key as an HMAC secret does not.
    let public = std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(&acct.user_id, "access", unix_s() + 600),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(token_status(&node, &acct.user_id, &forged).await, 401);
}

#[tokio::test]
async fn connection_limit_answers_503_with_retry_after() {
    let mut c = test_config();
    c.ws.max_connections = 1;
    let node = TestNode::start(c).await;
    let acct = account(&node, None).await;
    let _first = Client::connect(&node, &acct).await;
    let (status, retry) = handshake_status(&node.ws_url(&acct.user_id, &acct.access), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("5"));
}

#[tokio::test]
async fn happy_path_start_update_switch_recalculate_end() {
    let node = TestNode::start(test_config()).await;
    let acct = account(&node, Some("VIS")).await;
    let mut c = Client::connect(&node, &acct).await;
    assert_eq!(c.connected["user_id"], acct.user_id.as_str());
    assert_eq!(c.connected["node_id"], node.state.node_id.as_ref());
    assert!(c.connected["session_id"].as_str().unwrap().len() >= 32);
    assert_eq!(c.connected["heartbeat_interval_s"], 20);

    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    let calc = c
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    assert_eq!(
        calc["disability_type"], "VIS",
        "account default type is used"
    );
    let route_id = calc["route_id"].as_str().unwrap().to_string();
    let routes = calc["routes"].as_array().unwrap();
    assert!(!routes.is_empty() && routes.len() <= 3);
    assert_eq!(routes[0]["rank"], 1);
    assert_eq!(routes[0]["stations"][0]["name"], "강남");

    let upd = c
        .request(json!({"type": "location_update", "latitude": YEOKSAM.0, "longitude": YEOKSAM.1, "accuracy": 20, "route_id": route_id}))
        .await;
    assert!(
        ["navigation_update", "route_deviation"].contains(&upd["type"].as_str().unwrap()),
        "{upd}"
    );
    assert_eq!(upd["route_id"], route_id.as_str());

    if routes.len() > 1 {
        let sw = c
            .request(json!({"type": "switch_route", "target_rank": 2}))
            .await;
        assert_eq!(sw["type"], "route_switched", "{sw}");
        assert_eq!(sw["selected_route_rank"], 2);
    }
    let recalc = c
        .request(
            json!({"type": "recalculate_route", "latitude": GANGNAM.0, "longitude": GANGNAM.1}),
        )
        .await;
    assert_eq!(recalc["type"], "route_recalculated", "{recalc}");
    let new_id = recalc["route_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, route_id);

    let arrival = c
        .request(json!({"type": "location_update", "latitude": HONGDAE.0, "longitude": HONGDAE.1, "accuracy": 10}))
        .await;
    assert_eq!(arrival["type"], "arrival", "{arrival}");
    assert_eq!(arrival["destination"]["name"], "홍대입구");

    let end = c.request(json!({"type": "end_navigation"})).await;
    assert_eq!(end["type"], "navigation_ended");
    assert_eq!(end["route_id"], new_id.as_str());
    let after = c
        .request(json!({"type": "location_update", "latitude": GANGNAM.0, "longitude": GANGNAM.1}))
        .await;
    assert_eq!(
        after["code"], "NO_ACTIVE_SESSION",
        "end_navigation clears the route"
    );
}

async fn expect_error(c: &mut Client, msg: Value, code: &str) -> Value {
    let reply = c.request(msg.clone()).await;
    assert_eq!(reply["type"], "error", "{msg} → {reply}");
    assert_eq!(reply["code"], code, "{msg} → {reply}");
    reply
}

#[tokio::test]
async fn every_error_code_keeps_the_connection_open() {
    let mut cfg = test_config();
    cfg.ws.max_protocol_errors = 100;
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;

    // PARSING_ERROR: not JSON, no request id to echo.
    c.send_text("{not json").await;
    let e = c.next_frame().await.unwrap();
    assert_eq!(e["code"], "PARSING_ERROR");
    // NaN is not JSON either.
    c.send_text(r#"{"type":"location_update","latitude":NaN,"longitude":1}"#)
        .await;
    assert_eq!(c.next_frame().await.unwrap()["code"], "PARSING_ERROR");
    // An object nested deeper than serde_json's recursion limit (128), in
    // a field of an otherwise valid request: the field check hits the limit
    // (not the stack) and the request is refused as INVALID_PARAMETERS,
    // naming its request id.
    for depth in [129, 200, 10_000] {
        let nested = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let id = format!("deep-{depth}");
        c.send_text(format!(
            r#"{{"type":"ping","request_id":"{id}","pad":{nested}}}"#
        ))
        .await;
        let e = c.next_frame().await.expect("an answer, not a close");
        assert_eq!(e["type"], "error", "depth {depth}: {e}");
        assert_eq!(e["code"], "INVALID_PARAMETERS", "depth {depth}: {e}");
        assert_eq!(e["request_id"], id.as_str(), "depth {depth}: {e}");
    }
    // The same nesting a level short of the limit is an ordinary ping.
    let shallow = format!("{}1{}", r#"{"a":"#.repeat(120), "}".repeat(120));
    let pong = c
        .request(serde_json::from_str(&format!(r#"{{"type":"ping","pad":{shallow}}}"#)).unwrap())
        .await;
    assert_eq!(pong["type"], "pong", "{pong}");

    // A huge (but in-limit) frame with an absurd field: refused, not echoed.
    let huge = "가".repeat(20_000);
    let r = expect_error(
        &mut c,
        json!({"type": "start_navigation", "origin": huge, "destination": "잠실"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(r["message"].as_str().unwrap().len() < 200, "{r}");
    expect_error(&mut c, json!({"type": "teleport"}), "UNKNOWN_MESSAGE_TYPE").await;
    expect_error(
        &mut c,
        json!({"type": "start_navigation", "origin": 5}),
        "INVALID_PARAMETERS",
    )
    .await;
    expect_error(
        &mut c,
        json!({"type": "start_navigation", "origin": "강남", "destination": "강남"}),
        "INVALID_PARAMETERS",
    )
    .await;
    expect_error(&mut c, json!({"type": "start_navigation", "origin": "강남", "destination": "홍대", "disability_type": "XYZ"}), "INVALID_PARAMETERS").await;
    let nf = expect_error(
        &mut c,
        json!({"type": "start_navigation", "origin": "강낭", "destination": "홍대입구"}),
        "STATION_NOT_FOUND",
    )
    .await;
    assert!(
        nf["message"].as_str().unwrap().contains("강남"),
        "suggests a close match: {nf}"
    );
    expect_error(
        &mut c,
        json!({"type": "location_update", "latitude": 37.5, "longitude": 127.0}),
        "NO_ACTIVE_SESSION",
    )
    .await;
    expect_error(
        &mut c,
        json!({"type": "end_navigation"}),
        "NO_ACTIVE_SESSION",
    )
    .await;

    let calc = c
        .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실", "disability_type": "PHY"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    expect_error(
        &mut c,
        json!({"type": "location_update", "latitude": 91.0, "longitude": 127.0}),
        "INVALID_LOCATION",
    )
    .await;
    expect_error(
        &mut c,
        json!({"type": "location_update", "latitude": 35.1796, "longitude": 129.0756}),
        "INVALID_LOCATION",
    )
    .await;
    expect_error(
        &mut c,
        json!({"type": "location_update", "latitude": 37.5, "longitude": 127.0, "accuracy": -3}),
        "INVALID_LOCATION",
    )
    .await;
    // A number beyond f64 (1e400) is refused, naming the request.
    c.send_text(
        r#"{"type":"location_update","latitude":1e400,"longitude":127.0,"request_id":"big"}"#,
    )
    .await;
    let big = c.next_frame().await.unwrap();
    assert_eq!(big["code"], "INVALID_PARAMETERS", "{big}");
    assert_eq!(big["request_id"], "big");
    expect_error(&mut c, json!({"type": "location_update", "latitude": 37.5, "longitude": 127.0, "route_id": "nope"}), "ROUTE_ID_MISMATCH").await;
    expect_error(
        &mut c,
        json!({"type": "switch_route", "target_rank": 9}),
        "INVALID_ROUTE_RANK",
    )
    .await;
    let other = account(&node, None).await;
    expect_error(
        &mut c,
        json!({"type": "watch", "user_id": other.user_id}),
        "FORBIDDEN",
    )
    .await;

    // Binary frames are refused with an error, the session stays.
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(c.next_frame().await.unwrap()["code"], "PARSING_ERROR");

    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "still open after every error");
    let stats = node.stats().await;
    // Not JSON, NaN, and the binary frame.
    assert_eq!(stats["errors"]["PARSING_ERROR"], 3, "{stats}");
    assert_eq!(stats["errors"]["FORBIDDEN"], 1);
}

#[tokio::test]
async fn route_not_found_on_a_disconnected_network() {
    let mut cfg = test_config();
    cfg.data_dir = Some(format!("{FIXTURES}/split-network").into());
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let r = expect_error(
        &mut c,
        json!({"type": "start_navigation", "origin": "알파", "destination": "감마"}),
        "ROUTE_NOT_FOUND",
    )
    .await;
    assert!(!r["message"].as_str().unwrap().contains("panic"));
}

#[tokio::test]
async fn rate_limit_answers_each_request() {
    // A burst of 5 and a refill of one token per 1000 s: the refill cannot
    // add a token during the test however slowly it runs, so exactly the
    // first 5 requests pass.
    let mut cfg = test_config();
    cfg.ws.rate_per_s = 0.001;
    cfg.ws.rate_burst = 5.0;
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let mut answers = Vec::new();
    for _ in 0..12 {
        let r = c.request(json!({"type": "ping"})).await;
        answers.push(match r["type"].as_str() {
            Some("pong") => "pong",
            Some("error") if r["code"] == "RATE_LIMITED" => "RATE_LIMITED",
            _ => panic!("neither pong nor RATE_LIMITED: {r}"),
        });
    }
    let mut expected = vec!["pong"; 5];
    expected.extend(["RATE_LIMITED"; 7]);
    assert_eq!(answers, expected, "burst of 5, then each request refused");
    // Being limited is not a protocol error: the session stays open.
    let stats = node.stats().await;
    assert_eq!(stats["errors"]["RATE_LIMITED"], 7, "{stats}");
    assert_eq!(stats["sessions"], 1, "{stats}");
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let mut cfg = test_config();
    cfg.ws.max_frame_bytes = 4096;
    let node = TestNode::start(cfg).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    let big = json!({"type": "ping", "pad": "x".repeat(10_000)});
    c.send(big).await;
    assert_eq!(c.close_code().await, Some(1009));
    // A frame just under the limit is fine on a new session.
    let mut c = Client::connect(&node, &acct).await;
    let r = c
        .request(json!({"type": "ping", "pad": "x".repeat(3000)}))
        .await;
    assert_eq!(r["type"], "pong");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let node = TestNode::start(test_config()).await;
    let acct = account(&node, None).await;
    let mut c = Client::connect(&node, &acct).await;
    // A text frame whose payload is not UTF-8, written below the type system.
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0xffu8, 0xfe, 0xfd],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.close_code().await, Some(1007));
}

#[tokio::test]
async fn repeated_protocol_errors_close_with_1008_and_spare_others() {
    let mut cfg = test_config();
    cfg.ws.max_protocol_errors = 5;
    let node = TestNode::start(cfg).await;
    let bad = account(&node, None).await;
    let good = account(&node, None).await;
    let mut b = Client::connect(&node, &bad).await;
    let mut g = Client::connect(&node, &good).await;
    for _ in 0..5 {
        b.send_text("garbage").await;
    }
    assert_eq!(b.close_code().await, Some(1008));
    let r = g.request(json!({"type": "ping"})).await;
    assert_eq!(
        r["type"], "pong",
        "a neighbour's abuse does not touch this session"
    );
    node.wait_sessions(1).await;
}

#[tokio::test]
async fn station_search_over_http() {
    let node = TestNode::start(test_config()).await;
    let v: Value = reqwest::get(node.http("/api/v1/stations?query=강남"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = v["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"강남"), "{names:?}");
    assert!(names.contains(&"강남구청"), "{names:?}");
    let gangnam = v["stations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "강남")
        .unwrap();
    let lines: Vec<&str> = gangnam["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines.contains(&"2호선") && lines.contains(&"신분당선"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn es256_tokens_from_a_pem_key_pair() {
    let mut c = key_pair_config(JwtAlgorithm::ES256, "ec");
    c.jwt.issuer = Some("navcast-test".into());
    c.jwt.audience = Some("riders".into());
    let node = TestNode::start(c).await;
    let acct = account(&node, None).await;
    assert_eq!(token_status(&node, &acct.user_id, &acct.access).await, 101);
    // Same key, wrong audience: refused.
    let key = std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap();
    let mut cl = claims(&acct.user_id, "access", unix_s() + 600);
    cl["iss"] = json!("navcast-test");
    cl["aud"] = json!("someone-else");
    let wrong_aud = es256(&cl, &key);
    assert_eq!(token_status(&node, &acct.user_id, &wrong_aud).await, 401);
    cl["aud"] = json!("riders");
    let right = es256(&cl, &key);
    assert_eq!(token_status(&node, &acct.user_id, &right).await, 101);
}
