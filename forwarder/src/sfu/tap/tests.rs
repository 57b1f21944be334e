//! The recording tap in the core: what is tapped, in which form, and what happens when
//! the driver does not drain it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::Codec;
use crate::ids::{MeetingId, ParticipantId, Ssrc};
use crate::recording::{self, MediaCodec, TapMessage};
use crate::sfu::{
    ConfigureError, Forwarder, ForwarderConfig, Layers, LegConfig, LegSecurity, SubscriptionConfig,
    TrackConfig, TrackKind, MIN_TRANSMIT_BUFFER_LEN,
};
use crate::srtp::{MasterKey, SrtpContext, SrtpProfile};

use super::TAP_QUEUE_LEN;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const LOCAL: ([u8; 4], u16) = ([192, 0, 2, 1], 40100);
const PUBLISHER: ([u8; 4], u16) = ([198, 51, 100, 1], 5000);

/// A meeting `m` where `pub` publishes audio (SSRC 1) and a VP8 camera (SSRCs 2, 3) to
/// `sub`, who subscribes to both.
struct Meeting {
    core: Forwarder,
    now: Instant,
    meeting: MeetingId,
    publisher_key: MasterKey,
}

impl Meeting {
    fn new() -> Meeting {
        let now = Instant::now();
        let mut core = Forwarder::new(ForwarderConfig::default(), now);
        core.set_unix_clock(now, Duration::from_secs(1_700_000_000));
        let meeting = MeetingId::from("m");
        core.add_meeting(meeting.clone()).unwrap();
        let publisher_key = MasterKey::generate(PROFILE);
        let mut leg = |who: &str, receive_key: MasterKey, host: u8| {
            let participant = ParticipantId::from(who);
            core.add_participant(&meeting, participant.clone()).unwrap();
            core.add_leg(
                &meeting,
                &participant,
                LegConfig {
                    name: "srtp".into(),
                    security: LegSecurity::Sdes {
                        receive_key,
                        send_key: MasterKey::generate(PROFILE),
                    },
                    remote: Some(SocketAddr::from(([198, 51, 100, host], 5000))),
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: Some(SocketAddr::from(LOCAL)),
                    local_rtcp: None,
                },
            )
            .unwrap()
        };
        let publisher = leg("pub", publisher_key.clone(), PUBLISHER.0[3]);
        let subscriber = leg("sub", MasterKey::generate(PROFILE), 2);
        // Subscribed to everything: the tap is once per packet, whatever the fan-out.
        for (name, kind, ssrcs, codec) in [
            ("audio", TrackKind::Audio, &[1][..], Codec::Opaque),
            ("camera", TrackKind::Video, &[2, 3][..], Codec::Vp8),
        ] {
            let track = core
                .add_track(
                    &meeting,
                    &ParticipantId::from("pub"),
                    TrackConfig {
                        name: name.into(),
                        kind,
                        encodings: ssrcs.iter().map(|&s| Ssrc(s)).collect(),
                        leg: publisher,
                        clock_rate: None,
                        codec,
                        audio_level_extension: None,
                        stream_ids: None,
                    },
                )
                .unwrap();
            core.add_subscription(SubscriptionConfig {
                track,
                leg: subscriber,
                ssrc: None,
                max_layers: Layers::ALL,
                payload_type: None,
            })
            .unwrap();
        }
        Meeting {
            core,
            now,
            meeting,
            publisher_key,
        }
    }

    /// The publisher sends packet `seq` of `ssrc` (a VP8 keyframe start for video).
    fn send(&mut self, ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        // VP8 payload descriptor: S=1, partition 0; then a keyframe's first bytes.
        p.extend_from_slice(&[0x10, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&[seq as u8; 30]);
        let plain = p.clone();
        let len = p.len();
        p.resize(len + 64, 0);
        let mut context = SrtpContext::new(&self.publisher_key);
        let wire = context.protect_rtp(&mut p, len).unwrap();
        p.truncate(wire);
        self.now += Duration::from_millis(10);
        self.core.handle_datagram(
            self.now,
            SocketAddr::from(LOCAL),
            SocketAddr::from(PUBLISHER),
            &mut p,
        );
        plain
    }

    /// RTP packets sent (RTCP the forwarder originates aside: RFC 5761 §4, PT 200-206).
    fn forwarded(&mut self) -> usize {
        let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
        std::iter::from_fn(|| self.core.poll_transmit(&mut buf).map(|_| buf[1]))
            .filter(|&b1| !(200..=206).contains(&b1))
            .count()
    }

    fn tapped(&mut self) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; recording::MAX_MESSAGE_LEN];
        std::iter::from_fn(|| self.core.poll_tap(&mut buf).map(|len| buf[..len].to_vec())).collect()
    }
}

#[test]
fn a_recorded_meeting_taps_each_packet_once_decrypted_with_its_track() {
    let mut m = Meeting::new();
    m.send(1, 1);
    assert!(m.tapped().is_empty(), "not recorded yet");
    m.core.set_recording(&m.meeting, Some("rec-1")).unwrap();
    assert_eq!(m.core.recording(&m.meeting), Some("rec-1"));
    m.forwarded();

    let audio = m.send(1, 2);
    let camera_high = m.send(3, 7);
    assert_eq!(m.forwarded(), 2, "forwarding goes on as before");
    let tapped = m.tapped();
    assert_eq!(tapped.len(), 2, "once per packet, not per subscriber");
    let decoded: Vec<_> = tapped
        .iter()
        .map(|t| match recording::decode(t).unwrap() {
            TapMessage::Packet(p) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(decoded[0].recording_id, "rec-1");
    assert_eq!(decoded[0].meeting_id, "m");
    assert_eq!(decoded[0].participant_id, "pub");
    assert_eq!(decoded[0].track, TrackKind::Audio);
    assert_eq!(decoded[0].codec, MediaCodec::Opus);
    assert_eq!(decoded[0].rtp, &audio[..], "the plaintext as it arrived");
    assert_eq!(decoded[1].track, TrackKind::Video);
    assert_eq!(decoded[1].codec, MediaCodec::Vp8);
    assert_eq!(decoded[1].encoding, 1);
    assert_eq!(decoded[1].clock_rate, 90_000);
    assert_eq!(decoded[1].rtp, &camera_high[..]);
    // Arrival on the Unix clock the driver gave, 10 ms per packet in this test.
    let start = 1_700_000_000_000_000;
    assert_eq!(decoded[0].arrival_us, start + 20_000);
    assert_eq!(decoded[1].arrival_us, start + 30_000);
    assert_eq!(m.core.tap_stats().packets, 2);
}

#[test]
fn a_full_tap_drops_recording_never_forwarding() {
    let mut m = Meeting::new();
    m.core.set_recording(&m.meeting, Some("rec-1")).unwrap();
    let extra = 10;
    let mut forwarded = 0;
    for seq in 0..(TAP_QUEUE_LEN + extra) as u16 {
        m.send(1, seq);
        forwarded += m.forwarded();
    }
    let stats = m.core.tap_stats();
    assert_eq!(stats.packets, TAP_QUEUE_LEN as u64);
    assert_eq!(stats.dropped, extra as u64);
    assert_eq!(
        forwarded,
        TAP_QUEUE_LEN + extra,
        "every packet was forwarded"
    );
    // Drained, the tap records again.
    assert_eq!(m.tapped().len(), TAP_QUEUE_LEN);
    m.send(1, 5000);
    assert_eq!(m.tapped().len(), 1);
}

#[test]
fn stopping_announces_the_end_after_the_last_packets() {
    let mut m = Meeting::new();
    m.core.set_recording(&m.meeting, Some("rec-1")).unwrap();
    m.send(1, 1);
    m.core.set_recording(&m.meeting, Some("rec-2")).unwrap();
    m.send(1, 2);
    m.core.set_recording(&m.meeting, None).unwrap();
    m.send(1, 3);
    let messages: Vec<String> = m
        .tapped()
        .iter()
        .map(|t| match recording::decode(t).unwrap() {
            TapMessage::Packet(p) => format!("{} packet", p.recording_id),
            TapMessage::End { recording_id } => format!("{recording_id} end"),
        })
        .collect();
    assert_eq!(
        messages,
        ["rec-1 packet", "rec-2 packet", "rec-1 end", "rec-2 end"]
    );

    // Removing a recorded meeting ends its recording too.
    m.core.set_recording(&m.meeting, Some("rec-3")).unwrap();
    m.core.remove_meeting(&m.meeting.clone()).unwrap();
    let tapped = m.tapped();
    assert_eq!(tapped.len(), 1);
    assert!(matches!(
        recording::decode(&tapped[0]).unwrap(),
        TapMessage::End {
            recording_id: "rec-3"
        }
    ));
}

#[test]
fn recording_ids_are_checked_and_meetings_must_exist() {
    let mut m = Meeting::new();
    for bad in ["", "../etc", ".hidden", "a/b", &"x".repeat(65)] {
        assert!(
            matches!(
                m.core.set_recording(&m.meeting, Some(bad)),
                Err(ConfigureError::InvalidRecordingId(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        m.core.set_recording(&MeetingId::from("nope"), Some("rec")),
        Err(ConfigureError::NoSuchMeeting(_))
    ));
    assert_eq!(m.core.recording(&m.meeting), None);
    m.send(1, 1);
    assert!(m.tapped().is_empty());
}
