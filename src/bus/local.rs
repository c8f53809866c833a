//! An in-process bus: every node that shares one [`LocalHub`] receives the
//! envelopes synchronously, and the hub keeps the rider streams in memory.
//! A lone node gets its own hub. Envelopes go through the same bytes as on
//! Redis (`wire`), once per publish, so in-process clusters prove the wire
//! format too.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};

use super::history::MemoryHistory;
use super::{Bus, Deliver, Envelope, Payload, Recovery};
use crate::config::HistoryConfig;

/// The meeting point of the nodes of one process, and their streams.
pub struct LocalHub {
    nodes: RwLock<Vec<(String, Deliver)>>,
    history: MemoryHistory,
    /// Held while an event is placed in its stream and delivered, so every
    /// node sees a stream's events in offset order.
    order: Mutex<()>,
}

impl LocalHub {
    pub fn new(history: HistoryConfig) -> LocalHub {
        LocalHub {
            nodes: RwLock::new(Vec::new()),
            history: MemoryHistory::new(history),
            order: Mutex::new(()),
        }
    }

    /// Streams held now (for tests of the bound).
    pub fn streams(&self) -> usize {
        self.history.streams()
    }
}

impl Default for LocalHub {
    fn default() -> Self {
        LocalHub::new(HistoryConfig::default())
    }
}

#[derive(Clone)]
pub struct LocalBus {
    hub: Arc<LocalHub>,
}

impl LocalBus {
    /// A bus of its own: a single node.
    pub fn new() -> LocalBus {
        LocalBus::on(Arc::new(LocalHub::default()))
    }

    /// A bus of its own with this history.
    pub fn with_history(history: HistoryConfig) -> LocalBus {
        LocalBus::on(Arc::new(LocalHub::new(history)))
    }

    /// A bus shared with every other node built on the same hub.
    pub fn on(hub: Arc<LocalHub>) -> LocalBus {
        LocalBus { hub }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new()
    }
}

impl Bus for LocalBus {
    fn start(&self, node_id: &str, deliver: Deliver) {
        self.hub.nodes.write().push((node_id.to_string(), deliver));
    }

    fn publish(&self, mut envelope: Envelope) {
        let is_event = matches!(envelope.payload, Payload::Event { .. });
        let _order = is_event.then(|| self.hub.order.lock());
        if is_event {
            self.hub.history.append(&mut envelope);
        }
        let targets: Vec<Deliver> = self
            .hub
            .nodes
            .read()
            .iter()
            .filter(|(id, _)| is_event || *id != envelope.origin_node)
            .map(|(_, d)| d.clone())
            .collect();
        if targets.is_empty() {
            return;
        }
        let Some(envelope) = envelope.encode().ok().and_then(|b| Envelope::decode(&b)) else {
            tracing::error!(
                event = "bus_message_malformed",
                cause = "an envelope did not survive its own encoding",
                "not delivered"
            );
            return;
        };
        let envelope = Arc::new(envelope);
        for deliver in targets {
            deliver(envelope.clone());
        }
    }

    fn recover(
        &self,
        user: &str,
        since: Option<(u64, String)>,
    ) -> BoxFuture<'static, Result<Recovery, String>> {
        let r = self
            .hub
            .history
            .recover(user, since.as_ref().map(|(o, e)| (*o, e.as_str())));
        Box::pin(std::future::ready(Ok(r)))
    }

    fn interest(&self, _user: &str) {}

    fn disinterest(&self, _user: &str) {}

    fn is_connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}
