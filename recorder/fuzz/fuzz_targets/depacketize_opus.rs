//! Opus packets (RFC 6716 §3, as RFC 7587 carries them) on arbitrary bytes:
//! `packet_samples` never panics and accepts at most 120 ms; what it accepts is written
//! into an Ogg Opus stream at a position from the input, with holes concealed, and the
//! writer never panics either.
#![no_main]

use fanout_recorder::stitch::depacketize::opus::{concealment_packet, packet_samples};
use fanout_recorder::stitch::ogg::OggOpusWriter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(samples) = packet_samples(data) else {
        return;
    };
    assert!(samples > 0 && samples <= 5760);
    let mut writer = OggOpusWriter::new(Vec::new(), 1).expect("writing to memory");
    let gap = u64::from(data.first().copied().unwrap_or(0)) * 120;
    assert!(writer.write_packet_at(0, data, samples).expect("memory"));
    assert!(writer
        .write_packet_at(u64::from(samples) + gap, data, samples)
        .expect("memory"));
    assert_eq!(writer.position(), 2 * u64::from(samples) + gap);
    if let Some(filler) = concealment_packet(samples) {
        assert_eq!(packet_samples(&filler), Ok(samples));
    }
    let _ = writer.finish();
});
