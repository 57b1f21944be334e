//! Interoperability against webrtc-srtp 0.17 (webrtc-rs), which is known to interoperate
//! with libsrtp: random RTP and RTCP compound packets, both directions, every profile,
//! with sequence numbers crossing the 65535 -> 0 wrap so ROC > 0 is exercised.

use super::tests::{rtcp_packet, rtp_packet};
use super::*;
use ::rtp::header::Header;
use ::rtp::packet::Packet;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use webrtc_srtp::context::Context as Oracle;
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::marshal::Marshal;

fn oracle_profile(p: SrtpProfile) -> ProtectionProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    }
}

fn oracle(key: &MasterKey) -> Oracle {
    Oracle::new(
        key.key(),
        key.salt(),
        oracle_profile(key.profile()),
        None,
        None,
    )
    .unwrap()
}

/// A random RTP packet built with the `rtp` crate: random marker/PT/timestamp, 0-15
/// CSRCs, sometimes RFC 8285 one- or two-byte extensions, sometimes padding.
fn random_rtp(rng: &mut StdRng, ssrc: u32, seq: u16) -> Vec<u8> {
    if rng.gen_ratio(1, 8) {
        // Odd shapes from our own builder: long extensions, explicit padding.
        return rtp_packet(
            ssrc,
            seq,
            rng.gen_range(0..16),
            rng.gen_range(0..40),
            rng.gen_range(0..1300),
            rng.gen_range(0..32),
        );
    }
    let mut header = Header {
        version: 2,
        padding: rng.gen_ratio(1, 6),
        marker: rng.gen(),
        payload_type: rng.gen_range(0..128),
        sequence_number: seq,
        timestamp: rng.gen(),
        ssrc,
        csrc: (0..rng.gen_range(0..16)).map(|_| rng.gen()).collect(),
        ..Default::default()
    };
    match rng.gen_range(0..3) {
        0 => {}
        1 => {
            header.extension = true;
            header.extension_profile = 0xBEDE;
            for id in 1..=rng.gen_range(1..5u8) {
                let len = rng.gen_range(1..=16);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                header.set_extension(id, Bytes::from(data)).unwrap();
            }
        }
        _ => {
            header.extension = true;
            header.extension_profile = 0x1000;
            for id in 1..=rng.gen_range(1..4u8) {
                let len = rng.gen_range(0..=40);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                header.set_extension(id, Bytes::from(data)).unwrap();
            }
        }
    }
    let payload_len = rng.gen_range(0..1300);
    let payload: Vec<u8> = (0..payload_len).map(|_| rng.gen()).collect();
    let packet = Packet {
        header,
        payload: Bytes::from(payload),
    };
    packet.marshal().unwrap().to_vec()
}

/// A random RTCP compound packet: SR or RR first (sender SSRC at bytes 4..8), then 0-3
/// further packets (SDES, BYE, feedback-like) with valid length fields.
fn random_rtcp(rng: &mut StdRng, ssrc: u32) -> Vec<u8> {
    let first_is_sr = rng.gen();
    let reports = rng.gen_range(0..4u8);
    let mut p = Vec::new();
    let body_words: u16 = if first_is_sr { 5 } else { 0 } + 6 * u16::from(reports);
    p.push(0x80 | reports);
    p.push(if first_is_sr { 200 } else { 201 });
    p.extend_from_slice(&(1 + body_words).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..body_words * 4).map(|_| rng.gen::<u8>()));
    for _ in 0..rng.gen_range(0..4) {
        let words: u16 = rng.gen_range(1..30);
        p.push(0x81);
        p.push(rng.gen_range(202..=206));
        p.extend_from_slice(&words.to_be_bytes());
        p.extend((0..words * 4).map(|_| rng.gen::<u8>()));
    }
    p
}

fn ours_protect_rtp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + ctx.profile().rtp_trailer_len(), 0);
    let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn ours_protect_rtcp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + ctx.profile().rtcp_trailer_len(), 0);
    let n = ctx.protect_rtcp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

const PACKETS_PER_STREAM: usize = 300;

/// Sanity check of the generator: webrtc-srtp finds the payload by re-marshalling the
/// parsed header, so the generated headers must round-trip through the `rtp` crate.
#[test]
fn header_len_agrees_with_rtp_crate() {
    use webrtc_util::marshal::{MarshalSize, Unmarshal};
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut bad = 0;
    for i in 0..2000 {
        let p = random_rtp(&mut rng, 1, i);
        let ours = crate::rtp::RtpHeader::parse(&p).unwrap();
        let theirs = Header::unmarshal(&mut &p[..]).unwrap();
        if ours.header_len != theirs.marshal_size() {
            bad += 1;
        }
    }
    assert_eq!(bad, 0);
}

#[test]
fn ours_protect_oracle_unprotect() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for profile in SrtpProfile::ALL {
        for round in 0..3 {
            let key = MasterKey::generate(profile);
            let mut ours = SrtpContext::new(&key);
            let mut theirs = oracle(&key);
            // Two interleaved SSRCs, each starting shortly before the wrap.
            let ssrcs = [rng.gen::<u32>(), rng.gen::<u32>()];
            let mut seqs = [
                65535 - rng.gen_range(0..100u16),
                65535 - rng.gen_range(0..100u16),
            ];
            for i in 0..PACKETS_PER_STREAM * 2 {
                let s = i % 2;
                let plain = random_rtp(&mut rng, ssrcs[s], seqs[s]);
                seqs[s] = seqs[s].wrapping_add(1);
                let srtp = ours_protect_rtp(&mut ours, &plain);
                let back = theirs
                    .decrypt_rtp(&srtp)
                    .unwrap_or_else(|e| panic!("{profile} round {round} packet {i}: {e}"));
                assert_eq!(&back[..], &plain[..], "{profile} packet {i}");

                if i % 7 == 0 {
                    let rtcp = random_rtcp(&mut rng, ssrcs[s]);
                    let srtcp = ours_protect_rtcp(&mut ours, &rtcp);
                    let back = theirs
                        .decrypt_rtcp(&srtcp)
                        .unwrap_or_else(|e| panic!("{profile} rtcp {i}: {e}"));
                    assert_eq!(&back[..], &rtcp[..]);
                }
            }
        }
    }
}

#[test]
fn oracle_protect_ours_unprotect() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for profile in SrtpProfile::ALL {
        for round in 0..3 {
            let key = MasterKey::generate(profile);
            let mut ours = SrtpContext::new(&key);
            let mut theirs = oracle(&key);
            let ssrcs = [rng.gen::<u32>(), rng.gen::<u32>()];
            let mut seqs = [
                65535 - rng.gen_range(0..100u16),
                65535 - rng.gen_range(0..100u16),
            ];
            for i in 0..PACKETS_PER_STREAM * 2 {
                let s = i % 2;
                let plain = random_rtp(&mut rng, ssrcs[s], seqs[s]);
                seqs[s] = seqs[s].wrapping_add(1);
                let srtp = theirs.encrypt_rtp(&plain).unwrap();
                let mut buf = srtp.to_vec();
                let n = ours
                    .unprotect_rtp(&mut buf)
                    .unwrap_or_else(|e| panic!("{profile} round {round} packet {i}: {e}"));
                assert_eq!(&buf[..n], &plain[..], "{profile} packet {i}");

                if i % 7 == 0 {
                    let rtcp = random_rtcp(&mut rng, ssrcs[s]);
                    let srtcp = theirs.encrypt_rtcp(&rtcp).unwrap();
                    let mut buf = srtcp.to_vec();
                    let n = ours
                        .unprotect_rtcp(&mut buf)
                        .unwrap_or_else(|e| panic!("{profile} rtcp {i}: {e}"));
                    assert_eq!(&buf[..n], &rtcp[..]);
                }
            }
        }
    }
}

/// Reordering across the wrap, from the oracle: our receiver must estimate the ROC of
/// late packets (RFC 3711 Appendix A) like libsrtp-compatible senders expect.
#[test]
fn oracle_reordered_across_wrap() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    for profile in SrtpProfile::ALL {
        let key = MasterKey::generate(profile);
        let mut ours = SrtpContext::new(&key);
        let mut theirs = oracle(&key);
        let ssrc = 0x0bad_cafe;
        let mut packets: Vec<(Vec<u8>, Vec<u8>)> = (0..400u16)
            .map(|i| {
                let plain = rtp_packet(ssrc, 65400u16.wrapping_add(i), 0, 0, 100, 0);
                let srtp = theirs.encrypt_rtp(&plain).unwrap().to_vec();
                (plain, srtp)
            })
            .collect();
        // Local shuffles within windows of 16 packets (less than the replay window).
        for chunk in packets.chunks_mut(16).skip(1) {
            for i in (1..chunk.len()).rev() {
                let j = rng.gen_range(0..=i);
                chunk.swap(i, j);
            }
        }
        for (plain, srtp) in &packets {
            let mut buf = srtp.clone();
            let n = ours.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..]);
        }
    }
}

/// The SRTCP index and E flag on the wire: our first index is 0 and E is set.
#[test]
fn srtcp_trailer_layout() {
    for profile in SrtpProfile::ALL {
        let key = MasterKey::generate(profile);
        let mut ours = SrtpContext::new(&key);
        let srtcp = ours_protect_rtcp(&mut ours, &rtcp_packet(1, 2));
        let at = if profile.is_aead() {
            srtcp.len() - 4
        } else {
            srtcp.len() - 14
        };
        assert_eq!(srtcp[at..at + 4], [0x80, 0, 0, 0], "{profile}");
    }
}
