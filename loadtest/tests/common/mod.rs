//! Real navcast nodes on port 0 for the load client's tests, and a way to
//! run the real CLI in-process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use navcast::bus::Bus;
use navcast::store::Stores;
use navcast::{AppState, Config, Parts};
use navcast_load::{Cli, Outcome};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "load-test-secret-0123456789abcdef-0123456789";

/// Cheap argon2 and a known secret, as the node's own tests use.
pub fn test_config(node_id: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: node_id.to_string(),
        ..Default::default()
    };
    c.jwt.secret = Some(SECRET.into());
    c.auth.argon2_memory_kib = 1024;
    c.auth.argon2_iterations = 1;
    c.auth.seed_file = None;
    c
}

pub struct Node {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    pub async fn start(config: Config, parts: Parts) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::build(config, parts).await.expect("node builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(navcast::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Node {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn single(tweak: impl Fn(&mut Config)) -> Node {
        let mut c = test_config("node-a");
        tweak(&mut c);
        Node::start(c, Parts::default()).await
    }

    /// Nodes sharing one set of stores and a bus; `wrap` may wrap each
    /// node's bus (to drop messages).
    pub async fn cluster(
        n: usize,
        tweak: impl Fn(&mut Config),
        wrap: impl Fn(Arc<dyn Bus>) -> Arc<dyn Bus>,
    ) -> Vec<Node> {
        let hub = Arc::new(navcast::bus::local::LocalHub::default());
        let stores = Stores::memory();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut c = test_config(&format!("node-{}", (b'a' + i as u8) as char));
            tweak(&mut c);
            let bus: Arc<dyn Bus> = Arc::new(navcast::bus::local::LocalBus::on(hub.clone()));
            nodes.push(
                Node::start(
                    c,
                    Parts {
                        bus: Some(wrap(bus)),
                        stores: Some(stores.clone()),
                    },
                )
                .await,
            );
        }
        nodes
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("http://{}/stats", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Starts the drain (sessions get 1001) and waits for the node to stop.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn profile(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "config", "loadtest", name]
        .iter()
        .collect();
    p.display().to_string()
}

/// Runs the real CLI in-process.
pub async fn cli(args: &[&str]) -> anyhow::Result<Option<Outcome>> {
    let mut argv = vec!["navcast-load"];
    argv.extend_from_slice(args);
    navcast_load::run(Cli::parse_from(argv)).await
}

/// `messages_in` of one type, summed over nodes.
pub async fn messages_in(nodes: &[&Node], kind: &str) -> u64 {
    let mut n = 0;
    for node in nodes {
        n += node.stats().await["messages_in"][kind]
            .as_u64()
            .unwrap_or(0);
    }
    n
}
