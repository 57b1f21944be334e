//! Pass 2: the simulcast layer choice, one video file per tile.
//!
//! A participant's camera may come as up to three simulcast encodings (separate
//! streams). The tile shows one at a time: the highest *available* encoding, where an
//! encoding is available while its frames keep coming (no gap longer than
//! [`StitchOptions::layer_stall_micros`]). Switching is only possible where the target
//! encoding has a keyframe (the decoder has no state of it):
//!
//! * **up**: at the first keyframe of any higher encoding;
//! * **down**: once the current encoding has stalled, at the next keyframe of the highest
//!   encoding still available below it.
//!
//! The encodings' spool files are merged by time, frame by frame, so memory holds one
//! frame per encoding. Every tile gets the same fixed size in the composition (FFmpeg
//! scales), so a switch changes sharpness, not layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::compose::TileInput;
use super::ivf::IvfWriter;
use super::pipeline::FinishedStream;
use super::spool::{SpoolReader, SpooledFrame};
use super::{StitchError, StitchOptions, TileReport, TrackKind};

/// Switches listed in a tile report (a flapping sender could switch every second).
pub const MAX_REPORTED_SWITCHES: usize = 1000;
/// Keyframes of several encodings this close in time are one moment: a sender makes the
/// keyframes of all its encodings together (at the start, on a PLI), and their separate
/// anchors put them microseconds apart. The choice then goes straight to the highest.
const SIMULTANEOUS_MICROS: i64 = 50_000;

/// One change of the chosen encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LayerSwitch {
    /// Microseconds from the start of the recording.
    pub at_micros: u64,
    /// `None` for the first choice.
    pub from: Option<u8>,
    pub to: u8,
}

/// Decides, frame by frame in time order, which encoding's frames go into the tile.
#[derive(Debug)]
pub(crate) struct LayerSelector {
    stall_micros: i64,
    current: Option<u8>,
    /// Last frame time of each encoding.
    last_seen: BTreeMap<u8, i64>,
    last_written: Option<i64>,
    /// The chosen encoding lost a frame (time already taken): wait for its keyframe or
    /// switch at any other encoding's.
    broken: bool,
}

impl LayerSelector {
    pub fn new(stall_micros: u64) -> LayerSelector {
        LayerSelector {
            stall_micros: i64::try_from(stall_micros).unwrap_or(i64::MAX),
            current: None,
            last_seen: BTreeMap::new(),
            last_written: None,
            broken: false,
        }
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    fn available(&self, encoding: u8, now: i64) -> bool {
        self.last_seen
            .get(&encoding)
            .is_some_and(|&seen| seen >= now.saturating_sub(self.stall_micros))
    }

    /// Offers a frame; true if it goes into the tile (the chosen encoding may change).
    pub fn offer(&mut self, encoding: u8, wall_micros: i64, keyframe: bool) -> bool {
        self.last_seen.insert(encoding, wall_micros);
        if self.last_written.is_some_and(|last| wall_micros <= last) {
            if self.current == Some(encoding) {
                self.broken = true;
            }
            return false;
        }
        let take = match self.current {
            Some(current) if current == encoding => keyframe || !self.broken,
            _ if !keyframe => false,
            None => true,
            Some(current) if encoding > current || self.broken => true,
            Some(current) => {
                // Down only when the current one stalled, and only to the highest of the
                // encodings still available below it.
                let highest_available_below = self
                    .last_seen
                    .keys()
                    .rev()
                    .find(|&&e| e < current && self.available(e, wall_micros));
                !self.available(current, wall_micros) && highest_available_below == Some(&encoding)
            }
        };
        if take {
            self.current = Some(encoding);
            self.broken = false;
            self.last_written = Some(wall_micros);
        }
        take
    }
}

/// A tile's input for FFmpeg and its report.
#[derive(Debug)]
pub(crate) struct Tile {
    pub input: TileInput,
    pub report: TileReport,
}

/// Builds one IVF file per tile (participant and video kind) from the streams' spools.
pub(crate) fn build_tiles(
    streams: &[FinishedStream],
    start: i64,
    options: &StitchOptions,
    dir: &Path,
) -> Result<Vec<Tile>, StitchError> {
    let mut groups: BTreeMap<(String, TrackKind), Vec<&FinishedStream>> = BTreeMap::new();
    for stream in streams
        .iter()
        .filter(|s| s.codec.is_video() && s.spool.is_some())
    {
        groups
            .entry((stream.key.participant.clone(), stream.key.kind))
            .or_default()
            .push(stream);
    }
    let mut tiles = Vec::new();
    for (index, ((participant, kind), encodings)) in groups.into_iter().enumerate() {
        let path = dir.join(format!("tile-{index}.ivf"));
        if let Some(tile) = build_tile(participant, kind, &encodings, start, options, &path)? {
            tiles.push(tile);
        }
    }
    Ok(tiles)
}

fn build_tile(
    participant: String,
    kind: TrackKind,
    encodings: &[&FinishedStream],
    start: i64,
    options: &StitchOptions,
    path: &Path,
) -> Result<Option<Tile>, StitchError> {
    // The tile's codec is the highest encoding's: simulcast encodings share a codec; an
    // encoding in another codec could not go into the same file and is left out.
    let Some(codec) = encodings
        .iter()
        .max_by_key(|s| s.key.encoding)
        .map(|s| s.codec)
    else {
        return Ok(None);
    };
    let mut readers: Vec<(u8, SpoolReader, Option<SpooledFrame>)> = Vec::new();
    for stream in encodings.iter().filter(|s| s.codec == codec) {
        let Some(spool) = &stream.spool else { continue };
        let mut reader = SpoolReader::open(spool)
            .map_err(StitchError::io(format!("reading {}", spool.display())))?;
        let head = reader
            .next_frame()
            .map_err(StitchError::io("reading a spool file"))?;
        readers.push((stream.key.encoding, reader, head));
    }
    let file =
        File::create(path).map_err(StitchError::io(format!("creating {}", path.display())))?;
    let (width, height) = (0, 0);
    let mut ivf = IvfWriter::new(BufWriter::new(file), codec.ivf_fourcc(), width, height)
        .map_err(StitchError::io("writing a tile"))?;
    let mut selector = LayerSelector::new(options.layer_stall_micros);
    let absent_after = i64::try_from(options.absent_after_micros).unwrap_or(i64::MAX);
    let mut report = TileReport {
        participant,
        kind,
        codec,
        frames_written: 0,
        frames_by_encoding: BTreeMap::new(),
        switches: Vec::new(),
        frames_not_chosen: 0,
        visible: Vec::new(),
        file: None,
    };
    let mut first_pts = None;
    let mut last_pts: Option<u64> = None;
    // Merge by (time, encoding): deterministic whatever the order of the spools.
    while let Some(next) = readers
        .iter()
        .enumerate()
        .filter_map(|(i, (encoding, _, head))| head.as_ref().map(|f| (f.wall_micros, *encoding, i)))
        .min()
        .map(|(_, _, i)| i)
    {
        let (encoding, reader, head) = &mut readers[next];
        let encoding = *encoding;
        let Some(frame) = std::mem::replace(
            head,
            reader
                .next_frame()
                .map_err(StitchError::io("reading a spool file"))?,
        ) else {
            break;
        };
        let before = selector.current();
        // Frames before the start cannot be (start is the earliest media time).
        let pts = u64::try_from(frame.wall_micros - start).unwrap_or(0);
        let higher_keyframe_coming = frame.keyframe
            && before != Some(encoding)
            && readers.iter().any(|(other, _, head)| {
                *other > encoding
                    && head.as_ref().is_some_and(|h| {
                        h.keyframe && h.wall_micros <= frame.wall_micros + SIMULTANEOUS_MICROS
                    })
            });
        if higher_keyframe_coming || !selector.offer(encoding, frame.wall_micros, frame.keyframe) {
            report.frames_not_chosen += 1;
            continue;
        }
        if before != Some(encoding) && report.switches.len() < MAX_REPORTED_SWITCHES {
            report.switches.push(LayerSwitch {
                at_micros: pts,
                from: before,
                to: encoding,
            });
        }
        ivf.write_frame(pts, &frame.data)
            .map_err(StitchError::io("writing a tile"))?;
        report.frames_written += 1;
        *report.frames_by_encoding.entry(encoding).or_default() += 1;
        first_pts.get_or_insert(pts);
        // Visibility: a new stretch after a pause longer than `absent_after`.
        match (last_pts, report.visible.last_mut()) {
            (Some(last), Some(stretch)) if (pts - last) as i64 <= absent_after => stretch.1 = pts,
            _ => report.visible.push((pts, pts)),
        }
        last_pts = Some(pts);
    }
    ivf.finish().map_err(StitchError::io("finishing a tile"))?;
    let Some(first_pts) = first_pts else {
        return Ok(None);
    };
    // Each stretch shows its last frame for one more frame interval (at most the pause
    // threshold), so a tile does not blink off between its frames.
    let hold = (absent_after as u64).min(1_000_000 / u64::from(options.fps.max(1)) * 2);
    for stretch in &mut report.visible {
        stretch.1 += hold;
    }
    Ok(Some(Tile {
        input: TileInput {
            path: path.to_path_buf(),
            first_pts_micros: first_pts,
            visible: report.visible.clone(),
        },
        report,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames every 33 ms; `(encoding, time in frames, keyframe)`.
    fn run(offers: &[(u8, i64, bool)]) -> Vec<(i64, Option<u8>)> {
        let mut selector = LayerSelector::new(1_000_000);
        offers
            .iter()
            .map(|&(encoding, frame, keyframe)| {
                let taken =
                    selector.offer(encoding, frame * 33_333 + i64::from(encoding), keyframe);
                (frame, taken.then_some(encoding))
            })
            .collect()
    }

    #[test]
    fn starts_at_the_first_keyframe_and_switches_up_at_a_higher_keyframe() {
        let result = run(&[
            (0, 0, false),
            (0, 1, true),
            (2, 1, false),
            (0, 2, false),
            (2, 2, true),
            (0, 3, true),
            (2, 3, false),
        ]);
        assert_eq!(
            result,
            vec![
                (0, None),
                (1, Some(0)),
                (1, None),
                (2, Some(0)),
                (2, Some(2)),
                (3, None),
                (3, Some(2))
            ]
        );
    }

    #[test]
    fn switches_down_only_after_a_stall_and_at_a_keyframe_of_the_highest_left() {
        let mut offers = vec![(2, 0, true), (1, 0, true), (0, 0, true)];
        for frame in 1..10 {
            offers.push((2, frame, false));
            offers.push((1, frame, false));
            offers.push((0, frame, false));
        }
        // Encoding 2 stops after frame 9. Lower encodings go on; keyframes of 0 at 40
        // and of 1 at 45.
        for frame in 10..60 {
            offers.push((1, frame, frame == 45));
            offers.push((0, frame, frame == 40));
        }
        let result = run(&offers);
        let chosen: Vec<(i64, u8)> = result
            .iter()
            .filter_map(|&(f, e)| e.map(|e| (f, e)))
            .collect();
        assert!(chosen
            .iter()
            .filter(|&&(f, _)| f < 10)
            .all(|&(_, e)| e == 2));
        // Frame 40: 2 stalled (> 1 s since frame 9) but 1 is available and higher than
        // 0, so 0's keyframe is not taken; the switch is at 1's keyframe.
        let first_after = chosen.iter().find(|&&(f, _)| f >= 10).copied();
        assert_eq!(first_after, Some((45, 1)));
        assert!(chosen
            .iter()
            .filter(|&&(f, _)| f >= 45)
            .all(|&(_, e)| e == 1));
    }

    #[test]
    fn a_frame_at_a_taken_time_breaks_the_chain_until_a_keyframe() {
        let mut selector = LayerSelector::new(1_000_000);
        assert!(selector.offer(1, 100, true));
        assert!(!selector.offer(1, 100, false), "same time");
        assert!(!selector.offer(1, 200, false), "its reference is missing");
        assert!(
            selector.offer(0, 300, true),
            "any keyframe repairs the tile"
        );
    }
}
