//! A virtual network for scenario tests: simulated peers that hold their own SRTP
//! contexts and talk to a sans-IO [`Forwarder`] on a virtual clock, with no sockets.

#![allow(dead_code)]

pub mod netem;
pub mod netns;
pub mod vp8;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_forwarder::codec::Codec;
use fanout_forwarder::ids::{
    LegId, MeetingId, ParticipantId, SeqNo, Ssrc, SubscriptionId, TrackId,
};
use fanout_forwarder::rtp::RtpHeader;
use fanout_forwarder::sfu::{
    Forwarder, ForwarderConfig, LegConfig, LegSecurity, SubscriptionConfig, TrackConfig, TrackKind,
    MIN_TRANSMIT_BUFFER_LEN,
};
use fanout_forwarder::srtp::{MasterKey, SrtpContext, SrtpProfile};

/// The forwarder's address on the virtual network.
pub const FORWARDER: &str = "192.0.2.1:40000";

pub fn forwarder_addr() -> SocketAddr {
    FORWARDER.parse().unwrap()
}

/// One simulated peer on one leg: it protects what it sends with the leg's receive key
/// and unprotects what it gets with the leg's send key, as a real peer would.
pub struct Peer {
    pub address: SocketAddr,
    pub leg: LegId,
    pub sender: SrtpContext,
    pub receiver: SrtpContext,
}

impl Peer {
    /// Build an SRTP packet as this peer would send it.
    pub fn rtp(&mut self, ssrc: Ssrc, seq: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        self.rtp_marked(ssrc, seq, timestamp, false, payload)
    }

    /// An SRTP packet with the marker bit as given (the end of a video frame).
    pub fn rtp_marked(
        &mut self,
        ssrc: Ssrc,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + payload.len() + 64];
        buf[0] = 0x80;
        buf[1] = 96 | if marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let len = self
            .sender
            .protect_rtp(&mut buf, 12 + payload.len())
            .expect("protect");
        buf.truncate(len);
        buf
    }
}

/// A meeting on a forwarder with one publisher and `subscribers` subscribers of its one
/// video track.
pub struct Scenario {
    pub now: Instant,
    pub forwarder: Forwarder,
    pub meeting: MeetingId,
    pub publisher: Peer,
    pub track: TrackId,
    pub track_ssrc: Ssrc,
    pub subscribers: Vec<Peer>,
    by_address: HashMap<SocketAddr, usize>,
    /// Decrypted RTCP the forwarder sent, with its destination.
    pub rtcp: Vec<(SocketAddr, Vec<u8>)>,
}

/// What one subscriber received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub subscriber: usize,
    pub header: RtpHeader,
    pub payload: Vec<u8>,
}

pub fn leg_config(
    name: &str,
    profile: SrtpProfile,
    remote: Option<SocketAddr>,
) -> (LegConfig, MasterKey, MasterKey) {
    let receive_key = MasterKey::generate(profile);
    let send_key = MasterKey::generate(profile);
    (
        LegConfig {
            name: name.to_owned(),
            security: LegSecurity::Sdes {
                receive_key: receive_key.clone(),
                send_key: send_key.clone(),
            },
            remote,
            remote_rtcp: None,
            rtcp_mux: true,
            local: None,
            local_rtcp: None,
        },
        receive_key,
        send_key,
    )
}

pub fn subscriber_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5000))
}

/// The published track of a scenario.
#[derive(Debug, Clone)]
pub struct TrackSetup {
    pub kind: TrackKind,
    pub codec: Codec,
    pub encodings: Vec<Ssrc>,
    pub audio_level_extension: Option<u8>,
}

impl Default for TrackSetup {
    fn default() -> Self {
        TrackSetup {
            kind: TrackKind::Video,
            codec: Codec::Opaque,
            audio_level_extension: None,
            encodings: vec![Ssrc(0x1234_5678)],
        }
    }
}

impl Scenario {
    pub fn new(profile: SrtpProfile, subscribers: usize) -> Self {
        Self::with_track(profile, subscribers, TrackSetup::default())
    }

    pub fn with_track(profile: SrtpProfile, subscribers: usize, setup: TrackSetup) -> Self {
        let now = Instant::now();
        let mut forwarder = Forwarder::new(ForwarderConfig::default(), now);
        let meeting = MeetingId::from("m");
        forwarder.add_meeting(meeting.clone()).unwrap();

        let alice = ParticipantId::from("alice");
        forwarder.add_participant(&meeting, alice.clone()).unwrap();
        let (config, rk, sk) = leg_config("main", profile, None);
        let leg = forwarder.add_leg(&meeting, &alice, config).unwrap();
        let track_ssrc = setup.encodings[0];
        let track = forwarder
            .add_track(
                &meeting,
                &alice,
                TrackConfig {
                    name: "camera".into(),
                    kind: setup.kind,
                    encodings: setup.encodings.clone(),
                    leg,
                    clock_rate: None,
                    codec: setup.codec,
                    audio_level_extension: setup.audio_level_extension,
                    stream_ids: None,
                },
            )
            .unwrap();
        let publisher = Peer {
            address: "198.51.100.7:6000".parse().unwrap(),
            leg,
            sender: SrtpContext::new(&rk),
            receiver: SrtpContext::new(&sk),
        };

        let mut scenario = Scenario {
            now,
            forwarder,
            meeting,
            publisher,
            track,
            track_ssrc,
            subscribers: Vec::new(),
            by_address: HashMap::new(),
            rtcp: Vec::new(),
        };
        for i in 0..subscribers {
            scenario.add_subscriber(profile, i);
        }
        scenario
    }

    pub fn add_subscriber(&mut self, profile: SrtpProfile, i: usize) -> usize {
        self.add_subscriber_with(profile, i, None, None).0
    }

    /// Add subscriber `i` with an explicit outbound SSRC and payload type.
    pub fn add_subscriber_with(
        &mut self,
        profile: SrtpProfile,
        i: usize,
        ssrc: Option<Ssrc>,
        payload_type: Option<u8>,
    ) -> (usize, SubscriptionId) {
        let id = ParticipantId(format!("sub{i}"));
        self.forwarder
            .add_participant(&self.meeting, id.clone())
            .unwrap();
        let address = subscriber_addr(i);
        let (config, rk, sk) = leg_config("main", profile, Some(address));
        let leg = self.forwarder.add_leg(&self.meeting, &id, config).unwrap();
        let subscription = self
            .forwarder
            .add_subscription(SubscriptionConfig {
                track: self.track,
                leg,
                ssrc,
                payload_type,
                max_layers: Default::default(),
            })
            .unwrap();
        let index = self.subscribers.len();
        self.subscribers.push(Peer {
            address,
            leg,
            sender: SrtpContext::new(&rk),
            receiver: SrtpContext::new(&sk),
        });
        self.by_address.insert(address, index);
        (index, subscription)
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.forwarder.handle_timeout(self.now);
    }

    /// Deliver one datagram from `source` and collect, decrypt and check everything the
    /// forwarder sends in response.
    pub fn deliver(&mut self, source: SocketAddr, mut datagram: Vec<u8>) -> Vec<Received> {
        self.forwarder
            .handle_datagram(self.now, forwarder_addr(), source, &mut datagram);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
        while let Some(t) = self.forwarder.poll_transmit(&mut buf) {
            let mut packet = buf[..t.len].to_vec();
            if (200..=207).contains(&packet[1]) {
                let peer = if t.destination == self.publisher.address {
                    &mut self.publisher
                } else {
                    &mut self.subscribers[self.by_address[&t.destination]]
                };
                let len = peer
                    .receiver
                    .unprotect_rtcp(&mut packet)
                    .expect("valid SRTCP");
                packet.truncate(len);
                self.rtcp.push((t.destination, packet));
                continue;
            }
            let &subscriber = self
                .by_address
                .get(&t.destination)
                .unwrap_or_else(|| panic!("transmit to unknown address {}", t.destination));
            let len = self.subscribers[subscriber]
                .receiver
                .unprotect_rtp(&mut packet)
                .unwrap_or_else(|e| panic!("subscriber {subscriber} cannot unprotect: {e}"));
            let header = RtpHeader::parse(&packet[..len]).unwrap();
            out.push(Received {
                subscriber,
                header,
                payload: packet[header.header_len..len].to_vec(),
            });
        }
        out
    }

    /// The publisher sends one packet of one encoding of its track.
    pub fn publish_on(
        &mut self,
        ssrc: Ssrc,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<Received> {
        let packet = self
            .publisher
            .rtp_marked(ssrc, seq, timestamp, marker, payload);
        let source = self.publisher.address;
        self.deliver(source, packet)
    }

    /// The publisher sends one packet of its track.
    pub fn publish(&mut self, seq: u16, timestamp: u32, payload: &[u8]) -> Vec<Received> {
        let ssrc = self.track_ssrc;
        let packet = self.publisher.rtp(ssrc, seq, timestamp, payload);
        let source = self.publisher.address;
        self.deliver(source, packet)
    }
}

/// Checks that each subscriber's stream is continuous: every packet exactly once, each
/// sequence number one more than the last.
#[derive(Default)]
pub struct ContinuityChecker {
    last: HashMap<usize, SeqNo>,
    pub counts: HashMap<usize, usize>,
}

impl ContinuityChecker {
    pub fn check(&mut self, r: &Received) {
        if let Some(prev) = self.last.get(&r.subscriber) {
            assert_eq!(
                prev.delta_to(r.header.sequence),
                1,
                "subscriber {} got {} after {}",
                r.subscriber,
                r.header.sequence,
                prev
            );
        }
        self.last.insert(r.subscriber, r.header.sequence);
        *self.counts.entry(r.subscriber).or_default() += 1;
    }
}
