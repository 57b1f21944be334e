//! The stitching job's life through real processes: `fanout-control` (memory store, a
//! local-directory recording store) and a `fanout-recorder stitch --control` worker.
//!
//! A recording is started and stopped through the `Meetings` API; its chunks (real VP8 from
//! FFmpeg over RTP, written as the ingest daemon writes them) are put in the store; the
//! worker claims the job, stitches, uploads and reports; the recording turns READY with
//! its size and duration; `DownloadRecording` streams exactly the stored file, which
//! plays. A second worker running beside the first takes no part in a job already claimed.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fanout_control::api::pb;
use fanout_forwarder::recording::{MediaCodec, TapPacket};
use fanout_forwarder::sfu::TrackKind;
use fanout_recorder::chunk::{ChunkHeader, ChunkWriter};
use fanout_recorder::store::{ChunkKey, RecordingStore};
use fanout_tests::forwarder::{control_binary, recorder_binary};
use fanout_tests::process::Proc;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const OPERATOR: &str = "operator-token-for-recording-0123456789";

fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED recording_worker: ffmpeg is not installed (scripts/install-deps.sh)");
    }
    found
}

fn as_operator<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {OPERATOR}")).unwrap(),
    );
    request
}

/// `seconds` of VP8 (libvpx) over RTP from FFmpeg, as fast as it encodes, captured on a
/// local socket.
fn vp8_rtp(seconds: u32) -> Result<Vec<Vec<u8>>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let port = socket.local_addr()?.port();
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=320x240:rate=30:duration={seconds}"))
        .args(["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"])
        .args(["-b:v", "300k", "-g", "30", "-auto-alt-ref", "0"])
        .args(["-payload_type", "96", "-ssrc", "77", "-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}?pkt_size=1200"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting ffmpeg")?;
    let mut packets = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => packets.push(buf[..n].to_vec()),
            Err(_) => {
                if ffmpeg.try_wait()?.is_some() {
                    // Exited and nothing more for 200 ms: everything is in.
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            let _ = ffmpeg.kill();
            bail!("ffmpeg did not finish in time");
        }
    }
    anyhow::ensure!(ffmpeg.wait()?.success(), "ffmpeg failed");
    Ok(packets)
}

/// The recording's chunks as one recorder writes them: two of `packets`' halves, arrival
/// times from the RTP clock.
async fn put_chunks(store: &RecordingStore, recording: &str, packets: &[Vec<u8>]) -> Result<()> {
    let base = 1_800_000_000_000_000u64;
    let timestamp = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let first = timestamp(&packets[0]);
    let half = packets.len() / 2;
    for (seq, part) in [(1u64, &packets[..half]), (2, &packets[half..])] {
        let arrival = |p: &[u8]| base + u64::from(timestamp(p).wrapping_sub(first)) * 1000 / 90;
        let header = ChunkHeader {
            recording_id: recording.into(),
            instance: "rec-a".into(),
            seq,
            start_us: arrival(&part[0]),
        };
        let mut writer = ChunkWriter::new(Vec::new(), &header)?;
        for p in part {
            writer.append(&TapPacket {
                recording_id: recording,
                meeting_id: "recorded",
                participant_id: "alice",
                track: TrackKind::Video,
                encoding: 0,
                codec: MediaCodec::Vp8,
                clock_rate: 90_000,
                arrival_us: arrival(p),
                rtp: p,
            })?;
        }
        let key = ChunkKey {
            recording_id: recording.into(),
            instance: "rec-a".into(),
            seq,
        };
        store.put_chunk(&key, writer.close()?.into()).await?;
    }
    Ok(())
}

fn worker(control: &str, store: &Path, token: &Path, name: &str) -> Result<Proc> {
    let mut command = Command::new(recorder_binary()?);
    command
        .args(["stitch", "--control", control, "--store"])
        .arg(store)
        .arg("--operator-token-file")
        .arg(token)
        .args(["--worker-name", name, "--poll-seconds", "0.2"])
        .stdin(Stdio::null());
    Proc::spawn(name, command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stitches_a_stopped_recording_and_it_downloads() -> Result<()> {
    if !have_ffmpeg() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir)?;
    let token = dir.path().join("operator");
    std::fs::write(&token, OPERATOR)?;
    let enrolment = dir.path().join("enrolment");
    std::fs::write(&enrolment, "enrolment-token-for-recording-0123456789")?;
    // No settle delay: the chunks are in the store before the recording stops.
    let config = dir.path().join("control.toml");
    std::fs::write(&config, "[recordings]\nsettle_s = 0\nlease_s = 10\n")?;
    let mut command = Command::new(control_binary()?);
    command
        .args(["--store", "memory", "--listen", "127.0.0.1:0"])
        .arg("--operator-token-file")
        .arg(&token)
        .arg("--enrolment-token-file")
        .arg(&enrolment)
        .arg("--config")
        .arg(&config)
        .arg("--recording-store")
        .arg(&store_dir)
        .stdin(Stdio::null());
    let mut control = Proc::spawn("fanout-control", command)?;
    let address = control.wait_stderr(Duration::from_secs(30), "its address", |line| {
        let at = line.find("listening on ")?;
        Some(line[at + 13..].split_whitespace().next()?.to_owned())
    })?;
    let url = format!("http://{address}");
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut meetings = pb::meetings_client::MeetingsClient::new(channel.clone());
    let mut recordings = pb::recordings_client::RecordingsClient::new(channel);

    meetings
        .create_meeting(as_operator(pb::CreateMeetingRequest {
            meeting_id: "recorded".into(),
            kind: pb::MeetingKind::Meeting.into(),
            title: "recorded".into(),
            ..Default::default()
        }))
        .await?;
    let recording = meetings
        .start_recording(as_operator(pb::StartRecordingRequest {
            meeting_id: "recorded".into(),
        }))
        .await?
        .into_inner()
        .recording_id;
    let store = RecordingStore::local(&store_dir)?;
    let packets = vp8_rtp(4)?;
    let frames = packets.iter().filter(|p| p[1] & 0x80 != 0).count();
    put_chunks(&store, &recording, &packets).await?;
    meetings
        .stop_recording(as_operator(pb::StopRecordingRequest {
            meeting_id: "recorded".into(),
        }))
        .await?;

    // Two workers; the job is claimed once.
    let first = worker(&url, &store_dir, &token, "worker-1")?;
    let second = worker(&url, &store_dir, &token, "worker-2")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let view = recordings
            .get_recording(as_operator(pb::GetRecordingRequest {
                recording_id: recording.clone(),
            }))
            .await?
            .into_inner()
            .recording
            .context("a recording")?;
        match view.state() {
            pb::RecordingState::Ready => break view,
            pb::RecordingState::Failed => bail!("stitching failed: {}", view.error),
            _ if Instant::now() > deadline => bail!(
                "not READY in time: {view:?}\n{}\n{}",
                first.stderr(),
                second.stderr()
            ),
            // Polling the API: the job's end is not pushed anywhere.
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(ready.attempts, 1, "claimed once: {ready:?}");
    assert!(ready.output_bytes > 0);
    let seconds = ready.duration_ms as f64 / 1000.0;
    assert!((seconds - 4.0).abs() < 0.5, "{seconds} s");

    // The download is the stored file, byte for byte, and it plays.
    let mut stream = recordings
        .download_recording(as_operator(pb::DownloadRecordingRequest {
            recording_id: recording.clone(),
        }))
        .await?
        .into_inner();
    let mut downloaded = Vec::new();
    while let Some(piece) = stream.message().await? {
        assert!(piece.data.len() <= 1 << 20);
        downloaded.extend(piece.data);
    }
    assert_eq!(downloaded.len() as u64, ready.output_bytes);
    let stored = store.get_output(&recording).await?;
    assert_eq!(downloaded, stored.to_vec());
    let file = dir.path().join("downloaded.webm");
    std::fs::write(&file, &downloaded)?;
    let decoded = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&file)
        .output()?;
    assert!(decoded.status.success());
    let read: u64 = String::from_utf8_lossy(&decoded.stdout).trim().parse()?;
    // The grid is re-encoded at its own frame rate over the same span.
    assert!(
        read as f64 >= frames as f64 * 0.9,
        "{read} frames in the file, {frames} sent"
    );
    let claims: usize = [&first, &second]
        .iter()
        .map(|w| w.stderr().matches("stitching").count())
        .sum();
    assert!(claims >= 1, "a worker stitched");
    drop((first, second, control));
    Ok(())
}
