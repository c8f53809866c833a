//! The one way navcast talks to a Redis server, shared by the stores and
//! the bus: which socket options every link gets, how a command connection
//! behaves while Redis is down, and the retry of a refused first attempt.
//! The bus's pub/sub link is its own connection (pub/sub needs one), but it
//! is tuned here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, Value};
use tokio_util::sync::CancellationToken;

/// A [`ConnectionManager`] that sends a command a second time when the
/// first attempt could not even connect. The manager remembers a failed
/// connect until the next call swaps in a fresh attempt, so without this
/// the first command after Redis comes back would fail too. Only a refused
/// connection is retried: nothing was sent, so nothing is applied twice.
///
/// With a [`Health`], a command sent while Redis is known to be stalled
/// fails at once instead of waiting out the response timeout.
#[derive(Clone)]
pub(crate) struct Connection(ConnectionManager, Option<Arc<Health>>);

impl Connection {
    /// A lazily connecting connection to `client`'s server. It speaks
    /// RESP3 (Redis ≥ 6): over RESP3 the manager hears at once that its
    /// connection dropped and reconnects in the background, instead of
    /// failing the first command sent after Redis comes back.
    pub(crate) fn new(
        client: redis::Client,
        health: Option<Arc<Health>>,
    ) -> redis::RedisResult<Connection> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = tuned(redis::Client::open(info.set_redis_settings(settings))?)?;
        ConnectionManager::new_lazy_with_config(client, manager_config())
            .map(|m| Connection(m, health))
    }

    fn stalled(&self) -> Option<RedisError> {
        self.1.as_ref().filter(|h| !h.is_up()).map(|_| {
            RedisError::from((
                ErrorKind::Io,
                "Redis is not answering (health check failing); failing fast",
            ))
        })
    }
}

/// `client` with the socket options navcast wants on every Redis link:
/// `TCP_NODELAY` (small commands and messages must not wait for Nagle's
/// algorithm and a delayed ACK, which costs up to 40 ms on Linux) and
/// keepalive probes (after 30 s idle, every 10 s, 3 of them), so a Redis
/// that vanished without a FIN (a dead host, a dropped route) is noticed
/// within about a minute even on an idle link, such as the subscriber's.
pub(crate) fn tuned(client: redis::Client) -> redis::RedisResult<redis::Client> {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    let info = client.get_connection_info().clone().set_tcp_settings(tcp);
    redis::Client::open(info)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if let Some(e) = self.stalled() {
                return Err(e);
            }
            match self.0.req_packed_command(cmd).await {
                Err(e) if e.is_connection_refusal() => self.0.req_packed_command(cmd).await,
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if let Some(e) = self.stalled() {
                return Err(e);
            }
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(e) if e.is_connection_refusal() => {
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// The connection settings of the store and the bus publisher: fail fast
/// while Redis is down (one retry, short timeouts) so a request gets its
/// `INTERNAL_ERROR`/503 in about a second rather than hanging.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

/// The watchdog's view of Redis: whether it answers, and whether it still
/// holds the data it held.
///
/// A TCP connection to a stalled Redis (SIGSTOP, a hung disk, a full
/// network buffer) stays up, so neither the connection manager nor the
/// subscriber notices; only a command that gets no answer does. [`run`]
/// sends one every `redis_health_interval`: `PING`-like, it reads the
/// *generation* key, a random value the first node writes into an empty
/// Redis. No answer within `redis_health_timeout` twice in a row marks
/// Redis down (`/ready` 503, store commands fail at once); the next answer
/// marks it up. A generation that changed, or vanished, means Redis came
/// back without its data (flushed, replaced, restarted without its
/// append-only file): that is logged, counted, and bumps [`epoch`], which
/// sessions compare to tell riders their navigation state was lost.
///
/// [`run`]: Health::run
/// [`epoch`]: Health::epoch
pub struct Health {
    up: AtomicBool,
    epoch: AtomicU64,
    generation: parking_lot::Mutex<Option<String>>,
    misses: AtomicU64,
    conn: ConnectionManager,
    key: String,
    script: Script,
    counters: HealthCounters,
}

/// The metrics the watchdog keeps.
#[derive(Clone, Default)]
pub struct HealthCounters {
    pub up: Gauge,
    pub failed_checks: Counter,
    pub data_lost: Counter,
}

/// Reads the generation, writing one when there is none. Returns whether
/// it existed, and its value.
const GENERATION: &str = r"
local g = redis.call('GET', KEYS[1])
if g then return {1, g} end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {0, redis.call('GET', KEYS[1])}
";

/// Failed checks in a row before Redis counts as down.
const MISSES_TO_DOWN: u64 = 2;

impl Health {
    /// A watchdog for `client`'s server, its generation under
    /// `<prefix>:generation`. Redis counts as up until a check says not.
    pub fn new(
        client: redis::Client,
        prefix: &str,
        timeout: Duration,
        counters: HealthCounters,
    ) -> redis::RedisResult<Health> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = ConnectionManager::new_lazy_with_config(tuned(client)?, config)?;
        counters.up.set(1);
        Ok(Health {
            up: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            generation: parking_lot::Mutex::new(None),
            misses: AtomicU64::new(0),
            conn,
            key: format!("{prefix}:generation"),
            script: Script::new(GENERATION),
            counters,
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How many times this node has seen Redis come back without its data.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// One check now; returns the epoch after it. Sessions call this when
    /// state they relied on is missing, so the answer does not wait for
    /// the next periodic check.
    pub async fn check(&self) -> u64 {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let reply: redis::RedisResult<(i64, String)> = self
            .script
            .key(&self.key)
            .arg(&fresh)
            .invoke_async(&mut self.conn.clone())
            .await;
        match reply {
            Ok((_, generation)) => {
                self.misses.store(0, Ordering::Release);
                if !self.up.swap(true, Ordering::AcqRel) {
                    self.counters.up.set(1);
                    tracing::info!(event = "redis_up", "Redis answers again");
                }
                let mut known = self.generation.lock();
                match known.as_deref() {
                    Some(g) if g != generation => {
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        self.counters.data_lost.inc();
                        tracing::error!(
                            event = "redis_data_lost",
                            cause = "the generation key changed: Redis came back empty (flushed, replaced, or restarted without its append-only file)",
                            "accounts, refresh tokens, shares and routes written before are gone; riders are told to start their navigation again"
                        );
                    }
                    _ => {}
                }
                *known = Some(generation);
            }
            Err(e) => {
                self.counters.failed_checks.inc();
                let misses = self.misses.fetch_add(1, Ordering::AcqRel) + 1;
                if misses >= MISSES_TO_DOWN && self.up.swap(false, Ordering::AcqRel) {
                    self.counters.up.set(0);
                    tracing::error!(
                        event = "redis_down",
                        cause = %e,
                        failed_checks = misses,
                        "Redis does not answer; /ready is 503 and store requests fail at once"
                    );
                }
            }
        }
        self.epoch()
    }

    /// Checks every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.check().await;
        }
    }
}
