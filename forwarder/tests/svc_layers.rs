//! VP9 SVC (RFC 9628): a subscription limited to lower spatial and temporal layers gets
//! only those layer frames, the last forwarded layer frame of each picture carries the
//! RTP marker (the dropped top layer carried it), and the stream stays continuous.

mod common;

use std::time::Duration;

use common::{ContinuityChecker, Scenario, TrackSetup};
use fanout_forwarder::codec::{inspect, Codec};
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::sfu::{Layers, TrackKind};
use fanout_forwarder::srtp::SrtpProfile;

/// A non-flexible VP9 descriptor: I=1 (15-bit picture id), L=1, B/E as given, P=0 on a key
/// picture's every layer; then the layer indices (TID, U, SID, D) and TL0PICIDX.
fn vp9(picture: u16, sid: u8, tid: u8, key: bool, begin: bool, end: bool, tl0: u8) -> Vec<u8> {
    let first = 0x80
        | if key { 0 } else { 0x40 }
        | 0x20
        | if begin { 0x08 } else { 0 }
        | if end { 0x04 } else { 0 };
    let d = u8::from(sid > 0); // upper layers predict from the one below
    vec![
        first,
        0x80 | (picture >> 8) as u8,
        picture as u8,
        (tid << 5) | 0x10 | (sid << 1) | d,
        tl0,
        0xAA,
        sid,
    ]
}

#[test]
fn spatial_and_temporal_layers_are_dropped_and_the_marker_moved() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let ssrc = Ssrc(0x99);
    let mut s = Scenario::with_track(
        profile,
        0,
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Vp9,
            encodings: vec![ssrc],
            audio_level_extension: None,
        },
    );
    let (_, sub) = s.add_subscriber_with(profile, 0, None, None);
    s.forwarder
        .set_max_layers(
            sub,
            Layers {
                encoding: 0,
                spatial: 1,
                temporal: 0,
            },
        )
        .unwrap();
    let mut checker = ContinuityChecker::default();
    let mut seq = 0u16;
    let mut pictures_out = Vec::new();
    // L3T2: three spatial layers, temporal ids 0, 1, 0, 1...; two packets per layer frame.
    for picture in 0..60u16 {
        let tid = (picture % 2) as u8;
        let key = picture == 0;
        for sid in 0..3u8 {
            for k in 0..2 {
                let payload = vp9(picture, sid, tid, key, k == 0, k == 1, (picture / 2) as u8);
                let marker = sid == 2 && k == 1;
                for r in s.publish_on(ssrc, seq, u32::from(picture) * 3000, marker, &payload) {
                    checker.check(&r);
                    let info = inspect(Codec::Vp9, &r.payload, r.header.marker).unwrap();
                    assert!(
                        info.spatial_layer.unwrap() <= 1,
                        "spatial layer above the limit"
                    );
                    assert_eq!(
                        info.temporal_layer,
                        Some(0),
                        "temporal layer above the limit"
                    );
                    assert_eq!(
                        r.header.marker,
                        info.spatial_layer == Some(1) && info.end_of_frame,
                        "the marker ends the last forwarded layer of the picture"
                    );
                    if r.header.marker {
                        pictures_out.push(picture);
                    }
                }
                seq = seq.wrapping_add(1);
            }
        }
        s.advance(Duration::from_millis(33));
    }
    // Every base-temporal-layer picture, each ended once.
    assert_eq!(pictures_out, (0..60).step_by(2).collect::<Vec<_>>());
}
