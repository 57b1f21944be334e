//! The system under test: the standalone `fanout-forwarder` binary, its configuration
//! file, its SRTP keys and its Prometheus metrics.

use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fanout_forwarder::srtp::{MasterKey, SrtpProfile};

use crate::process::{self, tail, Proc};
use crate::topology::ForwarderNetwork;

/// How long the forwarder may take to start serving metrics.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the forwarder may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of a `cargo build` of the forwarder when the binary is missing or stale.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Fresh random SRTP master key||salt for one profile, in the encodings peers want.
#[derive(Clone)]
pub struct SrtpKey {
    profile: SrtpProfile,
    material: Vec<u8>,
}

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpKey")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl SrtpKey {
    /// A fresh key from the forwarder's own generator (aws-lc's CSPRNG).
    pub fn generate(profile: SrtpProfile) -> SrtpKey {
        let inline = MasterKey::generate(profile).to_inline();
        let b64 = inline.strip_prefix("inline:").unwrap_or(&inline);
        // `to_inline` writes standard padded base64 of key||salt: decoding cannot fail,
        // and a failure would surface as a wrong-length key in `MasterKey::new` below.
        let material = STANDARD.decode(b64).unwrap_or_default();
        assert!(
            MasterKey::new(profile, &material).is_ok(),
            "MasterKey::to_inline gave an undecodable key"
        );
        SrtpKey { profile, material }
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// `inline:BASE64`, as in the forwarder's config and SDP `a=crypto` (RFC 4568).
    pub fn inline(&self) -> String {
        format!("inline:{}", self.base64())
    }

    /// Standard base64 of key||salt (FFmpeg's `-srtp_out_params`).
    pub fn base64(&self) -> String {
        STANDARD.encode(&self.material)
    }

    /// Lower-case hex of key||salt (GStreamer's `srtpenc key=` and `srtp-key` caps).
    pub fn hex(&self) -> String {
        self.material.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// One `[[meeting.participant.leg]]`.
#[derive(Debug, Clone)]
pub struct LegSpec {
    pub name: String,
    /// What the peer encrypts with.
    pub receive_key: SrtpKey,
    /// What the forwarder encrypts with towards the peer.
    pub send_key: SrtpKey,
    /// Where the peer listens; `None` for a publisher (learned from its packets).
    pub remote: Option<SocketAddr>,
}

/// One `[[meeting.participant.track]]`.
#[derive(Debug, Clone, Default)]
pub struct TrackSpec {
    pub name: String,
    pub kind: String,
    pub leg: String,
    /// The SSRC of a single-encoding track (ignored when `encodings` is not empty).
    pub ssrc: u32,
    /// A simulcast track's SSRCs, lowest quality first.
    pub encodings: Vec<u32>,
    /// The payload format (`VP8`, ...), for keyframe and layer detection.
    pub codec: Option<String>,
}

/// One `[[meeting.participant.subscription]]`.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionSpec {
    /// `participant/track`.
    pub track: String,
    pub leg: String,
    /// The highest simulcast encoding to forward (0 = lowest); `None` for no limit.
    pub max_encoding: Option<u8>,
}

/// One `[[meeting.participant]]`.
#[derive(Debug, Clone, Default)]
pub struct ParticipantSpec {
    pub id: String,
    pub legs: Vec<LegSpec>,
    pub tracks: Vec<TrackSpec>,
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// A standalone configuration file with one meeting.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    pub listen: SocketAddr,
    pub meeting: String,
    pub participants: Vec<ParticipantSpec>,
}

impl ConfigSpec {
    /// The TOML text (the format of the forwarder's `config` module).
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[forwarder]\nlisten = \"{}\"\n", self.listen);
        let _ = writeln!(t, "[[meeting]]\nid = \"{}\"\n", self.meeting);
        for p in &self.participants {
            let _ = writeln!(t, "[[meeting.participant]]\nid = \"{}\"\n", p.id);
            for leg in &p.legs {
                let _ = writeln!(t, "[[meeting.participant.leg]]");
                let _ = writeln!(t, "name = \"{}\"", leg.name);
                let _ = writeln!(t, "profile = \"{}\"", leg.send_key.profile().name());
                let _ = writeln!(t, "receive_key = \"{}\"", leg.receive_key.inline());
                let _ = writeln!(t, "send_key = \"{}\"", leg.send_key.inline());
                if let Some(remote) = leg.remote {
                    let _ = writeln!(t, "remote = \"{remote}\"");
                }
                t.push('\n');
            }
            for track in &p.tracks {
                let _ = writeln!(t, "[[meeting.participant.track]]");
                let _ = writeln!(t, "name = \"{}\"", track.name);
                let _ = writeln!(t, "kind = \"{}\"", track.kind);
                let _ = writeln!(t, "leg = \"{}\"", track.leg);
                if let Some(codec) = &track.codec {
                    let _ = writeln!(t, "codec = \"{codec}\"");
                }
                if track.encodings.is_empty() {
                    let _ = writeln!(t, "ssrc = 0x{:08x}\n", track.ssrc);
                } else {
                    let list: Vec<String> = track
                        .encodings
                        .iter()
                        .map(|s| format!("0x{s:08x}"))
                        .collect();
                    let _ = writeln!(t, "encodings = [{}]\n", list.join(", "));
                }
            }
            for sub in &p.subscriptions {
                let _ = writeln!(t, "[[meeting.participant.subscription]]");
                let _ = writeln!(t, "track = \"{}\"", sub.track);
                let _ = writeln!(t, "leg = \"{}\"", sub.leg);
                if let Some(max) = sub.max_encoding {
                    let _ = writeln!(t, "max_encoding = {max}");
                }
                t.push('\n');
            }
        }
        t
    }
}

/// The `fanout-forwarder` binary next to the running executable (target/<profile>/),
/// built with cargo first if it is missing or older than the forwarder's sources.
/// `FANOUT_FORWARDER_BIN` overrides the search.
pub fn forwarder_binary() -> Result<PathBuf> {
    workspace_binary("fanout-forwarder", "forwarder", "FANOUT_FORWARDER_BIN")
}

/// The `fanout-control` binary, found and built like [`forwarder_binary`];
/// `FANOUT_CONTROL_BIN` overrides the search.
pub fn control_binary() -> Result<PathBuf> {
    workspace_binary("fanout-control", "control", "FANOUT_CONTROL_BIN")
}

/// The `fanout-recorder` binary, found and built like [`forwarder_binary`];
/// `FANOUT_RECORDER_BIN` overrides the search.
pub fn recorder_binary() -> Result<PathBuf> {
    workspace_binary("fanout-recorder", "recorder", "FANOUT_RECORDER_BIN")
}

/// The directory holding `fanout-control` and `fanout-forwarder` (built if needed), for
/// `fanout-loadgen run --local --bin-dir`.
pub fn deployment_binary_dir() -> Result<PathBuf> {
    let control = control_binary()?;
    let forwarder = forwarder_binary()?;
    let dir = control
        .parent()
        .context("control binary has no directory")?;
    anyhow::ensure!(
        forwarder.parent() == Some(dir),
        "fanout-control and fanout-forwarder are in different directories"
    );
    Ok(dir.to_owned())
}

/// The `fanout-loadgen` binary, found and built like [`forwarder_binary`];
/// `FANOUT_LOADGEN_BIN` overrides the search.
pub fn loadgen_binary() -> Result<PathBuf> {
    workspace_binary("fanout-loadgen", "loadgen", "FANOUT_LOADGEN_BIN")
}

/// The binary `name` of the workspace package in folder `folder`, next to the running
/// executable (target/<profile>/), built with cargo first if it is missing or older than
/// its package's sources; `env` names a variable that overrides the search.
fn workspace_binary(name: &str, folder: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe
        .parent()
        .context("the running executable has no directory")?
        .to_owned();
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let binary = dir.join(name);
    if binary.is_file() && !is_stale(&binary, folder) {
        return Ok(binary);
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "-p", name, "--bin", name])
        .args(["--profile", &profile]);
    if let Some(target_dir) = dir.parent() {
        command.arg("--target-dir").arg(target_dir);
    }
    process::run(&format!("cargo build {name}"), command, BUILD_TIMEOUT)?;
    if !binary.is_file() {
        bail!("cargo built {name} but {} does not exist", binary.display());
    }
    Ok(binary)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// True if a file of the package in `folder` is newer than `binary` (a stale build would
/// test old code: cargo does not build other packages' binaries for a test target).
fn is_stale(binary: &Path, folder: &str) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let crate_dir = workspace_root().join(folder);
    newest_mtime(&crate_dir.join("src"))
        .into_iter()
        .chain(newest_mtime(&crate_dir.join("Cargo.toml")))
        .any(|t| t > built)
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A running forwarder. Killed on drop; [`Forwarder::stop`] stops it cleanly.
#[derive(Debug)]
pub struct Forwarder {
    // Fields drop in order: the process dies before its network namespace is removed.
    proc: Proc,
    metrics: SocketAddr,
    config_path: PathBuf,
    network: ForwarderNetwork,
}

impl Forwarder {
    /// Writes `config` to `dir/forwarder.toml`, starts the forwarder in `network` (where
    /// `config` must listen: [`ForwarderNetwork::forwarder_address`]) with metrics on a
    /// free port, and waits until its metrics endpoint answers (the driver is running).
    /// The forwarder owns `network` from here on, and removes it after its process.
    pub fn start(config: &ConfigSpec, dir: &Path, network: ForwarderNetwork) -> Result<Forwarder> {
        let path = dir.join("forwarder.toml");
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut command = network.command(&forwarder_binary()?);
        command
            .arg("--config")
            .arg(&path)
            .arg("--metrics")
            .arg(network.metrics_bind().to_string())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        if let Some(interface) = network.xdp_interface() {
            command.args(["--xdp", interface]);
        }
        // The start-up is recognised by an info line: a filter must keep info level.
        let filter = std::env::var("FANOUT_FORWARDER_LOG").unwrap_or_else(|_| "info".into());
        command.args(["--log", &filter]);
        let mut proc = Proc::spawn("fanout-forwarder", command)?;
        // Port 0 avoids any race for the metrics port; the forwarder logs what it bound.
        let metrics = proc.wait_stderr(READY_TIMEOUT, "its metrics address", |text| {
            let rest = &text[text.find("metrics at http://")? + "metrics at http://".len()..];
            rest[..rest.find("/metrics")?].parse::<SocketAddr>().ok()
        })?;
        let mut forwarder = Forwarder {
            proc,
            metrics,
            config_path: path,
            network,
        };
        forwarder.wait_ready()?;
        Ok(forwarder)
    }

    /// Polls `/metrics` until it answers 200: the endpoint relays through the driver loop,
    /// so an answer means the forwarder is receiving.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let error = match http_get(self.metrics, "/metrics") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.proc.try_status() {
                bail!(
                    "fanout-forwarder exited ({status}) during start-up; stderr:\n{}",
                    tail(&self.proc.stderr())
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "fanout-forwarder metrics at {} not ready within {READY_TIMEOUT:?}: \
                     {error:#}; stderr:\n{}",
                    self.metrics,
                    tail(&self.proc.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the configuration file with `config` (written to a temporary file and
    /// renamed over it, as an operator's editor would, so the forwarder never reads half a
    /// file) and sends SIGHUP. Returns a mark of the log: pass it to
    /// [`Forwarder::wait_log_after`] to wait for what the reload logged.
    pub fn reload(&mut self, config: &ConfigSpec) -> Result<usize> {
        let temporary = self.config_path.with_extension("toml.new");
        std::fs::write(&temporary, config.to_toml())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.config_path)
            .with_context(|| format!("cannot replace {}", self.config_path.display()))?;
        let mark = self.proc.stderr_mark();
        self.proc.signal(libc::SIGHUP)?;
        Ok(mark)
    }

    /// Waits until a line of the forwarder's log written after `mark` satisfies `found`;
    /// returns that line.
    pub fn wait_log_after(
        &mut self,
        mark: usize,
        timeout: Duration,
        what: &str,
        found: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.proc.wait_stderr_after(mark, timeout, what, |text| {
            text.lines().find(|l| found(l)).map(str::to_owned)
        })
    }

    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics
    }

    /// The I/O driver the forwarder logged it selected (`driver=` of its "I/O driver
    /// selected" line), if it did.
    pub fn driver(&self) -> Option<String> {
        let stderr = self.proc.stderr();
        let line = stderr.lines().find(|l| l.contains("I/O driver selected"))?;
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("driver="))?;
        Some(value.trim_matches('"').to_owned())
    }

    /// The forwarder's process id (in veth mode too: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Where the forwarder runs.
    pub fn network(&self) -> &ForwarderNetwork {
        &self.network
    }

    /// A fresh scrape of the forwarder's metrics.
    pub fn scrape(&self) -> Result<Metrics> {
        Metrics::parse(&http_get(self.metrics, "/metrics")?)
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// SIGTERM, then the exit status, which must be success (the forwarder stops cleanly
    /// on SIGTERM). The error carries its stderr.
    pub fn stop(mut self) -> Result<String> {
        let status = self.proc.stop(libc::SIGTERM, STOP_TIMEOUT)?;
        let stderr = self.proc.stderr();
        if !status.success() {
            bail!(
                "fanout-forwarder did not exit cleanly on SIGTERM ({status}); stderr:\n{}",
                tail(&stderr)
            );
        }
        Ok(stderr)
    }
}

/// A minimal HTTP/1.1 GET returning the body of a 200 answer.
pub fn http_get(address: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("cannot read the answer from {address}{path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET http://{address}{path}: {status}");
    }
    Ok(body.to_owned())
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text exposition format 0.0.4.
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("bad sample `{line}`"))?);
        }
        Ok(Metrics { samples })
    }

    /// Samples of `name` carrying every label of `labels`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, labels))
    }

    /// The value of the one sample of `name` with `labels`; an error if there is none
    /// (a misspelt series must not read as zero).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let mut found = self.select(name, labels);
        match (found.next(), found.next()) {
            (Some(s), None) => Ok(s.value),
            (None, _) => bail!("no sample {name}{labels:?}"),
            (Some(_), Some(_)) => bail!("more than one sample {name}{labels:?}"),
        }
    }

    /// The sum of every sample of `name` with `labels` (zero if there is none: counters
    /// such as per-leg drops are only exposed once non-zero).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).map(|s| s.value).sum()
    }

    /// RTP packets the forwarder authenticated on a leg.
    pub fn rtp_received(&self, participant: &str, leg: &str) -> Result<u64> {
        self.leg_counter("fanout_leg_packets_received_total", participant, leg, "rtp")
    }

    /// RTP packets the forwarder sent on a leg.
    pub fn rtp_sent(&self, participant: &str, leg: &str) -> Result<u64> {
        self.leg_counter("fanout_leg_packets_sent_total", participant, leg, "rtp")
    }

    pub fn leg_counter(&self, name: &str, participant: &str, leg: &str, kind: &str) -> Result<u64> {
        let labels = [("participant", participant), ("leg", leg), ("kind", kind)];
        Ok(self.get(name, &labels)? as u64)
    }

    /// Packets dropped on a leg, all reasons.
    pub fn leg_drops(&self, participant: &str, leg: &str) -> u64 {
        let labels = [("participant", participant), ("leg", leg)];
        self.sum("fanout_leg_dropped_packets_total", &labels) as u64
    }

    /// Every drop the forwarder counted: per leg and before any leg was identified.
    pub fn total_drops(&self) -> u64 {
        (self.sum("fanout_leg_dropped_packets_total", &[])
            + self.sum("fanout_dropped_packets_total", &[])) as u64
    }

    /// Drops for one reason, per leg and forwarder-wide.
    pub fn drops_for(&self, reason: &str) -> u64 {
        let labels = [("reason", reason)];
        (self.sum("fanout_leg_dropped_packets_total", &labels)
            + self.sum("fanout_dropped_packets_total", &labels)) as u64
    }

    /// Non-zero drop samples, for reports.
    pub fn nonzero_drops(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| {
                (s.name == "fanout_leg_dropped_packets_total"
                    || s.name == "fanout_dropped_packets_total")
                    && s.value != 0.0
            })
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            })
            .collect()
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (series, value) = line.rsplit_once(' ').context("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().context("value is not a number")?,
    };
    let Some((name, labels)) = series.split_once('{') else {
        return Ok(Sample {
            name: series.to_owned(),
            labels: Vec::new(),
            value,
        });
    };
    let mut rest = labels.strip_suffix('}').context("unterminated labels")?;
    let mut parsed = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("label without value")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, other)) => val.push(other),
                    None => bail!("dangling escape"),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => val.push(c),
            }
        }
        let end = end.context("unterminated label value")?;
        parsed.push((key.trim_start_matches(',').to_owned(), val));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(Sample {
        name: name.to_owned(),
        labels: parsed,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let m = Metrics::parse(
            "# HELP x y\nfanout_legs 4\nfanout_leg_packets_sent_total{meeting=\"m\",participant=\"a\\\"b\",leg=\"video\",kind=\"rtp\"} 12\n",
        )
        .unwrap();
        assert_eq!(m.get("fanout_legs", &[]).unwrap(), 4.0);
        assert_eq!(
            m.get("fanout_leg_packets_sent_total", &[("participant", "a\"b")])
                .unwrap(),
            12.0
        );
        assert!(m
            .get("fanout_leg_packets_sent_total", &[("leg", "audio")])
            .is_err());
    }

    #[test]
    fn keys_have_profile_lengths() {
        let k = SrtpKey::generate(SrtpProfile::AeadAes128Gcm);
        assert_eq!(k.hex().len(), 56);
        let k = SrtpKey::generate(SrtpProfile::AesCm128HmacSha1_80);
        assert_eq!(k.base64().len(), 40);
    }
}
