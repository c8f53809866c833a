//! The request id nginx gives each request (`X-Request-Id: $request_id`),
//! so one rider can be followed from nginx's access log into every node's
//! log lines: HTTP requests log inside a `request` span carrying it, and a
//! WebSocket session carries the id of its upgrade in its `session` span.
//!
//! The header comes from the client's side of the proxy, so only a short
//! id of plain characters is taken; anything else is ignored rather than
//! copied into the logs.

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header nginx sets (`proxy_set_header X-Request-Id $request_id`).
pub const HEADER: &str = "x-request-id";

/// The longest id taken (nginx's are 32 hex digits).
const MAX_LEN: usize = 64;

/// The request's id, when it has a well-formed one.
pub fn of(headers: &HeaderMap) -> Option<&str> {
    let id = headers.get(HEADER)?.to_str().ok()?;
    let ok = !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

/// Middleware: the rest of the request runs inside a span with its id.
pub async fn span(req: Request, next: Next) -> Response {
    match of(req.headers()).map(str::to_owned) {
        Some(id) => {
            next.run(req)
                .instrument(tracing::info_span!("request", request_id = %id))
                .await
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn takes_plain_ids_only() {
        assert_eq!(
            of(&with("3f1c0a9e2b7d4c5e8f6a1b2c3d4e5f60")),
            Some("3f1c0a9e2b7d4c5e8f6a1b2c3d4e5f60")
        );
        assert_eq!(of(&with("a b")), None);
        assert_eq!(of(&with("x\"}{")), None);
        assert_eq!(of(&with(&"a".repeat(65))), None);
        assert_eq!(of(&HeaderMap::new()), None);
    }
}
