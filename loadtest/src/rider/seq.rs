//! The order check of the peer events one guardian receives.
//!
//! A v1.1 server gives every event of a rider's stream an `offset`, gap-free
//! cluster-wide under the stream's `epoch`: a skipped offset is an event
//! lost, a repeated or smaller one a duplicate (the server promises each
//! event once per session, recovery included). Without offsets (a v1.0
//! server) the per-origin-node `seq` is checked instead: a gap, a repeat or
//! a step back in one origin's numbers is an event lost, duplicated or
//! reordered on the way. The `seq` check is ambiguous when a rider comes
//! back to a node (the node's count for it starts again at 1), which is why
//! the offset is preferred. This is how the client finds loss that no
//! reply timeout would show.

use std::collections::HashMap;

/// Per-origin sequence check of the peer events of one watched user.
#[derive(Default)]
pub(super) struct SeqCheck {
    last: HashMap<String, u64>,
    /// The stream position last seen: `(epoch, offset)`.
    stream: Option<(String, u64)>,
    pub(super) received: u64,
    pub(super) duplicates: u64,
    pub(super) reorders: u64,
    pub(super) gaps: u64,
}

impl SeqCheck {
    /// A v1.1 event at `offset` of the stream under `epoch`. Returns false
    /// for a duplicate. A new epoch starts the check again (the stream's
    /// history was lost; whatever the client missed shows as a shortfall).
    pub(super) fn see_offset(&mut self, epoch: &str, offset: u64) -> bool {
        match &mut self.stream {
            Some((e, last)) if e == epoch => {
                if offset <= *last {
                    self.duplicates += 1;
                    return false;
                }
                self.gaps += offset - *last - 1;
                *last = offset;
            }
            _ => self.stream = Some((epoch.to_string(), offset)),
        }
        self.received += 1;
        true
    }

    /// A v1.0 event numbered `seq` by `origin`. Returns false for a
    /// duplicate.
    pub(super) fn see(&mut self, origin: &str, seq: u64) -> bool {
        if seq == 0 {
            // The node could not number it (documented as "do not count").
            self.received += 1;
            return true;
        }
        match self.last.get_mut(origin) {
            None => {
                self.last.insert(origin.to_string(), seq);
            }
            Some(last) => {
                if seq == *last + 1 {
                    *last = seq;
                } else if seq > *last + 1 {
                    self.gaps += seq - *last - 1;
                    *last = seq;
                } else if seq == *last {
                    self.duplicates += 1;
                    return false;
                } else if seq == 1 {
                    // The origin's counter for this user started again: a
                    // new stream (the rider reconnected there), not a reorder.
                    *last = 1;
                } else {
                    self.reorders += 1;
                }
            }
        }
        self.received += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_duplicates_reorders_and_restarts() {
        let mut c = SeqCheck::default();
        for s in [1, 2, 3, 5, 5, 4, 6, 1, 2] {
            c.see("a", s);
        }
        assert_eq!(c.gaps, 1);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.reorders, 1);
        assert_eq!(c.received, 8);
        c.see("b", 10);
        assert_eq!(c.gaps, 1, "first event of an origin starts its stream");
    }

    #[test]
    fn offset_check_counts_gaps_and_duplicates_per_epoch() {
        let mut c = SeqCheck::default();
        for o in [1, 2, 4, 4, 3, 5] {
            c.see_offset("e1", o);
        }
        assert_eq!((c.received, c.gaps, c.duplicates), (4, 1, 2));
        // A new epoch: the stream started over.
        assert!(c.see_offset("e2", 1));
        assert!(c.see_offset("e2", 2));
        assert_eq!((c.received, c.gaps, c.duplicates), (6, 1, 2));
    }
}
