//! Which simulcast encoding each subscription forwards: the subscriber's limit, lowered
//! when its network cannot take more (the policy is `policy::layers`: REMB bandwidth
//! estimate against each encoding's measured bitrate, with hysteresis, and its RTCP loss
//! reports).
//!
//! A REMB estimate is the subscriber's whole downlink (draft-alvestrand-rmcat-remb-03
//! §2.2), shared by everything its leg receives. Audio and screen shares come first:
//! neither is on a ladder that could step down (audio has one encoding, and a screen
//! share keeps its top layer), so what they take is set aside at their measured rate.
//! The camera tracks share the rest equally.
//!
//! A change of encoding only takes effect at the next keyframe of the new one, which is
//! requested at once; temporal and spatial layers within an encoding follow the
//! subscription's limits (`Subscription::select`).

use std::time::Instant;

use crate::ids::SubscriptionId;
use crate::policy::layers::{Layer, LayerBitrates};

use super::Forwarder;

impl Forwarder {
    /// Recompute the encoding a subscription should forward, and ask for a keyframe of
    /// it if that changes what is being forwarded.
    pub(crate) fn adapt(&mut self, id: SubscriptionId, now: Instant) {
        let Some(sub) = self.subscriptions.get(id.index()) else {
            return;
        };
        let track = &self.tracks[sub.track.index()];
        let count = track.encodings.len();
        let preferred = sub.max_layers.encoding.min(count.saturating_sub(1) as u8);
        let mut bitrates = LayerBitrates::new();
        for (e, encoding) in track.encodings.iter().enumerate() {
            bitrates.set(Layer::new(e as u8, 0), encoding.bitrate.sustained_bps(now));
        }
        let available = self.camera_budget(sub.leg, now);
        let Some(sub) = self.subscriptions.get_mut(id.index()) else {
            return;
        };
        let desired = match sub
            .selector
            .select(now, Layer::new(preferred, 0), &bitrates, available)
        {
            Some(layer) if count > 1 => layer.spatial.min(preferred),
            // Nothing being sent (the publisher paused or left): keep forwarding what was
            // forwarded, rather than ask for a key frame of another encoding.
            None if count > 1 => match sub.current_encoding {
                Some(current) => current.min(preferred),
                None => preferred,
            },
            // Nothing measured yet (or a single encoding): the subscriber's limit is the
            // target.
            _ => preferred,
        };
        if desired == sub.desired_encoding {
            return;
        }
        sub.desired_encoding = desired;
        if sub.current_encoding != Some(desired) {
            let track = sub.track;
            self.request_keyframe(track, usize::from(desired), now);
        }
    }

    /// The share of a leg's bandwidth estimate one of its camera subscriptions may use:
    /// the estimate less what its audio and screen share subscriptions receive, divided
    /// among its camera subscriptions. `None` without an estimate (unconstrained).
    fn camera_budget(&self, leg: crate::ids::LegId, now: Instant) -> Option<u64> {
        let leg = &self.legs[leg.index()];
        let estimate = leg.stats.estimated_bitrate_bps;
        if estimate == 0 {
            return None;
        }
        let mut set_aside = 0u64;
        let mut cameras = 0u64;
        for id in &leg.subscriptions {
            let Some(sub) = self.subscriptions.get(id.index()) else {
                continue;
            };
            let Some(track) = self.tracks.get(sub.track.index()) else {
                continue;
            };
            match track.kind {
                super::TrackKind::Video => cameras += 1,
                super::TrackKind::Audio | super::TrackKind::Screen => {
                    let encoding = sub.current_encoding.unwrap_or(sub.desired_encoding);
                    let rate = track
                        .encodings
                        .get(usize::from(encoding))
                        .map_or(0, |e| e.bitrate.sustained_bps(now));
                    set_aside = set_aside.saturating_add(rate);
                }
            }
        }
        Some(estimate.saturating_sub(set_aside) / cameras.max(1))
    }

    /// Re-evaluate every subscription of a leg (after a REMB or a loss report from it).
    pub(crate) fn adapt_leg(&mut self, leg: crate::ids::LegId, now: Instant) {
        for i in 0..self.legs[leg.index()].subscriptions.len() {
            let id = self.legs[leg.index()].subscriptions[i];
            self.adapt(id, now);
        }
    }

    /// Re-evaluate every subscription: encodings' bitrates drift.
    pub(crate) fn adapt_all(&mut self, now: Instant) {
        let ids: Vec<SubscriptionId> = self
            .subscriptions
            .iter()
            .map(|(i, _)| SubscriptionId(i as u32))
            .collect();
        for id in ids {
            self.adapt(id, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::codec::Codec;
    use crate::ids::{LegId, MeetingId, ParticipantId, Ssrc, TrackId};
    use crate::sfu::{
        ForwarderConfig, Layers, LegConfig, LegSecurity, SubscriptionConfig, TrackConfig, TrackKind,
    };
    use crate::srtp::{MasterKey, SrtpProfile};

    const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;

    /// A meeting with a publisher of audio, a three-encoding camera and (optionally) a
    /// screen share, and a subscriber leg subscribed to all of them.
    struct Room {
        core: Forwarder,
        subscriber: LegId,
        audio: TrackId,
        camera: TrackId,
        screen: TrackId,
        camera_sub: SubscriptionId,
    }

    fn leg(core: &mut Forwarder, meeting: &MeetingId, who: &str, host: u8) -> LegId {
        let participant = ParticipantId::from(who);
        core.add_participant(meeting, participant.clone()).unwrap();
        core.add_leg(
            meeting,
            &participant,
            LegConfig {
                name: "srtp".into(),
                security: LegSecurity::Sdes {
                    receive_key: MasterKey::generate(PROFILE),
                    send_key: MasterKey::generate(PROFILE),
                },
                remote: Some(SocketAddr::from(([198, 51, 100, host], 5000))),
                remote_rtcp: None,
                rtcp_mux: true,
                local: Some(SocketAddr::from(([192, 0, 2, 1], 40100))),
                local_rtcp: None,
            },
        )
        .unwrap()
    }

    impl Room {
        fn new(now: Instant) -> Room {
            let mut core = Forwarder::new(ForwarderConfig::default(), now);
            let meeting = MeetingId::from("m");
            core.add_meeting(meeting.clone()).unwrap();
            let publisher = leg(&mut core, &meeting, "pub", 1);
            let subscriber = leg(&mut core, &meeting, "sub", 2);
            let track = |core: &mut Forwarder, name: &str, kind, ssrcs: &[u32]| {
                core.add_track(
                    &meeting,
                    &ParticipantId::from("pub"),
                    TrackConfig {
                        name: name.into(),
                        kind,
                        encodings: ssrcs.iter().map(|&s| Ssrc(s)).collect(),
                        leg: publisher,
                        clock_rate: None,
                        codec: if kind == TrackKind::Audio {
                            Codec::Opaque
                        } else {
                            Codec::Vp8
                        },
                        audio_level_extension: None,
                        stream_ids: None,
                    },
                )
                .unwrap()
            };
            let audio = track(&mut core, "audio", TrackKind::Audio, &[1]);
            let camera = track(&mut core, "camera", TrackKind::Video, &[2, 3, 4]);
            let screen = track(&mut core, "screen", TrackKind::Screen, &[5]);
            let mut camera_sub = None;
            for t in [audio, camera] {
                let id = core
                    .add_subscription(SubscriptionConfig {
                        track: t,
                        leg: subscriber,
                        ssrc: None,
                        max_layers: Layers::ALL,
                        payload_type: None,
                    })
                    .unwrap();
                if t == camera {
                    camera_sub = Some(id);
                }
            }
            Room {
                core,
                subscriber,
                audio,
                camera,
                screen,
                camera_sub: camera_sub.unwrap(),
            }
        }

        fn subscribe(&mut self, track: TrackId) {
            self.core
                .add_subscription(SubscriptionConfig {
                    track,
                    leg: self.subscriber,
                    ssrc: None,
                    max_layers: Layers::ALL,
                    payload_type: None,
                })
                .unwrap();
        }

        /// The publisher sends each encoding of `track` at these rates (kbit/s) for
        /// `duration`, in 10 ms packets, from `from`.
        fn publish(&mut self, track: TrackId, kbps: &[u64], from: Instant, duration: Duration) {
            let steps = (duration.as_millis() / 10) as u32;
            for (e, &rate) in kbps.iter().enumerate() {
                let meter = &mut self.core.tracks[track.index()].encodings[e].bitrate;
                for i in 0..steps {
                    meter.add(
                        (rate * 10 / 8) as usize,
                        from + Duration::from_millis(10) * i,
                    );
                }
            }
        }

        fn remb(&mut self, bps: u64, now: Instant) {
            self.core.legs[self.subscriber.index()]
                .stats
                .estimated_bitrate_bps = bps;
            self.core.adapt_leg(self.subscriber, now);
        }

        fn desired(&self) -> u8 {
            self.core.subscriptions[self.camera_sub.index()].desired_encoding
        }
    }

    #[test]
    fn audio_is_set_aside_from_the_estimate() {
        // 300 kbit/s of which 50 go to audio: 250 left, 225 with margin: the 250 kbit/s
        // encoding does not fit, the 100 kbit/s one does.
        let t0 = Instant::now();
        let mut room = Room::new(t0);
        let now = t0 + Duration::from_secs(3);
        room.publish(room.camera, &[100, 250, 800], t0, Duration::from_secs(3));
        room.publish(room.audio, &[50], t0, Duration::from_secs(3));
        room.remb(300_000, now);
        assert_eq!(room.desired(), 0);
        // 450 kbit/s: 400 left, 360 with margin.
        let mut room = Room::new(t0);
        room.publish(room.camera, &[100, 250, 800], t0, Duration::from_secs(3));
        room.publish(room.audio, &[50], t0, Duration::from_secs(3));
        room.remb(450_000, now);
        assert_eq!(room.desired(), 1);
    }

    #[test]
    fn screen_share_is_set_aside_and_cameras_share_the_rest() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(3);
        let mut room = Room::new(t0);
        room.subscribe(room.screen);
        room.publish(room.camera, &[100, 250, 800], t0, Duration::from_secs(3));
        room.publish(room.audio, &[50], t0, Duration::from_secs(3));
        room.publish(room.screen, &[500], t0, Duration::from_secs(3));
        // 1000 - 50 - 500 = 450, 405 with margin: the middle encoding.
        room.remb(1_000_000, now);
        assert_eq!(room.desired(), 1);
        // A second camera on the same leg halves the share: 225 each, 202 with margin.
        let camera2 = {
            let meeting = MeetingId::from("m");
            room.core
                .add_track(
                    &meeting,
                    &ParticipantId::from("pub"),
                    TrackConfig {
                        name: "camera2".into(),
                        kind: TrackKind::Video,
                        encodings: vec![Ssrc(6), Ssrc(7), Ssrc(8)],
                        leg: room.core.tracks[room.camera.index()].leg,
                        clock_rate: None,
                        codec: Codec::Vp8,
                        audio_level_extension: None,
                        stream_ids: None,
                    },
                )
                .unwrap()
        };
        room.subscribe(camera2);
        room.publish(camera2, &[100, 250, 800], t0, Duration::from_secs(3));
        room.remb(1_000_000, now);
        assert_eq!(room.desired(), 0);
    }

    #[test]
    fn key_frames_of_the_target_do_not_bounce_it_back() {
        // REMB 330 kbit/s less 50 of audio: 280, 252 with margin, above the middle
        // encoding's 250 when it runs steadily. A key frame it sends for the switch (6
        // frames' worth at 15 fps) must not undo the switch: the core asks for one
        // key frame per change of encoding.
        let t0 = Instant::now();
        let mut room = Room::new(t0);
        room.publish(room.camera, &[100, 240, 800], t0, Duration::from_secs(4));
        room.publish(room.audio, &[50], t0, Duration::from_secs(12));
        room.remb(330_000, t0 + Duration::from_secs(4));
        assert_eq!(room.desired(), 1);
        let sent_before = room.core.legs[room.core.tracks[room.camera.index()].leg.index()]
            .stats
            .keyframe_requests_sent;
        let mut now = t0 + Duration::from_secs(4);
        for second in 0..8 {
            // Steady rates, plus key frames of the middle encoding: the one the switch
            // asked for, and one a subscriber asks for 5 s later.
            room.publish(room.camera, &[100, 240, 800], now, Duration::from_secs(1));
            if second % 5 == 0 {
                room.core.tracks[room.camera.index()].encodings[1]
                    .bitrate
                    .add(6 * 2000, now + Duration::from_millis(500));
            }
            now += Duration::from_secs(1);
            room.remb(330_000, now);
            room.core.adapt_all(now);
            assert_eq!(room.desired(), 1, "second {second}");
        }
        let sent_after = room.core.legs[room.core.tracks[room.camera.index()].leg.index()]
            .stats
            .keyframe_requests_sent;
        assert_eq!(sent_before, sent_after, "no switch, no key frame request");
    }
}
