//! DTLS records (WebRTC handshakes): `dtls::record` on raw bytes never panics and agrees
//! with itself, and a fresh `DtlsServer` fed the bytes (whole, then as a few datagrams)
//! never panics, whatever it makes of them.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fanout_forwarder::dtls::record::{self, RECORD_HEADER_LEN};
use fanout_forwarder::dtls::{DtlsIdentity, DtlsServer, Fingerprint};
use libfuzzer_sys::fuzz_target;

fn identity() -> &'static DtlsIdentity {
    static IDENTITY: OnceLock<DtlsIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| DtlsIdentity::generate().expect("key generation"))
}

fuzz_target!(|data: &[u8]| {
    // The parser: check_datagram accepts exactly when every record (and every plaintext
    // handshake fragment) parses, and the records tile the datagram.
    let checked = record::check_datagram(data);
    let mut covered = 0;
    let mut all_ok = !data.is_empty();
    for r in record::records(data) {
        match r {
            Ok(r) => {
                covered += RECORD_HEADER_LEN + r.fragment.len();
                if let Some(fragments) = r.handshake_fragments() {
                    for f in fragments {
                        match f {
                            Ok(f) => assert_eq!(f.body.len() as u32, f.fragment_length),
                            Err(_) => all_ok = false,
                        }
                    }
                }
            }
            Err(_) => all_ok = false,
        }
    }
    assert_eq!(checked.is_ok(), all_ok);
    if all_ok {
        assert_eq!(covered, data.len());
    }

    // The server: a fingerprint that matches nothing, the bytes as one datagram, then cut
    // into datagrams at every 0xFF byte, with time moving on.
    let remote: Fingerprint = format!("sha-256 {}", vec!["00"; 32].join(":"))
        .parse()
        .unwrap();
    let t0 = Instant::now();
    let mut server = DtlsServer::new(identity(), remote, t0).unwrap();
    let mut buf = [0u8; 1500];
    let mut now = t0;
    for datagram in std::iter::once(data).chain(data.split(|b| *b == 0xFF)) {
        server.handle_datagram(now, datagram);
        while server.poll_transmit(&mut buf).is_some() {}
        while server.poll_event().is_some() {}
        now += Duration::from_millis(300);
        server.handle_timeout(now);
        while server.poll_transmit(&mut buf).is_some() {}
    }
    server.handle_timeout(t0 + Duration::from_secs(60));
    if server.is_done() {
        // Failed or closed: no timer, nothing left to send.
        assert_eq!(server.poll_timeout(), None);
    }
    std::hint::black_box(server.stats());
});
