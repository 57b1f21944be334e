//! The recording tap (docs/recording.md): the decrypted media of a recorded meeting, handed
//! to the `fanout-recorder` process next to the forwarder.
//!
//! A meeting is recorded while the control plane names a recording for it
//! ([`Forwarder::set_recording`]). Every media packet that authenticates on one of its legs
//! (retransmissions from RTX streams already unwrapped) is encoded into a tap message
//! ([`crate::recording`]) in a slot of a bounded queue, once, however many subscribers the
//! track has: recording costs no extra encryption. The driver drains the queue
//! ([`Forwarder::poll_tap`]) into the recorder's socket without waiting.
//!
//! Live media comes first: when the queue is full (the driver could not hand messages
//! over, the recorder is behind or absent) the packet is not recorded, and the loss is
//! counted (`fanout_recording_dropped_packets_total`): the recording degrades, forwarding
//! never does. The queue's slots are allocated when the forwarder first records, so a
//! forwarder that never records pays nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::codec::Codec;
use crate::ids::{MeetingId, TrackId};
use crate::recording::{self, MediaCodec, TapPacket, MAX_MESSAGE_LEN};

use super::{ConfigureError, Forwarder, TrackKind};

/// Tap messages that wait for the driver: about a second of a busy meeting's media
/// (video at ~500 packets/s per publisher), ~2.3 MB once allocated.
pub(crate) const TAP_QUEUE_LEN: usize = 1024;

/// Counters of the tap, forwarder-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Packets put in the queue for the recorder.
    pub packets: u64,
    /// Packets of recorded meetings not recorded: the queue was full.
    pub dropped: u64,
    /// Packets that could not be encoded (an id longer than the format allows).
    pub unencodable: u64,
}

#[derive(Debug)]
struct Slot {
    len: usize,
    data: Box<[u8]>,
}

/// The queue of encoded tap messages, with its slots allocated on first use.
#[derive(Debug, Default)]
pub(crate) struct TapQueue {
    queued: VecDeque<Slot>,
    free: Vec<Slot>,
    /// Recordings that ended here, to announce once their packets are out.
    ended: VecDeque<String>,
    /// Whether the last packet was dropped, to log the start of a degraded stretch once.
    degraded: bool,
    pub(crate) stats: TapStats,
}

impl TapQueue {
    fn allocate(&mut self) {
        if self.queued.is_empty() && self.free.is_empty() {
            self.free = (0..TAP_QUEUE_LEN)
                .map(|_| Slot {
                    len: 0,
                    data: vec![0; MAX_MESSAGE_LEN].into_boxed_slice(),
                })
                .collect();
        }
    }
}

/// What the stitcher must depacketize a track as. The forwarder reads no descriptor of
/// audio (`Codec::Opaque`); Fanout's audio is Opus, the only audio codec the control
/// plane assigns or negotiates.
fn media_codec(kind: TrackKind, codec: Codec) -> MediaCodec {
    match (kind, codec) {
        (_, Codec::Vp8) => MediaCodec::Vp8,
        (_, Codec::Vp9) => MediaCodec::Vp9,
        (_, Codec::H264) => MediaCodec::H264,
        (TrackKind::Audio, Codec::Opaque) => MediaCodec::Opus,
        (_, Codec::Opaque) => MediaCodec::Unknown,
    }
}

impl Forwarder {
    /// Records `meeting` under `recording` (an id the control plane chose, see
    /// [`recording::is_valid_recording_id`]), or stops recording it (`None`). A change of
    /// recording, or a stop, tells the recorder the previous one ended here.
    pub fn set_recording(
        &mut self,
        meeting: &MeetingId,
        recording: Option<&str>,
    ) -> Result<(), ConfigureError> {
        if let Some(id) = recording {
            if !recording::is_valid_recording_id(id) {
                return Err(ConfigureError::InvalidRecordingId(id.to_owned()));
            }
        }
        let index = self.meeting(meeting)?;
        let m = &mut self.meetings[index.0 as usize];
        if m.recording.as_deref() == recording {
            return Ok(());
        }
        if let Some(previous) = m.recording.take() {
            info!(meeting = %meeting, recording = %previous, "recording stopped here");
            self.tap.ended.push_back(previous);
        }
        if let Some(id) = recording {
            info!(meeting = %meeting, recording = %id, "recording");
            self.tap.allocate();
            self.meetings[index.0 as usize].recording = Some(id.to_owned());
        }
        Ok(())
    }

    /// The recording `meeting` is recorded under, if any.
    pub fn recording(&self, meeting: &MeetingId) -> Option<&str> {
        let index = self.meeting_index.get(meeting)?;
        self.meetings[index.0 as usize].recording.as_deref()
    }

    /// Counters of the recording tap.
    pub fn tap_stats(&self) -> TapStats {
        self.tap.stats
    }

    /// The clock the tap stamps arrival times with: `now` is `unix` (time since the Unix
    /// epoch). Drivers set it when they start; without it arrivals count from the core's
    /// creation.
    pub fn set_unix_clock(&mut self, now: Instant, unix: Duration) {
        self.unix_clock = Some((now, unix));
    }

    fn unix_micros(&self, at: Instant) -> u64 {
        let (then, unix) = self.unix_clock.unwrap_or((self.created, Duration::ZERO));
        let since = at.saturating_duration_since(then);
        u64::try_from((unix + since).as_micros()).unwrap_or(u64::MAX)
    }

    /// Puts an authenticated media packet of `track` into the tap, if its meeting is
    /// recorded. `rtp` is the plaintext packet as it arrived.
    pub(super) fn tap_packet(&mut self, track_id: TrackId, encoding: u8, rtp: &[u8], now: Instant) {
        let track = &self.tracks[track_id.index()];
        let meeting = &self.meetings[track.meeting.0 as usize];
        let Some(recording_id) = meeting.recording.as_deref() else {
            return;
        };
        let Some(mut slot) = self.tap.free.pop() else {
            self.tap.stats.dropped += 1;
            if !self.tap.degraded {
                self.tap.degraded = true;
                warn!(
                    meeting = %meeting.id,
                    recording = %recording_id,
                    "recording degraded: the recorder is not keeping up, packets are not recorded"
                );
            }
            return;
        };
        let packet = TapPacket {
            recording_id,
            meeting_id: &meeting.id.0,
            participant_id: &track.participant.0,
            track: track.kind,
            encoding,
            codec: media_codec(track.kind, track.codec),
            clock_rate: track.clock_rate,
            arrival_us: self.unix_micros(now),
            rtp,
        };
        match recording::encode_packet(&packet, &mut slot.data) {
            Ok(len) => {
                slot.len = len;
                self.tap.queued.push_back(slot);
                self.tap.stats.packets += 1;
                if self.tap.degraded {
                    self.tap.degraded = false;
                    info!(meeting = %meeting.id, recording = %recording_id, "recording caught up");
                }
            }
            Err(_) => {
                self.tap.free.push(slot);
                self.tap.stats.unencodable += 1;
            }
        }
    }

    /// The next tap message for the recorder, written into `buf` (at least
    /// [`MAX_MESSAGE_LEN`] bytes); returns its length. Packets come first, then the end
    /// of each recording that stopped here. Messages that do not fit `buf` are skipped.
    pub fn poll_tap(&mut self, buf: &mut [u8]) -> Option<usize> {
        while let Some(slot) = self.tap.queued.pop_front() {
            let len = slot.len;
            let fits = buf.len() >= len;
            if fits {
                buf[..len].copy_from_slice(&slot.data[..len]);
            }
            self.tap.free.push(slot);
            if fits {
                return Some(len);
            }
            self.tap.stats.unencodable += 1;
        }
        while let Some(recording) = self.tap.ended.pop_front() {
            if let Ok(len) = recording::encode_end(&recording, buf) {
                return Some(len);
            }
        }
        None
    }

    /// Whether the tap has messages for the driver.
    pub fn has_tap_messages(&self) -> bool {
        !self.tap.queued.is_empty() || !self.tap.ended.is_empty()
    }
}

#[cfg(test)]
mod tests;
