//! `POST /v1/meetings`, `GET /v1/meetings/{id}/join`, `POST`/`DELETE
//! /v1/meetings/{id}/recording`, and the recordings: `GET /v1/meetings/{id}/recordings`,
//! `GET /v1/recordings/{id}` and `GET /v1/recordings/{id}/file`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{ApiError, WebApi};
use crate::domain::{
    bearer_token, Limits, Meeting, MeetingId, MeetingKind, MeetingSpec, Passcode, PasscodeHash,
    RecordingId, Schedule, UnixMillis,
};
use crate::service::meetings::Caller;
use crate::service::recordings::{RecordingRecord, RecordingService};
use crate::service::Code;

pub(crate) use crate::api::now;

/// A meeting id from a path, or 400.
pub(crate) fn meeting_id(text: &str) -> Result<MeetingId, ApiError> {
    MeetingId::new(text).map_err(|e| ApiError::new(Code::InvalidArgument, e.to_string()))
}

/// The body of `POST /v1/meetings`: `CreateMeetingRequest`'s fields, in JSON. Unknown
/// fields are refused (a typo must not silently create a meeting without a passcode).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMeetingBody {
    /// The id to use; absent: a random one.
    #[serde(default)]
    pub meeting_id: Option<String>,
    pub title: String,
    /// `meeting` (default) or `webinar`.
    #[serde(default)]
    pub kind: Option<MeetingKind>,
    #[serde(default)]
    pub passcode: Option<String>,
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default)]
    pub waiting_room: bool,
    #[serde(default)]
    pub limits: Option<LimitsBody>,
    #[serde(default)]
    pub schedule: Option<ScheduleBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    pub max_participants: u32,
    pub max_breakouts: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    pub starts_at_unix_ms: u64,
    pub ends_at_unix_ms: u64,
    #[serde(default)]
    pub early_join_ms: Option<u64>,
}

/// What a page (or anyone with the meeting id) may know before joining: no secrets.
#[derive(Debug, Serialize)]
pub struct JoinInfo {
    pub meeting_id: String,
    pub title: String,
    pub kind: MeetingKind,
    pub passcode_required: bool,
    pub waiting_room: bool,
    /// `open` or `ended`.
    pub state: &'static str,
    /// A scheduled meeting's window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at_unix_ms: Option<u64>,
}

impl JoinInfo {
    fn of(m: &Meeting) -> Self {
        JoinInfo {
            meeting_id: m.id().to_string(),
            title: m.title().to_owned(),
            kind: m.kind(),
            passcode_required: m.has_passcode(),
            waiting_room: m.waiting_room(),
            state: if m.is_open() { "open" } else { "ended" },
            opens_at_unix_ms: m.schedule().map(|s| s.opens_at().0),
            ends_at_unix_ms: m.schedule().map(|s| s.ends_at.0),
        }
    }
}

/// The answer to `POST /v1/meetings`.
#[derive(Debug, Serialize)]
pub struct CreatedMeeting {
    pub join_url: String,
    pub host_key_set: bool,
    #[serde(flatten)]
    pub info: JoinInfo,
}

/// Counts the request by route and status.
fn counted(api: &WebApi, route: &'static str, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    api.inner.metrics.request(route, response.status());
    response
}

/// The operator, or 401 (no or bad credential) / 403 (a participant's join token).
fn require_operator(api: &WebApi, headers: &HeaderMap) -> Result<(), ApiError> {
    match caller(api, headers)? {
        Caller::Operator => Ok(()),
        Caller::Participant(_) => Err(ApiError::new(
            Code::PermissionDenied,
            "this call needs the operator credential",
        )),
    }
}

/// Who calls: the operator, or a participant by its join token.
fn caller(api: &WebApi, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::new(
                Code::Unauthenticated,
                "no `Authorization: Bearer ...` header",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthenticated, "`Authorization` is not ASCII"))?;
    let credential =
        bearer_token(value).map_err(|e| ApiError::new(Code::Unauthenticated, e.to_string()))?;
    Ok(crate::api::authenticate(
        api.inner.operator.as_ref(),
        &api.inner.service,
        credential,
    )?)
}

/// What `POST` and `DELETE /v1/meetings/{id}/recording` answer.
#[derive(Debug, Serialize)]
pub struct RecordingState {
    pub recording: bool,
    /// The recording under way; absent once stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
}

/// `POST /v1/meetings/{id}/recording` starts recording (or answers the recording under
/// way), `DELETE` stops it: the operator, or a host with its join token, as
/// StartRecording and StopRecording.
pub(super) async fn start_recording(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = set_recording(&api, &id, &headers, true).await;
    counted(&api, "POST /v1/meetings/{id}/recording", result)
}

pub(super) async fn stop_recording(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = set_recording(&api, &id, &headers, false).await;
    counted(&api, "DELETE /v1/meetings/{id}/recording", result)
}

async fn set_recording(
    api: &WebApi,
    id: &str,
    headers: &HeaderMap,
    on: bool,
) -> Result<Response, ApiError> {
    let caller = caller(api, headers)?;
    let id = meeting_id(id)?;
    let recording = api
        .inner
        .service
        .set_recording(&caller, &id, on, now())
        .await?;
    Ok(Json(RecordingState {
        recording: recording.is_some(),
        recording_id: recording.map(|r| r.to_string()),
    })
    .into_response())
}

/// `POST /v1/meetings`.
pub(super) async fn create_meeting(
    State(api): State<WebApi>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = create(&api, &uri, &headers, body).await;
    counted(&api, "POST /v1/meetings", result)
}

async fn create(
    api: &WebApi,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_operator(api, headers)?;
    let limit = api.inner.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: super::code_name(Code::ResourceExhausted),
            message: format!("request body larger than {limit} bytes"),
        })?;
    let r: CreateMeetingBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(Code::InvalidArgument, format!("request body: {e}")))?;

    let id = r.meeting_id.as_deref().map(meeting_id).transpose()?;
    let spec = MeetingSpec {
        kind: r.kind.unwrap_or(MeetingKind::Meeting),
        title: r.title,
        schedule: r.schedule.map(|s| {
            let mut schedule = Schedule::new(
                UnixMillis(s.starts_at_unix_ms),
                UnixMillis(s.ends_at_unix_ms),
            );
            if let Some(early) = s.early_join_ms {
                schedule.early_join_ms = early;
            }
            schedule
        }),
        passcode: hash(api, "passcode", r.passcode).await?,
        host_key: hash(api, "host_key", r.host_key).await?,
        waiting_room: r.waiting_room,
        limits: r.limits.map(|l| Limits {
            max_participants: l.max_participants,
            max_breakouts: l.max_breakouts,
        }),
    };
    let meeting = api.inner.service.create(id, spec, now()).await?;
    let join_url = join_url(api, uri, headers, meeting.id());
    tracing::info!(meeting = %meeting.id(), "meeting created over REST");
    let created = CreatedMeeting {
        join_url: join_url.clone(),
        host_key_set: meeting.has_host_key(),
        info: JoinInfo::of(&meeting),
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, join_url)],
        Json(created),
    )
        .into_response())
}

async fn hash(
    api: &WebApi,
    field: &str,
    text: Option<String>,
) -> Result<Option<PasscodeHash>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let passcode = Passcode::new(text)
        .map_err(|e| ApiError::new(Code::InvalidArgument, format!("{field}: {e}")))?;
    Ok(Some(api.inner.service.hash_passcode(passcode).await?))
}

/// `{public_url}/m/{id}`, else from the request's host (`Host`, or HTTP/2's `:authority`).
fn join_url(api: &WebApi, uri: &Uri, headers: &HeaderMap, id: &MeetingId) -> String {
    if let Some(base) = &api.inner.config.public_url {
        return format!("{}/m/{id}", base.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if api.inner.tls { "https" } else { "http" };
    format!("{scheme}://{host}/m/{id}")
}

/// `GET /v1/meetings/{id}/join`.
pub(super) async fn join_info(State(api): State<WebApi>, Path(id): Path<String>) -> Response {
    let result = async {
        let id = meeting_id(&id)?;
        let view = api.inner.service.get(&id).await?;
        Ok(Json(JoinInfo::of(&view.meeting)).into_response())
    }
    .await;
    counted(&api, "GET /v1/meetings/{id}/join", result)
}

/// A recording as JSON: the proto's `Recording`, with the state in lower case and the
/// fields that do not apply left out.
#[derive(Debug, Serialize)]
pub struct RecordingView {
    pub recording_id: String,
    pub meeting_id: String,
    /// `recording`, `pending`, `stitching`, `ready` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_unix_ms: Option<u64>,
    pub progress: f64,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl RecordingView {
    fn of(r: &RecordingRecord) -> Self {
        RecordingView {
            recording_id: r.id.to_string(),
            meeting_id: r.meeting.to_string(),
            state: r.state.name().to_ascii_lowercase(),
            started_at_unix_ms: r.started_at.map(|t| t.0),
            stopped_at_unix_ms: r.stopped_at.map(|t| t.0),
            progress: r.progress,
            attempts: r.attempt_count(),
            error: r.error.clone(),
            output_bytes: r.output.as_ref().map(|o| o.bytes),
            duration_ms: r.output.as_ref().map(|o| o.duration_ms),
        }
    }
}

/// The answer to `GET /v1/meetings/{id}/recordings`.
#[derive(Debug, Serialize)]
pub struct RecordingList {
    /// Newest first.
    pub recordings: Vec<RecordingView>,
}

fn recordings(api: &WebApi) -> Result<&RecordingService, ApiError> {
    api.inner.recordings.as_deref().ok_or_else(|| {
        ApiError::new(
            Code::FailedPrecondition,
            "recordings are not served by this instance",
        )
    })
}

fn recording_id(text: &str) -> Result<RecordingId, ApiError> {
    RecordingId::new(text).map_err(|e| ApiError::new(Code::InvalidArgument, e.to_string()))
}

/// `GET /v1/meetings/{id}/recordings`: the operator, or a host with its join token.
pub(super) async fn list_recordings(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = caller(&api, &headers)?;
        let id = meeting_id(&id)?;
        let records = recordings(&api)?.list(&caller, &id).await?;
        Ok(Json(RecordingList {
            recordings: records.iter().map(RecordingView::of).collect(),
        })
        .into_response())
    }
    .await;
    counted(&api, "GET /v1/meetings/{id}/recordings", result)
}

/// `GET /v1/recordings/{id}`: the operator, or a host of its meeting.
pub(super) async fn get_recording(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = caller(&api, &headers)?;
        let id = recording_id(&id)?;
        let record = recordings(&api)?.get(&caller, &id).await?;
        Ok(Json(RecordingView::of(&record)).into_response())
    }
    .await;
    counted(&api, "GET /v1/recordings/{id}", result)
}

/// `GET /v1/recordings/{id}/file`: a READY recording's WebM, streamed from the recording
/// store as it is read (never whole in memory). A store failure after the headers went
/// out cuts the body short of its `Content-Length`, which the client sees.
pub(super) async fn recording_file(
    State(api): State<WebApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = caller(&api, &headers)?;
        let id = recording_id(&id)?;
        let file = recordings(&api)?.download(&caller, &id).await?;
        let body = Body::from_stream(file.pieces.map(|piece| {
            piece.map_err(|e| {
                tracing::warn!(error = %e, "recording download cut short");
                std::io::Error::other(e.to_string())
            })
        }));
        Ok((
            [
                (header::CONTENT_TYPE, "video/webm".to_owned()),
                (header::CONTENT_LENGTH, file.size.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.webm\""),
                ),
            ],
            body,
        )
            .into_response())
    }
    .await;
    counted(&api, "GET /v1/recordings/{id}/file", result)
}
