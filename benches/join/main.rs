//! `fanout-join-bench`: join throughput and latency through the control plane to etcd.
//!
//! Starts a real etcd-server (fresh data directory, free ports) and the release
//! `fanout-control` binary on it, registers one forwarder large enough for everything,
//! creates the meetings (not timed), then runs `--joins` JoinMeeting calls from
//! `--concurrency` concurrent clients over one HTTP/2 connection each, spread over the
//! meetings round robin. Reports joins per second, join latency (p50/p99/p99.9/max, from
//! the client's send to its answer), errors by status code, and the resident memory of
//! the control process and of etcd at the end. JSON goes to `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fanout_control::api::pb;
use fanout_control::testing::EtcdServer;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const DEFAULT_CONTROL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/release/fanout-control"
);
const DEFAULT_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/join-bench.json");
const OPERATOR: &str = "join-bench-operator-token-0123456789";
const ENROLMENT: &str = "join-bench-enrolment-token-0123456789";

/// Join throughput and latency of the control plane on a real etcd.
#[derive(Debug, Parser)]
#[command(name = "fanout-join-bench", version, about, long_about)]
struct Args {
    /// The control-plane binary (`cargo build --release -p fanout-control`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    control: PathBuf,

    /// Joins to make.
    #[arg(long, default_value_t = 50_000)]
    joins: usize,

    /// Meetings the joins are spread over (round robin). With --webinar: one webinar.
    #[arg(long, default_value_t = 500)]
    meetings: usize,

    /// One webinar of --joins attendees instead of meetings.
    #[arg(long)]
    webinar: bool,

    /// Concurrent clients (each its own connection).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Meetings have a passcode, checked with argon2 at every join (the deliberate cost
    /// of a passcode: expect far fewer joins per second).
    #[arg(long)]
    passcode: bool,

    /// `etcd` (a real etcd-server the bench starts) or `memory` (the embedded store).
    #[arg(long, default_value = "etcd")]
    store: String,

    /// Where to write the JSON record.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_JSON)]
    json: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    store: String,
    joins: usize,
    meetings: usize,
    webinar: bool,
    passcode: bool,
    concurrency: usize,
    duration_s: f64,
    joins_per_s: f64,
    join_ms: Percentiles,
    errors: BTreeMap<String, u64>,
    create_s: f64,
    control_rss_mib: f64,
    etcd_rss_mib: f64,
    machine: String,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The control process; killed on drop.
struct ControlProcess(Child);

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn with_bearer<T>(message: T, credential: &str) -> Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}"))?,
    );
    Ok(request)
}

async fn run(args: Args) -> Result<()> {
    if !args.control.is_file() {
        bail!(
            "no control binary at {}: run `cargo build --release -p fanout-control` first",
            args.control.display()
        );
    }
    if args.concurrency == 0 || args.joins == 0 || (!args.webinar && args.meetings == 0) {
        bail!("--joins, --meetings and --concurrency must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("fanout-join-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("secret"),
        "join-bench-deployment-secret-0123456789",
    )?;
    std::fs::write(dir.join("operator"), OPERATOR)?;
    std::fs::write(dir.join("enrolment"), ENROLMENT)?;

    let etcd = match args.store.as_str() {
        "etcd" => Some(
            EtcdServer::start()
                .await
                .context("cannot start etcd-server")?,
        ),
        "memory" => None,
        other => bail!("--store {other}: etcd or memory"),
    };
    let mut command = Command::new(&args.control);
    command
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .arg("--operator-token-file")
        .arg(dir.join("operator"))
        .arg("--enrolment-token-file")
        .arg(dir.join("enrolment"));
    match &etcd {
        Some(etcd) => command.args(["--store", "etcd", "--etcd", etcd.endpoint()]),
        None => command.args(["--store", "memory"]),
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", args.control.display()))?;
    // Owned (and killed on drop) before anything below can fail.
    let mut control = ControlProcess(child);
    let stderr = control.0.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .context("fanout-control did not say where it listens")?;
    let url = format!("http://{address}");
    let connect = || async {
        Channel::from_shared(url.clone())?
            .connect()
            .await
            .context("cannot connect to fanout-control")
    };

    // One forwarder with room for everything, kept alive.
    let channel = connect().await?;
    let mut forwarders = pb::forwarders_client::ForwardersClient::new(channel.clone());
    let session = forwarders
        .register(with_bearer(
            pb::RegisterRequest {
                forwarder_id: "bench-forwarder".into(),
                media_ip: "127.0.0.1".into(),
                port_range_start: 20_000,
                port_range_end: 39_999,
                region: "local".into(),
                max_legs: 10_000_000,
                ..Default::default()
            },
            ENROLMENT,
        )?)
        .await
        .context("Register")?
        .into_inner();
    let heartbeat = tokio::spawn(async move {
        loop {
            if let Ok(request) = with_bearer(
                pb::HeartbeatRequest {
                    forwarder_id: "bench-forwarder".into(),
                    ..Default::default()
                },
                &session.session_token,
            ) {
                let _ = forwarders.heartbeat(request).await;
            }
            tokio::time::sleep(Duration::from_millis(
                session.heartbeat_interval_ms.max(100),
            ))
            .await;
        }
    });

    // Meetings, not timed with the joins.
    let created = Instant::now();
    let meetings: Vec<String> = if args.webinar {
        vec!["webinar".to_owned()]
    } else {
        (0..args.meetings).map(|i| format!("m{i:05}")).collect()
    };
    let per_meeting = args.joins.div_ceil(meetings.len()) as u32;
    let mut client = pb::meetings_client::MeetingsClient::new(channel.clone());
    for id in &meetings {
        let kind = if args.webinar {
            pb::MeetingKind::Webinar
        } else {
            pb::MeetingKind::Meeting
        };
        client
            .create_meeting(with_bearer(
                pb::CreateMeetingRequest {
                    meeting_id: id.clone(),
                    kind: kind.into(),
                    title: format!("bench {id}"),
                    passcode: args.passcode.then(|| "123456".to_owned()),
                    limits: Some(pb::Limits {
                        max_participants: per_meeting.max(2),
                        max_breakouts: 0,
                    }),
                    ..Default::default()
                },
                OPERATOR,
            )?)
            .await
            .with_context(|| format!("CreateMeeting {id}"))?;
    }
    let create_s = created.elapsed().as_secs_f64();
    eprintln!("{} meetings created in {create_s:.1} s", meetings.len());

    // The joins.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let meetings = Arc::new(meetings);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let mut client = pb::meetings_client::MeetingsClient::new(connect().await?);
        let (next, done, histogram, errors, meetings) = (
            next.clone(),
            done.clone(),
            histogram.clone(),
            errors.clone(),
            meetings.clone(),
        );
        let (joins, passcode) = (args.joins, args.passcode);
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= joins {
                    break;
                }
                let request = pb::JoinMeetingRequest {
                    meeting_id: meetings[i % meetings.len()].clone(),
                    display_name: format!("participant {i}"),
                    passcode: passcode.then(|| "123456".to_owned()),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let result = client.join_meeting(request).await;
                let micros = t0.elapsed().as_micros() as u64;
                match result {
                    Ok(_) => {
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(micros.max(1));
                        }
                    }
                    Err(status) => {
                        let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
                        *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                    }
                }
                done.fetch_add(1, Relaxed);
            }
            if let Some(local) = local {
                let mut all = histogram.lock().unwrap_or_else(|e| e.into_inner());
                let _ = all.add(&local);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        let total = args.joins as u64;
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let n = done.load(Relaxed);
                eprintln!(
                    "{n}/{total} joins, {:.0}/s",
                    n as f64 / start.elapsed().as_secs_f64()
                );
                if n >= total {
                    break;
                }
            }
        })
    };
    for task in tasks {
        task.await.context("a client task failed")?;
    }
    let duration_s = started.elapsed().as_secs_f64();
    progress.abort();
    heartbeat.abort();

    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ok = histogram.len();
    let report = Report {
        store: args.store.clone(),
        joins: args.joins,
        meetings: meetings.len(),
        webinar: args.webinar,
        passcode: args.passcode,
        concurrency: args.concurrency,
        duration_s,
        joins_per_s: ok as f64 / duration_s,
        join_ms: Percentiles {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
        },
        errors,
        create_s,
        control_rss_mib: rss_mib(control.0.id()),
        etcd_rss_mib: etcd.as_ref().map_or(0.0, |e| e.pid().map_or(0.0, rss_mib)),
        machine: machine(),
    };
    println!(
        "{} joins ({} ok) into {} {} in {:.1} s: {:.0} joins/s; join latency p50 {:.1} ms, \
         p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; control RSS {:.0} MiB, etcd RSS {:.0} MiB; \
         errors {:?}",
        report.joins,
        ok,
        report.meetings,
        if args.webinar { "webinar" } else { "meetings" },
        report.duration_s,
        report.joins_per_s,
        report.join_ms.p50,
        report.join_ms.p99,
        report.join_ms.p999,
        report.join_ms.max,
        report.control_rss_mib,
        report.etcd_rss_mib,
        report.errors
    );
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", args.json.display()))?;
    eprintln!("JSON: {}", args.json.display());
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}
