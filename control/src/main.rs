//! `fanout-control`: the control plane as a process (docs/control-plane.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use tracing::{info, warn};

use fanout_control::api::forwarders::{ForwardersApi, SessionKey};
use fanout_control::api::meetings::MeetingsApi;
use fanout_control::api::metrics::{Metrics, MetricsLayer};
use fanout_control::api::recordings::RecordingsApi;
use fanout_control::api::web::{WebApi, WebConfig};
use fanout_control::api::{pb, Secret};
use fanout_control::domain::TokenKey;
use fanout_control::service::desired::DesiredStates;
use fanout_control::service::failover::{Failover, FailoverConfig};
use fanout_control::service::forwarders::{ForwarderRegistry, LiveForwarders, RegistryConfig};
use fanout_control::service::meetings::{BrowserNegotiator, MeetingService, MeetingsConfig};
use fanout_control::service::placement::{PlacementConfig, StorePlacer};
use fanout_control::service::recordings::{RecordingService, RecordingsConfig};
use fanout_control::service::relays::{RelayConfig, RelayPlanner};
use fanout_control::store::{EtcdConfig, EtcdStore, MemoryStore, Store};
use fanout_recorder::store::{RecordingStore, StoreConfig};

/// Fanout's control plane: meetings, joins, placement of meetings on forwarders, failover.
///
/// Serves the gRPC API `fanout.control.v1` (Meetings, Forwarders, Recordings), gRPC health checking,
/// server reflection, and for browsers a REST and WebSocket API with the join page
/// (`/v1/meetings`, `/m/{id}`; docs/webrtc.md) on one port: HTTP/2 for gRPC, HTTP/1.1 for
/// the rest, TLS for all of it with --tls-cert (browsers need https for cameras). State lives in etcd (`--store etcd`), so any number
/// of instances can run behind one address; `--store memory` keeps it in this process, for
/// one machine. Every instance of a deployment must share the deployment secret (join
/// tokens and forwarder sessions are signed with it), the operator token and the forwarder
/// enrolment token. SIGINT/SIGTERM stop it cleanly: streams end, in-flight calls finish.
#[derive(Debug, Parser)]
#[command(name = "fanout-control", version, about, long_about)]
struct Args {
    /// Configuration file (TOML; see docs/control-plane.md). Flags override it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address of the one port for gRPC, REST, WebSocket and the join page (default
    /// 127.0.0.1:7400).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Base URL of the join links `POST /v1/meetings` returns, as browsers reach this port
    /// (through a proxy, say: `https://meet.example.com`). Default: the request's Host.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// Seconds a browser participant whose WebSocket dropped stays in the meeting, for a
    /// reconnect to resume it with its join token, before it leaves (default 15).
    #[arg(long, value_name = "SECONDS")]
    resume_grace_s: Option<u64>,

    /// Where state lives.
    #[arg(long, value_enum)]
    store: Option<StoreKind>,

    /// etcd endpoints, comma-separated (`--store etcd`).
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    etcd: Vec<String>,

    /// File holding the deployment secret (32 bytes or more): join tokens and forwarder
    /// sessions are signed with it. Required with etcd; with memory, a random one is made.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// File holding the operator token (CreateMeeting, ListMeetings, acting as host).
    #[arg(long, value_name = "FILE", env = "FANOUT_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,

    /// File holding the forwarder enrolment token (Register).
    #[arg(long, value_name = "FILE", env = "FANOUT_ENROLMENT_TOKEN_FILE")]
    enrolment_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM) for the port (gRPC and web); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The recording store the stitch workers write to, for downloads of READY
    /// recordings: `file:///DIR`, a directory, or `s3://BUCKET[/PREFIX]` (as the
    /// recorder's `--store`; S3 endpoint and credentials in `[recordings.store]` or the
    /// usual AWS_* variables). Without it, downloads are refused (FAILED_PRECONDITION).
    #[arg(long, value_name = "URL")]
    recording_store: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (`RUST_LOG` works too).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoreKind {
    Memory,
    Etcd,
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
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    store: Option<StoreKind>,
    #[serde(default)]
    etcd: EtcdSection,
    secret_file: Option<PathBuf>,
    operator_token_file: Option<PathBuf>,
    enrolment_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    meetings: MeetingsSection,
    registry: Option<RegistryConfig>,
    placement: Option<PlacementConfig>,
    failover: Option<FailoverConfig>,
    relays: Option<RelayConfig>,
    #[serde(default)]
    web: WebSection,
    #[serde(default)]
    recordings: RecordingsSection,
}

/// `[recordings]`: recording records and the stitching jobs workers claim.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingsSection {
    /// Seconds after a recording stops before its stitching job is due at the latest
    /// (default 10): sooner once every recorder sealed it (with a recording store); this is
    /// the bound for a recorder that never seals (dead).
    settle_s: Option<u64>,
    /// Seconds a worker's claim holds without a progress report (default 30).
    lease_s: Option<u64>,
    /// Stitching attempts per recording, expired claims included, before FAILED
    /// (default 3).
    max_attempts: Option<u32>,
    /// Seconds before a failed attempt is retried, doubled with each further failure
    /// (default 30).
    retry_backoff_s: Option<u64>,
    /// Where stitched files are read for downloads: the recorder's `[store]` section, the
    /// same fields (`url`, `endpoint`, `region`, ...). `--recording-store` sets `url`.
    store: Option<StoreConfig>,
}

/// `[web]`: the browser face (REST, WebSocket, join page).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSection {
    /// As `--public-url`.
    public_url: Option<String>,
    /// As `--resume-grace-s`.
    resume_grace_s: Option<u64>,
    /// Largest WebSocket message answered (bytes; default 65536).
    max_message_bytes: Option<usize>,
    /// Messages queued per socket (default 256).
    send_queue: Option<usize>,
    /// Seconds a socket's full queue may stay full before the browser is disconnected
    /// (default 10).
    slow_timeout_s: Option<u64>,
    /// Seconds between pings of each socket (default 20).
    ping_interval_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdSection {
    #[serde(default)]
    endpoints: Vec<String>,
    root: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeetingsSection {
    /// Join token lifetime, seconds.
    token_ttl_s: Option<u64>,
    /// Preferred SRTP profile.
    srtp_profile: Option<String>,
    /// Participants a new meeting is expected to bring, for placement headroom.
    expected_participants: Option<u32>,
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
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

fn read_secret(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} from {}", path.display()))?;
    let text = text.trim().to_owned();
    if text.len() < 16 {
        bail!(
            "the {what} in {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(text)
}

async fn run(args: Args) -> Result<()> {
    let file: ConfigFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
    let kind = args.store.or(file.store).unwrap_or(StoreKind::Memory);

    let store: Arc<dyn Store> = match kind {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Etcd => {
            let endpoints = if args.etcd.is_empty() {
                file.etcd.endpoints.clone()
            } else {
                args.etcd.clone()
            };
            if endpoints.is_empty() {
                bail!("--store etcd needs --etcd URL[,URL...] (or [etcd] endpoints)");
            }
            let mut config = EtcdConfig::new(endpoints.clone());
            if let Some(root) = &file.etcd.root {
                config.root = root.clone();
            }
            let store = EtcdStore::connect(config)
                .await
                .with_context(|| format!("cannot reach etcd at {}", endpoints.join(",")))?;
            Arc::new(store)
        }
    };

    let secret: Vec<u8> = match args.secret_file.as_ref().or(file.secret_file.as_ref()) {
        Some(path) => read_secret(path, "deployment secret")?.into_bytes(),
        None if kind == StoreKind::Memory => {
            let mut bytes = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut bytes).context("the system RNG failed")?;
            bytes
        }
        None => bail!(
            "--store etcd needs --secret-file FILE: every control instance must sign tokens \
             with the same secret"
        ),
    };
    let tokens =
        TokenKey::from_bytes(&secret).map_err(|e| anyhow::anyhow!("the deployment secret: {e}"))?;
    let sessions = SessionKey::new(&secret);
    let operator = match args
        .operator_token_file
        .as_ref()
        .or(file.operator_token_file.as_ref())
    {
        Some(path) => Some(Secret::new(read_secret(path, "operator token")?)),
        None => {
            warn!("no operator token: CreateMeeting, ListMeetings and stitch workers are refused");
            None
        }
    };
    let enrolment = match args
        .enrolment_token_file
        .as_ref()
        .or(file.enrolment_token_file.as_ref())
    {
        Some(path) => Some(Secret::new(read_secret(path, "enrolment token")?)),
        None => {
            warn!("no enrolment token: forwarders cannot register");
            None
        }
    };

    let live = LiveForwarders::start(store.clone())
        .await
        .context("cannot follow the forwarder registry")?;
    let placer = Arc::new(
        StorePlacer::start(
            store.clone(),
            live.clone(),
            file.placement.clone().unwrap_or_default(),
        )
        .await
        .context("cannot start placement")?,
    );
    let placement_config = file.placement.clone().unwrap_or_default();
    let relays = Arc::new(
        RelayPlanner::start(
            store.clone(),
            placer.clone(),
            &placement_config,
            file.relays.clone().unwrap_or_default(),
        )
        .await
        .context("cannot start the relay planner")?,
    );
    let failover = Failover::new(
        store.clone(),
        placer.clone(),
        live.clone(),
        file.failover.clone().unwrap_or_default(),
    )
    .with_relays(relays.clone());
    tokio::spawn(failover.run());

    let mut meetings_config = MeetingsConfig::default();
    if let Some(ttl) = file.meetings.token_ttl_s {
        meetings_config.token_ttl = Duration::from_secs(ttl);
    }
    if let Some(expected) = file.meetings.expected_participants {
        meetings_config.expected_participants = expected;
    }
    if let Some(profile) = &file.meetings.srtp_profile {
        meetings_config.srtp_profile = profile.clone();
    }
    if let Some(s) = file.recordings.settle_s {
        meetings_config.recording_settle = Duration::from_secs(s);
    }
    let mut recordings_config = RecordingsConfig::default();
    if let Some(s) = file.recordings.lease_s {
        recordings_config.lease = Duration::from_secs(s.max(1));
    }
    if let Some(n) = file.recordings.max_attempts {
        if n == 0 {
            bail!("[recordings] max_attempts must be at least 1");
        }
        recordings_config.max_attempts = n;
    }
    if let Some(s) = file.recordings.retry_backoff_s {
        recordings_config.retry_backoff = Duration::from_secs(s);
    }
    let meetings = Arc::new(
        MeetingService::new(store.clone(), tokens, placer.clone(), meetings_config)
            .with_relays(relays.clone()),
    );
    let mut recordings = RecordingService::new(
        store.clone(),
        recordings_config,
        meetings.recording_metrics().clone(),
    );
    let files_config = match (args.recording_store.clone(), file.recordings.store.clone()) {
        (None, None) => None,
        (Some(url), None) => Some(StoreConfig {
            url,
            ..StoreConfig::default()
        }),
        (url, Some(mut config)) => {
            if let Some(url) = url {
                config.url = url;
            }
            Some(config)
        }
    };
    match files_config {
        Some(config) => {
            let files = RecordingStore::open(&config).context("cannot open the recording store")?;
            info!("recording downloads and seals from {files}");
            recordings = recordings.with_files(files);
        }
        None => warn!(
            "no recording store (--recording-store): recording downloads are refused, and \
             stitching jobs wait for their whole settle time (no seals are read)"
        ),
    }
    let recordings = Arc::new(recordings);
    let registry = Arc::new(ForwarderRegistry::new(
        store.clone(),
        file.registry.clone().unwrap_or_default(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::meetings_server::MeetingsServer<MeetingsApi>>()
        .await;
    health
        .set_serving::<pb::forwarders_server::ForwardersServer<ForwardersApi>>()
        .await;
    health
        .set_serving::<pb::recordings_server::RecordingsServer<RecordingsApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build server reflection")?;

    let tls = match (
        args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
        args.tls_key.as_ref().or(file.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some(fanout_control::api::web::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate and a key"),
    };

    let mut web_config = WebConfig {
        public_url: args.public_url.clone().or(file.web.public_url.clone()),
        ..WebConfig::default()
    };
    if let Some(s) = args.resume_grace_s.or(file.web.resume_grace_s) {
        web_config.resume_grace = Duration::from_secs(s);
    }
    if let Some(n) = file.web.max_message_bytes {
        web_config.max_message_bytes = n;
    }
    if let Some(n) = file.web.send_queue {
        web_config.send_queue = n.max(1);
    }
    if let Some(s) = file.web.slow_timeout_s {
        web_config.slow_timeout = Duration::from_secs(s);
    }
    if let Some(s) = file.web.ping_interval_s {
        web_config.ping_interval = Duration::from_secs(s.max(1));
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let negotiator = BrowserNegotiator::new(meetings.clone(), registry.clone());
    let web = WebApi::new(
        meetings.clone(),
        Some(recordings.clone()),
        operator.clone(),
        Arc::new(negotiator),
        web_config,
        tls.is_some(),
        stopping,
    );

    let metrics = Metrics::default();
    if let Some(address) = args.metrics.or(file.metrics) {
        fanout_control::api::web::serve_metrics(
            address,
            metrics.clone(),
            web.metrics(),
            live.clone(),
            Some(recordings.clone()),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    }

    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(health_service)
        .add_service(reflection)
        .add_service(MeetingsApi::new(meetings.clone(), operator.clone()).into_server())
        .add_service(RecordingsApi::new(meetings.clone(), recordings, operator).into_server())
        .add_service(
            ForwardersApi::new(
                registry,
                DesiredStates::new(store.clone()).with_relays(relays),
                sessions,
                enrolment,
                meetings,
            )
            .into_server(),
        );
    // gRPC calls are counted by method; the web routes count themselves (by route).
    let grpc = grpc
        .routes()
        .prepare()
        .into_axum_router()
        .layer(MetricsLayer(metrics));
    let app = grpc.merge(web.router());

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    info!(
        address = %bound,
        store = ?kind,
        tls = tls.is_some(),
        "fanout-control listening on {bound} (gRPC, REST, WebSocket, join page at /m/{{id}})"
    );
    fanout_control::api::web::serve(listener, app, tls, async move {
        shutdown().await;
        let _ = stop.send(true);
    })
    .await
    .context("the server failed")?;
    // Browser sessions close on the stop signal and leave their meetings: wait for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while web.metrics().sockets_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!("stopped cleanly");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
}
