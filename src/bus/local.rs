//! An in-process bus: every node that shares one [`LocalHub`] receives the
//! others' envelopes synchronously. A lone node gets its own hub and so
//! publishes to nobody. Envelopes for other nodes go through the same
//! bytes as on Redis (`wire`), once per publish, so in-process clusters
//! prove the wire format too.

use std::sync::Arc;

use parking_lot::RwLock;

use super::{Bus, Deliver, Envelope};

/// The meeting point of the nodes of one process.
#[derive(Default)]
pub struct LocalHub {
    nodes: RwLock<Vec<(String, Deliver)>>,
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

    fn publish(&self, envelope: Envelope) {
        let targets: Vec<Deliver> = self
            .hub
            .nodes
            .read()
            .iter()
            .filter(|(id, _)| *id != envelope.origin_node)
            .map(|(_, d)| d.clone())
            .collect();
        if targets.is_empty() {
            return;
        }
        let Some(envelope) = envelope.encode().ok().and_then(|b| Envelope::decode(&b)) else {
            tracing::error!(
                event = "bus_message_malformed",
                "an envelope did not survive its own encoding; not delivered"
            );
            return;
        };
        let envelope = Arc::new(envelope);
        for deliver in targets {
            deliver(envelope.clone());
        }
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
