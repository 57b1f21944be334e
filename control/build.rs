//! Generates the gRPC code for `fanout.control.v1` (control/proto/) with tonic-prost-build,
//! and a file descriptor set for server reflection. Needs `protoc`
//! (scripts/install-deps.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/fanout/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?)
        .join("fanout_control_v1_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        // Download pieces are handed from the object store's buffers as they are.
        .bytes(".fanout.control.v1.DownloadRecordingResponse.data")
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
