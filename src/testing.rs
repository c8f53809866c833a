//! The test toolkit: real nodes, a real Redis, real HTTP and WebSocket
//! clients inside a test process, for this crate's integration tests, its
//! benches and navcast-load's tests (feature `test-support`; never in a
//! release build).
//!
//! Every suite needs the same things: a node on port 0 with cheap argon2
//! and a known secret, several nodes sharing one in-process bus and one set
//! of stores, a `redis-server` on a free port, an account to log in with, a
//! WebSocket client that pairs replies with requests, and `/stats` read over
//! real HTTP. Keeping them here means one definition of each.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::bus::Bus;
use crate::bus::local::{LocalBus, LocalHub};
use crate::store::Stores;
use crate::{AppState, Config, Parts};

/// The JWT secret of [`test_config`].
pub const TEST_SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node config for tests: port 0, cheap argon2 (1 MiB, one pass), a
/// known secret, no seed accounts, and per-address limits (logins, pending
/// connections) lifted: every test client is 127.0.0.1; the tests of those
/// limits set them.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Default::default()
    };
    c.jwt.secret = Some(TEST_SECRET.into());
    c.auth.argon2_memory_kib = 1024;
    c.auth.argon2_iterations = 1;
    c.auth.seed_file = None;
    c.state_dir = None;
    c.auth.attempts_per_address = 1_000_000;
    c.auth.hashes_per_address = 1_000_000;
    c.http.max_pending_per_address = 1_000_000;
    c
}

/// Fails the test, saying how to install it, unless `tool` is on `PATH`:
/// a missing part is a loud failure, never a skipped test.
pub fn require_tool(tool: &str, install: &str) {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()));
    assert!(on_path, "{tool} is required: {install}");
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A base port such that `base + o` is free on loopback for every `o` of
/// `offsets`: for scripts that number their ports from a base
/// (`scripts/cluster.sh`'s nodes, `storm.sh`, `scale.sh`).
pub fn free_ports_at(offsets: &[u16]) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 20_000;
        if offsets
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports at offsets {offsets:?} of any base");
}

/// Polls `check` every 20 ms until it holds; fails the test, naming `what`,
/// if it does not within `limit`. For state that has no event to await
/// (`/stats` counters, `/ready`); `limit` is a bound on a hang, not a
/// latency target.
pub async fn poll_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node serving on a loopback port until [`TestNode::stop`] or drop.
pub struct TestNode {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        TestNode::start_with(config, Parts::default()).await
    }

    pub async fn start_with(config: Config, parts: Parts) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let state = AppState::build(config, parts).await.expect("node builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        TestNode {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// One node `node-a` with [`test_config`] changed by `tweak`.
    pub async fn single(tweak: impl Fn(&mut Config)) -> TestNode {
        let mut c = test_config();
        c.node_id = "node-a".into();
        tweak(&mut c);
        TestNode::start(c).await
    }

    /// Nodes `node-a`, `node-b`, … sharing one in-process bus and one set
    /// of stores.
    pub async fn cluster(n: usize, tweak: impl Fn(&mut Config)) -> Vec<TestNode> {
        TestNode::cluster_with(n, tweak, |b| b).await
    }

    /// As [`TestNode::cluster`]; `wrap` may wrap each node's bus (a test
    /// that drops messages).
    pub async fn cluster_with(
        n: usize,
        tweak: impl Fn(&mut Config),
        wrap: impl Fn(Arc<dyn Bus>) -> Arc<dyn Bus>,
    ) -> Vec<TestNode> {
        let hub = Arc::new(LocalHub::default());
        let stores = Stores::memory();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut c = test_config();
            c.node_id = format!("node-{}", (b'a' + i as u8) as char);
            tweak(&mut c);
            let bus: Arc<dyn Bus> = Arc::new(LocalBus::on(hub.clone()));
            let parts = Parts {
                bus: Some(wrap(bus)),
                stores: Some(stores.clone()),
            };
            nodes.push(TestNode::start_with(c, parts).await);
        }
        nodes
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The WebSocket base URL, `ws://addr`.
    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn ws_url(&self, user_id: &str, token: &str) -> String {
        format!("ws://{}/api/v1/ws/{}?token={}", self.addr, user_id, token)
    }

    /// The body of `GET path`, over a real HTTP/1.0 request as an operator
    /// (or Prometheus) makes it; anything but 200 fails the test.
    async fn get(&self, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("node accepts");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .expect("request sent");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("response read");
        let text = String::from_utf8(raw).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.0 200"), "{path}: {head}");
        body.to_string()
    }

    /// `GET /stats`, parsed.
    pub async fn stats(&self) -> Value {
        serde_json::from_str(&self.get("/stats").await).expect("/stats is JSON")
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await
    }

    /// Polls `/stats` until the node counts `n` sessions (closing sessions
    /// finish their close handshake asynchronously).
    pub async fn wait_sessions(&self, n: u64) {
        self.wait_sessions_within(n, WAIT).await
    }

    /// [`wait_sessions`](Self::wait_sessions) with its own time limit, for
    /// load-client runs that ramp their riders up over seconds.
    pub async fn wait_sessions_within(&self, n: u64, limit: Duration) {
        poll_until(&format!("node reaches {n} sessions"), limit, async || {
            self.stats().await["sessions"] == n
        })
        .await
    }

    /// The HTTP status of `GET /ready`.
    pub async fn ready_status(&self) -> u16 {
        reqwest::get(self.http("/ready"))
            .await
            .expect("node answers /ready")
            .status()
            .as_u16()
    }

    /// Polls `/ready` until it answers 200 (`true`) or 503 (`false`).
    pub async fn wait_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        let what = format!("{} answers /ready {want}", self.state.node_id);
        poll_until(&what, Duration::from_secs(15), async || {
            self.ready_status().await == want
        })
        .await
    }

    /// Starts the drain (sessions get 1001) and waits for the node to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A registered, logged-in account.
#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub user_id: String,
    pub access: String,
    pub refresh: String,
}

/// Registers an account with a unique email at `base` (`http://host:port`
/// or an https URL through a proxy) and logs in with the form body, as the
/// reference clients do.
pub async fn register_and_login(
    http: &reqwest::Client,
    base: &str,
    disability_type: Option<&str>,
) -> Account {
    let email = format!("rider-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery".to_string();
    let mut body = json!({ "email": email, "password": password });
    if let Some(t) = disability_type {
        body["disability_type"] = json!(t);
    }
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .expect("register answers");
    let status = r.status();
    assert_eq!(
        status,
        201,
        "register: {}",
        r.text().await.unwrap_or_default()
    );
    let login: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .form(&[
            ("username", email.as_str()),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .expect("login answers")
        .json()
        .await
        .expect("login answers JSON");
    let field = |name: &str| {
        login[name]
            .as_str()
            .unwrap_or_else(|| panic!("login without {name}: {login}"))
            .to_string()
    };
    Account {
        user_id: field("user_id"),
        access: field("access_token"),
        refresh: field("refresh_token"),
        email,
        password,
    }
}

/// [`register_and_login`] on `node` directly.
pub async fn account(node: &TestNode, disability_type: Option<&str>) -> Account {
    register_and_login(&reqwest::Client::new(), &node.http(""), disability_type).await
}

/// `POST /api/v1/auth/refresh` on `node`: the new token pair.
pub async fn refresh(node: &TestNode, refresh_token: &str) -> Value {
    reqwest::Client::new()
        .post(node.http("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .expect("refresh answers")
        .json()
        .await
        .expect("refresh answers JSON")
}

/// A WebSocket client that pairs replies by `request_id` and keeps pushed
/// frames (peer events, token warnings) aside. Generic over the stream, so
/// the same client speaks plain `ws://` to a test node and wss through
/// nginx ([`Client::from_ws`]).
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    pub ws: WebSocketStream<S>,
    /// The `connected` frame the session began with.
    pub connected: Value,
    /// Frames that answered no request, oldest first.
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
        Client::from_ws(ws).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps an upgraded socket; reads and checks its `connected` frame.
    pub async fn from_ws(ws: WebSocketStream<S>) -> Client<S> {
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

    /// The `node_id` of the `connected` frame: the node serving this session.
    pub fn node_id(&self) -> &str {
        self.connected["node_id"].as_str().expect("node_id")
    }

    /// The next text frame as JSON; `None` when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time")
            {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("JSON frame"));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await
    }

    /// Sends `text` as it is, valid JSON or not.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("frame sent");
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
            return self.pushed.remove(i).expect("position is in range");
        }
        loop {
            let frame = self.next_frame().await.expect("pushed frame before close");
            if frame["type"] == kind {
                return frame;
            }
            self.pushed.push_back(frame);
        }
    }

    /// Fails unless no frame of `kind` is pending after a ping round trip:
    /// whatever the node sent before its pong has arrived by then, so
    /// duplicates or extra events already sent would show here.
    pub async fn assert_none_pending(&mut self, kind: &str) {
        let pong = self.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        assert!(
            self.pushed.iter().all(|f| f["type"] != kind),
            "{kind} pending: {:?}",
            self.pushed
        );
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

/// A masked client ping frame with the largest control payload, 125 bytes
/// (RFC 6455 §5.2, §5.5: opcode 0x9 with FIN, mask bit and length, a
/// 4-byte mask, the payload), so each one asks for a 127-byte pong.
pub fn raw_ping() -> Vec<u8> {
    let mut frame = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    frame.extend(std::iter::repeat_n(b'p', 125));
    frame
}

/// Connects, reads `connected`, and hands back the raw TCP stream, so the
/// test can write frames and never read again.
pub async fn raw_session(node: &TestNode, acct: &Account) -> TcpStream {
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url(&acct.user_id, &acct.access))
        .await
        .expect("ws connect");
    let first = ws.next().await.expect("connected").expect("frame");
    assert!(
        first.to_text().unwrap().contains("\"connected\""),
        "{first}"
    );
    match ws.into_inner() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => panic!("plain ws expected"),
    }
}

/// Writes client pings as fast as the socket takes them, never reading,
/// until the node drops the connection or `limit` passes. True if the node
/// dropped it.
pub async fn ping_flood(tcp: &mut TcpStream, limit: Duration) -> bool {
    let burst: Vec<u8> = raw_ping().repeat(500);
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // A timeout means the node stopped reading for now (its buffers
        // are full); only a write error means the connection is gone.
        let write = tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&burst));
        if let Ok(Err(_)) = write.await {
            return true;
        }
    }
    false
}

/// The value of the counter `name` in a `/metrics` text; fails the test
/// when it is not there.
pub fn metric_counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics"))
}

/// Attempts an upgrade and returns the HTTP status of a refusal (or 101)
/// and its `Retry-After`.
pub async fn handshake_status(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = url.into_client_request().expect("a ws URL");
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, None),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ASCII Retry-After").to_string()),
        ),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// The handshake status of `user`'s WebSocket URL on `node` with `token`.
pub async fn token_status(node: &TestNode, user: &str, token: &str) -> u16 {
    handshake_status(&node.ws_url(user, token), &[]).await.0
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

/// A rider and a guardian watching the rider's navigation, each with a
/// session ([`watched_rider`]).
pub struct Watched {
    pub rider: Account,
    pub guardian: Account,
    /// The rider's session.
    pub r: Client,
    /// The guardian's session, watching the rider.
    pub g: Client,
}

/// Registers a rider on `rider_node` and a guardian on `guardian_node`
/// (the same node or another of one cluster), connects both there, and has
/// the rider share with the guardian, who then watches.
pub async fn watched_rider(rider_node: &TestNode, guardian_node: &TestNode) -> Watched {
    let rider = account(rider_node, None).await;
    let guardian = account(guardian_node, None).await;
    let mut r = Client::connect(rider_node, &rider).await;
    let mut g = Client::connect(guardian_node, &guardian).await;
    share_and_watch(&mut r, &mut g, &rider.user_id, &guardian.user_id).await;
    Watched {
        rider,
        guardian,
        r,
        g,
    }
}

/// Coordinates of a few stations, for location updates.
pub const YEOKSAM: (f64, f64) = (37.5006, 127.0364);
pub const GANGNAM: (f64, f64) = (37.4979, 127.0276);
pub const HONGDAE: (f64, f64) = (37.5579, 126.9227);
pub const SEOUL_STATION: (f64, f64) = (37.5547, 126.9707);

const REDIS_MISSING: &str = "apt-get install -y redis-server";

/// Fails the test with the install hint unless `redis-server` is on `PATH`.
pub fn require_redis_server() {
    require_tool("redis-server", REDIS_MISSING);
}

/// A real `redis-server` for a test: started on a free loopback port in
/// its own temporary directory, without persistence, and killed on drop.
///
/// Tests that need Redis fail loudly when `redis-server` is missing; they
/// never skip, because a skipped cluster test hides exactly the failures it
/// exists to catch.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_on(free_port()).await
    }

    /// Starts a server on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> RedisServer {
        require_redis_server();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL (no shutdown, no goodbye to clients)
    /// and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGSTOP: its connections stay open and it
    /// answers nothing, as a hung Redis does; [`resume`](Self::resume) ends it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("redis-server running"), signal);
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)),
    /// empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.child = Some(spawn_redis(
            self.port,
            self.dir.path(),
            &["--appendonly", "no"],
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if redis_ping(self.port).await {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited with {status} on port {}", self.port);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer PING in 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on loopback `port` with its files in `dir`, no RDB
/// snapshots, quiet logs, and `extra` flags.
fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            dir.to_str().expect("utf-8 temp dir"),
            "--loglevel",
            "warning",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); {REDIS_MISSING}"))
}

/// A real Redis Cluster on loopback: `masters` masters with one replica
/// each (`redis-server --cluster-enabled yes`, joined with `CLUSTER
/// ADDSLOTSRANGE`/`MEET`/`REPLICATE`), each server in its own directory with an
/// append-only file, and a 2 s `cluster-node-timeout` so a failover takes
/// seconds. Killed on drop.
pub struct RedisCluster {
    /// The servers' ports; each one's cluster bus is its port + 10 000.
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

impl RedisCluster {
    /// Starts `2 × masters` servers, creates the cluster and waits until
    /// every server reports `cluster_state:ok` and every replica is in
    /// sync.
    pub async fn start(masters: usize) -> RedisCluster {
        require_redis_server();
        let n = masters * 2;
        let offsets: Vec<u16> = (0..n as u16)
            .chain((0..n as u16).map(|o| o + 10_000))
            .collect();
        let base = free_ports_at(&offsets);
        let ports: Vec<u16> = (0..n as u16).map(|o| base + o).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = RedisCluster {
            ports: ports.clone(),
            children: Vec::new(),
            dir,
        };
        for &port in &ports {
            let child = cluster.spawn(port);
            cluster.children.push(Some(child));
        }
        for &port in &ports {
            poll_until("a cluster server answers PING", WAIT, async || {
                redis_ping(port).await
            })
            .await;
        }
        // Joined by hand rather than with `redis-cli --cluster create`,
        // which refuses fewer than 3 masters: slots split evenly over the
        // masters, everyone meets the first server, replica i follows
        // master i.
        for (i, &port) in ports[..masters].iter().enumerate() {
            let first = i * 16384 / masters;
            let last = (i + 1) * 16384 / masters - 1;
            let (first, last) = (first.to_string(), last.to_string());
            let ok = cluster_command(port, &["CLUSTER", "ADDSLOTSRANGE", &first, &last]).await;
            assert_eq!(ok, "OK", "CLUSTER ADDSLOTSRANGE on {port}");
        }
        let first = ports[0].to_string();
        for &port in &ports[1..] {
            let ok = cluster_command(port, &["CLUSTER", "MEET", "127.0.0.1", &first]).await;
            assert_eq!(ok, "OK", "CLUSTER MEET from {port}");
        }
        for &port in &ports {
            poll_until(
                "every cluster server knows every other",
                WAIT * 3,
                async || {
                    cluster_command(port, &["CLUSTER", "INFO"])
                        .await
                        .contains(&format!("cluster_known_nodes:{n}"))
                },
            )
            .await;
        }
        for i in 0..masters {
            let id = cluster_command(ports[i], &["CLUSTER", "MYID"]).await;
            let replica = ports[masters + i];
            poll_until("a replica follows its master", WAIT * 3, async || {
                cluster_command(replica, &["CLUSTER", "REPLICATE", &id]).await == "OK"
            })
            .await;
        }
        for &port in &ports {
            poll_until(
                "every cluster server reports state ok",
                WAIT * 3,
                async || {
                    let info = cluster_command(port, &["CLUSTER", "INFO"]).await;
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_size:{masters}"))
                },
            )
            .await;
        }
        for &replica in &ports[masters..] {
            poll_until("every replica is in sync", WAIT * 3, async || {
                cluster_command(replica, &["INFO", "replication"])
                    .await
                    .contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    fn spawn(&self, port: u16) -> Child {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).expect("server dir");
        spawn_redis(
            port,
            &dir,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
        )
    }

    /// The seed list for `NAVCAST_REDIS_URL` with `redis_mode = "cluster"`:
    /// every server.
    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the live masters that own slots, as `CLUSTER NODES`
    /// on a live server says.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters = Vec::new();
        for (i, &port) in self.ports.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let nodes = cluster_command(port, &["CLUSTER", "NODES"]).await;
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                // id addr flags master ping pong epoch link slots…
                if fields.len() > 8
                    && fields[2].contains("master")
                    && !fields[2].contains("fail")
                    && let Some(p) = fields[1]
                        .split('@')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                {
                    masters.push(p);
                }
            }
            masters.sort_unstable();
            return masters;
        }
        masters
    }

    /// How often the server on `port` ran `command` (`cmdstat_<command>`
    /// of `INFO commandstats`, calls made by scripts included), or 0.
    pub async fn calls(&self, port: u16, command: &str) -> u64 {
        let info = cluster_command(port, &["INFO", "commandstats"]).await;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the server on `port` with SIGKILL and waits until it is gone.
    pub fn kill(&mut self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|&p| p == port)
            .expect("a cluster port");
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `dead` (a killed master) owns no slots any more: its
    /// replica was promoted, `masters` masters own every slot, and every
    /// live server reports `cluster_state:ok`.
    pub async fn wait_promoted(&self, dead: u16, masters: usize) {
        poll_until(
            "a replica takes over the killed master's slots",
            WAIT * 3,
            async || {
                let now = self.masters().await;
                now.len() == masters && !now.contains(&dead)
            },
        )
        .await;
        let live: Vec<u16> = self
            .ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect();
        for port in live {
            poll_until(
                "every live server reports cluster_state:ok",
                WAIT * 3,
                async || {
                    let info = cluster_command(port, &["CLUSTER", "INFO"]).await;
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                },
            )
            .await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One command to the server on `port` (not routed), its reply as text;
/// an empty string when it cannot answer.
async fn cluster_command(port: u16, args: &[&str]) -> String {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(s)) => s,
        _ => String::new(),
    }
}

/// Sends `signal` (e.g. `TERM`, `STOP`) to `child` with `kill`; fails the
/// test if it cannot.
fn send_signal(child: &Child, signal: &str) {
    let pid = child.id();
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Whether a Redis server on `port` answers PING.
async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// A node as its own process (the `navcast` binary a test names, e.g.
/// `env!("CARGO_BIN_EXE_navcast")`), for what only a process shows: a real
/// SIGTERM, an open-file limit, the log on stderr. Killed on drop.
pub struct NodeProcess {
    pub port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
    /// The node's `state_dir` unless `env` names another.
    _state: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts `bin` on a free loopback port with the test secret, cheap
    /// argon2, JSON logs and `env` on top; `max_files` sets the open-file
    /// limit (soft and hard) with the shell's `ulimit -n`. Waits for
    /// `/health`.
    pub async fn start(bin: &str, env: &[(&str, &str)], max_files: Option<u32>) -> NodeProcess {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let state = tempfile::tempdir().expect("state dir");
        let limit = max_files
            .map(|n| format!("ulimit -n {n} && "))
            .unwrap_or_default();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("{limit}exec \"$0\""), bin])
            .env("NAVCAST_LISTEN", format!("127.0.0.1:{port}"))
            .env("NAVCAST_NODE_ID", "node-p")
            .env("NAVCAST_JWT_SECRET", TEST_SECRET)
            .env("NAVCAST_AUTH_ARGON2_MEMORY_KIB", "1024")
            .env("NAVCAST_AUTH_ARGON2_ITERATIONS", "1")
            .env("NAVCAST_AUTH_SEED_FILE", "")
            .env("NAVCAST_AUTH_ATTEMPTS_PER_ADDRESS", "1000000")
            .env("NAVCAST_AUTH_HASHES_PER_ADDRESS", "1000000")
            .env("NAVCAST_HTTP_MAX_PENDING_PER_ADDRESS", "1000000")
            .env("NAVCAST_LOG_FORMAT", "json")
            .env("NAVCAST_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .stdout(append(log.path()))
            .stderr(append(log.path()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut node = NodeProcess {
            port,
            child: Some(child),
            log,
            _state: state,
        };
        let url = node.http("/health");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return node;
            }
            if let Some(status) = node.try_status() {
                panic!("node exited with {status}: {}", node.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node did not answer /health in 30 s: {}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, user_id: &str, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/api/v1/ws/{user_id}?token={token}",
            self.port
        )
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `TERM`) with `kill`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("running"), signal);
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to exit; fails the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node still running {limit:?} later: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `path` opened for appending, so stdout and stderr can share it.
fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("log file")
}

/// Reads until the peer closes the connection (EOF or reset); fails the
/// test after `limit`. Returns what was read.
pub async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    assert!(
        tokio::time::timeout(limit, read).await.is_ok(),
        "connection still open after {limit:?}"
    );
    got
}
