//! Audience summaries: what the receivers of a relay tree report, aggregated upward.
//!
//! # The model
//!
//! Every node of a webinar's tree knows its own subscribers' reception from their RTCP
//! report blocks (RFC 3550 §6.4.1): fraction lost, cumulative lost, interarrival jitter, and
//! the round-trip time the forwarder derives from LSR/DLSR. For each track it relays, a
//! node folds those of its own subscribers into an [`AudienceSummary`], merges in the
//! summaries its child links sent for the same track, and sends the result to its parent
//! every second, over the upstream link's SRTCP context, in an APP packet (RFC 3550 §6.7)
//! named [`APP_NAME`]. The parent does the same one level up, so the origin holds the
//! summary of its whole audience, at any depth, with one entry per track crossing each
//! link whatever the number of viewers below.
//!
//! A summary is made only of sums and maxima (receivers per loss bucket, the sum of the
//! fractions lost, the sum of cumulative losses, the worst fraction lost, the largest
//! jitter and round trip), so [`AudienceSummary::merge`] is associative and commutative
//! with the empty summary as identity: the shape of the tree does not change the figures
//! at its root. Sums saturate rather than wrap (saturating addition of non-negative
//! numbers stays associative).
//!
//! Reports age out: a subscriber's report counts for [`RECEPTION_TTL`] after it arrived
//! (RFC 3550 allows a 5 s reporting interval, so two missed reports), a child's summary
//! for [`SUMMARY_TTL`] (they come every second); a child link that goes away takes its
//! summaries with it. A node sends an entry for every track it relays, an empty one when
//! nobody below receives it, so its parent's view follows departures within a second
//! rather than waiting for the entry to age out.
//!
//! # Wire layout (version 1)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|    0    |   PT=APP=204  |             length            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  SSRC of the link end's RTCP                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          name "FORS"                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version = 1  |     count     |        reserved (zero)        |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |    source SSRC: the track's first encoding, as sent by parent |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | worst fraction|               reserved (zero)                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         receivers in loss bucket 0 .. 6 (7 × 32 bits)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      sum of the receivers' fractions lost (1/256 units)       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   sum of the receivers' cumulative lost (negatives count 0)   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               largest interarrival jitter (µs)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              largest round trip, last hop (µs)                |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//!   ... `count` entries of 52 bytes
//! ```
//!
//! All fields are big-endian. A receiver is in loss bucket `i` when the fraction lost it
//! last reported is at most [`LOSS_BUCKET_MAX`]`[i]` (and above the bucket before): no loss,
//! ≤ 1 %, ≤ 2 %, ≤ 5 %, ≤ 10 %, ≤ 20 %, more. Jitter is in microseconds because tracks
//! differ in clock rate. The round trip is the one each node measures to its own
//! subscribers (the last hop), not presenter to viewer. A packet whose name is not
//! `FORS`, whose version is unknown, whose entries overrun it or whose figures contradict
//! each other (a fraction-lost sum no receiver count can make) is dropped whole.

use crate::ids::Ssrc;
use crate::rtcp::{self, ReportBlock, RtcpError};

use std::time::Duration;

/// The APP name of audience summaries ("FanOut Relay Summary").
pub const APP_NAME: [u8; 4] = *b"FORS";
/// Version of the summary's body layout.
const VERSION: u8 = 1;
/// Bytes before the first entry: the APP header (4), sender SSRC (4), name (4), then
/// version, count and two reserved bytes.
const HEADER_LEN: usize = 16;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 52;
/// Entries per packet that fit the forwarder's RTCP queue slot.
pub(crate) const ENTRIES_PER_PACKET: usize =
    (super::super::reports::RTCP_SLOT_LEN - HEADER_LEN) / ENTRY_LEN;

/// Loss buckets: the largest fraction lost (RFC 3550 8-bit fixed point, 1/256 units) each
/// bucket holds. 2/256 ≈ 0.8 % is the largest fraction at most 1 %; and so on.
pub const LOSS_BUCKET_MAX: [u8; 7] = [0, 2, 5, 12, 25, 51, 255];
/// The upper bounds of the buckets as fractions, for the metrics' `le` label (the last is
/// `+Inf`): every receiver counted in bucket `i` reported at most `LOSS_BUCKET_LE[i]`.
pub const LOSS_BUCKET_LE: [&str; 7] = ["0", "0.01", "0.02", "0.05", "0.1", "0.2", "+Inf"];

/// A subscriber's report counts this long after it arrived: RFC 3550's minimum reporting
/// interval is 5 s, so a receiver survives one lost report.
pub const RECEPTION_TTL: Duration = Duration::from_secs(10);
/// A child link's summary counts this long: they come every second.
pub const SUMMARY_TTL: Duration = Duration::from_secs(5);

/// The reception of a set of receivers of one track, mergeable (see the [module
/// docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AudienceSummary {
    /// Receivers by the fraction lost they last reported (see [`LOSS_BUCKET_MAX`]).
    pub loss_buckets: [u32; 7],
    /// Sum of the fractions lost they reported, in 1/256 units (for a mean).
    pub fraction_lost_sum: u32,
    /// The largest fraction lost any of them reported, in 1/256 units.
    pub worst_fraction_lost: u8,
    /// Sum of the cumulative packet losses they reported (negative ones, where
    /// duplicates outnumber losses, count as 0).
    pub cumulative_lost_sum: u32,
    /// The largest interarrival jitter any of them reported, in microseconds.
    pub max_jitter_us: u32,
    /// The largest round trip between a node and one of its own subscribers, in
    /// microseconds (0 where none is known yet).
    pub max_round_trip_us: u32,
}

impl AudienceSummary {
    /// One receiver's report block about a stream of `clock_rate`, with the round trip the
    /// forwarder computed from it, if any.
    pub fn of_receiver(
        block: &ReportBlock,
        clock_rate: u32,
        round_trip: Option<Duration>,
    ) -> AudienceSummary {
        let mut s = AudienceSummary::default();
        let bucket = LOSS_BUCKET_MAX
            .iter()
            .position(|&max| block.fraction_lost <= max)
            .unwrap_or(LOSS_BUCKET_MAX.len() - 1);
        s.loss_buckets[bucket] = 1;
        s.fraction_lost_sum = u32::from(block.fraction_lost);
        s.worst_fraction_lost = block.fraction_lost;
        s.cumulative_lost_sum = block.cumulative_lost.max(0) as u32;
        s.max_jitter_us = if clock_rate == 0 {
            0
        } else {
            let us = u64::from(block.jitter) * 1_000_000 / u64::from(clock_rate);
            us.min(u64::from(u32::MAX)) as u32
        };
        s.max_round_trip_us =
            round_trip.map_or(0, |rtt| rtt.as_micros().min(u128::from(u32::MAX)) as u32);
        s
    }

    /// Fold `other` in: sums add (saturating), maxima take the larger.
    pub fn merge(&mut self, other: &AudienceSummary) {
        for (a, b) in self.loss_buckets.iter_mut().zip(other.loss_buckets) {
            *a = a.saturating_add(b);
        }
        self.fraction_lost_sum = self
            .fraction_lost_sum
            .saturating_add(other.fraction_lost_sum);
        self.worst_fraction_lost = self.worst_fraction_lost.max(other.worst_fraction_lost);
        self.cumulative_lost_sum = self
            .cumulative_lost_sum
            .saturating_add(other.cumulative_lost_sum);
        self.max_jitter_us = self.max_jitter_us.max(other.max_jitter_us);
        self.max_round_trip_us = self.max_round_trip_us.max(other.max_round_trip_us);
    }

    /// How many receivers it describes.
    pub fn receivers(&self) -> u32 {
        self.loss_buckets
            .iter()
            .fold(0u32, |n, &b| n.saturating_add(b))
    }

    /// Receivers whose fraction lost is at most `LOSS_BUCKET_MAX[bucket]` (cumulative).
    pub fn receivers_at_most(&self, bucket: usize) -> u32 {
        self.loss_buckets
            .iter()
            .take(bucket + 1)
            .fold(0u32, |n, &b| n.saturating_add(b))
    }

    /// Mean fraction lost over the receivers, 0 if there are none.
    pub fn mean_fraction_lost(&self) -> f64 {
        match self.receivers() {
            0 => 0.0,
            n => f64::from(self.fraction_lost_sum) / 256.0 / f64::from(n),
        }
    }

    /// Figures no set of receivers can produce: no receivers but a loss, or a sum of
    /// fractions lost above 255 per receiver.
    fn is_consistent(&self) -> bool {
        let receivers = self.receivers();
        if receivers == 0 {
            return *self == AudienceSummary::default();
        }
        // A saturated receiver count no longer bounds the sum.
        receivers == u32::MAX || u64::from(self.fraction_lost_sum) <= 255 * u64::from(receivers)
    }

    fn write(&self, source: Ssrc, out: &mut [u8]) {
        out[0..4].copy_from_slice(&source.0.to_be_bytes());
        out[4] = self.worst_fraction_lost;
        out[5..8].fill(0);
        for (i, b) in self.loss_buckets.iter().enumerate() {
            out[8 + 4 * i..12 + 4 * i].copy_from_slice(&b.to_be_bytes());
        }
        out[36..40].copy_from_slice(&self.fraction_lost_sum.to_be_bytes());
        out[40..44].copy_from_slice(&self.cumulative_lost_sum.to_be_bytes());
        out[44..48].copy_from_slice(&self.max_jitter_us.to_be_bytes());
        out[48..52].copy_from_slice(&self.max_round_trip_us.to_be_bytes());
    }

    /// One entry; `entry` is exactly [`ENTRY_LEN`] bytes.
    fn read(entry: &[u8]) -> (Ssrc, AudienceSummary) {
        let word = |at: usize| {
            u32::from_be_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
        };
        let mut s = AudienceSummary {
            worst_fraction_lost: entry[4],
            fraction_lost_sum: word(36),
            cumulative_lost_sum: word(40),
            max_jitter_us: word(44),
            max_round_trip_us: word(48),
            ..AudienceSummary::default()
        };
        for (i, b) in s.loss_buckets.iter_mut().enumerate() {
            *b = word(8 + 4 * i);
        }
        (Ssrc(word(0)), s)
    }
}

/// Write an APP packet carrying `entries` (at most 255, and they must fit `buf`).
pub fn write_summaries(
    buf: &mut [u8],
    sender: Ssrc,
    entries: &[(Ssrc, AudienceSummary)],
) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + ENTRY_LEN * entries.len();
    if entries.len() > 255 {
        return Err(RtcpError::BufferTooSmall);
    }
    let out = buf.get_mut(..len).ok_or(RtcpError::BufferTooSmall)?;
    out[0] = 0x80; // V=2, P=0, subtype 0
    out[1] = rtcp::packet_type::APP;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender.0.to_be_bytes());
    out[8..12].copy_from_slice(&APP_NAME);
    out[12] = VERSION;
    out[13] = entries.len() as u8;
    out[14..16].fill(0);
    for (chunk, (source, summary)) in out[HEADER_LEN..].chunks_exact_mut(ENTRY_LEN).zip(entries) {
        summary.write(*source, chunk);
    }
    Ok(len)
}

/// Whether the body of an APP packet (after the common header: SSRC, name, data) is an
/// audience summary at all, whether well-formed or not.
pub fn is_summary(body: &[u8]) -> bool {
    body.get(4..8) == Some(&APP_NAME[..])
}

/// The entries of an audience summary, from the body of an APP packet (after the common
/// header: SSRC, name, data). `None` if it is not one, or is malformed in any entry: then
/// nothing of it may be used. Never allocates.
pub fn parse_summaries(body: &[u8]) -> Option<Summaries<'_>> {
    if !is_summary(body) || *body.get(8)? != VERSION {
        return None;
    }
    let count = usize::from(*body.get(9)?);
    // Trailing bytes (RTCP padding) are ignored.
    let entries = body.get(12..12 + count * ENTRY_LEN)?;
    let summaries = Summaries {
        chunks: entries.chunks_exact(ENTRY_LEN),
    };
    summaries
        .clone()
        .all(|(_, s)| s.is_consistent())
        .then_some(summaries)
}

/// The entries of a well-formed summary: the source SSRC each is about, and the summary.
#[derive(Debug, Clone)]
pub struct Summaries<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for Summaries<'_> {
    type Item = (Ssrc, AudienceSummary);

    fn next(&mut self) -> Option<Self::Item> {
        self.chunks.next().map(AudienceSummary::read)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Summaries<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::RtcpPacket;
    use proptest::prelude::*;

    fn block(fraction_lost: u8, cumulative_lost: i32, jitter: u32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(1),
            fraction_lost,
            cumulative_lost,
            jitter,
            ..ReportBlock::default()
        }
    }

    #[test]
    fn a_receiver_lands_in_its_bucket() {
        let s = AudienceSummary::of_receiver(&block(0, 0, 90), 90_000, None);
        assert_eq!(s.loss_buckets, [1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s.max_jitter_us, 1000);
        let s = AudienceSummary::of_receiver(
            &block(13, -5, 0),
            48_000,
            Some(Duration::from_millis(40)),
        );
        // 13/256 ≈ 5.1 %: above 5 %, at most 10 %.
        assert_eq!(s.loss_buckets, [0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            s.cumulative_lost_sum, 0,
            "negative cumulative loss counts 0"
        );
        assert_eq!(s.max_round_trip_us, 40_000);
        let s = AudienceSummary::of_receiver(&block(255, 7, 0), 0, None);
        assert_eq!(s.loss_buckets[6], 1);
        assert_eq!((s.receivers(), s.receivers_at_most(5)), (1, 0));
    }

    #[test]
    fn summaries_round_trip_through_an_app_packet() {
        let mut a = AudienceSummary::of_receiver(&block(3, 10, 900), 90_000, None);
        a.merge(&AudienceSummary::of_receiver(
            &block(40, 2, 9000),
            90_000,
            Some(Duration::from_millis(80)),
        ));
        let entries = [(Ssrc(0xC1), a), (Ssrc(0xA1), AudienceSummary::default())];
        let mut buf = [0u8; 512];
        let len = write_summaries(&mut buf, Ssrc(7), &entries).unwrap();
        assert_eq!(len, HEADER_LEN + 2 * ENTRY_LEN);
        assert_eq!(rtcp::validate(&buf[..len]), Ok(1));
        let Some(Ok(RtcpPacket::App(body))) = rtcp::iter_compound(&buf[..len]).next() else {
            panic!("an APP packet");
        };
        let parsed: Vec<_> = parse_summaries(body).unwrap().collect();
        assert_eq!(parsed, entries);
        // Truncated, foreign, unknown versions and impossible figures are refused.
        assert!(parse_summaries(&body[..body.len() - 4]).is_none());
        let mut other = body.to_vec();
        other[4..8].copy_from_slice(b"FORT");
        assert!(parse_summaries(&other).is_none());
        let mut other = body.to_vec();
        other[8] = 2;
        assert!(parse_summaries(&other).is_none());
        let mut other = body.to_vec();
        // The empty second entry claims a loss.
        other[12 + ENTRY_LEN + 4] = 9;
        assert!(parse_summaries(&other).is_none());
        assert_eq!(ENTRIES_PER_PACKET, 9);
    }

    fn summary() -> impl Strategy<Value = AudienceSummary> {
        (
            proptest::array::uniform7(prop_oneof![0u32..100, Just(u32::MAX - 1)]),
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(loss_buckets, sum, worst, lost, jitter, rtt)| AudienceSummary {
                    loss_buckets,
                    fraction_lost_sum: sum,
                    worst_fraction_lost: worst,
                    cumulative_lost_sum: lost,
                    max_jitter_us: jitter,
                    max_round_trip_us: rtt,
                },
            )
    }

    fn merged(a: &AudienceSummary, b: &AudienceSummary) -> AudienceSummary {
        let mut out = *a;
        out.merge(b);
        out
    }

    proptest! {
        /// The tree's shape does not matter: (a + b) + c = a + (b + c), a + b = b + a,
        /// and the empty summary changes nothing.
        #[test]
        fn merging_is_associative_and_commutative(a in summary(), b in summary(), c in summary()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&a, &AudienceSummary::default()), a);
        }

        /// Receivers' reports folded in any grouping give the same root summary as all
        /// of them folded at one node.
        #[test]
        fn any_grouping_of_receivers_gives_the_same_summary(
            reports in proptest::collection::vec((any::<u8>(), any::<i32>(), any::<u32>(), 0u64..10_000), 0..40),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..5),
        ) {
            let receivers: Vec<AudienceSummary> = reports
                .iter()
                .map(|&(f, c, j, rtt)| {
                    AudienceSummary::of_receiver(&block(f, c >> 8, j), 90_000, Some(Duration::from_micros(rtt)))
                })
                .collect();
            let flat = receivers.iter().fold(AudienceSummary::default(), |a, r| merged(&a, r));
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(receivers.len() + 1)).collect();
            at.sort_unstable();
            at.push(receivers.len());
            let mut grouped = AudienceSummary::default();
            let mut start = 0;
            for end in at {
                let group = receivers[start..end.max(start)]
                    .iter()
                    .fold(AudienceSummary::default(), |a, r| merged(&a, r));
                grouped = merged(&group, &grouped);
                start = end.max(start);
            }
            prop_assert_eq!(grouped, flat);
            prop_assert_eq!(flat.receivers() as usize, receivers.len());
            prop_assert!(flat.is_consistent());
        }

        /// What is written parses back to the same entries.
        #[test]
        fn written_summaries_parse_back(
            entries in proptest::collection::vec((any::<u32>(), summary()), 0..9),
        ) {
            let entries: Vec<(Ssrc, AudienceSummary)> = entries
                .into_iter()
                .map(|(s, a)| (Ssrc(s), a))
                .filter(|(_, a)| a.is_consistent())
                .collect();
            let mut buf = [0u8; 512];
            let len = write_summaries(&mut buf, Ssrc(1), &entries).unwrap();
            prop_assert_eq!(rtcp::validate(&buf[..len]), Ok(1));
            let parsed: Vec<_> = parse_summaries(&buf[4..len]).unwrap().collect();
            prop_assert_eq!(parsed, entries);
        }

        /// Arbitrary bytes never panic the parser, and what it accepts writes back
        /// identically (less reserved bytes and padding).
        #[test]
        fn random_bodies_never_panic(
            version in prop_oneof![Just(VERSION), any::<u8>()],
            count in 0u8..12,
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut body = vec![0u8, 0, 0, 7];
            body.extend_from_slice(&APP_NAME);
            body.extend_from_slice(&[version, count, 0, 0]);
            body.extend_from_slice(&tail);
            if let Some(entries) = parse_summaries(&body) {
                let entries: Vec<_> = entries.collect();
                prop_assert_eq!(entries.len(), usize::from(count));
                let mut buf = vec![0u8; HEADER_LEN + ENTRY_LEN * entries.len()];
                write_summaries(&mut buf, Ssrc(7), &entries).unwrap();
                let again: Vec<_> = parse_summaries(&buf[4..]).unwrap().collect();
                prop_assert_eq!(again, entries);
            }
            let _ = parse_summaries(&tail);
        }
    }
}
