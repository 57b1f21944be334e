//! A whole deployment on this machine, for `fanout-loadgen run --local`: the control plane
//! (one instance on the memory store, or several on a private etcd) and N forwarder
//! processes on loopback, in the scenario's regions. Every process is owned here and
//! killed when the deployment is dropped, however the run ends.
//!
//! With `netns`, each region gets its own network namespace ([`crate::netns`]): its
//! forwarders run inside it on its address, the control plane stays in the root namespace
//! on an address every region reaches, and the run makes each participant's socket in its
//! own region's namespace ([`LocalDeployment::region_sockets`]).
//!
//! When the scenario records, each forwarder gets a `fanout-recorder run` of its own
//! (socket and spool in the deployment's temporary directory, uploads to one local
//! directory store that outlives the run), started before it and stopped after it, so
//! that the recorder takes every packet the forwarder taps and uploads the last chunks.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::forwarder_metrics::{self, ForwarderSnapshot};
use crate::recording::RecorderFigures;

use crate::netns::{RegionNetworks, RegionSockets};

/// How a local deployment is shaped.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Forwarder processes, spread round-robin over `regions`.
    pub forwarders: u32,
    pub regions: Vec<String>,
    pub shards: u32,
    pub max_legs: Option<u32>,
    pub max_viewers_per_relay: u32,
    /// Control instances: one runs on the memory store; two or more share an etcd this
    /// deployment starts (so one can be killed without losing state).
    pub controls: u32,
    pub srtp_profile: String,
    /// Where `fanout-control` and `fanout-forwarder` are; default: next to this program.
    pub bin_dir: Option<PathBuf>,
    /// How long a silent forwarder stays alive to the control plane (failover speed).
    pub lease_ttl_ms: u32,
    /// Each region in its own network namespace: `regions` and `participant_regions`
    /// (where participants are, a region without forwarders included).
    pub netns: bool,
    pub participant_regions: Vec<String>,
    /// Start a recorder beside each forwarder (the scenario records).
    pub recording: Option<LocalRecording>,
}

/// The recorders of a deployment whose scenario records.
#[derive(Debug, Clone)]
pub struct LocalRecording {
    /// The recording store every recorder uploads to: a local directory, created if
    /// missing, kept after the run (`fanout-recorder stitch --store DIR` reads it).
    pub store: PathBuf,
}

/// A process of the deployment and the tail of what it logged.
struct Process {
    name: String,
    child: Child,
    log: Arc<Mutex<Log>>,
    /// Bumped at every line, for waiting on a marker.
    lines: watch::Receiver<u64>,
}

/// What a process logged: the last lines, and the rest of the first line that held each
/// marker the deployment waits for (kept even after the line scrolls out of the tail).
#[derive(Default)]
struct Log {
    tail: VecDeque<String>,
    found: Vec<(&'static str, String)>,
}

const LOG_TAIL_LINES: usize = 40;
/// Log lines kept for diagnostics are cut to this many characters (a forwarder lists
/// every port it binds on one line).
const LOG_LINE_CHARS: usize = 400;
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Process {
    /// Start `command`, watching its log for `markers`.
    fn spawn(name: &str, mut command: Command, markers: &[&'static str]) -> Result<Process> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Killed with this program too, which SIGKILL leaves no chance to drop it: SIGKILL
        // (a forwarder given SIGTERM waits for its control plane, gone too). The signal
        // comes when the forking thread ends: the runtime's main thread, which lives as
        // long as the program.
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // prctl, which is async-signal-safe.
            unsafe {
                command.as_std_mut().pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, lines) = watch::channel(0);
        let shared = Arc::clone(&log);
        let label = name.to_owned();
        let markers = markers.to_vec();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let line = strip_ansi(&line);
                debug!(process = %label, "{line}");
                {
                    let mut log = shared.lock().unwrap_or_else(|e| e.into_inner());
                    for marker in &markers {
                        if let Some((_, rest)) = line.split_once(marker) {
                            if !log.found.iter().any(|(m, _)| m == marker) {
                                log.found.push((marker, rest.to_owned()));
                            }
                        }
                    }
                    if log.tail.len() == LOG_TAIL_LINES {
                        log.tail.pop_front();
                    }
                    log.tail
                        .push_back(line.chars().take(LOG_LINE_CHARS).collect());
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
            lines,
        })
    }

    /// Wait for the first log line containing `marker` (one given to [`Process::spawn`]);
    /// returns the rest of the line after it.
    async fn wait_for(&mut self, marker: &str) -> Result<String> {
        let wait = async {
            loop {
                self.lines.borrow_and_update();
                {
                    let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((_, rest)) = log.found.iter().find(|(m, _)| *m == marker) {
                        return Ok(rest.clone());
                    }
                }
                if self.lines.changed().await.is_err() {
                    bail!("{} exited", self.name);
                }
            }
        };
        match tokio::time::timeout(START_TIMEOUT, wait).await {
            Ok(Ok(rest)) => Ok(rest),
            Ok(Err(e)) => Err(e.context(self.tail())),
            Err(_) => Err(anyhow!(
                "{} did not log {marker:?} within {START_TIMEOUT:?}\n{}",
                self.name,
                self.tail()
            )),
        }
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = format!("--- {} log (tail) ---", self.name);
        for line in log.tail.iter() {
            text.push('\n');
            text.push_str(line);
        }
        text
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn stop(&mut self) {
        self.stop_within(Duration::from_secs(5)).await;
    }

    /// SIGTERM, and SIGKILL if it has not exited within `grace`.
    async fn stop_within(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            fanout_forwarder::driver::os::kill(pid, libc::SIGTERM);
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    warn!(process = %self.name, %status, "exited with an error\n{}", self.tail());
                }
                Ok(_) => {}
                Err(_) => {
                    warn!(process = %self.name, ?grace, "did not stop in time: killed");
                    self.kill().await;
                }
            }
            return;
        }
        self.kill().await;
    }
}

/// Log lines without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One forwarder of the deployment.
pub struct LocalForwarder {
    pub id: String,
    pub region: String,
    /// Where its Prometheus metrics are served.
    pub metrics_url: String,
    process: Process,
    alive: bool,
}

impl std::fmt::Debug for LocalForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalForwarder")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

/// The recorder beside one forwarder.
pub struct LocalRecorder {
    /// The forwarder it records for (also its instance name in chunk keys).
    pub forwarder: String,
    /// Where its Prometheus metrics are served.
    pub metrics_url: String,
    process: Process,
}

impl std::fmt::Debug for LocalRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRecorder")
            .field("forwarder", &self.forwarder)
            .finish_non_exhaustive()
    }
}

/// The recorders of a deployment that records, and their store.
struct Recorders {
    list: Vec<LocalRecorder>,
    /// Absolute.
    store: PathBuf,
}

/// A running local deployment.
pub struct LocalDeployment {
    /// Credentials, configuration files, recorder sockets and spools; removed on drop.
    _dir: tempfile::TempDir,
    controls: Vec<Process>,
    pub forwarders: Vec<LocalForwarder>,
    /// One recorder per forwarder when the scenario records. (Boxed: a deployment is a
    /// variant of the run's target, kept small.)
    recording: Option<Box<Recorders>>,
    _etcd: Option<fanout_control::testing::EtcdServer>,
    /// `http://` URLs of the control instances.
    pub control_urls: Vec<String>,
    pub operator_token: String,
    /// The region namespaces (`netns`). Last, so that they are removed after the
    /// processes in them are killed.
    networks: Option<RegionNetworks>,
}

/// Local forwarders take blocks of media ports (a meeting, or a webinar's relay node,
/// takes one port) from below Linux's ephemeral range, where the participants' sockets
/// are, at random: deployments of concurrent runs (tests) rarely collide, and a collision
/// is retried on another block. (In a region namespace the ephemeral range is wider and
/// covers the blocks; the forwarders bind theirs before any participant binds there.)
const PORT_BLOCKS: std::ops::Range<u32> = 20..64;
const PORTS_PER_FORWARDER: u32 = 500;
const PORT_ATTEMPTS: u32 = 8;

/// What `fanout-control` logs when it serves (followed by its address), and what a
/// forwarder logs once registered and taking meetings.
const CONTROL_LISTENING: &str = "listening on ";
const FORWARDER_READY: &str = "control plane: watching the desired state";
/// What a forwarder logs when it serves its metrics (followed by the URL).
const FORWARDER_METRICS: &str = "metrics at ";
/// What a recorder logs when it serves its metrics (followed by the URL): after its socket
/// is bound, so it is ready for the forwarder.
const RECORDER_METRICS: &str = "metrics at ";
/// How long a recorder may take to stop: its own shutdown timeout for the last uploads
/// (given on its command line), and a margin.
const RECORDER_SHUTDOWN: Duration = Duration::from_secs(10);
const RECORDER_STOP_GRACE: Duration = Duration::from_secs(15);

impl std::fmt::Debug for LocalDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployment")
            .field("control_urls", &self.control_urls)
            .field("forwarders", &self.forwarders)
            .finish_non_exhaustive()
    }
}

impl LocalDeployment {
    pub async fn start(options: &LocalOptions) -> Result<LocalDeployment> {
        if options.forwarders == 0 {
            bail!("a local deployment needs at least one forwarder");
        }
        let bin_dir = binary_dir(options.bin_dir.as_deref())?;
        if options.recording.is_some() && !bin_dir.join("fanout-recorder").is_file() {
            bail!(
                "the scenario records, and fanout-recorder is not in {}; build it with \
                 `cargo build --release --bins` (or `-p fanout-recorder`)",
                bin_dir.display()
            );
        }
        let recording_store = match &options.recording {
            Some(recording) => {
                std::fs::create_dir_all(&recording.store).with_context(|| {
                    format!(
                        "cannot create the recording store {}",
                        recording.store.display()
                    )
                })?;
                Some(
                    std::fs::canonicalize(&recording.store)
                        .with_context(|| format!("cannot resolve {}", recording.store.display()))?,
                )
            }
            None => None,
        };
        let regions = if options.regions.is_empty() {
            vec!["local".to_owned()]
        } else {
            options.regions.clone()
        };
        // Created first, so that the control plane can listen where the regions reach it.
        // Blocking (it runs `ip`), for well under a second, and with no await inside: a
        // start cancelled by a signal never leaves half a network unowned.
        let networks = if options.netns {
            let mut named = regions.clone();
            for region in &options.participant_regions {
                if !named.contains(region) {
                    named.push(region.clone());
                }
            }
            Some(RegionNetworks::create(&named)?)
        } else {
            None
        };
        let control_ip = networks
            .as_ref()
            .and_then(RegionNetworks::control_ip)
            .map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string());
        let dir = tempfile::Builder::new()
            .prefix("fanout-loadgen-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let operator_token = random_token();
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        let secret = write("secret", &random_token())?;
        let operator = write("operator", &operator_token)?;
        let enrolment = write("enrolment", &random_token())?;
        let config = write(
            "control.toml",
            &format!(
                "[registry]\nlease_ttl_ms = {}\n\n[meetings]\nsrtp_profile = \"{}\"\n\n[relays]\nmax_viewers_per_relay = {}\n",
                options.lease_ttl_ms, options.srtp_profile, options.max_viewers_per_relay
            ),
        )?;

        let etcd = if options.controls > 1 {
            Some(fanout_control::testing::EtcdServer::start().await.context(
                "cannot start etcd for several control instances (is etcd-server installed?)",
            )?)
        } else {
            None
        };
        let mut controls = Vec::new();
        let mut control_urls = Vec::new();
        for index in 0..options.controls.max(1) {
            let name = format!("control-{index}");
            let mut command = Command::new(bin_dir.join("fanout-control"));
            match &etcd {
                Some(etcd) => command.args(["--store", "etcd", "--etcd", etcd.endpoint()]),
                None => command.args(["--store", "memory"]),
            };
            command
                .args(["--listen", &format!("{control_ip}:0")])
                .args(["--metrics", "127.0.0.1:0"])
                .arg("--secret-file")
                .arg(&secret)
                .arg("--operator-token-file")
                .arg(&operator)
                .arg("--enrolment-token-file")
                .arg(&enrolment)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "info");
            let mut process = Process::spawn(&name, command, &[CONTROL_LISTENING])?;
            let rest = process.wait_for(CONTROL_LISTENING).await?;
            let address = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            info!(%name, %address, "control plane started");
            control_urls.push(format!("http://{address}"));
            controls.push(process);
        }

        let mut forwarders = Vec::new();
        let mut recorders = Vec::new();
        let allowed = fanout_forwarder::driver::allowed_cpus();
        for index in 0..options.forwarders {
            let region = regions[index as usize % regions.len()].clone();
            let id = format!("fwd-{region}-{index}");
            let cpus = forwarder_cpus(&allowed, index, options.shards.max(1));
            // The recorder first, so the forwarder's first recorded packet finds it.
            // (A Unix socket's path reaches across network namespaces: a forwarder in a
            // region's namespace sends to it all the same.)
            let recorder_socket = match &recording_store {
                Some(store) => {
                    let (recorder, socket) =
                        start_recorder(&bin_dir, dir.path(), index, &id, store).await?;
                    recorders.push(recorder);
                    Some(socket)
                }
                None => None,
            };
            let network = match &networks {
                Some(networks) => {
                    let (namespace, ip) = networks
                        .region(&region)
                        .with_context(|| format!("region {region} has no namespace"))?;
                    let namespace = namespace
                        .try_clone()
                        .context("cannot duplicate a namespace descriptor")?;
                    Some((namespace, ip))
                }
                None => None,
            };
            let mut process = start_forwarder(
                &bin_dir,
                &id,
                &region,
                &control_urls[0],
                &enrolment,
                options,
                &cpus,
                network,
                recorder_socket.as_deref(),
            )
            .await?;
            // Logged before it registers: already found.
            let metrics_url = process
                .wait_for(FORWARDER_METRICS)
                .await?
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            forwarders.push(LocalForwarder {
                id,
                region,
                metrics_url,
                process,
                alive: true,
            });
        }
        info!(
            forwarders = forwarders.len(),
            recorders = recorders.len(),
            controls = controls.len(),
            "local deployment up"
        );
        let recording = recording_store.map(|store| {
            Box::new(Recorders {
                list: recorders,
                store,
            })
        });
        Ok(LocalDeployment {
            _dir: dir,
            controls,
            forwarders,
            recording,
            _etcd: etcd,
            control_urls,
            operator_token,
            networks,
        })
    }

    /// Where participants' sockets are made when each region has its own namespace.
    pub fn region_sockets(&self) -> Option<Arc<RegionSockets>> {
        self.networks.as_ref().map(RegionNetworks::sockets)
    }

    /// Process ids of the live forwarders.
    pub fn forwarder_pids(&self) -> Vec<u32> {
        self.forwarder_processes()
            .into_iter()
            .map(|(_, pid)| pid)
            .collect()
    }

    /// The live forwarders' ids and process ids.
    pub fn forwarder_processes(&self) -> Vec<(String, u32)> {
        self.forwarders
            .iter()
            .filter(|f| f.alive)
            .filter_map(|f| Some((f.id.clone(), f.process.child.id()?)))
            .collect()
    }

    /// The recorders, one per forwarder (none when the scenario records nothing).
    pub fn recorders(&self) -> &[LocalRecorder] {
        self.recording.as_deref().map_or(&[], |r| &r.list)
    }

    /// The recorders' process ids, by the forwarder each records for.
    pub fn recorder_processes(&self) -> Vec<(String, u32)> {
        self.recorders()
            .iter()
            .filter_map(|r| Some((r.forwarder.clone(), r.process.child.id()?)))
            .collect()
    }

    /// The recorders' store, when the deployment records.
    pub fn recording_store(&self) -> Option<&Path> {
        self.recording.as_deref().map(|r| r.store.as_path())
    }

    /// What every recorder's metrics say now (one that cannot be read: zeros, logged).
    pub async fn recorder_figures(&self) -> Vec<RecorderFigures> {
        let mut figures = Vec::with_capacity(self.recorders().len());
        for r in self.recorders() {
            let metrics = match forwarder_metrics::scrape(&r.metrics_url).await {
                Ok(text) => forwarder_metrics::summarize(&text),
                Err(e) => {
                    warn!(recorder = %r.forwarder, "cannot read its metrics: {e:#}");
                    Default::default()
                }
            };
            let snapshot = ForwarderSnapshot {
                id: r.forwarder.clone(),
                metrics,
                ..ForwarderSnapshot::default()
            };
            figures.push(RecorderFigures::from_snapshot(&r.forwarder, &snapshot));
        }
        figures
    }

    /// Wait until every recorder has closed its chunks and stored them (after the
    /// recordings stopped and media ended), at most `timeout`, and return their figures.
    /// Chunks close on the forwarder's End message or, without one, at their deadline
    /// (`chunk_seconds`), so this takes a few seconds at most.
    pub async fn settle_recorders(&self, timeout: Duration) -> Vec<RecorderFigures> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let figures = self.recorder_figures().await;
            if figures.iter().all(RecorderFigures::settled) {
                return figures;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    ?timeout,
                    "recorders still have open or unstored chunks; reporting what they did so far"
                );
                return figures;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kill a forwarder as a crash would (SIGKILL: no goodbye to the control plane).
    pub async fn kill_forwarder(&mut self, id: &str) -> Result<()> {
        let forwarder = self
            .forwarders
            .iter_mut()
            .find(|f| f.id == id && f.alive)
            .ok_or_else(|| anyhow!("no live local forwarder {id}"))?;
        forwarder.process.kill().await;
        forwarder.alive = false;
        Ok(())
    }

    /// What every forwarder's metrics say now (killed ones: nothing). A forwarder that
    /// cannot be read is reported without metrics and logged.
    pub async fn snapshots(&self) -> Vec<ForwarderSnapshot> {
        let mut snapshots = Vec::with_capacity(self.forwarders.len());
        for f in &self.forwarders {
            let mut snapshot = ForwarderSnapshot {
                id: f.id.clone(),
                region: f.region.clone(),
                killed: !f.alive,
                metrics: Default::default(),
                cpu_cores: None,
            };
            if f.alive {
                match forwarder_metrics::scrape(&f.metrics_url).await {
                    Ok(text) => snapshot.metrics = forwarder_metrics::summarize(&text),
                    Err(e) => warn!(forwarder = %f.id, "cannot read its metrics: {e:#}"),
                }
            }
            snapshots.push(snapshot);
        }
        snapshots
    }

    /// Kill a control instance (SIGKILL).
    pub async fn kill_control(&mut self, index: usize) -> Result<()> {
        let control = self
            .controls
            .get_mut(index)
            .ok_or_else(|| anyhow!("no control instance {index}"))?;
        control.kill().await;
        Ok(())
    }

    /// Stop everything cleanly (SIGTERM, then SIGKILL after 5 s; recorders after the
    /// forwarders, with time for their last uploads).
    pub async fn stop(mut self) {
        for forwarder in self.forwarders.iter_mut().filter(|f| f.alive) {
            forwarder.process.stop().await;
        }
        for recorder in self.recording.iter_mut().flat_map(|r| r.list.iter_mut()) {
            recorder.process.stop_within(RECORDER_STOP_GRACE).await;
        }
        for control in &mut self.controls {
            control.stop().await;
        }
    }

    /// The log tails of every process, for a failed run's diagnostics.
    pub fn tails(&self) -> String {
        self.controls
            .iter()
            .chain(self.forwarders.iter().map(|f| &f.process))
            .chain(self.recorders().iter().map(|r| &r.process))
            .map(Process::tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The CPUs forwarder `index` runs on: consecutive blocks of `shards` CPUs, wrapping
/// around when there are more shards than CPUs.
fn forwarder_cpus(allowed: &[usize], index: u32, shards: u32) -> Vec<usize> {
    if allowed.is_empty() {
        return Vec::new();
    }
    (0..shards)
        .map(|shard| allowed[((index * shards + shard) as usize) % allowed.len()])
        .collect()
}

/// Legs a local forwarder takes when `[local] max_legs` is not given: the forwarder's own
/// default (1,000), or enough for one full relay node and a small stage if that is more.
/// The control plane gives a forwarder a relay node only if it can hold
/// `max_viewers_per_relay + 1` legs, so with 1,000 viewers per relay and the forwarder's
/// default no forwarder could take one and every viewer's join would fail.
fn default_max_legs(max_viewers_per_relay: u32) -> u32 {
    const FORWARDER_DEFAULT: u32 = 1000;
    const STAGE: u32 = 50;
    FORWARDER_DEFAULT.max(max_viewers_per_relay.saturating_add(1 + STAGE))
}

/// Start one forwarder and wait until it takes meetings; in `network`'s namespace (with
/// its address) if given.
#[allow(clippy::too_many_arguments)]
async fn start_forwarder(
    bin_dir: &Path,
    id: &str,
    region: &str,
    control_url: &str,
    enrolment: &Path,
    options: &LocalOptions,
    cpus: &[usize],
    network: Option<(std::fs::File, std::net::Ipv4Addr)>,
    recorder_socket: Option<&Path>,
) -> Result<Process> {
    use rand::Rng;
    let ip = network
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_owned(), |(_, ip)| ip.to_string());
    let namespace = network.map(|(namespace, _)| Arc::new(namespace));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = rand::thread_rng().gen_range(PORT_BLOCKS) * PORTS_PER_FORWARDER;
        let mut command = Command::new(bin_dir.join("fanout-forwarder"));
        command
            .args(["--control", control_url])
            .args(["--forwarder-id", id, "--region", region])
            .args(["--media-ip", &ip, "--listen", &format!("{ip}:0")])
            .args([
                "--port-range",
                &format!("{first}-{}", first + PORTS_PER_FORWARDER - 1),
            ])
            .args(["--shards", &options.shards.max(1).to_string()])
            .args(["--progress-interval", "0", "--metrics", &format!("{ip}:0")])
            .arg("--enrolment-token-file")
            .arg(enrolment)
            .env("RUST_LOG", "info");
        let max_legs = options
            .max_legs
            .unwrap_or_else(|| default_max_legs(options.max_viewers_per_relay));
        command.args(["--max-legs", &max_legs.to_string()]);
        if let Some(socket) = recorder_socket {
            command.arg("--recorder-socket").arg(socket);
        }
        // Forwarders pin their shards to the CPUs they may use, the first ones first:
        // left alone, every forwarder would pin its shard 0 to the same CPU.
        let cpus = fanout_forwarder::driver::os::cpu_set(cpus);
        let namespace = namespace.clone();
        // SAFETY: the hook runs in the forked child before exec and makes at most two
        // system calls (setns, sched_setaffinity), both async-signal-safe; the namespace
        // descriptor is open in the child until exec (close-on-exec).
        unsafe {
            command.pre_exec(move || {
                if let Some(namespace) = &namespace {
                    // The whole process, and everything it binds, in the region.
                    fanout_forwarder::driver::os::enter_network_namespace(namespace)?;
                }
                // Best effort: a forwarder on every CPU still works.
                let _ = fanout_forwarder::driver::os::set_process_affinity(&cpus);
                Ok(())
            });
        }
        let mut process = Process::spawn(id, command, &[FORWARDER_READY, FORWARDER_METRICS])?;
        match process.wait_for(FORWARDER_READY).await {
            Ok(_) => return Ok(process),
            Err(e)
                if attempt < PORT_ATTEMPTS && process.tail().contains("Address already in use") =>
            {
                debug!(forwarder = %id, first, "port block taken, trying another: {e:#}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Start the recorder of forwarder `index` (`forwarder`): its socket and spool in `dir`,
/// uploading to `store`. Returns it and its socket, once it serves.
async fn start_recorder(
    bin_dir: &Path,
    dir: &Path,
    index: u32,
    forwarder: &str,
    store: &Path,
) -> Result<(LocalRecorder, PathBuf)> {
    // Short names: a Unix socket's path is limited to 107 bytes.
    let socket = dir.join(format!("rec-{index}.sock"));
    let spool = dir.join(format!("spool-{index}"));
    let mut command = Command::new(bin_dir.join("fanout-recorder"));
    command
        .arg("run")
        .arg("--socket")
        .arg(&socket)
        .arg("--spool")
        .arg(&spool)
        .arg("--store")
        .arg(store)
        // Its name in chunk keys: which forwarder's recorder wrote a chunk.
        .args(["--instance", forwarder])
        .args(["--metrics", "127.0.0.1:0", "--progress-interval", "0"])
        .args([
            "--shutdown-timeout",
            &RECORDER_SHUTDOWN.as_secs().to_string(),
        ])
        .env("RUST_LOG", "info");
    let name = format!("recorder-{forwarder}");
    let mut process = Process::spawn(&name, command, &[RECORDER_METRICS])?;
    let metrics_url = process
        .wait_for(RECORDER_METRICS)
        .await?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    info!(recorder = %name, socket = %socket.display(), "recorder started");
    Ok((
        LocalRecorder {
            forwarder: forwarder.to_owned(),
            metrics_url,
            process,
        },
        socket,
    ))
}

/// CPU time (user and system) process `pid` has used so far, in seconds; `None` when it
/// is gone or /proc cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')'): utime
    // and stime are the 12th and 13th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Where the deployment's binaries are: `explicit`, `$FANOUT_BIN_DIR`, or the directory of
/// this program (cargo puts every binary of the workspace there; a test's executable is
/// one level below, in `deps/`).
fn binary_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(dir) => vec![dir.to_owned()],
        None => {
            let mut dirs = Vec::new();
            if let Some(dir) = std::env::var_os("FANOUT_BIN_DIR") {
                dirs.push(PathBuf::from(dir));
            }
            let exe = std::env::current_exe().context("cannot locate this program")?;
            if let Some(dir) = exe.parent() {
                dirs.push(dir.to_owned());
                if dir.file_name().is_some_and(|n| n == "deps") {
                    dirs.extend(dir.parent().map(Path::to_owned));
                }
            }
            dirs
        }
    };
    candidates
        .iter()
        .find(|dir| dir.join("fanout-control").is_file() && dir.join("fanout-forwarder").is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "fanout-control and fanout-forwarder not found in {}; build them with `cargo build --release --bins` or pass --bin-dir",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// A random credential (hex of 32 random bytes).
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarders_take_a_full_relay_node_by_default() {
        assert_eq!(default_max_legs(250), 1000);
        assert!(default_max_legs(1000) > 1001);
        assert!(default_max_legs(5000) > 5001);
        assert!(default_max_legs(u32::MAX) > 0);
    }
}
