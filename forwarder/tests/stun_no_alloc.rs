//! A flood of connectivity checks must cost no allocation per packet: forged checks
//! (wrong MESSAGE-INTEGRITY, unknown ufrag, malformed) are dropped and counted, genuine
//! ones answered from a queue allocated once.
//!
//! Its own test binary so that it can install a counting global allocator.

use std::net::SocketAddr;
use std::time::Instant;

use fanout_forwarder::codec::Codec;
use fanout_forwarder::ice::Credentials;
use fanout_forwarder::ids::{MeetingId, ParticipantId};
use fanout_forwarder::sfu::{
    DropReason, Forwarder, ForwarderConfig, LegConfig, LegSecurity, StreamExtensions,
    WebrtcTransport, MIN_TRANSMIT_BUFFER_LEN,
};
use fanout_forwarder::stun::{self, BindingRequest, IntegrityKey};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_in;

const FINGERPRINT: &str =
    "sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
const FLOOD: usize = 10_000;
const PWD: &str = "fnt1-password-of-24-chars";

fn check(user: &str, pwd: &str, transaction: u16) -> Vec<u8> {
    let mut id = [0u8; 12];
    id[..2].copy_from_slice(&transaction.to_be_bytes());
    let mut buf = [0u8; 256];
    let len = stun::write_binding_request(
        &mut buf,
        &BindingRequest {
            transaction_id: id,
            username: user,
            priority: 0x6e00_01ff,
            tie_breaker: 7,
            use_candidate: true,
        },
        &IntegrityKey::new(pwd.as_bytes()),
    )
    .unwrap();
    buf[..len].to_vec()
}

#[test]
fn a_flood_of_checks_is_handled_without_allocating() {
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) > 0);
    let now = Instant::now();
    let mut core = Forwarder::new(ForwarderConfig::default(), now);
    let (m, p) = (MeetingId::from("m"), ParticipantId::from("browser"));
    core.add_meeting(m.clone()).unwrap();
    core.add_participant(&m, p.clone()).unwrap();
    let leg = core
        .add_leg(
            &m,
            &p,
            LegConfig {
                name: "webrtc".into(),
                security: LegSecurity::Webrtc(Box::new(WebrtcTransport {
                    ice: Credentials {
                        local_ufrag: "fnt1".into(),
                        local_pwd: PWD.into(),
                        remote_ufrag: Some("brws".into()),
                    },
                    remote_fingerprint: FINGERPRINT.into(),
                    extensions: StreamExtensions::default(),
                    payload_types: vec![(Codec::Opaque, 111)],
                })),
                remote: None,
                remote_rtcp: None,
                rtcp_mux: true,
                local: None,
                local_rtcp: None,
            },
        )
        .unwrap();
    let local: SocketAddr = "192.0.2.1:40100".parse().unwrap();
    let browser: SocketAddr = "198.51.100.7:50000".parse().unwrap();
    let forged: Vec<Vec<u8>> = (0..FLOOD as u16)
        .map(|i| check("fnt1:brws", "a-guessed-password-000000", i))
        .collect();
    let strangers: Vec<Vec<u8>> = (0..FLOOD as u16)
        .map(|i| check("who:brws", PWD, i))
        .collect();
    let genuine: Vec<Vec<u8>> = (0..FLOOD as u16)
        .map(|i| check("fnt1:brws", PWD, i))
        .collect();
    let mut scratch = vec![0u8; 512];
    let mut out = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    // Warm up: the first answers and the first nomination may size tables.
    for packet in genuine.iter().take(4) {
        scratch[..packet.len()].copy_from_slice(packet);
        core.handle_datagram(now, local, browser, &mut scratch[..packet.len()]);
        while core.poll_transmit(&mut out).is_some() {}
    }
    while core.poll_event().is_some() {}

    let mut answered = 0;
    let allocations = allocations_in(|| {
        for i in 0..FLOOD {
            for packet in [&forged[i], &strangers[i], &genuine[i]] {
                scratch[..packet.len()].copy_from_slice(packet);
                core.handle_datagram(now, local, browser, &mut scratch[..packet.len()]);
            }
            // A truncated check too.
            scratch[..12].copy_from_slice(&genuine[i][..12]);
            core.handle_datagram(now, local, browser, &mut scratch[..12]);
            while core.poll_transmit(&mut out).is_some() {
                answered += 1;
            }
        }
    });
    assert_eq!(
        allocations,
        0,
        "allocations while handling {} checks",
        4 * FLOOD
    );
    assert_eq!(
        answered, FLOOD,
        "every genuine check answered, nothing else"
    );
    // Everything came from the nominated address, so the drops count on the leg: the
    // forged and the strangers' checks, and the truncated ones.
    let stats = core.leg_stats(leg).unwrap();
    assert_eq!(stats.drops.get(DropReason::StunRejected), 2 * FLOOD as u64);
    assert_eq!(stats.drops.get(DropReason::Malformed), FLOOD as u64);
}
