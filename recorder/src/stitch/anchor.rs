//! Mapping RTP time onto the recording's wall clock.
//!
//! Each segment gets one offset, `wall = rtp_micros(ext_timestamp) + offset`. The offset
//! is the minimum of `arrival - rtp_micros` over the segment's first
//! [`ANCHOR_WINDOW_MICROS`](super::StitchOptions::anchor_window_micros): the packet that
//! crossed the network fastest shows the sender's clock with the least queueing delay, so
//! the minimum is robust to jitter where the first packet's arrival alone is not (it may
//! have waited behind a burst). A late joiner's or resumed stream's segment is anchored by
//! its own first packets, which puts it at the right place on the shared timeline.
//!
//! Within a segment the RTP clock rules: packets are placed by their timestamps, so
//! network jitter does not move frames or audio. But a sender's RTP clock may not keep
//! pace with the wall clock: clock drift (0.36 s per hour at 100 ppm), or a sender that
//! stalled and fell behind. So the anchor is checked against the arrival clock: the
//! minimum of `arrival - rtp_micros` over each [`DRIFT_WINDOW_MICROS`] of arrivals is
//! compared with the anchor, and when they differ by more than [`DRIFT_THRESHOLD_MICROS`]
//! the anchor moves to the new minimum. Moving later leaves a hole (video holds its last
//! frame, audio is concealed); moving earlier makes the next media overlap what was
//! written, which is dropped. The threshold is above network jitter, so a steady stream is
//! never re-anchored, and it bounds how far a participant's audio and video (anchored
//! separately) can drift apart.

use super::sequence::{rtp_micros, SequencedPacket};

/// At most this many packets wait for their segment's anchor (a bound in case arrival
/// times stand still).
const MAX_PENDING: usize = 4096;
/// The span of arrivals over which the anchor is checked against the arrival clock.
pub(crate) const DRIFT_WINDOW_MICROS: u64 = 2_000_000;
/// How far the arrival clock may wander from the anchor before the anchor follows.
pub(crate) const DRIFT_THRESHOLD_MICROS: i64 = 200_000;

/// A packet with its place on the wall clock (unix epoch microseconds).
#[derive(Debug, Clone)]
pub(crate) struct TimedPacket {
    pub packet: SequencedPacket,
    pub wall_micros: i64,
}

/// Holds each segment's first packets until its anchor is known, then passes everything
/// on with a wall-clock time.
#[derive(Debug)]
pub(crate) struct Anchorer {
    clock_rate: u32,
    window_micros: u64,
    segment: Option<u32>,
    first_arrival: u64,
    best_offset: i64,
    offset: Option<i64>,
    pending: Vec<SequencedPacket>,
    /// The drift check's window: where it began (arrival) and its minimum offset.
    window_start: u64,
    window_min: i64,
    /// How often the anchor was moved to follow the arrival clock.
    pub drift_corrections: u64,
}

impl Anchorer {
    pub fn new(clock_rate: u32, window_micros: u64) -> Anchorer {
        Anchorer {
            clock_rate,
            window_micros,
            segment: None,
            first_arrival: 0,
            best_offset: i64::MAX,
            offset: None,
            pending: Vec::new(),
            window_start: 0,
            window_min: i64::MAX,
            drift_corrections: 0,
        }
    }

    pub fn push(&mut self, packet: SequencedPacket, out: &mut Vec<TimedPacket>) {
        if self.segment != Some(packet.segment) {
            self.flush(out);
            self.segment = Some(packet.segment);
            self.first_arrival = packet.arrival_micros;
            self.best_offset = i64::MAX;
            self.offset = None;
        }
        let offset = (packet.arrival_micros as i64)
            .saturating_sub(rtp_micros(packet.ext_timestamp, self.clock_rate));
        if let Some(anchor) = self.offset {
            self.window_min = self.window_min.min(offset);
            let anchor =
                if packet.arrival_micros >= self.window_start.saturating_add(DRIFT_WINDOW_MICROS) {
                    let drift = self.window_min.saturating_sub(anchor);
                    let anchor = if drift.abs() > DRIFT_THRESHOLD_MICROS {
                        self.drift_corrections += 1;
                        *self.offset.insert(self.window_min)
                    } else {
                        anchor
                    };
                    self.window_start = packet.arrival_micros;
                    self.window_min = i64::MAX;
                    anchor
                } else {
                    anchor
                };
            let wall_micros =
                rtp_micros(packet.ext_timestamp, self.clock_rate).saturating_add(anchor);
            out.push(TimedPacket {
                packet,
                wall_micros,
            });
            return;
        }
        self.best_offset = self.best_offset.min(offset);
        let settled =
            packet.arrival_micros >= self.first_arrival.saturating_add(self.window_micros);
        self.pending.push(packet);
        if settled || self.pending.len() >= MAX_PENDING {
            self.flush(out);
        }
    }

    /// Fixes the current segment's anchor with what has been seen and releases the
    /// packets waiting for it.
    pub fn flush(&mut self, out: &mut Vec<TimedPacket>) {
        if self.pending.is_empty() {
            return;
        }
        let offset = *self.offset.get_or_insert(self.best_offset);
        self.window_start = self
            .pending
            .iter()
            .map(|p| p.arrival_micros)
            .max()
            .unwrap_or(self.first_arrival);
        self.window_min = i64::MAX;
        for packet in self.pending.drain(..) {
            let wall_micros =
                rtp_micros(packet.ext_timestamp, self.clock_rate).saturating_add(offset);
            out.push(TimedPacket {
                packet,
                wall_micros,
            });
        }
    }
}

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

    #[test]
    fn anchor_is_the_least_delayed_packet_of_the_first_window() {
        let mut anchorer = Anchorer::new(90_000, 1_000_000);
        let mut out = Vec::new();
        // Frames every 33.3 ms from RTP time 900_000 (10 s); network delay 50 ms, except
        // the 3rd packet which took only 20 ms; the first packet was delayed 80 ms.
        let delays = [80_000u64, 50_000, 20_000, 50_000, 50_000];
        let base = 1_700_000_000_000_000u64;
        for (i, delay) in delays.iter().enumerate() {
            let ts = 900_000 + 3000 * i as i64;
            anchorer.push(packet(0, ts, base + 33_333 * i as u64 + delay), &mut out);
        }
        assert!(
            out.is_empty(),
            "nothing leaves before the anchor window has passed"
        );
        anchorer.push(
            packet(0, 900_000 + 3000 * 40, base + 33_333 * 40 + 50_000),
            &mut out,
        );
        assert_eq!(out.len(), 6);
        // Anchored with the packet that took 20 ms: the first frame lands 20 ms after
        // it was sent, not 80 ms.
        assert_eq!(out[0].wall_micros, base as i64 + 20_000);
        // Later packets are placed by RTP time (40 frames = 1.333 s), not by arrival.
        assert_eq!(out[5].wall_micros - out[0].wall_micros, 1_333_333);
    }

    #[test]
    fn anchor_follows_a_sender_that_falls_behind_but_not_jitter() {
        let mut anchorer = Anchorer::new(90_000, 1_000_000);
        let mut out = Vec::new();
        // 20 s of frames at 30 fps; the sender's RTP clock runs at 80% of the wall clock
        // from 5 s on (a stalled sender), with ±15 ms of network jitter throughout.
        for frame in 0..600i64 {
            let rtp_elapsed = frame * 1_000_000 / 30;
            let wall = if rtp_elapsed < 5_000_000 {
                rtp_elapsed
            } else {
                5_000_000 + (rtp_elapsed - 5_000_000) * 5 / 4
            };
            let jitter = (frame * 7919 % 31 - 15) * 1000;
            anchorer.push(
                packet(
                    0,
                    frame * 3000,
                    (10_000_000 + wall + 20_000 + jitter) as u64,
                ),
                &mut out,
            );
        }
        anchorer.flush(&mut out);
        assert_eq!(out.len(), 600);
        // Before 5 s nothing moved; at the end the timeline is within the threshold
        // (plus one window of lag) of the arrival clock, not 4 s behind it.
        let early: Vec<i64> = out[..150]
            .iter()
            .map(|p| p.wall_micros - rtp_micros(p.packet.ext_timestamp, 90_000))
            .collect();
        assert!(
            early.windows(2).all(|w| w[0] == w[1]),
            "no correction while the clocks agree"
        );
        let last = out.last().unwrap();
        let behind = (last.packet.arrival_micros as i64) - last.wall_micros;
        assert!(
            behind < DRIFT_THRESHOLD_MICROS + 500_000 + 35_000,
            "behind {behind}"
        );
        assert!(anchorer.drift_corrections >= 3);
    }

    #[test]
    fn each_segment_gets_its_own_anchor() {
        let mut anchorer = Anchorer::new(48_000, 1_000_000);
        let mut out = Vec::new();
        anchorer.push(packet(0, 0, 5_000_000), &mut out);
        anchorer.push(packet(1, 480_000, 20_000_000), &mut out);
        anchorer.flush(&mut out);
        assert_eq!(out[0].wall_micros, 5_000_000);
        // The second segment's RTP time (10 s) is unrelated to the first's: its own
        // arrival anchors it.
        assert_eq!(out[1].wall_micros, 20_000_000);
    }
}
