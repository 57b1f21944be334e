//! The load generator's own overhead: publishers sending straight to subscribers over
//! loopback, through the same engine, SRTP and media code as a run, with no forwarder
//! between. The latency it reports is what the load generator adds to every figure of a
//! real run (acceptance: p99 below 100 µs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Result};
use fanout_forwarder::srtp::{MasterKey, SrtpProfile};
use serde::Serialize;

use crate::engine::{bind_socket, Clock, Engine, ParticipantKey, ParticipantSetup};
use crate::impair::ImpairmentSpec;
use crate::run::setup;
use crate::scenario::Scenario;

/// What the self-test measured.
#[derive(Debug, Clone, Serialize)]
pub struct SelftestResult {
    pub pairs: u32,
    pub duration_s: f64,
    pub packets: u64,
    pub lost_after_rtx: u64,
    pub invalid: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl SelftestResult {
    pub fn human(&self) -> String {
        format!(
            "loopback self-test: {} publisher→subscriber pair(s), {:.1} s, {} packets, {} lost, {} invalid\n\
             one-way latency added by the load generator: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            self.pairs,
            self.duration_s,
            self.packets,
            self.lost_after_rtx,
            self.invalid,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// Run `pairs` publisher→subscriber pairs for `duration` with the default media (audio and
/// three-layer simulcast video: every layer goes straight to the subscriber).
pub async fn run(duration: Duration, pairs: u32) -> Result<SelftestResult> {
    ensure!(pairs > 0, "the self-test needs at least one pair");
    let scenario = Scenario::default();
    let profile = SrtpProfile::AeadAes128Gcm;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let engine = Engine::start(1, Clock::start())?;
    for pair in 0..pairs {
        let publisher_key = ParticipantKey(u64::from(pair) * 2);
        let subscriber_key = ParticipantKey(u64::from(pair) * 2 + 1);
        let (downstream, upstream) = (MasterKey::generate(profile), MasterKey::generate(profile));
        // Both bound first: each is the other's "forwarder".
        let publisher_socket = bind_socket(SocketAddr::new(loopback, 0))?;
        let subscriber_socket = bind_socket(SocketAddr::new(loopback, 0))?;
        let (publisher_at, subscriber_at) = (
            publisher_socket.local_addr()?,
            subscriber_socket.local_addr()?,
        );
        let ssrc_base = 1000 * (pair + 1);
        engine.add_on(
            ParticipantSetup {
                key: subscriber_key,
                forwarder: publisher_at,
                bind: loopback,
                send_key: upstream.clone(),
                receive_key: downstream.clone(),
                publisher: None,
                receiver: setup::receiver_config(&scenario, subscriber_key, ssrc_base + 100),
                up: ImpairmentSpec::default(),
                down: ImpairmentSpec::default(),
                seed: subscriber_key.0,
            },
            subscriber_socket,
        )?;
        engine.add_on(
            ParticipantSetup {
                key: publisher_key,
                forwarder: subscriber_at,
                bind: loopback,
                send_key: downstream,
                receive_key: upstream,
                publisher: Some(setup::publisher_config(
                    &scenario,
                    publisher_key,
                    &setup::Ssrcs::numbered(ssrc_base),
                    true,
                    true,
                    false,
                )),
                receiver: setup::receiver_config(&scenario, publisher_key, ssrc_base),
                up: ImpairmentSpec::default(),
                down: ImpairmentSpec::default(),
                seed: publisher_key.0,
            },
            publisher_socket,
        )?;
    }
    tokio::time::sleep(duration).await;
    engine.stop_publishing()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = engine.finish().await?;
    let subscribers = results
        .participants
        .iter()
        .filter(|p| p.key.0 % 2 == 1)
        .map(|p| p.receiver);
    let (mut packets, mut lost, mut invalid) = (0, 0, 0);
    for receiver in subscribers {
        packets += receiver.packets;
        lost += receiver.lost_after_rtx + receiver.audio_lost;
        invalid += receiver.invalid;
    }
    let latency = &results.latency;
    Ok(SelftestResult {
        pairs,
        duration_s: duration.as_secs_f64(),
        packets,
        lost_after_rtx: lost,
        invalid,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
    })
}
