//! The pub/sub link behind a small trait, so the subscriber's logic
//! (interest diffing, barriers, backoff, resubscribe) runs the same against
//! Redis and against the stub of its unit tests.

use std::future::Future;

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
