//! The event bus between nodes, and the rider streams it keeps.
//!
//! A navigation event is published on the bus, which places it in its
//! rider's stream (an offset and an epoch, and a copy in the stream's
//! history) and delivers it to **every** node, its origin included, in
//! offset order; so every session sees a stream's events in one order,
//! whichever node produced them. Control notices (`replace`, `unshare`,
//! `revoke`) are applied by their origin at once and delivered to the
//! other nodes only. `publish` never waits: a bus that cannot keep up
//! counts a failure and moves on, so a session is never blocked by the bus. [`local::LocalBus`] connects nodes
//! of one process (a single node, or tests); [`redis::RedisBus`] connects
//! nodes across processes through Redis pub/sub.

pub mod history;
pub mod local;
pub mod redis;
mod wire;

pub use history::Recovery;
pub use wire::{Envelope, Payload};

use std::sync::Arc;

use futures_util::future::BoxFuture;

/// Called by the bus for every envelope it delivers. Must not block.
pub type Deliver = Arc<dyn Fn(Arc<Envelope>) + Send + Sync>;

/// Answers whether this node still has a session of, or watching, a user.
/// A targeted bus asks it before it unsubscribes, so that an `interest`
/// racing a `disinterest` for the same user never leaves it unsubscribed.
pub type InterestCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub trait Bus: Send + Sync {
    /// Starts delivering envelopes to `deliver`.
    fn start(&self, node_id: &str, deliver: Deliver);
    /// Queues an envelope: an event for every node (this one included) once
    /// it has its place in the stream, a control notice for the others.
    /// Never waits.
    fn publish(&self, envelope: Envelope);
    /// Where `user`'s stream stands and, given the position a client last
    /// processed, the events it missed (see [`Recovery`]).
    fn recover(
        &self,
        user: &str,
        since: Option<(u64, String)>,
    ) -> BoxFuture<'static, Result<Recovery, String>>;
    /// This node now has (or no longer has) a session of or watching
    /// `user`; a targeted bus subscribes to that user's channel.
    fn interest(&self, user: &str);
    fn disinterest(&self, user: &str);
    /// Resolves once every `interest` call made before it has taken effect
    /// (the subscription is confirmed), or at once while the bus is down.
    /// A node awaits it before telling a client it is connected or
    /// watching, so the first event after that reply is not missed.
    fn settled(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
    /// Gives the bus the node's own view of who is interesting; see
    /// [`InterestCheck`]. Buses without per-user subscriptions ignore it.
    fn set_interest_check(&self, _check: InterestCheck) {}
    /// Whether the bus currently reaches the other nodes.
    fn is_connected(&self) -> bool;
    /// A short name for logs and `/stats`.
    fn kind(&self) -> &'static str;
}
