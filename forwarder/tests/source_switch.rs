//! A subscription re-pointed at another track keeps one continuous stream: the same SSRC,
//! the next sequence number, timestamps that advance with wall-clock time, and nothing
//! from the old source afterwards.

mod common;

use std::time::Duration;

use common::{leg_config, ContinuityChecker, Scenario};
use fanout_forwarder::ids::{ParticipantId, Ssrc};
use fanout_forwarder::sfu::{DropReason, TrackConfig, TrackKind};
use fanout_forwarder::srtp::{SrtpContext, SrtpProfile};

#[test]
fn switching_tracks_keeps_the_subscriber_stream_continuous() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut s = Scenario::new(profile, 0);

    // A second publisher, bob, with his own numbering.
    let bob = ParticipantId::from("bob");
    s.forwarder
        .add_participant(&s.meeting, bob.clone())
        .unwrap();
    let (config, bob_send, _) = leg_config("main", profile, None);
    let bob_leg = s.forwarder.add_leg(&s.meeting, &bob, config).unwrap();
    let bob_ssrc = Ssrc(0xB0B0_B0B0);
    let bob_track = s
        .forwarder
        .add_track(
            &s.meeting,
            &bob,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: vec![bob_ssrc],
                leg: bob_leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
    let mut bob_sender = SrtpContext::new(&bob_send);
    let bob_addr = "198.51.100.8:7000".parse().unwrap();

    // The viewer subscribes to alice with its own SSRC and payload type.
    let (viewer, sub) = s.add_subscriber_with(profile, 0, Some(Ssrc(0x5555)), Some(100));

    let mut checker = ContinuityChecker::default();
    let mut last_ts = 0;
    for i in 0..10u16 {
        let out = s.publish(1000 + i, 50_000 + u32::from(i) * 3000, b"alice");
        assert_eq!(out.len(), 1);
        checker.check(&out[0]);
        assert_eq!(out[0].header.ssrc, Ssrc(0x5555));
        assert_eq!(out[0].header.payload_type, 100);
        assert_eq!(out[0].payload, b"alice");
        last_ts = out[0].header.timestamp;
        s.advance(Duration::from_millis(33));
    }

    s.forwarder.switch_subscription(sub, bob_track).unwrap();
    s.advance(Duration::from_millis(67));
    for i in 0..10u16 {
        let packet = {
            let mut buf = vec![0u8; 200];
            buf[0] = 0x80;
            buf[1] = 96;
            buf[2..4].copy_from_slice(&(40_000 + i).to_be_bytes());
            buf[4..8].copy_from_slice(&(7_000_000 + u32::from(i) * 3000).to_be_bytes());
            buf[8..12].copy_from_slice(&bob_ssrc.0.to_be_bytes());
            buf[12..15].copy_from_slice(b"bob");
            let len = bob_sender.protect_rtp(&mut buf, 15).unwrap();
            buf.truncate(len);
            buf
        };
        let out = s.deliver(bob_addr, packet);
        assert_eq!(out.len(), 1);
        checker.check(&out[0]);
        assert_eq!(
            out[0].header.ssrc,
            Ssrc(0x5555),
            "the SSRC survives the switch"
        );
        assert_eq!(out[0].payload, b"bob");
        if i == 0 {
            // 100 ms after the last packet (33 + 67 ms) at 90 kHz.
            assert_eq!(out[0].header.timestamp, last_ts.wrapping_add(9000));
        }
        s.advance(Duration::from_millis(33));
    }
    assert_eq!(checker.counts[&viewer], 20);

    // Alice keeps sending, but nothing of hers reaches the viewer any more.
    let out = s.publish(1010, 80_000, b"alice");
    assert!(out.is_empty());
    let leg = s.subscribers[viewer].leg;
    assert_eq!(
        s.forwarder
            .leg_stats(leg)
            .unwrap()
            .drops
            .get(DropReason::StaleSource),
        0,
        "alice's packet is not even offered to the viewer: it left her fan-out list"
    );
}
