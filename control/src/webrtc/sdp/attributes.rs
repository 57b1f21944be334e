//! Typed values of the attributes JSEP uses, each parsed from an attribute's value.
//! Parsers return `None` on malformed input; callers turn that into an
//! [`super::SdpError`] that names the m-section.

use std::fmt;

use super::description::{is_token, parse_decimal};

/// Header extension URIs the forwarder knows (RFC 8285 `a=extmap`).
pub mod extension_uri {
    /// RFC 9143 §15: the MID of the m-section a packet belongs to.
    pub const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    /// RFC 8852 §3.1: RtpStreamId, the simulcast encoding (`q`, `h`, `f`).
    pub const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
    /// RFC 8852 §3.2: RepairedRtpStreamId, on RTX and FEC packets.
    pub const REPAIRED_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
    /// RFC 6464: client-to-mixer audio level.
    pub const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
    /// draft-holmer-rmcat-transport-wide-cc-extensions-01: transport-wide sequence numbers.
    pub const TRANSPORT_CC: &str =
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
    /// Chrome's absolute send time, for REMB.
    pub const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
}

/// `a=fingerprint:<hash-func> <fingerprint>` (RFC 8122 §5), kept as the text
/// `"sha-256 AB:CD:..."` with the algorithm in lower case and the hex in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Checks the hash function (SHA-1 and SHA-2 families, RFC 8122 §5) and that the
    /// fingerprint is as many colon-separated hex bytes as that function's output.
    pub fn parse(value: &str) -> Option<Fingerprint> {
        let (algorithm, hex) = value.trim().split_once(' ')?;
        let algorithm = algorithm.to_ascii_lowercase();
        let len = match algorithm.as_str() {
            "sha-1" => 20,
            "sha-224" => 28,
            "sha-256" => 32,
            "sha-384" => 48,
            "sha-512" => 64,
            _ => return None,
        };
        let hex = hex.trim();
        let bytes: Vec<&str> = hex.split(':').collect();
        if bytes.len() != len
            || !bytes
                .iter()
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return None;
        }
        Some(Fingerprint(format!(
            "{algorithm} {}",
            hex.to_ascii_uppercase()
        )))
    }

    /// `sha-256`, ...
    pub fn algorithm(&self) -> &str {
        self.0.split_once(' ').map_or("", |(a, _)| a)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `a=ice-ufrag` and `a=ice-pwd` (RFC 8839 §5.4): ICE characters (`ALPHA / DIGIT / "+" /
/// "/"`), ufrag 4 to 256 of them, pwd 22 to 256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl IceCredentials {
    pub fn new(ufrag: &str, pwd: &str) -> Option<IceCredentials> {
        Some(IceCredentials {
            ufrag: valid_ufrag(ufrag)?.to_owned(),
            pwd: valid_pwd(pwd)?.to_owned(),
        })
    }
}

pub(crate) fn valid_ufrag(ufrag: &str) -> Option<&str> {
    ((4..=256).contains(&ufrag.len()) && is_ice_chars(ufrag)).then_some(ufrag)
}

pub(crate) fn valid_pwd(pwd: &str) -> Option<&str> {
    ((22..=256).contains(&pwd.len()) && is_ice_chars(pwd)).then_some(pwd)
}

/// `a=setup` (RFC 4145 §4, RFC 8842 §5): who is the DTLS client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    pub fn parse(value: &str) -> Option<Setup> {
        Some(match value {
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            "actpass" => Setup::ActPass,
            "holdconn" => Setup::HoldConn,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }
}

/// Media direction (RFC 8866 §6.7), from the point of view of the side that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn parse(value: &str) -> Option<Direction> {
        Some(match value {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether the side that wrote this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that wrote this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// The media of an RTP m-section this control plane handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn parse(media: &str) -> Option<MediaKind> {
        match media {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// `a=extmap:<id>[/<direction>] <uri> [<extension attributes>]` (RFC 8285 §8). Firefox
/// writes a direction (`a=extmap:8/sendonly urn:...:rtp-stream-id`), Chrome does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extmap {
    pub id: u16,
    pub direction: Option<Direction>,
    pub uri: String,
    pub attributes: Option<String>,
}

impl Extmap {
    pub fn parse(value: &str) -> Option<Extmap> {
        let (head, rest) = value.split_once(' ')?;
        let (id, direction) = match head.split_once('/') {
            Some((id, direction)) => (id, Some(Direction::parse(direction)?)),
            None => (head, None),
        };
        // RFC 8285 §5: 1-14 one-byte, up to 255 two-byte; 4096-4351 were for negotiation
        // in RFC 5285 and are refused here like anything else out of range.
        let id = parse_decimal::<u16>(id).filter(|id| (1..=255).contains(id))?;
        let (uri, attributes) = match rest.split_once(' ') {
            Some((uri, attributes)) => (uri, Some(attributes.to_owned())),
            None => (rest, None),
        };
        if uri.is_empty() {
            return None;
        }
        Some(Extmap {
            id,
            direction,
            uri: uri.to_owned(),
            attributes,
        })
    }

    pub fn to_value(&self) -> String {
        let mut value = self.id.to_string();
        if let Some(direction) = self.direction {
            value.push('/');
            value.push_str(direction.as_str());
        }
        value.push(' ');
        value.push_str(&self.uri);
        if let Some(attributes) = &self.attributes {
            value.push(' ');
            value.push_str(attributes);
        }
        value
    }
}

/// Whether a rid is `send` or `recv` (RFC 8851 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidDirection {
    Send,
    Recv,
}

/// `a=rid:<rid-id> <send|recv> [<restrictions>]` (RFC 8851 §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rid {
    pub id: String,
    pub direction: RidDirection,
    /// The `pt=` restriction, when given: the only payload types this encoding uses.
    pub payload_types: Option<Vec<u8>>,
    /// Everything after the direction, as written (`pt=120;max-width=1280`).
    pub restrictions: Option<String>,
}

/// RFC 8851 §10 `rid-id = 1*(alpha-numeric / "-" / "_")`; 255 bytes is what the SDES
/// item of RFC 8852 can carry.
pub(crate) fn is_rid_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Rid {
    pub fn parse(value: &str) -> Option<Rid> {
        let mut fields = value.splitn(3, ' ');
        let id = fields.next()?;
        if !is_rid_id(id) {
            return None;
        }
        let direction = match fields.next()? {
            "send" => RidDirection::Send,
            "recv" => RidDirection::Recv,
            _ => return None,
        };
        let restrictions = fields.next().map(str::to_owned);
        let mut payload_types = None;
        for restriction in restrictions.iter().flat_map(|r| r.split(';')) {
            if let Some(list) = restriction.trim().strip_prefix("pt=") {
                let list: Option<Vec<u8>> = list
                    .split(',')
                    .map(|pt| parse_decimal::<u8>(pt).filter(|pt| *pt <= 127))
                    .collect();
                payload_types = Some(list?);
            }
        }
        Some(Rid {
            id: id.to_owned(),
            direction,
            payload_types,
            restrictions,
        })
    }
}

/// One simulcast stream of `a=simulcast` (RFC 8853 §5.1): its rid and whether it starts
/// paused (`~`). Of a list of alternatives (`a,b`) only the first is kept: the answerer
/// may remove alternatives (RFC 8853 §5.3), and browsers do not offer any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulcastLayer {
    pub rid: String,
    pub paused: bool,
}

/// `a=simulcast` (RFC 8853): the send and receive stream lists, each in the order
/// written. That order is the browser's `sendEncodings` order, not necessarily lowest to
/// highest quality.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Simulcast {
    pub send: Vec<SimulcastLayer>,
    pub recv: Vec<SimulcastLayer>,
}

impl Simulcast {
    /// Also reads draft-ietf-mmusic-sdp-simulcast-03 as old Firefox wrote it
    /// (`a=simulcast: send rid=q;h;f`).
    pub fn parse(value: &str) -> Option<Simulcast> {
        let mut simulcast = Simulcast::default();
        let mut words = value.split(' ').filter(|w| !w.is_empty());
        let mut any = false;
        while let Some(direction) = words.next() {
            let list = words.next()?;
            let list = list.strip_prefix("rid=").unwrap_or(list);
            let layers = parse_stream_list(list)?;
            let slot = match direction {
                "send" if simulcast.send.is_empty() => &mut simulcast.send,
                "recv" if simulcast.recv.is_empty() => &mut simulcast.recv,
                _ => return None,
            };
            *slot = layers;
            any = true;
        }
        any.then_some(simulcast)
    }

    pub fn format_list(layers: &[SimulcastLayer]) -> String {
        layers
            .iter()
            .map(|l| {
                if l.paused {
                    format!("~{}", l.rid)
                } else {
                    l.rid.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(";")
    }
}

fn parse_stream_list(list: &str) -> Option<Vec<SimulcastLayer>> {
    list.split(';')
        .map(|alternatives| {
            let first = alternatives.split(',').next()?;
            let (rid, paused) = match first.strip_prefix('~') {
                Some(rid) => (rid, true),
                None => (first, false),
            };
            is_rid_id(rid).then(|| SimulcastLayer {
                rid: rid.to_owned(),
                paused,
            })
        })
        .collect()
}

/// `a=msid:<stream id> [<track id>]` (RFC 8830 §2). Chrome writes `-` for a track sent
/// without a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msid {
    pub stream: String,
    pub track: Option<String>,
}

impl Msid {
    pub fn parse(value: &str) -> Option<Msid> {
        let mut fields = value.split(' ').filter(|f| !f.is_empty());
        let stream = fields.next()?;
        let track = fields.next();
        if fields.next().is_some() {
            return None;
        }
        Some(Msid {
            stream: stream.to_owned(),
            track: track.map(str::to_owned),
        })
    }
}

/// RFC 8830 `msid-id = 1*64token-char`: what a subscribe offer may put in `a=msid` and
/// `a=ssrc ... cname:`.
pub(crate) fn is_msid_id(id: &str) -> bool {
    id.len() <= 64 && is_token(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha-256 33:C9:9E:47:E5:2A:14:04:F8:F7:79:BE:4A:87:C4:B8:47:D6:57:0B:54:0A:40:8B:84:15:1E:C0:C9:6F:B9:64";

    #[test]
    fn fingerprint_checks_algorithm_and_length() {
        let fp = Fingerprint::parse(FP).unwrap();
        assert_eq!(fp.as_str(), FP);
        assert_eq!(fp.algorithm(), "sha-256");
        let lower = Fingerprint::parse(&FP.replace("sha-256", "SHA-256").to_lowercase()).unwrap();
        assert_eq!(lower, fp);
        assert!(Fingerprint::parse("md5 AB:CD").is_none());
        assert!(Fingerprint::parse(&FP[..FP.len() - 3]).is_none());
        assert!(Fingerprint::parse(&FP.replace("33:", "3G:")).is_none());
        assert!(Fingerprint::parse(&FP.replace("sha-256", "sha-1")).is_none());
        assert!(Fingerprint::parse("sha-256").is_none());
    }

    #[test]
    fn ice_credentials() {
        assert!(IceCredentials::new("bIQJ", "OQKiPkYpIOfGNxR1KUMNgo+N").is_some());
        assert!(IceCredentials::new("abc", "OQKiPkYpIOfGNxR1KUMNgo+N").is_none());
        assert!(IceCredentials::new("bIQJ", "short").is_none());
        assert!(IceCredentials::new("bI Q", "OQKiPkYpIOfGNxR1KUMNgo+N").is_none());
    }

    #[test]
    fn extmap_with_and_without_direction() {
        let chrome = Extmap::parse("4 urn:ietf:params:rtp-hdrext:sdes:mid").unwrap();
        assert_eq!((chrome.id, chrome.direction), (4, None));
        let firefox =
            Extmap::parse("8/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id").unwrap();
        assert_eq!(firefox.id, 8);
        assert_eq!(firefox.direction, Some(Direction::SendOnly));
        assert_eq!(firefox.uri, extension_uri::RID);
        assert_eq!(
            firefox.to_value(),
            "8/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
        );
        let with_attributes = Extmap::parse("3 urn:x some attrs").unwrap();
        assert_eq!(with_attributes.attributes.as_deref(), Some("some attrs"));
        for bad in [
            "0 urn:x",
            "256 urn:x",
            "x urn:x",
            "3/sideways urn:x",
            "3",
            "3 ",
        ] {
            assert!(Extmap::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rid_and_restrictions() {
        let rid = Rid::parse("q send").unwrap();
        assert_eq!((rid.id.as_str(), rid.direction), ("q", RidDirection::Send));
        let restricted = Rid::parse("q send pt=120,121;max-width=1280").unwrap();
        assert_eq!(restricted.payload_types, Some(vec![120, 121]));
        assert!(Rid::parse("q sideways").is_none());
        assert!(Rid::parse("q!x send").is_none());
        assert!(Rid::parse("q send pt=300").is_none());
    }

    #[test]
    fn simulcast_lists_keep_their_order_and_pauses() {
        let s = Simulcast::parse("send q;h;f").unwrap();
        let rids: Vec<&str> = s.send.iter().map(|l| l.rid.as_str()).collect();
        assert_eq!(rids, ["q", "h", "f"]);
        let s = Simulcast::parse("send f;~h,x;q recv a").unwrap();
        assert_eq!(
            s.send[1],
            SimulcastLayer {
                rid: "h".into(),
                paused: true
            }
        );
        assert_eq!(Simulcast::format_list(&s.send), "f;~h;q");
        assert_eq!(s.recv.len(), 1);
        let draft = Simulcast::parse(" send rid=foo;bar").unwrap();
        assert_eq!(draft.send.len(), 2);
        for bad in ["", "send", "send q;;f", "sideways q", "send q send h"] {
            assert!(Simulcast::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn msid() {
        let m = Msid::parse("- 4dd21ddd-75b9-4ed5-b7dd-a92ef83c5774").unwrap();
        assert_eq!(m.stream, "-");
        assert_eq!(
            m.track.as_deref(),
            Some("4dd21ddd-75b9-4ed5-b7dd-a92ef83c5774")
        );
        assert!(Msid::parse("a b c").is_none());
        assert!(Msid::parse("").is_none());
    }
}
