//! The process's open-file limit, which bounds everything a node holds:
//! every session, every HTTP connection, every Redis connection and every
//! file it reads is one descriptor. Running out stops `accept` (and with it
//! `/health`), so the connection limits are derived from it with headroom
//! rather than set beside it.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept free for everything that is not a client connection:
/// Redis connections, data files, the listener, log output, the runtime.
pub const HEADROOM: usize = 256;

/// The soft open-file limit; `None` when unlimited.
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the soft open-file limit to the hard one (what the operator
/// allowed the process; the soft default of 1024 is a relic of `select`).
/// Returns the limit in force afterwards.
pub fn raise_soft_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(event = "nofile_raise_failed", cause = %e, "could not raise the open-file limit");
        }
    }
    soft_limit()
}

/// Sessions a node accepts: `configured`, or with 0 whatever the open-file
/// limit leaves after `max_pending` HTTP connections and [`HEADROOM`].
pub fn session_limit(configured: usize, max_pending: usize, soft: Option<u64>) -> usize {
    if configured > 0 {
        return configured;
    }
    match soft {
        Some(files) => usize::try_from(files)
            .unwrap_or(usize::MAX)
            .saturating_sub(max_pending + HEADROOM)
            .max(1),
        None => 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_limit_leaves_room_for_pending_connections_and_files() {
        assert_eq!(session_limit(0, 1024, Some(20_000)), 20_000 - 1024 - 256);
        assert_eq!(session_limit(0, 1024, Some(1024)), 1, "never zero");
        assert_eq!(
            session_limit(500, 1024, Some(1024)),
            500,
            "an explicit value wins"
        );
    }
}
