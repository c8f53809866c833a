//! What travels between nodes: the [`Envelope`], defined once, with its
//! encoding and decoding. Both buses use it — the Redis bus on the wire,
//! the in-process bus by a round trip through the same bytes — so a field
//! that does not survive the wire fails every multi-node test, not only
//! the ones against a real Redis.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What an envelope asks the receivers to do.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// A navigation event of `user_id`, for that user's sessions and watchers.
    Event { event: Box<RawValue> },
    /// `user_id` opened a session elsewhere under `multi_device = replace`:
    /// close every older local session of that user with 4002.
    Replace { session_id: String },
    /// `user_id` stopped sharing with `guardian_id`: drop that guardian's
    /// watch of `user_id` on every node.
    Unshare { guardian_id: String },
    /// A refresh-token family of `user_id` was revoked (a replayed token):
    /// close that user's sessions of the family with 4001 on every node.
    Revoke { family: String },
}

/// One message on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Flat")]
pub struct Envelope {
    pub origin_node: String,
    /// Increases by one per envelope this origin publishes; receivers count
    /// gaps per origin (broadcast topology).
    pub node_seq: u64,
    /// The per-(origin, user) event sequence that clients see as `seq`.
    pub seq: u64,
    /// The publisher's wall clock, for fan-out latency.
    pub sent_at_us: u64,
    pub user_id: String,
    /// v1.1, events only: the position in `user_id`'s stream, assigned by
    /// the bus when it records the event in the stream's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of that stream (see `docs/PROTOCOL.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Events only: the session that produced the event, on the origin node
    /// (which already answered it directly, so is not sent it again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub origin_session: u64,
    #[serde(flatten)]
    pub payload: Payload,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The flat shape `Envelope` serialises to, as read back. serde cannot
/// read a `RawValue` through `#[serde(flatten)]` (the flattened part is
/// buffered, and a buffer has no raw text), so decoding goes through this
/// shape and [`TryFrom`] — private, and checked against `Envelope`'s own
/// `Serialize` by the tests below.
#[derive(Deserialize)]
struct Flat {
    origin_node: String,
    node_seq: u64,
    seq: u64,
    sent_at_us: u64,
    user_id: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    origin_session: u64,
    kind: String,
    #[serde(default)]
    event: Option<Box<RawValue>>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    guardian_id: Option<String>,
    #[serde(default)]
    family: Option<String>,
}

impl TryFrom<Flat> for Envelope {
    type Error = String;

    fn try_from(flat: Flat) -> Result<Envelope, String> {
        let payload = match (
            flat.kind.as_str(),
            flat.event,
            flat.session_id,
            flat.guardian_id,
            flat.family,
        ) {
            ("event", Some(event), ..) => Payload::Event { event },
            ("replace", _, Some(session_id), ..) => Payload::Replace { session_id },
            ("unshare", _, _, Some(guardian_id), _) => Payload::Unshare { guardian_id },
            ("revoke", .., Some(family)) => Payload::Revoke { family },
            (kind, ..) => return Err(format!("envelope kind {kind:?} without its field")),
        };
        Ok(Envelope {
            origin_node: flat.origin_node,
            node_seq: flat.node_seq,
            seq: flat.seq,
            sent_at_us: flat.sent_at_us,
            user_id: flat.user_id,
            offset: flat.offset,
            epoch: flat.epoch,
            origin_session: flat.origin_session,
            payload,
        })
    }
}

impl Envelope {
    /// An envelope sent now, not yet placed in a stream.
    pub fn new(
        origin_node: &str,
        node_seq: u64,
        seq: u64,
        user_id: &str,
        payload: Payload,
    ) -> Envelope {
        Envelope {
            origin_node: origin_node.to_string(),
            node_seq,
            seq,
            sent_at_us: crate::clock::unix_us(),
            user_id: user_id.to_string(),
            offset: None,
            epoch: None,
            origin_session: 0,
            payload,
        }
    }

    /// The bytes on the wire (JSON).
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// Reads an envelope back; `None` for anything that is not one.
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(origin: &str) -> Envelope {
        Envelope {
            origin_node: origin.into(),
            node_seq: 7,
            seq: 3,
            sent_at_us: 42,
            user_id: "u1".into(),
            offset: None,
            epoch: None,
            origin_session: 0,
            payload: Payload::Event {
                event: RawValue::from_string(r#"{"type":"arrival","x":[1,2]}"#.into()).unwrap(),
            },
        }
    }

    #[test]
    fn events_survive_the_wire_byte_for_byte() {
        let sent = event("node-a");
        let got = Envelope::decode(&sent.encode().unwrap()).unwrap();
        assert_eq!(
            (
                got.origin_node.as_str(),
                got.node_seq,
                got.seq,
                got.sent_at_us,
                got.user_id.as_str()
            ),
            ("node-a", 7, 3, 42, "u1")
        );
        match got.payload {
            Payload::Event { event } => assert_eq!(event.get(), r#"{"type":"arrival","x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_positions_spliced_in_front_are_read() {
        // The Redis script writes `{"offset":N,"epoch":"E",` before the
        // rest of the envelope it was given.
        let json = String::from_utf8(event("node-a").encode().unwrap()).unwrap();
        let spliced = format!("{{\"offset\":12,\"epoch\":\"e1\",{}", &json[1..]);
        let got = Envelope::decode(spliced.as_bytes()).unwrap();
        assert_eq!((got.offset, got.epoch.as_deref()), (Some(12), Some("e1")));
        let with_session = Envelope {
            origin_session: 9,
            ..event("node-a")
        };
        let got = Envelope::decode(&with_session.encode().unwrap()).unwrap();
        assert_eq!(got.origin_session, 9);
    }

    #[test]
    fn replace_notices_survive_the_wire() {
        let replace = Envelope {
            payload: Payload::Replace {
                session_id: "s1".into(),
            },
            ..event("node-a")
        };
        let got = Envelope::decode(&replace.encode().unwrap()).unwrap();
        assert!(matches!(got.payload, Payload::Replace { session_id } if session_id == "s1"));
        let unshare = Envelope {
            payload: Payload::Unshare {
                guardian_id: "g1".into(),
            },
            ..event("node-a")
        };
        let got = Envelope::decode(&unshare.encode().unwrap()).unwrap();
        assert!(matches!(got.payload, Payload::Unshare { guardian_id } if guardian_id == "g1"));
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(Envelope::decode(b"{\"kind\":\"event\"}").is_none());
        let mut v: serde_json::Value =
            serde_json::from_slice(&event("a").encode().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("event");
        assert!(Envelope::decode(&serde_json::to_vec(&v).unwrap()).is_none());
        v["kind"] = "gossip".into();
        assert!(Envelope::decode(&serde_json::to_vec(&v).unwrap()).is_none());
        assert!(Envelope::decode(b"not json").is_none());
    }
}
