//! The pub/sub link behind a small trait, so the subscriber's logic
//! (interest diffing, barriers, backoff, resubscribe) runs the same against
//! Redis and against the stub of its unit tests.

use std::future::Future;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use crate::redis_conn::{ClusterRetry, Target, tuned};

/// Opens pub/sub connections.
pub(crate) trait PubSubDriver: Send + 'static {
    type Conn: PubSubConn;
    /// A fresh connection, or why there is none.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, String>> + Send;
}

/// One pub/sub connection. Every method may fail; a failure ends the
/// connection and the subscriber starts over.
pub(crate) trait PubSubConn: Send {
    fn subscribe(
        &mut self,
        channels: Vec<String>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn unsubscribe(
        &mut self,
        channels: Vec<String>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// A received message, read in place (no copy per message).
    type Message: AsRef<[u8]> + Send;
    /// The next message; `None` once the connection is gone.
    /// Cancel-safe: the subscriber polls it in a `select!`.
    fn next_message(&mut self) -> impl Future<Output = Option<Self::Message>> + Send;
}

/// The real link: a dedicated RESP2 pub/sub connection to Redis. Time
/// limits are the subscriber's, as for every other call of the trait.
pub(crate) struct RedisDriver {
    client: redis::Client,
}

impl RedisDriver {
    /// `client` with navcast's socket options (see `redis_conn::tuned`).
    pub(crate) fn new(client: redis::Client) -> RedisDriver {
        let client = tuned(client.clone()).unwrap_or(client);
        RedisDriver { client }
    }
}

/// A message as Redis delivered it; its payload is read in place.
pub(crate) struct RedisMessage(redis::Msg);

impl AsRef<[u8]> for RedisMessage {
    fn as_ref(&self) -> &[u8] {
        self.0.get_payload_bytes()
    }
}

pub(crate) struct RedisConn {
    sink: PubSubSink,
    stream: PubSubStream,
}

impl PubSubDriver for RedisDriver {
    type Conn = RedisConn;

    async fn connect(&mut self) -> Result<RedisConn, String> {
        let (sink, stream) = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?
            .split();
        Ok(RedisConn { sink, stream })
    }
}

impl PubSubConn for RedisConn {
    type Message = RedisMessage;

    async fn subscribe(&mut self, channels: Vec<String>) -> Result<(), String> {
        self.sink
            .subscribe(&channels)
            .await
            .map_err(|e| format!("SUBSCRIBE failed: {e}"))
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> Result<(), String> {
        self.sink
            .unsubscribe(&channels)
            .await
            .map_err(|e| format!("UNSUBSCRIBE failed: {e}"))
    }

    async fn next_message(&mut self) -> Option<RedisMessage> {
        self.stream.next().await.map(RedisMessage)
    }
}

/// The link to a Redis Cluster: one cluster connection (a link to every
/// master it needs), its sharded subscriptions (`SSUBSCRIBE`, each sent to
/// the master of its channel's slot) and their messages as RESP3 pushes.
/// Every per-rider channel has the rider's hash tag, so it lives on the
/// shard that holds the rider's stream, and only that shard carries it.
pub(crate) struct ClusterDriver {
    seeds: Vec<redis::ConnectionInfo>,
}

impl ClusterDriver {
    /// Each (un)subscribe retries as the publisher does
    /// ([`ClusterRetry::PUBLISHER`]): long enough for a replica to take
    /// over a dead master's slots.
    pub(crate) fn new(seeds: Vec<redis::ConnectionInfo>) -> ClusterDriver {
        ClusterDriver { seeds }
    }
}

pub(crate) struct ClusterConn {
    conn: redis::cluster_async::ClusterConnection,
    pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
}

/// Subscriptions sent at once while (un)subscribing many channels.
const CLUSTER_SUBSCRIBE_CONCURRENCY: usize = 256;

impl PubSubDriver for ClusterDriver {
    type Conn = ClusterConn;

    async fn connect(&mut self) -> Result<ClusterConn, String> {
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = Target::cluster_builder(&self.seeds, ClusterRetry::PUBLISHER)
            .push_sender(tx)
            .build()
            .map_err(|e| e.to_string())?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        // Proves the slot map is known before the subscriber reports itself
        // connected.
        redis::cmd("PING")
            .exec_async(&mut conn)
            .await
            .map_err(|e| format!("PING failed: {e}"))?;
        Ok(ClusterConn { conn, pushes })
    }
}

impl ClusterConn {
    /// Sends `command` for each channel on its own (channels of different
    /// slots cannot share one command), a bounded number at a time.
    async fn each(&mut self, command: &'static str, channels: Vec<String>) -> Result<(), String> {
        use futures_util::stream::{self, TryStreamExt};
        let conn = self.conn.clone();
        stream::iter(channels.into_iter().map(Ok::<_, String>))
            .try_for_each_concurrent(CLUSTER_SUBSCRIBE_CONCURRENCY, |channel| {
                let mut conn = conn.clone();
                async move {
                    let sent = match command {
                        "SSUBSCRIBE" => conn.ssubscribe(&channel).await,
                        _ => conn.sunsubscribe(&channel).await,
                    };
                    sent.map_err(|e| format!("{command} {channel} failed: {e}"))
                }
            })
            .await
    }
}

impl PubSubConn for ClusterConn {
    type Message = Vec<u8>;

    async fn subscribe(&mut self, channels: Vec<String>) -> Result<(), String> {
        self.each("SSUBSCRIBE", channels).await
    }

    async fn unsubscribe(&mut self, channels: Vec<String>) -> Result<(), String> {
        self.each("SUNSUBSCRIBE", channels).await
    }

    /// A sharded message's payload. A link to a master that dropped ends
    /// the connection: the subscriber then starts over with a fresh one
    /// and subscribes again to every channel, in the slots' new homes.
    async fn next_message(&mut self) -> Option<Vec<u8>> {
        loop {
            let push = self.pushes.recv().await?;
            match push.kind {
                redis::PushKind::SMessage | redis::PushKind::Message => {
                    if let Some(redis::Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                        return Some(payload);
                    }
                }
                redis::PushKind::Disconnection => return None,
                _ => {}
            }
        }
    }
}
