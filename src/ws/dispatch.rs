//! A session's request handling: one direct reply per request.
//!
//! Every client frame ends in exactly one reply that echoes its
//! `request_id` (possibly an `error`), so a client pairing sends with
//! receives stays in step. Navigation events are also fanned out to the
//! rider's other sessions and watchers. Errors never carry internals: the
//! cause goes to the log, the client gets the documented code.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

use crate::auth::{Claims, TokenKind};
use crate::clock::{unix_ms, unix_s};
use crate::navigation::Navigator;
use crate::node::AppState;
use crate::protocol::{
    ClientMessage, ErrorCode, MAX_EPOCH_BYTES, OutKind, Reply, RequestError, RequestId,
    RequestKind, ServerMessage, Since, StreamState, close, parse_request,
};
use crate::session::SessionHandle;
use crate::telemetry::LogLimiter;
use crate::transit::DisabilityType;

/// A token bucket: `rate` per second, holding up to `burst`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Refused frames counted in fixed windows of `ws.flood_window`.
struct Rejections {
    since: Instant,
    count: u32,
}

/// Where the token-expiry clock of a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpiryPhase {
    /// Before `exp - warning`.
    Valid,
    /// `token_expiring` sent; waiting for `refresh_token` until `exp`.
    Warned,
}

/// How often one session may log a refused request.
const REFUSALS_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct SessionCtx {
    pub handle: SessionHandle,
    pub user_id: Arc<str>,
    /// `exp` of the token in force (unix seconds).
    pub token_exp: i64,
    expiry: ExpiryPhase,
    /// Users this session watches; dropped when it closes.
    pub watched: Vec<Arc<str>>,
    /// The account's default disability type, read once at connect.
    default_type: Option<DisabilityType>,
    protocol_errors: u32,
    rate: RateLimit,
    /// Frames the rate limit refused in the current flood window.
    rejections: Rejections,
    nav: Navigator,
    /// Set by `watch`/`resume`: what to release once the reply is queued.
    release: Option<Release>,
    /// One `bad_request` / `request_failed` / `rate_limited` line per
    /// session per 10 s, with the count held back: a flooding client must
    /// not flood the log.
    refusals_log: LogLimiter,
}

/// A stream whose live events are held for a session until its reply to
/// `watch`/`resume` is queued, and what follows the reply: the missed
/// events, from `last` on under `epoch` (`None`: the request failed, the
/// held events are released as they are).
struct Release {
    stream: Arc<str>,
    epoch: Option<Arc<str>>,
    last: u64,
    /// Whether the client gave its position (`since`).
    told: bool,
    missed: Vec<(u64, Utf8Bytes)>,
}

impl SessionCtx {
    pub async fn new(state: &AppState, handle: SessionHandle, claims: &Claims) -> SessionCtx {
        let default_type = match state.auth.account(&claims.sub).await {
            Ok(account) => account.and_then(|a| a.disability_type),
            Err(e) => {
                tracing::warn!(event = "account_lookup_failed", cause = %e, "using PHY as default type");
                None
            }
        };
        let cfg = &state.config.ws;
        SessionCtx {
            user_id: handle.user_id.clone(),
            handle,
            token_exp: claims.exp,
            expiry: ExpiryPhase::Valid,
            watched: Vec::new(),
            default_type,
            protocol_errors: 0,
            rate: RateLimit::new(cfg.rate_per_s, cfg.rate_burst),
            rejections: Rejections {
                since: Instant::now(),
                count: 0,
            },
            nav: Navigator::default(),
            release: None,
            refusals_log: LogLimiter::new(REFUSALS_LOG_EVERY),
        }
    }

    /// Serialises and queues a frame. Returns false if the session is gone
    /// or being closed for a full queue.
    pub fn send(
        &self,
        state: &AppState,
        message: ServerMessage,
        request_id: Option<RequestId>,
    ) -> bool {
        let kind = message.kind();
        let reply = Reply {
            message,
            request_id,
        };
        let text = match serde_json::to_string(&reply) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(event = "serialize_failed", cause = %e, "reply not serialisable");
                return false;
            }
        };
        self.send_text(state, text.into(), kind)
    }

    fn send_text(&self, state: &AppState, text: Utf8Bytes, kind: OutKind) -> bool {
        let ok = self.handle.send_text(text, &state.metrics).is_ok();
        if ok {
            state.metrics.message_out(kind);
        }
        ok
    }

    fn send_error(
        &mut self,
        state: &AppState,
        code: ErrorCode,
        message: String,
        request_id: Option<RequestId>,
    ) {
        state.metrics.error(code);
        self.send(state, ServerMessage::Error { code, message }, request_id);
    }

    /// Logs a refused request (at most one line per session per
    /// [`REFUSALS_LOG_EVERY`], with how many were held back) and answers it.
    fn refuse(
        &mut self,
        state: &AppState,
        event: &'static str,
        kind: RequestKind,
        code: ErrorCode,
        message: String,
        request_id: Option<RequestId>,
    ) {
        if let Some(suppressed) = self.refusals_log.allow() {
            tracing::info!(
                event,
                r#type = kind.as_str(),
                code = code.as_str(),
                cause = %message,
                suppressed,
                "request refused"
            );
        }
        self.send_error(state, code, message, request_id);
    }

    /// Counts a malformed frame; true if the session must now close (1008).
    fn protocol_error(&mut self, state: &AppState) -> bool {
        self.protocol_errors += 1;
        if self.protocol_errors >= state.config.ws.max_protocol_errors {
            tracing::info!(
                event = "too_many_protocol_errors",
                count = self.protocol_errors,
                cause = "ws.max_protocol_errors malformed frames in a row",
                "closing with 1008"
            );
            self.handle
                .signal
                .close(close::POLICY, "too many protocol errors");
            return true;
        }
        false
    }

    /// A frame the rate limit refused. A session that keeps sending past
    /// its limit (`ws.flood_rejections` refusals within `ws.flood_window`)
    /// is flooding: true when it must now close (1008).
    fn rejected(&mut self, state: &AppState) -> bool {
        let cfg = &state.config.ws;
        let r = &mut self.rejections;
        if r.since.elapsed() >= cfg.flood_window {
            r.since = Instant::now();
            r.count = 0;
        }
        r.count += 1;
        if r.count < cfg.flood_rejections {
            return false;
        }
        state.metrics.flood_closes.inc();
        tracing::warn!(
            event = "session_flooding",
            cause = "rate limit exceeded",
            rejected = r.count,
            window_s = cfg.flood_window.as_secs_f64(),
            "closing with 1008"
        );
        self.handle
            .signal
            .close(close::POLICY, "rate limit exceeded");
        true
    }

    /// A ping or pong from the client: control frames count against the
    /// rate limit like requests. True if the session must close.
    pub fn on_control(&mut self, state: &AppState) -> bool {
        !self.rate.allow() && self.rejected(state)
    }

    /// A binary frame: the contract is JSON text only.
    pub fn on_binary(&mut self, state: &AppState) -> bool {
        state.metrics.message_in(RequestKind::Invalid);
        self.send_error(
            state,
            ErrorCode::ParsingError,
            "binary frames are not supported; send JSON text".into(),
            None,
        );
        self.protocol_error(state)
    }

    /// Handles one text frame. Returns true if the session must close.
    pub async fn on_text(&mut self, state: &AppState, text: &str) -> bool {
        let started = std::time::Instant::now();
        let (message, request_id) = match parse_request(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                state.metrics.message_in(e.kind);
                self.refuse(
                    state,
                    "bad_request",
                    e.kind,
                    e.code,
                    e.message,
                    e.request_id,
                );
                return self.protocol_error(state);
            }
        };
        let kind = message.kind();
        state.metrics.message_in(kind);
        if !self.rate.allow() {
            self.refuse(
                state,
                "rate_limited",
                kind,
                ErrorCode::RateLimited,
                "too many requests; slow down".into(),
                request_id,
            );
            return self.rejected(state);
        }
        self.protocol_errors = 0;
        let result = self.handle_request(state, message).await;
        match result {
            Ok(reply) => {
                let fan_out = reply.is_navigation_event();
                let out_kind = reply.kind();
                if fan_out {
                    // Serialise the event once: the direct reply adds the
                    // request id; peers get the bare event.
                    match serde_json::to_string(&reply) {
                        Ok(event_json) => {
                            let direct = with_request_id(&event_json, request_id.as_ref());
                            self.send_text(state, direct.into(), out_kind);
                            state
                                .fanout
                                .publish(&self.user_id, self.handle.key, &event_json);
                        }
                        Err(e) => {
                            tracing::error!(event = "serialize_failed", cause = %e, "event not serialisable");
                        }
                    }
                } else {
                    self.send(state, reply, request_id);
                }
            }
            Err(RequestError::Client(code, message)) => {
                self.refuse(state, "request_failed", kind, code, message, request_id);
            }
            Err(RequestError::Internal(cause)) => {
                tracing::error!(event = "request_internal_error", r#type = kind.as_str(), cause = %cause, "request failed");
                self.send_error(
                    state,
                    ErrorCode::InternalError,
                    "internal error; try again".into(),
                    request_id,
                );
            }
        }
        // A watch or resume queued its reply above; now the missed events,
        // then the live ones held meanwhile (or just those, if it failed).
        if let Some(release) = self.release.take() {
            let queued = self.handle.release_stream(
                &release.stream,
                release.epoch.as_ref(),
                release.last,
                release.told,
                release.missed,
                &state.metrics,
            );
            state.fanout.count_replayed(queued);
        }
        state.metrics.handled(kind, started.elapsed().as_secs_f64());
        false
    }

    /// Holds live events of `stream` for this session until the reply to
    /// the current request is queued (see [`Release`]).
    fn hold(&mut self, stream: &Arc<str>) {
        self.handle.hold_stream(stream);
        self.release = Some(Release {
            stream: stream.clone(),
            epoch: None,
            last: 0,
            told: false,
            missed: Vec::new(),
        });
    }

    /// Where `stream` stands and what the client at `since` missed; sets
    /// up the release that follows the reply and returns the reply's
    /// stream fields.
    async fn recover(
        &mut self,
        state: &AppState,
        stream: &Arc<str>,
        since: Option<Since>,
    ) -> Result<StreamState, RequestError> {
        let asked = since.is_some();
        let since_offset = since.as_ref().map(|s| s.offset);
        let recovery = state
            .bus
            .recover(stream, since.map(|s| (s.offset, s.epoch)))
            .await
            .map_err(|e| RequestError::Internal(format!("stream recovery: {e}")))?;
        let missed = state.fanout.replay_frames(&recovery);
        let last = match since_offset {
            Some(offset) if recovery.recovered => offset,
            _ => recovery.offset,
        };
        let epoch: Arc<str> = recovery.epoch.as_str().into();
        self.release = Some(Release {
            stream: stream.clone(),
            epoch: Some(epoch),
            last,
            told: asked,
            missed,
        });
        Ok(StreamState {
            offset: recovery.offset,
            epoch: recovery.epoch,
            recovered: asked.then_some(recovery.recovered),
            missed: asked.then_some(recovery.missed),
        })
    }

    async fn handle_request(
        &mut self,
        state: &AppState,
        message: ClientMessage,
    ) -> Result<ServerMessage, RequestError> {
        let user = self.user_id.clone();
        match message {
            ClientMessage::Ping {} => Ok(ServerMessage::Pong {
                server_time: unix_ms(),
            }),
            ClientMessage::StartNavigation {
                origin,
                destination,
                disability_type,
            } => {
                let dt = disability_type
                    .or(self.default_type)
                    .unwrap_or(DisabilityType::Physical);
                self.nav
                    .start(&state.navigation, &user, &origin, &destination, dt)
                    .await
            }
            ClientMessage::LocationUpdate {
                latitude,
                longitude,
                accuracy,
                route_id,
            } => {
                self.nav
                    .update(
                        &state.navigation,
                        &user,
                        latitude,
                        longitude,
                        accuracy,
                        route_id.as_deref(),
                    )
                    .await
            }
            ClientMessage::SwitchRoute { target_rank } => {
                self.nav.switch(&state.navigation, &user, target_rank).await
            }
            ClientMessage::RecalculateRoute {
                latitude,
                longitude,
                disability_type,
            } => {
                self.nav
                    .recalculate(
                        &state.navigation,
                        &user,
                        latitude,
                        longitude,
                        disability_type,
                    )
                    .await
            }
            ClientMessage::EndNavigation {} => self.nav.end(&state.navigation, &user).await,
            ClientMessage::ShareNavigation { guardian_id } => {
                check_user_id(&guardian_id)?;
                if guardian_id == *user {
                    return Err(RequestError::Client(
                        ErrorCode::InvalidParameters,
                        "cannot share with yourself".into(),
                    ));
                }
                match state.auth.account(&guardian_id).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(RequestError::Client(
                            ErrorCode::InvalidParameters,
                            "no such guardian account".into(),
                        ));
                    }
                    Err(e) => return Err(RequestError::Internal(e.to_string())),
                }
                state
                    .stores
                    .shares
                    .share(&user, &guardian_id)
                    .await
                    .map_err(RequestError::store)?;
                tracing::info!(event = "navigation_shared", guardian_id = %guardian_id, "shared with guardian");
                Ok(ServerMessage::Shared { guardian_id })
            }
            ClientMessage::UnshareNavigation { guardian_id } => {
                check_user_id(&guardian_id)?;
                state
                    .stores
                    .shares
                    .unshare(&user, &guardian_id)
                    .await
                    .map_err(RequestError::store)?;
                // Every node drops this guardian's watch of the rider.
                state.fanout.unshare(&user, &guardian_id);
                Ok(ServerMessage::Unshared { guardian_id })
            }
            ClientMessage::Watch {
                user_id: rider,
                since,
            } => {
                check_user_id(&rider)?;
                check_since(since.as_ref())?;
                let allowed = state
                    .stores
                    .shares
                    .is_shared(&rider, &user)
                    .await
                    .map_err(RequestError::store)?;
                if !allowed {
                    return Err(RequestError::Client(
                        ErrorCode::Forbidden,
                        "that user has not shared navigation with you".into(),
                    ));
                }
                let rider: Arc<str> = rider.into();
                if !self.watched.contains(&rider) {
                    self.watched.push(rider.clone());
                }
                // From the registration on, the rider's live events wait
                // until the reply and the missed events are queued.
                self.hold(&rider);
                // Registered again even when this session watched before: an
                // unshare (here or on another node) removed the registration
                // but not this session's list.
                if state.sessions.watch(rider.clone(), self.handle.key) {
                    state.fanout.take_interest(&rider);
                    state.fanout.interest_settled().await;
                }
                let stream = self.recover(state, &rider, since).await?;
                let active_route = self.nav.summary(&state.navigation, &rider).await?;
                Ok(ServerMessage::Watching {
                    user_id: rider.to_string(),
                    active_route,
                    stream,
                })
            }
            ClientMessage::Resume { user_id, since } => {
                check_since(since.as_ref())?;
                if *user_id != *user {
                    return Err(RequestError::Client(
                        ErrorCode::Forbidden,
                        "resume is for your own stream; use watch for another rider".into(),
                    ));
                }
                // The session's own user is already followed (interest was
                // taken at connect).
                self.hold(&user);
                let stream = self.recover(state, &user, since).await?;
                let active_route = self.nav.summary(&state.navigation, &user).await?;
                Ok(ServerMessage::Resumed {
                    user_id,
                    active_route,
                    stream,
                })
            }
            ClientMessage::Unwatch { user_id: rider } => {
                check_user_id(&rider)?;
                if let Some(i) = self.watched.iter().position(|w| **w == *rider) {
                    self.watched.swap_remove(i);
                    self.handle.forget_stream(&rider);
                    if state.sessions.unwatch(&rider, self.handle.key) {
                        state.fanout.release_interest(&rider);
                    }
                }
                Ok(ServerMessage::Unwatched { user_id: rider })
            }
            ClientMessage::RefreshToken { token } => {
                let claims = state
                    .auth
                    .keys
                    .verify(&token, TokenKind::Access)
                    .map_err(|e| {
                        RequestError::Client(
                            ErrorCode::InvalidParameters,
                            format!("token refused: {e}"),
                        )
                    })?;
                if claims.sub != *user {
                    return Err(RequestError::Client(
                        ErrorCode::Forbidden,
                        "token belongs to another user".into(),
                    ));
                }
                if state
                    .auth
                    .is_revoked(&claims)
                    .await
                    .map_err(|e| RequestError::Internal(e.to_string()))?
                {
                    return Err(RequestError::Client(
                        ErrorCode::InvalidParameters,
                        "token refused: revoked".into(),
                    ));
                }
                self.handle.set_family(claims.fam.as_deref().map(Arc::from));
                self.token_exp = claims.exp;
                self.expiry = ExpiryPhase::Valid;
                tracing::info!(
                    event = "token_refreshed",
                    expires_at = claims.exp,
                    "token refreshed in band"
                );
                Ok(ServerMessage::TokenRefreshed {
                    token_expires_at: claims.exp,
                })
            }
        }
    }

    /// When the token timer should next fire.
    pub fn next_token_deadline(&self, state: &AppState) -> Instant {
        let warning = state.config.ws.token_expiry_warning.as_secs() as i64;
        let at = match self.expiry {
            ExpiryPhase::Valid => self.token_exp - warning,
            ExpiryPhase::Warned => self.token_exp,
        };
        let in_s = (at - unix_s()).max(0) as u64;
        Instant::now() + Duration::from_secs(in_s)
    }

    /// The token timer fired. Returns true if the session must close (4001).
    pub fn on_token_deadline(&mut self, state: &AppState) -> bool {
        match self.expiry {
            ExpiryPhase::Valid => {
                self.expiry = ExpiryPhase::Warned;
                self.send(
                    state,
                    ServerMessage::TokenExpiring {
                        expires_at: self.token_exp,
                    },
                    None,
                );
                false
            }
            ExpiryPhase::Warned => {
                tracing::info!(
                    event = "token_expired",
                    cause = "no refresh_token before the token's exp",
                    "closing with 4001"
                );
                self.handle
                    .signal
                    .close(close::TOKEN_EXPIRED, "token expired");
                true
            }
        }
    }
}

fn check_user_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty() || id.len() > 128 {
        return Err(RequestError::Client(
            ErrorCode::InvalidParameters,
            "user id must be 1–128 characters".into(),
        ));
    }
    Ok(())
}

fn check_since(since: Option<&Since>) -> Result<(), RequestError> {
    if since.is_some_and(|s| s.epoch.len() > MAX_EPOCH_BYTES) {
        return Err(RequestError::Client(
            ErrorCode::InvalidParameters,
            format!("since.epoch is longer than {MAX_EPOCH_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Appends `"request_id":…` to a serialised JSON object.
fn with_request_id(event_json: &str, request_id: Option<&RequestId>) -> String {
    match request_id.and_then(|id| serde_json::to_string(id).ok()) {
        Some(id) if event_json.ends_with('}') => {
            let mut out = String::with_capacity(event_json.len() + id.len() + 16);
            out.push_str(&event_json[..event_json.len() - 1]);
            out.push_str(",\"request_id\":");
            out.push_str(&id);
            out.push('}');
            out
        }
        _ => event_json.to_string(),
    }
}
