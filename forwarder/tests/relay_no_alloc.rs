//! Relaying must not allocate per packet: a presenter's packet arriving at the origin,
//! its copies down the relay links, their arrival at a relay node and the viewers' copies
//! there (`fanout_forwarder::sfu` relay links); nor per RTCP packet of the audience
//! summaries: a viewer's receiver report at the node, a child's summary at the origin.
//!
//! Its own test binary so that it can install a counting global allocator. Only
//! allocations made by this thread while `COUNTING` is set are counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::rtcp::{self, ReportBlock};
use fanout_forwarder::sfu::audience::{self, AudienceSummary};
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, LegSecurity, RelayDirection, RelayLinkConfig,
    TrackConfig, TrackKind, MIN_TRANSMIT_BUFFER_LEN,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_in;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const PACKETS: u16 = 2_000;
const CAMERA: [u32; 3] = [0xC1, 0xC2, 0xC3];

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, host], port))
}

/// A leg with a known peer address at `local`.
fn leg(receive: &MasterKey, remote: SocketAddr, local: SocketAddr) -> LegConfig {
    LegConfig {
        name: "srtp".into(),
        security: LegSecurity::Sdes {
            receive_key: receive.clone(),
            send_key: MasterKey::generate(PROFILE),
        },
        remote: Some(remote),
        remote_rtcp: None,
        rtcp_mux: true,
        local: Some(local),
        local_rtcp: None,
    }
}

#[test]
fn relaying_does_not_allocate() {
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) > 0);
    let now = Instant::now();
    let (origin_addr, node_addr) = (addr(1, 40100), addr(2, 40100));
    let presenter = addr(3, 5000);
    let (w, node) = (MeetingId::from("w"), MeetingId::from("w/r1"));
    let mut origin = Forwarder::new(ForwarderConfig::default(), now);
    let mut relay = Forwarder::new(ForwarderConfig::default(), now);
    origin.add_meeting(w.clone()).unwrap();
    relay.add_meeting(node.clone()).unwrap();

    let host = ParticipantId::from("host");
    let host_key = MasterKey::generate(PROFILE);
    origin.add_participant(&w, host.clone()).unwrap();
    let host_leg = origin
        .add_leg(&w, &host, leg(&host_key, presenter, origin_addr))
        .unwrap();
    origin
        .add_track(
            &w,
            &host,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: CAMERA.iter().map(|&s| Ssrc(s)).collect(),
                leg: host_leg,
                clock_rate: None,
                codec: Codec::Opaque,
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
    // The node's link, and three more links from the origin to nodes elsewhere.
    let (down, up) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    relay
        .add_relay_link(
            &node,
            RelayLinkConfig {
                id: "w/r1/up".into(),
                direction: RelayDirection::Upstream,
                local: node_addr,
                remote: origin_addr,
                send_key: up.clone(),
                receive_key: down.clone(),
            },
        )
        .unwrap();
    for i in 1..=4u8 {
        let (send_key, receive_key, remote) = if i == 1 {
            (down.clone(), up.clone(), node_addr)
        } else {
            let k = MasterKey::generate(PROFILE);
            (k.clone(), k, addr(10 + i, 40100))
        };
        origin
            .add_relay_link(
                &w,
                RelayLinkConfig {
                    id: format!("w/r{i}/down"),
                    direction: RelayDirection::Downstream,
                    local: origin_addr,
                    remote,
                    send_key,
                    receive_key,
                },
            )
            .unwrap();
    }
    // Each viewer's address and what it protects its RTCP with.
    let mut viewers = Vec::new();
    for v in 0..3u8 {
        let name = ParticipantId(format!("v{v}"));
        relay.add_participant(&node, name.clone()).unwrap();
        let key = MasterKey::generate(PROFILE);
        relay
            .add_leg(&node, &name, leg(&key, addr(20 + v, 6000), node_addr))
            .unwrap();
        viewers.push((addr(20 + v, 6000), SrtpContext::new(&key)));
    }
    // The node's end as the origin hears it: protects the summaries sent up. (The node's
    // own transmissions to the origin are discarded below, so their SRTCP indices do not
    // collide with these.)
    let mut child = SrtpContext::new(&up);
    let mut summary = AudienceSummary::default();
    summary.loss_buckets[1] = 3;
    summary.fraction_lost_sum = 4;

    let mut sender = SrtpContext::new(&host_key);
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    let mut datagram = vec![0u8; 12 + 1200 + 64];
    let mut relayed = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    let mut rtcp_buf = [0u8; 256];
    let mut copies = 0usize;
    let mut clock = now;
    // One packet on every encoding: origin, links, node, viewers; then a receiver report
    // from one viewer to the node, and a summary from the node's end to the origin.
    let mut step = |seq: u16, copies: &mut usize| {
        clock += Duration::from_millis(1);
        for ssrc in CAMERA {
            datagram.resize(12 + 1200, 0);
            datagram[0] = 0x80;
            datagram[1] = 96;
            datagram[2..4].copy_from_slice(&seq.to_be_bytes());
            datagram[8..12].copy_from_slice(&ssrc.to_be_bytes());
            datagram.resize(12 + 1200 + 64, 0);
            let len = sender.protect_rtp(&mut datagram, 12 + 1200).unwrap();
            origin.handle_datagram(clock, origin_addr, presenter, &mut datagram[..len]);
            while let Some(t) = origin.poll_transmit(&mut buf) {
                *copies += 1;
                if t.destination == node_addr {
                    relayed[..t.len].copy_from_slice(&buf[..t.len]);
                    relay.handle_datagram(clock, node_addr, origin_addr, &mut relayed[..t.len]);
                    while relay.poll_transmit(&mut buf).is_some() {
                        *copies += 1;
                    }
                }
            }
        }
        let (viewer, context) = &mut viewers[usize::from(seq) % 3];
        let block = ReportBlock {
            ssrc: Ssrc(CAMERA[0]),
            fraction_lost: (seq % 7) as u8,
            cumulative_lost: i32::from(seq),
            jitter: 90,
            ..ReportBlock::default()
        };
        let len = rtcp::write_receiver_report(&mut rtcp_buf, Ssrc(0x5000), &[block]).unwrap();
        let len = context.protect_rtcp(&mut rtcp_buf, len).unwrap();
        relay.handle_datagram(clock, node_addr, *viewer, &mut rtcp_buf[..len]);
        while relay.poll_transmit(&mut buf).is_some() {}
        let entries = [(Ssrc(CAMERA[0]), summary)];
        let len = audience::write_summaries(&mut rtcp_buf, Ssrc(0x77), &entries).unwrap();
        let len = child.protect_rtcp(&mut rtcp_buf, len).unwrap();
        origin.handle_datagram(clock, origin_addr, node_addr, &mut rtcp_buf[..len]);
        // The first packet heard over the link makes the origin announce again.
        while let Some(t) = origin.poll_transmit(&mut buf) {
            if t.destination == node_addr {
                relayed[..t.len].copy_from_slice(&buf[..t.len]);
                relay.handle_datagram(clock, node_addr, origin_addr, &mut relayed[..t.len]);
                while relay.poll_transmit(&mut buf).is_some() {}
            }
        }
    };
    // Warm up: the announcement crosses, the node creates its tracks and the viewers'
    // subscriptions, each SRTP context meets its SSRCs.
    for seq in 0..50 {
        step(seq, &mut copies);
    }
    assert!(copies > 0);
    copies = 0;
    let n = allocations_in(|| {
        for seq in 50..50 + PACKETS {
            step(seq, &mut copies);
        }
    });
    // Per packet: 4 link copies at the origin, 1 viewer copy per viewer at the node
    // (each takes the top encoding: one in three packets).
    assert_eq!(
        copies,
        usize::from(PACKETS) * 3 * 4 + usize::from(PACKETS) * 3
    );
    assert_eq!(n, 0, "{n} allocations for {copies} copies");
    // The reports and summaries were taken, not dropped.
    let camera = origin.track_id(&w, &host, "camera").unwrap();
    assert_eq!(origin.track_audience(camera).unwrap().receivers(), 3);
    let relayed = relay
        .track_id(&node, &ParticipantId::from("w/r1/up"), "host/camera")
        .unwrap();
    assert_eq!(relay.track_audience(relayed).unwrap().receivers(), 3);
    assert_eq!(origin.total_drops().total(), 0);
    assert_eq!(relay.total_drops().total(), 0);
}
