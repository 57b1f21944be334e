//! Spool files: one per video stream, the frames the keyframe gate let through, written
//! as the packets are read (pass 1) and read back in order for the layer choice (pass 2).
//! They keep memory bounded: a stream's frames live on disk, not in RAM, between the two
//! passes.
//!
//! Record: wall-clock time (i64, unix µs) · flags (u8, bit 0 keyframe) · width · height
//! (u16, 0 if unknown) · length (u32) · frame data; all little-endian.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

const KEYFRAME: u8 = 0x01;
const RECORD_HEADER_LEN: usize = 8 + 1 + 2 + 2 + 4;
/// A record claiming more than this is a corrupt spool file, not a frame.
const MAX_RECORD_BYTES: u32 = 64 << 20;

/// One frame read back from a spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpooledFrame {
    pub wall_micros: i64,
    pub keyframe: bool,
    pub dimensions: Option<(u16, u16)>,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct SpoolWriter {
    out: BufWriter<File>,
}

impl SpoolWriter {
    pub fn create(path: &Path) -> io::Result<SpoolWriter> {
        Ok(SpoolWriter {
            out: BufWriter::new(File::create(path)?),
        })
    }

    pub fn write(
        &mut self,
        wall_micros: i64,
        keyframe: bool,
        dimensions: Option<(u16, u16)>,
        data: &[u8],
    ) -> io::Result<()> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD_BYTES);
        let len = len.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "frame too large to spool")
        })?;
        let (width, height) = dimensions.unwrap_or((0, 0));
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..8].copy_from_slice(&wall_micros.to_le_bytes());
        header[8] = if keyframe { KEYFRAME } else { 0 };
        header[9..11].copy_from_slice(&width.to_le_bytes());
        header[11..13].copy_from_slice(&height.to_le_bytes());
        header[13..17].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(data)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[derive(Debug)]
pub(crate) struct SpoolReader {
    input: BufReader<File>,
}

impl SpoolReader {
    pub fn open(path: &Path) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            input: BufReader::new(File::open(path)?),
        })
    }

    /// The next frame, `None` at the end.
    pub fn next_frame(&mut self) -> io::Result<Option<SpooledFrame>> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        match self.input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let field = |range: std::ops::Range<usize>| &header[range];
        let wall_micros = i64::from_le_bytes(field(0..8).try_into().unwrap_or_default());
        let width = u16::from_le_bytes([header[9], header[10]]);
        let height = u16::from_le_bytes([header[11], header[12]]);
        let len = u32::from_le_bytes(field(13..17).try_into().unwrap_or_default());
        if len > MAX_RECORD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "corrupt spool record",
            ));
        }
        let mut data = vec![0; len as usize];
        self.input.read_exact(&mut data)?;
        Ok(Some(SpooledFrame {
            wall_micros,
            keyframe: header[8] & KEYFRAME != 0,
            dimensions: (width != 0 || height != 0).then_some((width, height)),
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let dir = std::env::temp_dir().join(format!("fanout-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.spool");
        let mut writer = SpoolWriter::create(&path).unwrap();
        writer.write(-5, true, Some((640, 360)), b"key").unwrap();
        writer
            .write(1_700_000_000_000_000, false, None, b"")
            .unwrap();
        writer.finish().unwrap();
        let mut reader = SpoolReader::open(&path).unwrap();
        let first = reader.next_frame().unwrap().unwrap();
        assert_eq!(
            first,
            SpooledFrame {
                wall_micros: -5,
                keyframe: true,
                dimensions: Some((640, 360)),
                data: b"key".to_vec()
            }
        );
        let second = reader.next_frame().unwrap().unwrap();
        assert_eq!(
            (second.wall_micros, second.keyframe, second.dimensions),
            (1_700_000_000_000_000, false, None)
        );
        assert_eq!(reader.next_frame().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
