//! `fanout-forwarder`: the SFU data plane as a process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::info;

use fanout_forwarder::config;
use fanout_forwarder::driver::{self, mio::MioDriver};
use fanout_forwarder::exporter::{self, MetricsExchange};
use fanout_forwarder::srtp::{MasterKey, SrtpProfile};

/// Fanout's Selective Forwarding Unit.
///
/// Receives each publisher's SRTP once, decrypts it once, and sends every subscriber its
/// own copy re-encrypted with that subscriber's keys, over plain SRTP legs (RFC 4568 keys).
/// In standalone mode, meetings, participants, keys, tracks and subscriptions come from a
/// TOML file (see docs/standalone.md); no control plane is needed.
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
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "shutting down");
                stop.stop();
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
