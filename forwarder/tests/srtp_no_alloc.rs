//! The SRTP per-packet path must not allocate (see `fanout_forwarder::srtp` docs).
//!
//! Its own test binary so that it can install a counting global allocator. Only
//! allocations made by this thread while `COUNTING` is set are counted, so the test
//! harness's own threads cannot disturb the result.

use fanout_forwarder::ids::SeqNo;
use fanout_forwarder::rtp::set_sequence;
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations_in;

const PACKETS: usize = 10_000;

#[test]
fn protect_and_unprotect_do_not_allocate() {
    // The counter itself works.
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) > 0);

    // An RTP packet with a CSRC and a one-byte header extension, 1200 bytes of payload.
    let mut template = vec![0x91, 96, 0xea, 0x60, 0, 0, 0x10, 0, 0x12, 0x34, 0x56, 0x78];
    template.extend_from_slice(&[0, 0, 0, 1]); // CSRC
    template.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // extension
    template.extend((0..1200).map(|i| i as u8));
    let rtcp: Vec<u8> = [0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78].to_vec();

    for profile in SrtpProfile::ALL {
        let key = MasterKey::generate(profile);
        let mut tx = SrtpContext::new(&key);
        let mut rx = SrtpContext::new(&key);
        let mut buf = vec![0u8; 1500];
        let mut rtcp_buf = vec![0u8; 100];
        let mut seq: u16 = 60_000;

        let mut one_round = |seq: u16, buf: &mut [u8], rtcp_buf: &mut [u8]| {
            let len = template.len();
            buf[..len].copy_from_slice(&template);
            set_sequence(buf, SeqNo(seq));
            let n = tx.protect_rtp(buf, len).expect("protect_rtp");
            let m = rx.unprotect_rtp(&mut buf[..n]).expect("unprotect_rtp");
            assert_eq!(m, len);
            if seq.is_multiple_of(50) {
                rtcp_buf[..rtcp.len()].copy_from_slice(&rtcp);
                let n = tx.protect_rtcp(rtcp_buf, rtcp.len()).expect("protect_rtcp");
                let m = rx
                    .unprotect_rtcp(&mut rtcp_buf[..n])
                    .expect("unprotect_rtcp");
                assert_eq!(m, rtcp.len());
            }
        };

        // Warm-up: the first packet of each SSRC creates its stream state (the one
        // allowed allocation), and aws-lc initialises its CPU dispatch once.
        for _ in 0..100 {
            one_round(seq, &mut buf, &mut rtcp_buf);
            seq = seq.wrapping_add(1);
        }

        let allocations = allocations_in(|| {
            for _ in 0..PACKETS {
                one_round(seq, &mut buf, &mut rtcp_buf);
                seq = seq.wrapping_add(1);
            }
        });
        assert_eq!(
            allocations, 0,
            "{profile}: {allocations} allocations in {PACKETS} protect+unprotect rounds"
        );
    }
}
