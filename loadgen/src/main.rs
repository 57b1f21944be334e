//! `fanout-loadgen`: play thousands of participants against a Fanout deployment and report
//! what they experienced; plan an event's forwarders from a calibration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

use fanout_loadgen::compare::{CompareRun, Comparison, Variant};
use fanout_loadgen::local::{LocalDeployment, LocalOptions, LocalRecording};
use fanout_loadgen::report::{Report, RunResults, Threshold};
use fanout_loadgen::run::parts::{self, Part, PartResults, Shared};
use fanout_loadgen::run::{self, Processes, RunOptions, Target};
use fanout_loadgen::scenario::Scenario;
use fanout_loadgen::{calibrate, plan, selftest};

/// Fanout's load generator.
///
/// Plays a scenario (meetings, webinars, churn, impairments, failures) with simulated
/// participants that join through the control plane's gRPC API and send and receive
/// real SRTP media, then reports join time, one-way latency, loss before and after
/// retransmission, jitter, freezes and the recovery from injected failures.
///
/// `run SCENARIO --local` starts a whole deployment on this machine (control plane on the
/// memory store, forwarder processes on loopback, or each region in a network namespace of
/// its own with `[local] netns = true`), runs the scenario against it and tears it down.
/// Every participant has a UDP socket of its own: a run larger than the descriptor limit
/// allows is spread over several processes of this program (`--processes`), still one run
/// with one report. A scenario may record its meetings (`record = true`): the run starts
/// and stops the recordings, and `--local` runs a recorder beside each forwarder.
/// `compare` plays a scenario under two variants (e.g. recording off and on) on fresh
/// local deployments and reports the latency and CPU ratios. See docs/loadgen.md for the
/// scenario format and loadgen/scenarios/ for examples.
#[derive(Debug, Parser)]
#[command(name = "fanout-loadgen", version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Command,

    /// Log filter, in tracing's EnvFilter syntax (`RUST_LOG` works too).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and report.
    Run(Box<RunArgs>),
    /// Play a scenario under two variants on fresh local deployments, alternately, and
    /// report the candidate's latency and forwarder CPU as ratios to the baseline's.
    ///
    /// Each variant is the scenario with `--set` overrides of its own (`--baseline-set`,
    /// `--candidate-set`, on top of `--set` for both). Every run starts its own local
    /// deployment (as `run --local`), plays the scenario, and stops it. Rounds alternate
    /// which variant goes first (baseline first in odd rounds), so a machine that grows
    /// busier or quieter during the comparison favours neither. It prints each run, the
    /// ratios of percentiles over every packet of every run of a variant (histograms
    /// added), the ratio of each round, and their median, which one run disturbed by
    /// other work on the machine does not move. E.g. what recording costs:
    ///
    ///   fanout-loadgen compare loadgen/scenarios/recording-1000.toml
    ///     --baseline-set record=false --candidate-set record=true --rounds 3
    ///
    /// Exit code 2 if the median p99 ratio is above --max-p99-ratio.
    Compare(Box<CompareArgs>),
    /// Print the forwarders and relays an event needs, from a calibration.
    Plan(PlanArgs),
    /// Measure one forwarder's capacity (for `plan`): one publisher, growing numbers of
    /// subscribers, until latency or loss says the forwarder is full.
    Calibrate(CalibrateArgs),
    /// Measure the load generator's own overhead: a publisher sending straight to a
    /// subscriber over loopback, no forwarder between.
    Selftest(SelftestArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario file (TOML). Without one, the scenario is built from --set alone.
    scenario: Option<PathBuf>,

    /// Override a scenario field, in TOML: `--set duration_s=30`,
    /// `--set 'meetings=[{count=2, participants=5}]'`, `--set join.rate_per_s=500`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Start a whole deployment on this machine (see [local] in the scenario) and run
    /// against it.
    #[arg(long, conflicts_with = "control")]
    local: bool,

    /// Run against an existing deployment: its control plane URL(s), `http://host:port`
    /// (repeat for several instances; joins are spread over them).
    #[arg(long, value_name = "URL")]
    control: Vec<String>,

    /// File holding the operator token (to create, watch and end meetings).
    #[arg(long, value_name = "FILE", env = "FANOUT_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,

    /// Where `fanout-control` and `fanout-forwarder` (and `fanout-recorder` if the
    /// scenario records) are (--local); default: next to this program.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// With --local, when the scenario records: the directory the recorders store the
    /// recordings in (created if missing, kept after the run: `fanout-recorder stitch
    /// --store DIR --recording ID` makes a recording's file).
    #[arg(long, value_name = "DIR", default_value = "fanout-recordings")]
    recordings_dir: PathBuf,

    /// Write the report as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write every participant's own figures to FILE, one JSON object per line (join time,
    /// everything its receiver and publisher counted).
    #[arg(long, value_name = "FILE")]
    participants: Option<PathBuf>,

    /// Fail (exit code 2) if a condition on the report holds, e.g.
    /// `--fail-if "p99_latency_ms > 150"`. Repeatable.
    #[arg(long = "fail-if", value_name = "CONDITION")]
    fail_if: Vec<String>,

    /// Engine worker threads (default: one per CPU, leaving one to the forwarders with
    /// --local).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Seconds between progress lines (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    progress_interval: f64,

    /// Serve Prometheus metrics of the run at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// Load-generator processes to play the participants over: `auto` (one, or as many
    /// as the descriptor limit needs: every participant has a UDP socket of its own, and
    /// a process may hold at most its RLIMIT_NOFILE less 1,024 of them) or a number. This
    /// process plays one share and starts the others as children of its own; the run and
    /// its report stay one. Engine threads (--threads) are divided among them.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    processes: ProcessCount,

    /// (Internal: a child of a run over several processes.) The part it plays, `I/N`.
    #[arg(long, hide = true, requires_all = ["shared", "results"])]
    part: Option<Part>,

    /// (Internal.) The meetings the parent made, and its region namespaces (JSON).
    #[arg(long, hide = true, value_name = "FILE")]
    shared: Option<PathBuf>,

    /// (Internal.) Where the child writes what it measured (JSON).
    #[arg(long, hide = true, value_name = "FILE")]
    results: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// The scenario file (TOML). Without one, the scenario is built from --set alone.
    scenario: Option<PathBuf>,

    /// Override a scenario field for both variants, in TOML (as `run --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Override a field for the baseline only, e.g. `record=false`. Repeatable.
    #[arg(long = "baseline-set", value_name = "KEY=VALUE")]
    baseline_set: Vec<String>,

    /// Override a field for the candidate only, e.g. `record=true`. Repeatable.
    #[arg(long = "candidate-set", value_name = "KEY=VALUE")]
    candidate_set: Vec<String>,

    /// Rounds; each plays both variants once.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,

    /// Seconds to wait between runs, for the machine to settle (sockets closing, the
    /// previous deployment's memory returned).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pause: f64,

    /// Exit with code 2 if the candidate's p99 latency is more than RATIO times the
    /// baseline's, as the median of the rounds' ratios (e.g. 1.10: "moves p99 by less
    /// than 10%").
    #[arg(long, value_name = "RATIO")]
    max_p99_ratio: Option<f64>,

    /// Write the comparison as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write each run's full report as JSON into DIR (`round1-baseline.json`, ...).
    #[arg(long, value_name = "DIR")]
    reports_dir: Option<PathBuf>,

    /// Where `fanout-control`, `fanout-forwarder` and `fanout-recorder` are; default:
    /// next to this program.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Where a variant that records stores its recordings (see `run --recordings-dir`).
    #[arg(long, value_name = "DIR", default_value = "fanout-recordings")]
    recordings_dir: PathBuf,

    /// Engine worker threads (default: one per CPU, leaving one to the deployment).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Seconds between progress lines of each run (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    progress_interval: f64,
}

/// `--processes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessCount {
    Auto,
    Fixed(usize),
}

impl std::fmt::Display for ProcessCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessCount::Auto => f.write_str("auto"),
            ProcessCount::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for ProcessCount {
    type Err = String;

    fn from_str(text: &str) -> Result<ProcessCount, String> {
        if text == "auto" {
            return Ok(ProcessCount::Auto);
        }
        match text.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("expected `auto` or a number above 0, not {text:?}")),
            Ok(n) => Ok(ProcessCount::Fixed(n)),
        }
    }
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The event description (TOML; see loadgen/events/).
    event: PathBuf,
    /// The calibration of one forwarder (JSON written by `fanout-loadgen calibrate`).
    #[arg(long, value_name = "FILE")]
    calibration: PathBuf,
    /// Print the plan as JSON instead.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CalibrateArgs {
    /// Where to write the calibration (JSON).
    #[arg(long, value_name = "FILE", default_value = "calibration.json")]
    out: PathBuf,
    /// Seconds per step.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    step_duration: f64,
    /// Subscribers of the first step; each next step doubles them.
    #[arg(long, value_name = "N", default_value_t = 50)]
    start: u32,
    /// Stop at this many subscribers.
    #[arg(long, value_name = "N", default_value_t = 3200)]
    max: u32,
    /// The forwarder is full when the p99 latency passes this (ms) ...
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    latency_bound_ms: f64,
    /// ... or the loss after retransmission passes this fraction.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.001)]
    loss_bound: f64,
    /// Forwarder shards.
    #[arg(long, value_name = "N", default_value_t = 1)]
    shards: u32,
    /// SRTP profile.
    #[arg(long, default_value = "AEAD_AES_128_GCM")]
    srtp_profile: String,
    /// Where `fanout-control` and `fanout-forwarder` are.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SelftestArgs {
    /// Seconds to run.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Publisher/subscriber pairs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pairs: u32,
    /// Fail if the p99 latency is above this many microseconds.
    #[arg(long, value_name = "US", default_value_t = 100)]
    max_p99_us: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match args.command {
            Command::Run(run) => run_command(*run).await,
            Command::Compare(compare) => compare_command(*compare).await,
            Command::Plan(plan) => plan_command(&plan).map(|()| ExitCode::SUCCESS),
            Command::Calibrate(calibrate) => calibrate_command(calibrate).await,
            Command::Selftest(selftest) => selftest_command(&selftest).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a run whose `--fail-if` condition held (1 is for errors).
const THRESHOLD_FAILED: u8 = 2;

/// Descriptors a load-generator process keeps for other things than participants'
/// sockets (control-plane connections, the local deployment's pipes, the runtime).
const DESCRIPTOR_HEADROOM: u64 = 1024;

async fn run_command(args: RunArgs) -> Result<ExitCode> {
    if let Some(part) = args.part {
        return child_command(args, part).await;
    }
    let thresholds = args
        .fail_if
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let scenario = load_scenario(args.scenario.as_deref(), &args.set)?;
    run::listen_for_shutdown()?;
    let results = execute(&args, &scenario).await?;
    let report = Report::from_results(&results);
    println!("{}", report.human());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if path == Path::new("-") {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            info!(path = %path.display(), "report written");
        }
    }
    if let Some(path) = &args.participants {
        write_participants(path, &results)?;
    }
    let violations: Vec<String> = thresholds.iter().filter_map(|t| t.check(&report)).collect();
    for violation in &violations {
        error!("--fail-if: {violation}");
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(THRESHOLD_FAILED)
    })
}

/// Play `scenario` as `args` say (a local deployment or a remote one, one process or
/// several) and hand back what was measured.
async fn execute(args: &RunArgs, scenario: &Scenario) -> Result<RunResults> {
    let total = scenario.expand().total_participants;
    let raised = fanout_forwarder::driver::os::raise_nofile(total as u64 + DESCRIPTOR_HEADROOM)
        .context("cannot raise the descriptor limit")?;
    let processes = match args.processes {
        ProcessCount::Auto => parts::processes_for(total, raised, DESCRIPTOR_HEADROOM),
        ProcessCount::Fixed(n) => n,
    };
    if processes > 1 {
        info!(
            processes,
            participants = total,
            descriptor_limit = raised,
            per_process = Part {
                index: 0,
                count: processes
            }
            .size(total),
            "participants spread over several load-generator processes (one UDP socket each)"
        );
        if !scenario.failures.is_empty() {
            bail!(
                "[[failures]] need a single load-generator process; this run has {processes} \
                 (--processes {}, descriptor limit {raised} for {total} participants)",
                args.processes
            );
        }
    } else {
        info!(descriptor_limit = raised, "one UDP socket per participant");
    }
    let needed = Part {
        index: 0,
        count: processes,
    }
    .size(total) as u64
        + DESCRIPTOR_HEADROOM;
    if raised < needed {
        // raise_nofile stops at the hard limit when it may not raise it (no
        // CAP_SYS_RESOURCE, as in some containers even for root): say so now rather than
        // through participants failing to join with EMFILE.
        warn!(
            descriptor_limit = raised,
            needed,
            "the descriptor limit is below one socket per participant and cannot be raised \
             (the hard limit needs CAP_SYS_RESOURCE, or `ulimit -Hn` by whoever starts this \
             program); participants beyond it will fail to join"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (target, threads) = if args.local {
        let options = local_options(scenario, args.bin_dir.clone(), &args.recordings_dir);
        info!(
            forwarders = options.forwarders,
            regions = ?options.regions,
            netns = options.netns,
            "starting a local deployment"
        );
        // A signal while starting drops what was started (processes, region networks).
        let deployment = tokio::select! {
            biased;
            () = run::shutdown_signal() => bail!("interrupted while starting the local deployment"),
            deployment = LocalDeployment::start(&options) => deployment?,
        };
        (
            Target::Local(deployment),
            args.threads.unwrap_or((cores / 2).max(1)),
        )
    } else {
        if args.control.is_empty() {
            bail!("say where to run: --local, or --control URL with --operator-token-file");
        }
        let file = args
            .operator_token_file
            .as_deref()
            .context("--control needs --operator-token-file")?;
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim()
            .to_owned();
        (
            Target::Remote {
                control_urls: args.control.clone(),
                operator_token: token,
            },
            args.threads.unwrap_or(cores),
        )
    };
    let threads = (threads / processes).max(1);
    let spread = if processes > 1 {
        let mut child_args = Vec::new();
        if let Some(path) = &args.scenario {
            child_args.push(path.clone().into_os_string());
        }
        for set in &args.set {
            child_args.push("--set".into());
            child_args.push(set.into());
        }
        child_args.push("--threads".into());
        child_args.push(threads.to_string().into());
        Processes::Parent {
            count: processes,
            launcher: parts::Launcher {
                program: std::env::current_exe()
                    .context("cannot find this program, to start more of it")?,
                args: child_args,
            },
        }
    } else {
        Processes::One
    };
    let options = RunOptions {
        threads,
        progress_every: (args.progress_interval > 0.0)
            .then(|| Duration::from_secs_f64(args.progress_interval)),
        metrics: args.metrics,
    };
    let outcome = run::run_spread(scenario, target, &options, spread).await;
    let results = match outcome {
        Ok((results, Target::Local(deployment))) => {
            deployment.stop().await;
            results
        }
        Ok((results, Target::Remote { .. })) => results,
        Err(e) => return Err(e),
    };
    Ok(results)
}

/// `compare`: both variants, `--rounds` times, alternating, each on a fresh local
/// deployment (see [`fanout_loadgen::compare`]).
async fn compare_command(args: CompareArgs) -> Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let variant_sets = |variant: Variant| -> Vec<String> {
        let own = match variant {
            Variant::Baseline => &args.baseline_set,
            Variant::Candidate => &args.candidate_set,
        };
        args.set.iter().chain(own).cloned().collect()
    };
    // Both variants are read before anything runs: a typo fails now, not after an hour.
    let mut scenarios = Vec::new();
    for variant in [Variant::Baseline, Variant::Candidate] {
        let scenario = load_scenario(args.scenario.as_deref(), &variant_sets(variant))
            .with_context(|| format!("the {} variant", variant.name()))?;
        scenarios.push((variant, scenario));
    }
    let scenario_of = |variant: Variant| {
        &scenarios
            .iter()
            .find(|(v, _)| *v == variant)
            .expect("both variants were loaded above")
            .1
    };
    run::listen_for_shutdown()?;
    if let Some(dir) = &args.reports_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut runs = Vec::new();
    'rounds: for round in 1..=args.rounds {
        for variant in Variant::order(round) {
            if !runs.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs_f64(args.pause.max(0.0))) => {}
                    () = run::shutdown_signal() => break 'rounds,
                }
            }
            let load_average = load_average();
            info!(
                round,
                rounds = args.rounds,
                variant = variant.name(),
                load_average,
                "comparison run"
            );
            let run_args = RunArgs {
                scenario: args.scenario.clone(),
                set: variant_sets(variant),
                local: true,
                control: Vec::new(),
                operator_token_file: None,
                bin_dir: args.bin_dir.clone(),
                recordings_dir: args.recordings_dir.clone(),
                json: None,
                participants: None,
                fail_if: Vec::new(),
                threads: args.threads,
                progress_interval: args.progress_interval,
                metrics: None,
                processes: ProcessCount::Auto,
                part: None,
                shared: None,
                results: None,
            };
            let results = execute(&run_args, scenario_of(variant)).await?;
            let report = Report::from_results(&results);
            if let Some(dir) = &args.reports_dir {
                let path = dir.join(format!("round{round}-{}.json", variant.name()));
                std::fs::write(&path, report.to_json() + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let run = CompareRun::new(round, variant, &report, load_average);
            info!(
                round,
                variant = variant.name(),
                p50_ms = run.latency_ms.p50,
                p99_ms = run.latency_ms.p99,
                forwarder_cpu = ?run.forwarder_cpu_cores,
                "comparison run done"
            );
            runs.push((run, results.latency));
            // A signal ends the run early (it is still measured) and the comparison with it.
            if run::shutdown_requested() {
                warn!("interrupted: comparing the runs done so far");
                break 'rounds;
            }
        }
    }
    let comparison = Comparison::new(
        &scenario_of(Variant::Baseline).name,
        args.set.clone(),
        args.baseline_set.clone(),
        args.candidate_set.clone(),
        runs,
        machine_description(),
    );
    println!("{}", comparison.human());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&comparison)?;
        if path == Path::new("-") {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            info!(path = %path.display(), "comparison written");
        }
    }
    if let Some(max) = args.max_p99_ratio {
        match comparison.median_round_ratio.p99 {
            Some(p99) if p99 <= max => {}
            Some(p99) => {
                error!(
                    "the candidate's p99 latency is {p99:.3} times the baseline's (median over \
                     rounds), above {max}"
                );
                return Ok(ExitCode::from(THRESHOLD_FAILED));
            }
            None => bail!("no round has both variants' p99: nothing to compare"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The 1-minute load average (how busy the machine was: comparisons on a shared machine
/// say so).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPU model and how many CPUs this program may use.
fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} CPU(s)")
}

/// A child of a run over several processes: play one part in the parent's meetings and
/// hand back what it measured.
async fn child_command(args: RunArgs, part: Part) -> Result<ExitCode> {
    parts::exit_with_parent()?;
    let scenario = load_scenario(args.scenario.as_deref(), &args.set)?;
    run::listen_for_shutdown()?;
    let total = scenario.expand().total_participants;
    let needed = part.size(total) as u64 + DESCRIPTOR_HEADROOM;
    let raised = fanout_forwarder::driver::os::raise_nofile(needed)
        .context("cannot raise the descriptor limit")?;
    if raised < needed {
        warn!(
            descriptor_limit = raised,
            needed, "the descriptor limit is below one socket per participant of this part"
        );
    }
    // clap guarantees them with --part (requires_all).
    let (Some(shared), Some(results_path)) = (&args.shared, &args.results) else {
        bail!("--part needs --shared and --results");
    };
    let shared = Shared::read(shared)?;
    let file = args
        .operator_token_file
        .as_deref()
        .context("--part needs --operator-token-file")?;
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .trim()
        .to_owned();
    let target = Target::Remote {
        control_urls: args.control.clone(),
        operator_token: token,
    };
    let options = RunOptions {
        threads: args.threads.unwrap_or(1),
        progress_every: None,
        metrics: None,
    };
    let (results, _) = run::run_spread(
        &scenario,
        target,
        &options,
        Processes::Child { part, shared },
    )
    .await?;
    PartResults::of(&results, part).write(results_path)?;
    Ok(ExitCode::SUCCESS)
}

fn write_participants(path: &Path, results: &fanout_loadgen::report::RunResults) -> Result<()> {
    use std::io::Write as _;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for participant in &results.participants {
        serde_json::to_writer(&mut out, participant)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    info!(path = %path.display(), "per-participant figures written");
    Ok(())
}

/// The scenario from a file and `--set` overrides (each a TOML `key = value`, dotted keys
/// reaching into tables).
fn load_scenario(path: Option<&Path>, sets: &[String]) -> Result<Scenario> {
    let (text, origin) = match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the scenario {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (String::new(), "flags".to_owned()),
    };
    if sets.is_empty() {
        return Ok(Scenario::from_toml_str(&text, &origin)?);
    }
    let mut table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: expected KEY=VALUE"))?;
        let value: toml::Table = format!("v = {value}")
            .parse()
            .map_err(|e| anyhow::anyhow!("--set {set:?}: the value is not TOML: {e}"))?;
        let value = value
            .get("v")
            .cloned()
            .unwrap_or(toml::Value::Boolean(true));
        let mut at = &mut table;
        let mut parts: Vec<&str> = key.trim().split('.').collect();
        let last = parts.pop().context("--set: empty key")?;
        for part in parts {
            at = at
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("--set {key}: {part} is not a table"))?;
        }
        at.insert(last.to_owned(), value);
    }
    let text = toml::to_string(&table)?;
    Ok(Scenario::from_toml_str(
        &text,
        &format!("{origin} with --set"),
    )?)
}

fn local_options(scenario: &Scenario, bin_dir: Option<PathBuf>, recordings: &Path) -> LocalOptions {
    let local = &scenario.local;
    LocalOptions {
        forwarders: local.forwarders,
        regions: scenario.local_regions(),
        shards: local.shards,
        max_legs: local.max_legs,
        max_viewers_per_relay: local.max_viewers_per_relay,
        controls: local.controls,
        srtp_profile: scenario.srtp_profile.name().to_owned(),
        bin_dir,
        lease_ttl_ms: local.lease_ttl_ms,
        netns: local.netns,
        participant_regions: scenario.regions(),
        recording: scenario.local_recorders().then(|| LocalRecording {
            store: recordings.to_owned(),
        }),
    }
}

fn plan_command(args: &PlanArgs) -> Result<()> {
    let event = plan::Event::load(&args.event)?;
    let calibration = plan::Calibration::load(&args.calibration)?;
    let plan = plan::plan(&event, &calibration)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        println!("{}", plan.human());
    }
    Ok(())
}

async fn calibrate_command(args: CalibrateArgs) -> Result<ExitCode> {
    let options = calibrate::CalibrateOptions {
        step_duration: Duration::from_secs_f64(args.step_duration),
        start: args.start,
        max: args.max,
        latency_bound_ms: args.latency_bound_ms,
        loss_bound: args.loss_bound,
        shards: args.shards,
        srtp_profile: args.srtp_profile,
        bin_dir: args.bin_dir,
    };
    let calibration = calibrate::calibrate(&options).await?;
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&calibration)? + "\n",
    )
    .with_context(|| format!("cannot write {}", args.out.display()))?;
    info!(path = %args.out.display(), "calibration written");
    Ok(ExitCode::SUCCESS)
}

async fn selftest_command(args: &SelftestArgs) -> Result<ExitCode> {
    let measured = selftest::run(Duration::from_secs_f64(args.duration), args.pairs).await?;
    println!("{}", measured.human());
    Ok(if measured.p99_us <= args.max_p99_us {
        ExitCode::SUCCESS
    } else {
        error!(
            "the loopback p99 latency, {} µs, is above {} µs",
            measured.p99_us, args.max_p99_us
        );
        ExitCode::from(THRESHOLD_FAILED)
    })
}
