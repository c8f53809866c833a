//! The cross-process bus: Redis pub/sub.
//!
//! Two tasks per node own all Redis I/O of the bus, so that no session task
//! ever waits on Redis:
//!
//! - the **publisher** (`publisher.rs`) drains a bounded queue of envelopes
//!   and sends what it finds as one pipeline of `PUBLISH`es over the shared
//!   command connection (`crate::redis_conn`). A
//!   full queue or a failed pipeline is counted in
//!   `navcast_bus_publish_failures_total` and logged once per burst.
//! - the **subscriber** (`subscriber.rs`, over the small pub/sub trait of
//!   `driver.rs`, so its logic is unit-tested with a stub) owns a dedicated
//!   pub/sub connection. It reconnects
//!   with jittered exponential backoff (100 ms doubling to 5 s), subscribes
//!   again to every channel it needs, logs how long it was down, and sets
//!   `navcast_bus_connected`. It also applies `interest`/`disinterest`
//!   (topology `targeted`) by diffing the channels wanted against those the
//!   connection has confirmed, so a reconnect and a batch of session changes
//!   are the same operation.
//!
//! Topologies: `broadcast` publishes every envelope on one channel
//! (`bus.channel`) that every node subscribes to; `targeted` publishes a
//! user's envelopes on `<bus.channel>:u:{<user_id>}`, to which a node
//! subscribes only while it has a session of or watching that user.
//!
//! On a Redis Cluster (`targeted` only) the per-user channels are sharded
//! channels (`SPUBLISH`/`SSUBSCRIBE`): the `{<user_id>}` hash tag puts a
//! user's channel in the slot of the user's stream, so the stream script
//! publishes on the shard it runs on and each shard carries only its own
//! users' traffic, where classic pub/sub would copy every message to every
//! shard. The publisher then sends a batch as one script call per envelope,
//! all in flight at once (a pipeline cannot span slots), and the
//! subscriber uses a cluster connection (`driver::ClusterDriver`).

mod driver;
mod history;
mod publisher;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Bus, Deliver, Envelope, InterestCheck, Recovery};
use crate::config::{BusTopology, HistoryConfig};
use crate::redis_conn::{ClusterRetry, Connection, Target};
use driver::{ClusterDriver, RedisDriver};

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
/// The same on a Redis Cluster: long enough for a replica to be promoted
/// (`cluster-node-timeout` plus the election), during which the cluster
/// connection retries.
const CLUSTER_IO_TIMEOUT: Duration = ClusterRetry::PUBLISHER.overall;
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
    target: Target,
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
    /// The command connection of the publisher and of recoveries; `None`
    /// only when the URL could not configure one (every use then fails).
    conn: Option<Connection>,
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
    /// The rider streams' keys and scripts.
    streams: history::Streams,
    /// On a Redis Cluster: sharded pub/sub, one call per envelope.
    cluster: bool,
    /// Limit of one Redis call of the bus (see [`CLUSTER_IO_TIMEOUT`]).
    io_timeout: Duration,
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
        target: impl Into<Target>,
        topology: BusTopology,
        channel: &str,
        history: &HistoryConfig,
        counters: BusCounters,
    ) -> RedisBus {
        let target = target.into();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        counters.connected.set(0);
        let conn = match Connection::to(&target, None, ClusterRetry::PUBLISHER) {
            Ok(conn) => Some(conn),
            Err(e) => {
                // Only a configuration mistake gets here; every publish
                // will then count as a failure.
                tracing::error!(event = "bus_publisher_failed", cause = %e, "bus commands will fail");
                None
            }
        };
        RedisBus {
            shared: Arc::new(Shared::new(
                topology,
                channel,
                history,
                counters,
                target.is_cluster(),
            )),
            conn,
            target,
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
    fn new(
        topology: BusTopology,
        channel: &str,
        history: &HistoryConfig,
        counters: BusCounters,
        cluster: bool,
    ) -> Shared {
        Shared {
            streams: history::Streams::new(channel, history, cluster),
            cluster,
            io_timeout: if cluster {
                CLUSTER_IO_TIMEOUT
            } else {
                IO_TIMEOUT
            },
            topology,
            channel: channel.to_string(),
            connected: AtomicBool::new(false),
            counters,
            failures: Mutex::new(FailureLog::default()),
            interest_check: Mutex::new(None),
        }
    }

    fn channel_for(&self, user: &str) -> String {
        match self.topology {
            BusTopology::Broadcast => self.channel.clone(),
            BusTopology::Targeted => format!("{}:u:{{{}}}", self.channel, user),
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
    fn start(&self, _node_id: &str, deliver: Deliver) {
        let (Some(publish_rx), Some(commands_rx)) = (
            self.publish_rx.lock().take(),
            self.commands_rx.lock().take(),
        ) else {
            tracing::error!(
                event = "bus_started_twice",
                cause = "RedisBus::start called twice",
                "ignored"
            );
            return;
        };
        if let Some(conn) = &self.conn {
            tokio::spawn(publisher::run(
                self.shared.clone(),
                conn.clone(),
                publish_rx,
                self.stop.clone(),
            ));
        }
        match &self.target {
            Target::Single(client) => tokio::spawn(subscriber::run(
                self.shared.clone(),
                RedisDriver::new(client.clone()),
                commands_rx,
                deliver,
                self.stop.clone(),
            )),
            Target::Cluster(seeds) => tokio::spawn(subscriber::run(
                self.shared.clone(),
                ClusterDriver::new(seeds.clone()),
                commands_rx,
                deliver,
                self.stop.clone(),
            )),
        };
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

    fn recover(
        &self,
        user: &str,
        since: Option<(u64, String)>,
    ) -> BoxFuture<'static, Result<Recovery, String>> {
        let (shared, conn, user) = (self.shared.clone(), self.conn.clone(), user.to_string());
        Box::pin(async move {
            let mut conn = conn.ok_or("no Redis connection")?;
            match tokio::time::timeout(
                shared.io_timeout,
                shared.streams.recover(&mut conn, &user, since),
            )
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("stream recovery timed out".to_string()),
            }
        })
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
            BusTopology::Targeted if self.shared.cluster => "redis-cluster-targeted",
            BusTopology::Targeted => "redis-targeted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targeted_channels_are_per_user() {
        let counters = BusCounters::default();
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let history = HistoryConfig::default();
        let bus = RedisBus::new(
            client.clone(),
            BusTopology::Targeted,
            "nc",
            &history,
            counters.clone(),
        );
        assert_eq!(bus.channel_for("u1"), "nc:u:{u1}");
        let bus = RedisBus::new(client, BusTopology::Broadcast, "nc", &history, counters);
        assert_eq!(bus.channel_for("u1"), "nc");
    }
}
