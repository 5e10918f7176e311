//! Correctness accounting: what each connection received, in what order,
//! against what the api acknowledged.
//!
//! Two views, kept apart so neither needs per-message memory per connection:
//! - [`RoomTrack`], one per (connection, room): the highest `seq` seen and
//!   the gaps below it, so a frame is classified as fresh, late (filled a
//!   gap: out of order) or duplicate; and the highest counter seen per
//!   publisher, so FIFO per sender is checked independently of `seq`.
//! - [`RoomLedger`], one per room: a slot per `seq` counting unique
//!   deliveries, and marked by the publisher when the api acknowledged the
//!   post. After a drain, every acknowledged post must have been delivered
//!   once to every connection that was joined when it was sent; the
//!   difference is loss, reported per step and never hidden.

use crate::metrics::Hist;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Gap ranges remembered per (connection, room). Gaps appear only when
/// frames are skipped or reordered; past this many, the oldest is forgotten
/// and a frame that later fills it is counted as a duplicate instead of late.
const MAX_GAPS: usize = 256;

/// How one frame's `seq` compares with what the connection saw before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// Higher than anything seen: the normal case.
    Fresh,
    /// Fills a gap left earlier: unique, but out of order.
    Late,
    /// Seen before (or at/below the join point).
    Duplicate,
}

/// How a message's per-(publisher, room) counter compares with the
/// highest one seen from that publisher on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterCheck {
    InOrder,
    /// Lower than one already seen: the sender's order was not kept.
    Behind,
    /// Equal to one already seen (a second copy under another seq).
    Repeat,
}

/// What one connection has seen of one room.
#[derive(Debug)]
pub struct RoomTrack {
    pub room_id: i64,
    /// Index of the room's [`RoomLedger`] in the worker.
    pub ledger: u32,
    last_seq: i64,
    /// Inclusive ranges of seqs skipped over, oldest first.
    gaps: Vec<(i64, i64)>,
    /// (publisher, highest counter seen).
    counters: Vec<(u32, u32)>,
}

impl RoomTrack {
    /// `joined_seq` is the `seq` of the `joined` answer: everything above it
    /// is due to this connection.
    pub fn new(room_id: i64, ledger: u32, joined_seq: i64) -> Self {
        Self {
            room_id,
            ledger,
            last_seq: joined_seq,
            gaps: Vec::new(),
            counters: Vec::new(),
        }
    }

    pub fn observe_seq(&mut self, seq: i64) -> SeqCheck {
        if seq > self.last_seq {
            if seq > self.last_seq + 1 {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.last_seq + 1, seq - 1));
            }
            self.last_seq = seq;
            return SeqCheck::Fresh;
        }
        let Some(i) = self
            .gaps
            .iter()
            .position(|&(lo, hi)| lo <= seq && seq <= hi)
        else {
            return SeqCheck::Duplicate;
        };
        let (lo, hi) = self.gaps[i];
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, hi));
            }
        }
        SeqCheck::Late
    }

    pub fn observe_counter(&mut self, publisher: u32, counter: u32) -> CounterCheck {
        match self.counters.iter_mut().find(|(p, _)| *p == publisher) {
            None => {
                self.counters.push((publisher, counter));
                CounterCheck::InOrder
            }
            Some((_, highest)) if counter > *highest => {
                *highest = counter;
                CounterCheck::InOrder
            }
            Some((_, highest)) if counter == *highest => CounterCheck::Repeat,
            Some(_) => CounterCheck::Behind,
        }
    }

    /// Seqs skipped over and not (yet) filled.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|(lo, hi)| (hi - lo + 1) as u64).sum()
    }
}

/// One seq of a room.
#[derive(Default)]
struct Slot {
    /// Unique deliveries of this seq (bench messages only).
    deliveries: AtomicU32,
    /// Step index + 1 once the api acknowledged the post; 0 otherwise.
    acked_step: AtomicU32,
    /// When the post was sent, ms on the process clock (for "joined at send time").
    sent_ms: AtomicU32,
}

/// What a worker knows about one room it hosts (all its members and all
/// its publishers are in this process).
pub struct RoomLedger {
    pub room_id: i64,
    /// Slot `i` is seq `base_seq + 1 + i`.
    base_seq: i64,
    slots: Box<[Slot]>,
    /// Connections that joined the room.
    members: AtomicU32,
    /// When joined connections dropped, ms on the process clock.
    drops_ms: Mutex<Vec<u32>>,
    /// Highest seq delivered or acknowledged.
    high_water: AtomicI64,
    /// The next tally starts after this seq.
    tallied_upto: AtomicI64,
    /// Deliveries and acks beyond the slots (the run outgrew its plan).
    untracked: AtomicU64,
}

/// The accounting of one step, for one room or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Posts the api acknowledged (201 with a seq).
    pub posts_acked: u64,
    /// Σ over acknowledged posts of the connections joined at send time.
    pub expected: u64,
    /// Unique deliveries of acknowledged posts (at most `expected`).
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Unique deliveries beyond `expected` for a post (to a connection that
    /// had dropped by the time the post was sent: should be impossible).
    pub excess: u64,
    /// Posts that were delivered although the api's answer never came (a
    /// timeout or error after the message was stored).
    pub unacked_posts_delivered: u64,
    pub unacked_deliveries: u64,
    /// Deliveries or acks outside the ledger's planned range.
    pub untracked: u64,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.posts_acked += o.posts_acked;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.excess += o.excess;
        self.unacked_posts_delivered += o.unacked_posts_delivered;
        self.unacked_deliveries += o.unacked_deliveries;
        self.untracked += o.untracked;
    }
}

impl RoomLedger {
    /// `last_seq` is the room's newest seq before the run; `capacity` the
    /// most posts the run can make into it.
    pub fn new(room_id: i64, last_seq: i64, capacity: usize) -> Self {
        Self {
            room_id,
            base_seq: last_seq,
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            members: AtomicU32::new(0),
            drops_ms: Mutex::new(Vec::new()),
            high_water: AtomicI64::new(last_seq),
            tallied_upto: AtomicI64::new(last_seq),
            untracked: AtomicU64::new(0),
        }
    }

    fn slot(&self, seq: i64) -> Option<&Slot> {
        let i = usize::try_from(seq - self.base_seq - 1).ok()?;
        self.slots.get(i)
    }

    pub fn member_joined(&self) {
        self.members.fetch_add(1, Ordering::Relaxed);
    }

    pub fn member_dropped(&self, at_ms: u32) {
        if let Ok(mut drops) = self.drops_ms.lock() {
            drops.push(at_ms);
        }
    }

    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Relaxed)
    }

    /// A unique delivery of one of our messages.
    pub fn record_delivery(&self, seq: i64) {
        self.high_water.fetch_max(seq, Ordering::Relaxed);
        match self.slot(seq) {
            Some(slot) => {
                slot.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.untracked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The api acknowledged a post with this seq.
    pub fn record_ack(&self, seq: i64, step: u32, sent_ms: u32) {
        self.high_water.fetch_max(seq, Ordering::Relaxed);
        match self.slot(seq) {
            Some(slot) => {
                slot.sent_ms.store(sent_ms, Ordering::Relaxed);
                slot.acked_step.store(step + 1, Ordering::Release);
            }
            None => {
                self.untracked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn members_at(&self, members: u32, drops: &[u32], sent_ms: u32) -> u64 {
        let dropped = drops.iter().filter(|&&d| d <= sent_ms).count() as u64;
        u64::from(members).saturating_sub(dropped)
    }

    fn scan(&self) -> (Tally, i64) {
        let members = self.members();
        let drops = self.drops_ms.lock().map(|d| d.clone()).unwrap_or_default();
        let from = self.tallied_upto.load(Ordering::Relaxed);
        let to = self.high_water.load(Ordering::Relaxed);
        let mut t = Tally::default();
        for seq in from + 1..=to {
            let Some(slot) = self.slot(seq) else { break };
            let delivered = u64::from(slot.deliveries.load(Ordering::Relaxed));
            if slot.acked_step.load(Ordering::Acquire) == 0 {
                if delivered > 0 {
                    t.unacked_posts_delivered += 1;
                    t.unacked_deliveries += delivered;
                }
                continue;
            }
            let expected = self.members_at(members, &drops, slot.sent_ms.load(Ordering::Relaxed));
            t.posts_acked += 1;
            t.expected += expected;
            t.delivered += delivered.min(expected);
            t.lost += expected.saturating_sub(delivered);
            t.excess += delivered.saturating_sub(expected);
        }
        (t, to)
    }

    /// True once every acknowledged post since the last tally has reached
    /// every connection due to receive it.
    pub fn settled(&self) -> bool {
        self.scan().0.lost == 0
    }

    /// The accounting since the previous tally; the next one starts after it.
    pub fn tally(&self) -> Tally {
        let (mut t, to) = self.scan();
        self.tallied_upto.store(to, Ordering::Relaxed);
        t.untracked = self.untracked.swap(0, Ordering::Relaxed);
        t
    }
}

/// Counts and latency of deliveries; kept in shards (one lock per frame,
/// almost never contended) and merged for reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Publish-to-deliver latency of every delivery of our messages,
    /// from the scheduled send time (so it includes any queueing).
    pub latency: Hist,
    /// Every frame carrying one of our messages, duplicates included.
    pub frames: u64,
    /// Event frames (any kind) whose seq was seen before.
    pub duplicates: u64,
    /// Event frames (any kind) that arrived after a higher seq.
    pub reordered_seq: u64,
    /// Messages that arrived after a later message of the same publisher.
    pub reordered_counter: u64,
    /// Messages whose publisher counter had been seen before.
    pub repeated_counter: u64,
    /// Events that were not ours (room.created, other traffic).
    pub other_events: u64,
}

impl DeliveryStats {
    pub fn merge(&mut self, o: &DeliveryStats) {
        self.latency.merge(&o.latency);
        self.frames += o.frames;
        self.duplicates += o.duplicates;
        self.reordered_seq += o.reordered_seq;
        self.reordered_counter += o.reordered_counter;
        self.repeated_counter += o.repeated_counter;
        self.other_events += o.other_events;
    }
}

/// [`DeliveryStats`] split in shards by connection.
pub struct ShardedDeliveries {
    shards: Box<[Mutex<DeliveryStats>]>,
}

/// Shards of delivery stats: with one lock per frame, a few per core make
/// contention negligible without multiplying histogram memory (~200 KB each).
const SHARDS: usize = 16;

impl Default for ShardedDeliveries {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(DeliveryStats::default()))
                .collect(),
        }
    }
}

impl ShardedDeliveries {
    pub fn with<R>(&self, conn: usize, f: impl FnOnce(&mut DeliveryStats) -> R) -> Option<R> {
        let shard = &self.shards[conn % self.shards.len()];
        shard.lock().ok().map(|mut s| f(&mut s))
    }

    /// Frames received so far (for progress).
    pub fn frames(&self) -> u64 {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.frames))
            .sum()
    }

    /// Everything recorded since the last take, merged; the shards restart empty.
    pub fn take(&self) -> DeliveryStats {
        let mut out = DeliveryStats::default();
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                out.merge(&s);
                *s = DeliveryStats::default();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(track: &mut RoomTrack, seqs: &[i64]) -> Vec<SeqCheck> {
        seqs.iter().map(|&s| track.observe_seq(s)).collect()
    }

    #[test]
    fn in_order_frames_are_fresh_and_repeats_are_duplicates() {
        let mut t = RoomTrack::new(1, 0, 10);
        use SeqCheck::*;
        assert_eq!(
            run(&mut t, &[11, 12, 13, 13, 10, 5]),
            [Fresh, Fresh, Fresh, Duplicate, Duplicate, Duplicate]
        );
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn a_frame_filling_a_gap_is_late_once_then_duplicate() {
        let mut t = RoomTrack::new(1, 0, 0);
        use SeqCheck::*;
        // 1, then 5 (2..4 missing), then 3 late, 3 again, 2 and 4 late.
        assert_eq!(
            run(&mut t, &[1, 5, 3, 3, 2, 4, 4, 6]),
            [Fresh, Fresh, Late, Duplicate, Late, Late, Duplicate, Fresh]
        );
        assert_eq!(t.missing(), 0);
        assert_eq!(run(&mut t, &[9]), [Fresh]);
        assert_eq!(t.missing(), 2, "7 and 8 never came");
    }

    #[test]
    fn counters_check_each_publishers_order_separately() {
        let mut t = RoomTrack::new(1, 0, 0);
        use CounterCheck::*;
        assert_eq!(t.observe_counter(1, 0), InOrder);
        assert_eq!(t.observe_counter(2, 5), InOrder);
        assert_eq!(t.observe_counter(1, 2), InOrder, "gaps are not reorders");
        assert_eq!(t.observe_counter(1, 1), Behind);
        assert_eq!(t.observe_counter(1, 2), Repeat);
        assert_eq!(t.observe_counter(2, 6), InOrder);
    }

    #[test]
    fn the_ledger_counts_loss_against_members_joined_at_send_time() {
        let ledger = RoomLedger::new(7, 100, 16);
        for _ in 0..3 {
            ledger.member_joined();
        }
        // Three posts acked in step 0, sent at 10, 20, 30 ms.
        ledger.record_ack(101, 0, 10);
        ledger.record_ack(102, 0, 20);
        ledger.record_ack(103, 0, 30);
        // One member drops at 25 ms: post 103 is due to two connections.
        ledger.member_dropped(25);
        for seq in [101, 101, 101, 102, 102, 103, 103] {
            ledger.record_delivery(seq);
        }
        assert!(!ledger.settled(), "102 reached two of three");
        let t = ledger.tally();
        assert_eq!(
            t,
            Tally {
                posts_acked: 3,
                expected: 8,
                delivered: 7,
                lost: 1,
                ..Tally::default()
            }
        );
        // The next step starts after what was tallied.
        ledger.record_ack(104, 1, 40);
        ledger.record_delivery(104);
        ledger.record_delivery(104);
        assert!(ledger.settled());
        let t = ledger.tally();
        assert_eq!((t.posts_acked, t.expected, t.lost), (1, 2, 0));
    }

    #[test]
    fn deliveries_of_unacknowledged_posts_and_overflow_are_reported() {
        let ledger = RoomLedger::new(7, 0, 2);
        ledger.member_joined();
        ledger.record_delivery(1); // stored, but the post timed out
        ledger.record_ack(2, 0, 1);
        ledger.record_delivery(2);
        ledger.record_delivery(3); // beyond the plan
        let t = ledger.tally();
        assert_eq!(t.unacked_posts_delivered, 1);
        assert_eq!(t.unacked_deliveries, 1);
        assert_eq!((t.posts_acked, t.delivered, t.lost), (1, 1, 0));
        assert_eq!(t.untracked, 1);
    }

    #[test]
    fn sharded_stats_merge_and_reset() {
        let s = ShardedDeliveries::default();
        for conn in 0..40 {
            s.with(conn, |d| {
                d.frames += 1;
                d.latency.record_us(1000 + conn as u64);
            });
        }
        assert_eq!(s.frames(), 40);
        let taken = s.take();
        assert_eq!((taken.frames, taken.latency.len()), (40, 40));
        assert_eq!(s.frames(), 0);
    }
}
