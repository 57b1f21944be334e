//! The per-packet transforms: AES-CM + HMAC-SHA1 (RFC 3711 §4.1.1, §4.2.1) and AES-GCM
//! (RFC 7714), for SRTP and SRTCP, in place and without allocation.
//!
//! These functions know nothing about streams, rollover counters or replay: the context
//! hands them the packet index and they encrypt/authenticate or verify/decrypt.
//!
//! No panics on network input: every length that comes from the packet is checked with
//! `get`/`checked_sub` at the top of each function, and the few direct slice operations
//! below only use bounds derived from those checks (e.g. `rtcp_len + 16 + 4 ==
//! packet.len()` in the GCM SRTCP path) or from constants (`tag_len <= 20`, the HMAC-SHA1
//! output length). The property tests in `tests.rs` feed random and mutated packets.

use super::kdf::{derive, Label};
use super::profile::{GCM_TAG_LEN, SRTCP_INDEX_LEN};
use super::{MasterKey, SrtpError, SrtpProfile};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use std::fmt;
use zeroize::Zeroizing;

/// Length of the first part of an RTCP compound packet that SRTCP leaves in the clear and
/// uses to find the SSRC (RFC 3711 §3.4: header + sender SSRC).
pub(crate) const RTCP_CLEAR_LEN: usize = 8;

/// Session salt of AES-CM (112 bits, RFC 3711 §4.1.1).
const CM_SALT_LEN: usize = 14;
/// Session salt of AES-GCM (96 bits, RFC 7714 §8.1).
const GCM_SALT_LEN: usize = 12;
/// Session authentication key of HMAC-SHA1 (160 bits, RFC 3711 §4.2.1 / §8.2).
const AUTH_KEY_LEN: usize = 20;

/// The keys of one sub-session (SRTP or SRTCP) of one direction.
// The CM keys are boxed: inline they are 1.7 KiB (AES and HMAC-SHA1 state), and every
// context holds two sub-sessions, so an AES-GCM context (the default profile, whose key
// lives behind aws-lc's own pointer) would carry 3.5 KiB it never uses, per leg in the
// forwarder and per participant in the load generator. The CM path pays one pointer
// chase to the key schedule it reads anyway.
pub(crate) enum SessionCipher {
    Cm(Box<CmKeys>),
    /// AES-GCM, 16-byte tag.
    Gcm {
        aead: LessSafeKey,
        salt: Zeroizing<[u8; GCM_SALT_LEN]>,
    },
}

/// AES-CM + HMAC-SHA1, with the RTP tag length (10 or 4; SRTCP always 10).
pub(crate) struct CmKeys {
    ctr: EncryptingKey,
    auth: hmac::Key,
    salt: Zeroizing<[u8; CM_SALT_LEN]>,
    tag_len: usize,
}

impl fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionCipher::Cm(cm) => f
                .debug_struct("Cm")
                .field("tag_len", &cm.tag_len)
                .finish_non_exhaustive(),
            SessionCipher::Gcm { .. } => f.debug_struct("Gcm").finish_non_exhaustive(),
        }
    }
}

impl SessionCipher {
    /// Derives the SRTP (`rtcp == false`) or SRTCP session keys from `master` and builds the
    /// key schedules (RFC 3711 §4.3). The derived key bytes live in zeroizing buffers that
    /// are wiped when this returns; only the aws-lc schedules remain.
    pub(crate) fn new(master: &MasterKey, rtcp: bool) -> Result<Self, SrtpError> {
        let profile = master.profile();
        let (enc_label, auth_label, salt_label) = if rtcp {
            (
                Label::RtcpEncryption,
                Label::RtcpAuthentication,
                Label::RtcpSalt,
            )
        } else {
            (
                Label::RtpEncryption,
                Label::RtpAuthentication,
                Label::RtpSalt,
            )
        };
        let mut enc_key = Zeroizing::new([0u8; 32]);
        let enc_key = &mut enc_key[..profile.master_key_len()];
        derive(master.key(), master.salt(), enc_label, enc_key)?;
        match profile {
            SrtpProfile::AesCm128HmacSha1_80 | SrtpProfile::AesCm128HmacSha1_32 => {
                let mut auth_key = Zeroizing::new([0u8; AUTH_KEY_LEN]);
                derive(master.key(), master.salt(), auth_label, &mut auth_key[..])?;
                let mut salt = Zeroizing::new([0u8; CM_SALT_LEN]);
                derive(master.key(), master.salt(), salt_label, &mut salt[..])?;
                let ctr = UnboundCipherKey::new(&AES_128, enc_key)
                    .and_then(EncryptingKey::ctr)
                    .map_err(|_| SrtpError::Crypto)?;
                let auth = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth_key[..]);
                let tag_len = if rtcp {
                    profile.rtcp_tag_len()
                } else {
                    profile.rtp_trailer_len()
                };
                Ok(SessionCipher::Cm(Box::new(CmKeys {
                    ctr,
                    auth,
                    salt,
                    tag_len,
                })))
            }
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => {
                let mut salt = Zeroizing::new([0u8; GCM_SALT_LEN]);
                derive(master.key(), master.salt(), salt_label, &mut salt[..])?;
                let algorithm = if profile == SrtpProfile::AeadAes128Gcm {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let key = UnboundKey::new(algorithm, enc_key).map_err(|_| SrtpError::Crypto)?;
                Ok(SessionCipher::Gcm {
                    aead: LessSafeKey::new(key),
                    salt,
                })
            }
        }
    }

    /// Test hook: builds a cipher from session keys directly (the RFC 7714 vectors give
    /// session keys, not master keys).
    #[cfg(test)]
    pub(crate) fn gcm_from_session(key: &[u8], salt: &[u8; GCM_SALT_LEN]) -> Self {
        let algorithm = if key.len() == 16 {
            &aead::AES_128_GCM
        } else {
            &aead::AES_256_GCM
        };
        SessionCipher::Gcm {
            aead: LessSafeKey::new(UnboundKey::new(algorithm, key).unwrap()),
            salt: Zeroizing::new(*salt),
        }
    }

    /// Encrypts and authenticates the RTP packet `buf[..len]` whose payload starts at
    /// `header_len`, with rollover counter `roc`, appending the tag. The caller checked that
    /// `buf` has room for the tag. Returns the SRTP length.
    pub(crate) fn protect_rtp(
        &self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
        ssrc: u32,
        roc: u32,
        seq: u16,
    ) -> Result<usize, SrtpError> {
        match self {
            SessionCipher::Cm(cm) => {
                let CmKeys {
                    ctr,
                    auth,
                    salt,
                    tag_len,
                } = &**cm;
                let index = super::replay::packet_index(roc, seq);
                let payload = buf.get_mut(header_len..len).ok_or(SrtpError::Malformed)?;
                cm_xor(ctr, salt, ssrc, index, payload)?;
                let tag = hmac_sha1(
                    auth,
                    buf.get(..len).ok_or(SrtpError::Malformed)?,
                    &roc.to_be_bytes(),
                );
                let out = buf
                    .get_mut(len..len + tag_len)
                    .ok_or(SrtpError::BufferTooSmall)?;
                out.copy_from_slice(&tag.as_ref()[..*tag_len]);
                Ok(len + tag_len)
            }
            SessionCipher::Gcm { aead, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(header_len.min(len));
                let payload = rest
                    .get_mut(..len - header.len())
                    .ok_or(SrtpError::Malformed)?;
                // RFC 7714 §9.2: the AAD is the RTP header, CSRCs and extension included.
                let tag = aead
                    .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
                    .map_err(|_| SrtpError::Crypto)?;
                let out = buf
                    .get_mut(len..len + GCM_TAG_LEN)
                    .ok_or(SrtpError::BufferTooSmall)?;
                out.copy_from_slice(tag.as_ref());
                Ok(len + GCM_TAG_LEN)
            }
        }
    }

    /// Verifies and decrypts the SRTP packet in `packet` (header + encrypted payload in
    /// `packet[..auth_len]`, tag after it), with the estimated rollover counter `roc`.
    /// On success `packet[..auth_len]` holds the RTP packet.
    ///
    /// With CM nothing is written unless the tag verified; with GCM a failed packet's
    /// payload bytes are unspecified (aws-lc may have decrypted them): drop it either way.
    pub(crate) fn unprotect_rtp(
        &self,
        packet: &mut [u8],
        auth_len: usize,
        header_len: usize,
        ssrc: u32,
        roc: u32,
        seq: u16,
    ) -> Result<(), SrtpError> {
        match self {
            SessionCipher::Cm(cm) => {
                let CmKeys {
                    ctr,
                    auth,
                    salt,
                    tag_len,
                } = &**cm;
                let (authenticated, tag) = packet.split_at_mut(auth_len.min(packet.len()));
                let tag = tag.get(..*tag_len).ok_or(SrtpError::Malformed)?;
                // RFC 3711 §4.2: the tag covers the authenticated portion || ROC.
                let expected = hmac_sha1(auth, authenticated, &roc.to_be_bytes());
                verify_slices_are_equal(&expected.as_ref()[..*tag_len], tag)
                    .map_err(|_| SrtpError::AuthenticationFailed)?;
                let index = super::replay::packet_index(roc, seq);
                let payload = authenticated
                    .get_mut(header_len..)
                    .ok_or(SrtpError::Malformed)?;
                cm_xor(ctr, salt, ssrc, index, payload)
            }
            SessionCipher::Gcm { aead, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (header, rest) = packet.split_at_mut(header_len.min(packet.len()));
                let ct_len = auth_len
                    .checked_sub(header.len())
                    .ok_or(SrtpError::Malformed)?;
                if rest.len() < ct_len + GCM_TAG_LEN {
                    return Err(SrtpError::Malformed);
                }
                let (ciphertext, tag) = rest.split_at_mut(ct_len);
                aead.open_in_place_separate_tag(
                    nonce,
                    Aad::from(&*header),
                    &tag[..GCM_TAG_LEN],
                    ciphertext,
                )
                .map_err(|_| SrtpError::AuthenticationFailed)?;
                Ok(())
            }
        }
    }

    /// Encrypts (E=1) and authenticates the RTCP compound packet `buf[..len]` with SRTCP
    /// index `index` (31 bits), appending E||index and the tag in the order of RFC 3711
    /// §3.4 (CM: index then tag) or RFC 7714 §9.3 (GCM: tag then index). The caller checked
    /// `len >= 8` and the room for the trailer. Returns the SRTCP length.
    pub(crate) fn protect_rtcp(
        &self,
        buf: &mut [u8],
        len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, SrtpError> {
        let e_index = (index | 0x8000_0000).to_be_bytes();
        match self {
            SessionCipher::Cm(cm) => {
                let CmKeys {
                    ctr,
                    auth,
                    salt,
                    tag_len,
                } = &**cm;
                let body = buf
                    .get_mut(RTCP_CLEAR_LEN..len)
                    .ok_or(SrtpError::Malformed)?;
                cm_xor(ctr, salt, ssrc, u64::from(index), body)?;
                buf.get_mut(len..len + SRTCP_INDEX_LEN)
                    .ok_or(SrtpError::BufferTooSmall)?
                    .copy_from_slice(&e_index);
                let authenticated_len = len + SRTCP_INDEX_LEN;
                let tag = hmac_sha1(auth, &buf[..authenticated_len], &[]);
                buf.get_mut(authenticated_len..authenticated_len + tag_len)
                    .ok_or(SrtpError::BufferTooSmall)?
                    .copy_from_slice(&tag.as_ref()[..*tag_len]);
                Ok(authenticated_len + tag_len)
            }
            SessionCipher::Gcm { aead, salt } => {
                let nonce = gcm_rtcp_nonce(salt, ssrc, index);
                let (header, rest) = buf.split_at_mut(RTCP_CLEAR_LEN);
                let body = rest
                    .get_mut(..len - RTCP_CLEAR_LEN)
                    .ok_or(SrtpError::Malformed)?;
                // RFC 7714 §9.3 (encrypted): AAD = first 8 octets || E||SRTCP index.
                let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                aad[..RTCP_CLEAR_LEN].copy_from_slice(header);
                aad[RTCP_CLEAR_LEN..].copy_from_slice(&e_index);
                let tag = aead
                    .seal_in_place_separate_tag(nonce, Aad::from(&aad), body)
                    .map_err(|_| SrtpError::Crypto)?;
                buf.get_mut(len..len + GCM_TAG_LEN)
                    .ok_or(SrtpError::BufferTooSmall)?
                    .copy_from_slice(tag.as_ref());
                buf.get_mut(len + GCM_TAG_LEN..len + GCM_TAG_LEN + SRTCP_INDEX_LEN)
                    .ok_or(SrtpError::BufferTooSmall)?
                    .copy_from_slice(&e_index);
                Ok(len + GCM_TAG_LEN + SRTCP_INDEX_LEN)
            }
        }
    }

    /// Reads the E flag and SRTCP index of an SRTCP packet without verifying anything.
    /// `None` if the packet is too short for the trailer.
    pub(crate) fn rtcp_e_index(&self, packet: &[u8]) -> Option<(bool, u32)> {
        let trailer = match self {
            SessionCipher::Cm(cm) => SRTCP_INDEX_LEN + cm.tag_len,
            SessionCipher::Gcm { .. } => SRTCP_INDEX_LEN + GCM_TAG_LEN,
        };
        let body_len = packet.len().checked_sub(trailer)?;
        if body_len < RTCP_CLEAR_LEN {
            return None;
        }
        let at = match self {
            SessionCipher::Cm(_) => body_len,
            SessionCipher::Gcm { .. } => packet.len() - SRTCP_INDEX_LEN,
        };
        let word = u32::from_be_bytes(packet.get(at..at + 4)?.try_into().ok()?);
        Some((word & 0x8000_0000 != 0, word & 0x7fff_ffff))
    }

    /// Verifies and (if E is set) decrypts an SRTCP packet; returns the RTCP length. The
    /// caller got `(encrypted, index)` from [`SessionCipher::rtcp_e_index`].
    pub(crate) fn unprotect_rtcp(
        &self,
        packet: &mut [u8],
        ssrc: u32,
        encrypted: bool,
        index: u32,
    ) -> Result<usize, SrtpError> {
        match self {
            SessionCipher::Cm(cm) => {
                let CmKeys {
                    ctr,
                    auth,
                    salt,
                    tag_len,
                } = &**cm;
                let authenticated_len = packet
                    .len()
                    .checked_sub(*tag_len)
                    .ok_or(SrtpError::Malformed)?;
                let rtcp_len = authenticated_len
                    .checked_sub(SRTCP_INDEX_LEN)
                    .filter(|l| *l >= RTCP_CLEAR_LEN)
                    .ok_or(SrtpError::Malformed)?;
                let (authenticated, tag) = packet.split_at_mut(authenticated_len);
                // RFC 3711 §3.4: the tag covers the RTCP packet || E||index.
                let expected = hmac_sha1(auth, authenticated, &[]);
                verify_slices_are_equal(&expected.as_ref()[..*tag_len], tag)
                    .map_err(|_| SrtpError::AuthenticationFailed)?;
                if encrypted {
                    cm_xor(
                        ctr,
                        salt,
                        ssrc,
                        u64::from(index),
                        &mut authenticated[RTCP_CLEAR_LEN..rtcp_len],
                    )?;
                }
                Ok(rtcp_len)
            }
            SessionCipher::Gcm { aead, salt } => {
                let rtcp_len = packet
                    .len()
                    .checked_sub(GCM_TAG_LEN + SRTCP_INDEX_LEN)
                    .filter(|l| *l >= RTCP_CLEAR_LEN)
                    .ok_or(SrtpError::Malformed)?;
                let nonce = gcm_rtcp_nonce(salt, ssrc, index);
                let mut e_index = [0u8; SRTCP_INDEX_LEN];
                e_index.copy_from_slice(&packet[rtcp_len + GCM_TAG_LEN..]);
                let mut tag = [0u8; GCM_TAG_LEN];
                tag.copy_from_slice(&packet[rtcp_len..rtcp_len + GCM_TAG_LEN]);
                if encrypted {
                    // RFC 7714 §9.3: AAD = first 8 octets || E||index.
                    let mut aad = [0u8; RTCP_CLEAR_LEN + SRTCP_INDEX_LEN];
                    aad[..RTCP_CLEAR_LEN].copy_from_slice(&packet[..RTCP_CLEAR_LEN]);
                    aad[RTCP_CLEAR_LEN..].copy_from_slice(&e_index);
                    let (_, rest) = packet.split_at_mut(RTCP_CLEAR_LEN);
                    aead.open_in_place_separate_tag(
                        nonce,
                        Aad::from(&aad),
                        &tag,
                        &mut rest[..rtcp_len - RTCP_CLEAR_LEN],
                    )
                    .map_err(|_| SrtpError::AuthenticationFailed)?;
                } else {
                    // RFC 7714 §9.3 / §17.3 (E=0): the whole RTCP packet || E||index is AAD
                    // and the plaintext is empty. Move the index word next to the packet
                    // (the tag is saved above) so the AAD is one contiguous slice.
                    packet[rtcp_len..rtcp_len + SRTCP_INDEX_LEN].copy_from_slice(&e_index);
                    aead.open_in_place_separate_tag(
                        nonce,
                        Aad::from(&packet[..rtcp_len + SRTCP_INDEX_LEN]),
                        &tag,
                        &mut [],
                    )
                    .map_err(|_| SrtpError::AuthenticationFailed)?;
                }
                Ok(rtcp_len)
            }
        }
    }
}

/// AES-CM encryption of `data` in place (RFC 3711 §4.1.1): IV = (k_s * 2^16) XOR
/// (SSRC * 2^64) XOR (i * 2^16), counter in the low 16 bits. aws-lc increments the whole
/// 128-bit block, which is the same as long as a packet stays under 2^16 blocks (1 MiB).
fn cm_xor(
    key: &EncryptingKey,
    salt: &[u8; CM_SALT_LEN],
    ssrc: u32,
    index: u64,
    data: &mut [u8],
) -> Result<(), SrtpError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut iv = [0u8; 16];
    iv[..CM_SALT_LEN].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    // The 48-bit index occupies bytes 8..14.
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    key.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| SrtpError::Crypto)?;
    Ok(())
}

/// HMAC-SHA1 over `a || b` (RFC 3711 §4.2.1).
fn hmac_sha1(key: &hmac::Key, a: &[u8], b: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(a);
    if !b.is_empty() {
        ctx.update(b);
    }
    ctx.sign()
}

/// RFC 7714 §8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
fn gcm_rtp_nonce(salt: &[u8; GCM_SALT_LEN], ssrc: u32, roc: u32, seq: u16) -> Nonce {
    let mut iv = [0u8; GCM_SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt.iter()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

/// RFC 7714 §9.1: IV = (0x0000 || SSRC || 0x0000 || 0 || SRTCP index) XOR salt.
fn gcm_rtcp_nonce(salt: &[u8; GCM_SALT_LEN], ssrc: u32, index: u32) -> Nonce {
    let mut iv = [0u8; GCM_SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & 0x7fff_ffff).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt.iter()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

#[cfg(test)]
pub(crate) fn test_gcm_rtp_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    *gcm_rtp_nonce(salt, ssrc, roc, seq).as_ref()
}

#[cfg(test)]
pub(crate) fn test_gcm_rtcp_iv(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    *gcm_rtcp_nonce(salt, ssrc, index).as_ref()
}

/// Test hook: AES-CM keystream for the RFC 3711 B.2 / RFC 6188 §7.1 vectors.
#[cfg(test)]
pub(crate) fn test_cm_keystream(key: &[u8], salt: &[u8; 14], out: &mut [u8]) {
    use aws_lc_rs::cipher::AES_256;
    let alg = if key.len() == 16 { &AES_128 } else { &AES_256 };
    let k = EncryptingKey::ctr(UnboundCipherKey::new(alg, key).unwrap()).unwrap();
    out.fill(0);
    cm_xor(&k, salt, 0, 0, out).unwrap();
}
