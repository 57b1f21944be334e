//! Receive statistics of one incoming RTP stream (RFC 3550 Appendix A.1, A.3, A.8).
//!
//! The forwarder is the receiver of every publisher's streams, so it reports on them in its
//! own receiver reports (RFC 3550 §6.4.2) and uses the same numbers to judge a publisher's
//! uplink. [`ReceiveStats`] keeps, per SSRC:
//!
//! - the extended highest sequence number with its wrap count, source validation by
//!   probation, and resynchronisation after a sender restart (A.1's `update_seq`);
//! - expected, received, cumulative and interval loss (A.3);
//! - interarrival jitter (A.8), in the integer form A.8 gives, scaled by 16.
//!
//! Time is an input: arrivals are the core's `now`, converted to RTP timestamp units
//! relative to the first arrival. Nothing here reads a clock, allocates or panics.

use std::time::Instant;

use crate::ids::{SeqNo, Ssrc};
use crate::rtcp::ReportBlock;

/// Sequential packets needed before a new source is valid (RFC 3550 A.1).
pub const MIN_SEQUENTIAL: u8 = 2;
/// Largest forward jump still taken as loss rather than a restart (RFC 3550 A.1).
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still taken as reordering rather than a restart (RFC 3550 A.1).
pub const MAX_MISORDER: u16 = 100;
/// RTP sequence numbers wrap at 2^16 (RFC 3550 A.1, `RTP_SEQ_MOD`).
const SEQ_MOD: u64 = 1 << 16;
/// How far behind the highest sequence number duplicates are recognised: the width of
/// the received-packet bitmap. Beyond this a late packet is reported as reordered.
const DUPLICATE_WINDOW: u16 = 128;
/// Largest and smallest values of the 24-bit signed cumulative lost field (RFC 3550 A.3).
const CUMULATIVE_LOST_MAX: i64 = 0x7f_ffff;
const CUMULATIVE_LOST_MIN: i64 = -0x80_0000;

/// What one packet did to the sequence state (RFC 3550 A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The source is not yet validated (fewer than [`MIN_SEQUENTIAL`] packets in sequence);
    /// the packet is not counted.
    Probation,
    /// The packet advanced the highest sequence number, possibly wrapping. `skipped` is
    /// how many sequence numbers were jumped over (0 when in order): candidates for NACK.
    New {
        /// Sequence numbers between the previous highest and this one.
        skipped: u16,
    },
    /// Older than the highest sequence number and not seen before (as far as the duplicate
    /// window reaches): a late packet, possibly filling a gap. Counted.
    Reordered,
    /// Already received (within the last 128 sequence numbers). Counted, as A.3 counts
    /// duplicates, which is why cumulative loss can go negative.
    Duplicate,
    /// A jump too large to be loss or reordering; ignored (not counted) unless the next
    /// packet follows it, in which case the source is taken to have restarted.
    Jump,
    /// The packet followed a [`SeqOutcome::Jump`]: statistics restarted from it.
    Resync,
}

impl SeqOutcome {
    /// Whether A.1 counts the packet as received (it returns 1 for it).
    pub fn is_counted(self) -> bool {
        !matches!(self, SeqOutcome::Probation | SeqOutcome::Jump)
    }
}

/// Per-stream receive statistics (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone)]
pub struct ReceiveStats {
    clock_rate: u32,
    /// No packet seen yet: the next one starts probation.
    fresh: bool,
    /// Highest sequence number seen (A.1 `max_seq`).
    max_seq: u16,
    /// Wrap count, in units of 2^16 (A.1 `cycles`), kept wide so it never overflows.
    cycles: u64,
    /// First sequence number counted (A.1 `base_seq`).
    base_seq: u16,
    /// Sequence number that would confirm a restart after a jump (A.1 `bad_seq`); `None`
    /// plays the role of A.1's out-of-range `RTP_SEQ_MOD + 1`.
    bad_seq: Option<u16>,
    /// Remaining sequential packets needed (A.1 `probation`).
    probation: u8,
    /// Packets counted (A.1 `received`).
    received: u64,
    /// Baselines of the A.3 interval.
    expected_prior: u64,
    received_prior: u64,
    /// Bit i set: sequence number `max_seq - i` was received. Only for duplicate detection.
    window: u128,
    /// First arrival: the zero of the arrival clock in timestamp units.
    epoch: Option<Instant>,
    /// Previous relative transit time (A.8 `transit`), `None` until a packet sets it.
    transit: Option<u32>,
    /// Jitter scaled by 16 (A.8's integer form). Wider than the u32 it is reported in:
    /// with |D| up to 2^31 (adversarial timestamps) it settles near 2^35.
    jitter_q4: u64,
}

impl ReceiveStats {
    /// Statistics for a stream whose RTP clock runs at `clock_rate` Hz (90000 for video,
    /// 48000 for Opus). A rate of 0 disables jitter (it stays 0).
    pub fn new(clock_rate: u32) -> Self {
        ReceiveStats {
            clock_rate,
            fresh: true,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: None,
            probation: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            window: 0,
            epoch: None,
            transit: None,
            jitter_q4: 0,
        }
    }

    /// RFC 3550 A.1 `init_seq`: restart counting from `seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.window = 1;
    }

    /// Feed one authenticated packet of the stream: its sequence number, RTP timestamp and
    /// arrival time (the core's `now`). Implements A.1 `update_seq`, then A.8 for packets
    /// that are new or reordered.
    pub fn on_packet(&mut self, seq: SeqNo, rtp_timestamp: u32, arrival: Instant) -> SeqOutcome {
        let outcome = self.update_seq(seq.0);
        match outcome {
            SeqOutcome::New { .. } | SeqOutcome::Reordered => {
                self.update_jitter(rtp_timestamp, arrival);
            }
            // A restart usually brings a new RTP timestamp base too: the transit time of
            // the packets before it says nothing about the ones after.
            SeqOutcome::Resync => {
                self.transit = None;
                self.update_jitter(rtp_timestamp, arrival);
            }
            // Duplicates (retransmissions, network duplication) arrive late by nature and
            // would inflate jitter; unvalidated packets may not be from this stream at all.
            SeqOutcome::Duplicate | SeqOutcome::Probation | SeqOutcome::Jump => {}
        }
        outcome
    }

    /// RFC 3550 A.1 `update_seq`, with the duplicate window on top.
    fn update_seq(&mut self, seq: u16) -> SeqOutcome {
        if self.fresh {
            // A.1: a new source starts in probation with max_seq just before it.
            self.fresh = false;
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if udelta == 1 {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SeqOutcome::New { skipped: 0 };
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqOutcome::Probation;
        }
        let outcome = if udelta == 0 {
            SeqOutcome::Duplicate
        } else if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += 1;
            }
            self.max_seq = seq;
            self.window = if udelta < DUPLICATE_WINDOW {
                (self.window << udelta) | 1
            } else {
                1
            };
            SeqOutcome::New {
                skipped: udelta - 1,
            }
        } else if u64::from(udelta) <= SEQ_MOD - u64::from(MAX_MISORDER) {
            // A very large jump.
            if self.bad_seq == Some(seq) {
                // Two sequential packets: the sender restarted without telling us.
                self.init_seq(seq);
                self.received += 1;
                return SeqOutcome::Resync;
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            return SeqOutcome::Jump;
        } else {
            // Duplicate or reordered packet, up to MAX_MISORDER behind.
            let behind = self.max_seq.wrapping_sub(seq);
            if behind < DUPLICATE_WINDOW {
                let bit = 1u128 << behind;
                if self.window & bit != 0 {
                    SeqOutcome::Duplicate
                } else {
                    self.window |= bit;
                    SeqOutcome::Reordered
                }
            } else {
                SeqOutcome::Reordered
            }
        };
        self.received += 1;
        outcome
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, in the integer form scaled by 16.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: Instant) {
        if self.clock_rate == 0 {
            return;
        }
        let epoch = *self.epoch.get_or_insert(arrival);
        let transit = self
            .arrival_units(epoch, arrival)
            .wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            // Transit times are modulo 2^32 like RTP timestamps: their difference is small
            // and signed.
            let d = transit.wrapping_sub(previous) as i32;
            let d = u64::from(d.unsigned_abs());
            // A.8's `jitter += d - ((jitter + 8) >> 4)`, adding before subtracting so that
            // it never goes negative. jitter_q4 stays below 16 * 2^31 + 8, so no overflow.
            let decay = (self.jitter_q4 + 8) >> 4;
            self.jitter_q4 = self.jitter_q4 + d - decay;
        }
        self.transit = Some(transit);
    }

    /// Arrival time in RTP timestamp units since `epoch`, modulo 2^32 like the timestamps
    /// it is compared with. An arrival before the epoch counts as the epoch.
    fn arrival_units(&self, epoch: Instant, arrival: Instant) -> u32 {
        let elapsed = arrival.saturating_duration_since(epoch);
        let rate = u64::from(self.clock_rate);
        // nanos < 1e9 and rate < 2^32, so the product fits in u64; only the low 32 bits of
        // the total matter, so the seconds part may wrap.
        let whole = elapsed.as_secs().wrapping_mul(rate);
        let frac = u64::from(elapsed.subsec_nanos()) * rate / 1_000_000_000;
        whole.wrapping_add(frac) as u32
    }

    /// Extended highest sequence number received: wrap count in the high 16 bits (RFC 3550
    /// §6.4.1). 0 before the source is validated.
    pub fn extended_highest_seq(&self) -> u32 {
        self.extended_max() as u32
    }

    fn extended_max(&self) -> u64 {
        (self.cycles << 16) | u64::from(self.max_seq)
    }

    fn validated(&self) -> bool {
        !self.fresh && self.probation == 0
    }

    /// Packets expected since the base sequence number (RFC 3550 A.3).
    pub fn expected(&self) -> u64 {
        if !self.validated() {
            return 0;
        }
        // max_seq only moves forward from base_seq (A.1), so this does not underflow.
        self.extended_max() + 1 - u64::from(self.base_seq)
    }

    /// Packets counted as received, duplicates and late packets included (RFC 3550 A.3).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Expected minus received: negative when duplicates outnumber losses (RFC 3550 A.3).
    pub fn cumulative_lost(&self) -> i64 {
        // Both counts are far below 2^63 (one per packet).
        self.expected() as i64 - self.received as i64
    }

    /// Fraction of packets lost since the previous call, in 1/256 units as a report block
    /// carries it (RFC 3550 A.3); starts a new interval.
    pub fn take_fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        if expected_interval == 0 || received_interval >= expected_interval {
            return 0;
        }
        let lost_interval = expected_interval - received_interval;
        // A.3 computes (lost << 8) / expected, which is 256 when nothing arrived: that
        // does not fit in the 8-bit field, so clamp to 255.
        let fraction = lost_interval.saturating_mul(256) / expected_interval;
        fraction.min(255) as u8
    }

    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter in seconds.
    pub fn jitter_seconds(&self) -> f64 {
        if self.clock_rate == 0 {
            return 0.0;
        }
        // Exact: jitter_q4 < 2^36 fits in an f64 mantissa.
        self.jitter_q4 as f64 / 16.0 / f64::from(self.clock_rate)
    }

    /// One report block on this stream (RFC 3550 §6.4.1) for a receiver report. Starts a new
    /// loss interval (see [`ReceiveStats::take_fraction_lost`]). `last_sr` and
    /// `delay_since_last_sr` come from whoever tracks the sender's SRs.
    pub fn report_block(
        &mut self,
        ssrc: Ssrc,
        last_sr: u32,
        delay_since_last_sr: u32,
    ) -> ReportBlock {
        let cumulative_lost = self
            .cumulative_lost()
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX) as i32;
        ReportBlock {
            ssrc,
            fraction_lost: self.take_fraction_lost(),
            cumulative_lost,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Feed sequence numbers with a fixed timestamp/arrival pattern irrelevant to loss.
    fn feed(stats: &mut ReceiveStats, seqs: &[u16]) -> Vec<SeqOutcome> {
        let t0 = Instant::now();
        seqs.iter()
            .map(|&s| stats.on_packet(SeqNo(s), 0, t0))
            .collect()
    }

    #[test]
    fn probation_then_in_order() {
        let mut s = ReceiveStats::new(90_000);
        let out = feed(&mut s, &[100, 101, 102, 103]);
        assert_eq!(
            out,
            vec![
                SeqOutcome::Probation,
                SeqOutcome::New { skipped: 0 },
                SeqOutcome::New { skipped: 0 },
                SeqOutcome::New { skipped: 0 },
            ]
        );
        // A.1: the base is the packet that ended probation.
        assert_eq!(s.expected(), 3);
        assert_eq!(s.received(), 3);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.extended_highest_seq(), 103);
        assert_eq!(s.take_fraction_lost(), 0);
    }

    #[test]
    fn probation_restarts_on_gap() {
        let mut s = ReceiveStats::new(90_000);
        let out = feed(&mut s, &[10, 12, 13]);
        assert_eq!(
            out,
            vec![
                SeqOutcome::Probation,
                SeqOutcome::Probation,
                SeqOutcome::New { skipped: 0 }
            ]
        );
        assert_eq!(s.expected(), 1);
        assert_eq!(s.received(), 1);
    }

    #[test]
    fn nothing_before_validation() {
        let mut s = ReceiveStats::new(90_000);
        assert_eq!(s.expected(), 0);
        assert_eq!(s.take_fraction_lost(), 0);
        feed(&mut s, &[5]);
        assert_eq!(s.expected(), 0);
        assert_eq!(s.received(), 0);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn loss_and_fraction() {
        let mut s = ReceiveStats::new(90_000);
        feed(&mut s, &[0, 1]);
        // Interval 1: 2..=9 expected (plus the base 1), 4 of them missing.
        let out = feed(&mut s, &[2, 3, 8, 9]);
        assert_eq!(out[2], SeqOutcome::New { skipped: 4 });
        assert_eq!(s.expected(), 9);
        assert_eq!(s.received(), 5);
        assert_eq!(s.cumulative_lost(), 4);
        assert_eq!(s.take_fraction_lost(), (4 * 256 / 9) as u8);
        // Interval 2: nothing lost.
        feed(&mut s, &[10, 11]);
        assert_eq!(s.take_fraction_lost(), 0);
        // Interval 3: 3 expected, 1 received.
        feed(&mut s, &[14]);
        assert_eq!(s.take_fraction_lost(), (2 * 256 / 3) as u8);
        // Interval 4: no packet at all expected.
        assert_eq!(s.take_fraction_lost(), 0);
    }

    #[test]
    fn fraction_lost_intervals() {
        let mut s = ReceiveStats::new(90_000);
        feed(&mut s, &[0, 1]);
        s.take_fraction_lost();
        // Expected grows by 10 with one received packet, so 9/10 lost: 230.
        feed(&mut s, &[11]);
        assert_eq!(s.take_fraction_lost(), 230);
        // A late packet filling a gap of a previous interval makes the interval's received
        // count exceed its expected count: A.3 says 0.
        feed(&mut s, &[5]);
        assert_eq!(s.take_fraction_lost(), 0);
    }

    #[test]
    fn reordering_fills_gaps() {
        let mut s = ReceiveStats::new(90_000);
        let out = feed(&mut s, &[0, 1, 3, 2, 5, 4]);
        assert_eq!(out[2], SeqOutcome::New { skipped: 1 });
        assert_eq!(out[3], SeqOutcome::Reordered);
        assert_eq!(out[5], SeqOutcome::Reordered);
        assert_eq!(s.extended_highest_seq(), 5);
        assert_eq!(s.expected(), 5);
        assert_eq!(s.received(), 5);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn duplicates_make_loss_negative() {
        let mut s = ReceiveStats::new(90_000);
        let out = feed(&mut s, &[0, 1, 2, 2, 1, 3]);
        assert_eq!(out[3], SeqOutcome::Duplicate);
        assert_eq!(out[4], SeqOutcome::Duplicate);
        assert_eq!(out[5], SeqOutcome::New { skipped: 0 });
        assert_eq!(s.expected(), 3);
        assert_eq!(s.received(), 5);
        assert_eq!(s.cumulative_lost(), -2);
        let block = s.report_block(Ssrc(1), 0, 0);
        assert_eq!(block.cumulative_lost, -2);
        assert_eq!(block.fraction_lost, 0);
    }

    #[test]
    fn wraparound_counts_cycles() {
        let mut s = ReceiveStats::new(90_000);
        let out = feed(&mut s, &[65533, 65534, 65535, 0, 1, 65535, 3]);
        assert_eq!(out[3], SeqOutcome::New { skipped: 0 });
        assert_eq!(out[5], SeqOutcome::Duplicate);
        assert_eq!(out[6], SeqOutcome::New { skipped: 1 });
        assert_eq!(s.extended_highest_seq(), (1 << 16) | 3);
        // Base 65534 .. 65536+3 is 6 expected; 65534, 65535, 0, 1, dup, 3 = 6 received.
        assert_eq!(s.expected(), 6);
        assert_eq!(s.received(), 6);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn many_wraps() {
        let mut s = ReceiveStats::new(90_000);
        let t0 = Instant::now();
        let mut seq = 0u16;
        for _ in 0..(3 * 65536 + 10) {
            s.on_packet(SeqNo(seq), 0, t0);
            seq = seq.wrapping_add(1);
        }
        assert_eq!(s.extended_highest_seq(), (3 << 16) | 9);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn large_jump_then_resync() {
        let mut s = ReceiveStats::new(90_000);
        feed(&mut s, &[1000, 1001, 1002]);
        // One stray packet far away is ignored.
        assert_eq!(feed(&mut s, &[40_000]), vec![SeqOutcome::Jump]);
        assert_eq!(feed(&mut s, &[1003]), vec![SeqOutcome::New { skipped: 0 }]);
        assert_eq!(s.received(), 3);
        // Two sequential packets far away: the sender restarted.
        let out = feed(&mut s, &[20_000, 20_001, 20_002]);
        assert_eq!(
            out,
            vec![
                SeqOutcome::Jump,
                SeqOutcome::Resync,
                SeqOutcome::New { skipped: 0 }
            ]
        );
        assert_eq!(s.extended_highest_seq(), 20_002);
        assert_eq!(s.expected(), 2);
        assert_eq!(s.received(), 2);
        // A jump just below MAX_DROPOUT is loss, not a restart.
        let out = feed(&mut s, &[20_002 + MAX_DROPOUT - 1]);
        assert_eq!(
            out,
            vec![SeqOutcome::New {
                skipped: MAX_DROPOUT - 2
            }]
        );
        // Further back than MAX_MISORDER is a jump.
        let back = (20_002 + MAX_DROPOUT - 1) - MAX_MISORDER - 1;
        assert_eq!(feed(&mut s, &[back]), vec![SeqOutcome::Jump]);
        assert_eq!(
            feed(&mut s, &[back + MAX_MISORDER]),
            vec![SeqOutcome::Reordered]
        );
    }

    /// A.8 recomputed in floating point, independently of the integer form under test.
    fn reference_jitter(packets: &[(u32, f64)], clock_rate: f64) -> f64 {
        let mut jitter = 0.0f64;
        let mut prev: Option<f64> = None;
        for &(ts, arrival_s) in packets {
            let transit = arrival_s * clock_rate - f64::from(ts);
            if let Some(p) = prev {
                jitter += ((transit - p).abs() - jitter) / 16.0;
            }
            prev = Some(transit);
        }
        jitter
    }

    #[test]
    fn jitter_converges_for_alternating_delay() {
        // 50 packets/s of 90 kHz video, every other packet delayed by 4 ms: |D| is always
        // 360 timestamp units, so J converges to 360 (J = J + (360 - J)/16).
        let clock_rate = 90_000;
        let mut s = ReceiveStats::new(clock_rate);
        let t0 = Instant::now();
        let mut pattern = Vec::new();
        for i in 0..400u32 {
            let ts = 12_345u32.wrapping_add(i * 1800);
            let delay_ms = if i % 2 == 1 { 4 } else { 0 };
            let arrival_ms = u64::from(i) * 20 + delay_ms;
            s.on_packet(SeqNo(i as u16), ts, t0 + Duration::from_millis(arrival_ms));
            // Probation swallows the first packet, as in the implementation under test.
            if i > 0 {
                pattern.push((ts, arrival_ms as f64 / 1000.0));
            }
        }
        let want = reference_jitter(&pattern, f64::from(clock_rate));
        assert!((want - 360.0).abs() < 0.5, "reference {want}");
        let got = s.jitter();
        assert!(
            (f64::from(got) - want).abs() <= 2.0,
            "jitter {got}, want {want}"
        );
        assert!((s.jitter_seconds() - 0.004).abs() < 0.0001);
    }

    #[test]
    fn jitter_zero_for_perfect_pacing_and_timestamp_wrap() {
        let clock_rate = 48_000;
        let mut s = ReceiveStats::new(clock_rate);
        let t0 = Instant::now();
        // Timestamps start just below 2^32 and wrap.
        for i in 0..200u32 {
            let ts = (u32::MAX - 10_000).wrapping_add(i * 960);
            s.on_packet(
                SeqNo(i as u16),
                ts,
                t0 + Duration::from_millis(u64::from(i) * 20),
            );
        }
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn jitter_random_pattern_matches_reference() {
        // Deterministic pseudo-random delays (an LCG), compared with the float reference.
        let clock_rate = 90_000;
        let mut s = ReceiveStats::new(clock_rate);
        let t0 = Instant::now();
        let mut lcg = 12_345u64;
        let mut pattern = Vec::new();
        for i in 0..1000u32 {
            lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let delay_us = (lcg >> 33) % 30_000;
            let ts = i * 3000;
            let arrival_us = u64::from(i) * 33_333 + delay_us;
            s.on_packet(SeqNo(i as u16), ts, t0 + Duration::from_micros(arrival_us));
            if i > 0 {
                pattern.push((ts, arrival_us as f64 / 1e6));
            }
        }
        let want = reference_jitter(&pattern, f64::from(clock_rate));
        let got = f64::from(s.jitter());
        // The integer form rounds each step; it tracks the float one within a few units.
        assert!(
            (got - want).abs() <= want * 0.02 + 2.0,
            "jitter {got}, want {want}"
        );
    }

    #[test]
    fn report_block_fields() {
        let mut s = ReceiveStats::new(90_000);
        feed(&mut s, &[0, 1, 2, 5]);
        let block = s.report_block(Ssrc(42), 0x1234_5678, 655);
        assert_eq!(block.ssrc, Ssrc(42));
        assert_eq!(block.fraction_lost, (2 * 256 / 5) as u8);
        assert_eq!(block.cumulative_lost, 2);
        assert_eq!(block.extended_highest_seq, 5);
        assert_eq!(block.last_sr, 0x1234_5678);
        assert_eq!(block.delay_since_last_sr, 655);
        // The interval restarted.
        assert_eq!(s.report_block(Ssrc(42), 0, 0).fraction_lost, 0);
    }

    #[test]
    fn zero_clock_rate_is_harmless() {
        let mut s = ReceiveStats::new(0);
        let t0 = Instant::now();
        for i in 0..10u16 {
            s.on_packet(
                SeqNo(i),
                u32::from(i) * 77,
                t0 + Duration::from_millis(u64::from(i) * 13),
            );
        }
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.jitter_seconds(), 0.0);
    }

    #[test]
    fn arrival_before_epoch_does_not_panic() {
        let mut s = ReceiveStats::new(90_000);
        let t0 = Instant::now() + Duration::from_secs(10);
        s.on_packet(SeqNo(0), 0, t0);
        s.on_packet(SeqNo(1), 0, t0);
        s.on_packet(SeqNo(2), 0, t0 - Duration::from_secs(5));
        assert!(s.jitter() < 1000);
    }

    proptest! {
        #[test]
        fn random_sequences_never_panic(
            packets in proptest::collection::vec((any::<u16>(), any::<u32>(), 0u64..10_000_000), 0..500),
            clock_rate in prop_oneof![Just(0u32), Just(8000), Just(90_000), any::<u32>()],
        ) {
            let mut s = ReceiveStats::new(clock_rate);
            let t0 = Instant::now();
            for (i, &(seq, ts, micros)) in packets.iter().enumerate() {
                let outcome = s.on_packet(SeqNo(seq), ts, t0 + Duration::from_micros(micros));
                let _ = outcome.is_counted();
                prop_assert!(s.received() <= i as u64 + 1);
                if i % 17 == 0 {
                    let block = s.report_block(Ssrc(1), 0, 0);
                    prop_assert!((CUMULATIVE_LOST_MIN..=CUMULATIVE_LOST_MAX)
                        .contains(&i64::from(block.cumulative_lost)));
                }
                let _ = (s.expected(), s.cumulative_lost(), s.jitter_seconds());
            }
            prop_assert!(s.received() <= packets.len() as u64);
        }

        /// In-sequence packets with arbitrary timestamps and arrivals: jitter arithmetic at
        /// its extremes (|D| near 2^31 every packet).
        #[test]
        fn extreme_timing_never_panics(
            start in any::<u16>(),
            packets in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..300),
            clock_rate in any::<u32>(),
        ) {
            let mut s = ReceiveStats::new(clock_rate);
            let t0 = Instant::now();
            let mut seq = start;
            for &(ts, nanos) in &packets {
                let arrival = t0.checked_add(Duration::from_nanos(nanos)).unwrap_or(t0);
                s.on_packet(SeqNo(seq), ts, arrival);
                seq = seq.wrapping_add(1);
                let _ = (s.jitter(), s.jitter_seconds());
            }
            prop_assert!(s.received() <= packets.len() as u64);
        }

        /// Mostly-increasing streams with small random steps, like a real lossy, reordering
        /// network: without duplicates, received never exceeds expected.
        #[test]
        fn lossy_stream_accounting(start in any::<u16>(), steps in proptest::collection::vec(1u16..5, 2..2000)) {
            let mut s = ReceiveStats::new(90_000);
            let t0 = Instant::now();
            let mut seq = start;
            s.on_packet(SeqNo(seq), 0, t0);
            seq = seq.wrapping_add(1);
            s.on_packet(SeqNo(seq), 0, t0);
            let mut total: u64 = 1;
            for step in steps {
                seq = seq.wrapping_add(step);
                total += u64::from(step);
                prop_assert_eq!(s.on_packet(SeqNo(seq), 0, t0), SeqOutcome::New { skipped: step - 1 });
            }
            prop_assert_eq!(s.expected(), total);
            prop_assert!(s.received() <= s.expected());
            // The base is the second packet (A.1 probation), which starts cycle 0.
            let base = u64::from(start.wrapping_add(1));
            prop_assert_eq!(u64::from(s.extended_highest_seq()), base + total - 1);
        }
    }
}
