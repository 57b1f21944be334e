//! WebRTC legs in the core: checks answered and nominations followed, media gated on
//! keys, browser SSRCs bound by MID/RID, payload types rewritten, consent expiry, ICE
//! restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::Codec;
use crate::ice::{Credentials, CONSENT_TIMEOUT};
use crate::ids::{LegId, MeetingId, ParticipantId, Ssrc, TrackId};
use crate::rtp::RtpHeader;
use crate::sfu::{
    DropReason, Event, Forwarder, ForwarderConfig, Layers, LegConfig, LegSecurity, RtxPayloadType,
    StreamExtensions, StreamIds, SubscriptionConfig, TrackConfig, TrackKind, WebrtcTransport,
    MIN_TRANSMIT_BUFFER_LEN,
};
use crate::srtp::{MasterKey, SrtpContext, SrtpProfile};
use crate::stun::{self, BindingRequest, Class, IntegrityKey};

const FINGERPRINT: &str =
    "sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const MID_EXT: u8 = 4;
const RID_EXT: u8 = 10;
const LOCAL: &str = "192.0.2.1:40100";
const BROWSER: &str = "198.51.100.7:50000";
const BROWSER_PT_OPUS: u8 = 109;
const BROWSER_PT_VP8: u8 = 96;
const BROWSER_PT_RTX: u8 = 97;
const REPAIRED_RID_EXT: u8 = 11;
const TRANSPORT_CC_EXT: u8 = 3;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn credentials(ufrag: &str) -> Credentials {
    Credentials {
        local_ufrag: ufrag.into(),
        local_pwd: format!("{ufrag}-password-of-24-chars"),
        remote_ufrag: Some("brws".into()),
    }
}

/// A meeting with a browser (WebRTC leg `web`, ufrag `fnt1`, publishing audio with
/// MID 0, a simulcast camera with MID 1 and RIDs q/h/f, and a screen share with MID 2;
/// both videos with RTX 97 for VP8 96) and a plain SRTP participant `plain` at
/// 198.51.100.20:5000 that publishes audio too; each subscribes to the other's audio,
/// and `plain` to the screen share.
struct Room {
    core: Forwarder,
    now: Instant,
    web: LegId,
    web_audio: TrackId,
    web_camera: TrackId,
    web_screen: TrackId,
    plain_receive: MasterKey,
    plain_send: MasterKey,
    /// Keys a DTLS handshake would have given the browser's leg.
    web_receive: MasterKey,
    web_send: MasterKey,
}

impl Room {
    fn new() -> Room {
        Room::with(ForwarderConfig::default())
    }

    fn with(config: ForwarderConfig) -> Room {
        let now = Instant::now();
        let mut core = Forwarder::new(config, now);
        let m = MeetingId::from("m");
        core.add_meeting(m.clone()).unwrap();
        let (browser, plain) = (ParticipantId::from("browser"), ParticipantId::from("plain"));
        core.add_participant(&m, browser.clone()).unwrap();
        core.add_participant(&m, plain.clone()).unwrap();
        let web = core
            .add_leg(
                &m,
                &browser,
                LegConfig {
                    name: "webrtc".into(),
                    security: LegSecurity::Webrtc(Box::new(WebrtcTransport {
                        ice: credentials("fnt1"),
                        remote_fingerprint: FINGERPRINT.into(),
                        extensions: StreamExtensions {
                            mid: Some(MID_EXT),
                            rid: Some(RID_EXT),
                            repaired_rid: Some(REPAIRED_RID_EXT),
                            transport_cc: Some(TRANSPORT_CC_EXT),
                            audio_level: None,
                        },
                        payload_types: vec![(Codec::Opaque, BROWSER_PT_OPUS)],
                    })),
                    remote: None,
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: None,
                    local_rtcp: None,
                },
            )
            .unwrap();
        let (plain_receive, plain_send) =
            (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
        let plain_leg = core
            .add_leg(
                &m,
                &plain,
                LegConfig {
                    name: "srtp".into(),
                    security: LegSecurity::Sdes {
                        receive_key: plain_receive.clone(),
                        send_key: plain_send.clone(),
                    },
                    remote: Some(addr("198.51.100.20:5000")),
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: Some(addr(LOCAL)),
                    local_rtcp: None,
                },
            )
            .unwrap();
        let track = |core: &mut Forwarder,
                     who: &ParticipantId,
                     leg,
                     name: &str,
                     kind,
                     ssrcs: &[u32],
                     ids| {
            core.add_track(
                &m,
                who,
                TrackConfig {
                    name: name.into(),
                    kind,
                    encodings: ssrcs.iter().map(|&s| Ssrc(s)).collect(),
                    leg,
                    clock_rate: None,
                    codec: Codec::Opaque,
                    audio_level_extension: None,
                    stream_ids: ids,
                },
            )
            .unwrap()
        };
        let ids = |mid: &str, rids: &[&str]| {
            Some(StreamIds {
                mid: mid.into(),
                rids: rids.iter().map(|r| r.to_string()).collect(),
                rtx: (mid != "0").then_some(RtxPayloadType {
                    payload_type: BROWSER_PT_RTX,
                    repairs: BROWSER_PT_VP8,
                }),
            })
        };
        let web_audio = track(
            &mut core,
            &browser,
            web,
            "audio",
            TrackKind::Audio,
            &[0xA1],
            ids("0", &[]),
        );
        let web_camera = track(
            &mut core,
            &browser,
            web,
            "camera",
            TrackKind::Video,
            &[0xC1, 0xC2, 0xC3],
            ids("1", &["q", "h", "f"]),
        );
        let web_screen = track(
            &mut core,
            &browser,
            web,
            "screen",
            TrackKind::Video,
            &[0xE1],
            ids("2", &[]),
        );
        let plain_audio = track(
            &mut core,
            &plain,
            plain_leg,
            "audio",
            TrackKind::Audio,
            &[0xB1],
            None,
        );
        for (track, leg) in [
            (web_audio, plain_leg),
            (web_screen, plain_leg),
            (plain_audio, web),
        ] {
            core.add_subscription(SubscriptionConfig {
                track,
                leg,
                ssrc: None,
                max_layers: Layers::ALL,
                payload_type: None,
            })
            .unwrap();
        }
        Room {
            core,
            now,
            web,
            web_audio,
            web_camera,
            web_screen,
            plain_receive,
            plain_send,
            web_receive: MasterKey::generate(PROFILE),
            web_send: MasterKey::generate(PROFILE),
        }
    }

    fn datagram(&mut self, source: &str, mut bytes: Vec<u8>) {
        self.core
            .handle_datagram(self.now, addr(LOCAL), addr(source), &mut bytes);
    }

    fn transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
        while let Some(t) = self.core.poll_transmit(&mut buf) {
            out.push((t.destination, buf[..t.len].to_vec()));
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.core.leg_stats(self.web).unwrap().drops.get(reason)
    }

    /// The browser's check from `source`, as Chrome sends it.
    fn check(&mut self, source: &str, use_candidate: bool, pwd: &str, transaction: u8) {
        self.check_as("fnt1:brws", source, use_candidate, pwd, transaction);
    }

    fn check_as(&mut self, user: &str, source: &str, use_candidate: bool, pwd: &str, tx: u8) {
        let mut buf = [0u8; 256];
        let len = stun::write_binding_request(
            &mut buf,
            &BindingRequest {
                transaction_id: [tx; 12],
                username: user,
                priority: 0x6e00_01ff,
                tie_breaker: 7,
                use_candidate,
            },
            &IntegrityKey::new(pwd.as_bytes()),
        )
        .unwrap();
        self.datagram(source, buf[..len].to_vec());
    }

    fn connect(&mut self) {
        let pwd = credentials("fnt1").local_pwd;
        self.check(BROWSER, true, &pwd, 1);
        self.transmits();
        self.core
            .install_keys(self.web, &self.web_receive, &self.web_send);
    }
}

/// An RTP packet with RFC 8285 one-byte header extensions `elements`, SRTP-protected
/// with `key`.
fn srtp(key: &MasterKey, ssrc: u32, seq: u16, pt: u8, elements: &[(u8, &[u8])]) -> Vec<u8> {
    srtp_with(key, ssrc, seq, pt, elements, &[0xAB; 40])
}

/// [`srtp`] with the payload given, padding included.
fn srtp_with(
    key: &MasterKey,
    ssrc: u32,
    seq: u16,
    pt: u8,
    elements: &[(u8, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    if !elements.is_empty() {
        p[0] |= 0x10;
        let mut ext = Vec::new();
        for (id, data) in elements {
            ext.push((id << 4) | (data.len() as u8 - 1));
            ext.extend_from_slice(data);
        }
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&ext);
    }
    p.extend_from_slice(payload);
    let len = p.len();
    p.resize(len + 64, 0);
    let wire = SrtpContext::new(key).protect_rtp(&mut p, len).unwrap();
    p.truncate(wire);
    p
}

fn unprotect(key: &MasterKey, mut wire: Vec<u8>) -> Vec<u8> {
    let len = SrtpContext::new(key).unprotect_rtp(&mut wire).unwrap();
    wire.truncate(len);
    wire
}

#[test]
fn a_check_is_answered_from_the_media_port_and_a_nomination_points_the_leg() {
    let mut room = Room::new();
    let pwd = credentials("fnt1").local_pwd;
    room.check(BROWSER, false, &pwd, 1);
    let out = room.transmits();
    assert_eq!(out.len(), 1, "one answer");
    let (to, answer) = &out[0];
    assert_eq!(*to, addr(BROWSER));
    let answer = stun::parse(answer).unwrap();
    assert_eq!(answer.class, Class::SuccessResponse);
    assert_eq!(answer.transaction_id, [1; 12]);
    assert_eq!(answer.xor_mapped_address, Some(addr(BROWSER)));
    assert!(answer.check_integrity(&IntegrityKey::new(pwd.as_bytes())));
    assert!(answer.check_fingerprint());
    assert_eq!(
        room.core.leg_remote(room.web),
        None,
        "checked, not nominated"
    );

    room.check(BROWSER, true, &pwd, 2);
    assert_eq!(room.transmits().len(), 1);
    assert_eq!(room.core.leg_remote(room.web), Some(addr(BROWSER)));
    assert!(room.events().iter().any(|e| matches!(e,
        Event::RemoteAddressLearned { address, .. } if *address == addr(BROWSER))));
    assert!(room.core.peer_addresses().any(|a| a == addr(BROWSER)));
    assert_eq!(room.core.leg_stats(room.web).unwrap().stun_answered, 2);
}

#[test]
fn checks_with_a_wrong_password_or_for_nobody_are_dropped_and_counted() {
    let mut room = Room::new();
    room.check(BROWSER, true, "not-the-password-at-all!", 1);
    assert!(room.transmits().is_empty(), "no answer to a forged check");
    assert_eq!(room.drops(DropReason::StunRejected), 1);
    assert_eq!(
        room.core.leg_remote(room.web),
        None,
        "a forged check moves nothing"
    );

    let pwd = credentials("fnt1").local_pwd;
    room.check_as("nobody:brws", BROWSER, true, &pwd, 2);
    assert!(room.transmits().is_empty());
    assert_eq!(
        room.core.unattributed_drops().get(DropReason::StunRejected),
        1
    );

    room.datagram(BROWSER, vec![0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 1, 2]);
    assert_eq!(room.core.unattributed_drops().get(DropReason::Malformed), 1);
}

#[test]
fn media_waits_for_keys_in_both_directions() {
    let mut room = Room::new();
    let pwd = credentials("fnt1").local_pwd;
    room.check(BROWSER, true, &pwd, 1);
    room.transmits();
    let audio = srtp(&room.web_receive, 0x1234, 1, 111, &[(MID_EXT, b"0")]);
    room.datagram(BROWSER, audio);
    assert_eq!(
        room.drops(DropReason::NotConnected),
        1,
        "no keys to authenticate with"
    );

    let plain = srtp(&room.plain_receive, 0xB1, 1, 111, &[]);
    room.datagram("198.51.100.20:5000", plain);
    assert!(
        room.transmits().is_empty(),
        "nothing is sent to the browser before keys"
    );
    assert_eq!(room.drops(DropReason::NotConnected), 2);
}

#[test]
fn browser_ssrcs_are_bound_by_mid_and_rid_and_subscribers_see_the_configured_ones() {
    let mut room = Room::new();
    room.connect();
    // Audio: MID only. Forwarded to the plain participant with the configured SSRC.
    let audio = srtp(
        &room.web_receive,
        0x1234_5678,
        1,
        BROWSER_PT_OPUS,
        &[(MID_EXT, b"0")],
    );
    room.datagram(BROWSER, audio);
    let out = room.transmits();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, addr("198.51.100.20:5000"));
    let plain = unprotect(&room.plain_send, out[0].1.clone());
    assert_eq!(
        plain[8..12],
        0xA1u32.to_be_bytes(),
        "the SSRC configured for the track"
    );
    // Later packets of that SSRC carry no MID (browsers stop sending it): still bound.
    let audio = srtp(&room.web_receive, 0x1234_5678, 2, BROWSER_PT_OPUS, &[]);
    room.datagram(BROWSER, audio);
    assert_eq!(room.transmits().len(), 1);
    let audio_stats = room.core.track_receive_stats(room.web_audio, 0).unwrap();
    assert!(
        audio_stats.received() > 0,
        "counted on the configured track"
    );

    // Camera: each RID binds its encoding; the first packets carry MID and RID, later
    // ones only the SSRC.
    for seq in 1..=4u16 {
        for (i, rid) in [b"q", b"h", b"f"].iter().enumerate() {
            let ssrc = 0x5000 + i as u32;
            let ids: &[(u8, &[u8])] = if seq == 1 {
                &[(MID_EXT, b"1"), (RID_EXT, *rid)]
            } else {
                &[]
            };
            room.datagram(BROWSER, srtp(&room.web_receive, ssrc, seq, 96, ids));
        }
    }
    for encoding in 0..3 {
        let stats = room
            .core
            .track_receive_stats(room.web_camera, encoding)
            .unwrap();
        // RFC 3550 A.1 probation holds back the first packet of each.
        assert_eq!(stats.received(), 3, "encoding {encoding}");
    }
    // A MID nobody publishes, or a simulcast MID without RID, binds nothing.
    let stray = srtp(&room.web_receive, 0x6000, 1, 96, &[(MID_EXT, b"7")]);
    room.datagram(BROWSER, stray);
    let no_rid = srtp(&room.web_receive, 0x6001, 1, 96, &[(MID_EXT, b"1")]);
    room.datagram(BROWSER, no_rid);
    assert_eq!(room.drops(DropReason::UnknownSsrc), 2);
}

#[test]
fn media_to_a_browser_goes_to_the_nominated_address_with_its_payload_type() {
    let mut room = Room::new();
    room.connect();
    let plain = srtp(&room.plain_receive, 0xB1, 1, 111, &[]);
    room.datagram("198.51.100.20:5000", plain);
    let out = room.transmits();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(BROWSER));
    let packet = unprotect(&room.web_send, out[0].1.clone());
    assert_eq!(
        packet[1] & 0x7f,
        BROWSER_PT_OPUS,
        "the browser's payload type"
    );
    assert_eq!(packet[8..12], 0xB1u32.to_be_bytes());

    // Media from another address of the browser does not move the leg (only ICE does).
    let audio = srtp(
        &room.web_receive,
        0x99,
        1,
        BROWSER_PT_OPUS,
        &[(MID_EXT, b"0")],
    );
    room.datagram("198.51.100.7:50002", audio);
    assert_eq!(room.core.leg_remote(room.web), Some(addr(BROWSER)));
}

#[test]
fn consent_lapses_after_30_seconds_of_silence_and_media_stops() {
    let mut room = Room::new();
    room.connect();
    room.events();
    let pwd = credentials("fnt1").local_pwd;
    // Consent checks every few seconds keep it.
    for i in 0..8u8 {
        room.now += Duration::from_secs(5);
        room.core.handle_timeout(room.now);
        room.check(BROWSER, false, &pwd, 10 + i);
    }
    room.transmits();
    assert_eq!(room.core.leg_remote(room.web), Some(addr(BROWSER)));
    // Then silence.
    let silent_since = room.now;
    while room.now < silent_since + CONSENT_TIMEOUT + Duration::from_secs(2) {
        room.now += Duration::from_secs(1);
        room.core.handle_timeout(room.now);
    }
    assert_eq!(room.core.leg_remote(room.web), None);
    assert!(room
        .events()
        .iter()
        .any(|e| matches!(e, Event::ConsentLost { .. })));
    assert_eq!(room.core.leg_stats(room.web).unwrap().consent_lost, 1);
    assert!(!room.core.peer_addresses().any(|a| a == addr(BROWSER)));
    let plain = srtp(&room.plain_receive, 0xB1, 1, 111, &[]);
    room.datagram("198.51.100.20:5000", plain);
    assert!(room.transmits().is_empty(), "no media without consent");

    // A new nomination (after an ICE restart, say) resumes with the same keys.
    room.check(BROWSER, true, &pwd, 40);
    room.transmits();
    let plain = srtp(&room.plain_receive, 0xB1, 2, 111, &[]);
    room.datagram("198.51.100.20:5000", plain);
    assert_eq!(room.transmits().len(), 1);
}

#[test]
fn an_ice_restart_switches_credentials_and_keeps_subscriptions() {
    let mut room = Room::new();
    room.connect();
    let subscriptions = room.core.subscription_count();
    let new = Credentials {
        local_ufrag: "fnt2".into(),
        local_pwd: "fnt2-new-password-24-chars".into(),
        remote_ufrag: Some("brw2".into()),
    };
    room.core.restart_ice(room.web, new.clone()).unwrap();
    // The old credentials are dead.
    let old_pwd = credentials("fnt1").local_pwd;
    room.check(BROWSER, true, &old_pwd, 1);
    assert!(room.transmits().is_empty());
    // The browser moved to a new network and nominates from there.
    room.check_as("fnt2:brw2", "203.0.113.9:6000", true, &new.local_pwd, 2);
    assert_eq!(room.transmits().len(), 1);
    assert_eq!(
        room.core.leg_remote(room.web),
        Some(addr("203.0.113.9:6000"))
    );
    assert_eq!(room.core.subscription_count(), subscriptions);
    let plain = srtp(&room.plain_receive, 0xB1, 1, 111, &[]);
    room.datagram("198.51.100.20:5000", plain);
    let out = room.transmits();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr("203.0.113.9:6000"));
    assert!(
        !room.core.peer_addresses().any(|a| a == addr(BROWSER)),
        "old address released"
    );
}

#[test]
fn ufrags_are_unique_and_stream_ids_belong_to_webrtc_legs() {
    let mut room = Room::new();
    let m = MeetingId::from("m");
    let p = ParticipantId::from("browser");
    let again = LegConfig {
        name: "webrtc-2".into(),
        security: LegSecurity::Webrtc(Box::new(WebrtcTransport {
            ice: credentials("fnt1"),
            remote_fingerprint: FINGERPRINT.into(),
            extensions: StreamExtensions::default(),
            payload_types: Vec::new(),
        })),
        remote: None,
        remote_rtcp: None,
        rtcp_mux: true,
        local: None,
        local_rtcp: None,
    };
    assert_eq!(
        room.core.add_leg(&m, &p, again).unwrap_err(),
        super::super::ConfigureError::UfragInUse("fnt1".into())
    );
    let plain_leg = room
        .core
        .leg_id(&m, &ParticipantId::from("plain"), "srtp")
        .unwrap();
    let err = room.core.add_track(
        &m,
        &ParticipantId::from("plain"),
        TrackConfig {
            name: "cam".into(),
            kind: TrackKind::Video,
            encodings: vec![Ssrc(0xD1)],
            leg: plain_leg,
            clock_rate: None,
            codec: Codec::Opaque,
            audio_level_extension: None,
            stream_ids: Some(StreamIds {
                mid: "9".into(),
                rids: Vec::new(),
                rtx: None,
            }),
        },
    );
    assert_eq!(err.unwrap_err(), super::super::ConfigureError::StreamIds);
    // Removing the participant frees its ufrag.
    room.core.remove_participant(&m, &p).unwrap();
    room.check(BROWSER, true, &credentials("fnt1").local_pwd, 1);
    assert!(room.transmits().is_empty());
    assert_eq!(
        room.core.unattributed_drops().get(DropReason::StunRejected),
        1
    );
}

/// A DTLS record header with a ClientHello fragment that is cut short: enough to start a
/// handshake, never enough to finish one.
fn truncated_client_hello() -> Vec<u8> {
    let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12];
    d.extend_from_slice(&[1, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0]);
    d
}

#[test]
fn dtls_comes_only_from_checked_addresses_and_a_stalled_handshake_is_freed() {
    let identity = crate::dtls::DtlsIdentity::generate().unwrap();
    let mut room = Room::with(ForwarderConfig {
        dtls_identity: Some(identity),
        ..ForwarderConfig::default()
    });
    // Before any check: nobody's handshake.
    room.datagram(BROWSER, truncated_client_hello());
    assert_eq!(
        room.core
            .unattributed_drops()
            .get(DropReason::UnknownSource),
        1
    );
    assert!(room.transmits().is_empty());

    // After a check (not yet a nomination), the handshake may start from that address.
    let pwd = credentials("fnt1").local_pwd;
    room.check(BROWSER, false, &pwd, 1);
    room.transmits();
    room.datagram(BROWSER, truncated_client_hello());
    assert_eq!(room.core.is_keyed(room.web), Some(false));
    // It never completes: the deadline fails it, frees it, and counts it; no keys.
    let start = room.now;
    while room.now < start + Duration::from_secs(12) {
        room.now += Duration::from_millis(100);
        room.core.handle_timeout(room.now);
        room.transmits();
    }
    let stats = room.core.leg_stats(room.web).unwrap();
    assert_eq!((stats.dtls_failed, stats.dtls_connected), (1, 0));
    assert_eq!(room.core.is_keyed(room.web), Some(false));
}

#[test]
fn retransmissions_on_rtx_streams_become_the_packets_they_repair() {
    let mut room = Room::new();
    room.connect();
    let key = room.web_receive.clone();
    let original = |seq: u16| vec![seq as u8; 30];
    // The screen share (one encoding, RTX negotiated): media on its own SSRC, named by
    // MID; packet 3 is lost on the way.
    for seq in [1u16, 2, 4, 5] {
        let ids: &[(u8, &[u8])] = if seq == 1 { &[(MID_EXT, b"2")] } else { &[] };
        let p = srtp_with(&key, 0x8000, seq, BROWSER_PT_VP8, ids, &original(seq));
        room.datagram(BROWSER, p);
    }
    room.transmits();
    let lost_before = room
        .core
        .track_receive_stats(room.web_screen, 0)
        .unwrap()
        .cumulative_lost();
    assert_eq!(lost_before, 1);

    // The browser resends 3 on its RTX SSRC: same MID, the RTX payload type, the OSN
    // first in the payload (RFC 4588 §4). It binds as the screen's repair stream, not
    // as its media, and enters as packet 3.
    let mut rtx_payload = 3u16.to_be_bytes().to_vec();
    rtx_payload.extend(original(3));
    let rtx = srtp_with(
        &key,
        0x8001,
        900,
        BROWSER_PT_RTX,
        &[(MID_EXT, b"2")],
        &rtx_payload,
    );
    room.datagram(BROWSER, rtx);
    let out = room.transmits();
    assert_eq!(out.len(), 1, "the repaired packet is forwarded: {out:?}");
    let forwarded = unprotect(&room.plain_send, out[0].1.clone());
    let header = RtpHeader::parse(&forwarded).unwrap();
    assert_eq!(header.ssrc, Ssrc(0xE1), "the track's configured SSRC");
    assert_eq!(
        header.payload_type, BROWSER_PT_VP8,
        "the repaired payload type"
    );
    assert_eq!(
        &forwarded[header.header_len..],
        &original(3)[..],
        "without the OSN"
    );
    let stats = room.core.track_receive_stats(room.web_screen, 0).unwrap();
    assert_eq!(stats.cumulative_lost(), 0, "the hole is filled");
    let leg = room.core.leg_stats(room.web).unwrap();
    assert_eq!(leg.rtx_received, 1);
    assert_eq!(leg.drops.get(DropReason::UnknownSsrc), 0);

    // The media SSRC still carries the screen: the RTX stream did not take its place.
    let p = srtp_with(&key, 0x8000, 6, BROWSER_PT_VP8, &[], &original(6));
    room.datagram(BROWSER, p);
    assert_eq!(room.transmits().len(), 1);

    // Bandwidth probes on the RTX stream (padding only) are counted, never forwarded;
    // an RTX packet too short for its OSN is malformed.
    let mut probe = vec![
        0xa0,
        BROWSER_PT_RTX,
        0x03,
        0x85,
        0,
        0,
        0x10,
        0,
        0,
        0,
        0x80,
        0x01,
    ];
    probe.extend([0; 255]);
    *probe.last_mut().unwrap() = 255; // RFC 3550 §5.1: the last octet counts the padding
    let len = probe.len();
    probe.resize(len + 64, 0);
    let wire = SrtpContext::new(&key).protect_rtp(&mut probe, len).unwrap();
    probe.truncate(wire);
    room.datagram(BROWSER, probe);
    let short = srtp_with(&key, 0x8001, 902, BROWSER_PT_RTX, &[], &[0x00]);
    room.datagram(BROWSER, short);
    assert!(room.transmits().is_empty());
    let leg = room.core.leg_stats(room.web).unwrap();
    assert_eq!(leg.padding_received, 1);
    assert_eq!(leg.drops.get(DropReason::Malformed), 1);
    assert_eq!(leg.rtx_received, 1);
}

#[test]
fn simulcast_rtx_streams_are_bound_by_repaired_rid() {
    let mut room = Room::new();
    room.connect();
    let key = room.web_receive.clone();
    for (i, rid) in [b"q", b"h", b"f"].iter().enumerate() {
        for seq in [1u16, 2, 4] {
            let ids: &[(u8, &[u8])] = if seq == 1 {
                &[(MID_EXT, b"1"), (RID_EXT, *rid)]
            } else {
                &[]
            };
            room.datagram(
                BROWSER,
                srtp(&key, 0x5000 + i as u32, seq, BROWSER_PT_VP8, ids),
            );
        }
    }
    // The "h" encoding's packet 3 comes back on its RTX stream, named by MID and
    // repaired RID (no RID: RFC 8852 §3.2). Only that encoding's hole is filled.
    let mut payload = 3u16.to_be_bytes().to_vec();
    payload.extend([0xAB; 40]);
    let rtx = srtp_with(
        &key,
        0x7001,
        50,
        BROWSER_PT_RTX,
        &[(MID_EXT, b"1"), (REPAIRED_RID_EXT, b"h")],
        &payload,
    );
    room.datagram(BROWSER, rtx);
    let lost: Vec<i64> = (0..3)
        .map(|e| {
            let stats = room.core.track_receive_stats(room.web_camera, e).unwrap();
            stats.cumulative_lost()
        })
        .collect();
    assert_eq!(lost, [1, 0, 1]);
    // An RTX packet naming no encoding (repaired RID missing) binds nothing.
    let anonymous = srtp_with(
        &key,
        0x7002,
        51,
        BROWSER_PT_RTX,
        &[(MID_EXT, b"1")],
        &payload,
    );
    room.datagram(BROWSER, anonymous);
    let leg = room.core.leg_stats(room.web).unwrap();
    assert_eq!(leg.rtx_received, 1);
    assert_eq!(leg.drops.get(DropReason::UnknownSsrc), 1);
}

/// The transport-cc feedback among `out` sent to `to`, unprotected with `key` and decoded
/// by the webrtc-rs parser.
fn transport_cc_feedback(
    out: &[(SocketAddr, Vec<u8>)],
    to: &str,
    key: &MasterKey,
) -> Vec<crate::rtcp::oracle::Decoded> {
    out.iter()
        .filter(|(destination, wire)| *destination == addr(to) && (192..=223).contains(&wire[1]))
        .filter_map(|(_, wire)| {
            let mut plain = wire.clone();
            let len = SrtpContext::new(key).unprotect_rtcp(&mut plain).ok()?;
            let packet = &plain[..len];
            (packet[1] == 205 && packet[0] & 0x1f == 15)
                .then(|| crate::rtcp::oracle::decode(packet).expect("the oracle reads it"))
        })
        .collect()
}

/// A packet of the browser's with a transport-wide sequence number.
fn with_transport_sequence(
    key: &MasterKey,
    ssrc: u32,
    seq: u16,
    transport: u16,
    ids: &[(u8, &[u8])],
) -> Vec<u8> {
    let transport = transport.to_be_bytes();
    let mut elements = ids.to_vec();
    elements.push((TRANSPORT_CC_EXT, &transport));
    srtp(key, ssrc, seq, BROWSER_PT_OPUS, &elements)
}

#[test]
fn a_browsers_packets_get_transport_cc_feedback_at_the_tick() {
    let mut room = Room::new();
    room.connect();
    room.transmits();
    let key = room.web_receive.clone();
    // Audio 1 ms apart; transport-wide 102 is lost on the way. 105 is an RTX probe and
    // 106 a stream nobody publishes: they arrived, so they count too.
    for (seq, transport) in [(1u16, 100u16), (2, 101), (3, 103), (4, 104)] {
        let ids: &[(u8, &[u8])] = if seq == 1 { &[(MID_EXT, b"0")] } else { &[] };
        room.datagram(
            BROWSER,
            with_transport_sequence(&key, 0xAAAA, seq, transport, ids),
        );
        room.now += Duration::from_millis(1);
    }
    room.datagram(
        BROWSER,
        with_transport_sequence(
            &key,
            0x7777,
            9,
            105,
            &[(MID_EXT, b"1"), (REPAIRED_RID_EXT, b"f")],
        ),
    );
    room.datagram(BROWSER, with_transport_sequence(&key, 0x9999, 1, 106, &[]));
    let out = room.transmits();
    assert!(
        transport_cc_feedback(&out, BROWSER, &room.web_send).is_empty(),
        "not due before its delay"
    );

    room.now += Duration::from_millis(60);
    room.core.handle_timeout(room.now);
    let out = room.transmits();
    let feedback = transport_cc_feedback(&out, BROWSER, &room.web_send);
    assert_eq!(
        feedback.len(),
        1,
        "one feedback, to the nominated address: {out:?}"
    );
    let fb = &feedback[0];
    assert_eq!(fb.sender_ssrc, 0xFA40_0000, "the leg's RTCP SSRC");
    assert_eq!(fb.media_ssrc, 0xAAAA, "the browser's media SSRC");
    assert_eq!(fb.base_sequence, 100);
    let received: Vec<bool> = fb.statuses.iter().map(Option::is_some).collect();
    assert_eq!(received, [true, true, false, true, true, true, true]);
    let times: Vec<i64> = fb.arrivals().iter().filter_map(|(_, at)| *at).collect();
    assert_eq!(
        times,
        [0, 1000, 2000, 3000, 4000, 4000],
        "µs since the first arrival"
    );
    let stats = room.core.leg_stats(room.web).unwrap();
    assert_eq!(stats.transport_cc_feedback_sent, 1);
    assert_eq!(stats.transport_cc_packets_reported, 6);
    let mut metrics = String::new();
    room.core.write_metrics(&mut metrics);
    assert!(
        metrics.contains(r#"fanout_leg_transport_cc_feedback_sent_total{meeting="m",participant="browser",leg="webrtc"} 1"#),
        "{metrics}"
    );

    // Reported once: the next tick has nothing to say. The packets still went their way.
    room.now += Duration::from_millis(60);
    room.core.handle_timeout(room.now);
    assert!(transport_cc_feedback(&room.transmits(), BROWSER, &room.web_send).is_empty());
    assert!(
        room.core
            .track_receive_stats(room.web_audio, 0)
            .unwrap()
            .received()
            > 0
    );

    // A packet without the extension is not reported.
    room.datagram(BROWSER, srtp(&key, 0xAAAA, 5, BROWSER_PT_OPUS, &[]));
    room.now += Duration::from_millis(60);
    room.core.handle_timeout(room.now);
    assert!(transport_cc_feedback(&room.transmits(), BROWSER, &room.web_send).is_empty());
}

#[test]
fn many_waiting_packets_get_feedback_at_once() {
    let mut room = Room::new();
    room.connect();
    room.transmits();
    let key = room.web_receive.clone();
    // A burst: no time passes, so no timer runs. Every other one lost.
    let early = crate::sfu::transport_cc::EARLY_FEEDBACK_PENDING as u16;
    let mut first_feedback = None;
    for i in 0..early {
        let ids: &[(u8, &[u8])] = if i == 0 { &[(MID_EXT, b"0")] } else { &[] };
        room.datagram(
            BROWSER,
            with_transport_sequence(&key, 0xAAAA, i + 1, 2 * i, ids),
        );
        let feedback = transport_cc_feedback(&room.transmits(), BROWSER, &room.web_send);
        if first_feedback.is_none() && !feedback.is_empty() {
            first_feedback = Some((i, feedback));
        }
    }
    let (i, feedback) = first_feedback.expect("feedback without a timer");
    // Sent as soon as the span 0..=2i reached the threshold.
    assert_eq!(
        2 * i + 1,
        early + 1,
        "sent with the first span of {early} or more"
    );
    assert_eq!(feedback.len(), 1);
    assert_eq!(feedback[0].base_sequence, 0);
    assert_eq!(usize::from(2 * i + 1), feedback[0].statuses.len());
}

#[test]
fn no_feedback_without_the_negotiated_extension_or_on_plain_legs() {
    let mut room = Room::new();
    room.connect();
    room.transmits();
    // The plain participant's packets carry the same element: a plain leg has no
    // transport-wide feedback.
    for seq in 1..=20u16 {
        let transport = seq.to_be_bytes();
        let p = srtp(
            &room.plain_receive,
            0xB1,
            seq,
            111,
            &[(TRANSPORT_CC_EXT, &transport)],
        );
        room.datagram("198.51.100.20:5000", p);
    }
    // The browser renegotiates without transport-cc: its elements mean nothing now.
    let transport = WebrtcTransport {
        ice: credentials("fnt1"),
        remote_fingerprint: FINGERPRINT.into(),
        extensions: StreamExtensions {
            mid: Some(MID_EXT),
            rid: Some(RID_EXT),
            repaired_rid: Some(REPAIRED_RID_EXT),
            transport_cc: None,
            audio_level: None,
        },
        payload_types: vec![(Codec::Opaque, BROWSER_PT_OPUS)],
    };
    room.core.update_webrtc(room.web, &transport).unwrap();
    let key = room.web_receive.clone();
    for i in 0..20u16 {
        let ids: &[(u8, &[u8])] = if i == 0 { &[(MID_EXT, b"0")] } else { &[] };
        room.datagram(
            BROWSER,
            with_transport_sequence(&key, 0xAAAA, i + 1, i, ids),
        );
    }
    room.now += Duration::from_millis(200);
    room.core.handle_timeout(room.now);
    let out = room.transmits();
    assert!(transport_cc_feedback(&out, BROWSER, &room.web_send).is_empty());
    assert!(transport_cc_feedback(&out, "198.51.100.20:5000", &room.plain_send).is_empty());
    assert!(!out.is_empty(), "media still flows: {out:?}");
    assert_eq!(
        room.core
            .leg_stats(room.web)
            .unwrap()
            .transport_cc_feedback_sent,
        0
    );
}

/// Drain the core's transmits; how many were transport-cc feedback (SRTCP leaves the
/// first 8 bytes in the clear: RTPFB, FMT 15).
fn drain_counting_feedback(core: &mut Forwarder, out: &mut [u8]) -> usize {
    let mut feedback = 0;
    while let Some(t) = core.poll_transmit(out) {
        feedback += usize::from(out[1] == 205 && out[0] & 0x1f == 15 && t.len > 8);
    }
    feedback
}

#[test]
fn transport_cc_feedback_costs_no_allocation_per_packet() {
    assert!(
        crate::counting_alloc::allocations_in(|| drop(std::hint::black_box(
            Vec::<u8>::with_capacity(64)
        ))) > 0,
        "the counter counts"
    );
    let mut room = Room::new();
    room.connect();
    room.transmits();
    let key = room.web_receive.clone();
    let (local, browser) = (addr(LOCAL), addr(BROWSER));
    // Audio with consecutive RTP sequence numbers; the transport-wide numbers skip some
    // (packets of the other streams lost on the way), go back (late ones, duplicates)
    // and once jump far ahead, as a broken sender's would, which the window follows.
    let packets: Vec<Vec<u8>> = (0..3000u16)
        .map(|i| {
            let transport = match i {
                1500 => 30_000u16,
                _ if i % 97 == 0 => i.wrapping_sub(3),
                _ => i + i / 10,
            };
            let ids: &[(u8, &[u8])] = if i == 0 { &[(MID_EXT, b"0")] } else { &[] };
            with_transport_sequence(&key, 0xAAAA, i + 1, transport, ids)
        })
        .collect();
    let mut scratch = vec![0u8; crate::sfu::MAX_DATAGRAM_LEN];
    let mut out = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
    // Warm up: the stream is bound, the first feedback goes out.
    let mut now = room.now;
    for packet in &packets[..20] {
        scratch[..packet.len()].copy_from_slice(packet);
        room.core
            .handle_datagram(now, local, browser, &mut scratch[..packet.len()]);
        drain_counting_feedback(&mut room.core, &mut out);
    }
    now += Duration::from_millis(60);
    room.core.handle_timeout(now);
    drain_counting_feedback(&mut room.core, &mut out);

    let mut feedback = 0;
    // 0.2 ms apart, the 10 ms timers running: all within the second before housekeeping.
    let allocations = crate::counting_alloc::allocations_in(|| {
        for (i, packet) in packets[20..].iter().enumerate() {
            now += Duration::from_micros(200);
            scratch[..packet.len()].copy_from_slice(packet);
            room.core
                .handle_datagram(now, local, browser, &mut scratch[..packet.len()]);
            feedback += drain_counting_feedback(&mut room.core, &mut out);
            if i % 50 == 0 {
                room.core.handle_timeout(now);
                feedback += drain_counting_feedback(&mut room.core, &mut out);
            }
        }
    });
    assert_eq!(allocations, 0, "allocations while recording and reporting");
    assert!(feedback >= 10, "{feedback} feedback packets");
    let stats = room.core.leg_stats(room.web).unwrap();
    assert!(
        stats.transport_cc_packets_ignored > 0,
        "duplicates and the stale ones"
    );
    assert!(stats.transport_cc_packets_reported > 2000, "{stats:?}");
}
