//! RTCP the forwarder originates and relays: publishers' sender reports reach each
//! subscriber rewritten for its subscription, publishers get receiver reports about what
//! the forwarder receives, and subscribers' report blocks give their round-trip time.

mod common;

use std::time::Duration;

use common::Scenario;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::{self, RtcpPacket, SenderInfo};
use fanout_forwarder::srtp::SrtpProfile;

fn srtcp(peer: &mut common::Peer, write: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let len = write(&mut buf);
    let len = peer.sender.protect_rtcp(&mut buf, len).unwrap();
    buf.truncate(len);
    buf
}

/// The publisher sends the forwarder an SR about its track; what the forwarder sends in
/// answer is left in `s.rtcp` (cleared first).
fn deliver_sender_report(s: &mut Scenario, info: &SenderInfo) {
    let ssrc = s.track_ssrc;
    let sr = srtcp(&mut s.publisher, |b| {
        rtcp::write_sender_report(b, ssrc, info, &[]).unwrap()
    });
    s.rtcp.clear();
    let publisher = s.publisher.address;
    s.deliver(publisher, sr);
}

#[test]
fn sender_reports_are_rewritten_and_receiver_reports_generated() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut s = Scenario::new(profile, 0);
    let (viewer, _) = s.add_subscriber_with(profile, 0, Some(Ssrc(0x7777)), None);
    for i in 0..10u16 {
        s.publish(100 + i, 1000 + u32::from(i) * 3000, &[0u8; 500]);
        s.advance(Duration::from_millis(10));
    }

    // The publisher's SR: the viewer gets it with its own SSRC and packet counts.
    let track_ssrc = s.track_ssrc;
    let info = SenderInfo {
        ntp_timestamp: 0xE000_0000_8000_0000,
        rtp_timestamp: 31_000,
        packet_count: 12345,
        octet_count: 999_999,
    };
    deliver_sender_report(&mut s, &info);
    let publisher = s.publisher.address;
    let viewer_addr = s.subscribers[viewer].address;
    let (to, relayed) = s.rtcp.pop().expect("the SR is relayed");
    assert_eq!(to, viewer_addr);
    assert_eq!(rtcp::validate(&relayed), Ok(2), "SR + SDES");
    match rtcp::iter_compound(&relayed).next() {
        Some(Ok(RtcpPacket::SenderReport(sr))) => {
            assert_eq!(sr.sender_ssrc, Ssrc(0x7777));
            assert_eq!(sr.ntp_timestamp, info.ntp_timestamp);
            // The first source keeps its numbering, so the timestamp is unchanged.
            assert_eq!(sr.rtp_timestamp, 31_000);
            assert_eq!(sr.packet_count, 10);
            assert_eq!(sr.octet_count, 10 * 500);
        }
        other => panic!("expected an SR, got {other:?}"),
    }

    // A second later the publisher gets a receiver report about its stream, echoing the SR.
    s.advance(Duration::from_millis(1000));
    s.drain();
    let to_publisher: Vec<Vec<u8>> = s
        .rtcp
        .iter()
        .filter(|(to, _)| *to == publisher)
        .map(|(_, p)| p.clone())
        .collect();
    let rr = to_publisher
        .iter()
        .find(|p| {
            matches!(
                rtcp::iter_compound(p).next(),
                Some(Ok(RtcpPacket::ReceiverReport(_)))
            )
        })
        .expect("a receiver report to the publisher");
    match rtcp::iter_compound(rr).next() {
        Some(Ok(RtcpPacket::ReceiverReport(rr))) => {
            let blocks: Vec<_> = rr.report_blocks().collect();
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].ssrc, track_ssrc);
            assert_eq!(blocks[0].extended_highest_seq, 109);
            assert_eq!(blocks[0].cumulative_lost, 0);
            assert_eq!(
                blocks[0].last_sr, 0x0000_8000,
                "middle 32 bits of the NTP time"
            );
            // 1 s since the SR, in 1/65536 s.
            assert!((i64::from(blocks[0].delay_since_last_sr) - 65536).abs() < 700);
        }
        other => panic!("expected an RR, got {other:?}"),
    }

    // The viewer's report echoes our SR, which it says it held for 40 ms, and arrives
    // 1.1 s after we sent that SR: the round trip is 1.1 s - 0.04 s = 1.06 s.
    s.advance(Duration::from_millis(100));
    let block = rtcp::ReportBlock {
        ssrc: Ssrc(0x7777),
        fraction_lost: 64,
        cumulative_lost: 3,
        extended_highest_seq: 109,
        jitter: 900,
        last_sr: 0x0000_8000,
        delay_since_last_sr: 65536 / 25,
    };
    let rr = srtcp(&mut s.subscribers[viewer], |b| {
        rtcp::write_receiver_report(b, Ssrc(0xABCD), &[block]).unwrap()
    });
    s.deliver(viewer_addr, rr);
    let stats = s.forwarder.leg_stats(s.subscribers[viewer].leg).unwrap();
    assert_eq!(stats.reported_fraction_lost, 64);
    assert!((stats.reported_jitter_seconds - 0.01).abs() < 1e-9);
    assert!(
        (stats.round_trip_seconds - 1.06).abs() < 0.002,
        "{}",
        stats.round_trip_seconds
    );
}

/// A sender report reaches every subscription however many there are: it is relayed
/// lazily, like media, not through the bounded RTCP queue.
#[test]
fn a_sender_report_reaches_every_subscriber_of_a_large_meeting() {
    let mut s = Scenario::new(SrtpProfile::AeadAes128Gcm, 600);
    s.publish(1, 0, b"media");
    let info = SenderInfo {
        ntp_timestamp: 1 << 40,
        rtp_timestamp: 0,
        packet_count: 1,
        octet_count: 5,
    };
    deliver_sender_report(&mut s, &info);
    let mut reached: Vec<_> = s.rtcp.iter().map(|(to, _)| *to).collect();
    reached.sort();
    reached.dedup();
    assert_eq!(reached.len(), 600);
}

/// Relayed sender reports are paced to what the subscriber receives (RFC 3550 §6.2): a
/// publisher's SR every second reaches a viewer of a trickle of media every 5 s, and a
/// viewer of a full-rate stream every time.
#[test]
fn sender_reports_are_paced_to_what_the_subscriber_receives() {
    let count_srs = |payload: usize| {
        let mut s = Scenario::new(SrtpProfile::AeadAes128Gcm, 1);
        let viewer = s.subscribers[0].address;
        let mut relayed = 0;
        for second in 0..10u16 {
            // 100 packets a second, of `payload` bytes.
            for i in 0..100u16 {
                let seq = second * 100 + i;
                s.publish(seq, u32::from(seq) * 900, &vec![0u8; payload]);
                s.advance(Duration::from_millis(10));
            }
            let info = SenderInfo {
                ntp_timestamp: (u64::from(second) + 1) << 32,
                rtp_timestamp: u32::from(second) * 90_000,
                packet_count: u32::from(second) * 100,
                octet_count: 0,
            };
            deliver_sender_report(&mut s, &info);
            relayed += s.rtcp.iter().filter(|(to, _)| *to == viewer).count();
        }
        relayed
    };
    // 100 x 1,200 bytes a second: ~1 Mbit/s, every SR.
    assert_eq!(count_srs(1_200), 10);
    // 100 x 4 bytes a second: 3.2 kbit/s, the first SR and then one per 5 s.
    assert_eq!(count_srs(4), 2);
}

/// Receiver reports reach every publisher of a large meeting each second: the round is
/// produced lazily, not through the bounded RTCP queue.
#[test]
fn every_publisher_gets_its_receiver_report() {
    use std::collections::HashSet;
    const PUBLISHERS: usize = 400;
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut s = Scenario::new(profile, 0);
    let meeting = s.meeting.clone();
    let mut senders = Vec::new();
    for i in 0..PUBLISHERS {
        let id = fanout_forwarder::ids::ParticipantId(format!("p{i}"));
        s.forwarder.add_participant(&meeting, id.clone()).unwrap();
        let (config, receive_key, send_key) = common::leg_config("main", profile, None);
        let leg = s.forwarder.add_leg(&meeting, &id, config).unwrap();
        let ssrc = Ssrc(0x1000 + i as u32);
        s.forwarder
            .add_track(
                &meeting,
                &id,
                fanout_forwarder::sfu::TrackConfig {
                    name: "mic".into(),
                    kind: fanout_forwarder::sfu::TrackKind::Audio,
                    encodings: vec![ssrc],
                    leg,
                    clock_rate: None,
                    codec: Default::default(),
                    audio_level_extension: None,
                    stream_ids: None,
                },
            )
            .unwrap();
        let address = std::net::SocketAddr::from(([10, 9, (i >> 8) as u8, i as u8], 9000));
        let mut sender = fanout_forwarder::srtp::SrtpContext::new(&receive_key);
        let receiver = fanout_forwarder::srtp::SrtpContext::new(&send_key);
        for seq in 0..3u16 {
            let mut p = vec![0u8; 128];
            p[0] = 0x80;
            p[1] = 111;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
            let len = sender.protect_rtp(&mut p, 40).unwrap();
            p.truncate(len);
            s.forwarder
                .handle_datagram(s.now, common::forwarder_addr(), address, &mut p);
        }
        senders.push((address, receiver));
    }
    s.advance(Duration::from_millis(1001));
    let mut buf = vec![0u8; fanout_forwarder::sfu::MIN_TRANSMIT_BUFFER_LEN];
    let mut reported = HashSet::new();
    let by_address: std::collections::HashMap<_, _> = senders
        .iter()
        .enumerate()
        .map(|(i, (a, _))| (*a, i))
        .collect();
    while let Some(t) = s.forwarder.poll_transmit(&mut buf) {
        let Some(&i) = by_address.get(&t.destination) else {
            continue;
        };
        let mut packet = buf[..t.len].to_vec();
        let len = senders[i]
            .1
            .unprotect_rtcp(&mut packet)
            .expect("valid SRTCP");
        if let Some(Ok(RtcpPacket::ReceiverReport(rr))) = rtcp::iter_compound(&packet[..len]).next()
        {
            let block = rr.report_blocks().next().unwrap();
            assert_eq!(block.ssrc, Ssrc(0x1000 + i as u32));
            reported.insert(i);
        }
    }
    assert_eq!(reported.len(), PUBLISHERS);
}
