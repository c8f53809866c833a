//! Fan-out: every navigation event to every session that should see it,
//! on this node and, through the bus, on every other.
//!
//! One owner for everything about an event after its session produced it:
//! numbering (`node_seq` per node, `seq` per rider), publishing, local
//! delivery, remote delivery with gap counting, the multi-device `replace`
//! notice, and dropping a revoked guardian's watch. It needs only the
//! session registry, the bus and the metrics, so it is built and tested
//! without a node around it. The `peer_event` frame is built in exactly one
//! place, [`peer_frame`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use serde_json::value::RawValue;

use crate::bus::{Bus, Envelope, Payload, Recovery};
use crate::clock::unix_us;
use crate::config::BusTopology;
use crate::metrics::Metrics;
use crate::protocol::{OutKind, PeerEventFrame, ServerMessage, close};
use crate::session::{SessionHandle, Sessions};

/// The longest a session waits for the bus to confirm a subscription.
const INTEREST_SETTLE_MAX: Duration = Duration::from_secs(2);

pub struct Fanout {
    /// This node's id: the `origin_node` of what it publishes.
    node_id: Arc<str>,
    /// Decides how gaps are counted (see [`Fanout::deliver`]).
    topology: BusTopology,
    /// Where local targets are found.
    sessions: Arc<Sessions>,
    /// The way to the other nodes.
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    /// Sequence of envelopes this node published.
    node_seq: AtomicU64,
    /// Held while an envelope is numbered and handed to the bus (both
    /// non-blocking), so envelopes leave in `node_seq`/`seq` order;
    /// otherwise receivers would count a reordering as a gap.
    publish_order: parking_lot::Mutex<()>,
    /// Last `node_seq` seen per origin node, for gap counting (topology
    /// `broadcast`, where every node sees every envelope).
    last_seen: DashMap<String, u64>,
    /// Last `seq` seen per user and origin node, for gap counting (topology
    /// `targeted`, where a node sees only the users it is interested in).
    /// Forgotten when the node loses interest in the user, so a later
    /// subscription does not count the events it was not subscribed for.
    last_user_seq: DashMap<String, Vec<(String, u64)>>,
}

/// The `peer_event` frame of an event envelope, serialised once for all
/// targets; `None` for an envelope that is not an event.
fn peer_frame(envelope: &Envelope) -> Option<Utf8Bytes> {
    let Payload::Event { event } = &envelope.payload else {
        return None;
    };
    let frame = PeerEventFrame {
        kind: "peer_event",
        user_id: &envelope.user_id,
        event,
        origin_node: &envelope.origin_node,
        seq: envelope.seq,
        sent_at_us: envelope.sent_at_us,
        offset: envelope.offset,
        epoch: envelope.epoch.as_deref(),
    };
    serde_json::to_string(&frame).ok().map(Utf8Bytes::from)
}

impl Fanout {
    pub(crate) fn new(
        node_id: Arc<str>,
        topology: BusTopology,
        sessions: Arc<Sessions>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Fanout {
        Fanout {
            node_id,
            topology,
            sessions,
            bus,
            metrics,
            node_seq: AtomicU64::new(0),
            publish_order: parking_lot::Mutex::new(()),
            last_seen: DashMap::new(),
            last_user_seq: DashMap::new(),
        }
    }

    fn next_node_seq(&self) -> u64 {
        self.node_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Fans a navigation event of `user` out. The bus places it in the
    /// user's stream and brings it back to every node, this one included,
    /// in stream order; [`Fanout::deliver`] then hands it to the user's
    /// other sessions (all but `origin_key`, which had the direct reply)
    /// and to the watchers.
    pub(crate) fn publish(&self, user: &str, origin_key: u64, event_json: &str) {
        let Ok(raw) = RawValue::from_string(event_json.to_string()) else {
            return;
        };
        {
            let _order = self.publish_order.lock();
            let seq = self.sessions.next_seq(user);
            let mut envelope = Envelope::new(
                &self.node_id,
                self.next_node_seq(),
                seq,
                user,
                Payload::Event { event: raw },
            );
            envelope.origin_session = origin_key;
            self.bus.publish(envelope);
        }
        self.metrics.bus_published.inc();
    }

    /// Queues `frame` (an event of `stream`) to each target that has not
    /// had it.
    fn deliver_event(&self, targets: &[SessionHandle], envelope: &Envelope, frame: Utf8Bytes) {
        let epoch: Option<Arc<str>> = envelope.epoch.as_deref().map(Arc::from);
        let position = envelope.offset.zip(epoch.as_ref());
        for target in targets {
            if target.deliver_event(&envelope.user_id, position, frame.clone(), &self.metrics) {
                self.metrics.peer_events_delivered.inc();
                self.metrics.message_out(OutKind::PeerEvent);
            }
        }
    }

    /// The missed events of a recovery as `(offset, peer_event frame)`.
    pub(crate) fn replay_frames(&self, recovery: &Recovery) -> Vec<(u64, Utf8Bytes)> {
        recovery
            .events
            .iter()
            .filter_map(|e| Some((e.offset?, peer_frame(e)?)))
            .collect()
    }

    /// Counts what `release_stream` queued as delivered peer events.
    pub(crate) fn count_replayed(&self, n: usize) {
        self.metrics.peer_events_delivered.inc_by(n as u64);
        for _ in 0..n {
            self.metrics.message_out(OutKind::PeerEvent);
        }
    }

    /// An envelope from the bus. Events come back to their origin node too
    /// (that is where its local sessions get them, in stream order); other
    /// notices of our own were applied when they were sent and are skipped.
    pub fn deliver(&self, envelope: &Envelope) {
        let own = *envelope.origin_node == *self.node_id;
        let is_event = matches!(envelope.payload, Payload::Event { .. });
        if own && !is_event {
            return;
        }
        if !own {
            self.metrics.bus_received.inc();
            match self.topology {
                BusTopology::Broadcast => self.count_gap(&envelope.origin_node, envelope.node_seq),
                BusTopology::Targeted => {
                    self.count_user_gap(&envelope.origin_node, &envelope.user_id, envelope.seq)
                }
            }
        }
        match &envelope.payload {
            Payload::Event { .. } => {
                let skip = own.then_some(envelope.origin_session);
                let mut targets = self.sessions.of_user(&envelope.user_id, skip);
                targets.extend(self.sessions.watchers_of(&envelope.user_id));
                if !targets.is_empty()
                    && let Some(frame) = peer_frame(envelope)
                {
                    self.deliver_event(&targets, envelope, frame);
                }
            }
            Payload::Unshare { guardian_id } => self.revoke_watch(&envelope.user_id, guardian_id),
            Payload::Revoke { family } => self.close_family(&envelope.user_id, family),
            Payload::Replace { session_id } => {
                // `sent_at_us` is when the newer session opened: a local
                // session opened after it is newer still and stays, even
                // when this notice was slow to arrive.
                for old in self.sessions.of_user(&envelope.user_id, None) {
                    if *old.session_id != **session_id && old.opened_at_us < envelope.sent_at_us {
                        self.kick_replaced(&old);
                    }
                }
            }
        }
    }

    fn count_gap(&self, origin: &str, node_seq: u64) {
        let mut last = self.last_seen.entry(origin.to_string()).or_insert(0);
        if *last != 0 && node_seq > *last + 1 {
            let missing = node_seq - *last - 1;
            *last = node_seq;
            drop(last);
            self.gap(origin, None, missing);
            return;
        }
        if node_seq > *last {
            *last = node_seq;
        }
    }

    /// Gap counting by the per-(origin, user) `seq`. A `seq` of 0 is not
    /// counted (envelopes that are not events). A `seq` at or below the last
    /// one seen is a new stream (the user's sessions on that node closed
    /// and reopened, which restarts it at 1): it becomes the new baseline.
    fn count_user_gap(&self, origin: &str, user: &str, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut origins = self.last_user_seq.entry(user.to_string()).or_default();
        match origins.iter_mut().find(|(o, _)| o == origin) {
            Some((_, last)) => {
                if seq > *last + 1 {
                    let missing = seq - *last - 1;
                    *last = seq;
                    drop(origins);
                    self.gap(origin, Some(user), missing);
                } else {
                    *last = seq;
                }
            }
            None => origins.push((origin.to_string(), seq)),
        }
    }

    fn gap(&self, origin: &str, user: Option<&str>, missing: u64) {
        self.metrics.bus_gaps.inc_by(missing);
        tracing::warn!(
            event = "bus_gap",
            origin_node = %origin,
            user_id = user.unwrap_or(""),
            missing,
            cause = "the origin's per-user seq skipped numbers",
            "envelopes missing from an origin"
        );
    }

    /// A local session of or watching `user` now exists: the bus must
    /// carry `user`'s events here. Paired with [`Fanout::release_interest`].
    pub(crate) fn take_interest(&self, user: &str) {
        self.bus.interest(user);
    }

    /// A session of or watching `user` went away: if it was the last local
    /// one, the bus may stop listening for `user`.
    pub fn release_interest(&self, user: &str) {
        if !self.sessions.has_interest(user) {
            self.last_user_seq.remove(user);
            self.bus.disinterest(user);
        }
    }

    /// Waits (briefly) until the bus listens for every user this node
    /// declared interest in, so a reply like `connected` or `watching` is
    /// not followed by a missed event. Never waits long: a slow Redis must
    /// not stall a session.
    pub(crate) async fn interest_settled(&self) {
        let _ = tokio::time::timeout(INTEREST_SETTLE_MAX, self.bus.settled()).await;
    }

    fn kick_replaced(&self, old: &SessionHandle) {
        let frame = serde_json::to_string(&ServerMessage::Disconnected {
            code: "DUPLICATE_CONNECTION".into(),
        })
        .unwrap_or_default();
        let _ = old.send_text(frame.into(), &self.metrics);
        tracing::info!(event = "session_replaced", old_session_id = %old.session_id, "closing older session (4002)");
        old.signal
            .close(close::REPLACED, "replaced by a newer session");
    }

    /// `multi_device = replace`: close this user's older sessions here and
    /// on every other node.
    pub(crate) fn replace_older_sessions(&self, new: &SessionHandle) {
        for old in self.sessions.of_user(&new.user_id, Some(new.key)) {
            self.kick_replaced(&old);
        }
        let _order = self.publish_order.lock();
        let mut envelope = Envelope::new(
            &self.node_id,
            self.next_node_seq(),
            0,
            &new.user_id,
            Payload::Replace {
                session_id: new.session_id.to_string(),
            },
        );
        envelope.sent_at_us = new.opened_at_us;
        self.bus.publish(envelope);
    }

    /// The rider stopped sharing with `guardian`: drop that guardian's
    /// watch of the rider here now, and on every other node through the bus.
    /// The notice leaves on the bus before any later event of this rider
    /// from this node, and receivers apply envelopes in order, so no event
    /// the rider's session sends after the `unshared` reply reaches that
    /// guardian anywhere.
    pub(crate) fn unshare(&self, rider: &str, guardian: &str) {
        self.revoke_watch(rider, guardian);
        let _order = self.publish_order.lock();
        let mut envelope = Envelope::new(
            &self.node_id,
            self.next_node_seq(),
            0,
            rider,
            Payload::Unshare {
                guardian_id: guardian.to_string(),
            },
        );
        envelope.sent_at_us = unix_us();
        self.bus.publish(envelope);
    }

    /// A refresh-token family of `user` was revoked: close its sessions
    /// here now, and on every other node through the bus.
    pub(crate) fn revoke_family(&self, user: &str, family: &str) {
        self.close_family(user, family);
        let _order = self.publish_order.lock();
        let mut envelope = Envelope::new(
            &self.node_id,
            self.next_node_seq(),
            0,
            user,
            Payload::Revoke {
                family: family.to_string(),
            },
        );
        envelope.sent_at_us = unix_us();
        self.bus.publish(envelope);
    }

    /// Closes `user`'s local sessions of `family` with 4001.
    fn close_family(&self, user: &str, family: &str) {
        for session in self.sessions.of_user(user, None) {
            if session.family().as_deref() == Some(family) {
                tracing::warn!(
                    event = "session_revoked",
                    session_id = %session.session_id,
                    user_id = %user,
                    cause = "refresh token family revoked (a spent token was replayed)",
                    "closing with 4001"
                );
                session
                    .signal
                    .close(crate::protocol::close::TOKEN_EXPIRED, "token revoked");
            }
        }
    }

    /// Drops `guardian`'s local watch subscriptions on `rider`.
    fn revoke_watch(&self, rider: &str, guardian: &str) {
        for watcher in self.sessions.watchers_of(rider) {
            if *watcher.user_id == *guardian {
                self.sessions.unwatch(rider, watcher.key);
            }
        }
        self.release_interest(rider);
    }
}

impl crate::auth::http::Revocations for Fanout {
    fn family_revoked(&self, user_id: &str, family: &str) {
        self.revoke_family(user_id, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::local::LocalBus;

    fn envelope(origin: &str, node_seq: u64, user: &str, seq: u64) -> Envelope {
        Envelope::new(
            origin,
            node_seq,
            seq,
            user,
            Payload::Event {
                event: RawValue::from_string(r#"{"type":"arrival"}"#.into()).unwrap(),
            },
        )
    }

    /// A fan-out on a bus of its own, started, so its events come back.
    fn fanout(topology: BusTopology) -> Arc<Fanout> {
        let bus = Arc::new(LocalBus::new());
        let f = Arc::new(Fanout::new(
            "self".into(),
            topology,
            Arc::new(Sessions::default()),
            bus.clone(),
            Arc::new(Metrics::new()),
        ));
        let weak = Arc::downgrade(&f);
        bus.start(
            "self",
            Arc::new(move |e| {
                if let Some(f) = weak.upgrade() {
                    f.deliver(&e);
                }
            }),
        );
        f
    }

    #[test]
    fn broadcast_counts_gaps_per_origin_by_node_seq() {
        let f = fanout(BusTopology::Broadcast);
        for n in [1, 2, 5, 6] {
            f.deliver(&envelope("x", n, "u", 0));
        }
        f.deliver(&envelope("y", 10, "u", 0));
        f.deliver(&envelope("y", 12, "v", 0));
        assert_eq!(f.metrics.bus_gaps.get(), 3);
        assert_eq!(f.metrics.bus_received.get(), 6);
        // Our own envelopes are neither delivered nor counted.
        f.deliver(&envelope("self", 99, "u", 0));
        assert_eq!(f.metrics.bus_received.get(), 6);
    }

    #[test]
    fn targeted_counts_gaps_per_origin_and_user_by_seq() {
        let f = fanout(BusTopology::Targeted);
        // node_seq jumps are expected in targeted (other users' envelopes
        // go elsewhere) and are not gaps.
        f.deliver(&envelope("x", 1, "u", 1));
        f.deliver(&envelope("x", 7, "u", 2));
        f.deliver(&envelope("x", 9, "u", 5));
        assert_eq!(f.metrics.bus_gaps.get(), 2);
        // Another user of the same origin is another stream.
        f.deliver(&envelope("x", 10, "v", 3));
        f.deliver(&envelope("x", 11, "v", 4));
        assert_eq!(f.metrics.bus_gaps.get(), 2);
        // seq 0 (replace notices) is not counted; a restart at 1 is no gap.
        f.deliver(&envelope("x", 12, "u", 0));
        f.deliver(&envelope("x", 13, "u", 1));
        f.deliver(&envelope("x", 14, "u", 2));
        assert_eq!(f.metrics.bus_gaps.get(), 2);
        // After the node loses interest in a user, a later subscription
        // starts a new baseline instead of counting what it never heard.
        f.release_interest("u");
        f.deliver(&envelope("x", 40, "u", 30));
        assert_eq!(f.metrics.bus_gaps.get(), 2);
        f.deliver(&envelope("x", 41, "u", 32));
        assert_eq!(f.metrics.bus_gaps.get(), 3);
    }

    #[tokio::test]
    async fn events_reach_other_sessions_and_watchers_but_not_the_origin() {
        let f = fanout(BusTopology::Broadcast);
        let (origin, mut origin_rx) =
            f.sessions
                .open("s1".into(), "rider".into(), 8, 1 << 20, None);
        let (_other, mut other_rx) = f
            .sessions
            .open("s2".into(), "rider".into(), 8, 1 << 20, None);
        let (guardian, mut guardian_rx) =
            f.sessions
                .open("s3".into(), "guardian".into(), 8, 1 << 20, None);
        f.sessions.watch("rider".into(), guardian.key);
        f.publish("rider", origin.key, r#"{"type":"arrival"}"#);
        f.publish("rider", origin.key, r#"{"type":"navigation_ended"}"#);
        for rx in [&mut other_rx, &mut guardian_rx] {
            for (seq, kind) in [(1, "arrival"), (2, "navigation_ended")] {
                let axum::extract::ws::Message::Text(text) = rx.try_recv().unwrap() else {
                    panic!("not text")
                };
                let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(v["type"], "peer_event");
                assert_eq!(v["user_id"], "rider");
                assert_eq!(v["origin_node"], "self");
                assert_eq!(v["seq"], seq);
                assert_eq!(v["event"]["type"], kind);
            }
        }
        assert!(origin_rx.try_recv().is_none());
        assert_eq!(f.metrics.peer_events_delivered.get(), 4);
        assert_eq!(f.metrics.bus_published.get(), 2);
    }
}
