//! Frames received on an AF_XDP socket: `driver::afxdp::frame::parse` on raw bytes never
//! panics, and what it accepts lies inside the frame and survives a rebuild: headers
//! written by `frame::build` for the same addresses and payload parse back to the same
//! datagram.
#![no_main]

use fanout_forwarder::driver::afxdp::frame::{self, Headers, MacAddr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(datagram) = frame::parse(data) else {
        return;
    };
    assert!(datagram.payload.start <= datagram.payload.end);
    assert!(datagram.payload.end <= data.len());
    assert_eq!(
        datagram.source.is_ipv6(),
        datagram.destination.is_ipv6(),
        "one family per packet"
    );
    let payload = &data[datagram.payload.clone()];
    let headers = Headers {
        source_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        destination_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        source: datagram.source,
        destination: datagram.destination,
    };
    let mut rebuilt = vec![0u8; headers.header_len() + payload.len()];
    rebuilt[headers.header_len()..].copy_from_slice(payload);
    let len = frame::build(&mut rebuilt, &headers, payload.len()).expect("it fitted before");
    let again = frame::parse(&rebuilt[..len]).expect("a built frame parses");
    assert_eq!(again.source, datagram.source);
    assert_eq!(again.destination, datagram.destination);
    assert_eq!(&rebuilt[again.payload], payload);
});
