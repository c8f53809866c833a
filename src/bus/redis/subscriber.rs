//! The subscriber task: owns the pub/sub connection for the life of the
//! bus. It connects, subscribes to every channel the node wants, delivers
//! what arrives, applies `interest`/`disinterest` by diffing the channels
//! wanted against those the connection has confirmed, answers barriers
//! once a diff is applied, and on any failure reconnects with jittered
//! exponential backoff and subscribes again. A reconnect and a batch of
//! session changes are therefore the same operation: make the confirmed
//! set equal the wanted one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::driver::{PubSubConn, PubSubDriver};
use super::{BACKOFF_MAX, BACKOFF_MIN, Command, Shared};
use crate::bus::{Deliver, Envelope};
use crate::config::BusTopology;

/// The jittered exponential backoff of the subscriber's reconnects.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// The delay before the next attempt: half the current step plus a
    /// random part of the other half, so nodes that lost Redis together do
    /// not reconnect in lockstep.
    pub(super) fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The subscriber's channel bookkeeping.
#[derive(Default)]
struct Channels {
    /// Channels the node needs.
    wanted: HashSet<String>,
    /// Channels the current connection has confirmed.
    active: HashSet<String>,
    /// Channels whose wish changed since the last sync: a sync looks at
    /// these only, so a session opening costs the same whether the node
    /// holds ten sessions or fifteen thousand (diffing the whole sets cost
    /// a node a third of its CPU at 14 000 sessions).
    dirty: HashSet<String>,
}

impl Channels {
    fn want(&mut self, channel: String) {
        if self.wanted.insert(channel.clone()) {
            self.dirty.insert(channel);
        }
    }

    fn unwant(&mut self, channel: &str) {
        if self.wanted.remove(channel) {
            self.dirty.insert(channel.to_string());
        }
    }

    /// A fresh connection has nothing: every wanted channel is to be
    /// subscribed.
    fn reset_active(&mut self) {
        self.active.clear();
        self.dirty = self.wanted.clone();
    }
}

/// What the subscriber remembers between connections, for its logs.
struct Outage {
    started: Instant,
    /// `None` before the first connection; then when the link was lost.
    down_since: Option<Instant>,
    last_cause: String,
    /// Failed connection attempts since the last success.
    failed_attempts: u32,
}

/// Runs the pub/sub link until the bus is dropped.
pub(super) async fn run<D: PubSubDriver>(
    shared: Arc<Shared>,
    mut driver: D,
    mut commands: mpsc::UnboundedReceiver<Command>,
    deliver: Deliver,
    stop: CancellationToken,
) {
    let mut channels = Channels::default();
    if shared.topology == BusTopology::Broadcast {
        channels.want(shared.channel.clone());
    }
    let mut backoff = Backoff::new();
    let mut outage = Outage {
        started: Instant::now(),
        down_since: None,
        last_cause: String::new(),
        failed_attempts: 0,
    };
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(shared.io_timeout, driver.connect()) => r,
        };
        match connected {
            Ok(Ok(mut conn)) => {
                channels.reset_active();
                match sync_channels(&mut conn, &mut channels, shared.io_timeout).await {
                    Ok(()) => {
                        shared.set_connected(true);
                        backoff.reset();
                        log_connected(&shared, &mut outage, channels.active.len());
                        outage.last_cause = run_connected(
                            &shared,
                            &mut conn,
                            &mut commands,
                            &mut channels,
                            &deliver,
                            &stop,
                        )
                        .await;
                        if stop.is_cancelled() {
                            return;
                        }
                        shared.set_connected(false);
                        outage.down_since = Some(Instant::now());
                        tracing::warn!(
                            event = "bus_disconnected",
                            cause = %outage.last_cause,
                            "bus subscriber lost Redis; local delivery continues, reconnecting"
                        );
                    }
                    Err(e) => outage.last_cause = e,
                }
            }
            Ok(Err(e)) => outage.last_cause = e,
            Err(_) => outage.last_cause = "connect timed out".into(),
        }
        let delay = backoff.delay();
        log_connect_failed(&mut outage, delay);
        // Keep applying interest changes while waiting, so the wanted set is
        // current at the next attempt and nobody waits on a barrier.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => apply(&shared, cmd, &mut channels, &mut Vec::new()),
                    None => return,
                },
            }
        }
    }
}

fn log_connected(shared: &Shared, outage: &mut Outage, channels: usize) {
    outage.failed_attempts = 0;
    match outage.down_since.take() {
        Some(since) => {
            shared.counters.reconnects.inc();
            tracing::info!(
                event = "bus_reconnected",
                down_ms = since.elapsed().as_millis() as u64,
                channels,
                "bus subscriber reconnected and resubscribed"
            );
        }
        None => tracing::info!(
            event = "bus_connected",
            after_ms = outage.started.elapsed().as_millis() as u64,
            channels,
            "bus subscriber connected"
        ),
    }
}

/// The first failure of an outage is a warning; the retries are debug.
fn log_connect_failed(outage: &mut Outage, delay: Duration) {
    if outage.failed_attempts == 0 {
        tracing::warn!(
            event = "bus_connect_failed",
            cause = %outage.last_cause,
            retry_in_ms = delay.as_millis() as u64,
            "bus subscriber cannot reach Redis; retrying with backoff"
        );
    } else {
        tracing::debug!(
            event = "bus_connect_failed",
            cause = %outage.last_cause,
            attempt = outage.failed_attempts + 1,
            retry_in_ms = delay.as_millis() as u64,
            "bus subscriber cannot reach Redis"
        );
    }
    outage.failed_attempts += 1;
}

/// Delivers messages and applies commands until the connection fails;
/// returns the cause.
async fn run_connected<C: PubSubConn>(
    shared: &Shared,
    conn: &mut C,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    channels: &mut Channels,
    deliver: &Deliver,
    stop: &CancellationToken,
) -> String {
    let mut barriers = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return "bus stopped".into(),
            msg = conn.next_message() => match msg {
                Some(msg) => on_message(msg.as_ref(), deliver),
                None => return "connection closed".into(),
            },
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return "bus dropped".into() };
                apply(shared, cmd, channels, &mut barriers);
                // Take everything already queued, so a burst of sessions
                // opening costs one SUBSCRIBE, not one each.
                while let Ok(cmd) = commands.try_recv() {
                    apply(shared, cmd, channels, &mut barriers);
                }
                let result = sync_channels(conn, channels, shared.io_timeout).await;
                for barrier in barriers.drain(..) {
                    let _ = barrier.send(());
                }
                if let Err(cause) = result {
                    return cause;
                }
            }
        }
    }
}

/// Applies one command to the wanted set. Barriers are answered by the
/// caller once the set is synced (or at once, when `barriers` is dropped).
fn apply(
    shared: &Shared,
    cmd: Command,
    channels: &mut Channels,
    barriers: &mut Vec<oneshot::Sender<()>>,
) {
    match cmd {
        Command::Interest(user) => channels.want(shared.channel_for(&user)),
        Command::Disinterest(user) => {
            if !shared.still_interested(&user) {
                channels.unwant(&shared.channel_for(&user));
            }
        }
        Command::Barrier(tx) => barriers.push(tx),
    }
}

/// SUBSCRIBEs and UNSUBSCRIBEs so the connection's channels become the
/// wanted ones, looking only at the channels whose wish changed. A failure
/// ends the connection; the next one starts from `reset_active`, which
/// marks every wanted channel again, so nothing here needs to remember
/// what a failed call left undone.
async fn sync_channels<C: PubSubConn>(
    conn: &mut C,
    channels: &mut Channels,
    io_timeout: Duration,
) -> Result<(), String> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for channel in channels.dirty.drain() {
        match (
            channels.wanted.contains(&channel),
            channels.active.contains(&channel),
        ) {
            (true, false) => add.push(channel),
            (false, true) => remove.push(channel),
            _ => {}
        }
    }
    if !add.is_empty() {
        match tokio::time::timeout(io_timeout, conn.subscribe(add.clone())).await {
            Ok(Ok(())) => channels.active.extend(add),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("SUBSCRIBE timed out".into()),
        }
    }
    if !remove.is_empty() {
        match tokio::time::timeout(io_timeout, conn.unsubscribe(remove.clone())).await {
            Ok(Ok(())) => {
                for channel in &remove {
                    channels.active.remove(channel);
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("UNSUBSCRIBE timed out".into()),
        }
    }
    Ok(())
}

fn on_message(bytes: &[u8], deliver: &Deliver) {
    match Envelope::decode(bytes) {
        // Our own envelopes too: an event reaches this node's sessions
        // only this way, in stream order (the fan-out skips our own
        // control notices, which were applied when sent).
        Some(envelope) => deliver(Arc::new(envelope)),
        None => tracing::warn!(
            event = "bus_message_malformed",
            bytes = bytes.len(),
            cause = "not an envelope (another writer on the channel?)",
            "ignored a bus message"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The subscriber's logic against a stub link: no Redis here (the
    //! integration tests in `tests/cluster_redis.rs` run it against a real
    //! redis-server).

    use std::sync::atomic::Ordering;

    use parking_lot::Mutex;
    use serde_json::value::RawValue;

    use super::super::BusCounters;
    use super::*;
    use crate::bus::Payload;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Op {
        Subscribe(Vec<String>),
        Unsubscribe(Vec<String>),
    }

    /// Hands out the connections a test queues, in order; waits while none
    /// is queued. An `Err` is a failed connection attempt.
    struct StubDriver {
        next: mpsc::UnboundedReceiver<Result<StubConn, String>>,
    }

    struct StubConn {
        ops: Arc<Mutex<Vec<Op>>>,
        /// Dropping the sender closes the connection.
        messages: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    impl PubSubDriver for StubDriver {
        type Conn = StubConn;
        async fn connect(&mut self) -> Result<StubConn, String> {
            match self.next.recv().await {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }
    }

    impl PubSubConn for StubConn {
        type Message = Vec<u8>;
        async fn subscribe(&mut self, mut channels: Vec<String>) -> Result<(), String> {
            channels.sort();
            self.ops.lock().push(Op::Subscribe(channels));
            Ok(())
        }
        async fn unsubscribe(&mut self, mut channels: Vec<String>) -> Result<(), String> {
            channels.sort();
            self.ops.lock().push(Op::Unsubscribe(channels));
            Ok(())
        }
        async fn next_message(&mut self) -> Option<Vec<u8>> {
            self.messages.recv().await
        }
    }

    struct Harness {
        shared: Arc<Shared>,
        conns: mpsc::UnboundedSender<Result<StubConn, String>>,
        commands: mpsc::UnboundedSender<Command>,
        delivered: mpsc::UnboundedReceiver<Arc<Envelope>>,
        stop: CancellationToken,
    }

    impl Harness {
        fn start(topology: BusTopology) -> Harness {
            let shared = Arc::new(Shared::new(
                topology,
                "nc",
                &crate::config::HistoryConfig::default(),
                BusCounters::default(),
                false,
            ));
            let (conns, next) = mpsc::unbounded_channel();
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (tx, delivered) = mpsc::unbounded_channel();
            let stop = CancellationToken::new();
            tokio::spawn(run(
                shared.clone(),
                StubDriver { next },
                commands_rx,
                Arc::new(move |e| {
                    let _ = tx.send(e);
                }),
                stop.clone(),
            ));
            Harness {
                shared,
                conns,
                commands,
                delivered,
                stop,
            }
        }

        /// Queues a working connection; returns its log and message feed.
        fn connection(&self) -> (Arc<Mutex<Vec<Op>>>, mpsc::UnboundedSender<Vec<u8>>) {
            let ops = Arc::new(Mutex::new(Vec::new()));
            let (tx, messages) = mpsc::unbounded_channel();
            let _ = self.conns.send(Ok(StubConn {
                ops: ops.clone(),
                messages,
            }));
            (ops, tx)
        }

        /// Sends `commands`, then waits until the subscriber has applied them.
        async fn apply(&self, commands: Vec<Command>) {
            for c in commands {
                let _ = self.commands.send(c);
            }
            let (tx, rx) = oneshot::channel();
            let _ = self.commands.send(Command::Barrier(tx));
            rx.await.expect("barrier answered after a successful sync");
        }

        async fn until_connected(&self, up: bool) {
            while self.shared.connected.load(Ordering::Acquire) != up {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn interest(u: &str) -> Command {
        Command::Interest(u.into())
    }

    fn envelope(origin: &str) -> Vec<u8> {
        Envelope::new(
            origin,
            1,
            1,
            "u1",
            Payload::Event {
                event: RawValue::from_string("{}".into()).unwrap(),
            },
        )
        .encode()
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn interest_is_batched_diffed_and_confirmed_before_the_barrier() {
        let h = Harness::start(BusTopology::Targeted);
        let (ops, _feed) = h.connection();
        h.until_connected(true).await;
        assert!(ops.lock().is_empty(), "targeted starts with no channel");

        h.apply(vec![interest("u1"), interest("u2"), interest("u1")])
            .await;
        assert_eq!(
            *ops.lock(),
            vec![Op::Subscribe(vec!["nc:u:{u1}".into(), "nc:u:{u2}".into()])],
            "one SUBSCRIBE for a burst, each channel once"
        );

        // A user the node still has a session of is kept.
        *h.shared.interest_check.lock() = Some(Arc::new(|u: &str| u == "u2"));
        h.apply(vec![
            Command::Disinterest("u1".into()),
            Command::Disinterest("u2".into()),
        ])
        .await;
        assert_eq!(
            ops.lock().last(),
            Some(&Op::Unsubscribe(vec!["nc:u:{u1}".into()]))
        );
        assert_eq!(ops.lock().len(), 2);
        h.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_replaced_and_every_wanted_channel_resubscribed() {
        let mut h = Harness::start(BusTopology::Targeted);
        let (ops1, feed1) = h.connection();
        h.until_connected(true).await;
        h.apply(vec![interest("u1"), interest("u2")]).await;
        assert_eq!(ops1.lock().len(), 1);

        drop(feed1);
        h.until_connected(false).await;
        // While down, interest changes are still taken, and barriers do
        // not hang (they are answered by being dropped).
        let _ = h.commands.send(interest("u3"));
        let (tx, rx) = oneshot::channel();
        let _ = h.commands.send(Command::Barrier(tx));
        assert!(rx.await.is_err());

        // The first attempt fails; the backoff retries.
        let _ = h.conns.send(Err("refused".into()));
        let (ops2, feed2) = h.connection();
        h.until_connected(true).await;
        assert_eq!(
            *ops2.lock(),
            vec![Op::Subscribe(vec![
                "nc:u:{u1}".into(),
                "nc:u:{u2}".into(),
                "nc:u:{u3}".into()
            ])]
        );
        assert_eq!(h.shared.counters.reconnects.get(), 1);
        assert_eq!(h.shared.counters.connected.get(), 1);

        // Delivery works on the new link, our own envelopes included (the
        // fan-out decides what they mean); garbage is not delivered.
        feed2.send(envelope("me")).unwrap();
        feed2.send(b"not an envelope".to_vec()).unwrap();
        feed2.send(envelope("other")).unwrap();
        assert_eq!(h.delivered.recv().await.unwrap().origin_node, "me");
        assert_eq!(h.delivered.recv().await.unwrap().origin_node, "other");
        assert!(h.delivered.try_recv().is_err());
        h.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_subscribes_its_one_channel_on_connect() {
        let h = Harness::start(BusTopology::Broadcast);
        let (ops, _feed) = h.connection();
        h.until_connected(true).await;
        assert_eq!(*ops.lock(), vec![Op::Subscribe(vec!["nc".into()])]);
        h.stop.cancel();
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let first = b.delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.delay();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.delay() <= BACKOFF_MIN);
    }
}
