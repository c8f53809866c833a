//! `GET /api/v1/ws/{user_id}`: everything decided before the upgrade.
//!
//! A connection is refused with a plain HTTP status before any WebSocket
//! frame exists: 401 (no/invalid/expired/revoked token, or a refresh
//! token), 403
//! (`sub` is not the path's user), 503 with `Retry-After` (node draining or
//! at its connection limit). Only an authenticated rider gets a socket.

mod connection;
mod dispatch;

use crate::limits::ConnectionSlot;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::auth::{Claims, TokenError, TokenKind};
use crate::metrics::ConnectOutcome;
use crate::node::AppState;

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Where the token came from matters only for the subprotocol answer.
enum TokenSource {
    Query,
    Header,
    Subprotocol,
}

/// Token from `?token=`, `Authorization: Bearer`, or the subprotocol list
/// `bearer, <token>` (browsers cannot set headers on a WebSocket).
fn find_token(query: Option<&str>, headers: &HeaderMap) -> Option<(String, TokenSource)> {
    if let Some(q) = query
        && let Ok(TokenQuery { token: Some(t) }) = serde_urlencoded::from_str::<TokenQuery>(q)
        && !t.is_empty()
    {
        return Some((t, TokenSource::Query));
    }
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
    {
        return Some((t.trim().to_string(), TokenSource::Header));
    }
    let protocols: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    if let Some(i) = protocols
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))
        && let Some(t) = protocols.get(i + 1)
    {
        return Some((t.clone(), TokenSource::Subprotocol));
    }
    None
}

/// The WebSocket route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/ws/{user_id}", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit(&state, &user_id, query.as_deref(), &headers).await {
        Ok((claims, slot, source)) => {
            state.metrics.connection(ConnectOutcome::Accepted);
            let cfg = &state.config.ws;
            let mut ws = ws
                .read_buffer_size(cfg.read_buffer_bytes)
                .write_buffer_size(0)
                .max_write_buffer_size(cfg.write_buffer_bytes)
                .max_message_size(cfg.max_frame_bytes)
                .max_frame_size(cfg.max_frame_bytes);
            if matches!(source, TokenSource::Subprotocol) {
                ws.set_selected_protocol(HeaderValue::from_static("bearer"));
            }
            let state2 = state.clone();
            let request_id = crate::request_id::of(&headers).map(Arc::<str>::from);
            // Counted by the drain from now on, not only once the upgrade
            // task has started the session.
            let tracked = state.tasks.token();
            ws.on_failed_upgrade(|e| {
                tracing::info!(event = "ws_upgrade_failed", cause = %e, "WebSocket upgrade failed");
            })
            .on_upgrade(move |socket| {
                // Boxed outside the future: the task then holds a pointer,
                // not the socket and claims (see `connection::Opening`).
                let opening = Box::new(connection::Opening {
                    socket: Some(socket),
                    claims,
                    _slot: slot,
                    request_id,
                });
                async move {
                    connection::run(state2, opening).await;
                    drop(tracked);
                }
            })
        }
        Err((outcome, err)) => {
            state.metrics.connection(outcome);
            tracing::info!(
                event = "ws_rejected",
                outcome = outcome.as_str(),
                cause = %err,
                path_user = %truncate(&user_id, 64),
                "WebSocket connection refused before upgrade"
            );
            err.into_response()
        }
    }
}

type Admitted = (Claims, ConnectionSlot, TokenSource);

async fn admit(
    state: &AppState,
    user_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Admitted, (ConnectOutcome, ApiError)> {
    let retry_after_s = state.config.ws.retry_after_s;
    if state.draining.load(Ordering::Acquire) {
        return Err((
            ConnectOutcome::Draining,
            ApiError::Unavailable {
                detail: "node is draining; reconnect to another node",
                retry_after_s: 1,
            },
        ));
    }
    let (token, source) = find_token(query, headers).ok_or((
        ConnectOutcome::Unauthorized,
        ApiError::Unauthorized("missing token"),
    ))?;
    let claims = state
        .auth
        .keys
        .verify(&token, TokenKind::Access)
        .map_err(|e| {
            let detail = match e {
                TokenError::Expired => "token expired",
                TokenError::WrongType => "not an access token",
                _ => "invalid token",
            };
            (ConnectOutcome::Unauthorized, ApiError::Unauthorized(detail))
        })?;
    if claims.sub != user_id {
        return Err((
            ConnectOutcome::Forbidden,
            ApiError::Forbidden("token subject does not match the path's user"),
        ));
    }
    // A replayed refresh token revokes its family, access tokens included.
    match state.auth.is_revoked(&claims).await {
        Ok(false) => {}
        Ok(true) => {
            return Err((
                ConnectOutcome::Unauthorized,
                ApiError::Unauthorized("token revoked"),
            ));
        }
        Err(e) => {
            tracing::warn!(event = "revocation_check_failed", cause = %e, "state store unavailable; upgrade refused");
            return Err((
                ConnectOutcome::StoreUnavailable,
                ApiError::Unavailable {
                    detail: "state store unavailable",
                    retry_after_s: 2,
                },
            ));
        }
    }
    let slot = ConnectionSlot::acquire(&state.connections).ok_or((
        ConnectOutcome::OverCapacity,
        ApiError::Unavailable {
            detail: "node at its connection limit",
            retry_after_s,
        },
    ))?;
    Ok((claims, slot, source))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
