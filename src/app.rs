//! The node: shared state, the router, fan-out, and the run/drain cycle.
//!
//! [`run`] takes a bound listener, a config and a shutdown future, which is
//! what lets tests start any number of nodes on port 0 in one process.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::Utf8Bytes;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthService, JwtKeys};
use crate::bus::local::LocalBus;
use crate::bus::redis::{BusCounters, RedisBus};
use crate::bus::{Bus, Envelope, Payload};
use crate::clock::unix_us;
use crate::config::{BusTopology, Config};
use crate::metrics::Metrics;
use crate::network::{Network, Profiles, RouteEngine, Tracker, TrackerConfig};
use crate::protocol::{PeerEventFrame, ServerMessage, close};
use crate::session::{SessionHandle, Sessions};
use crate::store::{NodeInfo, Stores};

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
    pub auth: AuthService,
    /// Shared state (memory or Redis).
    pub stores: Stores,
    /// Routes over the network data; shared, with its own LRU cache.
    pub engine: Arc<RouteEngine>,
    /// Progress along a route; stateless apart from its config.
    pub tracker: Tracker,
    /// This node's sessions and watch subscriptions.
    pub sessions: Sessions,
    /// The cross-node event bus.
    pub bus: Arc<dyn Bus>,
    pub metrics: Metrics,
    /// Cancelled when draining starts: every session closes with 1001.
    pub shutdown: CancellationToken,
    /// Every session task, so a drain can wait for them (axum does not
    /// wait for upgraded connections on graceful shutdown).
    pub tasks: TaskTracker,
    /// Set when draining starts: `/ready` 503, no new upgrades.
    pub draining: AtomicBool,
    /// Sessions plus upgrades in flight, checked against the limit before
    /// an upgrade so a burst cannot overshoot it.
    connections: AtomicUsize,
    /// Sequence of envelopes this node published.
    node_seq: AtomicU64,
    /// Held while an envelope is numbered and handed to the bus (both
    /// non-blocking), so envelopes leave in `node_seq`/`seq` order.
    publish_order: parking_lot::Mutex<()>,
    /// Last `node_seq` seen per origin node, for gap counting (topology
    /// `broadcast`, where every node sees every envelope).
    last_seen: DashMap<String, u64>,
    /// Last `seq` seen per user and origin node, for gap counting (topology
    /// `targeted`, where a node sees only the users it is interested in).
    /// Forgotten when the node loses interest in the user, so a later
    /// subscription does not count the events it was not subscribed for.
    last_user_seq: DashMap<String, Vec<(String, u64)>>,
    pub started: Instant,
    /// Unix seconds at start, for the node registry.
    started_at: i64,
    /// Cancelled when `serve` returns: the registry heartbeat stops.
    stopped: CancellationToken,
}

/// A reserved place under `ws.max_connections`; released on drop.
pub struct ConnectionSlot(AppState);

impl ConnectionSlot {
    pub fn acquire(state: &AppState) -> Option<ConnectionSlot> {
        let max = state.config.ws.max_connections;
        state
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(state.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Optional parts a caller may supply instead of the defaults.
#[derive(Default)]
pub struct Parts {
    /// Defaults to a Redis bus when `redis_url` is set, else a bus of this
    /// node alone.
    pub bus: Option<Arc<dyn Bus>>,
    /// Defaults to Redis stores when `redis_url` is set, else in-memory
    /// stores.
    pub stores: Option<Stores>,
}

impl AppState {
    /// Builds a node's state: network, engine, auth, stores, bus.
    pub async fn build(config: Config, parts: Parts) -> anyhow::Result<AppState> {
        let network = match &config.data_dir {
            Some(dir) => Arc::new(Network::load_dir(dir)?),
            None => Network::embedded(),
        };
        let profiles = match &config.profiles_file {
            Some(file) => Profiles::load(file)?,
            None => Profiles::embedded(),
        };
        let engine = Arc::new(RouteEngine::new(
            network,
            profiles,
            config.navigation.route_cache_capacity,
        ));
        let tracker = Tracker::new(TrackerConfig {
            arrival_radius_m: config.navigation.arrival_radius_m,
            deviation_threshold_m: config.navigation.deviation_threshold_m,
            max_accuracy_credit_m: config.navigation.max_accuracy_credit_m,
        });

        let dev_secret;
        let secret = match (&config.jwt.secret, config.jwt.algorithm) {
            (Some(s), _) => Some(s.as_bytes()),
            (None, crate::config::JwtAlgorithm::HS256) => {
                dev_secret = uuid::Uuid::new_v4().to_string() + &uuid::Uuid::new_v4().to_string();
                tracing::warn!(
                    event = "dev_jwt_secret",
                    "no JWT secret configured: generated a random dev secret; tokens die with this \
                     process and no other node accepts them (set NAVCAST_JWT_SECRET)"
                );
                Some(dev_secret.as_bytes())
            }
            (None, _) => None,
        };
        let keys = JwtKeys::new(&config.jwt, secret)?;
        // Opening a client parses the URL and connects nothing: a node whose
        // Redis is down starts, reports not ready, and catches up.
        let redis = match &config.redis_url {
            Some(url) if parts.bus.is_none() || parts.stores.is_none() => Some(
                ::redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("redis_url {url:?} is not usable: {e}"))?,
            ),
            _ => None,
        };
        let stores = match (parts.stores, &redis) {
            (Some(stores), _) => stores,
            (None, Some(client)) => Stores::redis(
                client.clone(),
                crate::store::redis::Options {
                    refresh_ttl: config.jwt.refresh_ttl,
                    ..Default::default()
                },
            )?,
            (None, None) => Stores::memory(),
        };
        let auth = AuthService::new(
            keys,
            &config.auth,
            stores.accounts.clone(),
            stores.tokens.clone(),
        )?;
        if let Some(seed) = &config.auth.seed_file {
            let created = auth.seed(seed).await?;
            tracing::info!(event = "accounts_seeded", file = %seed.display(), created, "seed accounts loaded");
        }
        let metrics = Metrics::new();
        let bus: Arc<dyn Bus> = match (parts.bus, redis) {
            (Some(bus), _) => bus,
            (None, Some(client)) => Arc::new(RedisBus::new(
                client,
                config.bus.topology,
                &config.bus.channel,
                BusCounters {
                    publish_failures: metrics.bus_publish_failures.clone(),
                    reconnects: metrics.bus_reconnects.clone(),
                    connected: metrics.bus_connected.clone(),
                },
            )),
            (None, None) => Arc::new(LocalBus::new()),
        };
        let state = AppState(Arc::new(Inner {
            node_id: config.node_id.clone().into(),
            config,
            auth,
            stores,
            engine,
            tracker,
            sessions: Sessions::default(),
            bus,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            node_seq: AtomicU64::new(0),
            publish_order: parking_lot::Mutex::new(()),
            last_seen: DashMap::new(),
            last_user_seq: DashMap::new(),
            started: Instant::now(),
            started_at: crate::clock::unix_s(),
            stopped: CancellationToken::new(),
        }));
        if state.bus.is_connected() {
            state.metrics.bus_connected.set(1);
        }
        let weak = Arc::downgrade(&state.0);
        state.bus.set_interest_check(Arc::new(move |user| {
            weak.upgrade()
                .is_some_and(|inner| inner.sessions.has_interest(user))
        }));
        tokio::spawn(heartbeat(Arc::downgrade(&state.0)));
        let weak = Arc::downgrade(&state.0);
        state.bus.start(
            &state.node_id,
            Arc::new(move |envelope| {
                if let Some(inner) = weak.upgrade() {
                    AppState(inner).deliver_remote(&envelope);
                }
            }),
        );
        Ok(state)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/ws/{user_id}", get(crate::ws::upgrade))
            .route("/api/v1/auth/register", post(crate::auth::http::register))
            .route("/api/v1/auth/login", post(crate::auth::http::login))
            .route("/api/v1/auth/refresh", post(crate::auth::http::refresh))
            .merge(crate::http::routes())
            .with_state(self.clone())
    }

    /// Whether the node can serve: not draining, and the bus reachable
    /// (or configured to serve degraded).
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && (self.bus.is_connected() || self.config.bus.ready_when_degraded)
    }

    fn next_node_seq(&self) -> u64 {
        self.node_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Fans a navigation event of `user` out: to the user's other local
    /// sessions and local watchers now, and to every other node via the bus.
    pub fn publish_event(&self, user: &str, origin_key: u64, event_json: &str) {
        let Ok(raw) = RawValue::from_string(event_json.to_string()) else {
            return;
        };
        // Numbering and queueing happen under one lock, so the bus carries
        // envelopes in sequence order even when sessions publish at once;
        // otherwise receivers would count a reordering as a gap.
        let (seq, sent_at_us) = {
            let _order = self.publish_order.lock();
            let seq = self.sessions.next_seq(user);
            let sent_at_us = unix_us();
            self.bus.publish(Envelope {
                origin_node: self.node_id.to_string(),
                node_seq: self.next_node_seq(),
                seq,
                sent_at_us,
                user_id: user.to_string(),
                payload: Payload::Event { event: raw.clone() },
            });
            (seq, sent_at_us)
        };
        self.metrics.bus_published.inc();
        let mut targets = self.sessions.of_user(user, Some(origin_key));
        targets.extend(self.sessions.watchers_of(user));
        if !targets.is_empty() {
            let frame = PeerEventFrame {
                kind: "peer_event",
                user_id: user,
                event: &raw,
                origin_node: &self.node_id,
                seq,
                sent_at_us,
            };
            if let Ok(text) = serde_json::to_string(&frame) {
                self.deliver_frame(&targets, text.into());
            }
        }
    }

    fn deliver_frame(&self, targets: &[SessionHandle], text: Utf8Bytes) {
        for target in targets {
            if target.send_text(text.clone(), &self.metrics).is_ok() {
                self.metrics.peer_events_delivered.inc();
                self.metrics.message_out("peer_event");
            }
        }
    }

    /// An envelope from another node.
    pub fn deliver_remote(&self, envelope: &Envelope) {
        if *envelope.origin_node == *self.node_id {
            return;
        }
        self.metrics.bus_received.inc();
        match self.config.bus.topology {
            BusTopology::Broadcast => self.count_gap(&envelope.origin_node, envelope.node_seq),
            BusTopology::Targeted => {
                self.count_user_gap(&envelope.origin_node, &envelope.user_id, envelope.seq)
            }
        }
        match &envelope.payload {
            Payload::Event { event } => {
                let mut targets = self.sessions.of_user(&envelope.user_id, None);
                targets.extend(self.sessions.watchers_of(&envelope.user_id));
                if targets.is_empty() {
                    return;
                }
                let frame = PeerEventFrame {
                    kind: "peer_event",
                    user_id: &envelope.user_id,
                    event,
                    origin_node: &envelope.origin_node,
                    seq: envelope.seq,
                    sent_at_us: envelope.sent_at_us,
                };
                if let Ok(text) = serde_json::to_string(&frame) {
                    self.deliver_frame(&targets, text.into());
                }
            }
            Payload::Replace { session_id } => {
                // `sent_at_us` is when the newer session opened: a local
                // session opened after it is newer still and stays, even
                // when this notice was slow to arrive.
                for old in self.sessions.of_user(&envelope.user_id, None) {
                    if *old.session_id != **session_id && old.opened_at_us < envelope.sent_at_us {
                        self.kick_replaced(&old);
                    }
                }
            }
        }
    }

    fn count_gap(&self, origin: &str, node_seq: u64) {
        let mut last = self.last_seen.entry(origin.to_string()).or_insert(0);
        if *last != 0 && node_seq > *last + 1 {
            let missing = node_seq - *last - 1;
            self.gap(origin, None, missing);
        }
        if node_seq > *last {
            *last = node_seq;
        }
    }

    /// Gap counting by the per-(origin, user) `seq`. A `seq` of 0 is not
    /// counted (envelopes that are not events). A `seq` at or below the last
    /// one seen is a new stream (the user's sessions on that node closed
    /// and reopened, which restarts it at 1): it becomes the new baseline.
    fn count_user_gap(&self, origin: &str, user: &str, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut origins = self.last_user_seq.entry(user.to_string()).or_default();
        match origins.iter_mut().find(|(o, _)| o == origin) {
            Some((_, last)) => {
                if seq > *last + 1 {
                    let missing = seq - *last - 1;
                    *last = seq;
                    drop(origins);
                    self.gap(origin, Some(user), missing);
                } else {
                    *last = seq;
                }
            }
            None => origins.push((origin.to_string(), seq)),
        }
    }

    fn gap(&self, origin: &str, user: Option<&str>, missing: u64) {
        self.metrics.bus_gaps.inc_by(missing);
        tracing::warn!(
            event = "bus_gap",
            origin_node = %origin,
            user_id = user.unwrap_or(""),
            missing,
            "envelopes missing from an origin"
        );
    }

    /// A session of or watching `user` went away: if it was the last local
    /// one, the bus may stop listening for `user`.
    pub fn release_interest(&self, user: &str) {
        if !self.sessions.has_interest(user) {
            self.last_user_seq.remove(user);
            self.bus.disinterest(user);
        }
    }

    /// Waits (briefly) until the bus listens for every user this node
    /// declared interest in, so a reply like `connected` or `watching` is
    /// not followed by a missed event. Never waits long: a slow Redis must
    /// not stall a session.
    pub async fn interest_settled(&self) {
        let _ = tokio::time::timeout(INTEREST_SETTLE_MAX, self.bus.settled()).await;
    }

    /// This node's record for the registry.
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.to_string(),
            sessions: self.sessions.len() as u64,
            started_at: self.started_at,
            heartbeat_at_ms: crate::clock::unix_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn kick_replaced(&self, old: &SessionHandle) {
        let frame = serde_json::to_string(&ServerMessage::Disconnected {
            code: "DUPLICATE_CONNECTION".into(),
        })
        .unwrap_or_default();
        let _ = old.send_text(frame.into(), &self.metrics);
        tracing::info!(event = "session_replaced", old_session_id = %old.session_id, "closing older session (4002)");
        old.kill
            .kill(close::REPLACED, "replaced by a newer session");
    }

    /// `multi_device = replace`: close this user's older sessions here and
    /// on every other node.
    pub fn replace_older_sessions(&self, new: &SessionHandle) {
        for old in self.sessions.of_user(&new.user_id, Some(new.key)) {
            self.kick_replaced(&old);
        }
        let _order = self.publish_order.lock();
        self.bus.publish(Envelope {
            origin_node: self.node_id.to_string(),
            node_seq: self.next_node_seq(),
            seq: 0,
            sent_at_us: new.opened_at_us,
            user_id: new.user_id.to_string(),
            payload: Payload::Replace {
                session_id: new.session_id.to_string(),
            },
        });
    }

    /// The rider stopped sharing with `guardian`: drop that guardian's
    /// local watch subscriptions on the rider.
    pub fn revoke_watch(&self, rider: &str, guardian: &str) {
        for watcher in self.sessions.watchers_of(rider) {
            if *watcher.user_id == *guardian {
                self.sessions.unwatch(rider, watcher.key);
            }
        }
        self.release_interest(rider);
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
}

/// The longest a session waits for the bus to confirm a subscription.
const INTEREST_SETTLE_MAX: Duration = Duration::from_secs(2);

/// Writes this node's record into the node registry every
/// `bus.heartbeat_interval`, to expire after three periods, until the node
/// stops (or its state is dropped).
async fn heartbeat(state: std::sync::Weak<Inner>) {
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
        let state = AppState(inner);
        let info = state.node_info();
        let result = state.stores.nodes.heartbeat(&info, period * 3).await;
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
        stations = state.engine.network().stations().len(),
        "navcast node listening"
    );
    let drain_state = state.clone();
    let app = state.router();
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
    state.stopped.cancel();
    if let Ok(Err(e)) = tokio::time::timeout(
        Duration::from_secs(1),
        state.stores.nodes.leave(&state.node_id),
    )
    .await
    {
        tracing::warn!(event = "registry_leave_failed", cause = %e, "node record left to expire");
    }
    tracing::info!(
        event = "drain_finished",
        complete = drained,
        remaining = state.sessions.len(),
        "node stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(origin: &str, node_seq: u64, user: &str, seq: u64) -> Envelope {
        Envelope {
            origin_node: origin.into(),
            node_seq,
            seq,
            sent_at_us: unix_us(),
            user_id: user.into(),
            payload: Payload::Event {
                event: RawValue::from_string(r#"{"type":"arrival"}"#.into()).unwrap(),
            },
        }
    }

    async fn node(topology: BusTopology) -> AppState {
        let mut config = Config::default();
        config.jwt.secret = Some("unit-test-secret-0123456789abcdef".into());
        config.bus.topology = topology;
        AppState::build(config, Parts::default()).await.unwrap()
    }

    #[tokio::test]
    async fn broadcast_counts_gaps_per_origin_by_node_seq() {
        let state = node(BusTopology::Broadcast).await;
        for n in [1, 2, 5, 6] {
            state.deliver_remote(&envelope("x", n, "u", 0));
        }
        state.deliver_remote(&envelope("y", 10, "u", 0));
        state.deliver_remote(&envelope("y", 12, "v", 0));
        assert_eq!(state.metrics.bus_gaps.get(), 3);
        assert_eq!(state.metrics.bus_received.get(), 6);
        // Our own envelopes are neither delivered nor counted.
        let own = state.node_id.to_string();
        state.deliver_remote(&envelope(&own, 99, "u", 0));
        assert_eq!(state.metrics.bus_received.get(), 6);
    }

    #[tokio::test]
    async fn targeted_counts_gaps_per_origin_and_user_by_seq() {
        let state = node(BusTopology::Targeted).await;
        // node_seq jumps are expected in targeted (other users' envelopes
        // go elsewhere) and are not gaps.
        state.deliver_remote(&envelope("x", 1, "u", 1));
        state.deliver_remote(&envelope("x", 7, "u", 2));
        state.deliver_remote(&envelope("x", 9, "u", 5));
        assert_eq!(state.metrics.bus_gaps.get(), 2);
        // Another user of the same origin is another stream.
        state.deliver_remote(&envelope("x", 10, "v", 3));
        state.deliver_remote(&envelope("x", 11, "v", 4));
        assert_eq!(state.metrics.bus_gaps.get(), 2);
        // seq 0 (replace notices) is not counted; a restart at 1 is no gap.
        state.deliver_remote(&envelope("x", 12, "u", 0));
        state.deliver_remote(&envelope("x", 13, "u", 1));
        state.deliver_remote(&envelope("x", 14, "u", 2));
        assert_eq!(state.metrics.bus_gaps.get(), 2);
        // After the node loses interest in a user, a later subscription
        // starts a new baseline instead of counting what it never heard.
        state.release_interest("u");
        state.deliver_remote(&envelope("x", 40, "u", 30));
        assert_eq!(state.metrics.bus_gaps.get(), 2);
        state.deliver_remote(&envelope("x", 41, "u", 32));
        assert_eq!(state.metrics.bus_gaps.get(), 3);
    }
}
