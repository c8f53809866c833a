//! The one way navcast talks to a Redis server, shared by the stores and
//! the bus: which socket options every link gets, how a command connection
//! behaves while Redis is down, and the retry of a refused first attempt.
//! The bus's pub/sub link is its own connection (pub/sub needs one), but it
//! is tuned here too.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A [`ConnectionManager`] that sends a command a second time when the
/// first attempt could not even connect. The manager remembers a failed
/// connect until the next call swaps in a fresh attempt, so without this
/// the first command after Redis comes back would fail too. Only a refused
/// connection is retried: nothing was sent, so nothing is applied twice.
#[derive(Clone)]
pub(crate) struct Connection(ConnectionManager);

impl Connection {
    /// A lazily connecting connection to `client`'s server. It speaks
    /// RESP3 (Redis ≥ 6): over RESP3 the manager hears at once that its
    /// connection dropped and reconnects in the background, instead of
    /// failing the first command sent after Redis comes back.
    pub(crate) fn new(client: redis::Client) -> redis::RedisResult<Connection> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = tuned(redis::Client::open(info.set_redis_settings(settings))?)?;
        ConnectionManager::new_lazy_with_config(client, manager_config()).map(Connection)
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
