//! The per-subscriber cost of forwarding: one received SRTP packet (1200-byte payload)
//! unprotected once, then rewritten and protected for each of N subscribers, with no
//! system call. Criterion reports time per element, where an element is one subscriber
//! copy, so the one unprotect is amortised over N.
//!
//! `cargo bench -p fanout-benches --bench forwarding`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, LegSecurity, SubscriptionConfig, TrackConfig, TrackKind,
    MIN_TRANSMIT_BUFFER_LEN,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const PAYLOAD: usize = 1200;
const SSRC: Ssrc = Ssrc(0x1234_5678);

/// The publisher's side: makes fresh SRTP packets of its track.
struct Publisher {
    context: SrtpContext,
    seq: u16,
}

fn leg(profile: SrtpProfile, name: &str, remote: Option<SocketAddr>) -> (LegConfig, MasterKey) {
    let receive_key = MasterKey::generate(profile);
    (
        LegConfig {
            name: name.into(),
            security: LegSecurity::Sdes {
                receive_key: receive_key.clone(),
                send_key: MasterKey::generate(profile),
            },
            remote,
            remote_rtcp: None,
            rtcp_mux: true,
            local: None,
            local_rtcp: None,
        },
        receive_key,
    )
}

fn setup(profile: SrtpProfile, subscribers: usize, now: Instant) -> (Forwarder, Publisher) {
    let mut forwarder = Forwarder::new(ForwarderConfig::default(), now);
    let meeting = MeetingId::from("bench");
    forwarder.add_meeting(meeting.clone()).unwrap();
    let alice = ParticipantId::from("alice");
    forwarder.add_participant(&meeting, alice.clone()).unwrap();
    let (config, publisher_key) = leg(profile, "main", None);
    let leg_id = forwarder.add_leg(&meeting, &alice, config).unwrap();
    let track = forwarder
        .add_track(
            &meeting,
            &alice,
            TrackConfig {
                name: "camera".into(),
                kind: TrackKind::Video,
                encodings: vec![SSRC],
                leg: leg_id,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: None,
                stream_ids: None,
            },
        )
        .unwrap();
    for i in 0..subscribers {
        let id = ParticipantId(format!("s{i}"));
        forwarder.add_participant(&meeting, id.clone()).unwrap();
        let addr = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000));
        let (config, _) = leg(profile, "main", Some(addr));
        let leg = forwarder.add_leg(&meeting, &id, config).unwrap();
        forwarder
            .add_subscription(SubscriptionConfig {
                track,
                leg,
                ssrc: None,
                payload_type: None,
                max_layers: Default::default(),
            })
            .unwrap();
    }
    let publisher = Publisher {
        context: SrtpContext::new(&publisher_key),
        seq: 0,
    };
    (forwarder, publisher)
}

impl Publisher {
    /// The publisher's next SRTP packet (prepared outside the timed section).
    fn next_packet(&mut self) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut p = vec![0u8; 12 + PAYLOAD + 64];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(self.seq) * 3000).to_be_bytes());
        p[8..12].copy_from_slice(&SSRC.0.to_be_bytes());
        let len = self.context.protect_rtp(&mut p, 12 + PAYLOAD).unwrap();
        p.truncate(len);
        p
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_per_subscriber");
    group.measurement_time(Duration::from_secs(4));
    for profile in [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80] {
        for subscribers in [10usize, 100, 1000] {
            let now = Instant::now();
            let (mut forwarder, mut publisher) = setup(profile, subscribers, now);
            let local: SocketAddr = "192.0.2.1:40000".parse().unwrap();
            let source: SocketAddr = "192.0.2.10:6000".parse().unwrap();
            let mut out = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
            group.throughput(Throughput::Elements(subscribers as u64));
            group.bench_function(BenchmarkId::new(profile.name(), subscribers), |b| {
                b.iter_batched_ref(
                    || publisher.next_packet(),
                    |packet| {
                        forwarder.handle_datagram(now, local, source, packet);
                        let mut sent = 0;
                        while let Some(t) = forwarder.poll_transmit(&mut out) {
                            sent += t.len;
                        }
                        sent
                    },
                    BatchSize::SmallInput,
                )
            });
            assert_eq!(
                forwarder.total_drops().total(),
                0,
                "no drops while benchmarking"
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
