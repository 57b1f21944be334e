//! RFC 7983 / RFC 5761 §4 demultiplexing of a received datagram.
#![no_main]

use fanout_forwarder::demux::{classify, PacketClass};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        PacketClass::Rtp | PacketClass::Rtcp => {
            // 128..=191: version 2 in the top two bits.
            assert_eq!(data[0] >> 6, 2);
        }
        PacketClass::Unknown => {}
        _ => assert!(!data.is_empty()),
    }
});
