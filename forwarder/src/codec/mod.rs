//! Video payload formats: what the forwarder reads from (and rewrites in) the RTP payload.
//!
//! An SFU does not decode video, but it has to know a little about each packet's place in
//! the stream: whether a decoder could start there (to switch a subscription to another
//! simulcast encoding, or to start a new subscriber), where frames begin and end, and which
//! temporal / spatial layer the packet carries (to thin a stream out for a slow
//! subscriber). [`inspect`] reads that from the payload, without allocating, into a
//! [`FrameInfo`]; it is total (never panics, whatever the bytes).
//!
//! | codec | payload format | what is read |
//! |-------|----------------|--------------|
//! | [`Codec::Vp8`]  | RFC 7741 §4.2 payload descriptor, §4.3 payload header | [`vp8`] |
//! | [`Codec::Vp9`]  | RFC 9628 §4.2 payload descriptor, §4.2.1 scalability structure | [`vp9`] |
//! | [`Codec::H264`] | RFC 6184 §5.2–5.8 NAL unit header, STAP-A, FU-A | [`h264`] |
//! | [`Codec::Opaque`] | anything else (audio): nothing is read | |
//!
//! # Keyframes
//!
//! `FrameInfo::keyframe` says the packet belongs to a frame at which a decoder with no
//! prior state can start, *as far as this one packet can tell*:
//!
//! * **VP8**: only the first packet of a frame (S=1, PID=0) carries the VP8 payload header
//!   whose P bit is the inverse key frame flag (RFC 7741 §4.3), so `keyframe` is true on
//!   that packet only, never on the later packets of the same key frame.
//! * **VP9**: P=0 (no inter-picture prediction) on the base spatial layer (SID 0, or no
//!   layer indices): a key picture. Every packet of the base layer frame says so. P=0 on an
//!   upper spatial layer (SID > 0) is reported as `layer_keyframe` only: that layer frame
//!   may still predict from the lower layer of the same picture (D=1), so a decoder can
//!   start it only if it already decodes the lower layers (RFC 9628 §4.2, P and D bits).
//! * **H.264**: the packet carries an IDR slice (type 5) or a parameter set (SPS 7, PPS 8),
//!   whole, aggregated in a STAP-A, or as any fragment of an FU-A (the FU header repeats
//!   the original type). Parameter sets count because a decoder needs them before the IDR,
//!   and encoders send them right before it (often in their own packets).
//!
//! To switch, the forwarder wants the *first* packet of such a frame:
//! [`FrameInfo::is_keyframe_start`] (`keyframe && start_of_frame`). For VP9 SVC
//! up-switching within one picture, [`FrameInfo::is_independent_layer_start`].
//!
//! # Rewriting for continuity
//!
//! When a subscription switches simulcast encodings, or drops temporal layers, the
//! receiver must still see one continuous VP8/VP9 stream: picture ids and TL0PICIDX that
//! increase by one. [`set_vp8_picture_id`], [`set_vp8_tl0_pic_idx`],
//! [`set_vp9_picture_id`] and [`set_vp9_tl0_pic_idx`] patch the descriptor in place at
//! the offsets `inspect` recorded (keeping the field's width), and [`PictureIdMunger`]
//! keeps the numbering continuous for one outbound stream.

pub mod h264;
pub mod vp8;
pub mod vp9;

pub use vp8::{set_vp8_picture_id, set_vp8_tl0_pic_idx};
pub use vp9::{set_vp9_picture_id, set_vp9_tl0_pic_idx};

/// The payload format of a track, from its SDP `a=rtpmap` encoding name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// VP8, RFC 7741.
    Vp8,
    /// VP9, RFC 9628.
    Vp9,
    /// H.264 in packetization mode 0 or 1, RFC 6184.
    H264,
    /// Anything else (audio, or a video format the forwarder does not read): no descriptor.
    #[default]
    Opaque,
}

impl Codec {
    /// `"VP8"`, `"VP9"`, `"H264"` (case-insensitive, as SDP encoding names are: RFC 4855
    /// §3); anything else is [`Codec::Opaque`].
    pub fn from_encoding_name(name: &str) -> Codec {
        if name.eq_ignore_ascii_case("VP8") {
            Codec::Vp8
        } else if name.eq_ignore_ascii_case("VP9") {
            Codec::Vp9
        } else if name.eq_ignore_ascii_case("H264") {
            Codec::H264
        } else {
            Codec::Opaque
        }
    }
}

/// Why a payload could not be read. The packet should be dropped (and counted), not
/// forwarded: a subscriber's decoder could not use it either.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload ends before a field its own descriptor announces (or is empty).
    #[error("payload ends inside its descriptor")]
    TooShort,
    /// A field holds a value the payload format forbids (e.g. H.264 NAL type 0, an empty
    /// STAP-A unit, a fourth VP9 reference index).
    #[error("malformed payload descriptor")]
    Malformed,
    /// A valid but unsupported packetization: H.264 STAP-B, MTAP16, MTAP24, FU-B (types
    /// 25-27, 29), which exist only in interleaved mode (RFC 6184 §6.4,
    /// packetization-mode=2), which WebRTC never negotiates.
    #[error("unsupported packetization (H.264 interleaved mode)")]
    Unsupported,
}

/// What the forwarder needs to know about one packet's place in the video stream.
///
/// Offsets are relative to the start of the RTP payload that was given to [`inspect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameInfo {
    /// The codec that was read (for [`Codec::Opaque`] every other field is empty).
    pub codec: Codec,
    /// The packet belongs to a keyframe, as far as this packet tells (see the module docs:
    /// for VP8 only the first packet of the frame tells; for VP9 only the base spatial
    /// layer is a keyframe).
    pub keyframe: bool,
    /// The packet belongs to a frame that does not predict from earlier pictures of its
    /// own spatial layer. VP9: P=0 at any SID (an upper layer may still depend on the lower
    /// layer of the same picture, see `inter_layer_dependency`). VP8, H.264: `keyframe`.
    pub layer_keyframe: bool,
    /// First packet of a frame: VP8 S=1 and PID=0; VP9 B=1 (first packet of a layer frame);
    /// H.264: see [`h264`] (an approximation: every packet that may begin an access unit).
    pub start_of_frame: bool,
    /// Last packet of a frame: VP9 E=1 (end of a layer frame; the RTP marker ends the whole
    /// picture); VP8, H.264: the RTP marker bit the caller passed in.
    pub end_of_frame: bool,
    /// Temporal layer id: VP8 TID (when T=1), VP9 TID (when L=1).
    pub temporal_layer: Option<u8>,
    /// Spatial layer id: VP9 SID (when L=1).
    pub spatial_layer: Option<u8>,
    /// Temporal layer sync / switching-up point: VP8 Y bit (when T=1), VP9 U bit (when
    /// L=1). A receiver can start decoding this temporal layer here.
    pub layer_sync: bool,
    /// VP9 D bit: this layer frame predicts from the lower spatial layer of the same
    /// picture.
    pub inter_layer_dependency: bool,
    /// VP8/VP9 picture id (7 or 15 bits).
    pub picture_id: Option<u16>,
    /// Offset of the picture id field (its first byte, holding the M bit) in the payload.
    pub picture_id_offset: usize,
    /// Width of the picture id: 7 or 15 (0 when absent). The field takes 1 or 2 bytes.
    pub picture_id_bits: u8,
    /// VP8 TL0PICIDX (when L=1), VP9 TL0PICIDX (non-flexible mode, when L=1).
    pub tl0_pic_idx: Option<u8>,
    /// Offset of the TL0PICIDX byte in the payload.
    pub tl0_pic_idx_offset: usize,
    /// Length of the payload descriptor: the codec bitstream starts at this offset (0 for
    /// H.264, whose NAL unit headers are part of the bitstream).
    pub descriptor_len: usize,
}

impl FrameInfo {
    /// The first packet of a keyframe: where a subscription can start or switch
    /// (`keyframe && start_of_frame`).
    pub fn is_keyframe_start(&self) -> bool {
        self.keyframe && self.start_of_frame
    }

    /// The first packet of a layer frame that a receiver which already decodes the lower
    /// spatial layers of this picture can start decoding (`layer_keyframe &&
    /// start_of_frame`): VP9 spatial up-switching (RFC 9628 §4.2, P=0 at SID > 0). Without
    /// spatial layers this is [`FrameInfo::is_keyframe_start`].
    pub fn is_independent_layer_start(&self) -> bool {
        self.layer_keyframe && self.start_of_frame
    }
}

/// Reads the payload of one RTP packet (the bytes after the RTP header, without padding).
/// `marker` is the RTP M bit, which VP8 and H.264 use as the end of a frame (RFC 7741
/// §4.1, RFC 6184 §5.1).
///
/// [`Codec::Opaque`] always succeeds with an empty [`FrameInfo`].
pub fn inspect(codec: Codec, payload: &[u8], marker: bool) -> Result<FrameInfo, CodecError> {
    match codec {
        Codec::Vp8 => vp8::inspect(payload, marker),
        Codec::Vp9 => vp9::inspect(payload),
        Codec::H264 => h264::inspect(payload, marker),
        Codec::Opaque => Ok(FrameInfo::default()),
    }
}

/// Reads a VP8/VP9 picture id (RFC 7741 §4.2, RFC 9628 §4.2: the same layout) at the start
/// of `bytes`: M=0, 7 bits in one byte; M=1, 15 bits in two. Returns (id, bits, length).
fn read_picture_id(bytes: &[u8]) -> Result<(u16, u8, usize), CodecError> {
    let first = *bytes.first().ok_or(CodecError::TooShort)?;
    if first & 0x80 == 0 {
        Ok((u16::from(first), 7, 1))
    } else {
        let second = *bytes.get(1).ok_or(CodecError::TooShort)?;
        Ok((u16::from_be_bytes([first & 0x7f, second]), 15, 2))
    }
}

/// Writes a picture id at the offset `info` recorded, keeping its width. Checks that the
/// bytes there still have that width (the M bit), so a `FrameInfo` from another payload
/// cannot make it scribble over unrelated bytes.
fn write_picture_id(payload: &mut [u8], info: &FrameInfo, codec: Codec, id: u16) -> bool {
    if info.codec != codec || info.picture_id.is_none() {
        return false;
    }
    let at = info.picture_id_offset;
    match info.picture_id_bits {
        7 => match payload.get_mut(at) {
            Some(b) if *b & 0x80 == 0 => {
                *b = (id & 0x7f) as u8;
                true
            }
            _ => false,
        },
        15 => match payload.get_mut(at..at.saturating_add(2)) {
            Some(b) if b[0] & 0x80 != 0 => {
                b.copy_from_slice(&((id & 0x7fff) | 0x8000).to_be_bytes());
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Writes the TL0PICIDX byte at the offset `info` recorded.
fn write_tl0_pic_idx(payload: &mut [u8], info: &FrameInfo, codec: Codec, idx: u8) -> bool {
    if info.codec != codec || info.tl0_pic_idx.is_none() {
        return false;
    }
    match payload.get_mut(info.tl0_pic_idx_offset) {
        Some(b) => {
            *b = idx;
            true
        }
        None => false,
    }
}

/// How many recent frames (picture ids) and base-layer frames (TL0PICIDX values) a
/// [`PictureIdMunger`] remembers, for reordered packets and retransmissions. At 30 frames
/// per second that is about a second (four when only a quarter of the frames is
/// forwarded). Packets of frames older than all of them are numbered by extrapolation,
/// without taking a number from the live frames.
const MUNGER_WINDOW: usize = 32;

/// Signed distance from unwrapped id `from` to `to`.
fn distance(from: u32, to: u32) -> i32 {
    to.wrapping_sub(from) as i32
}

/// Renumbering of one field (picture id or TL0PICIDX) for the current source: input ids
/// are unwrapped (RFC 1982 serial arithmetic in the field's width) so that an id that
/// repeats after 128 (7-bit) or 256 (TL0PICIDX) frames cannot alias an old entry, and the
/// last [`MUNGER_WINDOW`] input -> output mappings are kept, newest first on lookup.
#[derive(Debug, Clone)]
struct Renumbering {
    entries: [(u32, u16); MUNGER_WINDOW],
    len: usize,
    next: usize,
    /// The newest input id seen: raw and unwrapped.
    newest: Option<(u16, u32)>,
}

impl Default for Renumbering {
    fn default() -> Self {
        Renumbering {
            entries: [(0, 0); MUNGER_WINDOW],
            len: 0,
            next: 0,
            newest: None,
        }
    }
}

impl Renumbering {
    /// Unwraps `raw` (a `bits`-wide id) against the newest id seen; true if it is newer.
    fn unwrap(&self, raw: u16, bits: u8) -> (u32, bool) {
        let Some((newest_raw, newest)) = self.newest else {
            return (u32::from(raw), true);
        };
        let modulus = 1u32 << bits.min(16);
        let ahead = u32::from(raw.wrapping_sub(newest_raw)) & (modulus - 1);
        if ahead == 0 {
            (newest, false)
        } else if ahead < modulus / 2 {
            (newest.wrapping_add(ahead), true)
        } else {
            (newest.wrapping_sub(modulus - ahead), false)
        }
    }

    fn get(&self, unwrapped: u32) -> Option<u16> {
        (0..self.len)
            .map(|back| (self.next + MUNGER_WINDOW - 1 - back) % MUNGER_WINDOW)
            .find_map(|i| {
                self.entries
                    .get(i)
                    .filter(|e| e.0 == unwrapped)
                    .map(|e| e.1)
            })
    }

    fn remembered(&self) -> &[(u32, u16)] {
        self.entries.get(..self.len).unwrap_or_default()
    }

    /// Older than every remembered input id (false when nothing is remembered).
    fn is_behind(&self, unwrapped: u32) -> bool {
        let remembered = self.remembered();
        !remembered.is_empty() && remembered.iter().all(|e| distance(e.0, unwrapped) < 0)
    }

    /// An output id for an input id that was never numbered, without numbering it: the
    /// output of the nearest remembered id at or below it (else the oldest one), moved by
    /// the same distance. `mask` is the output space (0x7fff or 0xff).
    fn extrapolate(&self, unwrapped: u32, mask: u16) -> Option<u16> {
        let remembered = self.remembered();
        let below = remembered
            .iter()
            .filter(|e| distance(e.0, unwrapped) >= 0)
            .min_by_key(|e| distance(e.0, unwrapped));
        let base = below.or_else(|| remembered.iter().max_by_key(|e| distance(e.0, unwrapped)))?;
        Some(base.1.wrapping_add(unwrapped.wrapping_sub(base.0) as u16) & mask)
    }

    fn insert(&mut self, raw: u16, unwrapped: u32, newer: bool, output: u16) {
        if let Some(e) = self.entries.get_mut(self.next) {
            *e = (unwrapped, output);
        }
        self.next = (self.next + 1) % MUNGER_WINDOW;
        self.len = (self.len + 1).min(MUNGER_WINDOW);
        if newer {
            self.newest = Some((raw, unwrapped));
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
        self.newest = None;
    }
}

/// Keeps picture ids and TL0PICIDX continuous for one outbound stream whose source can
/// change (simulcast switch) or whose frames are dropped (temporal layer filtering): the
/// output picture id increments by one per forwarded frame; TL0PICIDX increments per
/// forwarded base-layer (TID 0) frame.
///
/// Model: every input picture id that is not yet known starts a new output frame numbered
/// one past the last; packets of a frame seen before (reordering within a frame, or frames
/// interleaved by reordering) get that frame's number from a table of the last 32 frames.
/// A plain offset (output = input + k, as for sequence numbers) is not enough: each
/// dropped frame changes k, so late packets of an earlier frame would get the wrong
/// number. TL0PICIDX works the same way, counting only base-layer frames; a
/// frame of a higher temporal layer whose TL0 frame was not forwarded carries the last
/// forwarded TL0PICIDX. The first source ever seen passes through unchanged (while no frame
/// is dropped).
///
/// Packets sent again from a retransmission cache go through
/// [`PictureIdMunger::rewrite_retransmission`], which reuses the numbers their frame got
/// and never allocates new ones.
///
/// Every gap is closed, whether the forwarder dropped the frames or the network lost
/// them upstream: the receiver then learns of an upstream loss from the RTP sequence
/// numbers (and NACKs it), not from a picture id gap.
///
/// Counters run in 15-bit space and are written masked to the width of each packet's
/// field, so a switch between 7-bit and 15-bit sources stays continuous modulo 128.
#[derive(Debug, Clone, Default)]
pub struct PictureIdMunger {
    pictures: Renumbering,
    tl0s: Renumbering,
    last_picture_id: Option<u16>,
    last_tl0_pic_idx: Option<u8>,
    source_bits: u8,
}

impl PictureIdMunger {
    /// A munger that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites the picture id and TL0PICIDX of one forwarded packet in place. Call it for
    /// every forwarded packet of the current source, in order, with the `FrameInfo` that
    /// [`inspect`] returned for this `payload`; `switched` is true on the first packet
    /// after a source change (a keyframe). Does nothing for H.264 and opaque payloads, or
    /// fields the descriptor does not carry.
    pub fn rewrite(&mut self, codec: Codec, payload: &mut [u8], info: &FrameInfo, switched: bool) {
        if !matches!(codec, Codec::Vp8 | Codec::Vp9) || info.codec != codec {
            return;
        }
        // A change of picture id width without a signalled switch is a new source too
        // (an encoder restart): its ids have nothing to do with the previous ones.
        let width_changed = info.picture_id.is_some() && info.picture_id_bits != self.source_bits;
        if switched || width_changed {
            self.pictures.clear();
            self.tl0s.clear();
            if info.picture_id.is_some() {
                self.source_bits = info.picture_id_bits;
            }
        }
        if let Some(input) = info.picture_id {
            let (unwrapped, newer) = self.pictures.unwrap(input, info.picture_id_bits);
            let known = if newer {
                None
            } else {
                self.pictures.get(unwrapped)
            };
            let output = match known {
                Some(output) => output,
                // Older than anything remembered: too late to matter to the receiver, and
                // it must not take a number from the live frames.
                None if !newer && self.pictures.is_behind(unwrapped) => self
                    .pictures
                    .extrapolate(unwrapped, 0x7fff)
                    .unwrap_or(input),
                // A new frame, or a late frame never seen before: the next number.
                None => {
                    let output = self.last_picture_id.map_or(input, |l| (l + 1) & 0x7fff);
                    self.last_picture_id = Some(output);
                    self.pictures.insert(input, unwrapped, newer, output);
                    output
                }
            };
            write_picture_id(payload, info, codec, output);
        }
        if let Some(input) = info.tl0_pic_idx {
            let (unwrapped, newer) = self.tl0s.unwrap(u16::from(input), 8);
            let known = if newer {
                None
            } else {
                self.tl0s.get(unwrapped)
            };
            let output = match known {
                Some(output) => output as u8,
                None if !newer && self.tl0s.is_behind(unwrapped) => self
                    .tl0s
                    .extrapolate(unwrapped, 0xff)
                    .map_or(input, |o| o as u8),
                // RFC 7741 §4.2 / RFC 9628 §4.2: TL0PICIDX increments with each TID 0
                // frame; other frames repeat the index of the TL0 frame they follow.
                None if info.temporal_layer.is_none_or(|t| t == 0) => {
                    let output = self.last_tl0_pic_idx.map_or(input, |l| l.wrapping_add(1));
                    self.last_tl0_pic_idx = Some(output);
                    self.tl0s
                        .insert(u16::from(input), unwrapped, newer, u16::from(output));
                    output
                }
                None => self.last_tl0_pic_idx.unwrap_or(input),
            };
            write_tl0_pic_idx(payload, info, codec, output);
        }
    }

    /// Rewrites a packet sent again from a retransmission cache (the publisher's original
    /// bytes) with the numbers its frame got when it was forwarded, without numbering
    /// anything new, so the live numbering is not disturbed. Returns false if the munger
    /// no longer remembers the frame (older than its window, from before the last switch,
    /// or never forwarded): the numbers written are then extrapolated from the nearest
    /// remembered frame, and the caller may prefer not to send the packet.
    pub fn rewrite_retransmission(
        &self,
        codec: Codec,
        payload: &mut [u8],
        info: &FrameInfo,
    ) -> bool {
        if !matches!(codec, Codec::Vp8 | Codec::Vp9) || info.codec != codec {
            return true;
        }
        let mut remembered = true;
        if let Some(input) = info.picture_id {
            let (unwrapped, _) = self.pictures.unwrap(input, info.picture_id_bits);
            let output = self.pictures.get(unwrapped).unwrap_or_else(|| {
                remembered = false;
                self.pictures
                    .extrapolate(unwrapped, 0x7fff)
                    .unwrap_or(input)
            });
            write_picture_id(payload, info, codec, output);
        }
        if let Some(input) = info.tl0_pic_idx {
            let (unwrapped, _) = self.tl0s.unwrap(u16::from(input), 8);
            let output = match self.tl0s.get(unwrapped) {
                Some(output) => output as u8,
                None => {
                    remembered = false;
                    self.tl0s
                        .extrapolate(unwrapped, 0xff)
                        .map_or(input, |o| o as u8)
                }
            };
            write_tl0_pic_idx(payload, info, codec, output);
        }
        remembered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_names() {
        assert_eq!(Codec::from_encoding_name("VP8"), Codec::Vp8);
        assert_eq!(Codec::from_encoding_name("vp8"), Codec::Vp8);
        assert_eq!(Codec::from_encoding_name("Vp9"), Codec::Vp9);
        assert_eq!(Codec::from_encoding_name("h264"), Codec::H264);
        assert_eq!(Codec::from_encoding_name("opus"), Codec::Opaque);
        assert_eq!(Codec::from_encoding_name("H265"), Codec::Opaque);
        assert_eq!(Codec::from_encoding_name(""), Codec::Opaque);
    }

    #[test]
    fn opaque_reads_nothing() {
        let info = inspect(Codec::Opaque, &[1, 2, 3], true).unwrap();
        assert_eq!(info, FrameInfo::default());
        assert!(!info.is_keyframe_start());
    }

    #[test]
    fn writers_check_the_codec_and_the_width() {
        // VP8: X=1, I=1, M=1, picture id 0x1234 (not a start: no payload header needed).
        let mut p = [0x80, 0x80, 0x92, 0x34, 0x00];
        let info = inspect(Codec::Vp8, &p, false).unwrap();
        assert!(!set_vp9_picture_id(&mut p, &info, 1));
        // A FrameInfo that does not describe this payload: 15-bit field where the
        // payload has M=0.
        let mut other = [0x80, 0x80, 0x12, 0x34, 0x00];
        assert!(!set_vp8_picture_id(&mut other, &info, 1));
        assert_eq!(other, [0x80, 0x80, 0x12, 0x34, 0x00]);
        assert!(!set_vp8_picture_id(&mut p[..3], &info, 1));
        assert!(set_vp8_picture_id(&mut p, &info, 0xffff));
        assert_eq!(
            inspect(Codec::Vp8, &p, false).unwrap().picture_id,
            Some(0x7fff)
        );
        assert!(!set_vp8_tl0_pic_idx(&mut p, &info, 1), "no TL0PICIDX field");
    }

    /// VP8 descriptor with X=1, I=1 (7 or 15 bits), L=1, T=1: the layout the munger
    /// tests use.
    fn vp8_packet(start: bool, pid: u16, bits: u8, tl0: u8, tid: u8) -> Vec<u8> {
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0xe0];
        if bits == 7 {
            p.push((pid & 0x7f) as u8);
        } else {
            p.extend_from_slice(&((pid & 0x7fff) | 0x8000).to_be_bytes());
        }
        p.push(tl0);
        p.push(tid << 6);
        // A VP8 payload header (P=1: delta frame, so no 10-byte key frame header needed).
        p.extend_from_slice(&[0x01, 0x00, 0x00]);
        p
    }

    /// VP9 non-flexible descriptor with I=1, L=1 and TL0PICIDX.
    fn vp9_packet(start: bool, pid: u16, bits: u8, tl0: u8, tid: u8) -> Vec<u8> {
        let mut p = vec![0xa0 | if start { 0x08 } else { 0 }];
        if bits == 7 {
            p.push((pid & 0x7f) as u8);
        } else {
            p.extend_from_slice(&((pid & 0x7fff) | 0x8000).to_be_bytes());
        }
        p.push(tid << 5);
        p.push(tl0);
        p.push(0xaa);
        p
    }

    fn packet(codec: Codec, start: bool, pid: u16, bits: u8, tl0: u8, tid: u8) -> Vec<u8> {
        if codec == Codec::Vp8 {
            vp8_packet(start, pid, bits, tl0, tid)
        } else {
            vp9_packet(start, pid, bits, tl0, tid)
        }
    }

    fn munge(m: &mut PictureIdMunger, codec: Codec, mut p: Vec<u8>, switched: bool) -> (u16, u8) {
        let info = inspect(codec, &p, false).unwrap();
        m.rewrite(codec, &mut p, &info, switched);
        let out = inspect(codec, &p, false).unwrap();
        (out.picture_id.unwrap(), out.tl0_pic_idx.unwrap())
    }

    #[test]
    fn munger_passes_the_first_source_through_and_closes_gaps() {
        let mut m = PictureIdMunger::new();
        let c = Codec::Vp8;
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 100, 15, 7, 0), true),
            (100, 7)
        );
        assert_eq!(
            munge(&mut m, c, vp8_packet(false, 100, 15, 7, 0), false),
            (100, 7)
        );
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 101, 15, 7, 1), false),
            (101, 7)
        );
        // 102 (TID 1) dropped, 103 (TID 0) forwarded.
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 103, 15, 8, 0), false),
            (102, 8)
        );
        // A late packet of 101 keeps 101's number.
        assert_eq!(
            munge(&mut m, c, vp8_packet(false, 101, 15, 7, 1), false),
            (101, 7)
        );
        // Switch to an unrelated 7-bit source.
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 5, 7, 200, 0), true),
            (103 & 0x7f, 9)
        );
        assert_eq!(
            munge(&mut m, c, vp8_packet(false, 5, 7, 200, 0), false),
            (103 & 0x7f, 9)
        );
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 6, 7, 200, 2), false),
            (104 & 0x7f, 9)
        );
        // H.264 is left alone.
        let mut h = vec![0x65, 0x88];
        let info = inspect(Codec::H264, &h, true).unwrap();
        m.rewrite(Codec::H264, &mut h, &info, false);
        assert_eq!(h, [0x65, 0x88]);
    }

    #[test]
    fn munger_wraps_seven_bit_ids() {
        let mut m = PictureIdMunger::new();
        let c = Codec::Vp9;
        assert_eq!(
            munge(&mut m, c, vp9_packet(true, 126, 7, 255, 0), true),
            (126, 255)
        );
        assert_eq!(
            munge(&mut m, c, vp9_packet(true, 127, 7, 0, 0), false),
            (127, 0)
        );
        assert_eq!(
            munge(&mut m, c, vp9_packet(true, 0, 7, 1, 0), false),
            (0, 1)
        );
    }

    #[test]
    fn munger_gives_all_spatial_layers_of_a_picture_one_number() {
        let mut m = PictureIdMunger::new();
        let c = Codec::Vp9;
        // Source 1: pictures 10, 11. Source 2 (after a switch): picture 500, in two
        // spatial layers (the second byte after the picture id is the layer octet).
        munge(&mut m, c, vp9_packet(true, 10, 15, 0, 0), false);
        munge(&mut m, c, vp9_packet(true, 11, 15, 0, 1), false);
        let mut base = vp9_packet(true, 500, 15, 40, 0);
        let mut upper = vp9_packet(true, 500, 15, 40, 0);
        upper[3] |= 1 << 1 | 1; // SID 1, D=1
        let b = inspect(c, &base, false).unwrap();
        let u = inspect(c, &upper, false).unwrap();
        assert_eq!((b.spatial_layer, u.spatial_layer), (Some(0), Some(1)));
        m.rewrite(c, &mut base, &b, true);
        m.rewrite(c, &mut upper, &u, false);
        for p in [&base, &upper] {
            let out = inspect(c, p, false).unwrap();
            assert_eq!((out.picture_id, out.tl0_pic_idx), (Some(12), Some(1)));
        }
    }

    #[test]
    fn retransmissions_reuse_numbers_and_never_take_new_ones() {
        let mut m = PictureIdMunger::new();
        let c = Codec::Vp8;
        munge(&mut m, c, vp8_packet(true, 1000, 15, 50, 0), true);
        // 80 frames, every other one dropped (TID 1): outputs 1001..=1040.
        for n in 1..=80u16 {
            if n % 2 == 0 {
                let tl0 = 50 + (n / 2) as u8;
                assert_eq!(
                    munge(&mut m, c, vp8_packet(true, 1000 + n, 15, tl0, 0), false),
                    (1000 + n / 2, tl0)
                );
            }
        }
        let resend = |m: &PictureIdMunger, pid: u16, tl0: u8| {
            let mut p = vp8_packet(false, pid, 15, tl0, 0);
            let info = inspect(c, &p, false).unwrap();
            let remembered = m.rewrite_retransmission(c, &mut p, &info);
            let out = inspect(c, &p, false).unwrap();
            (
                remembered,
                out.picture_id.unwrap(),
                out.tl0_pic_idx.unwrap(),
            )
        };
        // Remembered: frame 1030 became 1015.
        assert_eq!(resend(&m, 1030, 65), (true, 1015, 65));
        // Forgotten (more than 32 frames back): extrapolated from the oldest remembered.
        let (remembered, pid, _) = resend(&m, 1002, 51);
        assert!(!remembered);
        assert!(pid < 1005, "{pid}");
        // A live packet that late does not take a number either.
        assert_ne!(
            munge(&mut m, c, vp8_packet(false, 1002, 15, 51, 0), false).0,
            1021
        );
        // The next live frame continues the numbering.
        assert_eq!(
            munge(&mut m, c, vp8_packet(true, 1082, 15, 91, 0), false),
            (1041, 91)
        );
        // H.264 is not touched and counts as remembered.
        let mut h = vec![0x65, 0x88];
        let info = inspect(Codec::H264, &h, true).unwrap();
        assert!(m.rewrite_retransmission(Codec::H264, &mut h, &info));
        assert_eq!(h, [0x65, 0x88]);
    }

    #[derive(Debug, Clone)]
    struct Frame {
        tid: u8,
        packets: usize,
        drop: bool,
        /// Rotation of the packet order within the frame (reordering).
        rotate: usize,
    }

    fn frames() -> impl Strategy<Value = Vec<Frame>> {
        proptest::collection::vec(
            (0u8..3, 1usize..4, any::<bool>(), 0usize..4).prop_map(
                |(tid, packets, drop, rotate)| Frame {
                    tid,
                    packets,
                    drop,
                    rotate,
                },
            ),
            1..120,
        )
    }

    proptest! {
        #[test]
        fn inspect_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            marker in any::<bool>(),
        ) {
            for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Opaque] {
                if let Ok(info) = inspect(codec, &bytes, marker) {
                    prop_assert!(info.descriptor_len <= bytes.len());
                }
            }
        }

        #[test]
        fn rewriting_random_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            donor in proptest::collection::vec(any::<u8>(), 0..40),
            pid in any::<u16>(),
            tl0 in any::<u8>(),
            switched in any::<bool>(),
        ) {
            for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Opaque] {
                // Also with a FrameInfo that describes another payload.
                for source in [&bytes, &donor] {
                    let Ok(info) = inspect(codec, source, false) else { continue };
                    let mut b = bytes.clone();
                    let mut m = PictureIdMunger::new();
                    m.rewrite(codec, &mut b, &info, switched);
                    let _ = m.rewrite_retransmission(codec, &mut b, &info);
                    prop_assert_eq!(b.len(), bytes.len());
                    let mut b = bytes.clone();
                    let _ = set_vp8_picture_id(&mut b, &info, pid);
                    let _ = set_vp8_tl0_pic_idx(&mut b, &info, tl0);
                    let _ = set_vp9_picture_id(&mut b, &info, pid);
                    let _ = set_vp9_tl0_pic_idx(&mut b, &info, tl0);
                }
            }
        }

        #[test]
        fn munger_keeps_numbering_continuous(
            frames in frames(),
            codec in prop_oneof![Just(Codec::Vp8), Just(Codec::Vp9)],
            first in (any::<u16>(), any::<u8>(), prop_oneof![Just(7u8), Just(15u8)]),
            second in (any::<u16>(), any::<u8>(), prop_oneof![Just(7u8), Just(15u8)]),
            switch_at in any::<prop::sample::Index>(),
        ) {
            let switch_at = switch_at.index(frames.len());
            let mut m = PictureIdMunger::new();
            let (mut pid, mut tl0, mut bits) = first;
            // (output picture id, output TL0PICIDX, tid) of each forwarded frame.
            let mut forwarded: Vec<(u16, u8, u8, u8)> = Vec::new();
            for (n, frame) in frames.iter().enumerate() {
                let switched = n == switch_at;
                // The frame a switch happens at is a base-layer keyframe, never dropped.
                let (tid, drop) = if switched { (0, false) } else { (frame.tid, frame.drop) };
                if switched {
                    (pid, tl0, bits) = second;
                } else if n > 0 {
                    pid = pid.wrapping_add(1);
                }
                if tid == 0 && !switched && n > 0 {
                    tl0 = tl0.wrapping_add(1);
                }
                if drop {
                    continue;
                }
                let mut order: Vec<usize> = (0..frame.packets).collect();
                order.rotate_left(frame.rotate % frame.packets);
                let mut outs = Vec::new();
                for (k, &i) in order.iter().enumerate() {
                    let mut p = packet(codec, i == 0, pid, bits, tl0, tid);
                    let info = inspect(codec, &p, false).unwrap();
                    m.rewrite(codec, &mut p, &info, switched && k == 0);
                    let out = inspect(codec, &p, false).unwrap();
                    outs.push((out.picture_id.unwrap(), out.tl0_pic_idx.unwrap()));
                }
                prop_assert!(outs.windows(2).all(|w| w[0] == w[1]), "one number per frame");
                forwarded.push((outs[0].0, outs[0].1, tid, bits));
            }
            let mut last_tl0: Option<u8> = None;
            for w in forwarded.windows(2) {
                let ((a, _, _, _), (b, _, _, b_bits)) = (w[0], w[1]);
                // Continuous modulo the narrower of the two widths.
                let mask = if b_bits == 7 || w[0].3 == 7 { 0x7f } else { 0x7fff };
                prop_assert_eq!(b & mask, a.wrapping_add(1) & mask);
            }
            for &(_, t, tid, _) in &forwarded {
                if let Some(l) = last_tl0 {
                    if tid == 0 {
                        prop_assert_eq!(t, l.wrapping_add(1));
                    } else {
                        prop_assert_eq!(t, l);
                    }
                }
                if tid == 0 {
                    last_tl0 = Some(t);
                }
            }
        }
    }
}
