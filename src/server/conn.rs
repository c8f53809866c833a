//! One accepted connection, served by hyper's HTTP/1.1 with a timer: a
//! request head must arrive within `http.header_read_timeout` (the same
//! timer bounds an idle keep-alive connection), a plain request must be
//! answered within `http.request_timeout` (408), and a head is at most
//! `http.max_header_bytes`. A WebSocket upgrade hands the socket to a
//! session and ends this task, releasing the connection's place under
//! `http.max_pending`.
//!
//! On drain, a connection that was open finishes the request in hand and
//! closes; one accepted during the drain is served one request without
//! keep-alive. When the drain deadline passes, whatever is left is dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api_error::ApiError;
use crate::limits::{ConnectionSlot, KeySlot};
use crate::node::AppState;
use crate::telemetry::LogLimiter;

/// What every connection task shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) app: Router,
    /// Cancelled when the drain deadline passes: drop the connection.
    pub(super) force: CancellationToken,
    /// Slow clients are an attack as often as an accident; their log
    /// lines are rate-limited like accept failures.
    pub(super) slow_log: Arc<Mutex<LogLimiter>>,
}

/// Keeps `navcast_http_connections` equal to the connections being served.
struct Gauged(AppState);

impl Drop for Gauged {
    fn drop(&mut self) {
        self.0.metrics.http_connections.dec();
    }
}

pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    state: AppState,
    shared: Shared,
    _places: (ConnectionSlot, Option<KeySlot<IpAddr>>),
) {
    state.metrics.http_connections.inc();
    let _gauged = Gauged(state.clone());
    if let Err(e) = tcp.set_nodelay(true) {
        // Frames are small and latency matters more than packet count:
        // without TCP_NODELAY a frame can wait for the peer's delayed ACK.
        tracing::debug!(event = "tcp_nodelay_failed", cause = %e, "TCP_NODELAY not set");
    }
    let cfg = &state.config.http;
    let draining_at_accept = state.draining.load(Ordering::Acquire);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(!draining_at_accept);

    let request_timeout = cfg.request_timeout;
    let (app, metrics, slow_log) = (
        shared.app.clone(),
        state.metrics.clone(),
        shared.slow_log.clone(),
    );
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let path = req.uri().path().to_string();
        let app = app.clone();
        let metrics = metrics.clone();
        let slow_log = slow_log.clone();
        async move {
            match tokio::time::timeout(request_timeout, app.oneshot(req)).await {
                Ok(response) => response,
                Err(_) => {
                    metrics.request_timeouts.inc();
                    if let Some(held) = slow_log.lock().allow() {
                        tracing::info!(
                            event = "http_request_timeout",
                            cause = "request not complete within http.request_timeout",
                            peer = %peer,
                            path = %path,
                            similar_lines_held_back = held,
                            "answered 408"
                        );
                    }
                    Ok(ApiError::Timeout("request took too long").into_response())
                }
            }
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut drain_seen = draining_at_accept;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break Some(r),
            _ = state.shutdown.cancelled(), if !drain_seen => {
                drain_seen = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.force.cancelled() => break None,
        }
    };
    match result {
        Some(Err(e)) if e.is_timeout() => {
            state.metrics.header_timeouts.inc();
            if let Some(held) = shared.slow_log.lock().allow() {
                tracing::info!(
                    event = "http_header_timeout",
                    cause = "no complete request head within http.header_read_timeout",
                    peer = %peer,
                    similar_lines_held_back = held,
                    "connection closed"
                );
            }
        }
        Some(Err(e)) => {
            tracing::debug!(event = "http_connection_error", cause = %e, peer = %peer, "connection ended with an error");
        }
        Some(Ok(())) => {}
        None => {
            tracing::debug!(event = "http_connection_dropped", peer = %peer, "drain deadline passed; connection dropped");
        }
    }
}
