//! IVF, the simple container of libvpx (a 32-byte file header, then per frame a 12-byte
//! header with size and 64-bit timestamp). FFmpeg's demuxer takes the time base from the
//! header and the codec from the FourCC through its BMP tag table, so `VP80`, `VP90` and
//! `H264` (Annex B access units) all read back. The time base here is one microsecond:
//! frames keep their exact place on the timeline.

use std::io::{self, Seek, SeekFrom, Write};

/// Microseconds: IVF's time base is `numerator / denominator` seconds.
const TIME_BASE_DENOMINATOR: u32 = 1_000_000;
const HEADER_LEN: u16 = 32;
/// Offset of the frame count in the header, patched when the file is finished.
const FRAME_COUNT_OFFSET: u64 = 24;

/// Writes an IVF file frame by frame.
#[derive(Debug)]
pub struct IvfWriter<W: Write + Seek> {
    out: W,
    frames: u32,
    last_pts: Option<u64>,
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Writes the header. `fourcc` is `*b"VP80"`, `*b"VP90"` or `*b"H264"`; dimensions are
    /// informative (decoders read the bitstream's).
    pub fn new(mut out: W, fourcc: [u8; 4], width: u16, height: u16) -> io::Result<IvfWriter<W>> {
        let mut header = Vec::with_capacity(usize::from(HEADER_LEN));
        header.extend_from_slice(b"DKIF");
        header.extend_from_slice(&0u16.to_le_bytes()); // version
        header.extend_from_slice(&HEADER_LEN.to_le_bytes());
        header.extend_from_slice(&fourcc);
        header.extend_from_slice(&width.to_le_bytes());
        header.extend_from_slice(&height.to_le_bytes());
        header.extend_from_slice(&TIME_BASE_DENOMINATOR.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes()); // numerator
        header.extend_from_slice(&0u32.to_le_bytes()); // frame count, patched in finish()
        header.extend_from_slice(&0u32.to_le_bytes()); // unused
        out.write_all(&header)?;
        Ok(IvfWriter {
            out,
            frames: 0,
            last_pts: None,
        })
    }

    /// Appends a frame at `pts_micros`, which must be greater than the previous frame's
    /// (IVF has no decode order apart from presentation order).
    pub fn write_frame(&mut self, pts_micros: u64, data: &[u8]) -> io::Result<()> {
        if self.last_pts.is_some_and(|last| pts_micros <= last) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IVF timestamps must increase",
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&pts_micros.to_le_bytes())?;
        self.out.write_all(data)?;
        self.frames = self.frames.saturating_add(1);
        self.last_pts = Some(pts_micros);
        Ok(())
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Patches the frame count into the header and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(FRAME_COUNT_OFFSET))?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn header_and_frames_are_laid_out_as_libvpx_does() {
        let mut writer = IvfWriter::new(Cursor::new(Vec::new()), *b"VP80", 640, 360).unwrap();
        writer.write_frame(5, b"abc").unwrap();
        writer.write_frame(33_338, b"de").unwrap();
        assert!(
            writer.write_frame(33_338, b"f").is_err(),
            "equal timestamps are refused"
        );
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(&bytes[..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 640);
        assert_eq!(
            u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
            1_000_000
        );
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 2);
        assert_eq!(&bytes[32..36], &3u32.to_le_bytes());
        assert_eq!(&bytes[36..44], &5u64.to_le_bytes());
        assert_eq!(&bytes[44..47], b"abc");
        assert_eq!(bytes.len(), 32 + 12 + 3 + 12 + 2);
    }
}
