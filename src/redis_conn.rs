//! The one way navcast talks to a Redis server, shared by the stores and
//! the bus: which socket options every link gets, how a command connection
//! behaves while Redis is down, and the retry of a refused first attempt.
//! The bus's pub/sub link is its own connection (pub/sub needs one), but it
//! is tuned here too.
//!
//! Redis is either one server or a Redis Cluster ([`Target`]). Against a
//! cluster every command goes through redis-rs's cluster connection, which
//! routes it by its first key's slot, follows `MOVED`/`ASK`, refreshes the
//! slot map when a replica is promoted, and retries meanwhile. That is why
//! every multi-key command and script of navcast keeps its keys in one slot
//! (hash tags, see `store/redis.rs` and `bus/redis/history.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Script, Value,
};
use tokio_util::sync::CancellationToken;

use crate::config::RedisMode;

/// Where navcast's Redis is: one server, or the seed nodes of a Redis
/// Cluster (any reachable one tells the client about the others).
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Parses `url` for `mode`: one URL, or comma-separated seed URLs.
    /// Connects nothing.
    pub fn open(mode: RedisMode, url: &str) -> RedisResult<Target> {
        match mode {
            RedisMode::Single => Ok(Target::Single(redis::Client::open(url)?)),
            RedisMode::Cluster => {
                let seeds = url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.into_connection_info())
                    .collect::<RedisResult<Vec<_>>>()?;
                if seeds.is_empty() {
                    return Err(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "no seed node in the Redis Cluster URL list",
                    )));
                }
                Ok(Target::Cluster(seeds))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A cluster client on `seeds` with navcast's socket options, RESP3
    /// (so a dropped node link is noticed at once) and `retry`'s limits:
    /// each attempt within `retry.overall` (at most 1 s), jittered waits
    /// between attempts up to `retry.max_wait`.
    pub(crate) fn cluster_builder(
        seeds: &[ConnectionInfo],
        retry: ClusterRetry,
    ) -> ClusterClientBuilder {
        let attempt = retry.overall.min(Duration::from_secs(1));
        ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .tcp_settings(tcp_settings())
            .connection_timeout(attempt)
            .response_timeout(attempt)
            .retries(retry.retries)
            .min_retry_wait(20)
            .max_retry_wait(retry.max_wait.as_millis() as u64)
            .retry_wait_formula(50, 2)
            .overall_response_timeout(Some(retry.overall))
    }
}

impl From<redis::Client> for Target {
    fn from(client: redis::Client) -> Target {
        Target::Single(client)
    }
}

/// How hard a cluster connection tries before a command fails.
#[derive(Clone, Copy)]
pub(crate) struct ClusterRetry {
    /// Attempts after the first (redirections, a node down, a slot map
    /// being refreshed).
    pub retries: u32,
    /// Longest wait between two attempts.
    pub max_wait: Duration,
    /// Limit of the whole command, retries included.
    pub overall: Duration,
}

impl ClusterRetry {
    /// Store commands: a request waits at most about 3 s for its answer,
    /// enough to ride out a slot moving, not a whole failover (the rider
    /// gets `INTERNAL_ERROR` then, as with one Redis down).
    pub(crate) const COMMANDS: ClusterRetry = ClusterRetry {
        retries: 6,
        max_wait: Duration::from_millis(500),
        overall: Duration::from_secs(3),
    };
    /// The bus publisher: an event waits up to 15 s, so the events of the
    /// riders of a shard whose master died are published once its replica
    /// is promoted (the default `cluster-node-timeout` is 15 s; navcast's
    /// scripts use 2 s).
    pub(crate) const PUBLISHER: ClusterRetry = ClusterRetry {
        retries: 30,
        max_wait: Duration::from_millis(1000),
        overall: Duration::from_secs(15),
    };
}

fn cluster_connection(
    seeds: &[ConnectionInfo],
    retry: ClusterRetry,
) -> RedisResult<ClusterConnection> {
    let client = Target::cluster_builder(seeds, retry).build()?;
    // Pending: connects in the background and on first use, so a node
    // starts while the cluster is down and reports itself not ready.
    Ok(client.get_pending_async_connection_with_config(ClusterConfig::new()))
}

/// A [`ConnectionManager`] that sends a command a second time when the
/// first attempt could not even connect. The manager remembers a failed
/// connect until the next call swaps in a fresh attempt, so without this
/// the first command after Redis comes back would fail too. Only a refused
/// connection is retried: nothing was sent, so nothing is applied twice.
///
/// With a [`Health`], a command sent while Redis is known to be stalled
/// fails at once instead of waiting out the response timeout.
#[derive(Clone)]
pub(crate) struct Connection(Link, Option<Arc<Health>>);

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// A lazily connecting connection to `target`: see [`Connection::new`]
    /// for one server; a cluster connection retries as `retry` says.
    pub(crate) fn to(
        target: &Target,
        health: Option<Arc<Health>>,
        retry: ClusterRetry,
    ) -> RedisResult<Connection> {
        match target {
            Target::Single(client) => Connection::new(client.clone(), health),
            // No fail-fast gate on a cluster: the watchdog's key lives on
            // one shard, and while that shard fails over the others still
            // answer. Each command is bounded by `retry` instead.
            Target::Cluster(seeds) => Ok(Connection(
                Link::Cluster(cluster_connection(seeds, retry)?),
                None,
            )),
        }
    }

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
            .map(|m| Connection(Link::Single(m), health))
    }

    /// On a Redis Cluster, waits (up to `limit`) until a replica of
    /// `key`'s master has every write made so far on this connection to
    /// that master, and returns how many replicas have; with one server,
    /// `None` at once (its append-only file is what keeps the write).
    /// Redis replicates asynchronously: without this, a write acknowledged
    /// just before its master dies can be missing on the promoted replica.
    pub(crate) async fn replicated(&mut self, key: &str, limit: Duration) -> Option<u64> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let Link::Cluster(c) = &mut self.0 else {
            return None;
        };
        let route = Route::new(slot(key.as_bytes()), SlotAddr::Master);
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(limit.as_millis() as u64);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        match c.route_command(wait, routing).await {
            Ok(Value::Int(n)) => Some(n.max(0) as u64),
            _ => Some(0),
        }
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
    let info = client
        .get_connection_info()
        .clone()
        .set_tcp_settings(tcp_settings());
    redis::Client::open(info)
}

fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if let Some(e) = self.stalled() {
                return Err(e);
            }
            match &mut self.0 {
                Link::Single(m) => match m.req_packed_command(cmd).await {
                    Err(e) if e.is_connection_refusal() => m.req_packed_command(cmd).await,
                    other => other,
                },
                Link::Cluster(c) => c.req_packed_command(cmd).await,
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
            match &mut self.0 {
                Link::Single(m) => match m.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if e.is_connection_refusal() => {
                        m.req_packed_commands(pipeline, offset, count).await
                    }
                    other => other,
                },
                Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Link::Single(m) => m.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
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
    conn: Connection,
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
    /// A watchdog for `target`, its generation under `<prefix>:generation`
    /// (on a cluster, in that key's shard: a shard that comes back empty
    /// shows in the keys it held, not here). Redis counts as up until a
    /// check says not.
    pub fn new(
        target: &Target,
        prefix: &str,
        timeout: Duration,
        counters: HealthCounters,
    ) -> redis::RedisResult<Health> {
        let conn = match target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let m = ConnectionManager::new_lazy_with_config(tuned(client.clone())?, config)?;
                Connection(Link::Single(m), None)
            }
            Target::Cluster(seeds) => {
                let retry = ClusterRetry {
                    retries: 1,
                    max_wait: timeout / 4,
                    overall: timeout,
                };
                Connection(Link::Cluster(cluster_connection(seeds, retry)?), None)
            }
        };
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

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag
/// (the part between the first `{` and the next `}`, when not empty), or of
/// the whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::slot;

    /// Values from the Redis Cluster specification's examples and
    /// `CLUSTER KEYSLOT` on Redis 7.
    #[test]
    fn slots_match_redis() {
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }
}
