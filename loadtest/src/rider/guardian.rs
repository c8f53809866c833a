//! The guardian of one rider: a second account that logs in, connects (to
//! the next host, so fan-out crosses nodes when there are several), waits
//! for the rider's share, watches, and checks every `peer_event` it gets.
//!
//! Like a rider it refreshes its token in band on `token_expiring`, and
//! over HTTP before reconnecting when it was away past the token's expiry.
//! After a lost connection or a tunnel it reconnects with jittered backoff
//! and watches again with `since`, so it recovers what it missed.
//!
//! Each peer event is a fan-out latency sample (from the node's
//! `sent_at_us`) and a `seq` to check. When the rider stops, the guardian
//! waits up to `fanout_grace_s` for the events still in flight; whatever
//! the rider's replies promised and never arrived is counted lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use navcast::clock::unix_us;
use navcast::protocol::{ClientMessage, Reply, ServerMessage, Since};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::seq::SeqCheck;
use super::wire::{encode, request_id};
use super::{
    End, Pair, RiderPlan, RunCtx, close_normal, connect, ending, finish_close, jittered_backoff,
    login_until, unfinished_reconnect, uniform_s, wait_true,
};
use crate::accounts::{self, Session, token_expired};
use crate::net::Ws;
use crate::summary::Metric;

/// Runs the guardian of `plan`'s rider until the rider is done.
pub(super) async fn guardian(ctx: Arc<RunCtx>, plan: RiderPlan, pair: Arc<Pair>, host: usize) {
    let mut done_rx = pair.rider_done.subscribe();
    let Some(session) = log_in(&ctx, &plan, &pair, host).await else {
        return;
    };
    let Some(rider_id) = wait_for_share(&pair, &mut done_rx).await else {
        return;
    };
    let mut g = Guardian {
        ctx: &ctx,
        pair: &pair,
        session,
        rider_id,
        check: SeqCheck::default(),
        next_id: 0,
        done_rx,
        host,
        refresh: None,
        refresh_started: Instant::now(),
        refresh_id: None,
        tunnels: rand::random::<f64>() < ctx.spec.tunnel_share,
        next_tunnel: None,
        position: None,
        back_from_tunnel: None,
        attempts: 0,
    };
    g.watch_until_done(host).await;
    if let Some((_, back)) = g.back_from_tunnel {
        unfinished_reconnect(&ctx.rec, back);
    }
    g.tally();
}

/// Logs in and tells the rider whom to share with, or that nobody will
/// watch it (no account, or the login never succeeded).
async fn log_in(ctx: &RunCtx, plan: &RiderPlan, pair: &Pair, host: usize) -> Option<Session> {
    let session = match ctx.accounts.guardian(plan.user) {
        Some(creds) => login_until(ctx, host, &creds, plan.stop, Some(&pair.rider_done)).await,
        None => {
            ctx.rec.exception("no account for a guardian index");
            None
        }
    };
    pair.guardian_id
        .send_replace(Some(session.as_ref().map(|s| s.user_id.clone())));
    session
}

/// The rider's user id once it shared; `None` when it stopped first.
async fn wait_for_share(pair: &Pair, done_rx: &mut watch::Receiver<bool>) -> Option<String> {
    let mut shared_rx = pair.shared.subscribe();
    tokio::select! {
        r = shared_rx.wait_for(|s| s.is_some()) => r.ok().and_then(|s| s.clone()),
        _ = wait_true(done_rx) => None,
    }
}

/// The `watch` request of one session, until its reply.
struct WatchRequest {
    id: u64,
    sent: Instant,
    deadline: Instant,
    /// Sent, and neither answered nor timed out yet.
    pending: bool,
}

/// A guardian once logged in and shared with.
struct Guardian<'a> {
    ctx: &'a RunCtx,
    pair: &'a Pair,
    session: Session,
    rider_id: String,
    /// Over all of its sessions: a reconnect continues the same check.
    check: SeqCheck,
    next_id: u64,
    /// Turns true when the rider stopped.
    done_rx: watch::Receiver<bool>,
    /// The host of the current session (refreshes go there too).
    host: usize,
    /// The HTTP refresh started by `token_expiring`, like a rider's.
    refresh: Option<tokio::task::JoinHandle<Result<(Session, usize), String>>>,
    refresh_started: Instant,
    /// The in-band `refresh_token` sent, until its reply.
    refresh_id: Option<u64>,
    /// Whether this guardian goes through tunnels (`rider.tunnel_share`).
    tunnels: bool,
    /// When the next tunnel starts (set once a watch is answered).
    next_tunnel: Option<Instant>,
    /// The last stream position processed: `(offset, epoch)`.
    position: Option<(u64, String)>,
    /// After a tunnel or a lost connection: when it began and when the
    /// network came back, until the `watching` reply that ends it.
    back_from_tunnel: Option<(Instant, Instant)>,
    /// Reconnect attempts since the last answered watch (the backoff's n).
    attempts: u32,
}

impl Guardian<'_> {
    /// Connects, watches and reads, reconnecting (to the next host) after
    /// a lost connection, until the rider is done.
    async fn watch_until_done(&mut self, mut host: usize) {
        let rec = &self.ctx.rec;
        loop {
            // A guardian back from a tunnel reconnects even after its rider
            // stopped: the events of the tunnel are still to be recovered.
            if *self.done_rx.borrow() && self.back_from_tunnel.is_none() {
                return;
            }
            self.host = host;
            // Away past the token's expiry (no session to refresh in band):
            // refresh over HTTP first, as a phone coming back does.
            if token_expired(&self.session.access) && !self.refresh_now().await {
                host += 1;
                self.reconnect_pause().await;
                continue;
            }
            let Some((mut ws, node)) = connect(self.ctx, host, &self.session).await else {
                if *self.done_rx.borrow() {
                    return;
                }
                host += 1;
                self.reconnect_pause().await;
                continue;
            };
            let mut watch = self.send_watch(&mut ws).await;
            let end = self.read_session(&mut ws, &mut watch).await;
            if let End::Tunnel = end {
                // The network vanishes: no reading, no writing, no close
                // frame. Events keep coming to the rider (and are expected
                // of this guardian, who gets them back with `since`).
                let entered = Instant::now();
                let outage = uniform_s(self.ctx.spec.tunnel_s, self.ctx.time_scale);
                tokio::select! {
                    _ = tokio::time::sleep(outage) => {}
                    _ = wait_true(&mut self.done_rx) => {}
                }
                drop(ws);
                rec.node_close(&node);
                rec.closed(1006);
                let back = Instant::now();
                self.back_from_tunnel = Some((entered, back));
                // Every phone of a tunnel comes back at once: the first
                // attempt waits a jittered pause too. The loop's top
                // refreshes the token if it expired meanwhile.
                self.reconnect_pause().await;
                continue;
            }
            rec.node_close(&node);
            match end {
                End::Stopped => {
                    self.pair.watching.send_replace(false);
                    rec.closed(1000);
                    return;
                }
                End::Tunnel => {}
                End::Lost(code) => {
                    rec.closed(code);
                    if watch.pending {
                        rec.failure(
                            Metric::WsWatch,
                            None,
                            &format!("connection closed ({code})"),
                        );
                    }
                    // With a stream position, the events from here on are
                    // recovered with `since` after the reconnect, so the
                    // rider's events still count as expected; without one
                    // (the watch was never answered) they cannot be.
                    if self.position.is_some() {
                        let now = Instant::now();
                        self.back_from_tunnel.get_or_insert((now, now));
                    } else {
                        self.pair.watching.send_replace(false);
                    }
                    host += 1;
                    self.reconnect_pause().await;
                }
            }
        }
    }

    /// A refresh over HTTP outside a session; false if it failed.
    async fn refresh_now(&mut self) -> bool {
        let timeout = Duration::from_secs_f64(self.ctx.spec.login_timeout_s);
        let started = Instant::now();
        let r = accounts::refresh(
            &self.ctx.transport,
            self.host,
            &self.session.refresh,
            timeout,
        )
        .await;
        self.refreshed_session(r, started).is_some()
    }

    /// Records a finished HTTP refresh and keeps its tokens; the new
    /// access token when it worked.
    fn refreshed_session(
        &mut self,
        r: Result<(Session, usize), String>,
        started: Instant,
    ) -> Option<String> {
        match r {
            Ok((session, bytes)) => {
                self.ctx
                    .rec
                    .success(Metric::Refresh, started.elapsed(), bytes);
                let access = session.access.clone();
                self.session = session;
                Some(access)
            }
            Err(cause) => {
                self.ctx
                    .rec
                    .failure(Metric::Refresh, Some(started.elapsed()), &cause);
                None
            }
        }
    }

    /// The pause before the next reconnect attempt: jittered backoff
    /// (docs/CLIENTS.md §4), counted from the last session that worked;
    /// cut short when the rider stops.
    async fn reconnect_pause(&mut self) {
        let wait = jittered_backoff(self.attempts);
        self.attempts += 1;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wait_true(&mut self.done_rx) => {}
        }
    }

    async fn send_watch(&mut self, ws: &mut Ws) -> WatchRequest {
        self.next_id += 1;
        // After a tunnel, ask for what was missed.
        let since = self
            .back_from_tunnel
            .and(self.position.clone())
            .map(|(offset, epoch)| Since { offset, epoch });
        let msg = ClientMessage::Watch {
            user_id: self.rider_id.clone(),
            since,
        };
        let sent = Instant::now();
        let mut watch = WatchRequest {
            id: self.next_id,
            sent,
            deadline: sent + Duration::from_secs_f64(self.ctx.spec.start_timeout_s),
            pending: true,
        };
        if ws
            .send(Message::text(encode(&msg, watch.id)))
            .await
            .is_err()
        {
            self.ctx
                .rec
                .failure(Metric::WsWatch, None, "connection lost");
            watch.pending = false;
        }
        watch
    }

    /// Reads one session until the connection ends, or the rider is done
    /// and every expected event arrived (or the grace ran out): then it
    /// closes with 1000.
    async fn read_session(&mut self, ws: &mut Ws, watch: &mut WatchRequest) -> End {
        let grace = Duration::from_secs_f64(self.ctx.spec.fanout_grace_s);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut drain_until: Option<Instant> = None;
        loop {
            if drain_until.is_some()
                && self.check.received >= self.pair.expected.load(Ordering::Relaxed)
            {
                close_normal(ws).await;
                return End::Stopped;
            }
            let refreshing = self.refresh.is_some();
            tokio::select! {
                r = async { self.refresh.as_mut().expect("refreshing").await }, if refreshing => {
                    self.refresh = None;
                    let started = self.refresh_started;
                    let r = r.unwrap_or_else(|e| Err(e.to_string()));
                    if let Some(access) = self.refreshed_session(r, started) {
                        self.next_id += 1;
                        self.refresh_id = Some(self.next_id);
                        let msg = ClientMessage::RefreshToken { token: access };
                        if ws.send(Message::text(encode(&msg, self.next_id))).await.is_err() {
                            finish_close(ws).await;
                            return End::Lost(1006);
                        }
                    }
                }
                _ = wait_true(&mut self.done_rx), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + grace);
                }
                _ = sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                    close_normal(ws).await;
                    return End::Stopped;
                }
                _ = sleep_until(self.next_tunnel.unwrap_or(far)), if self.next_tunnel.is_some() && drain_until.is_none() => {
                    self.next_tunnel = None;
                    return End::Tunnel;
                }
                _ = sleep_until(watch.deadline), if watch.pending => {
                    watch.pending = false;
                    self.ctx.rec.failure(Metric::WsWatch, Some(watch.sent.elapsed()), "timeout");
                }
                frame = ws.next() => {
                    if let Some(code) = ending(&frame) {
                        finish_close(ws).await;
                        return End::Lost(code);
                    }
                    if let Some(Ok(Message::Text(t))) = frame {
                        self.on_text(&t, watch);
                    }
                }
            }
        }
    }

    /// A frame: the reply to `watch`, or a peer event to time and check.
    fn on_text(&mut self, text: &str, watch: &mut WatchRequest) {
        let rec = &self.ctx.rec;
        let Ok(reply) = serde_json::from_str::<Reply>(text) else {
            rec.exception("unparseable frame from the server");
            return;
        };
        if watch.pending && request_id(&reply) == Some(watch.id) {
            watch.pending = false;
            match reply.message {
                ServerMessage::Watching { stream, .. } => {
                    rec.success(Metric::WsWatch, watch.sent.elapsed(), text.len());
                    self.attempts = 0;
                    self.pair.watching.send_replace(true);
                    if let Some((entered, back)) = self.back_from_tunnel.take() {
                        rec.success(Metric::WsReconnect, back.elapsed(), 0);
                        rec.success(Metric::GuardianBlind, entered.elapsed(), 0);
                        if stream.recovered == Some(true) {
                            rec.fanout
                                .recovered
                                .fetch_add(stream.missed.unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                    // Not recovered (or a first watch): go on from here.
                    if stream.recovered != Some(true) {
                        self.position = Some((stream.offset, stream.epoch));
                    }
                    if self.tunnels {
                        self.next_tunnel = Some(
                            Instant::now()
                                + uniform_s(self.ctx.spec.tunnel_every_s, self.ctx.time_scale),
                        );
                    }
                }
                ServerMessage::Error { code, .. } => rec.failure(
                    Metric::WsWatch,
                    Some(watch.sent.elapsed()),
                    &format!("error {}", code.as_str()),
                ),
                _ => rec.exception("unexpected reply to watch"),
            }
            return;
        }
        if self.refresh_id.is_some() && request_id(&reply) == self.refresh_id {
            self.refresh_id = None;
            if let ServerMessage::Error { code, .. } = reply.message {
                rec.exception(&format!("in-band refresh refused: {}", code.as_str()));
            }
            return;
        }
        if matches!(reply.message, ServerMessage::TokenExpiring { .. }) {
            if self.refresh.is_none() {
                let (transport, host) = (self.ctx.transport.clone(), self.host);
                let token = self.session.refresh.clone();
                let timeout = Duration::from_secs_f64(self.ctx.spec.login_timeout_s);
                self.refresh_started = Instant::now();
                self.refresh = Some(tokio::spawn(async move {
                    accounts::refresh(&transport, host, &token, timeout).await
                }));
            }
            return;
        }
        if let ServerMessage::PeerEvent {
            origin_node,
            seq,
            sent_at_us,
            offset,
            epoch,
            ..
        } = reply.message
        {
            let latency = Duration::from_micros(unix_us().saturating_sub(sent_at_us));
            let fresh = match (offset, epoch) {
                (Some(offset), Some(epoch)) => {
                    let fresh = self.check.see_offset(&epoch, offset);
                    if fresh {
                        self.position = Some((offset, epoch));
                    }
                    fresh
                }
                _ => self.check.see(&origin_node, seq),
            };
            if fresh {
                rec.success(Metric::FanoutDelivery, latency, text.len());
            }
        }
    }

    /// Adds this guardian's fan-out counts to the run's. An event is lost
    /// when `seq` skipped it or when fewer arrived than the rider's
    /// replies announced, whichever finds more.
    fn tally(&self) {
        let check = &self.check;
        let expected = self.pair.expected.load(Ordering::Relaxed);
        let shortfall = expected.saturating_sub(check.received);
        let lost = shortfall.max(check.gaps);
        let f = &self.ctx.rec.fanout;
        f.expected.fetch_add(expected, Ordering::Relaxed);
        f.received.fetch_add(check.received, Ordering::Relaxed);
        f.duplicates.fetch_add(check.duplicates, Ordering::Relaxed);
        f.reorders.fetch_add(check.reorders, Ordering::Relaxed);
        f.gaps.fetch_add(check.gaps, Ordering::Relaxed);
        f.lost.fetch_add(lost, Ordering::Relaxed);
        for _ in 0..lost {
            self.ctx
                .rec
                .failure(Metric::FanoutDelivery, None, "peer_event lost");
        }
    }
}
