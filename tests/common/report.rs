//! Reading `fanout-loadgen`'s JSON report.

use serde_json::Value;

/// The number at `path` (keys separated by dots, e.g. `publishers.retransmissions`);
/// panics, showing the report, if there is none.
pub fn number(report: &Value, path: &str) -> f64 {
    let mut at = report;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("report has no number at {path}: {report:#}"))
}
