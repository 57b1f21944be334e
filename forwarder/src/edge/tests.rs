//! The XDP classifier on crafted frames, run in the kernel with `BPF_PROG_TEST_RUN`: every
//! RFC 7983 class, IPv4 and IPv6 (with extension headers), VLAN tags, short and
//! inconsistent headers, fragments, wrong ports, the allowlist, latching and both budgets.
//! Needs root (CAP_BPF); skips loudly where the kernel or the build cannot load it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::layout::{Counter, Verdict};
use super::{EdgeError, GuardOptions, UnknownMedia, XdpGuard};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const PORT: u16 = 40_100;
const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

fn known_v4() -> SocketAddr {
    "10.0.0.2:5004".parse().unwrap()
}

fn known_v6() -> SocketAddr {
    "[fd00::2]:5004".parse().unwrap()
}

/// A guard loaded (not attached) on `lo`, or `None` with a loud message where this
/// machine cannot load BPF programs.
fn guard(options: impl FnOnce(&mut GuardOptions)) -> Option<XdpGuard> {
    let mut o = GuardOptions::new("lo", vec![PORT]);
    options(&mut o);
    match XdpGuard::load(&o) {
        Ok(guard) => Some(guard),
        // scripts/install-deps.sh installs clang: a build without the object is a broken
        // set-up, not a missing kernel feature.
        Err(e @ EdgeError::NotBuilt) => panic!("{e}"),
        Err(e) if is_root() => panic!("cannot load the XDP guard as root: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: cannot load the XDP guard without root: {e}");
            None
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where the frame goes on the way down: extra headers and lengths to corrupt.
#[derive(Clone, Copy, Default)]
struct Shape {
    vlan_tags: usize,
    /// IPv4 flags+fragment offset (host order), or for IPv6 a fragment header's offset
    /// field (with the M flag in bit 0) when `Some`.
    fragment: Option<u16>,
    /// IPv6 hop-by-hop options header before UDP.
    hop_by_hop: bool,
    /// Add to the UDP length field.
    udp_len_delta: i32,
}

fn frame(source: SocketAddr, port: u16, payload: &[u8], shape: Shape) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for _ in 0..shape.vlan_tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
    }
    let udp_len = 8 + payload.len();
    let mut udp = Vec::new();
    udp.extend_from_slice(&source.port().to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&((udp_len as i32 + shape.udp_len_delta) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match source.ip() {
        IpAddr::V4(src) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + udp.len()) as u16;
            let fragment = shape.fragment.unwrap_or(0x4000); // DF
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 1]);
            f.extend_from_slice(&fragment.to_be_bytes());
            f.extend_from_slice(&[64, 17, 0, 0]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&LOCAL_V4.octets());
        }
        IpAddr::V6(src) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut extensions = Vec::new();
            let mut next = 17u8;
            if let Some(offset) = shape.fragment {
                extensions.splice(0..0, [next, 0]);
                extensions.splice(2..2, offset.to_be_bytes());
                extensions.splice(4..4, [0, 0, 0, 7]);
                next = 44;
            }
            if shape.hop_by_hop {
                // Next header, length 0 (8 bytes), PadN of 4 bytes.
                let hop = [next, 0, 1, 4, 0, 0, 0, 0];
                extensions.splice(0..0, hop);
                next = 0;
            }
            let payload_len = (extensions.len() + udp.len()) as u16;
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&payload_len.to_be_bytes());
            f.extend_from_slice(&[next, 64]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&LOCAL_V6.octets());
            f.extend_from_slice(&extensions);
        }
    }
    f.extend_from_slice(&udp);
    f
}

fn rtp() -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44];
    p.extend_from_slice(&[0u8; 100]);
    p
}

fn stun() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(&[7u8; 12]);
    p
}

/// The flood budget is per CPU: keep every run of a test on one.
fn pin_to_one_cpu() {
    let cpu = crate::driver::allowed_cpus().first().copied().unwrap_or(0);
    crate::driver::pin_current_thread(cpu).expect("pin the test thread");
}

fn counts(guard: &XdpGuard) -> Vec<(Verdict, Counter)> {
    guard.counters().expect("counters")
}

/// Run `frame`, check the action and that exactly `verdict`'s counter moved by one packet
/// of the frame's length (plus RedirectXsk never, here: no socket is registered).
#[track_caller]
fn expect(guard: &XdpGuard, frame: &[u8], action: u32, verdict: Verdict) {
    let before = counts(guard);
    let got = guard.run_on(frame).expect("BPF_PROG_TEST_RUN");
    let after = counts(guard);
    assert_eq!(got, action, "action for a frame expected to be {verdict:?}");
    for ((v, b), (_, a)) in before.iter().zip(&after) {
        let (packets, bytes) = if *v == verdict {
            (1, frame.len() as u64)
        } else {
            (0, 0)
        };
        assert_eq!(
            (a.packets - b.packets, a.bytes - b.bytes),
            (packets, bytes),
            "counter {v:?} for a frame expected to be {verdict:?}"
        );
    }
}

#[test]
fn every_rfc7983_class_from_a_known_peer() {
    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v4());
    for first in 0..=255u8 {
        let mut payload = rtp();
        payload[0] = first;
        let media = matches!(first, 0..=3 | 20..=63 | 128..=191);
        let (action, verdict) = if media {
            (XDP_PASS, Verdict::PassKnownPeer)
        } else {
            (XDP_DROP, Verdict::DropNotMedia)
        };
        expect(
            &guard,
            &frame(known_v4(), PORT, &payload, Shape::default()),
            action,
            verdict,
        );
    }
}

#[test]
fn ipv6_vlan_and_extension_headers_are_seen_through() {
    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v6());
    guard.allow(known_v4());
    let unknown_v6: SocketAddr = "[fd00::99]:5004".parse().unwrap();
    for shape in [
        Shape::default(),
        Shape {
            vlan_tags: 1,
            ..Shape::default()
        },
        Shape {
            vlan_tags: 2,
            ..Shape::default()
        },
        Shape {
            hop_by_hop: true,
            ..Shape::default()
        },
    ] {
        expect(
            &guard,
            &frame(known_v6(), PORT, &rtp(), shape),
            XDP_PASS,
            Verdict::PassKnownPeer,
        );
        expect(
            &guard,
            &frame(known_v4(), PORT, &rtp(), shape),
            XDP_PASS,
            Verdict::PassKnownPeer,
        );
        let mut garbage = rtp();
        garbage[0] = 0x47;
        expect(
            &guard,
            &frame(known_v6(), PORT, &garbage, shape),
            XDP_DROP,
            Verdict::DropNotMedia,
        );
        expect(
            &guard,
            &frame(unknown_v6, PORT, &rtp(), shape),
            XDP_DROP,
            Verdict::DropUnknownSource,
        );
    }
}

#[test]
fn other_ports_and_protocols_pass_untouched() {
    let Some(guard) = guard(|_| {}) else { return };
    let stranger: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut garbage = rtp();
    garbage[0] = 0xff;
    expect(
        &guard,
        &frame(stranger, PORT + 1, &garbage, Shape::default()),
        XDP_PASS,
        Verdict::PassNotGuarded,
    );
    expect(
        &guard,
        &frame(stranger, 53, &garbage, Shape::default()),
        XDP_PASS,
        Verdict::PassNotGuarded,
    );
    // TCP to the guarded port number: not UDP, not ours.
    let mut tcp = frame(stranger, PORT, &garbage, Shape::default());
    tcp[14 + 9] = 6;
    expect(&guard, &tcp, XDP_PASS, Verdict::PassNotGuarded);
    // ARP.
    let mut arp = frame(stranger, PORT, &garbage, Shape::default());
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    expect(&guard, &arp, XDP_PASS, Verdict::PassNotGuarded);
}

#[test]
fn short_and_inconsistent_frames() {
    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v4());
    guard.allow(known_v6());
    let whole = frame(known_v4(), PORT, &rtp(), Shape::default());
    // Shorter than IPv4 or UDP headers: nobody can tell the port; the stack drops these
    // itself. (Below an Ethernet header no frame reaches XDP: BPF_PROG_TEST_RUN refuses
    // them as drivers do.)
    for len in [14, 20, 33, 34, 41] {
        expect(&guard, &whole[..len], XDP_PASS, Verdict::PassNotGuarded);
    }
    // A UDP header but no payload byte, or lengths that claim more than there is.
    expect(
        &guard,
        &frame(known_v4(), PORT, &[], Shape::default()),
        XDP_DROP,
        Verdict::DropMalformed,
    );
    expect(&guard, &whole[..42], XDP_DROP, Verdict::DropMalformed);
    expect(&guard, &whole[..60], XDP_DROP, Verdict::DropMalformed);
    // The UDP length may stop short of the IP payload (the stack trims), never before the
    // first payload byte nor beyond the IP payload.
    for (delta, action, verdict) in [
        (-8, XDP_PASS, Verdict::PassKnownPeer),
        (-111, XDP_PASS, Verdict::PassKnownPeer),
        (-112, XDP_DROP, Verdict::DropMalformed),
        (-200, XDP_DROP, Verdict::DropMalformed),
        (1, XDP_DROP, Verdict::DropMalformed),
        (1000, XDP_DROP, Verdict::DropMalformed),
    ] {
        let shape = Shape {
            udp_len_delta: delta,
            ..Shape::default()
        };
        expect(
            &guard,
            &frame(known_v4(), PORT, &rtp(), shape),
            action,
            verdict,
        );
        expect(
            &guard,
            &frame(known_v6(), PORT, &rtp(), shape),
            action,
            verdict,
        );
    }
    // An IPv4 header length below 20 bytes.
    let mut bad_ihl = whole.clone();
    bad_ihl[14] = 0x44;
    expect(&guard, &bad_ihl, XDP_PASS, Verdict::PassNotGuarded);
}

#[test]
fn fragments_to_a_guarded_port_are_dropped() {
    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v4());
    guard.allow(known_v6());
    // IPv4 first fragment (MF), and IPv6 first fragment (offset 0, M flag).
    let first = Shape {
        fragment: Some(0x2000),
        ..Shape::default()
    };
    expect(
        &guard,
        &frame(known_v4(), PORT, &rtp(), first),
        XDP_DROP,
        Verdict::DropFragment,
    );
    let first6 = Shape {
        fragment: Some(0x0001),
        ..Shape::default()
    };
    expect(
        &guard,
        &frame(known_v6(), PORT, &rtp(), first6),
        XDP_DROP,
        Verdict::DropFragment,
    );
    // Later fragments carry no UDP header: no port to match, the stack gets them (and
    // cannot reassemble without the first).
    let later = Shape {
        fragment: Some(0x0010),
        ..Shape::default()
    };
    expect(
        &guard,
        &frame(known_v4(), PORT, &rtp(), later),
        XDP_PASS,
        Verdict::PassNotGuarded,
    );
    let later6 = Shape {
        fragment: Some(0x0080),
        ..Shape::default()
    };
    expect(
        &guard,
        &frame(known_v6(), PORT, &rtp(), later6),
        XDP_PASS,
        Verdict::PassNotGuarded,
    );
}

#[test]
fn unknown_sources_make_first_contact_within_their_budgets() {
    pin_to_one_cpu();
    let Some(guard) = guard(|o| {
        o.source_rate = 1;
        o.source_burst = 3;
        o.flood_rate = 1;
        o.flood_burst = 6;
    }) else {
        return;
    };
    let stranger: SocketAddr = "192.0.2.50:3478".parse().unwrap();
    // Latching closed: RTP from a stranger never passes; STUN may, three at once.
    expect(
        &guard,
        &frame(stranger, PORT, &rtp(), Shape::default()),
        XDP_DROP,
        Verdict::DropUnknownSource,
    );
    for _ in 0..3 {
        expect(
            &guard,
            &frame(stranger, PORT, &stun(), Shape::default()),
            XDP_PASS,
            Verdict::PassFirstContact,
        );
    }
    expect(
        &guard,
        &frame(stranger, PORT, &stun(), Shape::default()),
        XDP_DROP,
        Verdict::DropSourceRate,
    );
    // Another port of the same address shares its bucket.
    let same_host = SocketAddr::new(stranger.ip(), 3479);
    expect(
        &guard,
        &frame(same_host, PORT, &stun(), Shape::default()),
        XDP_DROP,
        Verdict::DropSourceRate,
    );

    // Spoofed sources: each has budget left, all together exhaust the flood budget (6 on
    // this CPU, 3 already spent).
    for i in 0..3u8 {
        let spoofed = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), 1000);
        expect(
            &guard,
            &frame(spoofed, PORT, &stun(), Shape::default()),
            XDP_PASS,
            Verdict::PassFirstContact,
        );
    }
    for i in 3..20u8 {
        let spoofed = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), 1000);
        expect(
            &guard,
            &frame(spoofed, PORT, &stun(), Shape::default()),
            XDP_DROP,
            Verdict::DropFlood,
        );
    }
    // A known peer is never budgeted.
    guard.allow(known_v4());
    for _ in 0..10 {
        expect(
            &guard,
            &frame(known_v4(), PORT, &stun(), Shape::default()),
            XDP_PASS,
            Verdict::PassKnownPeer,
        );
    }
}

#[test]
fn latching_opens_first_contact_for_media_and_forgetting_closes_a_peer() {
    let Some(guard) = guard(|_| {}) else { return };
    let publisher: SocketAddr = "10.0.0.3:6000".parse().unwrap();
    let packet = frame(publisher, PORT, &rtp(), Shape::default());
    expect(&guard, &packet, XDP_DROP, Verdict::DropUnknownSource);
    guard.set_latching(0, true);
    expect(&guard, &packet, XDP_PASS, Verdict::PassFirstContact);
    // Two shards: open while either latches.
    guard.set_latching(1, true);
    guard.set_latching(0, false);
    expect(&guard, &packet, XDP_PASS, Verdict::PassFirstContact);
    guard.set_latching(1, false);
    expect(&guard, &packet, XDP_DROP, Verdict::DropUnknownSource);

    // Held by two shards: allowed until both let go.
    guard.allow(publisher);
    guard.allow(publisher);
    expect(&guard, &packet, XDP_PASS, Verdict::PassKnownPeer);
    guard.forget(publisher);
    expect(&guard, &packet, XDP_PASS, Verdict::PassKnownPeer);
    guard.forget(publisher);
    expect(&guard, &packet, XDP_DROP, Verdict::DropUnknownSource);
    assert!(guard.peers().is_empty());
}

#[test]
fn always_admitting_unknown_media_keeps_the_budgets() {
    pin_to_one_cpu();
    let Some(guard) = guard(|o| {
        o.unknown_media = UnknownMedia::Always;
        o.source_burst = 2;
    }) else {
        return;
    };
    let moved: SocketAddr = "10.0.0.4:6001".parse().unwrap();
    let packet = frame(moved, PORT, &rtp(), Shape::default());
    expect(&guard, &packet, XDP_PASS, Verdict::PassFirstContact);
    expect(&guard, &packet, XDP_PASS, Verdict::PassFirstContact);
    expect(&guard, &packet, XDP_DROP, Verdict::DropSourceRate);
}

#[test]
fn metrics_name_every_verdict() {
    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v4());
    guard
        .run_on(&frame(known_v4(), PORT, &rtp(), Shape::default()))
        .unwrap();
    let mut text = String::new();
    guard.write_metrics(&mut text);
    for verdict in Verdict::ALL {
        assert!(
            text.contains(&format!(
                "fanout_xdp_packets_total{{verdict=\"{}\"}}",
                verdict.name()
            )),
            "{text}"
        );
    }
    assert!(
        text.contains("fanout_xdp_packets_total{verdict=\"pass_known_peer\"} 1"),
        "{text}"
    );
    assert!(text.contains("fanout_xdp_peers 1"), "{text}");
}

#[test]
fn the_allowlist_follows_the_core_as_legs_come_learn_and_go() {
    use crate::ids::{MeetingId, ParticipantId};
    use crate::sfu::{Forwarder, ForwarderConfig, LegConfig, LegSecurity};
    use crate::srtp::{MasterKey, SrtpProfile};
    use std::sync::Arc;

    let Some(guard) = guard(|_| {}) else { return };
    let guard = Arc::new(guard);
    let mut core = Forwarder::new(ForwarderConfig::default(), std::time::Instant::now());
    let mut sync = super::PeerSync::new(guard.clone(), 0);
    let meeting = MeetingId::from("m");
    core.add_meeting(meeting.clone()).unwrap();
    let add = |core: &mut Forwarder, who: &str, remote: Option<SocketAddr>, mux: bool| {
        let participant = ParticipantId::from(who);
        core.add_participant(&meeting, participant.clone()).unwrap();
        core.add_leg(
            &meeting,
            &participant,
            LegConfig {
                name: "srtp".into(),
                security: LegSecurity::Sdes {
                    receive_key: MasterKey::generate(SrtpProfile::AeadAes128Gcm),
                    send_key: MasterKey::generate(SrtpProfile::AeadAes128Gcm),
                },
                remote,
                remote_rtcp: None,
                rtcp_mux: mux,
                local: None,
                local_rtcp: None,
            },
        )
        .unwrap();
    };
    let sorted = |mut v: Vec<SocketAddr>| {
        v.sort();
        v
    };
    let subscriber: SocketAddr = "10.0.0.7:5000".parse().unwrap();
    add(&mut core, "sub", Some(subscriber), false);
    sync.sync(&core);
    // Without rtcp-mux the RTCP address is the RTP port plus one (RFC 3550 section 11).
    let rtcp: SocketAddr = "10.0.0.7:5001".parse().unwrap();
    assert_eq!(sorted(guard.peers()), vec![subscriber, rtcp]);
    let packet = frame(subscriber, PORT, &rtp(), Shape::default());
    expect(&guard, &packet, XDP_PASS, Verdict::PassKnownPeer);
    let stranger = frame(
        "10.0.0.8:5000".parse().unwrap(),
        PORT,
        &rtp(),
        Shape::default(),
    );
    expect(&guard, &stranger, XDP_DROP, Verdict::DropUnknownSource);

    // A publisher whose address is learned from its first packet opens first contact.
    add(&mut core, "pub", None, true);
    sync.sync(&core);
    expect(&guard, &stranger, XDP_PASS, Verdict::PassFirstContact);

    // The subscriber leaves: its addresses are dropped in the kernel.
    core.remove_participant(&meeting, &ParticipantId::from("sub"))
        .unwrap();
    sync.sync(&core);
    assert!(guard.peers().is_empty());
    core.remove_participant(&meeting, &ParticipantId::from("pub"))
        .unwrap();
    sync.sync(&core);
    expect(&guard, &packet, XDP_DROP, Verdict::DropUnknownSource);

    // A shard that goes away releases what it held.
    add(&mut core, "again", Some(subscriber), true);
    sync.sync(&core);
    assert_eq!(guard.peers(), vec![subscriber]);
    drop(sync);
    assert!(guard.peers().is_empty());
}

/// Whatever the bytes, the guard decides PASS or DROP and counts exactly one verdict.
#[test]
fn arbitrary_frames_get_one_verdict_each() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let Some(guard) = guard(|_| {}) else { return };
    guard.allow(known_v4());
    let guarded = frame(known_v4(), PORT, &rtp(), Shape::default());
    // Mostly mutations of a guarded frame (so the deep paths are reached), some noise.
    let frames = prop_oneof![
        proptest::collection::vec(any::<u8>(), 14..300),
        (
            proptest::collection::vec((0..guarded.len(), any::<u8>()), 1..6),
            14..=guarded.len(),
        )
            .prop_map(move |(flips, len)| {
                let mut f = guarded.clone();
                for (at, byte) in flips {
                    f[at] = byte;
                }
                f.truncate(len);
                f
            }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    runner
        .run(&frames, |f| {
            let before = counts(&guard);
            let action = guard.run_on(&f).expect("BPF_PROG_TEST_RUN");
            let after = counts(&guard);
            prop_assert!(action == XDP_PASS || action == XDP_DROP, "action {action}");
            let moved: Vec<Verdict> = before
                .iter()
                .zip(&after)
                .filter(|((_, b), (_, a))| a.packets != b.packets)
                .map(|((v, _), _)| *v)
                .collect();
            prop_assert_eq!(moved.len(), 1, "verdicts moved: {:?}", moved);
            prop_assert_eq!(moved[0].is_drop(), action == XDP_DROP);
            Ok(())
        })
        .unwrap();
}

/// A simulcast publisher may send each encoding from a socket of its own: first contact
/// for media stays open until every SSRC it publishes has been heard from.
#[test]
fn latching_stays_open_until_every_published_ssrc_is_heard() {
    use crate::ids::{MeetingId, ParticipantId, Ssrc};
    use crate::sfu::{Forwarder, ForwarderConfig, LegConfig, LegSecurity, TrackConfig, TrackKind};
    use crate::srtp::{MasterKey, SrtpContext, SrtpProfile};

    let now = std::time::Instant::now();
    let mut core = Forwarder::new(ForwarderConfig::default(), now);
    let meeting = MeetingId::from("m");
    let alice = ParticipantId::from("alice");
    core.add_meeting(meeting.clone()).unwrap();
    core.add_participant(&meeting, alice.clone()).unwrap();
    let key = MasterKey::generate(SrtpProfile::AeadAes128Gcm);
    let leg = core
        .add_leg(
            &meeting,
            &alice,
            LegConfig {
                name: "srtp".into(),
                security: LegSecurity::Sdes {
                    receive_key: key.clone(),
                    send_key: MasterKey::generate(SrtpProfile::AeadAes128Gcm),
                },
                remote: None,
                remote_rtcp: None,
                rtcp_mux: true,
                local: None,
                local_rtcp: None,
            },
        )
        .unwrap();
    let generation = core.peers_generation();
    core.add_track(
        &meeting,
        &alice,
        TrackConfig {
            name: "camera".into(),
            kind: TrackKind::Video,
            encodings: vec![Ssrc(1), Ssrc(2)],
            leg,
            clock_rate: None,
            codec: Default::default(),
            audio_level_extension: None,
            stream_ids: None,
        },
    )
    .unwrap();
    assert_ne!(
        core.peers_generation(),
        generation,
        "a new track may open latching"
    );
    let local: SocketAddr = "10.0.0.1:40100".parse().unwrap();
    let mut sender = SrtpContext::new(&key);
    let mut send = |core: &mut Forwarder, ssrc: u32, from: &str| {
        let mut p = vec![0u8; 12 + 20 + 16];
        p[0] = 0x80;
        p[1] = 96;
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        let len = sender.protect_rtp(&mut p, 32).unwrap();
        core.handle_datagram(now, local, from.parse().unwrap(), &mut p[..len]);
    };
    assert_eq!(core.legs_awaiting_address(), 1);
    send(&mut core, 1, "10.0.0.2:5000");
    assert_eq!(
        core.legs_awaiting_address(),
        1,
        "the leg has an address, but encoding 2 has not been heard"
    );
    send(&mut core, 2, "10.0.0.2:5002");
    assert_eq!(core.legs_awaiting_address(), 0);
    let mut peers: Vec<SocketAddr> = core.peer_addresses().collect();
    peers.sort();
    assert_eq!(
        peers,
        vec![
            "10.0.0.2:5000".parse().unwrap(),
            "10.0.0.2:5002".parse().unwrap()
        ]
    );
}
