//! The wire contract of `docs/PROTOCOL.md` as Rust types.
//!
//! These types exist once: the node serialises them and the load client
//! (`loadtest/`) deserialises them, so the two cannot drift apart. Client
//! requests are parsed in two steps (see [`parse_request`]) so that a frame
//! with a known `request_id` but bad fields still gets an error that echoes
//! that id, and an unknown `type` is told apart from a malformed one.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::transit::DisabilityType;

/// The longest `request_id` the node accepts, in bytes of its JSON text
/// (a number's digits, a string's content). Every reply echoes it, so it
/// must be small; a longer one is refused with `INVALID_PARAMETERS`.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The request id a client attached to a request; echoed verbatim in the
/// reply. A number is kept as the client wrote it (its JSON text), so
/// `123456789012345678901234567890` comes back as those digits, not as a
/// rounded float.
#[derive(Debug, Clone)]
pub enum RequestId {
    Num(Box<RawValue>),
    Str(String),
}

impl RequestId {
    /// The id as an unsigned integer, if it is one (a number or digits).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            RequestId::Num(n) => n.get().parse().ok(),
            RequestId::Str(s) => s.parse().ok(),
        }
    }

    /// Reads the id the client wrote: a string or a number, else `None`.
    fn from_raw(raw: &RawValue) -> Option<RequestId> {
        let text = raw.get();
        match text.as_bytes().first()? {
            b'"' => serde_json::from_str(text).ok().map(RequestId::Str),
            b'-' | b'0'..=b'9' => Some(RequestId::Num(raw.to_owned())),
            _ => None,
        }
    }

    /// Bytes that count against [`MAX_REQUEST_ID_BYTES`].
    fn len(&self) -> usize {
        match self {
            RequestId::Num(n) => n.get().len(),
            RequestId::Str(s) => s.len(),
        }
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> RequestId {
        RequestId::Num(RawValue::from_string(n.to_string()).expect("digits are JSON"))
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> RequestId {
        RequestId::Num(RawValue::from_string(n.to_string()).expect("digits are JSON"))
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &RequestId) -> bool {
        match (self, other) {
            (RequestId::Num(a), RequestId::Num(b)) => a.get() == b.get(),
            (RequestId::Str(a), RequestId::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Num(n) => n.serialize(s),
            RequestId::Str(v) => s.serialize_str(v),
        }
    }
}

/// For clients reading replies (`Reply` is flattened, so the id arrives
/// buffered, without its raw text): numbers beyond `u64`/`i64` are read as
/// `f64`. The node itself reads ids from the frame text ([`parse_request`]).
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RequestId, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RequestId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestId, E> {
                Ok(RequestId::Str(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequestId, E> {
                Ok(RequestId::from(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RequestId, E> {
                Ok(RequestId::from(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RequestId, E> {
                let n = serde_json::Number::from_f64(v)
                    .ok_or_else(|| E::custom("request_id is not a finite number"))?;
                RawValue::from_string(n.to_string())
                    .map(RequestId::Num)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Every request type a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    StartNavigation {
        origin: String,
        destination: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disability_type: Option<DisabilityType>,
    },
    LocationUpdate {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route_id: Option<String>,
    },
    SwitchRoute {
        target_rank: u8,
    },
    RecalculateRoute {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disability_type: Option<DisabilityType>,
    },
    EndNavigation {},
    ShareNavigation {
        guardian_id: String,
    },
    UnshareNavigation {
        guardian_id: String,
    },
    Watch {
        user_id: String,
        /// v1.1: recover the rider's events after this position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    Unwatch {
        user_id: String,
    },
    RefreshToken {
        token: String,
    },
    /// v1.1: the session's own user's navigation snapshot and stream
    /// position, recovering the stream's events after `since` (those of
    /// the user's other devices) when given.
    Resume {
        user_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    Ping {},
}

/// A position in a rider's event stream (v1.1): the last `offset` a client
/// processed, under the stream's `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// Longest `since.epoch` accepted (ours are 32 hex digits).
pub const MAX_EPOCH_BYTES: usize = 64;

/// Where a rider's stream stands, and what a recovery found (v1.1), as
/// flattened into `watching` and `resumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub offset: u64,
    pub epoch: String,
    /// Present when the request had `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

/// The request kinds, used as metric labels and to count messages by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    StartNavigation,
    LocationUpdate,
    SwitchRoute,
    RecalculateRoute,
    EndNavigation,
    ShareNavigation,
    UnshareNavigation,
    Watch,
    Unwatch,
    RefreshToken,
    Resume,
    Ping,
    /// A frame that could not be classified (bad JSON, unknown type, binary).
    Invalid,
}

impl RequestKind {
    pub const ALL: [RequestKind; 13] = [
        RequestKind::StartNavigation,
        RequestKind::LocationUpdate,
        RequestKind::SwitchRoute,
        RequestKind::RecalculateRoute,
        RequestKind::EndNavigation,
        RequestKind::ShareNavigation,
        RequestKind::UnshareNavigation,
        RequestKind::Watch,
        RequestKind::Unwatch,
        RequestKind::RefreshToken,
        RequestKind::Resume,
        RequestKind::Ping,
        RequestKind::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::StartNavigation => "start_navigation",
            RequestKind::LocationUpdate => "location_update",
            RequestKind::SwitchRoute => "switch_route",
            RequestKind::RecalculateRoute => "recalculate_route",
            RequestKind::EndNavigation => "end_navigation",
            RequestKind::ShareNavigation => "share_navigation",
            RequestKind::UnshareNavigation => "unshare_navigation",
            RequestKind::Watch => "watch",
            RequestKind::Unwatch => "unwatch",
            RequestKind::RefreshToken => "refresh_token",
            RequestKind::Resume => "resume",
            RequestKind::Ping => "ping",
            RequestKind::Invalid => "invalid",
        }
    }

    fn from_type(t: &str) -> Option<Self> {
        RequestKind::ALL
            .into_iter()
            .find(|k| *k != RequestKind::Invalid && k.as_str() == t)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl ClientMessage {
    pub fn kind(&self) -> RequestKind {
        match self {
            ClientMessage::StartNavigation { .. } => RequestKind::StartNavigation,
            ClientMessage::LocationUpdate { .. } => RequestKind::LocationUpdate,
            ClientMessage::SwitchRoute { .. } => RequestKind::SwitchRoute,
            ClientMessage::RecalculateRoute { .. } => RequestKind::RecalculateRoute,
            ClientMessage::EndNavigation {} => RequestKind::EndNavigation,
            ClientMessage::ShareNavigation { .. } => RequestKind::ShareNavigation,
            ClientMessage::UnshareNavigation { .. } => RequestKind::UnshareNavigation,
            ClientMessage::Watch { .. } => RequestKind::Watch,
            ClientMessage::Unwatch { .. } => RequestKind::Unwatch,
            ClientMessage::RefreshToken { .. } => RequestKind::RefreshToken,
            ClientMessage::Resume { .. } => RequestKind::Resume,
            ClientMessage::Ping {} => RequestKind::Ping,
        }
    }
}

/// The error codes of the contract. Each protocol failure maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ParsingError,
    UnknownMessageType,
    InvalidParameters,
    InvalidLocation,
    StationNotFound,
    RouteNotFound,
    NoActiveSession,
    RouteIdMismatch,
    InvalidRouteRank,
    Forbidden,
    RateLimited,
    /// The shared store came back without the rider's navigation state.
    StateLost,
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::ParsingError,
        ErrorCode::UnknownMessageType,
        ErrorCode::InvalidParameters,
        ErrorCode::InvalidLocation,
        ErrorCode::StationNotFound,
        ErrorCode::RouteNotFound,
        ErrorCode::NoActiveSession,
        ErrorCode::RouteIdMismatch,
        ErrorCode::InvalidRouteRank,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::StateLost,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ParsingError => "PARSING_ERROR",
            ErrorCode::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            ErrorCode::InvalidParameters => "INVALID_PARAMETERS",
            ErrorCode::InvalidLocation => "INVALID_LOCATION",
            ErrorCode::StationNotFound => "STATION_NOT_FOUND",
            ErrorCode::RouteNotFound => "ROUTE_NOT_FOUND",
            ErrorCode::NoActiveSession => "NO_ACTIVE_SESSION",
            ErrorCode::RouteIdMismatch => "ROUTE_ID_MISMATCH",
            ErrorCode::InvalidRouteRank => "INVALID_ROUTE_RANK",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::StateLost => "STATE_LOST",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request got an `error` reply instead of its answer. Made by
/// navigation and by the session's other requests (share, watch, refresh).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A documented error code and a message safe to show the client.
    #[error("{code}: {1}", code = .0.as_str())]
    Client(ErrorCode, String),
    /// Logged, answered with `INTERNAL_ERROR`.
    #[error("internal: {0}")]
    Internal(String),
}

impl RequestError {
    pub(crate) fn client(code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError::Client(code, message.into())
    }

    pub(crate) fn store(e: crate::store::StoreError) -> RequestError {
        RequestError::Internal(format!("state store: {e}"))
    }
}

/// WebSocket close codes of the contract.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// RFC 6455: a text frame that is not UTF-8 must fail the connection.
    /// Never sent: how the node counts a connection that vanished without
    /// a close frame (RFC 6455 reserves 1006 for exactly that).
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const REPLACED: u16 = 4002;
    pub const TOO_SLOW: u16 = 4008;

    /// Every close code a node sends or counts (1006), in order.
    pub const ALL: [u16; 10] = [
        NORMAL,
        GOING_AWAY,
        ABNORMAL,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        INTERNAL,
        TOKEN_EXPIRED,
        REPLACED,
        TOO_SLOW,
    ];
}

/// A station as the wire names it: enough to show and to look it up again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationRef {
    pub code: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

/// One stop of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStation {
    pub code: String,
    pub name: String,
    pub line: String,
    pub lat: f64,
    pub lon: f64,
}

/// One ranked route of a `route_calculated` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub rank: u8,
    pub stations: Vec<RouteStation>,
    pub lines: Vec<String>,
    pub total_time_min: f64,
    pub transfers: u32,
    pub transfer_stations: Vec<String>,
    pub distance_m: f64,
    pub score: f64,
}

/// The body shared by `route_calculated` and `route_recalculated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub route_id: String,
    pub origin: StationRef,
    pub destination: StationRef,
    pub disability_type: DisabilityType,
    pub routes: Vec<RouteView>,
    pub selected_route_rank: u8,
}

/// A short summary of a rider's active route, for a guardian who starts watching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSummary {
    pub route_id: String,
    pub origin: StationRef,
    pub destination: StationRef,
    pub disability_type: DisabilityType,
    pub selected_route_rank: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NavigationUpdate {
    pub route_id: String,
    pub current_station: StationRef,
    pub next_station: Option<StationRef>,
    pub distance_to_next_m: f64,
    pub remaining_stations: u32,
    pub remaining_distance_m: f64,
    pub eta_s: f64,
    pub is_transfer: bool,
    pub transfer_from_line: Option<String>,
    pub transfer_to_line: Option<String>,
    pub progress_percent: f64,
    pub message: String,
}

/// Every frame the server sends, except `peer_event` (see [`PeerEventFrame`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Connected {
        user_id: String,
        session_id: String,
        node_id: String,
        server_version: String,
        heartbeat_interval_s: u64,
        token_expires_at: i64,
    },
    RouteCalculated(RoutePlan),
    NavigationUpdate(NavigationUpdate),
    RouteDeviation {
        route_id: String,
        nearest_station: StationRef,
        distance_from_route_m: f64,
        suggested_action: String,
    },
    Arrival {
        route_id: String,
        destination: StationRef,
    },
    RouteSwitched {
        route_id: String,
        selected_route_rank: u8,
        route: RouteView,
    },
    RouteRecalculated(RoutePlan),
    NavigationEnded {
        route_id: String,
    },
    Shared {
        guardian_id: String,
    },
    Unshared {
        guardian_id: String,
    },
    Watching {
        user_id: String,
        active_route: Option<RouteSummary>,
        #[serde(flatten)]
        stream: StreamState,
    },
    Resumed {
        user_id: String,
        active_route: Option<RouteSummary>,
        #[serde(flatten)]
        stream: StreamState,
    },
    Unwatched {
        user_id: String,
    },
    TokenRefreshed {
        token_expires_at: i64,
    },
    Pong {
        server_time: i64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    TokenExpiring {
        expires_at: i64,
    },
    Disconnected {
        code: String,
    },
    /// Only for deserialisation on the client side; the node writes peer
    /// events with [`PeerEventFrame`] so the event is serialised only once.
    PeerEvent {
        user_id: String,
        event: Box<ServerMessage>,
        origin_node: String,
        seq: u64,
        sent_at_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
}

impl ServerMessage {
    /// Navigation events are the ones fanned out to the rider's other
    /// sessions and guardians.
    pub fn is_navigation_event(&self) -> bool {
        matches!(
            self,
            ServerMessage::RouteCalculated(_)
                | ServerMessage::NavigationUpdate(_)
                | ServerMessage::RouteDeviation { .. }
                | ServerMessage::Arrival { .. }
                | ServerMessage::RouteSwitched { .. }
                | ServerMessage::RouteRecalculated(_)
                | ServerMessage::NavigationEnded { .. }
        )
    }

    /// The `type` this frame has on the wire.
    pub fn kind(&self) -> OutKind {
        match self {
            ServerMessage::Connected { .. } => OutKind::Connected,
            ServerMessage::RouteCalculated(_) => OutKind::RouteCalculated,
            ServerMessage::NavigationUpdate(_) => OutKind::NavigationUpdate,
            ServerMessage::RouteDeviation { .. } => OutKind::RouteDeviation,
            ServerMessage::Arrival { .. } => OutKind::Arrival,
            ServerMessage::RouteSwitched { .. } => OutKind::RouteSwitched,
            ServerMessage::RouteRecalculated(_) => OutKind::RouteRecalculated,
            ServerMessage::NavigationEnded { .. } => OutKind::NavigationEnded,
            ServerMessage::Shared { .. } => OutKind::Shared,
            ServerMessage::Unshared { .. } => OutKind::Unshared,
            ServerMessage::Watching { .. } => OutKind::Watching,
            ServerMessage::Resumed { .. } => OutKind::Resumed,
            ServerMessage::Unwatched { .. } => OutKind::Unwatched,
            ServerMessage::TokenRefreshed { .. } => OutKind::TokenRefreshed,
            ServerMessage::Pong { .. } => OutKind::Pong,
            ServerMessage::Error { .. } => OutKind::Error,
            ServerMessage::TokenExpiring { .. } => OutKind::TokenExpiring,
            ServerMessage::Disconnected { .. } => OutKind::Disconnected,
            ServerMessage::PeerEvent { .. } => OutKind::PeerEvent,
        }
    }
}

/// The `type` of every frame the server sends (`peer_event` included),
/// so per-type counters are resolved once, not looked up per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Connected,
    RouteCalculated,
    NavigationUpdate,
    RouteDeviation,
    Arrival,
    RouteSwitched,
    RouteRecalculated,
    NavigationEnded,
    Shared,
    Unshared,
    Watching,
    Resumed,
    Unwatched,
    TokenRefreshed,
    Pong,
    Error,
    TokenExpiring,
    Disconnected,
    PeerEvent,
}

impl OutKind {
    pub const ALL: [OutKind; 19] = [
        OutKind::Connected,
        OutKind::RouteCalculated,
        OutKind::NavigationUpdate,
        OutKind::RouteDeviation,
        OutKind::Arrival,
        OutKind::RouteSwitched,
        OutKind::RouteRecalculated,
        OutKind::NavigationEnded,
        OutKind::Shared,
        OutKind::Unshared,
        OutKind::Watching,
        OutKind::Resumed,
        OutKind::Unwatched,
        OutKind::TokenRefreshed,
        OutKind::Pong,
        OutKind::Error,
        OutKind::TokenExpiring,
        OutKind::Disconnected,
        OutKind::PeerEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutKind::Connected => "connected",
            OutKind::RouteCalculated => "route_calculated",
            OutKind::NavigationUpdate => "navigation_update",
            OutKind::RouteDeviation => "route_deviation",
            OutKind::Arrival => "arrival",
            OutKind::RouteSwitched => "route_switched",
            OutKind::RouteRecalculated => "route_recalculated",
            OutKind::NavigationEnded => "navigation_ended",
            OutKind::Shared => "shared",
            OutKind::Unshared => "unshared",
            OutKind::Watching => "watching",
            OutKind::Resumed => "resumed",
            OutKind::Unwatched => "unwatched",
            OutKind::TokenRefreshed => "token_refreshed",
            OutKind::Pong => "pong",
            OutKind::Error => "error",
            OutKind::TokenExpiring => "token_expiring",
            OutKind::Disconnected => "disconnected",
            OutKind::PeerEvent => "peer_event",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A server frame with the `request_id` of the request it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    #[serde(flatten)]
    pub message: ServerMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// The `peer_event` frame as the node writes it: `event` is the already
/// serialised navigation event, embedded without a second round trip
/// through serde.
#[derive(Debug, Serialize)]
pub struct PeerEventFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: &'a str,
    pub event: &'a RawValue,
    pub origin_node: &'a str,
    pub seq: u64,
    pub sent_at_us: u64,
    /// v1.1: the event's position in the rider's stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

/// Why a text frame could not become a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<RequestId>,
    pub kind: RequestKind,
}

/// The first parse: only `type` and `request_id`, borrowing from the frame
/// (`request_id` as its raw text, so a number is echoed exactly).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    request_id: Option<&'a RawValue>,
}

/// Parses one client text frame.
///
/// Not JSON, not an object, or no `type` → `PARSING_ERROR`; a `type` the
/// contract does not know → `UNKNOWN_MESSAGE_TYPE`; a known type whose
/// fields are missing or of the wrong kind → `INVALID_PARAMETERS`. Messages
/// never include the offending input, so nothing of it is reflected back.
pub fn parse_request(text: &str) -> Result<(ClientMessage, Option<RequestId>), ParseError> {
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| ParseError {
        code: ErrorCode::ParsingError,
        message: format!("frame is not a JSON object: {}", classify_json_error(&e)),
        request_id: None,
        kind: RequestKind::Invalid,
    })?;
    let request_id = match head.request_id {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(RequestId::from_raw(raw).ok_or_else(|| ParseError {
            code: ErrorCode::ParsingError,
            message: "request_id must be a string or a number".into(),
            request_id: None,
            kind: RequestKind::Invalid,
        })?),
    };
    if request_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_REQUEST_ID_BYTES)
    {
        return Err(ParseError {
            code: ErrorCode::InvalidParameters,
            message: format!("request_id is longer than {MAX_REQUEST_ID_BYTES} bytes"),
            request_id: None,
            kind: RequestKind::Invalid,
        });
    }
    let Some(type_name) = head.kind else {
        return Err(ParseError {
            code: ErrorCode::ParsingError,
            message: "frame has no \"type\" field".into(),
            request_id,
            kind: RequestKind::Invalid,
        });
    };
    let Some(kind) = RequestKind::from_type(&type_name) else {
        return Err(ParseError {
            code: ErrorCode::UnknownMessageType,
            message: "unknown message type".into(),
            request_id,
            kind: RequestKind::Invalid,
        });
    };
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(msg) => Ok((msg, request_id)),
        Err(e) => Err(ParseError {
            code: ErrorCode::InvalidParameters,
            message: format!("invalid fields for {}: {}", kind.as_str(), field_error(&e)),
            request_id,
            kind,
        }),
    }
}

fn classify_json_error(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "expected an object with a string \"type\"",
        Category::Io => "read error",
    }
}

/// serde's message without the line/column suffix: it names the field and
/// the expected kind, never the value that was sent.
fn field_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    // serde describes what it found (the client's value, quoted) before
    // ", expected …" (our types and names). Keep only the kind of what was
    // found, so no client-supplied text is reflected; field names in
    // "missing field `x`" / "duplicate field `x`" are our own.
    let (found, expected) = match text.split_once(", expected ") {
        Some((found, expected)) => (found, Some(expected)),
        None => (text, None),
    };
    let mut message = if found.starts_with("missing field") || found.starts_with("duplicate field")
    {
        found.to_string()
    } else {
        found
            .split([':', '`', '"'])
            .next()
            .unwrap_or("invalid value")
            .trim()
            .to_string()
    };
    if let Some(expected) = expected {
        message.push_str(", expected ");
        message.push_str(expected);
    }
    message.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_echo_and_error_classes() {
        let (msg, id) = parse_request(r#"{"type":"ping","request_id":7}"#).unwrap();
        assert_eq!(msg, ClientMessage::Ping {});
        assert_eq!(id, Some(RequestId::from(7u64)));

        let e = parse_request("nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::ParsingError);
        let e = parse_request(r#"{"type":"fly","request_id":"a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownMessageType);
        assert_eq!(e.request_id, Some(RequestId::Str("a".into())));
        let e = parse_request(r#"{"type":"location_update","latitude":"x","request_id":1}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameters);
        assert_eq!(e.request_id, Some(RequestId::from(1u64)));
    }

    #[test]
    fn reply_round_trips_with_request_id() {
        let reply = Reply {
            message: ServerMessage::Pong { server_time: 5 },
            request_id: Some(RequestId::Str("r1".into())),
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(text, r#"{"type":"pong","server_time":5,"request_id":"r1"}"#);
        let back: Reply = serde_json::from_str(&text).unwrap();
        assert_eq!(back.request_id, reply.request_id);
        assert_eq!(back.message, reply.message);
    }

    mod codec {
        use super::super::*;
        use proptest::prelude::*;

        /// Coordinates as clients send them: a few decimals. (serde_json's
        /// default parser may be one ulp off on 17-digit floats.)
        fn finite() -> impl Strategy<Value = f64> {
            (-1_800_000i32..1_800_000).prop_map(|x| f64::from(x) / 1e4)
        }

        fn client_message() -> impl Strategy<Value = ClientMessage> {
            prop_oneof![
                (
                    ".{0,20}",
                    ".{0,20}",
                    proptest::option::of(prop_oneof![
                        Just(DisabilityType::Physical),
                        Just(DisabilityType::Visual),
                        Just(DisabilityType::Auditory),
                        Just(DisabilityType::Elderly),
                    ])
                )
                    .prop_map(|(origin, destination, disability_type)| {
                        ClientMessage::StartNavigation {
                            origin,
                            destination,
                            disability_type,
                        }
                    }),
                (
                    finite(),
                    finite(),
                    proptest::option::of(finite()),
                    proptest::option::of("[a-f0-9]{0,32}")
                )
                    .prop_map(|(latitude, longitude, accuracy, route_id)| {
                        ClientMessage::LocationUpdate {
                            latitude,
                            longitude,
                            accuracy,
                            route_id,
                        }
                    }),
                any::<u8>().prop_map(|target_rank| ClientMessage::SwitchRoute { target_rank }),
                Just(ClientMessage::EndNavigation {}),
                (
                    ".{0,40}",
                    proptest::option::of((any::<u64>(), "[0-9a-f]{0,32}"))
                )
                    .prop_map(|(user_id, since)| ClientMessage::Watch {
                        user_id,
                        since: since.map(|(offset, epoch)| Since { offset, epoch }),
                    }),
                ".{0,40}".prop_map(|guardian_id| ClientMessage::ShareNavigation { guardian_id }),
                Just(ClientMessage::Ping {}),
            ]
        }

        /// A request id as a client may send it, and as it must come back.
        fn request_id() -> impl Strategy<Value = RequestId> {
            prop_oneof![
                any::<i64>().prop_map(RequestId::from),
                "[a-zA-Z0-9-]{0,16}".prop_map(RequestId::Str),
            ]
        }

        /// A string no reply may contain: the stand-in for client input.
        const MARKER: &str = "XQZ-not-to-be-echoed";

        /// Which of the three frame classes a JSON object falls into, by the
        /// rules of `parse_request`'s documentation.
        #[derive(Debug, Clone, PartialEq)]
        enum Class {
            /// No usable `type` (absent or null): PARSING_ERROR, id echoed.
            NoType,
            /// `type` or `request_id` of the wrong JSON kind: PARSING_ERROR,
            /// nothing echoed (the head itself is malformed).
            BadHead,
            /// A `type` the contract does not know: UNKNOWN_MESSAGE_TYPE.
            Unknown,
            /// A known `type`: parsed, or INVALID_PARAMETERS, id echoed.
            Known(&'static str),
        }

        /// JSON objects shaped like requests: every combination of a good,
        /// missing, unknown or ill-typed `type` and `request_id`, plus
        /// fields of real requests holding client text or numbers.
        fn request_object() -> impl Strategy<Value = (serde_json::Value, Class, Option<RequestId>)>
        {
            let known = proptest::sample::select(
                RequestKind::ALL
                    .iter()
                    .filter(|k| **k != RequestKind::Invalid)
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>(),
            );
            let type_field = prop_oneof![
                Just((None, Class::NoType)),
                Just((Some(serde_json::Value::Null), Class::NoType)),
                known.prop_map(|t| (Some(t.into()), Class::Known(t))),
                "[a-z_]{0,12}"
                    .prop_filter("not a known type", |t| RequestKind::from_type(t).is_none())
                    .prop_map(|t| (Some(t.into()), Class::Unknown)),
                any::<i32>().prop_map(|n| (Some(n.into()), Class::BadHead)),
            ];
            let id_field = prop_oneof![
                Just((None, true)),
                request_id().prop_map(|id| (Some(id), true)),
                // A boolean id is not a string or number: a bad head.
                Just((None, false)),
            ];
            let value = prop_oneof![
                Just(serde_json::Value::from(MARKER)),
                (-200.0f64..200.0).prop_map(serde_json::Value::from),
                any::<u8>().prop_map(serde_json::Value::from),
                Just(serde_json::json!({ "nested": MARKER })),
            ];
            let field = proptest::sample::select(vec![
                "origin",
                "destination",
                "disability_type",
                "latitude",
                "longitude",
                "accuracy",
                "route_id",
                "target_rank",
                "guardian_id",
                "user_id",
                "token",
                "pad",
            ]);
            (
                type_field,
                id_field,
                proptest::collection::btree_map(field, value, 0..6),
            )
                .prop_map(|((t, class), (id, id_ok), fields)| {
                    let mut obj: serde_json::Map<String, serde_json::Value> = fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    if let Some(t) = t {
                        obj.insert("type".into(), t);
                    }
                    if let Some(id) = &id {
                        obj.insert("request_id".into(), serde_json::to_value(id).unwrap());
                    } else if !id_ok {
                        obj.insert("request_id".into(), true.into());
                    }
                    let class = if !id_ok { Class::BadHead } else { class };
                    let echoed = if class == Class::BadHead { None } else { id };
                    (serde_json::Value::Object(obj), class, echoed)
                })
        }

        proptest! {
            #[test]
            fn every_request_round_trips_with_its_id(msg in client_message(), id in request_id()) {
                let mut v = serde_json::to_value(&msg).unwrap();
                v["request_id"] = serde_json::to_value(&id).unwrap();
                let (back, rid) = parse_request(&v.to_string()).unwrap();
                prop_assert_eq!(back, msg);
                prop_assert_eq!(rid, Some(id));
            }

            #[test]
            fn each_request_shape_gets_the_code_of_its_class(
                (obj, class, echoed) in request_object()
            ) {
                let text = obj.to_string();
                match (parse_request(&text), &class) {
                    (Ok((msg, id)), Class::Known(t)) => {
                        prop_assert_eq!(msg.kind().as_str(), *t);
                        prop_assert_eq!(id, echoed);
                    }
                    (Ok((msg, _)), _) => {
                        prop_assert!(false, "{:?} parsed as {:?}: {}", class, msg, text);
                    }
                    (Err(e), _) => {
                        let code = match class {
                            Class::NoType | Class::BadHead => ErrorCode::ParsingError,
                            Class::Unknown => ErrorCode::UnknownMessageType,
                            Class::Known(_) => ErrorCode::InvalidParameters,
                        };
                        prop_assert_eq!(e.code, code, "{:?}: {}", class, text);
                        prop_assert_eq!(e.request_id, echoed, "{}", text);
                        let kind = match class {
                            Class::Known(t) => RequestKind::from_type(t).unwrap(),
                            _ => RequestKind::Invalid,
                        };
                        prop_assert_eq!(e.kind, kind);
                    }
                }
            }

            #[test]
            fn a_truncated_request_is_a_parsing_error_without_an_id(
                msg in client_message(),
                id in request_id(),
                cut in 0usize..400,
            ) {
                let mut v = serde_json::to_value(&msg).unwrap();
                v["request_id"] = serde_json::to_value(&id).unwrap();
                let text = v.to_string();
                // A strict prefix of an object is never a whole JSON value.
                let cut = cut % text.len();
                let Some(prefix) = text.get(..cut) else {
                    return Ok(()); // inside a UTF-8 character
                };
                let e = parse_request(prefix).unwrap_err();
                prop_assert_eq!(e.code, ErrorCode::ParsingError, "{}", prefix);
                prop_assert_eq!(e.request_id, None);
                prop_assert_eq!(e.kind, RequestKind::Invalid);
            }
        }

        proptest! {
            /// The contract of `parse_request`: messages never include the
            /// offending input.
            #[test]
            fn error_messages_never_reflect_client_text((obj, _, _) in request_object()) {
                if let Err(e) = parse_request(&obj.to_string()) {
                    prop_assert!(!e.message.contains(MARKER), "reflected: {}", e.message);
                }
            }
        }
    }
}
