//! Simulcast through the standalone `fanout-forwarder` with real FFmpeg peers, and its
//! run-time control by SIGHUP.
//!
//! `switching_encodings_by_sighup_keeps_one_clean_stream`: one FFmpeg publisher sends two
//! VP8 encodings of the same `testsrc` (320x180 and 640x360, each its own libvpx with a
//! keyframe every second, each its own RTP output and source port, one SRTP key: one leg)
//! as one simulcast track `encodings = [LOW, HIGH]`, `codec = "VP8"`. One FFmpeg receiver
//! (one SDP, one VP8 m-line) subscribes with `max_encoding = 0` and copies what it gets
//! into a WebM file. Once media flows, the test rewrites the file with `max_encoding = 1`
//! and sends SIGHUP, waits until the forwarder logs the change as applied, then goes back
//! to `max_encoding = 0` the same way. Then:
//! * the file decodes without a single error (`ffmpeg -v error` prints nothing);
//! * its frame times are continuous: every frame the publisher made appears, and only
//!   the frames at a switch may appear twice (the forwarder forwards the old encoding up
//!   to the new one's keyframe; the old encoding's picture of that same instant may have
//!   been sent just before, and the spliced keyframe then follows it by the few
//!   milliseconds between their arrivals: at most one duplicate per switch);
//! * the decoded size goes 320x180, then 640x360, then 320x180 again, each run of frames
//!   starting at a switch (a resolution change mid-stream is legal VP8 in WebM);
//! * the forwarder's metrics show the keyframe requests it sent upstream (if it exports
//!   them), and no drop other than the expected ones.
//!
//! The publisher sends each encoding from a socket of its own, so one leg's packets come
//! from two source ports. The forwarder's core learns each; its XDP guard (`--xdp`, which
//! the harness gives it under `FANOUT_IO=afxdp`) keeps first contact open until every
//! SSRC the leg publishes has been heard, then allows each learned source.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use fanout_forwarder::srtp::SrtpProfile;
use fanout_tests::ffmpeg::{self, SimulcastEncoding};
use fanout_tests::forwarder::{
    ConfigSpec, Forwarder, LegSpec, Metrics, ParticipantSpec, SrtpKey, SubscriptionSpec, TrackSpec,
};
use fanout_tests::media::{decode_video, video_frames, VideoFrame};
use fanout_tests::meeting::{temp_dir, VIDEO_FPS};
use fanout_tests::net::{free_udp_port_pair, wait_udp_bound};
use fanout_tests::process::{require_tool, Proc};
use fanout_tests::topology::ForwarderNetwork;

const LOW: SimulcastEncoding = SimulcastEncoding {
    width: 320,
    height: 180,
    ssrc: 0x1111_0001,
    bitrate_kbps: 300,
};
const HIGH: SimulcastEncoding = SimulcastEncoding {
    width: 640,
    height: 360,
    ssrc: 0x1111_0002,
    bitrate_kbps: 1000,
};
const PAYLOAD_TYPE: u8 = 96;
/// Media duration.
const SECONDS: u32 = 10;
/// Media time spent on each encoding before the next switch is asked for.
const STRETCH: Duration = Duration::from_millis(3000);
/// Bound on every wait for the forwarder (start of media, a logged reload).
const WAIT: Duration = Duration::from_secs(10);
/// Two frame times closer than half a frame interval are the same frame time.
const SAME_INSTANT: f64 = 0.5 / VIDEO_FPS as f64;
/// A frame interval, with slack for WebM's millisecond timestamps and the splice's
/// wall-clock estimate; a longer gap means a frame is missing.
const LONGEST_GAP: f64 = 1.5 / VIDEO_FPS as f64;

struct Setup {
    listen: SocketAddr,
    /// Where the receiver listens.
    receiver_ip: IpAddr,
    receiver_port: u16,
    publisher_key: SrtpKey,
    publisher_rtcp_key: SrtpKey,
    receiver_upstream_key: SrtpKey,
    receiver_key: SrtpKey,
}

impl Setup {
    fn config(&self, max_encoding: u8) -> ConfigSpec {
        let publisher = ParticipantSpec {
            id: "alice".into(),
            legs: vec![LegSpec {
                name: "video".into(),
                receive_key: self.publisher_key.clone(),
                send_key: self.publisher_rtcp_key.clone(),
                remote: None,
            }],
            tracks: vec![TrackSpec {
                name: "camera".into(),
                kind: "video".into(),
                leg: "video".into(),
                encodings: vec![LOW.ssrc, HIGH.ssrc],
                codec: Some("VP8".into()),
                ..Default::default()
            }],
            subscriptions: Vec::new(),
        };
        let receiver = ParticipantSpec {
            id: "bob".into(),
            legs: vec![LegSpec {
                name: "video".into(),
                receive_key: self.receiver_upstream_key.clone(),
                send_key: self.receiver_key.clone(),
                remote: Some(SocketAddr::new(self.receiver_ip, self.receiver_port)),
            }],
            tracks: Vec::new(),
            subscriptions: vec![SubscriptionSpec {
                track: "alice/camera".into(),
                leg: "video".into(),
                max_encoding: Some(max_encoding),
            }],
        };
        ConfigSpec {
            listen: self.listen,
            meeting: "simulcast".into(),
            participants: vec![publisher, receiver],
        }
    }
}

/// Polls the forwarder's metrics until `ready` holds for a scrape; returns that scrape.
fn wait_metrics(
    forwarder: &Forwarder,
    publisher: &mut Proc,
    what: &str,
    ready: impl Fn(&Metrics) -> bool,
) -> Result<Metrics> {
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = forwarder.scrape()?;
        if ready(&metrics) {
            return Ok(metrics);
        }
        if let Some(status) = publisher.try_status() {
            bail!(
                "the publisher exited ({status}) before {what}; stderr:\n{}",
                publisher.stderr()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no {what} within {WAIT:?}; forwarder log:\n{}",
                forwarder.stderr()
            );
        }
        // A poll interval of the scrape, not a synchronisation delay.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rewrites the configuration with `max_encoding`, sends SIGHUP and waits until the
/// forwarder logs the change as applied on its forwarding thread.
fn switch_to(forwarder: &mut Forwarder, setup: &Setup, max_encoding: u8) -> Result<()> {
    let mark = forwarder.reload(&setup.config(max_encoding))?;
    let applied = forwarder.wait_log_after(mark, WAIT, "the applied layer change", |line| {
        line.contains("subscription layer limits changed")
            && line.contains(&format!("to=max_encoding={max_encoding} "))
    })?;
    eprintln!("forwarder: {}", applied.trim());
    Ok(())
}

/// Runs of consecutive frames of one size: (width, height, frames).
fn size_runs(frames: &[VideoFrame]) -> Vec<(u32, u32, usize)> {
    let mut runs: Vec<(u32, u32, usize)> = Vec::new();
    for f in frames {
        match runs.last_mut() {
            Some((w, h, n)) if (*w, *h) == (f.width, f.height) => *n += 1,
            _ => runs.push((f.width, f.height, 1)),
        }
    }
    runs
}

#[test]
fn switching_encodings_by_sighup_keeps_one_clean_stream() -> Result<()> {
    for tool in ["ffmpeg", "ffprobe"] {
        require_tool(tool)?;
    }
    let started = Instant::now();
    let temp = temp_dir("fanout-simulcast-")?;
    let dir = temp.path();
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let network = ForwarderNetwork::from_env()?;
    let network_name = network.to_string();
    let setup = Setup {
        listen: network.forwarder_address(free_udp_port_pair()?),
        receiver_ip: network.peer_ip(),
        receiver_port: free_udp_port_pair()?,
        publisher_key: SrtpKey::generate(profile),
        publisher_rtcp_key: SrtpKey::generate(profile),
        receiver_upstream_key: SrtpKey::generate(profile),
        receiver_key: SrtpKey::generate(profile),
    };

    let mut forwarder = Forwarder::start(&setup.config(0), dir, network)?;
    eprintln!(
        "forwarder: {} driver, network: {network_name}",
        forwarder.driver().as_deref().unwrap_or("unknown")
    );
    let sdp = dir.join("bob.sdp");
    std::fs::write(
        &sdp,
        ffmpeg::vp8_receiver_sdp(
            setup.receiver_ip,
            setup.receiver_port,
            PAYLOAD_TYPE,
            &setup.receiver_key,
        ),
    )?;
    let output = dir.join("bob.webm");
    let mut receiver = ffmpeg::sdp_receiver(&sdp, &output)?;
    let ports = [setup.receiver_port, setup.receiver_port + 1];
    wait_udp_bound(&mut receiver, &ports, WAIT)?;
    let mut publisher = ffmpeg::simulcast_publisher(
        &[HIGH, LOW],
        PAYLOAD_TYPE,
        &setup.publisher_key,
        setup.listen,
        SECONDS,
    )?;

    // Media reaches the receiver: from here the stretches are media time.
    wait_metrics(
        &forwarder,
        &mut publisher,
        "RTP sent to the receiver",
        |m| m.rtp_sent("bob", "video").unwrap_or(0) > 0,
    )?;
    let flowing = Instant::now();
    eprintln!("media flowing after {:?}", flowing - started);
    let mut switches = 0;
    for (i, max_encoding) in [1u8, 0].into_iter().enumerate() {
        let due = flowing + STRETCH * (i as u32 + 1);
        // The encodings are real-time streams: a stretch of media is a stretch of time.
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        switch_to(&mut forwarder, &setup, max_encoding)?;
        switches += 1;
    }

    let status = publisher.wait_timeout(Duration::from_secs(u64::from(SECONDS) + 30))?;
    ensure!(
        status.success(),
        "the publisher failed ({status}); stderr:\n{}",
        publisher.stderr()
    );
    ffmpeg::finish_sdp_receiver(&mut receiver)?;
    let metrics = forwarder.scrape()?;
    // After the scrape: every packet the forwarder counted has crossed the veth by now.
    let veth = forwarder.network().veth_traffic()?;
    let forwarder_log = forwarder.stop()?;

    // (a) No corrupt frame.
    let decoded = decode_video(&output)?;
    let (frames, probe_errors) = video_frames(&output)?;
    // (b) Continuity: duplicates only at a switch, no gap.
    let mut duplicates = 0;
    let mut gaps = Vec::new();
    for pair in frames.windows(2) {
        let delta = pair[1].time - pair[0].time;
        if delta < SAME_INSTANT {
            duplicates += 1;
        } else if delta > LONGEST_GAP {
            gaps.push(format!("{:.3}s -> {:.3}s", pair[0].time, pair[1].time));
        }
    }
    let made = u64::from(SECONDS * VIDEO_FPS);
    let distinct = frames.len() as u64 - duplicates;
    // (c) The sizes.
    let runs = size_runs(&frames);
    // (d) Metrics.
    let keyframe_requests = metrics
        .select(
            "fanout_leg_keyframe_requests_sent_total",
            &[("participant", "alice")],
        )
        .map(|s| s.value)
        .sum::<f64>();
    let exported = metrics
        .select("fanout_leg_keyframe_requests_sent_total", &[])
        .next()
        .is_some();
    let rtcp_to_publisher =
        metrics.leg_counter("fanout_leg_packets_sent_total", "alice", "video", "rtcp")?;
    let drops = metrics.nonzero_drops();
    // Keyframe requests the forwarder makes before the publisher's first packet (for the
    // subscription configured at start) have no address to go to yet: they are counted
    // as `no_remote_address` drops on the publisher's leg. Nothing else may be dropped.
    let unexpected: Vec<&String> = drops
        .iter()
        .filter(|d| !(d.contains("participant=alice") && d.contains("reason=no_remote_address")))
        .collect();

    eprintln!(
        "simulcast run: {:.1}s in all\n\
         receiver file: {} frames, {distinct} distinct frame times (publisher made {made}), \
         {duplicates} duplicate(s) over {switches} switches, gaps: {gaps:?}\n\
         sizes in order: {}\n\
         first/last frame time: {:.3}s / {:.3}s\n\
         decoded {} frames; decode errors: {:?}; ffprobe errors: {:?}\n\
         keyframe requests sent to the publisher: {}; RTCP packets sent to the publisher: \
         {rtcp_to_publisher}\n\
         non-zero drops: {drops:?}",
        started.elapsed().as_secs_f64(),
        frames.len(),
        runs.iter()
            .map(|(w, h, n)| format!("{n} x {w}x{h}"))
            .collect::<Vec<_>>()
            .join(", "),
        frames.first().map_or(0.0, |f| f.time),
        frames.last().map_or(0.0, |f| f.time),
        decoded.frames,
        decoded.errors.trim(),
        probe_errors.trim(),
        if exported {
            keyframe_requests.to_string()
        } else {
            "not exported by this forwarder (assertion skipped)".into()
        },
    );

    ensure!(
        decoded.errors.trim().is_empty(),
        "decoding the received file failed:\n{}",
        decoded.errors
    );
    ensure!(
        decoded.frames == frames.len() as u64,
        "ffmpeg decoded {} frames, ffprobe listed {}",
        decoded.frames,
        frames.len()
    );
    ensure!(
        probe_errors.trim().is_empty(),
        "ffprobe reported errors:\n{probe_errors}"
    );
    ensure!(gaps.is_empty(), "frames are missing at {gaps:?}");
    ensure!(
        duplicates <= switches,
        "{duplicates} duplicate frame times for {switches} switches"
    );
    ensure!(
        distinct == made,
        "the receiver got {distinct} distinct frame times, the publisher made {made}"
    );
    let sizes: Vec<(u32, u32)> = runs.iter().map(|&(w, h, _)| (w, h)).collect();
    ensure!(
        sizes == [(320, 180), (640, 360), (320, 180)],
        "the decoded sizes went {runs:?}, not 320x180 -> 640x360 -> 320x180"
    );
    if exported {
        ensure!(
            keyframe_requests >= 1.0,
            "no keyframe request was sent to the publisher"
        );
    }
    ensure!(unexpected.is_empty(), "unexpected drops: {unexpected:?}");
    if let Some(veth) = veth {
        // The forwarder's only way to its peers is its veth: all it counted must have
        // crossed it (and more: ARP, the metrics scrapes).
        let sent = metrics.sum("fanout_leg_packets_sent_total", &[]) as u64;
        let received = metrics.sum("fanout_leg_packets_received_total", &[]) as u64;
        eprintln!(
            "the veth carried {} packets to the forwarder ({received} counted received), {} \
             from it ({sent} counted sent)",
            veth.to_forwarder, veth.from_forwarder
        );
        ensure!(
            received > 0 && veth.to_forwarder >= received,
            "the forwarder counted {received} packets received, its veth carried {} to it",
            veth.to_forwarder
        );
        ensure!(
            sent > 0 && veth.from_forwarder >= sent,
            "the forwarder counted {sent} packets sent, its veth carried {} from it",
            veth.from_forwarder
        );
    }
    let applied = forwarder_log
        .lines()
        .filter(|l| l.contains("subscription layer limits changed"))
        .count();
    ensure!(
        applied == 2,
        "the forwarder logged {applied} applied layer changes, not 2"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "the run took {:?}",
        started.elapsed()
    );
    Ok(())
}
