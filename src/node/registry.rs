//! This node's record in the cluster's node registry (`/stats` `cluster`):
//! written every `bus.heartbeat_interval` to expire after three periods,
//! removed when the node stops.

use std::sync::Weak;
use std::time::Duration;

use super::{AppState, Inner};
use crate::store::NodeInfo;

/// This node's record for the registry.
fn node_info(state: &Inner) -> NodeInfo {
    NodeInfo {
        node_id: state.node_id.to_string(),
        sessions: state.sessions.len() as u64,
        started_at: state.started_at,
        heartbeat_at_ms: crate::clock::unix_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Writes the record every period until the node stops (or its state is
/// dropped). Holds only a weak reference, so it never keeps a node alive.
pub(super) async fn heartbeat(state: Weak<Inner>) {
    let (period, stopped) = match state.upgrade() {
        Some(inner) => (inner.config.bus.heartbeat_interval, inner.stopped.clone()),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = state.upgrade() else { return };
        let left = inner.registry_left.lock().await;
        if *left {
            return;
        }
        let info = node_info(&inner);
        let result = inner.stores.nodes.heartbeat(&info, period * 3).await;
        drop(left);
        match (result, failing) {
            (Ok(()), true) => {
                failing = false;
                tracing::info!(
                    event = "registry_heartbeat_recovered",
                    "node registry heartbeat works again"
                );
            }
            (Err(e), false) => {
                failing = true;
                tracing::warn!(event = "registry_heartbeat_failed", cause = %e, "node registry heartbeat failed; retrying every period");
            }
            _ => {}
        }
    }
}

/// Removes the record, after any heartbeat write in flight; a registry
/// that does not answer within a second leaves it to expire.
pub(super) async fn leave(state: &AppState) {
    // After this, no heartbeat writes the record again.
    let mut left = state.registry_left.lock().await;
    *left = true;
    if let Ok(Err(e)) = tokio::time::timeout(
        Duration::from_secs(1),
        state.stores.nodes.leave(&state.node_id),
    )
    .await
    {
        tracing::warn!(event = "registry_leave_failed", cause = %e, "node record left to expire");
    }
}
