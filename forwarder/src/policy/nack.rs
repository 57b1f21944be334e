//! Upstream loss detection and NACK generation (RFC 4585 §6.2.1 generic NACK), and the
//! downstream retransmission rate limit.
//!
//! # [`NackGenerator`]: one per publisher stream
//!
//! Fed every received sequence number, it keeps the list of missing ones and tells the
//! core which to (re)request, in the spirit of mediasoup's `NackGenerator` and libwebrtc's
//! `NackRequester`:
//!
//! - a gap is requested at once (the next [`NackGenerator::poll`] returns it);
//! - an unanswered request is repeated every `max(rtt, MIN_RETRY_INTERVAL)`, at most
//!   [`MAX_TRIES`] times in all;
//! - a sequence number leaves the list when it arrives (recovered), when its tries are
//!   used up, when it has been missing for [`MAX_AGE`], or when the list overflows
//!   [`MAX_MISSING`] (oldest first). Each of the last three means a packet is lost for
//!   good, so the generator raises [`NackGenerator::take_keyframe_needed`]: the decoder
//!   downstream cannot recover without a keyframe.
//!
//! Sequence numbers are extended to 64 bits as RFC 3550 A.1 does, so ordering stays right
//! across the 16-bit wrap. A forward jump larger than RFC 3550's `MAX_DROPOUT` is taken as
//! a restart of the sender, not as 3000 losses: the list is cleared.
//!
//! # [`RetransmitLimiter`]: one per subscription
//!
//! A subscriber may NACK the same packet again before the first retransmission could
//! have reached it (its NACK timer runs on its own RTT estimate, and NACKs get
//! duplicated). Resending sooner than one RTT only adds load on a link that is already
//! losing, so the limiter lets a sequence number through at most once per
//! `max(rtt, MIN_RETRY_INTERVAL)`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ids::SeqNo;
use crate::receive_stats::MAX_DROPOUT;

/// Most missing sequence numbers tracked per stream. mediasoup keeps up to 1000 and
/// libwebrtc's `NackRequester` 1000 too; 512 matches [`super::packet_cache::VIDEO_CAPACITY`]:
/// a larger hole cannot be repaired by a sender keeping a similar history anyway, and a
/// keyframe is the cheaper repair.
pub const MAX_MISSING: usize = 512;

/// Requests per missing packet, the first included (mediasoup's `MaxNackRetries` and
/// libwebrtc's `kMaxNackRetries` are both 10). Ten RTTs cover the [`MAX_AGE`] on any path
/// with an RTT above 100 ms; on shorter paths the age limit ends the retries first.
pub const MAX_TRIES: u8 = 10;

/// Shortest interval between two requests for (or two resends of) one packet. Below about
/// 20 ms (one audio frame, a LAN RTT) a repeat cannot be told apart from the first
/// answer being in flight; the floor also protects against an RTT estimate of 0.
pub const MIN_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// RTT to assume until the core has measured one (mediasoup's `DefaultRtt`).
pub const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// A packet missing for longer than this is given up: the publisher's own history
/// (libwebrtc keeps roughly one second) cannot answer anymore, and the subscribers' jitter
/// buffers have moved on. Same value as the forwarder's
/// [`super::packet_cache::DEFAULT_MAX_AGE`].
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Default size of a [`RetransmitLimiter`]: the number of recent distinct sequence numbers
/// it remembers, matching [`super::packet_cache::VIDEO_CAPACITY`] (a packet outside the
/// cache cannot be resent anyway).
pub const LIMITER_CAPACITY: usize = 512;

/// What one received packet did to the NACK state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The first packet of the stream.
    First,
    /// The packet advanced the highest sequence number; `missing` sequence numbers were
    /// skipped and are now requested.
    New {
        /// Sequence numbers between the previous highest and this one.
        missing: u16,
    },
    /// A missing packet arrived (late, or as the answer to a NACK).
    Recovered {
        /// Time since the packet was requested, when it was requested exactly once: a
        /// round-trip sample (Karn's rule: an answer to a repeated request is ambiguous).
        since_request: Option<Duration>,
    },
    /// Older than the highest and not missing: a duplicate, or a packet already given up.
    Old,
    /// A jump beyond RFC 3550's `MAX_DROPOUT`: taken as a sender restart, list cleared.
    Restart,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    ext: i64,
    detected: Instant,
    last_sent: Option<Instant>,
    tries: u8,
}

/// Loss detection and NACK scheduling for one received stream (see the module docs).
pub struct NackGenerator {
    /// Sorted by `ext`, ascending: entries are only ever appended above the highest.
    missing: VecDeque<Missing>,
    capacity: usize,
    /// Highest sequence number seen and its extended value (congruent to it modulo 2^16,
    /// so that truncating an extended value gives back the wire sequence number).
    highest: Option<(SeqNo, i64)>,
    /// Earliest moment an entry is due, as of the last `poll` (or a new gap).
    next_due: Option<Instant>,
    keyframe_needed: bool,
    given_up: u64,
}

impl std::fmt::Debug for NackGenerator {
    // Not derived: the missing list holds up to hundreds of entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NackGenerator")
            .field("missing", &self.missing.len())
            .field("capacity", &self.capacity)
            .field("highest", &self.highest.map(|(seq, _)| seq))
            .field("next_due", &self.next_due)
            .field("given_up", &self.given_up)
            .finish_non_exhaustive()
    }
}

impl Default for NackGenerator {
    fn default() -> Self {
        Self::new(MAX_MISSING)
    }
}

impl NackGenerator {
    /// A generator tracking at most `capacity` missing packets (allocated now).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        NackGenerator {
            missing: VecDeque::with_capacity(capacity),
            capacity,
            highest: None,
            next_due: None,
            keyframe_needed: false,
            given_up: 0,
        }
    }

    /// Records the arrival of `seq` at `now`.
    pub fn on_packet(&mut self, seq: SeqNo, now: Instant) -> Received {
        let Some((highest, highest_ext)) = self.highest else {
            self.highest = Some((seq, i64::from(seq.0)));
            return Received::First;
        };
        let delta = highest.delta_to(seq);
        if delta > 0 {
            let gap = delta as u16 - 1;
            if delta as u16 > MAX_DROPOUT {
                self.reset_to(seq);
                self.keyframe_needed = true;
                return Received::Restart;
            }
            let ext = highest_ext + i64::from(delta);
            self.highest = Some((seq, ext));
            // Only the newest `capacity` of a large gap can stay in the list: skip the
            // rest without looping over them.
            let first = (ext - i64::from(gap)).max(ext - self.capacity as i64);
            if i64::from(gap) > self.capacity as i64 {
                self.give_up(u64::from(gap) - self.capacity as u64);
            }
            for missing in first..ext {
                self.push(missing, now);
            }
            if gap > 0 {
                self.next_due = Some(now);
            }
            return Received::New { missing: gap };
        }
        let ext = highest_ext + i64::from(delta);
        match self.missing.binary_search_by_key(&ext, |m| m.ext) {
            Ok(i) => {
                let since_request = self
                    .missing
                    .remove(i)
                    .filter(|m| m.tries == 1)
                    .and_then(|m| m.last_sent)
                    .map(|sent| now.saturating_duration_since(sent));
                Received::Recovered { since_request }
            }
            Err(_) => Received::Old,
        }
    }

    fn push(&mut self, ext: i64, now: Instant) {
        if self.missing.len() >= self.capacity {
            self.missing.pop_front();
            self.give_up(1);
        }
        self.missing.push_back(Missing {
            ext,
            detected: now,
            last_sent: None,
            tries: 0,
        });
    }

    fn give_up(&mut self, count: u64) {
        self.given_up = self.given_up.saturating_add(count);
        self.keyframe_needed = true;
    }

    fn reset_to(&mut self, seq: SeqNo) {
        self.missing.clear();
        self.highest = Some((seq, i64::from(seq.0)));
        self.next_due = None;
    }

    /// Writes into `out` the sequence numbers due for a (re)request at `now`, in
    /// ascending order, and returns how many it wrote: pass `&out[..n]` to
    /// [`crate::rtcp::write_nack`]. Entries that did not fit in `out` stay due.
    ///
    /// `rtt` is the current round-trip estimate to the publisher ([`DEFAULT_RTT`] if
    /// unknown); retries are spaced by `max(rtt, MIN_RETRY_INTERVAL)`. Also drops the
    /// entries that are too old or out of tries.
    pub fn poll(&mut self, now: Instant, rtt: Duration, out: &mut [SeqNo]) -> usize {
        let interval = rtt.max(MIN_RETRY_INTERVAL);
        let mut written = 0;
        let mut next_due: Option<Instant> = None;
        let mut dropped = 0u64;
        self.missing.retain_mut(|m| {
            if now.saturating_duration_since(m.detected) >= MAX_AGE {
                dropped += 1;
                return false;
            }
            let due = m.last_sent.map_or(now, |t| t + interval);
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                return true;
            }
            if m.tries >= MAX_TRIES {
                dropped += 1;
                return false;
            }
            let Some(slot) = out.get_mut(written) else {
                // Still due: the next poll picks it up.
                next_due = Some(now);
                return true;
            };
            // Truncating to 16 bits gives back the wire sequence number.
            *slot = SeqNo(m.ext as u16);
            written += 1;
            m.last_sent = Some(now);
            m.tries += 1;
            let again = now + interval;
            next_due = Some(next_due.map_or(again, |d| d.min(again)));
            true
        });
        // An entry also expires by age; wake up for the earliest expiry too.
        if let Some(first) = self.missing.iter().map(|m| m.detected).min() {
            let expiry = first + MAX_AGE;
            next_due = Some(next_due.map_or(expiry, |d| d.min(expiry)));
        }
        if dropped > 0 {
            self.give_up(dropped);
        }
        self.next_due = next_due;
        written
    }

    /// When [`NackGenerator::poll`] next has something to do (a request due or an entry
    /// to expire), as computed by the last `poll` with its `rtt`; `None` when nothing is
    /// missing.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_due
    }

    /// Whether packets were given up since the last call (lost for good: the core should
    /// ask the publisher for a keyframe). Clears the flag.
    pub fn take_keyframe_needed(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_needed)
    }

    /// Whether `seq` is on the missing list: the generator requests it (and repeats the
    /// request) by itself, so a downstream NACK for it need not be passed on.
    pub fn is_missing(&self, seq: SeqNo) -> bool {
        let Some((highest, highest_ext)) = self.highest else {
            return false;
        };
        let ext = highest_ext + i64::from(highest.delta_to(seq));
        self.missing.binary_search_by_key(&ext, |m| m.ext).is_ok()
    }

    /// Number of sequence numbers currently missing.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Sequence numbers given up so far (a metric).
    pub fn given_up(&self) -> u64 {
        self.given_up
    }

    /// Forgets the stream (new SSRC, or the publisher restarted).
    pub fn reset(&mut self) {
        self.missing.clear();
        self.highest = None;
        self.next_due = None;
    }
}

/// Per-subscription limit on resending one sequence number (see the module docs).
///
/// A direct-mapped table of `capacity` (a power of two) last-send times, indexed by
/// `seq % capacity`. When two sequence numbers `capacity` apart compete for one entry
/// within an interval, the newer request is refused rather than forgetting the older
/// one's send time: refusing is the safe side, the subscriber will NACK again after its
/// RTT. (So the entry need not remember which sequence number it was for.)
pub struct RetransmitLimiter {
    sent: Box<[Option<Instant>]>,
}

impl std::fmt::Debug for RetransmitLimiter {
    // Not derived: one entry per remembered sequence number.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetransmitLimiter")
            .field("capacity", &self.sent.len())
            .finish_non_exhaustive()
    }
}

impl Default for RetransmitLimiter {
    fn default() -> Self {
        Self::new(LIMITER_CAPACITY)
    }
}

impl RetransmitLimiter {
    /// A limiter remembering `capacity` sequence numbers (rounded up to a power of two,
    /// at least 1, at most 2^15), allocated now: 16 bytes each (8 KiB by default).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1 << 15).next_power_of_two();
        RetransmitLimiter {
            sent: vec![None; capacity].into_boxed_slice(),
        }
    }

    /// Whether `seq` may be resent at `now`; if so, records the send. Refuses a second
    /// send of the same sequence number within `max(rtt, MIN_RETRY_INTERVAL)`.
    pub fn allow(&mut self, seq: SeqNo, now: Instant, rtt: Duration) -> bool {
        let interval = rtt.max(MIN_RETRY_INTERVAL);
        let mask = self.sent.len() - 1;
        let Some(entry) = self.sent.get_mut(usize::from(seq.0) & mask) else {
            return false;
        };
        if let Some(at) = *entry {
            if now.saturating_duration_since(at) < interval {
                return false;
            }
        }
        *entry = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn poll_all(g: &mut NackGenerator, now: Instant, rtt: Duration) -> Vec<u16> {
        let mut out = [SeqNo(0); 64];
        let n = g.poll(now, rtt, &mut out);
        out[..n].iter().map(|s| s.0).collect()
    }

    #[test]
    fn gap_is_requested_at_once_then_retried_every_rtt() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        assert_eq!(g.on_packet(SeqNo(10), t0), Received::First);
        assert_eq!(g.on_packet(SeqNo(11), t0), Received::New { missing: 0 });
        assert_eq!(g.next_timeout(), None);
        assert_eq!(g.on_packet(SeqNo(14), t0), Received::New { missing: 2 });
        assert_eq!(g.next_timeout(), Some(t0));
        assert_eq!(poll_all(&mut g, t0, ms(50)), vec![12, 13]);
        assert_eq!(g.next_timeout(), Some(t0 + ms(50)));
        assert!(poll_all(&mut g, t0 + ms(49), ms(50)).is_empty());
        assert_eq!(
            g.on_packet(SeqNo(12), t0 + ms(49)),
            Received::Recovered {
                since_request: Some(ms(49))
            }
        );
        assert_eq!(poll_all(&mut g, t0 + ms(50), ms(50)), vec![13]);
        assert_eq!(
            g.on_packet(SeqNo(13), t0 + ms(60)),
            Received::Recovered {
                since_request: None
            },
            "asked twice: no round-trip sample"
        );
        assert_eq!(g.on_packet(SeqNo(13), t0 + ms(61)), Received::Old);
        assert!(poll_all(&mut g, t0 + ms(200), ms(50)).is_empty());
        assert_eq!(g.next_timeout(), None);
        assert!(!g.take_keyframe_needed());
    }

    #[test]
    fn retry_interval_has_a_floor() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(1), t0);
        g.on_packet(SeqNo(3), t0);
        assert_eq!(poll_all(&mut g, t0, Duration::ZERO), vec![2]);
        assert!(poll_all(&mut g, t0 + ms(19), Duration::ZERO).is_empty());
        assert_eq!(poll_all(&mut g, t0 + ms(20), Duration::ZERO), vec![2]);
    }

    #[test]
    fn gives_up_after_max_tries_and_asks_for_a_keyframe() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(1), t0);
        g.on_packet(SeqNo(3), t0);
        let mut sent = 0;
        for i in 0..20 {
            sent += poll_all(&mut g, t0 + ms(20 * i), ms(20)).len();
        }
        assert_eq!(sent, usize::from(MAX_TRIES));
        assert_eq!(g.missing_count(), 0);
        assert!(g.take_keyframe_needed());
        assert!(!g.take_keyframe_needed());
        assert_eq!(g.given_up(), 1);
    }

    #[test]
    fn gives_up_after_max_age() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(1), t0);
        g.on_packet(SeqNo(3), t0);
        assert_eq!(poll_all(&mut g, t0, ms(400)), vec![2]);
        assert_eq!(poll_all(&mut g, t0 + ms(400), ms(400)), vec![2]);
        assert_eq!(g.next_timeout(), Some(t0 + ms(800)));
        assert_eq!(poll_all(&mut g, t0 + ms(800), ms(400)), vec![2]);
        // Next retry would be at 1200 ms, but the entry expires at 1000 ms.
        assert_eq!(g.next_timeout(), Some(t0 + MAX_AGE));
        assert!(poll_all(&mut g, t0 + MAX_AGE, ms(400)).is_empty());
        assert_eq!(g.missing_count(), 0);
        assert!(g.take_keyframe_needed());
    }

    #[test]
    fn works_across_the_wrap() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(65534), t0);
        assert_eq!(g.on_packet(SeqNo(2), t0), Received::New { missing: 3 });
        assert_eq!(poll_all(&mut g, t0, ms(50)), vec![65535, 0, 1]);
        assert!(matches!(
            g.on_packet(SeqNo(0), t0),
            Received::Recovered { .. }
        ));
        assert_eq!(poll_all(&mut g, t0 + ms(50), ms(50)), vec![65535, 1]);
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let t0 = Instant::now();
        let mut g = NackGenerator::new(4);
        g.on_packet(SeqNo(0), t0);
        assert_eq!(g.on_packet(SeqNo(11), t0), Received::New { missing: 10 });
        assert_eq!(g.missing_count(), 4);
        assert_eq!(g.given_up(), 6);
        assert!(g.take_keyframe_needed());
        assert_eq!(poll_all(&mut g, t0, ms(50)), vec![7, 8, 9, 10]);
        g.on_packet(SeqNo(13), t0);
        assert_eq!(poll_all(&mut g, t0, ms(50)), vec![12]);
        assert_eq!(g.given_up(), 7);
    }

    #[test]
    fn small_output_buffer_leaves_the_rest_due() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(0), t0);
        g.on_packet(SeqNo(5), t0);
        let mut out = [SeqNo(0); 3];
        assert_eq!(g.poll(t0, ms(50), &mut out), 3);
        assert_eq!(out, [SeqNo(1), SeqNo(2), SeqNo(3)]);
        assert_eq!(g.next_timeout(), Some(t0));
        assert_eq!(g.poll(t0, ms(50), &mut out), 1);
        assert_eq!(out[0], SeqNo(4));
    }

    #[test]
    fn big_jump_is_a_restart() {
        let t0 = Instant::now();
        let mut g = NackGenerator::default();
        g.on_packet(SeqNo(0), t0);
        g.on_packet(SeqNo(2), t0);
        assert_eq!(g.on_packet(SeqNo(10_000), t0), Received::Restart);
        assert_eq!(g.missing_count(), 0);
        assert_eq!(g.on_packet(SeqNo(10_001), t0), Received::New { missing: 0 });
        assert_eq!(g.on_packet(SeqNo(1), t0), Received::Old);
    }

    #[test]
    fn limiter_allows_once_per_rtt() {
        let t0 = Instant::now();
        let mut l = RetransmitLimiter::default();
        assert!(l.allow(SeqNo(5), t0, ms(100)));
        assert!(!l.allow(SeqNo(5), t0 + ms(99), ms(100)));
        assert!(l.allow(SeqNo(6), t0 + ms(99), ms(100)));
        assert!(l.allow(SeqNo(5), t0 + ms(100), ms(100)));
        // The floor applies to a zero RTT.
        assert!(!l.allow(SeqNo(5), t0 + ms(119), Duration::ZERO));
        assert!(l.allow(SeqNo(5), t0 + ms(120), Duration::ZERO));
    }

    #[test]
    fn limiter_refuses_a_colliding_seq_within_the_interval() {
        let t0 = Instant::now();
        let mut l = RetransmitLimiter::new(4);
        assert!(l.allow(SeqNo(1), t0, ms(50)));
        assert!(!l.allow(SeqNo(5), t0 + ms(10), ms(50)));
        assert!(l.allow(SeqNo(5), t0 + ms(50), ms(50)));
        assert!(!l.allow(SeqNo(1), t0 + ms(60), ms(50)));
    }

    proptest! {
        /// Random arrival orders with losses and duplicates: no sequence number that was
        /// received is ever requested afterwards, nothing is requested more than
        /// MAX_TRIES times, and the list stays bounded.
        #[test]
        fn never_requests_a_received_seq(
            start in any::<u16>(),
            events in proptest::collection::vec((0u16..40, 0u64..60, any::<bool>(), 1u64..200), 1..300),
            capacity in 1usize..64,
        ) {
            let t0 = Instant::now();
            let mut g = NackGenerator::new(capacity);
            let mut received: HashSet<u16> = HashSet::new();
            let mut tries: HashMap<u16, u32> = HashMap::new();
            let mut now = t0;
            let mut base = start;
            let mut out = [SeqNo(0); 16];
            for (jump, step_ms, backwards, rtt_ms) in events {
                now += Duration::from_millis(step_ms);
                let seq = if backwards {
                    base.wrapping_sub(jump)
                } else {
                    base = base.wrapping_add(jump);
                    base
                };
                g.on_packet(SeqNo(seq), now);
                received.insert(seq);
                let n = g.poll(now, Duration::from_millis(rtt_ms), &mut out);
                prop_assert!(n <= out.len());
                for s in &out[..n] {
                    prop_assert!(!received.contains(&s.0), "requested received seq {}", s.0);
                    let t = tries.entry(s.0).or_default();
                    *t += 1;
                    prop_assert!(*t <= u32::from(MAX_TRIES));
                }
                prop_assert!(g.missing_count() <= capacity);
                if let Some(t) = g.next_timeout() {
                    prop_assert!(t + MAX_AGE >= now);
                }
            }
        }

        /// The limiter never lets one sequence number through twice within the interval.
        #[test]
        fn limiter_never_allows_twice_within_the_interval(
            capacity in 1usize..32,
            events in proptest::collection::vec((0u16..100, 0u64..40, 0u64..80), 1..400),
        ) {
            let t0 = Instant::now();
            let mut l = RetransmitLimiter::new(capacity);
            let mut last: HashMap<u16, Instant> = HashMap::new();
            let mut now = t0;
            for (seq, step_ms, rtt_ms) in events {
                now += Duration::from_millis(step_ms);
                let rtt = Duration::from_millis(rtt_ms);
                if l.allow(SeqNo(seq), now, rtt) {
                    if let Some(prev) = last.get(&seq) {
                        prop_assert!(now.duration_since(*prev) >= rtt.max(MIN_RETRY_INTERVAL));
                    }
                    last.insert(seq, now);
                }
            }
        }
    }
}
