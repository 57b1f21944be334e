//! Layer selection per subscription, from bandwidth estimates and loss reports.
//!
//! A publisher sends several layers of one video track: simulcast encodings or SVC
//! spatial layers (index `spatial`), each with temporal layers (`temporal`: frame rate
//! halves per step down). For each subscription the forwarder forwards one target layer
//! (`spatial`, up to `temporal`); [`LayerSelector`] picks it.
//!
//! # Inputs
//!
//! - The subscription's **preferred maximum** ([`Layer`]): what the subscriber's layout
//!   asked for (a thumbnail does not need 720p). Never exceeded.
//! - The **bitrate of each layer**, measured by one [`BitrateMeter`] per layer and
//!   gathered in a [`LayerBitrates`] table: the rate a subscriber receives when that
//!   layer is its target, as the median of its last 5 one-second rates
//!   ([`BitrateMeter::sustained_bps`]), so that a key frame (4-8 times an ordinary frame)
//!   does not make a layer look too expensive. A layer that sent nothing in
//!   the last second is not being sent (the publisher paused it) and is never selected.
//! - The subscriber's **available bandwidth**: its REMB estimate
//!   (draft-alvestrand-rmcat-remb-03 §2.2, [`crate::rtcp::Remb`]) or a configured cap,
//!   for the track's share of the downlink. `None`: unconstrained.
//! - The subscriber's **loss reports**: the fraction lost of its RTCP receiver reports
//!   (RFC 3550 §6.4.1, 8 bits in 1/256 units) on this subscription's stream.
//!
//! # Policy
//!
//! The *ladder* is every available layer within the preferred maximum, in (spatial,
//! temporal) order. The target is the lower of two rungs:
//!
//! 1. **Bandwidth**, with hysteresis: every switch of simulcast encoding costs a key
//!    frame, and a key frame raises the new encoding's rate for a while, so a choice that
//!    follows every wobble of the estimate or of the rates feeds on itself (a storm of
//!    switches and key frame requests when the estimate sits between two rungs).
//!    - *First choice*, and *down*: the highest rung whose bitrate fits in
//!      [`BANDWIDTH_USE_PERCENT`] (90%) of the estimate; the lowest rung if none fits (a
//!      frozen tile is worse than a small one; audio is not on this ladder). The rung in
//!      use is left as soon as it no longer fits in the whole estimate: going down is
//!      prompt.
//!    - *Stay*: the rung in use is kept while it fits in the whole estimate, even above
//!      90% of it: the band between 90% and 100% is the hysteresis.
//!    - *Up*: only once a higher rung has fitted in 90% of the estimate for
//!      [`SWITCH_UP_AFTER`] (2 s) without a break, then to the highest rung that fits.
//!    - *No estimate*: the top rung, at once.
//! 2. **Loss ceiling**: [`HIGH_LOSS_REPORTS`] (2) consecutive reports with loss above
//!    10% ([`HIGH_LOSS_FRACTION`]) put a ceiling one rung below the current target: the
//!    estimate has not caught up with a congested downlink, and each rung down roughly
//!    halves the rate. Reports below 2% ([`LOW_LOSS_FRACTION`]) for
//!    [`STEP_UP_AFTER`] (5 s) raise the ceiling by one rung, and again after 5 more
//!    seconds, until it is gone. Loss between 2% and 10% holds the ceiling where it is.
//!
//! **Screen share** tracks never step down automatically: legible text matters more than
//! smooth motion, and a screen share's rate drops by itself when the picture is static.
//! Their target is always the top rung of the ladder, whatever the estimate and losses.
//!
//! Everything is deterministic in its inputs; `select` is cheap enough to call on every
//! keyframe opportunity or every estimate.

use std::time::{Duration, Instant};

/// Spatial layers (simulcast encodings or SVC spatial layers) tracked. libwebrtc sends at
/// most 3 simulcast encodings (`kMaxSimulcastStreams`) and VP9/AV1 SVC modes go up to
/// L3T3.
pub const MAX_SPATIAL_LAYERS: usize = 3;

/// Temporal layers tracked: VP8's TID field has 2 bits (RFC 7741 §4.2), and WebRTC
/// scalability modes go up to T3; 4 covers both.
pub const MAX_TEMPORAL_LAYERS: usize = 4;

/// Share of the bandwidth estimate the selected layer may use. The remaining 10% absorbs
/// RTX retransmissions, RTCP and the estimate's own error without pushing the downlink
/// into loss.
pub const BANDWIDTH_USE_PERCENT: u64 = 90;

/// How long a higher rung must fit in [`BANDWIDTH_USE_PERCENT`] of the estimate before
/// the target moves up to it: two of WebRTC's roughly one-second RTCP intervals, so that
/// more than one estimate confirmed the room and a switch (with its key frame) is not
/// undone a second later.
pub const SWITCH_UP_AFTER: Duration = Duration::from_secs(2);

/// A receiver report whose fraction lost is above this (in 1/256) counts as high loss:
/// 26/256 is the first value above 10%. At more than 10% loss, NACK-based repair cannot
/// keep up and the picture freezes; GCC (draft-ietf-rmcat-gcc §6) also backs off there.
pub const HIGH_LOSS_FRACTION: u8 = 25;

/// Consecutive high-loss reports before stepping down. One report can be a burst (a
/// Wi-Fi hiccup); two in a row (about 2 s with WebRTC's RTCP interval) is a trend.
pub const HIGH_LOSS_REPORTS: u8 = 2;

/// A receiver report whose fraction lost is at most this (in 1/256) counts as low loss:
/// 5/256 is the last value below 2%, which NACK repairs without visible effect (GCC keeps
/// increasing its rate below 2%).
pub const LOW_LOSS_FRACTION: u8 = 5;

/// Time of continuously low loss that lifts the loss ceiling by one rung. Long enough to
/// span several RTCP reports (about 5 at WebRTC's interval) so that recovery is real,
/// short enough that the best layer comes back within half a minute.
pub const STEP_UP_AFTER: Duration = Duration::from_secs(5);

/// Window of [`BitrateMeter`]: 1 s, in [`METER_BUCKETS`] buckets of 100 ms. A second holds
/// a whole group of frames' worth of variation at 30 fps, and 100 ms buckets make the
/// window slide smoothly (a keyframe leaves the average within 1 s).
pub const METER_WINDOW: Duration = Duration::from_secs(1);

/// Buckets of [`METER_WINDOW`].
pub const METER_BUCKETS: usize = 10;

const BUCKET: Duration = Duration::from_millis(100);

/// Whole seconds [`BitrateMeter::sustained_bps`] takes the median of. A key frame of 4-8
/// frames' size adds 3-7 frames' worth to the second (or two) it falls in: +10% to +90% on
/// a 1-second rate at 30 to 7.5 fps, and as much again at lower frame rates, too much for
/// any margin; an average over a few seconds still moves by a fifth of that. The median of
/// 5 seconds ignores a key frame (even two), and follows a real change of rate within 3 s.
pub const METER_SUSTAINED_SECONDS: usize = 5;

/// Ring of [`METER_SUSTAINED_SECONDS`] complete seconds and the current one.
const METER_SUSTAINED_BUCKETS: usize = METER_SUSTAINED_SECONDS + 1;

const SUSTAINED_BUCKET: Duration = Duration::from_secs(1);

/// A layer: spatial (simulcast encoding or SVC spatial layer) and temporal index.
/// Ordered by spatial, then temporal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Layer {
    pub spatial: u8,
    pub temporal: u8,
}

impl Layer {
    pub const fn new(spatial: u8, temporal: u8) -> Self {
        Layer { spatial, temporal }
    }

    /// The highest layer there is.
    pub const MAX: Layer = Layer::new(MAX_SPATIAL_LAYERS as u8 - 1, MAX_TEMPORAL_LAYERS as u8 - 1);

    fn within(self, max: Layer) -> bool {
        self.spatial <= max.spatial && self.temporal <= max.temporal
    }
}

/// Bitrate of a stream over the last second (see [`METER_WINDOW`]) and per second over
/// the last few (see [`METER_SUSTAINED_SECONDS`]), in fixed rings of buckets.
#[derive(Debug, Clone, Default)]
pub struct BitrateMeter {
    epoch: Option<Instant>,
    /// (bucket number since `epoch`, bytes in it).
    buckets: [(u64, u64); METER_BUCKETS],
    /// The same with 1 s buckets, since `active_since`.
    sustained: [(u64, u64); METER_SUSTAINED_BUCKETS],
    /// Start of the current run of traffic (after a silence of a whole [`METER_WINDOW`]).
    active_since: Option<Instant>,
    /// Latest packet time seen.
    last_packet: Option<Instant>,
}

impl BitrateMeter {
    pub fn new() -> Self {
        Self::default()
    }

    fn bucket_of(epoch: Instant, now: Instant) -> u64 {
        (now.saturating_duration_since(epoch).as_nanos() / BUCKET.as_nanos()) as u64
    }

    /// Counts a packet of `bytes` bytes at `now`.
    pub fn add(&mut self, bytes: usize, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let restarted = self
            .last_packet
            .is_none_or(|last| now.saturating_duration_since(last) >= METER_WINDOW);
        if restarted {
            // A paused stream resumed: its sustained rate starts over, so that the silence
            // does not make it look cheap.
            self.sustained = Default::default();
            self.active_since = Some(now);
        }
        self.last_packet = Some(self.last_packet.map_or(now, |last| last.max(now)));
        let second =
            (now.saturating_duration_since(epoch).as_nanos() / SUSTAINED_BUCKET.as_nanos()) as u64;
        if let Some(bucket) = self
            .sustained
            .get_mut((second % METER_SUSTAINED_BUCKETS as u64) as usize)
        {
            if bucket.0 == second {
                bucket.1 = bucket.1.saturating_add(bytes as u64);
            } else if bucket.0 < second {
                *bucket = (second, bytes as u64);
            }
        }
        let n = Self::bucket_of(epoch, now);
        let Some(bucket) = self.buckets.get_mut((n % METER_BUCKETS as u64) as usize) else {
            return;
        };
        if bucket.0 == n {
            bucket.1 = bucket.1.saturating_add(bytes as u64);
        } else if bucket.0 < n {
            *bucket = (n, bytes as u64);
        }
        // else: the bucket already holds a later period; a packet that old is dropped.
    }

    /// Bits per second over the last second at `now`.
    pub fn bitrate_bps(&self, now: Instant) -> u64 {
        let Some(epoch) = self.epoch else {
            return 0;
        };
        let elapsed = now.saturating_duration_since(epoch);
        let n = Self::bucket_of(epoch, now);
        let oldest = n.saturating_sub(METER_BUCKETS as u64 - 1);
        let bytes: u64 = self
            .buckets
            .iter()
            .filter(|(b, _)| (oldest..=n).contains(b))
            .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes));
        // The window is the 9 complete buckets plus the elapsed part of the current one,
        // or less at the start; at least one bucket, so a first packet does not read as
        // an infinite rate.
        let into_bucket = Duration::from_nanos((elapsed.as_nanos() % BUCKET.as_nanos()) as u64);
        let span = (BUCKET * (METER_BUCKETS as u32 - 1) + into_bucket)
            .min(elapsed)
            .max(BUCKET);
        let bits = u128::from(bytes) * 8 * 1_000_000;
        (bits / span.as_micros().max(1)).min(u128::from(u64::MAX)) as u64
    }

    /// What the stream costs a subscriber at `now`, in bits per second: 0 if it sent
    /// nothing in the last second (paused), else the median of its rates over the last
    /// [`METER_SUSTAINED_SECONDS`] whole seconds of continuous traffic, which a key frame
    /// does not move (the average so far until there is a whole second).
    pub fn sustained_bps(&self, now: Instant) -> u64 {
        let (Some(epoch), Some(since)) = (self.epoch, self.active_since) else {
            return 0;
        };
        if self.bitrate_bps(now) == 0 {
            return 0;
        }
        let second = |t: Instant| {
            (t.saturating_duration_since(epoch).as_nanos() / SUSTAINED_BUCKET.as_nanos()) as u64
        };
        let current = second(now);
        // The second the traffic (re)started in is partial, and holds the key frame a
        // stream starts with.
        let first_whole = second(since) + 1;
        let from = first_whole.max(current.saturating_sub(METER_SUSTAINED_SECONDS as u64));
        let mut rates = [0u64; METER_SUSTAINED_SECONDS];
        let mut count = 0;
        for s in from..current {
            let bytes = self
                .sustained
                .get((s % METER_SUSTAINED_BUCKETS as u64) as usize)
                .filter(|(b, _)| *b == s)
                .map_or(0, |(_, bytes)| *bytes);
            if let Some(r) = rates.get_mut(count) {
                *r = bytes.saturating_mul(8);
                count += 1;
            }
        }
        if count == 0 {
            // Less than a whole second since the traffic (re)started: its average so far.
            let bytes = (second(since)..=current)
                .filter_map(|s| {
                    self.sustained
                        .get((s % METER_SUSTAINED_BUCKETS as u64) as usize)
                        .filter(|(b, _)| *b == s)
                })
                .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes));
            let span = now.saturating_duration_since(since).max(BUCKET);
            let bits = u128::from(bytes) * 8 * 1_000_000;
            return (bits / span.as_micros().max(1)).min(u128::from(u64::MAX)) as u64;
        }
        let rates = &mut rates[..count];
        rates.sort_unstable();
        rates[count / 2]
    }
}

/// Bitrate in bits/s a subscriber receives for each layer as its target; 0 marks a
/// layer that is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerBitrates {
    bps: [[u64; MAX_TEMPORAL_LAYERS]; MAX_SPATIAL_LAYERS],
}

impl LayerBitrates {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the rate of `layer` (ignored beyond [`Layer::MAX`]).
    pub fn set(&mut self, layer: Layer, bps: u64) {
        if let Some(r) = self
            .bps
            .get_mut(usize::from(layer.spatial))
            .and_then(|row| row.get_mut(usize::from(layer.temporal)))
        {
            *r = bps;
        }
    }

    /// The rate of `layer`; 0 if unavailable or beyond [`Layer::MAX`].
    pub fn get(&self, layer: Layer) -> u64 {
        self.bps
            .get(usize::from(layer.spatial))
            .and_then(|row| row.get(usize::from(layer.temporal)))
            .copied()
            .unwrap_or(0)
    }

    /// Builds the table from the rate of each layer's own packets (as measured by one
    /// [`BitrateMeter`] per layer; packets without a temporal id count as temporal 0).
    /// Forwarding temporal layer `t` forwards layers `0..=t`; with `svc`, forwarding
    /// spatial layer `s` also forwards the spatial layers below it (they are its
    /// references), while simulcast encodings are independent. A layer whose own rate is
    /// 0 stays unavailable.
    pub fn from_own_rates(
        own: &[[u64; MAX_TEMPORAL_LAYERS]; MAX_SPATIAL_LAYERS],
        svc: bool,
    ) -> Self {
        let mut table = LayerBitrates::default();
        for s in 0..MAX_SPATIAL_LAYERS {
            for t in 0..MAX_TEMPORAL_LAYERS {
                if own[s][t] == 0 {
                    continue;
                }
                let spatial_from = if svc { 0 } else { s };
                let total = own[spatial_from..=s]
                    .iter()
                    .flat_map(|row| row[..=t].iter())
                    .fold(0u64, |sum, &r| sum.saturating_add(r));
                table.bps[s][t] = total;
            }
        }
        table
    }

    /// Available layers within `max`, in ascending order.
    fn ladder(&self, max: Layer) -> impl Iterator<Item = Layer> + '_ {
        (0..MAX_SPATIAL_LAYERS as u8)
            .flat_map(|s| (0..MAX_TEMPORAL_LAYERS as u8).map(move |t| Layer::new(s, t)))
            .filter(move |&l| l.within(max) && self.get(l) > 0)
    }
}

/// Picks the target layer of one subscription (see the module docs).
#[derive(Debug, Clone)]
pub struct LayerSelector {
    screen: bool,
    current: Option<Layer>,
    /// Highest layer allowed after high loss; `None`: no ceiling.
    loss_ceiling: Option<Layer>,
    high_loss_reports: u8,
    step_down: bool,
    /// Since when reports have shown low loss (`None`: the last one did not).
    low_loss_since: Option<Instant>,
    /// The rung the bandwidth alone allows, with hysteresis (before the loss ceiling).
    by_bandwidth: Option<Layer>,
    /// Since when a rung above `by_bandwidth` has fitted with margin.
    room_above_since: Option<Instant>,
}

impl LayerSelector {
    /// A selector for a camera track, or with `screen` for a screen share (never stepped
    /// down automatically).
    pub fn new(screen: bool) -> Self {
        LayerSelector {
            screen,
            current: None,
            loss_ceiling: None,
            high_loss_reports: 0,
            step_down: false,
            low_loss_since: None,
            by_bandwidth: None,
            room_above_since: None,
        }
    }

    /// The target chosen by the last [`LayerSelector::select`].
    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    /// The ceiling high loss has put on the target, if any.
    pub fn loss_ceiling(&self) -> Option<Layer> {
        self.loss_ceiling
    }

    /// A receiver report on this subscription's stream arrived at `now` with this
    /// fraction lost (RFC 3550 §6.4.1, in 1/256). A step down it triggers takes effect at
    /// the next [`LayerSelector::select`], which the core should call right after.
    pub fn on_loss_report(&mut self, fraction_lost: u8, now: Instant) {
        if self.screen {
            return;
        }
        if fraction_lost > HIGH_LOSS_FRACTION {
            self.low_loss_since = None;
            self.high_loss_reports = self.high_loss_reports.saturating_add(1);
            if self.high_loss_reports >= HIGH_LOSS_REPORTS {
                self.high_loss_reports = 0;
                self.step_down = true;
            }
        } else {
            self.high_loss_reports = 0;
            if fraction_lost <= LOW_LOSS_FRACTION {
                self.low_loss_since.get_or_insert(now);
            } else {
                self.low_loss_since = None;
            }
        }
    }

    /// Chooses the target layer at `now` given the subscriber's `preferred` maximum, the
    /// layers' `bitrates` and the `available_bps` for this track (`None`:
    /// unconstrained). `None` when no layer within `preferred` is available. The result
    /// never exceeds `preferred` in either dimension.
    pub fn select(
        &mut self,
        now: Instant,
        preferred: Layer,
        bitrates: &LayerBitrates,
        available_bps: Option<u64>,
    ) -> Option<Layer> {
        let lowest = bitrates.ladder(preferred).next();
        let Some(lowest) = lowest else {
            self.current = None;
            return None;
        };
        let top = bitrates.ladder(preferred).last().unwrap_or(lowest);
        if self.screen {
            self.current = Some(top);
            return self.current;
        }
        // Highest rung at or below `layer` (the lowest rung if none).
        let at_or_below = |layer: Layer| {
            bitrates
                .ladder(preferred)
                .take_while(|&l| l <= layer)
                .last()
                .unwrap_or(lowest)
        };
        if std::mem::take(&mut self.step_down) {
            if let Some(current) = self.current {
                let below = bitrates
                    .ladder(preferred)
                    .take_while(|&l| l < current)
                    .last()
                    .unwrap_or(lowest);
                self.loss_ceiling = Some(self.loss_ceiling.map_or(below, |c| c.min(below)));
            }
        }
        if let Some(ceiling) = self.loss_ceiling {
            let recovered = self
                .low_loss_since
                .is_some_and(|since| now.saturating_duration_since(since) >= STEP_UP_AFTER);
            if recovered {
                self.low_loss_since = Some(now);
                let above = bitrates.ladder(preferred).find(|&l| l > ceiling);
                self.loss_ceiling = match above {
                    Some(l) if l < top => Some(l),
                    _ => None,
                };
            }
        }
        let fits = |l: Layer, percent: u64| {
            available_bps.is_none_or(|bps| {
                u128::from(bitrates.get(l)) * 100 <= u128::from(bps) * u128::from(percent)
            })
        };
        let with_margin = bitrates
            .ladder(preferred)
            .filter(|&l| fits(l, BANDWIDTH_USE_PERCENT))
            .last()
            .unwrap_or(lowest);
        let by_bandwidth = match self.by_bandwidth {
            // Still available, within the preferred maximum, and an estimate to judge by:
            // hysteresis.
            Some(held)
                if available_bps.is_some()
                    && held.within(preferred)
                    && bitrates.get(held) > 0
                    && fits(held, 100) =>
            {
                if with_margin > held {
                    let since = *self.room_above_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= SWITCH_UP_AFTER {
                        with_margin
                    } else {
                        held
                    }
                } else {
                    held
                }
            }
            // First choice, no estimate, or the rung in use no longer fits: at once.
            _ => with_margin,
        };
        if by_bandwidth >= with_margin {
            self.room_above_since = None;
        }
        self.by_bandwidth = Some(by_bandwidth);
        let target = match self.loss_ceiling {
            Some(ceiling) => by_bandwidth.min(at_or_below(ceiling)),
            None => by_bandwidth,
        };
        self.current = Some(target);
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Three simulcast encodings with three temporal layers each, cumulative rates.
    fn simulcast() -> LayerBitrates {
        let own = [
            [100_000, 25_000, 25_000, 0],
            [300_000, 75_000, 75_000, 0],
            [1_500_000, 250_000, 250_000, 0],
        ];
        LayerBitrates::from_own_rates(&own, false)
    }

    #[test]
    fn cumulative_rates() {
        let t = simulcast();
        assert_eq!(t.get(Layer::new(0, 0)), 100_000);
        assert_eq!(t.get(Layer::new(0, 2)), 150_000);
        assert_eq!(t.get(Layer::new(2, 1)), 1_750_000);
        assert_eq!(t.get(Layer::new(2, 3)), 0);
        assert_eq!(t.get(Layer::new(7, 0)), 0);
        let svc = LayerBitrates::from_own_rates(&[[100, 10, 0, 0], [200, 20, 0, 0], [0; 4]], true);
        assert_eq!(svc.get(Layer::new(1, 1)), 330);
        assert_eq!(svc.get(Layer::new(2, 0)), 0);
    }

    #[test]
    fn highest_layer_that_fits_ninety_percent() {
        let t0 = Instant::now();
        let t = simulcast();
        let max = Layer::MAX;
        // A first choice, each by a new selector.
        let first = |preferred, rates: &LayerBitrates, bw| {
            LayerSelector::new(false).select(t0, preferred, rates, bw)
        };
        // (1,2) is 450 kbit/s: fits 500k × 0.9 = 450k exactly.
        assert_eq!(first(max, &t, Some(500_000)), Some(Layer::new(1, 2)));
        assert_eq!(first(max, &t, Some(499_999)), Some(Layer::new(1, 1)));
        assert_eq!(first(max, &t, Some(10_000_000)), Some(Layer::new(2, 2)));
        assert_eq!(first(max, &t, None), Some(Layer::new(2, 2)));
        // Nothing fits: the lowest layer still goes out.
        assert_eq!(first(max, &t, Some(1_000)), Some(Layer::new(0, 0)));
        // The preferred maximum caps it in both dimensions.
        assert_eq!(
            first(Layer::new(1, 0), &t, Some(10_000_000)),
            Some(Layer::new(1, 0))
        );
        assert_eq!(first(max, &LayerBitrates::new(), None), None);
        // Without an estimate, straight to the top; a preferred maximum lowered applies
        // at once.
        let mut s = LayerSelector::new(false);
        assert_eq!(s.select(t0, max, &t, None), Some(Layer::new(2, 2)));
        assert_eq!(
            s.select(t0, Layer::new(1, 0), &t, None),
            Some(Layer::new(1, 0))
        );
        assert_eq!(s.select(t0, max, &t, None), Some(Layer::new(2, 2)));
    }

    /// Three simulcast encodings without temporal layers, as the core's adaptation sees
    /// them: 100, 250 and 800 kbit/s, the middle one at `mid` kbit/s.
    fn three_encodings(mid: u64) -> LayerBitrates {
        let mut t = LayerBitrates::new();
        t.set(Layer::new(0, 0), 100_000);
        t.set(Layer::new(1, 0), mid * 1000);
        t.set(Layer::new(2, 0), 800_000);
        t
    }

    #[test]
    fn estimate_between_two_rungs_holds_one_rung() {
        // REMB 300 kbit/s: the middle encoding (250) fits 90% (270), but reads up to 290
        // while it carries a key frame. Once chosen it stays: no switch, no key frame.
        let t0 = Instant::now();
        let mut s = LayerSelector::new(false);
        let max = Layer::new(2, 0);
        let mid = Some(Layer::new(1, 0));
        for (i, rate) in [250, 290, 250, 285, 260, 290, 250, 275]
            .into_iter()
            .enumerate()
        {
            let now = t0 + secs(i as u64);
            assert_eq!(
                s.select(now, max, &three_encodings(rate), Some(300_000)),
                mid,
                "{i}"
            );
        }
        // Above the whole estimate it is left at once.
        assert_eq!(
            s.select(t0 + secs(9), max, &three_encodings(301), Some(300_000)),
            Some(Layer::new(0, 0))
        );
        // And not taken again until it fits 90% for 2 s.
        for i in 10..12 {
            assert_eq!(
                s.select(t0 + secs(i), max, &three_encodings(250), Some(300_000)),
                Some(Layer::new(0, 0)),
                "{i}"
            );
        }
        assert_eq!(
            s.select(t0 + secs(12), max, &three_encodings(250), Some(300_000)),
            mid
        );
    }

    #[test]
    fn switches_up_after_lasting_room_and_down_at_once() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(false);
        let max = Layer::new(2, 0);
        let t = three_encodings(250);
        let low = Some(Layer::new(0, 0));
        assert_eq!(s.select(t0, max, &t, Some(200_000)), low);
        // Room for the middle rung, but for less than 2 s at a time.
        let ms = Duration::from_millis;
        assert_eq!(s.select(t0 + ms(1000), max, &t, Some(400_000)), low);
        assert_eq!(s.select(t0 + ms(2500), max, &t, Some(400_000)), low);
        assert_eq!(s.select(t0 + ms(2800), max, &t, Some(250_000)), low);
        assert_eq!(s.select(t0 + ms(3000), max, &t, Some(1_000_000)), low);
        assert_eq!(s.select(t0 + ms(4900), max, &t, Some(1_000_000)), low);
        // 2 s of room: up, straight to the highest rung that fits.
        assert_eq!(
            s.select(t0 + ms(5000), max, &t, Some(1_000_000)),
            Some(Layer::new(2, 0))
        );
        // The estimate falls: down at once, to the highest rung that fits 90%.
        assert_eq!(
            s.select(t0 + ms(5100), max, &t, Some(799_000)),
            Some(Layer::new(1, 0))
        );
        assert_eq!(s.select(t0 + ms(5200), max, &t, Some(120_000)), low);
    }

    #[test]
    fn paused_layers_are_skipped() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(false);
        let mut t = simulcast();
        for temporal in 0..3 {
            t.set(Layer::new(2, temporal), 0);
        }
        assert_eq!(s.select(t0, Layer::MAX, &t, None), Some(Layer::new(1, 2)));
    }

    #[test]
    fn high_loss_twice_steps_down_and_low_loss_steps_back_up() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(false);
        let t = simulcast();
        let bw = Some(10_000_000);
        let top = Layer::new(2, 2);
        assert_eq!(s.select(t0, Layer::MAX, &t, bw), Some(top));
        // One bad report is not enough; a good one in between resets the count.
        s.on_loss_report(40, t0 + secs(1));
        s.on_loss_report(10, t0 + secs(2));
        s.on_loss_report(40, t0 + secs(3));
        assert_eq!(s.select(t0 + secs(3), Layer::MAX, &t, bw), Some(top));
        s.on_loss_report(26, t0 + secs(4));
        assert_eq!(
            s.select(t0 + secs(4), Layer::MAX, &t, bw),
            Some(Layer::new(2, 1))
        );
        // Two more: one more rung.
        s.on_loss_report(30, t0 + secs(5));
        s.on_loss_report(30, t0 + secs(6));
        assert_eq!(
            s.select(t0 + secs(6), Layer::MAX, &t, bw),
            Some(Layer::new(2, 0))
        );
        // Low loss from 7 s: one rung back at 12 s, the next at 17 s, then no ceiling.
        s.on_loss_report(0, t0 + secs(7));
        s.on_loss_report(5, t0 + secs(11));
        assert_eq!(
            s.select(t0 + secs(11), Layer::MAX, &t, bw),
            Some(Layer::new(2, 0))
        );
        s.on_loss_report(0, t0 + secs(12));
        assert_eq!(
            s.select(t0 + secs(12), Layer::MAX, &t, bw),
            Some(Layer::new(2, 1))
        );
        // Medium loss holds the ceiling and restarts the clock.
        s.on_loss_report(12, t0 + secs(13));
        s.on_loss_report(0, t0 + secs(14));
        assert_eq!(
            s.select(t0 + secs(18), Layer::MAX, &t, bw),
            Some(Layer::new(2, 1))
        );
        assert_eq!(s.select(t0 + secs(19), Layer::MAX, &t, bw), Some(top));
        assert_eq!(s.loss_ceiling(), None);
    }

    #[test]
    fn bandwidth_still_limits_under_a_ceiling() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(false);
        let t = simulcast();
        s.select(t0, Layer::MAX, &t, Some(10_000_000));
        s.on_loss_report(50, t0);
        s.on_loss_report(50, t0);
        assert_eq!(
            s.select(t0, Layer::MAX, &t, Some(200_000)),
            Some(Layer::new(0, 2))
        );
        assert_eq!(s.loss_ceiling(), Some(Layer::new(2, 1)));
    }

    #[test]
    fn screen_share_never_steps_down() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(true);
        let t = simulcast();
        for i in 0..10 {
            s.on_loss_report(200, t0 + secs(i));
            assert_eq!(
                s.select(t0 + secs(i), Layer::MAX, &t, Some(100_000)),
                Some(Layer::new(2, 2))
            );
        }
        assert_eq!(
            s.select(t0, Layer::new(0, 1), &t, None),
            Some(Layer::new(0, 1))
        );
    }

    #[test]
    fn meter_measures_the_last_second() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::new();
        assert_eq!(m.bitrate_bps(t0), 0);
        // 1000 bytes every 10 ms = 800 kbit/s, for 3 s.
        for i in 0..300u32 {
            m.add(1000, t0 + Duration::from_millis(10) * i);
        }
        let now = t0 + Duration::from_millis(2995);
        let rate = m.bitrate_bps(now);
        assert!((760_000..=840_000).contains(&rate), "{rate}");
        // Half a second later only half the window has traffic.
        let rate = m.bitrate_bps(now + Duration::from_millis(500));
        assert!((350_000..=450_000).contains(&rate), "{rate}");
        assert_eq!(m.bitrate_bps(now + secs(2)), 0);
        // Startup: 0.5 s of traffic reads as the full rate, not half of it.
        let mut m = BitrateMeter::new();
        for i in 0..50u32 {
            m.add(1000, t0 + Duration::from_millis(10) * i);
        }
        let rate = m.bitrate_bps(t0 + Duration::from_millis(500));
        assert!((760_000..=840_000).contains(&rate), "{rate}");
    }

    #[test]
    fn sustained_rate_shrugs_off_a_key_frame_and_a_pause() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::new();
        let ms = Duration::from_millis;
        // 250 kbit/s at 15 fps (2083 bytes a frame) for 6 s, a 6-frame key frame at 5.4 s.
        for k in 0..90u32 {
            let bytes = if k == 82 { 6 * 2083 } else { 2083 };
            m.add(bytes, t0 + ms(66) * k + ms(1));
        }
        let now = t0 + ms(5950);
        let short = m.bitrate_bps(now);
        let sustained = m.sustained_bps(now);
        assert!(short > 320_000, "{short}");
        assert!((240_000..=275_000).contains(&sustained), "{sustained}");
        // Paused for a second: not available.
        assert_eq!(m.sustained_bps(now + secs(1)), 0);
        // Resumed at 100 kbit/s: the pause does not dilute the new rate.
        let restart = now + secs(3);
        for k in 0..8u32 {
            m.add(1250, restart + ms(100) * k);
        }
        let rate = m.sustained_bps(restart + ms(800));
        assert!((90_000..=115_000).contains(&rate), "{rate}");
    }

    #[test]
    fn sustained_rate_ignores_key_frames_at_low_frame_rates_and_follows_changes() {
        // 60 kbit/s at 4 fps (1875 bytes a frame), a key frame of 8 frames every 5 s and
        // one more at 7.3 s (a PLI): the rate a subscriber pays stays 60 kbit/s.
        let t0 = Instant::now();
        let mut m = BitrateMeter::new();
        let ms = Duration::from_millis;
        for k in 0..80u32 {
            let keyframe = k % 20 == 0 || k == 29;
            m.add(if keyframe { 8 * 1875 } else { 1875 }, t0 + ms(250) * k);
            let now = t0 + ms(250) * k + ms(1);
            if k >= 24 {
                assert_eq!(m.sustained_bps(now), 60_000, "frame {k}");
            }
        }
        // Doubled to 120 kbit/s: followed once it has lasted 3 whole seconds.
        let t1 = t0 + secs(20);
        for k in 0..12u32 {
            m.add(3750, t1 + ms(250) * k);
        }
        assert_eq!(m.sustained_bps(t1 + ms(2760)), 60_000);
        assert_eq!(m.sustained_bps(t1 + ms(3010)), 120_000);
    }

    /// A layer's own rate, 0 (paused) a third of the time.
    fn rate() -> impl Strategy<Value = u64> {
        (0u64..3_000_000).prop_map(|r| if r % 3 == 0 { 0 } else { r })
    }

    fn layer() -> impl Strategy<Value = Layer> {
        (0u8..5, 0u8..6).prop_map(|(s, t)| Layer::new(s, t))
    }

    proptest! {
        /// Random rates, estimates, loss reports and preferences: the target is always an
        /// available layer within the preferred maximum, and a screen share always gets
        /// the top of its ladder.
        #[test]
        fn never_exceeds_the_preferred_maximum(
            screen in any::<bool>(),
            steps in proptest::collection::vec(
                (layer(), proptest::array::uniform3(proptest::array::uniform4(rate())),
                 proptest::option::of(any::<u64>()), proptest::option::of(any::<u8>()), 0u64..3000),
                1..100),
        ) {
            let t0 = Instant::now();
            let mut s = LayerSelector::new(screen);
            let mut now = t0;
            for (preferred, own, bw, loss, step) in steps {
                now += Duration::from_millis(step);
                if let Some(loss) = loss {
                    s.on_loss_report(loss, now);
                }
                let rates = LayerBitrates::from_own_rates(&own, step % 2 == 0);
                let target = s.select(now, preferred, &rates, bw);
                prop_assert_eq!(target, s.current());
                match target {
                    Some(l) => {
                        prop_assert!(l.spatial <= preferred.spatial && l.temporal <= preferred.temporal);
                        prop_assert!(rates.get(l) > 0);
                        if screen {
                            prop_assert_eq!(Some(l), rates.ladder(preferred).last());
                        }
                    }
                    None => prop_assert!(rates.ladder(preferred).next().is_none()),
                }
            }
        }

        /// The meter never panics and never reports traffic older than its window.
        #[test]
        fn meter_is_bounded(
            adds in proptest::collection::vec((any::<u32>(), 0u64..400, any::<bool>()), 1..300),
        ) {
            let t0 = Instant::now() + secs(10);
            let mut m = BitrateMeter::new();
            let mut now = t0;
            for (bytes, step, back) in adds {
                let at = if back { now - Duration::from_millis(step) } else { now + Duration::from_millis(step) };
                now = now.max(at);
                m.add(bytes as usize, at);
                let _ = m.bitrate_bps(at);
                let _ = m.sustained_bps(at);
            }
            prop_assert_eq!(m.bitrate_bps(now + METER_WINDOW + BUCKET), 0);
            prop_assert_eq!(m.sustained_bps(now + METER_WINDOW + BUCKET), 0);
        }
    }
}
