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
