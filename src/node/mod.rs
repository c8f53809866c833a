//! The node: its shared state, how it is built, and fan-out.
//!
//! [`AppState`] is a cheap handle over everything a node's tasks share. It
//! sits below the parts that serve requests (`ws`, `ops`, `auth::http`):
//! they read it, it knows nothing of them, and `server` puts them together.
//! Handlers that need one part take a narrow sub-state through axum's
//! `FromRef` (see the impls below) instead of the whole node.
//!
//! - `build.rs` — [`AppState::build`]: network, engine, auth, stores, bus.
//! - `fanout.rs` — [`Fanout`]: publish, deliver, gaps, replace, revoke.
//! - `registry.rs` — this node's heartbeat in the cluster's node registry.

mod build;
mod fanout;
mod registry;

pub use build::Parts;
pub(crate) use fanout::Fanout;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthService;
use crate::auth::http::AuthApi;
use crate::bus::Bus;
use crate::config::Config;
use crate::limits::ConnectionLimit;
use crate::metrics::Metrics;
use crate::navigation::NavDeps;
use crate::session::Sessions;
use crate::store::Stores;
use crate::transit::RouteEngine;

/// Everything a node shares between its tasks. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    /// The merged configuration; read-only after start.
    pub config: Config,
    /// This node's id, in every `connected` frame and bus envelope.
    pub node_id: Arc<str>,
    /// Accounts, passwords, token minting and verification.
    pub(crate) auth: Arc<AuthService>,
    /// Shared state (memory or Redis).
    pub(crate) stores: Stores,
    /// What a session's [`crate::navigation::Navigator`] works with: the
    /// route engine (with its LRU cache), the tracker, the route store.
    pub(crate) navigation: Arc<NavDeps>,
    /// This node's sessions and watch subscriptions.
    pub(crate) sessions: Arc<Sessions>,
    /// The cross-node event bus; publishing goes through `fanout`.
    pub(crate) bus: Arc<dyn Bus>,
    /// Delivers every navigation event to whoever should see it.
    pub(crate) fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    /// Sessions plus upgrades in flight, checked before an upgrade so a
    /// burst cannot overshoot `ws.max_connections`.
    pub(crate) connections: Arc<ConnectionLimit>,
    /// The Redis watchdog, when the node uses Redis.
    pub(crate) redis_health: Option<Arc<crate::redis_conn::Health>>,
    /// `http.trusted_proxies`, shared with the auth endpoints.
    pub(crate) trusted_proxies: Arc<[crate::config::Network]>,
    /// Accepted connections that are not sessions, under `http.max_pending`.
    pub(crate) pending: Arc<ConnectionLimit>,
    /// Cancelled when draining starts: every session closes with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Every session task, so a drain can wait for them (axum does not
    /// wait for upgraded connections on graceful shutdown).
    pub(crate) tasks: TaskTracker,
    /// Set when draining starts: `/ready` 503, no new upgrades.
    pub draining: AtomicBool,
    /// When the node started, for `/stats` uptime.
    pub started: Instant,
    /// Unix seconds at start, for the node registry.
    started_at: i64,
    /// Cancelled when the server stops: the registry heartbeat ends.
    stopped: CancellationToken,
    /// Held around every registry write; `true` once this node has left.
    /// A heartbeat already on its way when the node stops would otherwise
    /// write the record back after `leave` removed it.
    registry_left: tokio::sync::Mutex<bool>,
}

/// See [`AppState::readiness`].
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub draining: bool,
    pub bus: bool,
    pub redis: bool,
    pub ready: bool,
}

impl AppState {
    /// Whether the node can serve: not draining, and the bus reachable
    /// (or configured to serve degraded).
    pub fn is_ready(&self) -> bool {
        self.readiness().ready
    }

    /// One reading of everything readiness depends on, so `/ready`'s
    /// status and body agree.
    pub fn readiness(&self) -> Readiness {
        let draining = self.draining.load(Ordering::Acquire);
        let bus = self.bus.is_connected();
        let redis = self.redis_up();
        Readiness {
            draining,
            bus,
            redis,
            ready: !draining && ((bus && redis) || self.config.bus.ready_when_degraded),
        }
    }

    /// Whether Redis answers its health check (true without Redis).
    pub fn redis_up(&self) -> bool {
        self.redis_health.as_ref().is_none_or(|h| h.is_up())
    }

    /// The route engine, for station search and cache statistics.
    pub(crate) fn engine(&self) -> &Arc<RouteEngine> {
        &self.navigation.engine
    }

    /// Starts a drain: `/ready` turns 503, upgrades are refused, and every
    /// session is told to close with 1001.
    pub fn begin_drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!(
                event = "drain_started",
                sessions = self.sessions.len(),
                "draining"
            );
        }
        self.shutdown.cancel();
    }

    /// Called once the server has stopped: ends the registry heartbeat and
    /// removes this node's record.
    pub(crate) async fn stopped(&self) {
        self.stopped.cancel();
        registry::leave(self).await;
    }
}

impl FromRef<AppState> for AuthApi {
    fn from_ref(state: &AppState) -> AuthApi {
        AuthApi {
            auth: state.auth.clone(),
            metrics: state.metrics.clone(),
            trusted_proxies: state.trusted_proxies.clone(),
            revocations: state.fanout.clone(),
        }
    }
}

impl FromRef<AppState> for Arc<RouteEngine> {
    fn from_ref(state: &AppState) -> Arc<RouteEngine> {
        state.navigation.engine.clone()
    }
}
