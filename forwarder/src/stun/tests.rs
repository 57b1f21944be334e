//! RFC 5769's test vectors, round trips of what this module writes, tampering, and
//! arbitrary bytes.

use super::*;
use proptest::prelude::*;

const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME
/// "evtj:h6vY", MESSAGE-INTEGRITY and FINGERPRINT.
const SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2: the IPv4 response, mapped address 192.0.2.1 port 32853.
const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3: the IPv6 response, mapped address 2001:db8:1234:5678:11:2233:4455:6677
/// port 32853.
const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

fn key() -> IntegrityKey {
    IntegrityKey::new(PASSWORD)
}

#[test]
fn rfc5769_sample_request() {
    let m = parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!(m.class, Class::Request);
    assert_eq!(m.method, METHOD_BINDING);
    assert_eq!(m.transaction_id, SAMPLE_REQUEST[8..20]);
    assert_eq!(m.username, Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.priority, Some(0x6e00_01ff));
    assert_eq!(m.ice_controlled, Some(0x932f_f9b1_5126_3b36));
    assert_eq!(m.ice_controlling, None);
    assert!(!m.use_candidate);
    assert_eq!(m.unknown_required, None);
    assert!(m.check_integrity(&key()));
    assert!(!m.check_integrity(&IntegrityKey::new(b"VOkJxbRl1RmTxUk/WvJxBu")));
    assert!(m.check_fingerprint());
}

#[test]
fn rfc5769_sample_responses() {
    for (bytes, mapped) in [
        (&SAMPLE_IPV4_RESPONSE[..], "192.0.2.1:32853"),
        (
            &SAMPLE_IPV6_RESPONSE[..],
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let m = parse(bytes).unwrap();
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(m.method, METHOD_BINDING);
        assert_eq!(m.xor_mapped_address, Some(mapped.parse().unwrap()));
        assert!(m.check_integrity(&key()), "{mapped}");
        assert!(m.check_fingerprint(), "{mapped}");
    }
}

#[test]
fn the_success_response_carries_the_source_and_checks_out() {
    let request = parse(&SAMPLE_REQUEST).unwrap();
    for source in [
        "192.0.2.1:32853",
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    ] {
        let source: SocketAddr = source.parse().unwrap();
        let mut buf = [0u8; 128];
        let len = write_binding_success(&mut buf, &request, source, &key()).unwrap();
        let response = parse(&buf[..len]).unwrap();
        assert_eq!(response.class, Class::SuccessResponse);
        assert_eq!(response.method, METHOD_BINDING);
        assert_eq!(response.transaction_id, request.transaction_id);
        assert_eq!(response.xor_mapped_address, Some(source));
        assert!(response.check_integrity(&key()));
        assert!(response.check_fingerprint());
    }
    // The XOR-MAPPED-ADDRESS bytes are RFC 5769's for the same address and transaction.
    let mut buf = [0u8; 128];
    let len = write_binding_success(
        &mut buf,
        &request,
        "192.0.2.1:32853".parse().unwrap(),
        &key(),
    )
    .unwrap();
    assert_eq!(&buf[20..32], &SAMPLE_IPV4_RESPONSE[36..48]);
    assert_eq!(len, 20 + 12 + 24 + 8);
    // A dual-stack socket's IPv4-mapped peer is answered in IPv4.
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:32853".parse().unwrap();
    let len = write_binding_success(&mut buf, &request, mapped, &key()).unwrap();
    assert_eq!(
        parse(&buf[..len]).unwrap().xor_mapped_address,
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert!(matches!(
        write_binding_success(&mut buf[..60], &request, mapped, &key()),
        Err(WriteError::BufferTooSmall)
    ));
}

#[test]
fn error_responses_name_the_code_and_the_unknown_attributes() {
    let request = parse(&SAMPLE_REQUEST).unwrap();
    let mut buf = [0u8; 256];
    let len = write_error(
        &mut buf,
        &request,
        420,
        "Unknown Attribute",
        &[0x0030, 0x0031],
        None,
    )
    .unwrap();
    let response = parse(&buf[..len]).unwrap();
    assert_eq!(response.class, Class::ErrorResponse);
    assert_eq!(response.transaction_id, request.transaction_id);
    assert!(!response.has_integrity());
    assert!(response.check_fingerprint());
    // ERROR-CODE: class 4, number 20, the reason; UNKNOWN-ATTRIBUTES follows.
    assert_eq!(&buf[20..24], &[0x00, 0x09, 0x00, 4 + 17]);
    assert_eq!(&buf[26..28], &[4, 20]);
    assert_eq!(&buf[28..45], b"Unknown Attribute");
    assert_eq!(
        &buf[48..56],
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x30, 0x00, 0x31]
    );
    let len = write_error(&mut buf, &request, 487, "Role Conflict", &[], Some(&key())).unwrap();
    let response = parse(&buf[..len]).unwrap();
    assert!(response.check_integrity(&key()));
    assert!(response.check_fingerprint());
}

/// A Binding request with the given attributes (type, value), MESSAGE-INTEGRITY after
/// the first `before_integrity` of them, then FINGERPRINT.
fn request(attributes: &[(u16, &[u8])], before_integrity: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let tid = [7u8; 12];
    let mut w = Writer::new(&mut buf, Class::Request, METHOD_BINDING, &tid).unwrap();
    for (i, (kind, value)) in attributes.iter().enumerate() {
        if i == before_integrity {
            w.integrity(&key()).unwrap();
        }
        let at = w.attribute(*kind, value.len()).unwrap();
        w.buf[at..at + value.len()].copy_from_slice(value);
    }
    if before_integrity >= attributes.len() {
        w.integrity(&key()).unwrap();
    }
    let len = w.fingerprint().unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn unknown_attributes_by_comprehension_range() {
    // GOOG-NETWORK-INFO (0xc057) is optional: ignored. 0x0030 is required: reported.
    let bytes = request(
        &[(0xc057, &[0, 1, 0, 10]), (attribute::USE_CANDIDATE, &[])],
        2,
    );
    let m = parse(&bytes).unwrap();
    assert_eq!(m.unknown_required, None);
    assert!(m.use_candidate);
    assert!(m.check_integrity(&key()) && m.check_fingerprint());
    let bytes = request(&[(0x0030, b"x"), (0x0031, b"y")], 2);
    assert_eq!(parse(&bytes).unwrap().unknown_required, Some(0x0030));
}

#[test]
fn what_follows_message_integrity_is_not_trusted() {
    // USE-CANDIDATE after MESSAGE-INTEGRITY is outside the HMAC: ignored.
    let bytes = request(&[(attribute::USE_CANDIDATE, &[])], 0);
    let m = parse(&bytes).unwrap();
    assert!(!m.use_candidate);
    assert!(m.check_integrity(&key()));
    assert!(m.check_fingerprint());
}

#[test]
fn malformed_messages_are_refused() {
    assert_eq!(
        parse(&SAMPLE_REQUEST[..19]).unwrap_err(),
        ParseError::TooShort
    );
    let mut rtp = SAMPLE_REQUEST;
    rtp[0] = 0x80;
    assert_eq!(parse(&rtp).unwrap_err(), ParseError::NotStun);
    let mut old = SAMPLE_REQUEST;
    old[4] = 0;
    assert_eq!(parse(&old).unwrap_err(), ParseError::NoMagicCookie);
    assert_eq!(
        parse(&SAMPLE_REQUEST[..104]).unwrap_err(),
        ParseError::BadLength
    );
    let mut long = SAMPLE_REQUEST;
    long[23] = 0x40; // SOFTWARE claims 64 bytes
    assert_eq!(parse(&long).unwrap_err(), ParseError::TruncatedAttribute);
    let mut priority = SAMPLE_REQUEST;
    priority[43] = 3; // PRIORITY of 3 bytes
    assert_eq!(parse(&priority).unwrap_err(), ParseError::BadAttribute);
    let bytes = request(&[], 0);
    let mut after = bytes.clone();
    after.extend_from_slice(&[0x80, 0x22, 0, 0]);
    let length = (after.len() - HEADER_LEN) as u16;
    after[2..4].copy_from_slice(&length.to_be_bytes());
    assert_eq!(parse(&after).unwrap_err(), ParseError::AfterFingerprint);
}

#[test]
fn every_changed_byte_is_caught() {
    for at in 0..SAMPLE_REQUEST.len() {
        for flip in [0x01u8, 0x80] {
            let mut bytes = SAMPLE_REQUEST;
            bytes[at] ^= flip;
            let accepted = parse(&bytes)
                .map(|m| m.check_integrity(&key()) && m.check_fingerprint())
                .unwrap_or(false);
            assert!(!accepted, "byte {at} ^ {flip:#x} went unnoticed");
        }
    }
}

#[test]
fn message_types_round_trip() {
    for method in 0..0x1000u16 {
        for class in [
            Class::Request,
            Class::Indication,
            Class::SuccessResponse,
            Class::ErrorResponse,
        ] {
            let t = message_type(class, method);
            assert_eq!(t & 0xc000, 0);
            assert_eq!((method_of(t), Class::from_type(t)), (method, class));
        }
    }
    assert_eq!(message_type(Class::SuccessResponse, METHOD_BINDING), 0x0101);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(m) = parse(&bytes) {
            let _ = (m.check_integrity(&key()), m.check_fingerprint());
        }
    }

    #[test]
    fn arbitrary_attributes_after_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| {
            b.truncate(b.len() / 4 * 4);
            b
        })
    ) {
        let mut bytes = SAMPLE_REQUEST[..20].to_vec();
        bytes.extend_from_slice(&body);
        let length = body.len() as u16;
        bytes[2..4].copy_from_slice(&length.to_be_bytes());
        if let Ok(m) = parse(&bytes) {
            let _ = (m.check_integrity(&key()), m.check_fingerprint());
        }
    }
}
