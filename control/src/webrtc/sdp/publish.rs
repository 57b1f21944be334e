//! The publish connection (docs/webrtc.md): the browser offers its sending tracks, the
//! control plane answers for the forwarder.
//!
//! [`PublishOffer::from_sdp`] checks what the answer cannot do without (one BUNDLE
//! transport with ICE credentials, a DTLS fingerprint, a setup role that lets the
//! forwarder be the DTLS server, a MID and rtcp-mux in every live RTP m-section) and
//! errors precisely when it is missing. What the forwarder merely does not support (data
//! channels, a codec it cannot forward, an m-section outside the BUNDLE group) is not an
//! error: [`answer_publish`] rejects that m-section with port 0, as JSEP does
//! (RFC 9429 §5.3.1), and says why in [`NegotiatedPublish::rejected`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use super::attributes::{
    extension_uri, valid_pwd, valid_ufrag, Direction, Extmap, Fingerprint, IceCredentials,
    MediaKind, Msid, Rid, RidDirection, Setup, Simulcast, SimulcastLayer,
};
use super::description::{
    is_token, parse_decimal, Attribute, Attributes, Line, MediaDescription, SessionDescription,
};
use super::{invalid, missing, Location, SdpError};

/// The only RTP profile browsers use (RFC 8834 §5, DTLS-SRTP with RTCP feedback).
const RTP_PROTOCOL: &str = "UDP/TLS/RTP/SAVPF";
/// A mid travels in the MID header extension, whose one-byte form carries at most 16
/// bytes (RFC 8285 §4.2); longer mids would need two-byte headers.
const MAX_MID_LEN: usize = 16;
/// RTCP feedback the forwarder takes part in, answered when the browser offers it.
const ACCEPTED_RTCP_FB: [&str; 5] = ["nack", "nack pli", "ccm fir", "transport-cc", "goog-remb"];
/// ICE candidate priority of the one host candidate (RFC 8445 §5.1.2.1: type preference
/// 126, local preference 65535, component 1).
const HOST_PRIORITY: u32 = 2_130_706_431;

/// One payload type of an m-section: `a=rtpmap`, its `a=fmtp` and `a=rtcp-fb` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    /// As written (`opus`, `VP8`, `H264`, `rtx`); compare case-insensitively.
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    pub fmtp: Option<String>,
    /// Values after the payload type (`nack pli`), including those of `a=rtcp-fb:*`.
    pub rtcp_fb: Vec<String>,
    /// For RTX (RFC 4588): the payload type this one repairs (`apt=`).
    pub apt: Option<u8>,
}

impl Codec {
    /// A `key=value` parameter of the fmtp line.
    pub fn fmtp_parameter(&self, key: &str) -> Option<&str> {
        self.fmtp.as_deref()?.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
        })
    }

    fn is(&self, name: &str, clock_rate: u32) -> bool {
        self.name.eq_ignore_ascii_case(name) && self.clock_rate == clock_rate
    }
}

/// `a=ssrc-group:<semantics> <ssrc> ...` (RFC 5576 §4.2): `FID` pairs a media SSRC with
/// its RTX SSRC, `SIM` lists simulcast SSRCs (legacy munged simulcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcGroup {
    pub semantics: String,
    pub ssrcs: Vec<u32>,
}

/// One m-section of a publish offer, as the browser wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedSection {
    pub index: usize,
    pub mid: Option<String>,
    /// The `m=` media type as written, `None` in `kind` unless audio or video.
    pub media: String,
    pub kind: Option<MediaKind>,
    pub port: u16,
    /// `a=bundle-only` (RFC 8843 §6): port 0 but part of the BUNDLE group (Firefox).
    pub bundle_only: bool,
    pub protocol: String,
    pub formats: Vec<String>,
    pub direction: Direction,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    /// In `m=` line order.
    pub codecs: Vec<Codec>,
    pub extmaps: Vec<Extmap>,
    pub rids: Vec<Rid>,
    pub simulcast: Option<Simulcast>,
    /// Distinct SSRCs of `a=ssrc` lines, in order of appearance.
    pub ssrcs: Vec<u32>,
    pub ssrc_groups: Vec<SsrcGroup>,
    /// `a=msid`, or the `msid:` of an `a=ssrc` line when there is none.
    pub msid: Option<Msid>,
}

impl OfferedSection {
    /// Whether the offerer uses this m-section: port 0 means stopped unless bundle-only.
    pub fn is_live(&self) -> bool {
        self.port != 0 || self.bundle_only
    }

    fn location(&self) -> Location {
        Location::Media {
            index: self.index,
            mid: self.mid.clone(),
        }
    }
}

/// A browser's offer on the publish connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOffer {
    /// The transport of the BUNDLE group: from its tagged (first) m-section, else the
    /// session level.
    pub ice: IceCredentials,
    pub fingerprint: Fingerprint,
    pub setup: Setup,
    /// Mids of the first `a=group:BUNDLE`, in order (the first is the offerer's tag).
    pub bundle: Vec<String>,
    pub sections: Vec<OfferedSection>,
}

impl PublishOffer {
    pub fn from_sdp(text: &str) -> Result<PublishOffer, SdpError> {
        let sdp = SessionDescription::parse(text)?;
        PublishOffer::from_description(&sdp)
    }

    pub fn from_description(sdp: &SessionDescription) -> Result<PublishOffer, SdpError> {
        let bundle = bundle_group(sdp);
        let sections = sdp
            .media
            .iter()
            .enumerate()
            .map(|(index, media)| read_section(index, media))
            .collect::<Result<Vec<_>, _>>()?;
        let mut mids = HashSet::new();
        for section in &sections {
            if let Some(mid) = &section.mid {
                if !mids.insert(mid.as_str()) {
                    return Err(invalid(&section.location(), "a=mid (used twice)", mid));
                }
            }
        }
        let live_rtp = sections
            .iter()
            .any(|s| s.is_live() && s.kind.is_some() && s.protocol == RTP_PROTOCOL);
        if live_rtp && bundle.is_empty() {
            return Err(missing(
                &Location::Session,
                "a=group:BUNDLE (every track shares the forwarder's one port)",
            ));
        }
        let transport = transport_source(sdp, &bundle);
        let ice = read_ice(sdp, transport)?;
        let fingerprint = read_fingerprint(sdp, transport)?;
        let setup = read_setup(sdp, transport)?;
        if !matches!(setup, Setup::ActPass | Setup::Active) {
            return Err(SdpError::Unsupported {
                at: location_of(sdp, transport),
                message: format!(
                    "a=setup:{} in an offer: the forwarder is always the DTLS server, so the \
                     browser must offer actpass or active",
                    setup.as_str()
                ),
            });
        }
        Ok(PublishOffer {
            ice,
            fingerprint,
            setup,
            bundle,
            sections,
        })
    }
}

fn location_of(sdp: &SessionDescription, media: Option<usize>) -> Location {
    match media {
        Some(index) => Location::Media {
            index,
            mid: sdp.media[index].attribute("mid").map(str::to_owned),
        },
        None => Location::Session,
    }
}

/// The first `a=group:BUNDLE` group (RFC 8843 §7.1). Browsers write one; a second would
/// need a second transport, which the forwarder's single port does not have.
fn bundle_group(sdp: &SessionDescription) -> Vec<String> {
    sdp.attribute_values("group")
        .find_map(|g| {
            let mut words = g.split(' ').filter(|w| !w.is_empty());
            (words.next() == Some("BUNDLE")).then(|| words.map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// The m-section whose transport attributes the BUNDLE group uses (the offerer's
/// BUNDLE-tag, RFC 8843 §7.2.1), else the first m-section.
fn transport_source(sdp: &SessionDescription, bundle: &[String]) -> Option<usize> {
    let tag = bundle.first();
    sdp.media
        .iter()
        .position(|m| tag.is_some() && m.attribute("mid") == tag.map(String::as_str))
        .or_else(|| (!sdp.media.is_empty()).then_some(0))
}

/// A transport attribute: media level wins over session level (Chrome writes them per
/// m-section, Firefox puts the fingerprint at session level).
fn transport_attribute<'a>(
    sdp: &'a SessionDescription,
    media: Option<usize>,
    name: &str,
) -> Option<(&'a str, Location)> {
    if let Some(index) = media {
        if let Some(value) = sdp.media[index].attribute(name) {
            return Some((value, location_of(sdp, media)));
        }
    }
    sdp.attribute(name).map(|v| (v, Location::Session))
}

fn read_ice(sdp: &SessionDescription, media: Option<usize>) -> Result<IceCredentials, SdpError> {
    let at = location_of(sdp, media);
    let (ufrag, ufrag_at) =
        transport_attribute(sdp, media, "ice-ufrag").ok_or_else(|| missing(&at, "a=ice-ufrag"))?;
    let ufrag = valid_ufrag(ufrag).ok_or_else(|| invalid(&ufrag_at, "a=ice-ufrag", ufrag))?;
    let (pwd, pwd_at) =
        transport_attribute(sdp, media, "ice-pwd").ok_or_else(|| missing(&at, "a=ice-pwd"))?;
    // The password is a secret: name the problem, do not echo it.
    let pwd = valid_pwd(pwd).ok_or_else(|| invalid(&pwd_at, "a=ice-pwd", "(not shown)"))?;
    Ok(IceCredentials {
        ufrag: ufrag.to_owned(),
        pwd: pwd.to_owned(),
    })
}

fn read_fingerprint(
    sdp: &SessionDescription,
    media: Option<usize>,
) -> Result<Fingerprint, SdpError> {
    let (value, at) = transport_attribute(sdp, media, "fingerprint")
        .ok_or_else(|| missing(&location_of(sdp, media), "a=fingerprint"))?;
    Fingerprint::parse(value).ok_or_else(|| invalid(&at, "a=fingerprint", value))
}

fn read_setup(sdp: &SessionDescription, media: Option<usize>) -> Result<Setup, SdpError> {
    let (value, at) = transport_attribute(sdp, media, "setup")
        .ok_or_else(|| missing(&location_of(sdp, media), "a=setup"))?;
    Setup::parse(value).ok_or_else(|| invalid(&at, "a=setup", value))
}

pub(crate) fn read_direction(media: &MediaDescription) -> Direction {
    media
        .attributes
        .iter()
        .find_map(|a| {
            a.value
                .is_none()
                .then(|| Direction::parse(&a.name))
                .flatten()
        })
        .unwrap_or(Direction::SendRecv)
}

pub(crate) fn read_mid(index: usize, media: &MediaDescription) -> Result<Option<String>, SdpError> {
    let Some(mid) = media.attribute("mid") else {
        return Ok(None);
    };
    if mid.len() > MAX_MID_LEN || !is_token(mid) {
        return Err(invalid(
            &Location::Media { index, mid: None },
            "a=mid (a token of at most 16 bytes)",
            mid,
        ));
    }
    Ok(Some(mid.to_owned()))
}

fn read_section(index: usize, media: &MediaDescription) -> Result<OfferedSection, SdpError> {
    let mid = read_mid(index, media)?;
    let at = Location::Media {
        index,
        mid: mid.clone(),
    };
    let kind = MediaKind::parse(&media.media);
    let mut section = OfferedSection {
        index,
        mid,
        media: media.media.clone(),
        kind,
        port: media.port,
        bundle_only: media.has_attribute("bundle-only"),
        protocol: media.protocol.clone(),
        formats: media.formats.clone(),
        direction: read_direction(media),
        rtcp_mux: media.has_attribute("rtcp-mux"),
        rtcp_rsize: media.has_attribute("rtcp-rsize"),
        codecs: Vec::new(),
        extmaps: Vec::new(),
        rids: Vec::new(),
        simulcast: None,
        ssrcs: Vec::new(),
        ssrc_groups: Vec::new(),
        msid: None,
    };
    // Stopped m-sections and those that are not RTP are echoed with port 0: nothing
    // more in them matters.
    if !section.is_live() || kind.is_none() || media.protocol != RTP_PROTOCOL {
        return Ok(section);
    }
    if section.mid.is_none() {
        return Err(missing(&at, "a=mid"));
    }
    if !section.rtcp_mux {
        return Err(missing(
            &at,
            "a=rtcp-mux (RTP and RTCP share the forwarder's one port)",
        ));
    }
    section.codecs = read_codecs(&at, media)?;
    for value in media.attribute_values("extmap") {
        section
            .extmaps
            .push(Extmap::parse(value).ok_or_else(|| invalid(&at, "a=extmap", value))?);
    }
    for value in media.attribute_values("rid") {
        section
            .rids
            .push(Rid::parse(value).ok_or_else(|| invalid(&at, "a=rid", value))?);
    }
    if let Some(value) = media.attribute("simulcast") {
        section.simulcast =
            Some(Simulcast::parse(value).ok_or_else(|| invalid(&at, "a=simulcast", value))?);
    }
    for value in media.attribute_values("ssrc") {
        let (ssrc, attribute) = value.split_once(' ').unwrap_or((value, ""));
        let ssrc = parse_decimal::<u32>(ssrc).ok_or_else(|| invalid(&at, "a=ssrc", value))?;
        if !section.ssrcs.contains(&ssrc) {
            section.ssrcs.push(ssrc);
        }
        if section.msid.is_none() {
            if let Some(msid) = attribute.strip_prefix("msid:") {
                section.msid =
                    Some(Msid::parse(msid).ok_or_else(|| invalid(&at, "a=ssrc msid", value))?);
            }
        }
    }
    for value in media.attribute_values("ssrc-group") {
        let mut words = value.split(' ');
        let semantics = words.next().filter(|s| is_token(s));
        let ssrcs: Option<Vec<u32>> = words.map(parse_decimal::<u32>).collect();
        match (semantics, ssrcs) {
            (Some(semantics), Some(ssrcs)) if !ssrcs.is_empty() => {
                section.ssrc_groups.push(SsrcGroup {
                    semantics: semantics.to_owned(),
                    ssrcs,
                });
            }
            _ => return Err(invalid(&at, "a=ssrc-group", value)),
        }
    }
    if let Some(value) = media.attribute("msid") {
        section.msid = Some(Msid::parse(value).ok_or_else(|| invalid(&at, "a=msid", value))?);
    }
    Ok(section)
}

/// Codecs in `m=` line order from `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` (RFC 8866 §6.6,
/// RFC 4585 §4.2). Payload types without an rtpmap (static ones such as PCMU) are left
/// out: the forwarder takes none of them.
fn read_codecs(at: &Location, media: &MediaDescription) -> Result<Vec<Codec>, SdpError> {
    let mut codecs: Vec<Codec> = Vec::new();
    for value in media.attribute_values("rtpmap") {
        let parsed = (|| {
            let (pt, encoding) = value.split_once(' ')?;
            let pt = parse_decimal::<u8>(pt).filter(|pt| *pt <= 127)?;
            let mut parts = encoding.trim().split('/');
            let name = parts.next().filter(|n| !n.is_empty())?;
            let clock_rate = parse_decimal::<u32>(parts.next()?)?;
            let channels = match parts.next() {
                Some(c) => Some(parse_decimal::<u16>(c)?),
                None => None,
            };
            if parts.next().is_some() {
                return None;
            }
            Some(Codec {
                payload_type: pt,
                name: name.to_owned(),
                clock_rate,
                channels,
                fmtp: None,
                rtcp_fb: Vec::new(),
                apt: None,
            })
        })();
        let codec = parsed.ok_or_else(|| invalid(at, "a=rtpmap", value))?;
        if media
            .formats
            .iter()
            .any(|f| f == &codec.payload_type.to_string())
            && !codecs.iter().any(|c| c.payload_type == codec.payload_type)
        {
            codecs.push(codec);
        }
    }
    for value in media.attribute_values("fmtp") {
        let (pt, parameters) = value
            .split_once(' ')
            .ok_or_else(|| invalid(at, "a=fmtp", value))?;
        let pt = parse_decimal::<u8>(pt).ok_or_else(|| invalid(at, "a=fmtp", value))?;
        if let Some(codec) = codecs.iter_mut().find(|c| c.payload_type == pt) {
            codec.fmtp = Some(parameters.to_owned());
            codec.apt = codec.fmtp_parameter("apt").and_then(parse_decimal::<u8>);
        }
    }
    for value in media.attribute_values("rtcp-fb") {
        let (pt, feedback) = value
            .split_once(' ')
            .ok_or_else(|| invalid(at, "a=rtcp-fb", value))?;
        let feedback = feedback.trim().to_owned();
        if pt == "*" {
            for codec in &mut codecs {
                codec.rtcp_fb.push(feedback.clone());
            }
        } else {
            let pt = parse_decimal::<u8>(pt).ok_or_else(|| invalid(at, "a=rtcp-fb", value))?;
            if let Some(codec) = codecs.iter_mut().find(|c| c.payload_type == pt) {
                codec.rtcp_fb.push(feedback);
            }
        }
    }
    // Back to m= line order, which is the browser's preference (RFC 8866 §5.14).
    let position = |c: &Codec| {
        media
            .formats
            .iter()
            .position(|f| f == &c.payload_type.to_string())
    };
    codecs.sort_by_key(position);
    Ok(codecs)
}

/// What a published track is, for the meeting: which of the participant's tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Audio,
    Camera,
    Screen,
}

/// What the answer needs besides the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerParams {
    /// The leg's ICE credentials, assigned by the control plane (docs/webrtc.md).
    pub ice: IceCredentials,
    /// The forwarder's certificate fingerprint, as it reported it when registering.
    pub fingerprint: Fingerprint,
    /// The forwarder's one host candidate: the meeting's port (`forwarder_address`).
    pub candidate: SocketAddr,
    /// The forwarder is an ICE-lite agent (RFC 8445 §2.5): always `true` in Fanout.
    pub ice_lite: bool,
    /// `o=` session id and version (RFC 8866 §5.2); the version must grow with each
    /// answer on the same connection (RFC 9429 §5.3.2).
    pub session_id: u64,
    pub session_version: u64,
    /// Which video m-section (by mid) is the camera and which the screen share. Video
    /// mids not listed get the default rule: the first accepted video m-section is the
    /// camera, later ones are screen shares. Entries for audio m-sections are ignored.
    pub kinds: BTreeMap<String, TrackKind>,
}

/// The chosen codec of an accepted m-section, with the browser's payload type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedCodec {
    /// `opus`, `VP8`, `VP9` or `H264` as the browser wrote it.
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    pub payload_type: u8,
    pub fmtp: Option<String>,
    /// The RTX payload type (RFC 4588) the browser retransmits this codec with, on an
    /// SSRC of its own; `None`: it retransmits on the media SSRC.
    pub rtx_payload_type: Option<u8>,
}

/// Header extension ids the browser will use (its own, RFC 8285); `None` when not
/// negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtensionIds {
    pub mid: Option<u8>,
    pub rid: Option<u8>,
    pub repaired_rid: Option<u8>,
    pub audio_level: Option<u8>,
    pub transport_cc: Option<u8>,
    pub abs_send_time: Option<u8>,
}

/// One accepted m-section: one published track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedTrack {
    pub mid: String,
    pub kind: TrackKind,
    /// Whether the browser sends on it now (its direction is sendonly or sendrecv; a
    /// track removed with `removeTrack` turns recvonly and is answered inactive).
    pub receiving: bool,
    pub codec: NegotiatedCodec,
    /// Simulcast rids in the order of the offer's `a=simulcast:send`, which is the
    /// order of the browser's `sendEncodings`, not necessarily lowest quality first.
    /// Empty without simulcast.
    pub rids: Vec<String>,
    /// Media SSRCs the browser announced (without its RTX SSRCs), for tracks without
    /// simulcast; simulcast encodings are bound by rid instead.
    pub ssrcs: Vec<u32>,
    /// The browser's stream and track ids (`MediaStream.id`, `MediaStreamTrack.id`),
    /// for the caller to tell which track this is.
    pub msid: Option<Msid>,
    pub extensions: ExtensionIds,
}

/// An m-section answered with port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSection {
    pub index: usize,
    pub mid: Option<String>,
    pub reason: String,
}

/// What was agreed: what the forwarder needs for the leg (desired state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedPublish {
    pub remote_ice: IceCredentials,
    pub remote_fingerprint: Fingerprint,
    /// Accepted m-sections in `m=` line order.
    pub tracks: Vec<NegotiatedTrack>,
    pub rejected: Vec<RejectedSection>,
}

/// How an m-section is answered.
struct Accepted<'a> {
    codec: &'a Codec,
    rtx: Option<&'a Codec>,
    extmaps: Vec<Extmap>,
    extensions: ExtensionIds,
    layers: Vec<SimulcastLayer>,
}

/// Builds the answer to a publish offer (RFC 9429 §5.3.1) and what it agreed to.
pub fn answer_publish(offer: &PublishOffer, params: &AnswerParams) -> (String, NegotiatedPublish) {
    let mut media = Vec::with_capacity(offer.sections.len());
    let mut tracks = Vec::new();
    let mut rejected = Vec::new();
    let mut default_videos = 0;
    for section in &offer.sections {
        match negotiate(offer, section) {
            Ok(accepted) => {
                let kind = match section.kind {
                    Some(MediaKind::Audio) => TrackKind::Audio,
                    _ => {
                        let mid = section.mid.as_deref().unwrap_or_default();
                        match params.kinds.get(mid) {
                            Some(kind @ (TrackKind::Camera | TrackKind::Screen)) => *kind,
                            _ => {
                                default_videos += 1;
                                if default_videos == 1 {
                                    TrackKind::Camera
                                } else {
                                    TrackKind::Screen
                                }
                            }
                        }
                    }
                };
                media.push(accepted_media(section, &accepted, params));
                tracks.push(NegotiatedTrack {
                    mid: section.mid.clone().unwrap_or_default(),
                    kind,
                    receiving: section.direction.sends(),
                    codec: NegotiatedCodec {
                        name: accepted.codec.name.clone(),
                        clock_rate: accepted.codec.clock_rate,
                        channels: accepted.codec.channels,
                        payload_type: accepted.codec.payload_type,
                        fmtp: accepted.codec.fmtp.clone(),
                        rtx_payload_type: accepted.rtx.map(|rtx| rtx.payload_type),
                    },
                    rids: accepted.layers.iter().map(|l| l.rid.clone()).collect(),
                    ssrcs: if accepted.layers.is_empty() {
                        media_ssrcs(section)
                    } else {
                        Vec::new()
                    },
                    msid: section.msid.clone(),
                    extensions: accepted.extensions,
                });
            }
            Err(reason) => {
                media.push(rejected_media(section));
                rejected.push(RejectedSection {
                    index: section.index,
                    mid: section.mid.clone(),
                    reason,
                });
            }
        }
    }
    let mut attributes = Vec::new();
    if params.ice_lite {
        attributes.push(Attribute::property("ice-lite"));
    }
    if !tracks.is_empty() {
        let mids: Vec<&str> = tracks.iter().map(|t| t.mid.as_str()).collect();
        attributes.push(Attribute::new(
            "group",
            format!("BUNDLE {}", mids.join(" ")),
        ));
    }
    let answer = SessionDescription {
        lines: session_lines(params.session_id, params.session_version),
        attributes,
        media,
    };
    let negotiated = NegotiatedPublish {
        remote_ice: offer.ice.clone(),
        remote_fingerprint: offer.fingerprint.clone(),
        tracks,
        rejected,
    };
    (answer.to_sdp(), negotiated)
}

pub(crate) fn session_lines(session_id: u64, session_version: u64) -> Vec<Line> {
    let line = |kind, value: String| Line { kind, value };
    vec![
        line('v', "0".into()),
        // RFC 9429 §5.2.1: a username of "-" and a meaningless address.
        line(
            'o',
            format!("- {session_id} {session_version} IN IP4 0.0.0.0"),
        ),
        line('s', "-".into()),
        line('t', "0 0".into()),
    ]
}

/// Decides whether and how to accept an m-section; `Err` is the reason to reject it.
fn negotiate<'a>(
    offer: &PublishOffer,
    section: &'a OfferedSection,
) -> Result<Accepted<'a>, String> {
    if !section.is_live() {
        return Err("stopped by the offerer (port 0)".into());
    }
    let Some(kind) = section.kind else {
        return Err(format!("unsupported media `{}`", section.media));
    };
    if section.protocol != RTP_PROTOCOL {
        return Err(format!("unsupported protocol `{}`", section.protocol));
    }
    let mid = section.mid.as_deref().unwrap_or_default();
    if !offer.bundle.iter().any(|m| m == mid) {
        return Err("not in the BUNDLE group".into());
    }
    let codec = choose_codec(kind, &section.codecs).ok_or_else(|| match kind {
        MediaKind::Audio => "no supported codec (Opus/48000/2)".to_owned(),
        MediaKind::Video => "no supported codec (VP8, VP9 profile 0, H.264 \
            packetization-mode=1 constrained baseline/baseline/main)"
            .to_owned(),
    })?;
    let mut extensions = ExtensionIds::default();
    let mut extmaps = Vec::new();
    for extmap in &section.extmaps {
        // Only one-byte header ids (1-14): two-byte headers need extmap-allow-mixed,
        // which this answer does not negotiate, so the forwarder parses one form only.
        let Ok(id) = u8::try_from(extmap.id) else {
            continue;
        };
        if !(1..=14).contains(&id) {
            continue;
        }
        // The browser must send it; a `/recvonly` or `/inactive` extension is of no use
        // to a receiver.
        let direction = match extmap.direction {
            None | Some(Direction::SendRecv) => None,
            Some(Direction::SendOnly) => Some(Direction::RecvOnly),
            Some(Direction::RecvOnly | Direction::Inactive) => continue,
        };
        let slot = match extmap.uri.as_str() {
            extension_uri::MID => &mut extensions.mid,
            extension_uri::RID => &mut extensions.rid,
            extension_uri::REPAIRED_RID => &mut extensions.repaired_rid,
            extension_uri::AUDIO_LEVEL => &mut extensions.audio_level,
            extension_uri::TRANSPORT_CC => &mut extensions.transport_cc,
            extension_uri::ABS_SEND_TIME => &mut extensions.abs_send_time,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        *slot = Some(id);
        extmaps.push(Extmap {
            id: extmap.id,
            direction,
            uri: extmap.uri.clone(),
            attributes: None,
        });
    }
    let layers = simulcast_layers(section, codec, extensions.rid.is_some())?;
    // RTX (RFC 4588) for the chosen codec, when the forwarder can tell which encoding an
    // RTX SSRC repairs: by MID alone without simulcast, by MID and repaired RID with it
    // (RFC 8852 §3.2). Otherwise the browser, without RTX, resends on the media SSRC.
    let rtx_bindable =
        extensions.mid.is_some() && (layers.is_empty() || extensions.repaired_rid.is_some());
    let rtx = section
        .codecs
        .iter()
        .find(|c| c.is("rtx", codec.clock_rate) && c.apt == Some(codec.payload_type))
        .filter(|_| rtx_bindable);
    Ok(Accepted {
        codec,
        rtx,
        extmaps,
        extensions,
        layers,
    })
}

/// Opus for audio; for video VP8, then VP9 profile 0, then H.264 with
/// packetization-mode 1 in the constrained baseline, baseline or main profile (any
/// level), whatever the browser's order. Among H.264 entries the browser's first wins.
fn choose_codec(kind: MediaKind, codecs: &[Codec]) -> Option<&Codec> {
    match kind {
        MediaKind::Audio => codecs
            .iter()
            .find(|c| c.is("opus", 48_000) && c.channels == Some(2)),
        MediaKind::Video => codecs
            .iter()
            .find(|c| c.is("VP8", 90_000))
            .or_else(|| {
                // RFC 9628 §6: no profile-id means profile 0.
                codecs.iter().find(|c| {
                    c.is("VP9", 90_000) && c.fmtp_parameter("profile-id").unwrap_or("0") == "0"
                })
            })
            .or_else(|| {
                codecs
                    .iter()
                    .find(|c| c.is("H264", 90_000) && h264_supported(c))
            }),
    }
}

/// RFC 6184 §8.1: packetization-mode 1 (FU-A/STAP-A; mode 0 is the default when absent)
/// and a profile-level-id whose profile part is 42e0 (constrained baseline), 4200
/// (baseline) or 4d00 (main), as in 42e01f, 42001f, 4d001f; the level is not checked.
fn h264_supported(codec: &Codec) -> bool {
    let mode = codec.fmtp_parameter("packetization-mode").unwrap_or("0");
    let profile = codec
        .fmtp_parameter("profile-level-id")
        .filter(|p| p.len() == 6 && p.is_char_boundary(4))
        .map(|p| p[..4].to_ascii_lowercase());
    mode == "1" && matches!(profile.as_deref(), Some("42e0" | "4200" | "4d00"))
}

/// The simulcast streams to receive: those of `a=simulcast:send` in its order, each
/// declared by an `a=rid:<id> send`, minus those restricted to payload types other than
/// the chosen one. None without the RID header extension, which is how the forwarder
/// tells the encodings apart; the answer then has no `a=simulcast` and the browser
/// sends one encoding.
fn simulcast_layers(
    section: &OfferedSection,
    codec: &Codec,
    rid_extension: bool,
) -> Result<Vec<SimulcastLayer>, String> {
    let Some(simulcast) = &section.simulcast else {
        return Ok(Vec::new());
    };
    if !rid_extension {
        return Ok(Vec::new());
    }
    let mut layers = Vec::new();
    for layer in &simulcast.send {
        let rid = section
            .rids
            .iter()
            .find(|r| r.id == layer.rid && r.direction == RidDirection::Send)
            .ok_or_else(|| format!("a=simulcast names rid `{}` without a=rid send", layer.rid))?;
        if let Some(pts) = &rid.payload_types {
            if !pts.contains(&codec.payload_type) {
                continue;
            }
        }
        if !layers.iter().any(|l: &SimulcastLayer| l.rid == layer.rid) {
            layers.push(layer.clone());
        }
    }
    Ok(layers)
}

/// Announced media SSRCs: a legacy `SIM` group's order when there is one, else every
/// `a=ssrc` except the RTX side of `FID` groups (RFC 5576 §4.2, RFC 4588 §8.2).
fn media_ssrcs(section: &OfferedSection) -> Vec<u32> {
    if let Some(sim) = section.ssrc_groups.iter().find(|g| g.semantics == "SIM") {
        return sim.ssrcs.clone();
    }
    let repair: HashSet<u32> = section
        .ssrc_groups
        .iter()
        .filter(|g| g.semantics == "FID")
        .flat_map(|g| g.ssrcs.iter().skip(1).copied())
        .collect();
    section
        .ssrcs
        .iter()
        .copied()
        .filter(|s| !repair.contains(s))
        .collect()
}

pub(crate) fn connection_line(address: SocketAddr) -> Line {
    let family = if address.is_ipv4() { "IP4" } else { "IP6" };
    Line {
        kind: 'c',
        value: format!("IN {family} {}", address.ip()),
    }
}

/// The transport attributes every accepted m-section carries: ICE-lite credentials, the
/// forwarder's fingerprint, its DTLS role, its one host candidate (RFC 8839 §5.1).
pub(crate) fn transport_attributes(
    ice: &IceCredentials,
    fingerprint: &Fingerprint,
    setup: Setup,
    candidate: SocketAddr,
) -> Vec<Attribute> {
    vec![
        Attribute::new("ice-ufrag", ice.ufrag.clone()),
        Attribute::new("ice-pwd", ice.pwd.clone()),
        Attribute::new("fingerprint", fingerprint.as_str()),
        Attribute::new("setup", setup.as_str()),
        Attribute::new(
            "candidate",
            format!(
                "1 1 udp {HOST_PRIORITY} {} {} typ host",
                candidate.ip(),
                candidate.port()
            ),
        ),
        Attribute::property("end-of-candidates"),
    ]
}

fn accepted_media(
    section: &OfferedSection,
    accepted: &Accepted<'_>,
    params: &AnswerParams,
) -> MediaDescription {
    let codec = accepted.codec;
    let pt = codec.payload_type;
    let mut attributes = vec![Attribute::new(
        "mid",
        section.mid.clone().unwrap_or_default(),
    )];
    // The publish connection never sends media (RFC 9429 §5.3.1 direction rules).
    let direction = if section.direction.sends() {
        Direction::RecvOnly
    } else {
        Direction::Inactive
    };
    attributes.push(Attribute::property(direction.as_str()));
    attributes.extend(transport_attributes(
        &params.ice,
        &params.fingerprint,
        Setup::Passive,
        params.candidate,
    ));
    attributes.push(Attribute::property("rtcp-mux"));
    if section.rtcp_rsize {
        attributes.push(Attribute::property("rtcp-rsize"));
    }
    for extmap in &accepted.extmaps {
        attributes.push(Attribute::new("extmap", extmap.to_value()));
    }
    let mut rtpmap = format!("{pt} {}/{}", codec.name, codec.clock_rate);
    if let Some(channels) = codec.channels {
        rtpmap.push_str(&format!("/{channels}"));
    }
    attributes.push(Attribute::new("rtpmap", rtpmap));
    // The forwarder computes transport-cc feedback from the transport-wide sequence
    // numbers (its id travels with the publish connection, `transport_cc_extension_id`):
    // without that extension (not offered, or at an id the answer does not take),
    // `transport-cc` would promise feedback it cannot compute.
    let transport_cc = accepted.extensions.transport_cc.is_some();
    for feedback in codec
        .rtcp_fb
        .iter()
        .filter(|f| ACCEPTED_RTCP_FB.contains(&f.as_str()))
        .filter(|f| transport_cc || f.as_str() != "transport-cc")
    {
        attributes.push(Attribute::new("rtcp-fb", format!("{pt} {feedback}")));
    }
    if let Some(fmtp) = &codec.fmtp {
        attributes.push(Attribute::new("fmtp", format!("{pt} {fmtp}")));
    }
    let mut formats = vec![pt.to_string()];
    if let Some(rtx) = accepted.rtx {
        let rtx_pt = rtx.payload_type;
        formats.push(rtx_pt.to_string());
        attributes.push(Attribute::new(
            "rtpmap",
            format!("{rtx_pt} {}/{}", rtx.name, rtx.clock_rate),
        ));
        attributes.push(Attribute::new("fmtp", format!("{rtx_pt} apt={pt}")));
    }
    if !accepted.layers.is_empty() {
        for layer in &accepted.layers {
            attributes.push(Attribute::new("rid", format!("{} recv", layer.rid)));
        }
        attributes.push(Attribute::new(
            "simulcast",
            format!("recv {}", Simulcast::format_list(&accepted.layers)),
        ));
    }
    MediaDescription {
        media: section.media.clone(),
        port: params.candidate.port(),
        port_count: None,
        protocol: section.protocol.clone(),
        formats,
        lines: vec![connection_line(params.candidate)],
        attributes,
    }
}

/// RFC 9429 §5.3.1: a rejected m-section keeps its media, protocol and formats, gets
/// port 0, and keeps its mid.
fn rejected_media(section: &OfferedSection) -> MediaDescription {
    let mut attributes = Vec::new();
    if let Some(mid) = &section.mid {
        attributes.push(Attribute::new("mid", mid.clone()));
    }
    MediaDescription {
        media: section.media.clone(),
        port: 0,
        port_count: None,
        protocol: section.protocol.clone(),
        formats: section.formats.clone(),
        lines: vec![Line {
            kind: 'c',
            value: "IN IP4 0.0.0.0".into(),
        }],
        attributes,
    }
}
