//! The stitching job's life through real processes: `fanout-control` (memory store, a
//! local-directory recording store) and a `fanout-recorder stitch --control` worker.
//!
//! A recording is started and stopped through the `Meetings` API; its chunks (real VP8 from
//! FFmpeg over RTP, written as the ingest daemon writes them) are put in the store; the
//! worker claims the job, stitches, uploads and reports; the recording turns READY with
//! its size and duration; `DownloadRecording` streams exactly the stored file, which
//! plays. A second worker running beside the first takes no part in a job already claimed.
//!
//! Sealing: a real `fanout-recorder run` gets two recordings over its tap socket and the
//! End of each, as a forwarder sends them. The recording it alone recorded is due as soon
//! as its seal is stored, long before the settle time; the one a second, dead recorder
//! also stored chunks of (never sealed) waits out the settle time, then is stitched too.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fanout_control::api::pb;
use fanout_forwarder::recording::{self, MediaCodec, TapPacket, MAX_MESSAGE_LEN};
use fanout_forwarder::sfu::TrackKind;
use fanout_recorder::chunk::{ChunkHeader, ChunkWriter};
use fanout_recorder::store::{ChunkKey, RecordingStore};
use fanout_tests::forwarder::{control_binary, http_get, recorder_binary, Metrics};
use fanout_tests::process::{tail, Proc};
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

/// Arrival times for `packets` (µs since the epoch) from their RTP clock.
fn arrivals(packets: &[Vec<u8>]) -> impl Fn(&[u8]) -> u64 {
    let base = 1_800_000_000_000_000u64;
    let timestamp = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let first = timestamp(&packets[0]);
    move |p: &[u8]| base + u64::from(timestamp(p).wrapping_sub(first)) * 1000 / 90
}

/// One of alice's VP8 packets of `recording`, as the forwarder taps it.
fn tapped<'a>(
    meeting: &'a str,
    recording: &'a str,
    arrival_us: u64,
    rtp: &'a [u8],
) -> TapPacket<'a> {
    TapPacket {
        recording_id: recording,
        meeting_id: meeting,
        participant_id: "alice",
        track: TrackKind::Video,
        encoding: 0,
        codec: MediaCodec::Vp8,
        clock_rate: 90_000,
        arrival_us,
        rtp,
    }
}

/// The recording's chunks as recorder `instance` writes them: two of `packets`' halves,
/// arrival times from the RTP clock.
async fn put_chunks(
    store: &RecordingStore,
    (meeting, recording): (&str, &str),
    instance: &str,
    packets: &[Vec<u8>],
) -> Result<()> {
    let arrival = arrivals(packets);
    let half = packets.len() / 2;
    for (seq, part) in [(1u64, &packets[..half]), (2, &packets[half..])] {
        let header = ChunkHeader {
            recording_id: recording.into(),
            instance: instance.into(),
            seq,
            start_us: arrival(&part[0]),
        };
        let mut writer = ChunkWriter::new(Vec::new(), &header)?;
        for p in part {
            writer.append(&tapped(meeting, recording, arrival(p), p))?;
        }
        let key = ChunkKey {
            recording_id: recording.into(),
            instance: instance.into(),
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

/// `fanout-control` on its memory store, with the local directory `store` as its
/// recording store and the operator credential in `{dir}/operator`.
struct ControlPlane {
    proc: Proc,
    url: String,
    metrics: std::net::SocketAddr,
    token: std::path::PathBuf,
}

impl ControlPlane {
    fn start(dir: &Path, store: &Path, settle_s: u64) -> Result<ControlPlane> {
        let token = dir.join("operator");
        std::fs::write(&token, OPERATOR)?;
        let enrolment = dir.join("enrolment");
        std::fs::write(&enrolment, "enrolment-token-for-recording-0123456789")?;
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!("[recordings]\nsettle_s = {settle_s}\nlease_s = 10\n"),
        )?;
        let mut command = Command::new(control_binary()?);
        command
            .args(["--store", "memory", "--listen", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .arg("--operator-token-file")
            .arg(&token)
            .arg("--enrolment-token-file")
            .arg(&enrolment)
            .arg("--config")
            .arg(&config)
            .arg("--recording-store")
            .arg(store)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        let mut proc = Proc::spawn("fanout-control", command)?;
        let timeout = Duration::from_secs(30);
        let metrics = proc.logged_word(timeout, "metrics at http://")?.parse()?;
        let address = proc.logged_word(timeout, "listening on ")?;
        Ok(ControlPlane {
            proc,
            url: format!("http://{address}"),
            metrics,
            token,
        })
    }

    async fn clients(
        &self,
    ) -> Result<(
        pb::meetings_client::MeetingsClient<Channel>,
        pb::recordings_client::RecordingsClient<Channel>,
    )> {
        let channel = Channel::from_shared(self.url.clone())?.connect().await?;
        Ok((
            pb::meetings_client::MeetingsClient::new(channel.clone()),
            pb::recordings_client::RecordingsClient::new(channel),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stitches_a_stopped_recording_and_it_downloads() -> Result<()> {
    if !have_ffmpeg() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir)?;
    // No settle delay: the chunks are in the store before the recording stops.
    let control = ControlPlane::start(dir.path(), &store_dir, 0)?;
    let (mut meetings, mut recordings) = control.clients().await?;

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
    put_chunks(&store, ("recorded", &recording), "rec-a", &packets).await?;
    meetings
        .stop_recording(as_operator(pb::StopRecordingRequest {
            meeting_id: "recorded".into(),
        }))
        .await?;

    // Two workers; the job is claimed once.
    let first = worker(&control.url, &store_dir, &control.token, "worker-1")?;
    let second = worker(&control.url, &store_dir, &control.token, "worker-2")?;
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

/// Sends `packets` of `recording` to a recorder's tap socket as a forwarder does, then
/// nothing: the End comes separately.
fn tap_packets(socket: &Path, meeting: &str, recording: &str, packets: &[Vec<u8>]) -> Result<()> {
    let sender = UnixDatagram::unbound()?;
    let mut buffer = vec![0u8; MAX_MESSAGE_LEN];
    let arrival = arrivals(packets);
    for p in packets {
        let len =
            recording::encode_packet(&tapped(meeting, recording, arrival(p), p), &mut buffer)?;
        // Blocking: waits while the recorder's queue is full, so nothing is dropped.
        sender.send_to(&buffer[..len], socket)?;
    }
    Ok(())
}

fn tap_end(socket: &Path, recording: &str) -> Result<()> {
    let mut buffer = vec![0u8; MAX_MESSAGE_LEN];
    let len = recording::encode_end(recording, &mut buffer)?;
    UnixDatagram::unbound()?.send_to(&buffer[..len], socket)?;
    Ok(())
}

/// Waits until `proc` logs a line with every one of `words`.
fn wait_logged(proc: &mut Proc, timeout: Duration, words: &[&str]) -> Result<()> {
    let what = words.join(" + ");
    proc.wait_stderr(timeout, &what, |text| {
        text.lines()
            .any(|line| words.iter().all(|w| line.contains(w)))
            .then_some(())
    })
}

async fn state_of(
    recordings: &mut pb::recordings_client::RecordingsClient<Channel>,
    recording: &str,
) -> Result<pb::Recording> {
    recordings
        .get_recording(as_operator(pb::GetRecordingRequest {
            recording_id: recording.into(),
        }))
        .await?
        .into_inner()
        .recording
        .context("a recording")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_recording_is_due_before_its_settle_time_an_unsealed_one_after() -> Result<()> {
    if !have_ffmpeg() {
        return Ok(());
    }
    const SETTLE: Duration = Duration::from_secs(20);
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir)?;
    let mut control = ControlPlane::start(dir.path(), &store_dir, SETTLE.as_secs())?;
    let (mut meetings, mut recordings) = control.clients().await?;

    // The recorder beside a forwarder: chunks close only on End (or at the stop) here.
    let socket = dir.path().join("tap.sock");
    let mut command = Command::new(recorder_binary()?);
    command
        .arg("run")
        .arg("--socket")
        .arg(&socket)
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--store")
        .arg(&store_dir)
        .args(["--instance", "rec-a", "--chunk-seconds", "600"])
        .args(["--metrics", "127.0.0.1:0", "--progress-interval", "0"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let mut recorder = Proc::spawn("fanout-recorder run", command)?;
    // Logged after the socket is bound.
    recorder.logged_word(Duration::from_secs(30), "metrics at http://")?;

    let mut ids = Vec::new();
    for meeting in ["sealed", "unsealed"] {
        meetings
            .create_meeting(as_operator(pb::CreateMeetingRequest {
                meeting_id: meeting.into(),
                kind: pb::MeetingKind::Meeting.into(),
                title: meeting.into(),
                ..Default::default()
            }))
            .await?;
        let id = meetings
            .start_recording(as_operator(pb::StartRecordingRequest {
                meeting_id: meeting.into(),
            }))
            .await?
            .into_inner()
            .recording_id;
        ids.push(id);
    }
    let (sealed, unsealed) = (ids[0].clone(), ids[1].clone());
    let packets = vp8_rtp(4)?;
    tap_packets(&socket, "sealed", &sealed, &packets)?;
    tap_packets(&socket, "unsealed", &unsealed, &packets)?;
    // A second recorder stored chunks of `unsealed` too (a restart under another name),
    // and died: it never seals.
    let store = RecordingStore::local(&store_dir)?;
    put_chunks(&store, ("unsealed", &unsealed), "rec-dead", &packets).await?;

    let worker = worker(&control.url, &store_dir, &control.token, "worker-1")?;
    let stopped = Instant::now();
    for meeting in ["sealed", "unsealed"] {
        meetings
            .stop_recording(as_operator(pb::StopRecordingRequest {
                meeting_id: meeting.into(),
            }))
            .await?;
    }
    // What the forwarder sends once its plan no longer names the recordings.
    tap_end(&socket, &sealed)?;
    tap_end(&socket, &unsealed)?;
    for id in [&sealed, &unsealed] {
        wait_logged(
            &mut recorder,
            Duration::from_secs(30),
            &["recording sealed", id],
        )?;
    }

    wait_logged(
        &mut control.proc,
        SETTLE,
        &["every recorder sealed the recording", &sealed],
    )?;
    let early = stopped.elapsed();
    assert!(early < SETTLE / 2, "due {early:?} after the stop");
    wait_logged(
        &mut control.proc,
        SETTLE + Duration::from_secs(30),
        &["stitching job claimed", &unsealed],
    )?;
    let late = stopped.elapsed();
    assert!(
        late + Duration::from_millis(100) >= SETTLE,
        "an unsealed recording was due {late:?} after its stop"
    );
    let objects = store.list_recording(&unsealed).await?;
    assert_eq!(objects.seals.len(), 1, "{objects:?}");
    assert_eq!(objects.seals[0].instance, "rec-a");

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in [&sealed, &unsealed] {
        loop {
            let view = state_of(&mut recordings, id).await?;
            match view.state() {
                pb::RecordingState::Ready => {
                    assert_eq!(view.attempts, 1, "{view:?}");
                    let seconds = view.duration_ms as f64 / 1000.0;
                    assert!((seconds - 4.0).abs() < 0.5, "{seconds} s");
                    break;
                }
                pb::RecordingState::Failed => bail!("stitching failed: {}", view.error),
                _ if Instant::now() > deadline => {
                    bail!("not READY in time: {view:?}\n{}", tail(&worker.stderr()))
                }
                // Polling the API: the job's end is not pushed anywhere.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let metrics = Metrics::parse(&http_get(control.metrics, "/metrics")?)?;
    assert_eq!(
        metrics.get("fanout_control_stitch_due_total", &[("by", "sealed")])?,
        1.0
    );
    assert_eq!(
        metrics.get("fanout_control_stitch_due_total", &[("by", "settle")])?,
        1.0
    );
    drop((worker, recorder, control));
    Ok(())
}
