//! Connection limits. A place under `ws.max_connections` is reserved
//! before the upgrade and held for the life of the session, so a burst of
//! upgrades cannot overshoot the limit; the server holds a place under
//! `http.max_pending` for every accepted connection until it ends or
//! becomes a session.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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
