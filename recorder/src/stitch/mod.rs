//! Stitching: recorded RTP packets → one playable WebM file (see README.md beside this
//! file for the design).
//!
//! ```text
//! packets ─► per stream: Sequencer ─► per participant: ParticipantClock ─► per stream: video: FrameAssembler ─► KeyframeGate ─► spool file
//! (any order              (order,       (RTP time → wall clock, one          (depacketize,      (no garbage)
//!  per chunk)              dedup,        sender clock for all its streams)    complete frames)
//!                          segments)                                        audio: Opus check ─► Ogg Opus file (holes concealed)
//!
//! pass 2, per participant and track: spool files of its encodings ─► LayerSelector ─► IVF tile
//! ffmpeg: IVF tiles + Ogg tracks ─► grid (overlay on black) + amix ─► WebM (VP8 + Opus)
//! ```
//!
//! [`stitch`] streams through the packets once; what it holds in memory is bounded per
//! stream (the reorder window, one frame being assembled) and per participant (one second
//! of packets waiting for the clock's lookahead), not by the length of the recording:
//! frames go to disk at once.

pub mod depacketize;
pub mod ivf;
pub mod ogg;
pub mod rtp;

mod anchor;
mod compose;
mod layers;
mod pipeline;
mod sequence;
mod spool;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use layers::LayerSwitch;

/// Which simulcast encoding, track kind and participant a packet belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct StreamKey {
    pub participant: String,
    pub kind: TrackKind,
    /// Simulcast encoding, 0 the lowest.
    pub encoding: u8,
}

/// The kind of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Camera,
    Screen,
}

/// The payload format of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
}

impl Codec {
    fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// The IVF FourCC FFmpeg maps to this codec.
    fn ivf_fourcc(self) -> [u8; 4] {
        match self {
            Codec::Vp8 => *b"VP80",
            Codec::Vp9 => *b"VP90",
            Codec::H264 => *b"H264",
            Codec::Opus => *b"OPUS",
        }
    }
}

/// One recorded packet, as the forwarder tapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPacket {
    pub stream: StreamKey,
    pub codec: Codec,
    /// RTP clock rate of the stream (90000 for video, 48000 for Opus).
    pub clock_rate: u32,
    /// When the forwarder received it, microseconds since the unix epoch.
    pub arrival_micros: u64,
    /// The plaintext RTP packet, header included.
    pub rtp: Vec<u8>,
}

/// How to stitch. [`StitchOptions::default`] gives a 1280x720 30 fps VP8 + Opus WebM.
#[derive(Debug, Clone)]
pub struct StitchOptions {
    /// The `ffmpeg` binary.
    pub ffmpeg: PathBuf,
    pub width: u16,
    pub height: u16,
    pub fps: u16,
    pub video_bitrate_kbps: u32,
    pub audio_bitrate_kbps: u32,
    /// libvpx speed (0-16; higher is faster and worse), used as a fixed speed.
    pub vp8_cpu_used: u8,
    /// A packet waits this long (by the arrival time of later packets) for a missing
    /// predecessor before the gap counts as loss.
    pub reorder_window_micros: u64,
    /// The anchor of a segment is found over its first packets of this span, and every
    /// packet is placed once the arrivals of this span after it have been seen (the
    /// lookahead of the participant's clock, see `anchor.rs`).
    pub anchor_window_micros: u64,
    /// An RTP timestamp further than this from what the arrival clock predicts starts a
    /// new segment.
    pub resync_micros: u64,
    /// An encoding without a frame for this long is no longer available: the layer
    /// choice switches down at the next keyframe of a lower one.
    pub layer_stall_micros: u64,
    /// A tile without a frame for this long shows black until frames come again.
    pub absent_after_micros: u64,
    /// Where intermediate files go: `Some` keeps them there (for debugging and tests),
    /// `None` uses a fresh directory under the system temporary directory, removed
    /// afterwards.
    pub intermediate_dir: Option<PathBuf>,
}

impl Default for StitchOptions {
    fn default() -> Self {
        StitchOptions {
            ffmpeg: PathBuf::from("ffmpeg"),
            width: 1280,
            height: 720,
            fps: 30,
            video_bitrate_kbps: 1500,
            audio_bitrate_kbps: 96,
            vp8_cpu_used: 8,
            reorder_window_micros: 300_000,
            anchor_window_micros: 1_000_000,
            resync_micros: 3_000_000,
            layer_stall_micros: 1_000_000,
            absent_after_micros: 2_000_000,
            intermediate_dir: None,
        }
    }
}

/// Where a stitching job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading packets: ordering, depacketizing, writing intermediate files.
    Reading,
    /// Choosing simulcast layers and writing one video file per tile.
    Selecting,
    /// FFmpeg composes and encodes.
    Encoding,
    Done,
}

/// Progress of a stitching job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    /// Overall fraction done, 0 to 1, never decreasing. While reading it only moves if
    /// the packet iterator knows its length (`size_hint`).
    pub fraction: f64,
    pub packets_read: u64,
}

/// What happened to one stream (participant, kind, encoding).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    pub stream: Option<StreamKey>,
    pub codec: Option<Codec>,
    pub packets: u64,
    /// Not RTP, an empty clock rate, or a payload the depacketizer refused (Opus).
    pub malformed_packets: u64,
    /// Packets whose codec or clock rate differ from the stream's first packet.
    pub mismatched_packets: u64,
    pub duplicate_packets: u64,
    /// Packets that came after the reorder window had given up on them.
    pub late_packets: u64,
    /// Packets of an SSRC the stream had left (overlapping chunks after a failover).
    pub stale_source_packets: u64,
    /// Single packets far off in sequence or time that the next packet did not confirm.
    pub unconfirmed_jumps: u64,
    /// Sequence numbers never received, and in how many gaps.
    pub missing_packets: u64,
    pub gaps: u64,
    /// Continuous stretches of the stream (a new one at an SSRC change or a jump).
    pub segments: u32,
    /// How far the participant's clock mapping moved between this stream's first and
    /// last packet (the sender's clock drift it followed), µs; see `anchor.rs`.
    pub clock_correction_micros: i64,
    /// The longest a packet arrived after its place on the timeline, µs: network jitter,
    /// or the backlog of a sender that stalled and then caught up.
    pub max_arrival_lag_micros: u64,
    /// Audio: times the stream was realigned with the timeline while its packets were
    /// continuous (its sender's clock runs fast or slow): a packet dropped, or a packet's
    /// worth concealed.
    pub drift_corrections: u64,
    /// Video: frames reassembled whole.
    pub frames_complete: u64,
    /// Video: frames begun but not complete (or refused by the depacketizer).
    pub frames_incomplete: u64,
    /// Video: complete frames dropped while waiting for a keyframe (at the start, after a
    /// loss, after a new segment).
    pub frames_skipped_waiting_for_keyframe: u64,
    /// Complete frames or Opus packets whose time lies before media already written
    /// (overlapping segments).
    pub frames_overlapping: u64,
    /// Audio: Opus packets dropped because the sender's clock ran a packet ahead of the
    /// wall clock (see `drift_corrections`).
    pub frames_dropped_for_drift: u64,
    /// Video frames written to the stream's spool; Opus packets written to its Ogg file.
    pub frames_written: u64,
    pub keyframes_written: u64,
    /// Audio: microseconds of holes filled with concealment.
    pub concealed_micros: u64,
    /// Wall-clock span (unix µs) of the media placed on the timeline.
    pub first_micros: Option<i64>,
    pub end_micros: Option<i64>,
}

/// The video of one tile: one participant's camera or screen, after the layer choice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TileReport {
    pub participant: String,
    pub kind: TrackKind,
    pub codec: Codec,
    pub frames_written: u64,
    /// Frames written from each encoding.
    pub frames_by_encoding: BTreeMap<u8, u64>,
    /// Encoding changes, in order (the first choice included); at most
    /// [`layers::MAX_REPORTED_SWITCHES`] are listed.
    pub switches: Vec<LayerSwitch>,
    /// Offered frames of other encodings, or of the chosen one waiting for a keyframe.
    pub frames_not_chosen: u64,
    /// Stretches of the timeline (µs from the start of the recording) where the tile
    /// shows video; black elsewhere.
    pub visible: Vec<(u64, u64)>,
    /// The tile's IVF file, when intermediate files are kept.
    pub file: Option<PathBuf>,
}

/// The result of a stitching job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StitchReport {
    pub packets_read: u64,
    pub streams: Vec<StreamReport>,
    pub tiles: Vec<TileReport>,
    /// Ogg Opus files mixed (one per audio stream); kept ones are listed.
    pub audio_tracks: usize,
    pub audio_files: Vec<PathBuf>,
    /// The recording's start on the wall clock (unix µs): time 0 of the file.
    pub start_unix_micros: i64,
    /// The length of the timeline, which is the length given to FFmpeg.
    pub duration_micros: u64,
    /// How long FFmpeg took.
    pub encode_micros: u64,
}

impl StitchReport {
    /// The report of one stream.
    pub fn stream(&self, key: &StreamKey) -> Option<&StreamReport> {
        self.streams.iter().find(|s| s.stream.as_ref() == Some(key))
    }
}

/// Why stitching failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StitchError {
    #[error("no usable media in the recording")]
    NoMedia,
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("could not start {ffmpeg}: {source}")]
    FfmpegNotFound {
        ffmpeg: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ffmpeg failed ({status}): {stderr}")]
    FfmpegFailed { status: String, stderr: String },
}

impl StitchError {
    fn io(context: impl fmt::Display) -> impl FnOnce(io::Error) -> StitchError {
        let context = context.to_string();
        move |source| StitchError::Io { context, source }
    }
}

/// Intermediate files: a kept directory, or a temporary one removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(options: &StitchOptions) -> Result<WorkDir, StitchError> {
        let (path, remove) = match &options.intermediate_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                use std::sync::atomic::{AtomicU64, Ordering};
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let name = format!(
                    "fanout-stitch-{}-{nanos}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                (std::env::temp_dir().join(name), true)
            }
        };
        fs::create_dir_all(&path)
            .map_err(StitchError::io(format!("creating {}", path.display())))?;
        Ok(WorkDir { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            // Best effort: a leftover temporary directory is not worth failing a job.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Stitches a recording into one WebM file at `output`.
///
/// `packets` may come in any order per source chunk, with chunks overlapping; they are
/// consumed as they come (memory does not grow with the recording's length). The output
/// is first written beside `output` and renamed when FFmpeg succeeded, so a failed job
/// leaves no half file. The same input gives the same intermediate files and FFmpeg
/// command, so the same output as far as FFmpeg is deterministic (it is with the
/// bit-exact flags used, see README.md).
pub fn stitch(
    packets: impl IntoIterator<Item = RecordedPacket>,
    options: &StitchOptions,
    output: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<StitchReport, StitchError> {
    validate(options)?;
    let work = WorkDir::new(options)?;
    let (finished, packets_read) = read_streams(packets, options, &work.path, progress)?;
    progress(Progress {
        stage: Stage::Selecting,
        fraction: READING_SHARE,
        packets_read,
    });
    let (start, duration_micros) = timeline(&finished)?;

    let tiles = layers::build_tiles(&finished, start, options, &work.path)?;
    let audio: Vec<compose::AudioInput> = finished
        .iter()
        .filter_map(|s| s.audio.as_ref())
        .map(|a| compose::AudioInput {
            path: a.path.clone(),
            delay_micros: u64::try_from(a.start_micros - start).unwrap_or(0),
        })
        .collect();
    if tiles.is_empty() && audio.is_empty() {
        return Err(StitchError::NoMedia);
    }
    progress(Progress {
        stage: Stage::Encoding,
        fraction: READING_SHARE + SELECTING_SHARE,
        packets_read,
    });
    let encode_started = Instant::now();
    let tile_inputs: Vec<compose::TileInput> = tiles.iter().map(|t| t.input.clone()).collect();
    compose::run_ffmpeg(
        &tile_inputs,
        &audio,
        duration_micros,
        options,
        &work.path,
        output,
        &mut |done| {
            let fraction =
                READING_SHARE + SELECTING_SHARE + (1.0 - READING_SHARE - SELECTING_SHARE) * done;
            progress(Progress {
                stage: Stage::Encoding,
                fraction,
                packets_read,
            });
        },
    )?;
    let encode_micros = u64::try_from(encode_started.elapsed().as_micros()).unwrap_or(u64::MAX);
    progress(Progress {
        stage: Stage::Done,
        fraction: 1.0,
        packets_read,
    });

    let keep = !work.remove;
    Ok(StitchReport {
        packets_read,
        audio_tracks: audio.len(),
        audio_files: if keep {
            audio.iter().map(|a| a.path.clone()).collect()
        } else {
            Vec::new()
        },
        streams: finished.into_iter().map(|s| s.report).collect(),
        tiles: tiles
            .into_iter()
            .map(|t| TileReport {
                file: keep.then_some(t.input.path),
                ..t.report
            })
            .collect(),
        start_unix_micros: start,
        duration_micros,
        encode_micros,
    })
}

/// Pass 1: every packet through its stream's pipeline (ordering, placement on the wall
/// clock, depacketizing, intermediate files). Returns the finished streams and how many
/// packets were read.
fn read_streams(
    packets: impl IntoIterator<Item = RecordedPacket>,
    options: &StitchOptions,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<pipeline::FinishedStream>, u64), StitchError> {
    let packets = packets.into_iter();
    let expected_packets = packets.size_hint().1.filter(|&n| n > 0);
    // Streams by id (the order they appeared), each participant's clock, and scratch
    // buffers reused for every packet.
    let mut streams: Vec<pipeline::StreamPipeline> = Vec::new();
    let mut ids: BTreeMap<StreamKey, usize> = BTreeMap::new();
    let mut clocks: BTreeMap<String, anchor::ParticipantClock> = BTreeMap::new();
    let mut sequenced = Vec::new();
    let mut timed = Vec::new();
    let new_clock = || anchor::ParticipantClock::new(options.anchor_window_micros);
    let mut packets_read = 0u64;
    progress(Progress {
        stage: Stage::Reading,
        fraction: 0.0,
        packets_read,
    });
    for packet in packets {
        packets_read += 1;
        let id = match ids.get(&packet.stream) {
            Some(&id) => id,
            None => {
                let id = streams.len();
                streams.push(pipeline::StreamPipeline::new(
                    packet.stream.clone(),
                    packet.codec,
                    packet.clock_rate,
                    options,
                    dir,
                    id,
                ));
                ids.insert(packet.stream.clone(), id);
                id
            }
        };
        if !clocks.contains_key(&packet.stream.participant) {
            clocks.insert(packet.stream.participant.clone(), new_clock());
        }
        let clock = clocks.get_mut(&packet.stream.participant);
        streams[id].push(packet, &mut sequenced);
        if let Some(clock) = clock {
            let clock_rate = streams[id].clock_rate();
            for packet in sequenced.drain(..) {
                clock.push(id, clock_rate, packet, &mut timed);
            }
        }
        place(&mut streams, &mut timed)?;
        if packets_read.is_multiple_of(PROGRESS_EVERY_PACKETS) {
            let fraction = expected_packets.map_or(0.0, |n| {
                READING_SHARE * (packets_read as f64 / n as f64).min(1.0)
            });
            progress(Progress {
                stage: Stage::Reading,
                fraction,
                packets_read,
            });
        }
    }
    for (key, &id) in &ids {
        streams[id].finish_sequencing(&mut sequenced);
        if let Some(clock) = clocks.get_mut(&key.participant) {
            let clock_rate = streams[id].clock_rate();
            for packet in sequenced.drain(..) {
                clock.push(id, clock_rate, packet, &mut timed);
            }
        }
        sequenced.clear();
    }
    for clock in clocks.values_mut() {
        clock.finish(&mut timed);
        place(&mut streams, &mut timed)?;
    }
    let mut streams: Vec<Option<pipeline::StreamPipeline>> =
        streams.into_iter().map(Some).collect();
    let mut finished = Vec::with_capacity(streams.len());
    for &id in ids.values() {
        if let Some(stream) = streams[id].take() {
            finished.push(
                stream
                    .finish()
                    .map_err(StitchError::io("finishing intermediate files"))?,
            );
        }
    }
    Ok((finished, packets_read))
}

/// Hands placed packets to their streams.
fn place(
    streams: &mut [pipeline::StreamPipeline],
    timed: &mut Vec<(usize, anchor::TimedPacket)>,
) -> Result<(), StitchError> {
    for (id, packet) in timed.drain(..) {
        if let Some(stream) = streams.get_mut(id) {
            stream
                .place(packet)
                .map_err(StitchError::io("writing intermediate files"))?;
        }
    }
    Ok(())
}

/// The timeline: from the first media placed to the end of the last, as (start on the
/// wall clock, duration).
fn timeline(finished: &[pipeline::FinishedStream]) -> Result<(i64, u64), StitchError> {
    let start = finished
        .iter()
        .filter_map(|s| s.report.first_micros)
        .min()
        .ok_or(StitchError::NoMedia)?;
    let end = finished
        .iter()
        .filter_map(|s| s.report.end_micros)
        .max()
        .unwrap_or(start);
    let duration_micros = u64::try_from(end - start)
        .unwrap_or(0)
        .max(MIN_DURATION_MICROS);
    Ok((start, duration_micros))
}

/// Shares of the progress fraction: reading is I/O-bound and fast next to encoding.
const READING_SHARE: f64 = 0.2;
const SELECTING_SHARE: f64 = 0.05;
const PROGRESS_EVERY_PACKETS: u64 = 4096;
/// A recording of a single packet still becomes a (short) file.
const MIN_DURATION_MICROS: u64 = 100_000;

fn validate(options: &StitchOptions) -> Result<(), StitchError> {
    let invalid = |what: &str| Err(StitchError::InvalidOptions(what.to_string()));
    if options.width < 16
        || options.height < 16
        || !options.width.is_multiple_of(2)
        || !options.height.is_multiple_of(2)
    {
        return invalid("width and height must be even and at least 16");
    }
    if options.fps == 0 || options.fps > 120 {
        return invalid("fps must be 1-120");
    }
    if options.video_bitrate_kbps == 0 || options.audio_bitrate_kbps == 0 {
        return invalid("bitrates must be positive");
    }
    Ok(())
}
