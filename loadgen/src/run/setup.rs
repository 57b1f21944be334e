//! From the scenario and what `JoinMeeting` returned to what the engine runs: the
//! publisher's tracks on the SSRCs the control plane assigned, the receiver's RTCP
//! behaviour, and the impaired path of the participant's region.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use crate::control::Joined;
use crate::engine::{ParticipantKey, ParticipantSetup};
use crate::impair::ImpairmentSpec;
use crate::media::{
    AudioConfig, CameraConfig, Encoding, PublisherConfig, ReceiverConfig, ScreenConfig,
};
use crate::scenario::{Direction, PlannedParticipant, Scenario};

/// The SSRCs a participant may publish on.
#[derive(Debug, Clone, Default)]
pub struct Ssrcs {
    pub audio: Option<u32>,
    /// RFC 6464 audio-level extension id (0: none).
    pub audio_level_extension_id: u8,
    /// One per simulcast encoding, lowest first.
    pub camera: Vec<u32>,
    pub screen: Option<u32>,
}

impl Ssrcs {
    /// What the control plane assigned.
    pub fn assigned(joined: &Joined) -> Ssrcs {
        Ssrcs {
            audio: joined.audio_ssrc,
            audio_level_extension_id: joined.audio_level_extension_id,
            camera: joined.camera_ssrcs.clone(),
            screen: joined.screen_ssrc,
        }
    }

    /// Consecutive SSRCs from `base` (no control plane: the loopback self-test).
    pub fn numbered(base: u32) -> Ssrcs {
        Ssrcs {
            audio: Some(base),
            audio_level_extension_id: 1,
            camera: vec![base + 1, base + 2, base + 3],
            screen: Some(base + 4),
        }
    }
}

/// Everything the engine needs for one joined participant, who may receive up to
/// `streams` tracks (what the others in its meeting publish).
pub fn participant(
    scenario: &Scenario,
    planned: &PlannedParticipant,
    streams: usize,
    key: ParticipantKey,
    joined: &Joined,
) -> Result<ParticipantSetup> {
    let publisher = (joined.can_publish && planned.publishes()).then(|| {
        publisher_config(
            scenario,
            key,
            &Ssrcs::assigned(joined),
            planned.audio,
            planned.camera,
            planned.screen,
        )
    });
    let bind = match joined.forwarder.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Ok(ParticipantSetup {
        key,
        forwarder: joined.forwarder,
        bind,
        send_key: joined.send_key.clone(),
        receive_key: joined.receive_key.clone(),
        publisher,
        receiver: ReceiverConfig {
            // Room for every track it may get (and a little for a republished one); a
            // stream beyond the limit is counted invalid, so it must not be too small.
            max_streams: streams.clamp(4, 255) + 2,
            ..receiver_config(scenario, key, joined.rtcp_ssrc())
        },
        up: impairment(scenario, &planned.region, Direction::Up),
        down: impairment(scenario, &planned.region, Direction::Down),
        seed: scenario.seed ^ key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    })
}

/// The tracks the scenario's media section describes, on `ssrcs`.
pub fn publisher_config(
    scenario: &Scenario,
    key: ParticipantKey,
    ssrcs: &Ssrcs,
    audio: bool,
    camera: bool,
    screen: bool,
) -> PublisherConfig {
    let media = &scenario.media;
    let mut config = PublisherConfig::new(
        key.0 as u32,
        scenario.seed ^ key.0.wrapping_mul(0xa076_1d64_78bd_642f),
    );
    if audio && media.audio.enabled {
        if let Some(ssrc) = ssrcs.audio {
            let bytes = media.audio.payload_bytes as usize;
            config.audio = Some(AudioConfig {
                packets_per_s: media.audio.packets_per_s,
                // Opus varies with what is said: ±40 % around the configured size.
                payload_bytes: (bytes * 6 / 10).max(40)..=(bytes * 14 / 10).max(48),
                audio_level_extension_id: (media.audio.audio_level
                    && ssrcs.audio_level_extension_id != 0)
                    .then_some(ssrcs.audio_level_extension_id),
                ..AudioConfig::opus(ssrc)
            });
        }
    }
    if camera && media.video.enabled && !ssrcs.camera.is_empty() {
        let layers = media.video.simulcast.len().min(ssrcs.camera.len());
        config.camera = Some(CameraConfig {
            ssrcs: ssrcs.camera[..layers].to_vec(),
            payload_type: 96,
            encodings: media.video.simulcast[..layers]
                .iter()
                .map(|layer| Encoding {
                    bitrate_bps: u64::from(layer.bitrate_kbps) * 1000,
                    fps: layer.fps,
                })
                .collect(),
            temporal_layers: media.video.temporal_layers,
            keyframe_interval_us: (media.video.keyframe_interval_s > 0.0)
                .then_some((media.video.keyframe_interval_s * 1e6) as u64),
        });
    }
    if screen && media.screen.enabled {
        if let Some(ssrc) = ssrcs.screen {
            config.screen = Some(ScreenConfig {
                ssrc,
                payload_type: 96,
                fps: media.screen.fps,
                bitrate_bps: u64::from(media.screen.bitrate_kbps) * 1000,
                burst_every_us: (media.screen.burst_every_s * 1e6) as u64,
                burst_packets: media.screen.burst_packets,
            });
        }
    }
    config
}

/// How the participant's client behaves as a receiver.
pub fn receiver_config(scenario: &Scenario, key: ParticipantKey, rtcp_ssrc: u32) -> ReceiverConfig {
    let receivers = &scenario.receivers;
    ReceiverConfig {
        rtcp_ssrc,
        nack: receivers.nack,
        pli: receivers.pli,
        rtcp_interval_us: u64::from(receivers.rtcp_interval_ms) * 1000,
        remb_bps: remb_kbps(scenario, key).map(|kbps| u64::from(kbps) * 1000),
        jitter_buffer_min_us: u64::from(receivers.jitter_buffer_min_ms) * 1000,
        jitter_buffer_max_us: u64::from(receivers.jitter_buffer_max_ms) * 1000,
        ..ReceiverConfig::new(rtcp_ssrc)
    }
}

/// The bandwidth estimate participant `key` announces: `remb_kbps`, or its turn in
/// `remb_kbps_mix`.
pub fn remb_kbps(scenario: &Scenario, key: ParticipantKey) -> Option<u32> {
    let mix = &scenario.receivers.remb_kbps_mix;
    if mix.is_empty() {
        return scenario.receivers.remb_kbps;
    }
    Some(mix[(key.0 % mix.len() as u64) as usize])
}

/// The impairment of `region`'s path in `direction`: an entry naming the region wins
/// over a `"*"` one; the last of equals wins.
pub fn impairment(scenario: &Scenario, region: &str, direction: Direction) -> ImpairmentSpec {
    let matching = |exact: bool| {
        scenario.impairments.iter().rfind(|i| {
            (i.direction == direction || i.direction == Direction::Both)
                && if exact {
                    i.region == region
                } else {
                    i.applies_to(region)
                }
        })
    };
    match matching(true).or_else(|| matching(false)) {
        Some(i) => ImpairmentSpec {
            loss: i.loss,
            delay_us: (i.delay_ms * 1e3) as u64,
            jitter_us: (i.jitter_ms * 1e3) as u64,
            reorder: i.reorder,
        },
        None => ImpairmentSpec::default(),
    }
}
