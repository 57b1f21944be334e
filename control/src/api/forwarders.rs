//! `fanout.control.v1.Forwarders`: registration with the enrolment credential, heartbeats
//! and the desired-state stream with the session token `Register` returns.
//!
//! A session token names the forwarder and its session (lease and registration revision)
//! and is signed with HMAC-SHA256 under the deployment's key, so any control instance can
//! check it without shared memory, and a forwarder cannot heartbeat another's session.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::pb::{self, forwarders_server::Forwarders};
use super::{bearer, convert, status, Secret};
use crate::domain::{ForwarderId, MeetingId, MeetingKind, ParticipantId, UnixMillis};
use crate::service::desired::{
    DesiredChange, DesiredLeg, DesiredLink, DesiredMeeting, DesiredStates, DesiredUpdate,
};
use crate::service::forwarders::{Capacity, ForwarderInfo, ForwarderRegistry, Load, Session};
use crate::service::meetings::{
    key_salt_len, BrowserTransport, Caller, IceCredentials, MeetingService,
    SUBSCRIBE_AUDIO_LEVEL_EXTENSION, SUBSCRIBE_PAYLOAD_TYPES,
};
use crate::store::LeaseId;

/// Signs and checks session tokens.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl SessionKey {
    /// Domain separation from join tokens made with the same deployment secret.
    const CONTEXT: &'static [u8] = b"fanout forwarder session v1\0";

    pub fn new(secret: &[u8]) -> Self {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), Self::CONTEXT);
        SessionKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn issue(&self, claims: &SessionClaims) -> String {
        // Serialising plain integers and a validated id cannot fail.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let tag = hmac::sign(&self.0, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    fn verify(&self, token: &str) -> Result<SessionClaims, Status> {
        let bad = || Status::unauthenticated("bad session token: register again");
        let (payload, tag) = token.split_once('.').ok_or_else(bad)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        hmac::verify(&self.0, &payload, &tag).map_err(|_| bad())?;
        serde_json::from_slice(&payload).map_err(|_| bad())
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    forwarder: ForwarderId,
    lease: i64,
    registration: i64,
    ttl_ms: u64,
    heartbeat_ms: u64,
}

impl SessionClaims {
    fn session(&self) -> Session {
        Session {
            lease: LeaseId(self.lease),
            registration: self.registration,
            ttl: Duration::from_millis(self.ttl_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
        }
    }
}

/// The Forwarders service.
#[derive(Debug, Clone)]
pub struct ForwardersApi {
    registry: Arc<ForwarderRegistry>,
    desired: DesiredStates,
    sessions: SessionKey,
    /// The credential `Register` needs (`None`: registration refused).
    enrolment: Option<Secret>,
    /// Where forwarders' reports about meetings (the active speaker) go.
    meetings: Arc<MeetingService>,
}

impl ForwardersApi {
    pub fn new(
        registry: Arc<ForwarderRegistry>,
        desired: DesiredStates,
        sessions: SessionKey,
        enrolment: Option<Secret>,
        meetings: Arc<MeetingService>,
    ) -> Self {
        ForwardersApi {
            registry,
            desired,
            sessions,
            enrolment,
            meetings,
        }
    }

    pub fn into_server(self) -> pb::forwarders_server::ForwardersServer<Self> {
        pb::forwarders_server::ForwardersServer::new(self)
    }

    /// The session of a Heartbeat, WatchDesiredState or ReportActiveSpeaker call, which
    /// must be `forwarder`'s.
    fn session<T>(&self, request: &Request<T>, forwarder: &str) -> Result<SessionClaims, Status> {
        let claims = self.sessions.verify(bearer(request)?)?;
        if claims.forwarder.as_str() != forwarder {
            return Err(Status::permission_denied(
                "the session token belongs to another forwarder",
            ));
        }
        Ok(claims)
    }
}

fn forwarder_id(text: &str) -> Result<ForwarderId, Status> {
    convert::id("forwarder_id", text, |s| ForwarderId::new(s))
}

fn port(field: &str, value: u32) -> Result<u16, Status> {
    u16::try_from(value).map_err(|_| Status::invalid_argument(format!("{field}: not a port")))
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<pb::DesiredStateUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Forwarders for ForwardersApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let credential = bearer(&request)?;
        if !self
            .enrolment
            .as_ref()
            .is_some_and(|e| e.matches(credential))
        {
            return Err(Status::unauthenticated(
                "bad forwarder enrolment credential",
            ));
        }
        let r = request.into_inner();
        let id = forwarder_id(&r.forwarder_id)?;
        let info = ForwarderInfo {
            id: id.clone(),
            region: r.region,
            public_ip: r.media_ip,
            port_range: (
                port("port_range_start", r.port_range_start)?,
                port("port_range_end", r.port_range_end)?,
            ),
            capacity: Capacity {
                max_legs: r.max_legs,
                max_packets_per_second: 0,
            },
            dtls_fingerprint: r.dtls_fingerprint,
        };
        let session = self.registry.register(info).await.map_err(status)?;
        let claims = SessionClaims {
            forwarder: id.clone(),
            lease: session.lease.0,
            registration: session.registration,
            ttl_ms: session.ttl.as_millis() as u64,
            heartbeat_ms: session.heartbeat_interval.as_millis() as u64,
        };
        tracing::info!(forwarder = %id, lease = %session.lease, "forwarder registered");
        Ok(Response::new(pb::RegisterResponse {
            session_token: self.sessions.issue(&claims),
            lease_ttl_ms: claims.ttl_ms,
            heartbeat_interval_ms: claims.heartbeat_ms,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let claims = self.session(&request, &request.get_ref().forwarder_id)?;
        let load = request.into_inner().load.unwrap_or_default();
        let load = Load {
            legs: load.legs,
            packets_in_per_second: load.packets_in_per_sec,
            packets_out_per_second: load.packets_out_per_sec,
            cpu: load.cpu_total,
            meetings: Default::default(),
        };
        self.registry
            .heartbeat(&claims.forwarder, &claims.session(), &load)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse { drain: false }))
    }

    type WatchDesiredStateStream = DesiredStream;

    async fn watch_desired_state(
        &self,
        request: Request<pb::WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        let claims = self.session(&request, &request.get_ref().forwarder_id)?;
        let updates = self.desired.watch(claims.forwarder);
        let stream = updates.map(|update| update.map_err(status).and_then(|u| update_to(&u)));
        Ok(Response::new(Box::pin(stream)))
    }

    // ----- ReportActiveSpeaker (kept apart from the desired-state conversion) -----

    async fn report_active_speaker(
        &self,
        request: Request<pb::ReportActiveSpeakerRequest>,
    ) -> Result<Response<pb::ReportActiveSpeakerResponse>, Status> {
        let claims = self.session(&request, &request.get_ref().forwarder_id)?;
        let r = request.into_inner();
        let meeting = convert::id("meeting_id", &r.meeting_id, |s| MeetingId::new(s))?;
        let speaker = convert::optional_id("participant_id", &r.participant_id, |s| {
            ParticipantId::new(s)
        })?;
        // Only the forwarder holding the meeting knows who speaks there: a report from
        // another (or from one the meeting moved away from) is refused.
        let placed_here = self
            .meetings
            .placement(&meeting)
            .await
            .map_err(status)?
            .is_some_and(|p| p.forwarder == claims.forwarder);
        if !placed_here {
            return Err(Status::permission_denied(
                "the meeting is not placed on this forwarder",
            ));
        }
        // Nobody speaks: the domain has no event for that, the last speaker stands.
        if let Some(speaker) = speaker {
            let now = UnixMillis::from_system_time(std::time::SystemTime::now());
            self.meetings
                .set_active_speaker(&Caller::Operator, &meeting, &speaker, now)
                .await
                .map_err(status)?;
        }
        Ok(Response::new(pb::ReportActiveSpeakerResponse {}))
    }
}

fn update_to(update: &DesiredUpdate) -> Result<pb::DesiredStateUpdate, Status> {
    use pb::desired_state_update::Update;
    Ok(match update {
        DesiredUpdate::Snapshot { revision, state } => {
            let mut out = pb::DesiredState::default();
            for meeting in state.meetings.values() {
                out.meetings.push(meeting_to(meeting));
                for leg in meeting.legs.values() {
                    out.legs.push(leg_to(leg)?);
                }
            }
            for link in state.links.values() {
                out.relay_links.push(link_to(link)?);
            }
            pb::DesiredStateUpdate {
                revision: *revision as u64,
                update: Some(Update::Snapshot(out)),
            }
        }
        DesiredUpdate::Changes { revision, changes } => {
            use pb::desired_state_change::Change;
            let mut out = Vec::with_capacity(changes.len());
            for change in changes {
                out.push(pb::DesiredStateChange {
                    change: Some(match change {
                        DesiredChange::MeetingUpserted(m) => Change::MeetingUpserted(meeting_to(m)),
                        DesiredChange::MeetingRemoved(id) => Change::MeetingRemoved(id.to_string()),
                        DesiredChange::LegUpserted(leg) => Change::LegUpserted(leg_to(leg)?),
                        DesiredChange::LegRemoved(m, p) => Change::LegRemoved(pb::LegRef {
                            meeting_id: m.clone(),
                            participant_id: p.to_string(),
                        }),
                        DesiredChange::LinkUpserted(link) => {
                            Change::RelayLinkUpserted(link_to(link)?)
                        }
                        DesiredChange::LinkRemoved(id) => Change::RelayLinkRemoved(id.clone()),
                    }),
                });
            }
            pb::DesiredStateUpdate {
                revision: *revision as u64,
                update: Some(Update::Changes(pb::DesiredStateChanges { changes: out })),
            }
        }
    })
}

fn meeting_to(m: &DesiredMeeting) -> pb::MeetingPlan {
    pb::MeetingPlan {
        meeting_id: m.id.to_string(),
        kind: match m.kind {
            MeetingKind::Meeting => pb::MeetingKind::Meeting,
            MeetingKind::Webinar => pb::MeetingKind::Webinar,
        }
        .into(),
        listen_address: m.listen_address.clone(),
        recording_id: m
            .recording
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Raw master key and salt from an `inline:` key of `profile`.
fn srtp_key(profile: &str, inline: &str) -> Result<pb::SrtpKey, Status> {
    let corrupt = || Status::internal("a stored SRTP key does not match its profile");
    let (key_len, salt_len) = key_salt_len(profile).ok_or_else(corrupt)?;
    let text = inline.strip_prefix("inline:").unwrap_or(inline);
    let bytes = STANDARD.decode(text).map_err(|_| corrupt())?;
    if bytes.len() != key_len + salt_len {
        return Err(corrupt());
    }
    Ok(pb::SrtpKey {
        master_key: bytes[..key_len].to_vec(),
        master_salt: bytes[key_len..].to_vec(),
    })
}

fn link_to(link: &DesiredLink) -> Result<pb::RelayLink, Status> {
    use pb::relay_link::Direction;
    Ok(pb::RelayLink {
        relay_id: link.id.clone(),
        meeting_id: link.meeting.to_string(),
        peer_forwarder_id: link.peer_forwarder.to_string(),
        peer_address: link.peer_address.clone(),
        direction: if link.upstream {
            Direction::Upstream
        } else {
            Direction::Downstream
        }
        .into(),
        srtp_profile: convert::profile_to(&link.profile).into(),
        send_key: Some(srtp_key(&link.profile, &link.send_key)?),
        receive_key: Some(srtp_key(&link.profile, &link.receive_key)?),
        local_meeting_id: link.local_meeting.clone(),
    })
}

fn leg_to(leg: &DesiredLeg) -> Result<pb::Leg, Status> {
    Ok(pb::Leg {
        meeting_id: leg.meeting.to_string(),
        participant_id: leg.participant.to_string(),
        srtp_profile: convert::profile_to(&leg.profile).into(),
        inbound_key: Some(srtp_key(&leg.profile, &leg.inbound_key)?),
        outbound_key: Some(srtp_key(&leg.profile, &leg.outbound_key)?),
        can_publish: leg.can_publish,
        breakout_id: leg
            .breakout
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        tracks: leg.tracks.iter().map(convert::track_to).collect(),
        webrtc: leg.browser.as_ref().map(browser_to),
        paused_tracks: leg
            .paused
            .iter()
            .map(|&kind| convert::track_kind_to(kind).into())
            .collect(),
    })
}

/// A browser's two connections as the forwarder needs them: the subscribe connection's
/// payload types are the fixed table its offers use.
fn browser_to(b: &BrowserTransport) -> pb::WebrtcTransport {
    let connection = |ice: &IceCredentials, publish: bool| pb::WebrtcConnection {
        ice_ufrag: ice.ufrag.clone(),
        ice_pwd: ice.pwd.clone(),
        remote_ice_ufrag: ice.remote_ufrag.clone().unwrap_or_default(),
        mid_extension_id: if publish { b.extensions.mid.into() } else { 0 },
        rid_extension_id: if publish { b.extensions.rid.into() } else { 0 },
        repaired_rid_extension_id: if publish {
            b.extensions.repaired_rid.into()
        } else {
            0
        },
        transport_cc_extension_id: if publish {
            b.extensions.transport_cc.into()
        } else {
            0
        },
        audio_level_extension_id: if publish {
            0
        } else {
            SUBSCRIBE_AUDIO_LEVEL_EXTENSION.into()
        },
        payload_types: if publish {
            Vec::new()
        } else {
            SUBSCRIBE_PAYLOAD_TYPES
                .iter()
                .map(|&(codec, pt)| pb::PayloadType {
                    codec: codec.to_owned(),
                    payload_type: pt.into(),
                })
                .collect()
        },
    };
    pb::WebrtcTransport {
        remote_fingerprint: b.remote_fingerprint.clone(),
        publish: Some(connection(&b.publish, true)),
        subscribe: Some(connection(&b.subscribe, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_verify_and_resist_tampering() {
        let key = SessionKey::new(b"deployment secret of 32 bytes...");
        let claims = SessionClaims {
            forwarder: ForwarderId::new("f1").unwrap(),
            lease: 42,
            registration: 7,
            ttl_ms: 3000,
            heartbeat_ms: 1000,
        };
        let token = key.issue(&claims);
        let back = key.verify(&token).unwrap();
        assert_eq!(
            (back.forwarder.as_str(), back.lease, back.registration),
            ("f1", 42, 7)
        );
        let other = SessionKey::new(b"another secret of 32 bytes......");
        assert_eq!(
            other.verify(&token).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut bytes = token.into_bytes();
        bytes[3] ^= 1;
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            key.verify(&tampered).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn inline_keys_split_into_key_and_salt() {
        let bytes: Vec<u8> = (0u8..28).collect();
        let inline = format!("inline:{}", STANDARD.encode(&bytes));
        let key = srtp_key("AEAD_AES_128_GCM", &inline).unwrap();
        assert_eq!(key.master_key, bytes[..16]);
        assert_eq!(key.master_salt, bytes[16..]);
        assert!(srtp_key("AES_CM_128_HMAC_SHA1_80", &inline).is_err());
    }

    #[test]
    fn a_browsers_publish_connection_carries_its_extension_ids() {
        let mut browser = BrowserTransport::new().unwrap();
        browser.remote_fingerprint = "sha-256 AB".into();
        browser.extensions = crate::service::meetings::StreamExtensionIds {
            mid: 4,
            rid: 10,
            repaired_rid: 11,
            transport_cc: 3,
        };
        let pb = browser_to(&browser);
        let publish = pb.publish.unwrap();
        assert_eq!(
            (
                publish.mid_extension_id,
                publish.rid_extension_id,
                publish.repaired_rid_extension_id,
                publish.transport_cc_extension_id
            ),
            (4, 10, 11, 3)
        );
        // The forwarder sends the subscribe connection media, not feedback about it.
        let subscribe = pb.subscribe.unwrap();
        assert_eq!(subscribe.transport_cc_extension_id, 0);
        assert_eq!(subscribe.mid_extension_id, 0);
    }
}
