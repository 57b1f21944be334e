//! Chunk files: the tapped packets of one recording, in arrival order, over a few seconds.
//!
//! The ingest daemon appends every packet of a recording to the recording's open chunk,
//! closes it after `chunk_seconds` (or at a size limit, or when the recording ends) and
//! uploads it to the store as one object. A chunk is written by appending only, and read
//! front to back, so that a file cut short by a crash is still good up to its last whole
//! record: every record carries its own length and CRC-32.
//!
//! # Layout, version 1
//!
//! Integers are big-endian.
//!
//! ```text
//! header
//!   4   magic "FRCK"
//!   1   version: 1
//!   1   R: recording id length (1..=64)
//!   R   recording id (the tap's alphabet: fanout_forwarder::recording)
//!   1   I: instance length (1..=64)
//!   I   instance: the recorder that wrote the chunk (same alphabet)
//!   8   sequence number: orders the chunks of one recording from one instance
//!   8   start time: microseconds since the Unix epoch (the recorder's clock)
//!   4   CRC-32 (IEEE) of every header byte before it
//! records, each
//!   4   L: body length; 0 is the trailer, written by close, after which nothing follows
//!   4   CRC-32 of the 4 length bytes and the body
//!   L   body:
//!         1  track kind      \
//!         1  encoding index   |
//!         1  codec            | the tap's values (fanout_forwarder::recording)
//!         1  M: meeting id length
//!         1  P: participant id length
//!         4  RTP clock rate   |
//!         8  arrival time, microseconds since the Unix epoch (the forwarder's clock)
//!         M  meeting id, P participant id
//!         .. the plaintext RTP packet, to the end of the body
//! ```
//!
//! The recording id is in the header only: a chunk holds one recording.
//!
//! # Reading what a crash left
//!
//! [`ChunkReader`] yields records until the first one that is not whole and valid, then
//! reports how the file ended ([`ChunkTail`]): `Closed` (the trailer: the writer closed
//! it), `Unclosed` (the file ends between records: the writer stopped, or recovery cut a
//! torn record off) or `Torn` (bytes after the last good record that are not a good
//! record: a record cut by a crash, or damage). Nothing after a bad record is trusted,
//! since its length cannot be. A file torn inside its header holds no record and is an
//! error ([`ChunkError::TornHeader`]). Reading never panics, whatever the bytes.

use std::io::{self, Read, Write};

use fanout_forwarder::recording::{
    self, is_valid_recording_id, MediaCodec, TapPacket, MAX_ID_LEN, MAX_RTP_LEN, MIN_RTP_LEN,
};
use fanout_forwarder::sfu::TrackKind;

/// The first bytes of every chunk file.
pub const MAGIC: [u8; 4] = *b"FRCK";
/// The version this module writes and the only one it reads.
pub const VERSION: u8 = 1;
/// Bytes of a record body before its ids.
const BODY_FIXED_LEN: usize = 17;
/// Bytes before every record body: length and CRC.
pub const RECORD_PREFIX_LEN: usize = 8;
/// The longest record body: a longer length field is damage, not a record (and is never
/// allocated for).
pub const MAX_BODY_LEN: usize = BODY_FIXED_LEN + 2 * MAX_ID_LEN + MAX_RTP_LEN;

/// Who wrote a chunk, for which recording, and where it stands among the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    pub recording_id: String,
    /// The recorder instance that wrote it (a key segment: the tap's recording-id alphabet).
    pub instance: String,
    /// Orders the chunks of one recording written by one instance; never reused.
    pub seq: u64,
    /// When the chunk was opened: microseconds since the Unix epoch.
    pub start_us: u64,
}

impl ChunkHeader {
    /// The header's size in the file.
    pub fn encoded_len(&self) -> usize {
        27 + self.recording_id.len() + self.instance.len()
    }

    fn encode(&self) -> Result<Vec<u8>, ChunkError> {
        if !is_valid_recording_id(&self.recording_id) || !is_valid_recording_id(&self.instance) {
            return Err(ChunkError::BadHeader);
        }
        let mut out = Vec::with_capacity(32 + self.recording_id.len() + self.instance.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        // Both ids are at most MAX_ID_LEN (64) bytes, checked above.
        out.push(self.recording_id.len() as u8);
        out.extend_from_slice(self.recording_id.as_bytes());
        out.push(self.instance.len() as u8);
        out.extend_from_slice(self.instance.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.start_us.to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// One tapped packet as stored: the tap's Packet fields but the recording id, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    pub meeting_id: String,
    pub participant_id: String,
    pub track: TrackKind,
    pub encoding: u8,
    pub codec: MediaCodec,
    pub clock_rate: u32,
    /// When the forwarder received the packet: microseconds since the Unix epoch.
    pub arrival_us: u64,
    /// The plaintext RTP packet.
    pub rtp: Vec<u8>,
}

impl ChunkRecord {
    /// An owned copy of a tapped packet (its recording id is the chunk's).
    pub fn from_tap(packet: &TapPacket<'_>) -> ChunkRecord {
        ChunkRecord {
            meeting_id: packet.meeting_id.to_owned(),
            participant_id: packet.participant_id.to_owned(),
            track: packet.track,
            encoding: packet.encoding,
            codec: packet.codec,
            clock_rate: packet.clock_rate,
            arrival_us: packet.arrival_us,
            rtp: packet.rtp.to_vec(),
        }
    }

    /// The record as the tap packet it was, in recording `recording_id`.
    pub fn as_tap<'a>(&'a self, recording_id: &'a str) -> TapPacket<'a> {
        TapPacket {
            recording_id,
            meeting_id: &self.meeting_id,
            participant_id: &self.participant_id,
            track: self.track,
            encoding: self.encoding,
            codec: self.codec,
            clock_rate: self.clock_rate,
            arrival_us: self.arrival_us,
            rtp: &self.rtp,
        }
    }
}

/// The bytes `packet` takes in a chunk file, prefix included.
pub fn record_len(packet: &TapPacket<'_>) -> usize {
    RECORD_PREFIX_LEN
        + BODY_FIXED_LEN
        + packet.meeting_id.len()
        + packet.participant_id.len()
        + packet.rtp.len()
}

/// Why a chunk could not be written or read.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a chunk file (bad magic)")]
    BadMagic,
    #[error("chunk version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The file ends inside its header: a crash right after the file was created. It
    /// holds no record.
    #[error("the file ends inside the chunk header")]
    TornHeader,
    #[error("chunk header checksum mismatch")]
    HeaderChecksum,
    /// Ids outside the allowed alphabet or lengths (reading or writing).
    #[error("invalid chunk header (recording id or instance)")]
    BadHeader,
    /// Writing: the packet is of another recording than the chunk's.
    #[error("packet of recording {packet} appended to a chunk of recording {chunk}")]
    RecordingMismatch { chunk: String, packet: String },
    /// Writing: a field the format cannot hold (an id longer than 64 bytes, an RTP
    /// packet outside 12..=2048 bytes, a zero clock rate).
    #[error("record cannot be stored: {0}")]
    BadRecord(&'static str),
}

/// Appends records to a chunk. Wrap a `File` in a `BufWriter`: each record is a few
/// small writes, never an allocation.
#[derive(Debug)]
pub struct ChunkWriter<W: Write> {
    out: W,
    recording_id: String,
    bytes: u64,
    records: u64,
}

impl<W: Write> ChunkWriter<W> {
    /// Start a chunk: writes the header.
    pub fn new(mut out: W, header: &ChunkHeader) -> Result<Self, ChunkError> {
        let bytes = header.encode()?;
        out.write_all(&bytes)?;
        Ok(ChunkWriter {
            out,
            recording_id: header.recording_id.clone(),
            bytes: bytes.len() as u64,
            records: 0,
        })
    }

    /// Append one packet. After an error the chunk's tail may be torn: close it (readers
    /// stop at the torn record) rather than append more.
    pub fn append(&mut self, packet: &TapPacket<'_>) -> Result<(), ChunkError> {
        if packet.recording_id != self.recording_id {
            return Err(ChunkError::RecordingMismatch {
                chunk: self.recording_id.clone(),
                packet: packet.recording_id.to_owned(),
            });
        }
        check_record(packet)?;
        let body_len = record_len(packet) - RECORD_PREFIX_LEN;
        // At most MAX_BODY_LEN (checked by check_record), far below u32::MAX.
        let length = (body_len as u32).to_be_bytes();
        let fixed = body_fixed(packet);
        let parts: [&[u8]; 4] = [
            &fixed,
            packet.meeting_id.as_bytes(),
            packet.participant_id.as_bytes(),
            packet.rtp,
        ];
        let mut crc = crc32fast::Hasher::new();
        crc.update(&length);
        for part in parts {
            crc.update(part);
        }
        self.out.write_all(&length)?;
        self.out.write_all(&crc.finalize().to_be_bytes())?;
        for part in parts {
            self.out.write_all(part)?;
        }
        self.bytes += (RECORD_PREFIX_LEN + body_len) as u64;
        self.records += 1;
        Ok(())
    }

    /// Hand what is buffered to the kernel (not to the disk: see [`close`](Self::close)).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Write the trailer and flush; returns the writer (a caller holding a `File` syncs
    /// it before upload).
    pub fn close(mut self) -> io::Result<W> {
        let length = 0u32.to_be_bytes();
        self.out.write_all(&length)?;
        self.out
            .write_all(&crc32fast::hash(&length).to_be_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Bytes written so far, header included (trailer excluded).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

fn check_record(packet: &TapPacket<'_>) -> Result<(), ChunkError> {
    if !(1..=MAX_ID_LEN).contains(&packet.meeting_id.len())
        || !(1..=MAX_ID_LEN).contains(&packet.participant_id.len())
    {
        return Err(ChunkError::BadRecord("meeting or participant id length"));
    }
    if !(MIN_RTP_LEN..=MAX_RTP_LEN).contains(&packet.rtp.len()) {
        return Err(ChunkError::BadRecord("RTP packet length"));
    }
    if packet.clock_rate == 0 {
        return Err(ChunkError::BadRecord("zero clock rate"));
    }
    Ok(())
}

fn body_fixed(packet: &TapPacket<'_>) -> [u8; BODY_FIXED_LEN] {
    let mut fixed = [0u8; BODY_FIXED_LEN];
    fixed[0] = recording::track_kind_to_wire(packet.track);
    fixed[1] = packet.encoding;
    fixed[2] = packet.codec.to_wire();
    // Checked by check_record: at most MAX_ID_LEN (64).
    fixed[3] = packet.meeting_id.len() as u8;
    fixed[4] = packet.participant_id.len() as u8;
    fixed[5..9].copy_from_slice(&packet.clock_rate.to_be_bytes());
    fixed[9..17].copy_from_slice(&packet.arrival_us.to_be_bytes());
    fixed
}

/// How a chunk file ended, once its reader has returned its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkTail {
    /// The writer closed it: the trailer, then nothing.
    Closed,
    /// It ends right after a whole record, with no trailer: its writer stopped (a crash)
    /// between records, or recovery cut a torn record off.
    Unclosed,
    /// After the last good record come bytes that are not a good record: `valid_len`
    /// bytes of the file are good, `discarded` after them are not.
    Torn {
        valid_len: u64,
        discarded: u64,
        reason: TornReason,
    },
}

/// What was wrong after the last good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// The file ends inside a record (the usual crash).
    Incomplete,
    /// A record's length is larger than any record can be.
    Oversized,
    /// A record's CRC does not match its bytes.
    Checksum,
    /// A record with a good CRC holds fields the format forbids (a writer bug).
    BadFields,
    /// Bytes after the trailer.
    AfterTrailer,
}

/// Reads a chunk front to back.
#[derive(Debug)]
pub struct ChunkReader<R: Read> {
    input: R,
    header: ChunkHeader,
    /// Bytes of the file read and found good so far.
    position: u64,
    body: Vec<u8>,
    tail: Option<ChunkTail>,
}

impl<R: Read> ChunkReader<R> {
    /// Read and check the header. For a `File`, wrap it in a `BufReader`.
    pub fn new(mut input: R) -> Result<Self, ChunkError> {
        let mut bytes = Vec::with_capacity(64);
        take_header(&mut input, &mut bytes, 6)?;
        if bytes[..4] != MAGIC {
            return Err(ChunkError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(ChunkError::UnsupportedVersion(bytes[4]));
        }
        let recording_len = usize::from(bytes[5]);
        take_header(&mut input, &mut bytes, recording_len + 1)?;
        let instance_len = usize::from(bytes[6 + recording_len]);
        take_header(&mut input, &mut bytes, instance_len + 20)?;
        let (covered, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(covered) != crc {
            return Err(ChunkError::HeaderChecksum);
        }
        let text = |range: std::ops::Range<usize>| {
            std::str::from_utf8(&bytes[range])
                .ok()
                .filter(|id| is_valid_recording_id(id))
                .map(str::to_owned)
                .ok_or(ChunkError::BadHeader)
        };
        let recording_id = text(6..6 + recording_len)?;
        let instance_start = 7 + recording_len;
        let instance = text(instance_start..instance_start + instance_len)?;
        let numbers = instance_start + instance_len;
        let u64_at = |at: usize| {
            let mut array = [0u8; 8];
            array.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(array)
        };
        let header = ChunkHeader {
            recording_id,
            instance,
            seq: u64_at(numbers),
            start_us: u64_at(numbers + 8),
        };
        Ok(ChunkReader {
            input,
            header,
            position: bytes.len() as u64,
            body: Vec::new(),
            tail: None,
        })
    }

    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }

    /// How the file ended; `None` until [`next_record`](Self::next_record) returned
    /// `Ok(None)`.
    pub fn tail(&self) -> Option<ChunkTail> {
        self.tail
    }

    /// Bytes of the file found good so far (all of them once the tail is known): a torn
    /// file truncated to this length reads as `Unclosed` with the same records.
    pub fn valid_len(&self) -> u64 {
        self.position
    }

    /// The next record; `Ok(None)` at the end of the good part of the file (then see
    /// [`tail`](Self::tail)). Errors are I/O errors only: bad bytes end the records.
    pub fn next_record(&mut self) -> Result<Option<ChunkRecord>, ChunkError> {
        if self.tail.is_some() {
            return Ok(None);
        }
        let mut prefix = [0u8; RECORD_PREFIX_LEN];
        match read_full(&mut self.input, &mut prefix)? {
            0 => return self.end(ChunkTail::Unclosed),
            n if n < RECORD_PREFIX_LEN => return self.torn(n as u64, TornReason::Incomplete),
            _ => {}
        }
        let length = [prefix[0], prefix[1], prefix[2], prefix[3]];
        let crc = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        let body_len = u32::from_be_bytes(length) as usize;
        if body_len == 0 {
            if crc32fast::hash(&length) != crc {
                return self.torn(RECORD_PREFIX_LEN as u64, TornReason::Checksum);
            }
            let mut probe = [0u8; 1];
            if read_full(&mut self.input, &mut probe)? != 0 {
                return self.torn(RECORD_PREFIX_LEN as u64 + 1, TornReason::AfterTrailer);
            }
            self.position += RECORD_PREFIX_LEN as u64;
            return self.end(ChunkTail::Closed);
        }
        if body_len > MAX_BODY_LEN {
            return self.torn(RECORD_PREFIX_LEN as u64, TornReason::Oversized);
        }
        self.body.resize(body_len, 0);
        let read = read_full(&mut self.input, &mut self.body)?;
        let seen = (RECORD_PREFIX_LEN + read) as u64;
        if read < body_len {
            return self.torn(seen, TornReason::Incomplete);
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&length);
        hasher.update(&self.body);
        if hasher.finalize() != crc {
            return self.torn(seen, TornReason::Checksum);
        }
        match parse_body(&self.body) {
            Some(record) => {
                self.position += seen;
                Ok(Some(record))
            }
            None => self.torn(seen, TornReason::BadFields),
        }
    }

    fn end(&mut self, tail: ChunkTail) -> Result<Option<ChunkRecord>, ChunkError> {
        self.tail = Some(tail);
        Ok(None)
    }

    /// `consumed` bytes past the good part were read; count the rest to the end.
    fn torn(
        &mut self,
        consumed: u64,
        reason: TornReason,
    ) -> Result<Option<ChunkRecord>, ChunkError> {
        let rest = io::copy(&mut self.input, &mut io::sink())?;
        self.end(ChunkTail::Torn {
            valid_len: self.position,
            discarded: consumed + rest,
            reason,
        })
    }
}

impl<R: Read> Iterator for ChunkReader<R> {
    type Item = Result<ChunkRecord, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Append `len` more header bytes from `input` to `bytes`; a short read is a torn header.
fn take_header(input: &mut impl Read, bytes: &mut Vec<u8>, len: usize) -> Result<(), ChunkError> {
    let start = bytes.len();
    bytes.resize(start + len, 0);
    if read_full(input, &mut bytes[start..])? == len {
        Ok(())
    } else {
        Err(ChunkError::TornHeader)
    }
}

/// Read into `buf` until it is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse_body(body: &[u8]) -> Option<ChunkRecord> {
    let fixed = body.get(..BODY_FIXED_LEN)?;
    let track = recording::track_kind_from_wire(fixed[0])?;
    let codec = MediaCodec::from_wire(fixed[2])?;
    let meeting_len = usize::from(fixed[3]);
    let participant_len = usize::from(fixed[4]);
    let clock_rate = u32::from_be_bytes(fixed[5..9].try_into().ok()?);
    let arrival_us = u64::from_be_bytes(fixed[9..17].try_into().ok()?);
    let id = |range: std::ops::Range<usize>| {
        let text = std::str::from_utf8(body.get(range)?).ok()?;
        (1..=MAX_ID_LEN)
            .contains(&text.len())
            .then(|| text.to_owned())
    };
    let meeting_id = id(BODY_FIXED_LEN..BODY_FIXED_LEN + meeting_len)?;
    let rtp_start = BODY_FIXED_LEN + meeting_len + participant_len;
    let participant_id = id(BODY_FIXED_LEN + meeting_len..rtp_start)?;
    let rtp = body.get(rtp_start..)?;
    if clock_rate == 0 || !(MIN_RTP_LEN..=MAX_RTP_LEN).contains(&rtp.len()) {
        return None;
    }
    Some(ChunkRecord {
        meeting_id,
        participant_id,
        track,
        encoding: fixed[1],
        codec,
        clock_rate,
        arrival_us,
        rtp: rtp.to_vec(),
    })
}

/// A whole chunk read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub header: ChunkHeader,
    pub records: Vec<ChunkRecord>,
    pub tail: ChunkTail,
    /// Bytes of the input that are good: header, whole records, and the trailer if any.
    pub valid_len: u64,
}

/// Read a whole chunk from memory (an object fetched from the store, a spool file).
pub fn read_chunk(bytes: &[u8]) -> Result<Chunk, ChunkError> {
    let mut reader = ChunkReader::new(bytes)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok(Chunk {
        header: reader.header.clone(),
        records,
        // Set by next_record before it returned Ok(None).
        tail: reader.tail.unwrap_or(ChunkTail::Unclosed),
        valid_len: reader.position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> ChunkHeader {
        ChunkHeader {
            recording_id: "rec-1".into(),
            instance: "recorder-a".into(),
            seq: 1_790_000_000_000,
            start_us: 1_790_000_000_000_123,
        }
    }

    fn record(i: u8) -> ChunkRecord {
        ChunkRecord {
            meeting_id: "standup".into(),
            participant_id: format!("p{i}"),
            track: [TrackKind::Audio, TrackKind::Video, TrackKind::Screen][usize::from(i % 3)],
            encoding: i % 3,
            codec: MediaCodec::from_wire(i % 5).unwrap_or_default(),
            clock_rate: if i.is_multiple_of(2) { 48_000 } else { 90_000 },
            arrival_us: 1_790_000_000_000_000 + u64::from(i) * 20_000,
            rtp: [&[0x80, 111, 0, i][..], &[i; 40]].concat(),
        }
    }

    fn write(header: &ChunkHeader, records: &[ChunkRecord], close: bool) -> Vec<u8> {
        let mut writer = ChunkWriter::new(Vec::new(), header).unwrap();
        for r in records {
            writer.append(&r.as_tap(&header.recording_id)).unwrap();
        }
        let written = writer.bytes();
        let out = if close {
            writer.close().unwrap()
        } else {
            writer.flush().unwrap();
            writer.out
        };
        assert_eq!(
            out.len() as u64,
            written + if close { 8 } else { 0 },
            "bytes() counts what was written"
        );
        out
    }

    #[test]
    fn closed_chunk_reads_back() {
        let records: Vec<_> = (0..5).map(record).collect();
        let bytes = write(&header(), &records, true);
        let chunk = read_chunk(&bytes).unwrap();
        assert_eq!(chunk.header, header());
        assert_eq!(chunk.records, records);
        assert_eq!(chunk.tail, ChunkTail::Closed);
        assert_eq!(chunk.valid_len, bytes.len() as u64);
        assert_eq!(&bytes[..4], b"FRCK");
        assert_eq!(header().encode().unwrap().len(), header().encoded_len());
    }

    #[test]
    fn unclosed_and_torn_chunks_keep_their_whole_records() {
        let records: Vec<_> = (0..3).map(record).collect();
        let bytes = write(&header(), &records, false);
        assert_eq!(read_chunk(&bytes).unwrap().tail, ChunkTail::Unclosed);
        let torn = &bytes[..bytes.len() - 3];
        let chunk = read_chunk(torn).unwrap();
        assert_eq!(chunk.records, records[..2]);
        let ChunkTail::Torn {
            valid_len,
            discarded,
            reason: TornReason::Incomplete,
        } = chunk.tail
        else {
            panic!("{:?}", chunk.tail)
        };
        assert_eq!(valid_len + discarded, torn.len() as u64);
        // Cutting at valid_len is what recovery uploads: the same records, unclosed.
        let cut = read_chunk(&torn[..valid_len as usize]).unwrap();
        assert_eq!(cut.records, records[..2]);
        assert_eq!(cut.tail, ChunkTail::Unclosed);
    }

    #[test]
    fn damage_ends_the_records_with_its_reason() {
        let records: Vec<_> = (0..3).map(record).collect();
        let bytes = write(&header(), &records, true);
        let header_len = header().encode().unwrap().len();
        let first_len = record_len(&records[0].as_tap("rec-1"));
        let second = header_len + first_len;
        let mut flipped = bytes.clone();
        flipped[second + 30] ^= 1;
        let chunk = read_chunk(&flipped).unwrap();
        assert_eq!(chunk.records, records[..1]);
        assert!(matches!(
            chunk.tail,
            ChunkTail::Torn { reason: TornReason::Checksum, valid_len, .. } if valid_len == second as u64
        ));
        let mut huge = bytes.clone();
        huge[second..second + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_chunk(&huge).unwrap().tail,
            ChunkTail::Torn {
                reason: TornReason::Oversized,
                ..
            }
        ));
        let mut after = bytes.clone();
        after.push(0);
        let chunk = read_chunk(&after).unwrap();
        assert_eq!(chunk.records, records);
        assert!(matches!(
            chunk.tail,
            ChunkTail::Torn {
                reason: TornReason::AfterTrailer,
                discarded: 9,
                ..
            }
        ));
        // A record with a good CRC but an unknown track kind: a writer bug, not data.
        let mut bad = bytes[..second].to_vec();
        let body = [&[7u8][..], &bytes[second + 9..second + first_len]].concat();
        let length = (body.len() as u32).to_be_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&length);
        crc.update(&body);
        bad.extend_from_slice(&length);
        bad.extend_from_slice(&crc.finalize().to_be_bytes());
        bad.extend_from_slice(&body);
        assert!(matches!(
            read_chunk(&bad).unwrap().tail,
            ChunkTail::Torn {
                reason: TornReason::BadFields,
                ..
            }
        ));
    }

    #[test]
    fn header_errors_are_named() {
        let bytes = write(&header(), &[record(1)], true);
        let header_len = header().encode().unwrap().len();
        assert!(matches!(read_chunk(b"FRC"), Err(ChunkError::TornHeader)));
        assert!(matches!(
            read_chunk(b"RIFF\x01\x00"),
            Err(ChunkError::BadMagic)
        ));
        assert!(matches!(
            read_chunk(b"FRCK\x02\x00"),
            Err(ChunkError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            read_chunk(&bytes[..header_len - 1]),
            Err(ChunkError::TornHeader)
        ));
        let mut flipped = bytes.clone();
        flipped[header_len - 6] ^= 0x80;
        assert!(matches!(
            read_chunk(&flipped),
            Err(ChunkError::HeaderChecksum)
        ));
        let bad = ChunkHeader {
            instance: "a/b".into(),
            ..header()
        };
        assert!(matches!(
            ChunkWriter::new(Vec::new(), &bad),
            Err(ChunkError::BadHeader)
        ));
    }

    #[test]
    fn writer_refuses_other_recordings_and_bad_records() {
        let mut writer = ChunkWriter::new(Vec::new(), &header()).unwrap();
        let r = record(1);
        assert!(matches!(
            writer.append(&r.as_tap("rec-2")),
            Err(ChunkError::RecordingMismatch { .. })
        ));
        let mut short = r.clone();
        short.rtp.truncate(11);
        assert!(matches!(
            writer.append(&short.as_tap("rec-1")),
            Err(ChunkError::BadRecord(_))
        ));
        assert_eq!(writer.records(), 0);
    }

    fn arbitrary_record() -> impl Strategy<Value = ChunkRecord> {
        (
            "[a-z0-9 ]{1,64}",
            ".{1,16}".prop_filter("64 bytes", |s| s.len() <= MAX_ID_LEN),
            0u8..3,
            any::<u8>(),
            0u8..5,
            1u32..,
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), MIN_RTP_LEN..300),
        )
            .prop_map(
                |(meeting, participant, track, encoding, codec, clock_rate, arrival_us, rtp)| {
                    ChunkRecord {
                        meeting_id: meeting,
                        participant_id: participant,
                        track: recording::track_kind_from_wire(track).unwrap_or(TrackKind::Audio),
                        encoding,
                        codec: MediaCodec::from_wire(codec).unwrap_or_default(),
                        clock_rate,
                        arrival_us,
                        rtp,
                    }
                },
            )
    }

    fn arbitrary_header() -> impl Strategy<Value = ChunkHeader> {
        (
            "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}",
            "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}",
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(recording_id, instance, seq, start_us)| ChunkHeader {
                recording_id,
                instance,
                seq,
                start_us,
            })
    }

    proptest! {
        #[test]
        fn chunks_round_trip(
            header in arbitrary_header(),
            records in proptest::collection::vec(arbitrary_record(), 0..20),
            close in any::<bool>(),
        ) {
            let bytes = write(&header, &records, close);
            let chunk = read_chunk(&bytes).unwrap();
            prop_assert_eq!(chunk.header, header);
            prop_assert_eq!(chunk.records, records);
            prop_assert_eq!(chunk.tail, if close { ChunkTail::Closed } else { ChunkTail::Unclosed });
        }

        #[test]
        fn every_truncation_reads_as_a_prefix(
            records in proptest::collection::vec(arbitrary_record(), 1..8),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes = write(&header(), &records, true);
            let header_len = header().encode().unwrap().len();
            let cut = cut.index(bytes.len() + 1);
            match read_chunk(&bytes[..cut]) {
                Err(ChunkError::TornHeader) => prop_assert!(cut < header_len),
                Err(e) => prop_assert!(false, "cut at {}: {}", cut, e),
                Ok(chunk) => {
                    prop_assert!(cut >= header_len);
                    prop_assert!(chunk.records.len() <= records.len());
                    prop_assert_eq!(&chunk.records[..], &records[..chunk.records.len()]);
                    // Exactly the records wholly inside the cut survive.
                    let whole: usize = header_len + records[..chunk.records.len()]
                        .iter().map(|r| record_len(&r.as_tap("rec-1"))).sum::<usize>();
                    match chunk.tail {
                        ChunkTail::Closed => {
                            // The trailer too: the whole file is good.
                            prop_assert_eq!(cut, bytes.len());
                            prop_assert_eq!(chunk.valid_len, bytes.len() as u64);
                            prop_assert_eq!(chunk.records.len(), records.len());
                        }
                        ChunkTail::Unclosed => {
                            prop_assert_eq!(cut, whole);
                            prop_assert_eq!(chunk.valid_len, whole as u64);
                        }
                        ChunkTail::Torn { valid_len, discarded, reason } => {
                            prop_assert_eq!(valid_len, whole as u64);
                            prop_assert_eq!(reason, TornReason::Incomplete);
                            prop_assert_eq!(valid_len + discarded, cut as u64);
                        }
                    }
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_chunk(&bytes);
        }

        #[test]
        fn random_records_behind_a_good_header_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut file = header().encode().unwrap();
            file.extend(bytes);
            let chunk = read_chunk(&file).unwrap();
            if let ChunkTail::Torn { valid_len, discarded, .. } = chunk.tail {
                prop_assert_eq!(valid_len + discarded, file.len() as u64);
            }
        }
    }
}
