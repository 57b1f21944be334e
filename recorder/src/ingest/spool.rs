//! The spool directory: chunk files being written, and closed ones waiting for upload.
//!
//! A chunk is written to `{spool}/{seq:020}-{recording_id}.chunk` (sequence numbers are
//! unique per process lineage, so the name is too; the recording id is there for people)
//! and removed once stored. Everything needed to upload a file (recording, instance,
//! sequence number) is in its header, so recovery reads headers, not names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::chunk::{ChunkError, ChunkHeader, ChunkReader, ChunkTail, ChunkWriter};
use crate::store::ChunkKey;

/// The write buffer of an open chunk: a few hundred packets per system call.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// An open chunk file.
pub type SpoolWriter = ChunkWriter<BufWriter<File>>;

/// A chunk file waiting in the spool, and how much of it to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledChunk {
    pub path: PathBuf,
    pub key: ChunkKey,
    /// Bytes to upload from the start of the file: all of a closed chunk, the whole
    /// records of one a crash cut short.
    pub len: u64,
    pub records: u64,
    pub tail: ChunkTail,
}

/// What a previous run left.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Chunks to upload, oldest (lowest sequence number) first.
    pub chunks: Vec<SpooledChunk>,
    /// One more than the highest sequence number found: the floor for new chunks.
    pub seq_floor: u64,
    /// Files removed: torn inside their header, or without a record.
    pub removed: usize,
    /// Files that are not readable chunks, renamed to `*.corrupt` and left for a person.
    pub quarantined: usize,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Use `dir`, creating it if missing.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_owned(),
        })
    }

    /// Take the spool for this process: an exclusive lock on `{spool}/.lock`, held while
    /// the returned file lives (the kernel drops it when the process dies, however). Two
    /// recorders on one spool would upload and delete each other's open chunks.
    pub fn lock(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "in use by another recorder",
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the chunk with `header` is written.
    pub fn path_for(&self, header: &ChunkHeader) -> PathBuf {
        self.dir
            .join(format!("{:020}-{}.chunk", header.seq, header.recording_id))
    }

    /// Create a chunk file and write its header. Never replaces a file: a name that
    /// exists means a sequence number was reused, which must not be hidden.
    pub fn create(&self, header: &ChunkHeader) -> Result<(PathBuf, SpoolWriter), ChunkError> {
        let path = self.path_for(header);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let writer = ChunkWriter::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), header)?;
        Ok((path, writer))
    }

    /// Read what a previous run left: every `*.chunk` file, cut to its whole records.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut recovery = Recovery::default();
        let mut highest = None::<u64>;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("chunk") {
                continue;
            }
            match scan(&path) {
                Ok(chunk) => {
                    highest = highest.max(Some(chunk.key.seq));
                    if chunk.records == 0 {
                        // Opened, nothing written yet: nothing to keep.
                        fs::remove_file(&path)?;
                        recovery.removed += 1;
                        continue;
                    }
                    if let ChunkTail::Torn {
                        valid_len,
                        discarded,
                        reason,
                    } = chunk.tail
                    {
                        warn!(
                            file = %path.display(),
                            valid_len, discarded, ?reason,
                            "spooled chunk is torn; uploading its whole records"
                        );
                    }
                    recovery.chunks.push(chunk);
                }
                Err(ChunkError::TornHeader) => {
                    // A crash right after the file was created: it holds no record.
                    info!(file = %path.display(), "removing a chunk torn inside its header");
                    fs::remove_file(&path)?;
                    recovery.removed += 1;
                }
                Err(ChunkError::Io(e)) => return Err(e),
                Err(e) => {
                    let corrupt = path.with_extension("corrupt");
                    error!(
                        file = %path.display(), error = %e,
                        "not a readable chunk; renamed to {}", corrupt.display()
                    );
                    fs::rename(&path, &corrupt)?;
                    recovery.quarantined += 1;
                }
            }
        }
        recovery.chunks.sort_by_key(|c| c.key.seq);
        recovery.seq_floor = highest.map_or(0, |seq| seq.saturating_add(1));
        Ok(recovery)
    }
}

/// Read a chunk file through: its key, records and how much of it is good.
pub fn scan(path: &Path) -> Result<SpooledChunk, ChunkError> {
    let mut reader = ChunkReader::new(BufReader::new(File::open(path)?))?;
    let mut records = 0;
    while reader.next_record()?.is_some() {
        records += 1;
    }
    let header = reader.header();
    Ok(SpooledChunk {
        path: path.to_owned(),
        key: ChunkKey {
            recording_id: header.recording_id.clone(),
            instance: header.instance.clone(),
            seq: header.seq,
        },
        len: reader.valid_len(),
        records,
        // Known once next_record returned None.
        tail: reader.tail().unwrap_or(ChunkTail::Unclosed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_forwarder::recording::{MediaCodec, TapPacket};
    use fanout_forwarder::sfu::TrackKind;
    use std::io::Write;

    fn header(recording: &str, seq: u64) -> ChunkHeader {
        ChunkHeader {
            recording_id: recording.into(),
            instance: "rec-a".into(),
            seq,
            start_us: 1,
        }
    }

    fn packet<'a>(recording: &'a str, rtp: &'a [u8]) -> TapPacket<'a> {
        TapPacket {
            recording_id: recording,
            meeting_id: "m",
            participant_id: "p",
            track: TrackKind::Audio,
            encoding: 0,
            codec: MediaCodec::Opus,
            clock_rate: 48_000,
            arrival_us: 5,
            rtp,
        }
    }

    #[test]
    fn recovery_keeps_whole_records_and_cleans_up_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let rtp = [0x80u8; 40];

        // A closed chunk.
        let (closed_path, mut writer) = spool.create(&header("A", 7)).unwrap();
        writer.append(&packet("A", &rtp)).unwrap();
        let closed_len = writer.bytes() + 8;
        writer.close().unwrap();

        // An open chunk cut inside its second record by a crash.
        let (torn_path, mut writer) = spool.create(&header("B", 9)).unwrap();
        writer.append(&packet("B", &rtp)).unwrap();
        let whole = writer.bytes();
        writer.append(&packet("B", &rtp)).unwrap();
        writer.flush().unwrap();
        drop(writer);
        let file = OpenOptions::new().write(true).open(&torn_path).unwrap();
        file.set_len(whole + 10).unwrap();

        // Opened but empty, torn in its header, not a chunk, and not ours at all.
        let (_, mut empty) = spool.create(&header("C", 12)).unwrap();
        empty.flush().unwrap();
        fs::write(dir.path().join("x.chunk"), b"FRCK\x01").unwrap();
        fs::File::create(dir.path().join("y.chunk"))
            .unwrap()
            .write_all(b"not a chunk at all")
            .unwrap();
        fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();

        let recovery = spool.recover().unwrap();
        let summary: Vec<_> = recovery
            .chunks
            .iter()
            .map(|c| (c.key.recording_id.as_str(), c.key.seq, c.len, c.records))
            .collect();
        assert_eq!(summary, [("A", 7, closed_len, 1), ("B", 9, whole, 1)]);
        assert_eq!(recovery.chunks[0].path, closed_path);
        assert_eq!(recovery.chunks[0].tail, ChunkTail::Closed);
        assert!(matches!(recovery.chunks[1].tail, ChunkTail::Torn { .. }));
        assert_eq!(
            recovery.seq_floor, 13,
            "the empty chunk's number counts too"
        );
        assert_eq!(recovery.removed, 2);
        assert_eq!(recovery.quarantined, 1);
        assert!(dir.path().join("y.corrupt").exists());
        assert!(dir.path().join("notes.txt").exists());
        assert!(!dir.path().join("x.chunk").exists());
    }

    #[test]
    fn one_recorder_per_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.lock().unwrap();
        let other = Spool::open(dir.path()).unwrap();
        assert_eq!(other.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        other.lock().unwrap();
        // The lock file is not a chunk.
        assert!(spool.recover().unwrap().chunks.is_empty());
    }

    #[test]
    fn a_reused_sequence_number_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.create(&header("A", 1)).unwrap();
        assert!(matches!(
            spool.create(&header("A", 1)),
            Err(ChunkError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists
        ));
        assert_eq!(spool.recover().unwrap().seq_floor, 2);
    }
}
