//! A subscription: one outbound copy of a track to one subscriber leg, with its own SSRC,
//! sequence numbers and timestamps.
//!
//! The subscriber must see one continuous RTP stream (RFC 3550 §5.1: sequence numbers
//! increment by one per packet, timestamps follow the sampling clock) for as long as the
//! subscription lives, even when the packets come from another source: the subscription
//! re-pointed at another track, or the publisher's stream restarted with another SSRC. The
//! [`Rewriter`] keeps that promise with a pair of offsets per source.

use std::time::Instant;

use crate::codec::{Codec, FrameInfo, PictureIdMunger};
use crate::ids::{LegId, SeqNo, Ssrc, TrackId};
use crate::policy::layers::LayerSelector;
use crate::policy::nack::RetransmitLimiter;

/// What [`Rewriter::rewrite`] decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward with these header values.
    Forward { sequence: SeqNo, timestamp: u32 },
    /// Drop: the packet precedes the point where its source was spliced in (its sequence
    /// number would collide with one the previous source already used), was skipped
    /// already, or is too old to place among the skipped ones.
    Stale,
}

/// Skipped packets remembered per splice. Output sequence numbers close the gaps that
/// skipped packets (dropped temporal or spatial layers) leave, so a reordered packet
/// arriving after a skip must know how many skips precede it; beyond this many, packets
/// older than the oldest remembered skip are stale.
const MAX_SKIPS: usize = 32;

/// Extended sequence numbers (counted from the splice point) of recently skipped packets,
/// in ascending order, plus how many older ones were forgotten.
#[derive(Debug, Clone)]
struct Skips {
    ring: [i64; MAX_SKIPS],
    start: usize,
    len: usize,
    forgotten: i64,
}

impl Skips {
    const EMPTY: Skips = Skips {
        ring: [0; MAX_SKIPS],
        start: 0,
        len: 0,
        forgotten: 0,
    };

    fn get(&self, i: usize) -> i64 {
        self.ring[(self.start + i) % MAX_SKIPS]
    }

    fn oldest(&self) -> Option<i64> {
        (self.len > 0).then(|| self.get(0))
    }

    /// Skipped packets before `ext`.
    fn count_below(&self, ext: i64) -> i64 {
        // Few entries and mostly appended in order: a scan from the newest end is short.
        let mut n = 0;
        for i in (0..self.len).rev() {
            if self.get(i) < ext {
                n = i + 1;
                break;
            }
        }
        self.forgotten + n as i64
    }

    fn contains(&self, ext: i64) -> bool {
        (0..self.len).any(|i| self.get(i) == ext)
    }

    fn insert(&mut self, ext: i64) {
        if self.contains(ext) {
            return;
        }
        if self.len == MAX_SKIPS {
            self.start = (self.start + 1) % MAX_SKIPS;
            self.len -= 1;
            self.forgotten += 1;
        }
        // Keep ascending order: shift newer entries up by one (rarely more than none).
        let mut i = self.len;
        while i > 0 && self.get(i - 1) > ext {
            self.ring[(self.start + i) % MAX_SKIPS] = self.get(i - 1);
            i -= 1;
        }
        self.ring[(self.start + i) % MAX_SKIPS] = ext;
        self.len += 1;
    }
}

/// How one source's sequence/timestamp space maps onto the subscription's.
///
/// Input sequence numbers are extended relative to the splice point (0 = the first packet
/// forwarded from this source), which keeps comparisons right however long the stream
/// runs. Output = `first_out` + extended input - skipped packets before it.
#[derive(Debug, Clone)]
struct Splice {
    source: Ssrc,
    first_in: SeqNo,
    first_out: SeqNo,
    /// Highest input sequence number seen, and its extended value.
    highest_seq: SeqNo,
    highest_ext: i64,
    ts_offset: u32,
    skips: Skips,
}

impl Splice {
    fn extend(&self, seq: SeqNo) -> i64 {
        self.highest_ext + i64::from(self.highest_seq.delta_to(seq))
    }

    fn observe(&mut self, seq: SeqNo, ext: i64) {
        if ext > self.highest_ext {
            self.highest_seq = seq;
            self.highest_ext = ext;
        }
    }

    fn output(&self, ext: i64) -> SeqNo {
        let out_ext = ext - self.skips.count_below(ext);
        SeqNo(self.first_out.0.wrapping_add(out_ext as u16))
    }

    /// Whether a packet at `ext` can no longer be placed: before the splice, or older
    /// than the skips remembered.
    fn is_stale(&self, ext: i64) -> bool {
        ext < 0 || (self.skips.forgotten > 0 && self.skips.oldest().is_some_and(|o| ext < o))
    }
}

/// Rewrites sequence numbers and timestamps of one subscription.
#[derive(Debug, Clone)]
pub struct Rewriter {
    splice: Option<Splice>,
    /// Highest sequence number sent so far, and the timestamp and time that went with it.
    last: Option<(SeqNo, u32, Instant)>,
    clock_rate: u32,
}

impl Rewriter {
    pub fn new(clock_rate: u32) -> Self {
        Rewriter {
            splice: None,
            last: None,
            clock_rate: clock_rate.max(1),
        }
    }

    /// Forget the current source: the next packet starts a new splice (used when the
    /// subscription is re-pointed at another track, whose clock rate may differ).
    pub fn reset_source(&mut self, clock_rate: u32) {
        self.splice = None;
        self.clock_rate = clock_rate.max(1);
    }

    /// The source being forwarded.
    pub fn source(&self) -> Option<Ssrc> {
        self.splice.as_ref().map(|s| s.source)
    }

    /// Map one packet of `source` onto the subscription's stream. A packet of another
    /// source than the last one splices that source in: the caller feeds only the source
    /// the subscription currently follows.
    pub fn rewrite(&mut self, source: Ssrc, seq: SeqNo, timestamp: u32, now: Instant) -> Rewrite {
        // In place: the splice carries the skip memory, too big to copy per packet.
        if self.splice.as_ref().is_none_or(|s| s.source != source) {
            self.splice_in(source, seq, timestamp, now);
        }
        let Some(splice) = self.splice.as_mut() else {
            return Rewrite::Stale; // splice_in just set it
        };
        let ext = splice.extend(seq);
        if splice.is_stale(ext) || splice.skips.contains(ext) {
            return Rewrite::Stale;
        }
        splice.observe(seq, ext);
        let out_seq = splice.output(ext);
        let out_ts = timestamp.wrapping_add(splice.ts_offset);
        match self.last {
            Some((last_seq, _, _)) if last_seq.delta_to(out_seq) <= 0 => {}
            _ => self.last = Some((out_seq, out_ts, now)),
        }
        Rewrite::Forward {
            sequence: out_seq,
            timestamp: out_ts,
        }
    }

    /// A packet of the current source that is deliberately not forwarded (a dropped
    /// layer): later packets close the gap it would leave.
    pub fn skip(&mut self, source: Ssrc, seq: SeqNo) {
        let Some(splice) = self.splice.as_mut().filter(|s| s.source == source) else {
            return;
        };
        let ext = splice.extend(seq);
        if splice.is_stale(ext) {
            return;
        }
        splice.observe(seq, ext);
        splice.skips.insert(ext);
    }

    /// The source packet that was sent as `out` (for answering a NACK), if it belongs to
    /// the current source.
    pub fn original(&self, out: SeqNo) -> Option<(Ssrc, SeqNo)> {
        let splice = self.splice.as_ref()?;
        let highest_out = splice.output(splice.highest_ext);
        let out_ext = (splice.highest_ext - splice.skips.count_below(splice.highest_ext))
            + i64::from(highest_out.delta_to(out));
        // Find the input whose output is `out`: x - skips_below(x) == out_ext with x not
        // skipped. x - skips_below(x) never decreases and a skipped x shares its value
        // with the next one forwarded, so: move x up by the skips below it until it
        // settles, and past any skipped x; a few rounds per skip at most.
        let mut x = out_ext;
        for _ in 0..3 * MAX_SKIPS + 4 {
            let next = out_ext + splice.skips.count_below(x);
            if next != x {
                x = next;
            } else if splice.skips.contains(x) {
                x += 1;
            } else {
                if splice.is_stale(x) || x > splice.highest_ext {
                    return None;
                }
                return Some((
                    splice.source,
                    SeqNo(splice.first_in.0.wrapping_add(x as u16)),
                ));
            }
        }
        None
    }

    /// The subscriber-side RTP timestamp of `timestamp` of `source`, if that is the source
    /// being forwarded (to rewrite its sender reports and retransmissions).
    pub fn map_timestamp(&self, source: Ssrc, timestamp: u32) -> Option<u32> {
        let splice = self.splice.as_ref().filter(|s| s.source == source)?;
        Some(timestamp.wrapping_add(splice.ts_offset))
    }

    /// Start forwarding `source` so that its first packet continues right after the last
    /// packet sent: the next sequence number, and a timestamp advanced by the wall-clock
    /// time that passed (at least one tick, so the decoder never sees time stand still).
    fn splice_in(&mut self, source: Ssrc, seq: SeqNo, timestamp: u32, now: Instant) {
        let (first_out, ts_offset) = match self.last {
            // The first source of a subscription keeps its own numbering: an unswitched
            // subscription is then transparent, which helps anyone reading captures.
            None => (seq, 0),
            Some((last_seq, last_ts, last_at)) => {
                let elapsed = now.saturating_duration_since(last_at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)).round();
                // `as` saturates on f64 -> u32; a gap of more than a day is not a concern.
                let ticks = (ticks as u32).max(1);
                (
                    SeqNo(last_seq.0.wrapping_add(1)),
                    last_ts.wrapping_add(ticks).wrapping_sub(timestamp),
                )
            }
        };
        self.splice = Some(Splice {
            source,
            first_in: seq,
            first_out,
            highest_seq: seq,
            highest_ext: 0,
            ts_offset,
            skips: Skips::EMPTY,
        });
    }
}

/// Static description of a subscription, as given by whoever configures the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// The track to forward.
    pub track: TrackId,
    /// The subscriber leg that carries it. Its participant is the subscriber.
    pub leg: LegId,
    /// SSRC the subscriber sees; `None` keeps the track's SSRC.
    pub ssrc: Option<Ssrc>,
    /// The highest layers this subscriber wants; the forwarder may send less when the
    /// subscriber's network cannot take it.
    pub max_layers: Layers,
    /// Payload type the subscriber negotiated; `None` keeps the publisher's.
    pub payload_type: Option<u8>,
}

/// Layers of a track: the simulcast encoding (0 = lowest quality), and within it the
/// spatial (VP9 SVC) and temporal layers. As a limit, each field is the highest wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layers {
    pub encoding: u8,
    pub spatial: u8,
    pub temporal: u8,
}

impl Layers {
    /// Everything the publisher sends.
    pub const ALL: Layers = Layers {
        encoding: u8::MAX,
        spatial: u8::MAX,
        temporal: u8::MAX,
    };
}

impl Default for Layers {
    fn default() -> Self {
        Layers::ALL
    }
}

/// What a subscription does with one packet of its track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it. `switched`: the first packet after a change of encoding (a keyframe).
    /// `end_of_picture`: set the RTP marker, because the layers above, which would have
    /// carried it, are dropped (VP9 SVC).
    Forward {
        switched: bool,
        end_of_picture: bool,
    },
    /// A packet of the encoding being forwarded, of a layer not forwarded: leave it out
    /// and close the gap in the sequence numbers.
    Skip,
    /// A packet of an encoding the subscription is not following.
    Ignore,
    /// A packet of the encoding the subscription wants but cannot start yet: it needs a
    /// keyframe of it.
    AwaitKeyframe,
}

/// Live state of one subscription inside the core.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) track: TrackId,
    pub(crate) leg: LegId,
    pub(crate) ssrc: Ssrc,
    pub(crate) payload_type: Option<u8>,
    pub(crate) rewriter: Rewriter,
    /// The limit set by configuration or the control plane.
    pub(crate) max_layers: Layers,
    /// The encoding to forward now (≤ `max_layers.encoding`, lowered under congestion).
    pub(crate) desired_encoding: u8,
    /// The encoding being forwarded, once a keyframe of it started the stream.
    pub(crate) current_encoding: Option<u8>,
    /// Highest spatial and temporal layers being forwarded; they rise only where a
    /// decoder can follow (layer sync / independent layer frame) and fall at a frame start.
    pub(crate) spatial_now: u8,
    pub(crate) temporal_now: u8,
    pub(crate) munger: PictureIdMunger,
    pub(crate) retransmits: RetransmitLimiter,
    /// Lowers the encoding under congestion (REMB, loss reports).
    pub(crate) selector: LayerSelector,
    /// RTP packets and payload octets sent, for the SR counts (RFC 3550 §6.4.1: they wrap).
    pub(crate) packets_sent: u32,
    pub(crate) octets_sent: u32,
    /// SRs sent to the subscriber, to compute its round-trip time.
    pub(crate) reports: super::reports::SentReports,
    /// What the subscriber last reported about this stream, and when (for the audience
    /// summaries of relay trees).
    pub(crate) reception: Option<(super::relay::audience::AudienceSummary, Instant)>,
}

/// Sequence numbers a subscription's retransmission limiter remembers: enough for the
/// NACK bursts of one round trip, small enough for the per-leg memory budget (24 bytes
/// each).
pub(crate) const RETRANSMIT_MEMORY: usize = 64;

impl Subscription {
    /// Decide what to do with one packet of encoding `encoding` of the track.
    pub(crate) fn select(&mut self, encoding: u8, info: &FrameInfo) -> Verdict {
        if self.current_encoding != Some(encoding) {
            if encoding != self.desired_encoding {
                return Verdict::Ignore;
            }
            // A payload the forwarder cannot read (audio) can start anywhere.
            if info.codec != Codec::Opaque && !info.is_keyframe_start() {
                return Verdict::AwaitKeyframe;
            }
            self.current_encoding = Some(encoding);
            self.spatial_now = self.max_layers.spatial;
            self.temporal_now = self.max_layers.temporal;
            return Verdict::Forward {
                switched: true,
                end_of_picture: self.ends_picture(info),
            };
        }
        if info.start_of_frame {
            // Lower at a frame boundary, so no frame is cut in half.
            self.spatial_now = self.spatial_now.min(self.max_layers.spatial);
            self.temporal_now = self.temporal_now.min(self.max_layers.temporal);
        }
        if let Some(t) = info.temporal_layer {
            if t > self.temporal_now {
                // Rise only at a switching-up point (VP8 Y bit, VP9 U bit).
                if t <= self.max_layers.temporal && info.layer_sync && info.start_of_frame {
                    self.temporal_now = t;
                } else {
                    return Verdict::Skip;
                }
            }
        }
        if let Some(sid) = info.spatial_layer {
            if sid > self.spatial_now {
                if sid <= self.max_layers.spatial && info.is_independent_layer_start() {
                    self.spatial_now = sid;
                } else {
                    return Verdict::Skip;
                }
            }
        }
        Verdict::Forward {
            switched: false,
            end_of_picture: self.ends_picture(info),
        }
    }

    /// With upper spatial layers dropped, the last packet of the highest layer forwarded
    /// ends the picture and must carry the marker (RFC 9628 §4.1).
    fn ends_picture(&self, info: &FrameInfo) -> bool {
        info.spatial_layer == Some(self.spatial_now) && info.end_of_frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn forward(r: Rewrite) -> (u16, u32) {
        match r {
            Rewrite::Forward {
                sequence,
                timestamp,
            } => (sequence.0, timestamp),
            Rewrite::Stale => panic!("unexpected stale"),
        }
    }

    #[test]
    fn first_source_is_transparent() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        assert_eq!(
            forward(r.rewrite(Ssrc(1), SeqNo(100), 5000, t0)),
            (100, 5000)
        );
        assert_eq!(
            forward(r.rewrite(Ssrc(1), SeqNo(101), 8000, t0)),
            (101, 8000)
        );
        // Reordered packets of the same source keep their relative numbering.
        assert_eq!(
            forward(r.rewrite(Ssrc(1), SeqNo(103), 14000, t0)),
            (103, 14000)
        );
        assert_eq!(
            forward(r.rewrite(Ssrc(1), SeqNo(102), 11000, t0)),
            (102, 11000)
        );
    }

    #[test]
    fn switching_source_continues_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        forward(r.rewrite(Ssrc(1), SeqNo(65534), 1000, t0));
        forward(r.rewrite(Ssrc(1), SeqNo(65535), 4000, t0));
        // 100 ms later another source, with unrelated numbering, is spliced in.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            forward(r.rewrite(Ssrc(2), SeqNo(7), 777, t1)),
            (0, 4000 + 9000)
        );
        assert_eq!(
            forward(r.rewrite(Ssrc(2), SeqNo(8), 3777, t1)),
            (1, 4000 + 12000)
        );
        // A late packet of the new source from before the splice point would collide with
        // what the old source already used.
        assert_eq!(r.rewrite(Ssrc(2), SeqNo(6), 0, t1), Rewrite::Stale);
        assert_eq!(
            forward(r.rewrite(Ssrc(2), SeqNo(9), 6777, t1)),
            (2, 4000 + 15000)
        );
    }

    #[test]
    fn long_streams_never_turn_stale() {
        // Well past 2^15 and 2^16 packets after the splice, with some reordering.
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        forward(r.rewrite(Ssrc(1), SeqNo(0), 0, t0));
        let mut r2 = r.clone();
        forward(r2.rewrite(Ssrc(2), SeqNo(40_000), 0, t0));
        for i in 1..200_000u32 {
            let seq = SeqNo(i as u16);
            let (out, _) = forward(r.rewrite(Ssrc(1), seq, i * 3000, t0));
            assert_eq!(out, i as u16);
            let seq2 = SeqNo(40_000u16.wrapping_add(i as u16));
            let (out2, _) = forward(r2.rewrite(Ssrc(2), seq2, i * 3000, t0));
            assert_eq!(out2, (i as u16).wrapping_add(1));
            if i % 1000 == 0 {
                // A late packet from just before keeps its place.
                let late = SeqNo((i - 5) as u16);
                assert_eq!(forward(r.rewrite(Ssrc(1), late, 0, t0)).0, (i - 5) as u16);
            }
        }
    }

    #[test]
    fn splice_at_the_same_instant_still_advances_timestamp() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000);
        forward(r.rewrite(Ssrc(1), SeqNo(10), 960, t0));
        let (seq, ts) = forward(r.rewrite(Ssrc(2), SeqNo(500), 123_456, t0));
        assert_eq!(seq, 11);
        assert_eq!(ts, 961);
    }

    #[test]
    fn skipped_packets_leave_no_gap_even_when_reordered() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        assert_eq!(forward(r.rewrite(Ssrc(1), SeqNo(100), 0, t0)).0, 100);
        r.skip(Ssrc(1), SeqNo(101));
        r.skip(Ssrc(1), SeqNo(102));
        assert_eq!(forward(r.rewrite(Ssrc(1), SeqNo(104), 0, t0)).0, 102);
        // 103 arrives late, after 104: it still gets the number before 104's.
        assert_eq!(forward(r.rewrite(Ssrc(1), SeqNo(103), 0, t0)).0, 101);
        r.skip(Ssrc(1), SeqNo(105));
        assert_eq!(forward(r.rewrite(Ssrc(1), SeqNo(106), 0, t0)).0, 103);
        // A skipped packet arriving again is not forwarded.
        assert_eq!(r.rewrite(Ssrc(1), SeqNo(102), 0, t0), Rewrite::Stale);
        // NACKs map back to the packets that were sent.
        assert_eq!(r.original(SeqNo(100)), Some((Ssrc(1), SeqNo(100))));
        assert_eq!(r.original(SeqNo(101)), Some((Ssrc(1), SeqNo(103))));
        assert_eq!(r.original(SeqNo(102)), Some((Ssrc(1), SeqNo(104))));
        assert_eq!(r.original(SeqNo(103)), Some((Ssrc(1), SeqNo(106))));
        assert_eq!(r.original(SeqNo(104)), None, "not sent yet");
    }

    #[test]
    fn original_maps_back_across_a_splice_and_many_skips() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        forward(r.rewrite(Ssrc(1), SeqNo(65_000), 0, t0));
        // Splice in source 2 and skip every third packet for a long while.
        let mut sent = Vec::new();
        for i in 0..5000u32 {
            let seq = SeqNo(60_000u16.wrapping_add(i as u16));
            if i % 3 == 2 {
                r.skip(Ssrc(2), seq);
            } else {
                let (out, _) = forward(r.rewrite(Ssrc(2), seq, i, t0));
                sent.push((SeqNo(out), seq));
            }
        }
        for w in sent.windows(2) {
            assert_eq!(w[0].0.delta_to(w[1].0), 1, "no gaps in the output");
        }
        // Within the remembered skips every output maps back; beyond, the answer is "not
        // known", never a wrong packet.
        for (age, &(out, seq)) in sent.iter().rev().take(3000).enumerate() {
            match r.original(out) {
                Some(found) => assert_eq!(found, (Ssrc(2), seq)),
                None => assert!(
                    age + 2 >= 2 * MAX_SKIPS,
                    "output {out:?} ({age} back) unmapped"
                ),
            }
        }
    }
}
