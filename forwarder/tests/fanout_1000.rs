//! One publisher to 1,000 subscribers through the sans-IO core on a virtual clock: every
//! subscriber receives every packet exactly once, with continuous sequence numbers, its
//! own SSRC-consistent stream, the publisher's payload, and valid SRTP under its own key.

mod common;

use std::time::Duration;

use common::{ContinuityChecker, Scenario};
use fanout_forwarder::srtp::SrtpProfile;

const SUBSCRIBERS: usize = 1000;
const PACKETS: u16 = 120;

fn fan_out(profile: SrtpProfile) {
    let mut s = Scenario::new(profile, SUBSCRIBERS);
    let mut checker = ContinuityChecker::default();
    // Start just below the wrap so the rollover counter (RFC 3711 §3.3.1) is exercised on
    // both legs of the path.
    let first_seq: u16 = 65535 - PACKETS / 2;
    for i in 0..PACKETS {
        let seq = first_seq.wrapping_add(i);
        let ts = 90_000 + u32::from(i) * 3000;
        let payload: Vec<u8> = (0..1000).map(|b| (b as u16 ^ i) as u8).collect();
        let received = s.publish(seq, ts, &payload);
        assert_eq!(received.len(), SUBSCRIBERS, "packet {i}");
        for r in &received {
            checker.check(r);
            assert_eq!(r.header.ssrc, s.track_ssrc);
            assert_eq!(r.header.sequence.0, seq);
            assert_eq!(r.header.timestamp, ts);
            assert_eq!(r.payload, payload);
        }
        s.advance(Duration::from_millis(33));
    }
    for sub in 0..SUBSCRIBERS {
        assert_eq!(
            checker.counts[&sub],
            usize::from(PACKETS),
            "subscriber {sub}"
        );
        let stats = s.forwarder.leg_stats(s.subscribers[sub].leg).unwrap();
        assert_eq!(stats.rtp_out.packets, u64::from(PACKETS));
    }
    let publisher = s.forwarder.leg_stats(s.publisher.leg).unwrap();
    assert_eq!(publisher.rtp_in.packets, u64::from(PACKETS));
    assert_eq!(s.forwarder.total_drops().total(), 0);
    let receive = s.forwarder.track_receive_stats(s.track, 0).unwrap();
    // RFC 3550 A.1: the first packet of a source only starts its probation, so the
    // statistics count from the second packet on.
    assert_eq!(receive.received(), u64::from(PACKETS) - 1);
    assert_eq!(receive.expected(), receive.received());
    assert_eq!(receive.cumulative_lost(), 0);
    assert_eq!(
        s.forwarder.leg_remote(s.publisher.leg),
        Some(s.publisher.address)
    );
}

#[test]
fn one_to_a_thousand_aes_gcm_128() {
    fan_out(SrtpProfile::AeadAes128Gcm);
}

#[test]
fn one_to_a_thousand_aes_cm_80() {
    fan_out(SrtpProfile::AesCm128HmacSha1_80);
}

/// More than 2^16 packets: the sequence number wraps on every leg and the subscriber's
/// stream stays continuous past the point where 16-bit comparisons turn around (2^15).
#[test]
fn a_long_stream_stays_continuous_across_wraps() {
    let mut s = Scenario::new(SrtpProfile::AeadAes128Gcm, 2);
    let mut checker = ContinuityChecker::default();
    let packets: u32 = 70_000;
    for i in 0..packets {
        let received = s.publish(i as u16, i.wrapping_mul(3000), b"payload");
        assert_eq!(received.len(), 2, "packet {i}");
        for r in &received {
            checker.check(r);
        }
    }
    assert_eq!(checker.counts[&0], packets as usize);
    assert_eq!(s.forwarder.total_drops().total(), 0);
}
