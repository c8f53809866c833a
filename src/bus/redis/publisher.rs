//! The publisher task: drains the bus's bounded queue and sends what it
//! finds as one pipeline of `PUBLISH`es, so a burst of events costs one
//! round trip. A failed or slow pipeline is counted and logged once per
//! burst (see `Shared::publish_failed`); it never reaches a session.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{IO_TIMEOUT, PUBLISH_BATCH, Shared};
use crate::bus::Envelope;
use crate::redis_conn::Connection;

/// Sends queued envelopes, a pipeline per batch, until the bus is dropped.
pub(super) async fn run(
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
            match envelope.encode() {
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
