//! Wall-clock time as Unix timestamps, in the units the wire and the stores
//! use. One place, so tokens, envelopes, stores and tests agree on what
//! "now" means; a clock before 1970 reads as 0 rather than panicking.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (JWT `iat`/`exp`, store expiries).
pub fn unix_s() -> i64 {
    since_epoch().as_secs() as i64
}

/// Milliseconds since the Unix epoch (`token_expiring`, `/stats`).
pub fn unix_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Microseconds since the Unix epoch (`sent_at_us` on bus envelopes).
pub fn unix_us() -> u64 {
    since_epoch().as_micros() as u64
}
