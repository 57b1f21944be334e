//! Relay links between cores wired together in-process on a virtual clock: a presenter
//! publishing to the origin, a chain of relay nodes, viewers on the nodes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::audience::AudienceSummary;
use super::*;
use crate::rtcp::RtcpPacket;
use crate::rtp::RtpHeader;
use crate::sfu::{ForwarderConfig, LegConfig, LegSecurity, MIN_TRANSMIT_BUFFER_LEN};
use crate::srtp::SrtpProfile;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const AUDIO: Ssrc = Ssrc(0xA1);
/// Camera simulcast encodings, lowest first.
const CAMERA: [Ssrc; 3] = [Ssrc(0xC1), Ssrc(0xC2), Ssrc(0xC3)];

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, host], port))
}

/// A single-packet VP8 frame (RFC 7741 descriptor with a picture id), the payload
/// filled with `tag`.
fn vp8(picture_id: u16, keyframe: bool, tag: u8) -> Vec<u8> {
    let mut p = vec![
        0x90,
        0xe0,
        0x80 | (picture_id >> 8) as u8 & 0x7f,
        picture_id as u8,
        0,
        0x20,
    ];
    if keyframe {
        p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
    } else {
        p.extend_from_slice(&[0x01, 0x00, 0x00]);
    }
    p.extend_from_slice(&[tag; 100]);
    p
}

struct Node {
    core: Forwarder,
    meeting: MeetingId,
    addr: SocketAddr,
}

struct Viewer {
    node: usize,
    name: ParticipantId,
    addr: SocketAddr,
    /// Protects what the viewer sends (the leg's receive key).
    sender: SrtpContext,
    /// Unprotects what the node sends it.
    receiver: SrtpContext,
    /// Drop the next video packet to this viewer (as lost on its access link) and note
    /// its sequence number here.
    lose_next: Option<Option<SeqNo>>,
    /// (SSRC, sequence number, first payload byte after the VP8 descriptor) of each RTP
    /// packet received.
    got: Vec<(Ssrc, SeqNo, u8)>,
    /// Compact NTP timestamp of the last sender report received about the camera.
    camera_sr: Option<u32>,
}

struct Presenter {
    addr: SocketAddr,
    sender: SrtpContext,
    receiver: SrtpContext,
    /// Last sequence number sent, per SSRC.
    seqs: Vec<(Ssrc, u16)>,
    picture_id: u16,
    plis: Vec<Ssrc>,
    nacks: Vec<(Ssrc, SeqNo)>,
    /// Report blocks of the origin's receiver reports.
    reports: Vec<rtcp::ReportBlock>,
}

/// Origin (node 0, meeting `w`) and a chain of relay nodes `w/r1`, `w/r2`, ..., each fed
/// by the one before.
struct Tree {
    now: Instant,
    nodes: Vec<Node>,
    presenter: Presenter,
    viewers: Vec<Viewer>,
    /// Drop the media packet with this SSRC and sequence number on its way to this node,
    /// once.
    drop_on_link: Option<(usize, Ssrc, SeqNo)>,
    /// Hold back what node 1 sends the origin (its feedback) instead of delivering it.
    cut_upstream: bool,
    held: Vec<Vec<u8>>,
    /// Copies of the datagrams delivered to node 1 from its parent.
    captured: Vec<Vec<u8>>,
    /// Other publishers: what the origin sends them is discarded.
    others: Vec<SocketAddr>,
}

impl Tree {
    fn new(relays: usize) -> Tree {
        let now = Instant::now();
        let mut nodes = vec![Node {
            core: Forwarder::new(ForwarderConfig::default(), now),
            meeting: MeetingId::from("w"),
            addr: addr(1, 40100),
        }];
        let meeting = nodes[0].meeting.clone();
        nodes[0].core.add_meeting(meeting).unwrap();
        let p_in = MasterKey::generate(PROFILE);
        let p_out = MasterKey::generate(PROFILE);
        let presenter = Presenter {
            addr: SocketAddr::from(([198, 51, 100, 1], 5000)),
            sender: SrtpContext::new(&p_in),
            receiver: SrtpContext::new(&p_out),
            seqs: Vec::new(),
            picture_id: 1,
            plis: Vec::new(),
            nacks: Vec::new(),
            reports: Vec::new(),
        };
        let origin = &mut nodes[0];
        let host = ParticipantId::from("host");
        origin
            .core
            .add_participant(&origin.meeting, host.clone())
            .unwrap();
        let leg = origin
            .core
            .add_leg(
                &origin.meeting,
                &host,
                LegConfig {
                    name: "srtp".into(),
                    security: LegSecurity::Sdes {
                        receive_key: p_in,
                        send_key: p_out,
                    },
                    remote: Some(presenter.addr),
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: Some(origin.addr),
                    local_rtcp: None,
                },
            )
            .unwrap();
        for (name, kind, codec, ssrcs) in [
            ("audio", TrackKind::Audio, Codec::Opaque, vec![AUDIO]),
            ("camera", TrackKind::Video, Codec::Vp8, CAMERA.to_vec()),
        ] {
            origin
                .core
                .add_track(
                    &origin.meeting,
                    &host,
                    TrackConfig {
                        name: name.into(),
                        kind,
                        encodings: ssrcs,
                        leg,
                        clock_rate: None,
                        codec,
                        audio_level_extension: None,
                        stream_ids: None,
                    },
                )
                .unwrap();
        }
        let mut tree = Tree {
            now,
            nodes,
            presenter,
            viewers: Vec::new(),
            drop_on_link: None,
            cut_upstream: false,
            held: Vec::new(),
            captured: Vec::new(),
            others: Vec::new(),
        };
        for _ in 0..relays {
            tree.add_relay();
        }
        tree.pump();
        tree
    }

    /// A relay node fed by the last node.
    fn add_relay(&mut self) {
        self.add_relay_with(false);
    }

    /// A relay node fed by the last node; with `parent_first`, the parent's end is added
    /// (and announces) before the node exists, as when the control plane reaches the
    /// parent's forwarder first.
    fn add_relay_with(&mut self, parent_first: bool) {
        self.add_relay_under(self.nodes.len() - 1, parent_first);
    }

    /// A relay node fed by node `parent`.
    fn add_relay_under(&mut self, parent: usize, parent_first: bool) {
        let index = self.nodes.len();
        let meeting = MeetingId(format!("w/r{index}"));
        let mut core = Forwarder::new(ForwarderConfig::default(), self.now);
        core.add_meeting(meeting.clone()).unwrap();
        let node_addr = addr(index as u8 + 1, 40100);
        let down = MasterKey::generate(PROFILE);
        let up = MasterKey::generate(PROFILE);
        let id = format!("{meeting}");
        let p = &mut self.nodes[parent];
        let parent_end = RelayLinkConfig {
            id: format!("{id}/down"),
            direction: RelayDirection::Downstream,
            local: p.addr,
            remote: node_addr,
            send_key: down.clone(),
            receive_key: up.clone(),
        };
        if parent_first {
            let meeting = p.meeting.clone();
            p.core.add_relay_link(&meeting, parent_end.clone()).unwrap();
            // What it sends now is lost: nobody listens there yet.
            let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
            while p.core.poll_transmit(&mut buf).is_some() {}
        }
        core.add_relay_link(
            &meeting,
            RelayLinkConfig {
                id: format!("{id}/up"),
                direction: RelayDirection::Upstream,
                local: node_addr,
                remote: self.nodes[parent].addr,
                send_key: up.clone(),
                receive_key: down.clone(),
            },
        )
        .unwrap();
        if !parent_first {
            let p = &mut self.nodes[parent];
            let meeting = p.meeting.clone();
            p.core.add_relay_link(&meeting, parent_end).unwrap();
        }
        self.nodes.push(Node {
            core,
            meeting,
            addr: node_addr,
        });
    }

    fn add_viewer(&mut self, node: usize) -> usize {
        let n = self.viewers.len();
        let name = ParticipantId(format!("v{n}"));
        let receive = MasterKey::generate(PROFILE);
        let send = MasterKey::generate(PROFILE);
        let address = SocketAddr::from(([198, 51, 100, 2], 6000 + n as u16));
        let Node {
            core,
            meeting,
            addr: node_addr,
        } = &mut self.nodes[node];
        core.add_participant(meeting, name.clone()).unwrap();
        core.add_leg(
            meeting,
            &name,
            LegConfig {
                name: "srtp".into(),
                security: LegSecurity::Sdes {
                    receive_key: receive.clone(),
                    send_key: send.clone(),
                },
                remote: Some(address),
                remote_rtcp: None,
                rtcp_mux: true,
                local: Some(*node_addr),
                local_rtcp: None,
            },
        )
        .unwrap();
        self.viewers.push(Viewer {
            node,
            name,
            addr: address,
            sender: SrtpContext::new(&receive),
            receiver: SrtpContext::new(&send),
            lose_next: None,
            got: Vec::new(),
            camera_sr: None,
        });
        n
    }

    fn link(&self, node: usize, direction: RelayDirection) -> RelayLinkInfo {
        self.nodes[node]
            .core
            .relay_links()
            .into_iter()
            .find(|l| l.direction == direction)
            .expect("a link end")
    }

    /// Move the clock and run what is due.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        for node in &mut self.nodes {
            if node.core.poll_timeout().is_some_and(|t| t <= self.now) {
                node.core.handle_timeout(self.now);
            }
        }
        self.pump();
    }

    /// Deliver everything the cores send until they are quiet.
    fn pump(&mut self) {
        let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER_LEN];
        loop {
            let mut datagrams = Vec::new();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while let Some(t) = node.core.poll_transmit(&mut buf) {
                    assert_eq!(t.source, Some(node.addr), "sent from the meeting's port");
                    datagrams.push((i, t.destination, buf[..t.len].to_vec()));
                }
            }
            if datagrams.is_empty() {
                return;
            }
            for (from, to, mut data) in datagrams {
                self.deliver(from, to, &mut data);
            }
        }
    }

    fn deliver(&mut self, from: usize, to: SocketAddr, data: &mut [u8]) {
        let source = self.nodes[from].addr;
        let rtcp = (200..=207).contains(&data[1]);
        if let Some(i) = self.nodes.iter().position(|n| n.addr == to) {
            if from == 1 && i == 0 && self.cut_upstream {
                self.held.push(data.to_vec());
                return;
            }
            if i == 1 && from == 0 {
                self.captured.push(data.to_vec());
            }
            if !rtcp {
                let h = RtpHeader::parse(data).unwrap();
                if self.drop_on_link == Some((i, h.ssrc, h.sequence)) {
                    self.drop_on_link = None;
                    return;
                }
            }
            let node = &mut self.nodes[i];
            node.core.handle_datagram(self.now, node.addr, source, data);
            return;
        }
        if to == self.presenter.addr {
            assert!(rtcp, "nothing but feedback goes to the presenter");
            let p = &mut self.presenter;
            let len = p.receiver.unprotect_rtcp(data).unwrap();
            for packet in rtcp::iter_compound(&data[..len]).flatten() {
                match packet {
                    RtcpPacket::PayloadFeedback(fb) if fb.fmt == 1 => p.plis.push(fb.media_ssrc),
                    RtcpPacket::TransportFeedback(fb) if fb.fmt == 1 => p
                        .nacks
                        .extend(fb.lost_sequence_numbers().map(|s| (fb.media_ssrc, s))),
                    RtcpPacket::ReceiverReport(rr) => p.reports.extend(rr.report_blocks()),
                    _ => {}
                }
            }
            return;
        }
        if self.others.contains(&to) {
            return;
        }
        let v = self
            .viewers
            .iter_mut()
            .find(|v| v.addr == to)
            .unwrap_or_else(|| panic!("a datagram to unknown {to}"));
        if rtcp {
            let len = v.receiver.unprotect_rtcp(data).expect("the viewer's keys");
            for packet in rtcp::iter_compound(&data[..len]).flatten() {
                if let RtcpPacket::SenderReport(sr) = packet {
                    if sr.sender_ssrc == CAMERA[0] {
                        v.camera_sr = Some(sr.compact_ntp());
                    }
                }
            }
            return;
        }
        if v.lose_next == Some(None) {
            let h = RtpHeader::parse(data).unwrap();
            if h.ssrc == CAMERA[0] {
                v.lose_next = Some(Some(h.sequence));
                return;
            }
        }
        let len = v.receiver.unprotect_rtp(data).expect("the viewer's keys");
        let h = RtpHeader::parse(&data[..len]).unwrap();
        // The tag: after the 4-byte descriptor with a 2-byte picture id and the 3- or
        // 10-byte VP8 header; audio payloads are the tag throughout.
        let tag = data[len - 1];
        v.got.push((h.ssrc, h.sequence, tag));
    }

    /// The presenter sends one packet on `ssrc`: a VP8 frame for the camera, a plain
    /// payload for audio. Returns its sequence number.
    /// The sequence number the next packet on `ssrc` gets.
    fn next_seq(&self, ssrc: Ssrc) -> SeqNo {
        let last = self
            .presenter
            .seqs
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map_or(100, |&(_, q)| q);
        SeqNo(last.wrapping_add(1))
    }

    fn publish(&mut self, ssrc: Ssrc, keyframe: bool, tag: u8) -> SeqNo {
        let seq = self.next_seq(ssrc);
        let p = &mut self.presenter;
        p.seqs.retain(|(s, _)| *s != ssrc);
        p.seqs.push((ssrc, seq.0));
        let payload = if ssrc == AUDIO {
            vec![tag; 80]
        } else {
            vp8(p.picture_id, keyframe, tag)
        };
        let mut packet = vec![0u8; 12 + payload.len() + 32];
        packet[0] = 0x80;
        packet[1] = 0x80 | if ssrc == AUDIO { 111 } else { 96 };
        packet[2..4].copy_from_slice(&seq.0.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(p.picture_id) * 3000).to_be_bytes());
        packet[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
        packet[12..12 + payload.len()].copy_from_slice(&payload);
        let len = p
            .sender
            .protect_rtp(&mut packet, 12 + payload.len())
            .unwrap();
        packet.truncate(len);
        let origin = &mut self.nodes[0];
        origin
            .core
            .handle_datagram(self.now, origin.addr, self.presenter.addr, &mut packet);
        self.pump();
        seq
    }

    /// One frame on every camera encoding (tagged with its index) and one audio packet,
    /// 33 ms apart.
    fn frame(&mut self, keyframe: bool) -> [SeqNo; 3] {
        self.advance(Duration::from_millis(33));
        let mut seqs = [SeqNo(0); 3];
        for (i, &ssrc) in CAMERA.iter().enumerate() {
            seqs[i] = self.publish(ssrc, keyframe, i as u8);
        }
        self.presenter.picture_id += 1;
        self.publish(AUDIO, false, 0xAA);
        seqs
    }

    /// A viewer sends RTCP (built by `write`) to its node.
    fn viewer_rtcp(&mut self, viewer: usize, write: impl FnOnce(&mut [u8]) -> usize) {
        let v = &mut self.viewers[viewer];
        let mut buf = vec![0u8; 256];
        let len = write(&mut buf);
        let len = v.sender.protect_rtcp(&mut buf, len).unwrap();
        buf.truncate(len);
        let node = &mut self.nodes[v.node];
        node.core
            .handle_datagram(self.now, node.addr, v.addr, &mut buf);
        self.pump();
    }

    /// The first sequence number missing from what `viewer` got of the camera.
    fn hole(&self, viewer: usize) -> SeqNo {
        let mut video: Vec<u16> = self.viewers[viewer]
            .got
            .iter()
            .filter(|(s, _, _)| *s == CAMERA[0])
            .map(|&(_, q, _)| q.0)
            .collect();
        video.sort_unstable();
        video
            .windows(2)
            .find(|w| w[1] != w[0] + 1)
            .map(|w| SeqNo(w[0] + 1))
            .expect("a hole in the viewer's stream")
    }

    fn camera_subscription(&self, viewer: usize) -> crate::ids::SubscriptionId {
        let v = &self.viewers[viewer];
        let node = &self.nodes[v.node];
        let subs = node.core.subscriptions_of(&node.meeting, &v.name);
        *subs
            .iter()
            .find(|&&s| {
                let t = node.core.subscription_track(s).unwrap();
                node.core.tracks[t.index()].kind == TrackKind::Video
            })
            .expect("a camera subscription")
    }
}

#[test]
fn announcements_round_trip() {
    let a = AnnouncedTrack {
        name: "host/camera".into(),
        kind: TrackKind::Video,
        codec: Codec::Vp8,
        clock_rate: 90_000,
        ssrcs: CAMERA.to_vec(),
    };
    let b = AnnouncedTrack {
        name: "host/audio".into(),
        kind: TrackKind::Audio,
        codec: Codec::Opaque,
        clock_rate: 48_000,
        ssrcs: vec![AUDIO],
    };
    let mut buf = [0u8; 512];
    let len = write_announcement(&mut buf, Ssrc(7), &[&a, &b]).unwrap();
    assert_eq!(rtcp::validate(&buf[..len]), Ok(1));
    let Some(Ok(RtcpPacket::App(body))) = rtcp::iter_compound(&buf[..len]).next() else {
        panic!("an APP packet");
    };
    assert_eq!(parse_announcement(body), Some(vec![a, b]));
    // Truncated or foreign APP packets are not announcements.
    assert_eq!(parse_announcement(&body[..body.len() - 4]), None);
    let mut other = body.to_vec();
    other[4..8].copy_from_slice(b"XXXX");
    assert_eq!(parse_announcement(&other), None);
}

#[test]
fn viewers_on_a_relay_receive_the_presenter_with_their_own_layer() {
    let mut tree = Tree::new(1);
    let full = tree.add_viewer(1);
    let low = tree.add_viewer(1);
    tree.pump();
    // The node learned the origin's tracks from its announcement.
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.tracks, 2);
    let sub = tree.camera_subscription(low);
    tree.nodes[1]
        .core
        .set_max_layers(
            sub,
            Layers {
                encoding: 0,
                ..Layers::ALL
            },
        )
        .unwrap();

    tree.frame(true);
    for _ in 0..20 {
        tree.frame(false);
    }
    // The link carried every encoding of every frame, and audio: 21 x (3 + 1) packets,
    // each protected once.
    let down = tree.link(0, RelayDirection::Downstream);
    assert_eq!(down.stats.rtp_out.packets, 21 * 4);
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.stats.rtp_in.packets, 21 * 4);
    assert_eq!(up.stats.drops.total(), 0);

    // Each viewer gets one encoding of each frame: the highest, or the one it is
    // limited to; and all the audio.
    for (viewer, encoding) in [(full, 2u8), (low, 0u8)] {
        let got = &tree.viewers[viewer].got;
        let video: Vec<_> = got.iter().filter(|(s, _, _)| *s == CAMERA[0]).collect();
        let audio = got.iter().filter(|(s, _, _)| *s == AUDIO).count();
        assert_eq!(video.len(), 21, "viewer {viewer}: one packet per frame");
        assert!(
            video.iter().all(|&&(_, _, tag)| tag == encoding),
            "viewer {viewer} gets encoding {encoding}"
        );
        assert_eq!(audio, 21);
        // Its own continuous sequence numbers.
        assert!(video
            .windows(2)
            .all(|w| w[1].1 .0 == w[0].1 .0.wrapping_add(1)));
    }
}

#[test]
fn relays_chain_and_a_removed_link_stops_sending() {
    let mut tree = Tree::new(2);
    let near = tree.add_viewer(1);
    let far = tree.add_viewer(2);
    tree.pump();
    tree.frame(true);
    for _ in 0..5 {
        tree.frame(false);
    }
    for v in [near, far] {
        let video = tree.viewers[v]
            .got
            .iter()
            .filter(|(s, _, t)| *s == CAMERA[0] && *t == 2)
            .count();
        assert_eq!(video, 6, "viewer {v} two or three levels down");
    }
    // The middle node relays every layer on, not just what its own viewers take.
    assert_eq!(
        tree.link(1, RelayDirection::Downstream)
            .stats
            .rtp_out
            .packets,
        6 * 4
    );

    // The origin's link to r1 goes: nothing more leaves for it.
    let meeting = tree.nodes[0].meeting.clone();
    tree.nodes[0]
        .core
        .remove_relay_link(&meeting, "w/r1/down")
        .unwrap();
    assert!(tree.nodes[0].core.relay_links().is_empty());
    let before = tree.viewers[far].got.len();
    tree.frame(false);
    assert_eq!(tree.viewers[far].got.len(), before);
    // Relayed tracks whose announcements stopped go after a while, with the viewers'
    // subscriptions to them.
    tree.advance(TRACK_TTL + Duration::from_secs(1));
    assert_eq!(tree.link(1, RelayDirection::Upstream).tracks, 0);
    assert_eq!(tree.nodes[1].core.subscription_count(), 0);
}

#[test]
fn a_viewers_nack_is_answered_by_its_relay() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    for _ in 0..5 {
        tree.frame(false);
    }
    // A packet lost between the relay and the viewer.
    tree.viewers[v].lose_next = Some(None);
    tree.frame(false);
    let Some(Some(seq)) = tree.viewers[v].lose_next else {
        panic!("a packet was lost");
    };
    let ssrc = CAMERA[0];
    let before = tree.viewers[v].got.len();
    tree.viewer_rtcp(v, |b| {
        rtcp::write_nack(b, Ssrc(0x5555), ssrc, &[seq]).unwrap()
    });
    let got = &tree.viewers[v].got;
    assert_eq!(got.len(), before + 1, "resent");
    assert_eq!(got[before].1, seq);
    // Nothing went up the link: the node's own cache answered.
    let down = tree.link(0, RelayDirection::Downstream);
    assert_eq!(down.stats.nacks_received, 0);
    assert_eq!(down.stats.retransmitted, 0);
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.stats.nacks_sent, 0);
}

#[test]
fn a_packet_lost_on_the_link_is_requested_once_upstream_and_reaches_every_viewer() {
    let mut tree = Tree::new(1);
    let a = tree.add_viewer(1);
    let b = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    for _ in 0..3 {
        tree.frame(false);
    }
    // The next frame's top encoding is lost between origin and relay.
    let next = tree.next_seq(CAMERA[2]);
    tree.drop_on_link = Some((1, CAMERA[2], next));
    tree.frame(false);
    tree.frame(false);
    assert_eq!(tree.drop_on_link, None, "the packet was dropped");
    // The relay saw the gap and asked the origin, which answered from its cache: the
    // viewers got the packet without asking. Their NACKs for it now would be answered
    // by the relay.
    let down = tree.link(0, RelayDirection::Downstream);
    assert_eq!(
        down.stats.nacks_received, 1,
        "one request whatever the viewers"
    );
    assert_eq!(down.stats.retransmitted, 1);
    assert!(
        tree.presenter.nacks.is_empty(),
        "the origin's cache answered"
    );
    for v in [a, b] {
        let tags: Vec<u8> = tree.viewers[v]
            .got
            .iter()
            .filter(|(s, _, _)| *s == CAMERA[0])
            .map(|&(_, _, t)| t)
            .collect();
        assert_eq!(
            tags.len(),
            6,
            "viewer {v} got every frame, the lost one late"
        );
    }
}

#[test]
fn a_miss_at_the_relay_goes_upstream_and_the_answer_comes_back_down() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    for _ in 0..3 {
        tree.frame(false);
    }
    // Lost on the link, and the relay's own request lost too: the viewer's NACK for it
    // finds nothing in the relay's cache.
    let lost = tree.next_seq(CAMERA[2]);
    tree.drop_on_link = Some((1, CAMERA[2], lost));
    tree.cut_upstream = true;
    tree.frame(false);
    tree.frame(false);
    let cut = std::mem::take(&mut tree.held);
    assert!(!cut.is_empty(), "the relay asked upstream at once");
    assert_eq!(
        tree.link(0, RelayDirection::Downstream)
            .stats
            .nacks_received,
        0
    );
    // The viewer NACKs the hole in its stream: the relay misses it, and its loss
    // detection already requests it, so the viewer's NACK adds no request of its own.
    let hole = tree.hole(v);
    let ssrc = CAMERA[0];
    tree.cut_upstream = false;
    tree.viewer_rtcp(v, |b| {
        rtcp::write_nack(b, Ssrc(0x5555), ssrc, &[hole]).unwrap()
    });
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(
        up.stats.nacks_forwarded, 0,
        "coalesced with the relay's own request"
    );
    // The relay repeats its request a round trip later; the origin answers, and the
    // packet reaches the viewer.
    tree.advance(Duration::from_millis(150));
    let down = tree.link(0, RelayDirection::Downstream);
    assert!(down.stats.nacks_received >= 1);
    assert_eq!(down.stats.retransmitted, 1);
    assert!(
        tree.viewers[v]
            .got
            .iter()
            .any(|&(s, q, t)| s == CAMERA[0] && q == hole && t == 2),
        "the lost packet reached the viewer"
    );
}

#[test]
fn keyframe_requests_of_many_viewers_are_coalesced_at_each_level() {
    let mut tree = Tree::new(2);
    let mut viewers = Vec::new();
    for node in [1, 1, 1, 2, 2, 2] {
        viewers.push(tree.add_viewer(node));
    }
    tree.pump();
    tree.frame(true);
    for _ in 0..3 {
        tree.frame(false);
    }
    // Well after the subscriptions' own requests.
    tree.advance(Duration::from_secs(2));
    let plis_before = tree.presenter.plis.len();
    let received_at_origin = tree
        .link(0, RelayDirection::Downstream)
        .stats
        .keyframe_requests_received;
    let received_at_r1 = tree
        .link(1, RelayDirection::Downstream)
        .stats
        .keyframe_requests_received;
    // Every viewer asks for a keyframe of its camera stream at once.
    for &v in &viewers {
        tree.viewer_rtcp(v, |b| rtcp::write_pli(b, Ssrc(0x5555), CAMERA[0]).unwrap());
    }
    // The presenter answers the one request it gets.
    assert_eq!(tree.presenter.plis.len() - plis_before, 1);
    assert_eq!(tree.presenter.plis.last(), Some(&CAMERA[2]));
    tree.frame(true);
    tree.advance(Duration::from_millis(400));
    tree.frame(false);
    assert_eq!(
        tree.presenter.plis.len() - plis_before,
        1,
        "one PLI reached the presenter: {:?}",
        &tree.presenter.plis[plis_before..]
    );
    // r2 sent r1 one request for its three viewers; r1 sent the origin one for its three
    // viewers and r2.
    let r1_got = tree
        .link(1, RelayDirection::Downstream)
        .stats
        .keyframe_requests_received;
    assert_eq!(r1_got - received_at_r1, 1);
    let origin_got = tree
        .link(0, RelayDirection::Downstream)
        .stats
        .keyframe_requests_received;
    assert_eq!(origin_got - received_at_origin, 1);
    let coalesced_r1 = tree
        .link(1, RelayDirection::Upstream)
        .stats
        .keyframe_requests_coalesced;
    let coalesced_r2 = tree
        .link(2, RelayDirection::Upstream)
        .stats
        .keyframe_requests_coalesced;
    assert!(coalesced_r1 >= 3, "r1 coalesced {coalesced_r1}");
    assert!(coalesced_r2 >= 2, "r2 coalesced {coalesced_r2}");
}

#[test]
fn packets_from_strangers_or_with_wrong_keys_are_dropped_and_counted() {
    let mut tree = Tree::new(1);
    tree.pump();
    // A packet to the node from the origin's address, protected with some other key.
    let mut stranger = SrtpContext::new(&MasterKey::generate(PROFILE));
    let mut packet = vec![0u8; 12 + 20 + 32];
    packet[0] = 0x80;
    packet[1] = 96;
    packet[8..12].copy_from_slice(&CAMERA[0].0.to_be_bytes());
    let len = stranger.protect_rtp(&mut packet, 32).unwrap();
    packet.truncate(len);
    let (node_addr, origin_addr) = (tree.nodes[1].addr, tree.nodes[0].addr);
    let mut copy = packet.clone();
    tree.nodes[1]
        .core
        .handle_datagram(tree.now, node_addr, origin_addr, &mut copy);
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.stats.drops.get(DropReason::AuthenticationFailed), 1);
    // From an address that is no link's peer: unknown source.
    let before = tree.nodes[1]
        .core
        .unattributed_drops()
        .get(DropReason::UnknownSource);
    let mut copy = packet.clone();
    tree.nodes[1]
        .core
        .handle_datagram(tree.now, node_addr, addr(9, 9), &mut copy);
    assert_eq!(
        tree.nodes[1]
            .core
            .unattributed_drops()
            .get(DropReason::UnknownSource),
        before + 1
    );
    // A link packet delivered twice: the second is a replay.
    tree.captured.clear();
    tree.frame(true);
    let mut again = tree
        .captured
        .iter()
        .find(|d| !(200..=207).contains(&d[1]))
        .expect("media crossed the link")
        .clone();
    tree.nodes[1]
        .core
        .handle_datagram(tree.now, node_addr, origin_addr, &mut again);
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.stats.drops.get(DropReason::Replayed), 1);
}

#[test]
fn links_have_their_own_metrics() {
    let mut tree = Tree::new(1);
    tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    let mut text = String::new();
    tree.nodes[0].core.write_metrics(&mut text);
    assert!(text.contains("fanout_relay_links 1"));
    assert!(text.contains(
        "fanout_relay_link_packets_sent_total{meeting=\"w\",link=\"w/r1/down\",direction=\"downstream\",kind=\"rtp\"} 4"
    ));
    let mut text = String::new();
    tree.nodes[1].core.write_metrics(&mut text);
    assert!(text.contains(
        "fanout_relay_link_packets_received_total{meeting=\"w/r1\",link=\"w/r1/up\",direction=\"upstream\",kind=\"rtp\"} 4"
    ));
    assert!(text.contains(
        "fanout_relay_link_tracks{meeting=\"w/r1\",link=\"w/r1/up\",direction=\"upstream\"} 2"
    ));
}

#[test]
fn a_miss_the_relay_stopped_requesting_is_passed_up_when_a_viewer_asks() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    // A first loss on the link, repaired after 30 ms: that is the link's round trip
    // from now on, and the relay's retries come that often.
    tree.drop_on_link = Some((1, CAMERA[2], tree.next_seq(CAMERA[2])));
    tree.cut_upstream = true;
    tree.frame(false);
    tree.frame(false);
    tree.cut_upstream = false;
    tree.advance(Duration::from_millis(30));
    let origin_addr = tree.nodes[0].addr;
    for mut d in std::mem::take(&mut tree.held) {
        tree.deliver(1, origin_addr, &mut d);
    }
    tree.pump();
    assert_eq!(
        tree.link(0, RelayDirection::Downstream).stats.retransmitted,
        1
    );
    // A second loss while the relay cannot reach the origin: its requests are lost until
    // it gives up (ten tries), well before the origin's cache forgets the packet.
    tree.drop_on_link = Some((1, CAMERA[2], tree.next_seq(CAMERA[2])));
    tree.cut_upstream = true;
    tree.frame(false);
    tree.frame(false);
    for _ in 0..40 {
        tree.advance(Duration::from_millis(10));
    }
    tree.cut_upstream = false;
    tree.held.clear();
    let retransmitted = tree.link(0, RelayDirection::Downstream).stats.retransmitted;
    // The viewer asks for the hole in its stream: the relay misses it and no longer
    // requests it itself, so it passes the NACK up; the origin answers from its cache
    // and the packet comes down to the viewer.
    let hole = tree.hole(v);
    tree.viewer_rtcp(v, |b| {
        rtcp::write_nack(b, Ssrc(0x5555), CAMERA[0], &[hole]).unwrap()
    });
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(
        up.stats.nacks_forwarded, 1,
        "the viewer's miss went up the link"
    );
    let down = tree.link(0, RelayDirection::Downstream);
    assert_eq!(
        down.stats.retransmitted,
        retransmitted + 1,
        "answered by the origin"
    );
    assert!(
        tree.presenter.nacks.is_empty(),
        "the presenter was not asked"
    );
    assert!(
        tree.viewers[v]
            .got
            .iter()
            .any(|&(s, q, t)| s == CAMERA[0] && q == hole && t == 2),
        "the packet reached the viewer"
    );
}

#[test]
fn a_node_that_comes_up_after_its_parent_gets_the_tracks_at_once() {
    let mut tree = Tree::new(0);
    tree.add_relay_with(true);
    tree.pump();
    // The node's hello made the parent announce again: no waiting for the next round.
    assert_eq!(tree.link(1, RelayDirection::Upstream).tracks, 2);
}

#[test]
fn a_stage_of_many_publishers_crosses_one_link() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    // Twenty more publishers with a camera of three encodings and audio each: more
    // tracks than one announcement packet holds, more SSRCs than a participant's leg
    // may use.
    let mut publishers = Vec::new();
    for n in 0..20u32 {
        let key = MasterKey::generate(PROFILE);
        let name = ParticipantId(format!("panelist-{n}"));
        let address = SocketAddr::from(([198, 51, 100, 3], 7000 + n as u16));
        let origin = &mut tree.nodes[0];
        let meeting = origin.meeting.clone();
        origin.core.add_participant(&meeting, name.clone()).unwrap();
        let leg = origin
            .core
            .add_leg(
                &meeting,
                &name,
                LegConfig {
                    name: "srtp".into(),
                    security: LegSecurity::Sdes {
                        receive_key: key.clone(),
                        send_key: MasterKey::generate(PROFILE),
                    },
                    remote: Some(address),
                    remote_rtcp: None,
                    rtcp_mux: true,
                    local: Some(origin.addr),
                    local_rtcp: None,
                },
            )
            .unwrap();
        let base = 0x1000 + 16 * n;
        for (track, kind, codec, ssrcs) in [
            ("audio", TrackKind::Audio, Codec::Opaque, vec![Ssrc(base)]),
            (
                "camera",
                TrackKind::Video,
                Codec::Vp8,
                vec![Ssrc(base + 1), Ssrc(base + 2), Ssrc(base + 3)],
            ),
        ] {
            origin
                .core
                .add_track(
                    &meeting,
                    &name,
                    TrackConfig {
                        name: track.into(),
                        kind,
                        encodings: ssrcs,
                        leg,
                        clock_rate: None,
                        codec,
                        audio_level_extension: None,
                        stream_ids: None,
                    },
                )
                .unwrap();
        }
        tree.others.push(address);
        publishers.push((address, SrtpContext::new(&key), base));
    }
    tree.pump();
    assert_eq!(tree.link(1, RelayDirection::Upstream).tracks, 2 + 40);
    // Every panelist sends a keyframe on every encoding and a packet of audio: all of it
    // crosses the link, 80 SSRCs under one context.
    for (address, sender, base) in &mut publishers {
        for ssrc in *base..*base + 4 {
            let payload = if ssrc == *base {
                vec![0xAA; 80]
            } else {
                vp8(1, true, 2)
            };
            let mut packet = vec![0u8; 12 + payload.len() + 32];
            packet[0] = 0x80;
            packet[1] = 0x80 | 96;
            packet[2..4].copy_from_slice(&1u16.to_be_bytes());
            packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
            packet[12..12 + payload.len()].copy_from_slice(&payload);
            let len = sender.protect_rtp(&mut packet, 12 + payload.len()).unwrap();
            packet.truncate(len);
            let origin = &mut tree.nodes[0];
            origin
                .core
                .handle_datagram(tree.now, origin.addr, *address, &mut packet);
        }
        tree.pump();
    }
    let down = tree.link(0, RelayDirection::Downstream);
    assert_eq!(down.stats.rtp_out.packets, 80);
    assert_eq!(down.stats.drops.total(), 0);
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(up.stats.rtp_in.packets, 80);
    assert_eq!(up.stats.drops.total(), 0);
    // The viewer gets every panelist's top encoding and audio.
    assert_eq!(tree.viewers[v].got.len(), 40);
}

#[test]
fn a_rekeyed_link_keeps_the_nodes_tracks_and_viewers_playing() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    tree.frame(false);
    let subs = {
        let n = &tree.nodes[1];
        n.core.subscriptions_of(&n.meeting, &tree.viewers[v].name)
    };
    let before = tree.viewers[v].got.len();
    // Fresh keys for both ends, as when the control plane re-keys after a failover.
    let (down, up) = (MasterKey::generate(PROFILE), MasterKey::generate(PROFILE));
    let (origin_addr, node_addr) = (tree.nodes[0].addr, tree.nodes[1].addr);
    let meeting = tree.nodes[0].meeting.clone();
    tree.nodes[0]
        .core
        .update_relay_link(
            &meeting,
            RelayLinkConfig {
                id: "w/r1/down".into(),
                direction: RelayDirection::Downstream,
                local: origin_addr,
                remote: node_addr,
                send_key: down.clone(),
                receive_key: up.clone(),
            },
        )
        .unwrap();
    let meeting = tree.nodes[1].meeting.clone();
    tree.nodes[1]
        .core
        .update_relay_link(
            &meeting,
            RelayLinkConfig {
                id: "w/r1/up".into(),
                direction: RelayDirection::Upstream,
                local: node_addr,
                remote: origin_addr,
                send_key: up,
                receive_key: down,
            },
        )
        .unwrap();
    tree.frame(false);
    tree.frame(false);
    // Same subscriptions, no new keyframe needed: the next frames simply arrive.
    let n = &tree.nodes[1];
    assert_eq!(
        n.core.subscriptions_of(&n.meeting, &tree.viewers[v].name),
        subs
    );
    assert_eq!(tree.link(1, RelayDirection::Upstream).tracks, 2);
    assert_eq!(
        tree.viewers[v].got.len(),
        before + 4,
        "two frames of video and audio"
    );
    assert_eq!(
        tree.link(1, RelayDirection::Upstream).stats.drops.total(),
        0
    );
}

#[test]
fn a_three_level_tree_serves_every_viewer_its_layer_and_keeps_feedback_local() {
    // origin -> 2 ingress nodes -> 3 edge nodes each; 10 viewers on each ingress and 25
    // on each edge: 170 viewers, each limited to one of the three encodings.
    let mut tree = Tree::new(0);
    for _ in 0..2 {
        tree.add_relay_under(0, false);
        let at = tree.nodes.len() - 1;
        for _ in 0..3 {
            tree.add_relay_under(at, false);
        }
    }
    let mut viewers = Vec::new();
    for node in 1..tree.nodes.len() {
        let n = if node == 1 || node == 5 { 10 } else { 25 };
        for _ in 0..n {
            viewers.push(tree.add_viewer(node));
        }
    }
    tree.pump();
    assert_eq!(viewers.len(), 170);
    for &v in &viewers {
        let sub = tree.camera_subscription(v);
        let node = tree.viewers[v].node;
        tree.nodes[node]
            .core
            .set_max_layers(
                sub,
                Layers {
                    encoding: (v % 3) as u8,
                    ..Layers::ALL
                },
            )
            .unwrap();
    }
    tree.frame(true);
    for _ in 0..9 {
        tree.frame(false);
    }
    // Delivery with each viewer's own layer.
    for &v in &viewers {
        let video: Vec<u8> = tree.viewers[v]
            .got
            .iter()
            .filter(|(s, _, _)| *s == CAMERA[0])
            .map(|&(_, _, t)| t)
            .collect();
        assert_eq!(video.len(), 10, "viewer {v}");
        assert!(
            video.iter().all(|&t| t == (v % 3) as u8),
            "viewer {v}: {video:?}"
        );
    }
    // The origin encrypted each packet once per link, for two links.
    let down = tree.nodes[0].core.relay_links();
    assert_eq!(down.len(), 2);
    assert!(down.iter().all(|l| l.stats.rtp_out.packets == 40));

    // A packet lost between the origin and the first ingress: one request reaches the
    // origin for the whole subtree (4 nodes, 85 viewers), and it is repaired below.
    let lost = tree.next_seq(CAMERA[1]);
    tree.drop_on_link = Some((1, CAMERA[1], lost));
    tree.frame(false);
    tree.frame(false);
    tree.advance(Duration::from_millis(200));
    let links = tree.nodes[0].core.relay_links();
    let nacked: u64 = links.iter().map(|l| l.stats.nacks_received).sum();
    assert_eq!(nacked, 1, "the origin saw one request for one loss");
    assert!(
        tree.presenter.nacks.is_empty(),
        "nothing reached the presenter"
    );
    for &v in viewers.iter().filter(|&&v| v % 3 == 1) {
        let video = tree.viewers[v]
            .got
            .iter()
            .filter(|(s, _, _)| *s == CAMERA[0])
            .count();
        assert_eq!(video, 12, "viewer {v} got the lost frame too");
    }

    // Every viewer asks for a keyframe at once: the presenter gets at most one request
    // per encoding.
    tree.advance(Duration::from_secs(2));
    let before = tree.presenter.plis.len();
    for &v in &viewers {
        tree.viewer_rtcp(v, |b| rtcp::write_pli(b, Ssrc(0x5555), CAMERA[0]).unwrap());
    }
    tree.frame(true);
    tree.advance(Duration::from_millis(400));
    let plis = &tree.presenter.plis[before..];
    for ssrc in CAMERA {
        assert!(
            plis.iter().filter(|&&s| s == ssrc).count() <= 1,
            "170 viewers' requests for {ssrc:?} became at most one: {plis:?}"
        );
    }
}

/// A viewer's receiver report about the camera (the subscription keeps the track's SSRC).
fn camera_report(fraction_lost: u8, cumulative_lost: i32, jitter: u32) -> rtcp::ReportBlock {
    rtcp::ReportBlock {
        ssrc: CAMERA[0],
        fraction_lost,
        cumulative_lost,
        jitter,
        ..rtcp::ReportBlock::default()
    }
}

impl Tree {
    fn report(&mut self, viewer: usize, block: rtcp::ReportBlock) {
        let sender = Ssrc(0x5000 + viewer as u32);
        self.viewer_rtcp(viewer, |b| {
            rtcp::write_receiver_report(b, sender, &[block]).unwrap()
        });
    }

    /// The audience node `node` sees for the camera (relayed there as `host/camera`).
    fn camera_audience(&self, node: usize) -> AudienceSummary {
        let n = &self.nodes[node];
        let (publisher, name) = if node == 0 {
            (ParticipantId::from("host"), "camera".to_owned())
        } else {
            (
                ParticipantId(format!("{}/up", n.meeting)),
                "host/camera".to_owned(),
            )
        };
        let track = n.core.track_id(&n.meeting, &publisher, &name).unwrap();
        n.core.track_audience(track).unwrap()
    }
}

#[test]
fn the_origin_sees_the_reception_of_viewers_two_levels_down() {
    // origin -> ingress (node 1) -> edge (node 2); one viewer on the ingress, three on
    // the edge.
    let mut tree = Tree::new(2);
    let ingress_viewer = tree.add_viewer(1);
    let edge: Vec<usize> = (0..3).map(|_| tree.add_viewer(2)).collect();
    tree.pump();
    tree.frame(true);
    tree.frame(false);
    // What each reports: (fraction lost /256, cumulative lost, jitter at 90 kHz).
    let reports = [
        (edge[0], camera_report(0, 0, 900)),     // lossless, 10 ms
        (edge[1], camera_report(13, 20, 4500)),  // 5.1 %, 50 ms
        (edge[2], camera_report(64, 100, 1800)), // 25 %, 20 ms
        (ingress_viewer, camera_report(3, 2, 90)),
    ];
    let report_all = |tree: &mut Tree, which: &[usize]| {
        for &(v, block) in reports.iter().filter(|(v, _)| which.contains(v)) {
            tree.report(v, block);
        }
    };
    let everyone: Vec<usize> = reports.iter().map(|&(v, _)| v).collect();
    report_all(&mut tree, &everyone);
    // One second for the edge's summary to reach the ingress, one more for the origin.
    tree.advance(Duration::from_secs(1));
    tree.advance(Duration::from_secs(1));

    let edge_view = tree.camera_audience(2);
    assert_eq!(edge_view.receivers(), 3);
    let ingress_view = tree.camera_audience(1);
    assert_eq!(
        ingress_view.receivers(),
        4,
        "its own viewer and the edge's three"
    );
    let origin = tree.camera_audience(0);
    assert_eq!(origin, ingress_view, "the origin has no viewer of its own");
    assert_eq!(origin.receivers(), 4);
    // Buckets: no loss; ≤ 2 % (3/256); ≤ 10 % (13/256); > 20 % (64/256).
    assert_eq!(origin.loss_buckets, [1, 0, 1, 0, 1, 0, 1]);
    assert_eq!(origin.fraction_lost_sum, 13 + 64 + 3);
    assert_eq!(origin.worst_fraction_lost, 64);
    assert_eq!(origin.cumulative_lost_sum, 122);
    assert_eq!(origin.max_jitter_us, 50_000);
    assert!((origin.mean_fraction_lost() - 80.0 / 256.0 / 4.0).abs() < 1e-9);
    // The presenter still hears what the origin receives (nothing lost), not the
    // audience's losses.
    let camera_blocks: Vec<_> = tree
        .presenter
        .reports
        .iter()
        .filter(|b| b.ssrc == CAMERA[0])
        .collect();
    assert!(!camera_blocks.is_empty());
    assert!(camera_blocks
        .iter()
        .all(|b| b.fraction_lost == 0 && b.cumulative_lost == 0));

    // Nobody reported on the audio: no receivers, yet the entry crossed (empty).
    let audio = {
        let n = &tree.nodes[0];
        let t = n
            .core
            .track_id(&n.meeting, &ParticipantId::from("host"), "audio")
            .unwrap();
        n.core.track_audience(t).unwrap()
    };
    assert_eq!(audio, AudienceSummary::default());

    // The metrics of the origin.
    let mut text = String::new();
    tree.nodes[0].core.write_metrics(&mut text);
    let labels = r#"meeting="w",participant="host",track="camera",kind="video""#;
    for expected in [
        format!("fanout_audience_receivers{{{labels}}} 4"),
        format!("fanout_audience_receivers_by_loss{{{labels},le=\"0\"}} 1"),
        format!("fanout_audience_receivers_by_loss{{{labels},le=\"0.02\"}} 2"),
        format!("fanout_audience_receivers_by_loss{{{labels},le=\"0.1\"}} 3"),
        format!("fanout_audience_receivers_by_loss{{{labels},le=\"0.2\"}} 3"),
        format!("fanout_audience_receivers_by_loss{{{labels},le=\"+Inf\"}} 4"),
        format!("fanout_audience_worst_fraction_lost{{{labels}}} 0.25"),
        format!("fanout_audience_packets_lost{{{labels}}} 122"),
        format!("fanout_audience_max_jitter_seconds{{{labels}}} 0.05"),
    ] {
        assert!(text.contains(&expected), "{expected} in\n{text}");
    }

    // The worst viewer stops reporting; the others go on every second. Its report ages
    // out at the edge after 10 s, and the origin follows within two seconds.
    let still = [edge[0], edge[1], ingress_viewer];
    for _ in 0..8 {
        report_all(&mut tree, &still);
        tree.advance(Duration::from_secs(1));
    }
    assert_eq!(tree.camera_audience(0).receivers(), 4, "not stale yet");
    for _ in 0..4 {
        report_all(&mut tree, &still);
        tree.advance(Duration::from_secs(1));
    }
    let origin = tree.camera_audience(0);
    assert_eq!(origin.receivers(), 3);
    assert_eq!(origin.worst_fraction_lost, 13);
    assert_eq!(origin.max_jitter_us, 50_000);

    // A viewer that leaves is gone from its node at once, from the origin within two
    // summaries.
    let gone = tree.viewers[edge[1]].name.clone();
    let edge_meeting = tree.nodes[2].meeting.clone();
    tree.nodes[2]
        .core
        .remove_participant(&edge_meeting, &gone)
        .unwrap();
    assert_eq!(tree.camera_audience(2).receivers(), 1);
    report_all(&mut tree, &[edge[0], ingress_viewer]);
    tree.advance(Duration::from_secs(1));
    tree.advance(Duration::from_secs(1));
    let origin = tree.camera_audience(0);
    assert_eq!(origin.receivers(), 2);
    assert_eq!(origin.worst_fraction_lost, 3);
    assert_eq!(origin.max_jitter_us, 10_000);

    // The edge's link goes away at the ingress: its subtree leaves the ingress's
    // summary at once, and the origin's with the next one.
    let ingress_meeting = tree.nodes[1].meeting.clone();
    tree.nodes[1]
        .core
        .remove_relay_link(&ingress_meeting, "w/r2/down")
        .unwrap();
    assert_eq!(tree.camera_audience(1).receivers(), 1);
    report_all(&mut tree, &[ingress_viewer]);
    tree.advance(Duration::from_secs(1));
    assert_eq!(tree.camera_audience(0).receivers(), 1);
}

#[test]
fn a_silent_child_ages_out_and_malformed_summaries_are_dropped_and_counted() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    tree.report(v, camera_report(26, 5, 0));
    tree.advance(Duration::from_secs(1));
    assert_eq!(tree.camera_audience(0).receivers(), 1);

    // Node 1 keeps running, but what it sends the origin no longer arrives.
    tree.cut_upstream = true;
    for _ in 0..4 {
        tree.report(v, camera_report(26, 5, 0));
        tree.advance(Duration::from_secs(1));
    }
    assert_eq!(tree.camera_audience(0).receivers(), 1, "4 s: not stale yet");
    tree.advance(Duration::from_secs(1));
    assert_eq!(
        tree.camera_audience(0).receivers(),
        0,
        "5 s without a summary"
    );
    assert_eq!(
        tree.camera_audience(1).receivers(),
        1,
        "the node still knows"
    );

    // Summaries that are not well-formed change nothing and count as malformed.
    let origin = &mut tree.nodes[0].core;
    let meeting = MeetingId::from("w");
    let down = origin
        .leg_id(&meeting, &ParticipantId::from("w/r1/down"), RELAY_LEG_NAME)
        .unwrap();
    let mut one = AudienceSummary::default();
    one.loss_buckets[0] = 1;
    let mut buf = [0u8; 128];
    let len = audience::write_summaries(&mut buf, Ssrc(9), &[(CAMERA[0], one)]).unwrap();
    let malformed = |origin: &Forwarder| {
        origin
            .relay_links()
            .into_iter()
            .find(|l| l.id == "w/r1/down")
            .unwrap()
            .stats
            .drops
            .get(DropReason::Malformed)
    };
    let before = malformed(origin);
    let now = tree.now;
    let mut bad = buf[4..len].to_vec();
    bad[9] = 2; // two entries announced, one present
    origin.on_relay_rtcp(down, &RtcpPacket::App(&bad), now);
    let mut bad = buf[4..len].to_vec();
    bad[12 + 36..12 + 40].copy_from_slice(&1000u32.to_be_bytes()); // 1000/256 lost by one
    origin.on_relay_rtcp(down, &RtcpPacket::App(&bad), now);
    assert_eq!(malformed(origin), before + 2);
    let track = origin
        .track_id(&meeting, &ParticipantId::from("host"), "camera")
        .unwrap();
    assert_eq!(origin.track_audience(track).unwrap().receivers(), 0);
    // The well-formed one is taken.
    origin.on_relay_rtcp(down, &RtcpPacket::App(&buf[4..len]), now);
    assert_eq!(origin.track_audience(track).unwrap().receivers(), 1);
    assert_eq!(malformed(origin), before + 2);
}

#[test]
fn the_round_trip_to_an_edge_viewer_reaches_the_origin() {
    let mut tree = Tree::new(2);
    let v = tree.add_viewer(2);
    tree.pump();
    tree.frame(true);
    // The presenter's SR of the encoding the viewer takes (the top one) crosses both
    // links and reaches the viewer, rewritten to its subscription's SSRC.
    let info = rtcp::SenderInfo {
        ntp_timestamp: 0x0000_1234_5678_0000,
        rtp_timestamp: 2 * 3000,
        packet_count: 1,
        octet_count: 100,
    };
    let mut sr = vec![0u8; 128];
    let len = rtcp::write_sender_report(&mut sr, CAMERA[2], &info, &[]).unwrap();
    let len = tree.presenter.sender.protect_rtcp(&mut sr, len).unwrap();
    let origin_addr = tree.nodes[0].addr;
    let presenter = tree.presenter.addr;
    tree.nodes[0]
        .core
        .handle_datagram(tree.now, origin_addr, presenter, &mut sr[..len]);
    tree.pump();
    let lsr = tree.viewers[v]
        .camera_sr
        .expect("the SR reached the edge viewer");
    assert_eq!(lsr, 0x1234_5678);
    // The viewer answers 30 ms later, having held the SR for 10 ms: 20 ms round trip.
    tree.now += Duration::from_millis(30);
    let block = rtcp::ReportBlock {
        last_sr: lsr,
        delay_since_last_sr: 655, // 10 ms in 1/65536 s
        ..camera_report(0, 0, 0)
    };
    tree.report(v, block);
    tree.advance(Duration::from_secs(1));
    tree.advance(Duration::from_secs(1));
    let rtt = tree.camera_audience(0).max_round_trip_us;
    assert!((19_900..=20_100).contains(&rtt), "{rtt} µs");
    // A later report that echoes no SR keeps the round trip known.
    tree.report(v, camera_report(0, 0, 0));
    tree.advance(Duration::from_secs(1));
    tree.advance(Duration::from_secs(1));
    assert_eq!(tree.camera_audience(0).max_round_trip_us, rtt);
}

#[test]
fn a_viewer_nack_for_a_packet_the_relay_let_go_stays_at_the_relay() {
    let mut tree = Tree::new(1);
    let v = tree.add_viewer(1);
    tree.pump();
    tree.frame(true);
    tree.frame(false);
    tree.pump();
    // The viewer got the frames; two seconds later (past every cache's age) it asks
    // for one of them again, as a receiver whose retries lag far behind would.
    let old = tree.viewers[v]
        .got
        .iter()
        .find(|(s, _, _)| *s == CAMERA[0])
        .map(|&(_, q, _)| q)
        .expect("the viewer got camera packets");
    tree.advance(Duration::from_secs(2));
    tree.viewer_rtcp(v, |b| {
        rtcp::write_nack(b, Ssrc(0x5555), CAMERA[0], &[old]).unwrap()
    });
    tree.pump();
    let up = tree.link(1, RelayDirection::Upstream);
    assert_eq!(
        up.stats.nacks_forwarded, 0,
        "the relay had the packet: the origin cannot have it any longer either"
    );
    assert_eq!(
        tree.link(0, RelayDirection::Downstream)
            .stats
            .nacks_received,
        0
    );
    assert!(
        tree.presenter.nacks.is_empty(),
        "the presenter was not asked"
    );
}
