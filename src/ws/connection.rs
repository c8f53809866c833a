//! One WebSocket session: a reader (this task) and a writer task.
//!
//! The writer owns the sink and drains the session's bounded queue, writing
//! a batch with `feed` and flushing once when the queue is empty; it also
//! sends the heartbeat pings. The reader owns everything else: parsing,
//! rate limiting, the heartbeat deadline, token expiry, and the one reply
//! per request. Whoever decides to close calls `CloseSignal::close`; the writer
//! then sends the close frame, and the reader lingers briefly so the peer's
//! close reply is read rather than answered with a TCP reset.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use super::dispatch::SessionCtx;
use crate::auth::Claims;
use crate::config::MultiDevice;
use crate::limits::ConnectionSlot;
use crate::metrics::Metrics;
use crate::node::AppState;
use crate::protocol::{ServerMessage, close};
use crate::session::{CloseSignal, Outbox};

/// How long a closing writer may spend on what it was writing, then on the
/// replies still queued and the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// How long the reader waits for the peer's close reply after ours.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What a session starts from: the upgraded socket and the token's claims,
/// boxed so that the session's task holds a pointer to them rather than
/// their bytes. An async fn keeps its arguments for its whole life, and
/// these are the largest (the socket ~370 bytes, the claims ~170): held by
/// value they would cost every idle session their size until it closes.
pub(super) struct Opening {
    pub(super) socket: Option<WebSocket>,
    pub(super) claims: Claims,
    /// The session's place under `ws.max_connections`, held until it ends.
    pub(super) _slot: ConnectionSlot,
    /// nginx's id of the upgrade request (`X-Request-Id`), logged with
    /// every line of the session.
    pub(super) request_id: Option<Arc<str>>,
}

/// Runs one session.
pub(super) async fn run(state: AppState, opening: Box<Opening>) {
    let session_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let user_id: Arc<str> = opening.claims.sub.clone().into();
    let span = tracing::info_span!(
        "session",
        session_id = %session_id,
        user_id = %user_id,
        node_id = %state.node_id,
        request_id = tracing::field::Empty,
    );
    if let Some(id) = &opening.request_id {
        span.record("request_id", &**id);
    }
    session(state, opening, session_id, user_id)
        .instrument(span)
        .await;
}

async fn session(
    state: AppState,
    mut opening: Box<Opening>,
    session_id: Arc<str>,
    user_id: Arc<str>,
) {
    let started = std::time::Instant::now();
    let cfg = &state.config.ws;
    let (handle, outbox) = state.sessions.open(
        session_id.clone(),
        user_id.clone(),
        cfg.queue_frames,
        cfg.queue_bytes,
        opening.claims.fam.as_deref().map(Arc::from),
    );
    state.metrics.sessions.inc();
    state.fanout.take_interest(&user_id);
    tracing::info!(event = "session_opened", "session opened");

    let Some((sink, stream)) = opening.socket.take().map(StreamExt::split) else {
        return;
    };
    let last_ping = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(
        Writer {
            outbox,
            signal: handle.signal.clone(),
            ping_every: cfg.ping_interval,
            write_timeout: cfg.write_timeout,
            last_ping: last_ping.clone(),
            metrics: state.metrics.clone(),
        }
        .run(sink)
        .in_current_span(),
    );

    if state.config.ws.multi_device == MultiDevice::Replace {
        state.fanout.replace_older_sessions(&handle);
    }

    let mut ctx = SessionCtx::new(&state, handle.clone(), &opening.claims).await;
    // A targeted bus subscribes to this user's channel in the background;
    // wait for it (briefly) so events sent after `connected` arrive.
    state.fanout.interest_settled().await;
    ctx.send(
        &state,
        ServerMessage::Connected {
            user_id: user_id.to_string(),
            session_id: session_id.to_string(),
            node_id: state.node_id.to_string(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_interval_s: state.config.ws.ping_interval.as_secs(),
            token_expires_at: ctx.token_exp,
        },
        None,
    );

    let mut stream = reader(&state, &mut ctx, stream, &last_ping).await;
    // A reader that ended without a decision saw the connection vanish.
    handle.signal.close(close::ABNORMAL, "connection lost");

    // The close decision is made; let the writer send the close frame, then
    // read until the peer's close reply (or give up after a short linger).
    let _ = writer.await;
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;

    let code = handle
        .signal
        .reason()
        .map(|r| r.code)
        .unwrap_or(close::NORMAL);
    state.sessions.close(&handle, &ctx.watched);
    for user in ctx.watched.iter().chain(std::iter::once(&user_id)) {
        state.fanout.release_interest(user);
    }
    state.metrics.sessions.dec();
    state.metrics.closed(code);
    tracing::info!(
        event = "session_closed",
        close_code = code,
        reason = handle
            .signal
            .reason()
            .map(|r| r.reason.as_ref())
            .unwrap_or("peer closed"),
        duration_s = started.elapsed().as_secs_f64(),
        "session closed"
    );
}

/// Reads frames until the session is to be closed; returns the stream so
/// the caller can linger for the close handshake.
/// Liveness: only a pong answering one of our pings (numbered by the writer
/// in `last_ping`) moves the heartbeat deadline. A client that sends but
/// never reads cannot keep its session alive; one that reads answers pings
/// in its WebSocket layer.
async fn reader(
    state: &AppState,
    ctx: &mut SessionCtx,
    mut stream: SplitStream<WebSocket>,
    last_ping: &AtomicU64,
) -> SplitStream<WebSocket> {
    let signal = ctx.handle.signal.clone();
    let pong_timeout = state.config.ws.pong_timeout;
    let mut heartbeat = pin!(sleep(pong_timeout));
    let mut token_timer = pin!(sleep_until(ctx.next_token_deadline(state)));
    loop {
        tokio::select! {
            biased;
            _ = signal.token.cancelled() => break,
            _ = state.shutdown.cancelled() => {
                if !answer_received(state, ctx, &mut stream).await {
                    signal.close(close::GOING_AWAY, "node draining");
                }
                break;
            }
            _ = &mut heartbeat => {
                state.metrics.heartbeat_timeouts.inc();
                tracing::info!(event = "heartbeat_timeout", timeout_s = pong_timeout.as_secs_f64(), cause = "no pong to our pings", "client does not read; closing");
                // The peer is gone or unresponsive; close like a policy breach.
                signal.close(close::POLICY, "heartbeat timeout");
                break;
            }
            _ = &mut token_timer => {
                if ctx.on_token_deadline(state) {
                    break;
                }
                token_timer.as_mut().reset(ctx.next_token_deadline(state));
            }
            frame = stream.next() => {
                match frame {
                    None => {
                        signal.close(close::ABNORMAL, "connection lost");
                        break;
                    }
                    Some(Err(e)) => {
                        on_read_error(&signal, e, &state.metrics);
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let expiry_before = ctx.token_exp;
                        if Box::pin(ctx.on_text(state, text.as_str())).await {
                            break;
                        }
                        if ctx.token_exp != expiry_before {
                            token_timer.as_mut().reset(ctx.next_token_deadline(state));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if ctx.on_binary(state) {
                            break;
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        if answers_our_ping(&payload, last_ping.load(Ordering::Acquire)) {
                            heartbeat.as_mut().reset(Instant::now() + pong_timeout);
                        }
                        if ctx.on_control(state) {
                            break;
                        }
                    }
                    // tungstenite queues the answer itself, keeping only the
                    // latest unanswered one when the peer does not read.
                    Some(Ok(Message::Ping(_))) => {
                        if ctx.on_control(state) {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| f.code).unwrap_or(close::NORMAL);
                        signal.close(code, "closed by client");
                        break;
                    }
                }
            }
        }
    }
    stream
}

/// On drain: answers the requests the client sent before it (frames that
/// can be read without waiting, at most `ws.queue_frames` of them), so the
/// 1001 comes after their replies. Returns whether one of them closed the
/// session.
async fn answer_received(
    state: &AppState,
    ctx: &mut SessionCtx,
    stream: &mut SplitStream<WebSocket>,
) -> bool {
    for _ in 0..state.config.ws.queue_frames {
        match stream.next().now_or_never() {
            Some(Some(Ok(Message::Text(text)))) => {
                if Box::pin(ctx.on_text(state, text.as_str())).await {
                    return true;
                }
            }
            Some(Some(Ok(Message::Close(_)))) | Some(None) | Some(Some(Err(_))) | None => {
                return false;
            }
            // Binary, ping and pong frames need no answer here.
            Some(Some(Ok(_))) => {}
        }
    }
    false
}

/// Maps a read error to the close code the contract documents.
fn on_read_error(signal: &CloseSignal, e: axum::Error, metrics: &Metrics) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        // Reading a client ping queues its pong; with the write buffer
        // full of unread pongs the read itself fails: the peer does not
        // read, the same 4008 as when the writer finds the buffer full.
        Some(tungstenite::Error::WriteBufferFull(_)) => {
            if signal.reason().is_none() {
                metrics.queue_full.inc();
                tracing::warn!(
                    event = "session_queue_full",
                    cause = "write buffer full: the peer does not read",
                    "closing with 4008"
                );
            }
            signal.close(close::TOO_SLOW, "write buffer full");
        }
        Some(tungstenite::Error::Capacity(_)) => {
            tracing::info!(
                event = "frame_too_large",
                cause = "a frame over ws.max_frame_bytes",
                "closing with 1009"
            );
            signal.close(close::TOO_BIG, "frame too large");
        }
        Some(tungstenite::Error::Utf8(_)) => {
            tracing::info!(
                event = "invalid_utf8",
                "text frame is not UTF-8; closing with 1007"
            );
            signal.close(close::INVALID_PAYLOAD, "text frame is not valid UTF-8");
        }
        Some(tungstenite::Error::Protocol(p)) => {
            tracing::info!(event = "ws_protocol_error", cause = %p, "WebSocket protocol violation");
            signal.close(close::POLICY, "protocol violation");
        }
        _ => {
            tracing::debug!(event = "ws_read_error", cause = %inner, "connection lost");
            signal.close(close::ABNORMAL, "connection lost");
        }
    }
}

/// Whether a pong carries the number of one of our pings (1..=`last`).
fn answers_our_ping(payload: &[u8], last: u64) -> bool {
    <[u8; 8]>::try_from(payload).is_ok_and(|n| (1..=last).contains(&u64::from_be_bytes(n)))
}

/// Why the writer stopped writing.
enum WriteFail {
    /// The connection is gone.
    Lost,
    /// A write made no progress for `ws.write_timeout`: the peer stopped
    /// reading.
    Stalled,
    /// The WebSocket layer's unsent bytes reached `ws.write_buffer_bytes`
    /// (typically answers to pings the peer sends but never reads).
    BufferFull,
}

/// Owns the sink: writes queued frames, pings, and finally the close frame.
struct Writer {
    outbox: Outbox,
    signal: Arc<CloseSignal>,
    ping_every: Duration,
    write_timeout: Duration,
    /// The number of the latest ping sent, for the reader's liveness check.
    last_ping: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// One socket operation, bounded by `write_timeout`: each completed
    /// operation (a frame taken, a flush done) is progress.
    async fn timed(
        &self,
        op: impl Future<Output = Result<(), axum::Error>>,
    ) -> Result<(), WriteFail> {
        match tokio::time::timeout(self.write_timeout, op).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match e.into_inner().downcast_ref::<tungstenite::Error>() {
                Some(tungstenite::Error::WriteBufferFull(_)) => Err(WriteFail::BufferFull),
                _ => Err(WriteFail::Lost),
            },
            Err(_) => Err(WriteFail::Stalled),
        }
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    async fn write_batch(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        first: Message,
    ) -> Result<(), WriteFail> {
        let mut next = Some(first);
        while let Some(msg) = next {
            self.outbox.written(&msg);
            self.timed(sink.feed(msg)).await?;
            next = self.outbox.try_recv();
        }
        self.timed(sink.flush()).await
    }

    async fn run(mut self, mut sink: SplitSink<WebSocket, Message>) {
        let mut ping = tokio::time::interval_at(Instant::now() + self.ping_every, self.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signal = self.signal.clone();
        let result = loop {
            tokio::select! {
                biased;
                _ = signal.token.cancelled() => break Ok(()),
                msg = self.outbox.recv() => {
                    let batch = self.write_batch(&mut sink, msg);
                    let mut batch = std::pin::pin!(batch);
                    tokio::select! {
                        biased;
                        r = &mut batch => if r.is_err() { break r },
                        // A peer that stopped reading can block a write (here
                        // and for a ping); a close decision (heartbeat, 4008,
                        // drain, …) must still get through at once. A reply
                        // in mid-write is not dropped on a drain or a normal
                        // close: it gets the close's flush time to finish.
                        _ = signal.token.cancelled() => {
                            if signal.reason().is_none_or(|r| r.code != close::TOO_SLOW) {
                                let _ = tokio::time::timeout(CLOSE_FLUSH, &mut batch).await;
                            }
                            break Ok(());
                        }
                    }
                }
                _ = ping.tick() => {
                    let n = self.last_ping.fetch_add(1, Ordering::AcqRel) + 1;
                    let payload = Bytes::copy_from_slice(&n.to_be_bytes());
                    tokio::select! {
                        biased;
                        r = self.timed(sink.send(Message::Ping(payload))) => if r.is_err() { break r },
                        _ = signal.token.cancelled() => break Ok(()),
                    }
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(WriteFail::Lost) => {
                signal.close(close::ABNORMAL, "connection lost");
                return;
            }
            Err(WriteFail::Stalled) => {
                if signal.reason().is_none() {
                    self.metrics.write_timeouts.inc();
                    tracing::warn!(
                        event = "write_timeout",
                        cause = "peer stopped reading",
                        timeout_s = self.write_timeout.as_secs_f64(),
                        "no write progress; closing with 4008"
                    );
                }
                signal.close(close::TOO_SLOW, "write stalled");
            }
            Err(WriteFail::BufferFull) => {
                if signal.reason().is_none() {
                    self.metrics.queue_full.inc();
                    tracing::warn!(
                        event = "session_queue_full",
                        cause = "write buffer full: the peer does not read",
                        "closing with 4008"
                    );
                }
                signal.close(close::TOO_SLOW, "write buffer full");
            }
        }
        let reason = signal.reason().cloned();
        let code = reason.as_ref().map(|r| r.code).unwrap_or(close::NORMAL);
        // On a drain or a normal close, flush replies already queued; a session
        // closed for being too slow gets only the close frame.
        let flush_queued = code != close::TOO_SLOW;
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            if flush_queued {
                while let Some(msg) = self.outbox.try_recv() {
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                }
            }
            let frame = CloseFrame {
                code,
                reason: reason
                    .map(|r| r.reason.to_string())
                    .unwrap_or_default()
                    .into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        })
        .await;
    }
}
