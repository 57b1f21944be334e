//! `fanout.control.v1.Recordings`: thin methods over [`RecordingService`]. Reads (list,
//! get, download) take the operator credential or a host's join token; the stitch
//! workers' calls (claim, report, complete) take the operator credential only.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::id;
use super::pb::{self, recordings_server::Recordings};
use super::{grpc_caller, now, operator_only, status, Secret};
use crate::domain::{MeetingId, RecordingId};
use crate::service::meetings::{Caller, MeetingService};
use crate::service::recordings::{
    Output, RecordingRecord, RecordingService, RecordingState, StitchResult,
};

/// The Recordings service.
#[derive(Debug, Clone)]
pub struct RecordingsApi {
    /// Verifies join tokens.
    meetings: Arc<MeetingService>,
    recordings: Arc<RecordingService>,
    /// The deployment's operator credential (`None`: no operator calls accepted).
    operator: Option<Secret>,
}

impl RecordingsApi {
    pub fn new(
        meetings: Arc<MeetingService>,
        recordings: Arc<RecordingService>,
        operator: Option<Secret>,
    ) -> Self {
        RecordingsApi {
            meetings,
            recordings,
            operator,
        }
    }

    pub fn into_server(self) -> pb::recordings_server::RecordingsServer<Self> {
        pb::recordings_server::RecordingsServer::new(self)
    }

    /// The operator, or a participant whose join token checks out.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        grpc_caller(self.operator.as_ref(), &self.meetings, request)
    }

    /// Stitch workers run with the operator credential.
    fn worker<T>(&self, request: &Request<T>) -> Result<(), Status> {
        operator_only(
            self.caller(request)?,
            "stitch workers call with the operator credential",
        )
    }
}

fn recording_id(text: &str) -> Result<RecordingId, Status> {
    id("recording_id", text, |s| RecordingId::new(s))
}

pub(crate) fn state_to(state: RecordingState) -> pb::RecordingState {
    match state {
        RecordingState::Recording => pb::RecordingState::Recording,
        RecordingState::Pending => pb::RecordingState::Pending,
        RecordingState::Stitching => pb::RecordingState::Stitching,
        RecordingState::Ready => pb::RecordingState::Ready,
        RecordingState::Failed => pb::RecordingState::Failed,
    }
}

pub(crate) fn recording_to(r: &RecordingRecord) -> pb::Recording {
    let output = r.output.as_ref();
    pb::Recording {
        recording_id: r.id.to_string(),
        meeting_id: r.meeting.to_string(),
        state: state_to(r.state).into(),
        started_at_unix_ms: r.started_at.map_or(0, |t| t.0),
        stopped_at_unix_ms: r.stopped_at.map_or(0, |t| t.0),
        progress: r.progress,
        attempts: r.attempt_count(),
        error: r.error.clone().unwrap_or_default(),
        output_key: output.map(|o| o.key.clone()).unwrap_or_default(),
        output_bytes: output.map_or(0, |o| o.bytes),
        duration_ms: output.map_or(0, |o| o.duration_ms),
    }
}

type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadRecordingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Recordings for RecordingsApi {
    async fn list_recordings(
        &self,
        request: Request<pb::ListRecordingsRequest>,
    ) -> Result<Response<pb::ListRecordingsResponse>, Status> {
        let caller = self.caller(&request)?;
        let meeting = id("meeting_id", &request.get_ref().meeting_id, |s| {
            MeetingId::new(s)
        })?;
        let records = self
            .recordings
            .list(&caller, &meeting)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRecordingsResponse {
            recordings: records.iter().map(recording_to).collect(),
        }))
    }

    async fn get_recording(
        &self,
        request: Request<pb::GetRecordingRequest>,
    ) -> Result<Response<pb::GetRecordingResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = recording_id(&request.get_ref().recording_id)?;
        let record = self.recordings.get(&caller, &id).await.map_err(status)?;
        Ok(Response::new(pb::GetRecordingResponse {
            recording: Some(recording_to(&record)),
        }))
    }

    type DownloadRecordingStream = DownloadStream;

    async fn download_recording(
        &self,
        request: Request<pb::DownloadRecordingRequest>,
    ) -> Result<Response<Self::DownloadRecordingStream>, Status> {
        let caller = self.caller(&request)?;
        let id = recording_id(&request.get_ref().recording_id)?;
        let file = self
            .recordings
            .download(&caller, &id)
            .await
            .map_err(status)?;
        let stream = file.pieces.map(|piece| match piece {
            Ok(data) => Ok(pb::DownloadRecordingResponse { data }),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn claim_stitch_job(
        &self,
        request: Request<pb::ClaimStitchJobRequest>,
    ) -> Result<Response<pb::ClaimStitchJobResponse>, Status> {
        self.worker(&request)?;
        let job = self
            .recordings
            .claim(&request.get_ref().worker, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ClaimStitchJobResponse {
            job: job.map(|job| pb::StitchJob {
                recording_id: job.recording.to_string(),
                meeting_id: job.meeting.to_string(),
                claim: job.claim,
                lease_ms: u64::try_from(job.lease.as_millis()).unwrap_or(u64::MAX),
                attempt: job.attempt,
                started_at_unix_ms: job.started_at.map_or(0, |t| t.0),
                stopped_at_unix_ms: job.stopped_at.map_or(0, |t| t.0),
            }),
        }))
    }

    async fn report_stitch_progress(
        &self,
        request: Request<pb::ReportStitchProgressRequest>,
    ) -> Result<Response<pb::ReportStitchProgressResponse>, Status> {
        self.worker(&request)?;
        let r = request.into_inner();
        let id = recording_id(&r.recording_id)?;
        self.recordings
            .report(&id, &r.claim, r.progress, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReportStitchProgressResponse {}))
    }

    async fn complete_stitch_job(
        &self,
        request: Request<pb::CompleteStitchJobRequest>,
    ) -> Result<Response<pb::CompleteStitchJobResponse>, Status> {
        self.worker(&request)?;
        let r = request.into_inner();
        let id = recording_id(&r.recording_id)?;
        let result = if r.error.is_empty() {
            StitchResult::Succeeded(Output {
                key: r.output_key,
                bytes: r.output_bytes,
                duration_ms: r.duration_ms,
            })
        } else {
            StitchResult::Failed(r.error)
        };
        let state = self
            .recordings
            .complete(&id, &r.claim, result, now())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompleteStitchJobResponse {
            state: state_to(state).into(),
        }))
    }
}
