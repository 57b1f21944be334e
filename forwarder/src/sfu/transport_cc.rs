//! Transport-wide congestion control feedback to browsers
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01).
//!
//! A browser that negotiated the transport-wide sequence number header extension numbers
//! every RTP packet it sends on a transport (media, retransmissions, bandwidth probes) from
//! one counter, and estimates its available send rate from when each packet arrived: its
//! send-side bandwidth estimator only grows, and higher simulcast encodings only start,
//! when the receiver reports those arrivals. So for each WebRTC leg:
//!
//! * **Recording.** The transport-wide sequence number of every authenticated RTP packet is
//!   unwrapped to 64 bits and its arrival time, in the 250 µs ticks of the feedback format,
//!   goes into an [`ArrivalWindow`]: the last [`ARRIVAL_WINDOW`] sequence numbers up to the
//!   highest seen, in arrays allocated with the leg. Duplicates and packets older than the
//!   window are ignored and counted; a jump ahead slides the window (bounded work, however
//!   far), counting received packets it pushes out before they were reported.
//! * **Reporting.** Packets are reported from the first one not reported yet up to the
//!   highest received, lost ones as "not received", [`FEEDBACK_DELAY`] after the first of
//!   them arrived, or at once when [`EARLY_FEEDBACK_PENDING`] sequence numbers are waiting.
//!   A packet that arrives after being reported lost moves the start back, so the next
//!   feedback reports it received (and repeats what follows it), as libwebrtc's receiver
//!   does: the sender's estimator takes the latest word on each packet.
//! * **Sending.** Feedback is written straight into the driver's buffer by `poll_transmit`,
//!   one packet of at most [`MAX_FEEDBACK_LEN`] bytes per call (a long report is split),
//!   and protected with the leg's SRTCP like the other RTCP the forwarder originates.

use std::time::{Duration, Instant};

use crate::ids::{LegId, SeqNo, Ssrc};
use crate::rtcp::{self, TransportCc, TRANSPORT_CC_DELTA_TICK_US, TRANSPORT_CC_REFERENCE_TICKS};
use crate::rtp::{self, RtpHeader};

use super::{DropReason, Forwarder, Transmit};

/// Sequence numbers an [`ArrivalWindow`] remembers: 4.5 KiB per leg, over three seconds
/// of a browser's highest send rate, far more than any reordering or feedback delay.
pub(crate) const ARRIVAL_WINDOW: usize = 1024;
/// How long the first unreported packet waits for its feedback. libwebrtc's receivers
/// report every 50 to 250 ms; the shorter end lets the sender's delay-based estimator react
/// quickly, for about 10 kbit/s of feedback at a browser's send rates.
pub(crate) const FEEDBACK_DELAY: Duration = Duration::from_millis(50);
/// Unreported sequence numbers that make feedback due at once (a keyframe burst, a
/// probe): a quarter of the window, so the window never overruns below about 5000
/// packets per [`FEEDBACK_DELAY`], and one feedback packet still holds them all.
pub(crate) const EARLY_FEEDBACK_PENDING: i64 = ARRIVAL_WINDOW as i64 / 4;
/// Largest feedback packet: with the SRTCP trailer and IP/UDP headers it stays well under
/// a 1280-byte IPv6 minimum MTU path.
pub(crate) const MAX_FEEDBACK_LEN: usize = 1100;
/// Consecutive packets older than the window after which the sender is taken to have
/// restarted its numbering: without this, a restart that lands more than the window
/// behind would be ignored until its numbers caught up, tens of thousands of packets.
const RESTART_AFTER_TOO_OLD: u32 = 32;

/// What recording one packet's arrival did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The first arrival of this sequence number; `pushed_out` received packets fell out
    /// of the window (or were forgotten by a restart) before they were reported.
    New { pushed_out: u32 },
    /// Already recorded: only the first arrival counts.
    Duplicate,
    /// Older than the window: too late to report.
    TooOld,
}

/// When a leg's feedback is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Nothing is waiting to be reported.
    Idle,
    At(Instant),
    /// In `Forwarder::transport_cc_ready`, waiting for `poll_transmit`.
    Now,
}

/// The arrivals of one leg's transport-wide sequence numbers, waiting to be reported.
#[derive(Debug)]
pub(crate) struct ArrivalWindow {
    /// Arrival in 250 µs ticks since `epoch` (wrapping: the 24-bit reference time of 64 ms
    /// wraps after exactly 2^32 ticks, so wrapping differences stay right), indexed by
    /// sequence number modulo the window.
    arrivals: Box<[u32]>,
    /// Which slots of `arrivals` hold an arrival of the sequence number they stand for
    /// now: cleared as the window slides over them.
    received: Box<[u64]>,
    /// The first arrival recorded: time zero of the ticks.
    epoch: Option<Instant>,
    /// The highest sequence number received, unwrapped; the window is the
    /// [`ARRIVAL_WINDOW`] sequence numbers up to it.
    highest: Option<i64>,
    /// The first sequence number the next feedback reports on.
    next_report: i64,
    /// Packets older than the window in a row (see [`RESTART_AFTER_TOO_OLD`]).
    too_old_in_a_row: u32,
    /// The feedback packet count of the next feedback (wrapping).
    feedback_count: u8,
    /// The SSRC of the last media packet recorded, for the feedback's media source field.
    media_ssrc: Option<Ssrc>,
    due: Due,
}

/// One feedback packet written by [`ArrivalWindow::write_feedback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) len: usize,
    /// Received packets it reports.
    pub(crate) received: usize,
}

impl ArrivalWindow {
    pub(crate) fn new() -> Self {
        ArrivalWindow {
            arrivals: vec![0; ARRIVAL_WINDOW].into_boxed_slice(),
            received: vec![0; ARRIVAL_WINDOW / 64].into_boxed_slice(),
            epoch: None,
            highest: None,
            next_report: 0,
            too_old_in_a_row: 0,
            feedback_count: 0,
            media_ssrc: None,
            due: Due::Idle,
        }
    }

    fn slot(sequence: i64) -> usize {
        // The window length is a power of two: this is the sequence number modulo it,
        // for negative numbers too.
        (sequence as usize) & (ARRIVAL_WINDOW - 1)
    }

    fn is_received(&self, sequence: i64) -> bool {
        let slot = Self::slot(sequence);
        self.received[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn set_received(&mut self, sequence: i64, received: bool) {
        let slot = Self::slot(sequence);
        let word = &mut self.received[slot / 64];
        if received {
            *word |= 1 << (slot % 64);
        } else {
            *word &= !(1 << (slot % 64));
        }
    }

    /// Unwrap a 16-bit sequence number to the 64-bit one nearest the highest seen.
    fn unwrap(&self, sequence: SeqNo) -> i64 {
        match self.highest {
            None => i64::from(sequence.0),
            Some(highest) => highest + i64::from(SeqNo(highest as u16).delta_to(sequence)),
        }
    }

    /// Record that the packet numbered `sequence` arrived at `now`; `media` is its SSRC
    /// when it is one of the leg's media streams.
    pub(crate) fn record(&mut self, sequence: SeqNo, now: Instant, media: Option<Ssrc>) -> Arrival {
        let epoch = *self.epoch.get_or_insert(now);
        let ticks = now.saturating_duration_since(epoch).as_micros()
            / u128::from(TRANSPORT_CC_DELTA_TICK_US);
        // Truncating is the intended wrap (see `arrivals`).
        let ticks = ticks as u32;
        let sequence = self.unwrap(sequence);
        let mut pushed_out = 0;
        match self.highest {
            None => {
                self.highest = Some(sequence);
                self.next_report = sequence;
            }
            Some(highest) if sequence > highest => pushed_out = self.advance(highest, sequence),
            Some(highest) if sequence <= highest - ARRIVAL_WINDOW as i64 => {
                self.too_old_in_a_row += 1;
                if self.too_old_in_a_row < RESTART_AFTER_TOO_OLD {
                    return Arrival::TooOld;
                }
                pushed_out = self.restart(sequence);
            }
            Some(_) if self.is_received(sequence) => return Arrival::Duplicate,
            Some(_) => {}
        }
        self.too_old_in_a_row = 0;
        self.set_received(sequence, true);
        self.arrivals[Self::slot(sequence)] = ticks;
        // A packet reported lost that arrives after all: report it again, received.
        self.next_report = self.next_report.min(sequence);
        if media.is_some() {
            self.media_ssrc = media;
        }
        Arrival::New { pushed_out }
    }

    /// Slide the window up to `to` (above `from`, the highest so far): the slots of the
    /// sequence numbers leaving it are cleared for those entering. Returns how many
    /// received, unreported packets left. Bounded by the window length, however far `to` is.
    fn advance(&mut self, from: i64, to: i64) -> u32 {
        let window = ARRIVAL_WINDOW as i64;
        let lowest_kept = to - window + 1;
        let mut pushed_out = 0;
        for sequence in self.next_report.max(from - window + 1)..lowest_kept.min(from + 1) {
            pushed_out += u32::from(self.is_received(sequence));
        }
        if to - from >= window {
            self.received.fill(0);
        } else {
            for sequence in from + 1..=to {
                self.set_received(sequence, false);
            }
        }
        self.next_report = self.next_report.max(lowest_kept);
        self.highest = Some(to);
        pushed_out
    }

    /// Start afresh at `sequence`: the sender renumbered. Returns the received packets
    /// forgotten before they were reported.
    fn restart(&mut self, sequence: i64) -> u32 {
        let pushed_out = self.unreported_received();
        self.received.fill(0);
        self.highest = Some(sequence);
        self.next_report = sequence;
        pushed_out
    }

    fn unreported_received(&self) -> u32 {
        let Some(highest) = self.highest else {
            return 0;
        };
        (self.next_report..=highest)
            .map(|s| u32::from(self.is_received(s)))
            .sum()
    }

    /// Sequence numbers waiting to be reported (the lost ones among them too).
    pub(crate) fn pending(&self) -> i64 {
        self.highest
            .map_or(0, |highest| (highest - self.next_report + 1).max(0))
    }

    /// After a new arrival: schedule feedback [`FEEDBACK_DELAY`] from now if none is, or
    /// make it due at once when much is waiting. Returns true when it became due now.
    pub(crate) fn schedule(&mut self, now: Instant) -> bool {
        if self.due == Due::Idle {
            self.due = Due::At(now + FEEDBACK_DELAY);
        }
        if self.due != Due::Now && self.pending() >= EARLY_FEEDBACK_PENDING {
            self.due = Due::Now;
            return true;
        }
        false
    }

    /// The feedback timer: returns true when it became due now.
    pub(crate) fn poll_due(&mut self, now: Instant) -> bool {
        match self.due {
            Due::At(at) if at <= now => {
                self.due = Due::Now;
                true
            }
            _ => false,
        }
    }

    /// Forget what is waiting to be reported (it cannot be sent); returns the received
    /// packets among it.
    pub(crate) fn discard_pending(&mut self) -> u32 {
        let discarded = self.unreported_received();
        if let Some(highest) = self.highest {
            self.next_report = highest + 1;
        }
        self.due = Due::Idle;
        discarded
    }

    /// Write the next feedback packet, at most `buf.len()` bytes, reporting from the first
    /// unreported sequence number on: as many as fit, ending at a received packet (the
    /// lost ones after it are not known lost yet, only late). `statuses` is scratch space
    /// of at least [`ARRIVAL_WINDOW`] entries. `None` when nothing is waiting (the timer is
    /// then idle) or `buf` cannot hold even one status.
    pub(crate) fn write_feedback(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: Ssrc,
        fallback_media_ssrc: Ssrc,
        statuses: &mut [Option<i16>],
    ) -> Option<Written> {
        let written = self.write_next(buf, sender_ssrc, fallback_media_ssrc, statuses);
        if self.pending() == 0 || written.is_none() {
            self.due = Due::Idle;
        }
        written
    }

    fn write_next(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: Ssrc,
        fallback_media_ssrc: Ssrc,
        statuses: &mut [Option<i16>],
    ) -> Option<Written> {
        let highest = self.highest?;
        let start = self.next_report;
        let first_received = (start..=highest).find(|&s| self.is_received(s))?;
        let first_arrival = self.arrivals[Self::slot(first_received)];
        // The reference time is the first arrival rounded down to 64 ms, so the first
        // delta is 0..=255 ticks: one byte.
        let mut previous = first_arrival - first_arrival % TRANSPORT_CC_REFERENCE_TICKS;
        let mut count = 0;
        let mut reported = 0;
        let mut delta_bytes = 0;
        for sequence in start..=highest {
            let Some(slot) = statuses.get_mut(count) else {
                break;
            };
            let status = if self.is_received(sequence) {
                let arrival = self.arrivals[Self::slot(sequence)];
                // Wrapping ticks: the difference is right across the wrap.
                let delta = arrival.wrapping_sub(previous) as i32;
                // Beyond ±8.19 s a delta needs a new reference time: a new packet.
                let Ok(delta) = i16::try_from(delta) else {
                    break;
                };
                previous = arrival;
                Some(delta)
            } else {
                None
            };
            let bytes = match status {
                None => 0,
                Some(0..=255) => 1,
                Some(_) => 2,
            };
            if rtcp::transport_cc_max_len(count + 1, delta_bytes + bytes) > buf.len() {
                break;
            }
            *slot = status;
            count += 1;
            delta_bytes += bytes;
            if status.is_some() {
                reported = count;
            }
        }
        // End at the last received packet; a trailing loss opens the next feedback.
        let statuses = statuses.get(..reported).filter(|s| !s.is_empty())?;
        let fields = TransportCc {
            sender_ssrc,
            media_ssrc: self.media_ssrc.unwrap_or(fallback_media_ssrc),
            base_sequence: SeqNo(start as u16),
            reference_time: first_arrival / TRANSPORT_CC_REFERENCE_TICKS,
            feedback_count: self.feedback_count,
        };
        let len = rtcp::write_transport_cc(buf, &fields, statuses).ok()?;
        self.feedback_count = self.feedback_count.wrapping_add(1);
        self.next_report = start + reported as i64;
        Some(Written {
            len,
            received: statuses.iter().filter(|s| s.is_some()).count(),
        })
    }
}

/// The transport-wide sequence number a packet carries under extension `id`, if any.
fn transport_sequence(packet: &[u8], header: &RtpHeader, id: u8) -> Option<SeqNo> {
    let (_, data) = rtp::extension_elements(packet, header).find(|&(element, _)| element == id)?;
    let bytes: [u8; 2] = data.try_into().ok()?;
    Some(SeqNo(u16::from_be_bytes(bytes)))
}

impl Forwarder {
    /// An authenticated RTP packet on `leg_id`: record its transport-wide sequence number,
    /// if it is a WebRTC leg that negotiated one and the packet carries it. Every such
    /// packet counts, whatever its SSRC or payload (media, retransmission, probe): the
    /// browser's estimator needs them all.
    pub(super) fn note_transport_sequence(
        &mut self,
        leg_id: LegId,
        packet: &[u8],
        header: &RtpHeader,
        now: Instant,
    ) {
        let leg = &mut self.legs[leg_id.index()];
        let Some(id) = leg.webrtc.as_ref().and_then(|w| w.extensions.transport_cc) else {
            return;
        };
        let Some(sequence) = transport_sequence(packet, header, id) else {
            return;
        };
        let media = leg.track_for(header.ssrc).map(|_| header.ssrc);
        let Some(web) = leg.webrtc.as_mut() else {
            return;
        };
        match web.arrivals.record(sequence, now, media) {
            Arrival::New { pushed_out } => {
                leg.stats.transport_cc_packets_unreported += u64::from(pushed_out);
            }
            Arrival::Duplicate | Arrival::TooOld => {
                leg.stats.transport_cc_packets_ignored += 1;
                return;
            }
        }
        if web.arrivals.schedule(now) {
            self.transport_cc_ready.push_back(leg_id);
        }
    }

    /// The feedback timers of the WebRTC legs.
    pub(super) fn transport_cc_tick(&mut self, now: Instant) {
        let Forwarder {
            by_ufrag,
            legs,
            transport_cc_ready,
            ..
        } = self;
        for &leg_id in by_ufrag.values() {
            let due = legs
                .get_mut(leg_id.index())
                .and_then(|l| l.webrtc.as_mut())
                .is_some_and(|w| w.arrivals.poll_due(now));
            if due {
                transport_cc_ready.push_back(leg_id);
            }
        }
    }

    /// The next feedback packet due, protected for its leg.
    pub(super) fn poll_transport_cc(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(&leg_id) = self.transport_cc_ready.front() {
            let Some(leg) = self.legs.get_mut(leg_id.index()) else {
                self.transport_cc_ready.pop_front();
                continue;
            };
            let route = leg.rtcp_route();
            let sender = leg.rtcp_ssrc;
            let fallback_media = leg.inbound_ssrcs.first().map_or(Ssrc(0), |e| e.0);
            let Some(web) = leg.webrtc.as_mut() else {
                self.transport_cc_ready.pop_front();
                continue;
            };
            let Some((destination, source)) = route else {
                // Not keyed, or no address since consent lapsed: nowhere to send it.
                leg.stats.transport_cc_packets_unreported +=
                    u64::from(web.arrivals.discard_pending());
                leg.stats.drops.add(DropReason::NoRemoteAddress);
                self.transport_cc_ready.pop_front();
                continue;
            };
            let limit = buf.len().min(MAX_FEEDBACK_LEN);
            let written = web.arrivals.write_feedback(
                &mut buf[..limit],
                sender,
                fallback_media,
                &mut self.transport_cc_statuses,
            );
            if web.arrivals.pending() == 0 || written.is_none() {
                self.transport_cc_ready.pop_front();
            }
            let Some(written) = written else {
                continue;
            };
            leg.stats.transport_cc_feedback_sent += 1;
            leg.stats.transport_cc_packets_reported += written.received as u64;
            if let Some(transmit) = leg.protect_rtcp(buf, written.len, destination, source) {
                return Some(transmit);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
