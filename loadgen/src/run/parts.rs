//! One run spread over several processes (`run --processes N`).
//!
//! Every simulated participant has a UDP socket of its own (the forwarder tells legs apart
//! by source address), so one process plays at most about as many participants as it may
//! open descriptors. A larger run is split: participant `p` (in the run's join order)
//! belongs to part `p % N`. The process the user started (the parent) does everything a
//! single-process run does (the deployment, the meetings, forwarder moves, failures, the
//! report) and plays part 0; it starts N − 1 children of the same program, each playing
//! one part in the parent's meetings ([`Shared`]), and folds what they measured
//! ([`PartResults`]) into its own results, so that the report is one run's.
//!
//! A child dies with its parent: it gets SIGTERM when the parent's thread that started it
//! ends (PR_SET_PDEATHSIG), and exits when its standard input, a pipe from the parent,
//! reaches end of file.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tracing::{info, warn};

use crate::netns::RegionNamespace;
use crate::report::{latency_histogram, ParticipantResult, RunResults};
use crate::Micros;

/// One process's share of the participants: those whose index in the join order is
/// `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    /// The whole run, in one process.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// Whether participant `participant` (its index in the join order) is this part's.
    pub fn plays(self, participant: usize) -> bool {
        participant % self.count == self.index
    }

    /// How many of `total` participants are this part's.
    pub fn size(self, total: usize) -> usize {
        total / self.count + usize::from(self.index < total % self.count)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Part {
    type Err = anyhow::Error;

    /// `I/N`.
    fn from_str(text: &str) -> Result<Part> {
        let (index, count) = text
            .split_once('/')
            .with_context(|| format!("part {text:?}: expected I/N"))?;
        let part = Part {
            index: index.trim().parse().context("part index")?,
            count: count.trim().parse().context("part count")?,
        };
        if part.count == 0 || part.index >= part.count {
            bail!("part {text:?}: the index must be below the count");
        }
        Ok(part)
    }
}

/// How many processes to use for `total` participants when one process may hold
/// `descriptor_limit` descriptors: one unless the participants' sockets and `headroom`
/// more do not fit.
pub fn processes_for(total: usize, descriptor_limit: u64, headroom: u64) -> usize {
    let per_process = descriptor_limit.saturating_sub(headroom).max(1) as usize;
    total.div_ceil(per_process).max(1)
}

/// What the parent gives its children: the meetings it created and where participants'
/// sockets are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    /// The run's time base: the parent's clock epoch in CLOCK_MONOTONIC nanoseconds
    /// (probes carry send times that receivers in every process must read alike).
    pub clock_epoch_ns: u64,
    pub meeting_ids: Vec<String>,
    pub host_keys: Vec<String>,
    /// The region namespaces of a `[local] netns` deployment (empty: none).
    pub namespaces: Vec<RegionNamespace>,
}

impl Shared {
    pub fn read(path: &Path) -> Result<Shared> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

/// What a child measured, handed back through a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartResults {
    pub part: usize,
    pub pid: u32,
    /// How long its media flowed.
    pub duration_us: Micros,
    /// Its participants with their index in the join order.
    pub participants: Vec<(usize, ParticipantResult)>,
    /// Its latency histogram, as (value, count) of every recorded bucket.
    pub latency: Vec<(u64, u64)>,
}

impl PartResults {
    /// `part`'s share of `results` (a child's run, whose other rows are empty).
    pub fn of(results: &RunResults, part: Part) -> PartResults {
        PartResults {
            part: part.index,
            pid: std::process::id(),
            duration_us: results.duration_us,
            participants: results
                .participants
                .iter()
                .enumerate()
                .filter(|(index, _)| part.plays(*index))
                .map(|(index, p)| (index, p.clone()))
                .collect(),
            latency: histogram_buckets(&results.latency),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self)?;
        // Written aside and renamed: the parent never reads half a file.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot rename {}", partial.display()))
    }

    pub fn read(path: &Path) -> Result<PartResults> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

/// A histogram's recorded buckets, each as its highest equivalent value and its count.
pub fn histogram_buckets(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// The histogram [`histogram_buckets`] describes (each value lands in its own bucket
/// again).
pub fn histogram_from(buckets: &[(u64, u64)]) -> Result<Histogram<u64>> {
    let mut histogram = latency_histogram();
    for &(value, count) in buckets {
        histogram
            .record_n(value, count)
            .map_err(|e| anyhow!("latency {value} µs: {e:?}"))?;
    }
    Ok(histogram)
}

/// Fold a child's results into the parent's: its participants in their rows, its
/// latencies into the histogram.
pub fn merge(results: &mut RunResults, part: PartResults) -> Result<()> {
    let total = results.participants.len();
    for (index, participant) in part.participants {
        let row = results
            .participants
            .get_mut(index)
            .with_context(|| format!("part {} has participant {index} of {total}", part.part))?;
        *row = participant;
    }
    results
        .latency
        .add(histogram_from(&part.latency)?)
        .map_err(|e| anyhow!("cannot add part {}'s latencies: {e:?}", part.part))?;
    results.duration_us = results.duration_us.max(part.duration_us);
    Ok(())
}

/// A child that handed nothing back: its participants are reported as never joined,
/// with why.
pub fn lost(results: &mut RunResults, part: Part, why: &str) {
    for (index, participant) in results.participants.iter_mut().enumerate() {
        if part.plays(index) {
            participant.part = part.index;
            participant.join_ms = None;
            participant.join_error = Some(format!("load-generator process {part}: {why}"));
        }
    }
}

/// How to start a child: this program and the arguments that make it load the same
/// scenario (the scenario file, `--set`, `--threads`).
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// The children of a run, playing parts 1 to N − 1.
#[derive(Debug)]
pub struct Children {
    children: Vec<Running>,
    /// Holds the shared file, the operator token and the children's results; removed on
    /// drop.
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Running {
    part: Part,
    /// Killed on drop (the parent failed); the pipe to its standard input closes then too.
    child: tokio::process::Child,
    results: PathBuf,
}

impl Children {
    /// Start parts 1 to `count` − 1 against `control_urls`.
    pub fn spawn(
        launcher: &Launcher,
        count: usize,
        shared: &Shared,
        control_urls: &[String],
        operator_token: &str,
    ) -> Result<Children> {
        let dir = tempfile::Builder::new()
            .prefix("fanout-loadgen-parts-")
            .tempdir()
            .context("cannot create a directory for the load-generator processes")?;
        let shared_path = dir.path().join("shared.json");
        std::fs::write(&shared_path, serde_json::to_string(shared)?)
            .with_context(|| format!("cannot write {}", shared_path.display()))?;
        let token_path = dir.path().join("operator-token");
        // The directory is the owner's alone (tempfile makes it 0700).
        std::fs::write(&token_path, operator_token)
            .with_context(|| format!("cannot write {}", token_path.display()))?;
        let mut children = Children {
            children: Vec::new(),
            dir,
        };
        for index in 1..count {
            let part = Part { index, count };
            let results = children.dir.path().join(format!("part-{index}.json"));
            let mut command = tokio::process::Command::new(&launcher.program);
            command
                .arg("run")
                .args(&launcher.args)
                .arg("--operator-token-file")
                .arg(&token_path)
                .arg("--part")
                .arg(part.to_string())
                .arg("--shared")
                .arg(&shared_path)
                .arg("--results")
                .arg(&results)
                .args(["--progress-interval", "0", "--log", "warn"]);
            for url in control_urls {
                command.arg("--control").arg(url);
            }
            command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            fanout_forwarder::driver::os::terminate_child_with_parent(command.as_std_mut());
            let mut child = command
                .spawn()
                .with_context(|| format!("cannot start {}", launcher.program.display()))?;
            if let Some(stderr) = child.stderr.take() {
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("[part {index}] {line}");
                    }
                });
            }
            info!(part = %part, pid = child.id(), "started a load-generator process");
            children.children.push(Running {
                part,
                child,
                results,
            });
        }
        Ok(children)
    }

    /// Ask every child to end its run early (SIGTERM: each still hands back what it
    /// measured).
    pub fn terminate(&self) {
        for running in &self.children {
            if let Some(pid) = running.child.id() {
                fanout_forwarder::driver::os::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Wait for every child, at most `timeout` in all (then it is killed), and read what
    /// each handed back.
    pub async fn wait(mut self, timeout: Duration) -> Vec<(Part, Result<PartResults>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        for running in &mut self.children {
            let part = running.part;
            let outcome = match tokio::time::timeout_at(deadline, running.child.wait()).await {
                Ok(Ok(status)) if status.success() => PartResults::read(&running.results),
                Ok(Ok(status)) => Err(anyhow!("it failed ({status})")),
                Ok(Err(e)) => Err(anyhow!("cannot wait for it: {e}")),
                Err(_) => {
                    let _ = running.child.kill().await;
                    Err(anyhow!(
                        "it did not finish within {} s of this one",
                        timeout.as_secs()
                    ))
                }
            };
            if let Err(e) = &outcome {
                warn!(part = %part, "load-generator process: {e:#}");
            }
            out.push((part, outcome));
        }
        let _ = &self.dir;
        out
    }
}

/// In a child: exit when the parent is gone (its end of the standard-input pipe closed).
pub fn exit_with_parent() -> Result<()> {
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(|| {
            use std::io::Read;
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            eprintln!("the parent load-generator process is gone: exiting");
            std::process::exit(1);
        })
        .context("cannot watch the parent process")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;
    use crate::scenario::Role;
    use crate::stats::ReceiverStats;

    #[test]
    fn parts_cover_everyone_once() {
        for total in [0, 1, 2, 7, 61, 50_002] {
            for count in 1..=5 {
                let sizes: Vec<usize> = (0..count)
                    .map(|index| Part { index, count }.size(total))
                    .collect();
                assert_eq!(sizes.iter().sum::<usize>(), total);
                for (index, size) in sizes.iter().enumerate() {
                    let part = Part { index, count };
                    assert_eq!((0..total).filter(|&p| part.plays(p)).count(), *size);
                }
            }
        }
        assert_eq!("2/3".parse::<Part>().unwrap(), Part { index: 2, count: 3 });
        assert!("3/3".parse::<Part>().is_err());
        assert!("1/0".parse::<Part>().is_err());
        assert!("1".parse::<Part>().is_err());
    }

    #[test]
    fn process_count_follows_the_descriptor_limit() {
        assert_eq!(processes_for(10, 20_000, 1024), 1);
        assert_eq!(processes_for(18_976, 20_000, 1024), 1);
        assert_eq!(processes_for(18_977, 20_000, 1024), 2);
        assert_eq!(processes_for(50_002, 20_000, 1024), 3);
        assert_eq!(processes_for(0, 20_000, 1024), 1);
        assert_eq!(processes_for(5, 100, 1024), 5);
    }

    fn participant(index: usize) -> ParticipantResult {
        let i = index as u64;
        ParticipantResult {
            name: format!("p{index}"),
            meeting: "m".into(),
            region: if index.is_multiple_of(2) { "eu" } else { "us" }.into(),
            role: if index == 0 {
                Role::Presenter
            } else {
                Role::Viewer
            },
            join_ms: Some(5.0 + i as f64),
            join_error: None,
            forwarder: Some(format!("fwd-{}", index % 3)),
            remb_kbps: Some(1200),
            expects_media: index != 0,
            receiver: ReceiverStats {
                packets: 1000 + i,
                bytes: 700_000 + i,
                expected: 800,
                lost_before_rtx: i % 5,
                jitter_max_us: 1000 * i,
                frames_rendered: 300,
                first_media_at: Some(1_000_000),
                last_media_at: Some(20_000_000),
                ..ReceiverStats::default()
            },
            publisher: None,
            rejoins: 0,
            moves: 0,
            media_time_us: 20_000_000,
            part: 0,
        }
    }

    fn results(participants: Vec<ParticipantResult>, latency: Histogram<u64>) -> RunResults {
        RunResults {
            scenario: "unit".into(),
            started_at: 1_795_000_000,
            duration_us: 20_000_000,
            participants,
            failures: Vec::new(),
            latency,
            forwarders: 3,
            controls: 1,
            deployment: Vec::new(),
            recording: None,
            processes: 1,
        }
    }

    /// Three processes' results, merged, report what one process playing everyone would.
    #[test]
    fn merged_parts_report_as_one_run() {
        let total = 61;
        let count = 3;
        let everyone: Vec<ParticipantResult> = (0..total).map(participant).collect();
        let mut whole = latency_histogram();
        let mut by_part: Vec<Histogram<u64>> = (0..count).map(|_| latency_histogram()).collect();
        for index in 0..total {
            for k in 0..50u64 {
                let us = 3_000 + (index as u64 * 977 + k * 131) % 90_000;
                whole.record(us).unwrap();
                by_part[index % count].record(us).unwrap();
            }
        }
        let single = Report::from_results(&results(everyone.clone(), whole.clone()));

        // The parent's own run: its rows filled, the others empty.
        let mut parent_rows: Vec<ParticipantResult> = (0..total)
            .map(|i| {
                if i % count == 0 {
                    everyone[i].clone()
                } else {
                    ParticipantResult {
                        join_ms: None,
                        receiver: ReceiverStats::default(),
                        ..everyone[i].clone()
                    }
                }
            })
            .collect();
        parent_rows[0].part = 0;
        let mut merged = results(parent_rows, by_part[0].clone());
        for (index, latency) in by_part.iter().enumerate().skip(1) {
            let part = Part { index, count };
            let mut child_rows: Vec<ParticipantResult> = everyone.clone();
            for row in &mut child_rows {
                row.part = index;
            }
            let child = results(child_rows, latency.clone());
            // Through the file format.
            let handed = PartResults::of(&child, part);
            let text = serde_json::to_string(&handed).unwrap();
            let read: PartResults = serde_json::from_str(&text).unwrap();
            assert_eq!(read, handed);
            merge(&mut merged, read).unwrap();
        }
        merged.processes = count;

        let report = Report::from_results(&merged);
        assert_eq!(report.processes, 3);
        assert_eq!(
            Report {
                processes: 1,
                ..report
            },
            single
        );
        assert_eq!(merged.latency.len(), whole.len());
        for q in [0.5, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.latency.value_at_quantile(q),
                whole.value_at_quantile(q)
            );
        }
        let parts: Vec<usize> = merged.participants.iter().map(|p| p.part).collect();
        assert_eq!(
            parts,
            (0..total).map(|i| i % count).collect::<Vec<_>>(),
            "each row says which process played it"
        );
    }

    /// A child's clock, made from the parent's epoch, reads what the parent's does.
    #[test]
    fn processes_share_the_time_base() {
        let parent = crate::engine::Clock::start();
        std::thread::sleep(Duration::from_millis(20));
        let child = crate::engine::Clock::from_monotonic_epoch_ns(parent.monotonic_epoch_ns());
        let (a, b) = (parent.now(), child.now());
        assert!(a >= 20_000, "{a}");
        assert!(a.abs_diff(b) < 2_000, "parent {a} µs, child {b} µs");
    }

    #[test]
    fn histograms_round_trip_through_buckets() {
        let mut h = latency_histogram();
        for us in [1, 2, 999, 1_000, 1_001, 45_678, 59_999_999, 120_000_000] {
            h.record_n(us, us % 7 + 1).unwrap();
        }
        let back = histogram_from(&histogram_buckets(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(histogram_buckets(&back), histogram_buckets(&h));
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
        assert_eq!(back.max(), h.max());
        assert_eq!(back.min(), h.min());
    }

    #[test]
    fn a_lost_part_is_reported_as_not_joined() {
        let mut r = results((0..10).map(participant).collect(), latency_histogram());
        lost(&mut r, Part { index: 1, count: 3 }, "it failed");
        let report = Report::from_results(&r);
        assert_eq!(report.joined, 7);
        assert_eq!(report.join_failures, 3);
        assert!(report.join_errors[0]
            .error
            .contains("process 1/3: it failed"));
    }
}
