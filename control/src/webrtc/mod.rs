//! The browser transport of docs/webrtc.md, control-plane side.
//!
//! * [`sdp`]: SDP for JSEP (RFC 9429): parsing and writing descriptions (RFC 8866),
//!   answering a browser's offer on the publish connection, offering the tracks of the
//!   subscribe connection and reading its answer. Pure, no I/O: the signaling layer feeds
//!   it text and gets text back, with typed results for the forwarder's desired state.

pub mod sdp;
