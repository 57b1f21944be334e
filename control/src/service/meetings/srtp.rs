//! The SRTP master keys a join hands out (RFC 3711 §8.2, RFC 4568 §6.1 `inline:` form).
//!
//! Each participant gets two fresh random master keys: one it protects what it sends with
//! (the forwarder unprotects with it), one the forwarder protects what it sends towards the
//! participant with. Separate keys per direction mean the two sides never encrypt under the
//! same key and SSRC space. Key material comes from aws-lc-rs's system RNG and the raw
//! bytes are zeroized as soon as they are encoded; neither `Debug` nor logs show a key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::domain::DomainError;

/// The profiles we hand keys out for, with their master key and master salt lengths:
/// RFC 3711 / RFC 4568 for the two AES-CM ones (16-byte key, 14-byte salt), RFC 7714 §12
/// for AES-GCM (16- or 32-byte key, 12-byte salt).
const PROFILES: [(&str, usize, usize); 4] = [
    ("AES_CM_128_HMAC_SHA1_80", 16, 14),
    ("AES_CM_128_HMAC_SHA1_32", 16, 14),
    ("AEAD_AES_128_GCM", 16, 12),
    ("AEAD_AES_256_GCM", 32, 12),
];

/// Master key and salt lengths of a profile we support, by its RFC name.
pub fn key_salt_len(profile: &str) -> Option<(usize, usize)> {
    PROFILES
        .iter()
        .find(|(name, _, _)| *name == profile)
        .map(|&(_, k, s)| (k, s))
}

/// A participant's SRTP profile and keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrtpTransport {
    /// The profile's RFC name (`AEAD_AES_128_GCM`, ...).
    pub profile: String,
    /// What the participant encrypts with: `inline:` base64 of master key ‖ master salt.
    pub send_key: String,
    /// What the forwarder encrypts towards the participant with, same form.
    pub receive_key: String,
}

impl SrtpTransport {
    /// Two fresh keys for `profile`. Unknown profile: `InvalidArgument`.
    pub fn generate(profile: &str) -> Result<Self, DomainError> {
        let (key, salt) = key_salt_len(profile).ok_or(DomainError::EmptyRequest(
            "no supported SRTP profile offered",
        ))?;
        Ok(SrtpTransport {
            profile: profile.to_owned(),
            send_key: inline_key(key + salt)?,
            receive_key: inline_key(key + salt)?,
        })
    }
}

/// `inline:` and the base64 of `len` random bytes (RFC 4568 §6.1 key-params without the
/// optional lifetime and MKI, which we do not use).
fn inline_key(len: usize) -> Result<String, DomainError> {
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    aws_lc_rs::rand::fill(bytes.as_mut_slice()).map_err(|_| DomainError::Random)?;
    Ok(format!("inline:{}", STANDARD.encode(bytes.as_slice())))
}

impl std::fmt::Debug for SrtpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpTransport")
            .field("profile", &self.profile)
            .field("send_key", &"<redacted>")
            .field("receive_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_profile_lengths_and_differ() {
        for (profile, key, salt) in PROFILES {
            let t = SrtpTransport::generate(profile).unwrap();
            for k in [&t.send_key, &t.receive_key] {
                let b64 = k.strip_prefix("inline:").unwrap();
                assert_eq!(STANDARD.decode(b64).unwrap().len(), key + salt, "{profile}");
            }
            assert_ne!(t.send_key, t.receive_key);
        }
        assert!(SrtpTransport::generate("NULL_CIPHER").is_err());
    }

    #[test]
    fn debug_hides_keys() {
        let t = SrtpTransport::generate("AEAD_AES_128_GCM").unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&t.send_key[7..]) && !dbg.contains(&t.receive_key[7..]));
    }
}
