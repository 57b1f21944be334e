//! Relaying must not allocate per packet: a presenter's packet arriving at the origin,
//! its copies down the relay links, their arrival at a relay node and the viewers' copies
//! there (`fanout_forwarder::sfu` relay links).
//!
//! Its own test binary so that it can install a counting global allocator. Only
//! allocations made by this thread while `COUNTING` is set are counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, RelayDirection, RelayLinkConfig, TrackConfig, TrackKind,
    MIN_TRANSMIT_BUFFER_LEN,
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
        receive_key: receive.clone(),
        send_key: MasterKey::generate(PROFILE),
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
    for v in 0..3u8 {
        let name = ParticipantId(format!("v{v}"));
        relay.add_participant(&node, name.clone()).unwrap();
        relay
            .add_leg(
                &node,
                &name,
                leg(&MasterKey::generate(PROFILE), addr(20 + v, 6000), node_addr),
            )
            .unwrap();
    }

    let mut sender = SrtpContext::new(&host_key);
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    let mut datagram = vec![0u8; 12 + 1200 + 64];
    let mut relayed = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    let mut copies = 0usize;
    let mut clock = now;
    // One packet on every encoding: origin, links, node, viewers.
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
}
