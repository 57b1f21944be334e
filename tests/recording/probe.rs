//! What FFmpeg's own tools say about a file: ffprobe's entries, a full decode, and the
//! order of packet timestamps.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether ffmpeg and ffprobe are installed; says loudly that the test skips when not.
pub fn have_ffmpeg(test: &str) -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let present = ok("ffmpeg") && ok("ffprobe");
    if !present {
        eprintln!(
            "SKIPPED {test}: ffmpeg/ffprobe not installed (scripts/install-deps.sh, or \
             apt-get install ffmpeg)"
        );
    }
    present
}

pub fn ffprobe(path: &Path, args: &[&str]) -> String {
    let output = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("ffprobe writes UTF-8")
}

/// Decodes the whole file; FFmpeg's error output (empty when it plays clean to the end).
/// Frames keep the file's own time base: a tile's frames are as far apart as their RTP
/// timestamps and the sender's clock say, not on a 30 fps grid, and rounding them onto
/// one would report two frames at one time.
pub fn decode_errors(path: &Path) -> String {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-enc_time_base:v", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let mut errors = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        errors.push_str(&format!(" (exit {})", output.status));
    }
    errors
}

pub fn duration_seconds(path: &Path) -> f64 {
    ffprobe(
        path,
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
    )
    .trim()
    .parse()
    .expect("a duration")
}

/// Frames of the first video stream, counted by decoding.
pub fn count_video_frames(path: &Path) -> u64 {
    ffprobe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ],
    )
    .trim()
    .parse()
    .expect("a frame count")
}

/// Asserts that packet timestamps (dts) increase in every stream; returns the packets
/// per stream index.
pub fn assert_monotonic_packets(path: &Path) -> BTreeMap<String, u64> {
    let listing = ffprobe(
        path,
        &[
            "-show_entries",
            "packet=stream_index,dts_time",
            "-of",
            "csv=p=0",
        ],
    );
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut packets: BTreeMap<String, u64> = BTreeMap::new();
    for line in listing.lines() {
        let mut fields = line.split(',');
        let (Some(stream), Some(dts)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(dts) = dts.parse::<f64>() else {
            continue;
        };
        if let Some(&previous) = last.get(stream) {
            assert!(
                dts > previous,
                "stream {stream}: dts {dts} after {previous}"
            );
        }
        last.insert(stream.to_owned(), dts);
        *packets.entry(stream.to_owned()).or_default() += 1;
    }
    assert!(!packets.is_empty(), "no packets in {}", path.display());
    packets
}
