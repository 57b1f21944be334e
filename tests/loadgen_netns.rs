//! `fanout-loadgen run --local` with `[local] netns = true`: each region in its own network
//! namespace, forwarders and participant sockets inside, veths between them. The tests
//! read the interfaces' own counters while the run plays (media crossed the veths between
//! regions, control traffic the veths to the root namespace), check the report (every
//! viewer got media, a region without a forwarder included), and that nothing named after
//! the run is left once it ends, normally or by SIGTERM.
//!
//! They need root (network namespaces, veth pairs) and `ip` from iproute2; without them
//! they say so loudly and pass.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fanout_tests::forwarder::{deployment_binary_dir, loadgen_binary};
use fanout_tests::process::Proc;
use fanout_tests::report::number;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// One presenter in region a; viewers in a, b, c (one forwarder each) and d (none: served
/// from another region over the veths); relay nodes of 4 viewers, so b and c get the
/// webinar over relay links from a's origin. Region b's path is 20 ms longer (user-space
/// delay).
const SCENARIO: &str = r#"
name = "netns-test"
duration_s = 8
seed = 11

[[webinars]]
presenters = 1
presenter_region = "a"
regions = { a = 6, b = 7, c = 7, d = 2 }

[media.video]
simulcast = [{ bitrate_kbps = 300, fps = 15 }]

[[impairments]]
region = "b"
delay_ms = 20

[local]
forwarders = 3
regions = ["a", "b", "c"]
max_viewers_per_relay = 4
netns = true
"#;

/// Why this machine cannot run the tests, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    // Unique per call: the tests of this file run at the same time.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let probe = format!(
        "fanout-netns-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(output) if output.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(output) => Some(format!(
            "`ip netns add` is not permitted: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
    }
}

macro_rules! require_netns {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED: [local] netns needs root and network namespaces: {why}");
            return;
        }
    };
}

/// Start `fanout-loadgen run` on `scenario` with `[local] netns = true`; the report goes
/// to the returned directory's report.json.
fn start_loadgen(scenario: &str) -> Result<(Proc, tempfile::TempDir)> {
    let bin_dir = deployment_binary_dir()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, scenario)?;
    let mut command = Command::new(loadgen_binary()?);
    command
        .arg("run")
        .arg(&path)
        .arg("--local")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--json")
        .arg(dir.path().join("report.json"))
        .args(["--progress-interval", "1", "--log", "info"]);
    Ok((Proc::spawn("fanout-loadgen", command)?, dir))
}

/// `ip ARGS`' standard output.
fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip").args(args).output()?;
    if !output.status.success() {
        bail!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Packets received and sent by each interface of `namespace`, from the kernel's counters.
fn counters(namespace: &str) -> Result<Vec<(String, u64, u64)>> {
    let links: Vec<Value> = serde_json::from_str(&ip(&["-n", namespace, "-s", "-j", "link"])?)?;
    Ok(links
        .iter()
        .map(|link| {
            (
                link["ifname"].as_str().unwrap_or_default().to_owned(),
                link["stats64"]["rx"]["packets"].as_u64().unwrap_or(0),
                link["stats64"]["tx"]["packets"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn received(counters: &[(String, u64, u64)], link: &str) -> u64 {
    counters
        .iter()
        .find(|(name, _, _)| name == link)
        .map_or(0, |(_, rx, _)| *rx)
}

/// A root-namespace interface counter (/sys/class/net/LINK/statistics/NAME).
fn root_counter(link: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{link}/statistics/{name}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}"))?
        .trim()
        .parse()?)
}

/// The namespaces and root-namespace interfaces named after load generator `pid`.
fn left_behind(pid: u32) -> Result<Vec<String>> {
    let namespace = format!("fanout-lg{pid}-");
    let link = format!("flg{pid}r");
    let mut found: Vec<String> = ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&namespace))
        .map(str::to_owned)
        .collect();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&link) {
            found.push(name);
        }
    }
    Ok(found)
}

#[test]
fn regions_in_namespaces_carry_media_over_veths_and_leave_nothing_behind() {
    require_netns!();
    let (mut proc, dir) = start_loadgen(SCENARIO).unwrap();
    let pid = proc.pid();
    let ns = |index: usize| format!("fanout-lg{pid}-{index}");
    proc.wait_stderr(Duration::from_secs(120), "the end of the joins", |text| {
        text.contains("joins done").then_some(())
    })
    .unwrap();
    // Regions are numbered in order: the forwarders' (a, b, c), then the participants'
    // others (d).
    for index in 0..4 {
        // The socket-heavy setting is the namespace's own, not the machine's.
        let range = ip(&[
            "netns",
            "exec",
            &ns(index),
            "cat",
            "/proc/sys/net/ipv4/ip_local_port_range",
        ])
        .unwrap();
        assert_eq!(
            range.split_whitespace().collect::<Vec<_>>(),
            ["1024", "65535"]
        );
    }
    let root_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    assert_ne!(root_range.split_whitespace().next(), Some("1024"));
    // A forwarder runs in each of a, b and c; nothing runs in d.
    for index in 0..3 {
        let pids = ip(&["netns", "pids", &ns(index)]).unwrap();
        assert_eq!(
            pids.lines().count(),
            1,
            "processes in {}: {pids}",
            ns(index)
        );
    }
    assert_eq!(ip(&["netns", "pids", &ns(3)]).unwrap().trim(), "");
    // Let media flow a while, then read the interfaces' counters.
    std::thread::sleep(Duration::from_secs(3));
    let b = counters(&ns(1)).unwrap();
    let c = counters(&ns(2)).unwrap();
    let d = counters(&ns(3)).unwrap();
    // About 80 packets/s of audio and video reach b and c from a's origin over the relay
    // links (their own veths to a), for several seconds by now.
    for (name, region) in [("b", &b), ("c", &c)] {
        let from_a = received(region, "to-r0");
        assert!(
            from_a > 150,
            "region {name} received {from_a} packets from a: {region:?}"
        );
    }
    // d has no forwarder: its viewers' media came over a veth from another region.
    let into_d: u64 = ["to-r0", "to-r1", "to-r2"]
        .iter()
        .map(|link| received(&d, link))
        .sum();
    assert!(into_d > 150, "region d received {into_d} packets: {d:?}");
    // Forwarders talk to the control plane in the root namespace over their region's
    // veth to it.
    for index in 0..3 {
        let link = format!("flg{pid}r{index}");
        assert!(root_counter(&link, "rx_packets").unwrap() > 0, "{link}");
        assert!(root_counter(&link, "tx_packets").unwrap() > 0, "{link}");
    }

    let status = proc.wait_timeout(RUN_TIMEOUT).unwrap();
    let stderr = proc.stderr();
    assert!(
        status.success(),
        "{status}: {}",
        fanout_tests::process::tail(&stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(number(&report, "participants"), 23.0, "{report:#}");
    assert_eq!(number(&report, "join_failures"), 0.0, "{report:#}");
    assert_eq!(
        number(&report, "participants_without_media"),
        0.0,
        "{report:#}"
    );
    let regions = report["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 4, "{report:#}");
    for region in regions {
        assert_eq!(
            number(region, "participants_without_media"),
            0.0,
            "{region:#}"
        );
        assert!(number(region, "packets_received") > 0.0, "{region:#}");
    }
    assert!(
        stderr.contains("region networks removed"),
        "{}",
        fanout_tests::process::tail(&stderr)
    );
    assert_eq!(left_behind(pid).unwrap(), Vec::<String>::new());
}

#[test]
fn a_run_ended_by_sigterm_removes_its_networks() {
    require_netns!();
    let scenario = SCENARIO.replace("duration_s = 8", "duration_s = 60");
    let (mut proc, _dir) = start_loadgen(&scenario).unwrap();
    let pid = proc.pid();
    proc.wait_stderr(Duration::from_secs(120), "the end of the joins", |text| {
        text.contains("joins done").then_some(())
    })
    .unwrap();
    assert_eq!(
        left_behind(pid).unwrap().len(),
        4 + 4,
        "4 namespaces, 4 veths"
    );
    proc.signal(libc::SIGTERM).unwrap();
    let status = proc.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        fanout_tests::process::tail(&proc.stderr())
    );
    assert_eq!(left_behind(pid).unwrap(), Vec::<String>::new());
}
