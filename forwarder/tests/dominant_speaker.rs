//! Dominant speaker: RFC 6464 audio levels (an RFC 8285 one-byte header extension) from
//! each participant's audio feed a detector whose events change once per real change of
//! speaker — not for a short interjection, nor for a noisy microphone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_forwarder::ids::{MeetingId, ParticipantId, Ssrc};
use fanout_forwarder::sfu::{
    Event, Forwarder, ForwarderConfig, LegConfig, LegSecurity, TrackConfig, TrackKind,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

const AUDIO_LEVEL_ID: u8 = 1;

struct Talker {
    address: SocketAddr,
    ssrc: Ssrc,
    sender: SrtpContext,
    seq: u16,
}

impl Talker {
    /// One 20 ms Opus packet carrying its audio level (-dBov, 0 = loudest, 127 = silence).
    fn packet(&mut self, level: u8) -> Vec<u8> {
        let mut p = vec![0u8; 200];
        p[0] = 0x90; // V=2, X=1
        p[1] = 111;
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(self.seq) * 960).to_be_bytes());
        p[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        // RFC 8285 one-byte header: 0xBEDE, length 1 word, element id 1 / length 1.
        p[12..16].copy_from_slice(&[0xbe, 0xde, 0x00, 0x01]);
        p[16] = AUDIO_LEVEL_ID << 4;
        p[17] = if level < 127 { 0x80 } else { 0 } | level;
        let len = 20 + 60;
        self.seq = self.seq.wrapping_add(1);
        let len = self.sender.protect_rtp(&mut p, len).unwrap();
        p.truncate(len);
        p
    }
}

#[test]
fn the_dominant_speaker_changes_once_per_change_of_speaker() {
    let start = Instant::now();
    let mut f = Forwarder::new(ForwarderConfig::default(), start);
    let meeting = MeetingId::from("m");
    f.add_meeting(meeting.clone()).unwrap();
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut talkers = Vec::new();
    for (i, name) in ["alice", "bob", "carol"].iter().enumerate() {
        let id = ParticipantId::from(*name);
        f.add_participant(&meeting, id.clone()).unwrap();
        let key = MasterKey::generate(profile);
        let leg = f
            .add_leg(
                &meeting,
                &id,
                LegConfig {
                    name: "audio".into(),
                    security: LegSecurity::Sdes {
                        receive_key: key.clone(),
                        send_key: MasterKey::generate(profile),
                    },
                    remote: None,
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: None,
                    local_rtcp: None,
                },
            )
            .unwrap();
        let ssrc = Ssrc(0x100 + i as u32);
        f.add_track(
            &meeting,
            &id,
            TrackConfig {
                name: "mic".into(),
                kind: TrackKind::Audio,
                encodings: vec![ssrc],
                leg,
                clock_rate: None,
                codec: Default::default(),
                audio_level_extension: Some(AUDIO_LEVEL_ID),
                stream_ids: None,
            },
        )
        .unwrap();
        talkers.push(Talker {
            address: SocketAddr::from(([198, 51, 100, 10 + i as u8], 7000)),
            ssrc,
            sender: SrtpContext::new(&key),
            seq: 0,
        });
    }

    // Who talks when (seconds): everyone joins quietly, then alice talks, then bob with a
    // 200 ms interjection of alice's in the middle, then alice again. Carol's microphone picks up a steady hum throughout,
    // and a door slam (one loud burst of 100 ms) at 9 s.
    let level = |who: usize, t: f64| -> u8 {
        let talking = match who {
            0 => (2.0..5.0).contains(&t) || (7.0..7.2).contains(&t) || t >= 12.0,
            1 => (5.0..12.0).contains(&t),
            _ => (9.0..9.1).contains(&t),
        };
        // Speech varies from syllable to syllable; silence is near the floor.
        let syllable = ((t * 7.0) as u32 % 3) as u8;
        match (who, talking) {
            (_, true) => 25 + syllable * 5,
            (2, false) => 75,
            _ => 120,
        }
    };
    let mut events = Vec::new();
    let local: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let mut now = start;
    for tick in 0..(16_000 / 20) {
        let t = f64::from(tick) * 0.02;
        for (who, talker) in talkers.iter_mut().enumerate() {
            let mut p = talker.packet(level(who, t));
            f.handle_datagram(now, local, talker.address, &mut p);
        }
        f.handle_timeout(now);
        while let Some(e) = f.poll_event() {
            if let Event::DominantSpeaker { participant, .. } = e {
                events.push((t, participant.map(|p| p.0)));
            }
        }
        now += Duration::from_millis(20);
    }
    let names: Vec<Option<&str>> = events.iter().map(|(_, p)| p.as_deref()).collect();
    assert_eq!(
        names,
        vec![Some("alice"), Some("bob"), Some("alice")],
        "{events:?}"
    );
    // Each change comes soon after the real one (within 2.5 s), never before it.
    let real = [2.0, 5.0, 12.0];
    for ((at, _), real) in events.iter().zip(real) {
        assert!(
            *at >= real && *at <= real + 2.5,
            "change at {at} s for a turn at {real} s"
        );
    }
}
