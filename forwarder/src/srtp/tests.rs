//! Published test vectors (RFC 3711 App. B, RFC 6188 §7, RFC 7714 §16-17), replay and
//! tamper behaviour, key parsing, and property tests.
//!
//! The vectors were taken from the RFC texts as reproduced (and cross-checked against
//! each other) in several public SRTP implementations' test suites.

use super::cipher::{test_cm_keystream, test_gcm_rtcp_iv, test_gcm_rtp_iv, SessionCipher};
use super::kdf::{derive, Label};
use super::*;
use proptest::prelude::*;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    let clean: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(clean.len().is_multiple_of(2), "odd hex length");
    clean
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

/// An RTP packet: `csrcs` CSRCs, an RFC 8285 one-byte extension of `ext_words` words,
/// `payload` bytes of payload, and `padding` padding bytes (0 = no P bit).
pub(crate) fn rtp_packet(
    ssrc: u32,
    seq: u16,
    csrcs: u8,
    ext_words: u16,
    payload: usize,
    padding: u8,
) -> Vec<u8> {
    let mut b0 = 0x80 | csrcs;
    if ext_words > 0 {
        b0 |= 0x10;
    }
    if padding > 0 {
        b0 |= 0x20;
    }
    let mut p = vec![b0, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..csrcs {
        p.extend_from_slice(&(0x1000 + u32::from(i)).to_be_bytes());
    }
    if ext_words > 0 {
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&ext_words.to_be_bytes());
        // Well-formed RFC 8285 one-byte elements: one per word, 3 data bytes each.
        for w in 0..ext_words {
            p.push((((w % 14) as u8 + 1) << 4) | 2);
            p.extend_from_slice(&[w as u8, 0xee, seq as u8]);
        }
    }
    p.extend((0..payload).map(|i| (i * 7 + usize::from(seq)) as u8));
    if padding > 0 {
        p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
        p.push(padding);
    }
    p
}

/// A minimal RTCP receiver report from `ssrc` with `extra` words of body.
pub(crate) fn rtcp_packet(ssrc: u32, extra_words: u16) -> Vec<u8> {
    let mut p = vec![0x80, 201];
    p.extend_from_slice(&(1 + extra_words).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..extra_words * 4).map(|i| i as u8));
    p
}

fn key(profile: SrtpProfile, seed: u8) -> MasterKey {
    let len = profile.master_key_len() + profile.master_salt_len();
    let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(31) ^ seed).collect();
    MasterKey::new(profile, &bytes).unwrap()
}

fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + ctx.profile().rtp_trailer_len(), 0);
    let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn protect_rtcp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + ctx.profile().rtcp_trailer_len(), 0);
    let n = ctx.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn unprotect(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtp.to_vec();
    let n = ctx.unprotect_rtp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn unprotect_rtcp(ctx: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtcp.to_vec();
    let n = ctx.unprotect_rtcp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

// ---------------------------------------------------------------------------------------
// RFC 3711 Appendix B
// ---------------------------------------------------------------------------------------

/// RFC 3711 B.2: AES-CM keystream, session key 2B7E..., salt F0F1...FD, SSRC 0, index 0.
#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let mut ks = vec![0u8; 16 * 0xff02];
    test_cm_keystream(&key, &salt, &mut ks);
    assert_eq!(
        ks[..48],
        hex("E03EAD0935C95E80E166B16DD92B4EB4
             D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0")[..]
    );
    assert_eq!(
        ks[16 * 0xfeff..],
        hex("EC8CDF7398607CB0F2D21675EA9EA1E4
             362B7C3C6773516318A077D7FC5073AE
             6A2CC3787889374FBEB4C81B17BA6C44")[..]
    );
}

/// RFC 3711 B.3: key derivation with the AES-128 PRF.
#[test]
fn rfc3711_b3_key_derivation() {
    let mk = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
    let ms = hex("0EC675AD498AFEEBB6960B3AABE6");
    let mut enc = [0u8; 16];
    derive(&mk, &ms, Label::RtpEncryption, &mut enc).unwrap();
    assert_eq!(enc[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
    let mut salt = [0u8; 14];
    derive(&mk, &ms, Label::RtpSalt, &mut salt).unwrap();
    assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
    // The RFC prints 94 octets of the authentication keystream; SRTP uses the first 20.
    let mut auth = [0u8; 94];
    derive(&mk, &ms, Label::RtpAuthentication, &mut auth).unwrap();
    assert_eq!(
        auth[..],
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
             E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25
             6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
        )[..]
    );
}

// ---------------------------------------------------------------------------------------
// RFC 6188 §7
// ---------------------------------------------------------------------------------------

/// RFC 6188 §7.1: AES-256-CM keystream (same IV as RFC 3711 B.2).
#[test]
fn rfc6188_7_1_aes256_cm_keystream() {
    let key = hex("57f82fe3613fd170a85ec93c40b1f0922ec4cb0dc025b58272147cc438944a98");
    let salt: [u8; 14] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfd").try_into().unwrap();
    let mut ks = vec![0u8; 16 * 0xff02];
    test_cm_keystream(&key, &salt, &mut ks);
    assert_eq!(
        ks[..48],
        hex("92bdd28a93c3f52511c677d08b5515a4
             9da71b2378a854f67050756ded165bac
             63c4868b7096d88421b563b8c94c9a31")[..]
    );
    assert_eq!(
        ks[16 * 0xfeff..],
        hex("cea518c90fd91ced9cbb18c078a54711
             3dbc4814f4da5f00a08772b63c6a046d
             6eb246913062a16891433e97dd01a57f")[..]
    );
}

/// RFC 6188 §7.2: key derivation with AES_256_CM_PRF (used by AEAD_AES_256_GCM).
#[test]
fn rfc6188_7_2_aes256_key_derivation() {
    let mk = hex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6");
    let ms = hex("3b04803de51ee7c96423ab5b78d2");
    let mut enc = [0u8; 32];
    derive(&mk, &ms, Label::RtpEncryption, &mut enc).unwrap();
    assert_eq!(
        enc[..],
        hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")[..]
    );
    let mut salt = [0u8; 14];
    derive(&mk, &ms, Label::RtpSalt, &mut salt).unwrap();
    assert_eq!(salt[..], hex("fa31791685ca444a9e07c6c64e93")[..]);
    let mut auth = [0u8; 20];
    derive(&mk, &ms, Label::RtpAuthentication, &mut auth).unwrap();
    assert_eq!(
        auth[..],
        hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05")[..]
    );
}

// ---------------------------------------------------------------------------------------
// RFC 7714 §16 (SRTP) and §17 (SRTCP); the vectors give session key and salt directly.
// ---------------------------------------------------------------------------------------

const GCM_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const GCM_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// "Quid pro quo"
const GCM_SALT: &str = "517569642070726f2071756f";
const GCM_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
                       20646976 69736120 696e2070 61727465 73207472 6573";
const GCM_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
                        4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";
const RTCP_SSRC: u32 = 0x4d61_7273; // "Mars"
const RTCP_INDEX: u32 = 0x5d4;

fn gcm_context(key: &str) -> SrtpContext {
    let salt: [u8; 12] = hex(GCM_SALT).try_into().unwrap();
    let k = hex(key);
    let profile = if k.len() == 16 {
        SrtpProfile::AeadAes128Gcm
    } else {
        SrtpProfile::AeadAes256Gcm
    };
    SrtpContext::with_session_ciphers(
        profile,
        SessionCipher::gcm_from_session(&k, &salt),
        SessionCipher::gcm_from_session(&k, &salt),
    )
}

/// RFC 7714 §16.1 / §17.1: IV construction.
#[test]
fn rfc7714_iv_construction() {
    let salt: [u8; 12] = hex(GCM_SALT).try_into().unwrap();
    assert_eq!(
        test_gcm_rtp_iv(&salt, 0x5501_a0b2, 0, 0xf17b)[..],
        hex("51753c6580c2726f20718414")[..]
    );
    assert_eq!(
        test_gcm_rtcp_iv(&salt, RTCP_SSRC, RTCP_INDEX)[..],
        hex("517524055203726f207170bb")[..]
    );
}

fn check_rtp_vector(key: &str, expected: &str) {
    let plain = hex(GCM_RTP);
    let expected = hex(expected);
    assert_eq!(protect(&mut gcm_context(key), &plain), expected);
    assert_eq!(unprotect(&mut gcm_context(key), &expected).unwrap(), plain);
}

/// RFC 7714 §16.1.1 / §16.1.2: AEAD_AES_128_GCM RTP encryption and decryption.
#[test]
fn rfc7714_16_1_rtp_aes128_gcm() {
    check_rtp_vector(
        GCM_KEY_128,
        "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5
         0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
    );
}

/// RFC 7714 §16.2.1 / §16.2.2: AEAD_AES_256_GCM RTP encryption and decryption.
#[test]
fn rfc7714_16_2_rtp_aes256_gcm() {
    check_rtp_vector(
        GCM_KEY_256,
        "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238
         9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13",
    );
}

fn check_rtcp_vector(key: &str, expected: &str) {
    let plain = hex(GCM_RTCP);
    let expected = hex(expected);
    let mut tx = gcm_context(key);
    tx.set_tx_rtcp_index(RTCP_SSRC, RTCP_INDEX);
    assert_eq!(protect_rtcp(&mut tx, &plain), expected);
    assert_eq!(
        unprotect_rtcp(&mut gcm_context(key), &expected).unwrap(),
        plain
    );
}

/// RFC 7714 §17.1: SRTCP AEAD_AES_128_GCM, encrypted (E=1).
#[test]
fn rfc7714_17_1_rtcp_aes128_gcm() {
    check_rtcp_vector(
        GCM_KEY_128,
        "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
         c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
         45d9eade 800005d4",
    );
}

/// RFC 7714 §17.2: SRTCP AEAD_AES_256_GCM, encrypted (E=1).
#[test]
fn rfc7714_17_2_rtcp_aes256_gcm() {
    check_rtcp_vector(
        GCM_KEY_256,
        "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50
         a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c
         b26ac3be 800005d4",
    );
}

/// RFC 7714 §17.3 / §17.4: SRTCP authenticated but not encrypted (E=0), on receive.
#[test]
fn rfc7714_17_3_17_4_rtcp_unencrypted() {
    for (key, tag) in [
        (GCM_KEY_128, "841dd9683dd78ec92ae58790125f62b3"),
        (GCM_KEY_256, "91db4afbfeee5a978fab4393ed2615fe"),
    ] {
        let plain = hex(GCM_RTCP);
        let mut wire = plain.clone();
        wire.extend(hex(tag));
        wire.extend(hex("000005d4"));
        assert_eq!(unprotect_rtcp(&mut gcm_context(key), &wire).unwrap(), plain);
        // Any bit flip in the authenticated-only body must be caught.
        let mut bad = wire.clone();
        bad[12] ^= 1;
        assert_eq!(
            unprotect_rtcp(&mut gcm_context(key), &bad),
            Err(SrtpError::AuthenticationFailed)
        );
        // So must flipping E: the AAD and the plaintext split change.
        let mut e_flipped = wire.clone();
        let n = e_flipped.len();
        e_flipped[n - 4] ^= 0x80;
        assert!(unprotect_rtcp(&mut gcm_context(key), &e_flipped).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Round trips, ROC, replay, tampering
// ---------------------------------------------------------------------------------------

#[test]
fn round_trip_every_profile_with_csrc_extension_padding() {
    for profile in SrtpProfile::ALL {
        let k = key(profile, 1);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        for (i, (csrcs, ext, payload, pad)) in [
            (0, 0, 0, 0),
            (0, 0, 1, 0),
            (2, 0, 160, 0),
            (0, 3, 1200, 0),
            (15, 255, 1000, 4),
            (1, 1, 17, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let plain = rtp_packet(0xabcd, 100 + i as u16, csrcs, ext, payload, pad);
            let srtp = protect(&mut tx, &plain);
            assert_eq!(srtp.len(), plain.len() + profile.rtp_trailer_len());
            let header_len = crate::rtp::RtpHeader::parse(&plain).unwrap().header_len;
            assert_eq!(
                srtp[..header_len],
                plain[..header_len],
                "header stays clear"
            );
            if payload > 16 {
                assert_ne!(srtp[header_len..plain.len()], plain[header_len..]);
            }
            assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain, "{profile}");
        }
        for words in [0, 1, 50] {
            let plain = rtcp_packet(0x1234, words);
            let srtcp = protect_rtcp(&mut tx, &plain);
            assert_eq!(srtcp.len(), plain.len() + profile.rtcp_trailer_len());
            assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), plain);
        }
    }
}

#[test]
fn rollover_and_retransmission() {
    for profile in SrtpProfile::ALL {
        let k = key(profile, 2);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        let seqs: Vec<u16> = (65530..=65535).chain(0..5).collect();
        let mut held_back = None;
        for &seq in &seqs {
            let srtp = protect(&mut tx, &rtp_packet(7, seq, 0, 0, 50, 0));
            if seq == 65534 {
                held_back = Some(srtp);
                continue;
            }
            unprotect(&mut rx, &srtp).unwrap();
        }
        assert_eq!(rx.rx_roc(7), Some((1, 4)));
        // The held-back packet (ROC 0) arrives late, after the wrap: accepted once.
        let late = held_back.unwrap();
        assert!(unprotect(&mut rx, &late).is_ok());
        assert_eq!(unprotect(&mut rx, &late), Err(SrtpError::Replayed));
        // The sender retransmits an old sequence number after the wrap: it is protected
        // with the estimated ROC 0, so it is byte-identical to the original, and the
        // receiver, which already has that index, flags the duplicate.
        let retransmitted = protect(&mut tx, &rtp_packet(7, 65534, 0, 0, 50, 0));
        assert_eq!(retransmitted, late, "same index, same bytes");
        assert_eq!(unprotect(&mut rx, &retransmitted), Err(SrtpError::Replayed));
        assert_eq!(rx.rx_roc(7), Some((1, 4)));
        // Far past one more wrap.
        for seq in (5..=65535u16).step_by(1000).chain([65535, 0, 1]) {
            let srtp = protect(&mut tx, &rtp_packet(7, seq, 0, 0, 10, 0));
            unprotect(&mut rx, &srtp).unwrap();
        }
        assert_eq!(rx.rx_roc(7), Some((2, 1)));
    }
}

#[test]
fn replay_and_too_old() {
    for profile in SrtpProfile::ALL {
        let k = key(profile, 3);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        let packets: Vec<Vec<u8>> = (0..300u16)
            .map(|s| protect(&mut tx, &rtp_packet(9, 1000 + s, 0, 0, 20, 0)))
            .collect();
        unprotect(&mut rx, &packets[0]).unwrap();
        assert_eq!(unprotect(&mut rx, &packets[0]), Err(SrtpError::Replayed));
        unprotect(&mut rx, &packets[299]).unwrap();
        assert_eq!(unprotect(&mut rx, &packets[100]), Err(SrtpError::TooOld));
        unprotect(&mut rx, &packets[299 - 127]).unwrap();
        assert_eq!(
            unprotect(&mut rx, &packets[299 - 127]),
            Err(SrtpError::Replayed)
        );
        assert_eq!(
            unprotect(&mut rx, &packets[299 - 128]),
            Err(SrtpError::TooOld)
        );

        // Replay protection off: duplicates pass.
        let mut lax = SrtpContext::with_options(
            &k,
            ContextOptions {
                replay_protection: false,
                ..ContextOptions::default()
            },
        );
        unprotect(&mut lax, &packets[5]).unwrap();
        unprotect(&mut lax, &packets[5]).unwrap();

        // SRTCP.
        let rtcp: Vec<Vec<u8>> = (0..200)
            .map(|_| protect_rtcp(&mut tx, &rtcp_packet(9, 6)))
            .collect();
        unprotect_rtcp(&mut rx, &rtcp[0]).unwrap();
        assert_eq!(unprotect_rtcp(&mut rx, &rtcp[0]), Err(SrtpError::Replayed));
        unprotect_rtcp(&mut rx, &rtcp[199]).unwrap();
        assert_eq!(unprotect_rtcp(&mut rx, &rtcp[50]), Err(SrtpError::TooOld));
        unprotect_rtcp(&mut rx, &rtcp[150]).unwrap();
    }
}

#[test]
fn tampering_fails_and_changes_nothing() {
    for profile in SrtpProfile::ALL {
        let k = key(profile, 4);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        let first = protect(&mut tx, &rtp_packet(5, 65535, 1, 2, 100, 0));
        unprotect(&mut rx, &first).unwrap();
        let next = protect(&mut tx, &rtp_packet(5, 0, 1, 2, 100, 0));
        let n = next.len();
        // tag, payload, header (timestamp), CSRC, extension, sequence number
        for pos in [n - 1, n - profile.rtp_trailer_len(), 40, 5, 13, 21, 3] {
            let mut bad = next.clone();
            bad[pos] ^= 0x01;
            let err = unprotect(&mut rx, &bad).unwrap_err();
            assert!(
                matches!(err, SrtpError::AuthenticationFailed | SrtpError::TooOld),
                "{profile} pos {pos}: {err:?}"
            );
            assert_eq!(rx.rx_roc(5), Some((0, 65535)), "ROC unchanged after {pos}");
        }
        // Wrong key entirely.
        let mut other = SrtpContext::new(&key(profile, 99));
        assert_eq!(
            unprotect(&mut other, &next),
            Err(SrtpError::AuthenticationFailed)
        );
        // The genuine packet still goes through, and moves the ROC.
        unprotect(&mut rx, &next).unwrap();
        assert_eq!(rx.rx_roc(5), Some((1, 0)));

        // SRTCP: tag, body, index, E flag, header.
        let srtcp = protect_rtcp(&mut tx, &rtcp_packet(5, 4));
        let n = srtcp.len();
        for pos in [n - 1, 10, n - profile.rtcp_trailer_len(), 1, 6] {
            let mut bad = srtcp.clone();
            bad[pos] ^= 0x80;
            assert!(
                unprotect_rtcp(&mut rx, &bad).is_err(),
                "{profile} rtcp {pos}"
            );
        }
        let idx_pos = if profile.is_aead() { n - 4 } else { n - 14 };
        let mut e_cleared = srtcp.clone();
        e_cleared[idx_pos] &= 0x7f;
        assert_eq!(
            unprotect_rtcp(&mut rx, &e_cleared),
            Err(SrtpError::AuthenticationFailed)
        );
        unprotect_rtcp(&mut rx, &srtcp).unwrap();
    }
}

#[test]
fn truncated_packets_are_malformed() {
    for profile in SrtpProfile::ALL {
        let k = key(profile, 5);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        let srtp = protect(&mut tx, &rtp_packet(1, 1, 3, 2, 0, 0));
        for len in 0..12 + profile.rtp_trailer_len() {
            assert_eq!(
                unprotect(&mut rx, &srtp[..len]),
                Err(SrtpError::Malformed),
                "{profile} len {len}"
            );
        }
        // Long enough for the trailer but the CSRC list / extension no longer fits.
        for len in 12 + profile.rtp_trailer_len()..srtp.len() {
            assert!(unprotect(&mut rx, &srtp[..len]).is_err());
        }
        let srtcp = protect_rtcp(&mut tx, &rtcp_packet(1, 0));
        for len in 0..8 + profile.rtcp_trailer_len() {
            assert_eq!(
                unprotect_rtcp(&mut rx, &srtcp[..len]),
                Err(SrtpError::Malformed)
            );
        }
        // Protect side: short/invalid input and short buffers.
        let mut buf = [0u8; 64];
        assert_eq!(tx.protect_rtp(&mut buf, 11), Err(SrtpError::Malformed));
        assert_eq!(tx.protect_rtp(&mut buf, 65), Err(SrtpError::BufferTooSmall));
        let plain = rtp_packet(1, 2, 0, 0, 10, 0);
        let mut tight = plain.clone();
        assert_eq!(
            tx.protect_rtp(&mut tight, plain.len()),
            Err(SrtpError::BufferTooSmall)
        );
        let mut rtcp = rtcp_packet(1, 0);
        let l = rtcp.len();
        assert_eq!(
            tx.protect_rtcp(&mut rtcp, l),
            Err(SrtpError::BufferTooSmall)
        );
        assert_eq!(tx.protect_rtcp(&mut buf, 7), Err(SrtpError::Malformed));
    }
}

#[test]
fn too_many_ssrcs() {
    let k = key(SrtpProfile::AeadAes128Gcm, 6);
    let opts = ContextOptions {
        max_ssrcs: 2,
        ..ContextOptions::default()
    };
    let mut tx = SrtpContext::with_options(&k, ContextOptions::default());
    let mut rx = SrtpContext::with_options(&k, opts);
    let mut small_tx = SrtpContext::with_options(&k, opts);
    for ssrc in 1..=2 {
        unprotect(&mut rx, &protect(&mut tx, &rtp_packet(ssrc, 1, 0, 0, 5, 0))).unwrap();
        protect(&mut small_tx, &rtp_packet(ssrc, 1, 0, 0, 5, 0));
    }
    let third = protect(&mut tx, &rtp_packet(3, 1, 0, 0, 5, 0));
    assert_eq!(unprotect(&mut rx, &third), Err(SrtpError::TooManySsrcs));
    let mut buf = rtp_packet(3, 1, 0, 0, 5, 0);
    let l = buf.len();
    buf.resize(l + 16, 0);
    assert_eq!(
        small_tx.protect_rtp(&mut buf, l),
        Err(SrtpError::TooManySsrcs)
    );
    // Forged packets of new SSRCs do not take slots.
    let mut rx2 = SrtpContext::with_options(&k, opts);
    let mut forged = third.clone();
    forged[20] ^= 1;
    for _ in 0..5 {
        assert_eq!(
            unprotect(&mut rx2, &forged),
            Err(SrtpError::AuthenticationFailed)
        );
    }
    unprotect(&mut rx2, &protect(&mut tx, &rtp_packet(1, 2, 0, 0, 5, 0))).unwrap();
}

// ---------------------------------------------------------------------------------------
// Keys and profiles
// ---------------------------------------------------------------------------------------

#[test]
fn profile_names_and_sizes() {
    for p in SrtpProfile::ALL {
        assert_eq!(SrtpProfile::from_name(p.name()), Some(p));
        assert_eq!(p.to_string().parse::<SrtpProfile>(), Ok(p));
        assert_eq!(
            SrtpProfile::from_name(&format!("SRTP_{}", p.name())),
            Some(p)
        );
    }
    assert_eq!(
        "NULL".parse::<SrtpProfile>(),
        Err(SrtpError::UnknownProfile)
    );
    use SrtpProfile::*;
    let sizes: Vec<_> = [
        AesCm128HmacSha1_80,
        AesCm128HmacSha1_32,
        AeadAes128Gcm,
        AeadAes256Gcm,
    ]
    .iter()
    .map(|p| {
        (
            p.master_key_len(),
            p.master_salt_len(),
            p.rtp_trailer_len(),
            p.rtcp_trailer_len(),
        )
    })
    .collect();
    assert_eq!(
        sizes,
        vec![
            (16, 14, 10, 14),
            (16, 14, 4, 14),
            (16, 12, 16, 20),
            (32, 12, 16, 20)
        ]
    );
}

#[test]
fn master_key_inline() {
    let p = SrtpProfile::AesCm128HmacSha1_80;
    // RFC 4568 §6.1 example key-params (30 bytes of key||salt).
    let b64 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let k = MasterKey::from_inline(p, &format!("inline:{b64}")).unwrap();
    assert_eq!(k.to_inline(), format!("inline:{b64}"));
    assert!(k.same_material(&MasterKey::from_inline(p, b64).unwrap()));
    assert!(k.same_material(&MasterKey::from_inline(p, &format!("inline:{b64}|2^20")).unwrap()));
    assert!(k.same_material(&MasterKey::from_inline(p, &format!("inline:{b64}|1048576")).unwrap()));
    assert_eq!(
        MasterKey::from_inline(p, &format!("inline:{b64}|2^20|1:4")).unwrap_err(),
        SrtpError::MkiUnsupported
    );
    assert_eq!(
        MasterKey::from_inline(p, &format!("inline:{b64}|1:4")).unwrap_err(),
        SrtpError::MkiUnsupported
    );
    assert_eq!(
        MasterKey::from_inline(p, "inline:not base64!").unwrap_err(),
        SrtpError::InvalidKeyEncoding
    );
    assert_eq!(
        MasterKey::from_inline(p, &format!("inline:{b64}|junk")).unwrap_err(),
        SrtpError::InvalidKeyEncoding
    );
    assert_eq!(
        MasterKey::from_inline(SrtpProfile::AeadAes256Gcm, b64).unwrap_err(),
        SrtpError::InvalidKeyLength {
            expected: 44,
            actual: 30
        }
    );
    // Unpadded base64 is tolerated.
    let g = MasterKey::generate(SrtpProfile::AeadAes128Gcm); // 28 bytes: padded with '='
    let inline = g.to_inline();
    assert!(inline.ends_with('='));
    let unpadded = inline.trim_end_matches('=');
    assert!(g.same_material(&MasterKey::from_inline(g.profile(), unpadded).unwrap()));
    assert!(!g.same_material(&MasterKey::generate(SrtpProfile::AeadAes128Gcm)));
}

#[test]
fn master_key_lengths_and_redaction() {
    for p in SrtpProfile::ALL {
        let len = p.master_key_len() + p.master_salt_len();
        assert!(MasterKey::new(p, &vec![0xAB; len]).is_ok());
        assert_eq!(
            MasterKey::new(p, &vec![0xAB; len - 1]).unwrap_err(),
            SrtpError::InvalidKeyLength {
                expected: len,
                actual: len - 1
            }
        );
        let k = MasterKey::new(p, &vec![0xAB; len]).unwrap();
        let dbg = format!("{k:?}");
        assert!(
            !dbg.to_lowercase().contains("ab, ") && !dbg.contains("171"),
            "{dbg}"
        );
        assert!(dbg.contains("redacted"));
        let ctx = format!("{:?}", SrtpContext::new(&k));
        assert!(
            !ctx.contains("171") && !ctx.to_lowercase().contains("abab"),
            "{ctx}"
        );
        let clone = k.clone();
        assert!(clone.same_material(&k));
        assert!(!clone.same_material(&MasterKey::new(p, &vec![0xAC; len]).unwrap()));
    }
}

#[test]
fn srtcp_index_exhaustion() {
    let k = key(SrtpProfile::AesCm128HmacSha1_80, 7);
    let mut tx = SrtpContext::new(&k);
    let mut rx = SrtpContext::new(&k);
    tx.set_tx_rtcp_index(1, 0x7fff_ffff);
    let last = protect_rtcp(&mut tx, &rtcp_packet(1, 0));
    unprotect_rtcp(&mut rx, &last).unwrap();
    let mut buf = rtcp_packet(1, 0);
    let l = buf.len();
    buf.resize(l + 14, 0);
    assert_eq!(tx.protect_rtcp(&mut buf, l), Err(SrtpError::IndexExhausted));
}

// ---------------------------------------------------------------------------------------
// Property tests: no panics, no forgeries
// ---------------------------------------------------------------------------------------

fn any_profile() -> impl Strategy<Value = SrtpProfile> {
    prop::sample::select(SrtpProfile::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_nor_pass(
        profile in any_profile(),
        mut bytes in prop::collection::vec(any::<u8>(), 0..300),
        rtp_like: bool,
    ) {
        if rtp_like && bytes.len() > 1 {
            bytes[0] = 0x80 | (bytes[0] & 0x3f);
        }
        let k = key(profile, 8);
        let mut rx = SrtpContext::new(&k);
        let mut a = bytes.clone();
        prop_assert!(rx.unprotect_rtp(&mut a).is_err());
        let mut b = bytes.clone();
        prop_assert!(rx.unprotect_rtcp(&mut b).is_err());
        // Protect must not panic either, whatever the length claims.
        let mut c = bytes.clone();
        c.resize(bytes.len() + 20, 0);
        let _ = rx.protect_rtp(&mut c, bytes.len());
        let _ = rx.protect_rtcp(&mut c, bytes.len());
        let _ = rx.protect_rtp(&mut c, bytes.len() + 21);
    }

    #[test]
    fn mutated_packets_never_pass(
        profile in any_profile(),
        csrcs in 0u8..4, ext in 0u16..4, payload in 0usize..200,
        seq: u16,
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        truncate in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let k = key(profile, 9);
        let mut tx = SrtpContext::new(&k);
        let mut rx = SrtpContext::new(&k);
        let srtp = protect(&mut tx, &rtp_packet(42, seq, csrcs, ext, payload, 0));
        let srtcp = protect_rtcp(&mut tx, &rtcp_packet(42, ext));
        for good in [&srtp, &srtcp] {
            let mut bad = good.clone();
            for (at, x) in &flips {
                let i = at.index(bad.len());
                bad[i] ^= x;
            }
            if let Some(t) = &truncate {
                bad.truncate(t.index(bad.len()));
            }
            if bad == *good {
                continue;
            }
            let mut b1 = bad.clone();
            prop_assert!(rx.unprotect_rtp(&mut b1).is_err());
            let mut b2 = bad.clone();
            prop_assert!(rx.unprotect_rtcp(&mut b2).is_err());
        }
        // The failures changed nothing: the genuine packets still pass.
        prop_assert!(unprotect(&mut rx, &srtp).is_ok());
        prop_assert!(unprotect_rtcp(&mut rx, &srtcp).is_ok());
    }
}
