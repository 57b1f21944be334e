//! Pass 1 for one stream: sequencer → (the participant's clock, [`super::anchor`]) →
//! (video) assembler → keyframe gate → spool file, or (audio) Opus check → Ogg Opus file.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use super::anchor::TimedPacket;
use super::depacketize::h264::H264Depacketizer;
use super::depacketize::vp8::Vp8Depacketizer;
use super::depacketize::vp9::Vp9Depacketizer;
use super::depacketize::{opus, AssemblyEvent, FrameAssembler, KeyframeGate, VideoDepacketizer};
use super::ogg::OggOpusWriter;
use super::sequence::{SequencedPacket, Sequencer, SequencerConfig};
use super::spool::SpoolWriter;
use super::{rtp, Codec, RecordedPacket, StitchOptions, StreamKey, StreamReport};

/// Packets a stream may hold for reordering (besides the time window).
const MAX_REORDER_PACKETS: usize = 2048;
/// Opus packets within this many samples (2.5 ms) of where the previous one ended are
/// placed right after it: timestamps computed through microseconds round, and a sender's
/// clock is not sample-exact against the recorder's.
const AUDIO_SNAP_SAMPLES: u64 = 120;
/// An Opus packet that continues the previous one (the next sequence number and
/// timestamp) is placed right after it while its place on the timeline is at most this
/// many samples (20 ms, or its own duration if longer) after there, or at most
/// [`AUDIO_LATE_SAMPLES`] before: a sender's clock drifting against the wall clock, or the
/// participant's clock correction moving (`anchor.rs`), bends no audio. Past that the
/// stream is realigned by concealing one packet's worth, or by dropping one packet. The
/// bounds keep the audio within what lip sync notices (ITU-R BT.1359: 45 ms early, 125 ms
/// late), and dropping only past 40 ms lets the correction come down by small amounts
/// (the first window of a sender that started slowly) without any drop.
const AUDIO_EARLY_SAMPLES: u64 = 960;
const AUDIO_LATE_SAMPLES: u64 = 1920;
const OPUS_RATE: u64 = 48_000;

/// A finished stream: its report and its intermediate file.
#[derive(Debug)]
pub(crate) struct FinishedStream {
    pub key: StreamKey,
    pub codec: Codec,
    pub report: StreamReport,
    /// Video: the spool file, if any frame was written.
    pub spool: Option<PathBuf>,
    pub audio: Option<AudioTrack>,
}

/// An audio stream's Ogg file and where it starts on the wall clock.
#[derive(Debug)]
pub(crate) struct AudioTrack {
    pub path: PathBuf,
    pub start_micros: i64,
}

struct VideoSink {
    depacketizer: Box<dyn VideoDepacketizer>,
    assembler: FrameAssembler,
    gate: KeyframeGate,
    spool: Option<SpoolWriter>,
    last_written: Option<i64>,
    last_interval: i64,
    events: Vec<AssemblyEvent>,
}

struct AudioSink {
    writer: Option<OggOpusWriter<BufWriter<File>>>,
    start_micros: i64,
    /// The segment, extended sequence number and extended timestamp a packet continuing
    /// the last one taken has.
    next: Option<(u32, i64, i64)>,
}

enum Sink {
    Video(Box<VideoSink>),
    Audio(AudioSink),
}

pub(crate) struct StreamPipeline {
    key: StreamKey,
    codec: Codec,
    clock_rate: u32,
    path: PathBuf,
    serial: u32,
    sequencer: Sequencer,
    sink: Sink,
    report: StreamReport,
    /// The participant clock's correction at the first and last packet placed.
    corrections: Option<(i64, i64)>,
}

impl std::fmt::Debug for StreamPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPipeline")
            .field("key", &self.key)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl StreamPipeline {
    /// `index` numbers the stream's intermediate file in `dir`.
    pub fn new(
        key: StreamKey,
        codec: Codec,
        clock_rate: u32,
        options: &StitchOptions,
        dir: &Path,
        index: usize,
    ) -> StreamPipeline {
        let config = SequencerConfig {
            clock_rate: clock_rate.max(1),
            reorder_window_micros: options.reorder_window_micros,
            max_buffered: MAX_REORDER_PACKETS,
            resync_micros: options.resync_micros,
        };
        let depacketizer: Option<Box<dyn VideoDepacketizer>> = match codec {
            Codec::Vp8 => Some(Box::new(Vp8Depacketizer)),
            Codec::Vp9 => Some(Box::new(Vp9Depacketizer)),
            Codec::H264 => Some(Box::new(H264Depacketizer::default())),
            Codec::Opus => None,
        };
        let (sink, extension) = match depacketizer {
            Some(depacketizer) => (
                Sink::Video(Box::new(VideoSink {
                    depacketizer,
                    assembler: FrameAssembler::default(),
                    gate: KeyframeGate::default(),
                    spool: None,
                    last_written: None,
                    last_interval: 0,
                    events: Vec::new(),
                })),
                "spool",
            ),
            None => (
                Sink::Audio(AudioSink {
                    writer: None,
                    start_micros: 0,
                    next: None,
                }),
                "ogg",
            ),
        };
        StreamPipeline {
            report: StreamReport {
                stream: Some(key.clone()),
                codec: Some(codec),
                ..StreamReport::default()
            },
            key,
            codec,
            clock_rate,
            path: dir.join(format!("stream-{index}.{extension}")),
            serial: u32::try_from(index).unwrap_or(u32::MAX),
            sequencer: Sequencer::new(config),
            sink,
            corrections: None,
        }
    }

    /// The stream's RTP clock rate (never 0 for a packet that left the sequencer).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Takes one packet of this stream; appends what the sequencer releases, in order, to
    /// `out`, for the participant's clock to place. Bad packets are counted.
    pub fn push(&mut self, packet: RecordedPacket, out: &mut Vec<SequencedPacket>) {
        self.report.packets += 1;
        if packet.codec != self.codec || packet.clock_rate != self.clock_rate {
            self.report.mismatched_packets += 1;
            return;
        }
        let Some(header) = rtp::parse(&packet.rtp).filter(|_| self.clock_rate > 0) else {
            self.report.malformed_packets += 1;
            return;
        };
        self.sequencer
            .push(header, packet.arrival_micros, packet.rtp, out);
    }

    /// End of input for the sequencer: everything it still holds, in order.
    pub fn finish_sequencing(&mut self, out: &mut Vec<SequencedPacket>) {
        self.sequencer.finish(out);
    }

    /// Takes one packet placed on the wall clock. Errors are I/O errors of the
    /// intermediate files.
    pub fn place(&mut self, timed: TimedPacket) -> io::Result<()> {
        let wall = timed.wall_micros;
        if self.report.first_micros.is_none_or(|first| wall < first) {
            self.report.first_micros = Some(wall);
        }
        let lag = u64::try_from((timed.packet.arrival_micros as i64).saturating_sub(wall));
        self.report.max_arrival_lag_micros =
            self.report.max_arrival_lag_micros.max(lag.unwrap_or(0));
        let correction = timed.correction_micros;
        let first = self.corrections.map_or(correction, |(first, _)| first);
        self.corrections = Some((first, correction));
        match &mut self.sink {
            Sink::Video(video) => {
                self.report.end_micros =
                    Some(self.report.end_micros.map_or(wall, |end| end.max(wall)));
                video
                    .assembler
                    .push(timed, video.depacketizer.as_mut(), &mut video.events);
                let events = std::mem::take(&mut video.events);
                for event in events {
                    write_video_event(video, event, &mut self.report, &self.path)?;
                }
            }
            Sink::Audio(audio) => {
                let Ok(samples) = opus::packet_samples(timed.packet.payload()) else {
                    // An empty payload is not an Opus packet (RFC 7587 §4.2 has none).
                    self.report.malformed_packets += 1;
                    return Ok(());
                };
                let writer = match &mut audio.writer {
                    Some(writer) => writer,
                    None => {
                        let out = BufWriter::new(File::create(&self.path)?);
                        audio.start_micros = wall;
                        audio.writer.insert(OggOpusWriter::new(out, self.serial)?)
                    }
                };
                // Continuous: nothing lost and no silence left out (DTX) since the last
                // packet taken, so its audio follows without a hole.
                let packet = &timed.packet;
                let continues =
                    audio.next == Some((packet.segment, packet.ext_seq, packet.ext_timestamp));
                let ticks = i64::from(samples) * i64::from(self.clock_rate) / OPUS_RATE as i64;
                audio.next = Some((
                    packet.segment,
                    packet.ext_seq + 1,
                    packet.ext_timestamp + ticks,
                ));
                let wanted = micros_to_samples(wall - audio.start_micros);
                let position = writer.position();
                // Before where the last one ended by up to 40 ms (or a packet): right after
                // it. Further before: a continuous stream is that far late (its sender's
                // clock runs fast, or the correction came down) and gives up this packet;
                // after a gap it overlaps what was written. After where the last one ended:
                // right after it within 2.5 ms (or, continuous, within 20 ms or a packet),
                // else after a concealed hole.
                let late = AUDIO_LATE_SAMPLES.max(u64::from(samples));
                let early = AUDIO_EARLY_SAMPLES.max(u64::from(samples));
                let at = if wanted <= position {
                    if position - wanted <= late {
                        position
                    } else if continues {
                        self.report.drift_corrections += 1;
                        self.report.frames_dropped_for_drift += 1;
                        return Ok(());
                    } else {
                        wanted
                    }
                } else if wanted - position <= AUDIO_SNAP_SAMPLES
                    || (continues && wanted - position <= early)
                {
                    position
                } else {
                    // A whole packet behind while nothing was lost: the sender's clock
                    // runs slow against the wall clock (or the correction rose).
                    self.report.drift_corrections += u64::from(continues);
                    wanted
                };
                if writer.write_packet_at(at, timed.packet.payload(), samples)? {
                    self.report.frames_written += 1;
                    let end = audio.start_micros + samples_to_micros(writer.position());
                    self.report.end_micros =
                        Some(self.report.end_micros.map_or(end, |e| e.max(end)));
                } else {
                    // Not taken: the packets after it do not continue anything written.
                    audio.next = None;
                    self.report.frames_overlapping += 1;
                }
                self.report.concealed_micros = samples_to_micros(writer.filled_samples()) as u64;
            }
        }
        Ok(())
    }

    /// End of input (after [`Self::finish_sequencing`] and the last packets placed):
    /// flushes the assembler and closes the intermediate file.
    pub fn finish(mut self) -> io::Result<FinishedStream> {
        let stats = self.sequencer.stats;
        self.report.duplicate_packets = stats.duplicates;
        self.report.late_packets = stats.late;
        self.report.stale_source_packets = stats.stale_source;
        self.report.unconfirmed_jumps = stats.unconfirmed_jumps;
        self.report.segments = stats.segments;
        if let Some((first, last)) = self.corrections {
            self.report.clock_correction_micros = last - first;
        }
        let mut spool = None;
        let mut audio = None;
        match self.sink {
            Sink::Video(mut video) => {
                let mut events = Vec::new();
                video.assembler.finish(&mut events);
                for event in events {
                    write_video_event(&mut video, event, &mut self.report, &self.path)?;
                }
                if let Some(writer) = video.spool.take() {
                    writer.finish()?;
                    spool = Some(self.path.clone());
                }
                // The last frame is shown for as long as the one before it.
                if let Some(last) = video.last_written {
                    let shown_until = last + video.last_interval.clamp(0, 1_000_000);
                    self.report.end_micros = Some(
                        self.report
                            .end_micros
                            .map_or(shown_until, |end| end.max(shown_until)),
                    );
                }
            }
            Sink::Audio(sink) => {
                if let Some(writer) = sink.writer {
                    writer.finish()?;
                    audio = Some(AudioTrack {
                        path: self.path.clone(),
                        start_micros: sink.start_micros,
                    });
                }
            }
        }
        Ok(FinishedStream {
            key: self.key,
            codec: self.codec,
            report: self.report,
            spool,
            audio,
        })
    }
}

fn write_video_event(
    video: &mut VideoSink,
    event: AssemblyEvent,
    report: &mut StreamReport,
    path: &Path,
) -> io::Result<()> {
    match event {
        AssemblyEvent::Discontinuity { missing_packets } => {
            report.missing_packets += missing_packets;
            report.gaps += u64::from(missing_packets > 0);
            video.gate.lost();
        }
        AssemblyEvent::Incomplete => {
            report.frames_incomplete += 1;
            video.gate.lost();
        }
        AssemblyEvent::Frame { frame, wall_micros } => {
            report.frames_complete += 1;
            if video.last_written.is_some_and(|last| wall_micros <= last) {
                // Media of an overlapping segment: the time is taken. Dropping a frame
                // breaks the references of the next ones, so wait for a keyframe.
                report.frames_overlapping += 1;
                video.gate.lost();
                return Ok(());
            }
            if !video.gate.pass(frame.keyframe) {
                report.frames_skipped_waiting_for_keyframe += 1;
                return Ok(());
            }
            let spool = match &mut video.spool {
                Some(spool) => spool,
                None => video.spool.insert(SpoolWriter::create(path)?),
            };
            spool.write(wall_micros, frame.keyframe, frame.dimensions, &frame.data)?;
            if let Some(last) = video.last_written {
                video.last_interval = wall_micros - last;
            }
            video.last_written = Some(wall_micros);
            report.frames_written += 1;
            report.keyframes_written += u64::from(frame.keyframe);
        }
    }
    Ok(())
}

fn micros_to_samples(micros: i64) -> u64 {
    u64::try_from((i128::from(micros) * i128::from(OPUS_RATE) + 500_000) / 1_000_000).unwrap_or(0)
}

fn samples_to_micros(samples: u64) -> i64 {
    i64::try_from(u128::from(samples) * 1_000_000 / u128::from(OPUS_RATE)).unwrap_or(i64::MAX)
}
