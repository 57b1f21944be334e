//! Two things are built for the forwarder before its Rust code:
//!
//! * the client side of `fanout.control.v1` (control/proto/) for the control-plane client
//!   (src/control/). Needs `protoc`. Only the client: the forwarder serves no gRPC.
//! * the XDP port guard (ebpf/fanout_xdp.c), compiled by clang for the BPF target and
//!   embedded in the binary (src/edge/), and the layout of its shared types as the C
//!   compiler sees them (ebpf/layout.c), which a test compares with the Rust mirrors.
//!   Without clang the forwarder still builds, warns, and `--xdp` explains what is missing.
//!
//! scripts/install-deps.sh installs protoc and clang.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../control/proto/fanout/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &["../control/proto"])?;

    println!("cargo::rustc-check-cfg=cfg(fanout_xdp)");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let ebpf = Path::new("../ebpf");
    for file in ["fanout_xdp.c", "fanout_xdp.h", "layout.c"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=FANOUT_CLANG");
    match build_xdp(ebpf, &out) {
        Ok(()) => println!("cargo:rustc-cfg=fanout_xdp"),
        Err(why) => println!(
            "cargo:warning=building without the XDP port guard (--xdp will be refused): {why}; \
             run scripts/install-deps.sh (clang, libbpf-dev) and rebuild"
        ),
    }
    Ok(())
}

/// Compile the guard for the BPF target and print the shared types' layout.
fn build_xdp(ebpf: &Path, out: &Path) -> Result<(), String> {
    let clang = env::var("FANOUT_CLANG").unwrap_or_else(|_| "clang".into());
    // <linux/types.h> includes <asm/types.h>, which Debian keeps in the multiarch folder.
    let multiarch = Command::new("cc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    let object = out.join("fanout_xdp.o");
    run(Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{}", target_arch()))
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(ebpf.join("fanout_xdp.c"))
        .arg("-o")
        .arg(&object))?;

    let layout = out.join("fanout_xdp_layout");
    run(Command::new(&clang)
        .args(["-O0", "-Wall", "-Werror"])
        .arg(ebpf.join("layout.c"))
        .arg("-o")
        .arg(&layout))?;
    let printed = Command::new(&layout)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", layout.display()))?;
    std::fs::write(out.join("fanout_xdp_layout.txt"), printed.stdout)
        .map_err(|e| format!("cannot write the layout: {e}"))?;
    Ok(())
}

fn target_arch() -> &'static str {
    match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        Ok("s390x") => "s390",
        Ok("powerpc64") => "powerpc",
        _ => "x86",
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
