//! Helpers shared by the integration tests: real nodes on port 0, real
//! HTTP and WebSocket clients.
#![allow(dead_code)]

pub mod redis;
pub mod synthetic;
#[allow(unused_imports)]
pub use synthetic::*;

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use navcast::testing::{TEST_SECRET as SECRET, TestNode, WAIT, test_config};

pub struct Account {
    pub email: String,
    pub password: String,
    pub user_id: String,
    pub access: String,
    pub refresh: String,
}

/// Registers (with a unique email) and logs in.
pub async fn account(node: &TestNode, disability_type: Option<&str>) -> Account {
    let email = format!("rider-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery".to_string();
    let http = reqwest::Client::new();
    let mut body = json!({ "email": email, "password": password });
    if let Some(t) = disability_type {
        body["disability_type"] = json!(t);
    }
    let r = http
        .post(node.http("/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register: {}", r.text().await.unwrap());
    let login: Value = http
        .post(node.http("/api/v1/auth/login"))
        .form(&[
            ("username", email.as_str()),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Account {
        email,
        password,
        user_id: login["user_id"].as_str().unwrap().to_string(),
        access: login["access_token"].as_str().unwrap().to_string(),
        refresh: login["refresh_token"].as_str().unwrap().to_string(),
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that pairs replies by `request_id` and keeps pushed
/// frames (peer events, token warnings) aside.
pub struct Client {
    pub ws: Ws,
    pub connected: Value,
    pub pushed: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    pub async fn connect(node: &TestNode, acct: &Account) -> Client {
        Client::connect_url(&node.ws_url(&acct.user_id, &acct.access)).await
    }

    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let mut c = Client {
            ws,
            connected: Value::Null,
            pushed: VecDeque::new(),
            next_id: 0,
        };
        let first = c.next_frame().await.expect("connected frame");
        assert_eq!(first["type"], "connected", "{first}");
        c.connected = first;
        c
    }

    /// The next text frame as JSON; `None` when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time")
            {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends with a fresh request id and returns the reply to it.
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        v["request_id"] = json!(id);
        self.send(v).await;
        loop {
            let frame = self.next_frame().await.expect("reply before close");
            if frame["request_id"] == json!(id) {
                return frame;
            }
            assert!(
                frame.get("request_id").is_none(),
                "reply to another request: {frame}"
            );
            self.pushed.push_back(frame);
        }
    }

    /// The next pushed frame of `type`, waiting for it if needed.
    pub async fn pushed_of(&mut self, kind: &str) -> Value {
        if let Some(i) = self.pushed.iter().position(|f| f["type"] == kind) {
            return self.pushed.remove(i).unwrap();
        }
        loop {
            let frame = self.next_frame().await.expect("pushed frame before close");
            if frame["type"] == kind {
                return frame;
            }
            self.pushed.push_back(frame);
        }
    }

    /// Reads until the server closes; returns the close code. Keeps polling
    /// after the close frame so the client's close reply is flushed and the
    /// handshake completes.
    pub async fn close_code(&mut self) -> Option<u16> {
        let code = loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        };
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
        code
    }
}

/// Attempts an upgrade and returns the HTTP status of a refusal (or 101).
pub async fn handshake_status(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, None),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        ),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// The rider shares its navigation with the guardian, who then watches.
pub async fn share_and_watch(
    rider: &mut Client,
    guardian: &mut Client,
    rider_id: &str,
    guardian_id: &str,
) {
    let r = rider
        .request(json!({"type": "share_navigation", "guardian_id": guardian_id}))
        .await;
    assert_eq!(r["type"], "shared", "{r}");
    let w = guardian
        .request(json!({"type": "watch", "user_id": rider_id}))
        .await;
    assert_eq!(w["type"], "watching", "{w}");
}

/// `POST /api/v1/auth/refresh` on `node`: the new token pair.
pub async fn refresh(node: &TestNode, refresh_token: &str) -> Value {
    reqwest::Client::new()
        .post(node.http("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The handshake status of `user`'s WebSocket URL on `node` with `token`.
pub async fn token_status(node: &TestNode, user: &str, token: &str) -> u16 {
    handshake_status(&node.ws_url(user, token), &[]).await.0
}

/// Coordinates of a few stations, for location updates.
pub const YEOKSAM: (f64, f64) = (37.5006, 127.0364);
pub const GANGNAM: (f64, f64) = (37.4979, 127.0276);
pub const HONGDAE: (f64, f64) = (37.5579, 126.9227);
