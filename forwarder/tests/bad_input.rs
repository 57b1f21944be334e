//! Malformed, truncated, unauthenticated and replayed packets are dropped and counted,
//! and random bytes never make the core panic.

mod common;

use common::Scenario;
use fanout_forwarder::sfu::DropReason;
use fanout_forwarder::srtp::SrtpProfile;
use proptest::prelude::*;

#[test]
fn every_kind_of_bad_packet_is_dropped_and_counted() {
    let mut s = Scenario::new(SrtpProfile::AeadAes128Gcm, 3);
    let publisher = s.publisher.address;
    // Latch the publisher's address with one good packet.
    assert_eq!(s.publish(10, 0, b"good").len(), 3);
    let leg = s.publisher.leg;
    let drops = |s: &Scenario, r| s.forwarder.leg_stats(leg).unwrap().drops.get(r);

    // Replayed.
    let packet = s.publisher.rtp(s.track_ssrc, 11, 3000, b"once");
    assert_eq!(s.deliver(publisher, packet.clone()).len(), 3);
    assert!(s.deliver(publisher, packet.clone()).is_empty());
    assert_eq!(drops(&s, DropReason::Replayed), 1);

    // Unauthenticated: a flipped bit in the payload.
    let mut tampered = s.publisher.rtp(s.track_ssrc, 12, 6000, b"tampered");
    tampered[14] ^= 0x40;
    assert!(s.deliver(publisher, tampered).is_empty());
    assert_eq!(drops(&s, DropReason::AuthenticationFailed), 1);

    // Truncated: the tag cut off.
    let mut truncated = s.publisher.rtp(s.track_ssrc, 13, 9000, b"truncated");
    truncated.truncate(14);
    assert!(s.deliver(publisher, truncated).is_empty());
    // Malformed: an RTP version-2 first byte with a CSRC count larger than the packet.
    assert!(s
        .deliver(publisher, vec![0x8f, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        .is_empty());
    // Not RTP at all, and STUN.
    assert!(s.deliver(publisher, vec![0x40; 20]).is_empty());
    assert!(s
        .deliver(publisher, vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42])
        .is_empty());
    assert_eq!(drops(&s, DropReason::UnsupportedProtocol), 1);
    let counted = drops(&s, DropReason::Malformed) + drops(&s, DropReason::AuthenticationFailed);
    assert!(
        counted >= 4,
        "truncated and malformed packets counted, got {counted}"
    );

    // An authenticated packet with an SSRC the leg does not publish.
    let stranger = s
        .publisher
        .rtp(fanout_forwarder::ids::Ssrc(0xdead), 1, 0, b"who");
    assert!(s.deliver(publisher, stranger).is_empty());
    assert_eq!(drops(&s, DropReason::UnknownSsrc), 1);

    // Garbage from nowhere is counted forwarder-wide.
    let nowhere = "203.0.113.1:1".parse().unwrap();
    assert!(s.deliver(nowhere, vec![0x80, 96, 0, 0]).is_empty());
    assert!(s.forwarder.unattributed_drops().total() >= 1);

    // And the stream still flows afterwards.
    assert_eq!(s.publish(14, 12000, b"still fine").len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_datagrams_never_panic(
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..1600), 0usize..3, any::<bool>()),
            1..20,
        )
    ) {
        let mut s = Scenario::new(SrtpProfile::AesCm128HmacSha1_80, 2);
        s.publish(1, 0, b"latch");
        for (mut bytes, from, rtp_like) in datagrams {
            if rtp_like && bytes.len() > 1 {
                bytes[0] = 0x80 | (bytes[0] & 0x3f);
            }
            let source = match from {
                0 => s.publisher.address,
                1 => s.subscribers[0].address,
                _ => "203.0.113.9:9".parse().unwrap(),
            };
            prop_assert!(s.deliver(source, bytes).is_empty());
        }
        // Valid traffic still flows.
        prop_assert_eq!(s.publish(2, 3000, b"after").len(), 2);
    }
}
