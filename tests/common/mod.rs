//! Harness for Fanout's end-to-end tests with real SRTP peers, shared by the interop tests
//! and the `fanout-demo` binary.
//!
//! * [`process`]: child processes with captured output, a deadline on every wait, and a
//!   kill-on-drop guard; a clear failure when FFmpeg or GStreamer is not installed.
//! * [`net`]: free RTP/RTCP port pairs, and waiting until a peer has bound its ports
//!   (read from the kernel's socket table, never by racing the peer for the port).
//! * [`forwarder`]: the standalone `fanout-forwarder` binary (found next to the test
//!   executable, built if missing or stale), its TOML configuration, fresh SRTP keys,
//!   readiness through its metrics endpoint, clean SIGTERM stop, metric scraping.
//! * [`topology`]: where each forwarder runs: on loopback with its peers, or in a network
//!   namespace of its own behind a veth pair; every address the tests configure comes
//!   from there.
//! * [`media`]: frames decoded from a file, with `ffprobe -count_frames`.
//! * [`report`]: numbers from `fanout-loadgen`'s JSON report.
//! * [`browser`]: headless Chromium in a network namespace behind a veth pair, driven
//!   over the DevTools protocol (pages, JavaScript, WebRTC stats).
//! * [`meeting`]: the scenario (one publisher, N receivers, a report and its checks),
//!   run with the peers of a [`meeting::PeerKit`]: [`ffmpeg::Ffmpeg`] or
//!   [`gstreamer::Gstreamer`].
//!
//! Environment knobs: `FANOUT_FORWARDER_BIN` (use this forwarder binary),
//! `FANOUT_FORWARDER_LOG` (the forwarder's log filter; default `info`, which start-up
//! detection needs), `FANOUT_KEEP_TEMP` (keep configs, SDPs and media files of a run),
//! `FANOUT_TOPOLOGY=loopback|veth` (see [`topology`]; veth needs root), `FANOUT_IO` (the
//! forwarder's I/O driver, read by the forwarder itself; `afxdp` implies veth).
//!
//! The topology applies to the forwarders the harness starts itself ([`forwarder::Forwarder`]:
//! the interop tests and `fanout-demo`). The forwarders started by the load generator or
//! under the control plane (loadgen_*, webinar_relays, control_plane) stay on loopback.

pub mod browser;
pub mod ffmpeg;
pub mod forwarder;
pub mod gstreamer;
pub mod media;
pub mod meeting;
pub mod net;
pub mod process;
pub mod report;
pub mod topology;
