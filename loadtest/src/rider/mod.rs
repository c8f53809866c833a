//! Virtual users: a rider, and for the guardian share a guardian that
//! watches it (README, "The rider" and "The guardian").
//!
//! This module owns what every rider of a run shares — the [`RunCtx`], the
//! tick grid, the plan of one incarnation — and the steps a rider and its
//! guardian both take: logging in with retries, opening a session and
//! reading `connected`, closing. The rider task is in [`rider`], its
//! guardian in [`guardian`]; [`wire`] writes requests and reads reply heads,
//! [`seq`] checks the `seq` of peer events.

mod guardian;
#[allow(clippy::module_inception)] // `rider::rider` is the rider's task, beside `rider::guardian`.
mod rider;
mod seq;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use navcast::protocol::{DisabilityType, Reply, ServerMessage};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, Accounts, Creds, Session};
use crate::motion::Trace;
use crate::net::{Transport, Ws, cause_of};
use crate::profile::RiderSpec;
use crate::recorder::Recorder;
use crate::summary::Metric;

pub(crate) use rider::rider;

/// A station riders travel between.
#[derive(Debug, Clone)]
pub(crate) struct StationPoint {
    pub(crate) name: String,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

/// What every rider of a run shares.
pub(crate) struct RunCtx {
    pub(crate) transport: Arc<Transport>,
    pub(crate) rec: Recorder,
    pub(crate) spec: RiderSpec,
    pub(crate) time_scale: f64,
    pub(crate) stations: Vec<StationPoint>,
    pub(crate) types: Vec<DisabilityType>,
    pub(crate) type_weights: Vec<f64>,
    pub(crate) trace: Option<Trace>,
    pub(crate) accounts: Accounts,
    pub(crate) seed: u64,
    /// Stops every rider now (ctrl-c, a stress run that broke).
    pub(crate) abort: CancellationToken,
    /// Timer-driven requests are due on a grid from `epoch`, so riders
    /// whose ticks fall close together share one timer wake-up (at a few
    /// hundred requests per second wake-ups cost more than the requests).
    /// The step (ns) is set each second so that a grid point holds about
    /// [`GRID_BURST`] requests: at high rates it shrinks to nothing, so the
    /// client never bunches requests enough to change what it measures.
    pub(crate) tick_grid_ns: AtomicU64,
    /// The largest step (`--tick-grid-ms`); zero disables the grid.
    pub(crate) max_tick_grid: Duration,
    pub(crate) epoch: Instant,
}

/// Timer-driven requests per grid point the grid aims at.
const GRID_BURST: f64 = 4.0;

impl RunCtx {
    /// `t` rounded up to the tick grid.
    fn on_grid(&self, t: Instant) -> Instant {
        let step = u128::from(self.tick_grid_ns.load(Ordering::Relaxed));
        if step == 0 || t <= self.epoch {
            return t;
        }
        let since = t.duration_since(self.epoch).as_nanos();
        let k = since.div_ceil(step);
        self.epoch + Duration::from_nanos((k * step) as u64)
    }

    /// Sets the grid for `riders` running riders.
    pub(crate) fn set_grid(&self, riders: u64) {
        let [lo, hi] = self.spec.update_interval_s;
        let rate = riders as f64 * 2.0 / (lo + hi).max(1e-9);
        let max = self.max_tick_grid.as_secs_f64();
        let step = if rate > 0.0 {
            max.min(GRID_BURST / rate)
        } else {
            max
        };
        // Below a millisecond the timer wheel groups ticks by itself.
        let step = if step < 0.001 { 0.0 } else { step };
        self.tick_grid_ns
            .store((step * 1e9) as u64, Ordering::Relaxed);
    }
}

/// One incarnation of one user, with absolute times.
#[derive(Debug, Clone)]
pub(crate) struct RiderPlan {
    pub(crate) user: u64,
    pub(crate) incarnation: u32,
    pub(crate) start: Instant,
    pub(crate) stop: Instant,
    pub(crate) guardian: bool,
    pub(crate) deviating: bool,
    /// Starts routes and sends updates; `false`: an idle session only.
    pub(crate) navigating: bool,
}

/// How a rider and its guardian coordinate.
struct Pair {
    /// Guardian → rider: the guardian's user id once logged in (`None`
    /// inside means it gave up).
    guardian_id: watch::Sender<Option<Option<String>>>,
    /// Rider → guardian: the rider's user id once it shared.
    shared: watch::Sender<Option<String>>,
    /// Guardian → rider: a `watching` reply arrived (and the session lives).
    watching: watch::Sender<bool>,
    /// Rider → guardian: the rider stopped; drain and close.
    rider_done: watch::Sender<bool>,
    /// Navigation events the rider got while the guardian watched.
    expected: AtomicU64,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            guardian_id: watch::channel(None).0,
            shared: watch::channel(None).0,
            watching: watch::channel(false).0,
            rider_done: watch::channel(false).0,
            expected: Default::default(),
        }
    }
}

/// How a session ended.
enum End {
    /// Stop time or abort: closed with 1000.
    Stopped,
    /// The server or the network ended it, with this close code.
    Lost(u16),
    /// The user entered a tunnel: the session is abandoned, not closed.
    Tunnel,
}

/// A duration uniform in `[lo, hi]` seconds, time-scaled.
fn uniform_s([lo, hi]: [f64; 2], scale: f64) -> Duration {
    Duration::from_secs_f64((lo + rand::random::<f64>() * (hi - lo)) * scale)
}

/// The wait before reconnect attempt `n` (0, 1, …) after a lost
/// connection or a tunnel: exponential backoff with full jitter, base
/// 0.5 s, cap 30 s (docs/CLIENTS.md §4).
fn jittered_backoff(n: u32) -> Duration {
    let cap = 0.5 * 2f64.powi(n.min(16) as i32);
    Duration::from_secs_f64(rand::random::<f64>() * cap.min(30.0))
}

/// A reconnect still under way when the run ends is a failure only if the
/// network had been back for longer than this (the backoff's cap): a
/// shorter one was cut by the end, not refused by the server.
const RECONNECT_JUDGED_AFTER: Duration = Duration::from_secs(30);

/// Records a reconnect the end of the run cut short, when it counts.
fn unfinished_reconnect(rec: &Recorder, back: Instant) {
    if back.elapsed() > RECONNECT_JUDGED_AFTER {
        rec.failure(Metric::WsReconnect, None, "not back before the end");
    }
}

/// Waits until a flag turns true (or its sender is gone), holding no
/// borrow of the channel across the caller's other awaits.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Sleeps until `at`, or returns false early when `abort` fires.
async fn sleep_or_abort(at: Instant, abort: &CancellationToken) -> bool {
    tokio::select! {
        _ = sleep_until(at) => true,
        _ = abort.cancelled() => false,
    }
}

/// Logs in, retrying once a second until `stop`. Every attempt is a
/// `login` sample or failure.
async fn login_until(
    ctx: &RunCtx,
    host: usize,
    creds: &Creds,
    stop: Instant,
    done: Option<&watch::Sender<bool>>,
) -> Option<Session> {
    let timeout = Duration::from_secs_f64(ctx.spec.login_timeout_s);
    let mut host = host;
    loop {
        if Instant::now() >= stop || ctx.abort.is_cancelled() || done.is_some_and(|d| *d.borrow()) {
            return None;
        }
        let t0 = Instant::now();
        match accounts::login(&ctx.transport, host, creds, timeout).await {
            Ok((session, bytes)) => {
                ctx.rec.success(Metric::Login, t0.elapsed(), bytes);
                return Some(session);
            }
            Err(cause) => {
                let latency = (cause != "connection refused").then(|| t0.elapsed());
                ctx.rec.failure(Metric::Login, latency, &cause);
            }
        }
        host += 1;
        let next = (Instant::now() + Duration::from_secs(1)).min(stop);
        if !sleep_or_abort(next, &ctx.abort).await {
            return None;
        }
    }
}

/// Opens a session and reads its `connected` frame. Records `ws_connect`.
async fn connect(ctx: &RunCtx, host: usize, session: &Session) -> Option<(Ws, String)> {
    let path = format!("/api/v1/ws/{}?token={}", session.user_id, session.access);
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(ctx.spec.connect_timeout_s);
    let attempt = async {
        let mut ws = ctx
            .transport
            .connect(host, &path)
            .await
            .map_err(|e| cause_of(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return match serde_json::from_str::<Reply>(&t) {
                        Ok(Reply {
                            message: ServerMessage::Connected { node_id, .. },
                            ..
                        }) => Ok((ws, node_id, t.len())),
                        _ => Err("first frame is not connected".to_string()),
                    };
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(format!(
                        "closed before connected ({})",
                        f.map(|f| u16::from(f.code)).unwrap_or(1005)
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(cause_of(&e)),
                None => return Err("connection closed".into()),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => {
            ctx.rec
                .failure(Metric::WsConnect, Some(t0.elapsed()), "timeout");
            None
        }
        Ok(Err(cause)) => {
            ctx.rec.failure(Metric::WsConnect, None, &cause);
            None
        }
        Ok(Ok((ws, node, bytes))) => {
            ctx.rec.success(Metric::WsConnect, t0.elapsed(), bytes);
            ctx.rec.node_open(&node);
            Some((ws, node))
        }
    }
}

/// Closes with 1000 and waits (briefly) for the server's close reply.
async fn close_normal(ws: &mut Ws) {
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// After the server's close frame: keep reading so the handshake completes.
async fn finish_close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The close code of a frame that ended the stream, if this frame did.
fn ending(frame: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<u16> {
    match frame {
        Some(Ok(Message::Close(f))) => Some(f.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005)),
        None | Some(Err(_)) => Some(1006),
        _ => None,
    }
}
