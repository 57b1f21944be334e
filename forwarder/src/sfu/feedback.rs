//! Feedback: retransmissions (RFC 4585 generic NACK) and keyframe requests (RFC 4585 PLI,
//! RFC 5104 FIR), in both directions.
//!
//! * **Downstream NACK.** A subscriber NACKs sequence numbers of *its* stream. Each maps
//!   back through the subscription's [`Rewriter`](super::Rewriter) to the source packet,
//!   which the encoding's [`PacketCache`](crate::policy::packet_cache::PacketCache) still
//!   holds for a while; it is rewritten and protected for that subscriber again, at most
//!   once per round trip per sequence number
//!   ([`RetransmitLimiter`](crate::policy::nack::RetransmitLimiter)). Retransmissions
//!   go before new media in `poll_transmit`: they are older, and a decoder is waiting.
//! * **Upstream NACK.** Gaps in what the publisher sends are NACKed at once and again
//!   every round trip ([`NackGenerator`](crate::policy::nack::NackGenerator)), so a loss
//!   on the publisher's leg is repaired once for every subscriber.
//! * **Keyframes.** Subscribers' PLI and FIR, and the forwarder's own needs (a new
//!   subscription, a switch of encoding), go through one
//!   [`KeyframeRequester`](crate::policy::keyframe::KeyframeRequester) per encoding,
//!   which coalesces them into at most one PLI per interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec;
use crate::ids::{LegId, SeqNo, Ssrc, SubscriptionId, TrackId};
use crate::policy::nack::DEFAULT_RTT;
use crate::rtcp::{self, Feedback, RtcpPacket};
use crate::rtp::RtpHeader;

use super::{rewrite_header, DropReason, Forwarder, Transmit};

/// Retransmissions waiting to be sent; beyond this, NACKed packets are not resent.
pub(crate) const RETRANSMISSION_QUEUE_LEN: usize = 1024;
/// Most sequence numbers in one NACK the forwarder sends upstream.
pub(crate) const MAX_NACK_BATCH: usize = 64;
/// RTCP feedback formats (RFC 4585 §6.2.1, §6.3.1; RFC 5104 §4.3.1; draft-alvestrand
/// REMB in AFB).
pub(crate) const FMT_GENERIC_NACK: u8 = 1;
pub(crate) const FMT_PLI: u8 = 1;
pub(crate) const FMT_FIR: u8 = 4;
const FMT_AFB: u8 = 15;

/// One packet to send a subscriber again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retransmission {
    subscription: SubscriptionId,
    encoding: u8,
    /// The source packet, and the sequence number the subscriber knows it by.
    source_seq: SeqNo,
    sequence: SeqNo,
}

pub(crate) type RetransmissionQueue = VecDeque<Retransmission>;

impl Forwarder {
    /// Ask the publisher of `track` for a keyframe of `encoding`, unless one was asked for
    /// within the throttle interval (then it is sent when the interval ends).
    pub(crate) fn request_keyframe(&mut self, track: TrackId, encoding: usize, now: Instant) {
        let Some(t) = self.tracks.get_mut(track.index()) else {
            return;
        };
        // Audio has no keyframes: a request would wait for one in vain and be repeated
        // (and, through relay links, travel up the tree).
        if t.kind == super::TrackKind::Audio {
            return;
        }
        // A publisher not heard from yet cannot be asked; its first packets are usually a
        // keyframe, and waiting subscriptions ask again every second.
        if self.legs[t.leg.index()].rtcp_route().is_none() {
            return;
        }
        let Some(e) = t.encodings.get_mut(encoding) else {
            return;
        };
        if e.keyframes.request(now) {
            self.send_pli(track, encoding);
        } else {
            let leg = t.leg;
            self.legs[leg.index()].stats.keyframe_requests_coalesced += 1;
        }
    }

    fn send_pli(&mut self, track: TrackId, encoding: usize) {
        let t = &self.tracks[track.index()];
        let Some(media) = t.encodings.get(encoding).map(|e| e.ssrc) else {
            return;
        };
        let leg = t.leg;
        let sender = self.legs[leg.index()].rtcp_ssrc;
        self.legs[leg.index()].stats.keyframe_requests_sent += 1;
        self.queue_rtcp(leg, |b| rtcp::write_pli(b, sender, media));
    }

    /// NACK whatever the publisher's stream is missing and due for a (re)request.
    pub(crate) fn send_upstream_nacks(&mut self, track: TrackId, encoding: usize, now: Instant) {
        let t = &mut self.tracks[track.index()];
        let leg = t.leg;
        let rtt = round_trip(self.legs[leg.index()].stats.round_trip_seconds);
        let Some(e) = t.encodings.get_mut(encoding) else {
            return;
        };
        let mut lost = [SeqNo(0); MAX_NACK_BATCH];
        let n = e.nack.poll(now, rtt, &mut lost);
        if n == 0 {
            return;
        }
        let media = e.ssrc;
        let l = &mut self.legs[leg.index()];
        l.stats.nacks_sent += n as u64;
        let sender = l.rtcp_ssrc;
        self.queue_rtcp(leg, |b| rtcp::write_nack(b, sender, media, &lost[..n]));
    }

    /// Timers of the feedback machinery: NACK retries and deferred keyframe requests.
    pub(crate) fn feedback_tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (i, track) in &mut self.tracks {
            for (e, encoding) in track.encodings.iter_mut().enumerate() {
                let nack_due = encoding.nack.next_timeout().is_some_and(|t| t <= now);
                let keyframe_due = encoding.keyframes.poll(now);
                if nack_due || keyframe_due {
                    due.push((TrackId(i as u32), e, nack_due, keyframe_due));
                }
            }
        }
        for (track, encoding, nack_due, keyframe_due) in due {
            if nack_due {
                self.send_upstream_nacks(track, encoding, now);
            }
            if keyframe_due {
                self.send_pli(track, encoding);
            }
        }
    }

    /// Subscriptions still waiting for a keyframe of the encoding they want ask again
    /// (coalesced per encoding): the keyframe that answered the last request may have
    /// been lost.
    pub(crate) fn rerequest_keyframes(&mut self, now: Instant) {
        let mut wanted = Vec::new();
        for (_, sub) in &self.subscriptions {
            if sub.current_encoding != Some(sub.desired_encoding) {
                wanted.push((sub.track, usize::from(sub.desired_encoding)));
            }
        }
        wanted.dedup();
        for (track, encoding) in wanted {
            self.request_keyframe(track, encoding, now);
        }
    }

    /// RTCP feedback a participant sent on `leg`, about a stream the forwarder sends it.
    pub(crate) fn on_feedback(&mut self, leg: LegId, packet: &RtcpPacket<'_>, now: Instant) {
        match packet {
            RtcpPacket::TransportFeedback(fb) if fb.fmt == FMT_GENERIC_NACK => {
                self.on_nack(leg, fb, now);
            }
            RtcpPacket::PayloadFeedback(fb) if fb.fmt == FMT_PLI => {
                self.on_keyframe_request(leg, fb.media_ssrc, now);
            }
            RtcpPacket::PayloadFeedback(fb) if fb.fmt == FMT_FIR => {
                for (ssrc, _seq) in fb.fir_entries() {
                    self.on_keyframe_request(leg, ssrc, now);
                }
            }
            RtcpPacket::PayloadFeedback(fb) if fb.fmt == FMT_AFB => {
                if let Some(remb) = fb.remb() {
                    self.legs[leg.index()].stats.estimated_bitrate_bps = remb.bitrate_bps;
                    self.adapt_leg(leg, now);
                }
            }
            _ => {}
        }
    }

    fn subscription_on(&self, leg: LegId, ssrc: Ssrc) -> Option<SubscriptionId> {
        self.legs[leg.index()]
            .subscriptions
            .iter()
            .copied()
            .find(|s| self.subscriptions[s.index()].ssrc == ssrc)
    }

    fn on_keyframe_request(&mut self, leg: LegId, ssrc: Ssrc, now: Instant) {
        let Some(sub_id) = self.subscription_on(leg, ssrc) else {
            return;
        };
        self.legs[leg.index()].stats.keyframe_requests_received += 1;
        let sub = &self.subscriptions[sub_id.index()];
        let encoding = sub.current_encoding.unwrap_or(sub.desired_encoding);
        self.request_keyframe(sub.track, usize::from(encoding), now);
    }

    fn on_nack(&mut self, leg: LegId, fb: &Feedback<'_>, now: Instant) {
        let Some(sub_id) = self.subscription_on(leg, fb.media_ssrc) else {
            return;
        };
        // Resend a packet at most once per round trip, with some slack: the subscriber
        // retries after its own estimate, which can be a little shorter than ours (ours
        // includes its reporting delays), and a retry refused costs it a whole round trip.
        let interval = round_trip(self.legs[leg.index()].stats.round_trip_seconds).mul_f64(0.75);
        let sub = &mut self.subscriptions[sub_id.index()];
        let track_id = sub.track;
        let track = &self.tracks[track_id.index()];
        // A relayed track's misses go up the link (see `relay`): the parent may hold them.
        let relayed = self.legs[track.leg.index()].relay.is_some();
        let mut misses = [(0u8, SeqNo(0)); MAX_NACK_BATCH];
        let mut n = 0;
        let mut asked = 0;
        for sequence in fb.lost_sequence_numbers() {
            asked += 1;
            let Some((source, source_seq)) = sub.rewriter.original(sequence) else {
                continue;
            };
            let Some(encoding) = track.encodings.iter().position(|e| e.ssrc == source) else {
                continue;
            };
            if relayed
                && track.encodings[encoding]
                    .cache
                    .get(source_seq, now)
                    .is_none()
            {
                if n < misses.len() {
                    misses[n] = (encoding as u8, source_seq);
                    n += 1;
                }
                continue;
            }
            if self.retransmissions.len() >= RETRANSMISSION_QUEUE_LEN
                || !sub.retransmits.allow(sequence, now, interval)
            {
                continue;
            }
            self.retransmissions.push_back(Retransmission {
                subscription: sub_id,
                encoding: encoding as u8,
                source_seq,
                sequence,
            });
        }
        self.legs[leg.index()].stats.nacks_received += asked;
        for encoding in 0..super::MAX_ENCODINGS as u8 {
            let mut lost = [SeqNo(0); MAX_NACK_BATCH];
            let mut k = 0;
            for &(e, s) in &misses[..n] {
                if e == encoding {
                    lost[k] = s;
                    k += 1;
                }
            }
            if k > 0 {
                self.forward_nack_misses(track_id, usize::from(encoding), &lost[..k]);
            }
        }
    }

    /// The next retransmission, rewritten and protected for its subscriber.
    pub(crate) fn poll_retransmission(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let now = self.now;
        while let Some(r) = self.retransmissions.pop_front() {
            let Some(sub) = self.subscriptions.get_mut(r.subscription.index()) else {
                continue;
            };
            let track = &self.tracks[sub.track.index()];
            let Some(encoding) = track.encodings.get(usize::from(r.encoding)) else {
                continue;
            };
            let Some(cached) = encoding.cache.get(r.source_seq, now) else {
                continue;
            };
            let Ok(header) = RtpHeader::parse(cached.packet) else {
                continue;
            };
            let Some(timestamp) = sub.rewriter.map_timestamp(encoding.ssrc, header.timestamp)
            else {
                continue;
            };
            let leg = &mut self.legs[sub.leg.index()];
            let Some(destination) = leg.remote_rtp.filter(|_| leg.can_send()) else {
                continue;
            };
            let len = cached.packet.len();
            let Some(out) = buf.get_mut(..len) else {
                continue;
            };
            out.copy_from_slice(cached.packet);
            rewrite_header(out, sub.ssrc, r.sequence, timestamp, sub.payload_type);
            if let Some(web) = &leg.webrtc {
                web.translate_extensions(out, track.audio_level_extension);
            }
            // The munger remembers what it made of this frame's picture id; a frame it has
            // forgotten cannot be resent consistently, so it is not resent at all.
            if let Ok(range) = crate::rtp::payload_range(out, &header) {
                if let Some(payload) = out.get_mut(range) {
                    if let Ok(info) = codec::inspect(track.codec, payload, header.marker) {
                        if info.picture_id.is_some()
                            && !sub
                                .munger
                                .rewrite_retransmission(track.codec, payload, &info)
                        {
                            continue;
                        }
                    }
                }
            }
            match leg.srtp_out.protect_rtp(buf, len) {
                Ok(wire_len) => {
                    leg.stats.rtp_out.add(wire_len);
                    leg.stats.retransmitted += 1;
                    return Some(Transmit {
                        source: leg.local,
                        destination,
                        len: wire_len,
                    });
                }
                Err(_) => leg.stats.drops.add(DropReason::ProtectFailed),
            }
        }
        None
    }
}

/// A leg's measured round trip, or the default before there is one.
fn round_trip(seconds: f64) -> Duration {
    if seconds > 0.0 {
        Duration::from_secs_f64(seconds)
    } else {
        DEFAULT_RTT
    }
}
