//! A video jitter-buffer and renderer model for one received stream: which frames a real
//! client would have shown, when, and where the picture froze.
//!
//! It follows what libwebrtc's frame buffer does, reduced to what the measurements need:
//!
//! * A frame is **complete** when every packet from its first (VP8 S bit) to its last (RTP
//!   marker) has arrived; it is **continuous** when its first packet directly follows the
//!   last packet of the frame played (or dropped) before it, so a frame lost whole, seen
//!   only as a hole in the sequence numbers, holds the next frame back too.
//! * A complete, continuous frame renders at `capture + base latency + target delay`, or
//!   when it completes if that is later. The capture time is the probe send time of the
//!   frame's first packet; the base latency is the smallest frame latency of the last
//!   [`LATENCY_WINDOW`] frames; the **target delay** is the 95th percentile of the excess
//!   over that base, clamped to `[min, max]`, like the adaptive jitter delay of WebRTC's
//!   jitter buffer (it grows with jitter and with retransmission delay, and shrinks back).
//! * A frame not complete and continuous by `capture + base + max` is dropped (a key
//!   frame by `capture + base + 3 s`: nothing decodes without it, and at a low bitrate
//!   the pacer takes longer than the jitter buffer's bound to send one). The decoder
//!   is then broken (it missed a reference) until a key frame: frames after it are
//!   dropped as they complete, and [`Playout::awaiting_keyframe`] tells the receiver to
//!   send PLI. Upper temporal layer frames are not referenced by the base layer, so a lost
//!   one does not break decoding (a simplification: TL1 is referenced by TL2).
//! * A complete key frame is not held back by older frames that are not ready: they are
//!   dropped, as libwebrtc's frame buffer jumps to the next decodable frame, without
//!   breaking decoding. A simulcast switch looks like that: the forwarder continues the
//!   sequence numbers, cuts the old encoding's frame in progress short and starts the new
//!   encoding with a key frame. Decoding broken while a key frame is already arriving
//!   does not ask for another one.
//! * A **freeze** is a render interval longer than max(3 × mean, mean + 150 ms), the
//!   WebRTC stats definition; the mean is a moving average of the intervals that were not
//!   freezes. It starts over after a change of simulcast encoding (the probe's encoding
//!   index), whose frame rate may differ: the interval across the switch is judged by the
//!   old rate, the ones after it by the new.

use crate::Micros;

/// Frames held at most: a second at 30 fps. A new frame past this pushes the oldest out
/// as if its deadline had passed.
pub const MAX_PENDING_FRAMES: usize = 32;
/// Frame latencies the target delay is computed over.
pub const LATENCY_WINDOW: usize = 64;
/// How long an incomplete key frame is waited for (libwebrtc's `max_wait_for_frame`).
const KEYFRAME_WAIT_US: Micros = 3_000_000;
/// WebRTC freeze definition: interval > max(3 × mean, mean + 150 ms).
const FREEZE_MIN_EXCESS_US: Micros = 150_000;
/// The mean render interval moves by 1/8 of each new interval (after a plain average of
/// the first 8, so that it settles fast at the start and after a change of encoding).
const MEAN_INTERVAL_WEIGHT: u64 = 8;

/// One frame waiting to be rendered. Sequence numbers are the low 32 bits of the stream's
/// extended sequence numbers (compared with wrapping arithmetic).
#[derive(Debug, Clone, Copy, Default)]
struct PendingFrame {
    rtp_timestamp: u32,
    /// Earliest probe send time among its packets: the first packet's, once it arrived.
    capture_us: Micros,
    first_seq: u32,
    last_seq: u32,
    received: u32,
    has_first: bool,
    has_last: bool,
    keyframe: bool,
    temporal_layer: u8,
    /// Simulcast encoding (from the probe).
    encoding: u8,
    completed_at: Option<Micros>,
}

impl PendingFrame {
    fn is_complete(&self) -> bool {
        self.completed_at.is_some()
    }

    fn check_complete(&mut self, now: Micros) {
        if self.completed_at.is_none() && self.has_first && self.has_last {
            let span = self.last_seq.wrapping_sub(self.first_seq);
            if span < u32::MAX / 2 && self.received == span + 1 {
                self.completed_at = Some(now);
            }
        }
    }
}

/// What one packet contributes to the model.
#[derive(Debug, Clone, Copy)]
pub struct FramePacket {
    /// Extended sequence number (low 32 bits suffice).
    pub seq: u32,
    pub rtp_timestamp: u32,
    pub send_us: Micros,
    pub frame_start: bool,
    pub frame_end: bool,
    pub keyframe: bool,
    pub temporal_layer: u8,
    /// The simulcast encoding it belongs to (the probe's, not rewritten by the forwarder).
    pub encoding: u8,
}

/// Counters the receiver sums into its stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutCounters {
    pub frames_rendered: u64,
    pub frames_dropped: u64,
    pub freezes: u64,
    pub frozen_us: Micros,
}

/// The jitter buffer and renderer of one video stream.
#[derive(Debug, Clone)]
pub struct Playout {
    min_delay_us: Micros,
    max_delay_us: Micros,
    /// Ordered by RTP timestamp, oldest first.
    frames: Vec<PendingFrame>,
    /// Timestamp of the last frame rendered or dropped: older packets are too late.
    last_done_timestamp: Option<u32>,
    /// Last sequence number of that frame, for continuity.
    last_done_seq: Option<u32>,
    decodable: bool,
    awaiting_keyframe: bool,
    latencies: [u32; LATENCY_WINDOW],
    latency_count: usize,
    latency_next: usize,
    base_latency_us: Micros,
    target_delay_us: Micros,
    last_render_at: Option<Micros>,
    mean_interval_us: Option<Micros>,
    /// Intervals in the mean since it (re)started, up to [`MEAN_INTERVAL_WEIGHT`].
    mean_samples: u64,
    /// Encoding of the last frame rendered.
    rendered_encoding: Option<u8>,
    counters: PlayoutCounters,
    /// Sum of the target delay at each render, for the mean.
    target_sum_us: u128,
}

fn is_older(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Playout {
    pub fn new(min_delay_us: Micros, max_delay_us: Micros) -> Playout {
        let max_delay_us = max_delay_us.max(min_delay_us);
        Playout {
            min_delay_us,
            max_delay_us,
            frames: Vec::with_capacity(MAX_PENDING_FRAMES),
            last_done_timestamp: None,
            last_done_seq: None,
            decodable: false,
            awaiting_keyframe: true,
            latencies: [0; LATENCY_WINDOW],
            latency_count: 0,
            latency_next: 0,
            base_latency_us: 0,
            target_delay_us: min_delay_us,
            last_render_at: None,
            mean_interval_us: None,
            mean_samples: 0,
            rendered_encoding: None,
            counters: PlayoutCounters::default(),
            target_sum_us: 0,
        }
    }

    /// No key frame start seen since the stream began or decoding broke: the receiver
    /// should ask for one (PLI).
    pub fn awaiting_keyframe(&self) -> bool {
        self.awaiting_keyframe
    }

    /// The adaptive target delay (on top of the base network latency).
    pub fn target_delay_us(&self) -> Micros {
        self.target_delay_us
    }

    /// Mean of the target delay over the rendered frames (the current one before any).
    pub fn mean_target_delay_us(&self) -> Micros {
        match self.counters.frames_rendered {
            0 => self.target_delay_us,
            n => (self.target_sum_us / u128::from(n)) as Micros,
        }
    }

    /// Bytes on the heap (the pending frames).
    pub fn heap_bytes(&self) -> usize {
        self.frames.capacity() * size_of::<PendingFrame>()
    }

    pub fn counters(&self) -> PlayoutCounters {
        self.counters
    }

    /// The decoder lost a reference it will not get back (a packet given up on): drop
    /// frames until a key frame.
    pub fn break_decoding(&mut self) {
        self.decodable = false;
        // A key frame already arriving repairs it: asking for another would only add one
        // more key frame (and, when it is late, more waiting).
        self.awaiting_keyframe = !self.frames.iter().any(|f| f.keyframe && f.has_first);
    }

    /// The stream restarted (new sequence numbers and timestamps, e.g. after a failover):
    /// forget the pending frames and wait for a key frame, but keep the render history so
    /// the gap counts as a freeze.
    pub fn restart(&mut self) {
        self.frames.clear();
        self.last_done_timestamp = None;
        self.last_done_seq = None;
        self.break_decoding();
    }

    /// Adds a first copy of a packet. Then call [`Playout::advance`].
    pub fn on_packet(&mut self, now: Micros, packet: &FramePacket) {
        if packet.keyframe && packet.frame_start {
            self.awaiting_keyframe = false;
        }
        if let Some(done) = self.last_done_timestamp {
            if !is_older(done, packet.rtp_timestamp) {
                // Its frame was rendered or dropped already.
                return;
            }
        }
        let position = self
            .frames
            .iter()
            .position(|f| !is_older(f.rtp_timestamp, packet.rtp_timestamp));
        let index = match position {
            Some(i) if self.frames[i].rtp_timestamp == packet.rtp_timestamp => i,
            _ => {
                if self.frames.len() >= MAX_PENDING_FRAMES {
                    self.drop_head();
                }
                // Recompute: dropping the head shifted the frames.
                let at = self
                    .frames
                    .iter()
                    .position(|f| !is_older(f.rtp_timestamp, packet.rtp_timestamp))
                    .unwrap_or(self.frames.len());
                self.frames.insert(
                    at,
                    PendingFrame {
                        rtp_timestamp: packet.rtp_timestamp,
                        capture_us: packet.send_us,
                        ..PendingFrame::default()
                    },
                );
                at
            }
        };
        let Some(frame) = self.frames.get_mut(index) else {
            return;
        };
        frame.capture_us = frame.capture_us.min(packet.send_us);
        frame.received = frame.received.saturating_add(1);
        if packet.frame_start {
            frame.has_first = true;
            frame.first_seq = packet.seq;
            frame.keyframe |= packet.keyframe;
        }
        if packet.frame_end {
            frame.has_last = true;
            frame.last_seq = packet.seq;
        }
        frame.temporal_layer = packet.temporal_layer;
        frame.encoding = packet.encoding;
        let was_complete = frame.is_complete();
        frame.check_complete(now);
        if !was_complete && frame.is_complete() {
            let latency = now.saturating_sub(frame.capture_us);
            self.record_latency(latency);
        }
    }

    fn record_latency(&mut self, latency: Micros) {
        self.latencies[self.latency_next] = u32::try_from(latency).unwrap_or(u32::MAX);
        self.latency_next = (self.latency_next + 1) % LATENCY_WINDOW;
        self.latency_count = (self.latency_count + 1).min(LATENCY_WINDOW);
        let samples = &self.latencies[..self.latency_count];
        let base = samples.iter().copied().min().unwrap_or(0);
        let mut excess = [0u32; LATENCY_WINDOW];
        for (e, s) in excess.iter_mut().zip(samples) {
            *e = s - base;
        }
        let excess = &mut excess[..self.latency_count];
        let p95 = (excess.len() * 95 / 100).min(excess.len().saturating_sub(1));
        let (_, &mut value, _) = excess.select_nth_unstable(p95);
        self.base_latency_us = Micros::from(base);
        self.target_delay_us = Micros::from(value).clamp(self.min_delay_us, self.max_delay_us);
    }

    // Saturating: the capture time comes from the network (a forged probe may say
    // anything), and must not overflow.
    fn render_due(&self, frame: &PendingFrame) -> Micros {
        frame
            .capture_us
            .saturating_add(self.base_latency_us)
            .saturating_add(self.target_delay_us)
    }

    fn deadline(&self, frame: &PendingFrame) -> Micros {
        // Nothing after a key frame decodes without it, so giving up on one only means
        // waiting for the next: it is waited for longer, as libwebrtc waits up to 3 s
        // for a frame. A key frame is 4-8 frames' worth of packets and the pacer sends it
        // at the connection's rate: at a low bitrate it takes longer to arrive than the
        // jitter buffer's bound.
        let wait = if frame.keyframe {
            self.max_delay_us.max(KEYFRAME_WAIT_US)
        } else {
            self.max_delay_us
        };
        frame
            .capture_us
            .saturating_add(self.base_latency_us)
            .saturating_add(wait)
    }

    fn is_continuous(&self, frame: &PendingFrame) -> bool {
        match self.last_done_seq {
            Some(last) => frame.first_seq == last.wrapping_add(1),
            None => true,
        }
    }

    fn finish_head(&mut self) -> Option<PendingFrame> {
        if self.frames.is_empty() {
            return None;
        }
        let head = self.frames.remove(0);
        self.last_done_timestamp = Some(head.rtp_timestamp);
        if head.has_last {
            self.last_done_seq = Some(head.last_seq);
        } else {
            // Where the next frame starts is unknown: do not hold it back for continuity.
            self.last_done_seq = None;
        }
        Some(head)
    }

    fn drop_head(&mut self) {
        if let Some(head) = self.finish_head() {
            self.counters.frames_dropped += 1;
            if !head.is_complete() && head.temporal_layer == 0 {
                self.break_decoding();
            }
        }
    }

    /// Whether a frame after the head is a complete key frame: nothing before it needs to
    /// be waited for.
    fn keyframe_ready_behind_head(&self) -> bool {
        self.frames
            .iter()
            .skip(1)
            .any(|f| f.keyframe && f.is_complete())
    }

    /// Renders and drops what is due at `now`.
    pub fn advance(&mut self, now: Micros) {
        while let Some(head) = self.frames.first().copied() {
            let ready = head.is_complete() && (head.keyframe || self.is_continuous(&head));
            if ready && !self.decodable && !head.keyframe {
                // Nothing to decode it against: skip without waiting.
                self.finish_head();
                self.counters.frames_dropped += 1;
                continue;
            }
            if ready {
                let due = self.render_due(&head);
                if now < due {
                    break;
                }
                let completed = head.completed_at.unwrap_or(now);
                let at = due.max(completed).max(self.last_render_at.unwrap_or(0));
                self.finish_head();
                self.decodable = true;
                self.render(at, head.encoding);
                continue;
            }
            if self.keyframe_ready_behind_head() {
                // A complete key frame further on decodes without anything before it, as
                // libwebrtc's frame buffer jumps to it: the frames before it are not
                // waited for. That is what a simulcast switch looks like (the forwarder
                // cuts the old encoding's last frame short where the new one's key frame
                // starts), and it breaks nothing.
                self.finish_head();
                self.counters.frames_dropped += 1;
                continue;
            }
            if now >= self.deadline(&head) {
                // Not complete (or not continuous) in time: the frame, or one before it,
                // is lost for the decoder.
                let missing_before = head.is_complete() && !self.is_continuous(&head);
                self.drop_head();
                if missing_before {
                    self.break_decoding();
                }
                continue;
            }
            break;
        }
    }

    fn render(&mut self, at: Micros, encoding: u8) {
        self.counters.frames_rendered += 1;
        self.target_sum_us += u128::from(self.target_delay_us);
        if let Some(previous) = self.last_render_at {
            let interval = at.saturating_sub(previous);
            match self.mean_interval_us {
                Some(mean) if interval > (3 * mean).max(mean + FREEZE_MIN_EXCESS_US) => {
                    self.counters.freezes += 1;
                    self.counters.frozen_us += interval;
                }
                Some(mean) => {
                    self.mean_samples = (self.mean_samples + 1).min(MEAN_INTERVAL_WEIGHT);
                    let n = self.mean_samples;
                    self.mean_interval_us = Some((mean * (n - 1) + interval) / n);
                }
                None => {
                    self.mean_interval_us = Some(interval);
                    self.mean_samples = 1;
                }
            }
        }
        if self.rendered_encoding.is_some_and(|e| e != encoding) {
            // A simulcast switch: the new encoding may have another frame rate (7.5 fps
            // against 30), which the old mean would misjudge, in either direction, for
            // several frames. The switch itself was judged against the old rate; the
            // new rate is learnt from the next intervals.
            self.mean_interval_us = None;
            self.mean_samples = 0;
        }
        self.rendered_encoding = Some(encoding);
        self.last_render_at = Some(at);
    }

    /// When [`Playout::advance`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let head = self.frames.first()?;
        let ready = head.is_complete() && (head.keyframe || self.is_continuous(head));
        Some(if ready && (self.decodable || head.keyframe) {
            self.render_due(head)
        } else if ready {
            0
        } else {
            self.deadline(head)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds frames of `packets` packets every `interval` µs with latency from `latency`
    /// (by packet), skipping packets for which `lose` is true; advances at every arrival
    /// and timeout.
    fn play(
        playout: &mut Playout,
        frames: u32,
        packets: u32,
        interval: Micros,
        latency: impl Fn(u32) -> Micros,
        lose: impl Fn(u32) -> bool,
    ) {
        let mut arrivals = Vec::new();
        let mut seq = 0u32;
        for f in 0..frames {
            let capture = u64::from(f) * interval;
            for p in 0..packets {
                if !lose(seq) {
                    let packet = FramePacket {
                        seq,
                        rtp_timestamp: f * 3000,
                        send_us: capture,
                        frame_start: p == 0,
                        frame_end: p + 1 == packets,
                        keyframe: f == 0,
                        temporal_layer: 0,
                        encoding: 0,
                    };
                    arrivals.push((capture + latency(seq), packet));
                }
                seq += 1;
            }
        }
        arrivals.sort_by_key(|(t, _)| *t);
        for (t, packet) in arrivals {
            while let Some(due) = playout.poll_timeout().filter(|&d| d <= t) {
                playout.advance(due);
            }
            playout.on_packet(t, &packet);
            playout.advance(t);
        }
        while let Some(due) = playout.poll_timeout() {
            playout.advance(due);
        }
    }

    #[test]
    fn steady_stream_renders_every_frame_without_freezes() {
        let mut p = Playout::new(10_000, 500_000);
        play(&mut p, 300, 3, 33_333, |_| 20_000, |_| false);
        let c = p.counters();
        assert_eq!(c.frames_rendered, 300);
        assert_eq!((c.freezes, c.frozen_us, c.frames_dropped), (0, 0, 0));
        assert_eq!(p.target_delay_us(), 10_000);
        assert!(!p.awaiting_keyframe());
    }

    #[test]
    fn target_delay_follows_jitter() {
        let mut p = Playout::new(0, 500_000);
        // Latency alternates between 20 and 80 ms by frame: the target covers the 60 ms.
        play(
            &mut p,
            300,
            1,
            33_333,
            |seq| if seq % 2 == 0 { 20_000 } else { 80_000 },
            |_| false,
        );
        assert_eq!(p.target_delay_us(), 60_000);
        assert_eq!(p.counters().freezes, 0);
        assert_eq!(p.counters().frames_rendered, 300);
    }

    #[test]
    fn lost_packet_freezes_until_keyframe() {
        let mut p = Playout::new(10_000, 200_000);
        // Packet 30 (frame 10) never comes: frame 10 is dropped at its deadline, decoding
        // breaks, and with no key frame after it nothing more renders.
        play(&mut p, 100, 3, 33_333, |_| 20_000, |seq| seq == 30);
        let c = p.counters();
        assert_eq!(c.frames_rendered, 10);
        assert!(p.awaiting_keyframe());
    }

    #[test]
    fn whole_lost_frame_is_noticed_through_sequence_gap() {
        let mut p = Playout::new(10_000, 200_000);
        play(
            &mut p,
            100,
            2,
            33_333,
            |_| 20_000,
            |seq| seq == 20 || seq == 21,
        );
        assert_eq!(p.counters().frames_rendered, 10);
        assert!(p.awaiting_keyframe());
    }

    #[test]
    fn late_retransmission_within_max_delay_renders_with_a_freeze_free_gap() {
        let mut p = Playout::new(10_000, 500_000);
        // Packet 30 arrives 100 ms late (a retransmission): everything renders, the target
        // stays low (one outlier in 64 frames is under the 95th percentile)...
        play(
            &mut p,
            100,
            3,
            33_333,
            |seq| if seq == 30 { 120_000 } else { 20_000 },
            |_| false,
        );
        let c = p.counters();
        assert_eq!(c.frames_rendered, 100);
        // ...and the 110 ms wait is under the freeze threshold of 33 + 150 ms.
        assert_eq!(c.freezes, 0);
    }

    #[test]
    fn long_stall_counts_a_freeze() {
        let mut p = Playout::new(10_000, 1_000_000);
        play(
            &mut p,
            100,
            1,
            33_333,
            |seq| if seq == 50 { 420_000 } else { 20_000 },
            |_| false,
        );
        let c = p.counters();
        assert_eq!(c.frames_rendered, 100);
        assert_eq!(c.freezes, 1);
        assert!(c.frozen_us >= 400_000, "{c:?}");
    }

    /// One frame as a forwarder delivers it: captured at `capture` µs, `packets` packets
    /// of which the first `sent` reach the receiver, 20 ms later, 1 ms apart.
    #[derive(Clone, Copy)]
    struct Delivered {
        capture: Micros,
        encoding: u8,
        keyframe: bool,
        packets: u32,
        sent: u32,
    }

    /// Frames at `fps` of `encoding` from `from` µs for `count` frames; the first one a
    /// key frame if `keyframe`.
    fn frames(encoding: u8, fps: u64, from: Micros, count: u64, keyframe: bool) -> Vec<Delivered> {
        (0..count)
            .map(|k| Delivered {
                capture: from + k * 1_000_000 / fps,
                encoding,
                keyframe: keyframe && k == 0,
                packets: if keyframe && k == 0 { 6 } else { 2 },
                sent: if keyframe && k == 0 { 6 } else { 2 },
            })
            .collect()
    }

    /// Feeds `frames` in order with continuous sequence numbers (what the forwarder's
    /// rewriting produces) and returns the counters once everything is played out.
    fn deliver(playout: &mut Playout, frames: &[Delivered]) -> PlayoutCounters {
        let mut seq = 0u32;
        let mut arrivals = Vec::new();
        for f in frames {
            for p in 0..f.sent {
                let packet = FramePacket {
                    seq,
                    rtp_timestamp: (f.capture * 9 / 100) as u32,
                    send_us: f.capture,
                    frame_start: p == 0,
                    frame_end: p + 1 == f.packets,
                    keyframe: f.keyframe,
                    temporal_layer: 0,
                    encoding: f.encoding,
                };
                arrivals.push((f.capture + 20_000 + u64::from(p) * 1000, packet));
                seq += 1;
            }
        }
        for (t, packet) in arrivals {
            while let Some(due) = playout.poll_timeout().filter(|&d| d <= t) {
                playout.advance(due);
            }
            playout.on_packet(t, &packet);
            playout.advance(t);
        }
        while let Some(due) = playout.poll_timeout() {
            playout.advance(due);
        }
        playout.counters()
    }

    #[test]
    fn simulcast_switch_neither_freezes_nor_asks_for_a_key_frame() {
        // 30 fps of encoding 2; the forwarder switches to encoding 0 where a key frame of
        // it starts, cutting encoding 2's frame in progress after its first packet; then
        // 7.5 fps of encoding 0.
        let mut stream = frames(2, 30, 0, 30, true);
        stream.push(Delivered {
            capture: 1_000_000,
            encoding: 2,
            keyframe: false,
            packets: 2,
            sent: 1,
        });
        stream.extend(frames(0, 7, 1_010_000, 20, true));
        let mut p = Playout::new(10_000, 500_000);
        let c = deliver(&mut p, &stream);
        assert_eq!(c.frames_rendered, 50, "{c:?}");
        assert_eq!(c.frames_dropped, 1, "only the cut frame: {c:?}");
        assert_eq!((c.freezes, c.frozen_us), (0, 0), "{c:?}");
        assert!(
            !p.awaiting_keyframe(),
            "a PLI would ask for a key frame just received"
        );
    }

    #[test]
    fn lower_frame_rate_after_a_switch_is_not_a_freeze_but_a_stall_still_is() {
        // 30 fps, then a switch to an encoding at 2 fps (a low layer whose upper temporal
        // layers are not forwarded): its 500 ms intervals are its frame rate, not freezes.
        let mut stream = frames(2, 30, 0, 30, true);
        stream.extend(frames(0, 2, 1_000_000, 10, true));
        let mut p = Playout::new(10_000, 500_000);
        let c = deliver(&mut p, &stream);
        assert_eq!(c.frames_rendered, 40, "{c:?}");
        assert_eq!(c.freezes, 0, "{c:?}");
        // A switch back up to 30 fps, then a 2 s stall within that encoding.
        let mut p = Playout::new(10_000, 500_000);
        stream.extend(frames(2, 30, 6_000_000, 30, true));
        stream.extend(frames(2, 30, 9_000_000, 30, false));
        let c = deliver(&mut p, &stream);
        assert_eq!(c.freezes, 1, "{c:?}");
        assert!(c.frozen_us >= 1_900_000, "{c:?}");
    }
}
