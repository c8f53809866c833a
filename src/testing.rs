//! Real nodes inside a test process, for this crate's integration tests and
//! for navcast-load's (feature `test-support`; never in a release build).
//!
//! Both test suites need the same thing: a node on port 0 with cheap
//! argon2 and a known secret, several nodes sharing one in-process bus and
//! one set of stores, `/stats` read over real HTTP, and a drain on stop.
//! Keeping it here means one definition of "a node in a test".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::bus::local::{LocalBus, LocalHub};
use crate::store::Stores;
use crate::{AppState, Config, Parts};

/// The JWT secret of [`test_config`].
pub const TEST_SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node config for tests: port 0, cheap argon2 (1 MiB, one pass), a
/// known secret, no seed accounts.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Default::default()
    };
    c.jwt.secret = Some(TEST_SECRET.into());
    c.auth.argon2_memory_kib = 1024;
    c.auth.argon2_iterations = 1;
    c.auth.seed_file = None;
    c
}

/// Fails the test, saying how to install it, unless `tool` is on `PATH`:
/// a missing part is a loud failure, never a skipped test.
pub fn require_tool(tool: &str, install: &str) {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()));
    assert!(on_path, "{tool} is required: {install}");
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
        let deadline = tokio::time::Instant::now() + limit;
        while self.stats().await["sessions"] != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never reached {n} sessions in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
