//! Test oracle: transport-cc feedback decoded by an independent parser, webrtc-rs's
//! `rtcp` crate, into what a sender's estimator sees: each reported sequence number with
//! its receive delta, or not received.

use bytes::Bytes;
use rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
};
use webrtc_util::marshal::Unmarshal;

/// One transport-cc feedback packet as the oracle read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) sender_ssrc: u32,
    pub(crate) media_ssrc: u32,
    pub(crate) base_sequence: u16,
    pub(crate) reference_time: u32,
    pub(crate) feedback_count: u8,
    pub(crate) chunks: usize,
    /// Per packet from the base on: `None` not received, else the receive delta in µs and
    /// whether it was sent as a large (two-byte) delta.
    pub(crate) statuses: Vec<Option<(i64, bool)>>,
}

impl Decoded {
    /// The reported arrivals: sequence number and, for received packets, the arrival in
    /// µs of the feedback sender's time base (reference time plus the running deltas).
    pub(crate) fn arrivals(&self) -> Vec<(u16, Option<i64>)> {
        let mut at = i64::from(self.reference_time) * 64_000;
        self.statuses
            .iter()
            .enumerate()
            .map(|(i, status)| {
                let sequence = self.base_sequence.wrapping_add(i as u16);
                (
                    sequence,
                    status.map(|(delta, _)| {
                        at += delta;
                        at
                    }),
                )
            })
            .collect()
    }
}

/// Decode one transport-cc feedback packet (the RTCP packet alone, unprotected).
pub(crate) fn decode(packet: &[u8]) -> Result<Decoded, String> {
    let mut raw = Bytes::copy_from_slice(packet);
    let fb = TransportLayerCc::unmarshal(&mut raw).map_err(|e| e.to_string())?;
    let count = usize::from(fb.packet_status_count);
    let mut symbols = Vec::with_capacity(count);
    for chunk in &fb.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => {
                for _ in 0..run.run_length {
                    symbols.push(run.packet_status_symbol);
                }
            }
            PacketStatusChunk::StatusVectorChunk(vector) => {
                symbols.extend(vector.symbol_list.iter().copied());
            }
        }
    }
    if symbols.len() < count {
        return Err(format!("{} symbols for {count} statuses", symbols.len()));
    }
    // Symbols past the status count (the rest of the last vector) must claim no delta.
    if symbols[count..]
        .iter()
        .any(|&s| s != SymbolTypeTcc::PacketNotReceived)
    {
        return Err("received symbols past the packet status count".into());
    }
    let mut deltas = fb.recv_deltas.iter();
    let mut statuses = Vec::with_capacity(count);
    for symbol in &symbols[..count] {
        statuses.push(match symbol {
            SymbolTypeTcc::PacketNotReceived => None,
            SymbolTypeTcc::PacketReceivedSmallDelta | SymbolTypeTcc::PacketReceivedLargeDelta => {
                let delta = deltas.next().ok_or("fewer deltas than received packets")?;
                if delta.type_tcc_packet != *symbol {
                    return Err("a delta of the wrong size".into());
                }
                Some((
                    delta.delta,
                    *symbol == SymbolTypeTcc::PacketReceivedLargeDelta,
                ))
            }
            SymbolTypeTcc::PacketReceivedWithoutDelta => {
                return Err("the reserved symbol".into());
            }
        });
    }
    if deltas.next().is_some() {
        return Err("more deltas than received packets".into());
    }
    Ok(Decoded {
        sender_ssrc: fb.sender_ssrc,
        media_ssrc: fb.media_ssrc,
        base_sequence: fb.base_sequence_number,
        reference_time: fb.reference_time,
        feedback_count: fb.fb_pkt_count,
        chunks: fb.packet_chunks.len(),
        statuses,
    })
}
