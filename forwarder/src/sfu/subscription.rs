//! A subscription: one outbound copy of a track to one subscriber leg, with its own SSRC,
//! sequence numbers and timestamps.
//!
//! The subscriber must see one continuous RTP stream (RFC 3550 §5.1: sequence numbers
//! increment by one per packet, timestamps follow the sampling clock) for as long as the
//! subscription lives, even when the packets come from another source: the subscription
//! re-pointed at another track, or the publisher's stream restarted with another SSRC. The
//! [`Rewriter`] keeps that promise with a pair of offsets per source.

use std::time::Instant;

use crate::ids::{LegId, SeqNo, Ssrc, TrackId};

/// What [`Rewriter::rewrite`] decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward with these header values.
    Forward { sequence: SeqNo, timestamp: u32 },
    /// Drop: the packet precedes the point where its source was spliced in, so its
    /// sequence number would collide with one the previous source already used.
    Stale,
}

/// The offsets that map one source's sequence/timestamp space onto the subscription's.
#[derive(Debug, Clone, Copy)]
struct Splice {
    source: Ssrc,
    /// Highest sequence number of the source seen, and its extended value counted from
    /// the splice point (0). A packet whose extended value is negative came before the
    /// splice and is stale. Extending (rather than comparing 16-bit numbers with the first
    /// one) keeps this right after the stream has run past 2^15 packets.
    highest_seq: SeqNo,
    highest_ext: i64,
    seq_offset: u16,
    ts_offset: u32,
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

    /// Map one packet of `source` onto the subscription's stream. A packet of another
    /// source than the last one splices that source in: the caller feeds only the source
    /// the subscription currently follows.
    pub fn rewrite(&mut self, source: Ssrc, seq: SeqNo, timestamp: u32, now: Instant) -> Rewrite {
        let mut splice = match self.splice {
            Some(s) if s.source == source => s,
            Some(_) | None => self.splice_in(source, seq, timestamp, now),
        };
        let delta = splice.highest_seq.delta_to(seq);
        let ext = splice.highest_ext + i64::from(delta);
        if ext < 0 {
            return Rewrite::Stale;
        }
        if delta > 0 {
            splice.highest_seq = seq;
            splice.highest_ext = ext;
            self.splice = Some(splice);
        }
        let out_seq = SeqNo(seq.0.wrapping_add(splice.seq_offset));
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

    /// The subscriber-side RTP timestamp of `timestamp` of `source`, if that is the source
    /// being forwarded (to rewrite its sender reports).
    pub fn map_timestamp(&self, source: Ssrc, timestamp: u32) -> Option<u32> {
        let splice = self.splice.filter(|s| s.source == source)?;
        Some(timestamp.wrapping_add(splice.ts_offset))
    }

    /// Start forwarding `source` so that its first packet continues right after the last
    /// packet sent: the next sequence number, and a timestamp advanced by the wall-clock
    /// time that passed (at least one tick, so the decoder never sees time stand still).
    fn splice_in(&mut self, source: Ssrc, seq: SeqNo, timestamp: u32, now: Instant) -> Splice {
        let (seq_offset, ts_offset) = match self.last {
            // The first source of a subscription keeps its own numbering: an unswitched
            // subscription is then transparent, which helps anyone reading captures.
            None => (0, 0),
            Some((last_seq, last_ts, last_at)) => {
                let elapsed = now.saturating_duration_since(last_at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)).round();
                // `as` saturates on f64 -> u32; a gap of more than a day is not a concern.
                let ticks = (ticks as u32).max(1);
                (
                    last_seq.0.wrapping_add(1).wrapping_sub(seq.0),
                    last_ts.wrapping_add(ticks).wrapping_sub(timestamp),
                )
            }
        };
        let splice = Splice {
            source,
            highest_seq: seq,
            highest_ext: 0,
            seq_offset,
            ts_offset,
        };
        self.splice = Some(splice);
        splice
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
    /// Payload type the subscriber negotiated; `None` keeps the publisher's.
    pub payload_type: Option<u8>,
}

/// Live state of one subscription inside the core.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) track: TrackId,
    pub(crate) leg: LegId,
    pub(crate) ssrc: Ssrc,
    pub(crate) payload_type: Option<u8>,
    pub(crate) rewriter: Rewriter,
    /// RTP packets and payload octets sent, for the SR counts (RFC 3550 §6.4.1: they wrap).
    pub(crate) packets_sent: u32,
    pub(crate) octets_sent: u32,
    /// SRs sent to the subscriber, to compute its round-trip time.
    pub(crate) reports: super::reports::SentReports,
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
}
