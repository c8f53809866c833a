//! Every counter an operator reads, in one place, on `/metrics` and `/stats`.
//!
//! Handles for the fixed label sets (request kinds, frame types, error
//! codes, connect outcomes) are created once at start, so the per-message
//! cost is one atomic add, not a label lookup. Close codes and auth
//! outcomes are looked up per event: they happen once per session or
//! request, not per frame. `/stats` reads the same counters, so the two
//! never disagree.

use std::fmt::Write;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::{ErrorCode, OutKind, RequestKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabel {
    op: &'static str,
    outcome: &'static str,
}

/// Why a WebSocket upgrade was accepted or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted,
    Unauthorized,
    Forbidden,
    OverCapacity,
    Draining,
    /// The token could not be checked against the store (revocation).
    StoreUnavailable,
}

impl ConnectOutcome {
    pub const ALL: [ConnectOutcome; 6] = [
        ConnectOutcome::Accepted,
        ConnectOutcome::Unauthorized,
        ConnectOutcome::Forbidden,
        ConnectOutcome::OverCapacity,
        ConnectOutcome::Draining,
        ConnectOutcome::StoreUnavailable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectOutcome::Accepted => "accepted",
            ConnectOutcome::Unauthorized => "unauthorized",
            ConnectOutcome::Forbidden => "forbidden",
            ConnectOutcome::OverCapacity => "over_capacity",
            ConnectOutcome::Draining => "draining",
            ConnectOutcome::StoreUnavailable => "store_unavailable",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    connections: Vec<Counter>,
    messages_in: Vec<Counter>,
    messages_out: Vec<Counter>,
    handle_seconds: Vec<Histogram>,
    errors: Vec<Counter>,
    closes: Family<CloseLabel, Counter>,
    auth: Family<AuthLabel, Counter>,
    pub queue_full: Counter,
    pub heartbeat_timeouts: Counter,
    pub write_timeouts: Counter,
    pub flood_closes: Counter,
    pub route_cache_hits: Counter,
    pub route_cache_misses: Counter,
    pub peer_events_delivered: Counter,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub bus_publish_failures: Counter,
    pub bus_gaps: Counter,
    pub bus_reconnects: Counter,
    pub bus_connected: Gauge,
    /// 1 while `/ready` answers 200 (set at each scrape).
    pub ready: Gauge,
    /// 1 once SIGTERM started the drain (set at each scrape).
    pub draining: Gauge,
    /// Accepted connections that are not (yet) sessions.
    pub http_connections: Gauge,
    pub http_refused: Counter,
    pub http_refused_address: Counter,
    pub accept_fd_limit: Counter,
    pub accept_other: Counter,
    pub header_timeouts: Counter,
    pub request_timeouts: Counter,
    /// Kept by the Redis watchdog (`redis_conn::Health`).
    pub redis: crate::redis_conn::HealthCounters,
}

/// Every `outcome` of `navcast_auth_requests_total`: `ok`, `refused` (the
/// client's mistake: bad credentials, invalid input, a taken email, a bad
/// refresh token), `busy` and `unavailable` (503: hash queue full, store
/// down), and the three 429s of [`crate::auth::throttle`].
pub const AUTH_OUTCOMES: [&str; 7] = [
    "ok",
    "refused",
    "busy",
    "unavailable",
    "throttled_in_flight",
    "throttled_address",
    "throttled_account",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("navcast");
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Open WebSocket sessions on this node",
            sessions.clone(),
        );

        let connections_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "connections",
            "WebSocket upgrade attempts by outcome",
            connections_family.clone(),
        );
        let connections = ConnectOutcome::ALL
            .iter()
            .map(|o| {
                connections_family.get_or_create_owned(&OutcomeLabel {
                    outcome: o.as_str(),
                })
            })
            .collect();

        let in_family = Family::<TypeLabel, Counter>::default();
        registry.register(
            "messages_in",
            "Client frames received by type",
            in_family.clone(),
        );
        let messages_in = RequestKind::ALL
            .iter()
            .map(|k| in_family.get_or_create_owned(&TypeLabel { r#type: k.as_str() }))
            .collect();

        let out_family = Family::<TypeLabel, Counter>::default();
        registry.register("messages_out", "Frames sent by type", out_family.clone());
        let messages_out = OutKind::ALL
            .iter()
            .map(|k| out_family.get_or_create_owned(&TypeLabel { r#type: k.as_str() }))
            .collect();

        let hist_family = Family::<TypeLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_01, 2.0, 20))) as fn() -> Histogram,
        );
        registry.register(
            "request_handle_seconds",
            "Time from a request frame to its reply being queued, by type",
            hist_family.clone(),
        );
        let handle_seconds = RequestKind::ALL
            .iter()
            .map(|k| hist_family.get_or_create_owned(&TypeLabel { r#type: k.as_str() }))
            .collect();

        let err_family = Family::<CodeLabel, Counter>::default();
        registry.register("errors", "Error replies by code", err_family.clone());
        let errors = ErrorCode::ALL
            .iter()
            .map(|c| err_family.get_or_create_owned(&CodeLabel { code: c.as_str() }))
            .collect();

        let closes = Family::<CloseLabel, Counter>::default();
        registry.register("closes", "Sessions closed, by close code", closes.clone());
        // Every documented code and outcome exists from the start at 0, so
        // a rate is 0 rather than no series until the first one happens.
        for code in crate::protocol::close::ALL {
            let _ = closes.get_or_create(&CloseLabel { code });
        }
        let auth = Family::<AuthLabel, Counter>::default();
        registry.register(
            "auth_requests",
            "Auth HTTP requests by operation and outcome",
            auth.clone(),
        );
        for op in ["register", "login", "refresh"] {
            for outcome in AUTH_OUTCOMES {
                let _ = auth.get_or_create(&AuthLabel { op, outcome });
            }
        }

        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let queue_full = counter(
            "queue_full_closes",
            "Sessions closed with 4008 because their outbound queue was full",
        );
        let heartbeat_timeouts = counter(
            "heartbeat_timeouts",
            "Sessions closed because no pong arrived in time",
        );
        let write_timeouts = counter(
            "write_timeouts",
            "Sessions closed with 4008 because a write made no progress for ws.write_timeout",
        );
        let flood_closes = counter(
            "flood_closes",
            "Sessions closed with 1008 for staying over their rate limit",
        );
        let route_cache_hits = counter(
            "route_cache_hits",
            "Route computations answered from the LRU cache",
        );
        let route_cache_misses =
            counter("route_cache_misses", "Route computations not in the cache");
        let peer_events_delivered = counter(
            "peer_events_delivered",
            "peer_event frames queued to local sessions",
        );
        let bus_published = counter("bus_published", "Envelopes published to the bus");
        let bus_received = counter(
            "bus_received",
            "Envelopes received from the bus (other nodes)",
        );
        let bus_publish_failures = counter(
            "bus_publish_failures",
            "Envelopes the bus failed to publish",
        );
        let bus_gaps = counter(
            "bus_gaps",
            "Envelopes missing according to per-origin sequence numbers",
        );
        let bus_reconnects = counter("bus_reconnects", "Bus subscriber reconnections");
        let bus_connected = Gauge::default();
        registry.register(
            "bus_connected",
            "1 while the bus is connected",
            bus_connected.clone(),
        );

        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /ready answers 200 (not draining, Redis reachable when configured)",
            ready.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 once a shutdown signal started the drain",
            draining.clone(),
        );

        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Accepted connections that are not WebSocket sessions (yet)",
            http_connections.clone(),
        );
        let refused = Family::<CauseLabel, Counter>::default();
        registry.register(
            "http_refused",
            "Connections answered 503 at accept: max_pending (http.max_pending open) or \
             per_address (the peer holds http.max_pending_per_address)",
            refused.clone(),
        );
        let http_refused = refused.get_or_create_owned(&CauseLabel {
            cause: "max_pending",
        });
        let http_refused_address = refused.get_or_create_owned(&CauseLabel {
            cause: "per_address",
        });
        let accept_errors = Family::<CauseLabel, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts: fd_limit (out of file descriptors; the node backs off) or other",
            accept_errors.clone(),
        );
        let accept_fd_limit = accept_errors.get_or_create_owned(&CauseLabel { cause: "fd_limit" });
        let accept_other = accept_errors.get_or_create_owned(&CauseLabel { cause: "other" });
        let http_timeouts = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "http_timeouts",
            "HTTP connections closed for slowness: header (http.header_read_timeout, idle \
             keep-alive included) or request (http.request_timeout, answered 408)",
            http_timeouts.clone(),
        );
        let header_timeouts = http_timeouts.get_or_create_owned(&PhaseLabel { phase: "header" });
        let request_timeouts = http_timeouts.get_or_create_owned(&PhaseLabel { phase: "request" });

        let redis = crate::redis_conn::HealthCounters::default();
        registry.register(
            "redis_up",
            "1 while Redis answers the health check (no Redis configured: 1)",
            redis.up.clone(),
        );
        redis.up.set(1);
        registry.register(
            "redis_failed_checks",
            "Redis health checks without an answer in redis_health_timeout",
            redis.failed_checks.clone(),
        );
        registry.register(
            "redis_data_lost",
            "Times Redis came back without its data (the generation key changed)",
            redis.data_lost.clone(),
        );

        Metrics {
            registry,
            sessions,
            connections,
            messages_in,
            messages_out,
            handle_seconds,
            errors,
            closes,
            auth,
            queue_full,
            heartbeat_timeouts,
            write_timeouts,
            flood_closes,
            route_cache_hits,
            route_cache_misses,
            peer_events_delivered,
            bus_published,
            bus_received,
            bus_publish_failures,
            bus_gaps,
            bus_reconnects,
            bus_connected,
            ready,
            draining,
            http_connections,
            http_refused,
            http_refused_address,
            accept_fd_limit,
            accept_other,
            header_timeouts,
            request_timeouts,
            redis,
        }
    }

    pub fn connection(&self, outcome: ConnectOutcome) {
        self.connections[outcome as usize].inc();
    }

    pub fn connections(&self, outcome: ConnectOutcome) -> u64 {
        self.connections[outcome as usize].get()
    }

    pub fn message_in(&self, kind: RequestKind) {
        self.messages_in[kind.index()].inc();
    }

    pub fn message_out(&self, kind: OutKind) {
        self.messages_out[kind.index()].inc();
    }

    pub fn handled(&self, kind: RequestKind, seconds: f64) {
        self.handle_seconds[kind.index()].observe(seconds);
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].inc();
    }

    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&CloseLabel { code }).inc();
    }

    pub fn auth(&self, op: &'static str, outcome: &'static str) {
        self.auth.get_or_create(&AuthLabel { op, outcome }).inc();
    }

    /// Counts for `/stats`.
    pub fn messages_in_by_type(&self) -> serde_json::Map<String, serde_json::Value> {
        RequestKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str().to_string(),
                    self.messages_in[k.index()].get().into(),
                )
            })
            .filter(|(_, v)| v != &serde_json::Value::from(0u64))
            .collect()
    }

    pub fn errors_by_code(&self) -> serde_json::Map<String, serde_json::Value> {
        ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), self.errors[c.index()].get().into()))
            .filter(|(_, v)| v != &serde_json::Value::from(0u64))
            .collect()
    }

    /// Frames sent, all types together (`/stats`).
    pub fn messages_out_total(&self) -> u64 {
        self.messages_out.iter().map(Counter::get).sum()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }
}
