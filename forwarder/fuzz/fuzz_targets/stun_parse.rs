//! STUN messages (ICE connectivity checks): `stun::parse` on raw bytes never panics,
//! checking integrity and fingerprint never panics, and a response written to whatever
//! parsed verifies with the same key.
#![no_main]

use fanout_forwarder::stun::{self, IntegrityKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = stun::parse(data) else {
        return;
    };
    let key = IntegrityKey::new(b"fuzz-password-of-22-ch");
    std::hint::black_box((message.check_integrity(&key), message.check_fingerprint()));
    let mut buf = [0u8; 128];
    let source = "192.0.2.1:5000".parse().unwrap();
    let len = stun::write_binding_success(&mut buf, &message, source, &key).expect("fits");
    let response = stun::parse(&buf[..len]).expect("what we write parses");
    assert!(response.check_integrity(&key));
    assert!(response.check_fingerprint());
    assert_eq!(response.transaction_id, message.transaction_id);
    assert_eq!(response.xor_mapped_address, Some(source));
});
