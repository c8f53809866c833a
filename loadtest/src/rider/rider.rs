//! The rider task: one incarnation of one user, owning one socket.
//!
//! It logs in, connects, reads `connected`, shares with its guardian and
//! waits until the guardian watches, starts a navigation, then sends a
//! request on a timer every 3–5 s (start_navigation or location_update,
//! 1:10) until its stop time. When its connection is lost, or the network
//! vanishes in a tunnel (`rider.tunnel_share`), it reconnects with
//! jittered backoff, sends `resume` and carries on with the route the
//! reply says it still has: the reconnect is a `ws_reconnect` sample, a
//! route the store lost is a failure of it. Replies are matched by `request_id`; latency
//! of a timer-driven request is measured from its scheduled time, so a
//! stalled client or server cannot hide latency.

use std::f64::consts::TAU;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::protocol::{ClientMessage, Reply, ServerMessage};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::guardian::guardian;
use super::wire::{Head, encode, request_id};
use super::{
    End, Pair, RiderPlan, RunCtx, close_normal, connect, ending, finish_close, jittered_backoff,
    login_until, sleep_or_abort, unfinished_reconnect, uniform_s, wait_true,
};
use crate::accounts::{self, Session, token_expired};
use crate::motion::{Walk, offset};
use crate::net::{Ws, cause_of};
use crate::rng::Rng;
use crate::summary::Metric;

/// What a request in flight was, which decides its metric and timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Start,
    Update,
    Share,
    /// `resume` after a reconnect: measured as `ws_reconnect` from the
    /// network's return.
    Resume,
    /// In-band token refresh: no metric of its own.
    Control,
}

/// A request sent and not yet answered or timed out.
struct Pending {
    id: u64,
    kind: Kind,
    scheduled: Instant,
    deadline: Instant,
}

/// The metric a request of this kind is a sample of.
fn metric_of(kind: Kind) -> Option<Metric> {
    match kind {
        Kind::Start => Some(Metric::WsStartNavigation),
        Kind::Update => Some(Metric::WsLocationUpdate),
        Kind::Share => Some(Metric::WsShareNavigation),
        Kind::Resume | Kind::Control => None,
    }
}

/// Runs one rider incarnation (and its guardian) to its stop time.
pub(crate) async fn rider(ctx: Arc<RunCtx>, plan: RiderPlan) {
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
    /// Whether this rider goes through tunnels (`rider.tunnel_share`).
    tunnels: bool,
    /// When the next tunnel starts (set once a session is under way).
    next_tunnel: Option<Instant>,
    /// After a tunnel or a lost connection: when the rider lost the
    /// network and when it came back, until the `resumed` reply.
    away: Option<(Instant, Instant)>,
    /// Reconnect attempts since the last session that resumed (the
    /// backoff's n).
    attempts: u32,
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
            // A stream of its own, so the other draws stay as they were.
            tunnels: Rng::for_rider(ctx.seed, plan.user, plan.incarnation, 2).unit()
                < ctx.spec.tunnel_share,
            next_tunnel: None,
            away: None,
            attempts: 0,
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
                break;
            }
            // Away past the token's expiry: refresh over HTTP first, as a
            // phone coming back does.
            if self
                .session
                .as_ref()
                .is_some_and(|s| token_expired(&s.access))
                && !self.refresh_now().await
            {
                self.host += 1;
                if !self.reconnect_pause().await {
                    break;
                }
                continue;
            }
            let session = self.session.clone().expect("logged in");
            let Some((mut ws, node)) = connect(ctx, self.host, &session).await else {
                self.host += 1;
                if !self.reconnect_pause().await {
                    break;
                }
                continue;
            };
            let end = self.session_loop(&mut ws).await;
            match end {
                End::Stopped => {
                    ctx.rec.node_close(&node);
                    ctx.rec.closed(1000);
                    break;
                }
                End::Tunnel => {
                    // The network vanishes: nothing read or written, no
                    // close frame; the node finds out by its heartbeat.
                    let entered = Instant::now();
                    let outage = uniform_s(ctx.spec.tunnel_s, ctx.time_scale);
                    let back = (entered + outage).min(self.plan.stop);
                    let _ = sleep_or_abort(back, &ctx.abort).await;
                    drop(ws);
                    ctx.rec.node_close(&node);
                    ctx.rec.closed(1006);
                    self.away = Some((entered, Instant::now()));
                    self.skip_missed_ticks();
                }
                End::Lost(code) => {
                    ctx.rec.node_close(&node);
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
                    let now = Instant::now();
                    self.away.get_or_insert((now, now));
                    // Reconnect, to the next host when there are several.
                    self.host += 1;
                }
            }
            if !self.reconnect_pause().await {
                break;
            }
            self.skip_missed_ticks();
        }
        if let Some((_, back)) = self.away {
            unfinished_reconnect(&ctx.rec, back);
        }
    }

    /// The pause before a reconnect attempt: exponential backoff with full
    /// jitter (docs/CLIENTS.md §4). False when the stop time came first.
    async fn reconnect_pause(&mut self) -> bool {
        let wait = jittered_backoff(self.attempts);
        self.attempts += 1;
        let at = (Instant::now() + wait).min(self.plan.stop);
        sleep_or_abort(at, &self.ctx.abort).await && !self.past_stop()
    }

    /// While offline the rider sent nothing; its timer resumes from now
    /// instead of firing every tick it missed at once.
    fn skip_missed_ticks(&mut self) {
        let now = Instant::now();
        if self.tick_base < now {
            let [lo, hi] = self.ctx.spec.update_interval_s;
            self.tick_base = now + Duration::from_secs_f64(self.rng.range(lo, hi));
            self.next_tick = self.ctx.on_grid(self.tick_base);
        }
    }

    /// A refresh over HTTP outside a session; false if it failed.
    async fn refresh_now(&mut self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let timeout = Duration::from_secs_f64(self.ctx.spec.login_timeout_s);
        let started = Instant::now();
        let r = accounts::refresh(&self.ctx.transport, self.host, &session.refresh, timeout).await;
        match r {
            Ok((session, bytes)) => {
                self.ctx
                    .rec
                    .success(Metric::Refresh, started.elapsed(), bytes);
                self.session = Some(session);
                true
            }
            Err(cause) => {
                self.ctx
                    .rec
                    .failure(Metric::Refresh, Some(started.elapsed()), &cause);
                false
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
        if self.away.is_some() {
            // Back after a tunnel or a lost connection: the route lives in
            // the store, `resume` says whether it is still there.
            let msg = ClientMessage::Resume {
                user_id: self
                    .session
                    .as_ref()
                    .map(|s| s.user_id.clone())
                    .unwrap_or_default(),
                since: None,
            };
            if let Err(end) = self.send(ws, &msg, Kind::Resume, Instant::now()).await {
                return end;
            }
        } else if !self.started_once && self.plan.navigating {
            self.started_once = true;
            let now = Instant::now();
            if let Err(end) = self.send_start(ws, now).await {
                return end;
            }
        }
        if self.tunnels && self.next_tunnel.is_none() {
            self.next_tunnel =
                Some(Instant::now() + uniform_s(self.ctx.spec.tunnel_every_s, self.ctx.time_scale));
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
        let mut tunnel_sleep = pin!(sleep_until(self.next_tunnel.unwrap_or(far)));
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
                && self.plan.navigating
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
            // A tunnel starts between requests: a phone that enters one
            // with a request in flight is a lost connection, not a tunnel.
            let tunnel_ready =
                !self.stopping && self.pending.is_empty() && self.next_tunnel.is_some();
            if tunnel_ready && Some(tunnel_sleep.deadline()) != self.next_tunnel {
                tunnel_sleep.as_mut().reset(self.next_tunnel.unwrap_or(far));
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
                _ = &mut tunnel_sleep, if tunnel_ready => {
                    self.next_tunnel = None;
                    return End::Tunnel;
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
                if p.kind == Kind::Resume && self.away.take().is_some() {
                    self.ctx.rec.failure(
                        Metric::WsReconnect,
                        Some(now.duration_since(p.scheduled)),
                        "resume timeout",
                    );
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
            match (metric, p.kind) {
                (Some(m), _) => rec.failure(m, Some(latency), &format!("error {}", code.as_str())),
                (None, Kind::Resume) => {
                    self.away = None;
                    rec.failure(
                        Metric::WsReconnect,
                        Some(latency),
                        &format!("resume refused: {}", code.as_str()),
                    );
                }
                (None, _) => rec.exception(&format!("in-band refresh refused: {}", code.as_str())),
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
            ServerMessage::Resumed { active_route, .. } => self.resumed(active_route.is_some()),
            _ => {}
        }
    }

    /// The `resumed` reply after a reconnect: the reconnect's time, and
    /// whether the route the rider was on is still there.
    fn resumed(&mut self, has_route: bool) {
        let Some((_, back)) = self.away.take() else {
            return;
        };
        self.attempts = 0;
        let rec = &self.ctx.rec;
        let navigating = self.started_once && !self.need_start && self.walk.is_some();
        if navigating && !has_route {
            // The store lost the navigation: counted, and started again.
            rec.failure(
                Metric::WsReconnect,
                Some(back.elapsed()),
                "route not resumed",
            );
            self.need_start = true;
        } else {
            rec.success(Metric::WsReconnect, back.elapsed(), 0);
        }
        if !self.started_once {
            // Lost before the first navigation started: start it now.
            self.need_start = true;
            self.started_once = true;
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
