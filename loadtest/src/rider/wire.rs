//! Requests as the rider writes them and replies as far as it reads them.
//!
//! The wire types are the node's own (`navcast::protocol`); what is here is
//! the load client's envelope around them: the `request_id` it appends,
//! and the two-field head it dispatches most replies on.

use navcast::protocol::{ClientMessage, Reply};

/// A request as text, with its `request_id` appended (the wire type has
/// no field for it: the id belongs to the envelope, not the request).
pub(super) fn encode(msg: &ClientMessage, id: u64) -> String {
    let mut s = serde_json::to_string(msg).expect("client messages serialise");
    debug_assert!(s.ends_with('}'));
    s.pop();
    s.push_str(",\"request_id\":");
    s.push_str(&id.to_string());
    s.push('}');
    s
}

/// The two fields every frame is dispatched on. Most replies are
/// `navigation_update`s, of which a rider needs nothing more; reading only
/// these (the rest is skipped, not built) spares the full parse of the
/// flattened, internally tagged [`Reply`], the client's largest CPU cost
/// at saturation.
#[derive(serde::Deserialize)]
pub(super) struct Head<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    request_id: Option<&'a serde_json::value::RawValue>,
}

impl Head<'_> {
    /// The id as the rider sent it (a number; a string form is accepted).
    pub(super) fn id(&self) -> Option<u64> {
        let raw = self.request_id?.get();
        raw.trim_matches('"').parse().ok()
    }
}

/// The `request_id` of a fully parsed reply, as the rider sent it.
pub(super) fn request_id(reply: &Reply) -> Option<u64> {
    reply.request_id.as_ref()?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use navcast::protocol::RequestId;

    #[test]
    fn heads_read_type_and_request_id_only() {
        let h: Head = serde_json::from_str(
            r#"{"type":"navigation_update","progress":{"a":[1,2]},"request_id":42}"#,
        )
        .unwrap();
        assert_eq!(h.kind, "navigation_update");
        assert_eq!(h.id(), Some(42));
        let h: Head = serde_json::from_str(r#"{"request_id":"7","type":"arrival"}"#).unwrap();
        assert_eq!((h.kind.as_ref(), h.id()), ("arrival", Some(7)));
        let h: Head = serde_json::from_str(r#"{"type":"peer_event","seq":3}"#).unwrap();
        assert_eq!(h.id(), None);
        assert!(serde_json::from_str::<Head>(r#"{"request_id":1}"#).is_err());
    }

    #[test]
    fn request_ids_are_appended() {
        let s = encode(&ClientMessage::Ping {}, 7);
        assert_eq!(s, r#"{"type":"ping","request_id":7}"#);
        let (msg, id) = navcast::protocol::parse_request(&s).unwrap();
        assert_eq!(msg, ClientMessage::Ping {});
        assert_eq!(id, Some(RequestId::from(7u64)));
    }
}
