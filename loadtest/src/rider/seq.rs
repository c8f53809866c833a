//! The `seq` check of the peer events one guardian receives.
//!
//! The node numbers the events of a watched user per origin node, so a
//! gap, a repeat or a step back in one origin's numbers is an event lost,
//! duplicated or reordered on the way; this is how the client finds loss
//! that no reply timeout would show.

use std::collections::HashMap;

/// Per-origin sequence check of the peer events of one watched user.
#[derive(Default)]
pub(super) struct SeqCheck {
    last: HashMap<String, u64>,
    pub(super) received: u64,
    pub(super) duplicates: u64,
    pub(super) reorders: u64,
    pub(super) gaps: u64,
}

impl SeqCheck {
    /// Returns false for a duplicate.
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
}
