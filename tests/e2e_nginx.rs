//! End to end through the production topology: `scripts/cluster.sh` starts a
//! real redis-server, three real node processes and a real nginx on
//! loopback; clients speak wss through nginx with the cluster's dev CA.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Wss = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` consecutive free ports (the cluster numbers its nodes from a base).
fn free_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 20_000);
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    https: u16,
    ca: PathBuf,
    secret: String,
}

impl Cluster {
    fn script(&self, arg: &str) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .arg(arg)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run scripts/cluster.sh")
    }

    fn up() -> Cluster {
        navcast::testing::require_tool("redis-server", "apt-get install -y redis-server");
        navcast::testing::require_tool("nginx", "apt-get install -y nginx");
        navcast::testing::require_tool("openssl", "apt-get install -y openssl");
        navcast::testing::require_tool("curl", "apt-get install -y curl");
        let dir = tempfile::tempdir().unwrap();
        let https = free_port();
        let env = vec![
            ("CLUSTER_DIR".into(), dir.path().display().to_string()),
            ("NODES".into(), "3".into()),
            ("NODE_BASE_PORT".into(), free_run(3).to_string()),
            ("REDIS_PORT".into(), free_port().to_string()),
            ("HTTP_PORT".into(), free_port().to_string()),
            ("HTTPS_PORT".into(), https.to_string()),
            ("NODE_BIN".into(), env!("CARGO_BIN_EXE_navcast").into()),
            // Cheap password hashing: the debug build hashes slowly.
            ("NAVCAST_AUTH_ARGON2_MEMORY_KIB".into(), "1024".into()),
            ("NAVCAST_AUTH_ARGON2_ITERATIONS".into(), "1".into()),
        ];
        let mut cluster = Cluster {
            ca: dir.path().join("tls/cert.pem"),
            dir,
            env,
            https,
            secret: String::new(),
        };
        let out = cluster.script("up");
        assert!(
            out.status.success(),
            "cluster up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.secret = std::fs::read_to_string(cluster.dir.path().join("jwt_secret")).unwrap();
        cluster
    }

    fn pid_of(&self, node_id: &str) -> i32 {
        let file = self.dir.path().join(format!("run/{node_id}.pid"));
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, node_id: &str, signal: &str) {
        let pid = self.pid_of(node_id);
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.https, path)
    }

    fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    }

    fn connector(&self) -> Connector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.ca).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Connector::Rustls(Arc::new(config))
    }

    /// A token minted with the cluster's secret, for riders that need no
    /// account record (spread test).
    fn token(&self, sub: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "exp": now + 600, "iat": now, "jti": sub, "type": "access"}),
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .unwrap()
    }

    async fn account(&self) -> (String, String) {
        let http = self.http();
        let email = format!("e2e-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "e2e password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let login: Value = http
            .post(self.url("/api/v1/auth/login"))
            .form(&[("username", email.as_str()), ("password", "e2e password")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            login["user_id"].as_str().unwrap().to_string(),
            login["access_token"].as_str().unwrap().to_string(),
        )
    }

    async fn connect(&self, user: &str, token: &str) -> Rider {
        let url = format!(
            "wss://127.0.0.1:{}/api/v1/ws/{user}?token={token}",
            self.https
        );
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(self.connector()),
        )
        .await
        .expect("wss connect through nginx");
        let mut rider = Rider {
            ws,
            node: String::new(),
            pushed: Vec::new(),
            next: 0,
        };
        let first = rider.frame().await.expect("connected");
        assert_eq!(first["type"], "connected");
        rider.node = first["node_id"].as_str().unwrap().to_string();
        rider
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

struct Rider {
    ws: Wss,
    node: String,
    pushed: Vec<Value>,
    next: u64,
}

impl Rider {
    /// The next text frame; `Err(code)` when the connection closed.
    async fn next(&mut self) -> Result<Value, Option<u16>> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("frame in time")
            {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Err(None),
            }
        }
    }

    async fn frame(&mut self) -> Option<Value> {
        self.next().await.ok()
    }

    async fn request(&mut self, mut v: Value) -> Value {
        self.next += 1;
        v["request_id"] = json!(self.next);
        self.ws.send(Message::text(v.to_string())).await.unwrap();
        loop {
            let f = self.frame().await.expect("reply");
            if f["request_id"] == json!(self.next) {
                return f;
            }
            self.pushed.push(f);
        }
    }

    async fn peer_event(&mut self) -> Value {
        if let Some(i) = self.pushed.iter().position(|f| f["type"] == "peer_event") {
            return self.pushed.remove(i);
        }
        loop {
            let f = self.frame().await.expect("peer event");
            if f["type"] == "peer_event" {
                return f;
            }
            self.pushed.push(f);
        }
    }
}

const STEPS: [(f64, f64); 4] = [
    (37.4979, 127.0276),
    (37.5006, 127.0364),
    (37.5045, 127.0489),
    (37.5088, 127.0633),
];

async fn connect_elsewhere(c: &Cluster, user: &str, token: &str, avoid: &str) -> Rider {
    for _ in 0..6 {
        let r = c.connect(user, token).await;
        if r.node != avoid {
            return r;
        }
    }
    panic!("nginx never chose another node than {avoid}");
}

/// Reconnects through nginx after the rider's node died, within 5 s.
async fn reconnect(c: &Cluster, user: &str, token: &str, dead: &str) -> Rider {
    let started = tokio::time::Instant::now();
    loop {
        let url = format!("wss://127.0.0.1:{}/api/v1/ws/{user}?token={token}", c.https);
        if let Ok((ws, _)) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(c.connector()))
                .await
        {
            let mut r = Rider {
                ws,
                node: String::new(),
                pushed: Vec::new(),
                next: 100,
            };
            if let Some(first) = r.frame().await {
                r.node = first["node_id"].as_str().unwrap().to_string();
                assert_ne!(r.node, dead, "nginx sent the rider to the dead node");
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "reconnect took {:?}",
                    started.elapsed()
                );
                return r;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reconnect within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riders_and_guardians_through_nginx_survive_node_failures() {
    let c = Cluster::up();
    // HTTP on the plain port redirects to HTTPS, except /health.
    let port_http: u16 = c
        .env
        .iter()
        .find(|(k, _)| k == "HTTP_PORT")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{port_http}/api/v1/stations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    let r = plain
        .get(format!("http://127.0.0.1:{port_http}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Operators' endpoints are not public.
    assert_eq!(
        c.http()
            .get(c.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let (rider_id, rider_token) = c.account().await;
    let (guardian_id, guardian_token) = c.account().await;
    let mut rider = c.connect(&rider_id, &rider_token).await;
    let mut guardian = connect_elsewhere(&c, &guardian_id, &guardian_token, &rider.node).await;
    assert_ne!(rider.node, guardian.node);

    let s = rider
        .request(json!({"type": "share_navigation", "guardian_id": guardian_id}))
        .await;
    assert_eq!(s["type"], "shared");
    let w = guardian
        .request(json!({"type": "watch", "user_id": rider_id}))
        .await;
    assert_eq!(w["type"], "watching");
    let calc = rider
        .request(json!({"type": "start_navigation", "origin": "강남", "destination": "잠실", "disability_type": "PHY"}))
        .await;
    assert_eq!(calc["type"], "route_calculated", "{calc}");
    let route_id = calc["route_id"].clone();
    for (lat, lon) in &STEPS[..2] {
        let u = rider.request(json!({"type": "location_update", "latitude": lat, "longitude": lon, "accuracy": 15})).await;
        assert_eq!(u["route_id"], route_id, "{u}");
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = guardian.peer_event().await;
        assert_eq!(ev["origin_node"], rider.node.as_str());
        seen.push(ev["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, vec![1, 2, 3], "every event, in order");

    // SIGKILL the rider's node: the rider reconnects through nginx to
    // another node within 5 s and carries on with the same route.
    let dead = rider.node.clone();
    c.signal(&dead, "-KILL");
    let mut rider = reconnect(&c, &rider_id, &rider_token, &dead).await;
    let u = rider
        .request(json!({"type": "location_update", "latitude": STEPS[2].0, "longitude": STEPS[2].1, "accuracy": 15}))
        .await;
    assert_eq!(
        u["route_id"], route_id,
        "route state survived in Redis: {u}"
    );
    assert_ne!(u["type"], "error");
    // The guardian still sees the rider's events, now from the new node.
    if guardian.node != dead {
        let ev = guardian.peer_event().await;
        assert_eq!(ev["origin_node"], rider.node.as_str());
        assert_eq!(ev["event"]["route_id"], route_id);
    }

    // SIGTERM the rider's new node: close 1001, reconnect, nothing lost.
    let draining = rider.node.clone();
    c.signal(&draining, "-TERM");
    let code = loop {
        match rider.next().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1001), "drain closes with 1001");
    let mut rider = reconnect(&c, &rider_id, &rider_token, &draining).await;
    let u = rider
        .request(json!({"type": "location_update", "latitude": STEPS[3].0, "longitude": STEPS[3].1, "accuracy": 15}))
        .await;
    assert_eq!(u["route_id"], route_id, "{u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_sessions_within_15_percent() {
    let c = Cluster::up();
    let mut riders = Vec::new();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let sub = uuid::Uuid::new_v4().to_string();
        let r = c.connect(&sub, &c.token(&sub)).await;
        *per_node.entry(r.node.clone()).or_default() += 1;
        riders.push(r);
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for (node, n) in &per_node {
        assert!(
            (17..=23).contains(n),
            "{node} has {n} of 60 sessions: {per_node:?}"
        );
    }
}
