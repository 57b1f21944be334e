//! RTCP the forwarder originates or relays (RFC 3550 §6.4), and what it learns from the
//! reports it receives.
//!
//! * **Sender reports, rewritten per subscription.** A publisher's SR is relayed to every
//!   subscription currently following that encoding with the subscription's SSRC, the
//!   RTP timestamp moved by the subscription's timestamp offset (so it still pairs with the
//!   same NTP instant in the subscriber's timeline) and the subscription's own packet and
//!   octet counts. Report blocks are left out: they describe what the *publisher* receives.
//!   Relays are paced to the subscription's own bandwidth (RFC 3550 §6.2): the first goes
//!   at once, later ones no closer than [`SentReports::interval`], between the publisher's
//!   pace and one every 5 s. A publisher sends its SRs for the bitrate *it* sends; a
//!   viewer of its lowest encoding, or of audio alone, would otherwise get more RTCP than
//!   its share (at a few packets a second, more SRs than media).
//! * **Receiver reports towards publishers**, every second (RFC 4585 §3.5 lets AVPF
//!   sessions report more often than RFC 3550's 5 s minimum), one block per encoding the
//!   forwarder receives: loss, extended highest sequence number and jitter from
//!   [`ReceiveStats`](crate::receive_stats::ReceiveStats), LSR/DLSR from the last SR.
//! * **Report blocks from subscribers** about our outbound SSRCs give the loss and jitter
//!   they see and, through LSR/DLSR against the SRs we sent them, the round-trip time.
//!
//! Every compound packet carries an SDES CNAME (RFC 3550 §6.1). Sender report relays and
//! receiver report rounds are produced lazily, one packet per `poll_transmit`, like media
//! fan-out, so they need no queue space whatever the meeting's size; the rest (feedback)
//! waits in a bounded queue of small preallocated slots. All of it is protected (SRTCP)
//! when polled.

use std::time::{Duration, Instant};

use crate::ids::{LegId, Ssrc, TrackId};
use crate::rtcp::{self, ReportBlock, RtcpError, SenderInfo, SenderReport};

use super::{DropReason, Forwarder, Transmit};

/// Largest RTCP packet the forwarder originates (an RR with a block per encoding and an
/// SDES, or a relayed SR, fit easily).
pub(crate) const RTCP_SLOT_LEN: usize = 512;
/// RTCP packets waiting to be sent; beyond this they are dropped and counted.
pub(crate) const RTCP_QUEUE_LEN: usize = 256;
/// How many of the SRs sent to one subscription are remembered to match LSR echoes.
pub(crate) const SR_HISTORY: usize = 4;
/// The CNAME of RTCP the forwarder originates.
const CNAME: &[u8] = b"fanout";

/// Publishers' SRs being relayed at once; each is fanned out lazily (`poll_sr_relay`).
pub(crate) const SR_RELAYS: usize = 16;

/// A publisher's sender report on its way to the subscriptions of its track.
#[derive(Debug)]
pub(crate) struct SrRelay {
    track: TrackId,
    /// The encoding's SSRC: only subscriptions forwarding it get the report.
    source: Ssrc,
    ntp_timestamp: u64,
    rtp_timestamp: u32,
    at: Instant,
    /// Next position in the track's subscriber list.
    next: usize,
}

/// One RTCP compound packet waiting for its leg's SRTCP protection.
#[derive(Debug)]
pub(crate) struct OutgoingRtcp {
    leg: LegId,
    len: usize,
    data: [u8; RTCP_SLOT_LEN],
}

/// The longest a subscription waits for its next SR when the publisher sends them
/// (RFC 3550 §6.2's minimum interval, and libwebrtc's audio pace): receivers pair audio
/// and video through SRs, so a low bandwidth lengthens the interval only this far.
pub(crate) const SR_MAX_INTERVAL: Duration = Duration::from_secs(5);
/// The part of a subscription's bitrate its SRs may use: RTCP gets 5 % of the session
/// bandwidth, and senders (here, the forwarder towards the subscriber) 25 % of that
/// (RFC 3550 §6.2).
const SR_SHARE_OF_BITRATE: f64 = 0.05 * 0.25;
/// An SR with SDES CNAME under SRTCP (header, sender info, SDES, index and tag), in bits.
const SR_WIRE_BITS: f64 = ((28 + 16 + 4 + 16) * 8) as f64;

/// SRs recently sent to one subscriber, to turn its LSR/DLSR into a round-trip time, and
/// when the last one went (with the subscription's octet count then), to pace the next.
#[derive(Debug, Clone, Default)]
pub(crate) struct SentReports {
    sent: [Option<(u32, Instant)>; SR_HISTORY],
    next: usize,
    last: Option<(Instant, u32)>,
}

impl SentReports {
    fn record(&mut self, compact_ntp: u32, at: Instant, octets_sent: u32) {
        self.sent[self.next % SR_HISTORY] = Some((compact_ntp, at));
        self.next = self.next.wrapping_add(1);
        self.last = Some((at, octets_sent));
    }

    /// Whether an SR may go to the subscription at `now`, having sent `octets_sent`
    /// payload octets in all.
    fn due(&self, now: Instant, octets_sent: u32) -> bool {
        let Some((at, octets_then)) = self.last else {
            return true;
        };
        let elapsed = now.saturating_duration_since(at);
        let bits = f64::from(octets_sent.wrapping_sub(octets_then)) * 8.0;
        let bitrate = bits / elapsed.as_secs_f64().max(1e-3);
        elapsed >= Self::interval(bitrate)
    }

    /// RFC 3550 §6.2 for one SSRC at `bitrate_bps`: the larger of the interval that keeps
    /// its SRs within the sender share of RTCP and the reduced minimum (360 s divided by
    /// the bandwidth in kbit/s), capped at [`SR_MAX_INTERVAL`].
    pub(crate) fn interval(bitrate_bps: f64) -> Duration {
        if bitrate_bps <= 0.0 {
            return SR_MAX_INTERVAL;
        }
        let share = SR_WIRE_BITS / (SR_SHARE_OF_BITRATE * bitrate_bps);
        let reduced_minimum = 360.0 / (bitrate_bps / 1000.0);
        Duration::from_secs_f64(
            share
                .max(reduced_minimum)
                .min(SR_MAX_INTERVAL.as_secs_f64()),
        )
    }

    /// RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, with LSR matched to when we sent it.
    fn round_trip(&self, last_sr: u32, delay_since_last_sr: u32, now: Instant) -> Option<Duration> {
        if last_sr == 0 {
            return None;
        }
        let (_, sent_at) = self
            .sent
            .iter()
            .flatten()
            .find(|(ntp, _)| *ntp == last_sr)?;
        let delay = Duration::from_secs_f64(f64::from(delay_since_last_sr) / 65536.0);
        now.saturating_duration_since(*sent_at).checked_sub(delay)
    }
}

impl Forwarder {
    /// Build an RTCP compound packet for `leg` with `write` and queue it.
    pub(crate) fn queue_rtcp(
        &mut self,
        leg: LegId,
        write: impl FnOnce(&mut [u8]) -> Result<usize, RtcpError>,
    ) {
        if self.rtcp_queue.len() >= RTCP_QUEUE_LEN {
            self.drop_at(Some(leg), DropReason::QueueFull);
            return;
        }
        let mut item = OutgoingRtcp {
            leg,
            len: 0,
            data: [0; RTCP_SLOT_LEN],
        };
        if let Ok(len) = write(&mut item.data) {
            item.len = len;
            self.rtcp_queue.push_back(item);
        }
    }

    /// The next queued RTCP packet, protected for its leg, if any.
    pub(crate) fn poll_rtcp_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(item) = self.rtcp_queue.pop_front() {
            let Some(leg) = self.legs.get_mut(item.leg.index()) else {
                continue;
            };
            let Some((destination, source)) = leg.rtcp_route() else {
                leg.stats.drops.add(DropReason::NoRemoteAddress);
                continue;
            };
            let Some(out) = buf.get_mut(..item.len) else {
                leg.stats.drops.add(DropReason::ProtectFailed);
                continue;
            };
            out.copy_from_slice(&item.data[..item.len]);
            if let Some(transmit) = leg.protect_rtcp(buf, item.len, destination, source) {
                return Some(transmit);
            }
        }
        if let Some(transmit) = self.poll_sr_relay(buf) {
            return Some(transmit);
        }
        self.poll_receiver_report(buf)
    }

    /// Forget queued RTCP of a leg that is going away (its slab slot may be reused).
    pub(crate) fn purge_rtcp(&mut self, leg: LegId) {
        self.rtcp_queue.retain(|item| item.leg != leg);
    }

    /// A publisher's SR for one encoding: remember it for our receiver reports' LSR, and
    /// relay it, rewritten, to every subscription following that encoding — lazily, one
    /// subscription per `poll_transmit`, as media is fanned out, so a meeting of any size
    /// needs no more than one queue slot per SR.
    pub(crate) fn on_sender_report(
        &mut self,
        track_id: TrackId,
        encoding: usize,
        sr: &SenderReport<'_>,
        now: Instant,
    ) {
        let Some(track) = self.tracks.get_mut(track_id.index()) else {
            return;
        };
        if let Some(e) = track.encodings.get_mut(encoding) {
            e.last_sr = Some((sr.compact_ntp(), now));
        }
        self.relay_sender_report(track_id, sr);
        let Some(track) = self.tracks.get_mut(track_id.index()) else {
            return;
        };
        if self.sr_relays.len() >= SR_RELAYS {
            let leg = track.leg;
            self.drop_at(Some(leg), DropReason::QueueFull);
            return;
        }
        self.sr_relays.push_back(SrRelay {
            track: track_id,
            source: sr.sender_ssrc,
            ntp_timestamp: sr.ntp_timestamp,
            rtp_timestamp: sr.rtp_timestamp,
            at: now,
            next: 0,
        });
    }

    /// The next subscription's copy of a relayed SR, protected for its leg.
    pub(crate) fn poll_sr_relay(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let relay = self.sr_relays.front_mut()?;
            let Some(track) = self.tracks.get(relay.track.index()) else {
                self.sr_relays.pop_front();
                continue;
            };
            while let Some(&sub_id) = track.subscribers.get(relay.next) {
                relay.next += 1;
                let sub = &mut self.subscriptions[sub_id.index()];
                if !sub.reports.due(self.now, sub.octets_sent) {
                    continue;
                }
                let Some(rtp_timestamp) = sub
                    .rewriter
                    .map_timestamp(relay.source, relay.rtp_timestamp)
                else {
                    continue;
                };
                let info = SenderInfo {
                    ntp_timestamp: relay.ntp_timestamp,
                    rtp_timestamp,
                    packet_count: sub.packets_sent,
                    octet_count: sub.octets_sent,
                };
                let leg = &mut self.legs[sub.leg.index()];
                let Some((destination, source)) = leg.rtcp_route() else {
                    continue;
                };
                let ssrc = sub.ssrc;
                let Ok(len) = compound(buf, ssrc, |b| {
                    rtcp::write_sender_report(b, ssrc, &info, &[])
                }) else {
                    continue;
                };
                sub.reports.record(
                    (relay.ntp_timestamp >> 16) as u32,
                    relay.at,
                    sub.octets_sent,
                );
                if let Some(transmit) = leg.protect_rtcp(buf, len, destination, source) {
                    return Some(transmit);
                }
            }
            self.sr_relays.pop_front();
        }
    }

    /// Start a round of receiver reports: every publisher gets one about each encoding
    /// it sends us, produced lazily by `poll_receiver_report` (one leg per call), so a
    /// round costs no queue space however many publishers there are.
    pub(crate) fn start_receiver_reports(&mut self) {
        self.next_report_leg = Some(0);
    }

    /// The next publisher's receiver report of the round, protected for its leg.
    pub(crate) fn poll_receiver_report(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let now = self.now;
        let active_within = self.config.inactivity_timeout;
        while let Some(index) = self.next_report_leg {
            if index >= self.legs.capacity() {
                self.next_report_leg = None;
                return None;
            }
            self.next_report_leg = Some(index + 1);
            let Some(leg) = self.legs.get(index) else {
                continue;
            };
            let active = leg
                .last_received
                .is_some_and(|t| now.saturating_duration_since(t) < active_within);
            if !active || leg.inbound_ssrcs.is_empty() {
                continue;
            }
            let mut blocks = [ReportBlock::default(); 31];
            let mut n = 0;
            for &(ssrc, track, encoding) in &leg.inbound_ssrcs {
                let Some(e) = self.tracks[track.index()]
                    .encodings
                    .get_mut(usize::from(encoding))
                else {
                    continue;
                };
                if e.receive.received() == 0 || n == blocks.len() {
                    continue;
                }
                let (lsr, dlsr) = e.last_sr.map_or((0, 0), |(ntp, at)| {
                    let delay = now.saturating_duration_since(at).as_secs_f64() * 65536.0;
                    (ntp, delay.min(f64::from(u32::MAX)) as u32)
                });
                blocks[n] = e.receive.report_block(ssrc, lsr, dlsr);
                n += 1;
            }
            let Some(leg) = self.legs.get_mut(index) else {
                continue;
            };
            let Some((destination, source)) = leg.rtcp_route() else {
                continue;
            };
            if n == 0 {
                continue;
            }
            let sender = leg.rtcp_ssrc;
            let Ok(len) = compound(buf, sender, |b| {
                rtcp::write_receiver_report(b, sender, &blocks[..n])
            }) else {
                continue;
            };
            if let Some(transmit) = leg.protect_rtcp(buf, len, destination, source) {
                return Some(transmit);
            }
        }
        None
    }

    /// A report block from a subscriber about one of the SSRCs we send it.
    pub(crate) fn note_report_block(&mut self, leg_id: LegId, block: ReportBlock, now: Instant) {
        let leg = &self.legs[leg_id.index()];
        let Some(sub) = leg
            .subscriptions
            .iter()
            .map(|s| &self.subscriptions[s.index()])
            .find(|s| s.ssrc == block.ssrc)
        else {
            return;
        };
        let clock_rate = self.tracks[sub.track.index()].clock_rate;
        let rtt = sub
            .reports
            .round_trip(block.last_sr, block.delay_since_last_sr, now);
        let sub_id = leg
            .subscriptions
            .iter()
            .copied()
            .find(|s| self.subscriptions[s.index()].ssrc == block.ssrc);
        let stats = &mut self.legs[leg_id.index()].stats;
        stats.reported_fraction_lost = block.fraction_lost;
        stats.reported_jitter_seconds = f64::from(block.jitter) / f64::from(clock_rate);
        if let Some(rtt) = rtt {
            stats.round_trip_seconds = rtt.as_secs_f64();
        }
        if let Some(id) = sub_id {
            let sub = &mut self.subscriptions[id.index()];
            let mut reception =
                super::relay::audience::AudienceSummary::of_receiver(&block, clock_rate, rtt);
            if rtt.is_none() {
                // A report that echoes no SR we remember: the last round trip still holds.
                if let Some((last, _)) = &sub.reception {
                    reception.max_round_trip_us = last.max_round_trip_us;
                }
            }
            sub.reception = Some((reception, now));
            self.subscriptions[id.index()]
                .selector
                .on_loss_report(block.fraction_lost, now);
            self.adapt(id, now);
        }
    }
}

/// A compound packet: what `first` writes (an SR or RR), then an SDES CNAME for `ssrc`.
fn compound(
    buf: &mut [u8],
    ssrc: Ssrc,
    first: impl FnOnce(&mut [u8]) -> Result<usize, RtcpError>,
) -> Result<usize, RtcpError> {
    let n = first(buf)?;
    let rest = buf.get_mut(n..).ok_or(RtcpError::BufferTooSmall)?;
    Ok(n + rtcp::write_sdes_cname(rest, ssrc, CNAME)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_the_echoed_report() {
        let t0 = Instant::now();
        let mut sent = SentReports::default();
        sent.record(0x1111, t0, 0);
        sent.record(0x2222, t0 + Duration::from_millis(500), 0);
        // The subscriber held the second SR for 0.25 s (16384/65536) and its RR arrives
        // 0.35 s after we sent that SR: 100 ms round trip.
        let rtt = sent
            .round_trip(0x2222, 16384, t0 + Duration::from_millis(850))
            .unwrap();
        assert!((rtt.as_secs_f64() - 0.1).abs() < 1e-3, "{rtt:?}");
        assert_eq!(sent.round_trip(0, 0, t0), None, "LSR 0: no SR received yet");
        assert_eq!(sent.round_trip(0x3333, 0, t0), None, "unknown SR");
    }

    #[test]
    fn sender_reports_are_paced_to_the_subscriptions_bitrate() {
        // A video subscription at 1 Mbit/s: the publisher's one SR a second all pass.
        assert!(SentReports::interval(1_000_000.0) < Duration::from_millis(400));
        // 100 kbit/s: 360 s / 100 = 3.6 s.
        let at_100k = SentReports::interval(100_000.0).as_secs_f64();
        assert!((at_100k - 3.6).abs() < 1e-9, "{at_100k}");
        // A few kbit/s, or nothing sent: one every 5 s, never less often.
        assert_eq!(SentReports::interval(12_000.0), SR_MAX_INTERVAL);
        assert_eq!(SentReports::interval(0.0), SR_MAX_INTERVAL);

        let t0 = Instant::now();
        let mut sent = SentReports::default();
        assert!(sent.due(t0, 0), "the first SR goes at once");
        sent.record(1, t0, 0);
        // 1.5 kB in 1 s (12 kbit/s): not yet, until 5 s have passed.
        assert!(!sent.due(t0 + Duration::from_secs(1), 1_500));
        assert!(sent.due(t0 + SR_MAX_INTERVAL, 7_500));
        // 125 kB in 1 s (1 Mbit/s): due after a second.
        assert!(sent.due(t0 + Duration::from_secs(1), 125_000));
    }
}
