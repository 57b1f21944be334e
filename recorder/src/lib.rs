//! Fanout's cloud recorder (docs/recording.md).
//!
//! A forwarder hands every recorded meeting's decrypted RTP packets to a `fanout-recorder`
//! process next to it. The recorder writes them, with their arrival times, into chunk
//! files and uploads each chunk to object storage as it closes. When the recording stops,
//! a stitching job orders, depacketizes and muxes the chunks into one playable file.

pub mod stitch;
