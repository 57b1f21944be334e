//! The Recordings service through the real server: gRPC on the shared port and the REST
//! routes, with the callers and status codes of the contract (control.proto).

use tonic::Code as Grpc;

use super::*;

type RecordingsClient = pb::recordings_client::RecordingsClient<tonic::transport::Channel>;

async fn client(addr: SocketAddr) -> RecordingsClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RecordingsClient::new(channel)
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn authed<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn list(meeting: &str) -> pb::ListRecordingsRequest {
    pb::ListRecordingsRequest {
        meeting_id: meeting.into(),
    }
}

fn get(recording: &str) -> pb::GetRecordingRequest {
    pb::GetRecordingRequest {
        recording_id: recording.into(),
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Grpc {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(status) => status.code(),
    }
}

fn claim_request(worker: &str) -> pb::ClaimStitchJobRequest {
    pb::ClaimStitchJobRequest {
        worker: worker.into(),
    }
}

/// A meeting with a host and a panelist (join tokens) and one stopped recording.
struct Recorded {
    meeting: String,
    recording: String,
    host: String,
    panelist: String,
    /// Keeps the participants' sockets (and so their presence) open.
    _sockets: (Client, Client),
}

async fn recorded(s: &Server) -> Recorded {
    let meeting = create(s.addr, json!({"title": "Recorded"})).await;
    let (host_socket, joined) = Client::join(s.addr, &meeting, "Host").await;
    let host = joined["join_token"].as_str().unwrap().to_owned();
    let (panelist_socket, joined) = Client::join(s.addr, &meeting, "Panelist").await;
    let panelist = joined["join_token"].as_str().unwrap().to_owned();
    let path = format!("/v1/meetings/{meeting}/recording");
    let (status, _, b) = http(s.addr, "POST", &path, Some(&host), "").await;
    assert_eq!(status, 200);
    let recording = json_of(&b)["recording_id"].as_str().unwrap().to_owned();
    let (status, _, _) = http(s.addr, "DELETE", &path, Some(&host), "").await;
    assert_eq!(status, 200);
    Recorded {
        meeting,
        recording,
        host,
        panelist,
        _sockets: (host_socket, panelist_socket),
    }
}

#[tokio::test]
async fn reads_are_for_hosts_and_the_operator_with_precise_codes() {
    let s = server().await;
    let r = recorded(&s).await;
    let other = create(s.addr, json!({"title": "Elsewhere"})).await;
    let (_other_socket, joined) = Client::join(s.addr, &other, "Other host").await;
    let other_host = joined["join_token"].as_str().unwrap().to_owned();
    let mut c = client(s.addr).await;

    for token in [r.host.as_str(), OPERATOR] {
        let listed = c
            .list_recordings(authed(Some(token), list(&r.meeting)))
            .await
            .unwrap()
            .into_inner()
            .recordings;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].recording_id, r.recording);
        assert_eq!(listed[0].meeting_id, r.meeting);
        assert_eq!(listed[0].state(), pb::RecordingState::Pending);
        assert!(listed[0].started_at_unix_ms > 0);
        assert!(listed[0].stopped_at_unix_ms >= listed[0].started_at_unix_ms);
        let one = c
            .get_recording(authed(Some(token), get(&r.recording)))
            .await
            .unwrap()
            .into_inner()
            .recording
            .unwrap();
        assert_eq!(one, listed[0]);
    }

    let mut refused = Vec::new();
    refused.push((
        "no credential",
        code(c.list_recordings(authed(None, list(&r.meeting))).await),
        Grpc::Unauthenticated,
    ));
    refused.push((
        "forged token",
        code(
            c.list_recordings(authed(Some("x.y"), list(&r.meeting)))
                .await,
        ),
        Grpc::Unauthenticated,
    ));
    refused.push((
        "panelist",
        code(
            c.list_recordings(authed(Some(&r.panelist), list(&r.meeting)))
                .await,
        ),
        Grpc::PermissionDenied,
    ));
    refused.push((
        "panelist get",
        code(
            c.get_recording(authed(Some(&r.panelist), get(&r.recording)))
                .await,
        ),
        Grpc::PermissionDenied,
    ));
    refused.push((
        "host of another meeting",
        code(
            c.list_recordings(authed(Some(&other_host), list(&r.meeting)))
                .await,
        ),
        Grpc::Unauthenticated,
    ));
    refused.push((
        "host of another meeting, get",
        code(
            c.get_recording(authed(Some(&other_host), get(&r.recording)))
                .await,
        ),
        Grpc::Unauthenticated,
    ));
    refused.push((
        "bad meeting id",
        code(c.list_recordings(authed(Some(OPERATOR), list("a b"))).await),
        Grpc::InvalidArgument,
    ));
    refused.push((
        "unknown meeting",
        code(
            c.list_recordings(authed(Some(OPERATOR), list("nope")))
                .await,
        ),
        Grpc::NotFound,
    ));
    refused.push((
        "bad recording id",
        code(c.get_recording(authed(Some(OPERATOR), get(""))).await),
        Grpc::InvalidArgument,
    ));
    refused.push((
        "unknown recording",
        code(c.get_recording(authed(Some(OPERATOR), get("nope"))).await),
        Grpc::NotFound,
    ));
    for (what, got, want) in refused {
        assert_eq!(got, want, "{what}");
    }

    // REST: the same callers, the same answers.
    let list_path = format!("/v1/meetings/{}/recordings", r.meeting);
    let (status, _, b) = http(s.addr, "GET", &list_path, Some(&r.host), "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v["recordings"][0]["recording_id"], r.recording.as_str());
    assert_eq!(v["recordings"][0]["state"], "pending");
    let one_path = format!("/v1/recordings/{}", r.recording);
    let (status, _, b) = http(s.addr, "GET", &one_path, Some(OPERATOR), "").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&b)["meeting_id"], r.meeting.as_str());
    for (path, token, want) in [
        (list_path.as_str(), None, 401),
        (list_path.as_str(), Some(r.panelist.as_str()), 403),
        (list_path.as_str(), Some(other_host.as_str()), 401),
        ("/v1/meetings/nope/recordings", Some(OPERATOR), 404),
        ("/v1/recordings/a%20b", Some(OPERATOR), 400),
        ("/v1/recordings/nope", Some(OPERATOR), 404),
        (one_path.as_str(), Some(r.panelist.as_str()), 403),
    ] {
        let (status, _, b) = http(s.addr, "GET", path, token, "").await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&b));
    }
    let file_path = format!("/v1/recordings/{}/file", r.recording);
    let (status, _, b) = http(s.addr, "GET", &file_path, Some(&r.host), "").await;
    assert_eq!(status, 409, "not READY yet");
    assert_eq!(json_of(&b)["code"], "FAILED_PRECONDITION");
}

#[tokio::test]
async fn workers_claim_report_and_complete_with_the_operator_credential() {
    let s = server().await;
    let r = recorded(&s).await;
    let mut c = client(s.addr).await;

    let status = c
        .claim_stitch_job(authed(Some(&r.host), claim_request("w1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::PermissionDenied, "a host is no worker");
    let status = c
        .claim_stitch_job(authed(None, claim_request("w1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::Unauthenticated);
    let status = c
        .claim_stitch_job(authed(Some(OPERATOR), claim_request("")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::InvalidArgument);
    assert_eq!(
        s.recordings.metrics().jobs().claims,
        0,
        "refused claims claim nothing"
    );

    let job = c
        .claim_stitch_job(authed(Some(OPERATOR), claim_request("w1")))
        .await
        .unwrap()
        .into_inner()
        .job
        .expect("the stopped recording is due (no settle delay here)");
    assert_eq!(job.recording_id, r.recording);
    assert_eq!(job.meeting_id, r.meeting);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease_ms, 30_000);
    let none = c
        .claim_stitch_job(authed(Some(OPERATOR), claim_request("w2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.job, None, "one job, already claimed");

    let report = |claim: &str, progress: f64| pb::ReportStitchProgressRequest {
        recording_id: r.recording.clone(),
        claim: claim.into(),
        progress,
    };
    let status = c
        .report_stitch_progress(authed(Some(OPERATOR), report("not-the-claim", 0.5)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::FailedPrecondition);
    let status = c
        .report_stitch_progress(authed(Some(OPERATOR), report(&job.claim, 2.0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::InvalidArgument);
    c.report_stitch_progress(authed(Some(OPERATOR), report(&job.claim, 0.5)))
        .await
        .unwrap();
    let seen = c
        .get_recording(authed(Some(&r.host), get(&r.recording)))
        .await
        .unwrap()
        .into_inner()
        .recording
        .unwrap();
    assert_eq!(seen.state(), pb::RecordingState::Stitching);
    assert_eq!(seen.progress, 0.5);
    assert_eq!(seen.attempts, 1);

    let complete = pb::CompleteStitchJobRequest {
        recording_id: r.recording.clone(),
        claim: job.claim.clone(),
        error: String::new(),
        output_key: format!("recordings/{}/output.webm", r.recording),
        output_bytes: 4096,
        duration_ms: 12_000,
    };
    for _ in 0..2 {
        // The second is a retry after a lost answer: same answer, nothing changes.
        let done = c
            .complete_stitch_job(authed(Some(OPERATOR), complete.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.state(), pb::RecordingState::Ready);
    }
    let ready = c
        .get_recording(authed(Some(&r.host), get(&r.recording)))
        .await
        .unwrap()
        .into_inner()
        .recording
        .unwrap();
    assert_eq!(ready.state(), pb::RecordingState::Ready);
    assert_eq!(ready.output_key, complete.output_key);
    assert_eq!(ready.output_bytes, 4096);
    assert_eq!(ready.duration_ms, 12_000);
    assert_eq!(s.recordings.metrics().jobs().ready, 1);
}

#[tokio::test]
async fn ready_recordings_download_over_grpc_and_rest_in_pieces() {
    use crate::domain::{RecordingId, UnixMillis};
    use crate::service::recordings::{Output, StitchResult, MAX_PIECE_BYTES};

    let s = server().await;
    let r = recorded(&s).await;
    let id = RecordingId::new(r.recording.clone()).unwrap();
    let mut c = client(s.addr).await;
    let download = |token: Option<&str>| {
        authed(
            token,
            pb::DownloadRecordingRequest {
                recording_id: r.recording.clone(),
            },
        )
    };
    let status = c
        .download_recording(download(Some(&r.host)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::FailedPrecondition, "not READY yet");

    // A worker stitches it: the file goes to the store, the job completes.
    let webm: Vec<u8> = (0..MAX_PIECE_BYTES * 2 + 777)
        .map(|i| (i % 253) as u8 ^ (i >> 13) as u8)
        .collect();
    s.files
        .put_output(&r.recording, webm.clone().into())
        .await
        .unwrap();
    let now = UnixMillis::from_system_time(std::time::SystemTime::now());
    let job = s.recordings.claim("w", now).await.unwrap().unwrap();
    s.recordings
        .complete(
            &id,
            &job.claim,
            StitchResult::Succeeded(Output {
                key: format!("recordings/{}/output.webm", r.recording),
                bytes: webm.len() as u64,
                duration_ms: 1_000,
            }),
            now,
        )
        .await
        .unwrap();

    for token in [r.host.as_str(), OPERATOR] {
        let mut stream = c
            .download_recording(download(Some(token)))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            sizes.push(message.data.len());
            got.extend_from_slice(&message.data);
        }
        assert_eq!(sizes, [MAX_PIECE_BYTES, MAX_PIECE_BYTES, 777]);
        assert!(got == webm, "the file, in order");
    }
    let status = c
        .download_recording(download(Some(&r.panelist)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Grpc::PermissionDenied);
    let status = c.download_recording(download(None)).await.unwrap_err();
    assert_eq!(status.code(), Grpc::Unauthenticated);

    let path = format!("/v1/recordings/{}/file", r.recording);
    let (status, headers, body) = http(s.addr, "GET", &path, Some(&r.host), "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "video/webm");
    assert_eq!(headers["content-length"], webm.len().to_string().as_str());
    assert!(body == webm, "the file over REST");
    let (status, _, _) = http(s.addr, "GET", &path, Some(&r.panelist), "").await;
    assert_eq!(status, 403);
    let (status, _, _) = http(s.addr, "GET", &path, None, "").await;
    assert_eq!(status, 401);
}
