//! The recording tap's wire format: how a forwarder hands the decrypted media of recorded
//! meetings to the `fanout-recorder` process next to it (docs/recording.md).
//!
//! One Unix datagram (`SOCK_DGRAM`) carries one message, from the forwarder to the
//! recorder. Datagram boundaries frame the messages, so there is no length prefix, and
//! the kernel never delivers a partial datagram: a message is whole or absent. This
//! module is the contract between the two processes; both sides use it, and nothing
//! else may write or read the format.
//!
//! # Layout, version 1
//!
//! Integers are big-endian (network order). Every message starts with the same 4 bytes:
//!
//! ```text
//! offset size field
//!  0      2   magic "FT" (0x46 0x54)
//!  2      1   version: 1
//!  3      1   kind: 1 = Packet, 2 = End
//! ```
//!
//! **Packet**: one plaintext RTP packet of a recorded track, as the forwarder received it
//! (after SRTP unprotect, before any per-subscriber rewriting).
//!
//! ```text
//!  4      1   track kind: 0 = audio, 1 = camera (sfu::TrackKind::Video), 2 = screen
//!  5      1   encoding index: simulcast layer, 0 = lowest
//!  6      1   codec: 0 = unknown, 1 = Opus, 2 = VP8, 3 = VP9, 4 = H.264
//!  7      1   R: recording id length, 1..=64
//!  8      1   M: meeting id length, 1..=64
//!  9      1   P: participant id length, 1..=64
//! 10      4   RTP clock rate in Hz, not 0
//! 14      8   arrival time: microseconds since the Unix epoch (forwarder's clock)
//! 22      R   recording id: ASCII letters, digits, `.`, `_`, `-`, not starting with `.`
//! 22+R    M   meeting id: UTF-8
//! 22+R+M  P   participant id: UTF-8
//! 22+R+M+P .. the RTP packet, to the end of the datagram: 12..=2048 bytes, version 2
//! ```
//!
//! **End**: the recording ended on this forwarder (or stopped being recorded there): the
//! recorder closes the recording's open chunk and uploads it now rather than at its
//! deadline. Packets of the same recording may still follow (late ones, or a restart);
//! they open a new chunk.
//!
//! ```text
//!  4      1   R: recording id length, 1..=64
//!  5      R   recording id (same alphabet as in Packet); nothing may follow
//! ```
//!
//! The recording id becomes part of object-store keys and spool file names, hence its
//! narrow alphabet (no `/`, no `..`). Meeting and participant ids are whatever the
//! forwarder's [`MeetingId`](crate::ids::MeetingId) and
//! [`ParticipantId`](crate::ids::ParticipantId) hold, up to 64 bytes.
//!
//! # Rules
//!
//! * [`encode_packet`] and [`encode_end`] write into a buffer the caller owns and never
//!   allocate: the forwarder calls them on its packet path. They refuse (with a
//!   [`TapError`]) whatever [`decode`] would refuse, so an encoded message always decodes.
//! * [`decode`] borrows from the datagram and never panics: any malformed input (wrong
//!   magic or version, unknown kind, track kind or codec, bad lengths or ids, trailing
//!   bytes, a payload that is not RTP) is an error, and the recorder drops and counts it.
//! * A new field or kind means a new version; a recorder refuses versions it does not
//!   know (`UnsupportedVersion`) rather than guess.

use std::fmt;

use crate::sfu::TrackKind;

/// The first two bytes of every tap message.
pub const MAGIC: [u8; 2] = *b"FT";
/// The version this module writes and the only one it reads.
pub const VERSION: u8 = 1;
/// The longest recording, meeting or participant id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// The longest RTP packet a Packet message carries: the forwarder's datagram limit.
pub const MAX_RTP_LEN: usize = 2048;
/// The shortest RTP packet: a fixed header (RFC 3550 §5.1).
pub const MIN_RTP_LEN: usize = 12;
/// Bytes of a Packet message before its ids.
const PACKET_FIXED_LEN: usize = 22;
/// The longest tap message: a receive buffer one byte larger tells a recorder that a
/// datagram was too long (truncated by the kernel) rather than exactly this long.
pub const MAX_MESSAGE_LEN: usize = PACKET_FIXED_LEN + 3 * MAX_ID_LEN + MAX_RTP_LEN;

const KIND_PACKET: u8 = 1;
const KIND_END: u8 = 2;

/// The payload format of a recorded track: what the stitcher depacketizes it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MediaCodec {
    /// A format the recorder does not know; kept so nothing of the meeting is lost.
    #[default]
    Unknown,
    /// Opus, RFC 7587.
    Opus,
    /// VP8, RFC 7741.
    Vp8,
    /// VP9, RFC 9628.
    Vp9,
    /// H.264, RFC 6184.
    H264,
}

impl MediaCodec {
    /// From an SDP `a=rtpmap` encoding name (case-insensitive, RFC 4855 §3): `opus`,
    /// `VP8`, `VP9`, `H264`; anything else is [`MediaCodec::Unknown`].
    pub fn from_encoding_name(name: &str) -> MediaCodec {
        [
            ("opus", MediaCodec::Opus),
            ("VP8", MediaCodec::Vp8),
            ("VP9", MediaCodec::Vp9),
            ("H264", MediaCodec::H264),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map_or(MediaCodec::Unknown, |(_, codec)| codec)
    }

    /// The byte that stands for the codec on the wire (and in chunk files).
    pub fn to_wire(self) -> u8 {
        match self {
            MediaCodec::Unknown => 0,
            MediaCodec::Opus => 1,
            MediaCodec::Vp8 => 2,
            MediaCodec::Vp9 => 3,
            MediaCodec::H264 => 4,
        }
    }

    /// The codec a wire byte stands for; `None` for an unassigned value.
    pub fn from_wire(byte: u8) -> Option<MediaCodec> {
        Some(match byte {
            0 => MediaCodec::Unknown,
            1 => MediaCodec::Opus,
            2 => MediaCodec::Vp8,
            3 => MediaCodec::Vp9,
            4 => MediaCodec::H264,
            _ => return None,
        })
    }
}

/// The byte that stands for a track kind on the wire (and in chunk files).
pub fn track_kind_to_wire(kind: TrackKind) -> u8 {
    match kind {
        TrackKind::Audio => 0,
        TrackKind::Video => 1,
        TrackKind::Screen => 2,
    }
}

/// The track kind a wire byte stands for; `None` for an unassigned value.
pub fn track_kind_from_wire(byte: u8) -> Option<TrackKind> {
    Some(match byte {
        0 => TrackKind::Audio,
        1 => TrackKind::Video,
        2 => TrackKind::Screen,
        _ => return None,
    })
}

/// One tapped RTP packet, borrowing its ids and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapPacket<'a> {
    pub recording_id: &'a str,
    pub meeting_id: &'a str,
    pub participant_id: &'a str,
    /// Audio, camera ([`TrackKind::Video`]) or screen.
    pub track: TrackKind,
    /// The simulcast encoding (layer) the packet belongs to, 0 = lowest.
    pub encoding: u8,
    pub codec: MediaCodec,
    /// The RTP clock rate of the track's payload format, in Hz.
    pub clock_rate: u32,
    /// When the forwarder received the packet: microseconds since the Unix epoch.
    pub arrival_us: u64,
    /// The plaintext RTP packet (header and payload).
    pub rtp: &'a [u8],
}

/// A decoded tap message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapMessage<'a> {
    Packet(TapPacket<'a>),
    /// The recording ended on the sending forwarder.
    End {
        recording_id: &'a str,
    },
}

/// Which id of a message is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField {
    Recording,
    Meeting,
    Participant,
}

impl fmt::Display for IdField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdField::Recording => "recording id",
            IdField::Meeting => "meeting id",
            IdField::Participant => "participant id",
        })
    }
}

/// Why a message could not be encoded or decoded.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// The message ends before a field its header announces.
    #[error("message ends inside its fields")]
    Truncated,
    #[error("not a tap message (bad magic)")]
    BadMagic,
    #[error("tap version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown track kind {0}")]
    UnknownTrackKind(u8),
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// An id is empty, longer than [`MAX_ID_LEN`], not UTF-8, or (recording id) outside
    /// its alphabet.
    #[error("invalid {0}")]
    BadId(IdField),
    #[error("RTP clock rate is 0")]
    ZeroClockRate,
    /// The payload is shorter than an RTP header, or not RTP version 2.
    #[error("payload is not an RTP packet")]
    NotRtp,
    #[error("RTP packet longer than {MAX_RTP_LEN} bytes")]
    RtpTooLarge,
    /// Bytes after the end of an End message.
    #[error("bytes after the end of the message")]
    TrailingBytes,
    /// Encoding only: the caller's buffer cannot hold the message.
    #[error("buffer too small: the message needs {needed} bytes")]
    BufferTooSmall { needed: usize },
}

impl TapError {
    /// A short stable name, for metric labels (`reason="bad_magic"`).
    pub fn reason(&self) -> &'static str {
        match self {
            TapError::Truncated => "truncated",
            TapError::BadMagic => "bad_magic",
            TapError::UnsupportedVersion(_) => "unsupported_version",
            TapError::UnknownKind(_) => "unknown_kind",
            TapError::UnknownTrackKind(_) => "unknown_track_kind",
            TapError::UnknownCodec(_) => "unknown_codec",
            TapError::BadId(_) => "bad_id",
            TapError::ZeroClockRate => "zero_clock_rate",
            TapError::NotRtp => "not_rtp",
            TapError::RtpTooLarge => "rtp_too_large",
            TapError::TrailingBytes => "trailing_bytes",
            TapError::BufferTooSmall { .. } => "buffer_too_small",
        }
    }
}

/// Whether `id` may be a recording id: 1..=64 ASCII letters, digits, `.`, `_`, `-`, not
/// starting with `.`. Safe as an object-store key segment and a file name.
pub fn is_valid_recording_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_recording_id(id: &str) -> Result<(), TapError> {
    if is_valid_recording_id(id) {
        Ok(())
    } else {
        Err(TapError::BadId(IdField::Recording))
    }
}

fn check_name(id: &str, field: IdField) -> Result<(), TapError> {
    if (1..=MAX_ID_LEN).contains(&id.len()) {
        Ok(())
    } else {
        Err(TapError::BadId(field))
    }
}

fn check_rtp(rtp: &[u8]) -> Result<(), TapError> {
    if rtp.len() > MAX_RTP_LEN {
        return Err(TapError::RtpTooLarge);
    }
    // Version 2 in the top two bits (RFC 3550 §5.1): a cheap check that the offsets
    // before it were right, not a validation of the packet.
    if rtp.len() < MIN_RTP_LEN || rtp[0] >> 6 != 2 {
        return Err(TapError::NotRtp);
    }
    Ok(())
}

/// The size of `packet` on the wire.
pub fn packet_len(packet: &TapPacket<'_>) -> usize {
    PACKET_FIXED_LEN
        + packet.recording_id.len()
        + packet.meeting_id.len()
        + packet.participant_id.len()
        + packet.rtp.len()
}

/// Write `packet` as a Packet message at the start of `out`; returns its length. Never
/// allocates. Refuses a packet that [`decode`] would refuse, and a buffer too small.
pub fn encode_packet(packet: &TapPacket<'_>, out: &mut [u8]) -> Result<usize, TapError> {
    check_recording_id(packet.recording_id)?;
    check_name(packet.meeting_id, IdField::Meeting)?;
    check_name(packet.participant_id, IdField::Participant)?;
    if packet.clock_rate == 0 {
        return Err(TapError::ZeroClockRate);
    }
    check_rtp(packet.rtp)?;
    let needed = packet_len(packet);
    let Some(out) = out.get_mut(..needed) else {
        return Err(TapError::BufferTooSmall { needed });
    };
    let (fixed, rest) = out.split_at_mut(PACKET_FIXED_LEN);
    fixed[..2].copy_from_slice(&MAGIC);
    fixed[2] = VERSION;
    fixed[3] = KIND_PACKET;
    fixed[4] = track_kind_to_wire(packet.track);
    fixed[5] = packet.encoding;
    fixed[6] = packet.codec.to_wire();
    // The checks above bound every id to MAX_ID_LEN (64), so each length fits a byte.
    fixed[7] = packet.recording_id.len() as u8;
    fixed[8] = packet.meeting_id.len() as u8;
    fixed[9] = packet.participant_id.len() as u8;
    fixed[10..14].copy_from_slice(&packet.clock_rate.to_be_bytes());
    fixed[14..22].copy_from_slice(&packet.arrival_us.to_be_bytes());
    let mut at = 0;
    for part in [
        packet.recording_id.as_bytes(),
        packet.meeting_id.as_bytes(),
        packet.participant_id.as_bytes(),
        packet.rtp,
    ] {
        rest[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Ok(needed)
}

/// Write an End message for `recording_id` at the start of `out`; returns its length.
pub fn encode_end(recording_id: &str, out: &mut [u8]) -> Result<usize, TapError> {
    check_recording_id(recording_id)?;
    let needed = 5 + recording_id.len();
    let Some(out) = out.get_mut(..needed) else {
        return Err(TapError::BufferTooSmall { needed });
    };
    out[..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = KIND_END;
    // Bounded by MAX_ID_LEN (64) in check_recording_id.
    out[4] = recording_id.len() as u8;
    out[5..].copy_from_slice(recording_id.as_bytes());
    Ok(needed)
}

/// Read one tap message, borrowing from `datagram`. Every malformed input is an error.
pub fn decode(datagram: &[u8]) -> Result<TapMessage<'_>, TapError> {
    let header = datagram.get(..4).ok_or(TapError::Truncated)?;
    if header[..2] != MAGIC {
        return Err(TapError::BadMagic);
    }
    if header[2] != VERSION {
        return Err(TapError::UnsupportedVersion(header[2]));
    }
    match header[3] {
        KIND_PACKET => decode_packet(datagram).map(TapMessage::Packet),
        KIND_END => {
            let mut reader = Reader {
                bytes: datagram,
                at: 4,
            };
            let len = reader.byte()?;
            let recording_id = reader.id(len, IdField::Recording)?;
            check_recording_id(recording_id)?;
            if reader.at != datagram.len() {
                return Err(TapError::TrailingBytes);
            }
            Ok(TapMessage::End { recording_id })
        }
        kind => Err(TapError::UnknownKind(kind)),
    }
}

fn decode_packet(datagram: &[u8]) -> Result<TapPacket<'_>, TapError> {
    let mut reader = Reader {
        bytes: datagram,
        at: 4,
    };
    let track = reader.byte()?;
    let track = track_kind_from_wire(track).ok_or(TapError::UnknownTrackKind(track))?;
    let encoding = reader.byte()?;
    let codec = reader.byte()?;
    let codec = MediaCodec::from_wire(codec).ok_or(TapError::UnknownCodec(codec))?;
    let recording_len = reader.byte()?;
    let meeting_len = reader.byte()?;
    let participant_len = reader.byte()?;
    let clock_rate = u32::from_be_bytes(reader.array()?);
    if clock_rate == 0 {
        return Err(TapError::ZeroClockRate);
    }
    let arrival_us = u64::from_be_bytes(reader.array()?);
    let recording_id = reader.id(recording_len, IdField::Recording)?;
    check_recording_id(recording_id)?;
    let meeting_id = reader.id(meeting_len, IdField::Meeting)?;
    let participant_id = reader.id(participant_len, IdField::Participant)?;
    let rtp = &datagram[reader.at..];
    check_rtp(rtp)?;
    Ok(TapPacket {
        recording_id,
        meeting_id,
        participant_id,
        track,
        encoding,
        codec,
        clock_rate,
        arrival_us,
        rtp,
    })
}

/// A cursor over a datagram whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], TapError> {
        let end = self.at.checked_add(len).ok_or(TapError::Truncated)?;
        let bytes = self.bytes.get(self.at..end).ok_or(TapError::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, TapError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TapError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// An id of `len` bytes: 1..=64 bytes of UTF-8.
    fn id(&mut self, len: u8, field: IdField) -> Result<&'a str, TapError> {
        if len == 0 || usize::from(len) > MAX_ID_LEN {
            return Err(TapError::BadId(field));
        }
        let bytes = self.take(usize::from(len))?;
        std::str::from_utf8(bytes).map_err(|_| TapError::BadId(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rtp_packet(payload_len: usize) -> Vec<u8> {
        let mut rtp = vec![0x80, 96, 0x12, 0x34, 0, 0, 0x10, 0, 0x11, 0x22, 0x33, 0x44];
        rtp.extend((0..payload_len).map(|i| i as u8));
        rtp
    }

    fn sample<'a>(rtp: &'a [u8]) -> TapPacket<'a> {
        TapPacket {
            recording_id: "rec-2026_11.a",
            meeting_id: "standup",
            participant_id: "alice",
            track: TrackKind::Video,
            encoding: 2,
            codec: MediaCodec::Vp8,
            clock_rate: 90_000,
            arrival_us: 1_790_000_000_123_456,
            rtp,
        }
    }

    #[test]
    fn packet_layout_is_the_documented_one() {
        let rtp = rtp_packet(3);
        let packet = sample(&rtp);
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let len = encode_packet(&packet, &mut buf).unwrap();
        let wire = &buf[..len];
        assert_eq!(&wire[..4], b"FT\x01\x01");
        assert_eq!(wire[4..10], [1, 2, 2, 13, 7, 5]);
        assert_eq!(wire[10..14], 90_000u32.to_be_bytes());
        assert_eq!(wire[14..22], 1_790_000_000_123_456u64.to_be_bytes());
        assert_eq!(&wire[22..35], b"rec-2026_11.a");
        assert_eq!(&wire[35..42], b"standup");
        assert_eq!(&wire[42..47], b"alice");
        assert_eq!(&wire[47..], &rtp[..]);
        assert_eq!(len, packet_len(&packet));
        assert_eq!(decode(wire), Ok(TapMessage::Packet(packet)));
    }

    #[test]
    fn end_layout_is_the_documented_one() {
        let mut buf = [0u8; 80];
        let len = encode_end("r1", &mut buf).unwrap();
        assert_eq!(&buf[..len], b"FT\x01\x02\x02r1");
        assert_eq!(
            decode(&buf[..len]),
            Ok(TapMessage::End { recording_id: "r1" })
        );
        assert_eq!(decode(b"FT\x01\x02\x02r1x"), Err(TapError::TrailingBytes));
        assert_eq!(decode(b"FT\x01\x02\x03r1"), Err(TapError::Truncated));
    }

    #[test]
    fn encoding_refuses_what_decoding_would() {
        let rtp = rtp_packet(0);
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let long = "x".repeat(MAX_ID_LEN + 1);
        let cases: [(TapPacket<'_>, TapError); 7] = [
            (
                TapPacket {
                    recording_id: "../etc",
                    ..sample(&rtp)
                },
                TapError::BadId(IdField::Recording),
            ),
            (
                TapPacket {
                    recording_id: "a/b",
                    ..sample(&rtp)
                },
                TapError::BadId(IdField::Recording),
            ),
            (
                TapPacket {
                    meeting_id: "",
                    ..sample(&rtp)
                },
                TapError::BadId(IdField::Meeting),
            ),
            (
                TapPacket {
                    participant_id: &long,
                    ..sample(&rtp)
                },
                TapError::BadId(IdField::Participant),
            ),
            (
                TapPacket {
                    clock_rate: 0,
                    ..sample(&rtp)
                },
                TapError::ZeroClockRate,
            ),
            (
                TapPacket {
                    rtp: &rtp[..11],
                    ..sample(&rtp)
                },
                TapError::NotRtp,
            ),
            (
                TapPacket {
                    rtp: &[0u8; MAX_RTP_LEN + 1],
                    ..sample(&rtp)
                },
                TapError::RtpTooLarge,
            ),
        ];
        for (packet, error) in cases {
            assert_eq!(encode_packet(&packet, &mut buf), Err(error), "{packet:?}");
        }
        let needed = packet_len(&sample(&rtp));
        assert_eq!(
            encode_packet(&sample(&rtp), &mut buf[..needed - 1]),
            Err(TapError::BufferTooSmall { needed })
        );
    }

    #[test]
    fn decoding_names_what_is_wrong() {
        let rtp = rtp_packet(4);
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let len = encode_packet(&sample(&rtp), &mut buf).unwrap();
        let good = buf[..len].to_vec();
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            decode(&bytes).map(|_| ())
        };
        assert_eq!(decode(&[]), Err(TapError::Truncated));
        assert_eq!(with(0, b'X'), Err(TapError::BadMagic));
        assert_eq!(with(2, 2), Err(TapError::UnsupportedVersion(2)));
        assert_eq!(with(3, 9), Err(TapError::UnknownKind(9)));
        assert_eq!(with(4, 3), Err(TapError::UnknownTrackKind(3)));
        assert_eq!(with(6, 5), Err(TapError::UnknownCodec(5)));
        assert_eq!(with(7, 0), Err(TapError::BadId(IdField::Recording)));
        assert_eq!(with(8, 65), Err(TapError::BadId(IdField::Meeting)));
        assert_eq!(with(13, 0), Ok(()), "clock rate 256 is fine");
        let mut zero_rate = good.clone();
        zero_rate[10..14].fill(0);
        assert_eq!(decode(&zero_rate), Err(TapError::ZeroClockRate));
        assert_eq!(with(22, b'.'), Err(TapError::BadId(IdField::Recording)));
        assert_eq!(with(35, 0xff), Err(TapError::BadId(IdField::Meeting)));
        assert_eq!(with(47, 0x40), Err(TapError::NotRtp));
        assert_eq!(decode(&good[..len - 5]), Err(TapError::NotRtp));
        assert_eq!(decode(&good[..30]), Err(TapError::Truncated));
    }

    #[test]
    fn codec_names_follow_sdp() {
        assert_eq!(MediaCodec::from_encoding_name("OPUS"), MediaCodec::Opus);
        assert_eq!(MediaCodec::from_encoding_name("vp9"), MediaCodec::Vp9);
        assert_eq!(MediaCodec::from_encoding_name("H264"), MediaCodec::H264);
        assert_eq!(MediaCodec::from_encoding_name("AV1"), MediaCodec::Unknown);
        for byte in 0..=u8::MAX {
            if let Some(codec) = MediaCodec::from_wire(byte) {
                assert_eq!(codec.to_wire(), byte);
            }
            if let Some(kind) = track_kind_from_wire(byte) {
                assert_eq!(track_kind_to_wire(kind), byte);
            }
        }
    }

    fn recording_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"
    }

    fn name() -> impl Strategy<Value = String> {
        // Any UTF-8 up to 64 bytes, multi-byte characters included.
        ".{1,20}".prop_filter("at most 64 bytes", |s| s.len() <= MAX_ID_LEN)
    }

    fn track() -> impl Strategy<Value = TrackKind> {
        prop_oneof![
            Just(TrackKind::Audio),
            Just(TrackKind::Video),
            Just(TrackKind::Screen)
        ]
    }

    fn codec() -> impl Strategy<Value = MediaCodec> {
        (0u8..5).prop_map(|b| MediaCodec::from_wire(b).unwrap_or_default())
    }

    fn rtp() -> impl Strategy<Value = Vec<u8>> {
        (
            0x80u8..=0xbf,
            proptest::collection::vec(any::<u8>(), MIN_RTP_LEN - 1..MAX_RTP_LEN),
        )
            .prop_map(|(first, rest)| {
                let mut rtp = vec![first];
                rtp.extend(rest);
                rtp
            })
    }

    proptest! {
        #[test]
        fn packets_round_trip(
            recording in recording_id(), meeting in name(), participant in name(),
            track in track(), encoding in any::<u8>(), codec in codec(),
            clock_rate in 1u32.., arrival_us in any::<u64>(), rtp in rtp(),
        ) {
            let packet = TapPacket {
                recording_id: &recording, meeting_id: &meeting, participant_id: &participant,
                track, encoding, codec, clock_rate, arrival_us, rtp: &rtp,
            };
            let mut buf = [0u8; MAX_MESSAGE_LEN];
            let len = encode_packet(&packet, &mut buf).unwrap();
            prop_assert_eq!(len, packet_len(&packet));
            prop_assert!(len <= MAX_MESSAGE_LEN);
            prop_assert_eq!(decode(&buf[..len]), Ok(TapMessage::Packet(packet)));
            // Every strict prefix is refused, never misread as a shorter packet (a
            // prefix that still holds 12 RTP bytes is a valid, shorter packet by design:
            // datagrams are never cut, so the format has no length field for it).
            let min = len - rtp.len() + MIN_RTP_LEN;
            for cut in 0..min {
                prop_assert!(decode(&buf[..cut]).is_err());
            }
        }

        #[test]
        fn ends_round_trip(recording in recording_id()) {
            let mut buf = [0u8; 80];
            let len = encode_end(&recording, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf[..len]), Ok(TapMessage::End { recording_id: &recording }));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_header_never_panic(
            kind in 1u8..=2, bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut datagram = vec![b'F', b'T', VERSION, kind];
            datagram.extend(bytes);
            if let Ok(message) = decode(&datagram) {
                // What decodes encodes back to the same bytes: no two readings of one
                // datagram.
                let mut buf = [0u8; MAX_MESSAGE_LEN];
                let len = match message {
                    TapMessage::Packet(p) => encode_packet(&p, &mut buf),
                    TapMessage::End { recording_id } => encode_end(recording_id, &mut buf),
                }.unwrap();
                prop_assert_eq!(&buf[..len], &datagram[..]);
            }
        }
    }
}
