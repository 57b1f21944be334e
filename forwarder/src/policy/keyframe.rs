//! Keyframe request coalescing and throttling, per published stream: PLI (RFC 4585
//! §6.3.1) and FIR (RFC 5104 §4.3.1).
//!
//! Every subscriber that joins, switches layer or loses a packet for good asks for a
//! keyframe. Forwarding each request upstream would make the publisher's encoder emit
//! keyframes back to back, each several times the size of a normal frame, on the uplink
//! that is often the weakest link of the meeting. One keyframe, forwarded to every
//! subscriber, answers all requests made before it, so [`KeyframeRequester`] sends at
//! most one request per [`DEFAULT_MIN_INTERVAL`]:
//!
//! - the first request is sent at once ([`KeyframeRequester::request`] returns `true`);
//! - requests during the interval are remembered as one pending request, sent when the
//!   interval ends ([`KeyframeRequester::next_timeout`], [`KeyframeRequester::poll`]);
//! - a keyframe arriving ([`KeyframeRequester::on_keyframe`]) answers every request made
//!   so far and cancels the pending one: the core forwards that keyframe to every current
//!   subscriber, including those that asked;
//! - a request that got no keyframe within [`DEFAULT_RETRY_AFTER`] (the PLI or the
//!   keyframe was lost) is repeated, at most [`MAX_RETRIES`] times.
//!
//! The interval is never shorter than two of the stream's frame intervals
//! ([`KeyframeRequester::on_frame`] measures them from RTP timestamps): an encoder can
//! only turn its next frame into a keyframe, so at a few frames per second (a screen
//! share of slides, a low simulcast layer) requests 300 ms apart would make every frame
//! a keyframe while a large audience joins. The retry wait stretches likewise.
//!
//! One requester per encoding (SSRC) of a track: each simulcast encoding has its own
//! encoder and its own keyframes. The FIR command sequence number (RFC 5104 §4.3.1.1)
//! also belongs to the (forwarder, media SSRC) pair, so it lives here too.

use std::time::{Duration, Instant};

/// Shortest interval between two keyframe requests sent upstream.
///
/// A request needs one uplink RTT/2 to arrive, a frame interval (33 ms at 30 fps) for the
/// encoder to produce the keyframe, and the time to push a keyframe several times a frame's
/// size through the uplink's pacer (libwebrtc paces at 2.5× the target rate, so a 5-frame
/// keyframe takes about 2 frame intervals): 150–300 ms on a typical path. A second request
/// sooner would most likely produce a second keyframe for the same subscribers. 300 ms
/// is the upper end of that range (Jitsi and mediasoup throttle in the same few-hundred
/// millisecond range), and short enough that a new subscriber waits at most about half
/// a second for its first picture.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// How long to wait for a keyframe before repeating a request (mediasoup's
/// `KeyFrameRetransmissionWaitTime` is also 1 s). Well above the worst case of
/// [`DEFAULT_MIN_INTERVAL`]'s reasoning, so a slow keyframe is not asked for twice.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Repeats of one unanswered request. A publisher that ignores three requests in a row
/// is not going to answer a fourth; the next subscriber request starts over.
pub const MAX_RETRIES: u8 = 3;

/// Coalesces and throttles keyframe requests for one published stream (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct KeyframeRequester {
    min_interval: Duration,
    retry_after: Duration,
    last_sent: Option<Instant>,
    /// A request arrived during the interval and is not yet sent.
    pending: bool,
    /// A request was sent and no keyframe arrived since.
    awaiting: bool,
    retries: u8,
    fir_seq: u8,
    sent: u64,
    /// The last frame's RTP timestamp, and the smoothed frame interval in microseconds.
    last_frame_timestamp: Option<u32>,
    frame_interval_us: u64,
}

/// Frame intervals between two requests at least (see the module docs).
const FRAMES_PER_REQUEST: u32 = 2;
/// Longest frame interval believed (a paused stream is not a slow one).
const MAX_FRAME_INTERVAL: Duration = Duration::from_secs(10);

impl Default for KeyframeRequester {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_INTERVAL, DEFAULT_RETRY_AFTER)
    }
}

impl KeyframeRequester {
    /// A requester sending at most one request per `min_interval` and repeating an
    /// unanswered one after `retry_after`.
    pub fn new(min_interval: Duration, retry_after: Duration) -> Self {
        KeyframeRequester {
            min_interval,
            retry_after,
            last_sent: None,
            pending: false,
            awaiting: false,
            retries: 0,
            fir_seq: 0,
            sent: 0,
            last_frame_timestamp: None,
            frame_interval_us: 0,
        }
    }

    /// A packet of the stream with RTP timestamp `timestamp` (clock `clock_rate` Hz)
    /// arrived: a new timestamp is a new frame, whose distance from the last one
    /// refines the frame interval (smoothed over about eight frames).
    pub fn on_frame(&mut self, timestamp: u32, clock_rate: u32) {
        let Some(last) = self.last_frame_timestamp.replace(timestamp) else {
            return;
        };
        let ticks = timestamp.wrapping_sub(last);
        if ticks == 0 || ticks > u32::MAX / 2 || clock_rate == 0 {
            // The same frame, or a reordered older one.
            if ticks > u32::MAX / 2 {
                self.last_frame_timestamp = Some(last);
            }
            return;
        }
        let us = (u64::from(ticks) * 1_000_000 / u64::from(clock_rate))
            .min(MAX_FRAME_INTERVAL.as_micros() as u64);
        self.frame_interval_us = if self.frame_interval_us == 0 {
            us
        } else {
            (self.frame_interval_us * 7 + us) / 8
        };
    }

    /// The interval in force: the configured one, or two frame intervals if longer.
    pub fn min_interval(&self) -> Duration {
        self.min_interval
            .max(Duration::from_micros(self.frame_interval_us) * FRAMES_PER_REQUEST)
    }

    fn retry_after(&self) -> Duration {
        self.retry_after.max(self.min_interval() * 2)
    }

    fn elapsed_since_sent(&self, now: Instant) -> Option<Duration> {
        self.last_sent.map(|t| now.saturating_duration_since(t))
    }

    fn interval_over(&self, now: Instant) -> bool {
        self.elapsed_since_sent(now)
            .is_none_or(|elapsed| elapsed >= self.min_interval())
    }

    fn send(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.pending = false;
        self.awaiting = true;
        self.sent += 1;
    }

    /// A subscriber (or the forwarder itself) wants a keyframe at `now`. Returns whether
    /// the core should send a PLI (or FIR) upstream now; if not, the request is pending
    /// and [`KeyframeRequester::poll`] sends it when the interval ends.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.interval_over(now) {
            self.retries = 0;
            self.send(now);
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// Whether a request is due at `now`: a pending one whose interval ended, or a
    /// repeat of an unanswered one. Call when [`KeyframeRequester::next_timeout`] passes
    /// (earlier calls return `false`).
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending {
            if self.interval_over(now) {
                self.retries = 0;
                self.send(now);
                return true;
            }
            return false;
        }
        if self.awaiting
            && self
                .elapsed_since_sent(now)
                .is_some_and(|elapsed| elapsed >= self.retry_after())
        {
            if self.retries < MAX_RETRIES {
                self.retries += 1;
                self.send(now);
                return true;
            }
            self.awaiting = false;
        }
        false
    }

    /// When [`KeyframeRequester::poll`] has something to do, if ever.
    pub fn next_timeout(&self) -> Option<Instant> {
        let last = self.last_sent?;
        if self.pending {
            Some(last + self.min_interval())
        } else if self.awaiting {
            Some(last + self.retry_after())
        } else {
            None
        }
    }

    /// A keyframe of this stream arrived (call on its first packet): every request made
    /// so far is answered.
    pub fn on_keyframe(&mut self, _now: Instant) {
        self.pending = false;
        self.awaiting = false;
        self.retries = 0;
    }

    /// The command sequence number for the next FIR sent to this stream's SSRC (RFC 5104
    /// §4.3.1.1: incremented by one, modulo 256, for each new request). Call once per FIR
    /// actually sent; every send decided by this requester is a new request (a repeat
    /// after [`DEFAULT_RETRY_AFTER`] carries a new number so that a sender that saw the
    /// first FIR but whose keyframe was lost still answers).
    pub fn next_fir_seq(&mut self) -> u8 {
        let seq = self.fir_seq;
        self.fir_seq = self.fir_seq.wrapping_add(1);
        seq
    }

    /// Whether a request is waiting for the interval to end.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Requests sent upstream so far (a metric).
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn slow_streams_are_asked_at_most_every_two_frames() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        // 30 fps: the configured 300 ms holds.
        for f in 0..10u32 {
            k.on_frame(f * 3000, 90_000);
        }
        assert_eq!(k.min_interval(), ms(300));
        // A slide share at a frame every 4 s: 8 s between requests, 16 s before a repeat.
        let mut slides = KeyframeRequester::default();
        for f in 0..10u32 {
            slides.on_frame(f * 360_000, 90_000);
        }
        assert_eq!(slides.min_interval(), ms(8000));
        assert!(slides.request(t0));
        assert!(!slides.request(t0 + ms(300)));
        assert!(!slides.poll(t0 + ms(7999)));
        assert_eq!(slides.next_timeout(), Some(t0 + ms(8000)));
        assert!(slides.poll(t0 + ms(8000)));
        // Reordered (older) and repeated timestamps change nothing; a pause is capped.
        slides.on_frame(9 * 360_000 - 10, 90_000);
        slides.on_frame(9 * 360_000, 90_000);
        assert_eq!(slides.min_interval(), ms(8000));
        slides.on_frame(u32::MAX / 3, 90_000);
        assert!(slides.min_interval() <= MAX_FRAME_INTERVAL * FRAMES_PER_REQUEST);
    }

    #[test]
    fn many_requests_collapse_into_one_plus_one_pending() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0));
        for i in 1..10 {
            assert!(!k.request(t0 + ms(i * 20)));
        }
        assert!(k.is_pending());
        assert_eq!(k.next_timeout(), Some(t0 + ms(300)));
        assert!(!k.poll(t0 + ms(299)));
        assert!(k.poll(t0 + ms(300)));
        assert!(!k.poll(t0 + ms(300)));
        assert_eq!(k.sent(), 2);
        // Now waiting for the keyframe.
        assert_eq!(k.next_timeout(), Some(t0 + ms(1300)));
    }

    #[test]
    fn keyframe_cancels_pending_and_retries() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0));
        assert!(!k.request(t0 + ms(100)));
        k.on_keyframe(t0 + ms(150));
        assert!(!k.is_pending());
        assert_eq!(k.next_timeout(), None);
        assert!(!k.poll(t0 + ms(2000)));
        // After the interval a new request goes out at once.
        assert!(k.request(t0 + ms(2000)));
    }

    #[test]
    fn unanswered_request_is_repeated_a_few_times() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0));
        let mut sends = vec![];
        let mut now = t0;
        for _ in 0..20 {
            now += ms(250);
            if k.poll(now) {
                sends.push(now.duration_since(t0));
            }
        }
        assert_eq!(sends, vec![ms(1000), ms(2000), ms(3000)]);
        assert_eq!(k.next_timeout(), None);
    }

    #[test]
    fn fir_sequence_wraps() {
        let mut k = KeyframeRequester::default();
        for i in 0..=255u8 {
            assert_eq!(k.next_fir_seq(), i);
        }
        assert_eq!(k.next_fir_seq(), 0);
    }

    proptest! {
        /// Whatever the requests, polls and keyframes, two sends are never closer than
        /// the minimum interval, and a pending request is sent at its timeout.
        #[test]
        fn sends_are_spaced_and_pending_requests_fire(
            events in proptest::collection::vec((0u8..3, 0u64..200), 1..300),
        ) {
            let t0 = Instant::now();
            let mut k = KeyframeRequester::default();
            let mut now = t0;
            let mut last: Option<Instant> = None;
            for (kind, step) in events {
                now += ms(step);
                // A well-behaved core polls at every timeout that has passed.
                while let Some(t) = k.next_timeout().filter(|&t| t <= now) {
                    let was_pending = k.is_pending();
                    let sent = k.poll(t);
                    prop_assert!(!was_pending || sent);
                    if sent {
                        if let Some(l) = last {
                            prop_assert!(t.duration_since(l) >= DEFAULT_MIN_INTERVAL);
                        }
                        last = Some(t);
                    }
                }
                let sent = match kind {
                    0 => k.request(now),
                    1 => k.poll(now),
                    _ => {
                        k.on_keyframe(now);
                        false
                    }
                };
                if sent {
                    if let Some(l) = last {
                        prop_assert!(now.duration_since(l) >= DEFAULT_MIN_INTERVAL);
                    }
                    last = Some(now);
                }
            }
        }
    }
}
