//! A single node without Redis (#11 §5): accounts and refresh tokens
//! survive a crash of the process in the state file; with the state kept in
//! memory, tokens issued before a restart no longer open sessions for
//! accounts that are gone.

use std::time::Duration;

use navcast::testing::{NodeProcess, handshake_status, register_and_login};

const NODE: &str = env!("CARGO_BIN_EXE_navcast");

async fn login_status(node: &NodeProcess, email: &str, password: &str) -> u16 {
    reqwest::Client::new()
        .post(node.http("/api/v1/auth/login"))
        .form(&[("username", email), ("password", password)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn refresh_status(node: &NodeProcess, token: &str) -> u16 {
    reqwest::Client::new()
        .post(node.http("/api/v1/auth/refresh"))
        .json(&serde_json::json!({"refresh_token": token}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn accounts_and_tokens_survive_a_crash_in_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let mut node = NodeProcess::start(NODE, &[("NAVCAST_STATE_DIR", state)], None).await;
    let acct = register_and_login(&reqwest::Client::new(), &node.http(""), None).await;
    node.signal("KILL");
    node.wait_exit(Duration::from_secs(30)).await;

    let node = NodeProcess::start(NODE, &[("NAVCAST_STATE_DIR", state)], None).await;
    assert_eq!(login_status(&node, &acct.email, &acct.password).await, 200);
    let (status, _) = handshake_status(&node.ws_url(&acct.user_id, &acct.access), &[]).await;
    assert_eq!(status, 101, "the access token's login is still known");
    assert_eq!(refresh_status(&node, &acct.refresh).await, 200);
    assert_eq!(
        refresh_status(&node, &acct.refresh).await,
        401,
        "and it is spent now: the family was kept, not recreated"
    );
}

#[tokio::test]
async fn tokens_of_a_node_that_kept_nothing_open_nothing() {
    let mut node = NodeProcess::start(NODE, &[("NAVCAST_STATE_DIR", "")], None).await;
    let acct = register_and_login(&reqwest::Client::new(), &node.http(""), None).await;
    node.signal("KILL");
    node.wait_exit(Duration::from_secs(30)).await;

    let node = NodeProcess::start(NODE, &[("NAVCAST_STATE_DIR", "")], None).await;
    assert_eq!(login_status(&node, &acct.email, &acct.password).await, 401);
    let (status, _) = handshake_status(&node.ws_url(&acct.user_id, &acct.access), &[]).await;
    assert_eq!(status, 401, "no session for an account that is gone");
    assert_eq!(refresh_status(&node, &acct.refresh).await, 401);
}
