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
