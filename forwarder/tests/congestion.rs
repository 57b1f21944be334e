//! Congestion signal: a subscriber's REMB bandwidth estimate picks the highest simulcast
//! encoding whose measured bitrate fits it, switching at that encoding's keyframes, and
//! following the estimate down and back up; sustained loss reports step down too.

mod common;

use std::time::Duration;

use common::vp8::{self, Vp8Frame};
use common::{Scenario, TrackSetup};
use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::sfu::TrackKind;
use fanout_forwarder::srtp::SrtpProfile;

const ENCODINGS: [Ssrc; 3] = [Ssrc(0xE0), Ssrc(0xE1), Ssrc(0xE2)];
/// Packets per frame and payload bytes per packet: about 50 kbit/s, 400 kbit/s and
/// 1 Mbit/s at 30 frames per second.
const SHAPE: [(usize, usize); 3] = [(1, 200), (2, 800), (4, 1000)];

/// A REMB message (draft-alvestrand-rmcat-remb §2.2): PSFB, FMT 15, "REMB", exponent
/// and mantissa.
fn remb(sender: Ssrc, bps: u64) -> Vec<u8> {
    let mut exp = 0;
    let mut mantissa = bps;
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let mut p = vec![0x8f, 206, 0, 5];
    p.extend_from_slice(&sender.0.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(b"REMB");
    p.extend_from_slice(&((1u32 << 24) | (exp << 18) | mantissa as u32).to_be_bytes());
    p.extend_from_slice(&ENCODINGS[0].0.to_be_bytes());
    p
}

#[test]
fn the_bandwidth_estimate_picks_the_encoding() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut s = Scenario::with_track(
        profile,
        1,
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Vp8,
            encodings: ENCODINGS.to_vec(),
            audio_level_extension: None,
        },
    );
    // (second, estimate in bit/s)
    let estimates = [(3u32, 500_000u64), (6, 100_000), (9, 5_000_000)];
    let mut seqs = [0u16; 3];
    let mut received: Vec<(u32, usize)> = Vec::new(); // (frame, encoding) of frame starts
    for frame in 0..360u32 {
        if let Some(&(_, bps)) = estimates.iter().find(|(at, _)| *at * 30 == frame) {
            let mut packet = remb(Ssrc(0x5151), bps);
            let len = packet.len();
            packet.resize(len + 64, 0);
            let peer = &mut s.subscribers[0];
            let len = peer.sender.protect_rtcp(&mut packet, len).unwrap();
            packet.truncate(len);
            let from = peer.address;
            s.deliver(from, packet);
        }
        for (e, &ssrc) in ENCODINGS.iter().enumerate() {
            let f = Vp8Frame {
                picture_id: frame as u16,
                tl0_pic_idx: frame as u8,
                temporal: 0,
                layer_sync: false,
                keyframe: frame % 30 == [0, 10, 20][e],
            };
            let (packets, size) = SHAPE[e];
            for k in 0..packets {
                let mut body = vec![0u8; size];
                body[0] = e as u8;
                let payload = vp8::payload(&f, k, &body);
                for r in s.publish_on(ssrc, seqs[e], frame * 3000, k + 1 == packets, &payload) {
                    let info = vp8::read(&r.payload, r.header.marker);
                    if info.start_of_frame {
                        let at = info.descriptor_len + if info.keyframe { 10 } else { 3 };
                        received.push((frame, usize::from(r.payload[at])));
                    }
                }
                seqs[e] = seqs[e].wrapping_add(1);
            }
        }
        s.advance(Duration::from_millis(33));
    }
    let encoding_at = |second: u32| {
        received
            .iter()
            .rev()
            .find(|(f, _)| *f < second * 30)
            .map(|&(_, e)| e)
            .unwrap()
    };
    assert_eq!(encoding_at(3), 2, "unconstrained: the top encoding");
    assert_eq!(
        encoding_at(6),
        1,
        "500 kbit/s: the middle one (400 kbit/s) fits"
    );
    assert_eq!(encoding_at(9), 0, "100 kbit/s: only the lowest fits");
    assert_eq!(encoding_at(12), 2, "5 Mbit/s: back to the top");
    // The stream starts at the top encoding's first keyframe (frame 20), and every change
    // happened at a keyframe of the new encoding: one frame per frame time from there.
    let mut frames: Vec<u32> = received.iter().map(|&(f, _)| f).collect();
    frames.dedup();
    assert_eq!(frames, (20..360).collect::<Vec<_>>());
}
