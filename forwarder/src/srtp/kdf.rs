//! Session key derivation (RFC 3711 §4.3) with key_derivation_rate 0.
//!
//! The PRF is AES in counter mode keyed with the master key: AES_CM_PRF with AES-128
//! (RFC 3711 §4.3.3) or AES_256_CM_PRF with AES-256 (RFC 6188 §3, which RFC 7714 §11
//! prescribes for AEAD_AES_256_GCM).

use super::SrtpError;
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::iv::FixedLength;

/// Key derivation labels (RFC 3711 §4.3.1 and §4.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Label {
    RtpEncryption = 0x00,
    RtpAuthentication = 0x01,
    RtpSalt = 0x02,
    RtcpEncryption = 0x03,
    RtcpAuthentication = 0x04,
    RtcpSalt = 0x05,
}

/// RFC 3711 §4.3.1 with kdr = 0 (so "r" is 0): `x = (label << 48) XOR master_salt`, and the
/// output is the AES-CM keystream for IV `x * 2^16`, truncated to `out.len()`.
///
/// `master_salt` is at most 14 bytes; the 12-byte GCM salt is zero-extended on the right,
/// as libsrtp and webrtc-rs do (RFC 7714 §11 reuses the RFC 3711 KDF with the 96-bit salt).
pub(crate) fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: Label,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let algorithm = match master_key.len() {
        16 => &AES_128,
        32 => &AES_256,
        _ => return Err(SrtpError::Crypto),
    };
    if master_salt.len() > 14 {
        return Err(SrtpError::Crypto);
    }
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    // The label sits in the eighth octet of the 112-bit key_id (RFC 3711 §4.3.1: key_id =
    // label || r, r being 48 bits), i.e. byte 7 of the 14-byte salt-aligned block.
    iv[7] ^= label as u8;
    let key = UnboundCipherKey::new(algorithm, master_key).map_err(|_| SrtpError::Crypto)?;
    let key = EncryptingKey::ctr(key).map_err(|_| SrtpError::Crypto)?;
    // The keystream is the encryption of zeros.
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| SrtpError::Crypto)?;
    Ok(())
}
