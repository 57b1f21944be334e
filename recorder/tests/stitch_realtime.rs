//! Two participants sending real VP8 + Opus over RTP in real time (FFmpeg, `-re`), one
//! joining 3 s late, captured over UDP with arrival times; 5% loss, reordering and
//! duplicates injected; stitched; the WebM checked with ffprobe and ffmpeg.
//!
//! On a loaded machine the FFmpeg senders stall and catch up in bursts; the file must
//! come out the same (issue 10). `src/stitch/tests.rs` checks that deterministically with
//! constructed arrival times.

mod stitch_support;

use std::collections::HashSet;
use std::time::Duration;

use fanout_recorder::stitch::{stitch, Codec, Progress, Stage, StitchOptions, TrackKind};
use stitch_support::*;

const ALICE_SECONDS: u32 = 12;
const BOB_DELAY_SECONDS: u64 = 3;
const BOB_SECONDS: u32 = 9;

fn participant_args(
    video_source: &str,
    tone: u32,
    seconds: u32,
    capture: &CaptureSession,
    first: usize,
    ssrc: u32,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-re".into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("{video_source}=size=640x360:rate=30:duration={seconds}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency={tone}:sample_rate=48000:duration={seconds}"),
    ];
    args.extend(vp8_output("0:v", ssrc, "800k", &capture.url(first)));
    args.extend(opus_output("1:a", ssrc + 1, &capture.url(first + 1)));
    args
}

#[test]
fn two_participants_late_joiner_with_loss() {
    if !have_ffmpeg() {
        return;
    }
    let dir = test_dir("realtime");
    // Streams: 0 alice video, 1 alice audio, 2 bob video, 3 bob audio.
    let capture = CaptureSession::start(4);
    let alice = spawn_ffmpeg(&participant_args(
        "testsrc",
        440,
        ALICE_SECONDS,
        &capture,
        0,
        0x1000,
    ));
    std::thread::sleep(Duration::from_secs(BOB_DELAY_SECONDS));
    let bob = spawn_ffmpeg(&participant_args(
        "smptebars",
        660,
        BOB_SECONDS,
        &capture,
        2,
        0x2000,
    ));
    wait_ffmpeg(alice);
    wait_ffmpeg(bob);
    let captured = capture.finish();
    for (i, stream) in captured.iter().enumerate() {
        assert!(
            stream.len() > 100,
            "stream {i} captured only {} packets",
            stream.len()
        );
    }
    let first_arrival = captured
        .iter()
        .flatten()
        .map(|c| c.arrival_micros)
        .min()
        .unwrap();
    let last_arrival = captured
        .iter()
        .flatten()
        .map(|c| c.arrival_micros)
        .max()
        .unwrap();
    let bob_first_arrival = captured[2]
        .iter()
        .chain(&captured[3])
        .map(|c| c.arrival_micros)
        .min()
        .unwrap();

    let keys = [
        key("alice", TrackKind::Camera, 0),
        key("alice", TrackKind::Audio, 0),
        key("bob", TrackKind::Camera, 0),
        key("bob", TrackKind::Audio, 0),
    ];
    let codecs = [Codec::Vp8, Codec::Opus, Codec::Vp8, Codec::Opus];
    let mut rng = Rng::new(0x5717_c4ed);
    let mut packets = Vec::new();
    let mut dropped: Vec<HashSet<u16>> = Vec::new();
    for (i, stream) in captured.iter().enumerate() {
        let (kept, lost) = impair(stream, &mut rng, 5);
        packets.extend(recorded(&keys[i], codecs[i], &kept));
        dropped.push(lost);
    }
    // One recording chunk: every stream's packets in arrival order (stable, so the
    // reordering inside a stream stays).
    packets.sort_by_key(|p| p.arrival_micros);

    let options = StitchOptions {
        intermediate_dir: Some(dir.join("work")),
        ..StitchOptions::default()
    };
    let output = dir.join("meeting.webm");
    let mut updates: Vec<Progress> = Vec::new();
    let report =
        stitch(packets, &options, &output, &mut |p| updates.push(p)).expect("stitching succeeds");
    eprintln!("{report:#?}");

    // Progress: never backwards, ends done.
    assert!(
        updates.windows(2).all(|w| w[1].fraction >= w[0].fraction),
        "{updates:?}"
    );
    assert_eq!(
        updates.last().map(|p| (p.stage, p.fraction)),
        Some((Stage::Done, 1.0))
    );
    assert!(updates
        .iter()
        .any(|p| p.stage == Stage::Encoding && p.fraction > 0.3 && p.fraction < 1.0));

    // Frames per video stream: what an independent count of complete, decodable frames
    // from the sent packets and the dropped set says.
    for (video, lost) in [(0usize, &dropped[0]), (2, &dropped[2])] {
        let expected = expected_frames(&captured[video], lost, vp8_keyframe_start);
        let stream = report.stream(&keys[video]).unwrap();
        eprintln!("{}: expected {expected:?}", keys[video].participant);
        assert!(
            expected.complete < expected.frames,
            "5% loss should break some frames"
        );
        assert_eq!(
            stream.frames_complete, expected.complete,
            "{}",
            keys[video].participant
        );
        // However the senders stalled and burst, no frame is placed on another.
        assert_eq!(stream.frames_overlapping, 0, "{}", keys[video].participant);
        assert_eq!(
            stream.frames_written, expected.written,
            "{}",
            keys[video].participant
        );
        assert_eq!(
            stream.frames_written + stream.frames_skipped_waiting_for_keyframe,
            expected.complete
        );
        assert!(stream.duplicate_packets > 0);
        // Loss before the first or after the last packet received is no visible gap.
        let received: Vec<bool> = captured[video]
            .iter()
            .map(|c| !lost.contains(&rtp_fields(&c.bytes).sequence))
            .collect();
        let first = received.iter().position(|&r| r).unwrap();
        let last = received.iter().rposition(|&r| r).unwrap();
        let inner_losses = received[first..=last].iter().filter(|&&r| !r).count() as u64;
        assert_eq!(stream.missing_packets, inner_losses);
        assert_eq!(stream.segments, 1);
        // The tile file FFmpeg read has exactly those frames and decodes cleanly.
        let tile = report
            .tiles
            .iter()
            .find(|t| t.participant == keys[video].participant)
            .unwrap();
        let file = tile.file.as_ref().unwrap();
        assert_eq!(count_frames(file), expected.written);
        assert_eq!(decode_errors(file), "", "tile {}", file.display());
    }
    for audio in [1usize, 3] {
        let stream = report.stream(&keys[audio]).unwrap();
        let sent = captured[audio].len() as u64;
        // Every packet received is written, none overlapping. (A sender that a loaded
        // machine kept behind for longer than the clock's 10 s grace looks like a drifting
        // clock for a while: the audio follows it by whole packets, see anchor.rs.)
        assert_eq!(stream.frames_overlapping, 0, "{}", keys[audio].participant);
        if stream.frames_dropped_for_drift > 0 {
            eprintln!(
                "NOTE: {} audio packets dropped to follow a sender long behind",
                stream.frames_dropped_for_drift
            );
        }
        assert_eq!(
            stream.frames_written + stream.frames_dropped_for_drift,
            sent - dropped[audio].len() as u64
        );
        // Lost packets are concealed (less what the audio ran behind its place when a
        // loss came, under 40 ms), so the audio ends where its media does: within 40 ms
        // and a packet, and what the clock may follow of a sender long behind (0.2%).
        let lost = dropped[audio].len() as u64;
        assert!(stream.concealed_micros >= 10_000 * lost, "{stream:#?}");
        let (_, media_end) = stream_spans(&captured, &codecs)[audio];
        let end = stream.end_micros.unwrap() as f64 / 1e6;
        let span = (last_arrival - first_arrival) as f64 / 1e6;
        assert!(
            (end - media_end).abs() < 0.06 + 0.002 * span,
            "{}: audio ends {:.3} s off its media",
            keys[audio].participant,
            end - media_end
        );
    }

    // The file: playable to the end, the right length, monotonic timestamps. The senders
    // share the machine's clock, so each stream's media lies at its RTP time plus its
    // least transit (the packets that were not held up); the timeline runs from the
    // earliest media to the end of the last. Stalls make the arrivals end later than the
    // media (a sender still behind at its end): the arrival span is no measure of it.
    assert_eq!(decode_errors(&output), "");
    let span = (last_arrival - first_arrival) as f64 / 1e6;
    let spans = stream_spans(&captured, &codecs);
    let media_start = spans.iter().map(|s| s.0).fold(f64::MAX, f64::min);
    let media_end = spans.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let media = media_end - media_start;
    let duration = duration_seconds(&output);
    eprintln!(
        "captured span {span:.3} s, media span {media:.3} s, file {duration:.3} s, \
         timeline {:.3} s",
        report.duration_micros as f64 / 1e6
    );
    // Within a few frames, and the 0.2% the clock may follow a sender long behind.
    assert!(
        (duration - media).abs() < 0.1 + 0.002 * span,
        "duration {duration} vs media span {media} (arrival span {span})"
    );
    // Nothing is placed after it arrived: the timeline ends by the last arrival (and
    // the last frame's time). It may begin before the first, when the first packets came
    // later than the fastest ones of the first second say they were sent.
    let timeline_end = report.start_unix_micros + report.duration_micros as i64;
    assert!(
        timeline_end <= last_arrival as i64 + 100_000,
        "the timeline ends {} µs after the last arrival",
        timeline_end - last_arrival as i64
    );
    assert_monotonic_packets(&output);
    let streams = ffprobe(
        &output,
        &[
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
        ],
    );
    assert_eq!(
        streams.lines().collect::<Vec<_>>(),
        ["vp8,1280,720", "opus"]
    );

    // Bob joined 3 s late: his tile is black before, shows him after.
    let bob_join = (bob_first_arrival - report.start_unix_micros as u64) as f64 / 1e6;
    let bob_tile = report
        .tiles
        .iter()
        .find(|t| t.participant == "bob")
        .unwrap();
    let visible_from = bob_tile.visible[0].0 as f64 / 1e6;
    assert!(
        visible_from >= bob_join - 0.3 && visible_from <= bob_join + 1.5,
        "bob visible from {visible_from}, joined {bob_join}"
    );
    let alice_rect = (0, 180, 640, 360);
    let bob_rect = (640, 180, 640, 360);
    let early = bob_join / 2.0;
    assert!(
        mean_luma(&output, early, bob_rect) < 20.0,
        "bob's tile is black before he joins"
    );
    assert!(
        mean_luma(&output, early, alice_rect) > 40.0,
        "alice is there from the start"
    );
    assert!(
        mean_luma(&output, bob_join + 4.0, bob_rect) > 40.0,
        "bob shows after joining"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where each stream's captured media lies on the wall clock, as (start, end) in unix
/// seconds: its packets at their RTP time from the stream's first packet plus the
/// stream's least transit (arrival minus RTP time), a packet's media lasting a frame
/// (video) or 20 ms (audio). Independent of the stitcher's clock, valid when the senders'
/// clocks do not drift against the capture's (one machine).
fn stream_spans(captured: &[Vec<Captured>], codecs: &[Codec]) -> Vec<(f64, f64)> {
    let mut spans = Vec::new();
    for (stream, &codec) in captured.iter().zip(codecs) {
        let (rate, last_lasts) = if codec == Codec::Opus {
            (48_000.0, 0.020)
        } else {
            (90_000.0, 1.0 / 30.0)
        };
        let first_ts = rtp_fields(&stream[0].bytes).timestamp;
        let rtp = |c: &Captured| {
            f64::from(rtp_fields(&c.bytes).timestamp.wrapping_sub(first_ts) as i32) / rate
        };
        let transit = stream
            .iter()
            .map(|c| c.arrival_micros as f64 / 1e6 - rtp(c))
            .fold(f64::MAX, f64::min);
        let (low, high) = stream
            .iter()
            .map(rtp)
            .fold((f64::MAX, f64::MIN), |(l, h), t| (l.min(t), h.max(t)));
        spans.push((transit + low, transit + high + last_lasts));
    }
    spans
}
