//! Fanout's cloud recorder (docs/recording.md).
//!
//! A forwarder hands every recorded meeting's decrypted RTP packets to a `fanout-recorder`
//! process next to it. The recorder writes them, with their arrival times, into chunk
//! files and uploads each chunk to object storage as it closes. When the recording stops,
//! a stitching job orders, depacketizes and muxes the chunks into one playable file.
//!
//! * [`chunk`]: the chunk file format ([`chunk::ChunkWriter`], [`chunk::ChunkReader`]),
//!   readable up to the last whole record after a crash.
//! * [`store`]: [`store::RecordingStore`], chunks and results in a local directory or an
//!   S3-compatible store.
//! * [`ingest`]: the ingest daemon: its sans-IO core ([`ingest::IngestCore`]: which chunk,
//!   when to close), the spool, the uploader and the socket driver.
//! * [`stitch`]: recorded packets into one playable WebM file through FFmpeg.
//! * [`job`]: one stitching job: a recording's chunks from the store, stitched, the file
//!   uploaded; [`worker`]: claims jobs from the control plane and runs them.
//!
//! The tap's wire format, shared with the forwarder, is `fanout_forwarder::recording`.

pub mod chunk;
pub mod ingest;
pub mod job;
pub mod stitch;
pub mod store;
pub mod worker;
