//! [`DtlsServer`] against an independent DTLS client, webrtc-dtls (webrtc-rs), as a test
//! oracle: both ends must agree on the profile and the exported SRTP keys, and an RTP
//! packet protected by webrtc-srtp with the client's keys must unprotect with ours. The
//! sans-IO server is driven by hand over an in-memory datagram pipe, which can drop flights.

use super::*;
use crate::srtp::SrtpContext;
use ::rtp::header::Header;
use ::rtp::packet::Packet;
use bytes::Bytes;
use dtls_util::conn::conn_pipe::pipe;
use dtls_util::{Conn, KeyingMaterialExporter};
use std::sync::atomic::AtomicUsize;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile as OracleProfile;
use webrtc_srtp::context::Context as SrtpOracle;
use webrtc_srtp::protection_profile::ProtectionProfile;
use webrtc_util::marshal::Marshal;

fn oracle_profile(p: SrtpProfile) -> OracleProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => OracleProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => OracleProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        SrtpProfile::AeadAes128Gcm => OracleProfile::Srtp_Aead_Aes_128_Gcm,
        SrtpProfile::AeadAes256Gcm => OracleProfile::Srtp_Aead_Aes_256_Gcm,
    }
}

fn srtp_oracle_profile(p: SrtpProfile) -> ProtectionProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    }
}

/// The browser's side: a certificate of its own and the SRTP profiles it offers.
struct ClientSetup {
    certificate: Certificate,
    profiles: Vec<OracleProfile>,
    mtu: usize,
    /// Send close_notify once connected.
    close: bool,
}

impl ClientSetup {
    fn new(profiles: &[SrtpProfile]) -> Self {
        ClientSetup {
            certificate: Certificate::generate_self_signed(vec!["browser".to_owned()]).unwrap(),
            profiles: profiles.iter().map(|p| oracle_profile(*p)).collect(),
            mtu: 0,
            close: false,
        }
    }

    /// What the browser's SDP says: `a=fingerprint:sha-256 ...` of its certificate.
    fn fingerprint(&self, hash: HashFunction) -> Fingerprint {
        Fingerprint::of_der(hash, self.certificate.certificate[0].as_ref()).unwrap()
    }
}

/// Which server datagrams the pipe drops: by index of the drain ("flight") they came out
/// of, counting only drains that produced something.
type Filter = Box<dyn FnMut(usize) -> bool + Send>;

struct Outcome {
    client: Result<ClientResult, String>,
    events: Vec<DtlsEvent>,
    server: DtlsServer,
    server_flights: usize,
    /// Client datagrams holding a handshake fragment that is not a whole message.
    fragments_in: usize,
}

struct ClientResult {
    profile: OracleProfile,
    exported: Vec<u8>,
}

/// Runs a handshake between webrtc-dtls (client) and `server`, on the real clock (OpenSSL's
/// retransmission timer reads it). `keep(flight)` decides which server flights reach the
/// client. Returns when the client is done and the server is connected or done.
async fn handshake(
    setup: &ClientSetup,
    server_fingerprint: Fingerprint,
    mut server: DtlsServer,
    mut keep: Filter,
) -> Outcome {
    let (client_end, server_end) = pipe();
    let expected = server_fingerprint.clone();
    let close = setup.close;
    let config = Config {
        certificates: vec![setup.certificate.clone()],
        srtp_protection_profiles: setup.profiles.clone(),
        // The client checks our certificate the WebRTC way too: by fingerprint.
        insecure_skip_verify: true,
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _| {
            let ok = certs
                .first()
                .is_some_and(|c| Fingerprint::of_der(HashFunction::Sha256, c).unwrap() == expected);
            if ok {
                Ok(())
            } else {
                Err(webrtc_dtls::Error::ErrInvalidCertificate)
            }
        })),
        mtu: setup.mtu,
        ..Default::default()
    };
    let client_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&client_done);
    let client = async move {
        let conn: Arc<dyn Conn + Send + Sync> = Arc::new(client_end);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            DTLSConn::new(conn, config, true, None),
        )
        .await;
        let result = match result {
            Ok(Ok(dtls)) => {
                let profile = dtls.selected_srtpprotection_profile();
                let p = SRTP_PROFILES
                    .into_iter()
                    .find(|p| oracle_profile(*p) == profile);
                let len = p.map_or(0, |p| 2 * (p.master_key_len() + p.master_salt_len()));
                let exported = dtls
                    .connection_state()
                    .await
                    .export_keying_material(SRTP_EXPORTER_LABEL, &[], len)
                    .await
                    .map_err(|e| e.to_string());
                // Keep the association up (no close_notify, which would close the server
                // side too) a little, so that a lost final flight can be resent.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if close {
                    let _ = dtls.close().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                exported.map(|exported| ClientResult { profile, exported })
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("client timed out".to_owned()),
        };
        done.store(true, Ordering::SeqCst);
        result
    };
    let server_loop = async move {
        let mut events = Vec::new();
        let mut flights = 0;
        let mut fragments_in = 0;
        let mut buf = vec![0u8; 2048];
        let mut rbuf = vec![0u8; 4096];
        let give_up = Instant::now() + Duration::from_secs(25);
        loop {
            let mut produced = false;
            while let Some(n) = server.poll_transmit(&mut buf) {
                produced = true;
                if keep(flights) && server_end.send(&buf[..n]).await.is_err() {
                    break;
                }
            }
            if produced {
                flights += 1;
            }
            while let Some(e) = server.poll_event() {
                events.push(e);
            }
            if client_done.load(Ordering::SeqCst) || Instant::now() > give_up {
                break;
            }
            let wait = server
                .poll_timeout()
                .map_or(Duration::from_millis(50), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(50));
            match tokio::time::timeout(wait, server_end.recv(&mut rbuf)).await {
                Ok(Ok(n)) => {
                    let partial = record::records(&rbuf[..n])
                        .flatten()
                        .filter_map(|r| r.handshake_fragments())
                        .flatten()
                        .flatten()
                        .any(|f| !f.is_complete());
                    fragments_in += usize::from(partial);
                    server.handle_datagram(Instant::now(), &rbuf[..n]);
                }
                Ok(Err(_)) => break,
                Err(_) => server.handle_timeout(Instant::now()),
            }
        }
        (server, events, flights, fragments_in)
    };
    let (client, (server, events, server_flights, fragments_in)) =
        tokio::join!(client, server_loop);
    Outcome {
        client,
        events,
        server,
        server_flights,
        fragments_in,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // Several tests race to install it; the first wins, the others get Err: fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn identity() -> DtlsIdentity {
    DtlsIdentity::generate().unwrap()
}

/// Connects, then checks the keys against the oracle's export and with SRTP.
fn connect_and_check(setup: ClientSetup, keep: Filter, expect: SrtpProfile) -> Outcome {
    let identity = identity();
    let server = DtlsServer::new(
        &identity,
        setup.fingerprint(HashFunction::Sha256),
        Instant::now(),
    )
    .unwrap();
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep,
    ));
    let client = outcome.client.as_ref().expect("client connected");
    assert_eq!(client.profile, oracle_profile(expect));
    assert!(outcome.server.is_connected());
    assert_eq!(outcome.server.poll_timeout(), None);
    let [DtlsEvent::Connected {
        profile,
        receive,
        send,
    }] = &outcome.events[..]
    else {
        panic!("expected one Connected event, got {:?}", outcome.events);
    };
    assert_eq!(*profile, expect);
    let (k, s) = (expect.master_key_len(), expect.master_salt_len());
    let x = &client.exported;
    assert_eq!(x.len(), 2 * (k + s));
    let client_write = [&x[..k], &x[2 * k..2 * k + s]].concat();
    let server_write = [&x[k..2 * k], &x[2 * k + s..]].concat();
    assert_eq!(receive.key_and_salt(), &client_write[..]);
    assert_eq!(send.key_and_salt(), &server_write[..]);
    assert_ne!(receive.key_and_salt(), send.key_and_salt());
    check_srtp(receive, &client_write);
    outcome
}

/// The browser protects RTP with client_write (webrtc-srtp); we unprotect with `receive`.
fn check_srtp(receive: &MasterKey, client_write: &[u8]) {
    let profile = receive.profile();
    let k = profile.master_key_len();
    let mut oracle = SrtpOracle::new(
        &client_write[..k],
        &client_write[k..],
        srtp_oracle_profile(profile),
        None,
        None,
    )
    .unwrap();
    let mut ours = SrtpContext::new(receive);
    for seq in [1000u16, 1001, 1002] {
        let packet = Packet {
            header: Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: 960 * u32::from(seq),
                ssrc: 0x1234_5678,
                ..Default::default()
            },
            payload: Bytes::from(vec![seq as u8; 160]),
        };
        let plain = packet.marshal().unwrap().to_vec();
        let mut protected = oracle.encrypt_rtp(&plain).unwrap().to_vec();
        assert_ne!(protected[12..], plain[12..]);
        let n = ours.unprotect_rtp(&mut protected).unwrap();
        assert_eq!(&protected[..n], &plain[..]);
    }
}

fn keep_all() -> Filter {
    Box::new(|_| true)
}

#[test]
fn handshake_aead_aes_256_gcm() {
    connect_and_check(
        ClientSetup::new(&[SrtpProfile::AeadAes256Gcm]),
        keep_all(),
        SrtpProfile::AeadAes256Gcm,
    );
}

#[test]
fn handshake_aead_aes_128_gcm() {
    connect_and_check(
        ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]),
        keep_all(),
        SrtpProfile::AeadAes128Gcm,
    );
}

#[test]
fn handshake_aes_cm_128_hmac_sha1_80() {
    connect_and_check(
        ClientSetup::new(&[SrtpProfile::AesCm128HmacSha1_80]),
        keep_all(),
        SrtpProfile::AesCm128HmacSha1_80,
    );
}

#[test]
fn server_preference_wins() {
    // A client preferring CM-80 still gets AES-256-GCM, our first choice.
    connect_and_check(
        ClientSetup::new(&[
            SrtpProfile::AesCm128HmacSha1_80,
            SrtpProfile::AeadAes128Gcm,
            SrtpProfile::AeadAes256Gcm,
        ]),
        keep_all(),
        SrtpProfile::AeadAes256Gcm,
    );
}

#[test]
fn other_fingerprint_hashes_are_checked_too() {
    for hash in [
        HashFunction::Sha1,
        HashFunction::Sha384,
        HashFunction::Sha512,
    ] {
        let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
        let identity = identity();
        let server = DtlsServer::new(&identity, setup.fingerprint(hash), Instant::now()).unwrap();
        let outcome = runtime().block_on(handshake(
            &setup,
            identity.fingerprint().clone(),
            server,
            keep_all(),
        ));
        assert!(
            outcome.client.is_ok(),
            "{hash:?}: {:?}",
            outcome.client.err()
        );
        assert!(outcome.server.is_connected(), "{hash:?}");
    }
}

fn assert_failed(outcome: &Outcome, what: impl Fn(&DtlsFailure) -> bool) {
    assert!(outcome.client.is_err(), "the client must not connect");
    assert!(
        matches!(&outcome.events[..], [DtlsEvent::Failed(f)] if what(f)),
        "{:?}",
        outcome.events
    );
    assert!(!outcome.server.is_connected());
    assert!(outcome.server.is_done());
    assert_eq!(outcome.server.poll_timeout(), None);
}

#[test]
fn wrong_fingerprint_fails_without_keys() {
    let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    let impostor = ClientSetup::new(&[]);
    let identity = identity();
    let server = DtlsServer::new(
        &identity,
        impostor.fingerprint(HashFunction::Sha256),
        Instant::now(),
    )
    .unwrap();
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep_all(),
    ));
    assert_failed(&outcome, |f| *f == DtlsFailure::FingerprintMismatch);
}

#[test]
fn no_common_srtp_profile_fails() {
    let setup = ClientSetup::new(&[SrtpProfile::AesCm128HmacSha1_32]);
    let identity = identity();
    let server = DtlsServer::new(
        &identity,
        setup.fingerprint(HashFunction::Sha256),
        Instant::now(),
    )
    .unwrap();
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep_all(),
    ));
    assert_failed(&outcome, |f| {
        matches!(f, DtlsFailure::NoSrtpProfile | DtlsFailure::Alert(_))
    });
}

#[test]
fn small_client_mtu_fragments_and_connects() {
    let mut setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    // ClientHello and Certificate both span several records.
    setup.mtu = 150;
    let outcome = connect_and_check(setup, keep_all(), SrtpProfile::AeadAes128Gcm);
    assert!(outcome.fragments_in >= 3, "{}", outcome.fragments_in);
}

#[test]
fn server_flight_is_fragmented_to_the_mtu() {
    let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    let identity = identity();
    let config = DtlsConfig {
        mtu: 300,
        ..DtlsConfig::default()
    };
    let server = DtlsServer::with_config(
        &identity,
        setup.fingerprint(HashFunction::Sha256),
        config,
        Instant::now(),
    )
    .unwrap();
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep_all(),
    ));
    assert!(outcome.client.is_ok(), "{:?}", outcome.client.err());
    assert!(outcome.server.is_connected());
    // ServerHello..ServerHelloDone (~900 bytes with the certificate) took several datagrams.
    assert!(outcome.server.stats().datagrams_sent >= 4);
}

#[test]
fn lost_first_server_flight_is_retransmitted() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&dropped);
    let outcome = connect_and_check(
        ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]),
        Box::new(move |flight| {
            if flight == 0 {
                d.fetch_add(1, Ordering::SeqCst);
                false
            } else {
                true
            }
        }),
        SrtpProfile::AeadAes128Gcm,
    );
    assert!(dropped.load(Ordering::SeqCst) >= 1);
    assert!(outcome.server_flights >= 3, "{}", outcome.server_flights);
}

#[test]
fn lost_final_server_flight_is_resent_on_client_retransmission() {
    // Flight 0: ServerHello..ServerHelloDone; flight 1: ChangeCipherSpec, Finished. The
    // client resends its flight; OpenSSL answers a repeated Finished with its own again.
    let outcome = connect_and_check(
        ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]),
        Box::new(|flight| flight != 1),
        SrtpProfile::AeadAes128Gcm,
    );
    assert!(outcome.server_flights >= 3, "{}", outcome.server_flights);
}

#[test]
fn close_notify_after_connected_is_closed() {
    let mut setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    setup.close = true;
    let identity = identity();
    let server = DtlsServer::new(
        &identity,
        setup.fingerprint(HashFunction::Sha256),
        Instant::now(),
    )
    .unwrap();
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep_all(),
    ));
    assert!(outcome.client.is_ok());
    assert!(
        matches!(
            &outcome.events[..],
            [DtlsEvent::Connected { .. }, DtlsEvent::Closed]
        ),
        "{:?}",
        outcome.events
    );
    assert!(outcome.server.is_done());
    assert_eq!(outcome.server.poll_timeout(), None);
}

/// The oracle client's first datagram (its ClientHello), captured from the pipe.
fn client_hello(rt: &tokio::runtime::Runtime) -> Vec<u8> {
    rt.block_on(async {
        let (client_end, server_end) = pipe();
        let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
        let config = Config {
            certificates: vec![setup.certificate.clone()],
            srtp_protection_profiles: setup.profiles.clone(),
            insecure_skip_verify: true,
            ..Default::default()
        };
        let client = tokio::spawn(async move {
            let conn: Arc<dyn Conn + Send + Sync> = Arc::new(client_end);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                DTLSConn::new(conn, config, true, None),
            )
            .await;
        });
        let mut buf = vec![0u8; 2048];
        let n = server_end.recv(&mut buf).await.unwrap();
        client.abort();
        buf.truncate(n);
        buf
    })
}

#[test]
fn handshake_timeout_fails_and_frees_state() {
    let rt = runtime();
    let hello = client_hello(&rt);
    let identity = identity();
    let remote = ClientSetup::new(&[]).fingerprint(HashFunction::Sha256);
    let t0 = Instant::now();
    let config = DtlsConfig {
        handshake_timeout: Duration::from_secs(3),
        ..DtlsConfig::default()
    };
    let mut server = DtlsServer::with_config(&identity, remote, config, t0).unwrap();
    // Nothing before the first ClientHello.
    assert_eq!(server.poll_timeout(), None);
    server.handle_datagram(t0, &hello);
    let mut buf = [0u8; 1500];
    let mut sent = 0;
    while let Some(n) = server.poll_transmit(&mut buf) {
        assert!(n <= DEFAULT_MTU);
        sent += 1;
    }
    assert!(sent >= 1);
    // The retransmission timer first, then the deadline.
    assert_eq!(server.poll_timeout(), Some(t0 + INITIAL_RTO));
    assert!(server.poll_event().is_none());
    server.handle_timeout(t0 + Duration::from_secs(3));
    assert!(matches!(
        server.poll_event(),
        Some(DtlsEvent::Failed(DtlsFailure::Timeout))
    ));
    assert!(server.poll_event().is_none());
    assert!(server.is_done());
    assert!(!server.is_connected());
    assert_eq!(server.poll_timeout(), None);
    server.handle_datagram(t0 + Duration::from_secs(4), &hello);
    assert_eq!(server.stats().closed_dropped, 1);
    assert!(server.poll_transmit(&mut buf).is_none());
    assert!(server.poll_event().is_none());
}

#[test]
fn retransmits_on_the_timer() {
    let rt = runtime();
    let hello = client_hello(&rt);
    let identity = identity();
    let remote = ClientSetup::new(&[]).fingerprint(HashFunction::Sha256);
    let t0 = Instant::now();
    let mut server = DtlsServer::new(&identity, remote, t0).unwrap();
    server.handle_datagram(t0, &hello);
    let mut buf = [0u8; 1500];
    let mut first = Vec::new();
    while let Some(n) = server.poll_transmit(&mut buf) {
        first.push(buf[..n].to_vec());
    }
    assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    // OpenSSL's own timer reads the system clock: let a second pass for real.
    std::thread::sleep(Duration::from_millis(1050));
    server.handle_timeout(t0 + Duration::from_secs(1));
    let mut again = Vec::new();
    while let Some(n) = server.poll_transmit(&mut buf) {
        again.push(buf[..n].to_vec());
    }
    // OpenSSL resends message by message: more datagrams, each within the MTU.
    assert!(again.len() >= first.len());
    assert!(again.iter().all(|d| d.len() <= DEFAULT_MTU));
    assert_eq!(server.stats().retransmissions, 1);
    assert_eq!(
        server.poll_timeout(),
        Some(t0 + Duration::from_secs(1) + Duration::from_secs(2))
    );
    // Same messages, new record sequence numbers (RFC 6347 §4.2.4).
    let seq = |d: &[u8]| record::records(d).next().unwrap().unwrap().sequence_number;
    assert!(seq(&again[0]) > seq(&first[0]));
}

#[test]
fn too_many_bytes_before_the_handshake_fails() {
    let rt = runtime();
    let hello = client_hello(&rt);
    let identity = identity();
    let remote = ClientSetup::new(&[]).fingerprint(HashFunction::Sha256);
    let t0 = Instant::now();
    let config = DtlsConfig {
        max_handshake_bytes: 3 * hello.len(),
        ..DtlsConfig::default()
    };
    let mut server = DtlsServer::with_config(&identity, remote, config, t0).unwrap();
    for _ in 0..4 {
        server.handle_datagram(t0, &hello);
    }
    let mut buf = [0u8; 1500];
    while server.poll_transmit(&mut buf).is_some() {}
    assert!(matches!(
        server.poll_event(),
        Some(DtlsEvent::Failed(DtlsFailure::TooManyBytes))
    ));
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn garbage_is_dropped_and_counted() {
    use rand::{Rng, SeedableRng};
    let identity = identity();
    let remote = ClientSetup::new(&[]).fingerprint(HashFunction::Sha256);
    let t0 = Instant::now();
    let mut server = DtlsServer::new(&identity, remote, t0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut malformed = 0;
    let mut buf = [0u8; 1500];
    for i in 0..2000 {
        let len = rng.gen_range(0..300);
        let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 2 == 0 && d.len() >= 13 {
            // Plausible headers with random lengths and bodies.
            d[0] = rng.gen_range(20..=25);
            d[1] = 0xFE;
            d[2] = 0xFD;
        }
        if record::check_datagram(&d).is_err() {
            malformed += 1;
        }
        server.handle_datagram(t0, &d);
        while server.poll_transmit(&mut buf).is_some() {}
        if server.is_done() {
            break;
        }
    }
    let stats = server.stats();
    assert!(stats.malformed_dropped > 0);
    assert!(stats.malformed_dropped <= malformed);
    // An overrunning record is dropped before OpenSSL sees it.
    let mut server = DtlsServer::new(
        &identity,
        ClientSetup::new(&[]).fingerprint(HashFunction::Sha256),
        t0,
    )
    .unwrap();
    let rt = runtime();
    let mut hello = client_hello(&rt);
    hello.truncate(hello.len() - 1);
    server.handle_datagram(t0, &hello);
    assert_eq!(server.stats().malformed_dropped, 1);
    assert!(server.poll_transmit(&mut buf).is_none());
    assert_eq!(server.poll_timeout(), None);
    assert!(server.poll_event().is_none());
    assert!(!server.is_done());
}

#[test]
fn garbage_then_a_real_handshake() {
    let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    let identity = identity();
    let mut server = DtlsServer::new(
        &identity,
        setup.fingerprint(HashFunction::Sha256),
        Instant::now(),
    )
    .unwrap();
    for d in [
        &[22u8, 0xFE, 0xFD][..],
        &[0x17; 40],
        &[20, 0xFE, 0xFF, 0, 0],
    ] {
        server.handle_datagram(Instant::now(), d);
    }
    assert_eq!(server.stats().malformed_dropped, 3);
    let outcome = runtime().block_on(handshake(
        &setup,
        identity.fingerprint().clone(),
        server,
        keep_all(),
    ));
    assert!(outcome.client.is_ok(), "{:?}", outcome.client.err());
    assert!(outcome.server.is_connected());
}

#[test]
fn shareable_across_shards() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<DtlsIdentity>();
    send_sync::<Fingerprint>();
    send::<DtlsServer>();
    send::<DtlsEvent>();
}

#[test]
fn late_datagram_after_the_deadline_times_out() {
    let rt = runtime();
    let hello = client_hello(&rt);
    let identity = identity();
    let remote = ClientSetup::new(&[]).fingerprint(HashFunction::Sha256);
    let t0 = Instant::now();
    let mut server = DtlsServer::new(&identity, remote, t0).unwrap();
    server.handle_datagram(t0, &hello);
    while server.poll_transmit(&mut [0u8; 1500]).is_some() {}
    server.handle_datagram(t0 + DEFAULT_HANDSHAKE_TIMEOUT, &hello);
    assert!(matches!(
        server.poll_event(),
        Some(DtlsEvent::Failed(DtlsFailure::Timeout))
    ));
    assert!(server.is_done());
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn identity_fingerprint_is_sha256_of_the_certificate() {
    let identity = identity();
    let der = identity.certificate_der().unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    assert_eq!(identity.fingerprint().digest(), digest.as_ref());
    assert_eq!(identity.fingerprint().hash_function(), HashFunction::Sha256);
    let cert = X509::from_der(&der).unwrap();
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .as_slice()
        .to_vec();
    assert_eq!(cn, b"fanout");
    let key = cert.public_key().unwrap();
    assert_eq!(
        key.ec_key().unwrap().group().curve_name(),
        Some(Nid::X9_62_PRIME256V1)
    );
    // Clones share the context; a second identity is a different key.
    assert_eq!(identity.clone().fingerprint(), identity.fingerprint());
    assert_ne!(
        DtlsIdentity::generate().unwrap().fingerprint(),
        identity.fingerprint()
    );
}

#[test]
fn fingerprint_parse_and_display() {
    let s = "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3A:5D:57:1E:F0:41:53:23:BB:8E:65:91";
    let f: Fingerprint = s.parse().unwrap();
    assert_eq!(f.hash_function(), HashFunction::Sha256);
    assert_eq!(f.digest()[..2], [0x4A, 0xAD]);
    assert_eq!(f.to_string(), s);
    let lower = Fingerprint::parse(&s.to_ascii_lowercase().replace("sha-256", "SHA-256")).unwrap();
    assert_eq!(lower, f);
    assert_eq!(format!("{f:?}"), format!("Fingerprint({s})"));
    for (name, len) in [
        ("sha-1", 20),
        ("SHA-224", 28),
        ("Sha-384", 48),
        ("sha-512", 64),
    ] {
        let hex = vec!["0F"; len].join(":");
        let f = Fingerprint::parse(&format!("{name} {hex}")).unwrap();
        assert_eq!(f.digest().len(), len);
        assert_eq!(
            f.to_string(),
            format!("{} {hex}", name.to_ascii_lowercase())
        );
    }
    for bad in [
        "",
        "sha-256",
        "md5 4A:AD",
        "sha-256 4A:AD",                                   // too short
        &format!("sha-256 {}", vec!["00"; 33].join(":")),  // too long
        &format!("sha-1 {}:0", vec!["00"; 19].join(":")),  // one digit
        &format!("sha-1 {}:0G", vec!["00"; 19].join(":")), // not hex
        &format!("sha-1 {}::", vec!["00"; 19].join(":")),
        &format!("sha-1 {}", vec!["000"; 20].join(":")),
    ] {
        assert!(Fingerprint::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn debug_output_has_no_secrets() {
    let setup = ClientSetup::new(&[SrtpProfile::AeadAes128Gcm]);
    let outcome = connect_and_check(setup, keep_all(), SrtpProfile::AeadAes128Gcm);
    let key_hex = |k: &MasterKey| {
        k.key_and_salt()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let DtlsEvent::Connected { receive, send, .. } = &outcome.events[0] else {
        unreachable!()
    };
    let debug = format!("{:?} {:?}", outcome.events, outcome.server);
    assert!(debug.contains("redacted"));
    assert!(!debug.contains(&key_hex(receive)));
    assert!(!debug.contains(&key_hex(send)));
    assert!(!debug.to_ascii_lowercase().contains(&key_hex(send)[..8]));
}
