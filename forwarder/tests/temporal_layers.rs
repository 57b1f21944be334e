//! Temporal scalability (VP8, RFC 7741): a subscription limited to a lower temporal layer
//! gets only the frames of layers up to it, as a stream a decoder can follow: consecutive
//! sequence numbers and picture ids, each frame's base-layer reference (TL0PICIDX) present;
//! raising the limit takes effect only at a layer sync frame (Y bit).

mod common;

use std::time::Duration;

use common::vp8::{self, Vp8Frame};
use common::{ContinuityChecker, Scenario, TrackSetup};
use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::sfu::{Layers, TrackKind};
use fanout_forwarder::srtp::SrtpProfile;

/// L1T3: temporal layer ids 0, 2, 1, 2, ... (RFC 7741 §4.2's example structure).
fn temporal_id(frame: u32) -> u8 {
    [0, 2, 1, 2][(frame % 4) as usize]
}

#[test]
fn dropping_temporal_layers_leaves_a_decodable_stream() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let ssrc = Ssrc(0x7E);
    let mut s = Scenario::with_track(
        profile,
        0,
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Vp8,
            encodings: vec![ssrc],
            audio_level_extension: None,
        },
    );
    let (_, sub) = s.add_subscriber_with(profile, 0, None, None);
    let limit = |t| Layers {
        temporal: t,
        ..Layers::ALL
    };
    s.forwarder.set_max_layers(sub, limit(1)).unwrap();

    let mut checker = ContinuityChecker::default();
    let mut out_frames: Vec<(u8, u8, u16, u32)> = Vec::new(); // (tid, tl0, picture, frame)
    let mut seq: u16 = 500;
    let mut tl0: u8 = 0;
    for frame in 0..200u32 {
        if frame == 101 {
            s.forwarder.set_max_layers(sub, limit(2)).unwrap();
        }
        let tid = temporal_id(frame);
        if tid == 0 && frame > 0 {
            tl0 = tl0.wrapping_add(1);
        }
        let f = Vp8Frame {
            picture_id: (frame as u16 + 100) & 0x7fff,
            tl0_pic_idx: tl0,
            temporal: tid,
            // The first frame of layers 1 and 2 after each base frame can be switched to.
            layer_sync: tid > 0 && frame % 4 != 3,
            keyframe: frame == 0,
        };
        for k in 0..2 {
            let payload = vp8::payload(&f, k, &[frame as u8]);
            for r in s.publish_on(ssrc, seq, frame * 3000, k == 1, &payload) {
                checker.check(&r);
                let info = vp8::read(&r.payload, r.header.marker);
                if info.start_of_frame {
                    out_frames.push((
                        info.temporal_layer.unwrap(),
                        info.tl0_pic_idx.unwrap(),
                        info.picture_id.unwrap(),
                        frame,
                    ));
                }
            }
            seq = seq.wrapping_add(1);
        }
        s.advance(Duration::from_millis(33));
    }

    // Up to frame 101 only layers 0 and 1; from the first sync frame of layer 2 after it,
    // everything.
    let first_t2 = (101..)
        .find(|&f| temporal_id(f) == 2 && f % 4 != 3)
        .unwrap();
    for &(tid, _, _, frame) in &out_frames {
        if frame < first_t2 {
            assert!(
                tid <= 1,
                "frame {frame} of layer {tid} forwarded above the limit"
            );
        }
    }
    let expected: Vec<u32> = (0..200)
        .filter(|&f| f >= first_t2 || temporal_id(f) <= 1)
        .collect();
    assert_eq!(out_frames.iter().map(|f| f.3).collect::<Vec<_>>(), expected);
    // Picture ids consecutive across dropped frames; each frame's base layer picture was
    // forwarded (same TL0PICIDX on a layer 0 frame before it).
    for w in out_frames.windows(2) {
        assert_eq!(
            w[1].2,
            (w[0].2 + 1) & 0x7fff,
            "picture id gap at frame {}",
            w[1].3
        );
    }
    for (i, &(tid, tl0, _, frame)) in out_frames.iter().enumerate() {
        if tid > 0 {
            assert!(
                out_frames[..i]
                    .iter()
                    .any(|&(t, l, _, _)| t == 0 && l == tl0),
                "frame {frame} references a base frame the subscriber never got"
            );
        }
    }
    // TL0PICIDX goes up by one per base frame.
    let tl0s: Vec<u8> = out_frames
        .iter()
        .filter(|f| f.0 == 0)
        .map(|f| f.1)
        .collect();
    for w in tl0s.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1));
    }
}
