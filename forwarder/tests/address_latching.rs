//! Remote addresses are learned only from authenticated packets ("comedia"), follow a
//! peer that moves to a new address, and are never moved by unauthenticated packets.

mod common;

use std::net::SocketAddr;

use common::Scenario;
use fanout_forwarder::sfu::{AddressKind, DropReason, Event};
use fanout_forwarder::srtp::SrtpProfile;

#[test]
fn learns_and_relearns_only_from_authenticated_packets() {
    let mut s = Scenario::new(SrtpProfile::AesCm128HmacSha1_80, 2);
    let first: SocketAddr = "198.51.100.7:6000".parse().unwrap();
    let attacker: SocketAddr = "203.0.113.66:6666".parse().unwrap();
    let moved: SocketAddr = "198.51.100.99:6100".parse().unwrap();
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), None);

    // An attacker without the key sends a forged packet with the publisher's SSRC first.
    let mut forged = s.publisher.rtp(s.track_ssrc, 1, 0, b"x");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(s.deliver(attacker, forged).is_empty());
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), None);
    assert_eq!(
        s.forwarder
            .unattributed_drops()
            .get(DropReason::UnknownSource),
        1
    );

    // The real publisher's first packet teaches the forwarder its address.
    assert_eq!(s.publish(2, 3000, b"hello").len(), 2);
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(first));
    assert_eq!(
        s.forwarder.poll_event(),
        Some(Event::RemoteAddressLearned {
            meeting: s.meeting.clone(),
            participant: "alice".into(),
            leg: "main".into(),
            kind: AddressKind::Rtp,
            address: first,
            previous: None,
        })
    );

    // A replay of a genuine packet from another address moves nothing.
    let packet = s.publisher.rtp(s.track_ssrc, 3, 6000, b"again");
    assert_eq!(s.deliver(first, packet.clone()).len(), 2);
    assert!(s.deliver(attacker, packet).is_empty());
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(first));

    // The publisher switches networks: its next authenticated packet moves the leg.
    let packet = s.publisher.rtp(s.track_ssrc, 4, 9000, b"moved");
    assert_eq!(s.deliver(moved, packet).len(), 2);
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(moved));
    assert!(matches!(
        s.forwarder.poll_event(),
        Some(Event::RemoteAddressLearned { address, previous: Some(p), .. }) if address == moved && p == first
    ));
    // A forged packet from the old address cannot pull the leg back...
    let mut forged = s.publisher.rtp(s.track_ssrc, 5, 12000, b"forged");
    forged[13] ^= 1;
    assert!(s.deliver(first, forged).is_empty());
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(moved));
    // ...but the publisher itself can (it went back to its first network).
    let packet = s.publisher.rtp(s.track_ssrc, 6, 15000, b"back");
    assert_eq!(s.deliver(first, packet).len(), 2);
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(first));
}

/// A peer that sends each stream from its own port (as FFmpeg does) keeps one leg: the
/// second port is added, the leg does not flap between the two.
#[test]
fn streams_from_several_ports_share_one_leg() {
    use common::TrackSetup;
    use fanout_forwarder::ids::Ssrc;
    let (a, b) = (Ssrc(0xA), Ssrc(0xB));
    let mut s = Scenario::with_track(
        SrtpProfile::AesCm128HmacSha1_80,
        1,
        TrackSetup {
            encodings: vec![a, b],
            ..TrackSetup::default()
        },
    );
    let port_a: SocketAddr = "198.51.100.7:6000".parse().unwrap();
    let port_b: SocketAddr = "198.51.100.7:6002".parse().unwrap();
    for i in 0..20u16 {
        let pa = s.publisher.rtp(a, i, 0, b"low");
        s.deliver(port_a, pa);
        let pb = s.publisher.rtp(b, 1000 + i, 0, b"high");
        // The subscription follows the highest encoding by default.
        assert_eq!(s.deliver(port_b, pb).len(), 1);
    }
    assert_eq!(s.forwarder.leg_remote(s.publisher.leg), Some(port_a));
    let learned = std::iter::from_fn(|| s.forwarder.poll_event())
        .filter(|e| matches!(e, Event::RemoteAddressLearned { .. }))
        .count();
    assert_eq!(learned, 1, "one address learned, no flapping");
    let stats = s.forwarder.leg_stats(s.publisher.leg).unwrap();
    assert_eq!(stats.rtp_in.packets, 40);
    assert_eq!(stats.drops.total(), 0);
}
