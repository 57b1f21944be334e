//! The control plane as the load generator sees it: a client app's calls
//! (`JoinMeeting`, `LeaveMeeting`) and an operator's (`CreateMeeting`, `WatchMeeting`),
//! over the public gRPC API, `fanout.control.v1`. Nothing here knows the control plane's
//! insides: a run against a remote deployment and a `--local` one go through the same
//! calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fanout_control::api::pb;
use fanout_forwarder::srtp::{MasterKey, SrtpProfile};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// The metadata key a client names its region with (placement puts a meeting in its first
/// joiner's region, webinar viewers on a relay of theirs).
const REGION_HEADER: &str = "x-fanout-region";

/// A connection to one control plane: a client for each service, sharing one HTTP/2
/// channel.
#[derive(Debug, Clone)]
pub struct ControlClient {
    channel: Channel,
    operator: MetadataValue<Ascii>,
}

/// What a participant got from `JoinMeeting`, reduced to what the media side needs.
#[derive(Debug, Clone)]
pub struct Joined {
    pub participant_id: String,
    pub join_token: String,
    pub forwarder_id: String,
    pub forwarder: SocketAddr,
    pub profile: SrtpProfile,
    /// What the participant protects its packets with.
    pub send_key: MasterKey,
    /// What the forwarder protects the participant's packets with.
    pub receive_key: MasterKey,
    /// Assigned SSRCs: audio, camera encodings (lowest first), screen; empty for those who
    /// cannot publish.
    pub audio_ssrc: Option<u32>,
    pub audio_level_extension_id: u8,
    pub camera_ssrcs: Vec<u32>,
    pub screen_ssrc: Option<u32>,
    /// Whether the forwarder accepts media from the participant.
    pub can_publish: bool,
    /// How long the call took.
    pub latency: Duration,
}

impl Joined {
    /// The SSRC the participant's RTCP comes from: its audio SSRC, or any SSRC it was
    /// given (the forwarder learns a leg's address from the first packet that
    /// authenticates, whatever its SSRC).
    pub fn rtcp_ssrc(&self) -> u32 {
        self.audio_ssrc
            .or(self.camera_ssrcs.first().copied())
            .or(self.screen_ssrc)
            .unwrap_or(1)
    }
}

/// What a meeting's watcher reports to the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeetingNews {
    /// Media of `participant` (or of everyone, `None`) moved to another forwarder.
    ForwarderChanged {
        participant: Option<String>,
        forwarder_id: String,
        address: SocketAddr,
    },
    /// A participant became the room's active speaker.
    ActiveSpeaker { participant: String },
    /// The stream ended or failed; the watcher stops.
    Ended(String),
}

/// One meeting to create.
#[derive(Debug, Clone)]
pub struct NewMeeting {
    pub id: String,
    pub webinar: bool,
    pub title: String,
    pub passcode: Option<String>,
    pub host_key: Option<String>,
    pub max_participants: u32,
}

/// One join to make.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub meeting: String,
    pub display_name: String,
    pub region: String,
    pub passcode: Option<String>,
    pub host_key: Option<String>,
    pub profile: SrtpProfile,
    /// What the participant sends: it joins with the others muted, and starts a screen
    /// share after joining. The forwarder forwards only what is sent (nobody subscribes
    /// to a muted track), as with a real client.
    pub audio: bool,
    pub camera: bool,
    pub screen: bool,
}

impl ControlClient {
    /// Connect to `url` (`http://host:port`) as an operator holding `operator_token`.
    pub async fn connect(url: &str, operator_token: &str) -> Result<ControlClient> {
        let channel = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("bad control-plane URL {url}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {url}"))?;
        let operator = bearer(operator_token)?;
        Ok(ControlClient { channel, operator })
    }

    fn meetings(&self) -> pb::meetings_client::MeetingsClient<Channel> {
        pb::meetings_client::MeetingsClient::new(self.channel.clone())
    }

    fn as_operator<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.operator.clone());
        request
    }

    /// Create a meeting with a caller-chosen id; one that exists already (a retried run
    /// against the same deployment) is reused.
    pub async fn create_meeting(&self, meeting: &NewMeeting) -> Result<()> {
        let kind = if meeting.webinar {
            pb::MeetingKind::Webinar
        } else {
            pb::MeetingKind::Meeting
        };
        let request = self.as_operator(pb::CreateMeetingRequest {
            meeting_id: meeting.id.clone(),
            kind: kind.into(),
            title: meeting.title.clone(),
            passcode: meeting.passcode.clone(),
            host_key: meeting.host_key.clone(),
            limits: Some(pb::Limits {
                max_participants: meeting.max_participants,
                max_breakouts: 0,
            }),
            ..Default::default()
        });
        match self.meetings().create_meeting(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => Ok(()),
            Err(status) => Err(anyhow!(
                "CreateMeeting {}: {}: {}",
                meeting.id,
                status.code(),
                status.message()
            )),
        }
    }

    /// End a meeting (at the end of a run).
    pub async fn end_meeting(&self, meeting: &str) -> Result<()> {
        let request = self.as_operator(pb::EndMeetingRequest {
            meeting_id: meeting.to_owned(),
        });
        match self.meetings().end_meeting(request).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                Ok(())
            }
            Err(status) => bail!(
                "EndMeeting {meeting}: {}: {}",
                status.code(),
                status.message()
            ),
        }
    }

    /// Start recording a meeting; returns the recording's id (the one under way if it
    /// already records).
    pub async fn start_recording(&self, meeting: &str) -> Result<String> {
        let request = self.as_operator(pb::StartRecordingRequest {
            meeting_id: meeting.to_owned(),
        });
        let response = self
            .meetings()
            .start_recording(request)
            .await
            .map_err(|status| {
                anyhow!(
                    "StartRecording {meeting}: {}: {}",
                    status.code(),
                    status.message()
                )
            })?
            .into_inner();
        if response.recording_id.is_empty() {
            bail!("StartRecording {meeting}: the control plane answered no recording id");
        }
        Ok(response.recording_id)
    }

    /// Stop recording a meeting.
    pub async fn stop_recording(&self, meeting: &str) -> Result<()> {
        let request = self.as_operator(pb::StopRecordingRequest {
            meeting_id: meeting.to_owned(),
        });
        self.meetings()
            .stop_recording(request)
            .await
            .map_err(|status| {
                anyhow!(
                    "StopRecording {meeting}: {}: {}",
                    status.code(),
                    status.message()
                )
            })?;
        Ok(())
    }

    /// Join, as a client app would: measure the call, decode the keys and SSRCs.
    pub async fn join(&self, join: &JoinRequest) -> Result<Joined> {
        let mut request = Request::new(pb::JoinMeetingRequest {
            meeting_id: join.meeting.clone(),
            display_name: join.display_name.clone(),
            passcode: join.passcode.clone(),
            host_key: join.host_key.clone(),
            srtp_profiles: vec![profile_to_pb(join.profile).into()],
            audio_muted: !join.audio,
            video_muted: !join.camera,
        });
        request.metadata_mut().insert(
            REGION_HEADER,
            MetadataValue::try_from(join.region.as_str())
                .with_context(|| format!("region {:?} is not a header value", join.region))?,
        );
        let started = Instant::now();
        let response = self
            .meetings()
            .join_meeting(request)
            .await
            .map_err(|status| {
                anyhow!(
                    "JoinMeeting {}: {}: {}",
                    join.meeting,
                    status.code(),
                    status.message()
                )
            })?
            .into_inner();
        let latency = started.elapsed();
        let joined = joined_from_pb(response, latency)?;
        if join.screen {
            self.start_screen_share(&join.meeting, &joined.join_token)
                .await?;
        }
        Ok(joined)
    }

    /// Share the screen with the participant's own token (one share per room).
    async fn start_screen_share(&self, meeting: &str, join_token: &str) -> Result<()> {
        let mut request = Request::new(pb::StartScreenShareRequest {
            meeting_id: meeting.to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", bearer(join_token)?);
        self.meetings()
            .start_screen_share(request)
            .await
            .map_err(|status| {
                anyhow!(
                    "StartScreenShare {meeting}: {}: {}",
                    status.code(),
                    status.message()
                )
            })?;
        Ok(())
    }

    /// Leave with the participant's own token.
    pub async fn leave(&self, meeting: &str, join_token: &str) -> Result<()> {
        let mut request = Request::new(pb::LeaveMeetingRequest {
            meeting_id: meeting.to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", bearer(join_token)?);
        match self.meetings().leave_meeting(request).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                Ok(())
            }
            Err(status) => bail!(
                "LeaveMeeting {meeting}: {}: {}",
                status.code(),
                status.message()
            ),
        }
    }

    /// Watch a meeting as an operator and pass on what the media side must act on. Runs
    /// until the stream ends or `news` is dropped.
    pub async fn watch(
        &self,
        meeting: String,
        news: tokio::sync::mpsc::UnboundedSender<(String, MeetingNews)>,
    ) {
        let request = self.as_operator(pb::WatchMeetingRequest {
            meeting_id: meeting.clone(),
            after_sequence: None,
        });
        let mut stream = match self.meetings().watch_meeting(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = news.send((meeting, MeetingNews::Ended(status.to_string())));
                return;
            }
        };
        loop {
            let update = match stream.message().await {
                Ok(Some(update)) => update,
                Ok(None) => {
                    let _ = news.send((meeting, MeetingNews::Ended("stream ended".into())));
                    return;
                }
                Err(status) => {
                    let _ = news.send((meeting, MeetingNews::Ended(status.to_string())));
                    return;
                }
            };
            let item = match update.update {
                Some(pb::meeting_update::Update::ForwarderChanged(changed)) => {
                    match changed.forwarder_address.parse() {
                        Ok(address) => MeetingNews::ForwarderChanged {
                            participant: Some(changed.participant_id).filter(|id| !id.is_empty()),
                            forwarder_id: changed.forwarder_id,
                            address,
                        },
                        Err(_) => continue,
                    }
                }
                Some(pb::meeting_update::Update::ActiveSpeaker(speaker)) => {
                    MeetingNews::ActiveSpeaker {
                        participant: speaker.participant_id,
                    }
                }
                Some(pb::meeting_update::Update::MeetingEnded(_)) => {
                    MeetingNews::Ended("meeting ended".into())
                }
                _ => continue,
            };
            if news.send((meeting.clone(), item)).is_err() {
                return;
            }
        }
    }
}

fn bearer(credential: &str) -> Result<MetadataValue<Ascii>> {
    MetadataValue::try_from(format!("Bearer {credential}"))
        .map_err(|_| anyhow!("a credential must be printable ASCII"))
}

pub fn profile_to_pb(profile: SrtpProfile) -> pb::SrtpProfile {
    match profile {
        SrtpProfile::AesCm128HmacSha1_80 => pb::SrtpProfile::AesCm128HmacSha180,
        SrtpProfile::AesCm128HmacSha1_32 => pb::SrtpProfile::AesCm128HmacSha132,
        SrtpProfile::AeadAes128Gcm => pb::SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => pb::SrtpProfile::AeadAes256Gcm,
    }
}

fn profile_from_pb(profile: i32) -> Result<SrtpProfile> {
    Ok(match pb::SrtpProfile::try_from(profile) {
        Ok(pb::SrtpProfile::AesCm128HmacSha180) => SrtpProfile::AesCm128HmacSha1_80,
        Ok(pb::SrtpProfile::AesCm128HmacSha132) => SrtpProfile::AesCm128HmacSha1_32,
        Ok(pb::SrtpProfile::AeadAes128Gcm) => SrtpProfile::AeadAes128Gcm,
        Ok(pb::SrtpProfile::AeadAes256Gcm) => SrtpProfile::AeadAes256Gcm,
        _ => bail!("the control plane chose an unknown SRTP profile ({profile})"),
    })
}

fn joined_from_pb(response: pb::JoinMeetingResponse, latency: Duration) -> Result<Joined> {
    let profile = profile_from_pb(response.srtp_profile)?;
    let key = |inline: &str, what: &str| {
        MasterKey::from_inline(profile, inline)
            .map_err(|e| anyhow!("the control plane sent a bad {what}: {e}"))
    };
    let forwarder: SocketAddr = response.forwarder_address.parse().with_context(|| {
        format!(
            "the forwarder address {:?} is not host:port",
            response.forwarder_address
        )
    })?;
    let track = |kind: pb::TrackKind| response.tracks.iter().find(|t| t.kind == kind as i32);
    let audio = track(pb::TrackKind::Audio);
    let can_publish = response
        .meeting
        .as_ref()
        .and_then(|m| {
            m.participants
                .iter()
                .find(|p| p.participant_id == response.participant_id)
        })
        .map_or(!response.tracks.is_empty(), |p| p.can_publish);
    Ok(Joined {
        send_key: key(&response.send_key, "send key")?,
        receive_key: key(&response.receive_key, "receive key")?,
        audio_ssrc: audio.and_then(|t| t.ssrcs.first().copied()),
        audio_level_extension_id: audio.map_or(0, |t| t.audio_level_extension_id as u8),
        camera_ssrcs: track(pb::TrackKind::Camera).map_or_else(Vec::new, |t| t.ssrcs.clone()),
        screen_ssrc: track(pb::TrackKind::Screen).and_then(|t| t.ssrcs.first().copied()),
        can_publish,
        participant_id: response.participant_id,
        join_token: response.join_token,
        forwarder_id: response.forwarder_id,
        forwarder,
        profile,
        latency,
    })
}
