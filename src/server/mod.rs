//! Serving a node: the router, the listener, and the drain on shutdown.
//!
//! [`run`] takes a bound listener, a config and a shutdown future, which is
//! what lets tests start any number of nodes on port 0 in one process.
//! This is the only place that knows every HTTP surface (`ws`, `auth`,
//! `ops`); each of them exports its own `router()`.
//!
//! The accept loop is ours rather than `axum::serve`'s because a node must
//! bound what a connection holds before it is a session (a header-read
//! timeout, a cap on such connections, a back-off when the process runs
//! out of files) and must keep accepting while it drains, so that probes
//! and upgrades get the documented 503 rather than a refused connection.

mod accept;
mod conn;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::node::{AppState, Parts};

/// Every route of a node.
/// The node's listening socket on `addr`, with `backlog` places for
/// connections the node has not accepted yet (tokio's `bind` gives 1024).
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::ws::router())
        .merge(crate::auth::http::router())
        .merge(crate::ops::router())
        .layer(axum::middleware::from_fn(crate::request_id::span))
        .with_state(state)
}

/// Runs a node until `shutdown` resolves, then drains and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::build(config, Parts::default()).await?;
    serve(listener, state, shutdown).await
}

/// Serves an already built node until `shutdown`, then drains: sessions
/// are closed with 1001 after the requests they already sent are answered,
/// HTTP connections finish their request in hand, and new connections are
/// still accepted (and answered 503 on `/ready` and upgrades) until every
/// session and connection is gone or `shutdown.drain_timeout` has passed,
/// whichever is first. Whatever is left then is dropped.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(
        event = "node_started",
        node_id = %state.node_id,
        listen = %addr,
        bus = state.bus.kind(),
        stations = state.engine().network().stations().len(),
        max_sessions = state.connections.max(),
        max_pending = state.pending.max(),
        open_files = crate::files::soft_limit().map(|n| n.to_string()).unwrap_or_else(|| "unlimited".into()),
        "navcast node listening"
    );
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    let acceptor = tokio::spawn(accept::run(
        listener,
        state.clone(),
        router(state.clone()),
        connections.clone(),
        force.clone(),
    ));
    shutdown.await;
    state.begin_drain();
    state.tasks.close();
    connections.close();
    let timeout = state.config.shutdown.drain_timeout;
    let drained = tokio::time::timeout(timeout, async {
        state.tasks.wait().await;
        connections.wait().await;
    })
    .await
    .is_ok();
    // Stop accepting and drop whatever is still open.
    force.cancel();
    let _ = acceptor.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    state.stopped().await;
    tracing::info!(
        event = "drain_finished",
        complete = drained,
        remaining_sessions = state.sessions.len(),
        remaining_connections = connections.len(),
        "node stopped"
    );
    Ok(())
}
