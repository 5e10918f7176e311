//! Per-room ordering of events on one gateway node.
//!
//! Redis pub/sub keeps the order of one publisher's messages, but two api
//! tasks that commit `seq` 7 and 8 may publish them in either order, and a
//! publish can be lost (Redis restarts, a node falls behind). Every room event
//! carries its gap-free `seq`, so the node delivers strictly in order: an
//! event that arrives early waits for the missing ones, which normally arrive
//! within microseconds; if they do not, the node reads them from the store.
//! Anything at or below the delivered position is a duplicate and is dropped.

use std::collections::BTreeMap;

/// Events held back waiting for a missing one. Past this the node stops
/// waiting: it reads the gap from the store, and if that fails it skips
/// ahead rather than hold memory without bound.
pub const MAX_PENDING: usize = 10_000;

#[derive(Debug)]
pub struct Sequencer<T> {
    delivered: i64,
    pending: BTreeMap<i64, T>,
}

/// What to do with an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Deliver these, in this order (the offered event and any it unblocked).
    Deliver(Vec<(i64, T)>),
    /// Held back: events before it are missing.
    Held,
    /// Already delivered (or older): drop it.
    Duplicate,
}

impl<T> Sequencer<T> {
    /// A sequencer whose events up to `delivered` are already known to clients.
    pub fn new(delivered: i64) -> Self {
        Self {
            delivered,
            pending: BTreeMap::new(),
        }
    }

    /// The last `seq` delivered.
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn offer(&mut self, seq: i64, item: T) -> Offer<T> {
        if seq <= self.delivered || self.pending.contains_key(&seq) {
            return Offer::Duplicate;
        }
        if seq != self.delivered + 1 {
            self.pending.insert(seq, item);
            return Offer::Held;
        }
        self.delivered = seq;
        let mut out = vec![(seq, item)];
        out.extend(self.drain_ready());
        Offer::Deliver(out)
    }

    /// The missing range `from..=to` before the first held event, if any.
    pub fn gap(&self) -> Option<(i64, i64)> {
        let (&first, _) = self.pending.first_key_value()?;
        Some((self.delivered + 1, first - 1))
    }

    /// Gives up on the current gap: moves past it and returns what that
    /// unblocks. Used when the store cannot fill it.
    pub fn skip_gap(&mut self) -> Vec<(i64, T)> {
        if let Some((&first, _)) = self.pending.first_key_value() {
            self.delivered = first - 1;
        }
        self.drain_ready()
    }

    fn drain_ready(&mut self) -> Vec<(i64, T)> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.delivered + 1 {
                break;
            }
            let (seq, item) = entry.remove_entry();
            self.delivered = seq;
            out.push((seq, item));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(offer: Offer<&str>) -> Vec<i64> {
        match offer {
            Offer::Deliver(items) => items.into_iter().map(|(s, _)| s).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn in_order_events_pass_straight_through() {
        let mut s = Sequencer::new(0);
        assert_eq!(seqs(s.offer(1, "a")), vec![1]);
        assert_eq!(seqs(s.offer(2, "b")), vec![2]);
        assert_eq!(s.delivered(), 2);
        assert_eq!(s.gap(), None);
    }

    #[test]
    fn an_early_event_waits_for_the_missing_one() {
        let mut s = Sequencer::new(4);
        assert_eq!(s.offer(6, "x"), Offer::Held);
        assert_eq!(s.offer(7, "y"), Offer::Held);
        assert_eq!(s.gap(), Some((5, 5)));
        assert_eq!(seqs(s.offer(5, "w")), vec![5, 6, 7]);
        assert_eq!(s.gap(), None);
    }

    #[test]
    fn duplicates_and_old_events_are_dropped() {
        let mut s = Sequencer::new(3);
        assert_eq!(s.offer(3, "old"), Offer::Duplicate);
        assert_eq!(s.offer(5, "x"), Offer::Held);
        assert_eq!(s.offer(5, "x again"), Offer::Duplicate);
        assert_eq!(seqs(s.offer(4, "y")), vec![4, 5]);
        assert_eq!(s.offer(4, "y again"), Offer::Duplicate);
    }

    #[test]
    fn skipping_a_gap_releases_what_waited_behind_it() {
        let mut s = Sequencer::new(0);
        assert_eq!(s.offer(3, "c"), Offer::Held);
        assert_eq!(s.offer(4, "d"), Offer::Held);
        assert_eq!(s.offer(9, "i"), Offer::Held);
        assert_eq!(s.gap(), Some((1, 2)));
        let released: Vec<i64> = s.skip_gap().into_iter().map(|(q, _)| q).collect();
        assert_eq!(released, vec![3, 4]);
        assert_eq!(s.gap(), Some((5, 8)));
    }
}
