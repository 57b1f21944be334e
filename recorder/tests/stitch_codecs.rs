//! VP9 (libvpx-vp9) and H.264 (libx264, constrained baseline as WebRTC uses) over RTP from
//! FFmpeg, captured faster than real time with arrival times from the RTP clock, no
//! loss: every frame sent is written, the tiles (IVF with VP90 and H264) decode cleanly,
//! and so does the stitched file.

mod stitch_support;

use fanout_recorder::stitch::{stitch, Codec, StitchOptions, TrackKind};
use stitch_support::*;

#[test]
fn vp9_and_h264_participants() {
    if !have_ffmpeg() {
        return;
    }
    let dir = test_dir("codecs");
    let capture = CaptureSession::start(2);
    let args: Vec<String> = [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x360:rate=30:duration=4",
        "-map",
        "0:v",
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "600k",
        "-g",
        "30",
        "-strict",
        "experimental",
        "-payload_type",
        "98",
        "-ssrc",
        "4096",
        "-f",
        "rtp",
        &capture.url(0),
        "-map",
        "0:v",
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-tune",
        "zerolatency",
        "-preset",
        "ultrafast",
        "-g",
        "30",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-payload_type",
        "102",
        "-ssrc",
        "8192",
        "-f",
        "rtp",
        &capture.url(1),
    ]
    .map(String::from)
    .to_vec();
    wait_ffmpeg(spawn_ffmpeg(&args));
    let captured = capture.finish();
    let base = 1_800_000_000_000_000u64;
    let codecs = [(Codec::Vp9, "vera"), (Codec::H264, "hugo")];
    let mut packets = Vec::new();
    let mut sent_frames = Vec::new();
    for (i, stream) in captured.iter().enumerate() {
        let first_ts = rtp_fields(&stream[0].bytes).timestamp;
        let mut stamped = stream.clone();
        for (n, c) in stamped.iter_mut().enumerate() {
            let ts = rtp_fields(&c.bytes).timestamp.wrapping_sub(first_ts);
            c.arrival_micros = base + u64::from(ts) * 1000 / 90 + 3_000 + n as u64;
        }
        sent_frames.push(
            stream
                .iter()
                .filter(|c| rtp_fields(&c.bytes).marker)
                .count() as u64,
        );
        packets.extend(recorded(
            &key(codecs[i].1, TrackKind::Camera, 0),
            codecs[i].0,
            &stamped,
        ));
    }
    packets.sort_by_key(|p| p.arrival_micros);
    let options = StitchOptions {
        intermediate_dir: Some(dir.join("work")),
        ..StitchOptions::default()
    };
    let output = dir.join("codecs.webm");
    let report = stitch(packets, &options, &output, &mut |_| {}).expect("stitching succeeds");
    for (i, (_, participant)) in codecs.iter().enumerate() {
        let stream = report
            .stream(&key(participant, TrackKind::Camera, 0))
            .unwrap();
        eprintln!("{participant}: {stream:?}");
        assert!(
            sent_frames[i] >= 100,
            "{participant}: {} frames sent",
            sent_frames[i]
        );
        assert_eq!(stream.frames_incomplete, 0, "{participant}");
        assert_eq!(stream.frames_written, sent_frames[i], "{participant}");
        let tile = report
            .tiles
            .iter()
            .find(|t| t.participant == *participant)
            .unwrap();
        let file = tile.file.as_ref().unwrap();
        assert_eq!(decode_errors(file), "", "{participant}");
        assert_eq!(count_frames(file), sent_frames[i], "{participant}");
    }
    assert_eq!(decode_errors(&output), "");
    assert_monotonic_packets(&output);
    let _ = std::fs::remove_dir_all(&dir);
}
