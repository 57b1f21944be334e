//! The FFmpeg run: tiles in a grid over black, audio mixed, encoded to WebM.
//!
//! ```text
//! color=black:1280x720:30fps:d=D ──► overlay(tile 0, enable=visible stretches) ──► overlay(tile 1) ─► … ─► format=yuv420p ─► libvpx (VP8)
//! [i:v] (IVF, -itsoffset first pts, -reinit_filter 0) ─► scale to fit ─► pad to tile ─► setsar=1 ──┘
//! [j:a] (Ogg Opus) ─► adelay=start in samples ─► amix(normalize=0) ─► libopus
//! ```
//!
//! * IVF timestamps are microseconds from the start of the recording. FFmpeg shifts
//!   every input so that it starts at 0; `-itsoffset` with the tile's first timestamp puts
//!   it back, so a late joiner appears at its time.
//! * `-reinit_filter 0`: a simulcast switch or a sender's resolution change reaches
//!   `scale` as frames of another size, which it handles by itself. Without it FFmpeg
//!   rebuilds the whole graph, restarting the black background's clock.
//! * Outside its visible stretches (before joining, after leaving, during a long pause) a
//!   tile's overlay is disabled and the black background shows.
//! * The Ogg files start at their first packet; `adelay` (in samples) places each on the
//!   timeline, and holes inside were filled with concealment when the files were written.
//! * Bit-exact flags keep version strings and random UIDs out of the file, and libvpx runs
//!   at a fixed speed (`-cpu-used` negative: a positive value lets VP8's realtime mode
//!   pick its speed from measured encoding time), so the same input gives the same bytes.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{StitchError, StitchOptions};

/// Keep this much of FFmpeg's stderr for the error (its last lines say what failed).
const STDERR_KEEP_BYTES: usize = 16 * 1024;
/// A filter graph longer than this goes through a script file rather than the command
/// line (Linux limits one argument to 128 KiB).
const INLINE_GRAPH_MAX: usize = 64 * 1024;

/// One tile: its IVF file, the first frame's time and the stretches it is visible (µs
/// from the start of the recording).
#[derive(Debug, Clone)]
pub(crate) struct TileInput {
    pub path: PathBuf,
    pub first_pts_micros: u64,
    pub visible: Vec<(u64, u64)>,
}

/// One audio track: its Ogg Opus file and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct AudioInput {
    pub path: PathBuf,
    pub delay_micros: u64,
}

/// Where tile `index` of `count` goes: (x, y, width, height). Tiles fill a grid of
/// ceil(sqrt(n)) columns row by row; every tile has the output's aspect ratio (a camera's
/// 16:9 is not letterboxed in a tall tile), the grid is centred, and so is a last row
/// with fewer tiles.
pub(crate) fn tile_rect(
    index: usize,
    count: usize,
    width: u16,
    height: u16,
) -> (u32, u32, u32, u32) {
    let count = count.max(1);
    let columns = (1..=count).find(|c| c * c >= count).unwrap_or(1);
    let rows = count.div_ceil(columns);
    let even = |v: u32| v & !1;
    let divisions = columns.max(rows) as u32;
    let tile_w = even(u32::from(width) / divisions);
    let tile_h = even(u32::from(height) / divisions);
    let row = index / columns;
    let column = index % columns;
    let in_row = if row == rows - 1 {
        count - row * columns
    } else {
        columns
    };
    let x0 = (u32::from(width) - tile_w * in_row as u32) / 2;
    let y0 = (u32::from(height) - tile_h * rows as u32) / 2;
    (
        x0 + column as u32 * tile_w,
        y0 + row as u32 * tile_h,
        tile_w,
        tile_h,
    )
}

fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The `-filter_complex` graph. Inputs are numbered tiles first, then audio.
pub(crate) fn filter_graph(
    tiles: &[TileInput],
    audio: &[AudioInput],
    duration_micros: u64,
    options: &StitchOptions,
) -> String {
    let mut graph = String::new();
    let (w, h, fps) = (options.width, options.height, options.fps);
    let _ = write!(
        graph,
        "color=c=black:s={w}x{h}:r={fps}:d={}[base0]",
        seconds(duration_micros)
    );
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y, tw, th) = tile_rect(i, tiles.len(), w, h);
        let enable: Vec<String> = tile
            .visible
            .iter()
            .map(|&(from, to)| format!("between(t\\,{}\\,{})", seconds(from), seconds(to)))
            .collect();
        let enable = if enable.is_empty() {
            "0".to_string()
        } else {
            enable.join("+")
        };
        let _ = write!(
            graph,
            ";[{i}:v]scale=w={tw}:h={th}:force_original_aspect_ratio=decrease,pad={tw}:{th}:-1:-1:color=black,setsar=1[tile{i}]\
             ;[base{i}][tile{i}]overlay=x={x}:y={y}:eof_action=pass:enable='{enable}'[base{}]",
            i + 1
        );
    }
    let _ = write!(graph, ";[base{}]format=yuv420p[vout]", tiles.len());
    for (j, track) in audio.iter().enumerate() {
        let delay_samples = track.delay_micros * 48 / 1000;
        let _ = write!(
            graph,
            ";[{}:a]adelay=delays={delay_samples}S:all=1[a{j}]",
            tiles.len() + j
        );
    }
    match audio.len() {
        0 => {}
        1 => graph.push_str(";[a0]anull[aout]"),
        n => {
            graph.push(';');
            for j in 0..n {
                let _ = write!(graph, "[a{j}]");
            }
            // normalize=0: a participant is as loud in the mix as alone (amix would
            // otherwise divide by the number of inputs).
            let _ = write!(
                graph,
                "amix=inputs={n}:duration=longest:dropout_transition=0:normalize=0[aout]"
            );
        }
    }
    graph
}

/// The full argument list of the FFmpeg run (without the binary).
pub(crate) fn arguments(
    tiles: &[TileInput],
    audio: &[AudioInput],
    duration_micros: u64,
    options: &StitchOptions,
    graph: GraphArg,
    output: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-y",
        "-v",
        "error",
        "-nostats",
        "-progress",
        "pipe:1",
    ]
    .map(String::from)
    .to_vec();
    for tile in tiles {
        args.extend([
            "-reinit_filter".into(),
            "0".into(),
            "-itsoffset".into(),
            seconds(tile.first_pts_micros),
        ]);
        args.extend([
            "-f".into(),
            "ivf".into(),
            "-i".into(),
            tile.path.display().to_string(),
        ]);
    }
    for track in audio {
        args.extend([
            "-f".into(),
            "ogg".into(),
            "-i".into(),
            track.path.display().to_string(),
        ]);
    }
    match graph {
        GraphArg::Inline(graph) => args.extend(["-filter_complex".into(), graph]),
        GraphArg::Script(path) => {
            args.extend(["-filter_complex_script".into(), path.display().to_string()])
        }
    }
    args.extend(["-map".into(), "[vout]".into()]);
    if !audio.is_empty() {
        args.extend(["-map".into(), "[aout]".into()]);
    }
    let fps = options.fps;
    args.extend(
        [
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            &format!("-{}", options.vp8_cpu_used),
            "-b:v",
            &format!("{}k", options.video_bitrate_kbps),
            "-g",
            &(u32::from(fps) * 4).to_string(),
            "-auto-alt-ref",
            "0",
            "-threads",
            "2",
        ]
        .map(String::from),
    );
    if !audio.is_empty() {
        args.extend(
            [
                "-c:a",
                "libopus",
                "-b:a",
                &format!("{}k", options.audio_bitrate_kbps),
                "-ar",
                "48000",
            ]
            .map(String::from),
        );
    }
    args.extend(["-t".into(), seconds(duration_micros)]);
    args.extend(
        [
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-f",
            "webm",
        ]
        .map(String::from),
    );
    args.push(output.display().to_string());
    args
}

/// How the filter graph reaches FFmpeg.
#[derive(Debug, Clone)]
pub(crate) enum GraphArg {
    Inline(String),
    Script(PathBuf),
}

/// Runs FFmpeg; `progress` gets the fraction of the timeline encoded. The output goes to
/// a `.part` file renamed to `output` on success.
pub(crate) fn run_ffmpeg(
    tiles: &[TileInput],
    audio: &[AudioInput],
    duration_micros: u64,
    options: &StitchOptions,
    work_dir: &Path,
    output: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<(), StitchError> {
    let graph = filter_graph(tiles, audio, duration_micros, options);
    let graph = if graph.len() > INLINE_GRAPH_MAX {
        let script = work_dir.join("graph.txt");
        std::fs::write(&script, &graph).map_err(StitchError::io("writing the filter graph"))?;
        GraphArg::Script(script)
    } else {
        GraphArg::Inline(graph)
    };
    let mut partial = output.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let args = arguments(tiles, audio, duration_micros, options, graph, &partial);
    let mut child = Command::new(&options.ffmpeg)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StitchError::FfmpegNotFound {
            ffmpeg: options.ffmpeg.clone(),
            source,
        })?;
    // stderr is drained on its own thread so a chatty FFmpeg never blocks on a full pipe
    // while we read progress from stdout.
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > 2 * STDERR_KEEP_BYTES {
                    kept.drain(..kept.len() - STDERR_KEEP_BYTES);
                }
            }
        }
        let start = kept.len().saturating_sub(STDERR_KEEP_BYTES);
        String::from_utf8_lossy(&kept[start..]).into_owned()
    });
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // `out_time_us` (FFmpeg 4.4+) and the older, misnamed `out_time_ms` are both
            // microseconds.
            let value = line
                .strip_prefix("out_time_us=")
                .or_else(|| line.strip_prefix("out_time_ms="));
            if let Some(done) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
                progress((done as f64 / duration_micros.max(1) as f64).clamp(0.0, 1.0));
            }
        }
    }
    let status = child
        .wait()
        .map_err(StitchError::io("waiting for ffmpeg"))?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(StitchError::FfmpegFailed {
            status: status.to_string(),
            stderr,
        });
    }
    std::fs::rename(&partial, output).map_err(StitchError::io(format!(
        "moving the output to {}",
        output.display()
    )))?;
    progress(1.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_layouts() {
        assert_eq!(tile_rect(0, 1, 1280, 720), (0, 0, 1280, 720));
        assert_eq!(tile_rect(1, 2, 1280, 720), (640, 180, 640, 360));
        // Three tiles: 2x2 grid, last row centred.
        assert_eq!(tile_rect(2, 3, 1280, 720), (320, 360, 640, 360));
        // Ten tiles: 4 columns, 3 rows of 320x180, centred; the last row has 2.
        assert_eq!(tile_rect(0, 10, 1280, 720), (0, 90, 320, 180));
        assert_eq!(tile_rect(9, 10, 1280, 720), (640, 450, 320, 180));
    }

    #[test]
    fn graph_places_tiles_and_delays_audio() {
        let tiles = vec![
            TileInput {
                path: "a.ivf".into(),
                first_pts_micros: 0,
                visible: vec![(0, 5_000_000)],
            },
            TileInput {
                path: "b.ivf".into(),
                first_pts_micros: 3_000_000,
                visible: vec![(3_000_000, 4_000_000), (6_000_000, 9_500_000)],
            },
        ];
        let audio = vec![
            AudioInput {
                path: "a.ogg".into(),
                delay_micros: 20_000,
            },
            AudioInput {
                path: "b.ogg".into(),
                delay_micros: 3_000_000,
            },
        ];
        let graph = filter_graph(&tiles, &audio, 10_000_000, &StitchOptions::default());
        assert!(graph.starts_with("color=c=black:s=1280x720:r=30:d=10.000000[base0];"));
        assert!(graph
            .contains("[1:v]scale=w=640:h=360:force_original_aspect_ratio=decrease,pad=640:360"));
        assert!(graph.contains("overlay=x=640:y=180:eof_action=pass:enable='between(t\\,3.000000\\,4.000000)+between(t\\,6.000000\\,9.500000)'[base2]"));
        assert!(graph.contains("[2:a]adelay=delays=960S:all=1[a0]"));
        assert!(graph.contains("[3:a]adelay=delays=144000S:all=1[a1]"));
        assert!(graph.ends_with(
            "[a0][a1]amix=inputs=2:duration=longest:dropout_transition=0:normalize=0[aout]"
        ));
        let args = arguments(
            &tiles,
            &audio,
            10_000_000,
            &StitchOptions::default(),
            GraphArg::Inline(graph),
            Path::new("out.webm"),
        );
        let joined = args.join(" ");
        assert!(joined.contains("-reinit_filter 0 -itsoffset 3.000000 -f ivf -i b.ivf"));
        assert!(joined.contains("-t 10.000000"));
    }
}
