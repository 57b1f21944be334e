//! `fanout-forwarder`: the SFU data plane as a process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use fanout_forwarder::config::{self, LayerLimits, Settings};
use fanout_forwarder::driver::{self, mio::DriverHandle, mio::MioDriver};
use fanout_forwarder::exporter::{self, MetricsExchange};
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
#[derive(Debug, Parser)]
#[command(name = "fanout-forwarder", version, about, long_about)]
struct Args {
    /// The standalone configuration file (TOML).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "generate_key"
    )]
    config: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `forwarder.metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// RTP listen address (overrides `forwarder.listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

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

    /// Log filter, in tracing's EnvFilter syntax (`RUST_LOG` works too).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
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
    // Required by clap unless --generate-key, which returned above.
    let path = args.config.context("--config FILE is required")?;
    let loaded = config::load(&path, Instant::now())?;
    let mut network = loaded.network;
    let mut core = loaded.forwarder;
    let mut running = loaded.settings;
    if let Some(listen) = args.listen {
        network.rtcp_listen = listen
            .port()
            .checked_add(1)
            .map(|p| std::net::SocketAddr::new(listen.ip(), p));
        network.listen = listen;
    }
    if args.metrics.is_some() {
        network.metrics = args.metrics;
    }
    info!(
        config = %path.display(),
        legs = core.leg_count(),
        subscriptions = core.subscription_count(),
        "configuration loaded"
    );
    if args.check {
        println!("{}: OK", path.display());
        return Ok(());
    }

    let mut sockets = vec![
        driver::bind_udp(network.listen, network.socket_buffer_bytes)
            .with_context(|| format!("cannot bind RTP socket {}", network.listen))?,
    ];
    if let Some(rtcp) = network.rtcp_listen {
        sockets.push(
            driver::bind_udp(rtcp, network.socket_buffer_bytes)
                .with_context(|| format!("cannot bind RTCP socket {rtcp}"))?,
        );
    }
    let mut driver = MioDriver::new(sockets).context("cannot start the I/O driver")?;
    driver.set_progress_interval(Some(Duration::from_secs(args.progress_interval)));

    if let Some(address) = network.metrics {
        let exchange = Arc::new(MetricsExchange::default());
        let wake = driver.serve_metrics(exchange.clone());
        let bound = exporter::spawn(address, exchange, wake)
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        info!(%bound, "metrics at http://{bound}/metrics");
    }

    let stop = driver.stop_handle();
    let handle = driver.handle();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload(&path, &mut running, &handle);
                    continue;
                }
                info!(signal, "shutting down");
                stop.stop();
                break;
            }
        })
        .context("cannot start the signal thread")?;

    driver.run(&mut core).context("the I/O driver failed")?;
    let drops = core.total_drops();
    info!(
        dropped = drops.total(),
        driver = ?driver.stats(),
        "stopped cleanly"
    );
    Ok(())
}

/// SIGHUP: read and validate the file on this (the signal) thread, then send what can
/// change live to the driver as commands, and warn about the rest. `running` is what the
/// forwarder runs with; it follows the changes sent.
fn reload(path: &std::path::Path, running: &mut Settings, driver: &DriverHandle) {
    info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let loaded = match config::load(path, Instant::now()) {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("configuration not reloaded, nothing changed: {e}");
            return;
        }
    };
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
        let command = change.clone();
        let sent = driver.send(Box::new(move |core| match command.apply(core) {
            Ok(previous) => info!(
                meeting = %command.meeting,
                participant = %command.participant,
                subscription = command.index,
                track = %command.track,
                from = %LayerLimits(previous),
                to = %LayerLimits(command.to),
                "subscription layer limits changed"
            ),
            Err(e) => error!(
                meeting = %command.meeting,
                participant = %command.participant,
                subscription = command.index,
                track = %command.track,
                "cannot change the subscription's layer limits: {e}"
            ),
        }));
        match sent {
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
