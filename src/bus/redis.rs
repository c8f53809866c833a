//! The cross-process bus: Redis pub/sub.
//!
//! Two tasks per node own all Redis I/O of the bus, so that no session task
//! ever waits on Redis:
//!
//! - the **publisher** drains a bounded queue of envelopes and sends what it
//!   finds as one pipeline of `PUBLISH`es over a [`ConnectionManager`]. A
//!   full queue or a failed pipeline is counted in
//!   `navcast_bus_publish_failures_total` and logged once per burst.
//! - the **subscriber** owns a dedicated pub/sub connection. It reconnects
//!   with jittered exponential backoff (100 ms doubling to 5 s), subscribes
//!   again to every channel it needs, logs how long it was down, and sets
//!   `navcast_bus_connected`. It also applies `interest`/`disinterest`
//!   (topology `targeted`) by diffing the channels wanted against those the
//!   connection has confirmed, so a reconnect and a batch of session changes
//!   are the same operation.
//!
//! Topologies: `broadcast` publishes every envelope on one channel
//! (`bus.channel`) that every node subscribes to; `targeted` publishes a
//! user's envelopes on `<bus.channel>:u:<user_id>`, to which a node
//! subscribes only while it has a session of or watching that user.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::PubSubSink;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Bus, Deliver, Envelope, InterestCheck, Payload};
use crate::config::BusTopology;
use crate::redis_conn::{Connection, tuned};

/// Envelopes waiting for the publisher. At 5 000 events/s this is almost a
/// second of Redis being slow before publishes start failing; an envelope
/// is a few hundred bytes, so the queue stays under a few MiB.
const PUBLISH_QUEUE: usize = 4096;
/// Envelopes sent in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// First reconnect delay of the subscriber; doubles per failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay of the subscriber.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connect, (un)subscribe or publish that takes longer counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// While publishes keep failing, a reminder is logged this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// The metrics the bus updates itself. Clones of the node's counters
/// (prometheus-client handles are `Arc`s), so `/metrics` and `/stats` see
/// the same numbers.
#[derive(Clone, Default)]
pub struct BusCounters {
    pub publish_failures: Counter,
    pub reconnects: Counter,
    pub connected: Gauge,
}

/// What the subscriber task is asked to do, in order.
enum Command {
    Interest(String),
    Disinterest(String),
    /// Answered once every command before it has taken effect.
    Barrier(oneshot::Sender<()>),
}

pub struct RedisBus {
    shared: Arc<Shared>,
    client: redis::Client,
    /// Into the publisher task; bounded so that a stalled Redis costs
    /// counted failures, not memory.
    publish_tx: mpsc::Sender<Envelope>,
    /// Taken by `start`, which spawns the publisher.
    publish_rx: Mutex<Option<mpsc::Receiver<Envelope>>>,
    /// Into the subscriber task. Unbounded: one small command per session
    /// open/close or watch/unwatch, and `interest` must not wait.
    commands_tx: mpsc::UnboundedSender<Command>,
    /// Taken by `start`, which spawns the subscriber.
    commands_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Stops both tasks when the bus is dropped.
    stop: CancellationToken,
}

/// State shared by the handle and its two tasks.
struct Shared {
    topology: BusTopology,
    /// The broadcast channel, or the prefix of the per-user channels.
    channel: String,
    /// True while the subscriber connection is up and subscribed.
    connected: AtomicBool,
    counters: BusCounters,
    /// Rate limit of the publish-failure log.
    failures: Mutex<FailureLog>,
    /// The node's view of interest, consulted before unsubscribing.
    interest_check: Mutex<Option<InterestCheck>>,
}

#[derive(Default)]
struct FailureLog {
    /// Failures since publishing last worked; 0 = not in a failure burst.
    in_burst: u64,
    last_logged: Option<Instant>,
}

impl RedisBus {
    /// A bus on the Redis server of `client`. Connects nothing yet: the
    /// tasks start in [`Bus::start`] and connect in the background, so a
    /// node starts while Redis is down and reports itself not ready.
    pub fn new(
        client: redis::Client,
        topology: BusTopology,
        channel: &str,
        counters: BusCounters,
    ) -> RedisBus {
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        counters.connected.set(0);
        RedisBus {
            shared: Arc::new(Shared {
                topology,
                channel: channel.to_string(),
                connected: AtomicBool::new(false),
                counters,
                failures: Mutex::new(FailureLog::default()),
                interest_check: Mutex::new(None),
            }),
            client,
            publish_tx,
            publish_rx: Mutex::new(Some(publish_rx)),
            commands_tx,
            commands_rx: Mutex::new(Some(commands_rx)),
            stop: CancellationToken::new(),
        }
    }

    /// The channel an envelope about `user` travels on.
    pub fn channel_for(&self, user: &str) -> String {
        self.shared.channel_for(user)
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn channel_for(&self, user: &str) -> String {
        match self.topology {
            BusTopology::Broadcast => self.channel.clone(),
            BusTopology::Targeted => format!("{}:u:{}", self.channel, user),
        }
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        self.counters.connected.set(i64::from(up));
    }

    /// Counts `n` envelopes that were not published and logs the cause,
    /// once per burst of failures (plus a reminder now and then).
    fn publish_failed(&self, n: u64, cause: &dyn std::fmt::Display) {
        self.counters.publish_failures.inc_by(n);
        let mut log = self.failures.lock();
        let first = log.in_burst == 0;
        log.in_burst += n;
        let remind = log
            .last_logged
            .is_some_and(|t| t.elapsed() >= FAILURE_LOG_EVERY);
        if first || remind {
            log.last_logged = Some(Instant::now());
            let failed_so_far = log.in_burst;
            drop(log);
            tracing::warn!(
                event = "bus_publish_failed",
                cause = %cause,
                failed_so_far,
                "bus publish failed; local delivery continues (further failures of this burst are counted, not logged)"
            );
        }
    }

    fn publish_ok(&self) {
        let mut log = self.failures.lock();
        if log.in_burst > 0 {
            let failed = log.in_burst;
            *log = FailureLog::default();
            drop(log);
            tracing::info!(
                event = "bus_publish_recovered",
                failed,
                "bus publishing works again"
            );
        }
    }

    /// Whether the node still wants `user`'s channel. Without a check
    /// installed, a `disinterest` is taken at its word.
    fn still_interested(&self, user: &str) -> bool {
        let check = self.interest_check.lock().clone();
        check.is_some_and(|c| c(user))
    }
}

impl Bus for RedisBus {
    fn start(&self, node_id: &str, deliver: Deliver) {
        let (Some(publish_rx), Some(commands_rx)) = (
            self.publish_rx.lock().take(),
            self.commands_rx.lock().take(),
        ) else {
            tracing::error!(
                event = "bus_started_twice",
                "RedisBus::start called twice; ignored"
            );
            return;
        };
        match Connection::new(self.client.clone()) {
            Ok(conn) => {
                tokio::spawn(publisher(
                    self.shared.clone(),
                    conn,
                    publish_rx,
                    self.stop.clone(),
                ));
            }
            Err(e) => {
                // Only a configuration mistake gets here; every publish
                // will then count as a failure.
                tracing::error!(event = "bus_publisher_failed", cause = %e, "bus publisher not started");
            }
        }
        let client = match tuned(self.client.clone()) {
            Ok(client) => client,
            Err(_) => self.client.clone(),
        };
        tokio::spawn(subscriber(
            self.shared.clone(),
            client,
            node_id.to_string(),
            commands_rx,
            deliver,
            self.stop.clone(),
        ));
    }

    fn publish(&self, envelope: Envelope) {
        match self.publish_tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared
                    .publish_failed(1, &"publish queue full (Redis slow or down)");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.publish_failed(1, &"publisher stopped");
            }
        }
    }

    fn interest(&self, user: &str) {
        if self.shared.topology == BusTopology::Targeted {
            let _ = self.commands_tx.send(Command::Interest(user.to_string()));
        }
    }

    fn disinterest(&self, user: &str) {
        if self.shared.topology == BusTopology::Targeted {
            let _ = self
                .commands_tx
                .send(Command::Disinterest(user.to_string()));
        }
    }

    fn settled(&self) -> BoxFuture<'static, ()> {
        // While Redis is down there is nothing to wait for: the subscriber
        // subscribes to every wanted channel when it reconnects.
        if self.shared.topology != BusTopology::Targeted || !self.is_connected() {
            return Box::pin(std::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.commands_tx.send(Command::Barrier(tx));
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn set_interest_check(&self, check: InterestCheck) {
        *self.shared.interest_check.lock() = Some(check);
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        match self.shared.topology {
            BusTopology::Broadcast => "redis-broadcast",
            BusTopology::Targeted => "redis-targeted",
        }
    }
}

/// Sends queued envelopes, a pipeline per batch, until the bus is dropped.
async fn publisher(
    shared: Arc<Shared>,
    mut conn: Connection,
    mut rx: mpsc::Receiver<Envelope>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut queued = 0u64;
        for envelope in batch.drain(..) {
            match serde_json::to_vec(&envelope) {
                Ok(bytes) => {
                    pipe.cmd("PUBLISH")
                        .arg(shared.channel_for(&envelope.user_id))
                        .arg(bytes)
                        .ignore();
                    queued += 1;
                }
                Err(e) => shared.publish_failed(1, &format!("envelope not serialisable: {e}")),
            }
        }
        if queued == 0 {
            continue;
        }
        match tokio::time::timeout(IO_TIMEOUT, pipe.exec_async(&mut conn)).await {
            Ok(Ok(())) => shared.publish_ok(),
            Ok(Err(e)) => shared.publish_failed(queued, &e),
            Err(_) => shared.publish_failed(queued, &"PUBLISH timed out"),
        }
    }
}

/// The jittered exponential backoff of the subscriber's reconnects.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// The delay before the next attempt: half the current step plus a
    /// random part of the other half, so nodes that lost Redis together do
    /// not reconnect in lockstep.
    fn delay(&mut self) -> Duration {
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
struct Channels {
    /// Channels the node needs.
    wanted: HashSet<String>,
    /// Channels the current connection has confirmed.
    active: HashSet<String>,
}

/// Runs the pub/sub connection for the life of the bus: connect, subscribe
/// to every wanted channel, deliver, and on any failure start over.
async fn subscriber(
    shared: Arc<Shared>,
    client: redis::Client,
    node_id: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    deliver: Deliver,
    stop: CancellationToken,
) {
    let mut channels = Channels {
        wanted: HashSet::new(),
        active: HashSet::new(),
    };
    if shared.topology == BusTopology::Broadcast {
        channels.wanted.insert(shared.channel.clone());
    }
    let mut backoff = Backoff::new();
    // `None` before the first connection; then when the link was lost.
    let mut down_since: Option<Instant> = None;
    let started = Instant::now();
    let mut last_cause = String::new();
    // Failed connection attempts since the last success, for the log.
    let mut failed_attempts = 0u32;
    loop {
        let connect = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub());
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect => r,
        };
        let pubsub = match pubsub {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                last_cause = e.to_string();
                None
            }
            Err(_) => {
                last_cause = "connect timed out".into();
                None
            }
        };
        if let Some(pubsub) = pubsub {
            let (mut sink, mut stream) = pubsub.split();
            channels.active.clear();
            match sync_channels(&shared, &mut sink, &mut channels).await {
                Ok(()) => {
                    shared.set_connected(true);
                    backoff.reset();
                    failed_attempts = 0;
                    match down_since.take() {
                        Some(since) => {
                            shared.counters.reconnects.inc();
                            tracing::info!(
                                event = "bus_reconnected",
                                down_ms = since.elapsed().as_millis() as u64,
                                channels = channels.active.len(),
                                "bus subscriber reconnected and resubscribed"
                            );
                        }
                        None => tracing::info!(
                            event = "bus_connected",
                            after_ms = started.elapsed().as_millis() as u64,
                            channels = channels.active.len(),
                            "bus subscriber connected"
                        ),
                    }
                    last_cause = run_connected(
                        &shared,
                        &node_id,
                        &mut sink,
                        &mut stream,
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
                    down_since = Some(Instant::now());
                    tracing::warn!(
                        event = "bus_disconnected",
                        cause = %last_cause,
                        "bus subscriber lost Redis; local delivery continues, reconnecting"
                    );
                }
                Err(e) => last_cause = e,
            }
        }
        let delay = backoff.delay();
        if failed_attempts == 0 {
            tracing::warn!(
                event = "bus_connect_failed",
                cause = %last_cause,
                retry_in_ms = delay.as_millis() as u64,
                "bus subscriber cannot reach Redis; retrying with backoff"
            );
        } else {
            tracing::debug!(
                event = "bus_connect_failed",
                cause = %last_cause,
                attempt = failed_attempts + 1,
                retry_in_ms = delay.as_millis() as u64,
                "bus subscriber cannot reach Redis"
            );
        }
        failed_attempts += 1;
        // Keep applying interest changes while waiting, so the wanted set is
        // current at the next attempt and nobody waits on a barrier.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => apply(&shared, cmd, &mut channels.wanted, &mut Vec::new()),
                    None => return,
                },
            }
        }
    }
}

/// Delivers messages and applies commands until the connection fails;
/// returns the cause.
#[allow(clippy::too_many_arguments)]
async fn run_connected(
    shared: &Shared,
    node_id: &str,
    sink: &mut PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    channels: &mut Channels,
    deliver: &Deliver,
    stop: &CancellationToken,
) -> String {
    let mut barriers = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return "bus stopped".into(),
            msg = stream.next() => match msg {
                Some(msg) => on_message(node_id, msg.get_payload_bytes(), deliver),
                None => return "connection closed".into(),
            },
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return "bus dropped".into() };
                apply(shared, cmd, &mut channels.wanted, &mut barriers);
                // Take everything already queued, so a burst of sessions
                // opening costs one SUBSCRIBE, not one each.
                while let Ok(cmd) = commands.try_recv() {
                    apply(shared, cmd, &mut channels.wanted, &mut barriers);
                }
                let result = sync_channels(shared, sink, channels).await;
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
    wanted: &mut HashSet<String>,
    barriers: &mut Vec<oneshot::Sender<()>>,
) {
    match cmd {
        Command::Interest(user) => {
            wanted.insert(shared.channel_for(&user));
        }
        Command::Disinterest(user) => {
            if !shared.still_interested(&user) {
                wanted.remove(&shared.channel_for(&user));
            }
        }
        Command::Barrier(tx) => barriers.push(tx),
    }
}

/// SUBSCRIBEs and UNSUBSCRIBEs so the connection's channels become the
/// wanted ones.
async fn sync_channels(
    _shared: &Shared,
    sink: &mut PubSubSink,
    channels: &mut Channels,
) -> Result<(), String> {
    let add: Vec<String> = channels
        .wanted
        .difference(&channels.active)
        .cloned()
        .collect();
    let remove: Vec<String> = channels
        .active
        .difference(&channels.wanted)
        .cloned()
        .collect();
    if !add.is_empty() {
        match tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&add)).await {
            Ok(Ok(())) => channels.active.extend(add),
            Ok(Err(e)) => return Err(format!("SUBSCRIBE failed: {e}")),
            Err(_) => return Err("SUBSCRIBE timed out".into()),
        }
    }
    if !remove.is_empty() {
        match tokio::time::timeout(IO_TIMEOUT, sink.unsubscribe(&remove)).await {
            Ok(Ok(())) => {
                for channel in &remove {
                    channels.active.remove(channel);
                }
            }
            Ok(Err(e)) => return Err(format!("UNSUBSCRIBE failed: {e}")),
            Err(_) => return Err("UNSUBSCRIBE timed out".into()),
        }
    }
    Ok(())
}

/// The wire form of an envelope as read back. `Envelope` itself cannot be
/// deserialised from a buffer that holds a `RawValue` behind
/// `#[serde(flatten)]`, so the receiving side spells the fields out; the
/// sending side uses `Envelope`'s own `Serialize`, which writes the same
/// shape.
#[derive(Deserialize)]
struct WireEnvelope {
    origin_node: String,
    node_seq: u64,
    seq: u64,
    sent_at_us: u64,
    user_id: String,
    kind: String,
    #[serde(default)]
    event: Option<Box<RawValue>>,
    #[serde(default)]
    session_id: Option<String>,
}

/// Decodes one bus message; `None` for a malformed one.
pub fn decode(bytes: &[u8]) -> Option<Envelope> {
    let wire: WireEnvelope = serde_json::from_slice(bytes).ok()?;
    let payload = match (wire.kind.as_str(), wire.event, wire.session_id) {
        ("event", Some(event), _) => Payload::Event { event },
        ("replace", _, Some(session_id)) => Payload::Replace { session_id },
        _ => return None,
    };
    Some(Envelope {
        origin_node: wire.origin_node,
        node_seq: wire.node_seq,
        seq: wire.seq,
        sent_at_us: wire.sent_at_us,
        user_id: wire.user_id,
        payload,
    })
}

fn on_message(node_id: &str, bytes: &[u8], deliver: &Deliver) {
    match decode(bytes) {
        // Our own envelopes come back on channels we share with others;
        // their local delivery already happened.
        Some(envelope) if envelope.origin_node == node_id => {}
        Some(envelope) => deliver(Arc::new(envelope)),
        None => tracing::warn!(
            event = "bus_message_malformed",
            bytes = bytes.len(),
            "ignored a bus message that is not an envelope"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_survive_the_wire() {
        let event = RawValue::from_string(r#"{"type":"arrival","x":[1,2]}"#.into()).unwrap();
        let sent = Envelope {
            origin_node: "node-a".into(),
            node_seq: 7,
            seq: 3,
            sent_at_us: 42,
            user_id: "u1".into(),
            payload: Payload::Event { event },
        };
        let bytes = serde_json::to_vec(&sent).unwrap();
        let got = decode(&bytes).unwrap();
        assert_eq!(
            (
                got.origin_node.as_str(),
                got.node_seq,
                got.seq,
                got.sent_at_us
            ),
            ("node-a", 7, 3, 42)
        );
        match got.payload {
            Payload::Event { event } => assert_eq!(event.get(), r#"{"type":"arrival","x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        let replace = Envelope {
            payload: Payload::Replace {
                session_id: "s1".into(),
            },
            ..sent
        };
        let got = decode(&serde_json::to_vec(&replace).unwrap()).unwrap();
        assert!(matches!(got.payload, Payload::Replace { session_id } if session_id == "s1"));
        assert!(decode(b"{\"kind\":\"event\"}").is_none());
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

    #[test]
    fn targeted_channels_are_per_user() {
        let counters = BusCounters::default();
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let bus = RedisBus::new(
            client.clone(),
            BusTopology::Targeted,
            "nc",
            counters.clone(),
        );
        assert_eq!(bus.channel_for("u1"), "nc:u:u1");
        let bus = RedisBus::new(client, BusTopology::Broadcast, "nc", counters);
        assert_eq!(bus.channel_for("u1"), "nc");
    }
}
