//! Serving a node: the router, the listener, and the drain on shutdown.
//!
//! [`run`] takes a bound listener, a config and a shutdown future, which is
//! what lets tests start any number of nodes on port 0 in one process.
//! This is the only place that knows every HTTP surface (`ws`, `auth`,
//! `ops`); each of them exports its own `router()`.

use std::future::Future;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::{AppState, Parts};

/// Every route of a node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::ws::router())
        .merge(crate::auth::http::router())
        .merge(crate::ops::router())
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

/// Serves an already built node until `shutdown`, then drains.
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
        "navcast node listening"
    );
    let drain_state = state.clone();
    let app = router(state.clone());
    // Frames are small and latency matters more than packet count: without
    // TCP_NODELAY a frame written while the previous one is unacknowledged
    // waits for the peer's delayed ACK (up to 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(event = "tcp_nodelay_failed", cause = %e, "TCP_NODELAY not set");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        drain_state.begin_drain();
    });
    server.await?;
    // The listener is closed; sessions were told to close. Wait for them.
    state.begin_drain();
    state.tasks.close();
    let timeout = state.config.shutdown.drain_timeout;
    let drained = tokio::time::timeout(timeout, state.tasks.wait())
        .await
        .is_ok();
    state.stopped().await;
    tracing::info!(
        event = "drain_finished",
        complete = drained,
        remaining = state.sessions.len(),
        "node stopped"
    );
    Ok(())
}
