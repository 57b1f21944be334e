//! `fanout-forwarder`: the SFU data plane as a process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use fanout_forwarder::config::{self, LayerChange, LayerLimits, Overrides, Settings};
use fanout_forwarder::driver::{self, DriverHandle, IoSelection, StopHandle};
use fanout_forwarder::edge::{AttachMode, PeerSync, UnknownMedia, XdpGuard};
use fanout_forwarder::exporter::{
    self, query_param, Control, MetricsExchange, MetricsSource, ProcessMetrics,
};
use fanout_forwarder::ids::{MeetingId, ParticipantId};
use fanout_forwarder::sfu::{ConfigureError, Layers};
use fanout_forwarder::srtp::{MasterKey, SrtpProfile};

/// Fanout's Selective Forwarding Unit.
///
/// Receives each publisher's SRTP once, decrypts it once, and sends every subscriber its
/// own copy re-encrypted with that subscriber's keys, over plain SRTP legs (RFC 4568 keys).
/// In standalone mode, meetings, participants, keys, tracks and subscriptions come from a
/// TOML file (see docs/standalone.md); no control plane is needed.
///
/// Signals: SIGTERM or SIGINT stops the forwarder cleanly. SIGHUP re-reads the
/// configuration file and applies, without a restart, what can
/// change while running: the subscriptions' layer limits (`max_encoding`,
/// `max_spatial_layer`, `max_temporal_layer`), each change logged. Every other difference
/// from the running configuration (meetings, participants, legs, keys, tracks,
/// subscriptions added, removed or changed, `[forwarder]` settings) is logged as a warning
/// that it needs a restart, and is not applied. A file that does not validate is logged
/// with its error and changes nothing.
///
/// The metrics server also takes `POST /v1/subscriptions/max-layers?meeting=M&
/// participant=P&index=I&encoding=E` (and/or `spatial=S`, `temporal=T`; `any` lifts a
/// limit): the same change for the I-th subscription (from 0, in file order) of P. It
/// lasts until a SIGHUP applies the file's own limits for that subscription, or a
/// restart.
#[derive(Debug, Parser)]
#[command(name = "fanout-forwarder", version, about, long_about)]
struct Args {
    /// The standalone configuration file (TOML).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present_any = ["generate_key", "control"]
    )]
    config: Option<PathBuf>,

    /// Control mode: join the control plane at URL (`http://host:port`, or `https://`
    /// with `--control-ca`) and take meetings from it; `--config` then only gives
    /// `[forwarder]` and `[control]` settings (also `[control] url`). See
    /// docs/forwarder-control.md.
    #[arg(long, value_name = "URL")]
    control: Option<String>,

    /// PEM CA certificate(s) to trust for an `https` control plane.
    #[arg(long, value_name = "FILE")]
    control_ca: Option<PathBuf>,

    /// Control mode: this forwarder's stable id (default: the host name).
    #[arg(long, value_name = "ID")]
    forwarder_id: Option<String>,

    /// Control mode: placement region, e.g. eu-west-1.
    #[arg(long, value_name = "NAME")]
    region: Option<String>,

    /// Control mode: the IP participants send media to (default: the listen IP, or the
    /// primary IP when listening on every interface).
    #[arg(long, value_name = "IP")]
    media_ip: Option<std::net::IpAddr>,

    /// Control mode: the UDP ports meetings get, one socket each, bound at start; port
    /// P runs on shard (P - START) % shards. Default 40100-40199.
    #[arg(long, value_name = "START-END")]
    port_range: Option<fanout_forwarder::control::PortRange>,

    /// Control mode: file holding the enrolment credential for `Register` (or set
    /// FANOUT_ENROLMENT_TOKEN).
    #[arg(long, value_name = "FILE")]
    enrolment_token_file: Option<PathBuf>,

    /// Control mode: the most legs to accept (told to the control plane). Default 1000.
    #[arg(long, value_name = "N")]
    max_legs: Option<u32>,

    /// Control mode: the Unix datagram socket of the `fanout-recorder` beside this
    /// forwarder (its `run --socket`). Meetings the control plane records here have their
    /// decrypted media handed to it, never waiting: when the recorder is behind or absent
    /// the recording loses packets (counted), live media none. Without it, recordings
    /// placed here capture nothing (overrides `[control] recorder_socket`).
    #[arg(long, value_name = "PATH", env = "FANOUT_RECORDER_SOCKET")]
    recorder_socket: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `forwarder.metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// RTP listen address (overrides `forwarder.listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Forwarding threads, one per core, each pinned (overrides `forwarder.shards`;
    /// default: one per CPU this process may use). Meetings are spread over shards by the
    /// address participants send to: meetings with their own `listen` port can run on
    /// different cores; meetings sharing an address share a shard.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    shards: Option<u16>,

    /// Seconds between progress lines in the log (datagrams in and out, drops); 0 for none.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    progress_interval: u64,

    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,

    /// Print a fresh random key for PROFILE in the `inline:` form and exit.
    #[arg(long, value_name = "PROFILE")]
    generate_key: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// The I/O driver: `uring` (io_uring: multishot receive, one submission per fan-out
    /// batch), `mio` (portable epoll with recvmmsg/sendmmsg), or `auto`: io_uring when
    /// the kernel has it, else mio with the reason logged. `--io uring` fails if the
    /// kernel lacks io_uring. `afxdp`: AF_XDP sockets on the `--xdp` interface's receive
    /// queues, fed by the XDP guard, with the kernel UDP sockets as the slow path; needs
    /// `--xdp IFACE` and runs one shard.
    #[arg(long, value_enum, env = "FANOUT_IO", default_value_t = Io::Auto)]
    io: Io,

    #[command(flatten)]
    xdp: XdpArgs,

    /// Log filter, in tracing's EnvFilter syntax (`RUST_LOG` works too).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

/// The XDP port guard's flags (they override `[forwarder.xdp]`).
#[derive(Debug, Clone, clap::Args)]
struct XdpArgs {
    /// Guard the forwarder's UDP ports with the XDP program (ebpf/fanout_xdp.c) on
    /// interface IFACE, the one media arrives on (overrides `[forwarder.xdp] interface`).
    /// In the kernel, before any socket: drops fragments, packets that are not STUN, DTLS
    /// or RTP/RTCP (RFC 7983), RTP/RTCP from addresses that are not a leg's, and unknown
    /// sources beyond their budgets; counts each verdict (fanout_xdp_* metrics). Needs
    /// root (CAP_BPF, CAP_NET_ADMIN). Detached on exit, however the process ends.
    #[arg(long = "xdp", value_name = "IFACE")]
    interface: Option<String>,

    /// How to attach the XDP guard: `native` (driver mode), `generic` (skb mode, any
    /// interface, slower), or `auto`: native, else generic with a warning.
    #[arg(long = "xdp-mode", value_enum, value_name = "MODE")]
    mode: Option<AttachMode>,

    /// Which unknown sources may send RTP/RTCP through the XDP guard: `while-latching`
    /// (only while some leg waits to learn its address from its first packet) or
    /// `always` (within the unknown-source budgets: lets plain-SRTP peers behind
    /// rebinding NATs move). STUN and DTLS may always make first contact.
    #[arg(long = "xdp-unknown-media", value_enum, value_name = "POLICY")]
    unknown_media: Option<UnknownMedia>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Io {
    Auto,
    Uring,
    Mio,
    Afxdp,
}

impl From<Io> for IoSelection {
    fn from(io: Io) -> Self {
        match io {
            Io::Auto => IoSelection::Auto,
            Io::Uring => IoSelection::Uring,
            Io::Mio => IoSelection::Mio,
            Io::Afxdp => IoSelection::AfXdp,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(name) = &args.generate_key {
        let profile = SrtpProfile::from_name(name).with_context(|| {
            format!(
                "unknown SRTP profile `{name}`; expected one of {}",
                SrtpProfile::ALL.map(|p| p.name()).join(", ")
            )
        })?;
        println!("{}", MasterKey::generate(profile).to_inline());
        return Ok(());
    }
    if args.control.is_some() || args.config.as_deref().is_some_and(config::wants_control) {
        return run_control(args);
    }
    // Required by clap unless --generate-key, which returned above, or control mode.
    let path = args.config.context("--config FILE is required")?;
    let overrides = Overrides {
        listen: args.listen,
        shards: shards_for(args.io, args.shards),
    };
    let loaded = config::load(&path, Instant::now(), overrides)?;
    let mut network = loaded.network;
    // What the forwarder runs with: the file as loaded, plus the live changes since.
    let running = Arc::new(Mutex::new(loaded.settings));
    if args.metrics.is_some() {
        network.metrics = args.metrics;
    }
    info!(
        config = %path.display(),
        shards = loaded.shards.len(),
        legs = loaded.shards.iter().map(|s| s.forwarder.leg_count()).sum::<usize>(),
        subscriptions = loaded.shards.iter().map(|s| s.forwarder.subscription_count()).sum::<usize>(),
        "configuration loaded"
    );
    if args.check {
        for (i, shard) in loaded.shards.iter().enumerate() {
            let meetings: Vec<&str> = shard.meetings.iter().map(|m| m.0.as_str()).collect();
            let listen: Vec<String> = shard.listen.iter().map(|a| a.to_string()).collect();
            println!(
                "shard {i}: listen {} meetings {}",
                listen.join(" "),
                meetings.join(" ")
            );
        }
        println!("{}: OK", path.display());
        return Ok(());
    }

    let kind = driver::select(args.io.into())?;
    info!(driver = %kind, requested = ?args.io, "I/O driver selected");
    // The AF_XDP driver needs the guard attached before it is built.
    let mut afxdp_guard = None;
    let cpus = driver::allowed_cpus();
    let mut shards = Vec::with_capacity(loaded.shards.len());
    for (index, setup) in loaded.shards.into_iter().enumerate() {
        let mut sockets = Vec::with_capacity(setup.listen.len());
        for address in &setup.listen {
            sockets.push(
                driver::bind_udp(*address, network.socket_buffer_bytes)
                    .with_context(|| format!("cannot bind {address} (shard {index})"))?,
            );
        }
        let mut driver = build_driver(
            kind,
            sockets,
            &args.xdp,
            network.xdp.as_ref(),
            &mut afxdp_guard,
        )
        .with_context(|| format!("cannot start the {kind} I/O driver (shard {index})"))?;
        driver.set_progress_interval(Some(Duration::from_secs(args.progress_interval)));
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        info!(
            shard = index,
            ?cpu,
            listen = ?setup.listen,
            meetings = ?setup.meetings.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
            "shard ready"
        );
        shards.push(Shard {
            index,
            cpu,
            meetings: setup.meetings,
            driver,
            core: setup.forwarder,
            tid: Arc::default(),
        });
    }
    if shards.len() > cpus.len().max(1) {
        warn!(
            shards = shards.len(),
            cpus = cpus.len(),
            "more shards than CPUs: shards share cores"
        );
    }
    let router = Arc::new(Router {
        handles: shards.iter().map(|s| s.driver.handle()).collect(),
        shard_of: shards
            .iter()
            .flat_map(|s| s.meetings.iter().map(|m| (m.clone(), s.index)))
            .collect(),
    });

    let guard = guard_ports(&args.xdp, network.xdp.as_ref(), &mut shards, afxdp_guard)?;
    if let Some(address) = network.metrics {
        let control = Arc::new(LayerControl {
            running: running.clone(),
            router: router.clone(),
        });
        serve_metrics(address, &mut shards, Some(control), guard.as_ref())?;
    }

    let stops: Vec<StopHandle> = shards.iter().map(|s| s.driver.stop_handle()).collect();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let signal_stops = stops.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload(&path, overrides, &running, &router);
                    continue;
                }
                info!(signal, "shutting down");
                for stop in &signal_stops {
                    stop.stop();
                }
                break;
            }
        })
        .context("cannot start the signal thread")?;

    run_shards(shards, &stops)
}

/// The XDP guard's settings: `[forwarder.xdp]` with the flags over it; `None` when
/// neither asks for a guard.
fn xdp_section(args: &XdpArgs, file: Option<&config::XdpSection>) -> Option<config::XdpSection> {
    let mut section = file.cloned().or_else(|| {
        args.interface.as_ref().map(|interface| config::XdpSection {
            interface: interface.clone(),
            mode: AttachMode::default(),
            unknown_media: UnknownMedia::default(),
            source_rate: None,
            source_burst: None,
            flood_rate: None,
            flood_burst: None,
        })
    })?;
    if let Some(interface) = &args.interface {
        section.interface = interface.clone();
    }
    section.mode = args.mode.unwrap_or(section.mode);
    section.unknown_media = args.unknown_media.unwrap_or(section.unknown_media);
    Some(section)
}

/// Load the XDP port guard when asked (`--xdp` or `[forwarder.xdp]`) for the ports the
/// shards bound (unless the AF_XDP driver's construction loaded it already), give each
/// shard the allowlist to keep, filled with its configured legs, then attach it. The guard
/// stays attached while the returned handle lives.
fn guard_ports(
    args: &XdpArgs,
    file: Option<&config::XdpSection>,
    shards: &mut [Shard],
    loaded: Option<Arc<XdpGuard>>,
) -> Result<Option<Arc<XdpGuard>>> {
    let Some(section) = xdp_section(args, file) else {
        return Ok(None);
    };
    let guard = match loaded {
        Some(guard) => guard,
        None => {
            let mut ports: Vec<u16> = shards
                .iter()
                .flat_map(|s| s.driver.local_addrs())
                .map(|a| a.port())
                .collect();
            ports.sort_unstable();
            ports.dedup();
            Arc::new(
                XdpGuard::load(&section.options(ports))
                    .with_context(|| format!("--xdp {}", section.interface))?,
            )
        }
    };
    for shard in shards.iter_mut() {
        let mut sync = PeerSync::new(guard.clone(), shard.index);
        // The configured legs, before the first packet meets the guard.
        sync.sync(&shard.core);
        shard.driver.set_peer_sync(sync);
    }
    guard
        .start()
        .with_context(|| format!("--xdp {}", section.interface))?;
    Ok(Some(guard))
}

/// `--io afxdp` runs one shard: an AF_XDP socket receives what the NIC's RSS hashing puts
/// on its queue, not what belongs to a shard, so shards could not own their meetings.
fn shards_for(io: Io, requested: Option<u16>) -> Option<usize> {
    if !matches!(io, Io::Afxdp) {
        return requested.map(usize::from);
    }
    if requested.is_some_and(|n| n > 1) {
        warn!(
            requested,
            "--io afxdp runs one shard: an AF_XDP socket receives what RSS puts on its \
             queue, not what belongs to a shard"
        );
    } else {
        info!("--io afxdp runs one shard (AF_XDP sockets follow RSS queues, not shards)");
    }
    Some(1)
}

/// Build the driver of `kind` over `sockets`. The AF_XDP driver needs the XDP guard
/// loaded first, for the sockets' ports (one shard, so these are all of them), to put its
/// sockets in the guard's map; the guard is kept in `guard` for [`guard_ports`], which
/// fills the allowlist and attaches it.
fn build_driver(
    kind: driver::DriverKind,
    sockets: Vec<std::net::UdpSocket>,
    args: &XdpArgs,
    file: Option<&config::XdpSection>,
    guard: &mut Option<Arc<XdpGuard>>,
) -> Result<Box<dyn driver::Driver>> {
    if kind != driver::DriverKind::AfXdp {
        return Ok(driver::new_driver(kind, sockets)?);
    }
    let section = xdp_section(args, file).context(
        "--io afxdp needs --xdp IFACE (or [forwarder.xdp] interface): the interface whose \
         receive queues the AF_XDP sockets bind to",
    )?;
    let mut ports = Vec::with_capacity(sockets.len());
    for socket in &sockets {
        ports.push(socket.local_addr()?.port());
    }
    ports.sort_unstable();
    ports.dedup();
    let loaded = Arc::new(
        XdpGuard::load(&section.options(ports))
            .with_context(|| format!("--xdp {}", section.interface))?,
    );
    let driver = driver::new_afxdp_driver(sockets, loaded.clone())?;
    *guard = Some(loaded);
    Ok(driver)
}

/// Serve the shards' metrics (and the XDP guard's, if any) on `address`.
fn serve_metrics(
    address: std::net::SocketAddr,
    shards: &mut [Shard],
    control: Option<Arc<dyn Control>>,
    guard: Option<&Arc<XdpGuard>>,
) -> Result<()> {
    let sources = shards
        .iter_mut()
        .map(|s| {
            let exchange = Arc::new(MetricsExchange::default());
            let wake = s.driver.serve_metrics(exchange.clone());
            MetricsSource { exchange, wake }
        })
        .collect();
    let process: Vec<Arc<dyn ProcessMetrics>> = guard
        .map(|g| g.clone() as Arc<dyn ProcessMetrics>)
        .into_iter()
        .collect();
    let bound = exporter::spawn_with_control(address, sources, control, process)
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    info!(%bound, "metrics at http://{bound}/metrics");
    Ok(())
}

/// Control mode: bind the port range, start empty shards, and let the control-plane
/// client fill them (fanout_forwarder::control).
fn run_control(args: Args) -> Result<()> {
    use fanout_forwarder::control::{self, ControlSettings, PortRange, ShardLink, Token};

    let overrides = Overrides {
        listen: args.listen,
        shards: shards_for(args.io, args.shards),
    };
    let (mut network, section) = match &args.config {
        Some(path) => {
            let file = config::load_control(path, overrides)?;
            (file.network, file.control)
        }
        None => (
            config::NetworkSettings {
                listen: args
                    .listen
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                rtcp_listen: None,
                metrics: None,
                socket_buffer_bytes: 4 << 20,
                shards: args.shards.map(usize::from),
                xdp: None,
            },
            config::ControlSection::default(),
        ),
    };
    if args.metrics.is_some() {
        network.metrics = args.metrics;
    }
    let url = args
        .control
        .clone()
        .or(section.url.clone())
        .context("control mode needs --control URL or [control] url")?;
    let ports = match (args.port_range, &section.port_range) {
        (Some(r), _) => r,
        (None, Some(text)) => text
            .parse::<PortRange>()
            .map_err(|e| anyhow::anyhow!("[control] port_range: {e}"))?,
        (None, None) => PortRange::DEFAULT,
    };
    let bind_ip = network.listen.ip();
    let media_ip = match (args.media_ip, &section.media_ip) {
        (Some(ip), _) => ip,
        (None, Some(text)) => text
            .parse()
            .with_context(|| format!("[control] media_ip `{text}` is not an IP address"))?,
        (None, None) if !bind_ip.is_unspecified() => bind_ip,
        (None, None) => control::primary_ip()
            .context("cannot tell which IP participants reach this host by: give --media-ip")?,
    };
    let forwarder_id = args
        .forwarder_id
        .clone()
        .or(section.forwarder_id.clone())
        .or_else(control::hostname)
        .context("no --forwarder-id and no host name")?;
    let token = match args
        .enrolment_token_file
        .as_ref()
        .or(section.enrolment_token_file.as_ref())
    {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the enrolment token file {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("FANOUT_ENROLMENT_TOKEN").context(
            "control mode needs the enrolment credential: --enrolment-token-file FILE or \
             FANOUT_ENROLMENT_TOKEN",
        )?,
    };
    let requested = network.shards.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Every shard needs a port; more shards than ports would idle.
    let shard_count = requested.clamp(1, ports.len());
    let per_shard = ports.len().div_ceil(shard_count);
    if args.check {
        println!(
            "control mode: {url} as `{forwarder_id}`, media {media_ip}, ports {ports} on \
             {shard_count} shards"
        );
        return Ok(());
    }

    let mut kind = driver::select(args.io.into())?;
    // One io_uring driver registers at most MAX_SOCKETS sockets (one buffer ring shared by
    // all of them, so memory does not grow with the ports).
    let max_sockets = driver::uring::MAX_SOCKETS;
    if kind == driver::DriverKind::Uring && per_shard > max_sockets {
        if matches!(args.io, Io::Uring) {
            anyhow::bail!(
                "--io uring takes at most {max_sockets} ports per shard; {per_shard} asked \
                 ({ports} over {shard_count} shards): narrow --port-range or add shards"
            );
        }
        warn!(
            ports_per_shard = per_shard,
            "more than {max_sockets} ports per shard: using the mio driver"
        );
        kind = driver::DriverKind::Mio;
    }
    info!(driver = %kind, requested = ?args.io, "I/O driver selected");
    if kind == driver::DriverKind::Uring {
        let per_shard_bytes =
            usize::from(driver::uring::RECV_BUFFERS) * driver::uring::RECV_BUF_LEN;
        info!(
            ports = ports.len(),
            shards = shard_count,
            kib_per_shard = per_shard_bytes >> 10,
            mib = (shard_count * per_shard_bytes) >> 20,
            "io_uring receive buffers: one ring per shard shared by its ports ({} buffers of \
             {} bytes), whatever the number of ports",
            driver::uring::RECV_BUFFERS,
            driver::uring::RECV_BUF_LEN
        );
    }

    let mut afxdp_guard = None;
    let cpus = driver::allowed_cpus();
    // One certificate for every browser's DTLS handshake, made at start: its fingerprint
    // goes to the control plane at registration, and into every SDP answer from there.
    let dtls_identity = fanout_forwarder::dtls::DtlsIdentity::generate()
        .context("cannot make the DTLS certificate for browsers")?;
    info!(fingerprint = %dtls_identity.fingerprint(), "DTLS certificate for WebRTC legs");
    let mut shards = Vec::with_capacity(shard_count);
    for index in 0..shard_count {
        let mut sockets = Vec::with_capacity(per_shard);
        let mut bound = Vec::with_capacity(per_shard);
        for port in ports
            .ports()
            .filter(|&p| ports.shard_of(p, shard_count) == index)
        {
            let address = std::net::SocketAddr::new(bind_ip, port);
            sockets.push(
                driver::bind_udp(address, network.socket_buffer_bytes)
                    .with_context(|| format!("cannot bind {address} (shard {index})"))?,
            );
            bound.push(port);
        }
        let mut driver = build_driver(
            kind,
            sockets,
            &args.xdp,
            network.xdp.as_ref(),
            &mut afxdp_guard,
        )
        .with_context(|| format!("cannot start the {kind} I/O driver (shard {index})"))?;
        driver.set_progress_interval(Some(Duration::from_secs(args.progress_interval)));
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        info!(
            shard = index,
            ?cpu,
            ports = bound.len(),
            first = bound.first(),
            "shard ready"
        );
        shards.push(Shard {
            index,
            cpu,
            meetings: Vec::new(),
            driver,
            core: fanout_forwarder::sfu::Forwarder::new(
                fanout_forwarder::sfu::ForwarderConfig {
                    dtls_identity: Some(dtls_identity.clone()),
                    ..Default::default()
                },
                Instant::now(),
            ),
            tid: Arc::default(),
        });
    }

    let guard = guard_ports(&args.xdp, network.xdp.as_ref(), &mut shards, afxdp_guard)?;
    if let Some(address) = network.metrics {
        serve_metrics(address, &mut shards, None, guard.as_ref())?;
    }

    let settings = ControlSettings {
        dtls_fingerprint: dtls_identity.fingerprint().to_string(),
        url,
        ca_file: args.control_ca.clone().or(section.ca_file.clone()),
        forwarder_id,
        region: args
            .region
            .clone()
            .or(section.region.clone())
            .unwrap_or_default(),
        media_ip,
        bind_ip,
        ports,
        enrolment_token: Token::new(token),
        max_legs: args.max_legs.or(section.max_legs).unwrap_or(1000),
    };
    info!(
        url = %settings.url,
        forwarder = %settings.forwarder_id,
        media_ip = %settings.media_ip,
        ports = %settings.ports,
        shards = shards.len(),
        "control mode"
    );
    // Dominant-speaker events for the client; a shard drops (and counts) what does not fit.
    let (sink, speaker_events) = driver::EventSink::bounded(1024);
    for shard in &mut shards {
        shard.driver.set_event_sink(sink.clone());
    }
    match args
        .recorder_socket
        .clone()
        .or(section.recorder_socket.clone())
    {
        Some(path) => {
            info!(socket = %path.display(), "recorded meetings' media goes to the recorder");
            for shard in &mut shards {
                shard.driver.set_recorder(driver::RecorderTap::new(&path));
            }
        }
        None => info!(
            "no recorder socket (--recorder-socket): meetings recorded on this forwarder capture nothing"
        ),
    }
    drop(sink);
    let links = shards
        .iter()
        .map(|s| ShardLink {
            handle: s.driver.handle(),
            traffic: s.driver.traffic(),
            tid: s.tid.clone(),
        })
        .collect();
    control::spawn(settings, links, speaker_events)
        .context("cannot start the control-plane client")?;

    let stops: Vec<StopHandle> = shards.iter().map(|s| s.driver.stop_handle()).collect();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let signal_stops = stops.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    info!("SIGHUP: nothing to reload in control mode");
                    continue;
                }
                info!(signal, "shutting down");
                for stop in &signal_stops {
                    stop.stop();
                }
                break;
            }
        })
        .context("cannot start the signal thread")?;
    run_shards(shards, &stops)
}

/// One core's share of the forwarder: its meetings' core and the driver of their sockets.
struct Shard {
    index: usize,
    cpu: Option<usize>,
    meetings: Vec<MeetingId>,
    driver: Box<dyn driver::Driver>,
    core: fanout_forwarder::sfu::Forwarder,
    /// The shard thread's id once it runs (the control client reads its CPU time).
    tid: Arc<AtomicI32>,
}

/// Run every shard on its own thread, pinned to its CPU, until all stop. A shard whose
/// driver fails stops the others: a forwarder that lost some of its meetings should
/// restart, not limp.
fn run_shards(shards: Vec<Shard>, stops: &[StopHandle]) -> Result<()> {
    let failures = std::thread::scope(|scope| {
        let threads: Vec<_> = shards
            .into_iter()
            .map(|mut shard| {
                std::thread::Builder::new()
                    .name(format!("shard-{}", shard.index))
                    .spawn_scoped(scope, move || {
                        let span = tracing::info_span!("shard", shard = shard.index);
                        let _entered = span.enter();
                        // SAFETY: gettid has no arguments and cannot fail.
                        shard
                            .tid
                            .store(unsafe { libc::gettid() }, Ordering::Relaxed);
                        if let Some(cpu) = shard.cpu {
                            if let Err(e) = driver::pin_current_thread(cpu) {
                                warn!(cpu, "cannot pin the shard to its CPU: {e}");
                            }
                        }
                        let result = shard.driver.run(&mut shard.core);
                        if result.is_err() {
                            for stop in stops {
                                stop.stop();
                            }
                        }
                        info!(
                            dropped = shard.core.total_drops().total(),
                            driver = ?shard.driver.stats(),
                            "shard stopped"
                        );
                        result.map_err(|e| (shard.index, e))
                    })
            })
            .collect();
        let mut failures = Vec::new();
        for thread in threads {
            match thread {
                Ok(handle) => match handle.join() {
                    Ok(Ok(())) => {}
                    Ok(Err((index, e))) => failures.push(format!("shard {index}: {e}")),
                    Err(_) => failures.push("a shard thread panicked".to_owned()),
                },
                Err(e) => {
                    for stop in stops {
                        stop.stop();
                    }
                    failures.push(format!("cannot start a shard thread: {e}"));
                }
            }
        }
        failures
    });
    if !failures.is_empty() {
        anyhow::bail!("the I/O driver failed: {}", failures.join("; "));
    }
    info!("stopped cleanly");
    Ok(())
}

/// Which shard's driver runs a meeting.
struct Router {
    handles: Vec<DriverHandle>,
    shard_of: std::collections::HashMap<MeetingId, usize>,
}

impl Router {
    fn driver(&self, meeting: &MeetingId) -> Option<&DriverHandle> {
        self.shard_of
            .get(meeting)
            .map(|&shard| &self.handles[shard])
    }
}

/// SIGHUP: read and validate the file on this (the signal) thread, then send what can
/// change live to the driver as commands, and warn about the rest. `running` is what the
/// forwarder runs with; it follows the changes sent.
fn reload(
    path: &std::path::Path,
    overrides: Overrides,
    running: &Mutex<Settings>,
    router: &Router,
) {
    info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let loaded = match config::load(path, Instant::now(), overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("configuration not reloaded, nothing changed: {e}");
            return;
        }
    };
    let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
    let reload = running.diff(&loaded.settings);
    if reload.is_empty() {
        info!("configuration reloaded: nothing changed");
        return;
    }
    for difference in &reload.needs_restart {
        warn!("configuration change needs a restart, not applied: {difference}");
    }
    let mut queued = 0;
    for change in reload.layer_changes {
        match send_layer_change(router, change.clone(), None) {
            Ok(()) => {
                running.record(&change);
                queued += 1;
            }
            Err(e) => error!("layer change not applied ({change}): {e}"),
        }
    }
    info!(
        applied = queued,
        needs_restart = reload.needs_restart.len(),
        "configuration reloaded"
    );
}

/// Queue `change` for the thread of the shard running its meeting, which applies and
/// logs it, and reports the outcome on `reply` if given.
fn send_layer_change(
    router: &Router,
    change: LayerChange,
    reply: Option<mpsc::Sender<Result<Layers, ConfigureError>>>,
) -> Result<(), String> {
    let driver = router
        .driver(&change.meeting)
        .ok_or_else(|| format!("no shard runs meeting `{}`", change.meeting))?;
    driver
        .send(Box::new(move |core| {
            let result = change.apply(core);
            match &result {
                Ok(previous) => info!(
                    meeting = %change.meeting,
                    participant = %change.participant,
                    subscription = change.index,
                    track = %change.track,
                    from = %LayerLimits(*previous),
                    to = %LayerLimits(change.to),
                    "subscription layer limits changed"
                ),
                Err(e) => error!(
                    meeting = %change.meeting,
                    participant = %change.participant,
                    subscription = change.index,
                    track = %change.track,
                    "cannot change the subscription's layer limits: {e}"
                ),
            }
            if let Some(reply) = reply {
                // The requester may have given up waiting; nothing to do then.
                let _ = reply.send(result);
            }
        }))
        .map_err(|e| e.to_string())
}

/// `POST /v1/subscriptions/max-layers`: layer limits over HTTP.
struct LayerControl {
    running: Arc<Mutex<Settings>>,
    router: Arc<Router>,
}

impl LayerControl {
    /// How long a request waits for the driver thread to apply the change.
    const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

    fn set_max_layers(&self, query: &str) -> Result<String, (u16, String)> {
        let required = |name: &str| {
            query_param(query, name).ok_or_else(|| (400, format!("missing parameter `{name}`")))
        };
        let meeting = MeetingId(required("meeting")?);
        let participant = ParticipantId(required("participant")?);
        let index: usize = required("index")?.parse().map_err(|_| {
            (
                400,
                "`index` must be a subscription position: 0, 1, ...".into(),
            )
        })?;
        let limit = |name: &str| -> Result<Option<u8>, (u16, String)> {
            match query_param(query, name).as_deref() {
                None => Ok(None),
                Some("any") => Ok(Some(u8::MAX)),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| (400, format!("`{name}` must be 0-254 or `any`, not `{v}`"))),
            }
        };
        let (encoding, spatial, temporal) =
            (limit("encoding")?, limit("spatial")?, limit("temporal")?);
        if encoding.is_none() && spatial.is_none() && temporal.is_none() {
            return Err((
                400,
                "give at least one of `encoding`, `spatial`, `temporal`".into(),
            ));
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let (track, from) = running
            .subscription(&meeting, &participant, index)
            .ok_or_else(|| {
                (
                    404,
                    format!(
                        "no subscription[{index}] of participant `{participant}` in \
                         meeting `{meeting}`"
                    ),
                )
            })?;
        let to = Layers {
            encoding: encoding.unwrap_or(from.encoding),
            spatial: spatial.unwrap_or(from.spatial),
            temporal: temporal.unwrap_or(from.temporal),
        };
        let change = LayerChange {
            meeting,
            participant,
            index,
            track: track.to_owned(),
            from,
            to,
        };
        let (reply, outcome) = mpsc::channel();
        send_layer_change(&self.router, change.clone(), Some(reply)).map_err(|e| (503, e))?;
        running.record(&change);
        drop(running);
        match outcome.recv_timeout(Self::APPLY_TIMEOUT) {
            Ok(Ok(_)) => Ok(format!("applied: {change}")),
            Ok(Err(ConfigureError::NoSuchSubscription)) => {
                Err((404, format!("{change}: no such subscription")))
            }
            Ok(Err(e)) => Err((409, format!("{change}: {e}"))),
            Err(_) => Err((
                503,
                format!("{change}: queued, but the forwarding thread did not confirm in time"),
            )),
        }
    }
}

impl Control for LayerControl {
    fn post(&self, path: &str, query: &str) -> (u16, String) {
        match path {
            "/v1/subscriptions/max-layers" => match self.set_max_layers(query) {
                Ok(body) => (200, body),
                Err(error) => error,
            },
            _ => (404, "try POST /v1/subscriptions/max-layers".into()),
        }
    }
}
