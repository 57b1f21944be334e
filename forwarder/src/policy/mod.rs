//! Sans-IO building blocks of SFU behaviour: small state machines the core calls from its
//! per-packet path and its timer.
//!
//! Each one follows the core's contract (see [`crate::sfu`]): it owns no clock (time is an
//! input, `now: Instant`), no socket and no thread; it keeps bounded memory, allocated once
//! at construction; and no input, however hostile, makes it panic. The ones that act on
//! their own schedule expose `next_timeout()` for the core's `poll_timeout` and a `poll`
//! that the core calls when that moment has come (calling it earlier is harmless).
//!
//! | module | answers | RFC |
//! |---|---|---|
//! | [`packet_cache`] | "can I still resend seq N of this track?" | RFC 4585 §6.2.1, RFC 4588 |
//! | [`nack`] | "which upstream packets should I NACK now?" and "may I resend this one to this subscriber again?" | RFC 4585 §6.2.1, RFC 3550 A.1 |
//! | [`keyframe`] | "should a PLI/FIR go upstream now?" | RFC 4585 §6.3.1, RFC 5104 §4.3.1 |
//! | [`speaker`] | "who is the dominant speaker?" | RFC 6464, RFC 8285 |
//! | [`layers`] | "which simulcast/SVC layer does this subscriber get?" | RFC 3550 §6.4.1, draft-alvestrand-rmcat-remb |
//!
//! None of these modules reads or writes RTCP itself: the core parses with [`crate::rtcp`],
//! feeds the numbers in, and writes the packets these modules decide on (for example
//! [`crate::rtcp::write_nack`] with the sequence numbers [`nack::NackGenerator::poll`]
//! returned).

pub mod keyframe;
pub mod layers;
pub mod nack;
pub mod packet_cache;
pub mod speaker;

pub use keyframe::KeyframeRequester;
pub use layers::{BitrateMeter, Layer, LayerBitrates, LayerSelector};
pub use nack::{NackGenerator, RetransmitLimiter};
pub use packet_cache::{PacketCache, PacketMeta};
pub use speaker::{audio_level, DominantSpeakerChange, SpeakerDetector};
