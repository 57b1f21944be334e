//! The interop scenario shared by the tests and `fanout-demo`: one publisher sending video
//! and audio over SRTP to the standalone forwarder, N receivers each getting its own
//! re-encrypted copy, then a [`Report`] of frames sent and decoded and of the forwarder's
//! counters.
//!
//! Which real peers play the parts (FFmpeg or GStreamer) is a [`PeerKit`]; the run order,
//! the forwarder's configuration and the checks are the same for every kit:
//!
//! 1. write the configuration (fresh keys per leg and direction) and start the forwarder,
//!    waiting for its metrics endpoint;
//! 2. start every receiver and wait until its UDP ports are bound;
//! 3. start the publisher, which also writes what it sends to a file; its exit ends the
//!    media;
//! 4. wait until the forwarder has sent every receiver leg as many packets as it received
//!    on the matching publisher leg, then let every receiver finish;
//! 5. scrape the metrics, stop the forwarder with SIGTERM (it must exit 0), count the
//!    frames of the sent file and of every received file with ffprobe.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fanout_forwarder::srtp::SrtpProfile;

use crate::forwarder::{
    ConfigSpec, Forwarder, LegSpec, Metrics, ParticipantSpec, SrtpKey, SubscriptionSpec, TrackSpec,
};
use crate::media::{count_frames, FrameCounts};
use crate::net::{free_udp_port_pair, wait_udp_bound};
use crate::process::{require_tool, tail, Proc};
use crate::topology::{ForwarderNetwork, VethTraffic};

/// Frame rate of the synthetic video.
pub const VIDEO_FPS: u32 = 30;
/// Duration of one Opus frame of the synthetic audio, in milliseconds.
pub const AUDIO_FRAME_MS: u32 = 20;

/// How long a peer may take to bind its ports.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the publisher may overrun its media duration before it is killed.
const PUBLISHER_GRACE: Duration = Duration::from_secs(30);
/// How long the forwarder may take to flush what it received after the publisher exits.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One medium of the publisher: its leg, track and RTP identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSpec {
    /// Leg name, the same on the publisher and on every receiver.
    pub leg: &'static str,
    /// The publisher's track name.
    pub track: &'static str,
    pub kind: &'static str,
    pub ssrc: u32,
    pub payload_type: u8,
}

pub const VIDEO: MediaSpec = MediaSpec {
    leg: "video",
    track: "camera",
    kind: "video",
    ssrc: 0x1111_1111,
    payload_type: 96,
};

pub const AUDIO: MediaSpec = MediaSpec {
    leg: "audio",
    track: "mic",
    kind: "audio",
    ssrc: 0x2222_2222,
    payload_type: 111,
};

/// Both media, in the order of every `[_; 2]` array below.
pub const MEDIA: [MediaSpec; 2] = [VIDEO, AUDIO];

fn keys(profile: SrtpProfile) -> [SrtpKey; 2] {
    [SrtpKey::generate(profile), SrtpKey::generate(profile)]
}

/// The publishing participant.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    pub id: String,
    /// What the publisher encrypts with, per medium (the forwarder's receive keys).
    pub keys: [SrtpKey; 2],
    /// What the forwarder encrypts its RTCP to the publisher with.
    pub forwarder_keys: [SrtpKey; 2],
}

/// One receiving participant.
#[derive(Debug, Clone)]
pub struct ReceiverPlan {
    pub id: String,
    /// RTP port per medium; RTCP is the next port.
    pub ports: [u16; 2],
    /// What the forwarder encrypts with towards this receiver, per medium.
    pub forwarder_keys: [SrtpKey; 2],
    /// The forwarder's receive keys for this receiver's legs.
    pub upstream_keys: [SrtpKey; 2],
    /// The keys the receiving process is given: `forwarder_keys`, or fresh unrelated keys
    /// when `wrong_key`.
    pub keys: [SrtpKey; 2],
    pub wrong_key: bool,
    /// Where the receiver writes what it decodes.
    pub output: PathBuf,
}

/// Everything a run needs to know: ports, keys, files.
#[derive(Debug, Clone)]
pub struct MeetingPlan {
    pub profile: SrtpProfile,
    pub seconds: u32,
    /// The forwarder's RTP address; RTCP (not muxed) is the next port.
    pub listen: SocketAddr,
    /// The address the receivers listen on and the publisher sends from.
    pub peer_ip: IpAddr,
    pub publisher: PublisherPlan,
    pub receivers: Vec<ReceiverPlan>,
    /// Where the publisher writes a copy of exactly what it sends.
    pub sent_file: PathBuf,
    pub dir: PathBuf,
}

impl MeetingPlan {
    /// Allocates ports and fresh keys, with the addresses of `network`. `wrong_keys[i]`
    /// gives receiver `i` keys that do not match the forwarder's.
    pub fn new(
        profile: SrtpProfile,
        seconds: u32,
        wrong_keys: &[bool],
        dir: &Path,
        extension: &str,
        network: &ForwarderNetwork,
    ) -> Result<MeetingPlan> {
        let listen = network.forwarder_address(free_udp_port_pair()?);
        let mut receivers = Vec::new();
        for (i, &wrong_key) in wrong_keys.iter().enumerate() {
            let id = format!("receiver{}", i + 1);
            let forwarder_keys = keys(profile);
            let keys_given = if wrong_key {
                keys(profile)
            } else {
                forwarder_keys.clone()
            };
            receivers.push(ReceiverPlan {
                ports: [free_udp_port_pair()?, free_udp_port_pair()?],
                forwarder_keys,
                upstream_keys: keys(profile),
                keys: keys_given,
                wrong_key,
                output: dir.join(format!("{id}.{extension}")),
                id,
            });
        }
        Ok(MeetingPlan {
            profile,
            seconds,
            listen,
            peer_ip: network.peer_ip(),
            publisher: PublisherPlan {
                id: "alice".into(),
                keys: keys(profile),
                forwarder_keys: keys(profile),
            },
            receivers,
            sent_file: dir.join(format!("sent.{extension}")),
            dir: dir.to_owned(),
        })
    }

    /// The forwarder's configuration: the publisher's legs learn its address; each
    /// receiver has one leg per medium towards its ports and subscribes to both tracks.
    pub fn config(&self) -> ConfigSpec {
        let publisher = ParticipantSpec {
            id: self.publisher.id.clone(),
            legs: MEDIA
                .iter()
                .enumerate()
                .map(|(i, m)| LegSpec {
                    name: m.leg.into(),
                    receive_key: self.publisher.keys[i].clone(),
                    send_key: self.publisher.forwarder_keys[i].clone(),
                    remote: None,
                })
                .collect(),
            tracks: MEDIA
                .iter()
                .map(|m| TrackSpec {
                    name: m.track.into(),
                    kind: m.kind.into(),
                    leg: m.leg.into(),
                    ssrc: m.ssrc,
                    ..Default::default()
                })
                .collect(),
            subscriptions: Vec::new(),
        };
        let receivers = self.receivers.iter().map(|r| ParticipantSpec {
            id: r.id.clone(),
            legs: MEDIA
                .iter()
                .enumerate()
                .map(|(i, m)| LegSpec {
                    name: m.leg.into(),
                    receive_key: r.upstream_keys[i].clone(),
                    send_key: r.forwarder_keys[i].clone(),
                    remote: Some(SocketAddr::new(self.peer_ip, r.ports[i])),
                })
                .collect(),
            tracks: Vec::new(),
            subscriptions: MEDIA
                .iter()
                .map(|m| SubscriptionSpec {
                    track: format!("{}/{}", self.publisher.id, m.track),
                    leg: m.leg.into(),
                    ..Default::default()
                })
                .collect(),
        });
        ConfigSpec {
            listen: self.listen,
            meeting: "interop".into(),
            participants: std::iter::once(publisher).chain(receivers).collect(),
        }
    }
}

/// A family of real SRTP peers that can play publisher and receivers.
pub trait PeerKit {
    /// Name for reports ("FFmpeg", "GStreamer").
    fn name(&self) -> &'static str;
    /// Executables the kit needs on the PATH (ffprobe is always needed to count frames).
    fn tools(&self) -> &'static [&'static str];
    /// Extension of the files written (the container of sent and received media).
    fn extension(&self) -> &'static str;
    /// Starts a receiver listening on `receiver.ports`, writing to `receiver.output`.
    fn start_receiver(&self, plan: &MeetingPlan, receiver: &ReceiverPlan) -> Result<Proc>;
    /// The UDP ports the receiver binds once it is ready for media.
    fn receiver_ports(&self, receiver: &ReceiverPlan) -> Vec<u16>;
    /// Starts the publisher; it exits when all its media is sent, with `plan.sent_file`
    /// complete.
    fn start_publisher(&self, plan: &MeetingPlan) -> Result<Proc>;
    /// Called once the forwarder has sent everything: makes the receiver finish its
    /// file and exit. Returns a description of how it ended.
    fn finish_receiver(&self, proc: &mut Proc, receiver: &ReceiverPlan) -> Result<String>;
    /// A string the receiver prints when a packet fails SRTP authentication, if any.
    fn auth_failure_marker(&self) -> Option<&'static str>;
    /// How the receivers notice the end of the media (for progress output).
    fn receivers_end(&self) -> &'static str;
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub profile: SrtpProfile,
    /// Media duration.
    pub seconds: u32,
    /// One entry per receiver: true gives that receiver keys the forwarder does not use.
    pub wrong_keys: Vec<bool>,
    /// Print a progress line per second while the media flows.
    pub progress: bool,
}

/// Per-leg counters from the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegReport {
    pub participant: String,
    pub leg: String,
    pub rtp_received: u64,
    pub rtp_sent: u64,
    pub rtcp_received: u64,
    pub rtcp_sent: u64,
    pub drops: u64,
}

/// One receiver's outcome.
#[derive(Debug, Clone)]
pub struct ReceiverReport {
    pub id: String,
    pub wrong_key: bool,
    pub decoded: FrameCounts,
    /// How the receiver process ended.
    pub ended: String,
    /// Whether its output shows SRTP authentication failures (None: the kit cannot tell).
    pub saw_auth_failures: Option<bool>,
    pub log_tail: String,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub kit: &'static str,
    pub profile: SrtpProfile,
    pub seconds: u32,
    /// Frames in the file the publisher wrote of what it sent.
    pub sent: FrameCounts,
    pub receivers: Vec<ReceiverReport>,
    pub legs: Vec<LegReport>,
    pub publisher_id: String,
    pub total_drops: u64,
    pub authentication_failures: u64,
    pub nonzero_drops: Vec<String>,
    /// `Err` with the reason if the forwarder did not exit 0 on SIGTERM.
    pub forwarder_exit: Result<(), String>,
    /// Where the forwarder ran ([`ForwarderNetwork`]'s description).
    pub network: String,
    /// In veth mode, what the forwarder's veth pair carried by the end of the media.
    pub veth: Option<VethTraffic>,
    pub forwarder_log_tail: String,
    pub elapsed: Duration,
}

impl Report {
    fn leg(&self, participant: &str, leg: &str) -> Option<&LegReport> {
        self.legs
            .iter()
            .find(|l| l.participant == participant && l.leg == leg)
    }

    /// Every expectation that does not hold; empty when the run is a success:
    /// * the publisher sent video and audio frames, and the forwarder authenticated RTP
    ///   on both publisher legs;
    /// * every receiver with the right keys decoded exactly the frames sent, every one
    ///   with wrong keys decoded none (and, where the peer says so, failed to authenticate);
    /// * every receiver leg was sent exactly as many RTP packets as the matching publisher
    ///   leg received;
    /// * the forwarder dropped nothing (in particular no authentication failures) and
    ///   exited 0 on SIGTERM.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.sent.video == 0 || self.sent.audio == 0 {
            failures.push(format!("the publisher sent no media: {:?}", self.sent));
        }
        for r in &self.receivers {
            if r.wrong_key {
                if r.decoded != FrameCounts::default() {
                    failures.push(format!(
                        "{} had wrong keys but decoded {:?}",
                        r.id, r.decoded
                    ));
                }
                if r.saw_auth_failures == Some(false) {
                    failures.push(format!(
                        "{} had wrong keys but reported no SRTP authentication failure",
                        r.id
                    ));
                }
            } else if r.decoded != self.sent {
                failures.push(format!(
                    "{} decoded {} video and {} audio frames; {} and {} were sent ({})",
                    r.id,
                    r.decoded.video,
                    r.decoded.audio,
                    self.sent.video,
                    self.sent.audio,
                    r.ended
                ));
            }
        }
        for m in MEDIA {
            let Some(publisher) = self.leg(&self.publisher_id, m.leg) else {
                failures.push(format!(
                    "no metrics for leg {}/{}",
                    self.publisher_id, m.leg
                ));
                continue;
            };
            if publisher.rtp_received == 0 {
                failures.push(format!(
                    "the forwarder received no RTP on {}/{}",
                    self.publisher_id, m.leg
                ));
            }
            for r in &self.receivers {
                match self.leg(&r.id, m.leg) {
                    None => failures.push(format!("no metrics for leg {}/{}", r.id, m.leg)),
                    Some(leg) if leg.rtp_sent != publisher.rtp_received => failures.push(format!(
                        "the forwarder sent {} RTP packets on {}/{} but received {} on {}/{}",
                        leg.rtp_sent, r.id, m.leg, publisher.rtp_received, self.publisher_id, m.leg
                    )),
                    Some(_) => {}
                }
            }
        }
        if self.authentication_failures != 0 {
            failures.push(format!(
                "the forwarder counted {} SRTP authentication failures",
                self.authentication_failures
            ));
        }
        if self.total_drops != 0 {
            failures.push(format!(
                "the forwarder dropped {} packets: {}",
                self.total_drops,
                self.nonzero_drops.join("; ")
            ));
        }
        if let Err(e) = &self.forwarder_exit {
            failures.push(e.clone());
        }
        if let Some(veth) = self.veth {
            // The forwarder's only way to its peers is its veth: all it counted must have
            // crossed it (and more: ARP, the metrics scrapes).
            let sent: u64 = self.legs.iter().map(|l| l.rtp_sent + l.rtcp_sent).sum();
            let received: u64 = self
                .legs
                .iter()
                .map(|l| l.rtp_received + l.rtcp_received)
                .sum();
            if veth.from_forwarder < sent {
                failures.push(format!(
                    "the forwarder counted {sent} packets sent, but its veth carried only {} \
                     from it",
                    veth.from_forwarder
                ));
            }
            if veth.to_forwarder < received {
                failures.push(format!(
                    "the forwarder counted {received} packets received, but its veth carried \
                     only {} to it",
                    veth.to_forwarder
                ));
            }
        }
        failures
    }

    /// Panics with the report, the failures and the logs of the failing processes unless
    /// the run is a success.
    pub fn assert_success(&self) {
        let failures = self.failures();
        if failures.is_empty() {
            return;
        }
        let mut logs = String::new();
        for r in &self.receivers {
            logs.push_str(&format!("\n--- {} log (tail) ---\n{}", r.id, r.log_tail));
        }
        logs.push_str(&format!(
            "\n--- forwarder log (tail) ---\n{}",
            self.forwarder_log_tail
        ));
        panic!("{self}\nFAILED:\n  {}\n{logs}", failures.join("\n  "));
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} interop, {}, {} s of media, {} receivers, run took {:.1} s",
            self.kit,
            self.profile.name(),
            self.seconds,
            self.receivers.len(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  publisher {} sent {} video frames, {} audio frames",
            self.publisher_id, self.sent.video, self.sent.audio
        )?;
        for r in &self.receivers {
            let verdict = match (r.wrong_key, r.decoded == self.sent) {
                (true, _) if r.decoded == FrameCounts::default() => {
                    "ok: wrong key, nothing decoded"
                }
                (true, _) => "FAIL: wrong key but frames decoded",
                (false, true) => "ok: every frame",
                (false, false) => "FAIL: frames missing",
            };
            writeln!(
                f,
                "  {:<10} decoded video {:>5}/{:<5} audio {:>5}/{:<5} {verdict}",
                r.id, r.decoded.video, self.sent.video, r.decoded.audio, self.sent.audio
            )?;
        }
        writeln!(
            f,
            "  forwarder counters (RTP in/out, RTCP in/out, drops) per leg:"
        )?;
        for l in &self.legs {
            writeln!(
                f,
                "    {:<10} {:<6} rtp {:>6} in {:>6} out   rtcp {:>4} in {:>4} out   drops {}",
                l.participant,
                l.leg,
                l.rtp_received,
                l.rtp_sent,
                l.rtcp_received,
                l.rtcp_sent,
                l.drops
            )?;
        }
        writeln!(
            f,
            "  forwarder drops: {} total, {} authentication failures{}",
            self.total_drops,
            self.authentication_failures,
            if self.nonzero_drops.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.nonzero_drops.join("; "))
            }
        )?;
        if let Some(veth) = self.veth {
            writeln!(
                f,
                "  network: {}; the veth carried {} packets to the forwarder, {} from it",
                self.network, veth.to_forwarder, veth.from_forwarder
            )?;
        }
        match &self.forwarder_exit {
            Ok(()) => writeln!(f, "  forwarder stopped cleanly on SIGTERM (exit 0)"),
            Err(e) => writeln!(f, "  forwarder stop: {e}"),
        }
    }
}

/// The temporary directory of a run: removed afterwards unless `FANOUT_KEEP_TEMP` is set
/// (then its path is printed, for post-mortems).
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temporary directory")?;
    if std::env::var_os("FANOUT_KEEP_TEMP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// Runs the scenario with `kit`'s peers. Errors are failures to run at all (a tool
/// missing, a peer that never listened or never ended); what happened to the media is
/// in the report (see [`Report::failures`]).
pub fn run(kit: &dyn PeerKit, options: &RunOptions) -> Result<Report> {
    let started = Instant::now();
    for tool in kit.tools().iter().chain(&["ffprobe"]) {
        require_tool(tool)?;
    }
    let dir = temp_dir("fanout-interop-")?;
    let network = ForwarderNetwork::from_env()?;
    let plan = MeetingPlan::new(
        options.profile,
        options.seconds,
        &options.wrong_keys,
        dir.path(),
        kit.extension(),
        &network,
    )?;
    let network_name = network.to_string();
    let forwarder = Forwarder::start(&plan.config(), dir.path(), network)?;
    if options.progress {
        eprintln!(
            "forwarder: {} driver, network: {network_name}",
            forwarder.driver().as_deref().unwrap_or("unknown")
        );
    }

    let mut receivers = Vec::new();
    for r in &plan.receivers {
        let mut proc = kit.start_receiver(&plan, r)?;
        wait_udp_bound(&mut proc, &kit.receiver_ports(r), BIND_TIMEOUT)?;
        receivers.push(proc);
    }

    let mut publisher = kit.start_publisher(&plan)?;
    let media = Duration::from_secs(u64::from(options.seconds));
    let status =
        publisher.wait_with_ticks(media + PUBLISHER_GRACE, Duration::from_secs(1), |t| {
            if options.progress {
                progress_line(&forwarder, &plan, t);
            }
        })?;
    if !status.success() {
        anyhow::bail!(
            "the {} publisher failed ({status}); stderr:\n{}",
            kit.name(),
            tail(&publisher.stderr())
        );
    }
    if options.progress {
        eprintln!(
            "[{:>5.1}s] publisher done; waiting for the receivers to finish ({})",
            started.elapsed().as_secs_f64(),
            kit.receivers_end()
        );
    }
    settle(&forwarder, &plan)?;

    let mut ended = Vec::new();
    for (proc, r) in receivers.iter_mut().zip(&plan.receivers) {
        ended.push(kit.finish_receiver(proc, r)?);
    }
    let note = |what: &str| {
        if options.progress {
            eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
        }
    };
    note("receivers done; stopping the forwarder and counting frames");

    let metrics = forwarder.scrape()?;
    // After the scrape: every packet the forwarder counted has crossed the veth by now.
    let veth = forwarder.network().veth_traffic()?;
    let forwarder_log = forwarder.stderr();
    let forwarder_exit = forwarder.stop().map(|_| ()).map_err(|e| format!("{e:#}"));

    let sent = count_frames(&plan.sent_file)?;
    let mut receiver_reports = Vec::new();
    for ((proc, r), ended) in receivers.iter().zip(&plan.receivers).zip(ended) {
        let log = format!("{}{}", proc.stdout(), proc.stderr());
        receiver_reports.push(ReceiverReport {
            id: r.id.clone(),
            wrong_key: r.wrong_key,
            decoded: count_frames(&r.output)?,
            ended,
            saw_auth_failures: kit.auth_failure_marker().map(|m| log.contains(m)),
            log_tail: tail(&log).to_owned(),
        });
    }

    note("frames counted");
    let participants =
        std::iter::once(&plan.publisher.id).chain(plan.receivers.iter().map(|r| &r.id));
    let mut legs = Vec::new();
    for participant in participants {
        for m in MEDIA {
            let counter = |name, kind| metrics.leg_counter(name, participant, m.leg, kind);
            legs.push(LegReport {
                participant: participant.clone(),
                leg: m.leg.into(),
                rtp_received: counter("fanout_leg_packets_received_total", "rtp")?,
                rtp_sent: counter("fanout_leg_packets_sent_total", "rtp")?,
                rtcp_received: counter("fanout_leg_packets_received_total", "rtcp")?,
                rtcp_sent: counter("fanout_leg_packets_sent_total", "rtcp")?,
                drops: metrics.leg_drops(participant, m.leg),
            });
        }
    }

    Ok(Report {
        kit: kit.name(),
        profile: options.profile,
        seconds: options.seconds,
        sent,
        receivers: receiver_reports,
        legs,
        publisher_id: plan.publisher.id.clone(),
        total_drops: metrics.total_drops(),
        authentication_failures: metrics.drops_for("authentication_failed"),
        nonzero_drops: metrics.nonzero_drops(),
        forwarder_exit,
        network: network_name,
        veth,
        forwarder_log_tail: tail(&forwarder_log).to_owned(),
        elapsed: started.elapsed(),
    })
}

/// True once every receiver leg has been sent as many RTP packets as the matching
/// publisher leg received.
fn all_forwarded(metrics: &Metrics, plan: &MeetingPlan) -> Result<bool> {
    for m in MEDIA {
        let received = metrics.rtp_received(&plan.publisher.id, m.leg)?;
        for r in &plan.receivers {
            if metrics.rtp_sent(&r.id, m.leg)? != received {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Waits (bounded) until the forwarder has sent out everything it received. If it never
/// does, the run goes on and the report shows the difference.
fn settle(forwarder: &Forwarder, plan: &MeetingPlan) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !all_forwarded(&forwarder.scrape()?, plan)? && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn progress_line(forwarder: &Forwarder, plan: &MeetingPlan, elapsed: Duration) {
    let line = forwarder.scrape().map(|m| {
        let received: u64 = MEDIA
            .iter()
            .filter_map(|med| m.rtp_received(&plan.publisher.id, med.leg).ok())
            .sum();
        let sent: u64 = plan
            .receivers
            .iter()
            .flat_map(|r| MEDIA.iter().map(move |med| (r, med)))
            .filter_map(|(r, med)| m.rtp_sent(&r.id, med.leg).ok())
            .sum();
        format!(
            "forwarder: {received} RTP packets in, {sent} out to {} receivers, {} dropped",
            plan.receivers.len(),
            m.total_drops()
        )
    });
    let line = line.unwrap_or_else(|e| format!("cannot scrape the forwarder: {e:#}"));
    eprintln!("[{:>3}s/{}s] {line}", elapsed.as_secs(), plan.seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_network() {
        let dir = Path::new("/nonexistent");
        let plan = MeetingPlan::new(
            SrtpProfile::AesCm128HmacSha1_80,
            1,
            &[false],
            dir,
            "webm",
            &ForwarderNetwork::loopback(),
        )
        .unwrap();
        let toml = plan.config().to_toml();
        assert!(toml.starts_with(&format!(
            "[forwarder]\nlisten = \"127.0.0.1:{}\"\n",
            plan.listen.port()
        )));
        for port in plan.receivers[0].ports {
            assert!(
                toml.contains(&format!("remote = \"127.0.0.1:{port}\"\n")),
                "{toml}"
            );
        }
        assert_eq!(plan.peer_ip, IpAddr::from([127, 0, 0, 1]));
    }
}
