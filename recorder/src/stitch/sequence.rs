//! Per-stream ordering: extended sequence numbers and timestamps (RFC 3550 A.1), duplicate
//! removal, a reorder window, and segments.
//!
//! A *segment* is a stretch of one stream over which the RTP sequence and timestamp spaces
//! are continuous, so one anchor maps its RTP time onto the wall clock. A new segment
//! starts when the SSRC changes (a forwarder failover may renumber), when the sequence
//! number jumps forward by more than [`MAX_DROPOUT`], or when the RTP timestamp stops
//! agreeing with the arrival clock by more than the resync threshold (a sender restart
//! with the same SSRC). The last two must be confirmed by a second packet that continues
//! from the first (RFC 3550 A.1's probation), so one stray packet cannot split a stream.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use super::rtp::RtpHeader;

/// RFC 3550 A.1: a forward jump of more than this many sequence numbers is a restart,
/// not loss.
pub(crate) const MAX_DROPOUT: i64 = 3000;
/// How many recently released sequence numbers are remembered to tell a duplicate from
/// a packet that came too late.
const RELEASED_HISTORY: i64 = 1024;
/// SSRCs of earlier segments remembered to recognise stale packets of an old source.
const RETIRED_SSRCS: usize = 8;

/// Tunables of the [`Sequencer`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SequencerConfig {
    pub clock_rate: u32,
    /// A packet waits at most this long (in arrival time of later packets) for a missing
    /// predecessor before the gap is given up as loss.
    pub reorder_window_micros: u64,
    /// At most this many packets wait in the reorder buffer.
    pub max_buffered: usize,
    /// An RTP timestamp that disagrees with the arrival clock by more than this starts a
    /// new segment.
    pub resync_micros: u64,
}

/// One packet in sequence order, with its extended numbers.
#[derive(Debug, Clone)]
pub(crate) struct SequencedPacket {
    pub segment: u32,
    pub ext_seq: i64,
    pub ext_timestamp: i64,
    pub arrival_micros: u64,
    pub marker: bool,
    pub rtp: Vec<u8>,
    pub payload: Range<usize>,
}

impl SequencedPacket {
    pub fn payload(&self) -> &[u8] {
        self.rtp.get(self.payload.clone()).unwrap_or_default()
    }
}

/// What the sequencer dropped or did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SequencerStats {
    pub duplicates: u64,
    pub late: u64,
    pub stale_source: u64,
    /// Packets that jumped out of their segment and were not confirmed by the next one.
    pub unconfirmed_jumps: u64,
    pub segments: u32,
}

/// RTP time in microseconds (floor), exact for any clock rate; `clock_rate` is never 0
/// (the caller drops such packets).
pub(crate) fn rtp_micros(ext_timestamp: i64, clock_rate: u32) -> i64 {
    let micros = i128::from(ext_timestamp) * 1_000_000;
    i64::try_from(micros.div_euclid(i128::from(clock_rate.max(1)))).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, Copy)]
struct SegmentState {
    id: u32,
    ssrc: u32,
    /// The extended number and raw value of the highest sequence number accepted.
    highest_seq: i64,
    highest_raw: u16,
    /// Timestamp extension reference: the raw and extended timestamp of the packet with
    /// the highest sequence number, and when it arrived.
    ts_raw: u32,
    ts_ext: i64,
    ts_arrival: u64,
    first_arrival: u64,
}

impl SegmentState {
    fn start(id: u32, header: &RtpHeader, arrival: u64) -> SegmentState {
        SegmentState {
            id,
            ssrc: header.ssrc,
            highest_seq: i64::from(header.sequence),
            highest_raw: header.sequence,
            ts_raw: header.timestamp,
            ts_ext: i64::from(header.timestamp),
            ts_arrival: arrival,
            first_arrival: arrival,
        }
    }

    fn extend(&self, header: &RtpHeader) -> (i64, i64) {
        let seq_delta = i64::from(header.sequence.wrapping_sub(self.highest_raw) as i16);
        // Reinterpreting the wrapped difference as signed is RFC 3550 A.1's rule: the
        // nearer of the two candidates in modular arithmetic.
        let ts_delta = i64::from(header.timestamp.wrapping_sub(self.ts_raw) as i32);
        (self.highest_seq + seq_delta, self.ts_ext + ts_delta)
    }

    /// How far the packet's RTP time is from what its arrival predicts, in microseconds.
    fn timing_error(&self, ext_ts: i64, arrival: u64, clock_rate: u32) -> u64 {
        let rtp_elapsed = rtp_micros(ext_ts, clock_rate) - rtp_micros(self.ts_ext, clock_rate);
        let arrival_elapsed = arrival as i64 - self.ts_arrival as i64;
        rtp_elapsed.abs_diff(arrival_elapsed)
    }

    fn accept(&mut self, header: &RtpHeader, ext_seq: i64, ext_ts: i64, arrival: u64) {
        if ext_seq > self.highest_seq {
            self.highest_seq = ext_seq;
            self.highest_raw = header.sequence;
            self.ts_raw = header.timestamp;
            self.ts_ext = ext_ts;
            self.ts_arrival = arrival;
        }
    }
}

/// A packet that left its segment, waiting for the next one to confirm the jump.
#[derive(Debug)]
struct Probation {
    header: RtpHeader,
    arrival: u64,
    rtp: Vec<u8>,
}

/// Orders one stream's packets. Push packets in the order they were recorded; ordered
/// packets come out, each exactly once, with extended sequence numbers increasing within
/// a segment.
#[derive(Debug)]
pub(crate) struct Sequencer {
    config: SequencerConfig,
    segment: Option<SegmentState>,
    probation: Option<Probation>,
    buffer: BTreeMap<i64, SequencedPacket>,
    /// The next extended sequence number to release; packets below it are late or
    /// duplicates. `None` until the first release of a segment.
    floor: Option<i64>,
    /// Bit i set: extended sequence number with `ext % RELEASED_HISTORY == i` was released
    /// (for numbers in `floor - RELEASED_HISTORY .. floor`).
    released: [u64; (RELEASED_HISTORY / 64) as usize],
    newest_arrival: u64,
    retired_ssrcs: VecDeque<u32>,
    pub stats: SequencerStats,
}

impl Sequencer {
    pub fn new(config: SequencerConfig) -> Sequencer {
        Sequencer {
            config,
            segment: None,
            probation: None,
            buffer: BTreeMap::new(),
            floor: None,
            released: [0; (RELEASED_HISTORY / 64) as usize],
            newest_arrival: 0,
            retired_ssrcs: VecDeque::new(),
            stats: SequencerStats::default(),
        }
    }

    /// Takes one packet; appends what can be released, in order, to `out`.
    pub fn push(
        &mut self,
        header: RtpHeader,
        arrival: u64,
        rtp: Vec<u8>,
        out: &mut Vec<SequencedPacket>,
    ) {
        let Some(segment) = self.segment else {
            self.start_segment(&header, arrival, out);
            self.insert(&header, arrival, rtp, out);
            return;
        };
        if header.ssrc != segment.ssrc {
            // Packets of an SSRC we left for a newer one, from chunks that overlap the
            // switch in time: the newer source covers that time.
            let overlap_end = segment
                .first_arrival
                .saturating_add(self.config.resync_micros);
            if self.retired_ssrcs.contains(&header.ssrc) && arrival < overlap_end {
                self.stats.stale_source += 1;
                return;
            }
            self.stats.unconfirmed_jumps += u64::from(self.probation.take().is_some());
            self.start_segment(&header, arrival, out);
            self.insert(&header, arrival, rtp, out);
            return;
        }
        let (ext_seq, ext_ts) = segment.extend(&header);
        let jumped = ext_seq - segment.highest_seq > MAX_DROPOUT
            || segment.timing_error(ext_ts, arrival, self.config.clock_rate)
                > self.config.resync_micros;
        if !jumped {
            self.stats.unconfirmed_jumps += u64::from(self.probation.take().is_some());
            self.insert(&header, arrival, rtp, out);
            return;
        }
        match self.probation.take() {
            Some(candidate) if self.continues(&candidate, &header, arrival) => {
                self.start_segment(&candidate.header, candidate.arrival, out);
                self.insert(&candidate.header, candidate.arrival, candidate.rtp, out);
                self.insert(&header, arrival, rtp, out);
            }
            previous => {
                self.stats.unconfirmed_jumps += u64::from(previous.is_some());
                self.probation = Some(Probation {
                    header,
                    arrival,
                    rtp,
                });
            }
        }
    }

    /// Whether `header` follows the probation candidate closely in sequence and time.
    fn continues(&self, candidate: &Probation, header: &RtpHeader, arrival: u64) -> bool {
        let probe = SegmentState::start(0, &candidate.header, candidate.arrival);
        let (ext_seq, ext_ts) = probe.extend(header);
        let seq_step = ext_seq - probe.highest_seq;
        (1..=MAX_DROPOUT).contains(&seq_step)
            && probe.timing_error(ext_ts, arrival, self.config.clock_rate)
                <= self.config.resync_micros
    }

    fn start_segment(&mut self, header: &RtpHeader, arrival: u64, out: &mut Vec<SequencedPacket>) {
        self.flush(out);
        if let Some(old) = self.segment {
            if old.ssrc != header.ssrc && !self.retired_ssrcs.contains(&old.ssrc) {
                if self.retired_ssrcs.len() == RETIRED_SSRCS {
                    self.retired_ssrcs.pop_front();
                }
                self.retired_ssrcs.push_back(old.ssrc);
            }
        }
        let id = self.stats.segments;
        self.stats.segments += 1;
        self.segment = Some(SegmentState::start(id, header, arrival));
        self.floor = None;
        self.released = [0; (RELEASED_HISTORY / 64) as usize];
    }

    fn insert(
        &mut self,
        header: &RtpHeader,
        arrival: u64,
        rtp: Vec<u8>,
        out: &mut Vec<SequencedPacket>,
    ) {
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        let (ext_seq, ext_ts) = segment.extend(header);
        if let Some(floor) = self.floor {
            if ext_seq < floor {
                if floor - ext_seq <= RELEASED_HISTORY && bit(&self.released, ext_seq) {
                    self.stats.duplicates += 1;
                } else {
                    self.stats.late += 1;
                }
                return;
            }
        }
        if self.buffer.contains_key(&ext_seq) {
            self.stats.duplicates += 1;
            return;
        }
        segment.accept(header, ext_seq, ext_ts, arrival);
        let segment_id = segment.id;
        self.newest_arrival = self.newest_arrival.max(arrival);
        self.buffer.insert(
            ext_seq,
            SequencedPacket {
                segment: segment_id,
                ext_seq,
                ext_timestamp: ext_ts,
                arrival_micros: arrival,
                marker: header.marker,
                rtp,
                payload: header.payload.clone(),
            },
        );
        self.release(out, false);
    }

    /// Releases the head of the buffer while it is the next number, or has waited long
    /// enough, or the buffer is full; everything with `all`.
    fn release(&mut self, out: &mut Vec<SequencedPacket>, all: bool) {
        loop {
            let full = self.buffer.len() > self.config.max_buffered;
            let Some(entry) = self.buffer.first_entry() else {
                return;
            };
            let head = *entry.key();
            let in_order = self.floor == Some(head);
            let waited = entry
                .get()
                .arrival_micros
                .saturating_add(self.config.reorder_window_micros)
                <= self.newest_arrival;
            if !(all || in_order || waited || full) {
                return;
            }
            let packet = entry.remove();
            let from = self.floor.unwrap_or(head).max(head - RELEASED_HISTORY);
            for skipped in from..head {
                clear_bit(&mut self.released, skipped);
            }
            set_bit(&mut self.released, head);
            self.floor = Some(head + 1);
            out.push(packet);
        }
    }

    /// Releases everything buffered (end of a segment or of the input). A packet still on
    /// probation is given up.
    pub fn flush(&mut self, out: &mut Vec<SequencedPacket>) {
        self.release(out, true);
    }

    /// End of input: releases everything, counting a last unconfirmed jump.
    pub fn finish(&mut self, out: &mut Vec<SequencedPacket>) {
        self.stats.unconfirmed_jumps += u64::from(self.probation.take().is_some());
        self.flush(out);
    }
}

fn bit_position(ext_seq: i64) -> (usize, u64) {
    let index = ext_seq.rem_euclid(RELEASED_HISTORY) as usize;
    (index / 64, 1 << (index % 64))
}

fn bit(bits: &[u64], ext_seq: i64) -> bool {
    let (word, mask) = bit_position(ext_seq);
    bits[word] & mask != 0
}

fn set_bit(bits: &mut [u64], ext_seq: i64) {
    let (word, mask) = bit_position(ext_seq);
    bits[word] |= mask;
}

fn clear_bit(bits: &mut [u64], ext_seq: i64) {
    let (word, mask) = bit_position(ext_seq);
    bits[word] &= !mask;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stitch::rtp;
    use proptest::prelude::*;

    const CONFIG: SequencerConfig = SequencerConfig {
        clock_rate: 90_000,
        reorder_window_micros: 100_000,
        max_buffered: 64,
        resync_micros: 3_000_000,
    };

    /// A packet of a 30 fps stream: frame `n` at `n * 3000` RTP ticks, arriving on time.
    fn packet(ssrc: u32, seq: u16, ts: u32, arrival: u64) -> (RtpHeader, u64, Vec<u8>) {
        let bytes = rtp::build_packet(false, 96, seq, ts, ssrc, &seq.to_be_bytes());
        (rtp::parse(&bytes).unwrap(), arrival, bytes)
    }

    fn run(
        sequencer: &mut Sequencer,
        packets: Vec<(RtpHeader, u64, Vec<u8>)>,
    ) -> Vec<SequencedPacket> {
        let mut out = Vec::new();
        for (header, arrival, bytes) in packets {
            sequencer.push(header, arrival, bytes, &mut out);
        }
        sequencer.finish(&mut out);
        out
    }

    #[test]
    fn extends_sequence_and_timestamp_across_wrap() {
        let start_seq = 65_530u16;
        let start_ts = u32::MAX - 6000;
        let packets = (0..12u16)
            .map(|i| {
                packet(
                    7,
                    start_seq.wrapping_add(i),
                    start_ts.wrapping_add(3000 * u32::from(i)),
                    1_000_000 + 33_333 * u64::from(i),
                )
            })
            .collect();
        let out = run(&mut Sequencer::new(CONFIG), packets);
        let seqs: Vec<i64> = out.iter().map(|p| p.ext_seq).collect();
        let expected: Vec<i64> = (0..12).map(|i| 65_530 + i).collect();
        assert_eq!(seqs, expected);
        let timestamps: Vec<i64> = out.iter().map(|p| p.ext_timestamp).collect();
        let expected: Vec<i64> = (0..12).map(|i| i64::from(start_ts) + 3000 * i).collect();
        assert_eq!(timestamps, expected);
        assert!(out.iter().all(|p| p.segment == 0));
    }

    #[test]
    fn undoes_reordering_and_drops_duplicates() {
        let order = [0u16, 2, 1, 1, 3, 5, 4, 0, 6, 6];
        let packets = order
            .iter()
            .map(|&i| packet(7, i, 3000 * u32::from(i), 1_000 * u64::from(i)))
            .collect();
        let mut sequencer = Sequencer::new(CONFIG);
        let out = run(&mut sequencer, packets);
        let seqs: Vec<i64> = out.iter().map(|p| p.ext_seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(sequencer.stats.duplicates, 3);
        assert_eq!(sequencer.stats.late, 0);
    }

    #[test]
    fn gives_up_a_gap_after_the_window_and_counts_late_arrivals() {
        let mut sequencer = Sequencer::new(CONFIG);
        let mut out = Vec::new();
        for (seq, arrival) in [(0u16, 0u64), (2, 10_000), (3, 200_000), (1, 210_000)] {
            let (header, arrival, bytes) = packet(7, seq, u32::from(seq) * 90, arrival);
            sequencer.push(header, arrival, bytes, &mut out);
        }
        sequencer.finish(&mut out);
        let seqs: Vec<i64> = out.iter().map(|p| p.ext_seq).collect();
        assert_eq!(
            seqs,
            vec![0, 2, 3],
            "1 was given up as lost when 2 had waited 100 ms"
        );
        assert_eq!(sequencer.stats.late, 1);
    }

    #[test]
    fn ssrc_change_starts_a_segment_and_old_ssrc_is_stale() {
        let packets = vec![
            packet(1, 100, 0, 0),
            packet(1, 101, 3000, 33_000),
            packet(2, 9000, 500, 40_000),
            packet(1, 102, 6000, 50_000),
            packet(2, 9001, 3500, 73_000),
        ];
        let mut sequencer = Sequencer::new(CONFIG);
        let out = run(&mut sequencer, packets);
        let got: Vec<(u32, i64)> = out.iter().map(|p| (p.segment, p.ext_seq)).collect();
        assert_eq!(got, vec![(0, 100), (0, 101), (1, 9000), (1, 9001)]);
        assert_eq!(sequencer.stats.stale_source, 1);
        assert_eq!(sequencer.stats.segments, 2);
    }

    #[test]
    fn confirmed_timestamp_jump_starts_a_segment_a_lone_one_is_dropped() {
        let packets = vec![
            packet(1, 10, 0, 0),
            packet(1, 11, 3000, 33_000),
            // A stray packet with a wild timestamp: not followed by its successor.
            packet(1, 12, 3_000_000_000, 66_000),
            packet(1, 13, 9000, 100_000),
            // A restart: timestamps jump and stay there.
            packet(1, 14, 1_000_000, 133_000),
            packet(1, 15, 1_003_000, 166_000),
        ];
        let mut sequencer = Sequencer::new(CONFIG);
        let out = run(&mut sequencer, packets);
        let got: Vec<(u32, i64)> = out.iter().map(|p| (p.segment, p.ext_seq)).collect();
        assert_eq!(got, vec![(0, 10), (0, 11), (0, 13), (1, 14), (1, 15)]);
        assert_eq!(sequencer.stats.unconfirmed_jumps, 1);
    }

    #[test]
    fn overlapping_chunk_with_the_same_ssrc_only_adds_duplicates() {
        // Forwarder A recorded 0..20, forwarder B (after a failover) 10..30 of the same
        // source: the stream continues in one segment.
        let a = (0..20u16).map(|i| packet(5, i, 3000 * u32::from(i), 33_333 * u64::from(i)));
        let b =
            (10..30u16).map(|i| packet(5, i, 3000 * u32::from(i), 33_333 * u64::from(i) + 2_000));
        let mut sequencer = Sequencer::new(CONFIG);
        let out = run(&mut sequencer, a.chain(b).collect());
        let seqs: Vec<i64> = out.iter().map(|p| p.ext_seq).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<i64>>());
        assert_eq!(sequencer.stats.duplicates + sequencer.stats.late, 10);
        assert_eq!(sequencer.stats.segments, 1);
    }

    proptest! {
        /// Whatever the order, duplication and loss, each packet comes out at most once and
        /// within a segment in increasing order.
        #[test]
        fn output_is_unique_and_increasing(
            start in any::<u16>(),
            ops in proptest::collection::vec((0u16..200, 0u64..50_000), 1..300),
        ) {
            let packets = ops.iter().enumerate().map(|(i, &(offset, jitter))| {
                let seq = start.wrapping_add(offset);
                packet(3, seq, u32::from(offset) * 3000, 33_333 * u64::from(offset) + jitter + i as u64)
            }).collect();
            let out = run(&mut Sequencer::new(CONFIG), packets);
            for pair in out.windows(2) {
                if pair[0].segment == pair[1].segment {
                    prop_assert!(pair[0].ext_seq < pair[1].ext_seq);
                }
            }
            let mut raw: Vec<u16> = out.iter().map(|p| p.ext_seq as u16).collect();
            let before = raw.len();
            raw.sort_unstable();
            raw.dedup();
            prop_assert_eq!(raw.len(), before);
        }
    }
}
