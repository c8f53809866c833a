//! Rider streams kept in memory (protocol v1.1): the history of a single
//! node, or of the nodes of one process sharing a [`LocalHub`].
//!
//! Each stream numbers its events 1, 2, 3, … under an epoch (a random
//! string), keeps the last `history.size` of them, and is forgotten
//! `history.ttl` after its last event; the next event then starts a new
//! epoch at 1. The Redis bus keeps the same thing in Redis
//! (`redis/history.rs`); both answer [`Recovery`] the same way.
//!
//! [`LocalHub`]: super::local::LocalHub

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::Envelope;
use crate::config::HistoryConfig;

/// Where a stream stands, and what a client that was away missed.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The stream's last offset (0 before its first event).
    pub offset: u64,
    pub epoch: String,
    /// True when the client's epoch is the stream's and every event after
    /// its offset is in `events`.
    pub recovered: bool,
    /// Events after the client's offset, as far as the stream knows.
    pub missed: u64,
    /// The missed events, in offset order (empty unless `recovered`).
    pub events: Vec<Arc<Envelope>>,
}

impl Recovery {
    /// The answer for a stream at `offset`/`epoch` to a client at `since`,
    /// given the stream's first kept offset and a way to list the events
    /// after one.
    pub fn compute(
        offset: u64,
        epoch: &str,
        first_kept: Option<u64>,
        since: Option<(u64, &str)>,
        after: impl FnOnce(u64) -> Vec<Arc<Envelope>>,
    ) -> Recovery {
        let mut r = Recovery {
            offset,
            epoch: epoch.to_string(),
            recovered: false,
            missed: 0,
            events: Vec::new(),
        };
        let Some((since, since_epoch)) = since else {
            return r;
        };
        if since_epoch != epoch {
            return r;
        }
        r.missed = offset.saturating_sub(since);
        if r.missed == 0 {
            r.recovered = true;
            return r;
        }
        // Everything after `since` is kept when the first kept event is
        // `since + 1` or earlier.
        if first_kept.is_some_and(|first| first <= since + 1) {
            r.events = after(since);
            r.recovered = r.events.len() as u64 == r.missed;
            if !r.recovered {
                r.events.clear();
            }
        }
        r
    }
}

struct Stream {
    epoch: Arc<str>,
    offset: u64,
    events: VecDeque<Arc<Envelope>>,
    touched: Instant,
}

/// Streams in memory, bounded by `history.size` events each and expiring
/// `history.ttl` after their last event.
pub struct MemoryHistory {
    cfg: HistoryConfig,
    streams: Mutex<HashMap<String, Stream>>,
    appends: Mutex<u64>,
}

/// Expired streams are swept every this many appends.
const SWEEP_EVERY: u64 = 1024;

pub fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl MemoryHistory {
    pub fn new(cfg: HistoryConfig) -> MemoryHistory {
        MemoryHistory {
            cfg,
            streams: Mutex::new(HashMap::new()),
            appends: Mutex::new(0),
        }
    }

    fn live<'a>(&self, streams: &'a mut HashMap<String, Stream>, user: &str) -> &'a mut Stream {
        let now = Instant::now();
        let expired = streams
            .get(user)
            .is_some_and(|s| now.duration_since(s.touched) > self.cfg.ttl);
        if expired {
            streams.remove(user);
        }
        streams.entry(user.to_string()).or_insert_with(|| Stream {
            epoch: new_epoch().into(),
            offset: 0,
            events: VecDeque::new(),
            touched: now,
        })
    }

    /// Places `envelope` in its user's stream: sets its offset and epoch.
    pub fn append(&self, envelope: &mut Envelope) -> Arc<Envelope> {
        let mut streams = self.streams.lock();
        let stream = self.live(&mut streams, &envelope.user_id);
        stream.offset += 1;
        stream.touched = Instant::now();
        envelope.offset = Some(stream.offset);
        envelope.epoch = Some(stream.epoch.to_string());
        let kept = Arc::new(envelope.clone());
        stream.events.push_back(kept.clone());
        while stream.events.len() > self.cfg.size {
            stream.events.pop_front();
        }
        let sweep = {
            let mut n = self.appends.lock();
            *n += 1;
            (*n).is_multiple_of(SWEEP_EVERY)
        };
        if sweep {
            let now = Instant::now();
            let ttl = self.cfg.ttl;
            streams.retain(|_, s| now.duration_since(s.touched) <= ttl);
        }
        kept
    }

    /// Where `user`'s stream stands and what a client at `since` missed.
    pub fn recover(&self, user: &str, since: Option<(u64, &str)>) -> Recovery {
        let mut streams = self.streams.lock();
        let stream = self.live(&mut streams, user);
        let first_kept = stream.events.front().and_then(|e| e.offset);
        Recovery::compute(stream.offset, &stream.epoch, first_kept, since, |after| {
            stream
                .events
                .iter()
                .filter(|e| e.offset.is_some_and(|o| o > after))
                .cloned()
                .collect()
        })
    }

    /// Streams held now (for tests of the bound).
    pub fn streams(&self) -> usize {
        self.streams.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Payload;
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn event(user: &str) -> Envelope {
        Envelope::new(
            "n",
            0,
            0,
            user,
            Payload::Event {
                event: RawValue::from_string("{}".into()).unwrap(),
            },
        )
    }

    fn history(size: usize) -> MemoryHistory {
        MemoryHistory::new(HistoryConfig {
            size,
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn offsets_count_per_stream_without_gaps() {
        let h = history(10);
        let a: Vec<_> = (0..3).map(|_| h.append(&mut event("a")).offset).collect();
        let b = h.append(&mut event("b")).offset;
        assert_eq!(a, [Some(1), Some(2), Some(3)]);
        assert_eq!(b, Some(1));
    }

    #[test]
    fn recovery_replays_what_was_missed_or_says_it_cannot() {
        let h = history(5);
        let epoch = h.append(&mut event("a")).epoch.clone().unwrap();
        for _ in 0..3 {
            h.append(&mut event("a"));
        }
        let r = h.recover("a", Some((1, &epoch)));
        assert!(r.recovered);
        assert_eq!((r.offset, r.missed), (4, 3));
        let offsets: Vec<_> = r.events.iter().map(|e| e.offset.unwrap()).collect();
        assert_eq!(offsets, [2, 3, 4]);
        // Up to date: nothing missed.
        let r = h.recover("a", Some((4, &epoch)));
        assert!(r.recovered && r.events.is_empty() && r.missed == 0);
        // Another epoch: start over.
        let r = h.recover("a", Some((1, "other")));
        assert!(!r.recovered && r.events.is_empty());
        // Older than the history keeps.
        for _ in 0..5 {
            h.append(&mut event("a"));
        }
        let r = h.recover("a", Some((2, &epoch)));
        assert!(!r.recovered, "event 3 was dropped");
        assert_eq!(r.missed, 7);
        assert!(r.events.is_empty());
        // Without `since`: only the position.
        let r = h.recover("a", None);
        assert_eq!((r.offset, r.recovered, r.missed), (9, false, 0));
    }

    #[test]
    fn an_expired_stream_starts_again_under_a_new_epoch() {
        let h = MemoryHistory::new(HistoryConfig {
            size: 5,
            ttl: Duration::from_millis(1),
        });
        let first = h.append(&mut event("a")).epoch.clone().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let again = h.append(&mut event("a"));
        assert_eq!(again.offset, Some(1));
        assert_ne!(again.epoch.as_deref(), Some(first.as_str()));
    }
}
