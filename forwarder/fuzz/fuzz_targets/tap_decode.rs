//! The recording tap (`recording::decode`, the datagrams a recorder reads): never panics
//! on arbitrary bytes, and whatever decodes encodes back to exactly the same bytes (one
//! reading per datagram).
#![no_main]

use fanout_forwarder::recording::{self, TapMessage, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = recording::decode(data) else {
        return;
    };
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let len = match message {
        TapMessage::Packet(packet) => recording::encode_packet(&packet, &mut buf),
        TapMessage::End { recording_id } => recording::encode_end(recording_id, &mut buf),
    }
    .expect("what decodes encodes");
    assert_eq!(&buf[..len], data);
});
