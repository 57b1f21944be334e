//! Which simulcast encoding each subscription forwards: the subscriber's limit, lowered
//! when its network cannot take more (the policy is `policy::layers`: REMB bandwidth
//! estimate against each encoding's measured bitrate, and its RTCP loss reports).
//!
//! A change of encoding only takes effect at the next keyframe of the new one, which is
//! requested at once; temporal and spatial layers within an encoding follow the
//! subscription's limits (`Subscription::select`).

use std::time::Instant;

use crate::ids::SubscriptionId;
use crate::policy::layers::{Layer, LayerBitrates};

use super::Forwarder;

impl Forwarder {
    /// Recompute the encoding a subscription should forward, and ask for a keyframe of
    /// it if that changes what is being forwarded.
    pub(crate) fn adapt(&mut self, id: SubscriptionId, now: Instant) {
        let Some(sub) = self.subscriptions.get_mut(id.index()) else {
            return;
        };
        let track = &self.tracks[sub.track.index()];
        let count = track.encodings.len();
        let preferred = sub.max_layers.encoding.min(count.saturating_sub(1) as u8);
        let mut bitrates = LayerBitrates::new();
        for (e, encoding) in track.encodings.iter().enumerate() {
            bitrates.set(Layer::new(e as u8, 0), encoding.bitrate.bitrate_bps(now));
        }
        let estimate = self.legs[sub.leg.index()].stats.estimated_bitrate_bps;
        let available = (estimate > 0).then_some(estimate);
        // Nothing measured yet (or a single encoding): the subscriber's limit is the target.
        let desired = match sub
            .selector
            .select(now, Layer::new(preferred, 0), &bitrates, available)
        {
            Some(layer) if count > 1 => layer.spatial.min(preferred),
            _ => preferred,
        };
        if desired == sub.desired_encoding {
            return;
        }
        {use std::io::Write; let mut f=std::fs::OpenOptions::new().create(true).append(true).open("/tmp/dbg.log").unwrap(); let _=writeln!(f, "DBG adapt sub={} est={} rates={:?} from={} to={} cur={:?}", id.0, estimate, (0..count).map(|e| bitrates.get(Layer::new(e as u8,0))).collect::<Vec<_>>(), sub.desired_encoding, desired, sub.current_encoding);}
        sub.desired_encoding = desired;
        if sub.current_encoding != Some(desired) {
            let track = sub.track;
            self.request_keyframe(track, usize::from(desired), now);
        }
    }

    /// Re-evaluate every subscription of a leg (after a REMB or a loss report from it).
    pub(crate) fn adapt_leg(&mut self, leg: crate::ids::LegId, now: Instant) {
        for i in 0..self.legs[leg.index()].subscriptions.len() {
            let id = self.legs[leg.index()].subscriptions[i];
            self.adapt(id, now);
        }
    }

    /// Re-evaluate every subscription: encodings' bitrates drift.
    pub(crate) fn adapt_all(&mut self, now: Instant) {
        let ids: Vec<SubscriptionId> = self
            .subscriptions
            .iter()
            .map(|(i, _)| SubscriptionId(i as u32))
            .collect();
        for id in ids {
            self.adapt(id, now);
        }
    }
}
