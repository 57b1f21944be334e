//! SDP for browsers under JSEP (RFC 9429), as docs/webrtc.md uses it.
//!
//! * [`SessionDescription`]: the RFC 8866 text model, every line kept, bounded in size.
//! * [`PublishOffer::from_sdp`] reads the browser's offer on the publish connection and
//!   [`answer_publish`] answers it: ICE-lite with one host candidate, `a=setup:passive`
//!   (the forwarder is the DTLS server), one codec per m-section keeping the browser's
//!   payload type, the header extensions the forwarder uses, simulcast mirrored.
//! * [`offer_subscribe`] writes the offer of the subscribe connection (one `sendonly`
//!   m-section per track, payload types from the fixed table) and
//!   [`SubscribeAnswer::from_sdp`] reads the browser's answer.
//!
//! Errors ([`SdpError`]) say which line or which m-section and what is wrong, because the
//! signaling layer hands them back to the browser as gRPC `INVALID_ARGUMENT` messages.
//! Nothing here panics on any input (property tests and the `sdp_parse` fuzz target in
//! control/fuzz check it).

mod attributes;
mod description;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

use std::fmt;

pub use attributes::{
    extension_uri, Direction, Extmap, Fingerprint, IceCredentials, MediaKind, Msid, Rid,
    RidDirection, Setup, Simulcast, SimulcastLayer,
};
pub use description::{
    Attribute, Attributes, Line, MediaDescription, SessionDescription, MAX_ATTRIBUTES_PER_SECTION,
    MAX_INPUT_LEN, MAX_LINES_PER_SECTION, MAX_MEDIA_SECTIONS,
};
pub use publish::{
    answer_publish, AnswerParams, Codec, ExtensionIds, NegotiatedCodec, NegotiatedPublish,
    NegotiatedTrack, OfferedSection, PublishOffer, RejectedSection, SsrcGroup, TrackKind,
};
pub use subscribe::{
    offer_subscribe, AnsweredSection, SubscribeAnswer, SubscribeCodec, SubscribeParams,
    SubscribeSlot, SubscribeTrack, SUBSCRIBE_EXT_AUDIO_LEVEL, SUBSCRIBE_EXT_MID,
    SUBSCRIBE_EXT_TRANSPORT_CC,
};

/// Where in a description a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Session,
    /// The m-section at `index` (0-based, in the order of the `m=` lines) and its
    /// `a=mid` when it has one.
    Media {
        index: usize,
        mid: Option<String>,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Session => f.write_str("session level"),
            Location::Media {
                index,
                mid: Some(mid),
            } => write!(f, "m-section {index} (mid {mid})"),
            Location::Media { index, mid: None } => write!(f, "m-section {index}"),
        }
    }
}

/// Why a description was refused. Messages are written for the browser's developer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("line {line}: more than {max} m-sections")]
    TooManyMediaSections { line: usize, max: usize },
    #[error("line {line}: more than {max} attributes in one section")]
    TooManyAttributes { line: usize, max: usize },
    #[error("line {line}: more than {max} non-attribute lines in one section")]
    TooManyLines { line: usize, max: usize },
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("{at}: missing {what}")]
    Missing { at: Location, what: &'static str },
    #[error("{at}: invalid {what}: {value:?}")]
    Invalid {
        at: Location,
        what: &'static str,
        /// The offending text, cut to [`MAX_ECHOED_VALUE`] bytes.
        value: String,
    },
    #[error("{at}: {message}")]
    Unsupported { at: Location, message: String },
}

/// How much of an offending value an error repeats: enough to recognise it, not enough
/// to make an error message an amplifier for whatever the client sent.
pub const MAX_ECHOED_VALUE: usize = 80;

pub(crate) fn invalid(at: &Location, what: &'static str, value: &str) -> SdpError {
    let mut end = value.len().min(MAX_ECHOED_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    SdpError::Invalid {
        at: at.clone(),
        what,
        value: value[..end].to_owned(),
    }
}

pub(crate) fn missing(at: &Location, what: &'static str) -> SdpError {
    SdpError::Missing {
        at: at.clone(),
        what,
    }
}
