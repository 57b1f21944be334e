//! Retransmission at 5% random loss on every link, both directions (publisher to
//! forwarder, forwarder to each subscriber, and the NACKs going back): with NACKs from
//! the subscribers answered from the forwarder's packet cache, and the forwarder NACKing
//! its own losses upstream, at least 99.5% of the packets reach every subscriber within two
//! round trips of the whole path. As real peers do, the publisher sends sender reports and
//! the subscribers receiver reports, from which the forwarder learns each leg's round trip
//! and so how soon a repeated NACK deserves a repeated retransmission.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::netem::{Impairments, Link};
use common::{forwarder_addr, Scenario};
use fanout_forwarder::ids::{SeqNo, Ssrc};
use fanout_forwarder::policy::nack::NackGenerator;
use fanout_forwarder::rtcp::{self, RtcpPacket};
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::sfu::MIN_TRANSMIT_BUFFER_LEN;
use fanout_forwarder::srtp::SrtpProfile;

const SUBSCRIBERS: usize = 10;
const PACKETS: u16 = 3000;
/// 150 packets per second: 30 frames of 5 packets.
const PACKET_INTERVAL: Duration = Duration::from_micros(6_667);
const ONE_WAY: Duration = Duration::from_millis(20);
/// The whole path's round trip: publisher to forwarder to subscriber and back.
const PATH_RTT: Duration = Duration::from_millis(80);

fn link(seed: u64) -> Link {
    let seed = seed
        + std::env::var("NACK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
    Link::new(
        Impairments {
            loss: 0.05,
            delay: ONE_WAY,
            jitter: Duration::from_millis(5),
        },
        seed,
    )
}

#[test]
fn nack_recovers_losses_within_two_round_trips() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut s = Scenario::new(profile, SUBSCRIBERS);
    let start = s.now;
    let ssrc = s.track_ssrc;
    let publisher_addr = s.publisher.address;
    let fwd = forwarder_addr();

    let mut up_publisher = link(1);
    let mut down_publisher = link(2);
    let mut down: Vec<Link> = (0..SUBSCRIBERS).map(|i| link(100 + i as u64)).collect();
    let mut up: Vec<Link> = (0..SUBSCRIBERS).map(|i| link(200 + i as u64)).collect();
    let by_address: HashMap<_, _> = s
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.address, i))
        .collect();

    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut sent_packets: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut first_arrival: Vec<HashMap<u16, Instant>> = vec![HashMap::new(); SUBSCRIBERS];
    let mut nackers: Vec<NackGenerator> =
        (0..SUBSCRIBERS).map(|_| NackGenerator::default()).collect();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    let mut next_seq: u16 = 0;
    let mut next_send = start;
    let mut next_nack_tick = start;
    let mut next_report = start;
    // The last SR each subscriber got: compact NTP time and arrival.
    let mut last_sr: Vec<Option<(u32, Instant)>> = vec![None; SUBSCRIBERS];
    let ntp = |at: Instant| -> u64 {
        let since = at.saturating_duration_since(start);
        ((since.as_secs() + 1000) << 32) | ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000)
    };
    let end = start + PACKET_INTERVAL * u32::from(PACKETS) + Duration::from_secs(2);

    let mut now = start;
    while now < end {
        // The publisher sends on schedule.
        if next_seq < PACKETS && now >= next_send {
            let packet = s
                .publisher
                .rtp(ssrc, next_seq, u32::from(next_seq) * 600, &[7u8; 1000]);
            sent_at.insert(next_seq, now);
            sent_packets.insert(next_seq, packet.clone());
            up_publisher.send(now, packet);
            next_seq += 1;
            next_send += PACKET_INTERVAL;
        }
        // Every 500 ms the publisher sends an SR and each subscriber an RR.
        if now >= next_report {
            next_report += Duration::from_millis(500);
            let info = rtcp::SenderInfo {
                ntp_timestamp: ntp(now),
                rtp_timestamp: u32::from(next_seq) * 600,
                packet_count: u32::from(next_seq),
                octet_count: u32::from(next_seq) * 1000,
            };
            let mut packet = vec![0u8; 512];
            let len = rtcp::write_sender_report(&mut packet, ssrc, &info, &[]).unwrap();
            let len = s.publisher.sender.protect_rtcp(&mut packet, len).unwrap();
            packet.truncate(len);
            up_publisher.send(now, packet);
            for i in 0..SUBSCRIBERS {
                let (lsr, dlsr) = last_sr[i].map_or((0, 0), |(lsr, at)| {
                    (
                        lsr,
                        (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32,
                    )
                });
                let block = rtcp::ReportBlock {
                    ssrc,
                    last_sr: lsr,
                    delay_since_last_sr: dlsr,
                    ..Default::default()
                };
                let mut packet = vec![0u8; 512];
                let len =
                    rtcp::write_receiver_report(&mut packet, Ssrc(0x5000 + i as u32), &[block])
                        .unwrap();
                let len = s.subscribers[i]
                    .sender
                    .protect_rtcp(&mut packet, len)
                    .unwrap();
                packet.truncate(len);
                up[i].send(now, packet);
            }
        }
        // Arrivals at the forwarder.
        while let Some(mut d) = up_publisher.receive(now) {
            s.forwarder
                .handle_datagram(now, fwd, publisher_addr, &mut d);
        }
        for (i, l) in up.iter_mut().enumerate() {
            while let Some(mut d) = l.receive(now) {
                let from = s.subscribers[i].address;
                s.forwarder.handle_datagram(now, fwd, from, &mut d);
            }
        }
        s.forwarder.handle_timeout(now);
        while let Some(t) = s.forwarder.poll_transmit(&mut buf) {
            let datagram = buf[..t.len].to_vec();
            if t.destination == publisher_addr {
                down_publisher.send(now, datagram);
            } else {
                down[by_address[&t.destination]].send(now, datagram);
            }
        }
        // Arrivals at the publisher: it answers NACKs with the packets it sent.
        while let Some(mut d) = down_publisher.receive(now) {
            let Ok(len) = s.publisher.receiver.unprotect_rtcp(&mut d) else {
                continue;
            };
            for p in rtcp::iter_compound(&d[..len]).flatten() {
                if let RtcpPacket::TransportFeedback(fb) = p {
                    for seq in fb.lost_sequence_numbers() {
                        if let Some(packet) = sent_packets.get(&seq.0) {
                            up_publisher.send(now, packet.clone());
                        }
                    }
                }
            }
        }
        // Arrivals at the subscribers.
        for i in 0..SUBSCRIBERS {
            while let Some(mut d) = down[i].receive(now) {
                if (200..=207).contains(&d[1]) {
                    let Ok(len) = s.subscribers[i].receiver.unprotect_rtcp(&mut d) else {
                        continue;
                    };
                    if let Some(Ok(RtcpPacket::SenderReport(sr))) =
                        rtcp::iter_compound(&d[..len]).next()
                    {
                        last_sr[i] = Some((sr.compact_ntp(), now));
                    }
                    continue;
                }
                // A retransmission of a packet that was only late is a replay: drop it.
                let Ok(len) = s.subscribers[i].receiver.unprotect_rtp(&mut d) else {
                    continue;
                };
                let header = RtpHeader::parse(&d[..len]).unwrap();
                first_arrival[i].entry(header.sequence.0).or_insert(now);
                nackers[i].on_packet(header.sequence, now);
            }
        }
        // Subscribers NACK what they miss, every 10 ms, as a browser would.
        if now >= next_nack_tick {
            next_nack_tick += Duration::from_millis(10);
            for i in 0..SUBSCRIBERS {
                let mut lost = [SeqNo(0); 64];
                let n = nackers[i].poll(now, ONE_WAY * 2, &mut lost);
                if n == 0 {
                    continue;
                }
                let peer = &mut s.subscribers[i];
                let mut packet = vec![0u8; 512];
                let len = rtcp::write_nack(&mut packet, Ssrc(0x5000 + i as u32), ssrc, &lost[..n])
                    .unwrap();
                let len = peer.sender.protect_rtcp(&mut packet, len).unwrap();
                packet.truncate(len);
                up[i].send(now, packet);
            }
        }
        now += Duration::from_millis(1);
    }

    assert!(up_publisher.lost > 50, "the upstream link did lose packets");
    let deadline = PATH_RTT * 2;
    for (i, arrivals) in first_arrival.iter().enumerate() {
        // The last packets are left out: nothing after them tells a subscriber they are
        // missing (a real stream goes on).
        let measured = PACKETS - 10;
        let in_time = (0..measured)
            .filter(|seq| {
                arrivals
                    .get(seq)
                    .is_some_and(|&at| at.saturating_duration_since(sent_at[seq]) <= deadline)
            })
            .count();
        let late: Vec<(u16, Option<u128>)> = (0..measured)
            .filter_map(|seq| {
                let d = arrivals
                    .get(&seq)
                    .map(|&at| at.saturating_duration_since(sent_at[&seq]));
                (d.is_none_or(|d| d > deadline)).then(|| (seq, d.map(|d| d.as_millis())))
            })
            .collect();
        if std::env::var_os("NACK_DEBUG").is_some() {
            println!("late: {late:?}");
            println!("stats: {:?}", s.forwarder.leg_stats(s.subscribers[i].leg));
            println!("publisher: {:?}", s.forwarder.leg_stats(s.publisher.leg));
        }
        let ratio = in_time as f64 / f64::from(measured);
        let delivered = arrivals.len() as f64 / f64::from(PACKETS);
        println!(
            "subscriber {i}: {:.2}% within {deadline:?}, {:.2}% in all, lost on its link {}",
            ratio * 100.0,
            delivered * 100.0,
            down[i].lost
        );
        assert!(
            ratio >= 0.995,
            "subscriber {i}: only {:.2}% within two round trips",
            ratio * 100.0
        );
    }
    let publisher_leg = s.forwarder.leg_stats(s.publisher.leg).unwrap();
    assert!(publisher_leg.nacks_sent > 0);
    let retransmitted: u64 = s
        .subscribers
        .iter()
        .map(|p| s.forwarder.leg_stats(p.leg).unwrap().retransmitted)
        .sum();
    assert!(retransmitted > 0);
    let rtt = s
        .forwarder
        .leg_stats(s.subscribers[0].leg)
        .unwrap()
        .round_trip_seconds;
    assert!(
        (0.035..0.06).contains(&rtt),
        "subscriber round trip measured: {rtt}"
    );
}
