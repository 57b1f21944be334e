//! RTP header parsing (RFC 3550 §5.1, §5.3.1, RFC 8285): `RtpHeader::parse`, then the
//! payload range (padding, §5.1) and the header extension walkers on what it accepted.
#![no_main]

use fanout_forwarder::rtp::{self, RtpHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = RtpHeader::parse(data) else {
        return;
    };
    assert!(
        header.header_len <= data.len(),
        "header runs past the packet"
    );
    if let Ok(range) = rtp::payload_range(data, &header) {
        assert!(range.start <= range.end && range.end <= data.len());
    }
    let _ = rtp::extension(data, &header);
    for (_id, value) in rtp::extension_elements(data, &header) {
        std::hint::black_box(value);
    }
});
