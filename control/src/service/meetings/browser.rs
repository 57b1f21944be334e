//! What the control plane keeps of a browser's WebRTC transport (docs/webrtc.md), beside
//! its tracks in the participant's transport record: the two connections' ICE
//! credentials (ours, assigned here, and the browser's ufrag), the browser's certificate
//! fingerprint, the header extension ids it negotiated, and the subscribe connection's
//! m-sections as last offered. The forwarder's desired state is derived from it; the
//! ICE passwords are secrets like SRTP keys (redacted from `Debug`).

use serde::{Deserialize, Serialize};

use crate::domain::DomainError;

/// ICE ufrag length (RFC 8839 §5.4: 4 to 256 ice-chars; 24 bits of entropy at least).
const UFRAG_LEN: usize = 8;
/// ICE password length (at least 22 ice-chars, 128 bits).
const PWD_LEN: usize = 24;

/// `ice-char` (RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/". Only the alphanumerics here, so
/// the values survive any URL or JSON they travel in unescaped.
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// One connection's ICE credentials: ours, and the browser's ufrag once its SDP said it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ufrag: Option<String>,
}

impl IceCredentials {
    /// Fresh random credentials (a new connection, or an ICE restart).
    pub fn generate() -> Result<Self, DomainError> {
        Ok(IceCredentials {
            ufrag: random_ice_string(UFRAG_LEN)?,
            pwd: random_ice_string(PWD_LEN)?,
            remote_ufrag: None,
        })
    }
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .field("remote_ufrag", &self.remote_ufrag)
            .finish()
    }
}

fn random_ice_string(len: usize) -> Result<String, DomainError> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DomainError::Random)?;
    // 62 symbols: the modulo bias (256 % 62 = 8) costs under 0.2 bit per character.
    Ok(bytes
        .iter()
        .map(|b| char::from(ICE_CHARS[usize::from(*b) % ICE_CHARS.len()]))
        .collect())
}

/// The RFC 8285 ids of the header extensions that name a browser's streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamExtensionIds {
    #[serde(default)]
    pub mid: u8,
    #[serde(default)]
    pub rid: u8,
    #[serde(default)]
    pub repaired_rid: u8,
    /// The transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01):
    /// the forwarder sends transport-cc feedback when it is negotiated.
    #[serde(default)]
    pub transport_cc: u8,
}

/// An m-section of the subscribe connection: one track of another participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeSlot {
    pub mid: String,
    pub publisher: crate::domain::ParticipantId,
    pub kind: super::TrackKind,
    /// What the forwarder sends the track with (the track's first assigned SSRC).
    pub ssrc: u32,
    /// Encoding name (`opus`, `VP8`, ...).
    pub codec: String,
    /// The track is gone: its m-section stays, inactive (JSEP never removes one).
    #[serde(default)]
    pub stopped: bool,
}

/// A browser's two connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserTransport {
    /// The browser's DTLS certificate fingerprint (RFC 8122 form), both connections'.
    pub remote_fingerprint: String,
    pub publish: IceCredentials,
    pub subscribe: IceCredentials,
    /// What the browser's publish offer negotiated.
    pub extensions: StreamExtensionIds,
    /// The subscribe connection's m-sections, in order, as last offered.
    #[serde(default)]
    pub slots: Vec<SubscribeSlot>,
    /// Counts subscribe offers; an answer names the revision it answers.
    #[serde(default)]
    pub revision: u64,
    /// The revision the browser last answered.
    #[serde(default)]
    pub answered: u64,
}

impl BrowserTransport {
    /// A browser that joined and has negotiated nothing yet: our credentials for both
    /// connections, its certificate unknown.
    pub fn new() -> Result<Self, DomainError> {
        Ok(BrowserTransport {
            remote_fingerprint: String::new(),
            publish: IceCredentials::generate()?,
            subscribe: IceCredentials::generate()?,
            extensions: StreamExtensionIds::default(),
            slots: Vec::new(),
            revision: 0,
            answered: 0,
        })
    }
}

/// The audio-level extension id of the subscribe connection's offers
/// (`webrtc::sdp::SUBSCRIBE_EXT_AUDIO_LEVEL`).
pub const SUBSCRIBE_AUDIO_LEVEL_EXTENSION: u8 = crate::webrtc::sdp::SUBSCRIBE_EXT_AUDIO_LEVEL;

/// The payload types of the subscribe connection, one table for every m-section so that
/// no two of a BUNDLE group disagree (docs/webrtc.md).
pub const SUBSCRIBE_PAYLOAD_TYPES: [(&str, u8); 4] =
    [("opus", 111), ("VP8", 96), ("VP9", 98), ("H264", 102)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_random_ice_chars_and_debug_hides_the_password() {
        let a = IceCredentials::generate().unwrap();
        let b = IceCredentials::generate().unwrap();
        assert_eq!((a.ufrag.len(), a.pwd.len()), (UFRAG_LEN, PWD_LEN));
        assert!(a.pwd.bytes().all(|c| ICE_CHARS.contains(&c)));
        assert_ne!(a.pwd, b.pwd);
        assert!(!format!("{a:?}").contains(&a.pwd));
    }
}
