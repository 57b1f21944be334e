//! `fanout-demo`: Fanout's main job until the control plane exists.
//!
//! Runs the standalone forwarder with one FFmpeg publisher (live VP8 video and Opus audio
//! over SRTP) and N FFmpeg receivers, each receiving its own re-encrypted copy, then
//! prints per receiver the frames decoded against the frames sent, and the forwarder's
//! packet and drop counters from its metrics. Exits 0 only if every receiver decoded
//! every frame (and the forwarder dropped nothing and stopped cleanly).

use std::process::ExitCode;

use clap::Parser;
use fanout_forwarder::srtp::SrtpProfile;
use fanout_tests::ffmpeg::Ffmpeg;
use fanout_tests::meeting::{self, RunOptions};

/// One FFmpeg publisher, N FFmpeg receivers, one Fanout forwarder: who decoded what.
#[derive(Debug, Parser)]
#[command(name = "fanout-demo", version)]
struct Args {
    /// Number of receivers, each with its own SRTP keys.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    receivers: u32,

    /// Seconds of media the publisher sends.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    seconds: u32,

    /// SRTP profile (FFmpeg speaks AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32).
    #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80", value_parser = parse_profile)]
    profile: SrtpProfile,
}

fn parse_profile(name: &str) -> Result<SrtpProfile, String> {
    match SrtpProfile::from_name(name) {
        Some(p @ (SrtpProfile::AesCm128HmacSha1_80 | SrtpProfile::AesCm128HmacSha1_32)) => Ok(p),
        _ => Err("FFmpeg supports AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "fanout-demo: 1 FFmpeg publisher, {} FFmpeg receivers, {} s of VP8 + Opus over {}",
        args.receivers,
        args.seconds,
        args.profile.name()
    );
    let options = RunOptions {
        profile: args.profile,
        seconds: args.seconds,
        wrong_keys: vec![false; args.receivers as usize],
        progress: true,
    };
    let report = match meeting::run(&Ffmpeg, &options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("fanout-demo: the run failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{report}");
    let failures = report.failures();
    if failures.is_empty() {
        println!("RESULT: every receiver decoded every frame");
        ExitCode::SUCCESS
    } else {
        println!("RESULT: FAILED");
        for f in &failures {
            println!("  {f}");
        }
        ExitCode::FAILURE
    }
}
