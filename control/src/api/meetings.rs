//! `fanout.control.v1.Meetings`: thin methods over [`MeetingService`]. Each converts its
//! request, authenticates the caller, calls one use case, and converts the answer.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{self, id, optional_id};
use super::pb::{self, meetings_server::Meetings};
use super::{grpc_caller, now, operator_only, status, Secret};
use crate::domain::{
    BreakoutId, Limits, MeetingId, MeetingSpec, MuteChange, ParticipantId, Passcode,
};
use crate::service::meetings::{Caller, JoinInput, MeetingService, MeetingUpdate, MeetingView};

/// Most meetings one `ListMeetings` page returns.
const MAX_PAGE: usize = 500;

/// The Meetings service.
#[derive(Debug, Clone)]
pub struct MeetingsApi {
    service: Arc<MeetingService>,
    /// The deployment's operator credential (`None`: no operator calls accepted).
    operator: Option<Secret>,
}

impl MeetingsApi {
    pub fn new(service: Arc<MeetingService>, operator: Option<Secret>) -> Self {
        MeetingsApi { service, operator }
    }

    pub fn into_server(self) -> pb::meetings_server::MeetingsServer<Self> {
        pb::meetings_server::MeetingsServer::new(self)
    }

    /// The caller of a request: the operator, or a participant whose join token checks out.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        grpc_caller(self.operator.as_ref(), &self.service, request)
    }

    /// A participant as it is now on the meeting's stage (after a change the call made).
    async fn participant(
        &self,
        id: &MeetingId,
        target: &ParticipantId,
    ) -> Result<Option<pb::Participant>, Status> {
        let view = self.service.get(id).await.map_err(status)?;
        Ok(view
            .meeting
            .participant(target)
            .map(convert::participant_to))
    }

    fn operator<T>(&self, request: &Request<T>) -> Result<(), Status> {
        operator_only(
            self.caller(request)?,
            "this call needs the operator credential",
        )
    }
}

fn meeting_id(text: &str) -> Result<MeetingId, Status> {
    id("meeting_id", text, |s| MeetingId::new(s))
}

fn participant_id(text: &str) -> Result<ParticipantId, Status> {
    id("participant_id", text, |s| ParticipantId::new(s))
}

/// The participant a call names, or the caller themself when it names none.
fn target_or_self(caller: &Caller, text: &str) -> Result<ParticipantId, Status> {
    match (
        optional_id("participant_id", text, |s| ParticipantId::new(s))?,
        caller,
    ) {
        (Some(p), _) => Ok(p),
        (None, Caller::Participant(claims)) => Ok(claims.participant.clone()),
        (None, Caller::Operator) => Err(Status::invalid_argument(
            "participant_id: required for the operator",
        )),
    }
}

fn passcode(field: &str, text: Option<String>) -> Result<Option<Passcode>, Status> {
    text.map(|t| Passcode::new(t).map_err(|e| Status::invalid_argument(format!("{field}: {e}"))))
        .transpose()
}

/// A meeting as the caller may see it: the stage, plus the caller's own audience record.
fn view_to(view: &MeetingView) -> pb::Meeting {
    convert::meeting_to(
        &view.meeting,
        view.meeting
            .participants()
            .values()
            .chain(view.attendee.as_ref()),
    )
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::MeetingUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Meetings for MeetingsApi {
    async fn create_meeting(
        &self,
        request: Request<pb::CreateMeetingRequest>,
    ) -> Result<Response<pb::CreateMeetingResponse>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let id = optional_id("meeting_id", &r.meeting_id, |s| MeetingId::new(s))?;
        let kind = convert::kind_from(r.kind)?;
        let hash = |field: &str, text: Option<String>| {
            let service = self.service.clone();
            let field = field.to_owned();
            async move {
                match passcode(&field, text)? {
                    Some(p) => service.hash_passcode(p).await.map(Some).map_err(status),
                    None => Ok(None),
                }
            }
        };
        let spec = MeetingSpec {
            kind,
            title: r.title,
            schedule: r.schedule.as_ref().map(convert::schedule_from),
            passcode: hash("passcode", r.passcode).await?,
            host_key: hash("host_key", r.host_key).await?,
            waiting_room: r.waiting_room,
            limits: r.limits.as_ref().map(convert::limits_from).filter(|l| {
                // An all-zero message is "not given" in proto3: the kind's defaults.
                *l != Limits {
                    max_participants: 0,
                    max_breakouts: 0,
                }
            }),
        };
        let meeting = self.service.create(id, spec, now()).await.map_err(status)?;
        Ok(Response::new(pb::CreateMeetingResponse {
            meeting: Some(convert::meeting_to(
                &meeting,
                meeting.participants().values(),
            )),
        }))
    }

    async fn get_meeting(
        &self,
        request: Request<pb::GetMeetingRequest>,
    ) -> Result<Response<pb::GetMeetingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        if let Caller::Participant(claims) = &caller {
            if claims.meeting != id {
                return Err(Status::unauthenticated(
                    "the join token is for another meeting",
                ));
            }
        }
        let view = self.service.get(&id).await.map_err(status)?;
        Ok(Response::new(pb::GetMeetingResponse {
            meeting: Some(view_to(&view)),
        }))
    }

    async fn list_meetings(
        &self,
        request: Request<pb::ListMeetingsRequest>,
    ) -> Result<Response<pb::ListMeetingsResponse>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let after = optional_id("page_token", &r.page_token, |s| MeetingId::new(s))?;
        let size = match r.page_size {
            0 => 100,
            n => (n as usize).min(MAX_PAGE),
        };
        // One more than the page, to know whether another page follows.
        let mut views = self
            .service
            .list(after.as_ref(), size + 1)
            .await
            .map_err(status)?;
        let more = views.len() > size;
        views.truncate(size);
        let next_page_token = match (more, views.last()) {
            (true, Some(last)) => last.meeting.id().to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMeetingsResponse {
            meetings: views
                .iter()
                .filter(|v| r.include_ended || v.meeting.is_open())
                .map(view_to)
                .collect(),
            next_page_token,
        }))
    }

    async fn end_meeting(
        &self,
        request: Request<pb::EndMeetingRequest>,
    ) -> Result<Response<pb::EndMeetingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        self.service
            .end(&caller, &id, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EndMeetingResponse {}))
    }

    async fn join_meeting(
        &self,
        request: Request<pb::JoinMeetingRequest>,
    ) -> Result<Response<pb::JoinMeetingResponse>, Status> {
        let region = request
            .metadata()
            .get("x-fanout-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let r = request.into_inner();
        let id = meeting_id(&r.meeting_id)?;
        let mut profiles = Vec::with_capacity(r.srtp_profiles.len());
        for p in &r.srtp_profiles {
            profiles.push(convert::profile_from(*p)?.to_owned());
        }
        let input = JoinInput {
            display_name: r.display_name,
            passcode: passcode("passcode", r.passcode)?,
            host_key: passcode("host_key", r.host_key)?,
            region,
            audio_muted: r.audio_muted,
            video_muted: r.video_muted,
            srtp_profiles: profiles,
            browser: false,
        };
        let joined = self.service.join(&id, input, now()).await.map_err(status)?;
        Ok(Response::new(pb::JoinMeetingResponse {
            participant_id: joined.participant.to_string(),
            join_token: joined.token,
            join_token_expires_at_unix_ms: joined.expires_at.0,
            forwarder_address: joined.placement.address.clone(),
            forwarder_id: joined.placement.forwarder.to_string(),
            srtp_profile: convert::profile_to(&joined.srtp.profile).into(),
            send_key: joined.srtp.send_key.clone(),
            receive_key: joined.srtp.receive_key.clone(),
            role: convert::role_to(joined.role).into(),
            presence: convert::presence_to(joined.presence).into(),
            meeting: Some(view_to(&joined.view)),
            tracks: joined.tracks.iter().map(convert::track_to).collect(),
        }))
    }

    async fn leave_meeting(
        &self,
        request: Request<pb::LeaveMeetingRequest>,
    ) -> Result<Response<pb::LeaveMeetingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        match &caller {
            Caller::Participant(claims) if claims.meeting == id => {}
            Caller::Participant(_) => {
                return Err(Status::unauthenticated(
                    "the join token is for another meeting",
                ))
            }
            Caller::Operator => {
                return Err(Status::invalid_argument(
                    "LeaveMeeting is a participant's call (use EndMeeting)",
                ))
            }
        }
        self.service.leave(&caller, now()).await.map_err(status)?;
        Ok(Response::new(pb::LeaveMeetingResponse {}))
    }

    async fn set_mute(
        &self,
        request: Request<pb::SetMuteRequest>,
    ) -> Result<Response<pb::SetMuteResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let id = meeting_id(&r.meeting_id)?;
        let target = target_or_self(&caller, &r.participant_id)?;
        let change = MuteChange {
            audio: r.audio_muted,
            video: r.video_muted,
        };
        self.service
            .set_mute(&caller, &id, &target, change, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetMuteResponse {
            participant: self.participant(&id, &target).await?,
        }))
    }

    async fn start_screen_share(
        &self,
        request: Request<pb::StartScreenShareRequest>,
    ) -> Result<Response<pb::StartScreenShareResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        self.service
            .start_screen_share(&caller, &id, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartScreenShareResponse {}))
    }

    async fn stop_screen_share(
        &self,
        request: Request<pb::StopScreenShareRequest>,
    ) -> Result<Response<pb::StopScreenShareResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let id = meeting_id(&r.meeting_id)?;
        let target = target_or_self(&caller, &r.participant_id)?;
        self.service
            .stop_screen_share(&caller, &id, &target, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StopScreenShareResponse {}))
    }

    async fn admit_participant(
        &self,
        request: Request<pb::AdmitParticipantRequest>,
    ) -> Result<Response<pb::AdmitParticipantResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let (id, target) = (
            meeting_id(&r.meeting_id)?,
            participant_id(&r.participant_id)?,
        );
        self.service
            .admit(&caller, &id, &target, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AdmitParticipantResponse {
            participant: self.participant(&id, &target).await?,
        }))
    }

    async fn deny_participant(
        &self,
        request: Request<pb::DenyParticipantRequest>,
    ) -> Result<Response<pb::DenyParticipantResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let (id, target) = (
            meeting_id(&r.meeting_id)?,
            participant_id(&r.participant_id)?,
        );
        self.service
            .deny(&caller, &id, &target, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DenyParticipantResponse {}))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::SetRoleResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let (id, target) = (
            meeting_id(&r.meeting_id)?,
            participant_id(&r.participant_id)?,
        );
        let role = convert::role_from(r.role)?;
        self.service
            .set_role(&caller, &id, &target, role, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetRoleResponse {
            participant: self.participant(&id, &target).await?,
        }))
    }

    async fn create_breakouts(
        &self,
        request: Request<pb::CreateBreakoutsRequest>,
    ) -> Result<Response<pb::CreateBreakoutsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let id = meeting_id(&r.meeting_id)?;
        let created = self
            .service
            .create_breakouts(&caller, &id, r.names, now())
            .await
            .map_err(status)?;
        let view = self.service.get(&id).await.map_err(status)?;
        Ok(Response::new(pb::CreateBreakoutsResponse {
            breakouts: created
                .iter()
                .filter_map(|b| {
                    view.meeting
                        .breakouts()
                        .get(b)
                        .map(|room| convert::breakout_to(b, room))
                })
                .collect(),
        }))
    }

    async fn move_to_breakout(
        &self,
        request: Request<pb::MoveToBreakoutRequest>,
    ) -> Result<Response<pb::MoveToBreakoutResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let (id, target) = (
            meeting_id(&r.meeting_id)?,
            participant_id(&r.participant_id)?,
        );
        let to = optional_id("breakout_id", &r.breakout_id, |s| BreakoutId::new(s))?;
        self.service
            .move_to_breakout(&caller, &id, &target, to, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MoveToBreakoutResponse {}))
    }

    async fn close_breakouts(
        &self,
        request: Request<pb::CloseBreakoutsRequest>,
    ) -> Result<Response<pb::CloseBreakoutsResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        self.service
            .close_breakouts(&caller, &id, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CloseBreakoutsResponse {}))
    }

    async fn start_recording(
        &self,
        request: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::StartRecordingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        let recording = self
            .service
            .set_recording(&caller, &id, true, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartRecordingResponse {
            recording_id: recording.map(|r| r.to_string()).unwrap_or_default(),
        }))
    }

    async fn stop_recording(
        &self,
        request: Request<pb::StopRecordingRequest>,
    ) -> Result<Response<pb::StopRecordingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = meeting_id(&request.get_ref().meeting_id)?;
        self.service
            .set_recording(&caller, &id, false, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StopRecordingResponse {}))
    }

    type WatchMeetingStream = UpdateStream;

    async fn watch_meeting(
        &self,
        request: Request<pb::WatchMeetingRequest>,
    ) -> Result<Response<Self::WatchMeetingStream>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let id = meeting_id(&r.meeting_id)?;
        let after = r
            .after_sequence
            .map(|s| {
                i64::try_from(s).map_err(|_| Status::invalid_argument("after_sequence: too large"))
            })
            .transpose()?;
        let updates = self
            .service
            .watch(&caller, &id, after)
            .await
            .map_err(status)?;
        let stream = updates.map(|update| {
            let update = update.map_err(status)?;
            let at_unix_ms = now().0;
            Ok(match update {
                MeetingUpdate::Snapshot { revision, view } => pb::MeetingUpdate {
                    sequence: revision as u64,
                    at_unix_ms,
                    update: Some(pb::meeting_update::Update::Snapshot(view_to(&view))),
                },
                MeetingUpdate::Event { revision, event } => pb::MeetingUpdate {
                    sequence: revision as u64,
                    at_unix_ms,
                    update: Some(convert::event_to(&event)),
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
