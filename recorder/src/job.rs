//! One stitching job (docs/recording.md): a recording's chunks, fetched from the store,
//! read in order and stitched ([`crate::stitch`]) into one WebM file, uploaded as the
//! recording's output.
//!
//! A job is idempotent: it reads only what is in the store and writes only the
//! recording's output key, so a retry (after a crash, a lost claim) redoes the same work
//! and replaces the same object. Chunks are fetched into a scratch directory first, then
//! read one at a time, so memory holds one chunk, not the recording.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::chunk::{read_chunk, ChunkRecord, ChunkTail};
use crate::stitch::{
    self, Codec, RecordedPacket, StitchOptions, StitchReport, StreamKey, TrackKind,
};
use crate::store::{ChunkKey, RecordingStore};
use fanout_forwarder::recording::MediaCodec;
use fanout_forwarder::sfu::TrackKind as TapTrackKind;

/// What a finished job produced.
#[derive(Debug, serde::Serialize)]
pub struct JobOutcome {
    /// Chunks read, and of them those a crash cut short (read up to their last whole
    /// record).
    pub chunks: usize,
    pub torn_chunks: usize,
    /// Tapped packets whose codec the stitcher does not know (left out).
    pub unknown_codec_packets: u64,
    pub report: StitchReport,
    /// Bytes uploaded as the recording's output.
    pub output_bytes: u64,
}

/// Chunks in the order they were written: by when each was opened, then by writer and
/// sequence (two recorders, before and after a failover, overlap in time; the stitcher
/// takes packets in any order within its reordering window and removes duplicates).
fn in_order(mut chunks: Vec<(ChunkKey, u64)>) -> Vec<ChunkKey> {
    chunks.sort_by(|(a, a_start), (b, b_start)| {
        (a_start, &a.instance, a.seq).cmp(&(b_start, &b.instance, b.seq))
    });
    chunks.into_iter().map(|(key, _)| key).collect()
}

fn codec_of(codec: MediaCodec) -> Option<Codec> {
    match codec {
        MediaCodec::Opus => Some(Codec::Opus),
        MediaCodec::Vp8 => Some(Codec::Vp8),
        MediaCodec::Vp9 => Some(Codec::Vp9),
        MediaCodec::H264 => Some(Codec::H264),
        MediaCodec::Unknown => None,
    }
}

fn kind_of(kind: TapTrackKind) -> TrackKind {
    match kind {
        TapTrackKind::Audio => TrackKind::Audio,
        TapTrackKind::Video => TrackKind::Camera,
        TapTrackKind::Screen => TrackKind::Screen,
    }
}

/// A stored record as the stitcher takes it; `None` for a codec it does not know.
pub fn recorded_packet(record: ChunkRecord) -> Option<RecordedPacket> {
    Some(RecordedPacket {
        stream: StreamKey {
            participant: record.participant_id,
            kind: kind_of(record.track),
            encoding: record.encoding,
        },
        codec: codec_of(record.codec)?,
        clock_rate: record.clock_rate,
        arrival_micros: record.arrival_us,
        rtp: record.rtp,
    })
}

/// Fetch every chunk of `recording_id` into `scratch`, in order; returns their files.
async fn fetch_chunks(
    store: &RecordingStore,
    recording_id: &str,
    scratch: &Path,
) -> Result<Vec<PathBuf>> {
    let keys = store
        .list_chunks(recording_id)
        .await
        .with_context(|| format!("listing the chunks of {recording_id}"))?;
    let mut fetched = Vec::with_capacity(keys.len());
    for (i, key) in keys.into_iter().enumerate() {
        let bytes = store
            .get_chunk(&key)
            .await
            .with_context(|| format!("fetching {key}"))?;
        // The header's start time orders chunks of different writers; a chunk too
        // damaged to have a header still goes last rather than failing the job.
        let start = read_chunk(&bytes).map_or(u64::MAX, |c| c.header.start_us);
        let file = scratch.join(format!("{i:06}.chunk"));
        tokio::fs::write(&file, &bytes).await?;
        fetched.push((key, start, file));
    }
    let order = in_order(fetched.iter().map(|(k, s, _)| (k.clone(), *s)).collect());
    Ok(order
        .into_iter()
        .filter_map(|key| fetched.iter().find(|(k, _, _)| *k == key))
        .map(|(_, _, file)| file.clone())
        .collect())
}

/// Stitch `recording_id` from `store` and upload the result. `progress` gets the
/// fraction done (fetching is the first 10%, uploading the last 5%).
pub async fn run(
    store: &RecordingStore,
    recording_id: &str,
    options: &StitchOptions,
    scratch: &Path,
    progress: &mut (dyn FnMut(f64) + Send),
) -> Result<JobOutcome> {
    progress(0.0);
    let files = fetch_chunks(store, recording_id, scratch).await?;
    progress(0.1);
    let output = scratch.join("output.webm");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stitched = {
        let options = options.clone();
        let output = output.clone();
        let files = files.clone();
        tokio::task::spawn_blocking(move || -> Result<(StitchReport, usize, u64)> {
            let torn = Cell::new(0usize);
            let unknown = Cell::new(0u64);
            // One chunk in memory at a time: the stitcher consumes the iterator lazily.
            let packets = files
                .iter()
                .flat_map(|file| {
                    let chunk = std::fs::read(file)
                        .map_err(anyhow::Error::from)
                        .and_then(|b| read_chunk(&b).map_err(anyhow::Error::from));
                    match chunk {
                        Ok(chunk) => {
                            if chunk.tail != ChunkTail::Closed {
                                torn.set(torn.get() + 1);
                            }
                            chunk.records
                        }
                        Err(e) => {
                            warn!(file = %file.display(), error = %e, "a chunk that cannot be read is left out");
                            torn.set(torn.get() + 1);
                            Vec::new()
                        }
                    }
                })
                .filter_map(|record| {
                    let packet = recorded_packet(record);
                    if packet.is_none() {
                        unknown.set(unknown.get() + 1);
                    }
                    packet
                });
            let report = stitch::stitch(packets, &options, &output, &mut |p| {
                let _ = tx.send(p.fraction);
            })?;
            Ok((report, torn.get(), unknown.get()))
        })
    };
    let forward = async {
        while let Some(fraction) = rx.recv().await {
            progress(0.1 + 0.85 * fraction);
        }
    };
    let (stitched, ()) = tokio::join!(stitched, forward);
    let (report, torn_chunks, unknown_codec_packets) =
        stitched.context("the stitcher panicked")??;
    let output_bytes = store
        .put_output_file(recording_id, &output)
        .await
        .with_context(|| format!("uploading the output of {recording_id}"))?;
    progress(1.0);
    info!(
        recording = recording_id,
        chunks = files.len(),
        torn_chunks,
        seconds = report.duration_micros as f64 / 1e6,
        output_bytes,
        "recording stitched"
    );
    Ok(JobOutcome {
        chunks: files.len(),
        torn_chunks,
        unknown_codec_packets,
        report,
        output_bytes,
    })
}
