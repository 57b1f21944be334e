//! Generates the client side of `fanout.control.v1` (control/proto/) for the forwarder's
//! control-plane client (src/control/). Needs `protoc` (scripts/install-deps.sh installs
//! it). Only the client: the forwarder serves no gRPC.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../control/proto/fanout/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &["../control/proto"])?;
    Ok(())
}
