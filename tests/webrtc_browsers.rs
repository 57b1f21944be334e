//! Browsers in a meeting, end to end: real headless Chromium (fake camera and microphone)
//! in a network namespace joined by a veth pair, the join page served by a real
//! `fanout-control` (memory store), media through real `fanout-forwarder` processes over
//! ICE-lite, DTLS-SRTP and the SDP the control plane negotiates (docs/webrtc.md).
//!
//! Two browsers join one meeting through the join page and each decodes the other's video
//! and audio; a screen share from one appears at the other; an ICE restart and a forwarder
//! failover both resume media; with the forwarder's transport-cc feedback, a publisher's
//! bandwidth estimate grows until Chrome sends its top simulcast layer. Needs root (namespaces) and Chromium; skips loudly without.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fanout_control::api::pb;
use fanout_tests::browser::{
    chromium_available, inbound_rtp_stats, is_root, nft_available, send_stats, wait_for,
    wait_for_inbound_rtp, Browser, BrowserNetwork, BrowserOptions, InboundRtp, Page, SendStats,
};
use fanout_tests::forwarder::{control_binary, forwarder_binary, http_get, loadgen_binary};
use fanout_tests::process::{tail, Proc};
use tonic::metadata::MetadataValue;
use tonic::Request;

/// Media ports of the forwarders this process starts, a range each.
const FIRST_PORT: u16 = 46000;
const PORTS_PER_FORWARDER: u16 = 10;
static NEXT_FORWARDER: AtomicU16 = AtomicU16::new(0);

const OPERATOR: &str = "operator-token-for-browsers-0123456789";
const ENROLMENT: &str = "enrolment-token-for-browsers-0123456789";
/// How long media may take to start (ICE, DTLS, a keyframe) or to resume.
const MEDIA: Duration = Duration::from_secs(30);

fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIPPED webrtc_browsers: needs root for network namespaces");
        return true;
    }
    if !chromium_available() {
        eprintln!("SKIPPED webrtc_browsers: Chromium is not installed (scripts/install-deps.sh)");
        return true;
    }
    false
}

/// The control plane, its forwarders, and the browsers' network.
struct Deployment {
    net: BrowserNetwork,
    control: Proc,
    /// `host:port` of gRPC, REST, WebSocket and the join page.
    address: String,
    metrics: String,
    forwarders: Vec<Proc>,
    forwarder_metrics: Vec<String>,
    /// Each forwarder's media ports.
    forwarder_ports: Vec<std::ops::RangeInclusive<u16>>,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn start(forwarders: usize) -> Result<Deployment> {
        let net = BrowserNetwork::create()?;
        let host = net.host_ip();
        let dir = tempfile::tempdir()?;
        let file = |name: &str, text: &str| -> Result<std::path::PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let operator = file("operator", OPERATOR)?;
        let enrolment = file("enrolment", ENROLMENT)?;
        let config = file("control.toml", "[registry]\nlease_ttl_ms = 1500\n")?;
        let mut command = Command::new(control_binary()?);
        command
            .args(["--store", "memory"])
            .arg("--listen")
            .arg(format!("{host}:0"))
            .args(["--metrics", "127.0.0.1:0"])
            .arg("--operator-token-file")
            .arg(&operator)
            .arg("--enrolment-token-file")
            .arg(&enrolment)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null());
        let mut control = Proc::spawn("fanout-control", command)?;
        let metrics = control
            .wait_stderr(Duration::from_secs(30), "its metrics address", |line| {
                word_after(line, "metrics at http://")
            })?
            .trim_end_matches("/metrics")
            .to_owned();
        let address = control.wait_stderr(Duration::from_secs(30), "its address", |line| {
            word_after(line, "listening on ")
        })?;
        let mut deployment = Deployment {
            net,
            control,
            address,
            metrics,
            forwarders: Vec::new(),
            forwarder_metrics: Vec::new(),
            forwarder_ports: Vec::new(),
            dir,
        };
        for i in 0..forwarders {
            deployment.add_forwarder(i, &enrolment)?;
        }
        let live = format!("fanout_control_live_forwarders {forwarders}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !scrape(&deployment.metrics)?.contains(&live) {
            if Instant::now() > deadline {
                bail!(
                    "the forwarders did not register:\n{}",
                    deployment.control.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50)); // polling a metrics endpoint
        }
        Ok(deployment)
    }

    fn add_forwarder(&mut self, i: usize, enrolment: &std::path::Path) -> Result<()> {
        let host = self.net.host_ip();
        // Tests of this binary run at once: each forwarder gets ports of its own.
        let first =
            FIRST_PORT + PORTS_PER_FORWARDER * NEXT_FORWARDER.fetch_add(1, Ordering::Relaxed);
        let ports = format!("{first}-{}", first + PORTS_PER_FORWARDER - 1);
        let mut command = Command::new(forwarder_binary()?);
        command
            .args(["--control", &format!("http://{}", self.address)])
            .args(["--forwarder-id", &format!("fwd-{i}"), "--region", "local"])
            .arg("--media-ip")
            .arg(host.to_string())
            .arg("--listen")
            .arg(format!("{host}:0"))
            .args(["--port-range", &ports, "--shards", "1"])
            .args(["--progress-interval", "0", "--metrics", "127.0.0.1:0"])
            .arg("--enrolment-token-file")
            .arg(enrolment)
            .stdin(Stdio::null());
        let mut forwarder = Proc::spawn(format!("fwd-{i}"), command)?;
        let metrics =
            forwarder.wait_stderr(Duration::from_secs(30), "its metrics address", |line| {
                word_after(line, "metrics at http://")
            })?;
        self.forwarder_metrics
            .push(metrics.trim_end_matches("/metrics").to_owned());
        self.forwarders.push(forwarder);
        self.forwarder_ports
            .push(first..=first + PORTS_PER_FORWARDER - 1);
        Ok(())
    }

    async fn create_meeting(&self, id: &str) -> Result<String> {
        self.create(pb::CreateMeetingRequest {
            meeting_id: id.into(),
            kind: pb::MeetingKind::Meeting.into(),
            title: "browsers".into(),
            ..Default::default()
        })
        .await
    }

    async fn create(&self, meeting: pb::CreateMeetingRequest) -> Result<String> {
        let id = meeting.meeting_id.clone();
        self.meetings()
            .await?
            .create_meeting(as_operator(meeting)?)
            .await?;
        Ok(self.join_url(&id))
    }

    fn join_url(&self, meeting: &str) -> String {
        format!("http://{}/m/{meeting}", self.address)
    }

    async fn meetings(
        &self,
    ) -> Result<pb::meetings_client::MeetingsClient<tonic::transport::Channel>> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.address))?
            .connect()
            .await?;
        Ok(pb::meetings_client::MeetingsClient::new(channel))
    }

    async fn browser(&self) -> Result<Browser> {
        Browser::launch(
            self.net.namespace(),
            BrowserOptions {
                secure_origins: vec![format!("http://{}", self.address)],
                ..BrowserOptions::default()
            },
        )
        .await
    }

    /// Logs of every process, for a failing test.
    fn logs(&self) -> String {
        let mut out = format!("--- fanout-control\n{}\n", tail(&self.control.stderr()));
        for (f, metrics) in self.forwarders.iter().zip(&self.forwarder_metrics) {
            out += &format!("--- {}\n{}\n", f.name(), tail(&f.stderr()));
            // What the legs counted: traffic, drops, ICE and DTLS.
            let counters = scrape(metrics).unwrap_or_default();
            for line in counters.lines().filter(|l| {
                l.starts_with("fanout_") && !l.ends_with(" 0") && !l.contains("_bucket")
            }) {
                out += line;
                out += "\n";
            }
        }
        out
    }
}

/// `request` with the operator's bearer token.
fn as_operator<T>(request: T) -> Result<Request<T>> {
    let mut request = Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {OPERATOR}"))?,
    );
    Ok(request)
}

fn word_after(line: &str, marker: &str) -> Option<String> {
    let at = line.find(marker)?;
    let rest = &line[at + marker.len()..];
    Some(rest.split_whitespace().next()?.trim_matches('"').to_owned())
}

/// The metrics page at `address` (`host:port`).
fn scrape(address: &str) -> Result<String> {
    http_get(address.parse().context("a metrics address")?, "/metrics")
}

/// Open the join page and ask to join as `name`.
async fn knock(browser: &Browser, url: &str, name: &str) -> Result<Page> {
    let page = browser.new_page().await?;
    page.navigate(url).await?;
    wait_for(
        &page,
        "window.fanout && !document.getElementById('prejoin').hidden",
        MEDIA,
    )
    .await?;
    page.eval(&format!(
        "document.getElementById('name').value = {name:?}; document.getElementById('join-button').click(); 1"
    ))
    .await?;
    Ok(page)
}

/// Open the join page as `name` and join; returns once admitted.
async fn join(browser: &Browser, url: &str, name: &str) -> Result<Page> {
    let page = knock(browser, url, name).await?;
    wait_for(&page, "fanout.presence === 'admitted' && fanout.sub", MEDIA).await?;
    Ok(page)
}

/// Video decoding and audio arriving on the page's subscribe connection, and still
/// growing a moment later.
async fn media_flows(page: &Page, what: &str, video_streams: u64) -> Result<InboundRtp> {
    let first = wait_for_inbound_rtp(page, "fanout.sub", MEDIA, what, |s| {
        s.video.streams >= video_streams
            && s.video.frames_decoded > 0
            && s.audio.packets_received > 0
    })
    .await;
    let first = with_connection_state(page, first).await?;
    let later = wait_for_inbound_rtp(page, "fanout.sub", MEDIA, what, |s| {
        s.video.frames_decoded > first.video.frames_decoded
            && s.audio.packets_received > first.audio.packets_received
    })
    .await?;
    Ok(later)
}

/// `result`, with the page's connections described if it is an error.
async fn with_connection_state<T>(page: &Page, result: Result<T>) -> Result<T> {
    match result {
        Ok(t) => Ok(t),
        Err(e) => {
            let state = page.eval(CONNECTION_STATE).await;
            Err(e.context(format!("connections: {state:?}")))
        }
    }
}

/// What a failing test reports of the page's two connections.
const CONNECTION_STATE: &str = r#"JSON.stringify([fanout.pub, fanout.sub].map(pc => pc && { signaling: pc.signalingState, ice: pc.iceConnectionState, connection: pc.connectionState, remote: pc.remoteDescription && pc.remoteDescription.sdp, local: pc.localDescription && pc.localDescription.sdp }))"#;

/// Run a test body; on failure, print every process's log.
async fn with_logs<F, T>(deployment: &Deployment, body: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let result = body.await;
    if let Err(e) = &result {
        eprintln!("{e:#}\n{}", deployment.logs());
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_see_and_hear_each_other_share_a_screen_and_restart_ice() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let deployment = Deployment::start(1)?;
    let url = deployment.create_meeting("browsers").await?;
    let (alice_browser, bob_browser) = (deployment.browser().await?, deployment.browser().await?);
    with_logs(&deployment, async {
        let alice = join(&alice_browser, &url, "Alice").await?;
        let bob = join(&bob_browser, &url, "Bob").await?;
        media_flows(&alice, "Bob's camera and microphone at Alice", 1).await?;
        media_flows(&bob, "Alice's camera and microphone at Bob", 1).await?;
        let pair = fanout_tests::browser::selected_candidate_pair(&bob, "fanout.sub")
            .await?
            .context("a selected pair")?;
        assert_eq!(pair.remote.address, deployment.net.host_ip().to_string());

        // Alice shares her screen: a second video stream at Bob.
        alice
            .eval("document.getElementById('share').click(); 1")
            .await?;
        media_flows(&bob, "Alice's screen at Bob", 2).await?;

        // Bob restarts ICE on both connections: new credentials, media goes on.
        let ufrag = "fanout.sub.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1]";
        let before = bob.eval(ufrag).await?;
        bob.eval(
            "fanout.restartIce('subscribe').then(() => fanout.restartIce('publish')).then(() => 1)",
        )
        .await?;
        wait_for(&bob, &format!("{ufrag} !== {before}"), MEDIA).await?;
        media_flows(&bob, "media at Bob after its ICE restart", 2).await?;
        media_flows(&alice, "Bob's media at Alice after his ICE restart", 1).await?;
        let stats = inbound_rtp_stats(&alice, "fanout.sub").await?;
        eprintln!("Alice receives: {stats:?}");
        Ok(())
    })
    .await
}

/// The sum of a counter over every series of it on a metrics page.
fn counter_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_repair_their_lost_packets_with_rtx() -> Result<()> {
    if skip() {
        return Ok(());
    }
    if !nft_available() {
        eprintln!("SKIPPED browsers_repair_their_lost_packets_with_rtx: no nft (scripts/install-deps.sh installs nftables)");
        return Ok(());
    }
    let deployment = Deployment::start(1)?;
    let url = deployment.create_meeting("lossy").await?;
    let (alice_browser, bob_browser) = (deployment.browser().await?, deployment.browser().await?);
    with_logs(&deployment, async {
        let alice = join(&alice_browser, &url, "Alice").await?;
        let bob = join(&bob_browser, &url, "Bob").await?;
        media_flows(&bob, "Alice's camera and microphone at Bob", 1).await?;
        media_flows(&alice, "Bob's camera and microphone at Alice", 1).await?;

        // From now on 5% of what the browsers send the forwarder is lost. The forwarder
        // NACKs the holes; Chrome resends on the RTX streams negotiated in the publish
        // answers; the forwarder binds them by MID and repaired RID and unwraps them.
        deployment
            .net
            .lose_outbound_udp(5, deployment.forwarder_ports[0].clone())?;
        let metrics = &deployment.forwarder_metrics[0];
        let deadline = Instant::now() + MEDIA;
        loop {
            let page = scrape(metrics)?;
            let repaired = counter_sum(&page, "fanout_leg_rtx_received_total");
            if repaired >= 10.0 {
                // Every RTX stream was bound: none counted as an unknown SSRC.
                let unknown = page
                    .lines()
                    .filter(|l| l.starts_with("fanout_leg_dropped_packets_total"))
                    .filter(|l| l.contains("reason=\"unknown_ssrc\""))
                    .collect::<Vec<_>>();
                assert!(unknown.is_empty(), "{unknown:?}");
                break;
            }
            if Instant::now() > deadline {
                bail!("{repaired} retransmissions on RTX streams after {MEDIA:?} of 5% loss");
            }
            tokio::time::sleep(Duration::from_millis(200)).await; // polling a metrics endpoint
        }
        media_flows(&bob, "Alice's media at Bob through 5% loss", 1).await?;
        media_flows(&alice, "Bob's media at Alice through 5% loss", 1).await?;
        Ok(())
    })
    .await
}

/// How long Chrome's bandwidth estimate may take to grow from its start to the top
/// encoding's need (its probes reach that within seconds when feedback comes).
const ESTIMATE: Duration = Duration::from_secs(45);
/// A send-side estimate that covers the join page's `q` (150 kbit/s) and `h` (500 kbit/s)
/// and the minimum Chrome gives a 1280x720 layer (about 600 kbit/s) before it starts one:
/// far above the 300 kbit/s Chrome starts from and stays at without feedback.
const TOP_LAYER_ESTIMATE: f64 = 1_000_000.0;

/// The publish connection's send stats until `done` accepts them, polling `getStats`
/// every 200 ms until `deadline`.
async fn wait_for_send_stats(
    page: &Page,
    what: &str,
    deadline: Instant,
    mut done: impl FnMut(&SendStats) -> bool,
) -> Result<SendStats> {
    loop {
        let stats = send_stats(page, "fanout.pub").await?;
        if done(&stats) {
            return Ok(stats);
        }
        if Instant::now() > deadline {
            bail!("{what} not seen; last publish stats: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // polling getStats
    }
}

/// With the forwarder's transport-cc feedback, Chrome's send-side bandwidth estimate
/// grows past its start and Chrome turns on its top simulcast encoding (`f`: the fake
/// camera's full 1280x720, up to 1.5 Mbit/s), which it keeps off while its estimate
/// cannot pay for it. Without feedback the estimate stays at its start and `f` encodes
/// no frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_cc_feedback_lets_a_browser_send_its_top_simulcast_layer() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let deployment = Deployment::start(1)?;
    let url = deployment.create_meeting("estimate").await?;
    let browser = deployment.browser().await?;
    with_logs(&deployment, async {
        let page = join(&browser, &url, "Alice").await?;
        let answer = wait_for(
            &page,
            "fanout.pub && fanout.pub.remoteDescription && fanout.pub.remoteDescription.sdp",
            MEDIA,
        )
        .await?;
        let answer = answer.as_str().unwrap_or_default();
        assert!(
            answer.contains("transport-cc") && answer.contains("transport-wide-cc"),
            "the publish answer negotiates transport-cc: {answer}"
        );
        let started = Instant::now();
        let first = wait_for_send_stats(
            &page,
            "an estimate for the top layer and its first frames",
            started + ESTIMATE,
            |s| {
                s.available_outgoing_bitrate >= TOP_LAYER_ESTIMATE
                    && s.encoding("f").frames_encoded > 0
            },
        )
        .await;
        let first = with_connection_state(&page, first).await?;
        let grown_in = started.elapsed();
        // And it stays on: three seconds later, more frames and bytes of `f`.
        let at = Instant::now();
        let top = first.encoding("f");
        let later = wait_for_send_stats(&page, "the top layer going on", at + MEDIA, |s| {
            at.elapsed() >= Duration::from_secs(3)
                && s.encoding("f").frames_encoded >= top.frames_encoded + 30
                && s.encoding("f").bytes_sent > top.bytes_sent
        })
        .await?;
        let seconds = at.elapsed().as_secs_f64();
        let rate = |rid: &str| {
            (later.encoding(rid).bytes_sent - first.encoding(rid).bytes_sent) as f64 * 8.0 / seconds
        };
        let f = later.encoding("f");
        eprintln!(
            "estimate {:.0} kbit/s after {grown_in:.1?}, then {:.0} kbit/s; sending q {:.0}, \
             h {:.0}, f {:.0} kbit/s; f at {}x{}, {} frames, limited by {:?}",
            first.available_outgoing_bitrate / 1e3,
            later.available_outgoing_bitrate / 1e3,
            rate("q") / 1e3,
            rate("h") / 1e3,
            rate("f") / 1e3,
            f.frame_width,
            f.frame_height,
            f.frames_encoded,
            f.quality_limitation_reason,
        );
        assert!(
            later.available_outgoing_bitrate >= TOP_LAYER_ESTIMATE,
            "the estimate holds: {later:?}"
        );
        // The forwarder's side: feedback sent, arrivals reported.
        let metrics = scrape(&deployment.forwarder_metrics[0])?;
        let feedback = counter_sum(&metrics, "fanout_leg_transport_cc_feedback_sent_total");
        let reported = counter_sum(&metrics, "fanout_leg_transport_cc_packets_reported_total");
        eprintln!("the forwarder sent {feedback} feedback packets reporting {reported} arrivals");
        assert!(
            feedback > 0.0 && reported > feedback,
            "{feedback} / {reported}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_after_the_forwarder_dies() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let mut deployment = Deployment::start(2)?;
    let url = deployment.create_meeting("failover").await?;
    let (alice_browser, bob_browser) = (deployment.browser().await?, deployment.browser().await?);
    let result = with_logs(&deployment, async {
        let alice = join(&alice_browser, &url, "Alice").await?;
        let bob = join(&bob_browser, &url, "Bob").await?;
        media_flows(&alice, "Bob's media at Alice", 1).await?;
        media_flows(&bob, "Alice's media at Bob", 1).await?;
        let candidate = "fanout.sub.remoteDescription.sdp.match(/a=candidate:\\S+ \\d \\S+ \\d+ (\\S+ \\d+)/)[1]";
        let serving = alice.eval(candidate).await?;
        Ok((alice, bob, serving))
    })
    .await;
    let (alice, bob, serving) = result?;
    // Kill the forwarder whose port the meeting uses (SIGKILL: no goodbye).
    let port: u16 = serving
        .as_str()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .context("the serving candidate's port")?;
    let index = deployment
        .forwarder_ports
        .iter()
        .position(|range| range.contains(&port))
        .context("the forwarder serving that port")?;
    deployment.forwarders[index].kill();
    with_logs(&deployment, async {
        wait_for(
            &alice,
            &format!("{candidate} !== {serving}", candidate = "fanout.sub && fanout.sub.remoteDescription && fanout.sub.remoteDescription.sdp.match(/a=candidate:\\S+ \\d \\S+ \\d+ (\\S+ \\d+)/)[1]"),
            MEDIA,
        )
        .await?;
        media_flows(&alice, "Bob's media at Alice after the failover", 1).await?;
        media_flows(&bob, "Alice's media at Bob after the failover", 1).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_mute_and_leave_work_through_the_page() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let deployment = Deployment::start(1)?;
    let url = deployment
        .create(pb::CreateMeetingRequest {
            meeting_id: "lobby".into(),
            kind: pb::MeetingKind::Meeting.into(),
            title: "with a waiting room".into(),
            waiting_room: true,
            ..Default::default()
        })
        .await?;
    let (alice_browser, bob_browser) = (deployment.browser().await?, deployment.browser().await?);
    with_logs(&deployment, async {
        // The first to join hosts; the publish offer carries three simulcast encodings.
        let alice = join(&alice_browser, &url, "Alice").await?;
        wait_for(
            &alice,
            "fanout.role === 'host' && fanout.pub && fanout.pub.localDescription",
            MEDIA,
        )
        .await?;
        let sdp = alice.eval("fanout.pub.localDescription.sdp").await?;
        let sdp = sdp.as_str().context("an SDP")?;
        assert!(sdp.contains("a=simulcast:send q;h;f"), "{sdp}");

        // Bob waits until Alice admits him.
        let bob = knock(&bob_browser, &url, "Bob").await?;
        wait_for(
            &bob,
            "fanout.presence === 'waiting' && !document.getElementById('waiting').hidden",
            MEDIA,
        )
        .await?;
        let bob_id = bob.eval("fanout.me").await?;
        let admit = "[...document.querySelectorAll('#people button')].find(b => b.textContent === 'Admit')";
        wait_for(&alice, &format!("!!{admit}"), MEDIA).await?;
        alice.eval(&format!("{admit}.click(); 1")).await?;
        wait_for(&bob, "fanout.presence === 'admitted' && !document.getElementById('meeting').hidden", MEDIA).await?;
        media_flows(&alice, "Bob's media at Alice once admitted", 1).await?;

        // Bob mutes: Alice is told.
        bob.eval("document.getElementById('mic').click(); 1").await?;
        wait_for(
            &alice,
            &format!("fanout.participants[{bob_id}] && fanout.participants[{bob_id}].audio_muted === true"),
            MEDIA,
        )
        .await?;
        // Bob leaves: his tile goes.
        bob.eval("document.querySelector('#meeting .leave').click(); 1").await?;
        wait_for(
            &alice,
            &format!("!fanout.participants[{bob_id}] && !document.querySelector('figure[data-participant=' + JSON.stringify({bob_id}) + ']')"),
            MEDIA,
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_load_generator_participants_receive_each_others_media() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let deployment = Deployment::start(1)?;
    // Two plain-SRTP participants played by the load generator, publishing audio and a
    // simulcast camera into a meeting of their own making.
    let participants = deployment.dir.path().join("participants.jsonl");
    let operator = deployment.dir.path().join("operator");
    let mut command = Command::new(loadgen_binary()?);
    command
        .args([
            "run",
            "--control",
            &format!("http://{}", deployment.address),
        ])
        .arg("--operator-token-file")
        .arg(&operator)
        .args(["--set", "name=\"mixed\"", "--set", "duration_s=45"])
        .args(["--set", "meetings=[{count=1, participants=2}]"])
        .args(["--progress-interval", "0", "--threads", "1"])
        .arg("--participants")
        .arg(&participants)
        .stdin(Stdio::null());
    let mut loadgen = Proc::spawn("fanout-loadgen", command)?;
    let browser = deployment.browser().await?;
    with_logs(&deployment, async {
        // The browser joins the load generator's meeting.
        let deadline = Instant::now() + MEDIA;
        let meeting = loop {
            let listed = deployment
                .meetings()
                .await?
                .list_meetings(as_operator(pb::ListMeetingsRequest::default())?)
                .await?
                .into_inner();
            if let Some(m) = listed.meetings.first() {
                break m.meeting_id.clone();
            }
            if Instant::now() > deadline {
                bail!(
                    "the load generator made no meeting:\n{}",
                    tail(&loadgen.stderr())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling the API
        };
        let page = join(&browser, &deployment.join_url(&meeting), "Browser").await?;
        // Both load-generator participants' audio and camera reach the browser.
        let first = wait_for_inbound_rtp(
            &page,
            "fanout.sub",
            MEDIA,
            "the load generator's media",
            |s| {
                s.video.streams >= 2
                    && s.video.packets_received > 0
                    && s.audio.streams >= 2
                    && s.audio.packets_received > 0
            },
        )
        .await;
        let first = with_connection_state(&page, first).await?;
        let later = wait_for_inbound_rtp(&page, "fanout.sub", MEDIA, "more of it", |s| {
            s.video.packets_received > first.video.packets_received
                && s.audio.packets_received > first.audio.packets_received
        })
        .await?;
        eprintln!("the browser receives: {later:?}");
        // And the browser's media reaches both of them, authenticated (SRTP with their
        // own keys) and counted as another participant's.
        let status = loadgen.wait_timeout(Duration::from_secs(90))?;
        if !status.success() {
            bail!(
                "the load generator failed ({status}):\n{}",
                tail(&loadgen.stderr())
            );
        }
        let text = std::fs::read_to_string(&participants)?;
        let mut seen = 0;
        for line in text.lines() {
            let p: serde_json::Value = serde_json::from_str(line)?;
            let foreign = p["receiver"]["foreign"].as_u64().unwrap_or(0);
            let invalid = p["receiver"]["invalid"].as_u64().unwrap_or(0);
            assert!(
                foreign > 100,
                "{}: {foreign} packets of the browser's media ({invalid} invalid)",
                p["name"]
            );
            assert!(p["receiver"]["packets"].as_u64().unwrap_or(0) > 0, "{line}");
            seen += 1;
        }
        assert_eq!(seen, 2, "two load-generator participants: {text}");
        Ok(())
    })
    .await
}
