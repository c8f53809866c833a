//! The operators' endpoints (health, readiness, `/stats`, `/metrics`) and
//! the one plain-HTTP rider endpoint, station search.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::metrics::ConnectOutcome;
use crate::node::AppState;
use crate::transit::RouteEngine;

/// The ops routes and station search.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/api/v1/stations", get(stations))
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let r = state.readiness();
    let ready = r.ready;
    let body = serde_json::json!({
        "ready": ready,
        "draining": r.draining,
        "bus": if r.bus { "connected" } else { "degraded" },
        "redis": if state.redis_health.is_none() { "none" } else if r.redis { "up" } else { "down" },
        "node_id": &*state.node_id,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The whole cluster as the node registry sees it: every live node with
/// its session count. A registry that cannot be read gives an `error`
/// instead, and the rest of `/stats` still answers.
async fn cluster(state: &AppState) -> serde_json::Value {
    let live = tokio::time::timeout(Duration::from_secs(1), state.stores.nodes.live()).await;
    match live {
        Ok(Ok(nodes)) => {
            let sessions: u64 = nodes.iter().map(|n| n.sessions).sum();
            serde_json::json!({
                "node_count": nodes.len(),
                "sessions": sessions,
                "nodes": nodes,
            })
        }
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(_) => serde_json::json!({ "error": "node registry timed out" }),
    }
}

async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    let cluster = cluster(&state).await;
    let m = &state.metrics;
    sync_cache_counters(&state);
    let rejected: u64 = ConnectOutcome::ALL
        .iter()
        .filter(|o| **o != ConnectOutcome::Accepted)
        .map(|o| m.connections(*o))
        .sum();
    Json(serde_json::json!({
        "node_id": &*state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "ready": state.is_ready(),
        "draining": state.draining.load(Ordering::Acquire),
        "sessions": state.sessions.len(),
        "connections": {
            "accepted": m.connections(ConnectOutcome::Accepted),
            "rejected": rejected,
            "rejected_unauthorized": m.connections(ConnectOutcome::Unauthorized),
            "rejected_forbidden": m.connections(ConnectOutcome::Forbidden),
            "rejected_over_capacity": m.connections(ConnectOutcome::OverCapacity),
            "rejected_draining": m.connections(ConnectOutcome::Draining),
            "rejected_store_unavailable": m.connections(ConnectOutcome::StoreUnavailable),
        },
        "http": {
            "open": state.pending.current(),
            "max_pending": state.pending.max(),
            "refused": m.http_refused.get(),
            "refused_per_address": m.http_refused_address.get(),
            "header_timeouts": m.header_timeouts.get(),
            "request_timeouts": m.request_timeouts.get(),
            "accept_fd_limit_errors": m.accept_fd_limit.get(),
        },
        "limits": {
            "max_sessions": state.connections.max(),
            "open_files": crate::files::soft_limit(),
        },
        "messages_in": m.messages_in_by_type(),
        "messages_out_total": m.messages_out_total(),
        "errors": m.errors_by_code(),
        "queue_full_closes": m.queue_full.get(),
        "heartbeat_timeouts": m.heartbeat_timeouts.get(),
        "write_timeouts": m.write_timeouts.get(),
        "flood_closes": m.flood_closes.get(),
        "route_cache": { "hits": m.route_cache_hits.get(), "misses": m.route_cache_misses.get() },
        "redis": {
            "up": state.redis_up(),
            "failed_checks": m.redis.failed_checks.get(),
            "data_lost": m.redis.data_lost.get(),
        },
        "bus": {
            "kind": state.bus.kind(),
            "topology": state.config.bus.topology,
            "connected": state.bus.is_connected(),
            "published": m.bus_published.get(),
            "received": m.bus_received.get(),
            "publish_failures": m.bus_publish_failures.get(),
            "gaps": m.bus_gaps.get(),
            "reconnects": m.bus_reconnects.get(),
        },
        "peer_events_delivered": m.peer_events_delivered.get(),
        "cluster": cluster,
        "memory": { "rss_bytes": rss_bytes() },
    }))
}

/// Brings the route-cache counters up to the engine's own tallies.
fn sync_cache_counters(state: &AppState) {
    let stats = state.engine().cache_stats();
    let m = &state.metrics;
    m.route_cache_hits
        .inc_by(stats.hits.saturating_sub(m.route_cache_hits.get()));
    m.route_cache_misses
        .inc_by(stats.misses.saturating_sub(m.route_cache_misses.get()));
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    sync_cache_counters(&state);
    let m = &state.metrics;
    m.ready.set(i64::from(state.is_ready()));
    m.draining
        .set(i64::from(state.draining.load(Ordering::Acquire)));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[derive(Deserialize)]
struct StationQuery {
    #[serde(default)]
    query: String,
    limit: Option<usize>,
}

/// `GET /api/v1/stations?query=강남` — stations whose name starts with the
/// query (normalised), grouped by name with their lines and codes.
async fn stations(
    State(engine): State<Arc<RouteEngine>>,
    Query(q): Query<StationQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if q.query.chars().count() > 64 {
        return Err(ApiError::Unprocessable(
            "query: at most 64 characters".into(),
        ));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let network = engine.network();
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for station in network.search(&q.query, limit * 8) {
        let lines: Vec<serde_json::Value> = network
            .stations()
            .iter()
            .filter(|s| s.name == station.name)
            .map(|s| serde_json::json!({ "line": s.line, "code": s.code }))
            .collect();
        if names.contains(&station.name.as_str()) {
            continue;
        }
        names.push(&station.name);
        out.push(serde_json::json!({
            "name": station.name,
            "lat": station.lat,
            "lon": station.lon,
            "lines": lines,
        }));
        if out.len() >= limit {
            break;
        }
    }
    Ok(Json(
        serde_json::json!({ "query": q.query, "stations": out }),
    ))
}
