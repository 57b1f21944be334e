//! SDP text (RFC 8866 §9): `<type>=<value>` lines, a session part, then media sections
//! each opened by `m=`. Every attribute is kept, in order, so that interpretation
//! ([`super::publish`], [`super::subscribe`]) can be strict about what it needs and
//! ignore the rest.
//!
//! Input is untrusted (it comes from a browser through a WebSocket): sizes are bounded
//! before anything is stored ([`MAX_INPUT_LEN`], [`MAX_MEDIA_SECTIONS`],
//! [`MAX_ATTRIBUTES_PER_SECTION`], [`MAX_LINES_PER_SECTION`]), and no input panics.

use std::fmt::{self, Write as _};

use super::SdpError;

/// Largest description accepted, in bytes. A Chrome offer with audio, camera (simulcast)
/// and screen share is under 12 KiB; 64 KiB leaves room for many tracks and candidates.
pub const MAX_INPUT_LEN: usize = 64 * 1024;
/// Most `m=` sections accepted (a participant publishes three tracks; a subscriber's
/// offer comes from us, not from this parser, but its answer does).
pub const MAX_MEDIA_SECTIONS: usize = 64;
/// Most `a=` lines in one section (session or media). A Chrome video section with every
/// codec, RTX and FEC is about 150.
pub const MAX_ATTRIBUTES_PER_SECTION: usize = 512;
/// Most non-attribute lines (`c=`, `b=`, `t=`, ...) in one section.
pub const MAX_LINES_PER_SECTION: usize = 32;

/// One non-attribute, non-`m=` line: its type letter and value (`c=IN IP4 0.0.0.0` is
/// `{ kind: 'c', value: "IN IP4 0.0.0.0" }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub kind: char,
    pub value: String,
}

/// One `a=` line: `a=<name>` (a property) or `a=<name>:<value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

impl Attribute {
    pub fn new(name: &str, value: impl Into<String>) -> Attribute {
        Attribute {
            name: name.to_owned(),
            value: Some(value.into()),
        }
    }

    pub fn property(name: &str) -> Attribute {
        Attribute {
            name: name.to_owned(),
            value: None,
        }
    }
}

/// A media section: the `m=` line, then its other lines and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `application`, ...
    pub media: String,
    pub port: u16,
    /// The `/<number of ports>` suffix, never used by WebRTC but kept.
    pub port_count: Option<u16>,
    /// `UDP/TLS/RTP/SAVPF` for browsers' RTP.
    pub protocol: String,
    /// Payload types for RTP, `webrtc-datachannel` for data channels.
    pub formats: Vec<String>,
    /// `i=`, `c=`, `b=`, `k=` lines, in order.
    pub lines: Vec<Line>,
    pub attributes: Vec<Attribute>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// Session-level lines other than attributes, in order, starting with `v=0`.
    pub lines: Vec<Line>,
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
}

/// Attribute lookups shared by the session part and media sections.
pub trait Attributes {
    fn attributes(&self) -> &[Attribute];

    /// The value of the first `a=<name>:<value>`.
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes()
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.as_deref())
    }

    /// Values of every `a=<name>:<value>`, in order.
    fn attribute_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attributes()
            .iter()
            .filter(move |a| a.name == name)
            .filter_map(|a| a.value.as_deref())
    }

    /// Whether `a=<name>` (with or without a value) is present.
    fn has_attribute(&self, name: &str) -> bool {
        self.attributes().iter().any(|a| a.name == name)
    }
}

impl Attributes for SessionDescription {
    fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }
}

impl Attributes for MediaDescription {
    fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }
}

/// RFC 8866 §9 `token` characters (attribute names, media types, protocols).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~".contains(c)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

fn syntax(line: usize, message: impl Into<String>) -> SdpError {
    SdpError::Syntax {
        line,
        message: message.into(),
    }
}

impl SessionDescription {
    /// Parses SDP text. Lines end in CRLF or LF (RFC 8866 §5 asks for CRLF but says to
    /// accept LF, and hand-written SDP in tests uses it); empty lines are skipped.
    pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
        if text.len() > MAX_INPUT_LEN {
            return Err(SdpError::TooLarge {
                len: text.len(),
                max: MAX_INPUT_LEN,
            });
        }
        let mut description = SessionDescription {
            lines: Vec::new(),
            attributes: Vec::new(),
            media: Vec::new(),
        };
        let mut seen_version = false;
        for (index, raw) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            if line.contains(['\r', '\0']) {
                return Err(syntax(number, "a CR or NUL inside a line"));
            }
            let mut chars = line.chars();
            let kind = chars.next().unwrap_or('\0');
            if chars.next() != Some('=') || !kind.is_ascii_lowercase() {
                return Err(syntax(number, "not a `<type>=<value>` line"));
            }
            // `kind` is one ASCII byte and `=` another, so byte 2 is a char boundary.
            let value = &line[2..];
            if !seen_version {
                if kind != 'v' {
                    return Err(syntax(number, "the first line must be `v=`"));
                }
                if value != "0" {
                    return Err(syntax(number, "only SDP version 0 exists"));
                }
                seen_version = true;
                description.lines.push(Line {
                    kind,
                    value: value.to_owned(),
                });
                continue;
            }
            match kind {
                'v' => return Err(syntax(number, "a second `v=` line")),
                'm' => {
                    if description.media.len() == MAX_MEDIA_SECTIONS {
                        return Err(SdpError::TooManyMediaSections {
                            line: number,
                            max: MAX_MEDIA_SECTIONS,
                        });
                    }
                    description.media.push(parse_media_line(number, value)?);
                }
                'a' => {
                    let attribute = parse_attribute(number, value)?;
                    let attributes = match description.media.last_mut() {
                        Some(media) => &mut media.attributes,
                        None => &mut description.attributes,
                    };
                    if attributes.len() == MAX_ATTRIBUTES_PER_SECTION {
                        return Err(SdpError::TooManyAttributes {
                            line: number,
                            max: MAX_ATTRIBUTES_PER_SECTION,
                        });
                    }
                    attributes.push(attribute);
                }
                _ => {
                    let lines = match description.media.last_mut() {
                        Some(media) => &mut media.lines,
                        None => &mut description.lines,
                    };
                    if lines.len() == MAX_LINES_PER_SECTION {
                        return Err(SdpError::TooManyLines {
                            line: number,
                            max: MAX_LINES_PER_SECTION,
                        });
                    }
                    lines.push(Line {
                        kind,
                        value: value.to_owned(),
                    });
                }
            }
        }
        if !seen_version {
            return Err(syntax(1, "empty description (no `v=0`)"));
        }
        Ok(description)
    }

    /// The text of this description, with CRLF line ends (RFC 8866 §5). Lines come out
    /// in the order RFC 8866 §5 requires when the description was built in that order:
    /// each section's other lines, then its attributes.
    pub fn to_sdp(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write_section(
            f: &mut fmt::Formatter<'_>,
            lines: &[Line],
            attributes: &[Attribute],
        ) -> fmt::Result {
            for line in lines {
                write!(f, "{}={}\r\n", line.kind, line.value)?;
            }
            for attribute in attributes {
                match &attribute.value {
                    Some(value) => write!(f, "a={}:{}\r\n", attribute.name, value)?,
                    None => write!(f, "a={}\r\n", attribute.name)?,
                }
            }
            Ok(())
        }
        write_section(f, &self.lines, &self.attributes)?;
        for media in &self.media {
            let mut m_line = format!("{} {}", media.media, media.port);
            if let Some(count) = media.port_count {
                // Writing to a String cannot fail.
                let _ = write!(m_line, "/{count}");
            }
            let _ = write!(m_line, " {}", media.protocol);
            for format in &media.formats {
                let _ = write!(m_line, " {format}");
            }
            write!(f, "m={m_line}\r\n")?;
            write_section(f, &media.lines, &media.attributes)?;
        }
        Ok(())
    }
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...` (RFC 8866 §5.14).
fn parse_media_line(number: usize, value: &str) -> Result<MediaDescription, SdpError> {
    let mut fields = value.split(' ');
    let media = fields.next().unwrap_or("");
    if !is_token(media) {
        return Err(syntax(number, "`m=` without a media type"));
    }
    let port_field = fields
        .next()
        .ok_or_else(|| syntax(number, "`m=` without a port"))?;
    let (port, port_count) = match port_field.split_once('/') {
        Some((port, count)) => (port, Some(count)),
        None => (port_field, None),
    };
    let port = parse_decimal::<u16>(port).ok_or_else(|| syntax(number, "`m=` port"))?;
    let port_count = match port_count {
        Some(count) => Some(
            parse_decimal::<u16>(count).ok_or_else(|| syntax(number, "`m=` number of ports"))?,
        ),
        None => None,
    };
    let protocol = fields.next().unwrap_or("");
    if protocol.is_empty() || !protocol.split('/').all(is_token) {
        return Err(syntax(number, "`m=` without a protocol"));
    }
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() || formats.iter().any(|f| !is_token(f)) {
        return Err(syntax(number, "`m=` formats"));
    }
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        port_count,
        protocol: protocol.to_owned(),
        formats,
        lines: Vec::new(),
        attributes: Vec::new(),
    })
}

/// `a=<attribute-name>[:<attribute-value>]` (RFC 8866 §5.13).
fn parse_attribute(number: usize, value: &str) -> Result<Attribute, SdpError> {
    let (name, value) = match value.split_once(':') {
        Some((name, value)) => (name, Some(value.to_owned())),
        None => (value, None),
    };
    if !is_token(name) {
        return Err(syntax(number, "attribute name is not a token"));
    }
    Ok(Attribute {
        name: name.to_owned(),
        value,
    })
}

/// A decimal number without sign or leading `+` (`str::parse` accepts `+5`).
pub(crate) fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINIMAL: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n\
        a=mid:0\r\na=rtcp-mux\r\na=msid-semantic: WMS\r\n";

    #[test]
    fn parses_sections_lines_and_attributes_in_order() {
        let sdp = SessionDescription::parse(MINIMAL).unwrap();
        assert_eq!(sdp.lines.len(), 4);
        assert_eq!(sdp.lines[1].kind, 'o');
        assert_eq!(sdp.attribute("group"), Some("BUNDLE 0"));
        assert_eq!(sdp.media.len(), 1);
        let audio = &sdp.media[0];
        assert_eq!(audio.media, "audio");
        assert_eq!(audio.port, 9);
        assert_eq!(audio.protocol, "UDP/TLS/RTP/SAVPF");
        assert_eq!(audio.formats, ["111", "0"]);
        assert_eq!(audio.lines[0].value, "IN IP4 0.0.0.0");
        assert_eq!(audio.attribute("mid"), Some("0"));
        assert!(audio.has_attribute("rtcp-mux"));
        assert_eq!(audio.attributes[1], Attribute::property("rtcp-mux"));
        // The value keeps its leading space: `msid-semantic: WMS`.
        assert_eq!(audio.attribute("msid-semantic"), Some(" WMS"));
    }

    #[test]
    fn serializes_with_crlf_and_round_trips() {
        let lf = MINIMAL.replace("\r\n", "\n");
        let sdp = SessionDescription::parse(&lf).unwrap();
        assert_eq!(sdp.to_sdp(), MINIMAL);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize)] = &[
            ("o=- 1 1 IN IP4 0.0.0.0\r\n", 1),
            ("v=1\r\n", 1),
            ("v=0\r\nxx\r\n", 2),
            ("v=0\r\ns=-\r\nA=b\r\n", 3),
            ("v=0\r\nm=audio\r\n", 2),
            ("v=0\r\nm=audio 99999 RTP/AVP 0\r\n", 2),
            ("v=0\r\nm=audio +9 RTP/AVP 0\r\n", 2),
            ("v=0\r\nm=audio 9 RTP/AVP\r\n", 2),
            ("v=0\r\n\r\nm=audio 9 RTP/AVP 0\r\na=:x\r\n", 4),
            ("v=0\r\nv=0\r\n", 2),
            ("v=0\r\ns=a\rb\r\n", 2),
        ];
        for (text, line) in cases {
            match SessionDescription::parse(text) {
                Err(SdpError::Syntax { line: got, .. }) => assert_eq!(got, *line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(SessionDescription::parse("").is_err());
    }

    #[test]
    fn limits_bound_memory() {
        let big = format!("v=0\r\ns={}\r\n", "x".repeat(MAX_INPUT_LEN));
        assert!(matches!(
            SessionDescription::parse(&big),
            Err(SdpError::TooLarge { .. })
        ));
        let many_media = format!("v=0\r\n{}", "m=audio 9 RTP/AVP 0\r\n".repeat(65));
        assert!(matches!(
            SessionDescription::parse(&many_media),
            Err(SdpError::TooManyMediaSections { line: 66, max: 64 })
        ));
        let many_attributes = format!("v=0\r\n{}", "a=x\r\n".repeat(513));
        assert!(matches!(
            SessionDescription::parse(&many_attributes),
            Err(SdpError::TooManyAttributes { line: 514, .. })
        ));
        let many_lines = format!("v=0\r\nm=audio 9 RTP/AVP 0\r\n{}", "b=AS:1\r\n".repeat(33));
        assert!(matches!(
            SessionDescription::parse(&many_lines),
            Err(SdpError::TooManyLines { line: 35, .. })
        ));
    }

    fn value() -> impl Strategy<Value = String> {
        "[ -~]{0,24}"
    }

    fn token() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9!#$%&'*+.^_`{|}~-]{1,12}"
    }

    fn line(kinds: &'static str) -> impl Strategy<Value = Line> {
        let kinds: Vec<char> = kinds.chars().collect();
        (proptest::sample::select(kinds), value()).prop_map(|(kind, value)| Line { kind, value })
    }

    fn attribute() -> impl Strategy<Value = Attribute> {
        (token(), proptest::option::of(value())).prop_map(|(name, value)| Attribute { name, value })
    }

    fn media() -> impl Strategy<Value = MediaDescription> {
        (
            token(),
            any::<u16>(),
            proptest::option::of(any::<u16>()),
            proptest::collection::vec(token(), 1..4),
            proptest::collection::vec(token(), 1..6),
            proptest::collection::vec(line("icbk"), 0..4),
            proptest::collection::vec(attribute(), 0..12),
        )
            .prop_map(
                |(media, port, port_count, protocol, formats, lines, attributes)| {
                    MediaDescription {
                        media,
                        port,
                        port_count,
                        protocol: protocol.join("/"),
                        formats,
                        lines,
                        attributes,
                    }
                },
            )
    }

    fn description() -> impl Strategy<Value = SessionDescription> {
        (
            proptest::collection::vec(line("osiuepcbtrzk"), 0..8),
            proptest::collection::vec(attribute(), 0..12),
            proptest::collection::vec(media(), 0..6),
        )
            .prop_map(|(rest, attributes, media)| {
                let mut lines = vec![Line {
                    kind: 'v',
                    value: "0".to_owned(),
                }];
                lines.extend(rest);
                SessionDescription {
                    lines,
                    attributes,
                    media,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trips(sdp in description()) {
            let text = sdp.to_sdp();
            prop_assert_eq!(SessionDescription::parse(&text).unwrap(), sdp);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
            let _ = SessionDescription::parse(&text);
        }

        #[test]
        fn sdp_shaped_text_never_panics(
            lines in proptest::collection::vec("[a-z]=[ -~]{0,30}|m=[a-z]{1,5} [0-9/]{1,7} [A-Z/]{1,8}( [0-9]{1,3}){0,3}", 0..30)
        ) {
            let text = format!("v=0\r\n{}", lines.join("\r\n"));
            if let Ok(sdp) = SessionDescription::parse(&text) {
                prop_assert_eq!(SessionDescription::parse(&sdp.to_sdp()).unwrap(), sdp);
            }
        }
    }
}
