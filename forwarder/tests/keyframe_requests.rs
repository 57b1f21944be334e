//! Keyframe requests (RFC 4585 PLI, RFC 5104 FIR) from many subscribers reach the
//! publisher coalesced: one PLI per throttle interval, a request during the interval sent
//! when it ends, nothing more once a keyframe has arrived.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::vp8::{self, Vp8Frame};
use common::{Scenario, TrackSetup};
use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::{self, RtcpPacket};
use fanout_forwarder::sfu::TrackKind;
use fanout_forwarder::srtp::SrtpProfile;

const SUBSCRIBERS: usize = 50;

fn plis_to(s: &Scenario, publisher: SocketAddr) -> usize {
    s.rtcp
        .iter()
        .filter(|(to, _)| *to == publisher)
        .filter(|(_, p)| {
            matches!(rtcp::iter_compound(p).next(), Some(Ok(RtcpPacket::PayloadFeedback(fb))) if fb.fmt == 1)
        })
        .count()
}

#[test]
fn subscriber_requests_are_coalesced_and_throttled() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let ssrc = Ssrc(0x51);
    let mut s = Scenario::with_track(
        profile,
        SUBSCRIBERS,
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Vp8,
            encodings: vec![ssrc],
            audio_level_extension: None,
        },
    );
    let publisher = s.publisher.address;
    let frame = |n: u16, keyframe: bool| Vp8Frame {
        picture_id: n,
        tl0_pic_idx: 0,
        temporal: 0,
        layer_sync: false,
        keyframe,
    };
    // A keyframe starts every subscription. (They were added before the publisher was
    // heard from, so there was nobody to ask for it yet.)
    let payload = vp8::payload(&frame(0, true), 0, b"key");
    assert_eq!(s.publish_on(ssrc, 1, 0, true, &payload).len(), SUBSCRIBERS);
    assert_eq!(
        plis_to(&s, publisher),
        0,
        "nobody to ask before the publisher is heard from"
    );
    s.advance(Duration::from_millis(400));
    s.drain();

    // Every subscriber loses a picture and sends a PLI (half of them as FIR) within 50 ms.
    let send_requests = |s: &mut Scenario| {
        for i in 0..SUBSCRIBERS {
            let mut packet = vec![0u8; 128];
            let sender = Ssrc(0x9000 + i as u32);
            let len = if i % 2 == 0 {
                rtcp::write_pli(&mut packet, sender, ssrc).unwrap()
            } else {
                rtcp::write_fir(&mut packet, sender, ssrc, i as u8).unwrap()
            };
            let peer = &mut s.subscribers[i];
            let len = peer.sender.protect_rtcp(&mut packet, len).unwrap();
            packet.truncate(len);
            let from = peer.address;
            s.deliver(from, packet);
            s.advance(Duration::from_millis(1));
        }
    };
    send_requests(&mut s);
    assert_eq!(plis_to(&s, publisher), 1, "50 requests, one PLI");

    // Another burst 100 ms later, inside the 300 ms interval: held back, then sent once
    // when the interval ends.
    s.advance(Duration::from_millis(100));
    send_requests(&mut s);
    s.drain();
    assert_eq!(plis_to(&s, publisher), 1);
    for _ in 0..20 {
        s.advance(Duration::from_millis(10));
        s.drain();
    }
    assert_eq!(
        plis_to(&s, publisher),
        2,
        "the held request goes out after the interval"
    );

    // The keyframe arrives; a burst after it is answered by one PLI, and a keyframe
    // arriving while a request is held cancels it.
    let payload = vp8::payload(&frame(1, true), 0, b"key");
    s.publish_on(ssrc, 2, 3000, true, &payload);
    s.advance(Duration::from_millis(400));
    send_requests(&mut s);
    assert_eq!(plis_to(&s, publisher), 3);
    s.advance(Duration::from_millis(50));
    send_requests(&mut s); // held
    let payload = vp8::payload(&frame(2, true), 0, b"key");
    s.publish_on(ssrc, 3, 6000, true, &payload);
    for _ in 0..50 {
        s.advance(Duration::from_millis(10));
        s.drain();
    }
    assert_eq!(
        plis_to(&s, publisher),
        3,
        "the keyframe answered the held request"
    );

    let received: u64 = s
        .subscribers
        .iter()
        .map(|p| {
            s.forwarder
                .leg_stats(p.leg)
                .unwrap()
                .keyframe_requests_received
        })
        .sum();
    assert_eq!(received, 4 * SUBSCRIBERS as u64);
}
