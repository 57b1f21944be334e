//! The client side of `fanout.control.v1` (control/proto/) for the stitch worker, which
//! claims jobs from the control plane's `Recordings` service. Needs `protoc`
//! (scripts/install-deps.sh installs it). Only the client: the recorder serves no gRPC.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../control/proto/fanout/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &["../control/proto"])?;
    Ok(())
}
