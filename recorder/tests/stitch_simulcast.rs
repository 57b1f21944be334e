//! Simulcast: three VP8 encodings of one camera (one FFmpeg process, three outputs at
//! 320x180, 640x360 and 1280x720); the top one stops halfway. Captured faster than real
//! time over UDP, with arrival times synthesised from the RTP clock (the same for all
//! three: their frames come from one source). The tile must switch down from the top
//! encoding to the middle one, at a keyframe, after the stall. Stitching twice gives the
//! same bytes.

mod stitch_support;

use fanout_recorder::stitch::{stitch, Codec, StitchOptions, TrackKind};
use stitch_support::*;

const SECONDS: u32 = 8;
const TOP_STOPS_AT: f64 = 4.0;

#[test]
fn top_encoding_stops_and_the_tile_switches_down_at_a_keyframe() {
    if !have_ffmpeg() {
        return;
    }
    let dir = test_dir("simulcast");
    let capture = CaptureSession::start(3);
    let mut args: Vec<String> = [
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size=1280x720:rate=30:duration={SECONDS}"),
        "-filter_complex",
        "[0:v]split=3[a][b][c];[a]scale=320:180[low];[b]scale=640:360[mid];[c]null[high]",
    ]
    .map(String::from)
    .to_vec();
    args.extend(vp8_output("[low]", 0x100, "150k", &capture.url(0)));
    args.extend(vp8_output("[mid]", 0x200, "500k", &capture.url(1)));
    // `-t` before an output ends that output only: the top encoding stops halfway.
    args.extend(["-t".to_string(), format!("{TOP_STOPS_AT}")]);
    args.extend(vp8_output("[high]", 0x300, "1500k", &capture.url(2)));
    wait_ffmpeg(spawn_ffmpeg(&args));
    let captured = capture.finish();

    // Arrival = the frame's RTP time (from the stream's first timestamp: every encoding's
    // first frame is the source's first) + a few ms of deterministic jitter.
    let base = 1_800_000_000_000_000u64;
    let mut rng = Rng::new(42);
    let mut packets = Vec::new();
    for (encoding, stream) in captured.iter().enumerate() {
        assert!(
            stream.len() > 50,
            "encoding {encoding}: {} packets",
            stream.len()
        );
        let first_ts = rtp_fields(&stream[0].bytes).timestamp;
        let mut stamped = stream.clone();
        for (i, c) in stamped.iter_mut().enumerate() {
            let ts = rtp_fields(&c.bytes).timestamp.wrapping_sub(first_ts);
            c.arrival_micros =
                base + u64::from(ts) * 1000 / 90 + 2_000 + rng.next() % 5_000 + i as u64;
        }
        packets.extend(recorded(
            &key("carol", TrackKind::Camera, encoding as u8),
            Codec::Vp8,
            &stamped,
        ));
    }
    packets.sort_by_key(|p| p.arrival_micros);

    let options = StitchOptions {
        intermediate_dir: Some(dir.join("work")),
        ..StitchOptions::default()
    };
    let output = dir.join("simulcast.webm");
    let report =
        stitch(packets.clone(), &options, &output, &mut |_| {}).expect("stitching succeeds");
    eprintln!("{:#?}", report.tiles);
    assert_eq!(report.tiles.len(), 1, "one participant, one tile");
    let tile = &report.tiles[0];

    // The first choice is the top encoding; the only switch is down to the middle one,
    // after the top stopped, within the stall time plus a keyframe interval (1 s) of it.
    assert_eq!(tile.switches.len(), 2, "{:?}", tile.switches);
    assert_eq!((tile.switches[0].from, tile.switches[0].to), (None, 2));
    assert!(tile.switches[0].at_micros < 100_000);
    let down = tile.switches[1];
    assert_eq!((down.from, down.to), (Some(2), 1));
    let down_at = down.at_micros as f64 / 1e6;
    let stall = options.layer_stall_micros as f64 / 1e6;
    assert!(
        down_at > TOP_STOPS_AT && down_at <= TOP_STOPS_AT + stall + 1.0 + 0.1,
        "switched down at {down_at}"
    );
    assert!(
        !tile.frames_by_encoding.contains_key(&0),
        "the lowest encoding was never needed"
    );

    // In the tile file: 1280-wide frames, then 640-wide ones starting with a key frame.
    let file = tile.file.as_ref().unwrap();
    assert_eq!(decode_errors(file), "");
    // (width, key_frame, pts_time) of every decoded frame.
    let listing = ffprobe(
        file,
        &[
            "-show_entries",
            "frame=width,key_frame,pts_time",
            "-of",
            "compact=p=0",
        ],
    );
    let frames: Vec<(u32, u32, f64)> = listing
        .lines()
        .map(|line| {
            let field = |name: &str| {
                line.split('|')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap()
                    .to_string()
            };
            (
                field("width").parse().unwrap(),
                field("key_frame").parse().unwrap(),
                field("pts_time").parse().unwrap(),
            )
        })
        .collect();
    let switch_index = frames
        .iter()
        .position(|f| f.0 == 640)
        .expect("frames of the middle encoding");
    assert!(frames[..switch_index].iter().all(|f| f.0 == 1280));
    assert!(frames[switch_index..].iter().all(|f| f.0 == 640));
    assert_eq!(frames[switch_index].1, 1, "the switch is at a key frame");
    assert!((frames[switch_index].2 - down_at).abs() < 0.001);
    assert_eq!(frames.len() as u64, tile.frames_written);

    assert_eq!(decode_errors(&output), "");
    assert_monotonic_packets(&output);
    let duration = duration_seconds(&output);
    assert!(
        (duration - f64::from(SECONDS)).abs() < 0.5,
        "duration {duration}"
    );

    // Same input, same output.
    let again = dir.join("again.webm");
    let options = StitchOptions {
        intermediate_dir: None,
        ..options
    };
    stitch(packets, &options, &again, &mut |_| {}).unwrap();
    assert!(
        std::fs::read(&output).unwrap() == std::fs::read(&again).unwrap(),
        "stitching is deterministic"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
