//! Counting what a media file holds: frames decoded by `ffprobe -count_frames`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process;

/// Bound on one ffprobe run (decoding ~10 s of 360p VP8 takes well under a second).
const FFPROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Frames decoded from a file, by media type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub video: u64,
    pub audio: u64,
}

/// Decodes every stream of `path` with ffprobe and counts the frames (`nb_read_frames`).
/// A missing or empty file holds no frames; a file ffprobe cannot read is an error.
pub fn count_frames(path: &Path) -> Result<FrameCounts> {
    if path.metadata().map_or(true, |m| m.len() == 0) {
        return Ok(FrameCounts::default());
    }
    let mut command = Command::new("ffprobe");
    command
        .args(["-v", "error", "-count_frames"])
        .args(["-show_entries", "stream=codec_type,nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(path);
    let out = process::run("ffprobe", command, FFPROBE_TIMEOUT)
        .with_context(|| format!("cannot count the frames of {}", path.display()))?;
    let mut counts = FrameCounts::default();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let (kind, frames) = line
            .trim()
            .split_once(',')
            .with_context(|| format!("unexpected ffprobe line `{line}`"))?;
        // ffprobe prints "N/A" for a stream it could not decode at all.
        let frames: u64 = frames.trim().parse().unwrap_or(0);
        match kind {
            "video" => counts.video += frames,
            "audio" => counts.audio += frames,
            other => bail!("unexpected stream type `{other}` in {}", path.display()),
        }
    }
    Ok(counts)
}

/// One decoded video frame: when it is shown and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoFrame {
    /// Presentation time in seconds.
    pub time: f64,
    pub width: u32,
    pub height: u32,
}

/// Decodes the first video stream of `path` and lists its frames in presentation order,
/// with whatever ffprobe reported at error level (empty when the stream decodes cleanly).
pub fn video_frames(path: &Path) -> Result<(Vec<VideoFrame>, String)> {
    let mut command = Command::new("ffprobe");
    command
        .args(["-v", "error", "-select_streams", "v:0", "-show_frames"])
        .args(["-show_entries", "frame=pts_time,width,height"])
        .args(["-of", "compact=p=0"])
        .arg(path);
    let out = process::run("ffprobe", command, FFPROBE_TIMEOUT)
        .with_context(|| format!("cannot list the frames of {}", path.display()))?;
    let mut frames = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        // `pts_time=0.033000|width=320|height=180`, in ffprobe's field order.
        let field = |name: &str| {
            line.trim()
                .split('|')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .with_context(|| format!("no {name} in ffprobe frame line `{line}`"))
        };
        let bad = |name: &str| format!("bad {name} in `{line}`");
        frames.push(VideoFrame {
            time: field("pts_time")?
                .parse()
                .with_context(|| bad("pts_time"))?,
            width: field("width")?.parse().with_context(|| bad("width"))?,
            height: field("height")?.parse().with_context(|| bad("height"))?,
        });
    }
    frames.sort_by(|a, b| a.time.total_cmp(&b.time));
    Ok((frames, out.stderr))
}

/// What decoding every frame of a file's first video stream gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Frames the decoder produced.
    pub frames: u64,
    /// What FFmpeg printed at error level: empty when nothing is corrupt.
    pub errors: String,
}

/// Decodes every frame of the first video stream of `path` with `ffmpeg -v error`.
///
/// Each frame goes to the `framemd5` muxer with its own timestamp (`-fps_mode
/// passthrough`): the `null` muxer would complain about two frames with one timestamp,
/// which is the file's timing (checked separately with [`video_frames`]), not corruption.
pub fn decode_video(path: &Path) -> Result<Decoded> {
    let mut command = Command::new("ffmpeg");
    command
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-f",
            "framemd5",
            "-",
        ]);
    let out = process::run("ffmpeg decode", command, FFPROBE_TIMEOUT)
        .with_context(|| format!("cannot decode {}", path.display()))?;
    Ok(Decoded {
        frames: out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count() as u64,
        errors: out.stderr,
    })
}
