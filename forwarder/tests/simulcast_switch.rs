//! Simulcast: a subscription switches between a publisher's encodings only at a keyframe
//! of the new encoding, asks for that keyframe itself, and its subscriber sees one
//! continuous VP8 stream throughout: one SSRC, consecutive sequence numbers, picture ids
//! that go up by one per frame, timestamps that never go back.

mod common;

use std::time::Duration;

use common::vp8::{self, Vp8Frame};
use common::{ContinuityChecker, Scenario, TrackSetup};
use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::Ssrc;
use fanout_forwarder::rtcp::{self, RtcpPacket};
use fanout_forwarder::sfu::{Layers, TrackKind};
use fanout_forwarder::srtp::SrtpProfile;

const ENCODINGS: [Ssrc; 3] = [Ssrc(0xA0), Ssrc(0xB0), Ssrc(0xC0)];
const PACKETS_PER_FRAME: usize = 3;

/// Each encoding has keyframes every 40 frames, at a different phase, so a switch has to
/// wait for the target's own keyframe.
fn is_keyframe(encoding: usize, frame: u32) -> bool {
    frame % 40 == [0, 13, 27][encoding]
}

#[test]
fn switches_only_at_keyframes_and_stays_continuous() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut s = Scenario::with_track(
        profile,
        0,
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Vp8,
            encodings: ENCODINGS.to_vec(),
            audio_level_extension: None,
        },
    );
    let (viewer, sub) = s.add_subscriber_with(profile, 0, None, None);
    s.forwarder
        .set_max_layers(
            sub,
            Layers {
                encoding: 0,
                ..Layers::ALL
            },
        )
        .unwrap();

    let mut checker = ContinuityChecker::default();
    let mut last_picture: Option<u16> = None;
    let mut last_ts: Option<u32> = None;
    // (frame, encoding) of every frame the viewer got, from the body tag.
    let mut frames_seen: Vec<(u32, usize, bool)> = Vec::new();
    let plan = [(0u32, 0u8), (50, 2), (110, 1), (170, 0)];
    for frame in 0..220u32 {
        if let Some(&(_, target)) = plan.iter().find(|(at, _)| *at == frame && frame > 0) {
            s.forwarder
                .set_max_layers(
                    sub,
                    Layers {
                        encoding: target,
                        ..Layers::ALL
                    },
                )
                .unwrap();
        }
        for (e, &ssrc) in ENCODINGS.iter().enumerate() {
            let f = Vp8Frame {
                // Each encoding numbers its pictures its own way.
                picture_id: (1000 * e as u16 + frame as u16) & 0x7fff,
                tl0_pic_idx: (frame as u8).wrapping_add(e as u8 * 50),
                temporal: 0,
                layer_sync: false,
                keyframe: is_keyframe(e, frame),
            };
            for k in 0..PACKETS_PER_FRAME {
                let seq = (e as u16 * 20_000)
                    .wrapping_add((frame as usize * PACKETS_PER_FRAME + k) as u16);
                let ts = (e as u32 * 7_777_777).wrapping_add(frame * 3000);
                let body = [e as u8, frame as u8, k as u8];
                let payload = vp8::payload(&f, k, &body);
                let marker = k == PACKETS_PER_FRAME - 1;
                for r in s.publish_on(ssrc, seq, ts, marker, &payload) {
                    assert_eq!(r.subscriber, viewer);
                    checker.check(&r);
                    let info = vp8::read(&r.payload, r.header.marker);
                    let body = &r.payload[r.payload.len() - 3..];
                    if info.start_of_frame {
                        let picture = info.picture_id.unwrap();
                        if let Some(last) = last_picture {
                            assert_eq!(picture, (last + 1) & 0x7fff, "frame {frame}");
                        }
                        last_picture = Some(picture);
                        frames_seen.push((u32::from(body[1]), usize::from(body[0]), info.keyframe));
                    }
                    if let Some(last) = last_ts {
                        assert!(
                            r.header.timestamp.wrapping_sub(last) < 1 << 31,
                            "time went back"
                        );
                    }
                    last_ts = Some(r.header.timestamp);
                    assert_eq!(r.header.ssrc, ENCODINGS[0], "one SSRC for the whole stream");
                }
            }
        }
        s.advance(Duration::from_millis(33));
    }

    // Every change of encoding in what the viewer got happened at a keyframe of the new
    // encoding, after it was asked for, and at the first such keyframe.
    let mut switches = Vec::new();
    for w in frames_seen.windows(2) {
        let ((_, from, _), (frame, to, keyframe)) = (w[0], w[1]);
        if from != to {
            assert!(
                keyframe,
                "switch to encoding {to} at frame {frame} is not at a keyframe"
            );
            switches.push((frame, to));
        }
    }
    let expected: Vec<(u32, usize)> = plan[1..]
        .iter()
        .map(|&(at, to)| {
            let to = usize::from(to);
            ((at..).find(|&f| is_keyframe(to, f)).unwrap(), to)
        })
        .collect();
    assert_eq!(switches, expected);
    // One frame per frame time, none lost. The only repeats are at the switches: the old
    // encoding's picture of that instant was already sent when the new encoding's
    // keyframe of the same instant arrived.
    let mut frames: Vec<u32> = frames_seen.iter().map(|&(f, _, _)| f).collect();
    let len = frames.len();
    frames.dedup();
    assert!(len - frames.len() <= switches.len());
    assert_eq!(frames, (0..220).collect::<Vec<_>>());

    // The forwarder asked the publisher for each keyframe it waited for.
    let publisher = s.publisher.address;
    let plis: Vec<Ssrc> = s
        .rtcp
        .iter()
        .filter(|(to, _)| *to == publisher)
        .filter_map(|(_, p)| match rtcp::iter_compound(p).next() {
            Some(Ok(RtcpPacket::PayloadFeedback(fb))) if fb.fmt == 1 => Some(fb.media_ssrc),
            _ => None,
        })
        .collect();
    for &(_, to) in &plan[1..] {
        assert!(
            plis.contains(&ENCODINGS[usize::from(to)]),
            "no PLI for encoding {to}: {plis:?}"
        );
    }
}
