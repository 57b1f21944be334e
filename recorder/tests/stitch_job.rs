//! A stitching job end to end on the store: real VP8 (libvpx) over RTP from FFmpeg,
//! written as a recorder writes it (chunks of a few seconds, by two recorder instances
//! whose chunks overlap in time, as after a failover, and one chunk torn by a crash),
//! stored in a local-directory store, stitched by `job::run`, the file uploaded and read
//! back.

mod stitch_support;

use fanout_forwarder::recording::{MediaCodec, TapPacket};
use fanout_forwarder::sfu::TrackKind as TapTrackKind;
use fanout_recorder::chunk::{ChunkHeader, ChunkWriter};
use fanout_recorder::job;
use fanout_recorder::stitch::{StitchOptions, StreamKey, TrackKind};
use fanout_recorder::store::{ChunkKey, RecordingStore};
use stitch_support::*;

const RECORDING: &str = "rec-job-test";

/// A chunk of `records` (tap packets of one participant's camera), as `instance` wrote it.
fn chunk(instance: &str, seq: u64, records: &[(u64, Vec<u8>)], codec: MediaCodec) -> Vec<u8> {
    let header = ChunkHeader {
        recording_id: RECORDING.into(),
        instance: instance.into(),
        seq,
        start_us: records.first().map_or(0, |r| r.0),
    };
    let mut writer = ChunkWriter::new(Vec::new(), &header).unwrap();
    for (arrival_us, rtp) in records {
        writer
            .append(&TapPacket {
                recording_id: RECORDING,
                meeting_id: "m",
                participant_id: "alice",
                track: TapTrackKind::Video,
                encoding: 0,
                codec,
                clock_rate: 90_000,
                arrival_us: *arrival_us,
                rtp,
            })
            .unwrap();
    }
    writer.close().unwrap()
}

#[test]
fn a_job_stitches_overlapping_and_torn_chunks_from_the_store() {
    if !have_ffmpeg() {
        return;
    }
    let dir = test_dir("job");
    let capture = CaptureSession::start(1);
    let mut args = strings(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30:duration=6",
    ]);
    args.extend(vp8_output("0:v", 4242, "300k", &capture.url(0)));
    wait_ffmpeg(spawn_ffmpeg(&args));
    let captured = capture.finish().remove(0);
    // Arrival times from the RTP clock, as a steady sender would give.
    let base = 1_800_000_000_000_000u64;
    let first_ts = rtp_fields(&captured[0].bytes).timestamp;
    let records: Vec<(u64, Vec<u8>)> = captured
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let ts = rtp_fields(&c.bytes).timestamp.wrapping_sub(first_ts);
            (base + u64::from(ts) * 1000 / 90 + n as u64, c.bytes.clone())
        })
        .collect();
    let frames_sent = captured
        .iter()
        .filter(|c| rtp_fields(&c.bytes).marker)
        .count() as u64;
    assert!(frames_sent >= 170, "{frames_sent} frames");

    // Recorder "a" wrote the first two thirds in two chunks; recorder "b" (after a
    // failover) the last half, overlapping a's second chunk, and crashed while its chunk
    // was open: the chunk is cut mid-record, its whole records kept.
    let third = records.len() / 3;
    let half = records.len() / 2;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = RecordingStore::local(&dir.join("store")).unwrap();
    let put = |instance: &str, seq: u64, bytes: Vec<u8>| {
        let key = ChunkKey {
            recording_id: RECORDING.into(),
            instance: instance.into(),
            seq,
        };
        runtime
            .block_on(store.put_chunk(&key, bytes.into()))
            .unwrap();
    };
    put("a", 1, chunk("a", 1, &records[..third], MediaCodec::Vp8));
    put(
        "a",
        2,
        chunk("a", 2, &records[third..2 * third], MediaCodec::Vp8),
    );
    let mut torn = chunk("b", 1, &records[half..], MediaCodec::Vp8);
    torn.truncate(torn.len() - 50); // the trailer and part of the last record
    put("b", 1, torn);
    // A track of a codec the stitcher does not know is left out, counted.
    put("c", 1, chunk("c", 1, &records[..3], MediaCodec::Unknown));

    let mut fractions = Vec::new();
    let options = StitchOptions {
        intermediate_dir: Some(dir.join("work")),
        ..StitchOptions::default()
    };
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let outcome = runtime
        .block_on(job::run(&store, RECORDING, &options, &scratch, &mut |f| {
            fractions.push(f)
        }))
        .expect("the job succeeds");
    assert_eq!(outcome.chunks, 4);
    assert_eq!(outcome.torn_chunks, 1);
    assert_eq!(outcome.unknown_codec_packets, 3);
    assert_eq!(fractions.first(), Some(&0.0));
    assert_eq!(fractions.last(), Some(&1.0));
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");

    // Everything but the torn record made it: the overlap is deduplicated, the frame the
    // crash cut is incomplete and not written.
    let key = StreamKey {
        participant: "alice".into(),
        kind: TrackKind::Camera,
        encoding: 0,
    };
    let stream = outcome.report.stream(&key).expect("alice's camera");
    assert!(
        stream.duplicate_packets > 0,
        "the overlap is seen: {stream:?}"
    );
    assert!(
        stream.frames_written + 2 >= frames_sent && stream.frames_written < frames_sent,
        "{} of {frames_sent} frames written",
        stream.frames_written
    );

    // The output is in the store, whole and playable.
    let output = dir.join("downloaded.webm");
    let bytes = runtime
        .block_on(store.get_output_to_file(RECORDING, &output))
        .unwrap();
    assert_eq!(bytes, outcome.output_bytes);
    assert_eq!(decode_errors(&output), "");
    assert_monotonic_packets(&output);
    let duration = duration_seconds(&output);
    assert!((duration - 6.0).abs() < 0.5, "{duration} s");
    // Running the job again replaces the same object (idempotent).
    std::fs::create_dir_all(&scratch).unwrap();
    let again = runtime
        .block_on(job::run(&store, RECORDING, &options, &scratch, &mut |_| {}))
        .unwrap();
    assert_eq!(
        again.report.stream(&key).unwrap().frames_written,
        stream.frames_written
    );
    let _ = std::fs::remove_dir_all(&dir);
}
