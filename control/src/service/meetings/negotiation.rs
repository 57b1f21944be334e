//! The WebRTC negotiator (docs/webrtc.md): a browser's SDP turned into the participant's
//! transport record, from which the forwarder's desired state follows; and the subscribe
//! connection's offers, made again whenever what the participant should receive changes.
//!
//! Everything lives in the participant's transport record (`keys::transport`), updated by
//! compare-and-swap, so any control instance can serve a participant's next message and a
//! forwarder failover rebuilds the browser's legs from it.
//!
//! - A publish offer is answered with the forwarder's candidate and certificate; its
//!   m-sections name the participant's tracks (audio, camera, screen), whose SSRCs were
//!   assigned at join: the forwarder binds the browser's own SSRCs to them by MID/RID.
//! - The subscribe connection offers one m-section per track of the others in the
//!   participant's room. Its m-sections are never removed or reused: a track that goes
//!   leaves its m-section inactive (JSEP).
//! - An ICE restart is new credentials for one connection: the next publish answer or
//!   subscribe offer carries them, and the forwarder restarts that leg in place.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::debug;

use super::{
    encode, read_transport, BrowserTransport, IceCredentials, MeetingService, RtxPayloadType,
    StreamExtensionIds, SubscribeSlot, TrackAssignment, TrackKind, TransportRecord,
};
use crate::domain::{DomainError, Meeting, MeetingKind, ParticipantId, Presence};
use crate::service::forwarders::ForwarderRegistry;
use crate::service::keys;
use crate::service::webrtc::{
    Connection, NegotiationError, SubscribeOffer, WebrtcNegotiator, WebrtcPeer,
};
use crate::service::ServiceError;
use crate::store::{Compare, CompareOp, Op, Store, Txn, WatchEventKind};
use crate::webrtc::sdp;

use std::sync::Arc;

/// Attempts of one compare-and-swap before giving up (each re-reads the record).
const MAX_ATTEMPTS: usize = 16;

/// The negotiator on the store, for any number of control instances.
#[derive(Debug, Clone)]
pub struct BrowserNegotiator {
    meetings: Arc<MeetingService>,
    forwarders: Arc<ForwarderRegistry>,
}

/// What an SDP needs of the forwarder that serves the meeting.
struct ForwarderEnd {
    candidate: SocketAddr,
    fingerprint: sdp::Fingerprint,
}

impl BrowserNegotiator {
    pub fn new(meetings: Arc<MeetingService>, forwarders: Arc<ForwarderRegistry>) -> Self {
        BrowserNegotiator {
            meetings,
            forwarders,
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.meetings.store
    }

    /// The meeting, with `peer` in it and admitted.
    async fn admitted(&self, peer: &WebrtcPeer) -> Result<Meeting, NegotiationError> {
        let (meeting, _) = self.meetings.load(&peer.meeting).await?;
        if meeting.kind() == MeetingKind::Webinar {
            return Err(NegotiationError::Unavailable(
                "browsers join meetings; webinar attendees cannot use WebRTC yet",
            ));
        }
        match meeting.participant(&peer.participant) {
            Some(p) if p.presence == Presence::Admitted => Ok(meeting),
            Some(_) => Err(NegotiationError::Unavailable(
                "not admitted yet: media starts once a host admits you",
            )),
            None => Err(ServiceError::from(DomainError::ParticipantNotFound(
                peer.participant.clone(),
            ))
            .into()),
        }
    }

    /// The candidate and certificate of the forwarder the meeting is placed on.
    async fn forwarder(&self, peer: &WebrtcPeer) -> Result<ForwarderEnd, NegotiationError> {
        let unavailable = NegotiationError::Unavailable;
        let placement = self
            .meetings
            .placement(&peer.meeting)
            .await?
            .ok_or(unavailable("the meeting has no forwarder yet"))?;
        let info = self
            .forwarders
            .get(&placement.forwarder)
            .await?
            .ok_or(unavailable("the meeting's forwarder is gone"))?;
        let fingerprint = sdp::Fingerprint::parse(&info.dtls_fingerprint).ok_or(unavailable(
            "the meeting's forwarder has no DTLS certificate (it cannot serve browsers)",
        ))?;
        let candidate = placement
            .address
            .parse()
            .map_err(|_| unavailable("the forwarder's media address is not an IP address"))?;
        Ok(ForwarderEnd {
            candidate,
            fingerprint,
        })
    }

    /// Read the participant's transport record, change it with `change`, write it back
    /// if nothing else wrote in between (else start again). `change` returns what the
    /// caller gets, or an error that leaves the record as it was.
    async fn update<T>(
        &self,
        peer: &WebrtcPeer,
        mut change: impl FnMut(&mut TransportRecord) -> Result<T, NegotiationError>,
    ) -> Result<T, NegotiationError> {
        let key = keys::transport(&peer.meeting, &peer.participant);
        for _ in 0..MAX_ATTEMPTS {
            let kv = self.store().get(&key).await.map_err(ServiceError::from)?;
            let kv = kv.ok_or_else(|| {
                ServiceError::from(DomainError::ParticipantNotFound(peer.participant.clone()))
            })?;
            let mut record = read_transport(&kv.key, &kv.value)?;
            let before = record.clone();
            let out = change(&mut record)?;
            if record == before {
                return Ok(out);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([Op::put(key.clone(), encode(&key, &record)?)]);
            if self
                .store()
                .txn(txn)
                .await
                .map_err(ServiceError::from)?
                .succeeded
            {
                return Ok(out);
            }
        }
        Err(ServiceError::Contention(format!(
            "the transport record of `{}` kept changing",
            peer.participant
        ))
        .into())
    }

    /// The m-sections `peer` should receive now: every track of the others in its room,
    /// in a stable order, existing m-sections kept where they are.
    async fn slots(
        &self,
        peer: &WebrtcPeer,
        previous: &[SubscribeSlot],
    ) -> Result<Vec<SubscribeSlot>, NegotiationError> {
        let (meeting, _) = self.meetings.load(&peer.meeting).await?;
        let room = meeting
            .participant(&peer.participant)
            .map(|p| p.breakout.clone());
        let (records, _) = self
            .store()
            .range(&keys::transports(&peer.meeting))
            .await
            .map_err(ServiceError::from)?;
        let mut wanted: BTreeMap<(ParticipantId, TrackKind), (u32, String)> = BTreeMap::new();
        for kv in records {
            let record = read_transport(&kv.key, &kv.value)?;
            let Some(publisher) = meeting.participant(&record.participant) else {
                continue;
            };
            if record.participant == peer.participant
                || !publisher.can_publish()
                || Some(publisher.breakout.clone()) != room
            {
                continue;
            }
            for track in published(&record) {
                let Some(&ssrc) = track.ssrcs.first() else {
                    continue;
                };
                wanted.insert(
                    (record.participant.clone(), track.kind),
                    (ssrc, track.codec.clone()),
                );
            }
        }
        let mut slots: Vec<SubscribeSlot> = previous.to_vec();
        for slot in &mut slots {
            let key = (slot.publisher.clone(), slot.kind);
            match wanted.get(&key) {
                Some((ssrc, codec))
                    if !slot.stopped && slot.ssrc == *ssrc && slot.codec == *codec =>
                {
                    wanted.remove(&key);
                }
                _ => slot.stopped = true,
            }
        }
        for ((publisher, kind), (ssrc, codec)) in wanted {
            slots.push(SubscribeSlot {
                mid: slots.len().to_string(),
                publisher,
                kind,
                ssrc,
                codec,
                stopped: false,
            });
        }
        Ok(slots)
    }

    /// The subscribe offer of the current record.
    fn subscribe_sdp(
        &self,
        peer: &WebrtcPeer,
        browser: &BrowserTransport,
        end: &ForwarderEnd,
    ) -> Result<String, NegotiationError> {
        let ice = sdp_credentials(&browser.subscribe)?;
        let slots = browser
            .slots
            .iter()
            .map(|slot| {
                // A codec browsers are not offered (none so far) is left inactive too.
                let Some(codec) = subscribe_codec(&slot.codec).filter(|_| !slot.stopped) else {
                    let kind = match slot.kind {
                        TrackKind::Audio => sdp::MediaKind::Audio,
                        _ => sdp::MediaKind::Video,
                    };
                    return sdp::SubscribeSlot::Stopped {
                        mid: slot.mid.clone(),
                        kind,
                    };
                };
                sdp::SubscribeSlot::Track(sdp::SubscribeTrack {
                    mid: slot.mid.clone(),
                    codec,
                    ssrc: slot.ssrc,
                    cname: slot.publisher.to_string(),
                    // The join page names a remote participant's tile by its stream id.
                    stream_id: slot.publisher.to_string(),
                    track_id: format!("{}-{}", slot.publisher, kind_name(slot.kind)),
                })
            })
            .collect();
        sdp::offer_subscribe(&sdp::SubscribeParams {
            ice,
            fingerprint: end.fingerprint.clone(),
            candidate: end.candidate,
            ice_lite: true,
            session_id: session_id(&peer.participant),
            session_version: browser.revision,
            transport_cc: false,
            slots,
        })
        .map_err(|e| NegotiationError::InvalidSdp(e.to_string()))
    }

    /// Bring the subscribe m-sections up to date; the record after, if it has a
    /// subscribe connection.
    async fn refresh_slots(
        &self,
        peer: &WebrtcPeer,
        force: bool,
    ) -> Result<Option<BrowserTransport>, NegotiationError> {
        let previous = self
            .current(peer)
            .await?
            .and_then(|r| r.browser)
            .map(|b| b.slots)
            .unwrap_or_default();
        let slots = self.slots(peer, &previous).await?;
        debug!(participant = %peer.participant, ?slots, "subscribe m-sections");
        if slots.iter().all(|s| s.stopped) {
            // Nothing to receive: an offer without a live m-section has no BUNDLE group,
            // which browsers refuse (max-bundle). The last offer stays in force (the
            // forwarder sends nothing on it) until a track comes.
            return Ok(None);
        }
        self.update(peer, |record| {
            let browser = browser_of(record)?;
            if force || browser.slots != slots || browser.revision == 0 {
                browser.slots = slots.clone();
                browser.revision += 1;
            }
            Ok(Some(browser.clone()))
        })
        .await
    }

    async fn current(
        &self,
        peer: &WebrtcPeer,
    ) -> Result<Option<TransportRecord>, NegotiationError> {
        let key = keys::transport(&peer.meeting, &peer.participant);
        let kv = self.store().get(&key).await.map_err(ServiceError::from)?;
        kv.map(|kv| read_transport(&kv.key, &kv.value))
            .transpose()
            .map_err(Into::into)
    }
}

/// The tracks a participant's forwarder leg carries: a browser's, those its offer
/// negotiated (they have a MID); a plain participant's, every one it was assigned.
pub(crate) fn published(record: &TransportRecord) -> impl Iterator<Item = &TrackAssignment> {
    let browser = record.browser.is_some();
    record
        .tracks
        .iter()
        .filter(move |t| !browser || t.mid.is_some())
}

/// The record's browser transport, made with fresh credentials on first use.
fn browser_of(record: &mut TransportRecord) -> Result<&mut BrowserTransport, NegotiationError> {
    if record.browser.is_none() {
        record.browser = Some(BrowserTransport::new().map_err(ServiceError::from)?);
    }
    Ok(record.browser.as_mut().expect("set above"))
}

fn sdp_credentials(ice: &IceCredentials) -> Result<sdp::IceCredentials, NegotiationError> {
    sdp::IceCredentials::new(&ice.ufrag, &ice.pwd).ok_or_else(|| {
        NegotiationError::InvalidSdp("stored ICE credentials are not ice-chars".into())
    })
}

/// One browser certificate for both connections (the join page makes one).
fn note_fingerprint(browser: &mut BrowserTransport, offered: &str) -> Result<(), NegotiationError> {
    if browser.remote_fingerprint.is_empty() {
        browser.remote_fingerprint = offered.to_owned();
        return Ok(());
    }
    if browser.remote_fingerprint != offered {
        // A reloaded page has a new certificate: its connections start over.
        browser.remote_fingerprint = offered.to_owned();
        browser.revision += 1;
    }
    Ok(())
}

fn subscribe_codec(name: &str) -> Option<sdp::SubscribeCodec> {
    match name.to_ascii_lowercase().as_str() {
        "opus" => Some(sdp::SubscribeCodec::Opus),
        "vp8" => Some(sdp::SubscribeCodec::Vp8),
        "vp9" => Some(sdp::SubscribeCodec::Vp9),
        "h264" => Some(sdp::SubscribeCodec::H264),
        _ => None,
    }
}

fn kind_name(kind: TrackKind) -> &'static str {
    match kind {
        TrackKind::Audio => "audio",
        TrackKind::Camera => "camera",
        TrackKind::Screen => "screen",
    }
}

/// A stable SDP session id per participant (RFC 8866 §5.2 wants it unique; the
/// participant id already is).
fn session_id(participant: &ParticipantId) -> u64 {
    participant
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        >> 2
}

/// Simulcast RIDs lowest quality first, as the forwarder numbers encodings. A browser
/// lists them in the order the page gave them; well-known names are put in order.
fn rids_low_first(mut rids: Vec<String>) -> Vec<String> {
    let rank = |rid: &str| match rid {
        "q" | "l" | "low" | "lo" => Some(0),
        "h" | "m" | "mid" | "medium" => Some(1),
        "f" | "high" | "hi" | "full" => Some(2),
        _ => None,
    };
    if rids.iter().all(|r| rank(r).is_some()) {
        rids.sort_by_key(|r| rank(r));
    }
    rids
}

/// Put what an answered publish offer negotiated into the record's tracks.
fn apply_publish(
    record: &mut TransportRecord,
    negotiated: &sdp::NegotiatedPublish,
) -> Result<(), NegotiationError> {
    for track in &mut record.tracks {
        track.mid = None;
        track.rids.clear();
        track.rtx = None;
    }
    for n in negotiated.tracks.iter().filter(|t| t.receiving) {
        let kind = match n.kind {
            sdp::TrackKind::Audio => TrackKind::Audio,
            sdp::TrackKind::Camera => TrackKind::Camera,
            sdp::TrackKind::Screen => TrackKind::Screen,
        };
        let Some(track) = record
            .tracks
            .iter_mut()
            .find(|t| t.kind == kind && t.mid.is_none())
        else {
            continue; // a second track of a kind: not assigned, not forwarded
        };
        let rids = rids_low_first(n.rids.clone());
        if rids.len() > track.ssrcs.len() {
            return Err(NegotiationError::InvalidSdp(format!(
                "m-section {}: {} simulcast encodings, at most {}",
                n.mid,
                rids.len(),
                track.ssrcs.len()
            )));
        }
        track.mid = Some(n.mid.clone());
        track.codec = n.codec.name.clone();
        track.clock_rate = n.codec.clock_rate;
        track.audio_level_extension = n.extensions.audio_level;
        track.rids = rids;
        track.rtx = n.codec.rtx_payload_type.map(|payload_type| RtxPayloadType {
            payload_type,
            repairs: n.codec.payload_type,
        });
    }
    Ok(())
}

impl WebrtcNegotiator for BrowserNegotiator {
    fn publish_offer<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        sdp_text: &'a str,
    ) -> BoxFuture<'a, Result<String, NegotiationError>> {
        Box::pin(async move {
            let meeting = self.admitted(peer).await?;
            let p = meeting.participant(&peer.participant);
            if !p.is_some_and(|p| p.can_publish()) {
                return Err(NegotiationError::Unavailable(
                    "this participant may not publish",
                ));
            }
            let offer = sdp::PublishOffer::from_sdp(sdp_text)
                .map_err(|e| NegotiationError::InvalidSdp(e.to_string()))?;
            let end = self.forwarder(peer).await?;
            self.update(peer, |record| {
                let browser = browser_of(record)?;
                let restarted = browser
                    .publish
                    .remote_ufrag
                    .as_ref()
                    .is_some_and(|u| *u != offer.ice.ufrag);
                if restarted {
                    // ICE restart (RFC 8445 §9): both sides change credentials.
                    browser.publish = IceCredentials::generate().map_err(ServiceError::from)?;
                }
                browser.publish.remote_ufrag = Some(offer.ice.ufrag.clone());
                note_fingerprint(browser, offer.fingerprint.as_str())?;
                let params = sdp::AnswerParams {
                    ice: sdp_credentials(&browser.publish)?,
                    fingerprint: end.fingerprint.clone(),
                    candidate: end.candidate,
                    ice_lite: true,
                    session_id: session_id(&peer.participant),
                    session_version: 1,
                    kinds: BTreeMap::new(),
                };
                let (answer, negotiated) = sdp::answer_publish(&offer, &params);
                let ext = negotiated.tracks.iter().map(|t| t.extensions);
                browser.extensions = StreamExtensionIds {
                    mid: ext.clone().find_map(|e| e.mid).unwrap_or(0),
                    rid: ext.clone().find_map(|e| e.rid).unwrap_or(0),
                    repaired_rid: ext.clone().find_map(|e| e.repaired_rid).unwrap_or(0),
                    transport_cc: ext.clone().find_map(|e| e.transport_cc).unwrap_or(0),
                };
                apply_publish(record, &negotiated)?;
                debug!(participant = %peer.participant, tracks = ?record.tracks, "publish offer answered");
                Ok(answer)
            })
            .await
        })
    }

    fn subscribe_answer<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        revision: u64,
        sdp_text: &'a str,
    ) -> BoxFuture<'a, Result<(), NegotiationError>> {
        Box::pin(async move {
            let answer = sdp::SubscribeAnswer::from_sdp(sdp_text)
                .map_err(|e| NegotiationError::InvalidSdp(e.to_string()))?;
            self.update(peer, |record| {
                let browser = browser_of(record)?;
                if revision != browser.revision {
                    return Err(NegotiationError::StaleRevision {
                        got: revision,
                        current: browser.revision,
                    });
                }
                note_fingerprint(browser, answer.fingerprint.as_str())?;
                browser.subscribe.remote_ufrag = Some(answer.ice.ufrag.clone());
                browser.answered = revision;
                Ok(())
            })
            .await
        })
    }

    fn ice_restart<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
        connection: Connection,
    ) -> BoxFuture<'a, Result<(), NegotiationError>> {
        Box::pin(async move {
            self.admitted(peer).await?;
            self.update(peer, |record| {
                let browser = browser_of(record)?;
                let fresh = IceCredentials::generate().map_err(ServiceError::from)?;
                match connection {
                    // The browser's restart offer follows and is answered with these.
                    Connection::Publish => browser.publish = fresh,
                    // The next subscribe offer carries these.
                    Connection::Subscribe => {
                        browser.subscribe = fresh;
                        browser.revision += 1;
                    }
                }
                Ok(())
            })
            .await
        })
    }

    fn subscribe_offers<'a>(
        &'a self,
        peer: &'a WebrtcPeer,
    ) -> BoxFuture<
        'a,
        Result<BoxStream<'static, Result<SubscribeOffer, NegotiationError>>, NegotiationError>,
    > {
        Box::pin(async move {
            self.admitted(peer).await?;
            let this = self.clone();
            let peer = peer.clone();
            // Changes to the meeting (joins, leaves, rooms) and to any transport record
            // (tracks negotiated, credentials) may change what the participant receives.
            let store = Arc::clone(this.store());
            let meeting_changes = store
                .watch(&keys::meeting(&peer.meeting), None)
                .await
                .map_err(ServiceError::from)?;
            let transport_changes = store
                .watch(&keys::transports(&peer.meeting), None)
                .await
                .map_err(ServiceError::from)?;
            let changes = futures::stream::select(meeting_changes, transport_changes);
            let first = futures::stream::once(async { None });
            let wakes = first.chain(changes.map(Some));
            let stream = futures::stream::unfold(
                (this, peer, Box::pin(wakes), 0u64, true),
                |(this, peer, mut wakes, mut sent, mut first)| async move {
                    loop {
                        let wake = wakes.next().await?;
                        if let Some(Ok(event)) = &wake {
                            if event.kind == WatchEventKind::Delete
                                && event.kv.key == keys::transport(&peer.meeting, &peer.participant)
                            {
                                return None; // the participant left
                            }
                        }
                        // A new socket gets the current offer again: its page may have
                        // new peer connections.
                        let result = this.refresh_slots(&peer, first).await;
                        first = false;
                        let browser = match result {
                            Ok(Some(b)) => b,
                            Ok(None) => continue,
                            Err(e) => return Some((Err(e), (this, peer, wakes, sent, first))),
                        };
                        if browser.revision <= sent {
                            continue;
                        }
                        let offer = match this.forwarder(&peer).await {
                            Ok(end) => this.subscribe_sdp(&peer, &browser, &end),
                            Err(e) => Err(e),
                        };
                        sent = browser.revision;
                        let item = offer.map(|sdp| SubscribeOffer {
                            revision: browser.revision,
                            sdp,
                        });
                        return Some((item, (this, peer, wakes, sent, first)));
                    }
                },
            );
            let stream: BoxStream<'static, _> = Box::pin(stream);
            Ok(stream)
        })
    }
}
