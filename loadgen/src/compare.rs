//! `fanout-loadgen compare`: what a change of the scenario costs, measured in one
//! invocation. One scenario is played under two variants, a *baseline* and a *candidate*
//! (each a list of `--set` overrides, e.g. `record=false` and `record=true`), on a fresh
//! local deployment per run, for several rounds; the candidate's latency and forwarder CPU
//! are reported as ratios to the baseline's.
//!
//! Why it is built this way:
//!
//! * **Same invocation, alternating.** This project's machines vary by ±20% from run to
//!   run (docs/benchmarks.md), more while other work shares them, so a figure only means
//!   something next to a baseline measured at the same time. Rounds alternate which
//!   variant goes first (baseline first in odd rounds, candidate first in even ones), so
//!   a machine that grows busier or quieter over the invocation does not favour either.
//! * **Two summaries.** The pooled ratios are of percentiles over every packet of every
//!   run of a variant (the runs' latency histograms added): the most precise figure on a
//!   quiet machine. The *median of the rounds' ratios* (the runs of one round ran back to
//!   back) is the robust one: one run disturbed by something else on the machine (a
//!   build, a stall of a few hundred milliseconds) moves one round's ratio, not the
//!   median, while it dominates a pooled p99. `--max-p99-ratio` tests the median.
//! * **Fresh deployments.** Each run starts and stops its own control plane, forwarders
//!   (and recorders, if the variant records), so no run inherits another's state.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::{latency_histogram, LatencyMs, Report};

/// Which variant a run played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Baseline,
    Candidate,
}

impl Variant {
    /// The order of the variants in `round` (1-based): baseline first in odd rounds.
    pub fn order(round: usize) -> [Variant; 2] {
        if round % 2 == 1 {
            [Variant::Baseline, Variant::Candidate]
        } else {
            [Variant::Candidate, Variant::Baseline]
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Candidate => "candidate",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRun {
    pub round: usize,
    pub variant: Variant,
    pub latency_ms: LatencyMs,
    pub latency_samples: u64,
    pub packets_received: u64,
    pub loss_after_rtx: f64,
    pub participants_without_media: usize,
    pub join_failures: usize,
    /// Cores the forwarders used over the measured window, summed (local runs).
    pub forwarder_cpu_cores: Option<f64>,
    /// Cores the recorders used over the same window, summed (when the variant records).
    pub recorder_cpu_cores: Option<f64>,
    /// Packets the recorders stored, and the share of tapped packets they did not
    /// (when the variant records).
    pub recorded_packets: Option<u64>,
    pub recording_loss: Option<f64>,
    /// The machine's 1-minute load average when the run started.
    pub load_average: Option<f64>,
}

impl CompareRun {
    /// The figures of `report`, run `variant` of `round`.
    pub fn new(
        round: usize,
        variant: Variant,
        report: &Report,
        load_average: Option<f64>,
    ) -> CompareRun {
        let sum = |values: Vec<Option<f64>>| {
            let known: Vec<f64> = values.into_iter().flatten().collect();
            (!known.is_empty()).then(|| round3(known.iter().sum()))
        };
        let recording = report
            .recording
            .as_ref()
            .filter(|r| !r.recorders.is_empty());
        CompareRun {
            round,
            variant,
            latency_ms: report.latency_ms,
            latency_samples: report.latency_samples,
            packets_received: report.packets_received,
            loss_after_rtx: report.loss_after_rtx,
            participants_without_media: report.participants_without_media,
            join_failures: report.join_failures,
            forwarder_cpu_cores: sum(report.deployment.iter().map(|f| f.cpu_cores).collect()),
            recorder_cpu_cores: recording
                .and_then(|r| sum(r.recorders.iter().map(|x| x.cpu_cores).collect())),
            recorded_packets: recording.map(|r| r.recorded_packets),
            recording_loss: recording.map(|r| r.loss),
            load_average,
        }
    }
}

/// One variant over every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSummary {
    /// Its `--set` overrides (on top of the common ones).
    pub sets: Vec<String>,
    pub runs: usize,
    /// Over every packet of every run.
    pub latency_ms: LatencyMs,
    pub latency_samples: u64,
    /// Mean over its runs.
    pub forwarder_cpu_cores: Option<f64>,
    pub recorder_cpu_cores: Option<f64>,
    /// Worst over its runs.
    pub recording_loss: Option<f64>,
    pub participants_without_media: usize,
    pub join_failures: usize,
}

/// Candidate over baseline (`None` where the baseline's figure is 0 or missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub forwarder_cpu: Option<f64>,
}

impl Ratios {
    fn of(
        candidate: &LatencyMs,
        baseline: &LatencyMs,
        candidate_cpu: Option<f64>,
        baseline_cpu: Option<f64>,
    ) -> Ratios {
        Ratios {
            p50: ratio(candidate.p50, baseline.p50),
            p99: ratio(candidate.p99, baseline.p99),
            p999: ratio(candidate.p999, baseline.p999),
            forwarder_cpu: candidate_cpu
                .zip(baseline_cpu)
                .and_then(|(c, b)| ratio(c, b)),
        }
    }
}

/// The comparison (`compare --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub scenario: String,
    pub rounds: usize,
    /// `--set` overrides both variants had.
    pub common_sets: Vec<String>,
    pub baseline: VariantSummary,
    pub candidate: VariantSummary,
    /// Candidate over baseline, of the pooled figures: the headline.
    pub ratio: Ratios,
    /// The same per round (runs of the same round ran back to back).
    pub round_ratios: Vec<Ratios>,
    /// The median of `round_ratios`, figure by figure: the robust summary.
    pub median_round_ratio: Ratios,
    pub machine: String,
    pub runs: Vec<CompareRun>,
}

impl Comparison {
    /// `runs` with each run's latency histogram.
    pub fn new(
        scenario: &str,
        common_sets: Vec<String>,
        baseline_sets: Vec<String>,
        candidate_sets: Vec<String>,
        runs: Vec<(CompareRun, Histogram<u64>)>,
        machine: String,
    ) -> Comparison {
        let summary = |variant: Variant, sets: Vec<String>| {
            let mine: Vec<&(CompareRun, Histogram<u64>)> =
                runs.iter().filter(|(r, _)| r.variant == variant).collect();
            let mut pooled = latency_histogram();
            for (_, h) in &mine {
                // Histograms of the same bounds, auto-resizing: adding cannot fail.
                let _ = pooled.add(h);
            }
            let mean = |get: fn(&CompareRun) -> Option<f64>| {
                let known: Vec<f64> = mine.iter().filter_map(|(r, _)| get(r)).collect();
                (!known.is_empty()).then(|| round3(known.iter().sum::<f64>() / known.len() as f64))
            };
            VariantSummary {
                sets,
                runs: mine.len(),
                latency_ms: LatencyMs::of(&pooled),
                latency_samples: pooled.len(),
                forwarder_cpu_cores: mean(|r| r.forwarder_cpu_cores),
                recorder_cpu_cores: mean(|r| r.recorder_cpu_cores),
                recording_loss: mine
                    .iter()
                    .filter_map(|(r, _)| r.recording_loss)
                    .reduce(f64::max),
                participants_without_media: mine
                    .iter()
                    .map(|(r, _)| r.participants_without_media)
                    .sum(),
                join_failures: mine.iter().map(|(r, _)| r.join_failures).sum(),
            }
        };
        let baseline = summary(Variant::Baseline, baseline_sets);
        let candidate = summary(Variant::Candidate, candidate_sets);
        let ratio = Ratios::of(
            &candidate.latency_ms,
            &baseline.latency_ms,
            candidate.forwarder_cpu_cores,
            baseline.forwarder_cpu_cores,
        );
        let rounds = runs.iter().map(|(r, _)| r.round).max().unwrap_or(0);
        let round_ratios: Vec<Ratios> = (1..=rounds)
            .filter_map(|round| {
                let find = |variant| {
                    runs.iter()
                        .find(|(r, _)| r.round == round && r.variant == variant)
                };
                let (b, _) = find(Variant::Baseline)?;
                let (c, _) = find(Variant::Candidate)?;
                Some(Ratios::of(
                    &c.latency_ms,
                    &b.latency_ms,
                    c.forwarder_cpu_cores,
                    b.forwarder_cpu_cores,
                ))
            })
            .collect();
        let median_of =
            |get: fn(&Ratios) -> Option<f64>| median(round_ratios.iter().filter_map(get).collect());
        let median_round_ratio = Ratios {
            p50: median_of(|r| r.p50),
            p99: median_of(|r| r.p99),
            p999: median_of(|r| r.p999),
            forwarder_cpu: median_of(|r| r.forwarder_cpu),
        };
        Comparison {
            scenario: scenario.to_owned(),
            rounds,
            common_sets,
            baseline,
            candidate,
            ratio,
            round_ratios,
            median_round_ratio,
            machine,
            runs: runs.into_iter().map(|(r, _)| r).collect(),
        }
    }

    /// For people: every run, then the pooled figures and their ratios.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Fanout comparison: {}, {} round(s), a fresh local deployment per run",
            self.scenario, self.rounds
        );
        let sets = |s: &[String]| {
            if s.is_empty() {
                "(the scenario as is)".to_owned()
            } else {
                s.join(" ")
            }
        };
        if !self.common_sets.is_empty() {
            let _ = writeln!(out, "  both:      {}", self.common_sets.join(" "));
        }
        let _ = writeln!(out, "  baseline:  {}", sets(&self.baseline.sets));
        let _ = writeln!(out, "  candidate: {}", sets(&self.candidate.sets));
        let _ = writeln!(out, "  machine:   {}", self.machine);

        let _ = writeln!(
            out,
            "\n  {:<6}{:<11}{:>9}{:>9}{:>10}{:>12}{:>9}{:>9}{:>10}{:>7}",
            "round",
            "variant",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "packets",
            "fwd cpu",
            "rec cpu",
            "rec loss",
            "load"
        );
        for r in &self.runs {
            let _ = writeln!(
                out,
                "  {:<6}{:<11}{:>9}{:>9}{:>10}{:>12}{:>9}{:>9}{:>10}{:>7}",
                r.round,
                r.variant.name(),
                fmt_ms(r.latency_ms.p50),
                fmt_ms(r.latency_ms.p99),
                fmt_ms(r.latency_ms.p999),
                crate::report::count(r.packets_received),
                cores(r.forwarder_cpu_cores),
                cores(r.recorder_cpu_cores),
                r.recording_loss
                    .map_or_else(|| "-".to_owned(), |l| format!("{:.3}%", l * 100.0)),
                r.load_average
                    .map_or_else(|| "-".to_owned(), |l| format!("{l:.2}")),
            );
        }

        let _ = writeln!(
            out,
            "\n  pooled over every run{:>16}{:>12}{:>9}{:>16}",
            "baseline", "candidate", "ratio", "median ratio"
        );
        let fmt_ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
        let row = |out: &mut String,
                   label: &str,
                   b: String,
                   c: String,
                   ratio: Option<f64>,
                   median: Option<f64>| {
            let _ = writeln!(
                out,
                "  {label:<21}{b:>16}{c:>12}{:>9}{:>16}",
                fmt_ratio(ratio),
                fmt_ratio(median)
            );
        };
        let m = &self.median_round_ratio;
        let (b, c) = (&self.baseline, &self.candidate);
        row(
            &mut out,
            "latency p50 (ms)",
            fmt_ms(b.latency_ms.p50),
            fmt_ms(c.latency_ms.p50),
            self.ratio.p50,
            m.p50,
        );
        row(
            &mut out,
            "latency p99 (ms)",
            fmt_ms(b.latency_ms.p99),
            fmt_ms(c.latency_ms.p99),
            self.ratio.p99,
            m.p99,
        );
        row(
            &mut out,
            "latency p99.9 (ms)",
            fmt_ms(b.latency_ms.p999),
            fmt_ms(c.latency_ms.p999),
            self.ratio.p999,
            m.p999,
        );
        row(
            &mut out,
            "forwarder cpu (mean)",
            cores(b.forwarder_cpu_cores),
            cores(c.forwarder_cpu_cores),
            self.ratio.forwarder_cpu,
            m.forwarder_cpu,
        );
        if b.recorder_cpu_cores.is_some() || c.recorder_cpu_cores.is_some() {
            row(
                &mut out,
                "recorder cpu (mean)",
                cores(b.recorder_cpu_cores),
                cores(c.recorder_cpu_cores),
                None,
                None,
            );
        }
        let per_round: Vec<String> = self
            .round_ratios
            .iter()
            .map(|r| r.p99.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}")))
            .collect();
        let _ = writeln!(
            out,
            "  p99 ratio per round: {} (median: the robust summary; pooled: every packet)",
            per_round.join(", ")
        );
        let trouble = b.participants_without_media
            + c.participants_without_media
            + b.join_failures
            + c.join_failures;
        if trouble > 0 {
            let _ = writeln!(
                out,
                "  warning: {} failed join(s) and {} participant(s) without media over the runs: \
                 the machine may not carry this scenario, and the latencies are suspect",
                b.join_failures + c.join_failures,
                b.participants_without_media + c.participants_without_media
            );
        }
        if let Some(loss) = c
            .recording_loss
            .into_iter()
            .chain(b.recording_loss)
            .reduce(f64::max)
        {
            if loss > 0.0 {
                let _ = writeln!(
                    out,
                    "  warning: a recording lost {:.3}% of its packets (the recorder fell behind)",
                    loss * 100.0
                );
            }
        }
        out
    }
}

/// The median (the mean of the middle two of an even count); `None` of nothing.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(round3((values[n / 2 - 1] + values[n / 2]) / 2.0)),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| (a / b * 1000.0).round() / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn cores(c: Option<f64>) -> String {
    c.map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", c * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        round: usize,
        variant: Variant,
        latencies_us: &[u64],
        cpu: f64,
    ) -> (CompareRun, Histogram<u64>) {
        let mut h = latency_histogram();
        for &us in latencies_us {
            h.record(us).unwrap();
        }
        let run = CompareRun {
            round,
            variant,
            latency_ms: LatencyMs::of(&h),
            latency_samples: h.len(),
            packets_received: h.len(),
            loss_after_rtx: 0.0,
            participants_without_media: 0,
            join_failures: 0,
            forwarder_cpu_cores: Some(cpu),
            recorder_cpu_cores: (variant == Variant::Candidate).then_some(0.01),
            recorded_packets: None,
            recording_loss: (variant == Variant::Candidate).then_some(0.0),
            load_average: Some(1.0),
        };
        (run, h)
    }

    #[test]
    fn rounds_alternate_which_variant_goes_first() {
        assert_eq!(Variant::order(1), [Variant::Baseline, Variant::Candidate]);
        assert_eq!(Variant::order(2), [Variant::Candidate, Variant::Baseline]);
        assert_eq!(Variant::order(3), Variant::order(1));
    }

    #[test]
    fn ratios_are_of_pooled_percentiles() {
        // Baseline: 1..=100 ms in each of two runs; candidate: 10% slower.
        let base: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let slower: Vec<u64> = base.iter().map(|us| us * 11 / 10).collect();
        let runs = vec![
            run(1, Variant::Baseline, &base, 0.40),
            run(1, Variant::Candidate, &slower, 0.42),
            run(2, Variant::Candidate, &slower, 0.46),
            run(2, Variant::Baseline, &base, 0.40),
        ];
        let c = Comparison::new(
            "s",
            vec!["duration_s=5".into()],
            vec!["record=false".into()],
            vec!["record=true".into()],
            runs,
            "test machine".into(),
        );
        assert_eq!(c.rounds, 2);
        assert_eq!(c.baseline.runs, 2);
        assert_eq!(c.baseline.latency_samples, 200);
        assert!(
            (c.baseline.latency_ms.p99 - 99.0).abs() < 0.1,
            "{:?}",
            c.baseline
        );
        assert!(
            (c.candidate.latency_ms.p99 - 108.9).abs() < 0.2,
            "{:?}",
            c.candidate
        );
        let p99 = c.ratio.p99.unwrap();
        assert!((p99 - 1.1).abs() < 0.005, "{p99}");
        assert!((c.ratio.p50.unwrap() - 1.1).abs() < 0.01);
        assert_eq!(c.baseline.forwarder_cpu_cores, Some(0.4));
        assert_eq!(c.candidate.forwarder_cpu_cores, Some(0.44));
        assert_eq!(c.ratio.forwarder_cpu, Some(1.1));
        assert_eq!(c.round_ratios.len(), 2);
        assert_eq!(c.round_ratios[0].forwarder_cpu, Some(1.05));
        assert_eq!(c.round_ratios[1].forwarder_cpu, Some(1.15));
        assert_eq!(c.median_round_ratio.forwarder_cpu, Some(1.1));
        assert!((c.median_round_ratio.p99.unwrap() - 1.1).abs() < 0.005);
        assert_eq!(c.baseline.recorder_cpu_cores, None);
        assert_eq!(c.candidate.recording_loss, Some(0.0));

        let text = c.human();
        for needle in [
            "baseline:  record=false",
            "candidate: record=true",
            "both:      duration_s=5",
            "1.100",
            "p99 ratio per round",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("warning"), "{text}");
        // The JSON round-trips.
        let json = serde_json::to_string(&c).unwrap();
        let back: Comparison = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn one_disturbed_run_moves_the_pooled_p99_not_the_median() {
        let base: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        // A run where the machine stalled: a tenth of its packets 300 ms late.
        let stalled: Vec<u64> = base
            .iter()
            .map(|&us| if us > 90_000 { us + 300_000 } else { us })
            .collect();
        let runs = vec![
            run(1, Variant::Baseline, &base, 0.4),
            run(1, Variant::Candidate, &base, 0.4),
            run(2, Variant::Candidate, &stalled, 0.4),
            run(2, Variant::Baseline, &base, 0.4),
            run(3, Variant::Baseline, &base, 0.4),
            run(3, Variant::Candidate, &base, 0.4),
        ];
        let c = Comparison::new("s", vec![], vec![], vec![], runs, String::new());
        assert!(c.ratio.p99.unwrap() > 3.0, "{:?}", c.ratio);
        assert!(c.round_ratios[1].p99.unwrap() > 3.0);
        assert_eq!(c.median_round_ratio.p99, Some(1.0));
        assert_eq!(median(vec![3.0, 1.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn an_unfinished_round_has_no_ratio_and_trouble_is_flagged() {
        let base: Vec<u64> = vec![1000, 2000];
        let mut runs = vec![
            run(1, Variant::Baseline, &base, 0.4),
            run(1, Variant::Candidate, &base, 0.4),
            run(2, Variant::Candidate, &base, 0.4),
        ];
        runs[1].0.participants_without_media = 3;
        runs[1].0.recording_loss = Some(0.02);
        let c = Comparison::new("s", vec![], vec![], vec![], runs, String::new());
        assert_eq!(c.round_ratios.len(), 1);
        assert_eq!(c.ratio.p99, Some(1.0));
        let text = c.human();
        assert!(text.contains("3 participant(s) without media"), "{text}");
        assert!(text.contains("lost 2.000%"), "{text}");
        assert!(text.contains("(the scenario as is)"), "{text}");
    }
}
