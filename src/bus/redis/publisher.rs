//! The publisher task: drains the bus's bounded queue and sends what it
//! finds as one pipeline, so a burst of envelopes costs one round trip: an
//! event as the stream script (offset, history and `PUBLISH` in one call,
//! see `history.rs`), a control notice as a plain `PUBLISH`. A failed or slow pipeline is counted and logged once per
//! burst (see `Shared::publish_failed`); it never reaches a session.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PUBLISH_BATCH, Shared};
use crate::bus::{Envelope, Payload};
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
        if shared.cluster {
            publish_each(&shared, &conn, &mut batch).await;
            continue;
        }
        let mut pipe = redis::pipe();
        if batch
            .iter()
            .any(|e| matches!(e.payload, Payload::Event { .. }))
        {
            shared.streams.load_append(&mut pipe);
        }
        let mut queued = 0u64;
        for envelope in batch.drain(..) {
            match envelope.encode() {
                Ok(bytes) => {
                    let channel = shared.channel_for(&envelope.user_id);
                    if matches!(envelope.payload, Payload::Event { .. }) {
                        shared
                            .streams
                            .append_to(&mut pipe, &envelope.user_id, &channel, &bytes);
                    } else {
                        pipe.add_command(shared.streams.publish_cmd(&channel, &bytes))
                            .ignore();
                    }
                    queued += 1;
                }
                Err(e) => shared.publish_failed(1, &format!("envelope not serialisable: {e}")),
            }
        }
        if queued == 0 {
            continue;
        }
        match tokio::time::timeout(shared.io_timeout, pipe.exec_async(&mut conn)).await {
            Ok(Ok(())) => shared.publish_ok(),
            Ok(Err(e)) => shared.publish_failed(queued, &e),
            Err(_) => shared.publish_failed(queued, &"PUBLISH timed out"),
        }
    }
}

/// On a Redis Cluster: every envelope of `batch` as its own call (each goes
/// to the master of its user's slot), all in flight at once; a failed call
/// costs only its envelope.
async fn publish_each(shared: &Shared, conn: &Connection, batch: &mut Vec<Envelope>) {
    let calls = batch.drain(..).filter_map(|envelope| {
        let bytes = match envelope.encode() {
            Ok(bytes) => bytes,
            Err(e) => {
                shared.publish_failed(1, &format!("envelope not serialisable: {e}"));
                return None;
            }
        };
        let mut conn = conn.clone();
        Some(async move {
            let channel = shared.channel_for(&envelope.user_id);
            let call = async {
                if matches!(envelope.payload, Payload::Event { .. }) {
                    shared
                        .streams
                        .append_invocation(&envelope.user_id, &channel, &bytes)
                        .invoke_async::<redis::Value>(&mut conn)
                        .await
                        .map(drop)
                } else {
                    shared
                        .streams
                        .publish_cmd(&channel, &bytes)
                        .exec_async(&mut conn)
                        .await
                }
            };
            match tokio::time::timeout(shared.io_timeout, call).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    shared.publish_failed(1, &e);
                    false
                }
                Err(_) => {
                    shared.publish_failed(1, &"SPUBLISH timed out");
                    false
                }
            }
        })
    });
    let results = futures_util::future::join_all(calls).await;
    if !results.is_empty() && results.iter().all(|ok| *ok) {
        shared.publish_ok();
    }
}
