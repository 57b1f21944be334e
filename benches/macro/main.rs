//! `fanout-macro-bench`: the standalone forwarder measured end to end over loopback, next
//! to a raw UDP sender measured in the same run on the same receivers.
//!
//! For each SRTP profile and subscriber count N, the harness binds N subscriber sockets on
//! 127.0.0.1, writes a standalone configuration (one publisher, one video track, N
//! subscribers each with its own leg and keys), starts the release forwarder, and then:
//!
//! 1. searches the highest egress rate a raw sender sustains to the N sockets with loss
//!    under the threshold (the machine's ceiling: no crypto, no forwarding, one
//!    `sendmmsg` per 64 datagrams, datagrams of the forwarder's output size);
//! 2. searches the same for the forwarder fed by a paced SRTP publisher;
//! 3. runs one more window at half the forwarder's rate to read its latency.
//!
//! Each step sends ids (in the RTP timestamp) at a fixed pace: a warm-up, the measured
//! window, and a short tail so the window's end sees steady state. Receivers count by id,
//! after the senders stopped and the sockets drained, so in-flight packets at the window
//! edges are neither lost nor counted twice. See docs/benchmarks.md for results.

mod clock;
mod forwarder;
mod net;
mod packet;
mod receiver;
mod search;
mod sender;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fanout_forwarder::srtp::{SrtpContext, SrtpProfile};
use serde::Serialize;

use forwarder::{Counters, ForwarderProcess, Keys};
use receiver::Receivers;
use search::Search;
use sender::{SendReport, Sender, StepPlan};
use topology::Topology;

const DEFAULT_FORWARDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/release/fanout-forwarder"
);
const DEFAULT_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/macro-bench.json");
const DEFAULT_WORKDIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/macro-bench");

/// Macro benchmark of the standalone forwarder over loopback, compared with a raw sender.
///
/// For each profile and subscriber count N: one publisher sends paced SRTP to the release
/// forwarder binary, which forwards every packet to N subscriber sockets on 127.0.0.1, each
/// with its own keys. A bounded search (start rate, double until a step loses more than
/// the threshold, then bisect) finds the highest sustained egress rate (input rate x N).
/// The same search with a raw sender (pre-built datagrams of the same size sent with
/// sendmmsg straight to the same N sockets, no crypto) gives the machine's ceiling, and
/// ratio_to_raw = egress_pps / raw_sender_pps.
///
/// A step: warm-up, measured window, tail; packets carry an id (RTP timestamp) and a send
/// time (monotonic clock of this process, inside the encrypted payload). Loss = packets of
/// the window's ids not received by the subscribers by the end of the tail (a packet
/// queued longer than that is late, and counted as lost). A step also
/// fails if the sender could not keep 97% of its pace. One packet in --sample-every per
/// subscriber is unprotected with the subscriber's key (authentication check) and timed.
///
/// CPU: the forwarder's utime+stime (/proc/PID/stat) over the window gives busy_cores and
/// ns_per_packet (CPU ns per egress datagram). Latency p50/p99/p99.9 is read in one extra
/// window at half the rate found.
///
/// Output: a table on stdout, progress on stderr, and JSON records (--json). The forwarder
/// is stopped with SIGTERM at the end, on error and on Ctrl-C. Everything is sent to
/// 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "fanout-macro-bench", version, about, long_about)]
struct Args {
    /// The forwarder binary (`cargo build --release -p fanout-forwarder`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_FORWARDER)]
    forwarder: PathBuf,

    /// I/O driver of the forwarder, passed as `--io DRIVER`: mio, uring, afxdp or auto.
    /// `afxdp` needs `--network veth` (AF_XDP sockets sit on the root-side veth, behind
    /// the XDP guard, which it implies).
    #[arg(long, default_value = "mio")]
    driver: String,

    /// Put the forwarder's XDP port guard on the root-side veth (`--xdp IFACE`; needs
    /// `--network veth`): measures what the guard costs next to a run without it.
    #[arg(long)]
    xdp: bool,

    /// Forwarder shards (`--shards`): the N subscribers are split over this many
    /// meetings, each at its own port (so each runs on its own shard and core), each with
    /// its own publisher; every id is published once to each meeting. Egress stays
    /// N datagrams per id; ingress is one per meeting.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,

    /// Where the harness's sockets are: `loopback` (127.0.0.1, with the forwarder), or
    /// `veth`: in a network namespace of their own behind a veth pair, created for the
    /// run and removed after it (needs root and iproute2), so every datagram crosses an
    /// interface in each direction.
    #[arg(long, value_enum, default_value_t = Network::Loopback)]
    network: Network,

    /// Subscriber counts N to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    subscribers: Vec<usize>,

    /// SRTP profiles to measure, comma-separated (names as in docs/standalone.md).
    #[arg(long, value_delimiter = ',', default_value = "AEAD_AES_128_GCM")]
    profiles: Vec<String>,

    /// RTP payload bytes per packet; on the wire a datagram is 12 (RTP header) + this +
    /// the SRTP trailer (16 for GCM, 10 for CM-80). The raw sender sends the same size.
    #[arg(long, default_value_t = 1200)]
    payload_bytes: usize,

    /// Egress packets per second of the first step.
    #[arg(long, default_value_t = 20_000.0)]
    start_pps: f64,

    /// Highest egress rate tried.
    #[arg(long, default_value_t = 4_000_000.0)]
    max_pps: f64,

    /// Most steps per search (each ~warm-up + window + tail + drain).
    #[arg(long, default_value_t = 8)]
    steps: usize,

    /// Stop bisecting once the lowest failing rate is within this fraction of the highest
    /// passing one.
    #[arg(long, default_value_t = 0.05)]
    resolution: f64,

    /// Highest loss fraction a passing step may have.
    #[arg(long, default_value_t = 0.001)]
    loss_threshold: f64,

    /// Warm-up seconds of each step (sent, not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Measured seconds of each step.
    #[arg(long, default_value_t = 3.0)]
    window: f64,

    /// Seconds sent after the window, so its end sees steady state; a window packet that
    /// has not arrived by the end of the tail counts as lost (late).
    #[arg(long, default_value_t = 0.25)]
    tail: f64,

    /// Receiver threads sharing the subscriber sockets.
    #[arg(long, default_value_t = 1)]
    receiver_threads: usize,

    /// SO_RCVBUF/SO_SNDBUF of every harness socket (forced as root).
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,

    /// Unprotect and time one packet in this many, per subscriber.
    #[arg(long, default_value_t = 32)]
    sample_every: u64,

    /// Do not start another step after this many seconds; unfinished searches are reported
    /// as incomplete.
    #[arg(long, default_value_t = 1200)]
    max_seconds: u64,

    /// Where to write the JSON records (rewritten after each configuration).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_JSON)]
    json: PathBuf,

    /// Directory for the generated forwarder configurations (they hold keys) and logs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_WORKDIR)]
    workdir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Network {
    Loopback,
    Veth,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.forwarder.is_file() {
        eprintln!(
            "error: no forwarder binary at {}: run `cargo build --release -p fanout-forwarder` first",
            args.forwarder.display()
        );
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("error: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&args, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if stop.load(Relaxed) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: &Args, stop: &AtomicBool) -> Result<()> {
    let profiles = args
        .profiles
        .iter()
        .map(|p| SrtpProfile::from_name(p).with_context(|| format!("unknown profile {p}")))
        .collect::<Result<Vec<_>>>()?;
    if args.subscribers.contains(&0) {
        bail!("--subscribers must be at least 1");
    }
    let most = args.subscribers.iter().copied().max().unwrap_or(1) as u64;
    let limit = fanout_forwarder::driver::os::raise_nofile(most + 256)
        .context("cannot raise RLIMIT_NOFILE")?;
    if limit < most + 64 {
        bail!("RLIMIT_NOFILE is {limit}: too few descriptors for {most} subscriber sockets");
    }
    let machine = machine();
    eprintln!("machine: {machine}");
    let topology = match args.network {
        Network::Loopback => Topology::loopback(),
        Network::Veth => Topology::veth().context("cannot set up the veth pair")?,
    };
    if (args.xdp || args.driver == "afxdp") && topology.host_interface().is_none() {
        bail!("--xdp and --driver afxdp need --network veth: XDP sees only packets that cross an interface");
    }
    eprintln!(
        "network: {} (forwarder {}, peers {})",
        topology.name(),
        topology.forwarder_ip,
        topology.peer_ip
    );
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut records = Vec::new();
    for &profile in &profiles {
        for &n in &args.subscribers {
            let record = measure(args, &topology, profile, n, &machine, deadline, stop)?;
            records.push(record);
            write_json(&args.json, &records)?;
        }
    }
    print_table(&records);
    eprintln!("JSON: {}", args.json.display());
    Ok(())
}

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    samples: u64,
}

/// One step of a search, as kept in the JSON.
#[derive(Debug, Clone, Serialize)]
struct StepRecord {
    egress_pps: f64,
    /// Window packets lost or later than the tail.
    loss: f64,
    /// Of which arrived, but late.
    late: f64,
    worst_subscriber_loss: f64,
    achieved_egress_pps: f64,
    busy_cores: f64,
    ns_per_packet: f64,
    receiver_busy_cores: f64,
    passed: bool,
    note: String,
}

/// One configuration's result.
#[derive(Debug, Serialize)]
struct Record {
    driver: String,
    /// Whether the forwarder's XDP port guard was attached (always with afxdp).
    xdp: bool,
    /// `loopback` or `veth`.
    network: String,
    /// Forwarder shards, and meetings (one publisher each).
    shards: u16,
    profile: String,
    subscribers: usize,
    /// UDP payload bytes per datagram on the wire (RTP header + payload + SRTP trailer).
    packet_bytes: usize,
    payload_bytes: usize,
    egress_pps: f64,
    /// egress_pps × packet_bytes × 8 (UDP payload bits; headers not counted).
    egress_gbps: f64,
    /// egress_pps / busy_cores.
    pps_per_busy_core: f64,
    ingress_pps: f64,
    raw_sender_pps: f64,
    ratio_to_raw: f64,
    /// Forwarder CPU over the window at egress_pps, in cores.
    busy_cores: f64,
    ns_per_packet: f64,
    raw_busy_cores: f64,
    raw_ns_per_packet: f64,
    receiver_busy_cores: f64,
    /// Latency at half of egress_pps.
    latency_us: Latency,
    latency_egress_pps: f64,
    loss_at_latency_rate: f64,
    latency_at_max_us: Latency,
    /// Loss of the step at egress_pps.
    loss: f64,
    forwarder_limit: String,
    raw_limit: String,
    samples_verified: u64,
    auth_failures: u64,
    complete: bool,
    search: Vec<StepRecord>,
    raw_search: Vec<StepRecord>,
    warmup_s: f64,
    window_s: f64,
    machine: String,
    unix_time: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Raw,
    Forwarder,
}

/// The measured outcome of one step.
#[derive(Debug, Clone)]
struct Step {
    record: StepRecord,
    latency: Latency,
}

/// One configuration's moving parts.
struct Bench<'a> {
    args: &'a Args,
    n: usize,
    tag: String,
    receivers: Receivers,
    forwarder: ForwarderProcess,
    next_id: u64,
    deadline: Instant,
    stop: &'a AtomicBool,
}

fn measure(
    args: &Args,
    topology: &Topology,
    profile: SrtpProfile,
    n: usize,
    machine: &str,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Record> {
    let shards = usize::from(args.shards);
    if n < shards {
        bail!("--subscribers {n} is fewer than --shards {shards}: a meeting would be empty");
    }
    let xdp = (args.xdp || args.driver == "afxdp")
        .then(|| topology.host_interface())
        .flatten();
    let tag = format!(
        "{}{}-{}-{}-s{shards}-n{n}",
        args.driver,
        if xdp.is_some() { "+xdp" } else { "" },
        topology.name(),
        profile.name()
    );
    eprintln!("[{tag}] binding {n} subscriber sockets, starting the forwarder");
    let keys = Keys::generate(profile, shards, n);
    let receivers = Receivers::start(
        topology,
        keys.subscribers.clone(),
        args.receiver_threads,
        args.socket_buffer,
        args.sample_every,
    )?;
    let (meetings, metrics) = forwarder::free_ports(topology.forwarder_ip, shards)?;
    let toml = forwarder::config_toml(&meetings, profile, &keys, &receivers.addrs);
    let forwarder = ForwarderProcess::start(
        &args.forwarder,
        &args.workdir,
        &tag,
        &toml,
        metrics,
        forwarder::Io {
            driver: &args.driver,
            shards,
            xdp,
        },
    )?;
    let trailer = profile.rtp_trailer_len();
    let packet_bytes = packet::HEADER_LEN + args.payload_bytes.max(packet::MIN_PAYLOAD) + trailer;
    let mut bench = Bench {
        args,
        n,
        tag,
        receivers,
        forwarder,
        next_id: 1,
        deadline,
        stop,
    };

    let mut raw = topology.in_peer_namespace(|| {
        Ok(Sender::raw(
            topology.peer_ip,
            &bench.receivers.addrs,
            args.payload_bytes,
            trailer,
            args.socket_buffer,
        )?)
    })?;
    let (raw_best, raw_steps, raw_limit, raw_complete) = bench.search(&mut raw, Target::Raw)?;
    drop(raw);

    let publishers = meetings
        .iter()
        .zip(&keys.publishers)
        .map(|(address, key)| (*address, SrtpContext::new(key)))
        .collect();
    let mut publisher = topology.in_peer_namespace(|| {
        Ok(Sender::publisher(
            topology.peer_ip,
            publishers,
            args.payload_bytes,
            args.socket_buffer,
        )?)
    })?;
    let (best, steps, limit, complete) = bench.search(&mut publisher, Target::Forwarder)?;
    let half = best.as_ref().map(|b| b.record.egress_pps / 2.0);
    let at_half = match half {
        Some(rate) if !bench.out_of_time() => {
            Some(bench.step(&mut publisher, Target::Forwarder, rate, "latency")?)
        }
        _ => None,
    };
    bench.forwarder.check_alive()?;
    let shared = &bench.receivers.shared;
    let raw_pps = raw_best.as_ref().map_or(0.0, |s| s.record.egress_pps);
    let egress = best.as_ref().map_or(0.0, |s| s.record.egress_pps);
    let record = Record {
        driver: args.driver.clone(),
        xdp: xdp.is_some(),
        network: topology.name().to_string(),
        shards: args.shards,
        profile: profile.name().to_string(),
        subscribers: n,
        packet_bytes,
        payload_bytes: args.payload_bytes,
        egress_pps: egress,
        egress_gbps: egress * packet_bytes as f64 * 8.0 / 1e9,
        pps_per_busy_core: match best.as_ref().map_or(0.0, |s| s.record.busy_cores) {
            busy if busy > 0.0 => egress / busy,
            _ => 0.0,
        },
        ingress_pps: egress / n as f64 * shards as f64,
        raw_sender_pps: raw_pps,
        ratio_to_raw: if raw_pps > 0.0 { egress / raw_pps } else { 0.0 },
        busy_cores: best.as_ref().map_or(0.0, |s| s.record.busy_cores),
        ns_per_packet: best.as_ref().map_or(0.0, |s| s.record.ns_per_packet),
        raw_busy_cores: raw_best.as_ref().map_or(0.0, |s| s.record.busy_cores),
        raw_ns_per_packet: raw_best.as_ref().map_or(0.0, |s| s.record.ns_per_packet),
        receiver_busy_cores: best.as_ref().map_or(0.0, |s| s.record.receiver_busy_cores),
        latency_us: at_half
            .as_ref()
            .map_or_else(Latency::default, |s| s.latency),
        latency_egress_pps: half.unwrap_or(0.0),
        loss_at_latency_rate: at_half.as_ref().map_or(0.0, |s| s.record.loss),
        latency_at_max_us: best.as_ref().map_or_else(Latency::default, |s| s.latency),
        loss: best.as_ref().map_or(0.0, |s| s.record.loss),
        forwarder_limit: limit,
        raw_limit,
        samples_verified: shared.verified.load(Relaxed),
        auth_failures: shared.auth_failures.load(Relaxed),
        complete: complete && raw_complete && at_half.is_some(),
        search: steps,
        raw_search: raw_steps,
        warmup_s: args.warmup,
        window_s: args.window,
        machine: machine.to_string(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    eprintln!(
        "[{}] egress {:.0} pps, raw {:.0} pps, ratio {:.2}, {:.2} cores, {:.0} ns/packet, \
         p50/p99/p99.9 {:.0}/{:.0}/{:.0} µs",
        bench.tag,
        record.egress_pps,
        record.raw_sender_pps,
        record.ratio_to_raw,
        record.busy_cores,
        record.ns_per_packet,
        record.latency_us.p50,
        record.latency_us.p99,
        record.latency_us.p999
    );
    Ok(record)
}

impl Bench<'_> {
    /// Waits until nothing has arrived at the subscribers for 150 ms (at most 15 s), so
    /// the next step starts with empty queues.
    fn drain(&self) {
        let shared = &self.receivers.shared;
        let mut last = shared.all.load(Relaxed);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut still = 0;
        while still < 3 && Instant::now() < deadline && !self.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let now = shared.all.load(Relaxed);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
    }

    fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Runs a search; returns the best passing step, every step, what limited the rate
    /// (read from the lowest failing step) and whether the search ended by itself.
    fn search(
        &mut self,
        sender: &mut Sender,
        target: Target,
    ) -> Result<(Option<Step>, Vec<StepRecord>, String, bool)> {
        let mut search = Search::new(
            self.args.start_pps,
            self.args.max_pps,
            self.args.resolution,
            self.args.steps,
        );
        let mut best: Option<Step> = None;
        let mut lowest_fail: Option<Step> = None;
        let mut records = Vec::new();
        let mut complete = true;
        while let Some(rate) = search.next_rate() {
            if self.out_of_time() {
                eprintln!("[{}] --max-seconds reached: search cut short", self.tag);
                complete = false;
                break;
            }
            let label = match target {
                Target::Raw => "raw",
                Target::Forwarder => "forwarder",
            };
            let step = self.step(sender, target, rate, label)?;
            search.record(rate, step.record.passed);
            records.push(step.record.clone());
            if step.record.passed {
                if best
                    .as_ref()
                    .is_none_or(|b| b.record.egress_pps < step.record.egress_pps)
                {
                    best = Some(step);
                }
            } else if lowest_fail
                .as_ref()
                .is_none_or(|f| f.record.egress_pps > step.record.egress_pps)
            {
                lowest_fail = Some(step);
            }
        }
        let limit = match &lowest_fail {
            None => format!(
                "none found up to {:.0} pps (--max-pps or step budget)",
                search.pass.unwrap_or(0.0)
            ),
            Some(f) => f.record.note.clone(),
        };
        Ok((best, records, limit, complete))
    }

    /// One paced step at `egress` datagrams per second out of the forwarder (or the raw
    /// sender).
    fn step(
        &mut self,
        sender: &mut Sender,
        target: Target,
        egress: f64,
        label: &str,
    ) -> Result<Step> {
        if self.stop.load(Relaxed) {
            bail!("interrupted");
        }
        let args = self.args;
        let n = self.n as u64;
        let ids_rate = egress / n as f64;
        let ids = |secs: f64| ((ids_rate * secs).ceil() as u64).max(1);
        let warm = ids(args.warmup);
        let window = ids(args.window).max(2);
        let tail = ids(args.tail);
        let first = self.next_id;
        let plan = StepPlan {
            first_id: first,
            count: warm + window + tail,
            window_start: first + warm,
            window_end: first + warm + window,
            ids_per_second: ids_rate,
        };
        self.next_id += plan.count;
        if self.next_id > u64::from(u32::MAX) {
            bail!("packet ids exhausted (more than 2^32 ids in one configuration)");
        }
        self.drain();
        let shared = self.receivers.shared.clone();
        shared.reset_step(plan.first_id, plan.window_start, plan.window_end)?;
        let before = match target {
            Target::Forwarder => self.forwarder.counters()?,
            Target::Raw => Counters::default(),
        };
        let tid = AtomicI32::new(0);
        let stop = self.stop;
        let forwarder_stat = format!("/proc/{}/stat", self.forwarder.pid());
        let (report, cpu, wall, receiver_cpu) = std::thread::scope(|s| -> Result<_> {
            let handle = s.spawn(|| sender.run(&plan, &tid, stop));
            let start = Instant::now();
            let t0 = start + Duration::from_secs_f64(warm as f64 / ids_rate);
            let t1 = t0 + Duration::from_secs_f64(window as f64 / ids_rate);
            sleep_until(t0, stop);
            let measured = match target {
                Target::Forwarder => forwarder_stat.clone(),
                Target::Raw => format!("/proc/self/task/{}/stat", tid.load(Relaxed)),
            };
            let c0 = forwarder::cpu_ns(&measured);
            let r0 = receiver_cpu_ns(&shared.tids);
            let w0 = Instant::now();
            sleep_until(t1, stop);
            let c1 = forwarder::cpu_ns(&measured);
            let r1 = receiver_cpu_ns(&shared.tids);
            let wall = w0.elapsed().as_secs_f64();
            let report = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
            let cpu = match (c0, c1) {
                (Ok(a), Ok(b)) => b.saturating_sub(a),
                _ => 0,
            };
            Ok((report, cpu, wall, r1.saturating_sub(r0)))
        })?;
        if self.stop.load(Relaxed) {
            bail!("interrupted");
        }
        // What had arrived when the sender finished its tail: a window packet that arrives
        // later than that (--tail after the window) is too late for real-time media and
        // counts as lost, so a queue building up in the forwarder's or the subscribers'
        // socket buffers fails the step even if it would drain without a drop.
        let on_time = shared.window_counts();
        self.drain();
        let counters = match target {
            Target::Forwarder => {
                self.forwarder.check_alive()?;
                self.forwarder.counters()?.since(&before)
            }
            Target::Raw => Counters::default(),
        };
        let (final_loss, _) = search::loss(window, &shared.window_counts());
        let (loss, worst) = search::loss(window, &on_time);
        let late = (loss - final_loss).max(0.0);
        let achieved = report.window_rate(&plan).unwrap_or(0.0) * n as f64;
        let paced = report.ids_sent == plan.count && achieved >= 0.97 * egress;
        let passed = paced && loss < args.loss_threshold;
        let busy = if wall > 0.0 {
            cpu as f64 / 1e9 / wall
        } else {
            0.0
        };
        let receiver_busy = if wall > 0.0 {
            receiver_cpu as f64 / 1e9 / wall
        } else {
            0.0
        };
        // CPU per datagram actually sent over the window (the target rate when the sender
        // kept its pace).
        let packets = if achieved > 0.0 {
            achieved.min(egress)
        } else {
            egress
        } * wall;
        let ns_per_packet = if packets > 0.0 {
            cpu as f64 / packets
        } else {
            0.0
        };
        let latency = {
            let h = shared
                .latency
                .lock()
                .map_err(|_| anyhow::anyhow!("a receiver thread panicked"))?;
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            Latency {
                p50: us(0.5),
                p99: us(0.99),
                p999: us(0.999),
                samples: h.len(),
            }
        };
        let note = diagnose(
            target,
            paced,
            &report,
            &counters,
            // Copies per datagram in: each meeting has its share of the subscribers.
            n.div_ceil(u64::from(args.shards)),
            (loss, late),
            busy,
            receiver_busy,
        );
        eprintln!(
            "[{}] {label:>9} {:>9.0} pps: loss {:.4}% (late {:.4}%, worst sub {:.3}%), sent at {:.1}% of \
             pace, {} {:.2} cores {:.0} ns/pkt, receivers {:.2} cores, p50/p99 {:.0}/{:.0} µs \
             -> {}{}",
            self.tag,
            egress,
            loss * 100.0,
            late * 100.0,
            worst * 100.0,
            if egress > 0.0 {
                achieved / egress * 100.0
            } else {
                0.0
            },
            match target {
                Target::Raw => "raw sender",
                Target::Forwarder => "forwarder",
            },
            busy,
            ns_per_packet,
            receiver_busy,
            latency.p50,
            latency.p99,
            if passed { "pass" } else { "FAIL" },
            if passed {
                String::new()
            } else {
                format!(" ({note})")
            },
        );
        Ok(Step {
            record: StepRecord {
                egress_pps: egress,
                loss,
                late,
                worst_subscriber_loss: worst,
                achieved_egress_pps: achieved,
                busy_cores: busy,
                ns_per_packet,
                receiver_busy_cores: receiver_busy,
                passed,
                note,
            },
            latency,
        })
    }
}

/// Where a failing step lost its packets, from the step's totals.
#[allow(clippy::too_many_arguments)]
fn diagnose(
    target: Target,
    paced: bool,
    sent: &SendReport,
    forwarder: &Counters,
    fanout: u64,
    (loss, late): (f64, f64),
    busy: f64,
    receiver_busy: f64,
) -> String {
    let who = match target {
        Target::Raw => "raw sender",
        Target::Forwarder => "publisher",
    };
    if !paced {
        return format!("the {who} could not keep its pace ({busy:.2} cores busy)");
    }
    if target == Target::Forwarder {
        let published = sent.datagrams_sent;
        if (forwarder.received as f64) < published as f64 * 0.999 {
            return format!(
                "forwarder ingress: it read {} of {} published datagrams (its core {:.2} busy)",
                forwarder.received, published, busy
            );
        }
        let expected = forwarder.received * fanout;
        if ((forwarder.sent + forwarder.send_failures) as f64) < expected as f64 * 0.999 {
            return format!(
                "forwarder dropped: sent {} of {} copies (drops {}, send failures {})",
                forwarder.sent, expected, forwarder.meeting_drops, forwarder.send_failures
            );
        }
    }
    if late > 0.0 {
        return format!(
            "late: {:.3}% of the window arrived more than the tail after it (queues in the \
             {} or the subscriber sockets; receivers {receiver_busy:.2} cores busy)",
            late * 100.0,
            match target {
                Target::Raw => "sender",
                Target::Forwarder => "forwarder",
            }
        );
    }
    format!(
        "receive side: {:.3}% lost after the send path (subscriber sockets overflowed; \
         receivers {receiver_busy:.2} cores busy)",
        loss * 100.0
    )
}

fn receiver_cpu_ns(tids: &[AtomicI32]) -> u64 {
    tids.iter()
        .map(|t| t.load(Relaxed))
        .filter(|&t| t != 0)
        .filter_map(|t| forwarder::cpu_ns(&format!("/proc/self/task/{t}/stat")).ok())
        .sum()
}

fn sleep_until(at: Instant, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now >= at {
            return;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(100)));
    }
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
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

fn write_json(path: &std::path::Path, records: &[Record]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let text = serde_json::to_string_pretty(records)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn print_table(records: &[Record]) {
    println!(
        "{:<10} {:<8} {:>6} {:<24} {:>5} {:>6} {:>11} {:>6} {:>11} {:>11} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "driver",
        "network",
        "shards",
        "profile",
        "N",
        "bytes",
        "egress_pps",
        "Gbit/s",
        "pps/core",
        "raw_pps",
        "ratio",
        "cores",
        "ns/pkt",
        "p50_us",
        "p99_us",
        "p999_us",
        "loss%"
    );
    for r in records {
        println!(
            "{:<10} {:<8} {:>6} {:<24} {:>5} {:>6} {:>11.0} {:>6.2} {:>11.0} {:>11.0} {:>6.2} {:>6.2} {:>7.0} {:>8.0} {:>8.0} {:>8.0} {:>8.4}{}",
            if r.xdp { format!("{}+xdp", r.driver) } else { r.driver.clone() },
            r.network,
            r.shards,
            r.profile,
            r.subscribers,
            r.packet_bytes,
            r.egress_pps,
            r.egress_gbps,
            r.pps_per_busy_core,
            r.raw_sender_pps,
            r.ratio_to_raw,
            r.busy_cores,
            r.ns_per_packet,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.loss * 100.0,
            if r.complete { "" } else { "  (incomplete)" }
        );
    }
    for r in records {
        println!(
            "N={} {}: forwarder limit: {}; raw limit: {}",
            r.subscribers, r.profile, r.forwarder_limit, r.raw_limit
        );
    }
}
