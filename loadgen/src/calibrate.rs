//! `fanout-loadgen calibrate`: how much one forwarder sends before it is full, for
//! [`plan`](crate::plan).
//!
//! One local forwarder, one meeting, one publisher (audio and the scenario defaults' video)
//! and a growing audience: each step doubles the subscribers and runs for a while; a step
//! passes while every subscriber gets media, the p99 one-way latency stays under the bound
//! and the loss after retransmission under its own. The last step that passed is the
//! forwarder's capacity: the packets per second it sent to its subscribers.
//!
//! On a machine that also runs the load generator, the load generator often runs out of
//! CPU before the forwarder does. So the forwarder's CPU time is measured during each step
//! (from /proc), and the capacity recorded is the measured egress scaled to the
//! forwarder's full cores (the raw figures are kept in `measured_with`). That assumes the
//! forwarder's cost per packet stays flat up to a full core, which the macro benchmark
//! (docs/benchmarks.md) supports; a calibration on a machine of its own is still the
//! better figure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use tracing::info;

use crate::local::{LocalDeployment, LocalOptions};
use crate::plan::{Calibration, ForwarderCapacity, Machine, MeasuredWith, CALIBRATION_VERSION};
use crate::report::{Report, RunResults};
use crate::run::{self, RunOptions, Target};
use crate::scenario::{MeetingSpec, Scenario};

/// The forwarder's own default of legs it accepts (`--max-legs`).
const FORWARDER_MAX_LEGS: u32 = 1000;

#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub step_duration: Duration,
    pub start: u32,
    pub max: u32,
    pub latency_bound_ms: f64,
    pub loss_bound: f64,
    pub shards: u32,
    pub srtp_profile: String,
    pub bin_dir: Option<PathBuf>,
}

/// One step's verdict.
fn passes(report: &Report, options: &CalibrateOptions) -> Result<(), String> {
    if report.join_failures > 0 {
        return Err(format!("{} joins failed", report.join_failures));
    }
    if report.participants_without_media > 0 {
        return Err(format!(
            "{} subscribers got no media",
            report.participants_without_media
        ));
    }
    if report.latency_ms.p99 > options.latency_bound_ms {
        return Err(format!(
            "p99 latency {:.1} ms > {} ms",
            report.latency_ms.p99, options.latency_bound_ms
        ));
    }
    if report.loss_after_rtx > options.loss_bound {
        return Err(format!(
            "loss after retransmission {:.4} > {}",
            report.loss_after_rtx, options.loss_bound
        ));
    }
    Ok(())
}

pub async fn calibrate(options: &CalibrateOptions) -> Result<Calibration> {
    if options.start == 0 || options.max < options.start {
        bail!("calibration steps need 0 < --start <= --max");
    }
    let max_legs = FORWARDER_MAX_LEGS.max(options.max + 1);
    let mut scenario = Scenario {
        name: "calibrate".into(),
        duration_s: options.step_duration.as_secs_f64(),
        srtp_profile: options
            .srtp_profile
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ..Scenario::default()
    };
    scenario.join.rate_per_s = 500.0;
    let deployment = LocalDeployment::start(&LocalOptions {
        forwarders: 1,
        regions: vec!["local".into()],
        shards: options.shards,
        max_legs: Some(max_legs),
        max_viewers_per_relay: 1000,
        controls: 1,
        srtp_profile: options.srtp_profile.clone(),
        bin_dir: options.bin_dir.clone(),
        lease_ttl_ms: 3000,
        netns: false,
        participant_regions: Vec::new(),
        recording: None,
    })
    .await?;
    let mut target = Target::Local(deployment);
    let run_options = RunOptions {
        threads: 1,
        progress_every: None,
        metrics: None,
    };
    let mut best: Option<(u32, Report, Egress)> = None;
    let mut subscribers = options.start;
    while subscribers <= options.max {
        scenario.meetings = vec![MeetingSpec {
            count: 1,
            participants: subscribers + 1,
            publishers: Some(1),
            audio_publishers: Some(1),
            ..MeetingSpec::default()
        }];
        scenario.validate("calibrate")?;
        let pids = match &target {
            Target::Local(deployment) => deployment.forwarder_pids(),
            Target::Remote { .. } => Vec::new(),
        };
        let cpu_before = cpu_seconds(&pids);
        let started = std::time::Instant::now();
        let (results, back) = run::run(&scenario, target, &run_options).await?;
        let cpu = (cpu_seconds(&pids) - cpu_before) / started.elapsed().as_secs_f64();
        target = back;
        let report = Report::from_results(&results);
        let mut egress = egress_rate(&results);
        egress.cpu = cpu;
        match passes(&report, options) {
            Ok(()) => {
                info!(
                    subscribers,
                    egress_packets_per_s = egress.packets_per_s.round(),
                    forwarder_cpu = format!("{:.0}%", egress.cpu * 100.0),
                    p99_latency_ms = report.latency_ms.p99,
                    "calibration step passed"
                );
                best = Some((subscribers, report, egress));
                subscribers = subscribers.saturating_mul(2);
            }
            Err(why) => {
                info!(
                    subscribers,
                    egress_packets_per_s = egress.packets_per_s.round(),
                    "calibration step failed: {why}"
                );
                break;
            }
        }
    }
    if let Target::Local(deployment) = target {
        deployment.stop().await;
    }
    let Some((subscribers, report, egress)) = best else {
        bail!(
            "even the first step ({} subscribers) did not pass",
            options.start
        );
    };
    let packet_bytes = report.bytes_received / report.packets_received.max(1);
    // Scaled to the forwarder's full cores; never below what it was seen to do.
    let full = f64::from(options.shards.max(1));
    let scale = if egress.cpu > 0.05 {
        (full / egress.cpu).max(1.0)
    } else {
        1.0
    };
    Ok(Calibration {
        version: CALIBRATION_VERSION,
        forwarder: ForwarderCapacity {
            shards: options.shards,
            egress_packets_per_s: egress.packets_per_s * scale,
            egress_bits_per_s: egress.bits_per_s * scale,
            max_legs,
            latency_p99_ms: report.latency_ms.p99,
        },
        measured_with: MeasuredWith {
            srtp_profile: options.srtp_profile.clone(),
            packet_bytes: packet_bytes as u32,
            subscribers,
            duration_s: report.duration_s,
            egress_packets_per_s: egress.packets_per_s,
            forwarder_cpu: egress.cpu,
        },
        machine: Machine {
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        },
    })
}

/// What the subscribers received per second of their time in the meeting, summed: the
/// forwarder's egress (joins and the end of the run excluded by construction).
#[derive(Debug, Clone, Copy)]
struct Egress {
    packets_per_s: f64,
    bits_per_s: f64,
    /// Cores the forwarder used meanwhile (CPU seconds per second).
    cpu: f64,
}

fn egress_rate(results: &RunResults) -> Egress {
    let mut egress = Egress {
        packets_per_s: 0.0,
        bits_per_s: 0.0,
        cpu: 0.0,
    };
    for participant in &results.participants {
        let seconds = participant.media_time_us as f64 / 1e6;
        if seconds > 0.0 {
            egress.packets_per_s += participant.receiver.packets as f64 / seconds;
            egress.bits_per_s += participant.receiver.bytes as f64 * 8.0 / seconds;
        }
    }
    egress
}

/// CPU time (user and system) the processes `pids` have used, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&pid| crate::local::cpu_seconds(pid))
        .sum()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}
