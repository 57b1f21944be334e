//! SRTP protect and unprotect of a 1200-byte payload, per profile.
//!
//! `cargo bench -p fanout-benches --bench srtp`
//!
//! Each iteration copies the packet into the working buffer first (protect and unprotect
//! work in place), as the forwarder does for every subscriber; the copy is part of the
//! figure. Unprotect runs with replay protection off so one packet can be unprotected
//! repeatedly; the replay check it skips is a few integer operations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout_forwarder::srtp::{ContextOptions, MasterKey, SrtpContext, SrtpProfile};

const PAYLOAD: usize = 1200;

fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12 + PAYLOAD];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp");
    group.throughput(Throughput::Elements(1));
    for profile in SrtpProfile::ALL {
        let key = MasterKey::generate(profile);
        let plain = rtp_packet(1);
        let mut buf = vec![0u8; plain.len() + 64];

        let mut sender = SrtpContext::new(&key);
        group.bench_function(BenchmarkId::new("protect_rtp", profile.name()), |b| {
            b.iter(|| {
                buf[..plain.len()].copy_from_slice(&plain);
                sender.protect_rtp(&mut buf, plain.len()).unwrap()
            })
        });

        let mut protected = plain.clone();
        protected.resize(plain.len() + 64, 0);
        let len = SrtpContext::new(&key)
            .protect_rtp(&mut protected, plain.len())
            .unwrap();
        protected.truncate(len);
        let options = ContextOptions {
            replay_protection: false,
            ..ContextOptions::default()
        };
        let mut receiver = SrtpContext::with_options(&key, options);
        group.bench_function(BenchmarkId::new("unprotect_rtp", profile.name()), |b| {
            b.iter(|| {
                buf[..protected.len()].copy_from_slice(&protected);
                receiver.unprotect_rtp(&mut buf[..protected.len()]).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
