//! Counted limits on what clients hold. A place under `ws.max_connections`
//! is reserved before the upgrade and held for the life of the session, so
//! a burst of upgrades cannot overshoot the limit; the server holds a place
//! under `http.max_pending` (and under `http.max_pending_per_address` for
//! the peer's address) for every accepted connection until it ends or
//! becomes a session; the login throttle holds one per client address for
//! each password request in progress. Places are released on drop, so no
//! path can leak one.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Sessions plus upgrades in flight, against a maximum.
#[derive(Debug)]
pub struct ConnectionLimit {
    count: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Places taken now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// A reserved place under the limit; released on drop.
pub(crate) struct ConnectionSlot(Arc<ConnectionLimit>);

impl ConnectionSlot {
    /// A place, or `None` when the limit is reached.
    pub(crate) fn acquire(limit: &Arc<ConnectionLimit>) -> Option<ConnectionSlot> {
        limit
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(limit.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most `max` places per key (a client address, say), with no entry
/// kept for a key that holds none.
pub struct PerKeyLimit<K: Eq + Hash + Clone> {
    held: Arc<DashMap<K, usize>>,
    max: usize,
}

/// A place of one key under a [`PerKeyLimit`]; released on drop.
pub struct KeySlot<K: Eq + Hash + Clone> {
    held: Arc<DashMap<K, usize>>,
    key: K,
}

impl<K: Eq + Hash + Clone> PerKeyLimit<K> {
    pub fn new(max: usize) -> PerKeyLimit<K> {
        PerKeyLimit {
            held: Arc::new(DashMap::new()),
            max,
        }
    }

    /// A place for `key`, or `None` when it holds `max` already.
    pub fn acquire(&self, key: &K) -> Option<KeySlot<K>> {
        let mut n = self.held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(KeySlot {
            held: self.held.clone(),
            key: key.clone(),
        })
    }

    /// Keys holding at least one place.
    pub fn keys(&self) -> usize {
        self.held.len()
    }
}

impl<K: Eq + Hash + Clone> Drop for KeySlot<K> {
    fn drop(&mut self) {
        self.held.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_places_are_bounded_and_leave_no_entry() {
        let limit = PerKeyLimit::new(2);
        let a1 = limit.acquire(&"a").expect("first");
        let a2 = limit.acquire(&"a").expect("second");
        assert!(limit.acquire(&"a").is_none());
        let b = limit.acquire(&"b").expect("another key is not affected");
        drop(a1);
        let a3 = limit.acquire(&"a").expect("a released place is free again");
        drop((a2, a3, b));
        assert_eq!(limit.keys(), 0);
    }

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let limit = Arc::new(ConnectionLimit::new(2));
        let a = ConnectionSlot::acquire(&limit).expect("first");
        let _b = ConnectionSlot::acquire(&limit).expect("second");
        assert!(ConnectionSlot::acquire(&limit).is_none());
        drop(a);
        let _c = ConnectionSlot::acquire(&limit).expect("a released place is free again");
        assert!(ConnectionSlot::acquire(&limit).is_none());
    }
}
