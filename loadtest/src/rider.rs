//! One virtual user: a rider, and for the guardian share a guardian that
//! watches it (LOADTEST.md, "Rider behaviour").
//!
//! A rider is one task owning one socket: it logs in, connects, reads
//! `connected`, shares with its guardian and waits until the guardian
//! watches, starts a navigation, then sends a request on a timer every
//! 3–5 s (start_navigation or location_update, 1:10) until its stop time.
//! Replies are matched by `request_id`; latency of a timer-driven request
//! is measured from its scheduled time, so a stalled client or server
//! cannot hide latency. A guardian is a second task and account; every
//! `peer_event` it gets is a fan-out latency sample and a `seq` to check.

use std::collections::HashMap;
use std::f64::consts::TAU;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::protocol::{ClientMessage, DisabilityType, Reply, RequestId, ServerMessage};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, Accounts, Creds, Session};
use crate::motion::{Trace, Walk, offset};
use crate::net::{Transport, Ws, cause_of};
use crate::profile::RiderSpec;
use crate::recorder::Recorder;
use crate::rng::Rng;
use crate::summary::Metric;

/// A station riders travel between.
#[derive(Debug, Clone)]
pub struct StationPoint {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

/// What every rider of a run shares.
pub struct RunCtx {
    pub transport: Arc<Transport>,
    pub rec: Recorder,
    pub spec: RiderSpec,
    pub time_scale: f64,
    pub stations: Vec<StationPoint>,
    pub types: Vec<DisabilityType>,
    pub type_weights: Vec<f64>,
    pub trace: Option<Trace>,
    pub accounts: Accounts,
    pub seed: u64,
    /// Stops every rider now (ctrl-c, a stress run that broke).
    pub abort: CancellationToken,
    /// Timer-driven requests are due on a grid from `epoch`, so riders
    /// whose ticks fall close together share one timer wake-up (at a few
    /// hundred requests per second wake-ups cost more than the requests).
    /// The step (ns) is set each second so that a grid point holds about
    /// [`GRID_BURST`] requests: at high rates it shrinks to nothing, so the
    /// client never bunches requests enough to change what it measures.
    pub tick_grid_ns: AtomicU64,
    /// The largest step (`--tick-grid-ms`); zero disables the grid.
    pub max_tick_grid: Duration,
    pub epoch: Instant,
}

/// Timer-driven requests per grid point the grid aims at.
pub const GRID_BURST: f64 = 4.0;

impl RunCtx {
    /// `t` rounded up to the tick grid.
    pub fn on_grid(&self, t: Instant) -> Instant {
        let step = u128::from(self.tick_grid_ns.load(Ordering::Relaxed));
        if step == 0 || t <= self.epoch {
            return t;
        }
        let since = t.duration_since(self.epoch).as_nanos();
        let k = since.div_ceil(step);
        self.epoch + Duration::from_nanos((k * step) as u64)
    }

    /// Sets the grid for `riders` running riders.
    pub fn set_grid(&self, riders: u64) {
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
pub struct RiderPlan {
    pub user: u64,
    pub incarnation: u32,
    pub start: Instant,
    pub stop: Instant,
    pub guardian: bool,
    pub deviating: bool,
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
    expected: std::sync::atomic::AtomicU64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Start,
    Update,
    Share,
    /// In-band token refresh: no metric of its own.
    Control,
}

struct Pending {
    id: u64,
    kind: Kind,
    scheduled: Instant,
    deadline: Instant,
}

fn metric_of(kind: Kind) -> Option<Metric> {
    match kind {
        Kind::Start => Some(Metric::WsStartNavigation),
        Kind::Update => Some(Metric::WsLocationUpdate),
        Kind::Share => Some(Metric::WsShareNavigation),
        Kind::Control => None,
    }
}

/// A request as text, with its `request_id` appended (the wire type has
/// no field for it: the id belongs to the envelope, not the request).
fn encode(msg: &ClientMessage, id: u64) -> String {
    let mut s = serde_json::to_string(msg).expect("client messages serialise");
    debug_assert!(s.ends_with('}'));
    s.pop();
    s.push_str(",\"request_id\":");
    s.push_str(itoa(id).as_str());
    s.push('}');
    s
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// The two fields every frame is dispatched on. Most replies are
/// `navigation_update`s, of which a rider needs nothing more; reading only
/// these (the rest is skipped, not built) spares the full parse of the
/// flattened, internally tagged [`Reply`], the client's largest CPU cost
/// at saturation.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    request_id: Option<&'a serde_json::value::RawValue>,
}

impl Head<'_> {
    /// The id as the rider sent it (a number; a string form is accepted).
    fn id(&self) -> Option<u64> {
        let raw = self.request_id?.get();
        raw.trim_matches('"').parse().ok()
    }
}

fn request_id(reply: &Reply) -> Option<u64> {
    match reply.request_id.as_ref()? {
        RequestId::Num(n) => n.as_u64(),
        RequestId::Str(s) => s.parse().ok(),
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
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

/// Runs one rider incarnation (and its guardian) to its stop time.
pub async fn rider(ctx: Arc<RunCtx>, plan: RiderPlan) {
    let hosts = ctx.transport.hosts.len();
    let host = (plan.user as usize) % hosts;
    let pair = plan.guardian.then(|| Arc::new(Pair::new()));
    let guardian_task = pair.as_ref().map(|p| {
        tokio::spawn(guardian(
            ctx.clone(),
            plan.clone(),
            p.clone(),
            (host + 1) % hosts,
        ))
    });
    ctx.rec.users.fetch_add(1, Ordering::Relaxed);
    let mut r = Rider::new(&ctx, &plan, pair.clone());
    r.run(host).await;
    ctx.rec.users.fetch_sub(1, Ordering::Relaxed);
    if let Some(p) = &pair {
        p.rider_done.send_replace(true);
        // A rider that never shared leaves the guardian waiting for nothing.
        p.shared.send_modify(|_| {});
    }
    if let Some(t) = guardian_task {
        let _ = t.await;
    }
}

struct Rider<'a> {
    ctx: &'a RunCtx,
    plan: &'a RiderPlan,
    pair: Option<Arc<Pair>>,
    rng: Rng,
    session: Option<Session>,
    next_id: u64,
    pending: Vec<Pending>,
    /// When the next timer-driven request is due (on the tick grid).
    next_tick: Instant,
    /// The same before rounding up to the grid; intervals add up here so
    /// the grid does not bias them.
    tick_base: Instant,
    started_once: bool,
    shared: bool,
    stopping: bool,
    host: usize,
    // Navigation state.
    need_start: bool,
    /// Start the next navigation here (the last destination reached).
    next_origin: Option<usize>,
    destination: usize,
    origin_pos: (f64, f64),
    walk: Option<Walk>,
    nav_started: Instant,
    deviation: Option<(f64, f64)>,
    deviations_seen: u32,
    updates_at_end: u32,
    trace_offset_s: f64,
    refresh: Option<tokio::task::JoinHandle<Result<(Session, usize), String>>>,
    refresh_started: Instant,
}

impl<'a> Rider<'a> {
    fn new(ctx: &'a RunCtx, plan: &'a RiderPlan, pair: Option<Arc<Pair>>) -> Rider<'a> {
        let mut rng = Rng::for_rider(ctx.seed, plan.user, plan.incarnation, 0);
        let [lo, hi] = ctx.spec.update_interval_s;
        let first = Duration::from_secs_f64(rng.range(lo, hi));
        let trace_offset_s = ctx
            .trace
            .as_ref()
            .map(|t| rng.range(0.0, t.duration_s()))
            .unwrap_or(0.0);
        Rider {
            ctx,
            plan,
            pair,
            rng,
            session: None,
            next_id: 0,
            pending: Vec::new(),
            next_tick: ctx.on_grid(plan.start + first),
            tick_base: plan.start + first,
            started_once: false,
            shared: false,
            stopping: false,
            host: 0,
            need_start: true,
            next_origin: None,
            destination: 0,
            origin_pos: (0.0, 0.0),
            walk: None,
            nav_started: plan.start,
            deviation: None,
            deviations_seen: 0,
            updates_at_end: 0,
            trace_offset_s,
            refresh: None,
            refresh_started: plan.start,
        }
    }

    fn past_stop(&self) -> bool {
        Instant::now() >= self.plan.stop || self.ctx.abort.is_cancelled()
    }

    async fn run(&mut self, host: usize) {
        let ctx = self.ctx;
        let Some(creds) = ctx.accounts.rider(self.plan.user) else {
            ctx.rec.exception("no account for a rider index");
            return;
        };
        self.host = host;
        self.session = login_until(ctx, host, &creds, self.plan.stop, None).await;
        if self.session.is_none() {
            return;
        }
        loop {
            if self.past_stop() {
                return;
            }
            let session = self.session.clone().expect("logged in");
            let Some((mut ws, node)) = connect(ctx, self.host, &session).await else {
                self.host += 1;
                let next = (Instant::now() + Duration::from_secs(1)).min(self.plan.stop);
                if !sleep_or_abort(next, &ctx.abort).await {
                    return;
                }
                continue;
            };
            let end = self.session_loop(&mut ws).await;
            ctx.rec.node_close(&node);
            match end {
                End::Stopped => {
                    ctx.rec.closed(1000);
                    return;
                }
                End::Lost(code) => {
                    ctx.rec.closed(code);
                    for p in std::mem::take(&mut self.pending) {
                        if let Some(m) = metric_of(p.kind) {
                            ctx.rec
                                .failure(m, None, &format!("connection closed ({code})"));
                        }
                        if p.kind == Kind::Start {
                            self.need_start = true;
                        }
                    }
                    // Reconnect, to the next host when there are several.
                    self.host += 1;
                    let next = (Instant::now() + Duration::from_secs(1)).min(self.plan.stop);
                    if !sleep_or_abort(next, &ctx.abort).await {
                        return;
                    }
                }
            }
        }
    }

    async fn send(
        &mut self,
        ws: &mut Ws,
        msg: &ClientMessage,
        kind: Kind,
        scheduled: Instant,
    ) -> Result<(), End> {
        self.next_id += 1;
        let id = self.next_id;
        let timeout = match kind {
            Kind::Update => self.ctx.spec.update_timeout_s,
            _ => self.ctx.spec.start_timeout_s,
        };
        let text = encode(msg, id);
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::text(text)).await {
            if let Some(m) = metric_of(kind) {
                self.ctx.rec.failure(m, None, &cause_of(&e));
            }
            return Err(End::Lost(1006));
        }
        self.pending.push(Pending {
            id,
            kind,
            scheduled,
            deadline: sent + Duration::from_secs_f64(timeout),
        });
        Ok(())
    }

    /// Shares with the guardian and waits until it watches (bounded).
    async fn setup(&mut self, ws: &mut Ws) -> Result<(), End> {
        let Some(pair) = self.pair.clone() else {
            return Ok(());
        };
        if self.shared {
            return Ok(());
        }
        let limit = (Instant::now() + Duration::from_secs(30)).min(self.plan.stop);
        let mut gid_rx = pair.guardian_id.subscribe();
        let gid = tokio::select! {
            r = gid_rx.wait_for(|g| g.is_some()) => r.ok().and_then(|g| g.clone().flatten()),
            _ = sleep_until(limit) => None,
            _ = self.ctx.abort.cancelled() => None,
        };
        let Some(guardian_id) = gid else {
            return Ok(());
        };
        let msg = ClientMessage::ShareNavigation { guardian_id };
        let now = Instant::now();
        self.send(ws, &msg, Kind::Share, now).await?;
        // Read until the reply to the share (nothing else is in flight).
        while self.pending.iter().any(|p| p.kind == Kind::Share) {
            let deadline = self.pending[0].deadline;
            let frame = tokio::select! {
                f = ws.next() => f,
                _ = sleep_until(deadline) => {
                    self.expire();
                    break;
                }
            };
            if let Some(code) = ending(&frame) {
                finish_close(ws).await;
                return Err(End::Lost(code));
            }
            if let Some(Ok(Message::Text(t))) = frame {
                self.on_text(&t);
            }
        }
        if self.shared {
            let user_id = self.session.as_ref().map(|s| s.user_id.clone());
            pair.shared.send_replace(user_id);
            let mut w = pair.watching.subscribe();
            let limit = (Instant::now() + Duration::from_secs(10)).min(self.plan.stop);
            tokio::select! {
                _ = wait_true(&mut w) => {}
                _ = sleep_until(limit) => {}
                _ = self.ctx.abort.cancelled() => {}
            }
        }
        Ok(())
    }

    async fn session_loop(&mut self, ws: &mut Ws) -> End {
        if let Err(end) = self.setup(ws).await {
            return end;
        }
        if !self.started_once {
            self.started_once = true;
            let now = Instant::now();
            if let Err(end) = self.send_start(ws, now).await {
                return end;
            }
        }
        // The timers live across iterations and are reset only when their
        // deadline changes: creating and dropping three timer entries and a
        // cancellation waiter per received frame costs more than the frame.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let abort = &self.ctx.abort;
        let mut aborted = pin!(abort.cancelled());
        let mut tick_sleep = pin!(sleep_until(self.next_tick));
        let mut stop_sleep = pin!(sleep_until(self.plan.stop));
        let mut deadline_sleep = pin!(sleep_until(far));
        let mut deadline_at = far;
        loop {
            if self.stopping && self.pending.is_empty() {
                close_normal(ws).await;
                return End::Stopped;
            }
            // Every tick scheduled before the stop time is sent (judged by
            // its time before rounding to the grid), unless the rider is so
            // far behind (an overloaded client) that the stop time itself
            // is long past.
            let tick_ready = !self.stopping
                && self.tick_base < self.plan.stop
                && Instant::now() < self.plan.stop + Duration::from_secs(1);
            if tick_ready && tick_sleep.deadline() != self.next_tick {
                tick_sleep.as_mut().reset(self.next_tick);
            }
            let deadline = self.pending.iter().map(|p| p.deadline).min();
            let want = deadline.unwrap_or(far);
            if want != deadline_at {
                deadline_sleep.as_mut().reset(want);
                deadline_at = want;
            }
            let refreshing = self.refresh.is_some();
            let stopping = self.stopping;
            let refresh = &mut self.refresh;
            tokio::select! {
                biased;
                _ = &mut aborted, if !stopping => {
                    self.stopping = true;
                }
                _ = &mut tick_sleep, if tick_ready => {
                    if let Err(end) = self.tick(ws).await {
                        return end;
                    }
                }
                _ = &mut stop_sleep, if !stopping && !tick_ready => {
                    self.stopping = true;
                }
                _ = &mut deadline_sleep, if deadline.is_some() => {
                    self.expire();
                }
                r = async { refresh.as_mut().expect("refreshing").await }, if refreshing => {
                    self.refresh = None;
                    if let Err(end) = self.refreshed(ws, r.ok()).await {
                        return end;
                    }
                }
                frame = ws.next() => {
                    if let Some(code) = ending(&frame) {
                        finish_close(ws).await;
                        return End::Lost(code);
                    }
                    if let Some(Ok(Message::Text(t))) = frame {
                        self.on_text(&t);
                    }
                }
            }
        }
    }

    /// A timer tick: the next start_navigation or location_update.
    async fn tick(&mut self, ws: &mut Ws) -> Result<(), End> {
        let scheduled = self.next_tick;
        let [lo, hi] = self.ctx.spec.update_interval_s;
        self.tick_base += Duration::from_secs_f64(self.rng.range(lo, hi));
        self.next_tick = self.ctx.on_grid(self.tick_base);
        let mix = &self.ctx.spec.mix;
        let p_start = mix.start_navigation / (mix.start_navigation + mix.location_update).max(1e-9);
        let roll = self.rng.unit();
        let [dlo, dhi] = self.ctx.spec.gps_drift_m;
        let drift = self.rng.range(dlo, dhi);
        let bearing = self.rng.range(0.0, TAU);
        let [alo, ahi] = self.ctx.spec.accuracy_m;
        let accuracy = self.rng.range(alo, ahi).round();
        if self.need_start || roll < p_start {
            self.send_start(ws, scheduled).await
        } else {
            let (lat, lon) = self.position(scheduled);
            let (lat, lon) = offset(lat, lon, drift, bearing);
            let msg = ClientMessage::LocationUpdate {
                latitude: (lat * 1e6).round() / 1e6,
                longitude: (lon * 1e6).round() / 1e6,
                accuracy: Some(accuracy),
                route_id: None,
            };
            self.send(ws, &msg, Kind::Update, scheduled).await
        }
    }

    async fn send_start(&mut self, ws: &mut Ws, scheduled: Instant) -> Result<(), End> {
        let n = self.ctx.stations.len();
        let origin = self.next_origin.take().unwrap_or_else(|| self.rng.below(n));
        let mut dest = self.rng.below(n - 1);
        if dest >= origin {
            dest += 1;
        }
        let t = self.ctx.types[self.rng.weighted(&self.ctx.type_weights)];
        self.deviation = self.plan.deviating.then(|| {
            let [lo, hi] = self.ctx.spec.deviation_m;
            (self.rng.range(lo, hi), self.rng.range(0.0, TAU))
        });
        let o = &self.ctx.stations[origin];
        self.origin_pos = (o.lat, o.lon);
        self.destination = dest;
        self.walk = None;
        self.need_start = false;
        self.nav_started = scheduled;
        self.deviations_seen = 0;
        self.updates_at_end = 0;
        let msg = ClientMessage::StartNavigation {
            origin: o.name.clone(),
            destination: self.ctx.stations[dest].name.clone(),
            disability_type: Some(t),
        };
        self.send(ws, &msg, Kind::Start, scheduled).await
    }

    /// Where the rider is at `at` (before GPS drift).
    fn position(&mut self, at: Instant) -> (f64, f64) {
        let elapsed =
            at.saturating_duration_since(self.nav_started).as_secs_f64() / self.ctx.time_scale;
        if let Some(trace) = &self.ctx.trace {
            return trace.at(elapsed + self.trace_offset_s);
        }
        let Some(walk) = &self.walk else {
            return self.origin_pos;
        };
        let d = self.ctx.spec.speed_mps * elapsed;
        let len = walk.length_m();
        let mut p = walk.at(d);
        if let Some((dist, bearing)) = self.deviation
            && d > 0.4 * len
        {
            p = offset(p.0, p.1, dist, bearing);
        }
        if d >= len {
            self.updates_at_end += 1;
            // No arrival after a while at the end: plan a new trip.
            if self.updates_at_end > 5 {
                self.need_start = true;
            }
        }
        p
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline <= now {
                let p = self.pending.swap_remove(i);
                if let Some(m) = metric_of(p.kind) {
                    self.ctx
                        .rec
                        .failure(m, Some(now.duration_since(p.scheduled)), "timeout");
                }
                if p.kind == Kind::Start {
                    self.need_start = true;
                }
            } else {
                i += 1;
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        if let Ok(head) = serde_json::from_str::<Head>(text)
            && head.kind == "navigation_update"
            && let Some(id) = head.id()
        {
            match self.pending.iter().position(|p| p.id == id) {
                Some(i) => {
                    let p = self.pending.swap_remove(i);
                    self.completed(&p, text.len(), true);
                }
                None => self.ctx.rec.exception("reply after its timeout"),
            }
            return;
        }
        let reply: Reply = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(_) => {
                self.ctx.rec.exception("unparseable frame from the server");
                return;
            }
        };
        match request_id(&reply) {
            Some(id) => match self.pending.iter().position(|p| p.id == id) {
                Some(i) => {
                    let p = self.pending.swap_remove(i);
                    self.complete(p, reply.message, text.len());
                }
                None => self.ctx.rec.exception("reply after its timeout"),
            },
            None => self.on_pushed(reply.message),
        }
    }

    /// A successful reply: its latency, and one more peer event the
    /// guardian (if watching) must receive when it is a navigation event.
    fn completed(&self, p: &Pending, bytes: usize, navigation_event: bool) {
        if let Some(m) = metric_of(p.kind) {
            self.ctx
                .rec
                .success(m, Instant::now().duration_since(p.scheduled), bytes);
        }
        if navigation_event
            && let Some(pair) = &self.pair
            && *pair.watching.borrow()
        {
            pair.expected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn complete(&mut self, p: Pending, msg: ServerMessage, bytes: usize) {
        let rec = &self.ctx.rec;
        let latency = Instant::now().duration_since(p.scheduled);
        let metric = metric_of(p.kind);
        if let ServerMessage::Error { code, .. } = &msg {
            match metric {
                Some(m) => rec.failure(m, Some(latency), &format!("error {}", code.as_str())),
                None => rec.exception(&format!("in-band refresh refused: {}", code.as_str())),
            }
            if p.kind == Kind::Start {
                self.need_start = true;
            }
            return;
        }
        self.completed(&p, bytes, msg.is_navigation_event());
        match msg {
            ServerMessage::RouteCalculated(plan) | ServerMessage::RouteRecalculated(plan) => {
                let route = plan
                    .routes
                    .iter()
                    .find(|r| r.rank == plan.selected_route_rank)
                    .or(plan.routes.first());
                if let Some(route) = route {
                    self.walk = Some(Walk::new(
                        route.stations.iter().map(|s| (s.lat, s.lon)).collect(),
                    ));
                }
            }
            ServerMessage::RouteDeviation { .. } => {
                self.deviations_seen += 1;
                if self.deviations_seen >= 3 {
                    self.need_start = true;
                }
            }
            ServerMessage::Arrival { .. } => {
                self.need_start = true;
                self.next_origin = Some(self.destination);
            }
            ServerMessage::Shared { .. } => self.shared = true,
            _ => {}
        }
    }

    fn on_pushed(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::TokenExpiring { .. } if self.refresh.is_none() => {
                let Some(session) = &self.session else { return };
                let transport = self.ctx.transport.clone();
                let token = session.refresh.clone();
                let host = self.host;
                let timeout = Duration::from_secs_f64(self.ctx.spec.login_timeout_s);
                self.refresh_started = Instant::now();
                self.refresh = Some(tokio::spawn(async move {
                    accounts::refresh(&transport, host, &token, timeout).await
                }));
            }
            ServerMessage::Error { code, .. } => self
                .ctx
                .rec
                .exception(&format!("error without request_id: {}", code.as_str())),
            _ => {}
        }
    }

    /// The HTTP refresh finished: hand the new access token to the session.
    async fn refreshed(
        &mut self,
        ws: &mut Ws,
        r: Option<Result<(Session, usize), String>>,
    ) -> Result<(), End> {
        let latency = self.refresh_started.elapsed();
        match r {
            Some(Ok((session, bytes))) => {
                self.ctx.rec.success(Metric::Refresh, latency, bytes);
                let msg = ClientMessage::RefreshToken {
                    token: session.access.clone(),
                };
                self.session = Some(session);
                self.send(ws, &msg, Kind::Control, Instant::now()).await
            }
            Some(Err(cause)) => {
                self.ctx.rec.failure(Metric::Refresh, Some(latency), &cause);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Per-origin sequence check of the peer events of one watched user.
#[derive(Default)]
struct SeqCheck {
    last: HashMap<String, u64>,
    received: u64,
    duplicates: u64,
    reorders: u64,
    gaps: u64,
}

impl SeqCheck {
    /// Returns false for a duplicate.
    fn see(&mut self, origin: &str, seq: u64) -> bool {
        if seq == 0 {
            // The node could not number it (documented as "do not count").
            self.received += 1;
            return true;
        }
        match self.last.get_mut(origin) {
            None => {
                self.last.insert(origin.to_string(), seq);
            }
            Some(last) => {
                if seq == *last + 1 {
                    *last = seq;
                } else if seq > *last + 1 {
                    self.gaps += seq - *last - 1;
                    *last = seq;
                } else if seq == *last {
                    self.duplicates += 1;
                    return false;
                } else if seq == 1 {
                    // The origin's counter for this user started again: a
                    // new stream (the rider reconnected there), not a reorder.
                    *last = 1;
                } else {
                    self.reorders += 1;
                }
            }
        }
        self.received += 1;
        true
    }
}

/// The guardian of one rider: logs in, connects (to the next host), waits
/// for the share, watches, and checks every peer event.
async fn guardian(ctx: Arc<RunCtx>, plan: RiderPlan, pair: Arc<Pair>, host: usize) {
    let mut done_rx = pair.rider_done.subscribe();
    let Some(creds) = ctx.accounts.guardian(plan.user) else {
        ctx.rec.exception("no account for a guardian index");
        pair.guardian_id.send_replace(Some(None));
        return;
    };
    let Some(session) = login_until(&ctx, host, &creds, plan.stop, Some(&pair.rider_done)).await
    else {
        pair.guardian_id.send_replace(Some(None));
        return;
    };
    pair.guardian_id
        .send_replace(Some(Some(session.user_id.clone())));
    let mut shared_rx = pair.shared.subscribe();
    let rider_id = tokio::select! {
        r = shared_rx.wait_for(|s| s.is_some()) => r.ok().and_then(|s| s.clone()),
        _ = wait_true(&mut done_rx) => None,
    };
    let Some(rider_id) = rider_id else { return };

    let mut check = SeqCheck::default();
    let grace = Duration::from_secs_f64(ctx.spec.fanout_grace_s);
    let mut host = host;
    let mut next_id = 0u64;
    'connections: loop {
        if *done_rx.borrow() {
            break;
        }
        let Some((mut ws, node)) = connect(&ctx, host, &session).await else {
            host += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = wait_true(&mut done_rx) => {}
            }
            continue;
        };
        next_id += 1;
        let watch_id = next_id;
        let msg = ClientMessage::Watch {
            user_id: rider_id.clone(),
        };
        let watch_sent = Instant::now();
        let mut watch_pending = true;
        let watch_deadline = watch_sent + Duration::from_secs_f64(ctx.spec.start_timeout_s);
        if ws
            .send(Message::text(encode(&msg, watch_id)))
            .await
            .is_err()
        {
            ctx.rec.failure(Metric::WsWatch, None, "connection lost");
            watch_pending = false;
        }
        let mut drain_until: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let end = loop {
            if drain_until.is_some() && check.received >= pair.expected.load(Ordering::Relaxed) {
                close_normal(&mut ws).await;
                break End::Stopped;
            }
            tokio::select! {
                _ = wait_true(&mut done_rx), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + grace);
                }
                _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                    close_normal(&mut ws).await;
                    break End::Stopped;
                }
                _ = sleep_until(watch_deadline), if watch_pending => {
                    watch_pending = false;
                    ctx.rec.failure(Metric::WsWatch, Some(watch_sent.elapsed()), "timeout");
                }
                frame = ws.next() => {
                    if let Some(code) = ending(&frame) {
                        finish_close(&mut ws).await;
                        break End::Lost(code);
                    }
                    let Some(Ok(Message::Text(t))) = frame else { continue };
                    let Ok(reply) = serde_json::from_str::<Reply>(&t) else {
                        ctx.rec.exception("unparseable frame from the server");
                        continue;
                    };
                    if watch_pending && request_id(&reply) == Some(watch_id) {
                        watch_pending = false;
                        match reply.message {
                            ServerMessage::Watching { .. } => {
                                ctx.rec.success(Metric::WsWatch, watch_sent.elapsed(), t.len());
                                pair.watching.send_replace(true);
                            }
                            ServerMessage::Error { code, .. } => ctx.rec.failure(
                                Metric::WsWatch,
                                Some(watch_sent.elapsed()),
                                &format!("error {}", code.as_str()),
                            ),
                            _ => ctx.rec.exception("unexpected reply to watch"),
                        }
                        continue;
                    }
                    if let ServerMessage::PeerEvent { origin_node, seq, sent_at_us, .. } = reply.message {
                        let latency = Duration::from_micros(now_us().saturating_sub(sent_at_us));
                        if check.see(&origin_node, seq) {
                            ctx.rec.success(Metric::FanoutDelivery, latency, t.len());
                        }
                    }
                }
            }
        };
        pair.watching.send_replace(false);
        ctx.rec.node_close(&node);
        match end {
            End::Stopped => {
                ctx.rec.closed(1000);
                break 'connections;
            }
            End::Lost(code) => {
                ctx.rec.closed(code);
                if watch_pending {
                    ctx.rec.failure(
                        Metric::WsWatch,
                        None,
                        &format!("connection closed ({code})"),
                    );
                }
                host += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = wait_true(&mut done_rx) => {}
                }
            }
        }
    }
    let expected = pair.expected.load(Ordering::Relaxed);
    let shortfall = expected.saturating_sub(check.received);
    let lost = shortfall.max(check.gaps);
    let f = &ctx.rec.fanout;
    f.expected.fetch_add(expected, Ordering::Relaxed);
    f.received.fetch_add(check.received, Ordering::Relaxed);
    f.duplicates.fetch_add(check.duplicates, Ordering::Relaxed);
    f.reorders.fetch_add(check.reorders, Ordering::Relaxed);
    f.gaps.fetch_add(check.gaps, Ordering::Relaxed);
    f.lost.fetch_add(lost, Ordering::Relaxed);
    for _ in 0..lost {
        ctx.rec
            .failure(Metric::FanoutDelivery, None, "peer_event lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_read_type_and_request_id_only() {
        let h: Head = serde_json::from_str(
            r#"{"type":"navigation_update","progress":{"a":[1,2]},"request_id":42}"#,
        )
        .unwrap();
        assert_eq!(h.kind, "navigation_update");
        assert_eq!(h.id(), Some(42));
        let h: Head = serde_json::from_str(r#"{"request_id":"7","type":"arrival"}"#).unwrap();
        assert_eq!((h.kind.as_ref(), h.id()), ("arrival", Some(7)));
        let h: Head = serde_json::from_str(r#"{"type":"peer_event","seq":3}"#).unwrap();
        assert_eq!(h.id(), None);
        assert!(serde_json::from_str::<Head>(r#"{"request_id":1}"#).is_err());
    }

    #[test]
    fn request_ids_are_appended() {
        let s = encode(&ClientMessage::Ping {}, 7);
        assert_eq!(s, r#"{"type":"ping","request_id":7}"#);
        let (msg, id) = navcast::protocol::parse_request(&s).unwrap();
        assert_eq!(msg, ClientMessage::Ping {});
        assert_eq!(id, Some(RequestId::Num(7.into())));
    }

    #[test]
    fn seq_check_counts_gaps_duplicates_reorders_and_restarts() {
        let mut c = SeqCheck::default();
        for s in [1, 2, 3, 5, 5, 4, 6, 1, 2] {
            c.see("a", s);
        }
        assert_eq!(c.gaps, 1);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.reorders, 1);
        assert_eq!(c.received, 8);
        c.see("b", 10);
        assert_eq!(c.gaps, 1, "first event of an origin starts its stream");
    }
}
