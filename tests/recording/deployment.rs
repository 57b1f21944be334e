//! The processes of a recorded meeting, each the real binary: `fanout-control` on its
//! memory store, `fanout-forwarder`s in control mode, each with a `fanout-recorder run`
//! beside it (its own socket and spool, one store for all), FFmpeg publishers; and the
//! gRPC calls the tests make (CreateMeeting, JoinMeeting, StartRecording, ...).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fanout_control::api::pb;
use fanout_tests::forwarder::{
    control_binary, forwarder_binary, http_get, recorder_binary, Metrics,
};
use fanout_tests::process::{tail, Proc};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

pub const OPERATOR: &str = "operator-token-for-recording-e2e-0123456789";
const ENROLMENT: &str = "enrolment-token-for-recording-e2e-0123456789";
/// A forwarder that stops renewing its lease is given up this long after: short, so a
/// failover test waits seconds, not the production default.
pub const LEASE_TTL: Duration = Duration::from_millis(1500);
/// Seconds of media per chunk: what a recorder crash may lose at most.
pub const CHUNK_SECONDS: u64 = 2;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it gives a value, failing after `timeout` with `what`
/// and the last error it gave.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = check();
        if let Ok(Some(value)) = outcome {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            let last = match outcome {
                Err(e) => format!("{e:#}"),
                _ => "not yet".to_owned(),
            };
            bail!("{what}: not within {timeout:?} ({last})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(address: SocketAddr) -> Result<Metrics> {
    Metrics::parse(&http_get(address, "/metrics")?)
}

/// The word after `marker` in the stderr of `proc` (an address a process logs at start).
fn logged_word(proc: &mut Proc, marker: &str) -> Result<String> {
    proc.logged_word(START_TIMEOUT, marker)
}

/// `fanout-control --store memory`.
#[derive(Debug)]
pub struct Control {
    proc: Proc,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// A stopped recording's job is due this long after its stop at the latest: long, so
/// that a job claimable soon after the stop shows its recorders sealed it.
pub const SETTLE: Duration = Duration::from_secs(120);

impl Control {
    /// With `store` as the recording store (the recorders' seals are read there).
    pub fn start(dir: &Path, store: &Path) -> Result<Control> {
        let file = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let mut command = Command::new(control_binary()?);
        command
            .args(["--store", "memory"])
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--operator-token-file")
            .arg(file("operator", OPERATOR)?)
            .arg("--enrolment-token-file")
            .arg(file("enrolment", ENROLMENT)?)
            .arg("--recording-store")
            .arg(store)
            .arg("--config")
            .arg(file(
                "control.toml",
                &format!(
                    "[registry]\nlease_ttl_ms = {}\n[recordings]\nsettle_s = {}\n",
                    LEASE_TTL.as_millis(),
                    SETTLE.as_secs()
                ),
            )?);
        command.env("NO_COLOR", "1");
        let mut proc = Proc::spawn("fanout-control", command)?;
        let metrics = logged_word(&mut proc, "metrics at http://")?.parse()?;
        let grpc = logged_word(&mut proc, "listening on ")?.parse()?;
        Ok(Control {
            proc,
            grpc,
            metrics,
        })
    }

    pub async fn channel(&self) -> Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?)
    }

    pub fn wait_live_forwarders(&mut self, n: usize) -> Result<()> {
        let metrics = self.metrics;
        let want = format!("fanout_control_live_forwarders {n}\n");
        wait_until("the forwarders register", START_TIMEOUT, || {
            Ok(http_get(metrics, "/metrics")?.contains(&want).then_some(()))
        })
        .with_context(|| format!("control stderr:\n{}", tail(&self.proc.stderr())))
    }
}

/// A `fanout-recorder run`'s settings: restarted with the same ones after a crash.
#[derive(Debug, Clone)]
pub struct RecorderSpec {
    pub instance: String,
    pub socket: PathBuf,
    pub spool: PathBuf,
    pub store: PathBuf,
}

/// A running `fanout-recorder run`.
#[derive(Debug)]
pub struct Recorder {
    pub spec: RecorderSpec,
    proc: Proc,
    pub metrics: SocketAddr,
}

impl Recorder {
    pub fn start(spec: &RecorderSpec) -> Result<Recorder> {
        let mut command = Command::new(recorder_binary()?);
        command
            .arg("run")
            .arg("--socket")
            .arg(&spec.socket)
            .arg("--spool")
            .arg(&spec.spool)
            .arg("--store")
            .arg(&spec.store)
            .args(["--instance", &spec.instance])
            .args(["--chunk-seconds", &CHUNK_SECONDS.to_string()])
            .args(["--metrics", "127.0.0.1:0", "--progress-interval", "0"])
            .env("NO_COLOR", "1");
        let mut proc = Proc::spawn(format!("fanout-recorder {}", spec.instance), command)?;
        // Logged after the socket is bound: forwarders can hand media over from here on.
        let metrics = logged_word(&mut proc, "metrics at http://")?.parse()?;
        Ok(Recorder {
            spec: spec.clone(),
            proc,
            metrics,
        })
    }

    pub fn scrape(&self) -> Result<Metrics> {
        scrape(self.metrics)
    }

    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.scrape()?.sum(name, &[]))
    }

    /// SIGKILL: no chance to close or upload anything.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Waits until this recorder sealed a recording: the forwarder's End came, and every
    /// chunk of the recording before it is stored.
    pub fn wait_sealed(&mut self) -> Result<()> {
        let metrics = self.metrics;
        wait_until(
            "the recorder seals the recording",
            Duration::from_secs(30),
            || {
                Ok(
                    (scrape(metrics)?.sum("fanout_recorder_seals_stored_total", &[]) >= 1.0)
                        .then_some(()),
                )
            },
        )
        .with_context(|| format!("recorder stderr:\n{}", tail(&self.proc.stderr())))
    }

    /// Waits until every chunk this recorder closed is stored and none is open; with
    /// `end`, also until the forwarder's End for the recording arrived.
    pub fn wait_all_uploaded(&mut self, end: bool) -> Result<()> {
        let metrics = self.metrics;
        wait_until(
            "the recorder closes and stores its chunks",
            Duration::from_secs(30),
            || {
                let m = scrape(metrics)?;
                let closed = m.sum("fanout_recorder_chunks_closed_total", &[]);
                let recovered = m.sum("fanout_recorder_chunks_recovered_total", &[]);
                let uploaded = m.sum("fanout_recorder_chunks_uploaded_total", &[]);
                let done = m.get("fanout_recorder_open_recordings", &[])? == 0.0
                    && m.get("fanout_recorder_spool_backlog", &[])? == 0.0
                    && uploaded == closed + recovered
                    && (!end || m.sum("fanout_recorder_ends_total", &[]) >= 1.0);
                Ok(done.then_some(()))
            },
        )
        .with_context(|| format!("recorder stderr:\n{}", tail(&self.proc.stderr())))
    }
}

/// A `fanout-forwarder --control` with its recorder socket.
#[derive(Debug)]
pub struct Forwarder {
    pub id: String,
    proc: Proc,
    pub metrics: SocketAddr,
}

/// Meeting ports per forwarder: a test's meeting needs one.
const PORTS_PER_FORWARDER: u16 = 4;

/// The first port of a block for a forwarder's meetings: below the kernel's ephemeral
/// range (32768-60999 here), where other processes' sockets on this shared machine take
/// random ports, at a random place so that concurrent test runs rarely meet.
fn port_block() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    let block = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 3000;
    20_000 + PORTS_PER_FORWARDER * block as u16
}

impl Forwarder {
    /// Starts a forwarder; a block of ports someone else holds is tried again elsewhere.
    pub fn start(id: &str, control: &Control, recorder_socket: &Path) -> Result<Self> {
        let enrolment = recorder_socket.with_file_name(format!("{id}.enrolment"));
        std::fs::write(&enrolment, ENROLMENT)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let first = port_block();
            let ports = format!("{first}-{}", first + PORTS_PER_FORWARDER - 1);
            let mut command = Command::new(forwarder_binary()?);
            command
                .args(["--control", &format!("http://{}", control.grpc)])
                .args(["--forwarder-id", id, "--region", "eu"])
                .args(["--media-ip", "127.0.0.1", "--listen", "127.0.0.1:0"])
                .args(["--port-range", &ports, "--shards", "1"])
                .args(["--metrics", "127.0.0.1:0", "--progress-interval", "0"])
                .arg("--recorder-socket")
                .arg(recorder_socket)
                .arg("--enrolment-token-file")
                .arg(&enrolment)
                .env("NO_COLOR", "1");
            let mut proc = Proc::spawn(format!("fanout-forwarder {id}"), command)?;
            match logged_word(&mut proc, "metrics at http://") {
                Ok(metrics) => {
                    return Ok(Forwarder {
                        id: id.to_owned(),
                        proc,
                        metrics: metrics.parse()?,
                    })
                }
                Err(e) if attempt < 5 && proc.try_status().is_some() => {
                    eprintln!("{id} did not start on ports {ports} (trying others): {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn scrape(&self) -> Result<Metrics> {
        scrape(self.metrics)
    }

    /// Datagrams dropped as malformed, on legs and before any leg was known.
    pub fn malformed(&self) -> Result<u64> {
        Ok(self.scrape()?.drops_for("malformed"))
    }

    /// RTP packets the forwarder authenticated, over every leg.
    pub fn rtp_received(&self) -> Result<f64> {
        Ok(self
            .scrape()?
            .sum("fanout_leg_packets_received_total", &[("kind", "rtp")]))
    }

    /// SIGKILL: the forwarder's lease lapses and the control plane moves its meetings.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

pub fn with_bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).expect("an ASCII credential"),
    );
    request
}

pub async fn create_meeting(channel: &Channel, meeting: &str) -> Result<()> {
    pb::meetings_client::MeetingsClient::new(channel.clone())
        .create_meeting(with_bearer(
            pb::CreateMeetingRequest {
                meeting_id: meeting.into(),
                kind: pb::MeetingKind::Meeting.into(),
                title: "recorded".into(),
                ..Default::default()
            },
            OPERATOR,
        ))
        .await?;
    Ok(())
}

/// Joins as a participant that speaks SRTP AES_CM_128_HMAC_SHA1_80, the one profile
/// FFmpeg has (PLATFORM.md).
pub async fn join(channel: &Channel, meeting: &str, name: &str) -> Result<pb::JoinMeetingResponse> {
    let mut request = Request::new(pb::JoinMeetingRequest {
        meeting_id: meeting.into(),
        display_name: name.into(),
        srtp_profiles: vec![pb::SrtpProfile::AesCm128HmacSha180.into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-fanout-region", MetadataValue::from_static("eu"));
    let joined = pb::meetings_client::MeetingsClient::new(channel.clone())
        .join_meeting(request)
        .await?
        .into_inner();
    anyhow::ensure!(
        joined.srtp_profile == pb::SrtpProfile::AesCm128HmacSha180 as i32,
        "the join chose another profile: {}",
        joined.srtp_profile
    );
    Ok(joined)
}

pub async fn start_recording(channel: &Channel, meeting: &str) -> Result<String> {
    let answer = pb::meetings_client::MeetingsClient::new(channel.clone())
        .start_recording(with_bearer(
            pb::StartRecordingRequest {
                meeting_id: meeting.into(),
            },
            OPERATOR,
        ))
        .await?
        .into_inner();
    Ok(answer.recording_id)
}

pub async fn stop_recording(channel: &Channel, meeting: &str) -> Result<()> {
    pb::meetings_client::MeetingsClient::new(channel.clone())
        .stop_recording(with_bearer(
            pb::StopRecordingRequest {
                meeting_id: meeting.into(),
            },
            OPERATOR,
        ))
        .await?;
    Ok(())
}

/// Claims the next due stitching job as a worker would (`None`: none is due).
pub async fn claim_stitch_job(channel: &Channel) -> Result<Option<pb::StitchJob>> {
    let answer = pb::recordings_client::RecordingsClient::new(channel.clone())
        .claim_stitch_job(with_bearer(
            pb::ClaimStitchJobRequest {
                worker: "e2e-test".into(),
            },
            OPERATOR,
        ))
        .await?
        .into_inner();
    Ok(answer.job)
}

pub async fn get_meeting(channel: &Channel, meeting: &str) -> Result<pb::Meeting> {
    pb::meetings_client::MeetingsClient::new(channel.clone())
        .get_meeting(with_bearer(
            pb::GetMeetingRequest {
                meeting_id: meeting.into(),
            },
            OPERATOR,
        ))
        .await?
        .into_inner()
        .meeting
        .context("GetMeeting without a meeting")
}

/// The SSRC the join assigned to a track (the camera's lowest encoding: FFmpeg sends one).
pub fn assigned_ssrc(joined: &pb::JoinMeetingResponse, kind: pb::TrackKind) -> u32 {
    joined
        .tracks
        .iter()
        .find(|t| t.kind == kind as i32)
        .and_then(|t| t.ssrcs.first().copied())
        .unwrap_or_else(|| panic!("the join assigned no {kind:?} track"))
}

/// An FFmpeg publisher: `testsrc` in VP8 (libvpx) and a sine in Opus (libopus), live,
/// over SRTP AES_CM_128_HMAC_SHA1_80 with the join's send key and SSRCs, each stream to
/// its own port of the proxy (RTCP to another), for `seconds`.
pub struct Publisher<'a> {
    pub send_key: &'a str,
    pub video_ssrc: u32,
    pub audio_ssrc: u32,
    pub video_port: u16,
    pub video_rtcp_port: u16,
    pub audio_port: u16,
    pub audio_rtcp_port: u16,
    pub tone_hz: u32,
    pub seconds: u64,
}

impl Publisher<'_> {
    pub fn start(&self, name: &str) -> Result<Proc> {
        let key = self
            .send_key
            .strip_prefix("inline:")
            .context("an inline: key")?;
        let seconds = self.seconds;
        // FFmpeg's -ssrc is a signed 32-bit option: the assigned SSRC's bits as an i32.
        let ssrc = |s: u32| (s as i32).to_string();
        let url =
            |port: u16, rtcp: u16| format!("srtp://127.0.0.1:{port}?pkt_size=1200&rtcpport={rtcp}");
        let mut command = Command::new("ffmpeg");
        command
            .args([
                "-nostdin",
                "-hide_banner",
                "-nostats",
                "-loglevel",
                "error",
                "-re",
            ])
            .args(["-f", "lavfi", "-i"])
            .arg(format!("testsrc=size=640x360:rate=30:duration={seconds}"))
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency={}:sample_rate=48000:duration={seconds}",
                self.tone_hz
            ))
            .args(["-map", "0:v"])
            // One encoder thread: libvpx's worker threads busy-wait on each other, which
            // on a loaded 2-core machine slows encoding below real time (ffmpeg.rs).
            .args(["-c:v", "libvpx", "-threads", "1"])
            .args(["-deadline", "realtime", "-cpu-used", "8"])
            .args(["-b:v", "600k", "-g", "30", "-auto-alt-ref", "0"])
            .args(["-error-resilient", "1"])
            .args(["-payload_type", "96", "-ssrc", &ssrc(self.video_ssrc)])
            .args(["-f", "rtp", "-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80"])
            .args(["-srtp_out_params", key])
            .arg(url(self.video_port, self.video_rtcp_port))
            .args(["-map", "1:a", "-c:a", "libopus", "-b:a", "64k"])
            .args(["-payload_type", "111", "-ssrc", &ssrc(self.audio_ssrc)])
            .args(["-f", "rtp", "-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80"])
            .args(["-srtp_out_params", key])
            .arg(url(self.audio_port, self.audio_rtcp_port));
        Proc::spawn(format!("ffmpeg {name}"), command)
    }
}

/// Waits for a publisher to send its last packet and exit cleanly.
pub fn finish_publisher(proc: &mut Proc, seconds: u64) -> Result<()> {
    let status = proc.wait_timeout(Duration::from_secs(seconds + 60))?;
    if !status.success() {
        bail!(
            "{} failed ({status}): {}",
            proc.name(),
            tail(&proc.stderr())
        );
    }
    Ok(())
}
