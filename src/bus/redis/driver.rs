//! The pub/sub link behind a small trait, so the subscriber's logic
//! (interest diffing, barriers, backoff, resubscribe) runs the same against
//! Redis and against the stub of its unit tests.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use crate::redis_conn::tuned;

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
    /// The next message's payload; `None` once the connection is gone.
    /// Cancel-safe: the subscriber polls it in a `select!`.
    fn next_payload(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// The real link: a dedicated RESP2 pub/sub connection to Redis.
pub(crate) struct RedisDriver {
    client: redis::Client,
    timeout: Duration,
}

impl RedisDriver {
    /// `client` with navcast's socket options (see `redis_conn::tuned`).
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> RedisDriver {
        let client = tuned(client.clone()).unwrap_or(client);
        RedisDriver { client, timeout }
    }
}

pub(crate) struct RedisConn {
    sink: PubSubSink,
    stream: PubSubStream,
}

impl PubSubDriver for RedisDriver {
    type Conn = RedisConn;

    async fn connect(&mut self) -> Result<RedisConn, String> {
        match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
                let (sink, stream) = pubsub.split();
                Ok(RedisConn { sink, stream })
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }
}

impl PubSubConn for RedisConn {
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

    async fn next_payload(&mut self) -> Option<Vec<u8>> {
        let msg = self.stream.next().await?;
        Some(msg.get_payload_bytes().to_vec())
    }
}
