//! Master keys: key||salt of one profile, as negotiated by SDES (RFC 4568) or exported by
//! DTLS-SRTP (RFC 5764).

use super::profile::MAX_MASTER_LEN;
use super::{SrtpError, SrtpProfile};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// key||salt for one profile; zeroized on drop; Debug redacts.
#[derive(Clone)]
pub struct MasterKey {
    profile: SrtpProfile,
    /// key||salt in the first `profile.master_key_len() + profile.master_salt_len()` bytes,
    /// zeros after. A fixed array so that no heap copy of the secret is ever made.
    material: [u8; MAX_MASTER_LEN],
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .field("material", &"<redacted>")
            .finish()
    }
}

impl MasterKey {
    /// Builds a master key from key||salt; the length must be exactly key + salt of `profile`.
    pub fn new(profile: SrtpProfile, key_and_salt: &[u8]) -> Result<Self, SrtpError> {
        let expected = profile.master_key_len() + profile.master_salt_len();
        if key_and_salt.len() != expected {
            return Err(SrtpError::InvalidKeyLength {
                expected,
                actual: key_and_salt.len(),
            });
        }
        let mut material = [0u8; MAX_MASTER_LEN];
        material[..expected].copy_from_slice(key_and_salt);
        Ok(MasterKey { profile, material })
    }

    /// RFC 4568 §6.1 key-params: "inline:BASE64" optionally followed by "|lifetime" and/or "|MKI:LEN"; accept with or without the "inline:" prefix; reject MKI (unsupported) with a clear error; ignore lifetime.
    ///
    /// Standard base64 with or without padding is accepted (RFC 4568 §6.1 uses padded
    /// base64; a few implementations drop the padding).
    pub fn from_inline(profile: SrtpProfile, s: &str) -> Result<Self, SrtpError> {
        let s = s.trim();
        let s = s.strip_prefix("inline:").unwrap_or(s);
        let mut parts = s.split('|');
        let b64 = parts.next().unwrap_or("");
        for extra in parts {
            // RFC 4568 §6.1: lifetime is "2^n" or a decimal number; MKI is "value:length".
            if extra.contains(':') {
                return Err(SrtpError::MkiUnsupported);
            }
            let lifetime = extra.strip_prefix("2^").unwrap_or(extra);
            if lifetime.is_empty() || !lifetime.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SrtpError::InvalidKeyEncoding);
            }
        }
        let decoded = Zeroizing::new(
            STANDARD
                .decode(b64)
                .or_else(|_| STANDARD_NO_PAD.decode(b64))
                .map_err(|_| SrtpError::InvalidKeyEncoding)?,
        );
        MasterKey::new(profile, &decoded)
    }

    /// "inline:BASE64" (standard base64 with padding, as FFmpeg and RFC 4568 use).
    ///
    /// The returned string is the secret: don't log it.
    pub fn to_inline(&self) -> String {
        format!("inline:{}", STANDARD.encode(self.key_and_salt()))
    }

    /// A fresh random key from aws-lc's CSPRNG.
    pub fn generate(profile: SrtpProfile) -> Self {
        // aws-lc's RNG only fails when the OS entropy source is unusable; continuing with a
        // predictable key would be worse than stopping, so this is a deliberate panic.
        #[allow(clippy::expect_used)]
        Self::try_generate(profile).expect("system random number generator failed")
    }

    /// Like [`MasterKey::generate`], returning the (practically impossible) RNG failure.
    pub fn try_generate(profile: SrtpProfile) -> Result<Self, SrtpError> {
        let len = profile.master_key_len() + profile.master_salt_len();
        let mut material = [0u8; MAX_MASTER_LEN];
        aws_lc_rs::rand::fill(&mut material[..len]).map_err(|_| SrtpError::Crypto)?;
        Ok(MasterKey { profile, material })
    }

    /// The profile this key is for.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// True if both keys are for the same profile and hold the same key||salt (compared in
    /// constant time). Used to refuse reusing one key on two legs, which would reuse
    /// keystreams across unrelated streams.
    pub fn same_material(&self, other: &MasterKey) -> bool {
        self.profile == other.profile
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                self.key_and_salt(),
                other.key_and_salt(),
            )
            .is_ok()
    }

    pub(crate) fn key_and_salt(&self) -> &[u8] {
        let len = self.profile.master_key_len() + self.profile.master_salt_len();
        &self.material[..len]
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.material[..self.profile.master_key_len()]
    }

    pub(crate) fn salt(&self) -> &[u8] {
        let k = self.profile.master_key_len();
        &self.material[k..k + self.profile.master_salt_len()]
    }
}
