//! SRTP protection profiles (crypto suites).

use super::SrtpError;
use std::fmt;
use std::str::FromStr;

/// An SRTP protection profile: cipher, authentication, key and tag sizes.
///
/// Names are the SDES crypto-suite names (RFC 4568 §6.2, RFC 7714 §14.1); the DTLS-SRTP
/// names are the same with an `SRTP_` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// AES-128 counter mode, HMAC-SHA1 tag truncated to 80 bits (RFC 3711 §4, RFC 4568).
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag truncated to 32 bits for SRTP; SRTCP keeps the
    /// 80-bit tag (RFC 4568 §6.2.1, RFC 5764 §4.1.2).
    AesCm128HmacSha1_32,
    /// AES-128-GCM with a 16-byte tag (RFC 7714).
    AeadAes128Gcm,
    /// AES-256-GCM with a 16-byte tag (RFC 7714), keys derived with AES_256_CM_PRF.
    AeadAes256Gcm,
}

/// Length of the SRTCP E flag + index word (RFC 3711 §3.4).
pub(crate) const SRTCP_INDEX_LEN: usize = 4;
/// Length of the AES-GCM authentication tag (RFC 7714 §5.2.1: 16 octets).
pub(crate) const GCM_TAG_LEN: usize = 16;
/// HMAC-SHA1-80 tag length (RFC 3711 §5.2).
pub(crate) const HMAC_80_TAG_LEN: usize = 10;
/// HMAC-SHA1-32 tag length (RFC 4568 §6.2.1).
pub(crate) const HMAC_32_TAG_LEN: usize = 4;
/// Largest master key + salt of any supported profile (AEAD_AES_256_GCM: 32 + 12).
pub(crate) const MAX_MASTER_LEN: usize = 32 + 12;

impl SrtpProfile {
    /// Every supported profile, most preferred first (GCM is ~4x cheaper, see PLATFORM.md).
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
        SrtpProfile::AesCm128HmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32,
    ];

    /// Parses an SDES crypto-suite name (RFC 4568 §6.2, RFC 7714 §14.1). The DTLS-SRTP
    /// spelling with an `SRTP_` prefix is accepted too.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.strip_prefix("SRTP_").unwrap_or(name);
        match name {
            "AES_CM_128_HMAC_SHA1_80" | "AES128_CM_SHA1_80" => {
                Some(SrtpProfile::AesCm128HmacSha1_80)
            }
            "AES_CM_128_HMAC_SHA1_32" | "AES128_CM_SHA1_32" => {
                Some(SrtpProfile::AesCm128HmacSha1_32)
            }
            "AEAD_AES_128_GCM" => Some(SrtpProfile::AeadAes128Gcm),
            "AEAD_AES_256_GCM" => Some(SrtpProfile::AeadAes256Gcm),
            _ => None,
        }
    }

    /// The SDES crypto-suite name.
    pub fn name(self) -> &'static str {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Master key length in bytes.
    pub fn master_key_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master salt length in bytes: 112 bits for AES-CM (RFC 3711 §8.2), 96 bits for GCM
    /// (RFC 7714 §12).
    pub fn master_salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    /// Bytes `protect_rtp` adds: the authentication tag.
    pub fn rtp_trailer_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => HMAC_80_TAG_LEN,
            SrtpProfile::AesCm128HmacSha1_32 => HMAC_32_TAG_LEN,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }

    /// Bytes `protect_rtcp` adds: E||index and the tag. The _32 profile still uses the
    /// 80-bit tag for SRTCP (RFC 4568 §6.2.1, RFC 5764 §4.1.2).
    pub fn rtcp_trailer_len(self) -> usize {
        SRTCP_INDEX_LEN + self.rtcp_tag_len()
    }

    pub(crate) fn rtcp_tag_len(self) -> usize {
        if self.is_aead() {
            GCM_TAG_LEN
        } else {
            HMAC_80_TAG_LEN
        }
    }

    /// True for the AES-GCM profiles.
    pub fn is_aead(self) -> bool {
        matches!(
            self,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm
        )
    }
}

impl fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SrtpProfile {
    type Err = SrtpError;

    fn from_str(s: &str) -> Result<Self, SrtpError> {
        SrtpProfile::from_name(s).ok_or(SrtpError::UnknownProfile)
    }
}
