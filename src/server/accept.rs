//! The accept loop: every accepted socket is counted from its first moment,
//! and running out of file descriptors slows the loop down instead of
//! spinning it.
//!
//! A connection holds a place under `http.max_pending` until it ends or its
//! upgrade hands the socket to a session (which holds a place under
//! `ws.max_connections` instead), so the two limits together bound the
//! sockets a node holds. A connection beyond `http.max_pending` gets a
//! canned 503 written without reading its request, and is closed; so does
//! one from a peer that already holds `http.max_pending_per_address` (a
//! slowloris from one address then cannot take every place).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{self, Shared};
use crate::limits::{ConnectionSlot, PerKeyLimit};
use crate::node::AppState;
use crate::telemetry::LogLimiter;

/// Written to a connection refused at accept; it is not read first.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 50\r\n\
\r\n\
{\"detail\":\"node at its limit of open connections\"}";

/// Back-off after a failed accept: 10 ms doubling to 1 s, reset by success.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        now
    }
}

/// Why `accept` failed, as far as an operator needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// EMFILE/ENFILE/ENOBUFS/ENOMEM: the process or system is out of
    /// something; retrying at once would spin.
    Exhausted,
    /// The peer gave up before we accepted; nothing to do.
    PeerGone,
    Other,
}

fn classify(e: &io::Error) -> AcceptFailure {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    match e.raw_os_error() {
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM) => AcceptFailure::Exhausted,
        _ => match e.kind() {
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
                AcceptFailure::PeerGone
            }
            _ => AcceptFailure::Other,
        },
    }
}

/// Accepts until `stop` is cancelled; each connection is served in a task
/// on `connections`.
pub(super) async fn run(
    listener: TcpListener,
    state: AppState,
    app: Router,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Backoff(Backoff::FIRST);
    let mut fail_log = LogLimiter::new(Duration::from_secs(10));
    let mut refuse_log = LogLimiter::new(Duration::from_secs(10));
    let per_address = PerKeyLimit::new(state.config.http.max_pending_per_address);
    let shared = Shared {
        app,
        force: stop.clone(),
        slow_log: Arc::new(Mutex::new(LogLimiter::new(Duration::from_secs(10)))),
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Backoff(Backoff::FIRST);
                a
            }
            Err(e) => {
                let failure = classify(&e);
                if failure == AcceptFailure::PeerGone {
                    continue;
                }
                if failure == AcceptFailure::Exhausted {
                    state.metrics.accept_fd_limit.inc();
                } else {
                    state.metrics.accept_other.inc();
                }
                let pause = backoff.next();
                if let Some(held) = fail_log.allow() {
                    tracing::error!(
                        event = "accept_failed",
                        cause = %e,
                        out_of_files = failure == AcceptFailure::Exhausted,
                        pause_ms = pause.as_millis() as u64,
                        similar_lines_held_back = held,
                        open_sessions = state.connections.current(),
                        open_http_connections = state.pending.current(),
                        "cannot accept connections; backing off"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        let ip = crate::peer::canonical(peer.ip());
        let address_slot = if state.trusted_proxies.iter().any(|n| n.contains(ip)) {
            None
        } else {
            match per_address.acquire(&ip) {
                Some(slot) => Some(slot),
                None => {
                    state.metrics.http_refused_address.inc();
                    if let Some(held) = refuse_log.allow() {
                        tracing::warn!(
                            event = "http_connection_refused",
                            cause = "the peer holds http.max_pending_per_address connections",
                            peer = %ip,
                            similar_lines_held_back = held,
                            "connection answered 503 and closed"
                        );
                    }
                    refuse(tcp);
                    continue;
                }
            }
        };
        let Some(slot) = ConnectionSlot::acquire(&state.pending) else {
            state.metrics.http_refused.inc();
            if let Some(held) = refuse_log.allow() {
                tracing::warn!(
                    event = "http_connection_refused",
                    cause = "http.max_pending connections are open",
                    max_pending = state.pending.max(),
                    similar_lines_held_back = held,
                    "connection answered 503 and closed"
                );
            }
            refuse(tcp);
            continue;
        };
        connections.spawn(conn::serve(
            tcp,
            peer,
            state.clone(),
            shared.clone(),
            (slot, address_slot),
        ));
    }
}

/// Best effort: the answer fits any fresh socket's send buffer, and a peer
/// that cannot take it loses nothing it was promised.
fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(REFUSED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        serde_json::from_str::<serde_json::Value>(body).expect("a JSON body");
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let mut b = Backoff(Backoff::FIRST);
        let pauses: Vec<_> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn out_of_files_is_told_apart() {
        assert_eq!(
            classify(&io::Error::from_raw_os_error(24)),
            AcceptFailure::Exhausted
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::ConnectionAborted)),
            AcceptFailure::PeerGone
        );
    }
}
