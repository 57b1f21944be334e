//! The subscribe connection (docs/webrtc.md): the control plane offers one `sendonly`
//! m-section per track the participant receives, the browser answers.
//!
//! JSEP never removes an m-section (RFC 9429 §5.2.2): a track that goes away keeps its
//! slot as a stopped m-section (port 0, `a=inactive`) in every later offer, and its mid is
//! never reused. The caller keeps a list of [`SubscribeSlot`]s per subscriber, appends
//! new tracks with fresh mids and turns removed ones into [`SubscribeSlot::Stopped`], so
//! that each revision's offer lists the same mids in the same order plus new ones.
//! Recycling stopped m-sections would save lines but needs the browser to have
//! acknowledged the stop first; never recycling is simpler and always valid.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::attributes::{
    extension_uri, is_msid_id, Direction, Extmap, Fingerprint, IceCredentials, MediaKind, Setup,
};
use super::description::{Attribute, Attributes, Line, MediaDescription, SessionDescription};
use super::publish::{
    connection_line, read_direction, read_mid, session_lines, transport_attributes,
};
use super::{invalid, missing, Location, SdpError};

/// Header extension ids of every subscribe offer: one table for the whole BUNDLE group
/// (RFC 8843 §9.2 wants one id per URI across it), so the forwarder writes the same ids
/// on every subscription. All one-byte (1-14).
pub const SUBSCRIBE_EXT_MID: u8 = 1;
pub const SUBSCRIBE_EXT_AUDIO_LEVEL: u8 = 2;
pub const SUBSCRIBE_EXT_TRANSPORT_CC: u8 = 3;

const RTP_PROTOCOL: &str = "UDP/TLS/RTP/SAVPF";

/// A codec of the fixed subscribe table (docs/webrtc.md, "Payload types and SSRCs"):
/// the forwarder rewrites payload types to it on WebRTC legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeCodec {
    Opus,
    Vp8,
    Vp9,
    H264,
}

impl SubscribeCodec {
    pub fn payload_type(self) -> u8 {
        match self {
            SubscribeCodec::Opus => 111,
            SubscribeCodec::Vp8 => 96,
            SubscribeCodec::Vp9 => 98,
            SubscribeCodec::H264 => 102,
        }
    }

    pub fn kind(self) -> MediaKind {
        match self {
            SubscribeCodec::Opus => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    fn rtpmap(self) -> String {
        let encoding = match self {
            SubscribeCodec::Opus => "opus/48000/2",
            SubscribeCodec::Vp8 => "VP8/90000",
            SubscribeCodec::Vp9 => "VP9/90000",
            SubscribeCodec::H264 => "H264/90000",
        };
        format!("{} {encoding}", self.payload_type())
    }

    /// Parameters that describe what the forwarder relays: Opus as browsers send it
    /// (in-band FEC), VP9 profile 0, H.264 packetization-mode 1 constrained baseline
    /// with level-asymmetry-allowed so a publisher's higher level is still decodable.
    fn fmtp(self) -> Option<&'static str> {
        match self {
            SubscribeCodec::Opus => Some("minptime=10;useinbandfec=1"),
            SubscribeCodec::Vp8 => None,
            SubscribeCodec::Vp9 => Some("profile-id=0"),
            SubscribeCodec::H264 => {
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
            }
        }
    }
}

/// A track the subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeTrack {
    pub mid: String,
    /// Also decides the m-section's media: Opus is audio, the others video.
    pub codec: SubscribeCodec,
    /// The SSRC the control plane assigned to the track at join (its first encoding's).
    pub ssrc: u32,
    pub cname: String,
    /// `a=msid` stream id: the publisher's participant id, so the page groups a
    /// participant's tracks.
    pub stream_id: String,
    pub track_id: String,
}

/// One m-section of the subscribe connection, in order; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeSlot {
    Track(SubscribeTrack),
    /// A track that went away: port 0, `a=inactive`, out of the BUNDLE group. `kind`
    /// must be the media the slot had (an m-section's media never changes).
    Stopped {
        mid: String,
        kind: MediaKind,
    },
}

impl SubscribeSlot {
    pub fn mid(&self) -> &str {
        match self {
            SubscribeSlot::Track(track) => &track.mid,
            SubscribeSlot::Stopped { mid, .. } => mid,
        }
    }
}

/// Everything an offer of the subscribe connection is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeParams {
    pub ice: IceCredentials,
    pub fingerprint: Fingerprint,
    pub candidate: SocketAddr,
    /// Always `true` in Fanout (the forwarder is ICE-lite).
    pub ice_lite: bool,
    /// `o=` id and version: the version grows with each revision (RFC 9429 §5.2.2).
    pub session_id: u64,
    pub session_version: u64,
    /// Offer the transport-wide-cc extension and feedback: only when the forwarder
    /// numbers its packets and reads the browser's feedback.
    pub transport_cc: bool,
    pub slots: Vec<SubscribeSlot>,
}

/// Writes the offer of the subscribe connection (RFC 9429 §5.2). Errors when a slot
/// carries text that cannot go into SDP (a mid, cname or id that is not a token, a mid
/// used twice).
pub fn offer_subscribe(params: &SubscribeParams) -> Result<String, SdpError> {
    let mut mids = HashSet::new();
    let mut media = Vec::with_capacity(params.slots.len());
    for (index, slot) in params.slots.iter().enumerate() {
        let mid = slot.mid();
        let at = Location::Media {
            index,
            mid: Some(mid.to_owned()),
        };
        if mid.len() > 16 || !super::description::is_token(mid) {
            return Err(invalid(&at, "mid (a token of at most 16 bytes)", mid));
        }
        if !mids.insert(mid) {
            return Err(invalid(&at, "mid (used twice)", mid));
        }
        media.push(match slot {
            SubscribeSlot::Track(track) => {
                for (what, value) in [
                    ("cname", &track.cname),
                    ("stream id", &track.stream_id),
                    ("track id", &track.track_id),
                ] {
                    if !is_msid_id(value) {
                        return Err(invalid(&at, what, value));
                    }
                }
                track_media(track, params)
            }
            SubscribeSlot::Stopped { mid, kind } => stopped_media(mid, *kind),
        });
    }
    let mut attributes = Vec::new();
    if params.ice_lite {
        attributes.push(Attribute::property("ice-lite"));
    }
    let live: Vec<&str> = params
        .slots
        .iter()
        .filter_map(|s| match s {
            SubscribeSlot::Track(track) => Some(track.mid.as_str()),
            SubscribeSlot::Stopped { .. } => None,
        })
        .collect();
    if !live.is_empty() {
        attributes.push(Attribute::new(
            "group",
            format!("BUNDLE {}", live.join(" ")),
        ));
    }
    // RFC 8830 §3 (still read by Chrome): msid semantics for the whole description.
    attributes.push(Attribute::new("msid-semantic", " WMS *"));
    let offer = SessionDescription {
        lines: session_lines(params.session_id, params.session_version),
        attributes,
        media,
    };
    Ok(offer.to_sdp())
}

fn track_media(track: &SubscribeTrack, params: &SubscribeParams) -> MediaDescription {
    let codec = track.codec;
    let pt = codec.payload_type();
    let kind = codec.kind();
    let mut attributes = vec![
        Attribute::new("mid", track.mid.clone()),
        Attribute::property(Direction::SendOnly.as_str()),
    ];
    attributes.extend(transport_attributes(
        &params.ice,
        &params.fingerprint,
        Setup::ActPass,
        params.candidate,
    ));
    attributes.push(Attribute::property("rtcp-mux"));
    attributes.push(Attribute::property("rtcp-rsize"));
    let mut extmaps = vec![(SUBSCRIBE_EXT_MID, extension_uri::MID)];
    if kind == MediaKind::Audio {
        extmaps.push((SUBSCRIBE_EXT_AUDIO_LEVEL, extension_uri::AUDIO_LEVEL));
    }
    if params.transport_cc {
        extmaps.push((SUBSCRIBE_EXT_TRANSPORT_CC, extension_uri::TRANSPORT_CC));
    }
    for (id, uri) in extmaps {
        let extmap = Extmap {
            id: id.into(),
            direction: None,
            uri: uri.to_owned(),
            attributes: None,
        };
        attributes.push(Attribute::new("extmap", extmap.to_value()));
    }
    attributes.push(Attribute::new("rtpmap", codec.rtpmap()));
    let mut feedback = Vec::new();
    if kind == MediaKind::Video {
        feedback.extend(["nack", "nack pli", "ccm fir"]);
    }
    if params.transport_cc {
        feedback.push("transport-cc");
    }
    for fb in feedback {
        attributes.push(Attribute::new("rtcp-fb", format!("{pt} {fb}")));
    }
    if let Some(fmtp) = codec.fmtp() {
        attributes.push(Attribute::new("fmtp", format!("{pt} {fmtp}")));
    }
    let msid = format!("{} {}", track.stream_id, track.track_id);
    attributes.push(Attribute::new("msid", msid.clone()));
    // Both forms: `a=msid` for unified plan, `a=ssrc ... msid:` for older readers; the
    // cname lets the browser synchronise a participant's audio and video (RFC 7022).
    attributes.push(Attribute::new(
        "ssrc",
        format!("{} cname:{}", track.ssrc, track.cname),
    ));
    attributes.push(Attribute::new(
        "ssrc",
        format!("{} msid:{msid}", track.ssrc),
    ));
    MediaDescription {
        media: kind.as_str().to_owned(),
        port: params.candidate.port(),
        port_count: None,
        protocol: RTP_PROTOCOL.to_owned(),
        formats: vec![pt.to_string()],
        lines: vec![connection_line(params.candidate)],
        attributes,
    }
}

fn stopped_media(mid: &str, kind: MediaKind) -> MediaDescription {
    let codec = match kind {
        MediaKind::Audio => SubscribeCodec::Opus,
        MediaKind::Video => SubscribeCodec::Vp8,
    };
    MediaDescription {
        media: kind.as_str().to_owned(),
        port: 0,
        port_count: None,
        protocol: RTP_PROTOCOL.to_owned(),
        formats: vec![codec.payload_type().to_string()],
        lines: vec![Line {
            kind: 'c',
            value: "IN IP4 0.0.0.0".into(),
        }],
        attributes: vec![
            Attribute::new("mid", mid),
            Attribute::property(Direction::Inactive.as_str()),
            Attribute::new("rtpmap", codec.rtpmap()),
        ],
    }
}

/// One m-section of the browser's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredSection {
    pub index: usize,
    pub mid: Option<String>,
    /// Port not 0: the browser receives this track (when `direction` is recvonly).
    pub accepted: bool,
    pub direction: Direction,
}

/// The browser's answer on the subscribe connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeAnswer {
    pub ice: IceCredentials,
    pub fingerprint: Fingerprint,
    pub sections: Vec<AnsweredSection>,
}

impl SubscribeAnswer {
    /// Reads the answer; its setup must be `active` (the forwarder is the DTLS server).
    /// Matching its mids against the offer's slots is the caller's.
    pub fn from_sdp(text: &str) -> Result<SubscribeAnswer, SdpError> {
        let sdp = SessionDescription::parse(text)?;
        let mut sections = Vec::with_capacity(sdp.media.len());
        for (index, media) in sdp.media.iter().enumerate() {
            sections.push(AnsweredSection {
                index,
                mid: read_mid(index, media)?,
                accepted: media.port != 0,
                direction: read_direction(media),
            });
        }
        // Transport attributes: from the first accepted m-section (the answerer's
        // BUNDLE tag, RFC 8843 §7.3.1), else the session level.
        let source = sections.iter().find(|s| s.accepted).map(|s| s.index);
        let at = match source {
            Some(index) => Location::Media {
                index,
                mid: sections[index].mid.clone(),
            },
            None => Location::Session,
        };
        let attribute = |name: &str| -> Option<(&str, Location)> {
            source
                .and_then(|i| sdp.media[i].attribute(name).map(|v| (v, at.clone())))
                .or_else(|| sdp.attribute(name).map(|v| (v, Location::Session)))
        };
        let (ufrag, ufrag_at) =
            attribute("ice-ufrag").ok_or_else(|| missing(&at, "a=ice-ufrag"))?;
        let (pwd, pwd_at) = attribute("ice-pwd").ok_or_else(|| missing(&at, "a=ice-pwd"))?;
        let ice = IceCredentials::new(ufrag, pwd).ok_or_else(|| {
            if super::attributes::valid_ufrag(ufrag).is_none() {
                invalid(&ufrag_at, "a=ice-ufrag", ufrag)
            } else {
                invalid(&pwd_at, "a=ice-pwd", "(not shown)")
            }
        })?;
        let (fingerprint, fingerprint_at) =
            attribute("fingerprint").ok_or_else(|| missing(&at, "a=fingerprint"))?;
        let fingerprint = Fingerprint::parse(fingerprint)
            .ok_or_else(|| invalid(&fingerprint_at, "a=fingerprint", fingerprint))?;
        let (setup, setup_at) = attribute("setup").ok_or_else(|| missing(&at, "a=setup"))?;
        match Setup::parse(setup) {
            Some(Setup::Active) => {}
            Some(other) => {
                return Err(SdpError::Unsupported {
                    at: setup_at,
                    message: format!(
                        "a=setup:{} in the answer: the forwarder is the DTLS server, the \
                         browser must answer active",
                        other.as_str()
                    ),
                });
            }
            None => return Err(invalid(&setup_at, "a=setup", setup)),
        }
        Ok(SubscribeAnswer {
            ice,
            fingerprint,
            sections,
        })
    }

    /// Mids the browser accepted and receives on.
    pub fn receiving_mids(&self) -> impl Iterator<Item = &str> {
        self.sections
            .iter()
            .filter(|s| s.accepted && s.direction.receives())
            .filter_map(|s| s.mid.as_deref())
    }
}
