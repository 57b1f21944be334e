//! `fanout-recorder`: see the crate documentation and docs/recording.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::info;

use fanout_forwarder::exporter::{self, ProcessMetrics};
use fanout_recorder::ingest::daemon::{Daemon, DaemonConfig};
use fanout_recorder::ingest::metrics::IngestMetrics;
use fanout_recorder::ingest::upload::UploadSettings;
use fanout_recorder::ingest::ChunkPolicy;
use fanout_recorder::job;
use fanout_recorder::stitch::StitchOptions;
use fanout_recorder::store::{RecordingStore, StoreConfig};
use fanout_recorder::worker::{self, WorkerConfig, WorkerStats};

/// Fanout's cloud recorder.
///
/// `run` is the ingest daemon that sits next to a forwarder: it receives the decrypted
/// RTP packets of recorded meetings on a Unix datagram socket, writes them into chunk
/// files of a few seconds in a local spool directory, and uploads every closed chunk to
/// the recording store (a local directory or an S3-compatible bucket). `stitch` turns a
/// recording's chunks into one playable file, once or as a worker for the control plane.
/// See docs/recording.md.
#[derive(Debug, Parser)]
#[command(name = "fanout-recorder", version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Command,

    /// Log format.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (`RUST_LOG` works too).
    #[arg(long, env = "RUST_LOG", global = true, default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingest daemon: tap datagrams in, chunks out to the store.
    ///
    /// Every flag overrides the configuration file's value. The daemon keeps one open
    /// chunk per recording, closes it every `--chunk-seconds`, at `--max-chunk-bytes`, or
    /// when the forwarder says the recording ended, and uploads it in the background
    /// (retrying with backoff; a chunk leaves the spool only once stored). On start it
    /// first uploads what a previous run left in the spool, cut to its last whole record.
    /// SIGINT or SIGTERM stops it cleanly: it reads what is queued on the socket, closes
    /// every chunk and waits up to `--shutdown-timeout` for the uploads; what is not
    /// stored by then stays in the spool for the next run.
    ///
    /// S3 credentials come from `[store]` or the usual AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and AWS_ENDPOINT variables.
    Run(RunArgs),
    /// Stitch recordings into playable files: one (`--recording`), or, as a worker, every
    /// recording the control plane has a job for (`--control`).
    ///
    /// A job reads the recording's chunks from the store, orders, depacketizes and muxes
    /// them with FFmpeg (a grid of the participants' video and their mixed audio, WebM:
    /// VP8 and Opus), and uploads the file as the recording's output
    /// (`recordings/{id}/output.webm`). Jobs are idempotent: running one again replaces
    /// the same object. A worker claims jobs from the control plane's `Recordings` service
    /// with the operator credential, reports progress every 2 s (which keeps its claim),
    /// and reports the outcome; the control plane retries failed jobs. SIGINT or SIGTERM
    /// stops a worker after the job under way.
    Stitch(StitchArgs),
}

#[derive(Debug, clap::Args)]
struct StitchArgs {
    /// The configuration file (TOML): `[store]` and `[stitch]` sections (docs/recording.md).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    store: StoreArgs,

    /// Stitch this recording once, and exit.
    // Recording ids are drawn from the base64url alphabet and may start with '-' (1 in
    // 64 do): `--recording -eXyZ` must take it as the value, not as a flag.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "control",
        allow_hyphen_values = true
    )]
    recording: Option<String>,

    /// With `--recording`: also write the file here.
    #[arg(long, value_name = "FILE", requires = "recording")]
    output: Option<PathBuf>,

    /// With `--recording`: write what the job found here, as JSON: chunks read (and how
    /// many a crash cut short), and the stitcher's report (per stream: packets, losses,
    /// duplicates, segments, frames complete, skipped and written; per tile: frames
    /// written and when the tile shows video; the timeline's start and duration).
    #[arg(long, value_name = "FILE", requires = "recording")]
    report: Option<PathBuf>,

    /// With `--recording`: keep the intermediate files (per-stream spool, the tiles'
    /// IVF files, the Ogg Opus tracks) in DIR instead of removing them, for debugging;
    /// the report names the tile and audio files.
    #[arg(long, value_name = "DIR", requires = "recording")]
    keep_intermediate: Option<PathBuf>,

    /// Work for this control plane (`http(s)://host:port`): claim and run its jobs until
    /// stopped.
    #[arg(long, value_name = "URL")]
    control: Option<String>,

    /// With `--control`: file holding the operator credential (or set
    /// FANOUT_OPERATOR_TOKEN).
    #[arg(long, value_name = "FILE")]
    operator_token_file: Option<PathBuf>,

    /// This worker's name (default: the host name).
    #[arg(long, value_name = "NAME")]
    worker_name: Option<String>,

    /// Seconds between asks when no job is due (default 2).
    #[arg(long, value_name = "SECONDS")]
    poll_seconds: Option<f64>,

    /// Where jobs fetch chunks and build the file (default: the system's temp dir).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,

    /// The ffmpeg program (default `ffmpeg` on PATH).
    #[arg(long, value_name = "PATH")]
    ffmpeg: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (worker).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The configuration file (TOML): `[ingest]` and `[store]` sections (docs/recording.md).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The Unix datagram socket forwarders send to (default /run/fanout/recorder.sock).
    /// A socket file left by a recorder that is gone is replaced.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Where chunks are written before upload (default /var/spool/fanout-recorder).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,

    #[command(flatten)]
    store: StoreArgs,

    /// This recorder's name in chunk keys (default: the host name). Letters, digits, '.',
    /// '_', '-'.
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,

    /// Seconds of media per chunk: what a crash can lose at most (default 4).
    #[arg(long, value_name = "SECONDS")]
    chunk_seconds: Option<f64>,

    /// Largest chunk, in bytes (default 32 MiB).
    #[arg(long, value_name = "BYTES")]
    max_chunk_bytes: Option<u64>,

    /// Chunks uploaded at once (default 4).
    #[arg(long, value_name = "N")]
    upload_concurrency: Option<usize>,

    /// Seconds a stop waits for pending uploads (default 30).
    #[arg(long, value_name = "SECONDS")]
    shutdown_timeout: Option<f64>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Seconds between progress lines in the log; 0 for none.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    progress_interval: u64,

    /// Validate the configuration, open the store, and exit.
    #[arg(long)]
    check: bool,
}

/// Where recordings are kept (overriding `[store]`).
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The recording store: `file:///DIR`, a directory, or `s3://BUCKET[/PREFIX]`
    /// (default /var/lib/fanout/recordings).
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// S3: the endpoint of a non-AWS store, e.g. http://127.0.0.1:9000 (plain HTTP is
    /// allowed to loopback addresses, elsewhere with `allow_http = true` in `[store]`).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,

    /// S3: the region.
    #[arg(long, value_name = "NAME")]
    s3_region: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    ingest: IngestSection,
    store: Option<StoreConfig>,
    #[serde(default)]
    stitch: StitchSection,
}

/// `[stitch]`: the stitcher's settings (flags of the same name override them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StitchSection {
    control: Option<String>,
    operator_token_file: Option<PathBuf>,
    worker_name: Option<String>,
    poll_seconds: Option<f64>,
    scratch: Option<PathBuf>,
    ffmpeg: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    /// The output's picture: width, height, frames per second, bitrates.
    width: Option<u16>,
    height: Option<u16>,
    fps: Option<u16>,
    video_bitrate_kbps: Option<u32>,
    audio_bitrate_kbps: Option<u32>,
}

/// `[ingest]`: the daemon's settings; each has a flag of the same name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestSection {
    socket: Option<PathBuf>,
    spool: Option<PathBuf>,
    instance: Option<String>,
    chunk_seconds: Option<f64>,
    max_chunk_bytes: Option<u64>,
    /// SO_RCVBUF of the tap socket (default 8 MiB; forced as root).
    socket_buffer_bytes: Option<usize>,
    upload_concurrency: Option<usize>,
    shutdown_timeout_seconds: Option<f64>,
    metrics: Option<SocketAddr>,
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
    let result = match args.command {
        Command::Run(run_args) => run(run_args),
        Command::Stitch(stitch_args) => stitch(stitch_args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

fn seconds(value: f64, name: &str) -> Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("{name} must be a positive number of seconds, not {value}"),
    }
}

/// The host name, made fit for a key: other characters become '-'.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    if name.is_empty() {
        "recorder".to_owned()
    } else {
        name.to_owned()
    }
}

/// `[store]` of the file with the flags over it.
fn store_config(file: Option<StoreConfig>, args: StoreArgs) -> StoreConfig {
    let StoreArgs {
        store: url,
        s3_endpoint: endpoint,
        s3_region: region,
    } = args;
    let mut config = file.unwrap_or_else(|| StoreConfig {
        url: "/var/lib/fanout/recordings".into(),
        ..StoreConfig::default()
    });
    if let Some(url) = url {
        config.url = url;
    }
    if endpoint.is_some() {
        config.endpoint = endpoint;
    }
    if region.is_some() {
        config.region = region;
    }
    config
}

/// Stops on the first SIGINT or SIGTERM: `stop` is called once from a thread of its own.
fn on_signal(stop: impl FnOnce() + Send + 'static) -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "shutting down");
                stop();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn stitch(args: StitchArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => ConfigFile::default(),
    };
    let section = file.stitch;
    let store_config = store_config(file.store, args.store);
    let store = RecordingStore::open(&store_config).context("cannot open the recording store")?;
    let defaults = StitchOptions::default();
    let options = StitchOptions {
        ffmpeg: args
            .ffmpeg
            .or(section.ffmpeg)
            .unwrap_or(defaults.ffmpeg.clone()),
        width: section.width.unwrap_or(defaults.width),
        height: section.height.unwrap_or(defaults.height),
        fps: section.fps.unwrap_or(defaults.fps),
        video_bitrate_kbps: section
            .video_bitrate_kbps
            .unwrap_or(defaults.video_bitrate_kbps),
        audio_bitrate_kbps: section
            .audio_bitrate_kbps
            .unwrap_or(defaults.audio_bitrate_kbps),
        intermediate_dir: args.keep_intermediate.clone(),
        ..defaults
    };
    let scratch = args
        .scratch
        .or(section.scratch)
        .unwrap_or_else(std::env::temp_dir);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    if let Some(recording) = args.recording {
        let dir = scratch.join(format!("fanout-stitch-{recording}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let result = runtime.block_on(async {
            let mut last = -1.0;
            let outcome = job::run(&store, &recording, &options, &dir, &mut |fraction| {
                // A line per tenth, for a long run to show progress.
                if fraction - last >= 0.1 || fraction >= 1.0 {
                    last = fraction;
                    info!(recording = %recording, percent = (fraction * 100.0).round(), "progress");
                }
            })
            .await?;
            if let Some(output) = &args.output {
                store.get_output_to_file(&recording, output).await?;
            }
            if let Some(path) = &args.report {
                let json = serde_json::to_vec_pretty(&serde_json::json!({
                    "recording": recording,
                    "outcome": outcome,
                }))?;
                std::fs::write(path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!(
                "{recording}: {} chunks ({} torn), {:.1} s, {} bytes",
                outcome.chunks,
                outcome.torn_chunks,
                outcome.report.duration_micros as f64 / 1e6,
                outcome.output_bytes
            );
            anyhow::Ok(())
        });
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    }
    let control = args
        .control
        .or(section.control)
        .context("give --recording ID (one recording) or --control URL (a worker)")?;
    let credential = match args.operator_token_file.or(section.operator_token_file) {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("FANOUT_OPERATOR_TOKEN")
            .context("give --operator-token-file or set FANOUT_OPERATOR_TOKEN")?,
    };
    let config = WorkerConfig {
        control,
        credential,
        name: args
            .worker_name
            .or(section.worker_name)
            .unwrap_or_else(default_instance),
        poll_interval: seconds(
            args.poll_seconds.or(section.poll_seconds).unwrap_or(2.0),
            "poll_seconds",
        )?,
        scratch,
        options,
    };
    let stats = Arc::new(WorkerStats::default());
    if let Some(address) = args.metrics.or(section.metrics) {
        let process: Vec<Arc<dyn ProcessMetrics>> = vec![stats.clone()];
        let bound = exporter::spawn_with_control(address, Vec::new(), None, process)
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        info!(%bound, "metrics at http://{bound}/metrics");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    on_signal(move || flag.store(true, Ordering::Relaxed))?;
    runtime.block_on(worker::run(config, store, stats, stop))
}

fn run(args: RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => ConfigFile::default(),
    };
    let ingest = file.ingest;
    let store_config = store_config(file.store, args.store);
    let defaults = ChunkPolicy::default();
    let policy = ChunkPolicy {
        duration: match args.chunk_seconds.or(ingest.chunk_seconds) {
            Some(s) => seconds(s, "chunk_seconds")?,
            None => defaults.duration,
        },
        max_bytes: args
            .max_chunk_bytes
            .or(ingest.max_chunk_bytes)
            .unwrap_or(defaults.max_bytes),
    };
    let upload = UploadSettings {
        concurrency: args
            .upload_concurrency
            .or(ingest.upload_concurrency)
            .unwrap_or(UploadSettings::default().concurrency)
            .max(1),
        ..UploadSettings::default()
    };
    let config = DaemonConfig {
        socket: args
            .socket
            .or(ingest.socket)
            .unwrap_or_else(|| "/run/fanout/recorder.sock".into()),
        spool: args
            .spool
            .or(ingest.spool)
            .unwrap_or_else(|| "/var/spool/fanout-recorder".into()),
        instance: args
            .instance
            .or(ingest.instance)
            .unwrap_or_else(default_instance),
        policy,
        socket_buffer_bytes: ingest.socket_buffer_bytes.unwrap_or(8 << 20),
        upload,
        shutdown_timeout: match args.shutdown_timeout.or(ingest.shutdown_timeout_seconds) {
            Some(s) => seconds(s, "shutdown_timeout")?,
            None => Duration::from_secs(30),
        },
        progress_interval: (args.progress_interval > 0)
            .then(|| Duration::from_secs(args.progress_interval)),
    };
    let metrics_address = args.metrics.or(ingest.metrics);
    let store = RecordingStore::open(&store_config).context("cannot open the recording store")?;
    if args.check {
        println!(
            "socket {} spool {} store {} instance {} chunk_seconds {}: OK",
            config.socket.display(),
            config.spool.display(),
            store,
            config.instance,
            config.policy.duration.as_secs_f64()
        );
        return Ok(());
    }

    let metrics = Arc::new(IngestMetrics::default());
    let daemon = Daemon::start(config, store, metrics.clone())?;
    if let Some(address) = metrics_address {
        let process: Vec<Arc<dyn ProcessMetrics>> = vec![metrics];
        let bound = exporter::spawn_with_control(address, Vec::new(), None, process)
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        info!(%bound, "metrics at http://{bound}/metrics");
    }
    let stop = daemon.stop_handle();
    on_signal(move || stop.stop())?;
    daemon.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_id_may_start_with_a_hyphen() {
        let args = Args::try_parse_from([
            "fanout-recorder",
            "stitch",
            "--recording",
            "-eXyZ_12",
            "--store",
            "/tmp/store",
            "--output",
            "out.webm",
        ])
        .unwrap();
        let Command::Stitch(stitch) = args.command else {
            panic!("not stitch");
        };
        assert_eq!(stitch.recording.as_deref(), Some("-eXyZ_12"));
        assert_eq!(stitch.output, Some(PathBuf::from("out.webm")));
    }
}
