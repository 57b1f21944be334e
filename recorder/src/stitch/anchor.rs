//! Placing RTP media on the recording's wall clock: one sender clock per participant.
//!
//! RTP timestamps say when a sender sampled its media (RFC 3550 §5.1), on a clock of its
//! own; arrival times say when the packets got here. Arrival is sampling time plus a
//! transit time that is never below the path's delay and often above it: jitter, a
//! sender that stalled and then sends its backlog in a burst, a network that held
//! packets back (RFC 3550 §6.4.1 measures exactly this variation as *jitter*). So the RTP
//! timeline gives the spacing of the media, and the arrivals only bound where it may sit:
//! media is never placed after it arrived, and a packet that arrived late says nothing
//! about where its media belongs.
//!
//! **The mapping.** For each segment of a stream (see [`super::sequence`]) the transit
//! `arrival - rtp_micros(timestamp)` holds an unknown constant (the stream's random
//! timestamp origin). The segment's *base* removes it: the least transit over the
//! segment's first [`anchor_window_micros`](super::StitchOptions::anchor_window_micros)
//! of arrivals, measured against the participant's other streams at that time, so that
//! all the streams of one sender share one clock. What is left, the *normalised transit*
//! `n`, is comparable across a participant's audio and video (and simulcast encodings):
//! their RTP clocks are the same sender's. A packet arriving at `t` is placed at
//!
//! ```text
//! wall = rtp_micros(timestamp) + base(segment) + correction(t)
//! envelope(t)   = min over the participant's packets j arriving up to t + lookahead of
//!                 n_j + max(0, t - arrival_j - GRACE) × MAX_DRIFT
//! correction(t) = envelope(t), but coming down no faster than DESCENT × time
//! ```
//!
//! The envelope is the lower envelope of the transit times: the packets that crossed
//! fastest. A packet that arrived up to [`GRACE_MICROS`] (10 s) before counts fully, an
//! older one weakens at the fastest rate a sender's clock can plausibly drift
//! ([`MAX_DRIFT_PPM`], 0.2%). The correction is the same for every stream of a
//! participant, so their lip sync is fixed when they are anchored and a burst on one of
//! them moves neither.
//!
//! * **Drift** up to `MAX_DRIFT` is followed: a fast clock loses transit, and each
//!   packet's own transit bounds the envelope (the lookahead sees it coming, 1 ms early
//!   at 0.1%); a slow one gains it and is followed a grace later (10 ms late at 0.1%, far
//!   below what lip sync notices).
//! * **A stall is not followed**: a sender that falls behind and catches up (FFmpeg's
//!   `-re` short of CPU, a network holding packets back) only adds transit for a while,
//!   and the packets from before it keep the envelope where it was. So a sender behind
//!   for up to 10 s is placed exactly by its RTP time; one behind longer lets the
//!   correction rise by `MAX_DRIFT` times the excess (4 ms for 2 s more).
//! * **Coming down**: when the envelope falls (a sender that was behind for longer than
//!   the grace has caught up, or one whose whole first window came late, as FFmpeg
//!   starting on a loaded machine does), the correction follows at most [`DESCENT_PPM`]
//!   (10%) as fast as time passes, from the moment the faster packets come into the
//!   lookahead: frames are drawn up to 10% closer and the audio gives up whole packets
//!   (see [`super::pipeline`]); nothing is placed onto what was written.
//!
//! (A sender silent for longer than the sequencer's resync time, 3 s, that resumes far
//! off in time starts a new segment, anchored afresh.)
//!
//! Since each packet's own transit is among the evidence, the envelope is at most its
//! `n`, and `wall <= arrival`: media is never placed after it arrived, so no correction
//! stretches the file past the arrivals. The one exception is the way down, where media
//! may sit after its arrival by what the correction still has to come down; a stream that
//! goes on for ten times that long ends within its arrivals again. (A reordered packet,
//! one that arrived before packets sent ahead of it, counts as arriving with them: its
//! own arrival would show a transit the path cannot have.)
//!
//! To look ahead, packets wait until arrivals `lookahead` later have been seen (at most
//! [`MAX_HELD`] per participant), which also lets a new segment gather its first window;
//! they are placed in order of arrival across the participant's streams. The evidence is
//! kept per [`BUCKET_MICROS`] of arrival time while it is within the grace of packets
//! still to come; older evidence weakens linearly from then on, so one number holds all
//! of it: memory does not grow with the recording.

use std::collections::{BTreeMap, VecDeque};

use super::sequence::{rtp_micros, SequencedPacket};

/// At most this many packets of a participant wait for their lookahead (a bound in case
/// arrival times stand still).
const MAX_HELD: usize = 8192;
/// The fastest a sender's clock is taken to drift against the wall clock, in parts per
/// million: twice 0.1%, twenty times a common crystal's tolerance. A drift beyond it is
/// still bounded by the arrivals, but placed up to the difference early.
const MAX_DRIFT_PPM: u64 = 2_000;
/// The envelope keeps its evidence per bucket of this much arrival time: the lookahead and
/// the grace are counted in whole buckets.
const BUCKET_MICROS: u64 = 100_000;
/// Evidence this close in arrival time counts fully: a sender stalled or behind for that
/// long keeps its place. A clock 0.1% off moves 10 ms in that time.
const GRACE_MICROS: u64 = 10_000_000;
/// How fast the correction may come down, parts per million of the time passing (10%):
/// when it must (a sender that started behind, or was behind for longer than the grace,
/// has caught up), frames and audio are drawn closer, not onto each other.
const DESCENT_PPM: u64 = 100_000;

/// A packet with its place on the wall clock (unix epoch microseconds).
#[derive(Debug, Clone)]
pub(crate) struct TimedPacket {
    pub packet: SequencedPacket,
    pub wall_micros: i64,
    /// The participant clock's correction that placed it (see the module docs).
    pub correction_micros: i64,
}

/// The evidence of the packets that arrived within one bucket: the least of `n`, and of
/// `n - MAX_DRIFT × arrival` (for packets past the grace, so that the weakening of each
/// packet is exact).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    least: i64,
    least_behind: i128,
}

/// `rate` (ppm) times `micros`.
fn scaled(micros: u64, rate: u64) -> i128 {
    i128::from(micros) * i128::from(rate) / 1_000_000
}

/// One stream of the participant, as the clock sees it.
#[derive(Debug)]
struct StreamClock {
    /// The caller's id of the stream.
    id: usize,
    clock_rate: u32,
    segment: Option<u32>,
    /// The current segment's base, once anchored.
    base: i64,
    /// While the current segment gathers its first window.
    anchoring: Option<Anchoring>,
    /// The latest arrival of the current segment's packets so far, in sequence order.
    latest_arrival: u64,
    /// Its packets waiting to be placed, in sequence order (so by `Held::arrival`).
    held: VecDeque<Held>,
}

/// A segment gathering its first window: when it began and its least transit so far.
#[derive(Debug, Clone, Copy)]
struct Anchoring {
    first: u64,
    least: i64,
}

#[derive(Debug)]
struct Held {
    packet: SequencedPacket,
    /// Arrival (see `push`) and transit, as the envelope takes them.
    arrival: u64,
    transit: i64,
    /// The segment's base, once it is anchored.
    base: Option<i64>,
}

/// The clock mapping of one participant's streams (see the module docs). Push every
/// sequenced packet of its streams; placed packets come out, per stream in the order
/// pushed, across streams in order of arrival.
#[derive(Debug)]
pub(crate) struct ParticipantClock {
    lookahead: u64,
    streams: Vec<StreamClock>,
    /// Packets waiting in all the streams.
    held: usize,
    /// The evidence per bucket of arrival time (`arrival / BUCKET_MICROS`).
    envelope: BTreeMap<u64, Bucket>,
    /// The evidence of buckets folded out of `envelope`: the least `n - MAX_DRIFT ×
    /// arrival`.
    retired: Option<i128>,
    newest_arrival: u64,
    /// The last correction applied and the arrival it was applied at: the correction
    /// comes down at most at `DESCENT` from there.
    applied: Option<(u64, i64)>,
}

impl ParticipantClock {
    /// `lookahead`: how far past a packet's arrival the clock looks before placing it, and
    /// the span over which a new segment is anchored.
    pub fn new(lookahead: u64) -> ParticipantClock {
        ParticipantClock {
            lookahead,
            streams: Vec::new(),
            held: 0,
            envelope: BTreeMap::new(),
            retired: None,
            newest_arrival: 0,
            applied: None,
        }
    }

    /// Takes one packet of stream `id` (in the stream's sequence order) and appends the
    /// packets that can now be placed to `out`, with their stream's id.
    pub fn push(
        &mut self,
        id: usize,
        clock_rate: u32,
        packet: SequencedPacket,
        out: &mut Vec<(usize, TimedPacket)>,
    ) {
        let index = match self.streams.iter().position(|s| s.id == id) {
            Some(index) => index,
            None => {
                self.streams.push(StreamClock {
                    id,
                    clock_rate: clock_rate.max(1),
                    segment: None,
                    base: 0,
                    anchoring: None,
                    latest_arrival: 0,
                    held: VecDeque::new(),
                });
                self.streams.len() - 1
            }
        };
        self.newest_arrival = self.newest_arrival.max(packet.arrival_micros);
        if self.streams[index].segment != Some(packet.segment) {
            // The old segment is anchored with what it has; the new one starts its window.
            self.anchor(index);
            let stream = &mut self.streams[index];
            stream.segment = Some(packet.segment);
            stream.anchoring = Some(Anchoring {
                first: packet.arrival_micros,
                least: i64::MAX,
            });
            stream.latest_arrival = 0;
        }
        let stream = &mut self.streams[index];
        // A packet that arrived before packets sent ahead of it (reordered) is taken to
        // have arrived with them: its own arrival would show a transit below what the
        // path allows when the RTP timestamps of the two differ (frames, audio packets),
        // and one such packet would pull the envelope down for its whole window.
        stream.latest_arrival = stream.latest_arrival.max(packet.arrival_micros);
        let arrival = stream.latest_arrival;
        let transit =
            (arrival as i64).saturating_sub(rtp_micros(packet.ext_timestamp, stream.clock_rate));
        let base = match &mut stream.anchoring {
            Some(anchoring) => {
                anchoring.least = anchoring.least.min(transit);
                None
            }
            None => Some(stream.base),
        };
        if let Some(base) = base {
            self.observe(arrival, transit.saturating_sub(base));
        }
        self.held += 1;
        self.streams[index].held.push_back(Held {
            packet,
            arrival,
            transit,
            base,
        });
        for index in 0..self.streams.len() {
            if let Some(anchoring) = self.streams[index].anchoring {
                if self.newest_arrival >= anchoring.first.saturating_add(self.lookahead) {
                    self.anchor(index);
                }
            }
        }
        self.release(out, false);
    }

    /// End of input: anchors what is still anchoring and places every packet held.
    pub fn finish(&mut self, out: &mut Vec<(usize, TimedPacket)>) {
        self.release(out, true);
    }

    /// Fixes the base of stream `index`'s current segment, if it is still anchoring: its
    /// least transit over the first window, less the participant's envelope over the same
    /// time (the least normalised transit of its other streams over that window, or before
    /// it within the grace: the fastest packets of one sender over the same time crossed
    /// alike), so that its normalised transits are on their scale; 0 when there is none.
    fn anchor(&mut self, index: usize) {
        let Some(anchoring) = self.streams[index].anchoring.take() else {
            return;
        };
        let window = anchoring.first / BUCKET_MICROS
            ..=anchoring.first.saturating_add(self.lookahead) / BUCKET_MICROS;
        let within = self
            .envelope
            .range(window)
            .map(|(_, bucket)| bucket.least)
            .min();
        let before = self.envelope_at(anchoring.first, false);
        let reference = within.into_iter().chain(before).min().unwrap_or(0);
        let base = anchoring.least.saturating_sub(reference);
        self.streams[index].base = base;
        let mut observed = Vec::new();
        for held in self.streams[index]
            .held
            .iter_mut()
            .filter(|h| h.base.is_none())
        {
            held.base = Some(base);
            observed.push((held.arrival, held.transit.saturating_sub(base)));
        }
        for (arrival, normalised) in observed {
            self.observe(arrival, normalised);
        }
    }

    fn observe(&mut self, arrival: u64, normalised: i64) {
        let n = i128::from(normalised);
        let behind = n - scaled(arrival, MAX_DRIFT_PPM);
        self.envelope
            .entry(arrival / BUCKET_MICROS)
            .and_modify(|b| {
                b.least = b.least.min(normalised);
                b.least_behind = b.least_behind.min(behind);
            })
            .or_insert(Bucket {
                least: normalised,
                least_behind: behind,
            });
    }

    /// The correction at arrival time `at` (see the module docs), from the evidence seen
    /// so far up to the lookahead; `None` without any.
    fn correction(&self, at: u64) -> Option<i64> {
        self.envelope_at(at, true)
    }

    /// The weakened least normalised transit at arrival time `at`, of evidence up to `at`
    /// (and, with `ahead`, up to the lookahead after it), to a bucket.
    fn envelope_at(&self, at: u64, ahead: bool) -> Option<i64> {
        let own = at / BUCKET_MICROS;
        let horizon = if ahead {
            self.lookahead.div_ceil(BUCKET_MICROS)
        } else {
            0
        };
        let graced = at.saturating_sub(GRACE_MICROS) / BUCKET_MICROS;
        let recent = self
            .envelope
            .range(..=own + horizon)
            .map(|(&index, bucket)| {
                if index < graced {
                    bucket.least_behind + scaled(at.saturating_sub(GRACE_MICROS), MAX_DRIFT_PPM)
                } else {
                    i128::from(bucket.least)
                }
            })
            .min();
        // Folded evidence is past the grace for every packet still to come.
        let retired = self
            .retired
            .map(|r| r + scaled(at.saturating_sub(GRACE_MICROS), MAX_DRIFT_PPM));
        let least = match (recent, retired) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(i64::try_from(least).unwrap_or(if least < 0 { i64::MIN } else { i64::MAX }))
    }

    /// Places the packets whose lookahead has been seen (all with `all`), across the
    /// streams in order of arrival, each stream's in sequence order.
    fn release(&mut self, out: &mut Vec<(usize, TimedPacket)>, all: bool) {
        // The stream whose next packet arrived first, while there is one.
        while let Some(index) = (0..self.streams.len())
            .filter_map(|i| self.streams[i].held.front().map(|h| (h.arrival, i)))
            .min()
            .map(|(_, i)| i)
        {
            let Some(front) = self.streams[index].held.front() else {
                break;
            };
            let seen_ahead = self.newest_arrival >= front.arrival.saturating_add(self.lookahead);
            let ready = all || self.held > MAX_HELD || (front.base.is_some() && seen_ahead);
            if !ready {
                break;
            }
            if front.base.is_none() {
                self.anchor(index);
            }
            let Some(held) = self.streams[index].held.pop_front() else {
                break;
            };
            self.held -= 1;
            let base = held.base.unwrap_or(self.streams[index].base);
            let arrival = held.arrival;
            // The packet's own transit is among the evidence, so there is always a value,
            // and it is at most the packet's own.
            let own = held.transit.saturating_sub(base);
            let envelope = self.correction(arrival).map_or(own, |c| c.min(own));
            // It comes down no faster than `DESCENT` (see the module docs).
            let correction = match self.applied {
                Some((at, applied)) if arrival >= at => {
                    let floor = i128::from(applied) - scaled(arrival - at, DESCENT_PPM);
                    let correction = i128::from(envelope).max(floor);
                    let correction = i64::try_from(correction).unwrap_or(envelope);
                    self.applied = Some((arrival, correction));
                    correction
                }
                Some((_, applied)) => envelope.max(applied),
                None => {
                    self.applied = Some((arrival, envelope));
                    envelope
                }
            };
            let stream = &self.streams[index];
            let wall_micros = rtp_micros(held.packet.ext_timestamp, stream.clock_rate)
                .saturating_add(base)
                .saturating_add(correction);
            out.push((
                stream.id,
                TimedPacket {
                    packet: held.packet,
                    wall_micros,
                    correction_micros: correction,
                },
            ));
        }
        // Buckets behind every packet still to come (out of order by at most the
        // lookahead and a reorder window) by more than the grace weaken linearly from now
        // on: one number keeps them all, `min(transit - MAX_DRIFT × arrival)`.
        let horizon = self
            .newest_arrival
            .saturating_sub(GRACE_MICROS + 2 * self.lookahead + STALE_MARGIN_MICROS)
            / BUCKET_MICROS;
        while let Some(entry) = self.envelope.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            let folded = entry.remove().least_behind;
            self.retired = Some(self.retired.map_or(folded, |r| r.min(folded)));
        }
    }
}

/// How far behind the newest arrival a packet may still come (the sequencer's reorder
/// window, chunks of two recorders overlapping) and find the envelope it needs.
const STALE_MARGIN_MICROS: u64 = 2_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(segment: u32, ext_timestamp: i64, arrival_micros: u64) -> SequencedPacket {
        SequencedPacket {
            segment,
            ext_seq: ext_timestamp,
            ext_timestamp,
            arrival_micros,
            marker: false,
            rtp: Vec::new(),
            payload: 0..0,
        }
    }

    fn run(
        clock: &mut ParticipantClock,
        packets: Vec<(usize, u32, SequencedPacket)>,
    ) -> Vec<(usize, TimedPacket)> {
        let mut out = Vec::new();
        for (id, rate, packet) in packets {
            clock.push(id, rate, packet, &mut out);
        }
        clock.finish(&mut out);
        out
    }

    #[test]
    fn anchor_is_the_least_delayed_packet_of_the_first_window() {
        let mut clock = ParticipantClock::new(1_000_000);
        let mut out = Vec::new();
        // Frames every 33.3 ms from RTP time 900_000 (10 s); network delay 50 ms, except
        // the 3rd packet which took only 20 ms; the first packet was delayed 80 ms.
        let delays = [80_000u64, 50_000, 20_000, 50_000, 50_000];
        let base = 1_700_000_000_000_000u64;
        for (i, delay) in delays.iter().enumerate() {
            let ts = 900_000 + 3000 * i as i64;
            clock.push(
                0,
                90_000,
                packet(0, ts, base + 33_333 * i as u64 + delay),
                &mut out,
            );
        }
        assert!(
            out.is_empty(),
            "nothing leaves before the lookahead has passed"
        );
        clock.push(
            0,
            90_000,
            packet(0, 900_000 + 3000 * 40, base + 33_333 * 40 + 50_000),
            &mut out,
        );
        assert_eq!(out.len(), 5, "the first packets have seen a second ahead");
        clock.finish(&mut out);
        assert_eq!(out.len(), 6);
        // Anchored with the packet that took 20 ms: the first frame lands 20 ms after
        // it was sent, not 80 ms.
        assert_eq!(out[0].1.wall_micros, base as i64 + 20_000);
        // Later packets are placed by RTP time (40 frames = 1.333 s), not by arrival.
        assert_eq!(out[5].1.wall_micros - out[0].1.wall_micros, 1_333_333);
    }

    #[test]
    fn a_stall_and_its_burst_do_not_move_the_stream() {
        // 30 fps; the sender stops at 4 s for 2.5 s and then sends the backlog within
        // 100 ms; the catch-up burst's packets all arrive late, up to 2.5 s.
        let mut clock = ParticipantClock::new(1_000_000);
        let mut packets = Vec::new();
        for frame in 0..300i64 {
            let sent = frame * 1_000_000 / 30;
            let arrival = if (4_000_000..6_600_000).contains(&sent) {
                6_500_000 + (sent - 4_000_000) / 26
            } else {
                sent
            };
            packets.push((
                0,
                90_000,
                packet(0, frame * 3000, (arrival + 30_000) as u64),
            ));
        }
        let out = run(&mut clock, packets);
        assert_eq!(out.len(), 300);
        for (frame, (_, timed)) in out.iter().enumerate() {
            assert_eq!(timed.wall_micros, frame as i64 * 1_000_000 / 30 + 30_000);
            assert!(timed.wall_micros <= timed.packet.arrival_micros as i64);
        }
    }

    #[test]
    fn a_fast_clock_is_followed_and_never_placed_after_its_arrival() {
        // 0.1% fast: RTP time gains 1 ms a second on the arrivals.
        let mut clock = ParticipantClock::new(1_000_000);
        let packets = (0..1800i64)
            .map(|frame| {
                let media = frame * 1_000_000 / 30;
                let arrival = media * 1000 / 1001 + 30_000;
                (0, 90_000, packet(0, frame * 3000, arrival as u64))
            })
            .collect();
        let out = run(&mut clock, packets);
        let last = &out.last().unwrap().1;
        let behind = last.packet.arrival_micros as i64 - last.wall_micros;
        assert!((0..=1_100).contains(&behind), "{behind}");
        assert!(out
            .iter()
            .all(|(_, t)| t.wall_micros <= t.packet.arrival_micros as i64));
        assert!(out
            .windows(2)
            .all(|w| w[1].1.wall_micros > w[0].1.wall_micros));
    }

    #[test]
    fn streams_of_one_participant_share_the_correction() {
        // Audio (48 kHz, random origin) flows; video (90 kHz, another origin) stalls at
        // 2 s for 1.5 s and bursts. Both map to the same sender time throughout.
        let mut clock = ParticipantClock::new(1_000_000);
        let mut packets = Vec::new();
        for ms in (0..8000i64).step_by(20) {
            packets.push((
                1,
                48_000,
                packet(0, 5_000 + ms * 48, (ms * 1000 + 20_000) as u64),
            ));
            if ms % 40 == 0 {
                let sent = ms * 1000;
                let arrival = if (2_000_000..3_600_000).contains(&sent) {
                    3_500_000 + (sent - 2_000_000) / 16
                } else {
                    sent
                };
                packets.push((
                    7,
                    90_000,
                    packet(0, 70_000 + ms * 90, (arrival + 25_000) as u64),
                ));
            }
        }
        packets.sort_by_key(|(_, _, p)| p.arrival_micros);
        let out = run(&mut clock, packets);
        for (id, timed) in &out {
            let sent = match id {
                1 => (timed.packet.ext_timestamp - 5_000) / 48 * 1000,
                _ => (timed.packet.ext_timestamp - 70_000) / 90 * 1000,
            };
            // Each stream lands at its sending time plus its own least delay.
            let delay = if *id == 1 { 20_000 } else { 25_000 };
            assert_eq!(timed.wall_micros, sent + delay, "stream {id}");
        }
    }

    #[test]
    fn a_reordered_packet_does_not_pull_the_envelope_down() {
        // Audio every 20 ms, 10 ms transit. Packet 152 overtook 150 and 151: it came
        // when 150 would have, 150 when 152 would have. On its own arrival 152 would show
        // a transit of -30 ms and move everything near it 40 ms earlier.
        let mut clock = ParticipantClock::new(1_000_000);
        let mut packets = Vec::new();
        for n in 0..300i64 {
            let sent = match n {
                150 => 152,
                152 => 150,
                n => n,
            };
            let arrival = sent * 20_000 + 10_000;
            packets.push((0, 48_000, packet(0, n * 960, arrival as u64)));
        }
        let out = run(&mut clock, packets);
        for (n, (_, timed)) in out.iter().enumerate() {
            assert_eq!(timed.wall_micros, n as i64 * 20_000 + 10_000, "packet {n}");
        }
    }

    #[test]
    fn each_segment_gets_its_own_anchor() {
        let mut clock = ParticipantClock::new(1_000_000);
        let out = run(
            &mut clock,
            vec![
                (0, 48_000, packet(0, 0, 5_000_000)),
                (0, 48_000, packet(1, 480_000, 20_000_000)),
            ],
        );
        assert_eq!(out[0].1.wall_micros, 5_000_000);
        // The second segment's RTP time (10 s) is unrelated to the first's: its own
        // arrival anchors it.
        assert_eq!(out[1].1.wall_micros, 20_000_000);
    }

    #[test]
    fn a_late_stream_of_a_participant_is_anchored_on_the_shared_clock() {
        // Audio from 0; video from 5 s, its first packet delayed 40 ms more than the
        // audio's least delay, its next ones as fast as the audio. The video's base is
        // its own least transit: placed at sending time plus the least delay.
        let mut clock = ParticipantClock::new(1_000_000);
        let mut packets = Vec::new();
        for ms in (0..10_000i64).step_by(20) {
            packets.push((1, 48_000, packet(0, ms * 48, (ms * 1000 + 10_000) as u64)));
            if ms >= 5_000 && ms % 40 == 0 {
                let extra = if ms == 5_000 { 40_000 } else { 0 };
                packets.push((
                    2,
                    90_000,
                    packet(0, 1_000 + ms * 90, (ms * 1000 + 10_000 + extra) as u64),
                ));
            }
        }
        packets.sort_by_key(|(_, _, p)| p.arrival_micros);
        let out = run(&mut clock, packets);
        let video: Vec<&TimedPacket> = out
            .iter()
            .filter(|(id, _)| *id == 2)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(video[0].wall_micros, 5_010_000);
        assert_eq!(video.last().unwrap().wall_micros, 9_970_000);
    }
}
